"""``step-lattice``: config validation, run files, resume, multirun."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.errors import HydraException
from omegaconf import OmegaConf

from step_epm.config_checks import ConfigError
from step_epm.lattice import cli  # noqa: F401  (registers the structured config)
from step_epm.lattice.output import RunFileError, load_run
from step_epm.lattice.runner import run_lattice

EXE = shutil.which("step-lattice") or str(Path(sys.executable).parent / "step-lattice")
QUIET = ["output.progress=false", "output.plots=false"]


def compose_cfg(overrides):
    with initialize_config_module(config_module="step_epm.conf", version_base="1.3"):
        return compose(config_name="lattice", overrides=overrides)


def run_in(out_dir, overrides):
    cfg = compose_cfg([f"output_dir={out_dir}"] + QUIET + overrides)
    return run_lattice(OmegaConf.to_object(cfg), OmegaConf.to_yaml(cfg, resolve=True))


def cli_run(args, cwd, timeout=120):
    env = dict(os.environ, MPLBACKEND="Agg")
    return subprocess.run([EXE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def test_default_config_and_output_dir_follow_from_config():
    cfg = OmegaConf.to_object(compose_cfg(["lattice.L=32", "seed=4", "lattice_model=classic"]))
    assert cfg.output_dir == "outputs/lattice/default/classic_L32_seed4"
    assert (cfg.model.trigger, cfg.model.softness, cfg.model.volumetric) == ("e2", False, False)
    cfg = OmegaConf.to_object(compose_cfg([]))
    assert cfg.output_dir == "outputs/lattice/default/step_L64_seed0"
    assert (cfg.model.trigger, cfg.model.softness, cfg.model.volumetric) == ("eps_dev", True, True)


@pytest.mark.parametrize("override,field", [
    ("lattice.L=4", "lattice.L"),
    ("lattice.threads=0", "lattice.threads"),
    ("lattice.realspace_max_sources=-1", "lattice.realspace_max_sources"),
    ("lattice.transient_budget=-1", "lattice.transient_budget"),
    ("lattice.fft_planner=patient", "lattice.fft_planner"),
    ("model.trigger=sxy", "model.trigger"),
    ("model.elastic=soft", "model.elastic"),
    ("model.name='a b'", "model.name"),
    ("run.gamma_end=-0.1", "run.gamma_end"),
    ("run.max_frames=0", "run.max_frames"),
    ("checkpoint.keep=-1", "checkpoint.keep"),
    ("checkpoint.every_seconds=0", "checkpoint.every_seconds"),
    ("seed=-3", "seed"),
    ("calibration=/nonexistent/cal.json", "calibration"),
])
def test_bad_config_is_refused_naming_the_field(override, field):
    with pytest.raises(ConfigError) as exc:
        OmegaConf.to_object(compose_cfg([override]))
    assert str(exc.value).startswith(f"{field} = ")


@pytest.mark.parametrize("override,field", [("lattice.L=abc", "lattice.L"),
                                            ("model.softness=maybe", "model.softness"),
                                            ("lattice.size=3", "lattice.size")])
def test_mistyped_config_is_refused_naming_the_field(override, field):
    with pytest.raises(HydraException) as exc:
        OmegaConf.to_object(compose_cfg([override]))
    assert field.split(".")[-1] in str(exc.value)


def test_cli_writes_a_self_describing_run_file(tmp_path):
    out = tmp_path / "run"
    res = cli_run(["lattice.L=16", "run.gamma_end=0.05", f"output_dir={out}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    f = out / "lattice.h5"
    run = load_run(f)
    a = run["attrs"]
    assert (a["schema"], a["schema_version"], a["completed"], a["calibrated"]) == ("step-lattice", 2, True, False)
    assert a["code_version"] and a["calibration_sha256"]
    cfg = yaml.safe_load(a["config"])
    assert cfg["lattice"]["L"] == 16 and cfg["output_dir"] == str(out)
    assert a["gamma"] >= 0.05 and run["avalanches"]["size"].sum() == run["rearrangements"]["site_x"].size
    with h5py.File(f) as h:
        assert h["rearrangements/S_before"].attrs["doc"]
        assert h["state/S"].shape == (16, 16)
    for png in ("avalanche_sizes.png", "stress_strain.png", "avalanche_maps.png"):
        assert (out / png).stat().st_size > 1000
    assert (out / "summary.json").is_file() and not list(out.glob("**/*.tmp"))


def test_cli_refuses_bad_config_naming_the_field(tmp_path):
    res = cli_run(["lattice.L=2", f"output_dir={tmp_path / 'x'}"], cwd=tmp_path)
    assert res.returncode != 0
    assert "lattice.L = 2 is outside the allowed range" in res.stderr
    assert not (tmp_path / "x" / "lattice.h5").exists()


def test_multirun_over_seeds(tmp_path):
    res = cli_run(["--multirun", "seed=0,1", "lattice.L=16", "run.gamma_end=0.02", "output.plots=false"],
                  cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    S = [load_run(tmp_path / f"outputs/lattice/default/step_L16_seed{s}/lattice.h5")["state"]["S"]
         for s in (0, 1)]
    assert not np.array_equal(*S)


def same_results(fa, fb):
    """Every dataset and every result attribute of two run files is equal
    (the config may differ only in output_dir and the stopping keys)."""
    with h5py.File(fa) as a, h5py.File(fb) as b:
        names = []
        a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        nb = []
        b.visititems(lambda n, o: nb.append(n) if isinstance(o, h5py.Dataset) else None)
        assert sorted(names) == sorted(nb)
        for n in names:
            np.testing.assert_array_equal(a[n][()], b[n][()], err_msg=n)
        for k in ("gamma", "frame", "n_avalanches", "rng_state", "calibration_sha256", "code_version"):
            assert a.attrs[k] == b.attrs[k], k
        assert dict(a["snapshot"].attrs) == dict(b["snapshot"].attrs)


def test_resume_from_checkpoint_gives_the_uninterrupted_result(tmp_path):
    """A run whose newest files are lost (as after a kill) resumes from an
    intermediate checkpoint, ignores a half-written temporary file, and ends
    with the same bits as the uninterrupted run; extending gamma_end later
    continues from the final file to the same result as a longer run."""
    over = ["lattice.L=16", "checkpoint.every_avalanches=15", "checkpoint.keep=0"]
    full = run_in(tmp_path / "a", over + ["run.gamma_end=0.15"])
    cks = sorted((tmp_path / "a" / "checkpoints").glob("ckpt_*.h5"))
    assert len(cks) >= 4
    b = tmp_path / "b"
    (b / "checkpoints").mkdir(parents=True)
    shutil.copy(cks[len(cks) // 2], b / "checkpoints")
    (b / "lattice.h5.tmp").write_bytes(b"\x89HDF\r\n half-written")
    resumed = run_in(b, over + ["run.gamma_end=0.15"])
    same_results(full, resumed)
    assert not (b / "lattice.h5.tmp").exists()
    longer = run_in(tmp_path / "c", over + ["run.gamma_end=0.2"])
    extended = run_in(b, over + ["run.gamma_end=0.2"])
    same_results(longer, extended)


def test_measured_fft_plans_resume_to_the_uninterrupted_result(tmp_path):
    """With lattice.fft_planner=measure (and every frame transformed) the run
    file keeps the FFTW plans as wisdom; a resume from a checkpoint
    re-creates them and ends with the uninterrupted run's bits."""
    over = ["lattice.L=32", "lattice.fft_planner=measure", "lattice.realspace_max_sources=0",
            "lattice.transient_budget=0",
            "checkpoint.every_avalanches=10", "checkpoint.keep=0", "run.gamma_end=0.05"]
    full = run_in(tmp_path / "a", over)
    cks = sorted((tmp_path / "a" / "checkpoints").glob("ckpt_*.h5"))
    assert len(cks) >= 2
    b = tmp_path / "b"
    (b / "checkpoints").mkdir(parents=True)
    shutil.copy(cks[len(cks) // 2], b / "checkpoints")
    run_in(tmp_path / "other", over)  # another measured planning in between
    resumed = run_in(b, over)
    same_results(full, resumed)
    with h5py.File(full) as fa, h5py.File(resumed) as fb, h5py.File(cks[0]) as fc:
        assert fa.attrs["fftw_wisdom"].startswith("(fftw-3")
        assert fa.attrs["fftw_wisdom"] == fb.attrs["fftw_wisdom"] == fc.attrs["fftw_wisdom"]


def test_resume_refuses_another_config(tmp_path):
    run_in(tmp_path, ["lattice.L=16", "run.gamma_end=0.01"])
    with pytest.raises(RunFileError, match=r"model\.volumetric"):
        run_in(tmp_path, ["lattice.L=16", "run.gamma_end=0.02", "model.volumetric=false"])


def test_killed_run_resumes_to_the_same_result(tmp_path):
    """SIGKILL the CLI after its first checkpoint, rerun the same command: the
    result equals an uninterrupted (in-process) run of the same config."""
    args = ["lattice.L=24", "run.gamma_end=0.4", "checkpoint.every_avalanches=25", "output.plots=false",
            "output.progress=false"]
    out = tmp_path / "killed"
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.Popen([EXE, *args, f"output_dir={out}"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list((out / "checkpoints").glob("ckpt_*.h5")):
            assert proc.poll() is None, "run ended before its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "lattice.h5").exists(), "killed too late: the run had finished"
    res = cli_run([*args, f"output_dir={out}"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming from" in res.stdout + res.stderr
    reference = run_in(tmp_path / "ref", [a for a in args if not a.startswith("output.")])
    same_results(reference, out / "lattice.h5")
