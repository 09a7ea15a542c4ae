"""numba kernels of the STEP lattice dynamics (SPEC.md section 5; docs/model.md, "Model").

Every kernel and every helper it calls lives in this one module, so numba's
on-disk cache (``cache=True``) never serves a kernel compiled against an
older helper from another file.

Conventions (the caller, ``model.py``, owns the arrays):

- Fields are C-contiguous float64 arrays of shape (L, L), indexed
  ``f[ix, iy]``; a site's flat index is ``ix * L + iy``.
- Strains are the site's elastic (k, e1, e2). The trigger compares the
  site's elastic deviatoric strain itself (it has a stress-free reference:
  e = local stress / 2 mu) with its threshold, measured in the same
  variable by calibrate/ (SPEC.md section 4, item 5).
- ``busy[i]`` counts the frames a site still has to release plastic strain
  (0: not rearranging). A busy site cannot trigger.
- The yield strain eps_y = F^-1(u | S) is a bilinear interpolation of the
  quantile table ``ytab[nS, nU]`` on the uniform grids S = s0 + i / sinv,
  u = u0 + j / uinv, clamped at the grid ends (nS = 1: no S dependence).
  Threshold cache: ``yref`` = eps_y(u, sref) at the site's current u, with
  ``lip`` the table's largest slope d eps_y/dS; eps_y >= yref - lip |S - sref|
  lets most sites skip the interpolation (and the read of u) with the same
  decision. The caller refreshes an entry whenever it draws a new u
  (model.py); the loading step refreshes the entries it interpolates or
  finds loose.
- Trigger modes: 0 = eps_dev = 2 sqrt(e1^2 + e2^2) >= eps_y;
  1 = e2 only, 2 |e2| >= eps_y.
- Kernel planes ``Q[c, qx, qy]`` hold, for a unit plastic source, the
  response at the site offset (qx, qy), 0 <= qx, qy <= L // 2, for
  c = 0, 1: k per source e1, e2; 2: e1 per e1; 3: e1 per e2 = e2 per e1
  (reciprocity, one plane); 4: e2 per e2; 5, 6: the site-averaged
  softness kernels c0, c1 per frame of rearrangement. Every kernel is
  even or odd in each offset (planes 1 and 3 odd in both, the others
  even), so this quarter gives the whole plane: the response at (dx, dy)
  is Q[c, |dx|, |dy|] (minimum-image offsets), negated for c = 1, 3 when
  dx dy < 0. A quarter of the full table (0.9 MB at L = 256) is read from
  cache, and its rows are read twice from L1.
- Increment fields ``inc[5, L, L]``: dk, de1, de2, sum of c0, sum of c1.
- Transient windows (the volumetric transient in real space; the tables
  are ``model.WindowTable``): plane a covers the offsets lo[a] ..
  lo[a] + width[a] - 1 from its source along both axes, width[a]^2 values
  from planes[off[a]], row by row, and has the uniform value uni[a]
  everywhere else (the window holds the plane minus uni[a]).

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


#: relative safety margin of the threshold bound (far above round-off)
_BOUND = 1.0 - 1e-12


@njit(cache=True, inline="always")
def _bound(sv, yr, sr, lip):
    """Lower bound of a site's eps_y(u, sv) from its cache entry
    yr = eps_y(u, sr) (with a relative safety margin far above round-off)."""
    return yr * _BOUND - lip * abs(sv - sr)


@njit(cache=True, inline="always")
def _over(q1, q2, sv, u, ix, iy, yr, sr, lip, ytab, s0, sinv, u0, uinv, mode):
    """Whether site (ix, iy) with elastic deviatoric strain (q1, q2),
    softness sv and quantile u[ix, iy] is at or over its
    threshold eps_y = F^-1(u | sv); the bound (``_bound``, cache entry yr,
    sr) decides most sites without the interpolation (and without reading
    u), with the same decision."""
    yb = _bound(sv, yr, sr, lip)
    if mode == 0:
        m2 = q1 * q1 + q2 * q2
        if yb > 0.0 and 4.0 * m2 < yb * yb:
            return False
        eps = 2.0 * math.sqrt(m2)
    else:
        eps = 2.0 * abs(q2)
        if eps < yb:
            return False
    return eps >= _yield(u[ix, iy], sv, ytab, s0, sinv, u0, uinv)


@njit(cache=True, inline="always")
def _load_x(h, d1, d2, mode):
    """Uniform e2 increment x >= 0 that brings a site with half-threshold h
    and elastic deviatoric strain d to threshold (increasing in h)."""
    if mode == 0:
        rr = h * h - d1 * d1
        if rr <= 0.0 or d1 * d1 + d2 * d2 >= h * h:
            return 0.0
        return math.sqrt(rr) - d2
    if abs(d2) >= h:
        return 0.0
    return h - d2


@njit(cache=True)
def loading_step(e1, e2, s, u, busy, ytab, s0, sinv, u0, uinv, yref, sref, lip, mode):
    """Smallest uniform e2 increment x >= 0 that brings a site to threshold.

    Per site with d = (e1, e2): mode 0 solves
    4 (d1^2 + (d2 + x)^2) = eps_y^2 for its positive root
    x = sqrt(eps_y^2/4 - d1^2) - d2; mode 1 solves 2 (d2 + x) = eps_y.
    A site already at or over threshold gives x = 0. Busy sites are skipped.
    x is increasing in eps_y, so a site whose x at the cached lower bound of
    eps_y (``_bound``) is not below the best so far is skipped without the
    interpolation (same result). Sites interpolated, and those whose bound
    is loose by more than 1 % of eps_y, get their cache entry refreshed.
    Returns (x, flat index of the site); ties go to the lowest index.
    """
    L1, L2 = e1.shape
    best, arg = np.inf, -1
    for ix in range(L1):
        for iy in range(L2):
            if busy[ix, iy] > 0:
                continue
            sv = s[ix, iy]
            d1 = e1[ix, iy]
            d2 = e2[ix, iy]
            yr = yref[ix, iy]
            yb = _bound(sv, yr, sref[ix, iy], lip)
            if yb > 0.0 and yb > 0.99 * yr and _load_x(0.5 * yb, d1, d2, mode) >= best:
                continue
            ey = _yield(u[ix, iy], sv, ytab, s0, sinv, u0, uinv)
            yref[ix, iy], sref[ix, iy] = ey, sv
            x = _load_x(0.5 * ey, d1, d2, mode)
            if x < best:
                best, arg = x, ix * L2 + iy
    return best, arg


@njit(cache=True)
def relax_and_check(k, s, kt, b, soft_on, e1, e2, u, busy, ytab, s0, sinv, u0, uinv,
                    yref, sref, lip, mode, out):
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
            if _over(e1[ix, iy], e2[ix, iy], sv, u, ix, iy,
                     yref[ix, iy], sref[ix, iy], lip, ytab, s0, sinv, u0, uinv, mode):
                out[n] = ix * L2 + iy
                n += 1
    return n


@njit(cache=True)
def source_rows(src, dp1, dp2, ey, z, clear):
    """First (row) stage of the forward transforms of the transform path's
    source fields p1, p2 (plastic increments) and nn (1 per rearranging
    site): a source at (sx, sy) with amplitude a adds a ey[sy, :] to row sx
    of the half-spectrum row transforms z[0], z[1], z[2] (ey[y, k] =
    exp(-2 pi i y k / L)); every other row stays zero. With clear, the rows
    of src are zeroed instead (after the column transforms), so z is zero
    between frames."""
    L = z.shape[1]
    n2 = z.shape[2]
    for j in range(src.size):
        sx, sy = src[j] // L, src[j] % L
        if clear:
            for c in range(3):
                for k in range(n2):
                    z[c, sx, k] = 0.0
            continue
        a1, a2 = dp1[j], dp2[j]
        for k in range(n2):
            e = ey[sy, k]
            z[0, sx, k] += a1 * e
            z[1, sx, k] += a2 * e
            z[2, sx, k] += e


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


@njit(cache=True, inline="always")
def _add_window_row(w0, planes, base, w, c0, amp):
    """w0[(c0 + c) % L2] += amp * planes[base + c] for c < w (c0 < L2, w <= L2):
    one window row, split where it wraps past the row end."""
    n1 = min(w, w0.size - c0)
    for c in range(n1):
        w0[c0 + c] += amp * planes[base + c]
    for c in range(n1, w):
        w0[c - n1] += amp * planes[base + c]


@njit(cache=True)
def window_sum(src, idx, lo, width, off, planes, uni, amp, out):
    """out = amp * sum_j (uni[idx[j]] + window idx[j] centred on src[j]):
    the real-space transient of the sources at the flat sites ``src``, each
    with the windowed table plane ``idx[j]`` (< 0: the source adds nothing).
    Tables lo, width, off, planes, uni as in the module docstring
    ("transient windows"). Overwrites out (L1, L2): first the uniform sum,
    then the windows source by source."""
    L1, L2 = out.shape
    tot = 0.0
    for j in range(src.size):
        if idx[j] >= 0:
            tot += uni[idx[j]]
    out[:] = amp * tot
    for j in range(src.size):
        a = idx[j]
        if a < 0:
            continue
        w = width[a]
        sx, sy = src[j] // L2, src[j] % L2
        c0 = (sy + lo[a]) % L2
        for t in range(w):
            _add_window_row(out[(sx + lo[a] + t) % L1], planes, off[a] + t * w, w, c0, amp)


@njit(cache=True)
def start_sites(sites, e1, e2, k, s, u, dp1, dp2, busy, kappa, n_frames,
                ytab, s0, sinv, u0, uinv, rec):
    """Rearrangements starting at the flat ``sites``: plastic strain
    p = kappa e of the site's elastic (e1, e2) (same orientation; kappa the
    calibrated source strength in site areas, model.LatticeParams),
    released as p / n_frames per frame (dp1, dp2; busy = n_frames). Writes
    the record rows rec[:, j] = (k, e1, e2, eps_y, p1, p2, S) of site j."""
    kf, e1f, e2f, sf, uf = k.ravel(), e1.ravel(), e2.ravel(), s.ravel(), u.ravel()
    dp1f, dp2f, bf = dp1.ravel(), dp2.ravel(), busy.ravel()
    for j in range(sites.size):
        i = sites[j]
        a, c = e1f[i], e2f[i]
        p1 = kappa * a
        p2 = kappa * c
        dp1f[i] = p1 / n_frames
        dp2f[i] = p2 / n_frames
        bf[i] = n_frames
        rec[0, j], rec[1, j], rec[2, j] = kf[i], a, c
        rec[3, j] = _yield(uf[i], sf[i], ytab, s0, sinv, u0, uinv)
        rec[4, j], rec[5, j], rec[6, j] = p1, p2, sf[i]


@njit(cache=True)
def complete_sites(sites, unew, s, e1, e2, u, yref, sref, ytab, s0, sinv, u0, uinv, rec):
    """Releases completed at the flat ``sites``: the new quantiles unew go
    to u and the threshold cache follows (yref = eps_y(unew, S), sref = S).
    Writes rec[:, j] = (S, e1, e2) of site j: its softness and the elastic
    strain the rearrangement left (the residual)."""
    sf, e1f, e2f, uf = s.ravel(), e1.ravel(), e2.ravel(), u.ravel()
    yf, srf = yref.ravel(), sref.ravel()
    for j in range(sites.size):
        i = sites[j]
        sv = sf[i]
        uf[i] = unew[j]
        srf[i] = sv
        yf[i] = _yield(unew[j], sv, ytab, s0, sinv, u0, uinv)
        rec[0, j], rec[1, j], rec[2, j] = sv, e1f[i], e2f[i]


@njit(cache=True)
def transient_step(Kt, decay, J, ring, age_slot, dkt):
    """One frame of the transient compression field (Fourier space):
    Kt <- decay Kt + sum over source ages m of J[m] ring[age_slot[m]]
    (age_slot[m] = -1: no sources of that age); dkt = the change.
    ``ring[age_slot[m]]`` is the source spectrum of the rearrangements that
    started m frames ago (m = 0: this frame).

    The complex spectra come as float64 views (real and imaginary parts
    interleaved): Kt, dkt (n1, 2 n2), ring (M, n1, 2 n2); decay (n1, n2) and
    J (M, n1, n2) real. One row at a time into an L1-resident buffer, ages
    in increasing order (the same operations per element as the complex
    form: decay Kt, then + J[m] ring[m] for m = 0, 1, ...)."""
    n1, n2 = decay.shape
    M = J.shape[0]
    row = np.empty(2 * n2)
    for i in range(n1):
        for j in range(n2):
            d = decay[i, j]
            row[2 * j] = d * Kt[i, 2 * j]
            row[2 * j + 1] = d * Kt[i, 2 * j + 1]
        for m in range(M):
            sl = age_slot[m]
            if sl >= 0:
                for j in range(n2):
                    w = J[m, i, j]
                    row[2 * j] += w * ring[sl, i, 2 * j]
                    row[2 * j + 1] += w * ring[sl, i, 2 * j + 1]
        for jj in range(2 * n2):
            v = row[jj]
            dkt[i, jj] = v - Kt[i, jj]
            Kt[i, jj] = v


@njit(cache=True, inline="always")
def _sum4(a, ix, t0, t1, t2, t3):
    """Add row ix of a (L1, L2) to four running sums: element iy to sum
    iy % 4 (the remainder of a row not a multiple of 4 to the first ones).
    Four independent sums run at one add per cycle (a single serial sum
    waits for each add); field_mean and frame_pass use this same order."""
    n = a.shape[1]
    n4 = n - n % 4
    for iy in range(0, n4, 4):
        t0 += a[ix, iy]
        t1 += a[ix, iy + 1]
        t2 += a[ix, iy + 2]
        t3 += a[ix, iy + 3]
    if n4 < n:
        t0 += a[ix, n4]
    if n4 + 1 < n:
        t1 += a[ix, n4 + 1]
    if n4 + 2 < n:
        t2 += a[ix, n4 + 2]
    return t0, t1, t2, t3


@njit(cache=True)
def field_mean(f):
    """Mean of an (L1, L2) field, in the summation order of frame_pass (``_sum4``)."""
    t0, t1, t2, t3 = 0.0, 0.0, 0.0, 0.0
    for ix in range(f.shape[0]):
        t0, t1, t2, t3 = _sum4(f, ix, t0, t1, t2, t3)
    return ((t0 + t1) + (t2 + t3)) / f.size


@njit(cache=True)
def field_stats(f):
    """(mean, standard deviation) of an (L1, L2) field: the mean as
    ``field_mean``, the variance about it by four interleaved sums."""
    m = field_mean(f)
    a = f.ravel()
    n4 = a.size - a.size % 4
    v0, v1, v2, v3 = 0.0, 0.0, 0.0, 0.0
    for i in range(0, n4, 4):
        d0, d1, d2, d3 = a[i] - m, a[i + 1] - m, a[i + 2] - m, a[i + 3] - m
        v0 += d0 * d0
        v1 += d1 * d1
        v2 += d2 * d2
        v3 += d3 * d3
    for i in range(n4, a.size):
        d0 = a[i] - m
        v0 += d0 * d0
    return m, math.sqrt(((v0 + v1) + (v2 + v3)) / a.size)


@njit(cache=True)
def _unwrapped_spread(c, L):
    """Sum of squared deviations from their mean of the periodic
    coordinates c (sites, period L), unwrapped about their circular mean."""
    n = c.size
    sn, cs = 0.0, 0.0
    for i in range(n):
        th = 2.0 * math.pi * c[i] / L
        sn += math.sin(th)
        cs += math.cos(th)
    centre = math.atan2(sn / n, cs / n) * L / (2.0 * math.pi)
    d = np.empty(n)
    for i in range(n):
        d[i] = (c[i] - centre + 0.5 * L) % L - 0.5 * L
    m = d.mean()
    out = 0.0
    for i in range(n):
        out += (d[i] - m) ** 2
    return out


@njit(cache=True)
def periodic_extent(ix, iy, L):
    """Radius of gyration (sites) of a set of sites on the periodic lattice:
    coordinates unwrapped about their circular mean, then the usual
    root-mean-square distance from the centroid (exact for sets narrower
    than L/2 along each axis)."""
    if ix.size == 0:
        return 0.0
    return math.sqrt((_unwrapped_spread(ix, L) + _unwrapped_spread(iy, L)) / ix.size)


@njit(cache=True, inline="always")
def _quarter_terms(row, Q, qx, q, i, a, a1, bb, b1):
    """row[0..2, i] += the strain increments of Q column q (row qx) for the
    source amplitudes (a, bb); a1, b1 are them with the odd planes' sign."""
    g = Q[3, qx, q]
    row[0, i] += Q[0, qx, q] * a + Q[1, qx, q] * b1
    row[1, i] += Q[2, qx, q] * a + g * b1
    row[2, i] += g * a1 + Q[4, qx, q] * bb


@njit(cache=True, inline="always")
def _softness_terms(row, Q, qx, q, i):
    """row[3..4, i] += the softness kernels c0, c1 of Q column q (row qx)."""
    row[3, i] += Q[5, qx, q]
    row[4, i] += Q[6, qx, q]


@njit(cache=True, inline="always")
def _add_quarter(row, Q, qx, iy0, iy1, off, rev, a, bb, sgn, nc):
    """row[c, iy] += kernel increments of one source for iy0 <= iy < iy1
    from the quarter planes Q (frame_pass), kernel row qx and column
    qy = iy - off (rev False) or off - iy (rev True); sgn = +-1 is the
    sign of the two odd planes (1, 3) for this row and part. The two
    directions are separate loops (contiguous loads either way, so both
    vectorise), and the indices unsigned (all are >= 0: numba then emits
    no negative-index wraparound)."""
    qxu = np.uintp(qx)
    b1 = sgn * bb
    a1 = sgn * a
    if not rev:
        for iy in range(iy0, iy1):
            _quarter_terms(row, Q, qxu, np.uintp(iy - off), np.uintp(iy), a, a1, bb, b1)
        if nc > 5:
            for iy in range(iy0, iy1):
                _softness_terms(row, Q, qxu, np.uintp(iy - off), np.uintp(iy))
    else:
        for iy in range(iy0, iy1):
            _quarter_terms(row, Q, qxu, np.uintp(off - iy), np.uintp(iy), a, a1, bb, b1)
        if nc > 5:
            for iy in range(iy0, iy1):
                _softness_terms(row, Q, qxu, np.uintp(off - iy), np.uintp(iy))


@njit(cache=True, inline="always")
def _add_source_row(row, Q, L1, dx, sy, a, bb, nc):
    """One lattice row's increments from a source at column sy, dx rows
    away (0 <= dx < L1), from the quarter planes Q (frame_pass): the row
    offset folds to qx = min(dx, L1 - dx); column offsets dy = 0 .. L2 // 2
    read Q columns dy forwards, the others L2 - dy backwards; the odd
    planes change sign with each fold. Each part is split where it wraps
    past the row end."""
    L2 = row.shape[1]
    h2 = L2 // 2
    if dx <= L1 // 2:
        qx, sgx = dx, 1.0
    else:
        qx, sgx = L1 - dx, -1.0
    e = sy + h2 + 1  # forwards: dy = 0 .. h2 at iy = sy + dy
    if e <= L2:
        _add_quarter(row, Q, qx, sy, e, sy, False, a, bb, sgx, nc)
    else:
        _add_quarter(row, Q, qx, sy, L2, sy, False, a, bb, sgx, nc)
        _add_quarter(row, Q, qx, 0, e - L2, sy - L2, False, a, bb, sgx, nc)
    if e >= L2:  # backwards: dy = h2 + 1 .. L2 - 1, qy = L2 - dy
        _add_quarter(row, Q, qx, e - L2, sy, sy, True, a, bb, -sgx, nc)
    else:
        _add_quarter(row, Q, qx, e, L2, sy + L2, True, a, bb, -sgx, nc)
        _add_quarter(row, Q, qx, 0, sy, sy, True, a, bb, -sgx, nc)


@njit(cache=True)
def frame_pass(e1, e2, k, s, u, busy, dp1, dp2,
               use_rs, src, sdp1, sdp2, Q, inc, use_dkt, dkt,
               tsrc, tage, tlo, tw, toff, tplanes, tuni, tamp,
               smean, b, soft_on, ytab, s0, sinv, u0, uinv, yref, sref, lip, mode,
               done, over):
    """Add one frame's increments to every site and find what happens next.

    Increments (dk, de1, de2, C0, C1) of a site are either summed here from
    the real-space kernel planes over the sources (use_rs: flat indices src,
    plastic increments sdp1, sdp2; the quarter kernel planes Q of the
    module docstring, planes 5, 6 only read if Q has them and soft_on),
    one lattice row at a time into a row buffer (contiguous, vectorised
    adds), plus the transient dkt[ix, iy] (use_dkt), or read from inc[0..4]
    (the transform path, a Fourier transient included). A transient kept
    in real space comes as its sources instead (flat sites tsrc, ages
    tage): source j adds tamp times window plane tage[j] (tables tlo, tw,
    toff, tplanes, tuni as in ``window_sum``) to dk, on either path.

    Every site: k, e1, e2 += (dk, de1, de2); if soft_on,
    S += C0 + C1 (S - smean) + b dk (smean: the lattice mean S before the
    frame; a rearranging site's own change is the kernels' d = 0 entry). A
    busy site releases one frame (busy -= 1) and, when its release
    completes, is listed in ``done``.
    Every other non-busy site at or over threshold (with the updated S;
    the decision of ``_over`` with the cache yref, sref, lip) is listed in
    ``over``. Lists are in increasing flat index.

    Per row, one branch-free loop (it vectorises) updates every site and
    flags the busy ones and those the threshold bound does not clear; a
    second loop finishes only the flagged sites (the exact threshold,
    releases), and the row's S joins the lattice sum (``_sum4`` order).
    Returns (number done, number over, sum of the updated S).
    """
    L1, L2 = e1.shape
    ns = src.size
    nc = Q.shape[0] if soft_on else 5
    row = np.zeros((5, L2))
    flag = np.zeros(L2, dtype=np.uint8)
    nd, no = 0, 0
    t0, t1, t2, t3 = 0.0, 0.0, 0.0, 0.0
    # the transient's windows, listed by lattice row (CSR: entries ptr[ix]
    # to ptr[ix + 1] - 1 are (source, window row) pairs), and its uniform part
    nt = tsrc.size
    ptr = np.zeros(L1 + 1, dtype=np.int64)
    ush = 0.0
    for j in range(nt):
        a = tage[j]
        ush += tuni[a]
        r0 = tsrc[j] // L2 + tlo[a]
        for t in range(tw[a]):
            ptr[(r0 + t) % L1 + 1] += 1
    ush *= tamp
    for ix in range(L1):
        ptr[ix + 1] += ptr[ix]
    fill = ptr[:L1].copy()
    ent_j = np.empty(ptr[L1], dtype=np.int64)
    ent_t = np.empty(ptr[L1], dtype=np.int64)
    for j in range(nt):
        a = tage[j]
        r0 = tsrc[j] // L2 + tlo[a]
        for t in range(tw[a]):
            r = (r0 + t) % L1
            ent_j[fill[r]] = j
            ent_t[fill[r]] = t
            fill[r] += 1
    for ix in range(L1):
        if use_rs:
            row[:] = 0.0
            for j in range(ns):
                sx, sy = src[j] // L2, src[j] % L2
                dx = ix - sx
                if dx < 0:
                    dx += L1
                _add_source_row(row, Q, L1, dx, sy, sdp1[j], sdp2[j], nc)
            if use_dkt:
                for iy in range(L2):
                    row[0, iy] += dkt[ix, iy]
            w0, w1, w2, w3, w4 = row[0], row[1], row[2], row[3], row[4]
        else:
            w0, w1, w2, w3, w4 = inc[0, ix], inc[1, ix], inc[2, ix], inc[3, ix], inc[4, ix]
        for e in range(ptr[ix], ptr[ix + 1]):
            j = ent_j[e]
            a = tage[j]
            w = tw[a]
            _add_window_row(w0, tplanes, toff[a] + ent_t[e] * w, w, (tsrc[j] % L2 + tlo[a]) % L2, tamp)
        ke, e1r, e2r, sr_ = k[ix], e1[ix], e2[ix], s[ix]
        yrr, srr, br = yref[ix], sref[ix], busy[ix]
        for iy in range(L2):
            dk = w0[iy] + ush
            ke[iy] += dk
            x1 = e1r[iy] + w1[iy]
            x2 = e2r[iy] + w2[iy]
            e1r[iy] = x1
            e2r[iy] = x2
            sv = sr_[iy]
            if soft_on:
                sv = sv + w3[iy] + w4[iy] * (sv - smean) + b * dk
                sr_[iy] = sv
            yb = _bound(sv, yrr[iy], srr[iy], lip)
            if mode == 0:
                clear = (yb > 0.0) & (4.0 * (x1 * x1 + x2 * x2) < yb * yb)
            else:
                clear = 2.0 * abs(x2) < yb
            flag[iy] = np.uint8(br[iy] > 0) | np.uint8(not clear)
        for iy in range(L2):
            if flag[iy] == 0:
                continue
            if br[iy] > 0:
                br[iy] -= 1
                if br[iy] == 0:
                    dp1[ix, iy] = 0.0
                    dp2[ix, iy] = 0.0
                    done[nd] = ix * L2 + iy
                    nd += 1
                continue
            if _over(e1r[iy], e2r[iy], sr_[iy], u, ix, iy, yrr[iy],
                     srr[iy], lip, ytab, s0, sinv, u0, uinv, mode):
                over[no] = ix * L2 + iy
                no += 1
        t0, t1, t2, t3 = _sum4(s, ix, t0, t1, t2, t3)
    return nd, no, (t0 + t1) + (t2 + t3)
