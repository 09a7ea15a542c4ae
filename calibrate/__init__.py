"""Calibration of the lattice model from particle trajectories (SPEC.md section 4).

Installed as ``step_epm.calibrate``. Not yet implemented: see issue
"calibrate/: strain fields, rearranger correlations, ...".
"""
