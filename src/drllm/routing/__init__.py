"""The router at inference (read by training, calibration, evaluation and serving): the router stack, its config
and kinds, the decision rule, routed inference, the early confidence read and the skip allocation."""
