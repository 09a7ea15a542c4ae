"""The per-frame analysis file written next to a trajectory: softness, D2min
and local strains of every particle in every frame (schema
``step-frame-analysis``, version :data:`SCHEMA_VERSION`; layout in
docs/analysis.md).

For frame f of the global frame order (SPEC.md section 0): ``softness[f]``
is the model's softness of the configuration of frame f, and ``d2min[f]``,
``k[f]``, ``e1[f]``, ``e2[f]``, ``eps_dev[f]`` describe the deformation from
the previous frame f - 1 to frame f (R_D = 2, neighbours and images chosen
in frame f - 1; SPEC.md section 2). They are NaN for the first frame and
wherever frame f - 1 is not in the file. Lengths in small-particle
diameters, D2min in length^2, strains dimensionless. Per-frame arrays are
(F, N) float32 (float32 holds D2min and per-frame strains to a relative
6e-8, far below their scatter).

Resume: frames are computed in blocks; each finished block is written to
``<name>.parts/block-<first row>.h5`` (via a temporary name and an atomic
rename), so a killed run keeps its finished blocks and recomputes only the
missing ones. Every frame's result depends on the trajectory and the model
alone, so a resumed file equals an uninterrupted one. At the end the
blocks are merged into ``<name>.tmp``, checked, and renamed to the final
name; the blocks are then removed.
"""

import json
import logging
import os
import shutil
from pathlib import Path

import h5py
import numpy as np

from ..kill_switch import KillSwitch
from ..provenance import code_version, file_sha256
from .rearrangements import local_deformation
from .trajectory import Trajectory

log = logging.getLogger(__name__)

SCHEMA = "step-frame-analysis"
SCHEMA_VERSION = 1
DEFAULT_NAME = "analysis.h5"
#: ``STEP_SOFTNESS_KILL_AT=event:k`` SIGKILLs the run at the k-th "block"
#: (a block file written) or "merge" (merged file written, not yet renamed).
KILL_ENV = "STEP_SOFTNESS_KILL_AT"
#: per-frame (F, N) float32 datasets
FIELDS = {
    "softness": "softness of the frame's configuration (model file's mean signed distance)",
    "d2min": "D2min from the previous frame (length^2, 1/M_k normalisation, R_D = 2)",
    "k": "volumetric strain (eps_xx + eps_yy)/2 from the previous frame",
    "e1": "deviatoric strain (eps_xx - eps_yy)/2 from the previous frame",
    "e2": "shear strain eps_xy from the previous frame",
    "eps_dev": "deviatoric magnitude 2 sqrt(e1^2 + e2^2) from the previous frame",
}
#: per-frame (F,) sequence datasets (Trajectory.frame_sequence)
SEQUENCE = ("frame", "kind", "row", "step", "avalanche", "gamma")


class AnalysisError(RuntimeError):
    """A missing, damaged or mismatched analysis file; the message names the
    file and the field."""


def _compute_block(t: Trajectory, model, seq: dict, lo: int, hi: int, species, radii):
    """Per-frame fields of sequence rows [lo, hi): dict of (hi-lo, N) float32."""
    n = len(radii)
    Lx, Ly = t.box_lengths
    out = {k: np.full((hi - lo, n), np.nan, np.float32) for k in FIELDS}
    prev = t.sequence_position(seq["kind"][lo - 1], seq["row"][lo - 1]) if lo > 0 else None
    for i in range(lo, hi):
        x = t.sequence_position(seq["kind"][i], seq["row"][i])
        g = float(seq["gamma"][i])
        out["softness"][i - lo] = model.softness(x, species, Lx, Ly, g)
        if i > 0 and seq["frame"][i - 1] == seq["frame"][i] - 1:
            d = local_deformation(prev, x, radii, Lx, Ly, float(seq["gamma"][i - 1]),
                                  Lx, Ly, g)
            for k in ("d2min", "k", "e1", "e2", "eps_dev"):
                out[k][i - lo] = getattr(d, k)
        prev = x
    return out


def _chunks(n_frames: int, n: int):
    return (max(1, min(n_frames, 65536 // (4 * n))), n)


def _write_block(path: Path, data: dict, lo: int, header: dict):
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs.update(header)
        f.attrs["lo"] = lo
        for k, v in data.items():
            f.create_dataset(k, data=v)
    os.replace(tmp, path)


def _read_block(path: Path, header: dict):
    try:
        with h5py.File(path, "r") as f:
            for key in ("trajectory_config_hash", "model_sha256"):
                if f.attrs.get(key) != header[key]:
                    return None
            return int(f.attrs["lo"]), {k: f[k][()] for k in FIELDS}
    except (OSError, KeyError):
        return None


def analyse_trajectory(traj_path, model, model_path, out_path=None, block: int = 128,
                       config_yaml: str = "", progress: bool = False) -> Path:
    """Write the analysis file of one trajectory (resumable).

    Args:
        traj_path: trajectory file (every step's positions stored).
        model: a softness model (``model.softness(pos, species, Lx, Ly,
            tilt) -> (N,)``), saved at ``model_path`` (its sha256 identifies it).
        out_path: output file (default: ``analysis.h5`` next to the trajectory).
        block: frames per resumable block.
        config_yaml: resolved config of the calling run, stored in the file.
        progress: tqdm bar over frames.
    Returns:
        The path of the finished file. An existing finished file made with
        the same trajectory and model is kept as it is.
    Raises:
        AnalysisError if the trajectory did not store every step, or an
        existing file was made from another trajectory or model.
    """
    kill = KillSwitch(KILL_ENV)
    traj_path = Path(traj_path)
    out_path = Path(out_path) if out_path else traj_path.with_name(DEFAULT_NAME)
    model_sha = file_sha256(model_path)
    with Trajectory(traj_path) as t:
        if t.n_positions != t.n_steps:
            raise AnalysisError(
                f"{traj_path}: only {t.n_positions} of {t.n_steps} steps store positions; "
                "the analysis needs every step (output.position_every=1)")
        header = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION,
                  "trajectory": str(traj_path.resolve()),
                  "trajectory_config_hash": t.config_hash,
                  "model": str(Path(model_path).resolve()), "model_sha256": model_sha}
        if out_path.exists():
            with SoftnessAnalysis(out_path) as a:
                if (a.attrs["trajectory_config_hash"], a.attrs["model_sha256"]) == (
                        t.config_hash, model_sha):
                    log.info("%s: already analysed with this model", out_path)
                    return out_path
            raise AnalysisError(f"{out_path} exists and was made from another trajectory or "
                                "model (trajectory_config_hash / model_sha256 differ); "
                                "move it away to recompute")
        seq = t.frame_sequence()
        species = t.species.astype(np.int64)
        radii = t.radii
        n_frames, n = len(seq["frame"]), len(radii)
        parts = out_path.with_name(out_path.name + ".parts")
        parts.mkdir(exist_ok=True)
        done = {}
        for p in sorted(parts.glob("block-*.h5")):
            got = _read_block(p, header)
            if got is None:
                log.warning("%s: damaged or foreign block, recomputing it", p)
                p.unlink()
            else:
                done[got[0]] = p
        todo = [lo for lo in range(0, n_frames, block) if lo not in done]
        if done:
            log.info("%s: resuming, %d of %d blocks done", out_path, len(done),
                     len(done) + len(todo))
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=n_frames, initial=n_frames - sum(
                min(block, n_frames - lo) for lo in todo), unit="frame",
                desc=traj_path.parent.name)
        for lo in todo:
            hi = min(lo + block, n_frames)
            data = _compute_block(t, model, seq, lo, hi, species, radii)
            p = parts / f"block-{lo:09d}.h5"
            _write_block(p, data, lo, header)
            done[lo] = p
            kill("block")
            if bar is not None:
                bar.update(hi - lo)
        if bar is not None:
            bar.close()
        tmp = out_path.with_name(out_path.name + ".tmp")
        with h5py.File(tmp, "w") as f:
            f.attrs.update(header)
            f.attrs.update(code_version=code_version(), config=config_yaml,
                           n_particles=n, n_frames=n_frames, Lx=t.box_lengths[0],
                           Ly=t.box_lengths[1], fields=json.dumps(FIELDS))
            f["species"] = t.species
            for k in SEQUENCE:
                f.create_dataset(f"frames/{k}", data=seq[k])
            ds = {k: f.create_dataset(k, (n_frames, n), np.float32, chunks=_chunks(n_frames, n),
                                      compression="gzip", compression_opts=4, shuffle=True,
                                      fletcher32=True) for k in FIELDS}
            for k, doc in FIELDS.items():
                ds[k].attrs["description"] = doc
            for lo, p in sorted(done.items()):
                with h5py.File(p, "r") as b:
                    for k in FIELDS:
                        ds[k][lo: lo + b[k].shape[0]] = b[k][()]
            f.attrs["complete"] = True
        validate(tmp)
        kill("merge")
        os.replace(tmp, out_path)
        shutil.rmtree(parts)
    return out_path


class SoftnessAnalysis:
    """Read access to an analysis file (lazy).

        with SoftnessAnalysis("run/analysis.h5") as a:
            seq = a.sequence()            # dict of (F,) arrays: frame, kind, step, gamma, ...
            S = a.field("softness", 120)  # (N,) float32 of sequence row 120
            D = a.field("d2min")          # (F, N) everything
    """

    def __init__(self, path):
        self.path = Path(path)
        try:
            self.f = h5py.File(self.path, "r")
        except OSError as exc:
            raise AnalysisError(f"{self.path}: not a readable HDF5 file: {exc}") from None
        a = self.f.attrs
        if a.get("schema") != SCHEMA:
            self.close()
            raise AnalysisError(f"{self.path}: schema attribute {a.get('schema')!r}, "
                                f"expected {SCHEMA!r}")
        if int(a.get("schema_version", -1)) != SCHEMA_VERSION:
            self.close()
            raise AnalysisError(f"{self.path}: schema_version {a.get('schema_version')} is "
                                f"not supported (this code reads {SCHEMA_VERSION})")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if getattr(self, "f", None) is not None:
            self.f.close()
            self.f = None

    @property
    def attrs(self) -> dict:
        return dict(self.f.attrs)

    @property
    def species(self) -> np.ndarray:
        return self.f["species"][()]

    def sequence(self) -> dict:
        """The frame sequence: dict of (F,) arrays (SEQUENCE)."""
        return {k: self.f[f"frames/{k}"][()] for k in SEQUENCE}

    def field(self, name: str, rows=slice(None)) -> np.ndarray:
        """(F, N) or selected rows of a per-frame field (FIELDS)."""
        if name not in FIELDS:
            raise KeyError(f"unknown field {name!r}; known: {sorted(FIELDS)}")
        return self.f[name][rows]


def validate(path) -> None:
    """Raise AnalysisError naming the first problem of an analysis file."""
    with SoftnessAnalysis(path) as a:
        f = a.f
        for key in ("trajectory_config_hash", "model_sha256", "code_version", "n_frames",
                    "n_particles", "complete"):
            if key not in f.attrs:
                raise AnalysisError(f"{path}: missing attribute {key!r}")
        nf, n = int(f.attrs["n_frames"]), int(f.attrs["n_particles"])
        for k in SEQUENCE:
            if f"frames/{k}" not in f or f[f"frames/{k}"].shape != (nf,):
                raise AnalysisError(f"{path}: frames/{k} missing or not of shape ({nf},)")
        for k in FIELDS:
            if k not in f or f[k].shape != (nf, n):
                raise AnalysisError(f"{path}: {k} missing or not of shape ({nf}, {n})")
        if not bool(f.attrs["complete"]):
            raise AnalysisError(f"{path}: not complete")
