"""Block LDL^T (particles/block_ldl.py) against dense and SciPy references.

Tolerances. LDL^T without pivoting of a symmetric positive definite matrix
is backward stable: the computed factors satisfy L D L^T = A + E with
|E| <= c n u |L||D||L^T| (u = 1.1e-16; Higham, "Accuracy and Stability of
Numerical Algorithms", ch. 10), and for an SPD matrix |L||D||L^T| is of
the order of ||A||. The measured backward errors are ~3e-17 relative; the
tests allow 1e-13 (a margin of ~10^3, i.e. c n ~ 10^3 at these sizes).
Forward errors (agreement with another solver, or between orderings) are
backward error times the condition number, so they are tested on a shifted
Newton matrix whose condition number is below ~1e4 (tolerance 1e-10), not
on the Newton matrix itself (condition number ~1e12 from its 1e-10 shift).
"""
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from step_epm.particles import block_ldl as bl
from step_epm.particles.minimize import NewtonSolver, minimize
from step_epm.particles.packing import random_state
from step_epm.particles.potential import NeighbourList

BACKWARD_TOL = 1e-13
FORWARD_TOL = 1e-10

# analysis settings exercising the code paths: default amalgamation,
# fundamental supernodes only (no explicit zeros, unlimited size), one node
# per supernode (every extend-add scattered), strong amalgamation with
# supernodes cut at 3 nodes (chains of pieces, contiguous extend-adds)
SETTINGS = {
    "default": {},
    "fundamental": dict(relax=(0, 0, 0), zrelax=(0.0, 0.0, 0.0), max_supernode=10**9),
    "single": dict(relax=(0, 0, 0), zrelax=(0.0, 0.0, 0.0), max_supernode=1),
    "relaxed": dict(relax=(8, 32, 64), zrelax=(0.9, 0.5, 0.3), max_supernode=3),
}


def newton_matrix(n, seed):
    """The Newton solver's H + D (2n, 2n) at a minimised random packing."""
    state, _ = minimize(random_state(n, 0.9, seed=seed), 1e-12, raise_on_failure=True)
    A, _ = NewtonSolver()._matrix(state.sheared(1e-4), NeighbourList())
    return A


@pytest.fixture(scope="module")
def A200():
    return newton_matrix(200, 1)


@pytest.fixture(scope="module")
def A64():
    return newton_matrix(64, 2)


def shifted(A):
    """A + mean(diag A) I: SPD with condition number ~1e2 - 1e3."""
    return (A + A.diagonal().mean() * sp.identity(A.shape[0], format="csc")).tocsc()


def backward_error(A, x, b):
    """||A x - b|| / (||A|| ||x||), infinity norms."""
    return (np.abs(A @ x - b).max()
            / (spla.norm(A, np.inf) * np.abs(x).max()))


def factor(A, perm=None, **kw):
    ip, ii = bl.node_pattern(A)
    return bl.factorize(bl.analyse(ip, ii, perm, **kw), A)


@pytest.mark.parametrize("setting", SETTINGS)
def test_solve_newton_matrix(A200, setting):
    A = A200
    f = factor(A, **SETTINGS[setting])
    assert f.positive_definite and f.npd_node == -1 and not f.singular
    rng = np.random.default_rng(0)
    for _ in range(3):
        b = rng.standard_normal(A.shape[0])
        x = f.solve(b)
        assert backward_error(A, x, b) < BACKWARD_TOL
    # SuperLU (as NewtonSolver uses it) reaches the same backward error
    lu = spla.splu(A, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                   options={"SymmetricMode": True})
    assert backward_error(A, lu.solve(b), b) < BACKWARD_TOL


@pytest.mark.parametrize("setting", SETTINGS)
def test_agrees_with_spsolve(A200, setting):
    A = shifted(A200)
    b = np.random.default_rng(1).standard_normal(A.shape[0])
    x = factor(A, **SETTINGS[setting]).solve(b)
    ref = spla.spsolve(A, b)
    assert np.abs(x - ref).max() <= FORWARD_TOL * np.abs(ref).max()


@pytest.mark.parametrize("setting", SETTINGS)
def test_ldlt_reproduces_matrix(A64, setting):
    A = A64
    f = factor(A, **SETTINGS[setting])
    L, D, p = f.to_sparse()
    Ld = L.toarray()
    assert np.allclose(np.diag(Ld), 1.0) and not np.triu(Ld, 1).any()
    # identity diagonal blocks
    n = A.shape[0] // 2
    assert not Ld.reshape(n, 2, n, 2)[np.arange(n), 1, np.arange(n), 0].any()
    E = Ld @ D.toarray() @ Ld.T - A.toarray()[np.ix_(p, p)]
    assert np.abs(E).max() <= BACKWARD_TOL * np.abs(A).max()
    # the analysed block pattern holds every nonzero of L (and L's true
    # pattern is what the elimination tree predicts: no block is missing)
    sym = f.sym
    pattern = np.zeros((n, n), bool)
    for j in range(n):
        pattern[sym.Li[sym.Lp[j]:sym.Lp[j + 1]], j] = True
    nz = np.abs(Ld.reshape(n, 2, n, 2)).sum(axis=(1, 3)) > 0
    np.fill_diagonal(nz, False)
    assert not (nz & ~pattern).any()
    dense_pattern = np.linalg.cholesky(
        np.abs(A.toarray()).reshape(n, 2, n, 2).sum(axis=(1, 3))[np.ix_(sym.perm, sym.perm)]
        + 4 * n * np.eye(n)) != 0  # generic values: fill of the node graph
    np.fill_diagonal(dense_pattern, False)
    assert (dense_pattern == pattern).all()


def test_ordering_independent(A200):
    A = shifted(A200)
    n = A.shape[0] // 2
    b = np.random.default_rng(2).standard_normal(2 * n)
    ip, ii = bl.node_pattern(A)
    fill = bl.analyse(ip, ii)
    ident = bl.analyse(ip, ii, np.arange(n))
    rand = bl.analyse(ip, ii, np.random.default_rng(3).permutation(n))
    assert fill.nnz_blocks < ident.nnz_blocks and fill.nnz_blocks < rand.nnz_blocks
    x = [bl.factorize(s, A).solve(b) for s in (fill, ident, rand)]
    for y in x[1:]:
        assert np.abs(y - x[0]).max() <= FORWARD_TOL * np.abs(x[0]).max()
    # the unshifted Newton matrix: every ordering reaches the backward error
    for s in (fill, ident, rand):
        y = bl.factorize(s, A200).solve(b)
        assert backward_error(A200, y, b) < BACKWARD_TOL


def test_fill_close_to_superlu(A200):
    """The node-level ordering fills about as much as SuperLU's scalar MMD."""
    A = A200
    ip, ii = bl.node_pattern(A)
    sym = bl.analyse(ip, ii)
    lu = spla.splu(A, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                   options={"SymmetricMode": True})
    assert sym.nnz_scalar < 1.2 * lu.L.nnz


def two_node(perm):
    """Node 0 block I, node 1 block I/2, coupling I: eliminating 0 first
    leaves I/2 - I = -I/2 at node 1, eliminating 1 first leaves I - 2I = -I
    at node 0."""
    A = np.block([[np.eye(2), np.eye(2)], [np.eye(2), 0.5 * np.eye(2)]])
    A = sp.csc_matrix(A)
    return factor(A, np.array(perm)), A


@pytest.mark.parametrize("perm, node", [([0, 1], 1), ([1, 0], 0)])
def test_two_node_indefinite(perm, node):
    f, A = two_node(perm)
    assert not f.positive_definite and f.npd_node == node and not f.singular
    # still an exact LDL^T of the (nonsingular, indefinite) matrix
    b = np.array([1.0, 2.0, 3.0, 4.0])
    assert np.allclose(A @ f.solve(b), b, rtol=0, atol=1e-14)


def first_indefinite_leading(C):
    """Smallest k such that the leading 2(k + 1) x 2(k + 1) block of C is
    not positive definite (dense eigenvalues), and its smallest eigenvalue."""
    for k in range(C.shape[0] // 2):
        lam = np.linalg.eigvalsh(C[:2 * k + 2, :2 * k + 2])[0]
        if lam <= 0:
            return k, lam
    return -1, None


def test_indefinite_newton_matrix_reports_first_node(A64):
    A = A64
    lam = np.linalg.eigvalsh(A.toarray())
    assert lam[0] > 0
    # shift between the 3rd and 4th eigenvalues: 3 negative ones
    sigma = 0.5 * (lam[2] + lam[3])
    As = (A - sigma * sp.identity(A.shape[0], format="csc")).tocsc()
    ip, ii = bl.node_pattern(As)
    for perm in (None, np.arange(A.shape[0] // 2)):
        sym = bl.analyse(ip, ii, perm)
        f = bl.factorize(sym, As)
        p = (2 * sym.perm[:, None] + np.arange(2)).ravel()
        k, lam_k = first_indefinite_leading(As.toarray()[np.ix_(p, p)])
        assert k >= 0 and abs(lam_k) > 1e-8 * lam[-1]  # not a near tie
        assert not f.positive_definite
        assert f.npd_node == sym.perm[k]
    # and the unshifted matrix is positive definite under both orderings
    assert factor(A).positive_definite and factor(A, np.arange(A.shape[0] // 2)).positive_definite


def test_singular_block_flagged():
    A = sp.csc_matrix(np.diag([1.0, 1.0, 0.0, 0.0, 2.0, 2.0]))
    f = factor(A, np.arange(3))
    assert f.singular and not f.positive_definite and f.npd_node == 1


def drop_blocks(A, pairs):
    """A without the (i, j) and (j, i) node blocks of ``pairs``, plus
    ||A||_inf I so it stays SPD (Gershgorin)."""
    A = A.tolil()
    for i, j in pairs:
        for a in range(2):
            for b in range(2):
                A[2 * i + a, 2 * j + b] = 0.0
                A[2 * j + b, 2 * i + a] = 0.0
    A = A.tocsc()
    A.eliminate_zeros()
    return (A + spla.norm(A, np.inf) * sp.identity(A.shape[0], format="csc")).tocsc()


def test_pattern_subset(A200):
    A = A200
    ip, ii = bl.node_pattern(A)
    sym = bl.analyse(ip, ii)
    n = A.shape[0] // 2
    pairs = [(j, i) for j in range(0, n, 7) for i in ii[ip[j]:ip[j + 1]] if i > j]
    B = drop_blocks(A, pairs[::2])
    assert B.nnz < A.nnz
    b = np.random.default_rng(4).standard_normal(2 * n)
    x = bl.factorize(sym, B).solve(b)
    ref = spla.spsolve(B, b)
    assert np.abs(x - ref).max() <= FORWARD_TOL * np.abs(ref).max()
    assert backward_error(B, x, b) < BACKWARD_TOL
    # a diagonal-only matrix (every contact dropped) too
    Dg = sp.diags(A.diagonal()).tocsc()
    assert np.allclose(bl.factorize(sym, Dg).solve(b), b / A.diagonal(), rtol=1e-15, atol=0)
    # but an entry outside the analysed pattern is an error
    ip2, ii2 = bl.node_pattern(B)
    with pytest.raises(ValueError, match="outside the analysed pattern"):
        bl.factorize(bl.analyse(ip2, ii2), shifted(A))


def test_deterministic(A200):
    A = A200
    ip, ii = bl.node_pattern(A)
    b = np.random.default_rng(5).standard_normal(A.shape[0])
    f1 = bl.factorize(bl.analyse(ip, ii), A)
    f2 = bl.factorize(bl.analyse(ip, ii), A)
    assert np.array_equal(f1.Lx, f2.Lx) and np.array_equal(f1.D, f2.D)
    assert np.array_equal(f1.solve(b), f2.solve(b))
    assert np.array_equal(f1.solve(b), f1.solve(b))


def test_node_pattern():
    rng = np.random.default_rng(6)
    n = 9
    M = sp.random(2 * n, 2 * n, density=0.08, random_state=rng, format="csc")  # not symmetric
    ip, ii = bl.node_pattern(M)
    nodes = (M.toarray() != 0).reshape(n, 2, n, 2).any(axis=(1, 3))
    nodes = nodes | nodes.T | np.eye(n, dtype=bool)
    G = sp.csc_matrix((np.ones(len(ii)), ii, ip), shape=(n, n)).toarray() != 0
    assert (G == nodes).all()
    for j in range(n):
        assert np.all(np.diff(ii[ip[j]:ip[j + 1]]) > 0)


def test_node_pattern_of_full_blocks(A200):
    """The one-pass graph of a matrix made of whole symmetric 2x2 blocks (the
    Newton matrix, loose particles' lone diagonals included) is the
    symmetrised one."""
    ip, ii = bl.node_pattern(A200)
    fp, fi = bl.node_pattern(A200, full_blocks=True)
    np.testing.assert_array_equal(fp, ip)
    np.testing.assert_array_equal(fi, ii)


@pytest.mark.parametrize("ordering", ["mmd", "random"])
def test_postorder_relabels_the_elimination_tree(A200, ordering):
    """analyse relabels the elimination tree and column counts along the
    postorder instead of recomputing them: equal to _etree of the
    postordered ordering."""
    ip, ii = bl.node_pattern(A200)
    n = len(ip) - 1
    perm = (bl.fill_reducing_order(ip, ii) if ordering == "mmd"
            else np.random.default_rng(3).permutation(n).astype(np.int64))
    pinv = np.empty(n, np.int64)
    pinv[perm] = np.arange(n)
    parent, lnz = bl._etree(ip, ii, perm, pinv)
    post = bl._postorder(parent)
    assert not np.array_equal(post, np.arange(n))  # a relabelling happens
    got_parent, got_lnz = bl._relabel_tree(parent, lnz, post)
    perm2 = perm[post]
    pinv[perm2] = np.arange(n)
    want_parent, want_lnz = bl._etree(ip, ii, perm2, pinv)
    np.testing.assert_array_equal(got_parent, want_parent)
    np.testing.assert_array_equal(got_lnz, want_lnz)
    sym = bl.analyse(ip, ii, perm)
    np.testing.assert_array_equal(sym.parent, want_parent)


def test_shapes_and_errors(A64):
    A = A64
    f = factor(A)
    n = A.shape[0] // 2
    assert f.D.shape == (n, 2, 2) and f.Dinv.shape == (n, 2, 2)
    assert np.allclose(np.einsum("kij,kjl->kil", f.D, f.Dinv), np.eye(2), atol=1e-6)
    with pytest.raises(ValueError):
        f.solve(np.ones(2 * n + 1))
    with pytest.raises(ValueError):
        bl.factorize(f.sym, sp.identity(2 * n + 2, format="csc"))
    ip, ii = bl.node_pattern(A)
    with pytest.raises(ValueError):
        bl.analyse(ip, ii, np.zeros(n, np.int64))
