"""Softness pipeline on a real (small) AQS trajectory: the frame sequence,
the training-set definitions (SPEC.md section 3), the per-frame analysis
file, the ``step-softness`` command line, its config errors, and resume
after SIGKILL at chosen points (STEP_SOFTNESS_KILL_AT hook of
particles/analysis_file.py).

The trajectory, training set and tiny model are the session fixture
``small_run`` of tests/conftest.py (N = 128, 120 steps, a few avalanches
with 15-30 rearrangers per species across their frames).
"""

import os
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest
from small_run_params import SMALL_RUN

from step_epm.config_checks import ConfigError
from step_epm.particles.analysis_file import FIELDS, SoftnessAnalysis, analyse_trajectory, validate
from step_epm.particles.rearrangements import local_deformation
from step_epm.particles.softness import SoftnessModel
from step_epm.particles.softness_config import TrainingConfig
from step_epm.particles.structure import structure_function_sets
from step_epm.particles.trajectory import Trajectory
from step_epm.particles.training_set import build_training_set

QUIET = SMALL_RUN["quiet_steps"]
R_LISTS = SMALL_RUN["r_lists"]
D_GAMMA = SMALL_RUN["d_gamma"]
TINY = ["ensemble.subset_size=10", "ensemble.n_subsets=2", "ensemble.n_seeds=1",
        "ensemble.r_lists=[[0.8,3.0,0.2],[0.9,3.0,0.3]]", f"training.quiet_steps={QUIET}",
        "output.progress=false", "output.block=16"]
TIMEOUT = 300


@pytest.fixture(scope="module")
def traj(small_run):
    return small_run.traj


@pytest.fixture(scope="module")
def tset(small_run):
    return small_run.training_set


@pytest.fixture(scope="module")
def model(small_run):
    return small_run.model, small_run.model_path


def test_frame_sequence_is_the_global_order(traj):
    with Trajectory(traj) as t:
        seq = t.frame_sequence()
        # every step stored: the global frames are exactly 0..F-1
        assert np.array_equal(seq["frame"], np.arange(t.n_steps + t.n_frames))
        assert np.count_nonzero(seq["kind"] == 0) == t.n_steps
        table = t.avalanches()
        assert len(table["id"]) > 0
        for aid, first, nf, step in zip(table["id"], table["first_frame"], table["n_frames"],
                                        table["step"]):
            rows = np.flatnonzero(seq["avalanche"] == aid)
            # its frames, then its step's minimised state, consecutively
            assert np.array_equal(seq["frame"][rows], first + np.arange(nf + 1))
            assert np.all(seq["kind"][rows[:-1]] == 1) and seq["kind"][rows[-1]] == 0
            assert np.all(seq["step"][rows] == step)
            fr = t.frames(int(aid))
            for j, r in enumerate(rows[:-1]):
                assert np.array_equal(t.sequence_position(1, seq["row"][r]), fr["position"][j])
        gamma = t.observable("gamma")
        assert np.array_equal(seq["gamma"], gamma[seq["step"]])


def test_training_set_follows_the_definitions(traj, tset):
    """Recompute every drawn sample's label from the trajectory itself."""
    p = TrainingConfig(quiet_steps=QUIET)
    with Trajectory(traj) as t:
        seq = t.frame_sequence()
        radii, (Lx, Ly) = t.radii, t.box_lengths
        species = t.species
        gamma = t.observable("gamma")
        d_soft = np.where(species == 0, p.d_soft_small, p.d_soft_large)
        at = {(k, r): i for i, (k, r) in enumerate(zip(seq["kind"], seq["row"]))}
        for fi, fr in enumerate(tset.frames):
            sel = tset.frame_of == fi
            i = at[(fr.kind, fr.row)]
            if fr.kind == 1:  # positives: this avalanche frame and the next one
                assert np.all(tset.label[sel] == 1)
                x0 = t.sequence_position(1, seq["row"][i])
                x1 = t.sequence_position(seq["kind"][i + 1], seq["row"][i + 1])
                d = local_deformation(x0, x1, radii, Lx, Ly, seq["gamma"][i], Lx, Ly,
                                      seq["gamma"][i + 1]).d2min
                assert np.all(d[tset.particle[sel]] > d_soft[tset.particle[sel]])
            else:  # negatives: quiet from step s - QUIET - 1 to s + 1
                assert np.all(tset.label[sel] == 0)
                s = fr.row
                for u in range(s - QUIET, s + 1):
                    d = local_deformation(t.positions(u), t.positions(u + 1), radii, Lx, Ly,
                                          gamma[u], Lx, Ly, gamma[u + 1]).d2min
                    assert np.all(d[tset.particle[sel]] < p.d_hard)
        assert np.array_equal(tset.species, species[tset.particle])
    for name, sp in (("small", 0), ("large", 1)):
        c = tset.counts[name]
        assert c["positive"] == c["negative"] > 0
        assert c["positive"] == min(c["positive_candidates"], c["negative_candidates"])
        assert np.count_nonzero((tset.species == sp) & (tset.label == 1)) == c["positive"]
        assert np.count_nonzero((tset.species == sp) & (tset.label == 0)) == c["negative"]


def test_training_features_are_the_source_frames_structure_functions(traj, tset):
    feats = tset.features([traj], R_LISTS)
    with Trajectory(traj) as t:
        (Lx, Ly), species = t.box_lengths, t.species
        for fi in (0, len(tset.frames) - 1):
            fr = tset.frames[fi]
            sel = np.flatnonzero(tset.frame_of == fi)
            g = structure_function_sets(t.sequence_position(fr.kind, fr.row), species, Lx, Ly,
                                        fr.gamma, R_LISTS)
            for l in range(len(R_LISTS)):
                assert np.array_equal(feats[l][sel], g[l][tset.particle[sel]])


def test_analysis_file_fields(traj, model, tmp_path):
    m, mpath = model
    out = analyse_trajectory(traj, m, mpath, tmp_path / "analysis.h5", block=16)
    validate(out)
    assert not (tmp_path / "analysis.h5.parts").exists()
    with SoftnessAnalysis(out) as a, Trajectory(traj) as t:
        seq = a.sequence()
        assert np.array_equal(seq["frame"], t.frame_sequence()["frame"])
        (Lx, Ly), radii = t.box_lengths, t.radii
        for i in (1, len(seq["frame"]) // 2, len(seq["frame"]) - 1):
            x0 = t.sequence_position(seq["kind"][i - 1], seq["row"][i - 1])
            x1 = t.sequence_position(seq["kind"][i], seq["row"][i])
            s = m.softness(x1, t.species, Lx, Ly, seq["gamma"][i])
            assert np.array_equal(a.field("softness", i), s.astype(np.float32))
            d = local_deformation(x0, x1, radii, Lx, Ly, seq["gamma"][i - 1], Lx, Ly,
                                  seq["gamma"][i])
            for k in ("d2min", "k", "e1", "e2", "eps_dev"):
                assert np.array_equal(a.field(k, i), getattr(d, k).astype(np.float32), equal_nan=True)
        assert np.all(np.isnan(a.field("d2min", 0)))
        # the (minimised state -> affinely strained start) pair is affine: D2min ~ 0
        starts = np.flatnonzero((seq["kind"] == 1) & (np.r_[0, seq["kind"][:-1]] == 0))
        assert starts.size
        for i in starts:
            assert np.nanmax(a.field("d2min", i)) < 1e-20
            assert np.allclose(a.field("e2", i), D_GAMMA / 2, atol=1e-9)
    # same trajectory and model: kept; another model: refused
    assert analyse_trajectory(traj, m, mpath, out) == out
    other = tmp_path / "other.h5"
    m.save(other)
    with h5py.File(other, "a") as f:
        f.attrs["code_version"] = "other"
    with pytest.raises(Exception, match="another trajectory or model"):
        analyse_trajectory(traj, m, other, out)


def _env(kill_at=None):
    env = dict(os.environ)
    env.update(MPLBACKEND="Agg", NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2",
               PYTHONUNBUFFERED="1")
    env.pop("STEP_SOFTNESS_KILL_AT", None)
    if kill_at:
        env["STEP_SOFTNESS_KILL_AT"] = kill_at
    return env


def _cli(traj, out, extra=(), kill_at=None):
    cmd = [sys.executable, "-m", "step_epm.particles.softness_cli", f"trajectories=[{traj}]",
           *TINY, *extra, f"output_dir={out}"]
    return subprocess.run(cmd, env=_env(kill_at), capture_output=True, text=True,
                          timeout=TIMEOUT, cwd=str(out.parent))


def _fields(path):
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in FIELDS}


@pytest.fixture(scope="module")
def cli_run(traj, model, tmp_path_factory):
    """An uninterrupted step-softness run (subprocess; kernels are warm) on a
    copy of the trajectory; returns (output dir, the copy)."""
    root = tmp_path_factory.mktemp("cli")
    copy = root / "t" / "trajectory.h5"
    copy.parent.mkdir()
    copy.write_bytes(traj.read_bytes())
    out = root / "soft"
    r = _cli(copy, out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, copy


def test_cli_outputs(cli_run):
    import json
    out, traj = cli_run
    m = SoftnessModel.load(out / "model.h5")
    assert m.n_hyperplanes(0) == m.n_hyperplanes(1) == 2 * 2 * 1
    assert m.provenance["trajectories"] == [str(traj.resolve())]
    summary = json.loads((out / "summary.json").read_text())
    for sp in ("small", "large"):
        d = summary["species"][sp]
        assert d["rearrangers"] > 0 and 0 <= d["frac_rearrangers_S_positive"] <= 1
    html = (out / "report.html").read_text()
    assert html.count("<img src='data:image/png;base64,") == 4
    validate(traj.with_name("analysis.h5"))


def test_cli_resume_after_kill_is_identical(cli_run, tmp_path):
    out0, traj = cli_run
    ref = _fields(traj.with_name("analysis.h5"))
    # a copy of the trajectory so that its analysis.h5 is written afresh
    t2 = tmp_path / "t" / "trajectory.h5"
    t2.parent.mkdir()
    t2.write_bytes(traj.read_bytes())
    out = tmp_path / "soft"
    model = "model=" + str(out0 / "model.h5")
    r = _cli(t2, out, [model], kill_at="block:3")
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    blocks = sorted((t2.parent / "analysis.h5.parts").glob("block-*.h5"))
    assert len(blocks) == 3 and not (t2.parent / "analysis.h5").exists()
    r = _cli(t2, out, [model], kill_at="merge:1")
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert not (t2.parent / "analysis.h5").exists()
    r = _cli(t2, out, [model])
    assert r.returncode == 0, r.stderr[-3000:]
    got = _fields(t2.with_name("analysis.h5"))
    for k in FIELDS:
        assert np.array_equal(got[k], ref[k], equal_nan=True), k


def _compose(overrides):
    from hydra import compose, initialize_config_module

    import step_epm.particles.softness_cli  # noqa: F401  (registers the schema)
    with initialize_config_module(config_module="step_epm.conf", version_base="1.3"):
        return compose(config_name="softness", overrides=overrides)


@pytest.mark.parametrize("override, field", [
    ("ensemble.val_fraction=1.5", "ensemble.val_fraction"),
    ("ensemble.C_grid=[1,0.1]", "ensemble.C_grid"),
    ("training.d_hard=0.01", "training.d_hard"),
    ("ensemble.r_lists=[[0.8,0.5,0.1]]", "ensemble.r_lists[0][1]"),
    ("output.block=0", "output.block"),
    ("+training.bogus=1", "training.bogus"),
])
def test_bad_config_names_the_field(traj, tmp_path, override, field):
    """The same validation step-softness runs before any work (in-process)."""
    from step_epm.particles.softness_cli import validate as validate_cfg

    with pytest.raises(ConfigError) as exc:
        validate_cfg(_compose([f"trajectories=[{traj}]", override,
                               f"output_dir={tmp_path / 'x'}"]))
    assert field in str(exc.value)


def test_bad_inputs_are_refused_with_exit_code_2(traj, tmp_path):
    """Through the command line: an unmatched pattern, and a trajectory that
    did not store every step (its committed position count is lowered)."""
    cmd = [sys.executable, "-m", "step_epm.particles.softness_cli",
           f"trajectories=[{tmp_path}/nothing/*.h5]", f"output_dir={tmp_path / 'x'}"]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 2 and "matches no file" in r.stderr
    sparse = tmp_path / "sparse" / "trajectory.h5"
    sparse.parent.mkdir()
    sparse.write_bytes(traj.read_bytes())
    with h5py.File(sparse, "a") as f:
        f.attrs["n_positions"] = f.attrs["n_positions"] - 1
    with pytest.raises(ConfigError, match="position_every"):
        build_training_set([sparse], TrainingConfig(quiet_steps=QUIET))
    cmd[3] = f"trajectories=[{sparse}]"
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 2 and "position_every" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "x" / "model.h5").exists()
