"""Elastic constants from the virial stress response to small strains.

At a minimised state, strains of size ``strain`` (default 1e-6) are applied
affinely in both directions (central differences):

- uniaxial strain eps_xx = eps: lambda + 2 mu = d sigma_xx / d eps and
  lambda = d sigma_yy / d eps (the same with eps_yy, averaged);
- simple shear x += gamma y (engineering strain, eps_xy = gamma/2):
  mu = d sigma_xy / d gamma.

"Instantaneous" (affine, unrelaxed) constants use the affinely deformed
state; "relaxed" ones re-minimise it first (Newton steps with the same
factorisation as the base state, to the same force tolerance). The 2D
Poisson ratio is nu = lambda / (lambda + 2 mu). Units: energy / length^2.
"""

from dataclasses import dataclass

from .minimize import NewtonSolver, minimize
from .potential import evaluate
from .state import State


@dataclass
class Moduli:
    """One set of 2D isotropic elastic constants (energy / length^2).

    c11, c22: d sigma_xx / d eps_xx, d sigma_yy / d eps_yy;
    c12: mean of d sigma_yy / d eps_xx and d sigma_xx / d eps_yy;
    mu: d sigma_xy / d gamma. lam_2mu = (c11 + c22)/2, lam = c12,
    nu = lam / lam_2mu.
    """

    c11: float
    c22: float
    c12: float
    mu: float

    @property
    def lam_2mu(self) -> float:
        return 0.5 * (self.c11 + self.c22)

    @property
    def lam(self) -> float:
        return self.c12

    @property
    def nu(self) -> float:
        return self.lam / self.lam_2mu


@dataclass
class ElasticConstants:
    """Instantaneous (affine) and relaxed moduli of one state."""

    instantaneous: Moduli
    relaxed: Moduli
    strain: float


def _deformations(state: State, eps: float):
    """The three deformations (name, +eps state, -eps state)."""
    return [
        ("xx", state.strained(eps, 0.0), state.strained(-eps, 0.0)),
        ("yy", state.strained(0.0, eps), state.strained(0.0, -eps)),
        ("xy", state.sheared(eps), state.sheared(-eps)),
    ]


def elastic_constants(state: State, strain: float = 1e-6, ftol: float = 1e-12
                      ) -> ElasticConstants:
    """Instantaneous and relaxed elastic constants of a minimised ``state``."""
    if not 0.0 < strain < 1e-2:
        raise ValueError(f"strain must lie in (0, 1e-2), got {strain}")
    solver = NewtonSolver()
    minimize(state, ftol, solver=solver, raise_on_failure=True)  # factorise at the base
    results = {}
    for relax in (False, True):
        d = {}
        for name, plus, minus in _deformations(state, strain):
            if relax:
                plus, _ = minimize(plus, ftol, solver=solver, raise_on_failure=True)
                minus, _ = minimize(minus, ftol, solver=solver, raise_on_failure=True)
            d[name] = (evaluate(plus).stress - evaluate(minus).stress) / (2.0 * strain)
        results[relax] = Moduli(
            c11=d["xx"][0, 0], c22=d["yy"][1, 1],
            c12=0.5 * (d["xx"][1, 1] + d["yy"][0, 0]), mu=d["xy"][0, 1])
    return ElasticConstants(results[False], results[True], strain)
