"""The shared core every product builds on; it imports no product.

``physics`` (X-ray attenuation, geometry, DRR projector), readers and writers (``ct``, ``xray``, ``io``), ``transforms``
(HU window, CT resampling), ``networks`` (blocks shared by the products), ``metrics`` (the metric convention), engine
``handlers``, ``checkpoint`` reading and ``bundle`` loading and export.
"""
