"""Hertzian energy, forces, stress and Hessian of a :class:`State`.

u(r) = (1 - r/s)^2.5 for r < s = sigma_i + sigma_j (sum of radii), else 0.
Stress convention: sigma_ab = (1/V) dU/d(eps_ab) = (1/V) sum_pairs
u'(r) r_a r_b / r, so a positive shear strain gives a positive shear
stress; pressure p = -(sigma_xx + sigma_yy)/2 (> 0 for a jammed packing).
"""

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from . import kernels
from .state import SKIN, State


class NeighbourList:
    """A Verlet list (cutoff sigma_i + sigma_j + SKIN) that rebuilds itself.

    The list is valid for a state whose box is an affine image A of the box
    it was built for and whose particles moved by d_i = x_i - A x_i(ref)
    while sigma_min(A) (s + SKIN) - 2 max|d_i| >= s for the largest pair
    contact distance s: then no pair closer than contact can be missing.
    A box remap (tilt through +-1/2) always rebuilds. A list belongs to one
    system: its cutoffs and the contact distances in ``pairs`` are those of
    the radii it was built with.
    """

    def __init__(self):
        self.rebuilds = 0
        self.arrays = None
        self.pairs = None  # kernels.half_pairs of arrays
        self.work = None  # (N, 2) scratch of kernels.hertz_forces
        self._ref_pos = None
        self._ref_box = None
        self._ref_h_inv = None
        self._ref_gamma = None
        self._contact_max = 0.0  # the largest pair contact distance at the build
        self._box_key = None  # the last box checked, and its map A and sigma_min(A)
        self._box_map = None

    def update(self, state: State) -> tuple:
        """Return (offsets, nbr, imx, imy) valid for ``state``, rebuilding if
        needed; ``self.pairs`` is then its flat list of pairs i < j, and
        ``self.work`` the force kernel's scratch array."""
        if self.arrays is None or self._needs_rebuild(state):
            self.arrays = kernels.build_neighbour_list(
                state.pos, state.radii, state.Lx, state.Ly, state.tilt, SKIN)
            self.pairs = kernels.half_pairs(*self.arrays, state.radii)
            if self.work is None or self.work.shape != state.pos.shape:
                self.work = np.empty_like(state.pos)
            self._ref_pos = state.pos.copy()
            self._ref_box = (state.Lx, state.Ly, state.tilt)
            self._ref_h_inv = np.linalg.inv(state.box_matrix)
            self._ref_gamma = state.gamma
            self._contact_max = 2.0 * float(state.radii.max())
            self._box_key = None
            self.rebuilds += 1
        return self.arrays

    def _needs_rebuild(self, state: State) -> bool:
        if self._ref_pos.shape != state.pos.shape:
            return True
        if np.floor(state.gamma + 0.5) != np.floor(self._ref_gamma + 0.5):
            return True  # box remapped: images change
        box = (state.Lx, state.Ly, state.tilt)
        if box == self._ref_box:  # the same box: A = 1
            dmax = kernels.max_displacement(state.pos, self._ref_pos)
            smin = 1.0
        else:
            if box != self._box_key:
                a = state.box_matrix @ self._ref_h_inv
                # smallest singular value of the 2 x 2 map a, |det a| / the largest
                # one (closed form, accurate to about 1e-12 near a = 1: made
                # smaller by 1e-9 so that the test stays on the safe side)
                f2 = float(np.sum(a * a))
                det = abs(float(a[0, 0] * a[1, 1] - a[0, 1] * a[1, 0]))
                smax = math.sqrt(0.5 * (f2 + math.sqrt(max(f2 * f2 - 4.0 * det * det, 0.0))))
                self._box_key, self._box_map = box, (a, det / smax * (1.0 - 1e-9))
            a, smin = self._box_map
            dmax = kernels.max_displacement_mapped(state.pos, self._ref_pos, a)
        s = self._contact_max
        return smin * (s + SKIN) - 2.0 * dmax < s


@dataclass
class Evaluation:
    """Energy, forces and stress of one configuration.

    Attributes:
        energy: total energy U.
        forces: (N, 2) F_i = -dU/dx_i.
        energy_per_particle: (N,) half of each pair energy.
        virial_per_particle: (N, 2, 2) (1/2) sum_j u'(r) r_a r_b / r
            (energy units; sums to V * stress).
        stress: (2, 2) sigma (see module docstring).
        pressure: -(sigma_xx + sigma_yy) / 2.
    """

    energy: float
    forces: np.ndarray
    energy_per_particle: np.ndarray
    virial_per_particle: np.ndarray
    stress: np.ndarray
    pressure: float


def evaluate(state: State, nlist: NeighbourList | None = None) -> Evaluation:
    """Energy, forces and stress tensor of ``state`` (see :class:`Evaluation`)."""
    nlist = nlist or NeighbourList()
    offsets, nbr, imx, imy = nlist.update(state)
    forces = np.empty((state.n, 2))
    epart = np.empty(state.n)
    virial = np.empty((state.n, 2, 2))
    energy = kernels.hertz_forces(state.pos, state.Lx, state.Ly, state.tilt, *nlist.pairs, forces,
                                  nlist.work)
    stress = kernels.hertz_virial(state.pos, state.radii, state.Lx, state.Ly, state.tilt,
                                  offsets, nbr, imx, imy, virial, epart) / state.volume
    return Evaluation(energy, forces, epart, virial, stress, -0.5 * float(np.trace(stress)))


def forces(state: State, nlist: NeighbourList | None = None) -> tuple[float, np.ndarray]:
    """(energy, forces (N, 2)) without the stress: the minimisers' hot call."""
    nlist = nlist or NeighbourList()
    nlist.update(state)
    out = np.empty((state.n, 2))
    energy = kernels.hertz_forces(state.pos, state.Lx, state.Ly, state.tilt, *nlist.pairs, out,
                                  nlist.work)
    return energy, out


def hessian(state: State, nlist: NeighbourList | None = None,
            hsec: float = 0.0) -> tuple[sp.csc_matrix, np.ndarray]:
    """Sparse Hessian d2U/dx_a dx_b, (2N, 2N) CSC with coordinate order
    (x0, y0, x1, y1, ...), and the (N,) number of contacts per particle.
    hsec > 0: secant stiffness on contacts with overlap below hsec (the
    Newton solver's matrix, kernels.hertz_hessian_triplets); 0: exact."""
    nlist = nlist or NeighbourList()
    offsets, nbr, imx, imy = nlist.update(state)
    rows, cols, vals, contacts = kernels.hertz_hessian_triplets(
        state.pos, state.radii, state.Lx, state.Ly, state.tilt, offsets, nbr, imx, imy,
        float(hsec))
    n2 = 2 * state.n
    return sp.csc_matrix((vals, (rows, cols)), shape=(n2, n2)), contacts


def affine_force(state: State, nlist: NeighbourList | None = None) -> np.ndarray:
    """(N, 2) Xi = -d2U/(dx dgamma): the force per unit affine simple shear."""
    nlist = nlist or NeighbourList()
    offsets, nbr, imx, imy = nlist.update(state)
    out = np.empty((state.n, 2))
    kernels.hertz_affine_force(state.pos, state.radii, state.Lx, state.Ly, state.tilt,
                               offsets, nbr, imx, imy, out)
    return out
