"""The AQS trajectory file (HDF5, H5MD layout where it fits): writer, reader,
schema check, and the kill-safe segment store used while a run is going.

Schema ``step-aqs-trajectory``, version :data:`SCHEMA_VERSION` (documented
in full in docs/trajectory.md; a change of layout bumps the version and the
reader refuses versions it does not know).

Conventions (SPEC.md section 0): lengths in small-particle diameters,
energies in the pair prefactor, time in the overdamped unit. The box of a
record is the parallelogram with edge vectors a1 = (Lx, 0) and
a2 = (tilt Ly, Ly) (the rows of ``box/edges/value``), tilt = gamma remapped
into [-1/2, 1/2). Positions are the engine's continuous (unwrapped)
Cartesian coordinates, bit for bit, so a run resumes exactly; wrap them
with :func:`wrap` (or State.wrapped_positions) for pictures.

Frame index: one running counter over the whole trajectory. Step 0 (the
jammed packing) is frame 0; each avalanche contributes its frames (the
affinely strained start first) before its step's minimised frame.

Layout (T strain steps, P stored positions, F avalanche frames, A avalanches)::

    /                        attrs: schema, schema_version, code_version, config
                             (resolved YAML), config_hash, n_particles,
                             d_gamma, first_step, n_steps, n_positions,
                             n_frames, n_avalanches, complete
    /h5md                    attrs version = [1, 1]; author/, creator/
    /particles/all/species   (N,) int8    0 small, 1 large
    /particles/all/radius    (N,) float64
    /particles/all/position/{step (P,) int64, time (P,) gamma, value (P, N, 2)}
    /particles/all/box       attrs dimension = 2, boundary = [periodic, periodic]
    /particles/all/box/edges/{step, time, value (P, 2, 2)}   (step/time linked)
    /particles/avalanche/position/{step (F,) strain step, time (F,) overdamped
                             time since the avalanche's start, value (F, N, 2)}
    /particles/avalanche/box/edges/{step, time, value (F, 2, 2)}
    /observables/<name>/{step (T,), time (T,) = gamma, value}   per strain step:
        gamma, energy, stress (2, 2), pressure, max_force, converged,
        iterations, force_evals, newton_solves, factorizations, method,
        avalanche (its id or -1), event_reason, dissipation, nonaffine_max,
        nonaffine_norm, frame, n_avalanches
    /observables/avalanche_frames/<name>/{step, time, value}  per frame:
        frame, avalanche, distance, distance_bound, energy, stress (2, 2),
        max_force
    /avalanches/<name>       (A,) one row per avalanche: see AVALANCHE_FIELDS
    /timing/step_wall_s, /timing/avalanche_wall_s   wall-clock seconds (the only
                             data that differ between identical runs)
    /parameters/elastic/{instantaneous,relaxed}  attrs c11 c22 c12 mu lam_2mu lam nu

Every dataset is chunked, gzip-compressed with shuffle, and checksummed
(fletcher32), so a damaged chunk raises on read instead of returning
garbage.

Kill safety (see :class:`SegmentStore`): while a run is going its steps go
to ``segments/open.h5.part``, flushed after every step, and every
``segment_steps`` steps that file is closed and atomically renamed to a
complete segment ``segments/seg-<first step>.h5``, never to be written
again. A file is never reopened for writing after a crash: on resume the
complete segments are read, the readable, committed steps of the part file
are copied into a fresh part file (which replaces it atomically), and the
run goes on from the last stored step. At the end the segments are
concatenated into ``trajectory.h5`` (written as a temporary file and
renamed). No SWMR and no libver='latest' are used, so h5clear is never
needed.
"""

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

SCHEMA = "step-aqs-trajectory"
SCHEMA_VERSION = 1

#: Per-step observables: name -> (dtype, row shape, unit / meaning).
STEP_FIELDS = {
    "gamma": ("f8", (), "accumulated engineering shear strain (tilt / height)"),
    "energy": ("f8", (), "total energy"),
    "stress": ("f8", (2, 2), "virial stress sigma_ab = (1/V) dU/d eps_ab"),
    "pressure": ("f8", (), "-(sigma_xx + sigma_yy) / 2"),
    "max_force": ("f8", (), "max_i |F_i| of the stored state"),
    "converged": ("i1", (), "1 when max|F| < minimizer.ftol"),
    "iterations": ("i8", (), "FIRE iterations plus steepest-descent steps"),
    "force_evals": ("i8", (), "force evaluations"),
    "newton_solves": ("i8", (), "linear solves with the sparse factorisation"),
    "factorizations": ("i8", (), "sparse (block LDL^T) factorisations"),
    "method": ("i1", (), "how the stored state was found: see METHODS"),
    "avalanche": ("i8", (), "avalanche id of this step, -1 if none"),
    "event_reason": ("i1", (), "bit mask of the tests that fired: see REASONS"),
    "dissipation": ("f8", (), "V d_gamma (sigma_xy(prev) + sigma_xy) / 2 - (E - E(prev))"),
    "nonaffine_max": ("f8", (), "max_i |x_i - x_i(affine start)|"),
    "nonaffine_norm": ("f8", (), "sqrt(sum_i |x_i - x_i(affine start)|^2)"),
    "frame": ("i8", (), "global frame index of the step's minimised state"),
    "n_avalanches": ("i8", (), "avalanches so far, this step included"),
}

#: Per-avalanche-frame observables.
FRAME_FIELDS = {
    "frame": ("i8", (), "global frame index"),
    "avalanche": ("i8", (), "avalanche id"),
    "distance": ("f8", (), "sqrt(sum_i |x_i - x_i(previous frame)|^2), 0 for the start"),
    "distance_bound": ("f8", (), "frame_spacing + an upper bound of the last descent step"),
    "energy": ("f8", (), "total energy"),
    "stress": ("f8", (2, 2), "virial stress"),
    "max_force": ("f8", (), "max_i |F_i|"),
}

#: Avalanche table (one row per avalanche).
AVALANCHE_FIELDS = {
    "id": ("i8", "running avalanche id"),
    "step": ("i8", "strain step"),
    "gamma": ("f8", "strain of the step"),
    "first_frame": ("i8", "global index of its first frame (the affinely strained start)"),
    "n_frames": ("i8", "frames saved (start included; the step's minimised frame excluded)"),
    "duration": ("f8", "overdamped time of the descent down to avalanche.sd_ftol"),
    "last_frame_time": ("f8", "time of its last saved frame"),
    "energy_drop": ("f8", "E(affine start) - E(end)"),
    "stress_drop": ("f8", "sigma_xy(affine start) - sigma_xy(end)"),
    "dissipation": ("f8", "trapezoidal work of the step minus its energy change"),
    "de_direct": ("f8", "E(end) - E(direct Newton/FIRE minimum): another minimum if not ~0"),
    "direct_distance": ("f8", "configuration-space distance between the two minima"),
    "sd_steps": ("i8", "accepted descent steps"),
    "sd_force_evals": ("i8", "force evaluations of the descent"),
    "event_reason": ("i1", "bit mask of the tests that fired: see REASONS"),
    "converged": ("i1", "1 when the end state meets minimizer.ftol"),
}

METHODS = {0: "initial", 1: "newton", 2: "fire+newton", 3: "fire", 4: "sd+newton", 5: "sd"}
METHOD_CODES = {v: k for k, v in METHODS.items()}
REASONS = {1: "energy below elastic prediction", 2: "stress drop",
           4: "non-affine displacement", 8: "direct minimisation failed"}

_POS = "particles/all"
_FRM = "particles/avalanche"


class TrajectoryError(RuntimeError):
    """A trajectory file or run directory that cannot be used (foreign,
    truncated, another schema version, another config)."""


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------

@dataclass
class Header:
    """What every file of a run carries."""

    radii: np.ndarray
    Lx: float
    Ly: float
    d_gamma: float
    config_yaml: str
    config_hash: str
    code_version: str


class _Table:
    """Extendable datasets sharing one row count (and, H5MD style, one
    ``step`` / ``time`` pair hard-linked into every element group)."""

    def __init__(self, f, elements: dict, step_time: bool, compression: int):
        self.f = f
        self.paths = {}
        self.n = 0
        kw = dict(shuffle=True, fletcher32=True)
        if compression:
            kw.update(compression="gzip", compression_opts=compression)
        self.step = self.time = None
        for key, (path, dtype, shape) in elements.items():
            row_bytes = np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64))
            chunk_rows = int(max(1, min(4096, (1 << 16) // max(row_bytes, 1))))
            ds = f.create_dataset(path, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                                  chunks=(chunk_rows, *shape), **kw)
            self.paths[key] = ds
            if step_time:
                group = ds.parent
                if self.step is None:
                    self.step = group.create_dataset("step", shape=(0,), maxshape=(None,),
                                                     dtype="i8", chunks=(4096,), **kw)
                    self.time = group.create_dataset("time", shape=(0,), maxshape=(None,),
                                                     dtype="f8", chunks=(4096,), **kw)
                else:
                    group["step"] = self.step
                    group["time"] = self.time

    def append(self, rows: dict, step=None, time=None):
        k = len(next(iter(rows.values())))
        if k == 0:
            return
        m = self.n + k
        for key, ds in self.paths.items():
            ds.resize(m, axis=0)
            ds[self.n:m] = np.asarray(rows[key])
        if self.step is not None:
            self.step.resize((m,))
            self.step[self.n:m] = np.asarray(step)
            self.time.resize((m,))
            self.time[self.n:m] = np.asarray(time)
        self.n = m


class TrajectoryWriter:
    """Writes one file of the schema (a segment, the part file, or the
    merged trajectory). Rows are appended with :meth:`append_step` (one
    strain step with its avalanche, if any) and made durable with
    :meth:`commit` (counts as attributes, then flush): a reader or a
    resume trusts only committed rows."""

    def __init__(self, path, header: Header, first_step: int, compression: int = 4,
                 elastic: dict | None = None):
        self.path = Path(path)
        n = header.radii.shape[0]
        self.f = h5py.File(self.path, "w")  # default libver: no SWMR, no h5clear ever
        f = self.f
        f.attrs.update(schema=SCHEMA, schema_version=SCHEMA_VERSION,
                       code_version=header.code_version, config=header.config_yaml,
                       config_hash=header.config_hash, n_particles=n,
                       d_gamma=header.d_gamma, Lx=header.Lx, Ly=header.Ly,
                       first_step=int(first_step), complete=False,
                       n_steps=0, n_positions=0, n_frames=0, n_avalanches=0)
        h = f.create_group("h5md")
        h.attrs["version"] = np.array([1, 1], dtype="i4")
        h.create_group("author").attrs["name"] = "step-epm"
        c = h.create_group("creator")
        c.attrs["name"] = "step-epm step-particles"
        c.attrs["version"] = header.code_version
        species = (header.radii > 0.6).astype(np.int8)
        f[f"{_POS}/species"] = species
        f[f"{_POS}/radius"] = header.radii
        for grp in (_POS, _FRM):
            box = f.require_group(f"{grp}/box")
            box.attrs["dimension"] = 2
            box.attrs["boundary"] = np.array([b"periodic", b"periodic"])
        self.steps = _Table(f, {k: (f"observables/{k}/value", d, s)
                                for k, (d, s, _) in STEP_FIELDS.items()}, True, compression)
        self.positions = _Table(f, {"position": (f"{_POS}/position/value", "f8", (n, 2)),
                                    "edges": (f"{_POS}/box/edges/value", "f8", (2, 2))},
                                True, compression)
        frame_elems = {"position": (f"{_FRM}/position/value", "f8", (n, 2)),
                       "edges": (f"{_FRM}/box/edges/value", "f8", (2, 2))}
        frame_elems.update({k: (f"observables/avalanche_frames/{k}/value", d, s)
                            for k, (d, s, _) in FRAME_FIELDS.items()})
        self.frames = _Table(f, frame_elems, True, compression)
        self.avalanches = _Table(f, {k: (f"avalanches/{k}", d, ())
                                     for k, (d, _) in AVALANCHE_FIELDS.items()}, False, compression)
        self.timing_steps = _Table(f, {"wall": ("timing/step_wall_s", "f8", ())}, False, compression)
        self.timing_aval = _Table(f, {"wall": ("timing/avalanche_wall_s", "f8", ())}, False,
                                  compression)
        for k, (_, _, doc) in STEP_FIELDS.items():
            f[f"observables/{k}"].attrs["description"] = doc
        for k, (_, _, doc) in FRAME_FIELDS.items():
            f[f"observables/avalanche_frames/{k}"].attrs["description"] = doc
        for k, (_, doc) in AVALANCHE_FIELDS.items():
            f[f"avalanches/{k}"].attrs["description"] = doc
        f["observables/method"].attrs["codes"] = repr(METHODS)
        f["observables/event_reason"].attrs["bits"] = repr(REASONS)
        f[f"{_FRM}/position"].attrs["time"] = "overdamped time since the avalanche's start"
        f[f"{_POS}/position"].attrs["time"] = "gamma (accumulated strain)"
        if elastic:
            for name, values in elastic.items():
                g = f.require_group(f"parameters/elastic/{name}")
                for key, v in values.items():
                    g.attrs[key] = float(v)
        self.commit()

    # -- rows -----------------------------------------------------------------
    def append_step(self, rec: dict, position=None, edges=None, frames: dict | None = None,
                    avalanche: dict | None = None, wall: float = 0.0,
                    avalanche_wall: float | None = None):
        """Append one strain step.

        rec: STEP_FIELDS values (scalars / (2, 2)) plus "step".
        position: (N, 2) to store (None: not stored this step), edges (2, 2).
        frames: FRAME_FIELDS arrays plus "position" (F, N, 2), "edges",
            "step" (F,), "time" (F,). avalanche: AVALANCHE_FIELDS scalars.
        """
        step, gamma = int(rec["step"]), float(rec["gamma"])
        self.steps.append({k: [rec[k]] for k in STEP_FIELDS}, [step], [gamma])
        self.timing_steps.append({"wall": [wall]})
        if position is not None:
            self.positions.append({"position": [position], "edges": [edges]}, [step], [gamma])
        if frames is not None:
            self.frames.append({k: frames[k] for k in self.frames.paths},
                               frames["step"], frames["time"])
        if avalanche is not None:
            self.avalanches.append({k: [avalanche[k]] for k in AVALANCHE_FIELDS})
            self.timing_aval.append({"wall": [avalanche_wall or 0.0]})

    def append_rows(self, src: "Trajectory", lo: int, hi: int):
        """Copy src's committed steps [lo, hi) (indices into its step rows),
        with their positions, frames and avalanches, in blocks."""
        s_steps = src.step_numbers[lo:hi]
        if len(s_steps) == 0:
            return
        first, last = int(s_steps[0]), int(s_steps[-1])
        f = src.f
        sl = slice(lo, hi)
        self.steps.append({k: f[f"observables/{k}/value"][sl] for k in STEP_FIELDS},
                          f["observables/gamma/step"][sl], f["observables/gamma/time"][sl])
        self.timing_steps.append({"wall": f["timing/step_wall_s"][sl]})
        psteps = src.position_steps
        p_lo, p_hi = np.searchsorted(psteps, [first, last + 1])
        block = max(1, (1 << 26) // (16 * src.n_particles))
        for a in range(p_lo, p_hi, block):
            b = min(a + block, p_hi)
            self.positions.append({"position": f[f"{_POS}/position/value"][a:b],
                                   "edges": f[f"{_POS}/box/edges/value"][a:b]},
                                  f[f"{_POS}/position/step"][a:b],
                                  f[f"{_POS}/position/time"][a:b])
        fsteps = src.frame_steps
        f_lo, f_hi = np.searchsorted(fsteps, [first, last + 1])
        for a in range(f_lo, f_hi, block):
            b = min(a + block, f_hi)
            rows = {"position": f[f"{_FRM}/position/value"][a:b],
                    "edges": f[f"{_FRM}/box/edges/value"][a:b]}
            rows.update({k: f[f"observables/avalanche_frames/{k}/value"][a:b]
                         for k in FRAME_FIELDS})
            self.frames.append(rows, f[f"{_FRM}/position/step"][a:b],
                               f[f"{_FRM}/position/time"][a:b])
        asteps = src.avalanche_steps
        a_lo, a_hi = np.searchsorted(asteps, [first, last + 1])
        if a_hi > a_lo:
            self.avalanches.append({k: f[f"avalanches/{k}"][a_lo:a_hi] for k in AVALANCHE_FIELDS})
            self.timing_aval.append({"wall": f["timing/avalanche_wall_s"][a_lo:a_hi]})

    def commit(self, complete: bool = False):
        """Record the row counts (what a reader may trust), then flush to disk."""
        self.f.attrs.update(n_steps=self.steps.n, n_positions=self.positions.n,
                            n_frames=self.frames.n, n_avalanches=self.avalanches.n,
                            complete=bool(complete))
        self.f.flush()

    def close(self, complete: bool = False):
        if self.f:
            self.commit(complete)
            self.f.close()
            self.f = None
            _fsync(self.path)


def _fsync(path):
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


# ---------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------

def wrap(position: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(..., N, 2) positions mapped into the primary parallelogram of the
    box whose edge vectors are the rows of ``edges`` (2, 2)."""
    h = np.asarray(edges).T  # columns a1, a2
    s = np.linalg.solve(h, np.moveaxis(position, -1, 0).reshape(2, -1))
    s -= np.floor(s)
    return np.moveaxis((h @ s).reshape(np.moveaxis(position, -1, 0).shape), 0, -1)


def box_edges(Lx: float, Ly: float, tilt: float) -> np.ndarray:
    """(2, 2) H5MD box edges: rows a1 = (Lx, 0), a2 = (tilt Ly, Ly)."""
    return np.array([[Lx, 0.0], [tilt * Ly, Ly]])


class Trajectory:
    """Read access to a trajectory file (lazy: nothing large is loaded until
    asked for). Only committed rows are visible.

        with Trajectory("run/trajectory.h5") as t:
            e = t.observable("energy")          # (T,) numpy array
            x = t.positions(step=120)           # (N, 2) unwrapped
            a = t.avalanches()                  # dict of (A,) arrays
            fr = t.frames(avalanche=3)          # dict: index, time, position (F, N, 2), ...
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.exists():
            raise TrajectoryError(f"{self.path}: no such file")
        try:
            # no HDF5 file lock: a reader may look at the part file of a running
            # run (its committed rows); run_aqs locks the run directory itself
            self.f = h5py.File(self.path, "r", locking=False)
        except OSError as exc:
            raise TrajectoryError(f"{self.path}: not a readable HDF5 file (truncated or "
                                  f"damaged?): {exc}") from None
        a = self.f.attrs
        schema, version = a.get("schema"), a.get("schema_version", -1)
        if schema != SCHEMA:
            self.close()
            raise TrajectoryError(f"{self.path}: not a STEP AQS trajectory "
                                  f"(schema attribute {schema!r}, expected {SCHEMA!r})")
        if int(version) != SCHEMA_VERSION:
            self.close()
            raise TrajectoryError(f"{self.path}: schema version {version} "
                                  f"is not supported (this code reads {SCHEMA_VERSION})")
        try:
            self.n_steps = int(a["n_steps"])
            self.n_positions = int(a["n_positions"])
            self.n_frames = int(a["n_frames"])
            self.n_avalanches = int(a["n_avalanches"])
            self.n_particles = int(a["n_particles"])
        except KeyError as exc:
            self.close()
            raise TrajectoryError(f"{self.path}: missing attribute {exc}") from None

    # -- context ----------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if getattr(self, "f", None) is not None:
            self.f.close()
            self.f = None

    # -- header -----------------------------------------------------------------
    @property
    def attrs(self) -> dict:
        return dict(self.f.attrs)

    @property
    def config(self) -> str:
        """The resolved config (YAML text) of the run."""
        return str(self.f.attrs["config"])

    @property
    def config_hash(self) -> str:
        return str(self.f.attrs["config_hash"])

    @property
    def code_version(self) -> str:
        return str(self.f.attrs["code_version"])

    @property
    def complete(self) -> bool:
        return bool(self.f.attrs["complete"])

    @property
    def first_step(self) -> int:
        return int(self.f.attrs["first_step"])

    @property
    def radii(self) -> np.ndarray:
        return self.f[f"{_POS}/radius"][()]

    @property
    def species(self) -> np.ndarray:
        return self.f[f"{_POS}/species"][()]

    @property
    def box_lengths(self) -> tuple[float, float]:
        return float(self.f.attrs["Lx"]), float(self.f.attrs["Ly"])

    def elastic(self) -> dict:
        """Elastic constants of the initial packing ({} if not measured)."""
        g = self.f.get("parameters/elastic")
        return {} if g is None else {k: dict(g[k].attrs) for k in g}

    # -- per-step data ------------------------------------------------------------
    @property
    def step_numbers(self) -> np.ndarray:
        """(T,) strain step index of every committed step row."""
        return self.f["observables/gamma/step"][: self.n_steps]

    def observable(self, name: str) -> np.ndarray:
        """(T, ...) per-step observable (see STEP_FIELDS)."""
        if name not in STEP_FIELDS:
            raise KeyError(f"unknown observable {name!r}; known: {sorted(STEP_FIELDS)}")
        return self.f[f"observables/{name}/value"][: self.n_steps]

    def steps(self) -> dict:
        """Every per-step observable as a dict of (T, ...) arrays (plus "step")."""
        out = {k: self.observable(k) for k in STEP_FIELDS}
        out["step"] = self.step_numbers
        return out

    def step_wall_s(self) -> np.ndarray:
        return self.f["timing/step_wall_s"][: self.n_steps]

    @property
    def position_steps(self) -> np.ndarray:
        """(P,) strain steps whose minimised positions are stored."""
        return self.f[f"{_POS}/position/step"][: self.n_positions]

    def _position_row(self, step: int) -> int:
        ps = self.position_steps
        i = int(np.searchsorted(ps, step))
        if i >= len(ps) or ps[i] != step:
            raise KeyError(f"positions of step {step} are not stored in {self.path}")
        return i

    def positions(self, step: int, wrapped: bool = False) -> np.ndarray:
        """(N, 2) minimised positions of strain step ``step`` (unwrapped by default)."""
        i = self._position_row(step)
        x = self.f[f"{_POS}/position/value"][i]
        return wrap(x, self.edges(step)) if wrapped else x

    def edges(self, step: int) -> np.ndarray:
        """(2, 2) box edge vectors (rows) of a stored step."""
        return self.f[f"{_POS}/box/edges/value"][self._position_row(step)]

    def state(self, step: int):
        """The stored minimised state of ``step`` as a particles State."""
        from .state import State
        i = self._position_row(step)
        gamma = float(self.f[f"{_POS}/position/time"][i])
        Lx, Ly = self.box_lengths
        return State(self.f[f"{_POS}/position/value"][i], self.radii, Lx, Ly, gamma)

    # -- avalanche frames -------------------------------------------------------------
    @property
    def frame_steps(self) -> np.ndarray:
        return self.f[f"{_FRM}/position/step"][: self.n_frames]

    def frame_table(self) -> dict:
        """Per-frame scalars (no positions) as (F,) arrays: step, time and FRAME_FIELDS."""
        out = {k: self.f[f"observables/avalanche_frames/{k}/value"][: self.n_frames]
               for k in FRAME_FIELDS}
        out["step"] = self.frame_steps
        out["time"] = self.f[f"{_FRM}/position/time"][: self.n_frames]
        return out

    def frames(self, avalanche: int) -> dict:
        """All frames of one avalanche: frame table rows plus positions (F, N, 2)
        and edges (F, 2, 2), in order."""
        ids = self.f["observables/avalanche_frames/avalanche/value"][: self.n_frames]
        rows = np.flatnonzero(ids == avalanche)
        if rows.size == 0:
            raise KeyError(f"no frames of avalanche {avalanche} in {self.path}")
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        out = {k: v[lo:hi] for k, v in self.frame_table().items()}
        out["position"] = self.f[f"{_FRM}/position/value"][lo:hi]
        out["edges"] = self.f[f"{_FRM}/box/edges/value"][lo:hi]
        return out

    def frame_position(self, row: int) -> np.ndarray:
        """(N, 2) positions of avalanche-frame row ``row`` (0-based in this file)."""
        if not 0 <= row < self.n_frames:
            raise IndexError(f"frame row {row} outside [0, {self.n_frames})")
        return self.f[f"{_FRM}/position/value"][row]

    # -- every frame in the global order ------------------------------------------------
    def frame_sequence(self) -> dict:
        """Every frame of the file in the global frame order (SPEC.md section 0).

        Minimised states of stored steps and avalanche frames interleaved by
        their global index: an avalanche's frames come before its step's
        minimised state. Returns a dict of (F,) arrays:

        - ``frame``: global frame index (increasing; gaps where a step's
          positions are not stored);
        - ``kind``: 0 the minimised state of a step, 1 an avalanche frame;
        - ``row``: the row to read: a position row (kind 0) or an
          avalanche-frame row (kind 1), see :meth:`sequence_position`;
        - ``step``: the strain step; ``avalanche``: its id or -1;
        - ``gamma``: accumulated strain of the frame's box (the tilt to pass
          to analysis code; an avalanche frame has its step's strained box).
        """
        steps = self.step_numbers
        gamma_of = dict(zip(steps.tolist(), self.observable("gamma").tolist()))
        ps = self.position_steps
        row_of_step = {int(s): i for i, s in enumerate(ps)}
        sframe = self.observable("frame")
        sav = self.observable("avalanche")
        keep = np.array([int(s) in row_of_step for s in steps], bool)
        ft = self.frame_table()
        n_f = len(ft["frame"])
        out = {
            "frame": np.concatenate([sframe[keep], ft["frame"]]).astype(np.int64),
            "kind": np.concatenate([np.zeros(keep.sum(), np.int8), np.ones(n_f, np.int8)]),
            "row": np.concatenate([[row_of_step[int(s)] for s in steps[keep]],
                                   np.arange(n_f)]).astype(np.int64),
            "step": np.concatenate([steps[keep], ft["step"]]).astype(np.int64),
            "avalanche": np.concatenate([sav[keep], ft["avalanche"]]).astype(np.int64),
        }
        out["gamma"] = np.array([gamma_of[int(s)] for s in out["step"]], float)
        order = np.argsort(out["frame"], kind="stable")
        return {k: v[order] for k, v in out.items()}

    def sequence_position(self, kind: int, row: int) -> np.ndarray:
        """(N, 2) unwrapped positions of a :meth:`frame_sequence` entry."""
        if kind == 0:
            return self.f[f"{_POS}/position/value"][row]
        return self.frame_position(row)

    # -- avalanches --------------------------------------------------------------------
    @property
    def avalanche_steps(self) -> np.ndarray:
        return self.f["avalanches/step"][: self.n_avalanches]

    def avalanches(self) -> dict:
        """The avalanche table: dict of (A,) arrays (AVALANCHE_FIELDS)."""
        return {k: self.f[f"avalanches/{k}"][: self.n_avalanches] for k in AVALANCHE_FIELDS}

    def avalanche_wall_s(self) -> np.ndarray:
        return self.f["timing/avalanche_wall_s"][: self.n_avalanches]


# ---------------------------------------------------------------------------
# Schema check
# ---------------------------------------------------------------------------

def check_file(path) -> list[str]:
    """Problems found in a trajectory file against the schema (empty list =
    passes): required groups and datasets, dtypes and shapes, committed
    counts within the stored extents, H5MD step/time links, monotonic step
    and frame counters, one frame row per avalanche frame."""
    problems = []
    try:
        t = Trajectory(path)
    except TrajectoryError as exc:
        return [str(exc)]
    with t:
        f = t.f
        n = t.n_particles
        if "h5md" not in f or list(f["h5md"].attrs.get("version", [])) != [1, 1]:
            problems.append("missing /h5md group with version [1, 1]")

        def need(path, dtype, tail, count):
            if path not in f:
                problems.append(f"missing dataset {path}")
                return None
            ds = f[path]
            if not isinstance(ds, h5py.Dataset):
                problems.append(f"{path} is not a dataset")
                return None
            if np.dtype(ds.dtype) != np.dtype(dtype):
                problems.append(f"{path}: dtype {ds.dtype}, expected {dtype}")
            if tuple(ds.shape[1:]) != tuple(tail):
                problems.append(f"{path}: row shape {ds.shape[1:]}, expected {tuple(tail)}")
            if count is not None and ds.shape[0] < count:
                problems.append(f"{path}: {ds.shape[0]} rows < committed {count}")
            return ds

        need(f"{_POS}/species", "i1", (), None)
        need(f"{_POS}/radius", "f8", (), None)
        if f[f"{_POS}/radius"].shape != (n,):
            problems.append(f"radius shape {f[f'{_POS}/radius'].shape} != ({n},)")
        for k, (d, s, _) in STEP_FIELDS.items():
            need(f"observables/{k}/value", d, s, t.n_steps)
            need(f"observables/{k}/step", "i8", (), t.n_steps)
            need(f"observables/{k}/time", "f8", (), t.n_steps)
        for k, (d, s, _) in FRAME_FIELDS.items():
            need(f"observables/avalanche_frames/{k}/value", d, s, t.n_frames)
        for k, (d, _) in AVALANCHE_FIELDS.items():
            need(f"avalanches/{k}", d, (), t.n_avalanches)
        need(f"{_POS}/position/value", "f8", (n, 2), t.n_positions)
        need(f"{_POS}/box/edges/value", "f8", (2, 2), t.n_positions)
        need(f"{_FRM}/position/value", "f8", (n, 2), t.n_frames)
        need(f"{_FRM}/box/edges/value", "f8", (2, 2), t.n_frames)
        for grp in (_POS, _FRM):
            if f[f"{grp}/box"].attrs.get("dimension") != 2:
                problems.append(f"{grp}/box: dimension attribute must be 2")
        if problems:
            return problems
        steps = t.step_numbers
        if t.n_steps and not np.array_equal(steps, np.arange(t.first_step, t.first_step + t.n_steps)):
            problems.append("observables step numbers are not consecutive from first_step")
        frame_idx = t.observable("frame")
        if np.any(np.diff(frame_idx) <= 0):
            problems.append("step frame indices are not increasing")
        ps = t.position_steps
        if np.any(np.diff(ps) <= 0) or (len(ps) and not np.isin(ps, steps).all()):
            problems.append("position steps are not increasing step numbers of this file")
        ft = t.frame_table()
        if np.any(np.diff(ft["frame"]) <= 0):
            problems.append("avalanche frame indices are not increasing")
        av = t.avalanches()
        if t.n_frames and (not np.isin(ft["avalanche"], av["id"]).all()):
            problems.append("a frame belongs to an avalanche missing from the table")
        for i in range(t.n_avalanches):
            rows = ft["avalanche"] == av["id"][i]
            if int(rows.sum()) != int(av["n_frames"][i]):
                problems.append(f"avalanche {av['id'][i]}: {int(rows.sum())} frame rows, "
                                f"table says {av['n_frames'][i]}")
                break
            if rows.any() and ft["frame"][rows][0] != av["first_frame"][i]:
                problems.append(f"avalanche {av['id'][i]}: first frame mismatch")
                break
        for k in STEP_FIELDS:
            if f[f"observables/{k}/step"].id != f["observables/gamma/step"].id:
                problems.append(f"observables/{k}/step is not linked to the shared step")
                break
        if t.complete and t.n_steps and steps[-1] not in ps:
            problems.append("complete file does not store its last step's positions")
    return problems


def validate(path) -> None:
    """Raise TrajectoryError listing the schema problems of ``path``, if any."""
    problems = check_file(path)
    if problems:
        raise TrajectoryError(f"{path} fails the {SCHEMA} v{SCHEMA_VERSION} schema check:\n  "
                              + "\n  ".join(problems))


# ---------------------------------------------------------------------------
# Kill-safe segment store
# ---------------------------------------------------------------------------

TRAJECTORY_NAME = "trajectory.h5"


class SegmentStore:
    """The files of one run directory while the run is going.

    ``segments/seg-<first step:09d>.h5``: complete segments (immutable);
    ``segments/open.h5.part``: the segment being written, committed after
    every step. See the module docstring for the resume rules.
    """

    def __init__(self, run_dir, header: Header, segment_steps: int, compression: int):
        self.dir = Path(run_dir)
        self.seg_dir = self.dir / "segments"
        self.header = header
        self.segment_steps = segment_steps
        self.compression = compression
        self.part_path = self.seg_dir / "open.h5.part"
        self.writer = None

    def lock(self):
        """Hold an exclusive lock on the run directory for this process's life
        (released by the OS when the process dies, SIGKILL included); raise
        TrajectoryError if another process holds it."""
        import fcntl
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock_fh = open(self.dir / ".lock", "w")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_fh.close()
            raise TrajectoryError(f"{self.dir} is in use by another running process") from None

    def unlock(self):
        fh = getattr(self, "_lock_fh", None)
        if fh is not None:
            fh.close()
            self._lock_fh = None

    @property
    def final_path(self) -> Path:
        return self.dir / TRAJECTORY_NAME

    def segments(self) -> list[Path]:
        return sorted(self.seg_dir.glob("seg-*.h5"))

    # -- resume -------------------------------------------------------------------
    def _check_header(self, t: Trajectory):
        if t.config_hash != self.header.config_hash:
            raise TrajectoryError(
                f"{t.path} belongs to a run with another config (hash {t.config_hash}, "
                f"this run {self.header.config_hash}); choose another output_dir")
        if t.n_particles != self.header.radii.shape[0]:
            raise TrajectoryError(f"{t.path}: {t.n_particles} particles, config has "
                                  f"{self.header.radii.shape[0]}")

    def scan(self) -> dict:
        """Inspect the run directory. Returns {"complete": bool, "last_step":
        last resumable step or None, "salvage": (Trajectory, n_rows) or None}.
        Raises TrajectoryError for foreign, damaged or mismatched complete files."""
        if self.final_path.exists():
            t = Trajectory(self.final_path)
            with t:
                self._check_header(t)
                if not t.complete:
                    raise TrajectoryError(f"{self.final_path} exists but is not marked complete")
                return {"complete": True, "last_step": int(t.step_numbers[-1]), "salvage": None}
        last = None
        for seg in self.segments():
            t = Trajectory(seg)
            with t:
                self._check_header(t)
                problems = check_file(seg)
                if problems:
                    raise TrajectoryError(f"complete segment {seg} is damaged: {problems[0]}")
                if last is not None and t.first_step != last + 1:
                    raise TrajectoryError(f"segment {seg} starts at step {t.first_step}, "
                                          f"expected {last + 1}")
                last = int(t.step_numbers[-1])
        salvage = None
        if self.part_path.exists():
            salvage = self._salvage(last)
        return {"complete": False, "last_step": last, "salvage": salvage}

    def _salvage(self, last):
        """Committed, readable rows of the part file that continue the segments
        and end at a stored position; None if nothing usable (the file is
        then discarded: its steps are recomputed, identically)."""
        import logging
        log = logging.getLogger(__name__)
        try:
            t = Trajectory(self.part_path)
        except TrajectoryError as exc:
            log.warning("discarding unreadable part file %s: %s", self.part_path, exc)
            return None
        try:
            self._check_header(t)
            expected = 0 if last is None else last + 1
            if t.first_step != expected or t.n_steps == 0:
                t.close()
                return None
            # read everything once: fletcher32 checks every committed chunk
            for k in STEP_FIELDS:
                t.observable(k)
            ps = t.position_steps
            t.frame_table()
            t.avalanches()
            for i in range(len(ps)):
                t.f[f"{_POS}/position/value"][i]
            for i in range(t.n_frames):
                t.frame_position(i)
            stored = ps[np.isin(ps, t.step_numbers)]
            if stored.size == 0:
                t.close()
                return None
            n_rows = int(stored[-1] - t.first_step + 1)
            return t, n_rows
        except TrajectoryError:
            t.close()
            raise
        except Exception as exc:  # damaged chunk, truncated dataset, ...
            log.warning("discarding damaged part file %s: %s", self.part_path, exc)
            t.close()
            return None

    def last_state(self, scan: dict):
        """The State (and step row dict) to resume from, given :meth:`scan`."""
        if scan["salvage"] is not None:
            t, n_rows = scan["salvage"]
            step = t.first_step + n_rows - 1
            row = {k: t.observable(k)[n_rows - 1] for k in STEP_FIELDS}
            return t.state(step), step, row
        segs = self.segments()
        with Trajectory(segs[-1]) as t:
            step = int(t.step_numbers[-1])
            row = {k: t.observable(k)[-1] for k in STEP_FIELDS}
            return t.state(step), step, row

    # -- writing ------------------------------------------------------------------------
    def open(self, first_step: int, salvage=None, elastic: dict | None = None):
        """Start the part file at ``first_step`` (after :meth:`scan`). With a
        salvage, its committed rows are first copied into a fresh file, which
        then replaces the old part file atomically. ``elastic`` (the initial
        packing's constants) goes into the file that holds step 0."""
        self.seg_dir.mkdir(parents=True, exist_ok=True)
        if salvage is not None:
            t, n_rows = salvage
            tmp = self.seg_dir / "open.h5.part.tmp"
            w = TrajectoryWriter(tmp, self.header, t.first_step, self.compression, t.elastic())
            w.append_rows(t, 0, n_rows)
            w.commit()
            t.close()
            os.replace(tmp, self.part_path)
            w.path = self.part_path
            self.writer = w
        else:
            if self.part_path.exists():
                self.part_path.unlink()
            self.writer = TrajectoryWriter(self.part_path, self.header, first_step,
                                           self.compression, elastic)
        _fsync_dir(self.seg_dir)

    def rows_in_part(self) -> int:
        return self.writer.steps.n

    def seal(self):
        """Close the part file and rename it into a complete segment."""
        w = self.writer
        if w is None:
            return
        first = int(w.f.attrs["first_step"])
        n = w.steps.n
        w.close()
        self.writer = None
        if n == 0:
            self.part_path.unlink()
            return
        os.replace(self.part_path, self.seg_dir / f"seg-{first:09d}.h5")
        _fsync_dir(self.seg_dir)

    def finish(self, keep_segments: bool = False) -> Path:
        """Concatenate the segments into trajectory.h5 (atomically) and
        validate it; remove the segments unless asked to keep them."""
        self.seal()
        segs = self.segments()
        tmp = self.dir / (TRAJECTORY_NAME + ".tmp")
        with Trajectory(segs[0]) as t0:
            first, elastic = t0.first_step, t0.elastic()
        w = TrajectoryWriter(tmp, self.header, first, self.compression, elastic)
        versions = []
        for seg in segs:
            with Trajectory(seg) as t:
                versions.append(t.code_version)
                w.append_rows(t, 0, t.n_steps)
        w.f.attrs["segment_code_versions"] = ",".join(sorted(set(versions)))
        w.close(complete=True)
        validate(tmp)
        os.replace(tmp, self.final_path)
        _fsync_dir(self.dir)
        if not keep_segments:
            for seg in segs:
                seg.unlink()
            try:
                self.seg_dir.rmdir()
            except OSError:
                pass
        return self.final_path
