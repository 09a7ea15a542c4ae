"""step-compare (calibrate/compare.py, calibrate/compare_cli.py): counting
rearrangements on planted data, lattice records, and the CLI end to end on
the small particle run and short lattice runs."""

import json
import math

import numpy as np
import pytest

from step_epm.calibrate.compare import (cluster_rearrangements, fit_plastic, lattice_frames,
                                        lattice_sizes)
from step_epm.config_checks import ConfigError


def _frame(ids, pos, box):
    return (np.asarray(ids), np.asarray(pos, float).reshape(-1, 2), box)


# --------------------------------------------------------------------------
# planted rearranger sets
# --------------------------------------------------------------------------

def test_two_separated_groups_are_two_rearrangements():
    box = (20.0, 20.0, 0.0)
    pos = [[2, 2], [2.8, 2.3], [3.2, 3.0], [12, 12], [12.9, 12.2]]
    n, lab = cluster_rearrangements([_frame(range(5), pos, box)], link=1.2)
    assert n == 2
    assert len(set(lab[0][:3])) == 1 and len(set(lab[0][3:])) == 1 and lab[0][0] != lab[0][3]
    # a linking distance below every spacing splits them all; one larger than the gap joins them
    assert cluster_rearrangements([_frame(range(5), pos, box)], link=0.5)[0] == 5
    assert cluster_rearrangements([_frame(range(5), pos, box)], link=20.0)[0] == 1


@pytest.mark.parametrize("gamma", [0.45, 1.45, -0.55])
def test_chain_across_the_sheared_boundary_is_one(gamma):
    """A chain of spacing 0.85 < link crossing the top boundary of a box
    with a large tilt: wrapped through a2 = (tilt Ly, Ly) it stays one
    rearrangement (minimum image in the sheared box, any accumulated gamma)."""
    Lx = Ly = 20.0
    k = np.arange(6)
    chain = np.column_stack([5 + 0.3 * k, 18.5 + 0.8 * k])      # crosses y = Ly
    over = chain[:, 1] >= Ly
    wrapped = chain.copy()
    wrapped[over] -= [gamma * Ly, Ly]
    wrapped[:, 0] = np.mod(wrapped[:, 0], Lx)
    n, _ = cluster_rearrangements([_frame(k, wrapped, (Lx, Ly, gamma))], link=1.0)
    assert n == 1
    # the same points in an unsheared box are two pieces (the shift is 9 or 11 lengths)
    assert cluster_rearrangements([_frame(k, wrapped, (Lx, Ly, 0.0))], link=1.0)[0] == 2


def test_continuation_over_frames():
    box = (30.0, 30.0, 0.0)
    far = [20.0, 20.0]
    # particle 7 rearranges in pairs 0 and 1 (one rearrangement, it moved a little);
    # particle 9 starts in pair 1 far away and goes on in pair 2
    frames = [_frame([7], [[5, 5]], box),
              _frame([7, 9], [[5.3, 5.1], far], box),
              _frame([9], [far], box)]
    n, lab = cluster_rearrangements(frames, link=1.5)
    assert n == 2
    assert lab[0][0] == lab[1][0] and lab[1][1] == lab[2][0] and lab[0][0] != lab[2][0]
    # a particle that stops for one pair and starts again: two rearrangements
    gap = [_frame([7], [[5, 5]], box), _frame([], np.zeros((0, 2)), box), _frame([7], [[5, 5]], box)]
    assert cluster_rearrangements(gap, link=1.5)[0] == 2
    # neighbours (1, 2) then (2, 3): one rearrangement through particle 2's continuation
    chain = [_frame([1, 2], [[5, 5], [6, 5]], box), _frame([2, 3], [[6, 5], [7, 5]], box)]
    assert cluster_rearrangements(chain, link=1.5)[0] == 1
    # no rearranger at all
    assert cluster_rearrangements([_frame([], np.zeros((0, 2)), box)], link=1.5)[0] == 0


# --------------------------------------------------------------------------
# lattice records
# --------------------------------------------------------------------------

def _table(rows):
    cols = ("site_x", "site_y", "avalanche", "frame", "frame_end")
    return {c: np.array([r[i] for r in rows], np.int64) for i, c in enumerate(cols)}


def test_lattice_size_counting_on_a_synthetic_table():
    L, a = 16, 4.0
    R = _table([
        # avalanche 0: two distant sites, each over two frames -> 2
        (0, 0, 0, 0, 2), (5, 5, 0, 1, 3),
        # avalanche 1: one site twice back to back (second starts when the first
        # ends: continues, like a particle staying a rearranger) -> 1; rows 2
        (3, 3, 1, 10, 12), (3, 3, 1, 12, 14),
        # avalanche 2: one site twice with a gap -> 2; plus a neighbour site -> 3
        (8, 8, 2, 20, 22), (8, 8, 2, 23, 25), (8, 9, 2, 20, 22),
        # avalanche 3: a pair of adjacent sites across the periodic edge
        (15, 0, 3, 30, 32), (0, 0, 3, 30, 32),
    ])
    sizes, rows = lattice_sizes(R, 4, L, a, link=1.5)
    assert rows.tolist() == [2, 2, 3, 2]
    assert sizes.tolist() == [2, 1, 3, 2]
    # a link longer than a site links adjacent sites (also across the edge)
    sizes, _ = lattice_sizes(R, 4, L, a, link=4.5)
    assert sizes.tolist() == [2, 1, 2, 1]
    # frames of avalanche 0: busy sites per frame at their centres
    fr = lattice_frames({k: v[:2] for k, v in R.items()}, L, a)
    assert [f[0].tolist() for f in fr] == [[0], [0, 5 * L + 5], [5 * L + 5]]
    assert np.allclose(fr[1][1], [[2, 2], [22, 22]])


def test_recentred_angular_bins():
    """Pairs along the lattice axes land in the bins centred on 0, 90, 180,
    270 degrees (not split by a bin edge)."""
    from step_epm.calibrate.compare import _g2
    from step_epm.calibrate.compare_cli import CompareConfig

    cfg = CompareConfig(lattice=[], trajectories=["x"], g2_lags=[0], g2_n_theta=8, n_boot=0)
    box = (40.0, 40.0, 0.0)
    pos = np.array([[10.0, 10.0], [14.0, 10.0], [10.0, 14.0]])   # axis neighbours at 4
    pc = _g2([[(pos, box)]], cfg, np.array([3.0, 5.0]), (3.0, 5.0))
    m = pc.angular[0]
    assert np.degrees(m.theta).tolist() == [0, 45, 90, 135, 180, 225, 270, 315]
    assert m.n[0].tolist() == [1, 0, 1, 0, 1, 0, 1, 0]
    assert m.n[0].sum() == pc.radial[0].n[0] == 4   # the ordered axis pairs (the diagonal is at 5.66)


def test_plastic_fit_is_scale_free():
    rng = np.random.default_rng(1)
    x = 0.25 * (1 - rng.random(4000)) ** -1.0              # P(x) ~ x^-2 above 0.25
    f1, f2 = fit_plastic(x, 0.25), fit_plastic(10 * x, 2.5)
    assert abs(f1["tau"] - 2.0) < 4 * f1["error"] and f1["n"] == 4000
    assert abs(f1["tau"] - f2["tau"]) < 0.02
    assert math.isnan(fit_plastic(x[:5], 0.25)["tau"])      # thin data: NaN, no crash


# --------------------------------------------------------------------------
# the CLI in-process
# --------------------------------------------------------------------------

def _compose(name, overrides):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="step_epm.conf", version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


@pytest.fixture(scope="module")
def lattice_runs(tmp_path_factory):
    """Two short L = 16 lattice runs (STEP, classic) from the shipped default calibration."""
    from omegaconf import OmegaConf

    import step_epm.lattice.cli  # noqa: F401  (registers the schema)
    from step_epm.lattice.runner import run_lattice

    base = tmp_path_factory.mktemp("lattice")
    out = {}
    for model in ("step", "classic"):
        cfg = _compose("lattice", [f"lattice_model={model}", "lattice.L=16", "run.gamma_end=0.05",
                                   f"output_dir={base / model}", "output.plots=false",
                                   "output.progress=false"])
        out[model] = run_lattice(OmegaConf.to_object(cfg), "test").parent
    return out


def test_cli_end_to_end(small_run, lattice_runs, tmp_path):
    from step_epm.calibrate.compare_cli import run, validate

    cfg = validate(_compose("compare", [
        f"trajectories=[{small_run.traj}]",
        f"lattice=[{{label: STEP, path: {lattice_runs['step']}}}, "
        f"{{label: classic, path: {lattice_runs['classic'] / 'lattice.h5'}}}]",
        "n_boot=5", "ps_every=20", f"output_dir={tmp_path / 'cmp'}"]))
    page = run(cfg, "test")
    assert page.is_file()
    out = page.parent
    summary = json.loads((out / "summary.json").read_text())
    figs = summary["figures"]
    # particles vs STEP and STEP vs classic: 7 figures each
    assert len(figs) == 14
    html = page.read_text()
    assert html.count("<img src='data:image/png;base64,") == len(figs)
    for f in figs:
        assert (out / f["png"]).stat().st_size > 0 and (out / f["pdf"]).stat().st_size > 0
    table = summary["exponents"]
    assert set(table) == {"particles", "STEP", "classic"}
    for label, row in table.items():
        for key in ("tau_size", "tau_plastic"):
            assert {"tau", "error", "n", "s_min"} <= set(row[key])
        assert set(row["g2_tail"]) == {"df=0", "df=1", "df=2", "df=4"}
        assert row["n_avalanches"] > 0
    # the lattice sizes count every recorded rearrangement (no two sites within
    # 1.5 lengths), except a row that starts at the same site in the frame the
    # previous one ended (one rearrangement going on, as a particle that stays
    # a rearranger)
    from step_epm.lattice.output import load_run
    R = load_run(lattice_runs["step"] / "lattice.h5")["rearrangements"]
    site = R["site_x"].astype(np.int64) * 16 + R["site_y"]
    ends = {(int(a), int(s), int(f)) for a, s, f in zip(R["avalanche"], site, R["frame_end"])}
    cont = sum((int(a), int(s), int(f)) in ends for a, s, f in zip(R["avalanche"], site, R["frame"]))
    n_av = table["STEP"]["n_avalanches"]
    assert table["STEP"]["rows_per_avalanche_mean"] == pytest.approx(len(site) / n_av)
    assert table["STEP"]["rearrangements_per_avalanche_mean"] == pytest.approx((len(site) - cont) / n_av)
    assert "tau size" in html and "g2 tail exponent df=0" in html


def test_lattice_only_and_thin_data(lattice_runs, tmp_path):
    """A lattice run alone (no particles): figures of what exists, NaN where
    there is too little data, no crash."""
    from step_epm.calibrate.compare_cli import run, validate

    cfg = validate(_compose("compare", [
        f"lattice=[{{label: STEP, path: {lattice_runs['step']}}}]", "n_boot=0", "s_min=1000",
        f"output_dir={tmp_path / 'one'}"]))
    page = run(cfg, "test")
    summary = json.loads((page.parent / "summary.json").read_text())
    assert len(summary["figures"]) == 7
    assert summary["exponents"]["STEP"]["tau_size"]["tau"] is None      # NaN -> null


@pytest.mark.parametrize("override, field", [
    ("s_min=0", "s_min"),
    ("plastic_min=-1", "plastic_min"),
    ("link_distance=-0.5", "link_distance"),
    ("species=medium", "species"),
    ("g2_lags=[-1]", "g2_lags"),
    ("g2_fit_range=[5,2]", "g2_fit_range"),
    ("+bogus=1", "bogus"),
    ("lattice=[{label: STEP, path: /nonexistent/run}]", "lattice[0].path"),
    ("lattice=[{label: '', path: /tmp}]", "lattice[0].label"),
])
def test_bad_config_names_the_field(small_run, tmp_path, override, field):
    from step_epm.calibrate.compare_cli import validate

    with pytest.raises(ConfigError) as exc:
        validate(_compose("compare", [f"trajectories=[{small_run.traj}]",
                                      f"calibration={small_run.traj}", override,
                                      f"output_dir={tmp_path}"]))
    assert field in str(exc.value)


def test_missing_analysis_and_no_source_are_refused(small_run, tmp_path):
    from step_epm.calibrate.compare_cli import validate

    lonely = tmp_path / "t" / "trajectory.h5"
    lonely.parent.mkdir()
    lonely.write_bytes(small_run.traj.read_bytes())
    with pytest.raises(ConfigError, match="trajectories"):
        validate(_compose("compare", [f"trajectories=[{lonely}]", f"calibration={lonely}"]))
    with pytest.raises(ConfigError, match="trajectories and lattice"):
        validate(_compose("compare", []))
    with pytest.raises(ConfigError, match="calibration"):
        validate(_compose("compare", [f"trajectories=[{small_run.traj}]"]))
