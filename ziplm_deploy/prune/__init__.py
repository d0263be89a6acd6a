"""Layer 3: calibration data, evaluation, and (to come) structured OBS, search, LayerChop and FLOP."""
