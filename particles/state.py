"""The particle state: positions, radii and a sheared periodic box.

Units (SPEC.md section 0): lengths in small-particle diameters (radii 0.5
and 0.7), energies in units of the pair prefactor.

The box is the parallelogram spanned by a1 = (Lx, 0) and a2 = (tilt Ly, Ly).
``gamma`` is the accumulated engineering xy strain (box tilt / box height,
any value); the box's ``tilt`` is gamma remapped into [-1/2, 1/2) by whole
box lengths, which describes the same lattice of images, so the state is
correct for any accumulated strain. Positions are Cartesian and continuous
(an affine step moves them with the box; they are never wrapped behind the
caller's back): use :meth:`State.wrapped_positions` for output.
"""

from dataclasses import dataclass

import numpy as np

SMALL_RADIUS = 0.5
LARGE_RADIUS = 0.7
#: Skin of the Verlet lists. Part of the engine's definition (it fixes which
#: pairs are summed, hence the bits of every result), not a user setting.
SKIN = 0.3


@dataclass
class State:
    """Configuration of N disks in a sheared periodic box.

    Attributes:
        pos: (N, 2) float64 Cartesian positions.
        radii: (N,) float64 radii (0.5 small, 0.7 large).
        Lx, Ly: box side lengths.
        gamma: accumulated engineering shear strain (xy tilt / Ly).
    """

    pos: np.ndarray
    radii: np.ndarray
    Lx: float
    Ly: float
    gamma: float = 0.0

    def __post_init__(self):
        self.pos = np.ascontiguousarray(self.pos, dtype=np.float64)
        self.radii = np.ascontiguousarray(self.radii, dtype=np.float64)
        self.Lx = float(self.Lx)
        self.Ly = float(self.Ly)
        self.gamma = float(self.gamma)
        n = self.radii.shape[0]
        if self.pos.shape != (n, 2):
            raise ValueError(f"pos must have shape (N, 2) = ({n}, 2), got {self.pos.shape}")
        if not (np.all(np.isfinite(self.pos)) and np.all(self.radii > 0)):
            raise ValueError("positions must be finite and radii positive")
        # Every pair must have a single image inside the neighbour cutoff.
        reach = 2.0 * float(self.radii.max()) + SKIN
        if min(self.Lx, self.Ly) / np.sqrt(1.25) <= 2.0 * reach:
            raise ValueError(
                f"box {self.Lx:.3g} x {self.Ly:.3g} is too small for the pair reach "
                f"{reach:.3g}: both sides must exceed {2.0 * reach * np.sqrt(1.25):.3g} "
                "(use more particles)")

    @property
    def n(self) -> int:
        """Number of particles."""
        return self.radii.shape[0]

    @property
    def tilt(self) -> float:
        """Box tilt factor in [-1/2, 1/2): gamma minus the nearest integer."""
        return self.gamma - np.floor(self.gamma + 0.5)

    @property
    def volume(self) -> float:
        """Box area."""
        return self.Lx * self.Ly

    @property
    def box_matrix(self) -> np.ndarray:
        """(2, 2) matrix h whose columns are a1 and a2."""
        return np.array([[self.Lx, self.tilt * self.Ly], [0.0, self.Ly]])

    @property
    def species(self) -> np.ndarray:
        """(N,) int8: 0 for small particles, 1 for large ones."""
        return (self.radii > 0.5 * (SMALL_RADIUS + LARGE_RADIUS)).astype(np.int8)

    @property
    def packing_fraction(self) -> float:
        """sum_i pi sigma_i^2 / V."""
        return float(np.pi * np.sum(self.radii**2) / self.volume)

    def copy(self) -> "State":
        return State(self.pos.copy(), self.radii.copy(), self.Lx, self.Ly, self.gamma)

    def wrapped_positions(self) -> np.ndarray:
        """(N, 2) positions mapped into the primary parallelogram (a copy)."""
        s = np.linalg.solve(self.box_matrix, self.pos.T)
        s -= np.floor(s)
        return (self.box_matrix @ s).T

    def sheared(self, dgamma: float) -> "State":
        """A copy after the affine simple shear x += dgamma * y of positions and box.

        Only for a square box: the tilt remap gamma -> gamma - 1 maps the
        lattice onto itself only when Lx = Ly (ValueError otherwise).
        """
        if abs(self.Lx - self.Ly) > 1e-12 * self.Ly:
            raise ValueError(f"simple shear needs a square box (Lx = {self.Lx!r}, "
                             f"Ly = {self.Ly!r}): the tilt remap is a lattice symmetry "
                             "only when Lx = Ly")
        out = self.copy()
        out.pos[:, 0] += dgamma * out.pos[:, 1]
        out.gamma += dgamma
        return out

    def strained(self, exx: float, eyy: float) -> "State":
        """A copy after the affine normal strain x *= 1+exx, y *= 1+eyy (box too).

        The accumulated shear gamma (tilt / height) is unchanged; the
        tilt offset scales with the height.
        """
        out = self.copy()
        out.pos[:, 0] *= 1.0 + exx
        out.pos[:, 1] *= 1.0 + eyy
        # x' = (1+exx) x: the image vector a2 = (tilt Ly, Ly) maps to
        # ((1+exx) tilt Ly, (1+eyy) Ly), i.e. tilt' = tilt (1+exx)/(1+eyy).
        out.gamma = self.gamma - self.tilt + self.tilt * (1.0 + exx) / (1.0 + eyy)
        out.Lx *= 1.0 + exx
        out.Ly *= 1.0 + eyy
        return out


def binary_radii(n: int) -> np.ndarray:
    """(n,) radii of the 1:1 binary mixture: first n//2 small, the rest large."""
    radii = np.full(n, LARGE_RADIUS)
    radii[: n // 2] = SMALL_RADIUS
    return radii


def random_state(n: int, phi: float, seed: int) -> State:
    """Uniformly random positions of the binary mixture in a square box.

    Species are assigned at random (n//2 small, the rest large) and the
    particles are numbered along rows of 2 x 2 cells. The box side is chosen so that the packing fraction is exactly phi:
    L = sqrt(sum_i pi sigma_i^2 / phi).
    """
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    if not 0.0 < phi < 1.0:
        raise ValueError(f"phi must lie in (0, 1), got {phi}")
    radii = binary_radii(n)
    side = float(np.sqrt(np.pi * np.sum(radii**2) / phi))
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0.0, side, size=(n, 2))
    species = rng.permutation(radii)
    # Number particles row by row of 2 x 2 cells, so that neighbours sit
    # close in memory (the force loop's cost then stays linear in N).
    cell = np.floor(pos / 2.0).astype(np.int64)
    order = np.lexsort((cell[:, 0], cell[:, 1]))
    return State(pos[order], species, side, side, 0.0)
