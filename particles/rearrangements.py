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
reduced box (3 x 3 stencil); when the box holds fewer than 3 cells per
side it falls back to an O(N^2) search. Both need the box's perpendicular
widths to exceed 2 r_d (each pair then has at most one image within r_d);
otherwise a ValueError is raised. Work is parallel over particles; each
particle sums its neighbours in increasing index order, so results are
bit-for-bit independent of the thread count and of the cell layout.

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

@njit(cache=True)
def _fractional(pos, Lx, Ly, tr):
    """Wrapped fractional coordinates w in [0, 1) (N, 2) of the box with
    reduced tilt tr, and the integer floors f (N, 2) so that s = w + f."""
    n = pos.shape[0]
    w = np.empty((n, 2))
    f = np.empty((n, 2), np.int64)
    for i in range(n):
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
    return w, f


@njit(cache=True)
def _scan(k, w, f, Lx, Ly, tr, shift, r_d, nx, ny, use_cells, cell_of,
          cell_start, cell_members, nbr, im1, im2, k0):
    """Neighbours i of k within r_d (frame-0 minimum image).

    Writes i and the image integers in the ORIGINAL basis (a1, a2 with the
    caller's tilt = tr + shift) from index k0 of nbr/im1/im2 unless those
    are empty (a counting pass). Returns the number found.
    """
    write = nbr.shape[0] > 0
    span = 3 if use_cells else 1
    cx = cell_of[k] % nx
    cy = cell_of[k] // nx
    rd2 = r_d * r_d
    c = 0
    m = k0
    for ddy in range(span):
        for ddx in range(span):
            if use_cells:
                c = ((cx + ddx - 1) % nx) + nx * ((cy + ddy - 1) % ny)
            for q in range(cell_start[c], cell_start[c + 1]):
                i = cell_members[q]
                if i == k:
                    continue
                d1 = w[i, 0] - w[k, 0]
                d2 = w[i, 1] - w[k, 1]
                m1 = -math.floor(d1 + 0.5)
                m2 = -math.floor(d2 + 0.5)
                ry = (d2 + m2) * Ly
                rx = (d1 + m1) * Lx + tr * ry
                if rx * rx + ry * ry < rd2:
                    if write:
                        # image in the reduced basis for unwrapped positions
                        M1 = int(m1) - f[i, 0] + f[k, 0]
                        M2 = int(m2) - f[i, 1] + f[k, 1]
                        # a2_reduced = a2 - shift * a1
                        nbr[m] = i
                        im1[m] = M1 - shift * M2
                        im2[m] = M2
                    m += 1
    return m - k0


@njit(cache=True, parallel=True)
def _neighbours(pos, Lx, Ly, tilt, r_d):
    """Neighbour lists within r_d in the frame (pos, Lx, Ly, tilt).

    Returns (offsets (N+1,) int64, nbr (M,) int64, im1 (M,) int64,
    im2 (M,) int64): the neighbours of k are nbr[offsets[k]:offsets[k+1]]
    in increasing index order and r_ik = x_i - x_k + im1 a1 + im2 a2.
    The caller guarantees both perpendicular widths exceed 2 r_d.
    """
    n = pos.shape[0]
    shift = int(math.floor(tilt + 0.5))
    tr = tilt - shift
    w, f = _fractional(pos, Lx, Ly, tr)
    nx = int(Lx / (r_d * math.sqrt(1.0 + tr * tr)))
    ny = int(Ly / r_d)
    use_cells = nx >= 3 and ny >= 3
    if not use_cells:
        nx = 1
        ny = 1
    ncell = nx * ny
    cell_of = np.empty(n, np.int64)
    for i in range(n):
        cxi = min(int(w[i, 0] * nx), nx - 1)
        cyi = min(int(w[i, 1] * ny), ny - 1)
        cell_of[i] = cxi + nx * cyi
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

    counts = np.zeros(n, np.int64)
    empty = np.empty(0, np.int64)
    for k in prange(n):
        counts[k] = _scan(k, w, f, Lx, Ly, tr, shift, r_d, nx, ny, use_cells,
                          cell_of, cell_start, cell_members, empty, empty, empty, 0)
    offsets = np.zeros(n + 1, np.int64)
    for k in range(n):
        offsets[k + 1] = offsets[k] + counts[k]
    mtot = offsets[n]
    nbr = np.empty(mtot, np.int64)
    im1 = np.empty(mtot, np.int64)
    im2 = np.empty(mtot, np.int64)
    for k in prange(n):
        a = offsets[k]
        b = offsets[k + 1]
        _scan(k, w, f, Lx, Ly, tr, shift, r_d, nx, ny, use_cells,
              cell_of, cell_start, cell_members, nbr, im1, im2, a)
        # insertion sort by neighbour index: a canonical summation order
        for p in range(a + 1, b):
            vi = nbr[p]
            v1 = im1[p]
            v2 = im2[p]
            q = p - 1
            while q >= a and nbr[q] > vi:
                nbr[q + 1] = nbr[q]
                im1[q + 1] = im1[q]
                im2[q + 1] = im2[q]
                q -= 1
            nbr[q + 1] = vi
            im1[q + 1] = v1
            im2[q + 1] = v2
    return offsets, nbr, im1, im2


@njit(cache=True, parallel=True)
def _deformation(pos0, pos1, Lx0, Ly0, tilt0, Lx1, Ly1, tilt1, offsets, nbr, im1, im2,
                 d2min, J):
    """Per-particle best-fit J (N, 2, 2) and D2min (N,), written in place.

    NaN for particles with < 2 neighbours or a singular sum r r^T.
    """
    n = pos0.shape[0]
    a2x0 = tilt0 * Ly0
    a2x1 = tilt1 * Ly1
    for k in prange(n):
        a = offsets[k]
        b = offsets[k + 1]
        mk = b - a
        # A = sum r r^T, B = sum r' r^T
        A00 = 0.0
        A01 = 0.0
        A11 = 0.0
        B00 = 0.0
        B01 = 0.0
        B10 = 0.0
        B11 = 0.0
        for p in range(a, b):
            i = nbr[p]
            rx = pos0[i, 0] - pos0[k, 0] + im1[p] * Lx0 + im2[p] * a2x0
            ry = pos0[i, 1] - pos0[k, 1] + im2[p] * Ly0
            sx = pos1[i, 0] - pos1[k, 0] + im1[p] * Lx1 + im2[p] * a2x1
            sy = pos1[i, 1] - pos1[k, 1] + im2[p] * Ly1
            A00 += rx * rx
            A01 += rx * ry
            A11 += ry * ry
            B00 += sx * rx
            B01 += sx * ry
            B10 += sy * rx
            B11 += sy * ry
        det = A00 * A11 - A01 * A01
        tr = A00 + A11
        if mk < 2 or not (det > 1e-12 * tr * tr):
            d2min[k] = np.nan
            J[k, 0, 0] = np.nan
            J[k, 0, 1] = np.nan
            J[k, 1, 0] = np.nan
            J[k, 1, 1] = np.nan
            continue
        # A^-1 = [[A11, -A01], [-A01, A00]] / det
        j00 = (B00 * A11 - B01 * A01) / det
        j01 = (B01 * A00 - B00 * A01) / det
        j10 = (B10 * A11 - B11 * A01) / det
        j11 = (B11 * A00 - B10 * A01) / det
        acc = 0.0
        for p in range(a, b):
            i = nbr[p]
            rx = pos0[i, 0] - pos0[k, 0] + im1[p] * Lx0 + im2[p] * a2x0
            ry = pos0[i, 1] - pos0[k, 1] + im2[p] * Ly0
            sx = pos1[i, 0] - pos1[k, 0] + im1[p] * Lx1 + im2[p] * a2x1
            sy = pos1[i, 1] - pos1[k, 1] + im2[p] * Ly1
            ex = sx - (j00 * rx + j01 * ry)
            ey = sy - (j10 * rx + j11 * ry)
            acc += ex * ex + ey * ey
        d2min[k] = acc / mk
        J[k, 0, 0] = j00
        J[k, 0, 1] = j01
        J[k, 1, 0] = j10
        J[k, 1, 1] = j11


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
    offsets, nbr, im1, im2 = neighbour_images(pos0, Lx0, Ly0, tilt0, r_d)
    d2min = np.empty(n)
    J = np.empty((n, 2, 2))
    _deformation(pos0, pos1, float(Lx0), float(Ly0), float(tilt0), float(Lx1), float(Ly1),
                 float(tilt1), offsets, nbr, im1, im2, d2min, J)
    exx = J[:, 0, 0] - 1.0
    eyy = J[:, 1, 1] - 1.0
    exy = 0.5 * (J[:, 0, 1] + J[:, 1, 0])
    k = 0.5 * (exx + eyy)
    e1 = 0.5 * (exx - eyy)
    eps_dev = 2.0 * np.sqrt(e1 * e1 + exy * exy)
    return LocalDeformation(d2min=d2min, J=J, k=k, e1=e1, e2=exy, eps_dev=eps_dev,
                            n_neighbours=np.diff(offsets))


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
