"""Calibration of trained routers (rules/train.smk: calibrate_routers): the knob's operating point chosen on
held-out sets, its settings, and the certified point (the loss bound and its test)."""
