"""Layer 3: calibration data and evaluation, structured OBS (``hessian``, ``obs``, ``database``, ``stitch``), the
latency-constrained search (``search``, ``spdy``, ``sensitivity``), LayerChop, and families of members
(``family``: the method registry, FLOP included; FLOP's training kernels live in ``distill.flop``)."""
