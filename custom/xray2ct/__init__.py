"""Product: two X-rays to a CT through a cascade of v-parameterized diffusion denoisers.

``network`` (the stage denoiser), ``schedule`` and ``ddim`` (the sampler math), ``losses``, ``trainer``, ``inferer``,
``writer`` (CT, uncertainty, comparison PNG), ``evaluation`` (held-out metrics and baselines), ``memory`` (the
pre-flight memory check of a CPU training run).
"""
