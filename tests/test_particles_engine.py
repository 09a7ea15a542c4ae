"""Physics tests of the particle engine (SPEC.md sections 0-1).

Tolerances follow from the maths:
- central differences with step h have truncation error h^2 |u'''| / 6 and
  round-off error ~ eps_mach |U| / h. With |U| < 1 and h = 1e-6 the
  round-off part is < 1e-10; u''' ~ 2 (1 - r/s)^(-1/2) is large only for
  pairs within ~1e-4 of contact, which the fixed seeds below do not have,
  so 1e-8 absolute bounds both.
- identities that only reorder floating-point sums (shifts by a lattice
  vector, cell list vs brute force) hold to a few ulps of the summed
  magnitudes: rtol 1e-12.
"""

import importlib
import itertools

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from step_epm.particles import (NewtonSolver, State, affine_force, elastic_constants,
                                evaluate, fire, hessian, jammed_packing, minimize,
                                random_state, steepest_descent)
from step_epm.particles import kernels
from step_epm.particles.minimize import MinimizeResult
from step_epm.particles.potential import NeighbourList
from step_epm.particles.state import SKIN

FD_H = 1e-6
FD_ATOL = 1e-8


def _with_gamma(state: State, gamma: float) -> State:
    """The same particles affinely carried to accumulated strain gamma."""
    return state.sheared(gamma - state.gamma)


@pytest.fixture(scope="module")
def jammed():
    state, res = jammed_packing(128, 0.9, seed=3)
    return state, res


@pytest.mark.parametrize("gamma", [0.0, 0.37, 0.5, -0.71, 1.62, -2.45])
def test_forces_are_minus_energy_gradient(gamma):
    state = _with_gamma(random_state(64, 0.9, seed=1), gamma)
    ev = evaluate(state)
    # every particle crosses the boundary in some pair at phi = 0.9 in a small box
    rng = np.random.default_rng(0)
    for i in rng.choice(state.n, 12, replace=False):
        for a in range(2):
            p, m = state.copy(), state.copy()
            p.pos[i, a] += FD_H
            m.pos[i, a] -= FD_H
            fd = -(evaluate(p).energy - evaluate(m).energy) / (2 * FD_H)
            assert fd == pytest.approx(ev.forces[i, a], abs=FD_ATOL)


def test_long_pair_lists_split_into_halves_give_the_same_forces_at_any_thread_count():
    """A pair list of at least PAIR_SPLIT pairs is scattered in two halves
    (one per thread) and added: the forces and energy are bit for bit the
    same on 1 and 2 threads, and equal the single serial pass up to the
    order of the sums (round-off: 1e-13 of the largest force)."""
    import numba
    state = random_state(20000, 0.9, seed=4)
    nl = NeighbourList()
    nl.update(state)
    pi, pj, hx, hy, sr = nl.pairs
    assert pi.size >= kernels.PAIR_SPLIT
    box = (state.pos, state.Lx, state.Ly, state.tilt)
    runs = []
    old = numba.get_num_threads()
    try:
        for threads in (1, 2):
            numba.set_num_threads(threads)
            F = np.empty((state.n, 2))
            runs.append((kernels.hertz_forces(*box, *nl.pairs, F, np.empty_like(F)), F))
    finally:
        numba.set_num_threads(old)
    (e1, F1), (e2, F2) = runs
    assert e1 == e2 and np.array_equal(F1, F2)
    ref = np.empty((state.n, 2))
    e_ref = kernels._hertz_pairs(*box, *nl.pairs, 0, pi.size, ref)
    scale = np.abs(ref).max()
    assert scale > 0
    np.testing.assert_allclose(F1, ref, rtol=0, atol=1e-13 * scale)
    assert e1 == pytest.approx(e_ref, rel=1e-13)
    # Newton's third law pair by pair: the total force vanishes to round-off
    assert np.abs(F1.sum(axis=0)).max() < 1e-11 * scale


def test_boundary_pairs_are_present():
    """The FD test above really covers pairs across the periodic boundary."""
    state = _with_gamma(random_state(64, 0.9, seed=1), 1.62)
    offsets, nbr, imx, imy = kernels.build_neighbour_list(
        state.pos, state.radii, state.Lx, state.Ly, state.tilt, SKIN)
    assert np.any(imx != 0) and np.any(imy != 0)


@pytest.mark.parametrize("gamma", [0.0, 0.42, -0.9, 3.3])
def test_stress_is_strain_derivative_of_energy(gamma):
    state = _with_gamma(random_state(64, 0.9, seed=2), gamma)
    ev = evaluate(state)
    V = state.volume
    dU_dgamma = (evaluate(state.sheared(FD_H)).energy
                 - evaluate(state.sheared(-FD_H)).energy) / (2 * FD_H)
    dU_dexx = (evaluate(state.strained(FD_H, 0)).energy
               - evaluate(state.strained(-FD_H, 0)).energy) / (2 * FD_H)
    dU_deyy = (evaluate(state.strained(0, FD_H)).energy
               - evaluate(state.strained(0, -FD_H)).energy) / (2 * FD_H)
    assert ev.stress[0, 1] == pytest.approx(dU_dgamma / V, abs=FD_ATOL / V)
    assert ev.stress[0, 0] == pytest.approx(dU_dexx / V, abs=FD_ATOL / V)
    assert ev.stress[1, 1] == pytest.approx(dU_deyy / V, abs=FD_ATOL / V)
    assert ev.pressure == pytest.approx(-0.5 * np.trace(ev.stress), rel=1e-15)
    assert ev.pressure > 0
    np.testing.assert_allclose(ev.virial_per_particle.sum(axis=0) / V, ev.stress,
                               rtol=1e-12, atol=1e-15)
    assert ev.energy_per_particle.sum() == pytest.approx(ev.energy, rel=1e-13)


def _brute_force_pairs(state: State, skin: float) -> set:
    """All (i, j, mx, my) with |x_j - x_i + mx a1 + my a2| < s_ij + skin, O(N^2)."""
    a1 = np.array([state.Lx, 0.0])
    a2 = np.array([state.tilt * state.Ly, state.Ly])
    pairs = set()
    for mx, my in itertools.product(range(-9, 10), repeat=2):
        shift = mx * a1 + my * a2
        d = state.pos[None, :, :] - state.pos[:, None, :] + shift
        r = np.sqrt(np.sum(d * d, axis=2))
        cut = state.radii[:, None] + state.radii[None, :] + skin
        i, j = np.nonzero((r < cut) & ~((mx == 0) & (my == 0) & np.eye(state.n, dtype=bool)))
        pairs.update(zip(i.tolist(), j.tolist(), [mx] * len(i), [my] * len(i)))
    return pairs


@pytest.mark.parametrize("gamma", [0.0, 0.3, -0.49, 0.5, 1.77, -5.2])
def test_cell_list_equals_brute_force(gamma):
    state = _with_gamma(random_state(400, 0.9, seed=4), gamma)
    # move some particles far outside the primary cell: images must follow
    state.pos[:50] += 2 * np.array([state.Lx, 0.0]) - 3 * np.array([state.tilt * state.Ly, state.Ly])
    offsets, nbr, imx, imy = kernels.build_neighbour_list(
        state.pos, state.radii, state.Lx, state.Ly, state.tilt, SKIN)
    nx, ny = kernels._cell_grid(state.Lx, state.Ly, state.tilt, 1.4 + SKIN)
    assert nx >= 3 and ny >= 3, "the test must exercise the cell list"
    listed = set()
    for i in range(state.n):
        for k in range(offsets[i], offsets[i + 1]):
            listed.add((i, int(nbr[k]), int(imx[k]), int(imy[k])))
    assert offsets[-1] == len(listed), "duplicate neighbour entries"
    assert listed == _brute_force_pairs(state, SKIN)
    # the builder's arrays start at 4 N + 64 entries: here they had to grow
    assert offsets[-1] > 4 * state.n + 64


def _contact_pairs(state, offsets, nbr, imx, imy):
    """(i, j, image) of the pairs of a list that are closer than contact."""
    xy = state.tilt * state.Ly
    out = set()
    for i in range(state.n):
        for k in range(offsets[i], offsets[i + 1]):
            j = int(nbr[k])
            d = state.pos[j] - state.pos[i] + np.array([imx[k] * state.Lx + imy[k] * xy,
                                                        imy[k] * state.Ly])
            if np.hypot(*d) < state.radii[i] + state.radii[j]:
                out.add((i, j, int(imx[k]), int(imy[k])))
    return out


def test_reused_neighbour_list_keeps_every_contact():
    """A NeighbourList carried through affine box changes (shear, isotropic
    compression) and growing random displacements, as the minimisers and the AQS
    step carry it, holds every pair closer than contact at each state (the
    brute-force set of a fresh list), rebuilding only when its skin test
    fails; both branches of the test (same box, mapped box) are exercised."""
    state = random_state(300, 0.9, seed=12).sheared(0.2)
    nl = NeighbourList()
    nl.update(state)
    rng = np.random.default_rng(4)
    reused = {"same box": 0, "mapped box": 0}
    for step in range(40):
        if step % 2:
            new = state.sheared(2e-3) if step % 4 == 1 else state.strained(-1e-3, -1e-3)
        else:
            new = state.copy()
        new.pos += rng.normal(scale=4e-3 * (1 + step % 5), size=new.pos.shape)
        before = nl.rebuilds
        got = _contact_pairs(new, *nl.update(new))
        if nl.rebuilds == before:
            reused["mapped box" if step % 2 else "same box"] += 1
        assert got == _contact_pairs(new, *NeighbourList().update(new)), step
        state = new
    assert min(reused.values()) > 0 and nl.rebuilds > 1, (reused, nl.rebuilds)


@pytest.mark.parametrize("gamma", [0.2, -1.4])
def test_lattice_shift_invariance(gamma):
    state = _with_gamma(random_state(100, 0.9, seed=5), gamma)
    ev = evaluate(state)
    a1 = np.array([state.Lx, 0.0])
    a2 = np.array([state.tilt * state.Ly, state.Ly])
    for m, n in [(1, 0), (0, 1), (-2, 3)]:
        shifted = state.copy()
        shifted.pos += m * a1 + n * a2
        ev2 = evaluate(shifted)
        assert ev2.energy == pytest.approx(ev.energy, rel=1e-12)
        np.testing.assert_allclose(ev2.forces, ev.forces, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(ev2.stress, ev.stress, rtol=1e-10, atol=1e-16)
    # one particle moved by a lattice vector: nothing changes either
    single = state.copy()
    single.pos[7] += 3 * a2 - a1
    ev3 = evaluate(single)
    assert ev3.energy == pytest.approx(ev.energy, rel=1e-12)
    np.testing.assert_allclose(ev3.forces, ev.forces, rtol=1e-10, atol=1e-14)


def test_remap_equivalence():
    """gamma and gamma + 1 describe the same lattice: same energy and forces."""
    state = random_state(100, 0.9, seed=6).sheared(0.3)
    same = State(state.pos, state.radii, state.Lx, state.Ly, state.gamma + 1.0)
    ev, ev1 = evaluate(state), evaluate(same)
    assert ev1.energy == pytest.approx(ev.energy, rel=1e-12)
    np.testing.assert_allclose(ev1.forces, ev.forces, rtol=1e-10, atol=1e-14)


def test_packing_fraction_is_exact(jammed):
    for n in (100, 101, 4000):
        assert random_state(n, 0.9, seed=0).packing_fraction == pytest.approx(0.9, rel=1e-14)
    state, _ = jammed
    assert state.packing_fraction == pytest.approx(0.9, rel=1e-14)
    assert np.sum(state.radii == 0.5) == 64 and np.sum(state.radii == 0.7) == 64


def test_minimised_state_meets_force_tolerance(jammed):
    state, res = jammed
    assert res.converged
    ev = evaluate(state)
    fmax = np.max(np.linalg.norm(ev.forces, axis=1))
    assert fmax < 1e-12
    assert ev.pressure > 0
    # FIRE alone reaches the same minimum (to the precision of its tolerance)
    s_fire, r_fire = fire(random_state(128, 0.9, seed=3), ftol=1e-10)
    assert r_fire.converged
    assert r_fire.energy == pytest.approx(ev.energy, rel=1e-8)


def test_newton_reuses_factorisation_across_a_strain_step(jammed):
    state, _ = jammed
    solver = NewtonSolver()
    base, _ = minimize(state, 1e-12, solver=solver)
    f0 = solver.factorizations
    stepped, res = minimize(base.sheared(1e-5), 1e-12, solver=solver)
    assert res.converged and res.method == "newton"
    assert res.newton_solves <= 10
    assert solver.factorizations - f0 <= 1
    assert np.max(np.linalg.norm(evaluate(stepped).forces, axis=1)) < 1e-12


@pytest.mark.parametrize("stalls, expected", [
    (0, [1e-7]), (1, [1e-7, 1e-9]), (3, [1e-7, 1e-9, 1e-11, 1e-12])])
def test_stalled_newton_goes_down_the_fire_ladder(monkeypatch, stalls, expected):
    """Where Newton stalls after FIRE reached newton_switch, minimize runs
    FIRE on to FIRE_LADDER (1e-2) times that tolerance and tries Newton
    again, and so on, with FIRE to ftol itself last (no Newton after it).
    A solver that stalls its first ``stalls`` tries (and no factorisation at
    hand, so FIRE comes first) must see exactly these FIRE tolerances, and
    the result meets ftol either way."""
    mod = importlib.import_module("step_epm.particles.minimize")
    assert mod.FIRE_LADDER == 1e-2
    tols = []
    real_fire = mod.fire

    def recording_fire(state, ftol, *args, **kwargs):
        tols.append(ftol)
        return real_fire(state, ftol, *args, **kwargs)

    monkeypatch.setattr(mod, "fire", recording_fire)

    class Stalling(NewtonSolver):
        left = stalls
        tries = 0

        def solve(self, state, ftol, nlist=None, max_iter=None):
            self.tries += 1
            if self.left:
                self.left -= 1
                return state.copy(), MinimizeResult(False, 1.0, np.nan, notes=["stalled (test)"])
            return super().solve(state, ftol, nlist, max_iter)

    solver = Stalling()
    out, res = minimize(random_state(64, 0.9, seed=2), 1e-12, solver=solver, newton_switch=1e-7)
    assert tols == pytest.approx(expected, rel=1e-12)
    assert solver.tries == min(stalls + 1, 3)
    assert res.converged and res.method == ("fire" if stalls == 3 else "fire+newton")
    assert res.notes.count("stalled (test)") == stalls
    assert np.max(np.linalg.norm(evaluate(out).forces, axis=1)) < 1e-12


@pytest.mark.parametrize("phi, d_gamma", [(0.9, 1e-3), (0.86, 3e-3)])
def test_newton_never_raises_energy(phi, d_gamma):
    """Newton iterates from a sheared minimum, with the factorisation carried
    from that minimum (as in an AQS run), never raise U by more than the
    solver's round-off allowance energy_rtol |U|: the state after k
    iterations (max_iter = k) is compared with the one after k - 1. In
    these two cases a step that closes contacts has a trapezoidal energy
    change -(F + F').dx/2 < 0 while U rises by 1e-7 of itself or more, so
    the trapezoid alone would accept it."""
    base, _ = minimize(random_state(128, phi, seed=5), 1e-12)
    start = base.sheared(d_gamma)
    energies = []
    for k in range(1, 16):
        solver = NewtonSolver()
        solver.factorize(base)
        _, res = solver.solve(start, 1e-12, NeighbourList(), max_iter=k)
        energies.append(res.energy)
        if res.converged or res.notes:
            break
    e = np.array(energies)
    assert e.size >= 3
    assert np.all(np.diff(e) <= NewtonSolver().energy_rtol * np.abs(e[:-1]))


def test_steepest_descent_never_raises_energy():
    """Each accepted step lowers U beyond a round-off allowance of
    64 eps_mach |U| (a few ulps per pair summed over the list)."""
    state = random_state(100, 0.9, seed=7)
    energies, times = [evaluate(state).energy], [0.0]
    dt = None
    for _ in range(300):
        state, res, dt = steepest_descent(state, ftol=1e-12, max_steps=1, dt=dt)
        energies.append(res.energy)
        times.append(times[-1] + res.time)
    e = np.array(energies)
    allowance = 64 * np.finfo(float).eps * np.abs(e[:-1])
    assert np.all(np.diff(e) <= allowance)
    assert e[-1] < 0.5 * e[0]
    assert np.all(np.diff(times) > 0)


def test_steepest_descent_time_is_displacement_over_force():
    """For one accepted step x' = x + dt F, dt = |dx| / |F| exactly."""
    state = random_state(100, 0.9, seed=8)
    f0 = evaluate(state).forces
    new, res, _ = steepest_descent(state, ftol=1e-12, max_steps=1, dt=1e-3)
    dx = new.pos - state.pos
    assert res.time == pytest.approx(np.linalg.norm(dx) / np.linalg.norm(f0), rel=1e-12)


def test_hessian_matches_finite_difference_of_forces():
    state = random_state(40, 0.9, seed=9).sheared(0.8)
    H, _ = hessian(state)
    H = H.toarray()
    np.testing.assert_allclose(H, H.T, atol=1e-14)
    rng = np.random.default_rng(1)
    for dof in rng.choice(2 * state.n, 6, replace=False):
        p, m = state.copy(), state.copy()
        p.pos.reshape(-1)[dof] += FD_H
        m.pos.reshape(-1)[dof] -= FD_H
        col = -(evaluate(p).forces.ravel() - evaluate(m).forces.ravel()) / (2 * FD_H)
        np.testing.assert_allclose(H[:, dof], col, atol=1e-6)


def test_affine_force_matches_finite_difference():
    state = random_state(40, 0.9, seed=10).sheared(-0.6)
    xi = affine_force(state)
    fd = (evaluate(state.sheared(FD_H)).forces - evaluate(state.sheared(-FD_H)).forces) / (2 * FD_H)
    np.testing.assert_allclose(xi, fd, atol=1e-6)


def test_relaxed_shear_modulus_matches_linear_response(jammed):
    """mu_relaxed = mu_affine - Xi . H^+ Xi / V (non-affine correction)."""
    state, _ = jammed
    ec = elastic_constants(state)
    inst, rel = ec.instantaneous, ec.relaxed
    H, contacts = hessian(state)
    xi = affine_force(state).ravel()
    keep = np.repeat(contacts > 0, 2)
    keep[np.flatnonzero(keep)[:2]] = False  # pin one particle: no translation modes
    import scipy.sparse.linalg as spla
    u = spla.spsolve(H[keep][:, keep].tocsc(), xi[keep])
    mu_lr = inst.mu - xi[keep] @ u / state.volume
    assert rel.mu == pytest.approx(mu_lr, rel=1e-4)
    assert rel.mu < inst.mu  # (a fresh quench of 128 disks may have rel.mu < 0)
    assert 0 < rel.lam_2mu < inst.lam_2mu
    assert -1 < rel.nu < 1 and -1 < inst.nu < 1


def test_shear_needs_a_square_box():
    state = random_state(64, 0.9, seed=0)
    with pytest.raises(ValueError, match="square box"):
        state.strained(1e-3, 0.0).sheared(1e-3)


@pytest.mark.parametrize("n, gamma", [(16, 0.3), (64, -0.7), (128, 1.4)])
def test_newton_matrix_is_the_hessian_with_loose_particles_decoupled(n, gamma):
    """kernels.newton_matrix (direct CSC assembly) equals the same matrix built
    from the COO Hessian: keep H keep + D, keep removing the particles with
    fewer than two contacts, D = typical on theirs and shift * typical on the
    others' diagonals, typical = mean(diag H). The larger states are partly
    minimised so that some particles are loose. Entries are sums of the same few terms in another
    order: equal to a few ulps."""
    state = random_state(n, 0.9, seed=11).sheared(gamma)
    if n > 16:
        state, _ = fire(state, ftol=1e-6)
    solver = NewtonSolver()
    hsec, shift = solver.hsec, solver.shift
    H, contacts = hessian(state, hsec=hsec)
    loose = contacts < 2
    typical = H.diagonal().mean()
    keep = sp.diags(np.repeat(~loose, 2).astype(float))
    expected = (keep @ H @ keep + sp.diags(np.where(np.repeat(loose, 2), typical, shift * typical))
                ).toarray()
    A, got_loose = solver._matrix(state, NeighbourList())
    assert np.array_equal(got_loose, loose)
    assert A.has_sorted_indices and A.indices.dtype == np.int32
    np.testing.assert_allclose(A.toarray(), expected, rtol=0, atol=1e-14 * np.abs(expected).max())


def test_quasi_newton_direction_meets_the_secant_conditions(jammed):
    """NewtonSolver._direction is the L-BFGS inverse Hessian H_k applied to
    F: with pairs (s_i, y_i = B s_i) of a fixed SPD matrix B (here the
    factorised matrix A plus a rank-3 change, as when contacts close),
    H_k y_newest = s_newest holds exactly (up to the LU's round-off; the
    older pairs' conditions hold only for a quadratic model, so they are
    not asserted), H_k is symmetric positive definite on random vectors,
    and with no pairs the direction is the plain LU solve of the
    projected force."""
    state, _ = jammed
    solver = NewtonSolver(project=False)
    solver.factorize(state)
    A, _ = solver._matrix(state, NeighbourList())
    rng = np.random.default_rng(2)
    n2 = A.shape[0]
    U = rng.normal(size=(n2, 3))
    B = A + sp.csr_matrix(U @ U.T * (0.1 * A.diagonal().mean() / n2))
    F = rng.normal(size=(state.n, 2))
    np.testing.assert_array_equal(solver._direction(F), solver.lu.solve(F.ravel()))
    solver.memory = 3  # 4 pairs into a memory of 3: the ring buffer wraps
    for _ in range(4):
        s = rng.normal(size=n2)
        y = B @ s
        assert solver._remember(s, y)
    assert solver.npairs == 3
    got = solver._direction(y.reshape(-1, 2))
    assert np.linalg.norm(got - s) <= 1e-12 * np.linalg.norm(s)
    u, v = rng.normal(size=n2), rng.normal(size=n2)
    hu, hv = solver._direction(u.reshape(-1, 2)), solver._direction(v.reshape(-1, 2))
    assert np.dot(v, hu) == pytest.approx(np.dot(u, hv), rel=1e-10)
    assert np.dot(u, hu) > 0 and np.dot(v, hv) > 0
    # a pair with non-positive curvature is not stored
    assert not solver._remember(s, -y)
    assert solver.npairs == 3


def test_factorize_depends_on_the_state_alone(jammed):
    """NewtonSolver.factorize orders afresh, so its factor is the same bits
    whatever the solver did before (what makes an AQS resume bitwise); with
    keep_order the last ordering is reused and the factor still solves the
    new matrix (backward error ||A x - b|| / (||A|| ||x||) at round-off, the
    bound of tests/test_block_ldl.py)."""
    state, _ = jammed
    other, _ = jammed_packing(state.n, 0.9, seed=4)  # another contact graph
    fresh, used = NewtonSolver(), NewtonSolver()
    used.factorize(other)
    fresh.factorize(state)
    used.factorize(state)
    np.testing.assert_array_equal(fresh.order, used.order)
    np.testing.assert_array_equal(fresh.lu.Lx, used.lu.Lx)
    np.testing.assert_array_equal(fresh.lu.D, used.lu.D)
    assert fresh.lu.positive_definite
    order = used.order.copy()
    used.factorize(other, keep_order=True)
    np.testing.assert_array_equal(used.order, order)
    A, _ = used._matrix(other, NeighbourList())
    b = np.random.default_rng(0).normal(size=A.shape[0])
    x = used.lu.solve(b)
    assert np.linalg.norm(A @ x - b) <= 1e-13 * spla.norm(A, 1) * np.linalg.norm(x)
