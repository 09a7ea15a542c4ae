"""Athermal quasistatic shear of 2D binary Hertzian disks (SPEC.md section 1).

Installed as ``step_epm.particles``. The public API::

    from step_epm.particles import State, jammed_packing, evaluate, minimize
    state, res = jammed_packing(n=1000, phi=0.9, seed=0)
    ev = evaluate(state)            # energy, forces (N, 2), stress (2, 2), pressure
    moduli = elastic_constants(state)

Units: lengths in small-particle diameters, energies in the pair prefactor.
"""

from .elastic import ElasticConstants, Moduli, elastic_constants
from .minimize import (DescentParams, FireParams, MinimizationError, MinimizeResult,
                       NewtonSolver, fire, minimize, steepest_descent)
from .packing import jammed_packing
from .potential import Evaluation, NeighbourList, affine_force, evaluate, forces, hessian
from .state import State, binary_radii, random_state

__all__ = [
    "DescentParams", "ElasticConstants", "Evaluation", "Moduli", "FireParams", "MinimizationError",
    "MinimizeResult", "NeighbourList", "NewtonSolver", "State", "affine_force",
    "binary_radii", "elastic_constants", "evaluate", "fire", "forces", "hessian",
    "jammed_packing", "minimize", "random_state", "steepest_descent",
]
