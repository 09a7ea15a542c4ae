"""The structuro-elastoplastic (STEP) lattice model (SPEC.md section 5).

Installed as ``step_epm.lattice``. Modules: ``kernels`` (Fourier-space
Eshelby propagators on a staggered lattice, transient compression source),
``calibration`` (the calibration file: read, write, validate; shipped
placeholder ``data/default_calibration.json``), ``model`` and ``dynamics``
(the lattice state, exact extremal loading, frames, softness; numba
kernels), ``output`` (HDF5 run files, checkpoints), ``analysis``
(power-law fit, stress plateau), ``plots``, ``config``, ``runner`` and
``cli`` (``step-lattice``). Equations and conventions: docs/model.md.
"""
