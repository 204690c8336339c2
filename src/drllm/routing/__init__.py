"""The routers (rules/train.smk): the per-block router, training samples and training, calibration of the
knob, routed inference and the router card."""
