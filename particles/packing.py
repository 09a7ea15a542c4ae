"""Jammed packings of the 1:1 binary Hertzian mixture."""

from .minimize import MinimizeResult, NewtonSolver, minimize
from .state import State, random_state


def jammed_packing(n: int, phi: float, seed: int, ftol: float = 1e-12,
                   solver: NewtonSolver | None = None) -> tuple[State, MinimizeResult]:
    """Random positions at packing fraction phi (seeded), minimised to max|F| < ftol.

    Returns the minimised state (gamma = 0, square box of side
    sqrt(sum_i pi sigma_i^2 / phi)) and the minimisation result. Raises
    MinimizationError if the tolerance is not reached.
    """
    return minimize(random_state(n, phi, seed), ftol, solver=solver, raise_on_failure=True)
