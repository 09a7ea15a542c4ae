"""The structuro-elastoplastic (STEP) lattice model (SPEC.md section 5).

Installed as ``step_epm.lattice``. Built so far: ``kernels`` (Fourier-space
Eshelby propagators on a staggered lattice, transient compression source);
the model itself (loading, frames, softness) is the next part of the
lattice issue. Equations and conventions: docs/model.md.
"""
