"""Local deformation between two frames: D2min, best-fit J, local strains,
and rearranger flags (SPEC.md sections 0 and 2).

Conventions (SPEC.md section 0):

- Lengths in units of the small particle's diameter (radii 0.5 and 0.7).
  D2min has units of length^2; J and the strains are dimensionless.
- The box of a frame is the parallelogram spanned by a1 = (Lx, 0) and
  a2 = (tilt * Ly, Ly). ``tilt`` may take any value (e.g. the accumulated
  engineering strain ``State.gamma``); the neighbour search reduces it
  internally. Positions (N, 2) are Cartesian and continuous (unwrapped);
  they need not lie in the primary cell.
- For particle k, the neighbours i are those within ``r_d`` of k in the
  FIRST frame (minimum image). The image is chosen in the first frame and
  carried to the second: r_ik = x_i - x_k + m1 a1 + m2 a2 and
  r'_ik = x'_i - x'_k + m1 a1' + m2 a2' with the same integers (m1, m2).
  Hence the two frames' (Lx, Ly, tilt) must describe the same lattice
  vectors carried by the deformation: pass the accumulated tilt
  (``State.gamma``) of both frames, or remapped tilts of two frames
  between which no remap happened. Two remapped tilts that straddle a
  remap (e.g. 0.49 and -0.49) describe a1' + a2' as a2' and give wrong
  results.
- J_k = (sum_i r'_ik r_ik^T)(sum_i r_ik r_ik^T)^-1 (2x2 least squares),
  D2min(k) = (1/M_k) sum_i |r'_ik - J_k r_ik|^2 with M_k the neighbour
  count (note the 1/M_k), eps = (J + J^T)/2 - I, k = (eps_xx + eps_yy)/2,
  e1 = (eps_xx - eps_yy)/2, e2 = eps_xy, eps_dev = 2 sqrt(e1^2 + e2^2).
- A particle with fewer than 2 neighbours, or whose neighbour vectors are
  collinear (det(sum r r^T) <= 1e-12 (tr sum r r^T)^2), has no unique fit:
  its d2min, J, k, e1, e2 and eps_dev are NaN (n_neighbours is still
  reported).

The neighbour search is an O(N) cell list in fractional coordinates of the
reduced box (3 x 3 stencil, particles counting-sorted by cell for memory
locality); when the box holds fewer than 3 cells per side it falls back to
an O(N^2) search. Both need the box's perpendicular widths to exceed 2 r_d
(each pair then has at most one image within r_d); otherwise a ValueError
is raised. ``local_deformation`` runs the search and the fit in one fused
parallel pass (no neighbour lists stored); ``neighbour_images`` returns the
lists. Each particle sums its neighbours in increasing index order, so
results are bit-for-bit independent of the thread count and of the cell
layout, and identical between the fused pass and neighbour_images + fit.

Also here: ``isolated_rearranger`` (the isolated-rearrangement frame
filter of section 2), ``minimum_image_distance``, ``d2min_correlation``
and ``correlation_length`` (the rearrangement size, section 4 item 6).

All numba kernels and their helpers live in this one file (``cache=True``
safety, as in particles/kernels.py).
"""

import math
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

#: Rearranger thresholds on D2min (length^2), SPEC.md section 2.
D_SMALL = 0.0025
D_LARGE = 0.0015
#: Radius separating the species (small 0.5, large 0.7).
_RADIUS_SPLIT = 0.6


# --------------------------------------------------------------------------
# numba kernels
# --------------------------------------------------------------------------

#: Particles per parallel work item (slots in cell order).
_BLOCK = 256


@njit(cache=True)
def _grid(Lx, Ly, tilt, r_d):
    """Reduced tilt and cell grid: (shift, tr, nx, ny, use_cells) with
    tr = tilt - shift in [-1/2, 1/2] (a2_reduced = a2 - shift a1) and
    nx x ny cells of perpendicular widths >= r_d; fewer than 3 cells per
    side -> one cell (O(N^2) fallback)."""
    shift = int(math.floor(tilt + 0.5))
    tr = tilt - shift
    nx = int(Lx / (r_d * math.sqrt(1.0 + tr * tr)))
    ny = int(Ly / r_d)
    use_cells = nx >= 3 and ny >= 3
    if not use_cells:
        nx = 1
        ny = 1
    return shift, tr, nx, ny, use_cells


def _workspace(n):
    """Scratch arrays of _cell_sort, allocated by numpy (large numba-side
    allocations cost fresh page faults on every call)."""
    return (np.empty((n, 2)), np.empty((n, 2), np.int64), np.empty(n, np.int64),
            np.empty(n, np.int64), np.empty(n, np.int64), np.empty((n, 2)),
            np.empty((n, 2), np.int64))


@njit(cache=True, parallel=True)
def _cell_sort(pos, Lx, Ly, tilt, r_d, w, f, cell_of, order, slot_cell, ws, fs):
    """Cell list of the frame (pos, Lx, Ly, tilt), particles sorted by cell.

    With (shift, tr, nx, ny, use_cells) = _grid(...): wrapped fractional
    coordinates w in [0, 1) of the reduced box and their integer floors f
    (s = w + f, s the fractional coordinates of the unwrapped position) are
    stored in CELL ORDER: sorted slot q holds particle order[q] (ws[q],
    fs[q], its cell slot_cell[q]); the members of cell c are the slots
    cell_start[c]:cell_start[c + 1] (increasing particle index within a
    cell). w, f, cell_of, order, slot_cell, ws, fs are the caller's scratch
    arrays (_workspace). Returns (cell_start, max_candidates),
    max_candidates an upper bound on any particle's neighbour count.
    """
    n = pos.shape[0]
    shift, tr, nx, ny, use_cells = _grid(Lx, Ly, tilt, r_d)
    ncell = nx * ny
    for i in prange(n):
        s2 = pos[i, 1] / Ly
        s1 = (pos[i, 0] - tr * pos[i, 1]) / Lx
        f1 = math.floor(s1)
        f2 = math.floor(s2)
        w1 = s1 - f1
        w2 = s2 - f2
        # s - floor(s) can round up to exactly 1.0
        if w1 >= 1.0:
            w1 -= 1.0
            f1 += 1
        if w2 >= 1.0:
            w2 -= 1.0
            f2 += 1
        w[i, 0] = w1
        w[i, 1] = w2
        f[i, 0] = f1
        f[i, 1] = f2
        cxi = min(int(w1 * nx), nx - 1)
        cyi = min(int(w2 * ny), ny - 1)
        cell_of[i] = cxi + nx * cyi
    # counting sort by cell (stable: increasing index within a cell)
    cell_start = np.zeros(ncell + 1, np.int64)
    for i in range(n):
        cell_start[cell_of[i] + 1] += 1
    maxocc = 0
    for c in range(ncell):
        maxocc = max(maxocc, cell_start[c + 1])
        cell_start[c + 1] += cell_start[c]
    fill = cell_start[:-1].copy()
    for i in range(n):
        c = cell_of[i]
        order[fill[c]] = i
        fill[c] += 1
    for q in prange(n):
        i = order[q]
        slot_cell[q] = cell_of[i]
        ws[q, 0] = w[i, 0]
        ws[q, 1] = w[i, 1]
        fs[q, 0] = f[i, 0]
        fs[q, 1] = f[i, 1]
    max_candidates = min(n, (9 if use_cells else 1) * maxocc)
    return cell_start, max_candidates


@njit(cache=True, inline="always")
def _gather(q, n_all, Lx, Ly, tr, rd2, nx, ny, use_cells, cell_start, slot_cell, ws,
            slot, o1, o2, write):
    """Neighbours of the particle in slot q within sqrt(rd2) (frame-0
    minimum image), in cell order (not yet sorted by index).

    When ``write``, stores at 0..m-1 the neighbour's slot and its image
    (o1, o2) in the REDUCED basis relative to the wrapped fractional
    coordinates (r = (w_i - w_k + o) . (a1, a2_reduced)). Branch-free
    inner loop: every candidate is written at position m, and m advances
    only when it is a neighbour (buffers hold max_candidates + 1 entries).
    Returns the number found.
    """
    m = 0
    wk0 = ws[q, 0]
    wk1 = ws[q, 1]
    if not use_cells:
        for q2 in range(n_all):
            d1 = ws[q2, 0] - wk0
            d2 = ws[q2, 1] - wk1
            m1 = -math.floor(d1 + 0.5)
            m2 = -math.floor(d2 + 0.5)
            ry = (d2 + m2) * Ly
            rx = (d1 + m1) * Lx + tr * ry
            if write:
                slot[m] = q2
                o1[m] = int(m1)
                o2[m] = int(m2)
            m += (rx * rx + ry * ry < rd2) & (q2 != q)
        return m
    c0 = slot_cell[q]
    cx = c0 % nx
    cy = c0 // nx
    for ddy in range(3):
        yy = cy + ddy - 1
        oy = 0
        if yy < 0:
            yy += ny
            oy = -1
        elif yy >= ny:
            yy -= ny
            oy = 1
        for ddx in range(3):
            xx = cx + ddx - 1
            ox = 0
            if xx < 0:
                xx += nx
                ox = -1
            elif xx >= nx:
                xx -= nx
                ox = 1
            c = xx + nx * yy
            # a pair within r_d has |fractional separation| < 1/3 (>= 3
            # cells per side), so the cell's wrap offset IS its minimum
            # image, the same integers as -floor(d + 1/2)
            f1 = float(ox)
            f2 = float(oy)
            for q2 in range(cell_start[c], cell_start[c + 1]):
                ry = (ws[q2, 1] - wk1 + f2) * Ly
                rx = (ws[q2, 0] - wk0 + f1) * Lx + tr * ry
                if write:
                    slot[m] = q2
                    o1[m] = ox
                    o2[m] = oy
                m += (rx * rx + ry * ry < rd2) & (q2 != q)
    return m


@njit(cache=True, inline="always")
def _index_order(order, slot, mk, key, bits):
    """key[0:mk] = entries 0..mk-1 sorted by neighbour index order[slot]
    (insertion sort of packed (index << bits) | entry)."""
    for p in range(mk):
        v = (order[slot[p]] << bits) | p
        q = p - 1
        while q >= 0 and key[q] > v:
            key[q + 1] = key[q]
            q -= 1
        key[q + 1] = v


@njit(cache=True)
def _bits_for(m):
    b = 1
    while (1 << b) <= m:
        b += 1
    return b


@njit(cache=True, parallel=True)
def _neighbour_counts(pos, Lx, Ly, tilt, r_d, w, f, cell_of, order, slot_cell, ws, fs,
                      offsets):
    """First pass of neighbour_images: cell sort (into the workspace) and
    the CSR offsets (N+1,) of the neighbour lists within r_d. Returns
    (cell_start, max_candidates) for _neighbour_fill."""
    n = pos.shape[0]
    cell_start, maxc = _cell_sort(pos, Lx, Ly, tilt, r_d, w, f, cell_of, order, slot_cell,
                                  ws, fs)
    shift, tr, nx, ny, use_cells = _grid(Lx, Ly, tilt, r_d)
    rd2 = r_d * r_d
    empty = np.empty(0, np.int64)
    for q in prange(n):
        offsets[order[q] + 1] = _gather(q, n, Lx, Ly, tr, rd2, nx, ny, use_cells,
                                        cell_start, slot_cell, ws, empty, empty, empty,
                                        False)
    offsets[0] = 0
    for k in range(n):
        offsets[k + 1] += offsets[k]
    return cell_start, maxc


@njit(cache=True, parallel=True)
def _neighbour_fill(Lx, Ly, tilt, r_d, order, slot_cell, ws, fs, cell_start, maxc,
                    offsets, nbr, im1, im2):
    """Second pass of neighbour_images: nbr, im1, im2 (M,) of every
    particle in increasing neighbour index, image integers in the
    caller's basis (r_ik = x_i - x_k + im1 a1 + im2 a2)."""
    n = order.shape[0]
    shift, tr, nx, ny, use_cells = _grid(Lx, Ly, tilt, r_d)
    rd2 = r_d * r_d
    bits = _bits_for(maxc)
    mask = (1 << bits) - 1
    nblock = (n + _BLOCK - 1) // _BLOCK
    for blk in prange(nblock):
        slot = np.empty(maxc + 1, np.int64)
        o1 = np.empty(maxc + 1, np.int64)
        o2 = np.empty(maxc + 1, np.int64)
        key = np.empty(maxc + 1, np.int64)
        for q in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
            mk = _gather(q, n, Lx, Ly, tr, rd2, nx, ny, use_cells, cell_start, slot_cell,
                         ws, slot, o1, o2, True)
            _index_order(order, slot, mk, key, bits)
            a = offsets[order[q]]
            for p in range(mk):
                j = key[p] & mask
                q2 = slot[j]
                # image in the reduced basis for unwrapped positions;
                # a2_reduced = a2 - shift * a1
                M1 = o1[j] - fs[q2, 0] + fs[q, 0]
                M2 = o2[j] - fs[q2, 1] + fs[q, 1]
                nbr[a + p] = order[q2]
                im1[a + p] = M1 - shift * M2
                im2[a + p] = M2


def _neighbours(pos, Lx, Ly, tilt, r_d):
    """Neighbour lists within r_d in the frame (pos, Lx, Ly, tilt).

    Returns (offsets (N+1,) int64, nbr (M,) int64, im1 (M,) int64,
    im2 (M,) int64): the neighbours of k are nbr[offsets[k]:offsets[k+1]]
    in increasing index order and r_ik = x_i - x_k + im1 a1 + im2 a2.
    The caller guarantees both perpendicular widths exceed 2 r_d.
    """
    n = pos.shape[0]
    w, f, cell_of, order, slot_cell, ws, fs = _workspace(n)
    offsets = np.empty(n + 1, np.int64)
    cell_start, maxc = _neighbour_counts(pos, Lx, Ly, tilt, r_d, w, f, cell_of, order,
                                         slot_cell, ws, fs, offsets)
    mtot = int(offsets[n])
    nbr = np.empty(mtot, np.int64)
    im1 = np.empty(mtot, np.int64)
    im2 = np.empty(mtot, np.int64)
    _neighbour_fill(Lx, Ly, tilt, r_d, order, slot_cell, ws, fs, cell_start, maxc, offsets,
                    nbr, im1, im2)
    return offsets, nbr, im1, im2



@njit(cache=True, parallel=True)
def _fused_deformation(pos0, pos1, Lx0, Ly0, tilt0, Lx1, Ly1, tilt1, r_d,
                       d2min, J, kvol, e1, e2, eps_dev, nn, w, f, cell_of, order, slot_cell,
                       ws, fs, p0, p1):
    """Neighbour search and per-particle fit in one pass, in cell order.

    Writes, for every particle k (original index): n_neighbours nn[k],
    best-fit J[k] (2, 2), D2min[k] and the strains k, e1, e2, eps_dev; NaN
    for particles with < 2 neighbours or a singular sum r r^T. The CSR
    lists are never stored: each work item gathers a particle's neighbours
    into its own buffer, orders them by index and sums in that order, with
    exactly the arithmetic of ``neighbour_images`` followed by the fit
    (bit-for-bit the same results, independent of threads and cell layout).
    """
    n = pos0.shape[0]
    cell_start, maxc = _cell_sort(pos0, Lx0, Ly0, tilt0, r_d, w, f, cell_of, order,
                                  slot_cell, ws, fs)
    shift, tr, nx, ny, use_cells = _grid(Lx0, Ly0, tilt0, r_d)
    rd2 = r_d * r_d
    bits = _bits_for(maxc)
    mask = (1 << bits) - 1
    # positions in cell order (p0, p1: scratch): neighbours are read from
    # nearby memory
    for q in prange(n):
        i = order[q]
        p0[q, 0] = pos0[i, 0]
        p0[q, 1] = pos0[i, 1]
        p1[q, 0] = pos1[i, 0]
        p1[q, 1] = pos1[i, 1]
    a2x0 = tilt0 * Ly0
    a2x1 = tilt1 * Ly1
    nblock = (n + _BLOCK - 1) // _BLOCK
    for blk in prange(nblock):
        slot = np.empty(maxc + 1, np.int64)
        o1 = np.empty(maxc + 1, np.int64)
        o2 = np.empty(maxc + 1, np.int64)
        key = np.empty(maxc + 1, np.int64)
        vec = np.empty((maxc + 1, 4))
        for q in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
            k = order[q]
            mk = _gather(q, n, Lx0, Ly0, tr, rd2, nx, ny, use_cells, cell_start, slot_cell,
                         ws, slot, o1, o2, True)
            _index_order(order, slot, mk, key, bits)
            nn[k] = mk
            xk0 = p0[q, 0]
            yk0 = p0[q, 1]
            xk1 = p1[q, 0]
            yk1 = p1[q, 1]
            fk0 = fs[q, 0]
            fk1 = fs[q, 1]
            # A = sum r r^T, B = sum r' r^T
            A00 = 0.0
            A01 = 0.0
            A11 = 0.0
            B00 = 0.0
            B01 = 0.0
            B10 = 0.0
            B11 = 0.0
            for p in range(mk):
                j = key[p] & mask
                s = slot[j]
                # image integers in the caller's basis (a2_red = a2 - shift a1)
                M2 = o2[j] - fs[s, 1] + fk1
                M1 = o1[j] - fs[s, 0] + fk0 - shift * M2
                rx = p0[s, 0] - xk0 + M1 * Lx0 + M2 * a2x0
                ry = p0[s, 1] - yk0 + M2 * Ly0
                sx = p1[s, 0] - xk1 + M1 * Lx1 + M2 * a2x1
                sy = p1[s, 1] - yk1 + M2 * Ly1
                vec[p, 0] = rx
                vec[p, 1] = ry
                vec[p, 2] = sx
                vec[p, 3] = sy
                A00 += rx * rx
                A01 += rx * ry
                A11 += ry * ry
                B00 += sx * rx
                B01 += sx * ry
                B10 += sy * rx
                B11 += sy * ry
            det = A00 * A11 - A01 * A01
            trA = A00 + A11
            if mk < 2 or not (det > 1e-12 * trA * trA):
                d2min[k] = np.nan
                J[k, 0, 0] = np.nan
                J[k, 0, 1] = np.nan
                J[k, 1, 0] = np.nan
                J[k, 1, 1] = np.nan
                kvol[k] = np.nan
                e1[k] = np.nan
                e2[k] = np.nan
                eps_dev[k] = np.nan
                continue
            # A^-1 = [[A11, -A01], [-A01, A00]] / det
            j00 = (B00 * A11 - B01 * A01) / det
            j01 = (B01 * A00 - B00 * A01) / det
            j10 = (B10 * A11 - B11 * A01) / det
            j11 = (B11 * A00 - B10 * A01) / det
            acc = 0.0
            for p in range(mk):
                rx = vec[p, 0]
                ry = vec[p, 1]
                ex = vec[p, 2] - (j00 * rx + j01 * ry)
                ey = vec[p, 3] - (j10 * rx + j11 * ry)
                acc += ex * ex + ey * ey
            d2min[k] = acc / mk
            J[k, 0, 0] = j00
            J[k, 0, 1] = j01
            J[k, 1, 0] = j10
            J[k, 1, 1] = j11
            exx = j00 - 1.0
            eyy = j11 - 1.0
            exy = 0.5 * (j01 + j10)
            kvol[k] = 0.5 * (exx + eyy)
            ee = 0.5 * (exx - eyy)
            e1[k] = ee
            e2[k] = exy
            eps_dev[k] = 2.0 * math.sqrt(ee * ee + exy * exy)


# --------------------------------------------------------------------------
# numpy API
# --------------------------------------------------------------------------

@dataclass
class LocalDeformation:
    """Per-particle deformation between two frames (SPEC.md section 2).

    Attributes (N = number of particles; NaN where the fit is singular,
    see the module docstring):
        d2min: (N,) non-affine residual D2min, length^2, with the 1/M_k.
        J: (N, 2, 2) best-fit local deformation gradient (dimensionless).
        k: (N,) volumetric strain (eps_xx + eps_yy)/2.
        e1: (N,) deviatoric strain (eps_xx - eps_yy)/2.
        e2: (N,) shear strain eps_xy (alias ``eps_xy``).
        eps_dev: (N,) deviatoric magnitude 2 sqrt(e1^2 + e2^2).
        n_neighbours: (N,) int64 neighbour count M_k within r_d in frame 0.
    """

    d2min: np.ndarray
    J: np.ndarray
    k: np.ndarray
    e1: np.ndarray
    e2: np.ndarray
    eps_dev: np.ndarray
    n_neighbours: np.ndarray

    @property
    def eps_xy(self) -> np.ndarray:
        """(N,) eps_xy, the same array as ``e2``."""
        return self.e2


def _check_box(Lx, Ly, tilt, r_d):
    if not (Lx > 0 and Ly > 0 and r_d > 0):
        raise ValueError("Lx, Ly and r_d must be positive")
    if not -0.5 <= tilt < 0.5 and abs(Lx - Ly) > 1e-12 * Ly:
        # reducing the tilt by whole units is a lattice symmetry only for Lx = Ly
        raise ValueError(f"a tilt outside [-1/2, 1/2) (got {tilt!r}) needs a square box "
                         f"(Lx = {Lx!r}, Ly = {Ly!r})")
    tr = tilt - np.floor(tilt + 0.5)
    width = min(Lx / np.sqrt(1.0 + tr * tr), Ly)
    if width <= 2.0 * r_d:
        raise ValueError(
            f"box widths must exceed 2 r_d = {2.0 * r_d:g} (smallest width {width:.4g}):"
            " a pair could have two images within r_d")


def neighbour_images(pos0, Lx0, Ly0, tilt0, r_d=2.0):
    """Neighbours within r_d in a frame, with their carried image integers.

    Args:
        pos0: (N, 2) Cartesian positions (unwrapped allowed).
        Lx0, Ly0, tilt0: box of the frame (any tilt).
        r_d: neighbour radius (length).
    Returns:
        (offsets (N+1,), nbr (M,), im1 (M,), im2 (M,)) int64 arrays: the
        neighbours of k are nbr[offsets[k]:offsets[k+1]] (increasing index),
        r_ik = x_i - x_k + im1 a1 + im2 a2.
    """
    pos0 = np.ascontiguousarray(pos0, dtype=np.float64)
    _check_box(float(Lx0), float(Ly0), float(tilt0), float(r_d))
    return _neighbours(pos0, float(Lx0), float(Ly0), float(tilt0), float(r_d))


def local_deformation(pos0, pos1, radii, Lx0, Ly0, tilt0, Lx1, Ly1, tilt1,
                      r_d=2.0) -> LocalDeformation:
    """D2min, best-fit J and local strains of every particle from frame 0 to 1.

    Args:
        pos0, pos1: (N, 2) Cartesian positions of the same particles in the
            two frames (unwrapped; lengths in small diameters).
        radii: (N,) radii (checked for shape only; the neighbour criterion
            is the fixed distance r_d, SPEC.md section 2).
        Lx0, Ly0, tilt0: box of frame 0; Lx1, Ly1, tilt1: box of frame 1.
            Tilts may take any value but must be consistent between the
            frames (see the module docstring; pass ``State.gamma``).
        r_d: neighbour radius in frame 0 (default 2).
    Returns:
        LocalDeformation with (N,) arrays d2min, k, e1, e2, eps_dev,
        n_neighbours and J (N, 2, 2). NaN where fewer than 2 neighbours or
        collinear neighbour vectors make the fit singular.
    """
    pos0 = np.ascontiguousarray(pos0, dtype=np.float64)
    pos1 = np.ascontiguousarray(pos1, dtype=np.float64)
    radii = np.asarray(radii, dtype=np.float64)
    n = pos0.shape[0]
    if pos0.shape != (n, 2) or pos1.shape != (n, 2) or radii.shape != (n,):
        raise ValueError(f"pos0, pos1 must be (N, 2) and radii (N,); got "
                         f"{pos0.shape}, {pos1.shape}, {radii.shape}")
    if not (np.all(np.isfinite(pos0)) and np.all(np.isfinite(pos1))):
        raise ValueError("positions must be finite")
    if not (Lx1 > 0 and Ly1 > 0):
        raise ValueError("Lx1 and Ly1 must be positive")
    _check_box(float(Lx0), float(Ly0), float(tilt0), float(r_d))
    d2min = np.empty(n)
    J = np.empty((n, 2, 2))
    kvol = np.empty(n)
    e1 = np.empty(n)
    e2 = np.empty(n)
    eps_dev = np.empty(n)
    nn = np.empty(n, np.int64)
    _fused_deformation(pos0, pos1, float(Lx0), float(Ly0), float(tilt0), float(Lx1),
                       float(Ly1), float(tilt1), float(r_d), d2min, J, kvol, e1, e2,
                       eps_dev, nn, *_workspace(n), np.empty((n, 2)), np.empty((n, 2)))
    return LocalDeformation(d2min=d2min, J=J, k=kvol, e1=e1, e2=e2, eps_dev=eps_dev,
                            n_neighbours=nn)


def rearrangers(d2min, radii, d_small=D_SMALL, d_large=D_LARGE) -> np.ndarray:
    """(N,) bool: D2min above the species threshold (SPEC.md section 2).

    Small particles (radius 0.5) use d_small, large ones (0.7) d_large
    (length^2). NaN D2min is never a rearranger.
    """
    d2min = np.asarray(d2min, dtype=np.float64)
    radii = np.asarray(radii, dtype=np.float64)
    if d2min.shape != radii.shape:
        raise ValueError(f"d2min {d2min.shape} and radii {radii.shape} must match")
    thr = np.where(radii < _RADIUS_SPLIT, d_small, d_large)
    with np.errstate(invalid="ignore"):
        return d2min > thr


# --------------------------------------------------------------------------
# isolated-rearrangement frames (SPEC.md section 2)
# --------------------------------------------------------------------------

def minimum_image_distance(pos, x0, Lx, Ly, tilt):
    """(N,) minimum-image distances |x_i - x0| in the box spanned by
    a1 = (Lx, 0), a2 = (tilt Ly, Ly) (any tilt; unwrapped positions).

    The tilt is reduced to [-1/2, 1/2] and the nearest lattice offset in
    fractional coordinates refined over its 3 x 3 neighbouring images, which
    is the exact minimum image for a reduced box.
    """
    pos = np.asarray(pos, dtype=np.float64)
    d = pos - np.asarray(x0, dtype=np.float64)
    tr = tilt - np.floor(tilt + 0.5)
    s2 = d[:, 1] / Ly
    s2 -= np.round(s2)
    ry = s2 * Ly
    # x with the reduced a2 = (tr Ly, Ly); unchanged by the shift in s2
    s1 = (d[:, 0] - tr * d[:, 1]) / Lx
    s1 -= np.round(s1)
    best = np.full(len(pos), np.inf)
    for m2 in (-1, 0, 1):
        yy = ry + m2 * Ly
        for m1 in (-1, 0, 1):
            xx = (s1 + m1) * Lx + tr * yy
            np.minimum(best, xx * xx + yy * yy, out=best)
    return np.sqrt(best)


def isolated_rearranger(pos0, d2min, radii, Lx, Ly, tilt, r_far=5.0, quiet_factor=0.01,
                        d_small=D_SMALL, d_large=D_LARGE) -> int:
    """The rearranger of an isolated-rearrangement frame pair, or -1.

    SPEC.md section 2: a frame pair is isolated when it has exactly one
    rearranger (``rearrangers``: D2min above its species threshold, d_small
    for radius 0.5, d_large for 0.7) and no particle farther than r_far
    (default 5, in small diameters) from it has D2min > quiet_factor *
    d_soft (default 0.01 d_soft).

    Reading of the rule: d_soft is the threshold of the REARRANGER's
    species (one quiet level, quiet_factor * d_soft(rearranger), for every
    far particle, whatever its own species). Distances are minimum-image
    distances in the box of the first frame (pos0, Lx, Ly, tilt) from the
    rearranger's frame-0 position; "farther than r_far" is strict
    (distance > r_far). Particles within r_far may have any D2min below
    their own threshold. NaN D2min (no fit) counts as quiet and is never a
    rearranger.

    Args:
        pos0: (N, 2) positions in the first frame; d2min: (N,) D2min of the
            frame pair (length^2, with the 1/M_k); radii: (N,).
        Lx, Ly, tilt: box of the first frame.
    Returns:
        The index of the single rearranger, or -1 when the pair is not
        isolated (no rearranger, several, or a far particle above the
        quiet level).
    """
    d2min = np.asarray(d2min, dtype=np.float64)
    radii = np.asarray(radii, dtype=np.float64)
    pos0 = np.asarray(pos0, dtype=np.float64)
    if pos0.shape != (len(d2min), 2):
        raise ValueError(f"pos0 {pos0.shape} must be (N, 2) with N = {len(d2min)}")
    flags = rearrangers(d2min, radii, d_small, d_large)
    idx = np.flatnonzero(flags)
    if len(idx) != 1:
        return -1
    r = int(idx[0])
    d_soft = d_small if radii[r] < _RADIUS_SPLIT else d_large
    far = minimum_image_distance(pos0, pos0[r], Lx, Ly, tilt) > r_far
    with np.errstate(invalid="ignore"):
        loud = d2min > quiet_factor * d_soft           # NaN -> False (quiet)
    return -1 if np.any(loud & far) else r


# --------------------------------------------------------------------------
# D2min spatial correlation and its length (SPEC.md section 4, item 6)
# --------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def _pair_correlation(Lx, Ly, tilt, r_max, dr, nbins, order, slot_cell, ws, cell_start,
                      xs, valid):
    """Per-bin sums of xs_q xs_q2 and pair counts over ordered pairs of
    valid slots at minimum-image distance < r_max (bin floor(r / dr)).
    Each block of slots has its own histogram row; rows are summed in
    block order, so the result does not depend on the thread count."""
    n = order.shape[0]
    shift, tr, nx, ny, use_cells = _grid(Lx, Ly, tilt, r_max)
    rmax2 = r_max * r_max
    nblock = (n + _BLOCK - 1) // _BLOCK
    hs = np.zeros((nblock, nbins))
    hc = np.zeros((nblock, nbins), np.int64)
    for blk in prange(nblock):
        for q in range(blk * _BLOCK, min(n, (blk + 1) * _BLOCK)):
            if not valid[q]:
                continue
            wk0 = ws[q, 0]
            wk1 = ws[q, 1]
            xq = xs[q]
            span = 3 if use_cells else 1
            cx = slot_cell[q] % nx
            cy = slot_cell[q] // nx
            for ddy in range(span):
                for ddx in range(span):
                    c = 0
                    if use_cells:
                        c = ((cx + ddx - 1) % nx) + nx * ((cy + ddy - 1) % ny)
                    for q2 in range(cell_start[c], cell_start[c + 1]):
                        if q2 == q or not valid[q2]:
                            continue
                        d1 = ws[q2, 0] - wk0
                        d2 = ws[q2, 1] - wk1
                        ry = (d2 - math.floor(d2 + 0.5)) * Ly
                        rx = (d1 - math.floor(d1 + 0.5)) * Lx + tr * ry
                        r2 = rx * rx + ry * ry
                        if r2 < rmax2:
                            b = int(math.sqrt(r2) / dr)
                            if b < nbins:
                                hs[blk, b] += xq * xs[q2]
                                hc[blk, b] += 1
    s = np.zeros(nbins)
    cnt = np.zeros(nbins, np.int64)
    for blk in range(nblock):
        for b in range(nbins):
            s[b] += hs[blk, b]
            cnt[b] += hc[blk, b]
    return s, cnt


def d2min_correlation(pos, d2min, Lx, Ly, tilt, r_max, dr, return_counts=False):
    """Spatial correlation of D2min: C(r) = <dD(0) dD(r)> / <dD^2>.

    dD = D2min - <D2min> (mean over particles with finite D2min; NaN ones
    are left out of every average). The pair average in a bin
    [j dr, (j + 1) dr) runs over all pairs i != k at minimum-image distance
    r_ik in that bin (box of the frame, O(N) by the cell list with cells
    >= r_max); <dD^2> is the single-particle variance, so C(0+) = 1 only
    for a field that is smooth on the particle scale.

    Args:
        pos: (N, 2) positions (frame in which distances are measured, e.g.
            the first frame of the pair); d2min: (N,).
        Lx, Ly, tilt: box (any tilt); both perpendicular widths must exceed
            2 r_max.
        r_max, dr: largest distance and bin width (lengths).
        return_counts: also return the (unordered) pair count per bin.
    Returns:
        (r_centres (B,), C (B,)) [, n_pairs (B,)] with B = ceil(r_max / dr)
        (bins past r_max are cut); C is NaN in a bin without pairs or when
        the variance is zero.
    """
    pos = np.ascontiguousarray(pos, dtype=np.float64)
    d2min = np.asarray(d2min, dtype=np.float64)
    n = len(d2min)
    if pos.shape != (n, 2):
        raise ValueError(f"pos {pos.shape} must be (N, 2) with N = {n}")
    if not (r_max > 0 and dr > 0):
        raise ValueError("r_max and dr must be positive")
    _check_box(float(Lx), float(Ly), float(tilt), float(r_max))
    nbins = int(np.ceil(r_max / dr - 1e-12))
    ok = np.isfinite(d2min)
    x = np.zeros(n)
    var = np.nan
    if ok.any():
        x[ok] = d2min[ok] - d2min[ok].mean()
        var = float(np.mean(x[ok] ** 2))
    w, f, cell_of, order, slot_cell, ws, fs = _workspace(n)
    cell_start, _ = _cell_sort(pos, float(Lx), float(Ly), float(tilt), float(r_max), w, f,
                               cell_of, order, slot_cell, ws, fs)
    s, cnt = _pair_correlation(float(Lx), float(Ly), float(tilt), float(r_max), float(dr),
                               nbins, order, slot_cell, ws, cell_start, x[order], ok[order])
    with np.errstate(invalid="ignore", divide="ignore"):
        C = np.where(cnt > 0, s / np.maximum(cnt, 1), np.nan) / var if var > 0 else \
            np.full(nbins, np.nan)
    r = (np.arange(nbins) + 0.5) * dr
    return (r, C, cnt // 2) if return_counts else (r, C)


@dataclass
class CorrelationLength:
    """Result of ``correlation_length``.

    xi: the length (NaN when not fitted); xi_err: its standard error from
    the least-squares fit (NaN with fewer than 3 bins); amplitude: A;
    r_lo, r_hi: the fitted range (bin centres); n: bins used; model:
    "exp" or "gauss"; ok: False with ``flag`` saying why when not fitted.
    """

    xi: float
    xi_err: float
    amplitude: float
    r_lo: float
    r_hi: float
    n: int
    model: str
    ok: bool
    flag: str


def correlation_length(r, C, floor=0.05, r_min=0.0, model="exp", min_bins=3):
    """Correlation length of a decaying correlation C(r) by a fit.

    Fit range: the bins with r >= r_min from the first one up to (not
    including) the first bin with C <= floor or non-finite C, i.e. the
    contiguous decaying part above the noise floor (default 0.05).
    model "exp" (default): C = A exp(-r / xi), a straight-line least-squares
    fit of log C against r; model "gauss": C = A exp(-r^2 / (2 xi^2)), a
    fit of log C against r^2. Unweighted in log C (bins near the floor
    count as much as the first ones: keep the floor above the noise).

    Returns a CorrelationLength; with fewer than ``min_bins`` bins in range
    or a non-decaying fit, xi is NaN, ok False and ``flag`` says why (never
    raises on data).
    """
    r = np.asarray(r, dtype=np.float64)
    C = np.asarray(C, dtype=np.float64)
    if model not in ("exp", "gauss"):
        raise ValueError(f"model must be 'exp' or 'gauss', got {model!r}")
    nan = float("nan")

    def fail(flag, n=0, lo=nan, hi=nan):
        return CorrelationLength(nan, nan, nan, lo, hi, n, model, False, flag)

    sel = np.flatnonzero(r >= r_min)
    if len(sel) == 0:
        return fail("no bins at r >= r_min")
    end = len(sel)
    for j, i in enumerate(sel):
        if not (np.isfinite(C[i]) and C[i] > floor):
            end = j
            break
    use = sel[:end]
    if len(use) < min_bins:
        return fail(f"only {len(use)} bins above the floor {floor:g} (need {min_bins})",
                    len(use))
    u = r[use] if model == "exp" else r[use] ** 2
    y = np.log(C[use])
    X = np.column_stack([np.ones_like(u), u])
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    slope = coef[1]
    lo, hi = float(r[use[0]]), float(r[use[-1]])
    if not slope < 0:
        return fail("C does not decay over the fit range", len(use), lo, hi)
    if len(use) > 2:
        resid = y - X @ coef
        s2 = resid @ resid / (len(use) - 2)
        cov = s2 * np.linalg.inv(X.T @ X)
        slope_err = float(np.sqrt(cov[1, 1]))
    else:
        slope_err = nan
    if model == "exp":
        xi = -1.0 / slope
        xi_err = slope_err / slope ** 2
    else:
        xi = float(np.sqrt(-0.5 / slope))
        xi_err = 0.5 * xi * slope_err / abs(slope)
    return CorrelationLength(float(xi), float(xi_err), float(np.exp(coef[0])), lo, hi,
                             len(use), model, True, "")
