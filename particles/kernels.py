"""numba kernels of the particle engine: neighbour lists, Hertzian forces,
stress, Hessian, FIRE and overdamped steepest descent.

Everything that calls everything else lives in this one module, so that
numba's on-disk cache (``cache=True``) can never serve a kernel compiled
against an older helper from another file.

Conventions (SPEC.md section 0):

- Lengths in units of the small particle's diameter; energies in units of
  the pair prefactor. Radii ``rad`` (N,) are 0.5 (small) or 0.7 (large).
- Pair energy u(r) = (1 - r/s)^2.5 for r < s = rad_i + rad_j, else 0.
- The box is the parallelogram spanned by a1 = (Lx, 0) and
  a2 = (tilt * Ly, Ly); ``tilt`` is the remapped xy strain, |tilt| <= 1/2.
- Positions ``pos`` (N, 2) are Cartesian and continuous in time (never
  wrapped by the kernels); they need not lie in the primary cell. A neighbour entry k of particle i stores j and the integer image
  (mx, my) so that r_ij = x_j - x_i + mx * a1 + my * a2. The image is
  chosen when the list is built and carried until the next rebuild.
- Stress sigma_ab = (1/V) sum_pairs u'(r) r_a r_b / r = (1/V) dU/d(eps_ab):
  positive shear stress under positive shear; pressure p = -tr(sigma)/2.

Every reduction over particles is either a per-particle loop (parallel,
each particle summing its own neighbours in list order) or a serial loop
(the force kernel, which visits each pair once; long pair lists in two
halves cut by pair count, one per thread, then added), so results are
bit-for-bit independent of the thread count.
"""

import math

import numpy as np
from numba import njit, prange


# --------------------------------------------------------------------------
# Box helpers
# --------------------------------------------------------------------------

@njit(cache=True)
def wrap_into_cell(pos, Lx, Ly, tilt):
    """Map positions (N, 2) into the primary parallelogram, in place."""
    for i in range(pos.shape[0]):
        sy = pos[i, 1] / Ly
        fy = math.floor(sy)
        pos[i, 1] -= fy * Ly
        pos[i, 0] -= fy * tilt * Ly
        sx = (pos[i, 0] - tilt * pos[i, 1]) / Lx
        pos[i, 0] -= math.floor(sx) * Lx


# --------------------------------------------------------------------------
# Neighbour list (cell list in fractional coordinates, then Verlet list)
# --------------------------------------------------------------------------

@njit(cache=True)
def _cell_grid(Lx, Ly, tilt, rcut):
    """Cells per side so that every pair closer than rcut is in adjacent
    cells: the slanted cell walls are (Lx/nx)/sqrt(1+tilt^2) apart."""
    nx = int(Lx / (rcut * math.sqrt(1.0 + tilt * tilt)))
    ny = int(Ly / rcut)
    return nx, ny


@njit(cache=True)
def _pair_image(xi, yi, xj, yj, Lx, Ly, tilt):
    """Minimum-image integers (mx, my) and separation for r_ij."""
    dy = yj - yi
    my = -math.floor(dy / Ly + 0.5)
    dy += my * Ly
    dx = xj - xi + my * tilt * Ly
    mx = -math.floor((dx - tilt * dy) / Lx + 0.5)
    dx += mx * Lx
    return int(mx), int(my), dx, dy


@njit(cache=True)
def _scan_cells(i, pos, rad, Lx, Ly, tilt, skin, nx, ny, use_cells, cell_of,
                cell_start, cell_members, nbr, imx, imy, k0):
    """Neighbours of i from the 3x3 cells around it (or all particles),
    written from index k0 of nbr/imx/imy. Returns the number found.
    """
    cx = cell_of[i] % nx
    cy = cell_of[i] // nx
    span = 3 if use_cells else 1
    k = k0
    for ddy in range(span):
        for ddx in range(span):
            c = 0
            if use_cells:
                c = ((cx + ddx - 1) % nx) + nx * ((cy + ddy - 1) % ny)
            for q in range(cell_start[c], cell_start[c + 1]):
                j = cell_members[q]
                if j == i:
                    continue
                mx, my, dx, dy = _pair_image(pos[i, 0], pos[i, 1], pos[j, 0], pos[j, 1],
                                             Lx, Ly, tilt)
                rc = rad[i] + rad[j] + skin
                if dx * dx + dy * dy < rc * rc:
                    nbr[k] = j
                    imx[k] = mx
                    imy[k] = my
                    k += 1
    return k - k0


@njit(cache=True)
def max_displacement(pos, ref):
    """max_i |pos_i - ref_i| for (N, 2) arrays."""
    d2 = 0.0
    for i in range(pos.shape[0]):
        dx = pos[i, 0] - ref[i, 0]
        dy = pos[i, 1] - ref[i, 1]
        d2 = max(d2, dx * dx + dy * dy)
    return math.sqrt(d2)


@njit(cache=True)
def max_displacement_mapped(pos, ref, a):
    """max_i |pos_i - a ref_i| for (N, 2) arrays and a 2 x 2 map a."""
    d2 = 0.0
    for i in range(pos.shape[0]):
        dx = pos[i, 0] - (a[0, 0] * ref[i, 0] + a[0, 1] * ref[i, 1])
        dy = pos[i, 1] - (a[1, 0] * ref[i, 0] + a[1, 1] * ref[i, 1])
        d2 = max(d2, dx * dx + dy * dy)
    return math.sqrt(d2)


@njit(cache=True)
def remove_mean_force(forces, loose, out):
    """out = forces (N, 2) with, on the particles where ``loose`` (N,) is
    False, their mean force subtracted (a serial sum: the same bits at any
    thread count)."""
    mx, my, n = 0.0, 0.0, 0
    for i in range(forces.shape[0]):
        if not loose[i]:
            mx += forces[i, 0]
            my += forces[i, 1]
            n += 1
    if n > 0:
        mx /= n
        my /= n
    for i in range(forces.shape[0]):
        if loose[i]:
            out[i, 0] = forces[i, 0]
            out[i, 1] = forces[i, 1]
        else:
            out[i, 0] = forces[i, 0] - mx
            out[i, 1] = forces[i, 1] - my


@njit(cache=True)
def max_norm(forces):
    """max_i |F_i| of forces (N, 2)."""
    m = 0.0
    for i in range(forces.shape[0]):
        m = max(m, forces[i, 0] * forces[i, 0] + forces[i, 1] * forces[i, 1])
    return math.sqrt(m)


@njit(cache=True)
def lbfgs_backward(S, Y, rho, order, q, alpha):
    """First loop of the L-BFGS two-loop recursion, in place on q (2N,):
    for the stored pairs k = order[-1], ..., order[0] (newest first; rows of
    S, Y (memory, 2N), rho (memory,) = 1 / y.s), alpha[k] = rho_k s_k.q,
    q -= alpha[k] y_k."""
    for t in range(order.shape[0] - 1, -1, -1):
        k = order[t]
        a = rho[k] * np.dot(S[k], q)
        alpha[k] = a
        y = Y[k]
        for i in range(q.shape[0]):
            q[i] -= a * y[i]


@njit(cache=True)
def lbfgs_forward(S, Y, rho, order, alpha, r):
    """Second loop of the L-BFGS two-loop recursion, in place on r (2N,)
    (= H_0 q): for k = order[0], ..., order[-1] (oldest first),
    r += (alpha[k] - rho_k y_k.r) s_k."""
    for t in range(order.shape[0]):
        k = order[t]
        b = alpha[k] - rho[k] * np.dot(Y[k], r)
        s = S[k]
        for i in range(r.shape[0]):
            r[i] += b * s[i]


@njit(cache=True)
def _cells(pos, rad, Lx, Ly, tilt, skin):
    """Cell list of positions (N, 2) in the primary cell (see wrap_into_cell)
    for pairs with r < rad_i + rad_j + skin: (nx, ny, use_cells, cell_of (N,),
    cell_start (nx ny + 1,), cell_members (N,)). An O(N) cell list when the
    box holds at least 3 x 3 cells, otherwise one cell (O(N^2) search)."""
    n = pos.shape[0]
    rmax = 0.0
    for i in range(n):
        rmax = max(rmax, rad[i])
    rcut = 2.0 * rmax + skin
    nx, ny = _cell_grid(Lx, Ly, tilt, rcut)
    use_cells = nx >= 3 and ny >= 3
    if not use_cells:
        nx = 1
        ny = 1
    ncell = nx * ny
    cell_of = np.empty(n, np.int64)
    for i in range(n):
        sx = (pos[i, 0] - tilt * pos[i, 1]) / Lx
        sy = pos[i, 1] / Ly
        cx = min(int(sx * nx), nx - 1)
        cy = min(int(sy * ny), ny - 1)
        cell_of[i] = cx + nx * cy
    cell_start = np.zeros(ncell + 1, np.int64)
    for i in range(n):
        cell_start[cell_of[i] + 1] += 1
    for c in range(ncell):
        cell_start[c + 1] += cell_start[c]
    fill = cell_start[:-1].copy()
    cell_members = np.empty(n, np.int64)
    for i in range(n):
        c = cell_of[i]
        cell_members[fill[c]] = i
        fill[c] += 1
    return nx, ny, use_cells, cell_of, cell_start, cell_members


@njit(cache=True)
def _unwrap_images(pos, wrapped, Lx, Ly, tilt, offsets, nbr, imx, imy):
    """Shift the images (imx, imy) of a list built for ``wrapped`` (pos
    mapped into the primary cell) by the lattice vectors that wrapping
    removed, so that they hold for ``pos``; in place."""
    n = pos.shape[0]
    shift_x = np.empty(n, np.int64)
    shift_y = np.empty(n, np.int64)
    for i in range(n):
        sy = (pos[i, 1] - wrapped[i, 1]) / Ly
        shift_y[i] = math.floor(sy + 0.5)
        sx = (pos[i, 0] - wrapped[i, 0] - shift_y[i] * tilt * Ly) / Lx
        shift_x[i] = math.floor(sx + 0.5)
    for i in range(n):
        for k in range(offsets[i], offsets[i + 1]):
            j = nbr[k]
            imx[k] += shift_x[i] - shift_x[j]
            imy[k] += shift_y[i] - shift_y[j]


@njit(cache=True)
def _candidates(i, nx, use_cells, cell_of, cell_start):
    """Upper bound on the neighbours of i: the particles in its 3 x 3 cells
    (all particles without cells)."""
    if not use_cells:
        return cell_start[-1]
    ny = (cell_start.shape[0] - 1) // nx
    cx = cell_of[i] % nx
    cy = cell_of[i] // nx
    total = 0
    for ddy in range(3):
        for ddx in range(3):
            c = ((cx + ddx - 1) % nx) + nx * ((cy + ddy - 1) % ny)
            total += cell_start[c + 1] - cell_start[c]
    return total


@njit(cache=True)
def _grown(a, size):
    """a copied into a new array of ``size`` (>= a.size) entries."""
    out = np.empty(size, a.dtype)
    out[:a.size] = a
    return out


@njit(cache=True)
def build_neighbour_list(pos, rad, Lx, Ly, tilt, skin):
    """Full Verlet list (pairs with r < rad_i + rad_j + skin, both directions)
    for positions (N, 2) anywhere in the plane (not wrapped, not modified).

    Returns (offsets (N+1,) int64, nbr (M,) int32, imx (M,) int32,
    imy (M,) int32): the neighbours of i are nbr[offsets[i]:offsets[i+1]]
    in a deterministic order, and r_ij = x_j - x_i + imx a1 + imy a2 with
    the image that is nearest when the list is built. half_pairs turns it
    into the flat list of pairs i < j that hertz_forces takes.

    One serial pass: each particle's neighbours are written straight after
    the previous particle's; the arrays grow when the next particle's
    candidates might not fit. Serial on purpose: as fast as a parallel
    count-then-fill on two threads (95 vs 85 ms at N = 1e5, equal at 4e3),
    and the minimiser loops (fire_loop, sd_loop) call it: a cached serial
    kernel must not call a parallel one, or a later process can load it
    with a stale reference to the callee's parallel region and crash
    (numba issue #8578; tests/test_numba_cache.py).
    """
    n = pos.shape[0]
    wrapped = pos.copy()
    wrap_into_cell(wrapped, Lx, Ly, tilt)
    nx, ny, use_cells, cell_of, cell_start, cell_members = _cells(wrapped, rad, Lx, Ly, tilt, skin)
    cap = 4 * n + 64  # a dense packing has 6-8 per particle: grows once or twice (tested)
    nbr = np.empty(cap, np.int32)
    imx = np.empty(cap, np.int32)
    imy = np.empty(cap, np.int32)
    offsets = np.zeros(n + 1, np.int64)
    k = 0
    for i in range(n):
        need = k + _candidates(i, nx, use_cells, cell_of, cell_start)
        if need > cap:
            cap = max(2 * cap, need)
            nbr = _grown(nbr, cap)
            imx = _grown(imx, cap)
            imy = _grown(imy, cap)
        k += _scan_cells(i, wrapped, rad, Lx, Ly, tilt, skin, nx, ny, use_cells,
                         cell_of, cell_start, cell_members, nbr, imx, imy, k)
        offsets[i + 1] = k
    nbr = nbr[:k].copy()
    imx = imx[:k].copy()
    imy = imy[:k].copy()
    _unwrap_images(pos, wrapped, Lx, Ly, tilt, offsets, nbr, imx, imy)
    return offsets, nbr, imx, imy


# --------------------------------------------------------------------------
# Hertzian energy, forces, stress
# --------------------------------------------------------------------------

@njit(cache=True)
def half_pairs(offsets, nbr, imx, imy, rad):
    """The pairs i < j of a full list (build_neighbour_list, radii rad (N,))
    as flat arrays (M/2,) in list order: particle indices pi, pj uint32
    (unsigned: the force kernel's gathers then need no negative-index
    wraparound), image shifts hx, hy int32, r_ij = x_j - x_i + hx a1 + hy a2,
    and contact distances sr = rad_i + rad_j float64 (one gather less per
    pair and force call)."""
    n = offsets.shape[0] - 1
    count = 0
    for i in range(n):
        for k in range(offsets[i], offsets[i + 1]):
            if nbr[k] > i:
                count += 1
    pi = np.empty(count, np.uint32)
    pj = np.empty(count, np.uint32)
    hx = np.empty(count, np.int32)
    hy = np.empty(count, np.int32)
    sr = np.empty(count)
    q = 0
    for i in range(n):
        for k in range(offsets[i], offsets[i + 1]):
            if nbr[k] > i:
                pi[q] = i
                pj[q] = nbr[k]
                hx[q] = imx[k]
                hy[q] = imy[k]
                sr[q] = rad[i] + rad[nbr[k]]
                q += 1
    return pi, pj, hx, hy, sr


#: pairs per vectorised batch in _hertz_pairs (small work arrays: they live
#: on the heap, never in fresh mmapped pages)
HERTZ_BATCH = 256

#: pair lists at least this long are cut into two fixed halves in
#: hertz_forces, one per thread (below it the second thread does not pay)
PAIR_SPLIT = 50_000


@njit(cache=True, error_model="numpy")
def _hertz_pairs(pos, Lx, Ly, tilt, pi, pj, hx, hy, sr, lo, hi, forces):
    """Forces (N, 2) of the pairs lo <= q < hi of the flat list (pi, pj, hx,
    hy, sr) of half_pairs, into ``forces`` (zeroed first); returns their
    energy.

    Each pair's force is added to both particles, so forces are exactly
    antisymmetric pair by pair. Batches of HERTZ_BATCH pairs: separations
    gathered, then the pair terms in one loop over contiguous arrays
    without branches or division checks (error_model="numpy"; pairs apart
    get h = 0), which vectorises, square roots and division included
    (they bound a scalar pair loop), then the forces scattered in pair
    order. Serial, the sums in a fixed order. Indices are used as unsigned
    integers (numba then drops its negative-index wraparound: x 1.2).
    """
    xy = tilt * Ly
    nb = HERTZ_BATCH
    dx = np.empty(nb)
    dy = np.empty(nb)
    fr = np.empty(nb)
    u = np.empty(nb)
    forces[:, :] = 0.0
    etot = 0.0
    for b in range(lo, hi, nb):
        c = min(nb, hi - b)
        for q in range(c):
            i = np.uint64(pi[b + q])  # unsigned: no negative-index wraparound code
            j = np.uint64(pj[b + q])
            dx[q] = pos[j, 0] - pos[i, 0] + hx[b + q] * Lx + hy[b + q] * xy
            dy[q] = pos[j, 1] - pos[i, 1] + hy[b + q] * Ly
        for q in range(c):  # vectorised
            r2 = dx[q] * dx[q] + dy[q] * dy[q]
            t = 1.0 / (sr[b + q] * math.sqrt(r2))  # 1 / (s r): the only division
            h = max(1.0 - r2 * t, 0.0)  # 1 - r/s, 0 for pairs apart
            sh = math.sqrt(h)
            u[q] = h * h * sh
            fr[q] = 2.5 * h * sh * t  # -u'(r)/r
        for q in range(c):
            i = np.uint64(pi[b + q])
            j = np.uint64(pj[b + q])
            fx = fr[q] * dx[q]
            fy = fr[q] * dy[q]
            forces[i, 0] -= fx
            forces[i, 1] -= fy
            forces[j, 0] += fx
            forces[j, 1] += fy
            etot += u[q]
    return etot


@njit(inline="always")
def _hertz_split(pos, Lx, Ly, tilt, pi, pj, hx, hy, sr, forces, work):
    """hertz_forces' body, inlined into each parallel caller (so that no
    cached kernel calls another's parallel region; tests/test_numba_cache.py)."""
    m = pi.shape[0]
    if m < PAIR_SPLIT:
        return _hertz_pairs(pos, Lx, Ly, tilt, pi, pj, hx, hy, sr, 0, m, forces)
    half = m // 2
    e = np.zeros(2)
    for b in prange(2):
        if b == 0:
            e[0] = _hertz_pairs(pos, Lx, Ly, tilt, pi, pj, hx, hy, sr, 0, half, forces)
        else:
            e[1] = _hertz_pairs(pos, Lx, Ly, tilt, pi, pj, hx, hy, sr, half, m, work)
    for i in prange(pos.shape[0]):
        forces[i, 0] += work[i, 0]
        forces[i, 1] += work[i, 1]
    return e[0] + e[1]


@njit(cache=True, parallel=True)
def hertz_forces(pos, Lx, Ly, tilt, pi, pj, hx, hy, sr, forces, work):
    """Forces (N, 2), in place, and the total energy (returned) from the
    flat pair list (pi, pj, hx, hy, sr) of half_pairs; ``work`` (N, 2) is
    scratch.

    A list of fewer than PAIR_SPLIT pairs is one serial pass
    (_hertz_pairs). A longer one is cut into two fixed halves (by pair
    count, not by thread count), each scattered by one thread into its own
    array (``forces``, ``work``), then added: forces = F(first half) +
    F(second half), energy likewise. The bits are those of any thread
    count. Per-particle energies: hertz_virial.
    """
    return _hertz_split(pos, Lx, Ly, tilt, pi, pj, hx, hy, sr, forces, work)


@njit(cache=True, parallel=True)
def hertz_virial(pos, rad, Lx, Ly, tilt, offsets, nbr, imx, imy, virial, epart):
    """Per-particle virial W_i (N, 2, 2) = (1/2) sum_j u'(r) r_a r_b / r and
    energy epart (N,) = (1/2) sum_j u(r_ij), in place, from the full list.

    sum_i W_i / V is the stress tensor sigma (see module docstring); units
    of energy. Returns the summed (2, 2) tensor (serial sum).
    """
    n = pos.shape[0]
    xy = tilt * Ly
    for i in prange(n):
        wxx = 0.0
        wxy = 0.0
        wyy = 0.0
        e = 0.0
        for k in range(offsets[i], offsets[i + 1]):
            j = nbr[k]
            dx, dy = _separation(pos, i, j, imx[k], imy[k], Lx, Ly, xy)
            s = rad[i] + rad[j]
            r2 = dx * dx + dy * dy
            if r2 < s * s:
                r = math.sqrt(r2)
                h = 1.0 - r / s
                sh = math.sqrt(h)
                e += 0.5 * h * h * sh
                du = -2.5 / s * h * sh  # u'(r)
                c = 0.5 * du / r
                wxx += c * dx * dx
                wxy += c * dx * dy
                wyy += c * dy * dy
        epart[i] = e
        virial[i, 0, 0] = wxx
        virial[i, 0, 1] = wxy
        virial[i, 1, 0] = wxy
        virial[i, 1, 1] = wyy
    total = np.zeros((2, 2))
    for i in range(n):
        for a in range(2):
            for b in range(2):
                total[a, b] += virial[i, a, b]
    return total


@njit(cache=True, inline="always")
def _separation(pos, i, j, mx, my, Lx, Ly, xy):
    """r_ij = x_j - x_i + mx a1 + my a2 (xy = tilt * Ly)."""
    return pos[j, 0] - pos[i, 0] + mx * Lx + my * xy, pos[j, 1] - pos[i, 1] + my * Ly


@njit(cache=True, inline="always")
def _stiffness(dx, dy, s):
    """Pair stiffness block K = u'' n n + (u'/r)(1 - n n) for r < s, else 0:
    returns (Kxx, Kxy, Kyy, in_contact)."""
    r2 = dx * dx + dy * dy
    if r2 >= s * s:
        return 0.0, 0.0, 0.0, False
    r = math.sqrt(r2)
    h = 1.0 - r / s
    sh = math.sqrt(h)
    d1 = -2.5 / s * h * sh          # u'
    d2 = 3.75 / (s * s) * sh        # u''
    nx = dx / r
    ny = dy / r
    t = d1 / r
    return (d2 * nx * nx + t * (1.0 - nx * nx), (d2 - t) * nx * ny,
            d2 * ny * ny + t * (1.0 - ny * ny), True)


@njit(cache=True, inline="always")
def _newton_stiffness(dx, dy, s, hsec):
    """_stiffness, with the secant normal stiffness through touching,
    -u'(r) / (s - r) = (2/3) u'', on a contact whose overlap h = 1 - r/s is
    below hsec (hsec = 0: exact; see hertz_hessian_triplets)."""
    kxx, kxy, kyy, touching = _stiffness(dx, dy, s)
    if touching:
        r = math.sqrt(dx * dx + dy * dy)
        if 1.0 - r / s < hsec:
            # subtract (1/3) u'' n n
            d2 = 1.25 / (s * s) * math.sqrt(1.0 - r / s) / (r * r)
            kxx -= d2 * dx * dx
            kxy -= d2 * dx * dy
            kyy -= d2 * dy * dy
    return kxx, kxy, kyy, touching


@njit(cache=True)
def hertz_hessian_triplets(pos, rad, Lx, Ly, tilt, offsets, nbr, imx, imy, hsec):
    """Sparse Hessian d2U/dx dx of the 2N coordinates (x0, y0, x1, y1, ...).

    Returns COO (rows, cols, vals) including every diagonal block (duplicate
    entries are to be summed) and the per-particle contact counts (N,).

    hsec = 0 gives the exact Hessian. With hsec > 0, on each contact whose
    overlap h = 1 - r/s is below hsec the normal stiffness u'' is replaced
    by the secant stiffness through touching, -u'(r) / (s - r) = (2/3) u''
    (the Newton solver's matrix: exact Newton only shrinks the overlap of a
    Hertzian contact that must open by a factor 3 per step, force ratio
    0.19; the secant takes it to touching in one step, and a small contact
    that stays closed costs a linear rate of about 1/3 of its share of the
    local stiffness).
    """
    n = pos.shape[0]
    npair = 0
    for i in range(n):
        for k in range(offsets[i], offsets[i + 1]):
            if nbr[k] > i:
                npair += 1
    rows = np.empty(16 * npair, np.int64)
    cols = np.empty(16 * npair, np.int64)
    vals = np.zeros(16 * npair)
    contacts = np.zeros(n, np.int64)
    xy = tilt * Ly
    q = 0
    for i in range(n):
        for k in range(offsets[i], offsets[i + 1]):
            j = nbr[k]
            if j <= i:
                continue
            dx, dy = _separation(pos, i, j, imx[k], imy[k], Lx, Ly, xy)
            kxx, kxy, kyy, touching = _newton_stiffness(dx, dy, rad[i] + rad[j], hsec)
            if touching:
                contacts[i] += 1
                contacts[j] += 1
            blk = (kxx, kxy, kxy, kyy)
            for a in range(2):
                for b in range(2):
                    v = blk[2 * a + b]
                    rows[q] = 2 * i + a; cols[q] = 2 * i + b; vals[q] = v; q += 1
                    rows[q] = 2 * j + a; cols[q] = 2 * j + b; vals[q] = v; q += 1
                    rows[q] = 2 * i + a; cols[q] = 2 * j + b; vals[q] = -v; q += 1
                    rows[q] = 2 * j + a; cols[q] = 2 * i + b; vals[q] = -v; q += 1
    return rows, cols, vals, contacts


@njit(cache=True, inline="always")
def _coupled_neighbours(i, offsets, nbr, touch, loose, js, ks):
    """Sorted coupled contact partners of particle i for newton_matrix: fills
    js[:m] with i itself and every touching j that is not loose (ascending)
    and ks[:m] with the list entry of each (-1 for i); returns m."""
    js[0] = i
    ks[0] = -1
    m = 1
    for k in range(offsets[i], offsets[i + 1]):
        j = nbr[k]
        if touch[k] and not loose[j]:
            p = m
            while p > 0 and js[p - 1] > j:  # insertion sort: a handful of entries
                js[p] = js[p - 1]
                ks[p] = ks[p - 1]
                p -= 1
            js[p] = j
            ks[p] = k
            m += 1
    return m


@njit(cache=True, parallel=True)
def newton_matrix(pos, rad, Lx, Ly, tilt, offsets, nbr, imx, imy, hsec, shift, loose):
    """The Newton solver's matrix H + D as a (2N, 2N) CSC array triple.

    H is the Hessian of hertz_hessian_triplets (secant stiffness below
    overlap hsec) with every row and column of the decoupled ("loose")
    particles removed; D is diagonal: typical = mean(diag H) (the full H)
    on the loose particles' coordinates and shift * typical on all others.
    loose (N,) bool is set to (contacts < 2).

    Returns (indptr (2N + 1,), indices, data): int32 indices, sorted
    within each column (State guarantees one image per pair). Column
    2i + b holds the rows 2j + a of i and of its touching, coupled
    partners j.
    """
    n = pos.shape[0]
    xy = tilt * Ly
    nk = nbr.shape[0]
    blk = np.zeros((nk, 3))
    touch = np.zeros(nk, np.bool_)
    diag = np.zeros((n, 3))
    contacts = np.zeros(n, np.int64)
    for i in prange(n):
        c = 0
        dxx = 0.0
        dxy = 0.0
        dyy = 0.0
        for k in range(offsets[i], offsets[i + 1]):
            j = nbr[k]
            dx, dy = _separation(pos, i, j, imx[k], imy[k], Lx, Ly, xy)
            kxx, kxy, kyy, touching = _newton_stiffness(dx, dy, rad[i] + rad[j], hsec)
            if touching:
                c += 1
                touch[k] = True
                blk[k, 0] = kxx
                blk[k, 1] = kxy
                blk[k, 2] = kyy
                dxx += kxx
                dxy += kxy
                dyy += kyy
        contacts[i] = c
        diag[i, 0] = dxx
        diag[i, 1] = dxy
        diag[i, 2] = dyy
    for i in range(n):
        loose[i] = contacts[i] < 2
    trace = 0.0
    for i in range(n):
        trace += diag[i, 0] + diag[i, 2]
    typical = max(trace / (2 * n), np.finfo(np.float64).tiny)
    # scratch for _coupled_neighbours: particle i's slice starts at offsets[i] + i
    js_all = np.empty(nk + n, np.int64)
    ks_all = np.empty(nk + n, np.int64)
    count = np.empty(n, np.int64)  # entries per column of particle i
    for i in prange(n):
        if loose[i]:
            count[i] = 1
            continue
        m = 1
        for k in range(offsets[i], offsets[i + 1]):
            if touch[k] and not loose[nbr[k]]:
                m += 1
        count[i] = 2 * m
    indptr = np.empty(2 * n + 1, np.int32)
    indptr[0] = 0
    for i in range(n):
        indptr[2 * i + 1] = indptr[2 * i] + count[i]
        indptr[2 * i + 2] = indptr[2 * i + 1] + count[i]
    nnz = indptr[2 * n]
    indices = np.empty(nnz, np.int32)
    data = np.empty(nnz)
    for i in prange(n):
        c0 = indptr[2 * i]
        c1 = indptr[2 * i + 1]
        if loose[i]:
            indices[c0] = 2 * i
            data[c0] = typical
            indices[c1] = 2 * i + 1
            data[c1] = typical
            continue
        js = js_all[offsets[i] + i:offsets[i + 1] + i + 1]
        ks = ks_all[offsets[i] + i:offsets[i + 1] + i + 1]
        m = _coupled_neighbours(i, offsets, nbr, touch, loose, js, ks)
        for p in range(m):
            k = ks[p]
            q = 2 * p
            r = 2 * js[p]
            indices[c0 + q] = r
            indices[c0 + q + 1] = r + 1
            indices[c1 + q] = r
            indices[c1 + q + 1] = r + 1
            if k < 0:
                data[c0 + q] = diag[i, 0] + shift * typical
                data[c0 + q + 1] = diag[i, 1]
                data[c1 + q] = diag[i, 1]
                data[c1 + q + 1] = diag[i, 2] + shift * typical
            else:
                data[c0 + q] = -blk[k, 0]
                data[c0 + q + 1] = -blk[k, 1]
                data[c1 + q] = -blk[k, 1]
                data[c1 + q + 1] = -blk[k, 2]
    return indptr, indices, data


@njit(cache=True)
def hertz_affine_force(pos, rad, Lx, Ly, tilt, offsets, nbr, imx, imy, out):
    """Xi (N, 2) = -d^2U/(dx dgamma) for simple shear x += gamma y, in place.

    The force that appears on each particle per unit affine shear strain
    (the 'affine force field'); the non-affine linear response is
    H^-1 Xi per unit strain.
    """
    n = pos.shape[0]
    xy = tilt * Ly
    for i in range(n):
        fx = 0.0
        fy = 0.0
        for k in range(offsets[i], offsets[i + 1]):
            j = nbr[k]
            dx, dy = _separation(pos, i, j, imx[k], imy[k], Lx, Ly, xy)
            # d r_ij / d gamma = (dy, 0); the force on i is +K_ij . (dy, 0)
            kxx, kxy, _, _ = _stiffness(dx, dy, rad[i] + rad[j])
            fx += kxx * dy
            fy += kxy * dy
        out[i, 0] = fx
        out[i, 1] = fy


@njit(cache=True)
def single_contact_moves(pos, rad, Lx, Ly, tilt, offsets, nbr, imx, imy, mask, gap, out):
    """Opening moves of particles with exactly one contact (Newton helper).

    For each i with mask[i] and exactly one contact j, out[i] is the
    displacement that takes i straight away from j to a gap of gap * s,
    -(s - r + gap s) r_ij / r: the Newton step of an isolated Hertzian
    contact only shrinks the overlap by 1/3 per step, and a contact left
    at round-off overlap is a near-singular direction of the Hessian.
    Other rows are left as they are. Returns the number of rows written.
    """
    n = pos.shape[0]
    xy = tilt * Ly
    written = 0
    for i in range(n):
        if not mask[i]:
            continue
        cnt = 0
        mx = 0.0
        my = 0.0
        for k in range(offsets[i], offsets[i + 1]):
            j = nbr[k]
            dx, dy = _separation(pos, i, j, imx[k], imy[k], Lx, Ly, xy)
            s = rad[i] + rad[j]
            r2 = dx * dx + dy * dy
            if r2 < s * s:
                cnt += 1
                r = math.sqrt(r2)
                mx = -(s - r + gap * s) * dx / r
                my = -(s - r + gap * s) * dy / r
        if cnt == 1:
            out[i, 0] = mx
            out[i, 1] = my
            written += 1
    return written


# --------------------------------------------------------------------------
# Minimisers with the neighbour list maintained inside the loop
# --------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def fire_loop(pos, rad, Lx, Ly, tilt, skin, ftol, max_iter, dt0, dtmax, dtmin,
              n_delay, f_inc, f_dec, alpha0, f_alpha, n_neg_max):
    """FIRE 2.0 (Guenole et al., Comput. Mater. Sci. 175, 109584 (2020)) with
    semi-implicit Euler, unit masses, initial delay, in place on pos (N, 2).

    Stops when max_i |F_i| < ftol. Returns (iterations, converged,
    max|F|, energy, force evaluations, neighbour rebuilds).
    """
    n = pos.shape[0]
    pi, pj, hx, hy, sr = half_pairs(*build_neighbour_list(pos, rad, Lx, Ly, tilt, skin), rad)
    ref = pos.copy()
    rebuilds = 1
    forces = np.zeros((n, 2))
    work = np.empty((n, 2))
    vel = np.zeros((n, 2))
    energy = _hertz_split(pos, Lx, Ly, tilt, pi, pj, hx, hy, sr, forces, work)
    nfev = 1
    fmax = max_norm(forces)
    if fmax < ftol:
        return 0, True, fmax, energy, nfev, rebuilds
    dt = dt0
    alpha = alpha0
    n_pos = 0
    n_neg = 0
    it = 0
    converged = False
    power = 0.0  # F.v of the last evaluation's forces and the current velocities
    while it < max_iter:
        it += 1
        if power > 0.0:
            n_pos += 1
            n_neg = 0
            if n_pos > n_delay:
                dt = min(dt * f_inc, dtmax)
                alpha *= f_alpha
        else:
            n_pos = 0
            n_neg += 1
            if n_neg > n_neg_max:
                break
            if it >= n_delay:
                if dt * f_dec >= dtmin:
                    dt *= f_dec
                alpha = alpha0
            for i in range(n):
                pos[i, 0] -= 0.5 * dt * vel[i, 0]
                pos[i, 1] -= 0.5 * dt * vel[i, 1]
                vel[i, 0] = 0.0
                vel[i, 1] = 0.0
        vnorm = 0.0
        fnorm = 0.0
        for i in range(n):
            vel[i, 0] += dt * forces[i, 0]
            vel[i, 1] += dt * forces[i, 1]
            vnorm += vel[i, 0] ** 2 + vel[i, 1] ** 2
            fnorm += forces[i, 0] ** 2 + forces[i, 1] ** 2
        # mixing, move and the displacement since the list was built, in one pass
        mix = alpha * math.sqrt(vnorm / fnorm) if fnorm > 0.0 else 0.0
        keep = 1.0 - alpha if fnorm > 0.0 else 1.0
        d2 = 0.0
        for i in range(n):
            vel[i, 0] = keep * vel[i, 0] + mix * forces[i, 0]
            vel[i, 1] = keep * vel[i, 1] + mix * forces[i, 1]
            pos[i, 0] += dt * vel[i, 0]
            pos[i, 1] += dt * vel[i, 1]
            dx = pos[i, 0] - ref[i, 0]
            dy = pos[i, 1] - ref[i, 1]
            d2 = max(d2, dx * dx + dy * dy)
        if math.sqrt(d2) > 0.5 * skin:
            pi, pj, hx, hy, sr = half_pairs(*build_neighbour_list(pos, rad, Lx, Ly, tilt, skin), rad)
            ref[:, :] = pos
            rebuilds += 1
        energy = _hertz_split(pos, Lx, Ly, tilt, pi, pj, hx, hy, sr, forces, work)
        nfev += 1
        # max|F| and the power for the next iteration, in one pass
        f2 = 0.0
        power = 0.0
        for i in range(n):
            f2 = max(f2, forces[i, 0] * forces[i, 0] + forces[i, 1] * forces[i, 1])
            power += forces[i, 0] * vel[i, 0] + forces[i, 1] * vel[i, 1]
        fmax = math.sqrt(f2)
        if fmax < ftol:
            converged = True
            break
    return it, converged, fmax, energy, nfev, rebuilds


@njit(cache=True, parallel=True)
def sd_loop(pos, rad, Lx, Ly, tilt, skin, ftol, max_steps, dt, dt_max, eta,
            grow, shrink, stop_disp, start):
    """Overdamped steepest descent dx/dt = F with an adaptive step, in place.

    One trial step is x' = x + dt F (so dt = |dx|/|F|). It is accepted when
    the force barely turns: |F' - F| <= eta |F| (the local error of the
    Euler step is (dt/2)|F' - F|) and F' . F > 0 (the step does not pass the
    1D minimum along F); then dt grows by ``grow`` up to dt_max. Otherwise
    it is rejected and dt shrinks by ``shrink``. Energy differences are
    never used: they vanish below round-off near a minimum.

    Runs until max|F| < ftol, max_steps accepted steps, or (stop_disp > 0)
    the configuration-space distance sqrt(sum_i |x_i - start_i|^2) reaches
    stop_disp (start (N, 2) is the reference, e.g. the last saved frame).
    Returns (status, accepted, rejected, time advanced, dt, max|F|,
    energy): status 0 converged, 1 reached stop_disp, 2 max_steps.
    """
    n = pos.shape[0]
    pi, pj, hx, hy, sr = half_pairs(*build_neighbour_list(pos, rad, Lx, Ly, tilt, skin), rad)
    ref = pos.copy()
    forces = np.zeros((n, 2))
    trial_f = np.zeros((n, 2))
    trial = np.empty((n, 2))
    work = np.empty((n, 2))
    energy = _hertz_split(pos, Lx, Ly, tilt, pi, pj, hx, hy, sr, forces, work)
    fmax = max_norm(forces)
    accepted = 0
    rejected = 0
    time = 0.0
    status = 2
    if fmax < ftol:
        return 0, 0, 0, 0.0, dt, fmax, energy
    while accepted < max_steps:
        for i in range(n):
            trial[i, 0] = pos[i, 0] + dt * forces[i, 0]
            trial[i, 1] = pos[i, 1] + dt * forces[i, 1]
        if max_displacement(trial, ref) > 0.5 * skin:
            pi, pj, hx, hy, sr = half_pairs(*build_neighbour_list(trial, rad, Lx, Ly, tilt, skin), rad)
            ref[:, :] = trial
        e_trial = _hertz_split(trial, Lx, Ly, tilt, pi, pj, hx, hy, sr, trial_f, work)
        ff = 0.0
        dd = 0.0
        f2 = 0.0
        for i in range(n):
            ff += trial_f[i, 0] * forces[i, 0] + trial_f[i, 1] * forces[i, 1]
            dd += (trial_f[i, 0] - forces[i, 0]) ** 2 + (trial_f[i, 1] - forces[i, 1]) ** 2
            f2 += forces[i, 0] ** 2 + forces[i, 1] ** 2
        if ff > 0.0 and dd <= eta * eta * f2:
            pos[:, :] = trial
            forces[:, :] = trial_f
            energy = e_trial
            time += dt
            accepted += 1
            dt = min(dt * grow, dt_max)
            fmax = max_norm(forces)
            if fmax < ftol:
                status = 0
                break
            if stop_disp > 0.0:
                d2 = 0.0
                for i in range(n):
                    d2 += (pos[i, 0] - start[i, 0]) ** 2 + (pos[i, 1] - start[i, 1]) ** 2
                if d2 >= stop_disp * stop_disp:
                    status = 1
                    break
        else:
            rejected += 1
            dt *= shrink
    return status, accepted, rejected, time, dt, fmax, energy
