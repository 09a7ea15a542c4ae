"""step-calibrate end to end on the small real trajectory (session fixture
``small_run``): the calibration file validates and round-trips, the
lattice runs from it, required numbers that the small run cannot give are
flagged placeholders (and the file says it is not calibrated), the report
is written; bad configs and missing analysis files are refused before any
work with the field named.
"""

import math
import subprocess
import sys

import numpy as np
import pytest

from step_epm.calibrate.assemble import assemble, choose_site, site_samples
from step_epm.calibrate.config import CalibrateConfig, MeasureConfig, OutputConfig, SiteConfig
from step_epm.calibrate.extract import ExtractParams, measure
from step_epm.config_checks import ConfigError
from step_epm.lattice.calibration import (REQUIRED_SCALARS, load_calibration,
                                          placeholder_calibration)
from step_epm.particles.analysis_file import SoftnessAnalysis
from step_epm.particles.trajectory import Trajectory

FAST = ["measure.n_boot=10", "output.progress=false"]


def _compose(overrides):
    from hydra import compose, initialize_config_module

    import step_epm.calibrate.cli  # noqa: F401  (registers the schema)
    with initialize_config_module(config_module="step_epm.conf", version_base="1.3"):
        return compose(config_name="calibrate", overrides=overrides)


@pytest.fixture(scope="module")
def calibration(small_run, tmp_path_factory):
    """step-calibrate's run() in-process (the same code path as the CLI)."""
    from step_epm.calibrate.cli import run, validate

    out = tmp_path_factory.mktemp("calibrate") / "run"
    cfg = validate(_compose([f"trajectories=[{small_run.traj}]", *FAST, "site.size=3",
                             "site.sample_every=10", f"output_dir={out}"]))
    cal, path = run(cfg, "test config")
    return cal, path, out


def test_calibration_file_validates_and_round_trips(calibration, small_run):
    cal, path, out = calibration
    again = load_calibration(path)
    assert again.dumps() == cal.dumps()
    assert again.config == "test config"
    assert {i["path"] for i in again.inputs} == {str(small_run.traj), str(small_run.analysis)}
    for name in REQUIRED_SCALARS:
        q = again.scalars[name]
        assert math.isfinite(q.value)
        assert q.n > 0 or (q.flag and q.flag.startswith("placeholder"))
    with Trajectory(small_run.traj) as t:
        n_over_v = t.n_particles / np.prod(t.box_lengths)
        el = t.elastic()["relaxed"]
    assert again["number_density"] == pytest.approx(n_over_v, rel=1e-12)
    assert again["mu_relaxed"] == pytest.approx(el["mu"], rel=1e-12)
    # nu is recomputed from the (mean) lambda and mu, as the file requires
    assert again["nu_relaxed"] == pytest.approx(
        again["lambda_relaxed"] / (again["lambda_relaxed"] + 2 * again["mu_relaxed"]), rel=1e-12)
    assert again["site_size"] == 3.0 and "chosen" in again.scalars["site_size"].flag


def test_small_run_is_flagged_not_calibrated(calibration, small_run):
    """The small run has no isolated rearrangement: the strain-field and
    compression numbers are placeholders, named in the description."""
    cal, _, _ = calibration
    assert not cal.calibrated
    for name in ("compression_p", "softness_b"):
        assert cal.scalars[name].n == 0 and "placeholder" in cal.scalars[name].flag
        assert name in cal.description
    # the source strength from the far field of the frames with one rearranging
    # site: pi n_f c_dev / ((1 + nu) <|e_el|>); the stress drops' value beside it
    with Trajectory(small_run.traj) as t:
        n_av = t.n_avalanches
    q, c = cal.scalars["source_strength"], cal.scalars["c_dev_site"]
    assert q.n > 0 and c.n > 0 and q.flag is None
    meas = measure([(small_run.traj, small_run.analysis)], ExtractParams(n_boot=0))
    ev = site_samples([(small_run.traj, small_run.analysis)], meas, 3.0, sample_every=10).events
    want = math.pi * ev.frames.mean() * c.value / ((1 + cal["nu_relaxed"]) * np.hypot(*ev.e_el.T).mean())
    assert cal["source_strength"] == pytest.approx(want, rel=1e-6)
    assert cal.scalars["source_strength_drops"].n == n_av > 0
    ph = placeholder_calibration()
    assert cal["softness_b"] == ph["softness_b"]
    # placeholder times keep their value in frames of the measured time per frame
    dt, dt0 = cal["time_per_frame"], ph["time_per_frame"]
    assert cal.scalars["time_per_frame"].n > 0
    assert cal["compression_t_centre"] == pytest.approx(ph["compression_t_centre"] * dt / dt0)


def test_site_softness_samples(small_run, calibration):
    """P(S) of sites is the histogram of site means over the sampled minimised
    frames: recompute one frame's site means by hand."""
    cal, _, _ = calibration
    p_s = cal.curves["p_s"]
    assert np.sum(p_s["density"] * np.diff(p_s["edges"])) == pytest.approx(1.0, abs=1e-12)
    with Trajectory(small_run.traj) as t, SoftnessAnalysis(small_run.analysis) as a:
        seq = a.sequence()
        row = int(np.flatnonzero(seq["kind"] == 0)[10])
        x = t.sequence_position(0, seq["row"][row])
        S = a.field("softness", row).astype(float)
        Lx, Ly = t.box_lengths
    meas = measure([(small_run.traj, small_run.analysis)], ExtractParams(n_boot=5))
    got = site_samples([(small_run.traj, small_run.analysis)], meas, 3.0, sample_every=10)
    n1 = round(Lx / 3.0)
    # sites tile the (sheared) box in fractional coordinates
    s2 = x[:, 1] / Ly
    s1 = (x[:, 0] - seq["gamma"][row] * x[:, 1]) / Lx
    idx = (np.floor((s1 % 1) * n1).astype(int) + n1 * np.floor((s2 % 1) * n1).astype(int))
    want = np.array([S[idx == i].mean() for i in range(n1 * n1)])
    # (the numbering of sites is lattice_mapping.site_index's; compare as a set)
    assert np.allclose(np.sort(got.sites[n1 * n1: 2 * n1 * n1]), np.sort(want), rtol=0, atol=1e-12)
    assert got.n_frames == len(np.flatnonzero(seq["kind"] == 0)[::10])
    # site events: every particle run lies in exactly one event of its
    # onset cell; an event's e_el is the cell's stress at F0 over 2 mu
    # (virials summed by hand over the particles of the brute-force tiling)
    from step_epm.particles.potential import evaluate
    from step_epm.particles.state import State
    ev, runs = got.events, meas.runs[0]
    assert len(ev) > 0 and np.all(ev.frames >= 1) and ev.n_runs.sum() == len(runs)
    mu = meas.elastic["mu_relaxed"].value
    with Trajectory(small_run.traj) as t:
        for j in (0, len(ev) // 2, len(ev) - 1):
            f0 = int(ev.F0[j])
            x0 = t.sequence_position(seq["kind"][f0], seq["row"][f0])
            g = float(seq["gamma"][f0])
            tr = g - np.floor(g + 0.5)
            c = (np.floor(((x0[:, 0] - tr * x0[:, 1]) / Lx % 1) * n1).astype(int) * n1
                 + np.floor((x0[:, 1] / Ly % 1) * n1).astype(int))
            vir = evaluate(State(x0, t.radii, Lx, Ly, g)).virial_per_particle[c == ev.cell[j]].sum(axis=0)
            want = np.array([0.5 * (vir[0, 0] - vir[1, 1]), vir[0, 1]]) / (Lx * Ly / n1**2) / (2 * mu)
            np.testing.assert_allclose(ev.e_el[j], want, rtol=1e-10)
            mine = (runs[:, 1] >= ev.F0[j]) & (runs[:, 2] <= ev.E[j]) & (c[runs[:, 0]] == ev.cell[j])
            assert mine.sum() == ev.n_runs[j] and runs[mine, 1].min() == ev.F0[j]
            assert runs[mine, 2].max() == ev.E[j]


def test_lattice_runs_from_the_calibration(calibration, tmp_path):
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    import step_epm.lattice.cli  # noqa: F401
    from step_epm.lattice.runner import run_lattice

    _, path, _ = calibration
    with initialize_config_module(config_module="step_epm.conf", version_base="1.3"):
        cfg = compose(config_name="lattice", overrides=[
            f"calibration={path}", "lattice.L=32", "run.gamma_end=0.05",
            f"output_dir={tmp_path / 'lat'}", "output.plots=false", "output.progress=false"])
    import h5py
    path = run_lattice(OmegaConf.to_object(cfg), "test")
    with h5py.File(path, "r") as f:
        assert int(f.attrs["n_avalanches"]) > 0


def test_report_is_written(calibration):
    _, _, out = calibration
    html = (out / "report.html").read_text()
    assert html.count("<img src='data:image/png;base64,") == 6
    for name in REQUIRED_SCALARS:
        assert name in html


def test_assemble_uses_measured_values_when_they_exist(small_run):
    """With a loose isolation rule the small run has isolated events; every
    required number that is finite, in range and determined is taken as
    measured (n > 0), never replaced."""
    meas = measure([(small_run.traj, small_run.analysis)],
                   ExtractParams(quiet_factor=0.5, n_boot=10))
    site = choose_site(meas, 3.0)
    cal, notes = assemble(meas, site_samples([(small_run.traj, small_run.analysis)], meas, 3.0,
                                             sample_every=10), site)
    b = meas.softness_change.b          # the per-particle law is reported next to the site law
    if math.isfinite(b.value):
        assert cal["softness_b_particle"] == b.value and cal.scalars["softness_b_particle"].n == b.n
    sites = site_samples([(small_run.traj, small_run.analysis)], meas, 3.0, sample_every=10)
    assert cal["frames_per_rearrangement"] == pytest.approx(sites.events.frames.mean(), rel=1e-12)
    assert all(n.split(":")[0] in REQUIRED_SCALARS + ("c0", "c1", "p_s", "yield_strain")
               for n in notes)


@pytest.mark.parametrize("override, field", [
    ("measure.r_far=-1", "measure.r_far"),
    ("measure.lags=[0,2]", "measure.lags"),
    ("measure.corr_model=cubic", "measure.corr_model"),
    ("site.sample_every=0", "site.sample_every"),
    ("+measure.bogus=1", "measure.bogus"),
])
def test_bad_config_names_the_field(small_run, tmp_path, override, field):
    from step_epm.calibrate.cli import validate

    with pytest.raises(ConfigError) as exc:
        validate(_compose([f"trajectories=[{small_run.traj}]", override,
                           f"output_dir={tmp_path}"]))
    assert field in str(exc.value)


def test_missing_analysis_file_is_refused(small_run, tmp_path):
    lonely = tmp_path / "t" / "trajectory.h5"
    lonely.parent.mkdir()
    lonely.write_bytes(small_run.traj.read_bytes())
    cmd = [sys.executable, "-m", "step_epm.calibrate.cli", f"trajectories=[{lonely}]",
           f"output_dir={tmp_path / 'x'}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "step-softness" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "x" / "calibration.json").exists()


def test_config_dataclasses_default_to_valid():
    cfg = CalibrateConfig(measure=MeasureConfig(), site=SiteConfig(), output=OutputConfig())
    assert cfg.measure.params() == ExtractParams()
