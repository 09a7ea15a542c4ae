"""Test session settings: headless plots, pinned numba threading.

The threading layer and thread count are fixed before numba is imported so
that results and timings do not depend on the machine's defaults.
"""
import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("NUMBA_THREADING_LAYER", "workqueue")
os.environ.setdefault("NUMBA_NUM_THREADS", "2")


import dataclasses  # noqa: E402

import pytest  # noqa: E402
from small_run_params import SMALL_RUN  # noqa: E402


@dataclasses.dataclass
class SmallRun:
    """A small AQS trajectory with a softness model and its analysis file."""
    traj: object          # Path of trajectory.h5
    training_set: object  # particles.training_set.TrainingSet
    model: object         # particles.softness.SoftnessModel
    model_path: object    # Path of model.h5
    analysis: object      # Path of analysis.h5 (next to the trajectory)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """One small trajectory + tiny softness ensemble + analysis file, shared
    by the softness and calibration tests (read-only: copy before writing)."""
    from step_epm.particles.analysis_file import analyse_trajectory
    from step_epm.particles.aqs import run_aqs
    from step_epm.particles.config import (OutputConfig, ParticlesConfig, ShearConfig,
                                           SystemConfig)
    from step_epm.particles.softness import EnsembleParams, train_ensemble
    from step_epm.particles.softness_config import TrainingConfig
    from step_epm.particles.training_set import build_training_set

    p = SMALL_RUN
    cfg = ParticlesConfig(system=SystemConfig(n=p["n"], seed=p["seed"]),
                          shear=ShearConfig(d_gamma=p["d_gamma"], gamma_end=p["gamma_end"]),
                          output=OutputConfig(plots=False, progress=False),
                          output_dir=str(tmp_path_factory.mktemp("small_run") / "run"))
    traj = run_aqs(cfg, "test: small run").path
    tset = build_training_set([traj], TrainingConfig(quiet_steps=p["quiet_steps"]))
    feats = tset.features([traj], p["r_lists"])
    model = train_ensemble(feats, tset.label, tset.species, p["r_lists"],
                           EnsembleParams(n_subsets=2, n_seeds=1, subset_size=10))
    mpath = traj.parent / "model.h5"
    model.save(mpath)
    return SmallRun(traj, tset, model, mpath, analyse_trajectory(traj, model, mpath))
