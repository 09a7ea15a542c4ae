"""AQS loop and avalanches (SPEC.md section 1; issue 3 parts 1-2, 7).

A 64-disk run (d_gamma = 2e-3, 20 steps, seed SEED) has a few avalanches,
some with several frames (the seed is chosen for that: if an engine change
alters the packing, pick a seed whose run has multi-frame avalanches). The
tolerances:
- frames: the descent saves a frame at the first accepted state at
  distance >= frame_spacing from the previous frame, so each distance lies
  in [frame_spacing, frame_spacing + one step], the step bounded by
  dt_last |F| / (1 - eta) (recorded as distance_bound);
- energy along an avalanche: the descent never accepts a step that passes
  the 1-D minimum along F (F'.F > 0) with a small force turn, which makes
  each accepted step downhill up to round-off; the energy is a sum of
  ~N * z/2 pair terms of size <= |E|, so round-off is below
  ENERGY_ROUNDOFF = 64 * N * eps * |E|.
"""

import dataclasses

import numpy as np
import pytest

from step_epm.particles import NewtonSolver, evaluate
from step_epm.particles.aqs import relax_avalanche, run_aqs
from step_epm.particles.config import (AvalancheConfig, OutputConfig, ParticlesConfig,
                                       ShearConfig, SystemConfig)
from step_epm.particles.trajectory import STEP_FIELDS, Trajectory, check_file

N = 64
SEED = 5


def small_config(out, **kw) -> ParticlesConfig:
    cfg = ParticlesConfig(system=SystemConfig(n=N, seed=SEED),
                          shear=ShearConfig(d_gamma=2e-3, gamma_end=0.04),
                          output=OutputConfig(segment_steps=6, plots=False, progress=False),
                          output_dir=str(out))
    for k, v in kw.items():
        cfg = dataclasses.replace(cfg, **{k: v})
    return cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = small_config(tmp_path_factory.mktemp("aqs") / "run")
    summary = run_aqs(cfg, "test: aqs")
    return cfg, summary.path


def test_run_has_avalanches_and_passes_schema(run):
    cfg, path = run
    assert check_file(path) == []
    with Trajectory(path) as t:
        assert t.complete
        assert t.n_steps == cfg.shear.n_steps + 1
        assert t.n_avalanches >= 2, "the test run must contain avalanches"
        assert t.n_positions == t.n_steps  # position_every = 1: every step stored


def test_step_records(run):
    cfg, path = run
    with Trajectory(path) as t:
        obs = t.steps()
        av = t.avalanches()
    n = cfg.shear.n_steps
    assert np.array_equal(obs["step"], np.arange(n + 1))
    np.testing.assert_allclose(obs["gamma"], np.arange(n + 1) * cfg.shear.d_gamma, rtol=0,
                               atol=1e-14)
    assert obs["converged"].all()
    assert (obs["max_force"] < cfg.minimizer.ftol).all()
    assert np.allclose(obs["stress"], np.swapaxes(obs["stress"], 1, 2))
    np.testing.assert_allclose(obs["pressure"], -0.5 * (obs["stress"][:, 0, 0] + obs["stress"][:, 1, 1]))
    # avalanche bookkeeping: ids, cumulative counts, frame counter
    is_av = obs["avalanche"] >= 0
    assert np.array_equal(np.flatnonzero(is_av), av["step"])
    assert np.array_equal(obs["avalanche"][is_av], av["id"])
    assert np.array_equal(obs["n_avalanches"], np.cumsum(is_av))
    assert (obs["event_reason"][is_av] > 0).all() and (obs["event_reason"][~is_av] == 0).all()
    nfr = np.zeros(n + 1, int)
    nfr[av["step"]] = av["n_frames"]
    assert obs["frame"][0] == 0
    assert np.array_equal(np.diff(obs["frame"]), 1 + nfr[1:])
    assert np.array_equal(av["first_frame"], obs["frame"][av["step"] - 1] + 1)


def test_elastic_steps_are_below_the_detection_thresholds(run):
    cfg, path = run
    with Trajectory(path) as t:
        obs = t.steps()
    el = obs["avalanche"] < 0
    assert (obs["nonaffine_max"][el] <= cfg.avalanche.nonaffine_threshold).all()
    assert (obs["dissipation"][el] <= cfg.avalanche.energy_tol).all()


def test_frames_equidistant_and_time_monotonic(run):
    cfg, path = run
    spacing = cfg.avalanche.frame_spacing
    with Trajectory(path) as t:
        av = t.avalanches()
        seen = 0
        for aid in av["id"]:
            fr = t.frames(int(aid))
            assert fr["time"][0] == 0.0 and fr["distance"][0] == 0.0
            assert np.all(np.diff(fr["time"]) > 0)
            pos, d0 = fr["position"], fr["distance"][1:]
            d = np.sqrt(np.sum((pos[1:] - pos[:-1]) ** 2, axis=(1, 2)))
            np.testing.assert_allclose(d, d0, rtol=1e-12)
            assert np.all(d >= spacing)
            assert np.all(d <= fr["distance_bound"][1:])
            seen += len(d)
            # the end (step's minimised state) is closer than one spacing to the last frame
            end = t.positions(int(fr["step"][0]))
            assert np.linalg.norm(end - fr["position"][-1]) < spacing * (1 + 1e-9) + 0.1 * spacing
            assert av["duration"][list(av["id"]).index(aid)] >= fr["time"][-1]
        assert seen >= 1, "no frame spacing was tested"


def test_energy_does_not_rise_along_an_avalanche(run):
    cfg, path = run
    with Trajectory(path) as t:
        obs = t.steps()
        for aid, step in zip(*(t.avalanches()[k] for k in ("id", "step"))):
            fr = t.frames(int(aid))
            e = np.append(fr["energy"], obs["energy"][step])
            tol = 64 * N * np.finfo(float).eps * np.abs(e).max()
            assert np.all(np.diff(e) <= tol), np.diff(e)


def test_avalanche_end_meets_tolerance_and_is_the_stored_state(run):
    """Recompute each avalanche from the stored previous state: the frames
    and the end state are the stored ones, bit for bit, and the end meets
    the force tolerance."""
    cfg, path = run
    with Trajectory(path) as t:
        av = t.avalanches()
        for aid, step in zip(av["id"], av["step"]):
            prev = t.state(int(step) - 1)
            stored = t.state(int(step))
            again = relax_avalanche(prev.sheared(cfg.shear.d_gamma), NewtonSolver(), cfg)
            assert np.array_equal(again.final.pos, stored.pos)
            assert again.final.gamma == stored.gamma
            fr = t.frames(int(aid))
            assert np.array_equal(again.frames["position"], fr["position"])
            assert np.array_equal(again.frames["time"], fr["time"])
            ev = evaluate(stored)
            assert np.sqrt(np.max(np.sum(ev.forces**2, axis=1))) < cfg.minimizer.ftol
            assert again.result.converged


def test_fixed_seed_is_deterministic(run, tmp_path):
    cfg, path = run
    other = run_aqs(dataclasses.replace(cfg, output_dir=str(tmp_path / "again"),
                                        output=OutputConfig(segment_steps=1000, plots=False,
                                                            progress=False)), "test: again")
    with Trajectory(path) as a, Trajectory(other.path) as b:
        for k in STEP_FIELDS:
            assert np.array_equal(a.observable(k), b.observable(k)), k
        for s in a.position_steps:
            assert np.array_equal(a.positions(int(s)), b.positions(int(s)))
        for k, v in a.avalanches().items():
            assert np.array_equal(v, b.avalanches()[k]), k
        assert np.array_equal(a.f["particles/avalanche/position/value"][()],
                              b.f["particles/avalanche/position/value"][()])


def test_detection_switches(tmp_path):
    """With every test disabled no step is an avalanche unless its direct
    minimisation fails; the config refuses non-positive thresholds."""
    cfg = small_config(tmp_path / "off", shear=ShearConfig(d_gamma=2e-3, gamma_end=0.012),
                       avalanche=AvalancheConfig(energy_tol=None, nonaffine_threshold=None))
    with Trajectory(run_aqs(cfg).path) as t:
        obs = t.steps()
        assert np.all((obs["avalanche"] < 0) | (obs["event_reason"] == 8))
    with pytest.raises(ValueError, match="avalanche.nonaffine_threshold"):
        AvalancheConfig(nonaffine_threshold=0.0)


def test_plots(run, tmp_path):
    from step_epm.particles.plots import plot_avalanche, plot_stress_strain
    cfg, path = run
    a = plot_stress_strain(path, tmp_path / "ss.png")
    b = plot_avalanche(path, tmp_path / "av.png")
    assert a.stat().st_size > 10_000 and b.stat().st_size > 10_000
