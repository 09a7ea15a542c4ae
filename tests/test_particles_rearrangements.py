"""Tests of particles/rearrangements.py (SPEC.md sections 0 and 2, issue 5).

Tolerances follow from the maths:
- an affine map x' = A x fits exactly: J = A and D2min = 0 up to round-off
  of O(10) products of lengths <= ~50, i.e. |J - A| <= 1e-12 and
  D2min <= 1e-24 (length^2; a residual of ~1e-13 squared).
- comparisons with the slow numpy reference and the lattice-shift identity
  only reorder / re-round floating-point sums: rtol 1e-10 with an absolute
  floor of 1e-14 on D2min (its values here are ~1e-3).
- the fused kernel is checked bit for bit against a plain-Python loop that
  sums each particle's neighbours in increasing index order with the same
  formulas (IEEE double both sides), and against itself on 1 vs 2 threads.
"""

import itertools

import numpy as np
import pytest

from step_epm.particles import random_state
from step_epm.particles.rearrangements import (D_LARGE, D_SMALL, correlation_length,
                                               d2min_correlation, isolated_rearranger,
                                               local_deformation, minimum_image_distance,
                                               neighbour_images, rearrangers)

R_D = 2.0


# --------------------------------------------------------------------------
# slow numpy reference
# --------------------------------------------------------------------------

def _box(Lx, Ly, tilt):
    return np.array([Lx, 0.0]), np.array([tilt * Ly, Ly])


def reference_neighbours(pos0, Lx, Ly, tilt, r_d=R_D):
    """O(N^2) brute force: for each pair the minimum image over m1, m2 in
    -2..2 (after removing the nearest whole-lattice offset in fractional
    coordinates). Returns a list per k of (i, m1, m2, r (2,))."""
    a1, a2 = _box(Lx, Ly, tilt)
    h = np.column_stack([a1, a2])
    hinv = np.linalg.inv(h)
    n = len(pos0)
    diff = pos0[None, :, :] - pos0[:, None, :]            # x_i - x_k, [k, i]
    s = diff @ hinv.T
    base = -np.round(s)                                   # integer offsets
    best = None
    bestm = None
    for d1, d2 in itertools.product(range(-2, 3), repeat=2):
        m = base + np.array([d1, d2])
        r = diff + m @ h.T
        r2 = np.sum(r * r, axis=-1)
        if best is None:
            best, bestm = r2, m
        else:
            better = r2 < best
            best = np.where(better, r2, best)
            bestm = np.where(better[..., None], m, bestm)
    out = []
    for k in range(n):
        lst = []
        for i in range(n):
            if i != k and best[k, i] < r_d * r_d:
                m1, m2 = bestm[k, i].astype(int)
                lst.append((i, m1, m2))
        out.append(lst)
    return out


def reference_deformation(pos0, pos1, box0, box1, r_d=R_D):
    """(d2min (N,), J (N, 2, 2), M (N,)) by numpy, image carried from frame 0."""
    nb = reference_neighbours(pos0, *box0, r_d=r_d)
    a1, a2 = _box(*box0)
    b1, b2 = _box(*box1)
    n = len(pos0)
    d2 = np.full(n, np.nan)
    J = np.full((n, 2, 2), np.nan)
    M = np.zeros(n, int)
    for k in range(n):
        M[k] = len(nb[k])
        if M[k] < 2:
            continue
        idx = np.array([t[0] for t in nb[k]])
        m = np.array([[t[1], t[2]] for t in nb[k]], float)
        r = pos0[idx] - pos0[k] + m[:, :1] * a1 + m[:, 1:] * a2
        rp = pos1[idx] - pos1[k] + m[:, :1] * b1 + m[:, 1:] * b2
        A = r.T @ r
        B = rp.T @ r
        Jk = B @ np.linalg.inv(A)
        J[k] = Jk
        d2[k] = np.mean(np.sum((rp - r @ Jk.T) ** 2, axis=1))
    return d2, J, M


def _affine_box(A, Lx, Ly, tilt):
    """Box after x' = A x for upper-triangular A (a1 stays along x)."""
    assert A[1, 0] == 0.0
    a2 = A @ np.array([tilt * Ly, Ly])
    Lx1 = A[0, 0] * Lx
    return Lx1, a2[1], a2[0] / a2[1]


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def state():
    return random_state(300, 0.9, seed=1)


@pytest.mark.parametrize("gamma", [0.0, 0.37, 1.3, -2.45])
@pytest.mark.parametrize("A", [
    np.array([[1.0, 0.05], [0.0, 1.0]]),
    np.array([[1.01, 0.3], [0.0, 0.97]]),
])
def test_affine_map_is_exact(state, gamma, A):
    """x' = A x for positions and box: J == A, D2min == 0, including pairs
    across the boundary, unwrapped positions and large accumulated tilt."""
    st = state.sheared(gamma)
    pos0 = st.pos.copy()
    # scatter particles into other periodic images (unwrapped positions)
    rng = np.random.default_rng(5)
    a1, a2 = _box(st.Lx, st.Ly, st.gamma)
    m = rng.integers(-2, 3, size=(st.n, 2))
    pos0 += m[:, :1] * a1 + m[:, 1:] * a2
    Lx1, Ly1, t1 = _affine_box(A, st.Lx, st.Ly, st.gamma)
    pos1 = pos0 @ A.T
    res = local_deformation(pos0, pos1, st.radii, st.Lx, st.Ly, st.gamma, Lx1, Ly1, t1)
    ok = res.n_neighbours >= 2     # a random state can hold an isolated particle
    assert ok.sum() > 0.95 * st.n
    assert np.all(np.isnan(res.d2min[~ok]))
    # boundary pairs are present: some neighbour images are nonzero
    _, _, im1, im2 = neighbour_images(st.wrapped_positions(), st.Lx, st.Ly, st.gamma)
    assert np.any(im1 != 0) and np.any(im2 != 0)
    np.testing.assert_allclose(res.J[ok], np.broadcast_to(A, res.J[ok].shape), rtol=0,
                               atol=1e-12)
    assert np.max(res.d2min[ok]) < 1e-24
    eps = 0.5 * (A + A.T) - np.eye(2)
    np.testing.assert_allclose(res.k[ok], 0.5 * np.trace(eps), atol=1e-12)
    np.testing.assert_allclose(res.e1[ok], 0.5 * (eps[0, 0] - eps[1, 1]), atol=1e-12)
    np.testing.assert_allclose(res.eps_xy[ok], eps[0, 1], atol=1e-12)
    lam = np.linalg.eigvalsh(eps)
    np.testing.assert_allclose(res.eps_dev[ok], lam[1] - lam[0], atol=1e-12)


@pytest.mark.parametrize("n,gamma", [(300, 0.0), (300, 1.3), (20, 0.41)])
def test_matches_numpy_reference(n, gamma):
    """Random displacements (0.05) plus an affine shear/strain; n = 20 uses
    the O(N^2) fallback (fewer than 3 cells per side)."""
    st = random_state(n, 0.9, seed=2).sheared(gamma)
    rng = np.random.default_rng(7)
    A = np.array([[1.003, 0.02], [0.0, 0.996]])
    Lx1, Ly1, t1 = _affine_box(A, st.Lx, st.Ly, st.gamma)
    pos1 = st.pos @ A.T + rng.normal(scale=0.05, size=st.pos.shape)
    box0 = (st.Lx, st.Ly, st.gamma)
    box1 = (Lx1, Ly1, t1)
    res = local_deformation(st.pos, pos1, st.radii, *box0, *box1)
    d2, J, M = reference_deformation(st.pos, pos1, box0, box1)
    np.testing.assert_array_equal(res.n_neighbours, M)
    ok = M >= 2
    assert ok.sum() > 0.9 * st.n
    assert np.all(np.isnan(res.d2min[~ok]))
    np.testing.assert_allclose(res.d2min[ok], d2[ok], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(res.J[ok], J[ok], rtol=1e-10, atol=1e-12)
    # neighbour lists agree pair by pair with the same carried images
    off, nbr, im1, im2 = neighbour_images(st.pos, *box0)
    ref = reference_neighbours(st.pos, *box0)
    for k in range(st.n):
        got = list(zip(nbr[off[k]:off[k + 1]], im1[off[k]:off[k + 1]], im2[off[k]:off[k + 1]]))
        assert got == sorted(ref[k])


def test_single_displaced_particle(state):
    """Displace particle p by d only. With r_i the frame-0 neighbour vectors
    of a particle, A = sum r_i r_i^T and M its neighbour count:
    - for p every r'_ip = r_ip - d, so J = I - d s^T A^-1 (s = sum r_ip)
      and D2min(p) = |d|^2 (1 - s^T A^-1 s / M);
    - for a neighbour q of p only r'_pq = r_pq + d changes, J = I +
      d r_pq^T A^-1 and D2min(q) = |d|^2 (1 - r_pq^T A^-1 r_pq) / M;
    - every other particle: D2min = 0, J = I.
    """
    st = state
    p = 17
    d = np.array([0.031, -0.012])
    pos1 = st.pos.copy()
    pos1[p] += d
    box = (st.Lx, st.Ly, st.gamma)
    res = local_deformation(st.pos, pos1, st.radii, *box, *box)
    nb = reference_neighbours(st.pos, *box)
    a1, a2 = _box(*box)

    def vectors(k):
        return {i: st.pos[i] - st.pos[k] + m1 * a1 + m2 * a2 for i, m1, m2 in nb[k]}

    rp = vectors(p)
    r = np.array(list(rp.values()))
    A = r.T @ r
    s = r.sum(axis=0)
    Ainv = np.linalg.inv(A)
    expect_p = d @ d * (1.0 - s @ Ainv @ s / len(r))
    np.testing.assert_allclose(res.d2min[p], expect_p, rtol=1e-10)
    np.testing.assert_allclose(res.J[p], np.eye(2) - np.outer(d, s @ Ainv), rtol=0,
                               atol=1e-13)
    assert expect_p > 0
    qs = [i for i, _, _ in nb[p]]
    for q in qs:
        rq = vectors(q)
        r = np.array(list(rq.values()))
        Ainv = np.linalg.inv(r.T @ r)
        v = rq[p]
        expect_q = d @ d * (1.0 - v @ Ainv @ v) / len(r)
        np.testing.assert_allclose(res.d2min[q], expect_q, rtol=1e-10)
        np.testing.assert_allclose(res.J[q], np.eye(2) + np.outer(d, v @ Ainv), rtol=0,
                                   atol=1e-13)
    others = np.setdiff1d(np.arange(st.n), qs + [p])
    others = others[res.n_neighbours[others] >= 2]   # isolated ones are NaN
    assert np.max(res.d2min[others]) < 1e-26
    np.testing.assert_allclose(res.J[others], np.broadcast_to(np.eye(2), (len(others), 2, 2)),
                               rtol=0, atol=1e-13)


def test_lattice_shift_invariance():
    """Shifting particles by lattice vectors (each its own m1 a1 + m2 a2 in
    frame 0, the same integers with a1', a2' in frame 1; and all of them by
    one common vector) changes nothing beyond round-off."""
    st = random_state(300, 0.9, seed=3).sheared(0.8)
    rng = np.random.default_rng(11)
    A = np.array([[1.0, 0.01], [0.0, 1.0]])
    box0 = (st.Lx, st.Ly, st.gamma)
    box1 = _affine_box(A, *box0)
    pos1 = st.pos @ A.T + rng.normal(scale=0.05, size=st.pos.shape)
    base = local_deformation(st.pos, pos1, st.radii, *box0, *box1)
    a1, a2 = _box(*box0)
    b1, b2 = _box(*box1)
    for m in (rng.integers(-3, 4, size=(st.n, 2)), np.tile([2, -1], (st.n, 1))):
        q0 = st.pos + m[:, :1] * a1 + m[:, 1:] * a2
        q1 = pos1 + m[:, :1] * b1 + m[:, 1:] * b2
        res = local_deformation(q0, q1, st.radii, *box0, *box1)
        np.testing.assert_array_equal(res.n_neighbours, base.n_neighbours)
        np.testing.assert_allclose(res.d2min, base.d2min, rtol=1e-10, atol=1e-14)
        np.testing.assert_allclose(res.J, base.J, rtol=1e-10, atol=1e-12)


def test_equivalent_tilts_agree():
    """The accumulated tilt gamma and gamma - 2 describe the same lattice;
    given consistently in both frames they give the same result."""
    st = random_state(300, 0.9, seed=4).sheared(2.3)
    rng = np.random.default_rng(3)
    pos1 = st.pos + rng.normal(scale=0.05, size=st.pos.shape)
    r1 = local_deformation(st.pos, pos1, st.radii, st.Lx, st.Ly, st.gamma,
                           st.Lx, st.Ly, st.gamma)
    r2 = local_deformation(st.pos, pos1, st.radii, st.Lx, st.Ly, st.gamma - 2,
                           st.Lx, st.Ly, st.gamma - 2)
    np.testing.assert_array_equal(r1.n_neighbours, r2.n_neighbours)
    np.testing.assert_allclose(r1.d2min, r2.d2min, rtol=1e-10, atol=1e-14)


def test_isolated_particle_is_nan():
    """A particle with fewer than 2 neighbours within r_d has no fit: NaN."""
    st = random_state(40, 0.9, seed=5)
    pos = st.pos.copy()
    # small r_d: most particles have 0 or 1 neighbours
    res = local_deformation(pos, pos, st.radii, st.Lx, st.Ly, 0.0, st.Lx, st.Ly, 0.0, r_d=0.6)
    few = res.n_neighbours < 2
    assert few.any()
    assert np.all(np.isnan(res.d2min[few])) and np.all(np.isnan(res.J[few]))
    assert np.all(np.isnan(res.eps_dev[few]))
    assert not rearrangers(res.d2min, st.radii).any()


def test_box_too_small_raises():
    st = random_state(20, 0.9, seed=0)
    with pytest.raises(ValueError, match="2 r_d"):
        local_deformation(st.pos, st.pos, st.radii, st.Lx, st.Ly, 0.0, st.Lx, st.Ly, 0.0,
                          r_d=st.Lx / 2)


def test_rearranger_thresholds():
    radii = np.array([0.5, 0.5, 0.5, 0.7, 0.7, 0.7, 0.5])
    d2 = np.array([0.0026, 0.0024, 0.002, 0.0016, 0.0014, 0.002, np.nan])
    expect = np.array([True, False, False, True, False, True, False])
    np.testing.assert_array_equal(rearrangers(d2, radii), expect)
    assert D_SMALL == 0.0025 and D_LARGE == 0.0015
    np.testing.assert_array_equal(rearrangers(d2, radii, d_small=0.001, d_large=0.003),
                                  [True, True, True, False, False, False, False])


def _python_fit(pos0, pos1, box0, box1, r_d=R_D):
    """Plain-Python sequential sums over neighbour_images' lists (increasing
    index), the formulas of the fused kernel: bitwise reference."""
    Lx0, Ly0, t0 = box0
    Lx1, Ly1, t1 = box1
    off, nbr, im1, im2 = neighbour_images(pos0, *box0, r_d)
    n = len(pos0)
    d2 = np.full(n, np.nan)
    J = np.full((n, 2, 2), np.nan)
    a2x0, a2x1 = t0 * Ly0, t1 * Ly1
    for k in range(n):
        vec = []
        A00 = A01 = A11 = B00 = B01 = B10 = B11 = 0.0
        for p in range(off[k], off[k + 1]):
            i, m1, m2 = int(nbr[p]), float(im1[p]), float(im2[p])
            rx = pos0[i, 0] - pos0[k, 0] + m1 * Lx0 + m2 * a2x0
            ry = pos0[i, 1] - pos0[k, 1] + m2 * Ly0
            sx = pos1[i, 0] - pos1[k, 0] + m1 * Lx1 + m2 * a2x1
            sy = pos1[i, 1] - pos1[k, 1] + m2 * Ly1
            vec.append((rx, ry, sx, sy))
            A00 += rx * rx
            A01 += rx * ry
            A11 += ry * ry
            B00 += sx * rx
            B01 += sx * ry
            B10 += sy * rx
            B11 += sy * ry
        det = A00 * A11 - A01 * A01
        if len(vec) < 2 or not det > 1e-12 * (A00 + A11) ** 2:
            continue
        j00 = (B00 * A11 - B01 * A01) / det
        j01 = (B01 * A00 - B00 * A01) / det
        j10 = (B10 * A11 - B11 * A01) / det
        j11 = (B11 * A00 - B10 * A01) / det
        acc = 0.0
        for rx, ry, sx, sy in vec:
            ex = sx - (j00 * rx + j01 * ry)
            ey = sy - (j10 * rx + j11 * ry)
            acc += ex * ex + ey * ey
        d2[k] = acc / len(vec)
        J[k] = [[j00, j01], [j10, j11]]
    return d2, J, np.diff(off)


@pytest.mark.parametrize("gamma", [0.0, 1.3, -2.45])
def test_fused_kernel_bitwise(gamma):
    """The fused search + fit equals the two-step computation bit for bit,
    on 1 and 2 numba threads."""
    import numba
    st = random_state(300, 0.9, seed=6).sheared(gamma)
    rng = np.random.default_rng(8)
    A = np.array([[1.002, 0.01], [0.0, 0.999]])
    box0 = (st.Lx, st.Ly, st.gamma)
    box1 = _affine_box(A, *box0)
    pos0 = st.pos + rng.integers(-1, 2, size=(st.n, 1)) * np.array([st.Lx, 0.0])
    pos1 = pos0 @ A.T + rng.normal(scale=0.03, size=st.pos.shape)
    d2, J, M = _python_fit(pos0, pos1, box0, box1)
    old = numba.get_num_threads()
    try:
        for threads in sorted({1, old}):
            numba.set_num_threads(threads)
            res = local_deformation(pos0, pos1, st.radii, *box0, *box1)
            np.testing.assert_array_equal(res.n_neighbours, M)
            np.testing.assert_array_equal(res.d2min, d2)
            np.testing.assert_array_equal(res.J, J)
    finally:
        numba.set_num_threads(old)


# --------------------------------------------------------------------------
# isolated rearrangements
# --------------------------------------------------------------------------

def _brute_min_image(pos, x0, Lx, Ly, tilt):
    a1, a2 = _box(Lx, Ly, tilt)
    d = pos - x0
    best = np.full(len(pos), np.inf)
    s = d @ np.linalg.inv(np.column_stack([a1, a2])).T
    base = -np.round(s)
    for m1, m2 in itertools.product(range(-4, 5), repeat=2):
        m = base + [m1, m2]
        r = d + m[:, :1] * a1 + m[:, 1:] * a2
        best = np.minimum(best, np.hypot(r[:, 0], r[:, 1]))
    return best


@pytest.mark.parametrize("gamma", [0.0, 0.45, 1.3, -2.45])
def test_minimum_image_distance(gamma):
    st = random_state(300, 0.9, seed=9).sheared(gamma)
    for p in (0, 7, 123):
        np.testing.assert_allclose(minimum_image_distance(st.pos, st.pos[p], st.Lx, st.Ly,
                                                          st.gamma),
                                   _brute_min_image(st.pos, st.pos[p], st.Lx, st.Ly, st.gamma),
                                   rtol=1e-12, atol=1e-12)


def _planted(st, r, level=1e-7):
    """A quiet field (level << 0.01 d_soft) with particle r rearranging and
    its neighbours within 3 moving (below their thresholds)."""
    dist = minimum_image_distance(st.pos, st.pos[r], st.Lx, st.Ly, st.gamma)
    d2 = np.full(st.n, level)
    d2[dist < 3.0] = 1e-3
    d2[r] = 0.01
    return d2, dist


def _pick(dist, lo, hi):
    idx = np.flatnonzero((dist > lo) & (dist < hi))
    assert len(idx) > 0
    return idx[0]


def test_isolated_rearranger_planted():
    st = random_state(1000, 0.9, seed=10)
    box = (st.Lx, st.Ly, st.gamma)
    small = np.flatnonzero(st.radii < 0.6)
    large = np.flatnonzero(st.radii > 0.6)
    r = small[5]
    d2, dist = _planted(st, r)
    assert isolated_rearranger(st.pos, d2, st.radii, *box) == r
    # far particle above the quiet level 0.01 * D_SMALL = 2.5e-5 (and below
    # every threshold): not isolated
    far = _pick(dist, 8.0, 20.0)
    d = d2.copy()
    d[far] = 3e-5
    assert isolated_rearranger(st.pos, d, st.radii, *box) == -1
    d[far] = 2e-5                      # below the quiet level
    assert isolated_rearranger(st.pos, d, st.radii, *box) == r
    d[far] = np.nan                    # NaN counts as quiet
    assert isolated_rearranger(st.pos, d, st.radii, *box) == r
    # a loud particle at distance 4.9 (<= 5) does not break isolation
    near = _pick(dist, 4.85, 4.95)
    d = d2.copy()
    d[near] = 1e-3                     # below both thresholds
    assert isolated_rearranger(st.pos, d, st.radii, *box) == r
    # ... but at 5.1 it does
    d[_pick(dist, 5.05, 5.15)] = 1e-4
    assert isolated_rearranger(st.pos, d, st.radii, *box) == -1
    # none or two rearrangers: -1
    assert isolated_rearranger(st.pos, np.full(st.n, 1e-7), st.radii, *box) == -1
    d = d2.copy()
    d[_pick(dist, 1.0, 2.0)] = 0.01
    assert isolated_rearranger(st.pos, d, st.radii, *box) == -1
    # a large rearranger: d_soft = D_LARGE, quiet level 1.5e-5
    rl = large[3]
    d2l, distl = _planted(st, rl)
    farl = _pick(distl, 8.0, 20.0)
    d2l[farl] = 2e-5
    assert isolated_rearranger(st.pos, d2l, st.radii, *box) == -1
    d2l[farl] = 1e-5
    assert isolated_rearranger(st.pos, d2l, st.radii, *box) == rl
    assert isolated_rearranger(st.pos, d2l, st.radii, *box, r_far=100.0) == rl


@pytest.mark.parametrize("gamma", [0.45, 1.3, -2.45])
def test_isolated_rearranger_uses_sheared_images(gamma):
    """At large tilt a particle across the boundary can be near in the
    minimum image and far in naive coordinates: it must count as near."""
    st = random_state(1000, 0.9, seed=11).sheared(gamma)
    box = (st.Lx, st.Ly, st.gamma)
    # the rearranger next to a corner of the wrapped box
    wpos = st.wrapped_positions()
    r = int(np.argmin(wpos[:, 1]))
    d2, dist = _planted(st, r)
    naive = np.hypot(*(st.pos - st.pos[r]).T)
    cand = np.flatnonzero((dist < 4.5) & (dist > 3.0) & (naive > 10.0))
    assert len(cand) > 0
    d2[cand] = 1e-3
    assert isolated_rearranger(st.pos, d2, st.radii, *box) == r
    # the same positions scattered over other images give the same answer
    a1, a2 = _box(*box)
    m = np.random.default_rng(2).integers(-2, 3, size=(st.n, 2))
    assert isolated_rearranger(st.pos + m[:, :1] * a1 + m[:, 1:] * a2, d2, st.radii,
                               *box) == r
    far = np.flatnonzero(dist > 6.0)[0]
    d2[far] = 1e-4
    assert isolated_rearranger(st.pos, d2, st.radii, *box) == -1


# --------------------------------------------------------------------------
# D2min correlation
# --------------------------------------------------------------------------

def test_d2min_correlation_matches_brute_force():
    """All pairs by numpy (minimum image over 9 x 9 images); NaN D2min
    particles are left out of the mean, variance and pairs."""
    st = random_state(300, 0.9, seed=12).sheared(1.3)
    rng = np.random.default_rng(1)
    d2 = rng.exponential(1e-3, st.n)
    d2[::17] = np.nan
    r_max, dr = 4.0, 0.5
    r, C, npairs = d2min_correlation(st.pos, d2, st.Lx, st.Ly, st.gamma, r_max, dr,
                                     return_counts=True)
    ok = np.isfinite(d2)
    x = d2[ok] - d2[ok].mean()
    p = st.pos[ok]
    s = np.zeros(len(r))
    c = np.zeros(len(r), int)
    for a in range(len(p)):
        dist = _brute_min_image(p, p[a], st.Lx, st.Ly, st.gamma)
        for b in np.flatnonzero((dist < r_max) & (np.arange(len(p)) > a)):
            j = int(dist[b] / dr)
            s[j] += x[a] * x[b]
            c[j] += 1
    np.testing.assert_array_equal(npairs, c)
    np.testing.assert_allclose(C, s / c / np.mean(x * x), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(r, np.arange(8) * dr + dr / 2)


def test_d2min_correlation_white_noise():
    """Independent D2min: each bin averages n_pairs products of independent
    unit-variance (after normalisation) variables, so C has standard error
    ~ 1/sqrt(n_pairs) (pairs sharing a particle are uncorrelated for
    independent values); a fixed seed, |C| < 4 standard errors everywhere."""
    st = random_state(4000, 0.9, seed=13)
    d2 = np.random.default_rng(3).exponential(1e-3, st.n)
    r, C, npairs = d2min_correlation(st.pos, d2, st.Lx, st.Ly, st.gamma, 6.0, 0.5,
                                     return_counts=True)
    good = npairs > 100
    assert good.sum() >= 10
    # exponential values: the product of two has variance var^2 * 1 (for
    # independent values E[x^2 y^2] = var^2), so SE = 1/sqrt(n)
    assert np.all(np.abs(C[good]) < 4.0 / np.sqrt(npairs[good]))
    res = correlation_length(r, C)
    assert not res.ok and np.isnan(res.xi) and res.flag


def test_d2min_correlation_gaussian_bumps():
    """D(x) = sum_c exp(-|x - c|^2 / (2 w^2)) over Poisson centres c has
    covariance rho (g * g)(r) = rho pi w^2 exp(-r^2 / (4 w^2)) (Campbell's
    theorem), so C(r) = exp(-r^2 / (4 w^2)) exactly at r -> 0+ and the
    "gauss" fit (C = A exp(-r^2 / (2 xi^2))) gives xi = sqrt(2) w.
    Sampling noise: a field has ~L^2 / (4 pi w^2) ~ 180 independent
    patches, so one C(r) is uncertain by ~7 %; the mean over 8 fields by
    ~2.6 %, and the fitted xi (a slope over a decade of C) by a few %:
    tolerance 10 % on xi and 0.1 on C itself at r <= 2w."""
    st = random_state(4000, 0.9, seed=14)
    w = 1.5
    rng = np.random.default_rng(4)
    Cs = []
    for _ in range(8):
        centres = rng.uniform(0, 1, size=(400, 2)) @ np.array([[st.Lx, 0], [0, st.Ly]])
        D = np.zeros(st.n)
        for c in centres:
            dist = minimum_image_distance(st.pos, c, st.Lx, st.Ly, st.gamma)
            D += np.exp(-dist ** 2 / (2 * w * w))
        r, C = d2min_correlation(st.pos, D, st.Lx, st.Ly, st.gamma, 8.0, 0.25)
        Cs.append(C)
    C = np.mean(Cs, axis=0)
    near = r <= 2 * w
    np.testing.assert_allclose(C[near], np.exp(-r[near] ** 2 / (4 * w * w)), atol=0.1)
    res = correlation_length(r, C, floor=0.05, model="gauss")
    assert res.ok and res.n >= 10
    assert res.xi == pytest.approx(np.sqrt(2) * w, rel=0.1)


def test_correlation_length_fit():
    r = (np.arange(40) + 0.5) * 0.25
    C = 0.8 * np.exp(-r / 1.7)
    res = correlation_length(r, C)
    assert res.ok and res.model == "exp"
    assert res.xi == pytest.approx(1.7, rel=1e-10)
    assert res.amplitude == pytest.approx(0.8, rel=1e-10)
    assert res.xi_err < 1e-10
    # range: up to the last bin with C > floor, from r_min on
    assert res.r_hi == r[np.flatnonzero(C > 0.05)[-1]]
    res = correlation_length(r, C, r_min=1.0)
    assert res.r_lo == r[r >= 1.0][0] and res.xi == pytest.approx(1.7, rel=1e-10)
    res = correlation_length(r, 0.9 * np.exp(-r ** 2 / (2 * 1.2 ** 2)), model="gauss")
    assert res.xi == pytest.approx(1.2, rel=1e-10)
    # failures: flagged NaN, never raises
    for bad in (np.full(40, 0.01), np.full(40, np.nan), np.full(40, 0.5)):
        res = correlation_length(r, bad)
        assert not res.ok and np.isnan(res.xi) and res.flag


def test_unreduced_tilt_needs_a_square_box():
    """Reducing the tilt by whole units maps the lattice onto itself only when
    Lx = Ly: a non-square box at |tilt| > 1/2 is refused, at |tilt| < 1/2 accepted."""
    rng = np.random.default_rng(3)
    pos = rng.uniform(0, 12, (200, 2))
    with pytest.raises(ValueError, match="square box"):
        neighbour_images(pos, 15.0, 12.0, -7.4, 2.0)
    offsets, nbr, im1, im2 = neighbour_images(pos, 15.0, 12.0, 0.3, 2.0)
    assert offsets[-1] > 0
