"""Energy minimisation: FIRE, overdamped steepest descent, Newton polish.

All minimisers take a :class:`State` and return a new one (the input is
never modified) with a :class:`MinimizeResult`. Convergence is always
max_i |F_i| < ftol (force units: energy / small-particle diameter).

:func:`minimize` is the default path: it first tries Newton steps from the
current state with a sparse block LDL^T factorisation (:mod:`.block_ldl`)
kept in a :class:`NewtonSolver`
(reused across iterations and across strain steps while it still converges
fast), falls back to FIRE down to ``newton_switch`` and then Newton; where
that Newton stalls, FIRE goes on to a 100 times smaller tolerance
(``FIRE_LADDER``) and Newton is tried again, down to ``ftol``. Every step
is safeguarded so that it never goes uphill; an indefinite Hessian (a step
that is not a descent direction) makes Newton hand over.
"""

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from . import block_ldl, kernels
from .potential import NeighbourList, forces
from .state import SKIN, State

#: where Newton stalls after FIRE reached the switch tolerance, FIRE goes on to
#: this factor times it before the next Newton try (minimize)
FIRE_LADDER = 1e-2


@dataclass
class FireParams:
    """FIRE 2.0 parameters (Guenole et al. 2020), time in overdamped units, m = 1."""

    dt0: float = 0.05
    dt_max: float = 0.5
    dt_min: float = 1e-4
    n_delay: int = 5
    f_inc: float = 1.1
    f_dec: float = 0.5
    alpha0: float = 0.1
    f_alpha: float = 0.99
    n_neg_max: int = 2000


@dataclass
class MinimizeResult:
    """What a minimisation did.

    Attributes:
        converged: max|F| < ftol was reached.
        fmax: final max_i |F_i|.
        energy: final total energy.
        iterations: FIRE iterations (or accepted steepest-descent steps).
        force_evals: force evaluations, all methods together.
        newton_solves: linear solves with the sparse factorisation.
        factorizations: sparse (block LDL^T) factorisations computed.
        method: which path converged ("newton", "fire+newton", "fire", "sd").
        time: overdamped time advanced (steepest descent only).
    """

    converged: bool
    fmax: float
    energy: float
    iterations: int = 0
    force_evals: int = 0
    newton_solves: int = 0
    factorizations: int = 0
    method: str = ""
    time: float = 0.0
    notes: list = field(default_factory=list)


class MinimizationError(RuntimeError):
    """Raised by minimisers asked to raise when they do not converge."""


def fire(state: State, ftol: float = 1e-12, max_iter: int = 1_000_000,
         params: FireParams | None = None) -> tuple[State, MinimizeResult]:
    """FIRE 2.0 down to max|F| < ftol (numba loop with its own neighbour list)."""
    p = params or FireParams()
    out = state.copy()
    it, conv, fmax, energy, nfev, _ = kernels.fire_loop(
        out.pos, out.radii, out.Lx, out.Ly, out.tilt, SKIN, ftol, max_iter,
        p.dt0, p.dt_max, p.dt_min, p.n_delay, p.f_inc, p.f_dec, p.alpha0, p.f_alpha,
        p.n_neg_max)
    return out, MinimizeResult(bool(conv), fmax, energy, it, nfev, method="fire")


@dataclass
class DescentParams:
    """Adaptive overdamped steepest descent (see kernels.sd_loop).

    eta: accept a step when |F' - F| <= eta |F| (and F'.F > 0).
    grow / shrink: step factors after acceptance / rejection.
    """

    dt0: float = 0.01
    dt_max: float = 10.0
    eta: float = 0.2
    grow: float = 1.2
    shrink: float = 0.5


def steepest_descent(state: State, ftol: float = 1e-12, max_steps: int = 10_000_000,
                     params: DescentParams | None = None, stop_disp: float = 0.0,
                     reference: np.ndarray | None = None,
                     dt: float | None = None) -> tuple[State, MinimizeResult, float]:
    """Overdamped dx/dt = F with an adaptive step, following the physical path.

    Stops at max|F| < ftol, after max_steps accepted steps, or when the
    configuration-space distance from ``reference`` (N, 2; default the
    start) reaches ``stop_disp`` (> 0). Returns (new state, result, the
    step size to continue with). result.time is the overdamped time
    advanced; result.method is "sd"; result.notes holds the stop reason.
    """
    p = params or DescentParams()
    out = state.copy()
    ref = out.pos.copy() if reference is None else np.ascontiguousarray(reference, np.float64)
    status, acc, rej, time, dt_next, fmax, energy = kernels.sd_loop(
        out.pos, out.radii, out.Lx, out.Ly, out.tilt, SKIN, ftol, max_steps,
        p.dt0 if dt is None else dt, p.dt_max, p.eta, p.grow, p.shrink, stop_disp, ref)
    reason = ("converged", "distance", "max_steps")[status]
    res = MinimizeResult(status == 0, fmax, energy, acc, acc + rej + 1, method="sd",
                         time=time, notes=[reason])
    return out, res, dt_next


def max_force(F: np.ndarray) -> float:
    """max_i |F_i| of forces F (N, 2) (or (2N,))."""
    return float(kernels.max_norm(np.ascontiguousarray(F).reshape(-1, 2)))


class NewtonSolver:
    """Safeguarded quasi-Newton iterations on a reusable sparse factorisation
    of the Hessian (block LDL^T, :mod:`.block_ldl`; called "the LU" below).

    The factorised matrix is H + D (see :meth:`factorize`). The LU is
    reused across iterations and across calls (strain steps), corrected by
    limited-memory BFGS updates (:meth:`_direction`): the inverse of the
    current Hessian is approximated by the stale LU's inverse plus the
    rank-two corrections of the last ``memory`` accepted steps (step s,
    force change y = F - F'), so the few directions in which the Hessian has
    changed since the factorisation (contacts that closed or opened, the
    Hertzian stiffness's sqrt(overlap) dependence) are learnt from the steps
    themselves at the price of a few dot products, where a plain chord step
    converges at the rate of the LU's mismatch. The LU is refactorised at
    the current state (and the memory cleared) after ``patience``
    consecutive steps that reduced |F| by less than a factor ``rate``, or
    when a step fails the safeguards; after ``max_slow`` consecutive
    freshly factorised steps that were also slow (far from any minimum, e.g.
    in a plastic event) it hands over.

    Three changes to plain Newton keep the convergence fast where Hertzian
    contacts open (issue 2; each can be switched off):

    - ``hsec``: contacts with overlap 1 - r/s < hsec enter the Hessian with
      their secant normal stiffness (kernels.hertz_hessian_triplets),
      so a contact that must open reaches touching in about one step
      instead of shrinking by 1/3 per step.
    - ``open_single``: a decoupled particle with exactly one contact is
      moved straight out of it, to a gap of ``open_gap`` (relative) rather
      than given a gradient step (kernels.single_contact_moves).
    - ``project``: the mean force on the coupled particles is removed from
      the right-hand side (see :meth:`_rhs`).

    And every trial step is capped so that no particle moves by more than
    ``max_move`` (small-particle diameters): near a closing contact the
    Hessian is nearly singular and its Newton step can be orders of
    magnitude too long for the line search's halvings to recover.

    Orderings. :meth:`factorize` orders the particles afresh (minimum
    degree on the contact graph, block_ldl.fill_reducing_order), so its
    result is a function of the state alone (the AQS run re-anchors there
    after every step, and a resumed run repeats an uninterrupted one bit
    for bit). The refactorisations inside :meth:`solve` keep that ordering
    and redo only the cheap symbolic analysis when the contact graph
    gained a pair (the ordering costs about as much as a numeric
    factorisation, the analysis a quarter of one).
    """

    def __init__(self, rate: float = 0.5, max_iter: int = 60, shift: float = 1e-10,
                 max_slow: int = 3, open_gap: float = 1e-6, hsec: float = 1e-4,
                 open_single: bool = True, project: bool = True, memory: int = 20,
                 patience: int = 4, max_move: float = 0.02, halvings: int = 8,
                 energy_rtol: float = 1e-12):
        self.rate = rate
        self.energy_rtol = energy_rtol
        self.max_slow = max_slow
        self.open_gap = open_gap
        self.hsec = hsec
        self.open_single = open_single
        self.project = project
        self.memory = memory
        self.patience = patience
        self.max_move = max_move
        self.halvings = halvings
        self.max_iter = max_iter
        self.shift = shift
        self.lu = None  # block_ldl.Factor of H + D
        self._last = None  # the last factor computed: its arrays are reused by the next
        self.order = None  # (N,) node ordering of the last fresh factorize
        self.sym = None  # block_ldl.Symbolic for it
        self.loose = None  # (N,) particles decoupled in the factorisation
        # the last accepted steps s and force changes y, a ring buffer of rows
        # (memory, 2N), rho = 1 / y.s; npairs stored, the newest at row head - 1
        self.S = self.Y = self.rho = self.alpha = None
        self.npairs = 0
        self.head = 0
        self.n = 0
        self.fresh = False  # the LU was computed at the current iterate
        self.factorizations = 0
        self.solves = 0

    def factorize(self, state: State, nlist: NeighbourList | None = None,
                  keep_order: bool = False) -> bool:
        """Factorise H + D at ``state`` (block LDL^T, no pivoting) and clear the
        quasi-Newton memory; False if that fails (an exactly singular pivot
        block).

        D is diagonal: shift * mean(diag H) on every particle with two or
        more contacts, which makes the two translation modes regular (the
        net force vanishes, so the step does not translate the system)
        while every mode stiffer than that keeps its exact Newton step.
        Particles with fewer than two contacts (rattlers, and particles
        whose single contact must open at equilibrium) are decoupled and
        get mean(diag H), i.e. a plain gradient step: their blocks are
        singular or indefinite and would otherwise send them (and, through
        the translation modes, everyone) far away. The particles are
        ordered by minimum degree on the contact graph (``keep_order``:
        the ordering of the last call instead, see the class docstring).
        The matrix is positive definite at a stable state; an indefinite
        one is factorised all the same (``self.lu.positive_definite``).
        The previous factor's arrays are recycled (block_ldl.factorize's
        ``reuse``): a reference to an earlier ``self.lu`` is not valid after
        this call.
        """
        nlist = nlist or NeighbourList()
        self.npairs = 0
        A, loose = self._matrix(state, nlist)
        if not keep_order or self.order is None or len(self.order) != state.n:
            self.order = self.sym = None
        spare, self._last, self.lu = self._last, None, None
        try:
            fac = block_ldl.factorize(self.sym, A, spare) if self.sym is not None else None
        except ValueError:  # the contact graph gained a pair: analyse again
            fac = None
        if fac is None:
            indptr, indices = block_ldl.node_pattern(A, full_blocks=True)
            if self.order is None:
                self.order = block_ldl.fill_reducing_order(indptr, indices)
            self.sym = block_ldl.analyse(indptr, indices, self.order)
            fac = block_ldl.factorize(self.sym, A, spare)
        self._last = fac
        if fac.singular:
            self.lu = None
            return False
        self.lu = fac
        self.n = state.n
        self.loose = loose
        self.factorizations += 1
        self.fresh = True
        return True

    def _matrix(self, state: State, nlist: NeighbourList) -> tuple[sp.csc_matrix, np.ndarray]:
        """H + D of :meth:`factorize` (CSC, kernels.newton_matrix) and the (N,)
        decoupled particles (those with fewer than two contacts)."""
        offsets, nbr, imx, imy = nlist.update(state)
        loose = np.empty(state.n, np.bool_)
        indptr, indices, data = kernels.newton_matrix(
            state.pos, state.radii, state.Lx, state.Ly, state.tilt, offsets, nbr, imx, imy,
            float(self.hsec), float(self.shift), loose)
        n2 = 2 * state.n
        A = sp.csc_matrix((data, indices, indptr), shape=(n2, n2))
        A.has_sorted_indices = True
        A.has_canonical_format = True
        return A, loose

    def _rhs(self, F: np.ndarray) -> np.ndarray:
        """The right-hand side of the Newton solve: F (2N,) with, on the coupled
        particles, their mean force removed. The decoupled particles' contact
        forces leave a net force on the coupled ones, which the nearly singular
        translation modes (regularised by ``shift`` only) would amplify into a
        huge rigid translation."""
        F = F.reshape(-1, 2)
        if not self.project or self.loose is None or not self.loose.any():
            return F.ravel()
        rhs = np.empty_like(F)
        kernels.remove_mean_force(F, self.loose, rhs)
        return rhs.ravel()

    def _direction(self, F: np.ndarray) -> np.ndarray:
        """The quasi-Newton step d (2N,) = H_k F for the force F (N, 2): the
        L-BFGS two-loop recursion (Nocedal & Wright, Numerical Optimization,
        algorithm 7.4; kernels.lbfgs_backward / lbfgs_forward) over the
        stored pairs, with the initial inverse Hessian H_0 = (LU)^-1 after
        :meth:`_rhs`'s projection. With no pairs stored it is the plain
        (chord) Newton step. H_k satisfies the secant condition H_k y = s of
        the newest pair."""
        q = F.ravel().copy()
        if self.npairs:
            order = (self.head - self.npairs + np.arange(self.npairs)) % self.memory
            kernels.lbfgs_backward(self.S, self.Y, self.rho, order, q, self.alpha)
        r = self.lu.solve(self._rhs(q))
        self.solves += 1
        if self.npairs:
            kernels.lbfgs_forward(self.S, self.Y, self.rho, order, self.alpha, r)
        return r

    def _remember(self, s: np.ndarray, y: np.ndarray) -> bool:
        """Store the step s and force change y (2N,) of an accepted step,
        unless its curvature y.s is not safely positive (which would make
        H_k indefinite); keep the last ``memory``. Returns whether stored."""
        ys = float(np.dot(y, s))
        if not ys > 1e-12 * float(np.linalg.norm(y)) * float(np.linalg.norm(s)):
            return False
        if self.S is None or self.S.shape != (self.memory, s.size):
            self.S = np.empty((self.memory, s.size))
            self.Y = np.empty((self.memory, s.size))
            self.rho = np.empty(self.memory)
            self.alpha = np.empty(self.memory)
            self.npairs = self.head = 0
        self.S[self.head] = s
        self.Y[self.head] = y
        self.rho[self.head] = 1.0 / ys
        self.head = (self.head + 1) % self.memory
        self.npairs = min(self.npairs + 1, self.memory)
        return True

    def _open_single_contacts(self, state: State, nlist: NeighbourList, d: np.ndarray):
        """Replace, in the Newton step d (2N,), the gradient step of each
        decoupled particle that has exactly one contact by the move that opens
        that contact to a gap of ``open_gap`` (relative to the contact
        distance; kernels.single_contact_moves): such a
        particle cannot be at equilibrium in contact, and the gradient step
        (or the contact's own Newton step, overlap / 3 per step) approaches
        touching only linearly."""
        if not self.open_single or self.loose is None or not self.loose.any():
            return
        offsets, nbr, imx, imy = nlist.update(state)
        kernels.single_contact_moves(state.pos, state.radii, state.Lx, state.Ly, state.tilt,
                                     offsets, nbr, imx, imy, self.loose, self.open_gap,
                                     d.reshape(-1, 2))

    def solve(self, state: State, ftol: float, nlist: NeighbourList | None = None,
              max_iter: int | None = None) -> tuple[State, MinimizeResult]:
        """Quasi-Newton iterations from ``state`` to max|F| < ftol.

        Never accepts a step that raises the energy or does not reduce |F|
        (2-norm); starts from the step capped at ``max_move`` per particle
        and halves it up to ``halvings`` - 1 times before giving up (then
        it refactorises, or hands over if the LU is fresh). The energy
        change is the difference of the two energies where that exceeds
        ``energy_rtol`` |E| (round-off), else the trapezoidal estimate
        -(F + F').dx/2, which is exact to third order in the step where the
        difference is lost in round-off. (The trapezoid alone would accept
        uphill steps: where the step closes contacts the energy is far from
        quadratic along it.)
        Returns converged=False (with the best state reached) when the
        Hessian is indefinite or progress stalls.
        """
        nlist = nlist or NeighbourList()
        self.npairs = 0
        cur = state.copy()
        energy, F = forces(cur, nlist)
        nfev = 1
        solves0, fact0 = self.solves, self.factorizations
        fmax = max_force(F)
        fnorm = float(np.linalg.norm(F))
        notes = []
        slow = 0  # consecutive steps that reduced |F| by less than rate
        slow_fresh = 0  # consecutive fresh-LU steps that did
        for _ in range(max_iter or self.max_iter):
            if fmax < ftol:
                break
            if self.lu is None or self.n != cur.n:
                if not self.factorize(cur, nlist, keep_order=True):
                    notes.append("singular Hessian")
                    break
            plain = self.fresh and not self.npairs  # an exact Newton step
            d = self._direction(F)
            self._open_single_contacts(cur, nlist, d)
            if not np.dot(F.ravel(), d) > 0.0:
                if plain:
                    notes.append("indefinite Hessian")
                    break
                self.lu = None
                continue
            accepted = False
            move = max_force(d.reshape(-1, 2))
            step = min(1.0, self.max_move / move) if move > 0.0 else 1.0
            for _ in range(self.halvings):
                trial = cur.copy()
                trial.pos += step * d.reshape(-1, 2)
                e_t, F_t = forces(trial, nlist)
                nfev += 1
                fnorm_t = float(np.linalg.norm(F_t))
                de = e_t - energy
                if abs(de) <= self.energy_rtol * abs(energy):
                    de = -0.5 * step * np.dot(F.ravel() + F_t.ravel(), d)
                if de <= 0.0 and fnorm_t < fnorm:
                    accepted = True
                    break
                step *= 0.5
            if not accepted:
                if plain:
                    notes.append("no descent along the Newton step")
                    break
                self.lu = None  # stale factorisation: refactorise here and retry
                continue
            self._remember((trial.pos - cur.pos).ravel(), (F - F_t).ravel())
            ratio = fnorm_t / fnorm
            fast = ratio <= self.rate
            slow = 0 if fast else slow + 1
            slow_fresh = 0 if fast else (slow_fresh + 1 if self.fresh else slow_fresh)
            cur, energy, F, fnorm, fmax = trial, e_t, F_t, fnorm_t, max_force(F_t)
            self.fresh = False
            if slow_fresh >= self.max_slow:
                notes.append("slow convergence with fresh factorisations")
                break
            if slow >= self.patience:
                self.lu = None  # too slow with this LU: refactorise
                slow = 0
        res = MinimizeResult(fmax < ftol, fmax, energy, 0, nfev,
                             self.solves - solves0, self.factorizations - fact0,
                             method="newton", notes=notes)
        return cur, res


def minimize(state: State, ftol: float = 1e-12, solver: NewtonSolver | None = None,
             newton_switch: float = 1e-9, newton_first_iter: int = 30,
             fire_params: FireParams | None = None,
             max_fire_iter: int = 1_000_000, raise_on_failure: bool = False,
             nlist: NeighbourList | None = None) -> tuple[State, MinimizeResult]:
    """Minimise to max|F| < ftol: Newton first (at most ``newton_first_iter``
    solves) if a factorisation is at hand, else FIRE to ``newton_switch``
    then Newton; where Newton stalls, FIRE to FIRE_LADDER x that tolerance
    and Newton again, ..., FIRE to ftol last.

    ``solver`` carries the LU factorisation between calls (pass the same
    one along an AQS run). ``nlist``: the neighbour list for the Newton
    iterations (default a fresh one; any list gives the same pairs, but
    the order of the force sums, hence the last bits, follows the state it
    was built at). Returns (minimised state, result); with
    ``raise_on_failure`` a non-converged run raises MinimizationError.
    """
    solver = solver or NewtonSolver()
    nlist = nlist or NeighbourList()
    total = MinimizeResult(False, np.inf, np.nan)

    def absorb(res: MinimizeResult, method: str):
        total.converged, total.fmax, total.energy = res.converged, res.fmax, res.energy
        total.iterations += res.iterations
        total.force_evals += res.force_evals
        total.newton_solves += res.newton_solves
        total.factorizations += res.factorizations
        total.notes += res.notes
        total.method = method

    cur = state
    if solver.lu is not None:
        cur, res = solver.solve(cur, ftol, nlist, max_iter=newton_first_iter)
        absorb(res, "newton")
    switch = max(newton_switch, ftol)
    while not total.converged:
        cur, res = fire(cur, switch, max_fire_iter, fire_params)
        absorb(res, "fire")
        if not res.converged or switch <= ftol:
            break
        solver.lu = None
        cur, res = solver.solve(cur, ftol, nlist)
        absorb(res, "fire+newton")
        switch = max(switch * FIRE_LADDER, ftol)
    if total.converged and solver.lu is None:
        solver.factorize(cur, nlist)  # ready for the next strain step
    if raise_on_failure and not total.converged:
        raise MinimizationError(
            f"minimisation did not reach max|F| < {ftol:g} (max|F| = {total.fmax:.3g}, "
            f"{total.notes})")
    return cur, total
