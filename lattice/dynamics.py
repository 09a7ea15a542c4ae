"""numba kernels of the STEP lattice dynamics (SPEC.md section 5; docs/model.md, "Model").

Every kernel and every helper it calls lives in this one module, so numba's
on-disk cache (``cache=True``) never serves a kernel compiled against an
older helper from another file.

Conventions (the caller, ``model.py``, owns the arrays):

- Fields are C-contiguous float64 arrays of shape (L, L), indexed
  ``f[ix, iy]``; a site's flat index is ``ix * L + iy``.
- Strains are the site's elastic (k, e1, e2); (r1, r2) the elastic
  deviatoric strain its last rearrangement left (the residual), so the
  strain accumulated since that rearrangement is (e1 - r1, e2 - r2).
- ``busy[i]`` counts the frames a site still has to release plastic strain
  (0: not rearranging). A busy site cannot trigger.
- The yield strain eps_y = F^-1(u | S) is a bilinear interpolation of the
  quantile table ``ytab[nS, nU]`` on the uniform grids S = s0 + i / sinv,
  u = u0 + j / uinv, clamped at the grid ends (nS = 1: no S dependence).
  With ``use_yc`` the kernels read eps_y from the per-site cache ``yc``
  instead (valid when S is frozen: softness off).
- Trigger modes: 0 = eps_dev = 2 sqrt(d1^2 + d2^2) >= eps_y;
  1 = e2 only, 2 |d2| >= eps_y.
- Kernel table ``G8[dx, dy, c]`` (site offset dx, dy mod L) holds, for a
  unit plastic source, c = 0, 1: k per source e1, e2; 2, 3: e1 per e1, e2;
  4, 5: e2 per e1, e2; 6, 7: the site-averaged softness kernels c0, c1 per
  frame of rearrangement.
- Increment fields ``inc[5, L, L]``: dk, de1, de2, sum of c0, sum of c1.

All loops are serial and in a fixed order: results are bit-for-bit the same
for the same inputs, independent of the thread count.
"""

import math

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _yield(u, s, ytab, s0, sinv, u0, uinv):
    """eps_y = F^-1(u | S): bilinear interpolation of ytab, clamped to the
    grid ends (branch-free min/max; at the upper end the last cell is used
    with weight 1)."""
    ns, nu = ytab.shape
    fu = min(max((u - u0) * uinv, 0.0), nu - 1.0)
    j = min(int(fu), nu - 2)
    tu = fu - j
    if ns == 1:
        return ytab[0, j] + tu * (ytab[0, j + 1] - ytab[0, j])
    fs = min(max((s - s0) * sinv, 0.0), ns - 1.0)
    i = min(int(fs), ns - 2)
    ts = fs - i
    a = ytab[i, j] + tu * (ytab[i, j + 1] - ytab[i, j])
    b = ytab[i + 1, j] + tu * (ytab[i + 1, j + 1] - ytab[i + 1, j])
    return a + ts * (b - a)


@njit(cache=True)
def yield_strains(u, s, ytab, s0, sinv, u0, uinv):
    """eps_y of every site (array of u's shape)."""
    out = np.empty(u.size)
    uf, sf = u.ravel(), s.ravel()
    for i in range(u.size):
        out[i] = _yield(uf[i], sf[i], ytab, s0, sinv, u0, uinv)
    return out.reshape(u.shape)


@njit(cache=True)
def loading_step(e1, e2, r1, r2, s, u, busy, ytab, s0, sinv, u0, uinv, yc, use_yc, mode):
    """Smallest uniform e2 increment x >= 0 that brings a site to threshold.

    Per site with d = (e1 - r1, e2 - r2): mode 0 solves
    4 (d1^2 + (d2 + x)^2) = eps_y^2 for its positive root
    x = sqrt(eps_y^2/4 - d1^2) - d2; mode 1 solves 2 (d2 + x) = eps_y.
    A site already at or over threshold gives x = 0. Busy sites are skipped.
    Returns (x, flat index of the site); ties go to the lowest index.
    """
    L1, L2 = e1.shape
    best, arg = np.inf, -1
    for ix in range(L1):
        for iy in range(L2):
            if busy[ix, iy] > 0:
                continue
            ey = yc[ix, iy] if use_yc else _yield(u[ix, iy], s[ix, iy], ytab, s0, sinv, u0, uinv)
            h = 0.5 * ey
            d1 = e1[ix, iy] - r1[ix, iy]
            d2 = e2[ix, iy] - r2[ix, iy]
            if mode == 0:
                rr = h * h - d1 * d1
                if rr <= 0.0 or d1 * d1 + d2 * d2 >= h * h:
                    x = 0.0
                else:
                    x = math.sqrt(rr) - d2
            else:
                if abs(d2) >= h:
                    x = 0.0
                else:
                    x = h - d2
            if x < best:
                best, arg = x, ix * L2 + iy
    return best, arg


@njit(cache=True)
def relax_and_check(k, s, kt, b, soft_on, e1, e2, r1, r2, u, busy, ytab, s0, sinv, u0, uinv,
                    yc, use_yc, mode, out):
    """End of an avalanche: the pending transient kt relaxes (k -= kt and,
    if soft_on, S -= b kt), then the flat indices of the non-busy sites at
    or over threshold go to ``out`` (increasing); returns their count."""
    L1, L2 = e1.shape
    n = 0
    for ix in range(L1):
        for iy in range(L2):
            t = kt[ix, iy]
            k[ix, iy] -= t
            sv = s[ix, iy]
            if soft_on:
                sv -= b * t
                s[ix, iy] = sv
            if busy[ix, iy] > 0:
                continue
            ey = yc[ix, iy] if use_yc else _yield(u[ix, iy], sv, ytab, s0, sinv, u0, uinv)
            d1 = e1[ix, iy] - r1[ix, iy]
            d2 = e2[ix, iy] - r2[ix, iy]
            if mode == 0:
                eps = 2.0 * math.sqrt(d1 * d1 + d2 * d2)
            else:
                eps = 2.0 * abs(d2)
            if eps >= ey:
                out[n] = ix * L2 + iy
                n += 1
    return n


@njit(cache=True)
def scatter_sources(src, dp1, dp2, p1, p2, nn):
    """Source fields for the transform path: p1, p2 (plastic increments) and
    nn (1 per rearranging site). Overwrites the fields."""
    L = p1.shape[1]
    p1[:] = 0.0
    p2[:] = 0.0
    nn[:] = 0.0
    for j in range(src.size):
        ix, iy = src[j] // L, src[j] % L
        p1[ix, iy] += dp1[j]
        p2[ix, iy] += dp2[j]
        nn[ix, iy] += 1.0


@njit(cache=True)
def spectral_products(P1, P2, NN, prop, C0, C1, dkt, use_dkt, with_soft, out):
    """Transforms of the five increment fields from the source transforms:
    out[0] = k (+ the transient dkt if use_dkt), out[1], out[2] = e1, e2,
    out[3], out[4] = C0 NN, C1 NN (zero unless with_soft)."""
    n1, n2 = P1.shape
    for i in range(n1):
        for j in range(n2):
            a, b = P1[i, j], P2[i, j]
            k = prop[0, 0, i, j] * a + prop[0, 1, i, j] * b
            if use_dkt:
                k += dkt[i, j]
            out[0, i, j] = k
            out[1, i, j] = prop[1, 0, i, j] * a + prop[1, 1, i, j] * b
            out[2, i, j] = prop[2, 0, i, j] * a + prop[2, 1, i, j] * b
            if with_soft:
                out[3, i, j] = C0[i, j] * NN[i, j]
                out[4, i, j] = C1[i, j] * NN[i, j]
            else:
                out[3, i, j] = 0.0
                out[4, i, j] = 0.0


@njit(cache=True)
def source_spectrum(src, amp, ex, ey, out):
    """out[q] = amp * sum_j exp(-i q . r_j) on the half spectrum, with the
    phase tables ex[x, qx] = exp(-i qx x), ey[y, qy] = exp(-i qy y)."""
    L = ex.shape[0]
    n2 = ey.shape[1]
    out[:] = 0.0
    for j in range(src.size):
        sx, sy = src[j] // L, src[j] % L
        for i in range(L):
            px = amp * ex[sx, i]
            for k in range(n2):
                out[i, k] += px * ey[sy, k]


@njit(cache=True)
def transient_step(Kt, decay, J, ring, age_slot, dkt):
    """One frame of the transient compression field (Fourier space):
    Kt <- decay Kt + sum over source ages m of J[m] ring[age_slot[m]]
    (age_slot[m] = -1: no sources of that age); dkt = the change.
    ``ring[age_slot[m]]`` is the source spectrum of the rearrangements that
    started m frames ago (m = 0: this frame)."""
    n1, n2 = Kt.shape
    M = J.shape[0]
    for i in range(n1):
        for j in range(n2):
            new = decay[i, j] * Kt[i, j]
            for m in range(M):
                sl = age_slot[m]
                if sl >= 0:
                    new += J[m, i, j] * ring[sl, i, j]
            dkt[i, j] = new - Kt[i, j]
            Kt[i, j] = new


@njit(cache=True)
def field_stats(f):
    """(mean, standard deviation) of a field by serial sums in flat order
    (the same summation as frame_pass's running sum)."""
    a = f.ravel()
    t = 0.0
    for i in range(a.size):
        t += a[i]
    m = t / a.size
    v = 0.0
    for i in range(a.size):
        d = a[i] - m
        v += d * d
    return m, math.sqrt(v / a.size)


@njit(cache=True)
def frame_pass(e1, e2, k, s, r1, r2, u, busy, dp1, dp2,
               use_rs, src, sdp1, sdp2, G8, inc, use_dkt, dkt,
               smean, b, self_frame, soft_on, ytab, s0, sinv, u0, uinv, yc, use_yc, mode,
               done, over):
    """Add one frame's increments to every site and find what happens next.

    Increments (dk, de1, de2, C0, C1) of a site are either summed here from
    the real-space kernel table over the sources (use_rs: flat indices src,
    plastic increments sdp1, sdp2; G8 as in the module docstring) plus the
    transient dkt[ix, iy] (use_dkt), or read from inc[0..4] (the transform
    path, transient included).

    Every site: k, e1, e2 += (dk, de1, de2); if soft_on,
    S += C0 + C1 (S - smean) + b dk (smean: the lattice mean S before the
    frame). A busy site also gets S += self_frame, releases one frame
    (busy -= 1) and, when its release completes, takes its elastic
    (e1, e2) as the new residual (r1, r2) and is listed in ``done``.
    Every other non-busy site at or over threshold (with the updated S) is
    listed in ``over``. Lists are in increasing flat index.
    Returns (number done, number over, sum of the updated S in flat order).
    """
    L1, L2 = e1.shape
    ns = src.size
    sx = np.empty(ns, np.int64)
    sy = np.empty(ns, np.int64)
    dxs = np.empty(ns, np.int64)
    for j in range(ns):
        sx[j] = src[j] // L2
        sy[j] = src[j] % L2
    nd, no = 0, 0
    ssum = 0.0
    for ix in range(L1):
        if use_rs:
            for j in range(ns):
                d = ix - sx[j]
                dxs[j] = d + L1 if d < 0 else d
        for iy in range(L2):
            if use_rs:
                dk, d1, d2, c0, c1 = 0.0, 0.0, 0.0, 0.0, 0.0
                for j in range(ns):
                    dy = iy - sy[j]
                    if dy < 0:
                        dy += L2
                    dx = dxs[j]
                    a, bb = sdp1[j], sdp2[j]
                    dk += G8[dx, dy, 0] * a + G8[dx, dy, 1] * bb
                    d1 += G8[dx, dy, 2] * a + G8[dx, dy, 3] * bb
                    d2 += G8[dx, dy, 4] * a + G8[dx, dy, 5] * bb
                    c0 += G8[dx, dy, 6]
                    c1 += G8[dx, dy, 7]
                if use_dkt:
                    dk += dkt[ix, iy]
            else:
                dk, d1, d2 = inc[0, ix, iy], inc[1, ix, iy], inc[2, ix, iy]
                c0, c1 = inc[3, ix, iy], inc[4, ix, iy]
            k[ix, iy] += dk
            x1 = e1[ix, iy] + d1
            x2 = e2[ix, iy] + d2
            e1[ix, iy] = x1
            e2[ix, iy] = x2
            sv = s[ix, iy]
            if soft_on:
                sv = sv + c0 + c1 * (sv - smean) + b * dk
            if busy[ix, iy] > 0:
                if soft_on:
                    sv += self_frame
                s[ix, iy] = sv
                ssum += sv
                busy[ix, iy] -= 1
                if busy[ix, iy] == 0:
                    r1[ix, iy] = x1
                    r2[ix, iy] = x2
                    dp1[ix, iy] = 0.0
                    dp2[ix, iy] = 0.0
                    done[nd] = ix * L2 + iy
                    nd += 1
                continue
            s[ix, iy] = sv
            ssum += sv
            ey = yc[ix, iy] if use_yc else _yield(u[ix, iy], sv, ytab, s0, sinv, u0, uinv)
            q1 = x1 - r1[ix, iy]
            q2 = x2 - r2[ix, iy]
            if mode == 0:
                eps = 2.0 * math.sqrt(q1 * q1 + q2 * q2)
            else:
                eps = 2.0 * abs(q2)
            if eps >= ey:
                over[no] = ix * L2 + iy
                no += 1
    return nd, no, ssum
