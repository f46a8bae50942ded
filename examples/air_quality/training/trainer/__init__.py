"""Air-quality CO(GT) regressor (W4 time-series workshop), written for loopml's examples."""
