"""Layer 3: calibration data and evaluation, structured OBS (``hessian``, ``obs``, ``database``, ``stitch``), the
latency-constrained search (``search``, ``spdy``, ``sensitivity``), LayerChop, and the method registry and
families of members (``family``). FLOP lives in ``distill`` (it trains while it prunes)."""
