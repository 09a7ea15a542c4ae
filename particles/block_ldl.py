"""Sparse block LDL^T factorisation of symmetric matrices with 2x2 node blocks.

The Newton matrix of the particle engine (2N x 2N, dofs 2i and 2i + 1 belong
to particle i) is factorised as

    P A P^T = L D L^T,

where P permutes whole nodes, L is unit block lower triangular (2x2 blocks,
identity diagonal blocks) and D is block diagonal with symmetric 2x2 blocks.
There is no pivoting: at a stable state A is positive definite, and A is SPD
iff every D block is (which :func:`factorize` reports, with the first node
where it fails, instead of raising).

Three phases, so that the expensive analysis is reused::

    indptr, indices = node_pattern(A)                # (N,) node graph
    perm = fill_reducing_order(indptr, indices)      # once per pattern
    sym = analyse(indptr, indices, perm)             # etree + pattern of L
    fac = factorize(sym, A)                          # any A whose pattern is a subset
    x = fac.solve(b)

The analysis is Davis's (T. A. Davis, "Direct Methods for Sparse Linear
Systems", SIAM 2006: elimination tree and row/column counts as in his
``ldl_symbolic``, postorder as ``cs_post``) at node level, followed by
supernodes: runs of columns with one pattern below, amalgamated CHOLMOD-style
(a few explicit zeros buy larger dense blocks) and cut at MAX_SUPERNODE
nodes. The numeric phase is multifrontal: each supernode's dense front is
assembled from A and its children's update matrices (a stack, thanks to the
postorder), its pivot columns are factorised by 2x2 node pivots (hand
unrolled 2x2 algebra), and its Schur complement is formed by a register
blocked dense kernel whose inner loops vectorise. That keeps most of the
work in dense loops, which is where the speed over an up-looking scalar or
2x2-block algorithm (and over SuperLU) comes from. Entries of A missing from
the analysed pattern are simply zeros.

All numba kernels live in this module (on-disk cache consistency), and none
of them is parallel: every result is bit-for-bit independent of the thread
count.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from numba import njit

__all__ = ["Factor", "Symbolic", "analyse", "factorize", "fill_reducing_order",
           "node_pattern"]


# --------------------------------------------------------------------------
# Node pattern
# --------------------------------------------------------------------------

@njit(cache=True)
def _node_pattern(n, indptr, indices):
    """Symmetric node adjacency (with the diagonal) of a (2n, 2n) CSC pattern."""
    # pass 1: node (i, j) pairs of the pattern and of its transpose, deduplicated
    # per column with a marker.
    mark = np.full(n, -1, np.int64)
    cnt = np.zeros(n + 1, np.int64)
    for j in range(n):
        mark[j] = j
        cnt[j] += 1  # the diagonal
        for c in range(2 * j, 2 * j + 2):
            for p in range(indptr[c], indptr[c + 1]):
                i = indices[p] >> 1
                if mark[i] != j:
                    mark[i] = j
                    cnt[i] += 1  # (j, i) in column i: counted from the transpose
    # the pattern may not be structurally symmetric: build the transpose
    # contribution (column i gets j for every (i, j) entry) and the direct one,
    # then deduplicate column by column.
    tp = np.zeros(n + 1, np.int64)
    for j in range(n):
        tp[j + 1] = tp[j] + cnt[j]
    ti = np.empty(tp[n], np.int64)
    nxt = tp[:n].copy()
    mark[:] = -1
    for j in range(n):
        mark[j] = j
        ti[nxt[j]] = j
        nxt[j] += 1
        for c in range(2 * j, 2 * j + 2):
            for p in range(indptr[c], indptr[c + 1]):
                i = indices[p] >> 1
                if mark[i] != j:
                    mark[i] = j
                    ti[nxt[i]] = j
                    nxt[i] += 1
    # ti now holds, in column i, the nodes j with an (i, j) block entry
    # (sorted: j increasing). Merge with the direct column pattern.
    out_p = np.zeros(n + 1, np.int64)
    out_i = np.empty(2 * tp[n], np.int64)
    mark[:] = -1
    q = 0
    for j in range(n):
        start = q
        for p in range(tp[j], tp[j + 1]):
            i = ti[p]
            if mark[i] != j:
                mark[i] = j
                out_i[q] = i
                q += 1
        for c in range(2 * j, 2 * j + 2):
            for p in range(indptr[c], indptr[c + 1]):
                i = indices[p] >> 1
                if mark[i] != j:
                    mark[i] = j
                    out_i[q] = i
                    q += 1
        out_i[start:q].sort()
        out_p[j + 1] = q
    return out_p, out_i[:q].copy()


def node_pattern(A, full_blocks: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Node graph of a (2N, 2N) sparse matrix with 2x2 block structure.

    Node j is adjacent to node i iff any of the four entries of block (i, j)
    or of block (j, i) is in the pattern of A (explicit zeros count). Returns
    ``(indptr (N + 1,), indices)`` (int64), the CSC (= CSR) pattern of the
    symmetric N x N node graph, diagonal included, rows sorted in each column.

    ``full_blocks``: the caller guarantees that A's pattern is symmetric,
    made of whole 2x2 blocks, holds every diagonal block and has sorted
    rows (as the Newton matrix of kernels.newton_matrix); the graph is then
    read off the even rows of the even columns, in one pass, instead of
    being symmetrised (a tenth of the time).
    """
    A = sp.csc_matrix(A)
    n2 = A.shape[0]
    if A.shape != (n2, n2) or n2 % 2:
        raise ValueError(f"need a square matrix of even order, got {A.shape}")
    if full_blocks:
        return _even_pattern(n2 // 2, A.indptr, A.indices)
    return _node_pattern(n2 // 2, A.indptr.astype(np.int64), A.indices.astype(np.int64))


@njit(cache=True)
def _even_pattern(n, indptr, indices):
    """Node graph of a (2n, 2n) CSC pattern made of whole, symmetric 2x2
    blocks with sorted rows: column i holds row // 2 of the even rows of
    column 2i."""
    out_p = np.zeros(n + 1, np.int64)
    for i in range(n):
        c = 0
        for p in range(indptr[2 * i], indptr[2 * i + 1]):
            if indices[p] & 1 == 0:
                c += 1
        out_p[i + 1] = out_p[i] + c
    out_i = np.empty(out_p[n], np.int64)
    q = 0
    for i in range(n):
        for p in range(indptr[2 * i], indptr[2 * i + 1]):
            r = indices[p]
            if r & 1 == 0:
                out_i[q] = r >> 1
                q += 1
    return out_p, out_i


# --------------------------------------------------------------------------
# Ordering
# --------------------------------------------------------------------------

def fill_reducing_order(indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Fill-reducing node ordering: multiple minimum degree (SuperLU's
    ``MMD_AT_PLUS_A``) on the node graph.

    Takes the node pattern of :func:`node_pattern`; returns ``perm`` (N,)
    int64 with ``perm[k]`` the node eliminated k-th (so the factorised matrix
    is A[perm][:, perm] at node level). SuperLU computes its ordering before
    any numeric work, so it is read off an incomplete factorisation that
    drops every fill entry (``spilu``, drop_tol = 1: the same ``perm_c`` as
    ``splu`` gives, at 0.4 of its cost) of the N x N graph Laplacian + I
    (diagonally dominant, no pivoting). Meant to be reused for every matrix
    with this pattern or a subset of it.
    """
    n = len(indptr) - 1
    indptr = np.asarray(indptr)
    indices = np.asarray(indices)
    cols = np.repeat(np.arange(n), np.diff(indptr))
    # Laplacian + I: -1 off the diagonal, the degree + 1 (= entries in the
    # column, the diagonal included) on it
    data = np.where(indices == cols, np.diff(indptr)[cols].astype(float), -1.0)
    M = sp.csc_matrix((data, indices, indptr), shape=(n, n))
    lu = spla.spilu(M, drop_tol=1.0, fill_factor=1.0, permc_spec="MMD_AT_PLUS_A",
                    diag_pivot_thresh=0.0, options={"SymmetricMode": True})
    perm = np.empty(n, np.int64)
    perm[lu.perm_c] = np.arange(n)  # perm_c[i] = position of node i
    return perm


# --------------------------------------------------------------------------
# Symbolic analysis
# --------------------------------------------------------------------------

@njit(cache=True)
def _etree(indptr, indices, perm, pinv):
    """Elimination tree and column counts (strictly lower blocks) of L for
    C = A[perm][:, perm] at node level (Davis's ``ldl_symbolic``)."""
    n = perm.shape[0]
    parent = np.full(n, -1, np.int64)
    flag = np.empty(n, np.int64)
    lnz = np.zeros(n, np.int64)
    for k in range(n):
        flag[k] = k
        kk = perm[k]
        for p in range(indptr[kk], indptr[kk + 1]):
            i = pinv[indices[p]]
            if i < k:
                while flag[i] != k:
                    if parent[i] == -1:
                        parent[i] = k
                    lnz[i] += 1
                    flag[i] = k
                    i = parent[i]
    return parent, lnz


@njit(cache=True)
def _postorder(parent):
    """Postorder of a forest (children visited in increasing order): post[k]
    is the k-th node of the postorder (Davis's ``cs_post``)."""
    n = parent.shape[0]
    head = np.full(n, -1, np.int64)
    nxt = np.full(n, -1, np.int64)
    for j in range(n - 1, -1, -1):
        if parent[j] != -1:
            nxt[j] = head[parent[j]]
            head[parent[j]] = j
    post = np.empty(n, np.int64)
    stack = np.empty(n, np.int64)
    k = 0
    for j in range(n):
        if parent[j] != -1:
            continue
        top = 0
        stack[0] = j
        while top >= 0:
            p = stack[top]
            i = head[p]
            if i == -1:
                top -= 1
                post[k] = p
                k += 1
            else:
                head[p] = nxt[i]
                top += 1
                stack[top] = i
    return post


@njit(cache=True)
def _relabel_tree(parent, lnz, post):
    """The elimination tree ``parent`` and column counts ``lnz`` (n,) in the
    positions of the postorder ``post`` (post[k] = old position of the k-th
    node)."""
    n = parent.shape[0]
    inv = np.empty(n, np.int64)
    for k in range(n):
        inv[post[k]] = k
    new_parent = np.full(n, -1, np.int64)
    new_lnz = np.empty(n, np.int64)
    for k in range(n):
        p = parent[post[k]]
        if p != -1:
            new_parent[k] = inv[p]
        new_lnz[k] = lnz[post[k]]
    return new_parent, new_lnz


@njit(cache=True)
def _analyse(indptr, indices, perm, pinv, parent, lnz, relax, zrelax, max_sn):
    """Pattern of L and the supernodal partition for a postordered ``perm``.

    Supernodes: fundamental ones (column j + 1 continues j's when it is j's
    parent and pattern(j) = {j + 1} + pattern(j + 1)), then amalgamated with
    their parent supernode (when it is the next one) CHOLMOD style: merge if
    the merged size s (nodes) and its fraction of explicit zero blocks z pass
    s <= relax[0] or (s <= relax[1] and z < zrelax[0]) or (s <= relax[2] and
    z < zrelax[1]) or z < zrelax[2]; then cut into pieces of at most
    ``max_sn`` nodes (a piece's parent is the next piece).

    Returns Lp (n + 1,), Li (CSC of L's strictly lower blocks, rows
    increasing), sn (nsn + 1,) (supernode J is columns sn[J]:sn[J + 1]), Sp
    (nsn + 1,), Si (the rows below each supernode's columns, increasing),
    nchild (nsn,), Loff (nsn + 1,) (offsets of the dense panels in Lx), the
    stack size (doubles), the largest front order (scalars) and the number of
    explicit zero blocks stored.
    """
    n = perm.shape[0]
    Lp = np.zeros(n + 1, np.int64)
    for k in range(n):
        Lp[k + 1] = Lp[k] + lnz[k]
    Li = np.empty(Lp[n], np.int64)
    nxt = Lp[:n].copy()
    flag = np.empty(n, np.int64)
    for k in range(n):
        flag[k] = k
        kk = perm[k]
        for p in range(indptr[kk], indptr[kk + 1]):
            i = pinv[indices[p]]
            if i < k:
                while flag[i] != k:
                    Li[nxt[i]] = k
                    nxt[i] += 1
                    flag[i] = k
                    i = parent[i]
    # fundamental supernodes
    fsn = np.empty(n + 1, np.int64)
    nf0 = 0
    for j in range(n):
        if j == 0 or not (parent[j - 1] == j and lnz[j - 1] == lnz[j] + 1):
            fsn[nf0] = j
            nf0 += 1
    fsn[nf0] = n
    fsn_of = np.empty(n, np.int64)
    for J in range(nf0):
        for j in range(fsn[J], fsn[J + 1]):
            fsn_of[j] = J
    # relaxed amalgamation, top down: J joins the group headed by J + 1
    head = np.ones(nf0, np.bool_)
    glast = np.empty(nf0, np.int64)   # last column of the group headed here
    gzero = np.zeros(nf0, np.int64)   # its explicit zero blocks
    glast[nf0 - 1] = n - 1
    for J in range(nf0 - 2, -1, -1):
        glast[J] = fsn[J + 1] - 1
        last = fsn[J + 1] - 1
        if parent[last] == -1 or fsn_of[parent[last]] != J + 1:
            continue
        gl = glast[J + 1]
        mg = lnz[gl]
        extra = 0
        for j in range(fsn[J], fsn[J + 1]):
            extra += gl - j + mg - lnz[j]
        zeros = gzero[J + 1] + extra
        ss = gl - fsn[J] + 1
        total = ss * (ss + 1) // 2 + ss * mg
        z = zeros / total
        if (ss <= relax[0] or (ss <= relax[1] and z < zrelax[0])
                or (ss <= relax[2] and z < zrelax[1]) or z < zrelax[2]):
            head[J + 1] = False
            glast[J] = gl
            gzero[J] = zeros
    # groups, cut into pieces of at most max_sn nodes
    sn = np.empty(n + 1, np.int64)
    nsn = 0
    nzero = 0
    for J in range(nf0):
        if not head[J]:
            continue
        nzero += gzero[J]
        f = fsn[J]
        while f <= glast[J]:
            sn[nsn] = f
            nsn += 1
            f = min(f + max_sn, glast[J] + 1)
    sn[nsn] = n
    sn = sn[:nsn + 1].copy()
    sn_of = np.empty(n, np.int64)
    for J in range(nsn):
        for j in range(sn[J], sn[J + 1]):
            sn_of[j] = J
    # rows below each supernode: the rest of its group, then the group's
    # last column's pattern
    Sp = np.zeros(nsn + 1, np.int64)
    snparent = np.full(nsn, -1, np.int64)
    gend = np.empty(nsn, np.int64)   # last column of J's group
    J = 0
    for G in range(nf0):
        if not head[G]:
            continue
        gl = glast[G]
        while J < nsn and sn[J] <= gl:
            gend[J] = gl
            Sp[J + 1] = Sp[J] + (gl + 1 - sn[J + 1]) + lnz[gl]
            if sn[J + 1] <= gl:
                snparent[J] = J + 1
            elif parent[gl] != -1:
                snparent[J] = sn_of[parent[gl]]
            J += 1
    Si = np.empty(Sp[nsn], np.int64)
    nchild = np.zeros(nsn, np.int64)
    Loff = np.zeros(nsn + 1, np.int64)
    maxf = 0
    for J in range(nsn):
        q = Sp[J]
        gl = gend[J]
        for j in range(sn[J + 1], gl + 1):
            Si[q] = j
            q += 1
        for p in range(Lp[gl], Lp[gl + 1]):
            Si[q] = Li[p]
            q += 1
        if snparent[J] != -1:
            nchild[snparent[J]] += 1
        s = sn[J + 1] - sn[J]
        nf = 2 * (s + Sp[J + 1] - Sp[J])
        Loff[J + 1] = Loff[J] + nf * 2 * s
        maxf = max(maxf, nf)
    # stack of update matrices: children of J are its top nchild[J] entries
    offs = np.empty(nsn + 1, np.int64)
    nst = 0
    top = 0
    stack_size = 0
    for J in range(nsn):
        if nchild[J] > 0:
            nst -= nchild[J]
            top = offs[nst]
        if snparent[J] != -1:
            m = 2 * (Sp[J + 1] - Sp[J])
            offs[nst] = top
            nst += 1
            top += m * m
            stack_size = max(stack_size, top)
    return Lp, Li, sn, Sp, Si, nchild, Loff, stack_size, maxf, nzero


_POOL: dict[str, np.ndarray] = {}


def _pool(name: str, size: int, dtype=np.float64) -> np.ndarray:
    """The first ``size`` entries of the module's work array ``name``, grown
    (never shrunk) as analyses need: fresh multi-MB arrays for every
    factorisation cost more in first-touch page faults than the work in
    small fronts. Not thread-safe (neither is one numba kernel's use of it)."""
    a = _POOL.get(name)
    if a is None or a.size < size:
        a = _POOL[name] = np.empty(max(size, 1), dtype)
    return a[:size]


@dataclasses.dataclass(frozen=True)
class Symbolic:
    """Result of :func:`analyse` (node level, n = N nodes).

    perm, pinv (n,): the ordering actually used (the given one, postordered
    along its elimination tree, which changes no fill) and its inverse:
    ``perm[k]`` is the node eliminated k-th. parent (n,): elimination tree
    (-1 at roots). Lp (n + 1,), Li: CSC of the strictly lower block pattern of
    L (eliminated positions, rows increasing). sn (nsn + 1,): supernode J is
    the run of columns sn[J]:sn[J + 1], stored as one dense panel whose rows
    are its columns then Si[Sp[J]:Sp[J + 1]] (increasing); nchild (nsn,): its
    children in the supernodal tree; Loff (nsn + 1,): offsets of the panels in
    :attr:`Factor.Lx`. stack_size, max_front: workspace of the multifrontal
    factorisation (doubles; scalar order). zero_blocks: explicit zero blocks
    stored by the amalgamation.
    """
    perm: np.ndarray
    pinv: np.ndarray
    parent: np.ndarray
    Lp: np.ndarray
    Li: np.ndarray
    sn: np.ndarray
    Sp: np.ndarray
    Si: np.ndarray
    nchild: np.ndarray
    Loff: np.ndarray
    stack_size: int
    max_front: int
    zero_blocks: int

    def workspace(self) -> tuple:
        """The numeric factorisation's work arrays for this analysis (front
        buffers G, WT (max_front^2), W0, W1, cmap (max_front), the update
        stack (stack_size), its index arrays (nsn + 1), rel, mark (n)): views
        of this module's work pool (:func:`_pool`)."""
        f, nsn, n = self.max_front, len(self.sn) - 1, self.n
        return (_pool("G", f * f), _pool("WT", f * f), _pool("W0", f), _pool("W1", f),
                _pool("cmap", f, np.int64), _pool("stack", self.stack_size),
                _pool("stk_id", nsn + 1, np.int64), _pool("stk_off", nsn + 1, np.int64),
                _pool("rel", n, np.int64), _pool("mark", n, np.int64))

    @property
    def n(self) -> int:
        """Number of nodes N (the matrix is 2N x 2N)."""
        return len(self.perm)

    @property
    def nnz_blocks(self) -> int:
        """Strictly lower 2x2 blocks of L (its true pattern, without the
        amalgamation's explicit zeros)."""
        return len(self.Li)

    @property
    def nnz_scalar(self) -> int:
        """Nonzeros of the scalar lower triangle of L incl. its diagonal, as a
        scalar LDL^T or Cholesky factor stores them: 4 per off-diagonal block,
        3 per diagonal block (comparable with SuperLU's ``L.nnz``)."""
        return 4 * len(self.Li) + 3 * self.n

    @property
    def flops(self) -> int:
        """Multiply-adds of a scalar Cholesky with L's true pattern:
        sum over scalar columns of c (c + 1) / 2 (c: entries below the
        diagonal), the usual measure of factorisation work."""
        c = np.diff(self.Lp) * 2
        c = np.concatenate([c + 1, c])  # the two scalar columns of each node
        return int(np.sum(c * (c + 1) // 2))


#: Amalgamation defaults (as CHOLMOD's nrelax / zrelax, in nodes, a little
#: less relaxed than CHOLMOD's (4, 16, 48) / (0.8, 0.1, 0.05)) and the
#: largest supernode (nodes): see _analyse. Measured at N = 4000 and 16000,
#: the factorisation time varies by less than ~10 % over these choices.
RELAX = (2, 8, 16)
ZRELAX = (0.5, 0.1, 0.02)
MAX_SUPERNODE = 32


def analyse(indptr: np.ndarray, indices: np.ndarray, perm: np.ndarray | None = None,
            relax: tuple[int, int, int] = RELAX,
            zrelax: tuple[float, float, float] = ZRELAX,
            max_supernode: int = MAX_SUPERNODE) -> Symbolic:
    """Symbolic analysis of the node pattern ``(indptr, indices)`` (N nodes,
    symmetric, as from :func:`node_pattern`) under the ordering ``perm`` (N,)
    (default: :func:`fill_reducing_order`). The ordering is postordered along
    its elimination tree (same fill). ``relax``, ``zrelax``: supernode
    amalgamation (explicit zeros traded for larger dense blocks; relax =
    (0, 0, 0), zrelax = (0, 0, 0) keeps the fundamental supernodes);
    ``max_supernode``: the largest supernode, in nodes. Returns a
    :class:`Symbolic`."""
    indptr = np.ascontiguousarray(indptr, np.int64)
    indices = np.ascontiguousarray(indices, np.int64)
    if perm is None:
        perm = fill_reducing_order(indptr, indices)
    perm = np.ascontiguousarray(perm, np.int64)
    n = len(indptr) - 1
    if perm.shape != (n,) or not np.array_equal(np.sort(perm), np.arange(n)):
        raise ValueError("perm must be a permutation of range(N)")
    if max_supernode < 1:
        raise ValueError("max_supernode must be >= 1")
    pinv = np.empty(n, np.int64)
    pinv[perm] = np.arange(n)
    parent, lnz = _etree(indptr, indices, perm, pinv)
    post = _postorder(parent)
    perm = perm[post]
    pinv[perm] = np.arange(n)
    # a postorder is an equivalent ordering: the same tree and column counts,
    # relabelled (tests/test_block_ldl.py checks this against _etree)
    parent, lnz = _relabel_tree(parent, lnz, post)
    out = _analyse(indptr, indices, perm, pinv, parent, lnz,
                   np.asarray(relax, np.int64), np.asarray(zrelax, np.float64),
                   int(max_supernode))
    Lp, Li, sn, Sp, Si, nchild, Loff, stack_size, maxf, nzero = out
    return Symbolic(perm, pinv, parent, Lp, Li, sn, Sp, Si, nchild, Loff, int(stack_size),
                    int(maxf), int(nzero))


# --------------------------------------------------------------------------
# Numeric factorisation
# --------------------------------------------------------------------------

@njit(cache=True)
def _factorize(perm, pinv, sn, Sp, Si, nchild, Loff, indptr, indices, data, Lx, D, Dinv,
               G, WT, W0, W1, cmap, stack, stk_id, stk_off, rel, mark):
    """Multifrontal block LDL^T of C = P A P^T (node permutation ``perm``).

    Supernode J (nodes f:l, s = l - f, m rows below: Si[Sp[J]:Sp[J + 1]]) has
    a dense front of order nf = ns + mm (ns = 2 s, mm = 2 m): the lower part
    of C's columns f:l plus its children's update matrices. Its first ns
    columns, the panel, live in Lx[Loff[J]:] as an (nf, ns) row-major array;
    the trailing (mm, mm) block in the buffer G (row-major, lower triangle).
    The panel is factorised by 2x2 block pivots (it ends up holding L, zeros
    in and above its diagonal blocks), and G - L21 D L21^T goes on the
    stack for the parent. Fills D and Dinv (n, 4) (row-major 2x2 blocks).
    Returns (first position with a non-positive-definite D block, first with
    a singular one, first column holding an entry outside the analysed
    pattern), each -1 if none; it stops at such an entry. The remaining
    arguments are the workspace of :meth:`Symbolic.workspace` (contents
    irrelevant on entry).
    """
    n = perm.shape[0]
    nsn = sn.shape[0] - 1
    nst = 0
    top = 0
    mark[:] = -1
    first_npd = -1
    first_sing = -1
    bad = -1
    for J in range(nsn):
        f = sn[J]
        l = sn[J + 1]
        s = l - f
        S0 = Sp[J]
        m = Sp[J + 1] - S0
        ns = 2 * s
        mm = 2 * m
        nf = ns + mm
        P = Lx[Loff[J]:Loff[J + 1]]
        for t in range(s):
            rel[f + t] = 2 * t
            mark[f + t] = J
        for q in range(m):
            i = Si[S0 + q]
            rel[i] = ns + 2 * q
            mark[i] = J
        for i in range(nf * ns):
            P[i] = 0.0
        for i in range(mm):
            g = G[i * mm:i * mm + i + 1]
            for j in range(i + 1):
                g[j] = 0.0
        # assemble the lower part of C's columns f:l
        for t in range(s):
            k = f + t
            kk = perm[k]
            for b in range(2):
                c = 2 * kk + b
                col = 2 * t + b
                for p in range(indptr[c], indptr[c + 1]):
                    r = indices[p]
                    i = pinv[r >> 1]
                    if i < k:
                        continue
                    if mark[i] != J:
                        return first_npd, first_sing, k  # not in the analysed pattern
                    row = rel[i] + (r & 1)
                    if row >= col:
                        P[row * ns + col] += data[p]
        # extend-add the children's update matrices (the top of the stack):
        # entry (i, j) of the front goes to P if j < ns, else to G
        nc = nchild[J]
        for ci in range(nst - nc, nst):
            C = stk_id[ci]
            off = stk_off[ci]
            cS0 = Sp[C]
            cm = Sp[C + 1] - cS0
            cn = 2 * cm
            r0 = rel[Si[cS0]]
            if rel[Si[cS0 + cm - 1]] == r0 + cn - 2:
                # the child's rows are consecutive rows r0:r0+cn of the front
                for i in range(cn):
                    pi = r0 + i
                    u = stack[off + i * cn:off + i * cn + i + 1]
                    jp = min(i + 1, max(ns - r0, 0))  # columns j < jp go to P
                    if jp > 0:
                        prow = P[pi * ns + r0:pi * ns + r0 + jp]
                        for j in range(jp):
                            prow[j] += u[j]
                    if jp < i + 1:
                        g0 = (pi - ns) * mm + r0 - ns
                        grow = G[g0 + jp:g0 + i + 1]
                        ut = u[jp:i + 1]
                        for j in range(i + 1 - jp):
                            grow[j] += ut[j]
            else:
                for a in range(cm):
                    cmap[a] = rel[Si[cS0 + a]]
                for a in range(cm):
                    ra = cmap[a]
                    u0 = off + 2 * a * cn
                    u1 = u0 + cn
                    if ra < ns:
                        f0 = ra * ns
                        f1 = f0 + ns
                        for bn in range(a):
                            rb = cmap[bn]
                            P[f0 + rb] += stack[u0 + 2 * bn]
                            P[f0 + rb + 1] += stack[u0 + 2 * bn + 1]
                            P[f1 + rb] += stack[u1 + 2 * bn]
                            P[f1 + rb + 1] += stack[u1 + 2 * bn + 1]
                        P[f0 + ra] += stack[u0 + 2 * a]
                        P[f1 + ra] += stack[u1 + 2 * a]
                        P[f1 + ra + 1] += stack[u1 + 2 * a + 1]
                    else:
                        f0 = ra * ns
                        f1 = f0 + ns
                        g0 = (ra - ns) * mm - ns
                        g1 = g0 + mm
                        for bn in range(a):
                            rb = cmap[bn]
                            if rb < ns:
                                P[f0 + rb] += stack[u0 + 2 * bn]
                                P[f0 + rb + 1] += stack[u0 + 2 * bn + 1]
                                P[f1 + rb] += stack[u1 + 2 * bn]
                                P[f1 + rb + 1] += stack[u1 + 2 * bn + 1]
                            else:
                                G[g0 + rb] += stack[u0 + 2 * bn]
                                G[g0 + rb + 1] += stack[u0 + 2 * bn + 1]
                                G[g1 + rb] += stack[u1 + 2 * bn]
                                G[g1 + rb + 1] += stack[u1 + 2 * bn + 1]
                        G[g0 + ra] += stack[u0 + 2 * a]
                        G[g1 + ra] += stack[u1 + 2 * a]
                        G[g1 + ra + 1] += stack[u1 + 2 * a + 1]
        if nc > 0:
            nst -= nc
            top = stk_off[nst]
        # factorise the panel, right-looking by 2x2 node pivots
        for t in range(s):
            c0 = 2 * t
            a = P[c0 * ns + c0]
            bb = P[(c0 + 1) * ns + c0]
            d = P[(c0 + 1) * ns + c0 + 1]
            P[c0 * ns + c0] = 0.0
            P[(c0 + 1) * ns + c0] = 0.0
            P[(c0 + 1) * ns + c0 + 1] = 0.0
            k = f + t
            D[k, 0] = a
            D[k, 1] = bb
            D[k, 2] = bb
            D[k, 3] = d
            det = a * d - bb * bb
            if not (a > 0.0 and det > 0.0) and first_npd < 0:
                first_npd = k
            if det != 0.0 and np.isfinite(det):
                inv = 1.0 / det
                e0 = d * inv
                e1 = -bb * inv
                e3 = a * inv
            else:
                if first_sing < 0:
                    first_sing = k
                e0 = 0.0
                e1 = 0.0
                e3 = 0.0
            Dinv[k, 0] = e0
            Dinv[k, 1] = e1
            Dinv[k, 2] = e1
            Dinv[k, 3] = e3
            # W = P[:, c0:c0+2] below the pivot (= L D); L = W D^-1
            for i in range(c0 + 2, nf):
                w0 = P[i * ns + c0]
                w1 = P[i * ns + c0 + 1]
                W0[i] = w0
                W1[i] = w1
                P[i * ns + c0] = w0 * e0 + w1 * e1
                P[i * ns + c0 + 1] = w0 * e1 + w1 * e3
            wa = WT[c0 * mm:c0 * mm + mm]
            wb = WT[(c0 + 1) * mm:(c0 + 1) * mm + mm]
            va = W0[ns:nf]
            vb = W1[ns:nf]
            for i in range(mm):
                wa[i] = va[i]
                wb[i] = vb[i]
            # rank-2 update of the remaining panel columns c0+2:ns
            if c0 + 2 < ns:
                for i in range(c0 + 2, nf):
                    fi = i * ns
                    l0 = P[fi + c0]
                    l1 = P[fi + c0 + 1]
                    jmax = min(i + 1, ns)
                    prow = P[fi + c0 + 2:fi + jmax]
                    v0 = W0[c0 + 2:jmax]
                    v1 = W1[c0 + 2:jmax]
                    for j in range(jmax - c0 - 2):
                        prow[j] -= l0 * v0[j] + l1 * v1[j]
        # Schur complement G - L21 W21^T (lower), straight onto the stack,
        # two rows (one node) at a time, four pivot columns at a time (row
        # views keep the inner loops free of index checks: they vectorise)
        if m > 0:
            base = top
            for a in range(m):
                i0 = 2 * a
                i1 = i0 + 1
                fr0 = P[(ns + i0) * ns:(ns + i0) * ns + ns]
                fr1 = P[(ns + i1) * ns:(ns + i1) * ns + ns]
                u0 = stack[base + i0 * mm:base + i0 * mm + i0 + 1]
                u1 = stack[base + i1 * mm:base + i1 * mm + i1 + 1]
                g0 = G[i0 * mm:i0 * mm + i0 + 1]
                g1 = G[i1 * mm:i1 * mm + i1 + 1]
                for j in range(i0 + 1):
                    u0[j] = g0[j]
                for j in range(i1 + 1):
                    u1[j] = g1[j]
                c = 0
                while c + 4 <= ns:
                    a00 = fr0[c]
                    a01 = fr0[c + 1]
                    a02 = fr0[c + 2]
                    a03 = fr0[c + 3]
                    a10 = fr1[c]
                    a11 = fr1[c + 1]
                    a12 = fr1[c + 2]
                    a13 = fr1[c + 3]
                    w0 = WT[c * mm:c * mm + i1 + 1]
                    w1 = WT[(c + 1) * mm:(c + 1) * mm + i1 + 1]
                    w2 = WT[(c + 2) * mm:(c + 2) * mm + i1 + 1]
                    w3 = WT[(c + 3) * mm:(c + 3) * mm + i1 + 1]
                    for j in range(i0 + 1):
                        x0 = w0[j]
                        x1 = w1[j]
                        x2 = w2[j]
                        x3 = w3[j]
                        u0[j] -= a00 * x0 + a01 * x1 + a02 * x2 + a03 * x3
                        u1[j] -= a10 * x0 + a11 * x1 + a12 * x2 + a13 * x3
                    u1[i1] -= a10 * w0[i1] + a11 * w1[i1] + a12 * w2[i1] + a13 * w3[i1]
                    c += 4
                if c < ns:
                    a00 = fr0[c]
                    a01 = fr0[c + 1]
                    a10 = fr1[c]
                    a11 = fr1[c + 1]
                    w0 = WT[c * mm:c * mm + i1 + 1]
                    w1 = WT[(c + 1) * mm:(c + 1) * mm + i1 + 1]
                    for j in range(i0 + 1):
                        x0 = w0[j]
                        x1 = w1[j]
                        u0[j] -= a00 * x0 + a01 * x1
                        u1[j] -= a10 * x0 + a11 * x1
                    u1[i1] -= a10 * w0[i1] + a11 * w1[i1]
            stk_id[nst] = J
            stk_off[nst] = base
            nst += 1
            top = base + mm * mm
    return first_npd, first_sing, bad


@njit(cache=True)
def _solve(perm, sn, Sp, Si, Loff, Lx, Dinv, b, x):
    """x = A^-1 b for P A P^T = L D L^T (supernodal panels of _factorize):
    forward solve with L, D^-1, backward solve with L^T. b, x (2n,)."""
    n = perm.shape[0]
    nsn = sn.shape[0] - 1
    z = np.empty(2 * n)
    for k in range(n):
        kk = perm[k]
        z[2 * k] = b[2 * kk]
        z[2 * k + 1] = b[2 * kk + 1]
    for J in range(nsn):
        f = sn[J]
        ns = 2 * (sn[J + 1] - f)
        S0 = Sp[J]
        m = Sp[J + 1] - S0
        lo = Loff[J]
        zJ = z[2 * f:2 * f + ns]
        for i in range(2, ns):
            row = Lx[lo + i * ns:lo + i * ns + ns]
            acc = zJ[i]
            for c in range(2 * (i >> 1)):
                acc -= row[c] * zJ[c]
            zJ[i] = acc
        for q in range(m):
            r = 2 * Si[S0 + q]
            row0 = Lx[lo + (ns + 2 * q) * ns:lo + (ns + 2 * q) * ns + ns]
            row1 = Lx[lo + (ns + 2 * q + 1) * ns:lo + (ns + 2 * q + 1) * ns + ns]
            acc0 = 0.0
            acc1 = 0.0
            for c in range(ns):
                acc0 += row0[c] * zJ[c]
                acc1 += row1[c] * zJ[c]
            z[r] -= acc0
            z[r + 1] -= acc1
    for k in range(n):
        z0 = z[2 * k]
        z1 = z[2 * k + 1]
        z[2 * k] = Dinv[k, 0] * z0 + Dinv[k, 1] * z1
        z[2 * k + 1] = Dinv[k, 2] * z0 + Dinv[k, 3] * z1
    for J in range(nsn - 1, -1, -1):
        f = sn[J]
        ns = 2 * (sn[J + 1] - f)
        S0 = Sp[J]
        m = Sp[J + 1] - S0
        lo = Loff[J]
        zJ = z[2 * f:2 * f + ns]
        for q in range(m):
            r = 2 * Si[S0 + q]
            row0 = Lx[lo + (ns + 2 * q) * ns:lo + (ns + 2 * q) * ns + ns]
            row1 = Lx[lo + (ns + 2 * q + 1) * ns:lo + (ns + 2 * q + 1) * ns + ns]
            z0 = z[r]
            z1 = z[r + 1]
            for c in range(ns):
                zJ[c] -= row0[c] * z0 + row1[c] * z1
        for i in range(ns - 1, 1, -1):
            zi = zJ[i]
            row = Lx[lo + i * ns:lo + i * ns + ns]
            for c in range(2 * (i >> 1)):
                zJ[c] -= row[c] * zi
    for k in range(n):
        kk = perm[k]
        x[2 * kk] = z[2 * k]
        x[2 * kk + 1] = z[2 * k + 1]


@dataclasses.dataclass
class Factor:
    """Block LDL^T P A P^T = L D L^T of a 2N x 2N matrix, from
    :func:`factorize` (P: the node permutation ``sym.perm``).

    sym: the :class:`Symbolic` it was computed with. Lx: L by supernodes,
    the (nf, ns) row-major panels of :func:`_factorize` (use :meth:`to_sparse`
    for a plain matrix). D, Dinv (N, 2, 2): D's symmetric blocks and their
    inverses, in eliminated order (node ``sym.perm[k]`` at k).
    positive_definite: every D block is SPD (iff A is SPD). npd_node: the
    original index of the first node (in elimination order) whose D block is
    not SPD, -1 if none; the factorisation runs to the end regardless.
    singular: some D block is exactly singular (or not finite); its inverse
    is then set to zero and :meth:`solve` is meaningless.
    """
    sym: Symbolic
    Lx: np.ndarray
    D: np.ndarray
    Dinv: np.ndarray
    positive_definite: bool
    npd_node: int
    singular: bool

    def solve(self, b: np.ndarray) -> np.ndarray:
        """x (2N,) with A x = b for b (2N,)."""
        b = np.ascontiguousarray(b, dtype=np.float64)
        if b.shape != (2 * self.sym.n,):
            raise ValueError(f"b must have shape ({2 * self.sym.n},), got {b.shape}")
        x = np.empty_like(b)
        s = self.sym
        _solve(s.perm, s.sn, s.Sp, s.Si, s.Loff, self.Lx, self.Dinv.reshape(-1, 4), b, x)
        return x

    def to_sparse(self) -> tuple[sp.csc_matrix, sp.csr_matrix, np.ndarray]:
        """(L, D, p): L (2N, 2N) unit lower triangular (scalar CSC, the stored
        supernodal pattern), D (2N, 2N) block diagonal, and the scalar
        permutation p (2N,) with A[p][:, p] = L D L^T. For inspection and
        tests (Python loops over supernodes)."""
        s = self.sym
        n = s.n
        rows, cols, vals = [], [], []
        for J in range(len(s.sn) - 1):
            f, l = s.sn[J], s.sn[J + 1]
            ns = 2 * (l - f)
            nodes = np.concatenate([np.arange(f, l), s.Si[s.Sp[J]:s.Sp[J + 1]]])
            nf = 2 * len(nodes)
            P = self.Lx[s.Loff[J]:s.Loff[J + 1]].reshape(nf, ns)
            r = (2 * nodes[:, None] + np.arange(2)).ravel()
            c = 2 * f + np.arange(ns)
            rr, cc = np.nonzero((r[:, None] // 2) > (c[None, :] // 2))
            rows.append(r[rr])
            cols.append(c[cc])
            vals.append(P[rr, cc])
        rows.append(np.arange(2 * n))
        cols.append(np.arange(2 * n))
        vals.append(np.ones(2 * n))
        L = sp.csc_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(2 * n, 2 * n))
        Dm = sp.block_diag(list(self.D), format="csr")
        p = (2 * s.perm[:, None] + np.arange(2)).ravel()
        return L, Dm, p


def factorize(sym: Symbolic, A, reuse: Factor | None = None) -> Factor:
    """Numeric block LDL^T of the symmetric (2N, 2N) sparse matrix A (any
    scipy sparse format; CSC is used as is) with the analysis ``sym``.
    ``reuse``: a factor of the same N that is no longer needed; its arrays
    are overwritten where large enough (no fresh 4 MB per call at N = 4000,
    whose first touch costs page faults) and it must not be used afterwards.

    The pattern of A must be a subset of the one ``sym`` was analysed with
    (missing entries are zeros); entries outside it raise ValueError. Only
    the lower triangle of the permuted A is read (A is assumed symmetric).
    A non-positive-definite pivot does not raise: see
    :attr:`Factor.positive_definite` and :attr:`Factor.npd_node`.
    """
    n = sym.n
    A = sp.csc_matrix(A)
    if A.shape != (2 * n, 2 * n):
        raise ValueError(f"A must have shape ({2 * n}, {2 * n}), got {A.shape}")
    buf = None if reuse is None else (reuse.Lx if reuse.Lx.base is None else reuse.Lx.base)
    if buf is not None and buf.size >= sym.Loff[-1] and reuse.sym.n == n:
        Lx, D, Dinv = buf[:sym.Loff[-1]], reuse.D.reshape(n, 4), reuse.Dinv.reshape(n, 4)
    else:
        Lx = np.empty(sym.Loff[-1])
        D = np.empty((n, 4))
        Dinv = np.empty((n, 4))
    first_npd, first_sing, bad = _factorize(
        sym.perm, sym.pinv, sym.sn, sym.Sp, sym.Si, sym.nchild, sym.Loff, A.indptr, A.indices,
        np.asarray(A.data, np.float64), Lx, D, Dinv, *sym.workspace())
    if bad >= 0:
        raise ValueError(f"A has an entry in block column of node {sym.perm[bad]} "
                         "outside the analysed pattern")
    return Factor(sym, Lx, D.reshape(-1, 2, 2), Dinv.reshape(-1, 2, 2),
                  first_npd < 0, int(sym.perm[first_npd]) if first_npd >= 0 else -1,
                  first_sing >= 0)
