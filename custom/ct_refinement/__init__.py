"""Product: a coarse CT in, a sharper CT out (the super-resolution and the detail refiners).

It consumes the X-ray -> CT cascade (``coarse``: the cascade's sampled output as the coarse input).
"""
