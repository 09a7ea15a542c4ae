"""``step-particles``: structured configs, presets, run directory, launchers
(issue 3 parts 5-6, 7).

Config checks run in-process through Hydra's compose API (the same config
tree as the console script); the command line itself, the joblib multirun
and submitit's local launcher run as subprocesses on a tiny system.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from step_epm.config_checks import ConfigError
from step_epm.particles import jammed_packing
from step_epm.particles.cli import validate
from step_epm.particles.config import physics_hash
from step_epm.particles.trajectory import Trajectory, check_file

TINY = ["system.n=32", "shear.d_gamma=1e-3", "shear.gamma_end=0.003", "output.progress=false"]
TIMEOUT = 300


def _compose(overrides=(), hydra_cfg=False):
    with initialize_config_module(config_module="step_epm.conf", version_base="1.3"):
        return compose(config_name="particles", overrides=list(overrides),
                       return_hydra_config=hydra_cfg)


def _env():
    env = dict(os.environ)
    env.update(MPLBACKEND="Agg", NUMBA_THREADING_LAYER="workqueue", NUMBA_NUM_THREADS="2")
    env.pop("STEP_PARTICLES_KILL_AT", None)
    return env


def _cli(args, cwd):
    return subprocess.run([sys.executable, "-m", "step_epm.particles.cli", *args], cwd=str(cwd),
                          env=_env(), capture_output=True, text=True, timeout=TIMEOUT)


@pytest.fixture(scope="module", autouse=True)
def warm_kernels():
    jammed_packing(32, 0.9, seed=0)


def test_default_is_the_small_preset():
    cfg = validate(_compose())
    assert (cfg.system.n, cfg.system.phi) == (256, 0.9)
    assert (cfg.shear.d_gamma, cfg.shear.gamma_end) == (1e-3, 0.2)
    assert cfg.minimizer.ftol == 1e-12 and cfg.avalanche.frame_spacing == 0.15


@pytest.mark.parametrize("preset, n, dg, gend", [("paper_n4000", 4000, 1e-4, 2.0),
                                                 ("paper_n1e5", 100_000, 1e-5, 0.1),
                                                 ("small", 256, 1e-3, 0.2)])
def test_presets(preset, n, dg, gend):
    cfg = validate(_compose([f"particles={preset}", "system.seed=7"]))
    assert (cfg.system.n, cfg.shear.d_gamma, cfg.shear.gamma_end, cfg.system.seed) == (n, dg, gend, 7)
    assert cfg.shear.n_steps == round(gend / dg)


def test_run_directory_follows_from_the_config():
    a = _compose(["system.seed=3"], hydra_cfg=True)
    b = _compose(["system.seed=3", "output.plots=false", "output.segment_steps=7"], hydra_cfg=True)
    c = _compose(["system.seed=3", "minimizer.ftol=1e-11"], hydra_cfg=True)
    da = OmegaConf.select(a, "output_dir")
    assert da.endswith(physics_hash(validate(_compose(["system.seed=3"]))))
    assert "n256" in da and "seed3" in da
    assert OmegaConf.select(a, "hydra.run.dir") == da
    assert OmegaConf.select(b, "output_dir") == da  # plots / segments do not change the data
    assert OmegaConf.select(c, "output_dir") != da


BAD = [("system.n=-4", "system.n"), ("system.n=8", "system.n"), ("system.phi=0", "system.phi"),
       ("system.phi=1.0", "system.phi"), ("system.phi=1.7", "system.phi"),
       ("shear.d_gamma=0", "shear.d_gamma"), ("shear.d_gamma=-1e-3", "shear.d_gamma"),
       ("shear.gamma_end=1e-4", "shear.gamma_end"), ("minimizer.ftol=-1", "minimizer.ftol"),
       ("system.seed=-1", "system.seed"), ("avalanche.frame_spacing=0", "avalanche.frame_spacing"),
       ("avalanche.sd_eta=1.5", "avalanche.sd_eta"), ("avalanche.energy_tol=-1", "avalanche.energy_tol"),
       ("output.position_every=0", "output.position_every"),
       ("output.compression=12", "output.compression")]


@pytest.mark.parametrize("override, field", BAD)
def test_bad_values_are_refused_with_the_field_named(override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")) as exc:
        validate(_compose([override]))
    assert "allowed range" in str(exc.value)


@pytest.mark.parametrize("override, key", [("foo=1", "foo"), ("system.nn=5", "nn"),
                                           ("system.n=abc", "system.n"),
                                           ("shear.d_gamma=fast", "shear.d_gamma")])
def test_unknown_keys_and_wrong_types_are_refused(override, key):
    with pytest.raises(ConfigCompositionException) as exc:
        _compose([override])
    text = str(exc.value) + str(exc.value.__cause__)
    assert key in text


def test_appended_unknown_key_is_refused():
    with pytest.raises(ConfigError, match=r"system\.foo"):
        validate(_compose(["+system.foo=1"]))


def test_cli_refuses_a_bad_config_before_work(tmp_path):
    r = _cli(["system.phi=1.5", f"output_dir={tmp_path / 'bad'}"], tmp_path)
    assert r.returncode == 2
    assert "system.phi" in r.stderr and "allowed range" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "bad" / "trajectory.h5").exists()


def test_cli_run_writes_trajectory_plots_and_log(tmp_path):
    out = tmp_path / "run"
    r = _cli([*TINY, f"output_dir={out}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert check_file(out / "trajectory.h5") == []
    assert (out / "stress_strain.png").stat().st_size > 0
    assert (out / "step-particles.log").exists() and (out / ".hydra" / "config.yaml").exists()
    with Trajectory(out / "trajectory.h5") as t:
        assert t.n_steps == 4 and "n: 32" in t.config.replace("'n'", "n")
    again = _cli([*TINY, f"output_dir={out}", "output.plots=false"], tmp_path)
    assert again.returncode == 0 and "nothing to do" in again.stdout + again.stderr


def test_multirun_over_seeds_with_joblib(tmp_path):
    r = _cli(["--multirun", *TINY, "output.plots=false", "system.seed=0,1",
              "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = sorted(Path(tmp_path, "outputs", "particles").glob("n32_*_seed*/trajectory.h5"))
    assert [p.parent.name.split("_seed")[1][0] for p in runs] == ["0", "1"]
    with Trajectory(runs[0]) as a, Trajectory(runs[1]) as b:
        assert a.config_hash != b.config_hash


def test_slurm_preset_composes():
    cfg = _compose(["hydra/launcher=slurm"], hydra_cfg=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.cpus_per_task >= 1 and launcher.timeout_min > 0
    local = _compose(["hydra/launcher=local_submitit"], hydra_cfg=True).hydra.launcher
    assert local._target_.endswith("LocalLauncher")


def test_multirun_with_submitit_local_launcher(tmp_path):
    """The SLURM code path (submitit) with its local executor."""
    r = _cli(["--multirun", *TINY, "output.plots=false", "system.seed=2",
              "hydra/launcher=local_submitit"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = list(Path(tmp_path, "outputs", "particles").glob("n32_*_seed2_*/trajectory.h5"))
    assert len(runs) == 1 and check_file(runs[0]) == []
