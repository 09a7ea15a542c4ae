"""Radial structure functions, the input features of softness (SPEC.md section 3).

Conventions (SPEC.md section 0):

- Lengths in units of the small particle's diameter (radii 0.5 and 0.7).
  Structure functions are dimensionless (weighted neighbour counts).
- The box is the parallelogram spanned by a1 = (Lx, 0) and
  a2 = (tilt * Ly, Ly); ``tilt`` may take any value (e.g. the accumulated
  strain ``State.gamma``). Positions (N, 2) are Cartesian and may be
  unwrapped. Distances r_ij are minimum-image distances; the box's
  perpendicular widths must exceed 2 r_c, so each pair has at most one
  image within the cutoff r_c (otherwise a ValueError is raised).
- Species: 0 small, 1 large (``State.species``).

Definition. For radial positions r_0 < r_1 < ... < r_{M-1} (M >= 2),
g_m is the triangular hat equal to 1 at r_m and falling linearly to 0 at
r_{m-1} and r_{m+1}; the end points use the mirrored adjacent spacing,
r_{-1} = r_0 - (r_1 - r_0) (which must be >= 0) and
r_M = r_{M-1} + (r_{M-1} - r_{M-2}). The cutoff is r_c = r_M.

    G_m(i) = sum_{j != i, species s} g_m(r_ij)

Design choice: the sum is split by the NEIGHBOUR's species, so each
particle has 2M features ordered [small neighbours m = 0..M-1, large
neighbours m = 0..M-1], i.e. column s * M + m.

The neighbour search is ``rearrangements.neighbour_images`` (an O(N) cell
list) at the cutoff; the sums are a numba kernel parallel over particles,
each particle adding its neighbours in increasing index order, so results
are bit-for-bit independent of the thread count. Several r-lists share one
neighbour search at the largest cutoff (:func:`structure_function_sets`);
pairs beyond a list's own cutoff add nothing, so the result equals that of
a separate search bit for bit.
"""

import math
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from .rearrangements import neighbour_images

#: Number of neighbour species (0 small, 1 large): features per r_m.
N_SPECIES = 2


@dataclass(frozen=True)
class RadialHats:
    """The triangular hats g_m of one sorted list of radial positions.

    Attributes:
        r_m: (M,) strictly increasing radial positions (length), M >= 2,
            with r_0 - (r_1 - r_0) >= 0.
    """

    r_m: tuple[float, ...]

    def __post_init__(self):
        r = np.asarray(self.r_m, dtype=np.float64)
        if r.ndim != 1 or r.size < 2:
            raise ValueError(f"r_m must be a 1-D list of at least 2 radii, got shape {r.shape}")
        if not np.all(np.isfinite(r)):
            raise ValueError("r_m must be finite")
        if not np.all(np.diff(r) > 0):
            raise ValueError(f"r_m must be strictly increasing, got {r.tolist()}")
        if 2.0 * r[0] - r[1] < 0:
            raise ValueError(f"r_m: the first hat's lower end r_0 - (r_1 - r_0) = "
                             f"{2.0 * r[0] - r[1]:g} must be >= 0")
        object.__setattr__(self, "r_m", tuple(float(x) for x in r))

    @property
    def n_radii(self) -> int:
        """M, the number of hats."""
        return len(self.r_m)

    @property
    def n_features(self) -> int:
        """2M: features per particle (hats x neighbour species)."""
        return N_SPECIES * self.n_radii

    @property
    def edges(self) -> np.ndarray:
        """(M + 2,) [r_{-1}, r_0, ..., r_{M-1}, r_M]: hat m rises on
        [edges[m], edges[m+1]] and falls on [edges[m+1], edges[m+2]]."""
        r = np.asarray(self.r_m)
        return np.concatenate(([2.0 * r[0] - r[1]], r, [2.0 * r[-1] - r[-2]]))

    @property
    def cutoff(self) -> float:
        """r_c = r_M: g_m(r) = 0 for every m beyond it."""
        return float(self.edges[-1])


# --------------------------------------------------------------------------
# numba kernel
# --------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def _structure_kernel(pos, species, Lx, Ly, tilt, edges, offsets, nbr, im1, im2, out):
    """G (N, 2M) written into out from the CSR neighbour images.

    r_ik = x_i - x_k + im1 a1 + im2 a2 with a2 = (tilt Ly, Ly); pairs with
    r outside (edges[0], edges[M+1]) add nothing.
    """
    n = pos.shape[0]
    nh = edges.shape[0] - 2
    a2x = tilt * Ly
    lo = edges[0]
    hi = edges[nh + 1]
    for k in prange(n):
        for q in range(N_SPECIES * nh):
            out[k, q] = 0.0
        for p in range(offsets[k], offsets[k + 1]):
            i = nbr[p]
            rx = pos[i, 0] - pos[k, 0] + im1[p] * Lx + im2[p] * a2x
            ry = pos[i, 1] - pos[k, 1] + im2[p] * Ly
            r = math.sqrt(rx * rx + ry * ry)
            if r <= lo or r >= hi:
                continue
            # edges[j] <= r < edges[j + 1], 0 <= j <= M
            j = np.searchsorted(edges, r, side="right") - 1
            base = species[i] * nh
            width = edges[j + 1] - edges[j]
            if j >= 1:
                # falling side of hat j - 1 (centre edges[j])
                out[k, base + j - 1] += (edges[j + 1] - r) / width
            if j < nh:
                # rising side of hat j (centre edges[j + 1])
                out[k, base + j] += (r - edges[j]) / width


# --------------------------------------------------------------------------
# numpy API
# --------------------------------------------------------------------------

def _check_particles(pos, species):
    pos = np.ascontiguousarray(pos, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"pos must have shape (N, 2), got {pos.shape}")
    if not np.all(np.isfinite(pos)):
        raise ValueError("pos must be finite")
    sp = np.asarray(species)
    if sp.shape != (pos.shape[0],):
        raise ValueError(f"species must have shape (N,) = ({pos.shape[0]},), got {sp.shape}")
    if not np.all((sp == 0) | (sp == 1)):
        raise ValueError("species must hold 0 (small) or 1 (large) only")
    return pos, np.ascontiguousarray(sp, dtype=np.int64)


def structure_function_sets(pos, species, Lx, Ly, tilt, r_lists) -> list[np.ndarray]:
    """Structure functions for several r-lists from one neighbour search.

    Args:
        pos: (N, 2) Cartesian positions (length; unwrapped allowed).
        species: (N,) ints, 0 small and 1 large.
        Lx, Ly, tilt: the box spanned by (Lx, 0) and (tilt Ly, Ly); any tilt.
        r_lists: sequence of radial-position lists (each a sequence of
            floats or a :class:`RadialHats`), see the module docstring.
    Returns:
        One (N, 2 M_l) float64 array per list, columns
        [small neighbours m = 0..M_l-1, large neighbours m = 0..M_l-1].
    Raises:
        ValueError: bad inputs, or a box narrower than 2 r_c (r_c the
            largest cutoff) in either perpendicular direction.
    """
    pos, sp = _check_particles(pos, species)
    hats = [h if isinstance(h, RadialHats) else RadialHats(h) for h in r_lists]
    if not hats:
        raise ValueError("r_lists must hold at least one list")
    Lx, Ly, tilt = float(Lx), float(Ly), float(tilt)
    if not (Lx > 0 and Ly > 0 and math.isfinite(tilt)):
        raise ValueError(f"Lx and Ly must be positive and tilt finite, got {Lx}, {Ly}, {tilt}")
    r_c = max(h.cutoff for h in hats)
    try:
        offsets, nbr, im1, im2 = neighbour_images(pos, Lx, Ly, tilt, r_c)
    except ValueError as err:
        raise ValueError(f"structure-function cutoff r_c = {r_c:g} does not fit the box: {err}") from err
    out = []
    for h in hats:
        g = np.empty((pos.shape[0], h.n_features))
        _structure_kernel(pos, sp, Lx, Ly, tilt, h.edges, offsets, nbr, im1, im2, g)
        out.append(g)
    return out


def structure_functions(pos, species, Lx, Ly, tilt, r_m) -> np.ndarray:
    """Structure functions G (N, 2M) of one list of radial positions.

    Args:
        pos: (N, 2) Cartesian positions (length; unwrapped allowed).
        species: (N,) ints, 0 small and 1 large.
        Lx, Ly, tilt: the box spanned by (Lx, 0) and (tilt Ly, Ly); any tilt.
        r_m: (M,) strictly increasing radial positions (length) or a
            :class:`RadialHats`.
    Returns:
        (N, 2M) float64, columns [small neighbours m = 0..M-1, large
        neighbours m = 0..M-1]: G[i, s M + m] = sum over neighbours j of
        species s of g_m(r_ij).
    Raises:
        ValueError: bad inputs, or a box narrower than 2 r_c.
    """
    return structure_function_sets(pos, species, Lx, Ly, tilt, [r_m])[0]
