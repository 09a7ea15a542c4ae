"""OVITO reference for particles/rearrangements.py (issue 5, part 6).

OVITO's AtomicStrainModifier computes, per particle and relative to a
reference configuration, the least-squares deformation gradient F over the
neighbours within ``cutoff`` in the REFERENCE frame and Falk & Langer's
D2min. Its conventions against ours (SPEC.md section 2):

- D2min: OVITO reports the SUM over neighbours sum_i |r'_ik - F r_ik|^2;
  ours divides by the neighbour count M_k. Compare ovito / M_k.
- F is our J (r' = J r); OVITO stores the 9 components column-major
  (XX, YX, ZX, XY, YY, ZY, ...), so J = F.reshape(3, 3).T[:2, :2]. Its
  strain outputs are Green-Lagrangian; we compare F, not strains.
- Images: with ``affine_mapping = Off`` and ``minimum_image_convention``,
  the neighbour's periodic image is found in the reference cell and its
  integer shift is applied with the CURRENT cell to the current positions,
  i.e. the image is chosen in the first frame and carried (checked by the
  agreement test at nonzero tilt, where the two conventions would differ
  by a whole box vector for boundary pairs).
- Both frames are passed with the same lattice offsets (frame 0 wrapped
  into the cell, frame 1 shifted by the same integers times its own cell
  vectors), so per-particle displacements are small.
- Invalid particles (fewer than 2 neighbours in 2D) have no F; we return
  NaN there, as ours does.

2D: the cell is flagged ``is2D`` with pbc (True, True, False); the third
cell vector is (0, 0, 1).

Threads: OVITO reads OVITO_THREAD_COUNT when it is first imported;
``ovito_available(threads)`` sets it (default 2) before the import.
"""

import os
import time

import numpy as np


def ovito_available(threads=2):
    """(True, '') when ovito imports; else (False, why). Sets
    OVITO_THREAD_COUNT before the first import."""
    os.environ.setdefault("OVITO_THREAD_COUNT", str(threads))
    try:
        import ovito  # noqa: F401
        from ovito.modifiers import AtomicStrainModifier  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the install
        return False, f"ovito not importable: {exc!r}"
    return True, ""


def carried_frames(pos0, pos1, box0, box1):
    """Frame 0 wrapped into its cell and frame 1 shifted by the same lattice
    integers (with its own cell vectors): (pos0w, pos1w)."""
    Lx0, Ly0, t0 = box0
    Lx1, Ly1, t1 = box1
    m2 = -np.floor(pos0[:, 1] / Ly0)
    m1 = -np.floor((pos0[:, 0] - t0 * pos0[:, 1]) / Lx0)   # unchanged by m2 a2
    pos0w = pos0 + np.column_stack([m1 * Lx0 + m2 * t0 * Ly0, m2 * Ly0])
    pos1w = pos1 + np.column_stack([m1 * Lx1 + m2 * t1 * Ly1, m2 * Ly1])
    return pos0w, pos1w


def _collection(pos, Lx, Ly, tilt):
    from ovito.data import DataCollection
    data = DataCollection()
    matrix = np.array([[Lx, tilt * Ly, 0.0, 0.0],
                       [0.0, Ly, 0.0, 0.0],
                       [0.0, 0.0, 1.0, -0.5]])
    cell = data.create_cell(matrix, pbc=(True, True, False))
    cell.is2D = True
    particles = data.create_particles(count=len(pos))
    particles.create_property("Position", data=np.column_stack([pos, np.zeros(len(pos))]))
    return data


class OvitoAtomicStrain:
    """AtomicStrainModifier with a fixed reference frame (pos0, box0).

    ``compute(pos1, box1)`` -> (d2min_sum (N,), J (N, 2, 2), invalid (N,)
    bool); ``time_pair(pos1, box1, repeats)`` -> best seconds per frame
    pair (a shallow clone of the current frame plus the modifier's
    evaluation, which includes its own neighbour search).
    """

    def __init__(self, pos0, box0, cutoff=2.0):
        from ovito.modifiers import AtomicStrainModifier
        from ovito.pipeline import ReferenceConfigurationModifier, StaticSource
        self.n = len(pos0)
        self.reference = _collection(pos0, *box0)
        self.modifier = AtomicStrainModifier(
            cutoff=cutoff,
            affine_mapping=ReferenceConfigurationModifier.AffineMapping.Off,
            minimum_image_convention=True,
            output_nonaffine_squared_displacements=True,
            output_deformation_gradients=True,
            select_invalid_particles=True)
        self.modifier.reference = StaticSource(data=self.reference)

    def _apply(self, current):
        out = current.clone()
        out.apply(self.modifier)
        return out

    def compute(self, pos1, box1):
        out = self._apply(_collection(pos1, *box1))
        d2 = np.array(out.particles["Nonaffine Squared Displacement"], dtype=np.float64)
        F = np.array(out.particles["Deformation Gradient"], dtype=np.float64)
        J = F.reshape(-1, 3, 3).transpose(0, 2, 1)[:, :2, :2].copy()
        invalid = np.array(out.particles["Selection"]) != 0
        d2[invalid] = np.nan
        J[invalid] = np.nan
        return d2, J, invalid

    def time_pair(self, pos1, box1, repeats=5):
        current = _collection(pos1, *box1)
        self._apply(current)
        best = np.inf
        for _ in range(repeats):
            t = time.perf_counter()
            self._apply(current)
            best = min(best, time.perf_counter() - t)
        return best


def ovito_neighbour_pairs(pos0, box0, cutoff=2.0):
    """OVITO's neighbour list of frame 0: (pairs (M, 2) int64 as (k, i),
    vectors (M, 2) float32 r_ik = x_i - x_k + image)."""
    from ovito.data import CutoffNeighborFinder
    data = _collection(pos0, *box0)
    idx, vec = CutoffNeighborFinder(cutoff, data).find_all(sort_by="index")
    return np.asarray(idx, dtype=np.int64), np.asarray(vec)[:, :2]
