"""HDF5 run files of the STEP lattice: checkpoints and the final result.

One format for both (schema ``step-lattice``, version ``SCHEMA_VERSION``),
so a run resumes from either. A file is written to ``<name>.tmp`` and
renamed, so a kill never leaves a half-written file under the final name.

Layout::

    /                 attrs: schema, schema_version, code_version, config
                      (resolved YAML), calibration (the calibration file's
                      JSON text), calibration_sha256, calibrated, completed,
                      L, seed, gamma, frame, n_avalanches, rng_state (JSON of
                      numpy's PCG64 bit_generator state), n_rearrangements,
                      fftw_wisdom (FFTW's wisdom text of the run's plans with
                      lattice.fft_planner = measure, re-created on resume;
                      "" with estimate)
    /params           attrs: the lattice parameters derived from the
                      calibration (LatticeParams; kappa as used), the
                      calibrated kappa (kappa_calibrated), the kernel self
                      terms and whether they were bounded (self_clipped)
    /rearrangements/* one dataset per column (model.REARRANGEMENT_COLUMNS),
                      each with a ``doc`` attr
    /avalanches/*     one dataset per column (model.AVALANCHE_COLUMNS)
    /stress_strain/   gamma, stress: the sawtooth (stress after the loading
                      step, then after the avalanche, at the same gamma)
    /state/*          e1, e2, k, S, u (L x L), between avalanches
    /snapshot/*       the largest avalanche so far: S, e1, e2, k before and
                      after (L x L); attrs avalanche, size, first (row of
                      its first rearrangement)
"""

import dataclasses
import json
import os
from pathlib import Path

import h5py
import numpy as np

from step_epm.provenance import code_version

from .model import AVALANCHE_COLUMNS, COLUMN_DOC, REARRANGEMENT_COLUMNS, STEPModel, Table

SCHEMA = "step-lattice"
SCHEMA_VERSION = 2


class RunFileError(RuntimeError):
    """A run file that cannot be resumed (wrong schema, other config)."""


def write_run(path, model: STEPModel, config_yaml: str, completed: bool):
    """Write the model's state and records to ``path`` (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = model.get_state()
    with h5py.File(tmp, "w") as f:
        f.attrs["schema"] = SCHEMA
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["code_version"] = code_version()
        f.attrs["config"] = config_yaml
        f.attrs["calibration"] = model.cal.dumps()
        f.attrs["calibration_sha256"] = model.cal.sha256()
        f.attrs["calibrated"] = bool(model.cal.calibrated)
        f.attrs["completed"] = bool(completed)
        f.attrs["L"] = model.L
        f.attrs["seed"] = model.seed
        f.attrs["gamma"] = state["gamma"]
        f.attrs["frame"] = state["frame"]
        f.attrs["n_avalanches"] = state["n_avalanches"]
        f.attrs["n_rearrangements"] = len(model.rearrangements)
        f.attrs["rng_state"] = json.dumps(state["rng"])
        f.attrs["fftw_wisdom"] = model.fft_wisdom.decode("ascii")  # "" for estimate plans
        g = f.create_group("params")
        for k, v in dataclasses.asdict(model.par).items():
            g.attrs[k] = v
        g.attrs["kappa_calibrated"] = model.kappa_calibrated
        g.attrs["self_clipped"] = model.self_clipped
        g.attrs["self_e1"] = model.self1
        g.attrs["self_e2"] = model.self2
        g.attrs["options"] = json.dumps(dataclasses.asdict(model.opt))
        for name, table in (("rearrangements", model.rearrangements), ("avalanches", model.avalanches)):
            g = f.create_group(name)
            for k, v in table.as_dict().items():
                d = g.create_dataset(k, data=v)
                d.attrs["doc"] = COLUMN_DOC.get(k, "")
        a = model.avalanches
        g = f.create_group("stress_strain")
        g["gamma"] = np.repeat(a["gamma"], 2)
        g["stress"] = np.stack([a["stress_before"], a["stress_after"]], axis=1).ravel()
        g.attrs["doc"] = ("sawtooth: per avalanche (gamma, stress after the loading step) then "
                          "(gamma, stress after the avalanche); stress = 2 mu <e2>")
        g = f.create_group("state")
        for k in model.STATE_FIELDS:
            g.create_dataset(k, data=state[k])
        if model.snapshot is not None:
            g = f.create_group("snapshot")
            for k, v in model.snapshot.items():
                if isinstance(v, np.ndarray):
                    g.create_dataset(k, data=v, compression="gzip", compression_opts=1)
                else:
                    g.attrs[k] = v
    os.replace(tmp, path)
    return path


def read_attrs(path):
    with h5py.File(path, "r") as f:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}


def check_schema(path):
    attrs = read_attrs(path)
    if attrs.get("schema") != SCHEMA or attrs.get("schema_version") != SCHEMA_VERSION:
        raise RunFileError(f"{path}: not a {SCHEMA} v{SCHEMA_VERSION} file "
                           f"(schema {attrs.get('schema')!r}, version {attrs.get('schema_version')!r})")
    return attrs


def restore(model: STEPModel, path):
    """Load state, RNG, tables and snapshot from a run file into ``model``."""
    attrs = check_schema(path)
    if int(attrs["L"]) != model.L or int(attrs["seed"]) != model.seed:
        raise RunFileError(f"{path}: L/seed {attrs['L']}/{attrs['seed']} != {model.L}/{model.seed}")
    if attrs["calibration_sha256"] != model.cal.sha256():
        raise RunFileError(f"{path}: written with another calibration (sha256 "
                           f"{attrs['calibration_sha256'][:12]} != {model.cal.sha256()[:12]})")
    with h5py.File(path, "r") as f:
        state = {k: f["state"][k][()] for k in model.STATE_FIELDS}
        state.update(gamma=attrs["gamma"], frame=attrs["frame"], n_avalanches=attrs["n_avalanches"],
                     rng=json.loads(attrs["rng_state"]))
        model.set_state(state)
        model.rearrangements = Table.from_dict(
            REARRANGEMENT_COLUMNS, {k: f["rearrangements"][k][()] for k, _ in REARRANGEMENT_COLUMNS})
        model.avalanches = Table.from_dict(
            AVALANCHE_COLUMNS, {k: f["avalanches"][k][()] for k, _ in AVALANCHE_COLUMNS})
        if "snapshot" in f:
            g = f["snapshot"]
            snap = {k: g[k][()] for k in g}
            snap.update({k: (int(v) if isinstance(v, (np.integer, int)) else v) for k, v in g.attrs.items()})
            model.snapshot = snap
        else:
            model.snapshot = None
    return attrs


def load_run(path):
    """A run file as plain dicts: attrs, params, rearrangements, avalanches,
    stress_strain, state, snapshot (None if absent)."""
    out = {"attrs": check_schema(path)}
    with h5py.File(path, "r") as f:
        out["params"] = dict(f["params"].attrs)
        for g in ("rearrangements", "avalanches", "stress_strain", "state"):
            out[g] = {k: f[g][k][()] for k in f[g]}
        if "snapshot" in f:
            out["snapshot"] = {k: f["snapshot"][k][()] for k in f["snapshot"]}
            out["snapshot"].update(dict(f["snapshot"].attrs))
        else:
            out["snapshot"] = None
    return out
