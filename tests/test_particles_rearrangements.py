"""Tests of particles/rearrangements.py (SPEC.md sections 0 and 2, issue 5).

Tolerances follow from the maths:
- an affine map x' = A x fits exactly: J = A and D2min = 0 up to round-off
  of O(10) products of lengths <= ~50, i.e. |J - A| <= 1e-12 and
  D2min <= 1e-24 (length^2; a residual of ~1e-13 squared).
- comparisons with the slow numpy reference and the lattice-shift identity
  only reorder / re-round floating-point sums: rtol 1e-10 with an absolute
  floor of 1e-14 on D2min (its values here are ~1e-3).
"""

import itertools

import numpy as np
import pytest

from step_epm.particles import random_state
from step_epm.particles.rearrangements import (D_LARGE, D_SMALL, local_deformation,
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
