"""Trajectory file: schema, reader, export, and resume after SIGKILL
(issue 3 parts 3-4, 7).

The resume tests run ``python -m step_epm.particles.cli`` (the code path of
``step-particles``) in a subprocess that SIGKILLs itself at a chosen point
(the STEP_PARTICLES_KILL_AT hook of particles/aqs.py): after the k-th
commit, after a step's rows are written but before they are committed,
and in the middle of an avalanche; one more is killed from outside at an
arbitrary moment. The same command is then run again and the finished
trajectory must equal an uninterrupted run's bit for bit (every dataset
except the wall-clock timings), at the same thread count.
"""

import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from step_epm.particles import jammed_packing
from step_epm.particles.aqs import run_aqs
from step_epm.particles.config import OutputConfig, ParticlesConfig, ShearConfig, SystemConfig
from step_epm.particles.export import export_avalanche, export_step, read_extxyz_cell
from step_epm.particles.trajectory import (SCHEMA, Trajectory, TrajectoryError, check_file,
                                           validate)

# seed with multi-frame avalanches (see tests/test_particles_aqs.py)
N, D_GAMMA, GAMMA_END, SEED = 64, 2e-3, 0.04, 5
OVERRIDES = [f"system.n={N}", f"system.seed={SEED}", f"shear.d_gamma={D_GAMMA}", f"shear.gamma_end={GAMMA_END}",
             "output.plots=false", "output.progress=false", "output.segment_steps=4"]
TIMEOUT = 240


@pytest.fixture(scope="module", autouse=True)
def warm_kernels():
    """Compile / load the numba kernels once so subprocesses find them cached."""
    jammed_packing(32, 0.9, seed=1)


def _env(kill_at=None):
    env = dict(os.environ)
    env.update(MPLBACKEND="Agg", NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2",
               PYTHONUNBUFFERED="1")
    env.pop("STEP_PARTICLES_KILL_AT", None)
    if kill_at:
        env["STEP_PARTICLES_KILL_AT"] = kill_at
    return env


def _cli(out, kill_at=None, extra=()):
    cmd = [sys.executable, "-m", "step_epm.particles.cli", *OVERRIDES, *extra,
           f"output_dir={out}"]
    return subprocess.run(cmd, env=_env(kill_at), capture_output=True, text=True, timeout=TIMEOUT,
                          cwd=str(out.parent))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of the same config, in this process."""
    out = tmp_path_factory.mktemp("ref") / "run"
    cfg = ParticlesConfig(system=SystemConfig(n=N, seed=SEED),
                          shear=ShearConfig(d_gamma=D_GAMMA, gamma_end=GAMMA_END),
                          output=OutputConfig(plots=False, progress=False), output_dir=str(out))
    return run_aqs(cfg, "reference").path


def _datasets(path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and not name.startswith("timing/"):
                out[name] = obj[()]
        f.visititems(visit)
        for k in ("n_steps", "n_positions", "n_frames", "n_avalanches", "config_hash"):
            out["@" + k] = f.attrs[k]
    return out


def assert_same_data(a, b):
    da, db = _datasets(a), _datasets(b)
    assert sorted(da) == sorted(db)
    for k in da:
        assert np.array_equal(da[k], db[k]), f"{k} differs"


# ---------------------------------------------------------------------------
# schema, reader, export
# ---------------------------------------------------------------------------

def test_file_passes_its_schema_check(reference):
    assert check_file(reference) == []
    validate(reference)
    with h5py.File(reference, "r") as f:
        assert f.attrs["schema"] == SCHEMA
        assert "code_version" in f.attrs and "reference" in f.attrs["config"]
        ds = f["particles/all/position/value"]
        assert ds.chunks is not None and ds.compression == "gzip" and ds.fletcher32
        # H5MD: every element's step/time is the shared one
        assert f["particles/all/box/edges/step"].id == f["particles/all/position/step"].id


def test_schema_check_reports_problems(reference, tmp_path):
    bad = tmp_path / "bad.h5"
    shutil.copy(reference, bad)
    with h5py.File(bad, "r+") as f:
        del f["observables/energy"]
        f.attrs["n_frames"] = 10**6
    problems = check_file(bad)
    assert any("observables/energy" in p for p in problems)
    with pytest.raises(TrajectoryError, match="schema check"):
        validate(bad)


def test_foreign_and_truncated_files_give_clear_errors(reference, tmp_path):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(TrajectoryError, match="not a STEP AQS trajectory"):
        Trajectory(foreign)
    truncated = tmp_path / "truncated.h5"
    data = reference.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(TrajectoryError, match="truncated or damaged"):
        Trajectory(truncated)
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(TrajectoryError):
        Trajectory(text)
    newer = tmp_path / "newer.h5"
    shutil.copy(reference, newer)
    with h5py.File(newer, "r+") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(TrajectoryError, match="schema version 99"):
        Trajectory(newer)


def test_reader_api(reference):
    with Trajectory(reference) as t:
        n = t.n_particles
        assert t.radii.shape == (n,) and set(np.unique(t.species)) == {0, 1}
        e = t.observable("energy")
        assert e.shape == (t.n_steps,) and e.dtype == np.float64
        assert t.observable("stress").shape == (t.n_steps, 2, 2)
        x = t.positions(5)
        assert x.shape == (n, 2)
        st = t.state(5)
        assert np.array_equal(st.pos, x) and st.gamma == t.observable("gamma")[5]
        w = t.positions(5, wrapped=True)
        np.testing.assert_allclose(w, st.wrapped_positions(), atol=1e-12)
        a = t.avalanches()
        fr = t.frames(int(a["id"][0]))
        assert fr["position"].shape == (a["n_frames"][0], n, 2)
        assert (fr["step"] == a["step"][0]).all()
        with pytest.raises(KeyError):
            t.observable("nonsense")
        assert set(t.elastic()) == {"instantaneous", "relaxed"}


def test_export_extxyz_keeps_the_sheared_cell(reference, tmp_path):
    with Trajectory(reference) as t:
        step = int(t.step_numbers[-1])
        edges, radii, aid = t.edges(step), t.radii, int(t.avalanches()["id"][0])
        nfr = int(t.avalanches()["n_frames"][0])
        x = t.positions(step, wrapped=True)
    assert edges[1, 0] != 0.0  # the box is sheared
    out = export_step(reference, step, tmp_path / "s.xyz", reference_step=0)
    cell = read_extxyz_cell(out)
    np.testing.assert_allclose(cell[:2, :2], edges, rtol=1e-15)
    lines = out.read_text().splitlines()
    assert int(lines[0]) == len(radii) and len(lines) == len(radii) + 2
    assert 'pbc="T T F"' in lines[1] and "Properties=species:S:1:type:I:1:pos:R:3:radius:R:1" in lines[1]
    xyz = np.array([ln.split()[2:4] for ln in lines[2:]], float)
    np.testing.assert_allclose(xyz, x, atol=1e-12)
    multi = export_avalanche(reference, aid, tmp_path / "a.xyz")
    assert multi.read_text().count("Lattice=") == nfr + 1
    ase_io = pytest.importorskip("ase.io")
    atoms = ase_io.read(out)
    np.testing.assert_allclose(atoms.cell.array[:2, :2], edges, rtol=1e-12)
    np.testing.assert_allclose(atoms.positions[:, :2], x, atol=1e-12)
    assert len(ase_io.read(multi, index=":")) == nfr + 1


# ---------------------------------------------------------------------------
# resume after SIGKILL
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("kill_at", ["commit:6", "write:9", "frame:1"])
def test_resume_after_kill_is_identical(reference, tmp_path, kill_at):
    out = tmp_path / "run"
    killed = _cli(out, kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (out / "trajectory.h5").exists()
    resumed = _cli(out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert check_file(out / "trajectory.h5") == []
    assert_same_data(reference, out / "trajectory.h5")
    assert not (out / "segments").exists()


def test_resume_after_kills_at_arbitrary_moments(reference, tmp_path):
    """Killed from outside twice at whatever point it has reached, then finished."""
    out = tmp_path / "run"
    out.parent.mkdir(exist_ok=True)
    for delay in (0.7, 1.3):
        cmd = [sys.executable, "-m", "step_epm.particles.cli", *OVERRIDES, f"output_dir={out}"]
        p = subprocess.Popen(cmd, env=_env(), cwd=str(tmp_path), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        t0 = time.monotonic()
        while not (out / "segments").exists() and time.monotonic() - t0 < TIMEOUT:
            if p.poll() is not None:
                break
            time.sleep(0.05)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=TIMEOUT)
    done = _cli(out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_data(reference, out / "trajectory.h5")


def test_damaged_part_file_is_recomputed(reference, tmp_path):
    out = tmp_path / "run"
    assert _cli(out, "commit:6").returncode == -signal.SIGKILL
    part = out / "segments" / "open.h5.part"
    data = bytearray(part.read_bytes())
    data[: len(data) // 2] = b"\0" * (len(data) // 2)  # superblock gone
    part.write_bytes(bytes(data))
    done = _cli(out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "discarding unreadable part file" in done.stdout + done.stderr
    assert_same_data(reference, out / "trajectory.h5")


def test_other_config_in_the_same_directory_is_refused(reference, tmp_path):
    out = tmp_path / "run"
    assert _cli(out, "commit:2").returncode == -signal.SIGKILL
    other = _cli(out, extra=["system.seed=6"])
    assert other.returncode == 3
    assert "another config" in other.stderr
    assert "Traceback" not in other.stderr


def test_damaged_complete_segment_gives_a_clear_error(tmp_path):
    out = tmp_path / "run"
    assert _cli(out, "commit:5").returncode == -signal.SIGKILL
    seg = sorted((out / "segments").glob("seg-*.h5"))[0]
    seg.write_bytes(seg.read_bytes()[:200])
    again = _cli(out)
    assert again.returncode == 3
    assert "truncated or damaged" in again.stderr and "Traceback" not in again.stderr


def test_a_running_directory_is_not_run_twice(tmp_path):
    """A second process (here: a second lock) on the same run directory is refused."""
    from step_epm.particles.aqs import header_for
    from step_epm.particles.trajectory import SegmentStore
    cfg = ParticlesConfig(system=SystemConfig(n=N, seed=SEED),
                          shear=ShearConfig(d_gamma=D_GAMMA, gamma_end=GAMMA_END),
                          output=OutputConfig(plots=False, progress=False),
                          output_dir=str(tmp_path / "run"))
    holder = SegmentStore(tmp_path / "run", header_for(cfg, ""), 4, 4)
    holder.lock()
    try:
        with pytest.raises(TrajectoryError, match="in use by another running process"):
            run_aqs(cfg)
    finally:
        holder.unlock()


def test_sparse_positions_resume_and_match(reference, tmp_path):
    """output.position_every = 3: stored steps are the multiples of 3 plus each
    segment's last step; a killed run resumes from its last stored step and
    every stored number equals the every-step reference."""
    out = tmp_path / "run"
    extra = ["output.position_every=3"]
    assert _cli(out, "commit:7", extra).returncode == -signal.SIGKILL
    done = _cli(out, extra=extra)
    assert done.returncode == 0, done.stderr[-3000:]
    path = out / "trajectory.h5"
    assert check_file(path) == []
    with Trajectory(path) as t, Trajectory(reference) as r:
        ps = t.position_steps
        n = int(t.step_numbers[-1])
        expected = sorted(set(range(0, n + 1, 3)) | set(range(3, n + 1, 4)) | {n})
        assert list(ps) == expected
        for s in ps:
            assert np.array_equal(t.positions(int(s)), r.positions(int(s)))
        for k in ("energy", "stress", "frame", "avalanche", "iterations"):
            assert np.array_equal(t.observable(k), r.observable(k)), k
        assert np.array_equal(t.f["particles/avalanche/position/value"][()],
                              r.f["particles/avalanche/position/value"][()])
