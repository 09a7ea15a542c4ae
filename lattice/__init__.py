"""The structuro-elastoplastic (STEP) lattice model (SPEC.md section 5).

Installed as ``step_epm.lattice``. Not yet implemented: see issue
"The STEP lattice model".
"""
