"""Mapping particle measurements onto the lattice (calibrate/lattice_mapping.py):
site size, site tiling and site softness, P(S) of sites, yield strain by
site S, the source strength from the stress drops, time per frame and D_L in lattice
units, and the calibration-file entries built from measurement results."""
import json
import math

import numpy as np
import pytest

from step_epm.calibrate.correlations import pair_correlation
from step_epm.calibrate.events import frame_times
from step_epm.calibrate.lattice_mapping import (SITE_FACTOR, g2_entry, histogram_entry,
                                                lattice_diffusion, p_s_sites, site_grid, site_index,
                                                site_size, site_softness,
                                                site_softness_of_particles, strain_profiles_entry,
                                                time_per_frame, yield_strain_sites, yield_table_entry)
from step_epm.calibrate.strain_fields import FieldEvent, strain_fields
from step_epm.calibrate.yield_strain import yield_strain
from step_epm.lattice.calibration import Quantity, parse_calibration, placeholder_calibration
from step_epm.lattice.model import LatticeParams, ModelOptions

BOX = (30.0, 24.0, 0.37)   # Lx, Ly, tilt (already reduced: 0.37 x 24 < 15)
A = 6.0                    # -> 5 x 4 sites


def planted(box, n1, n2, k, rng=None):
    """Positions on a k x k fractional grid inside each of the n1 x n2 cells
    (jittered within its sub-cell if rng), with their planted site (i1, i2)."""
    Lx, Ly, tr = box
    g = (np.arange(k) + 0.5) / k
    i1, i2, j1, j2 = (a.ravel() for a in np.meshgrid(np.arange(n1), np.arange(n2), g, g, indexing="ij"))
    if rng is not None:
        j1 = j1 + rng.uniform(-0.45, 0.45, j1.size) / k
        j2 = j2 + rng.uniform(-0.45, 0.45, j2.size) / k
    s1, s2 = (i1 + j1) / n1, (i2 + j2) / n2
    pos = np.column_stack([s1 * Lx + s2 * tr * Ly, s2 * Ly])
    return pos, i1, i2


# -- site size ------------------------------------------------------------------

def test_site_size_from_correlation_length_or_area():
    xi = Quantity(2.0, 0.1, 50, (0.5, 6.0), "length", "", None)
    a = site_size(xi)
    assert a.value == pytest.approx(SITE_FACTOR * 2.0, rel=1e-15) and SITE_FACTOR == pytest.approx(2.5066, abs=1e-4)
    assert (a.error, a.n, a.fit_range, a.flag, a.unit) == (pytest.approx(SITE_FACTOR * 0.1), 50, (0.5, 6.0), None, "length")
    assert site_size(1.5, factor=3.0).value == 4.5
    b = site_size(area=Quantity(25.0, 2.0, 10))
    assert (b.value, b.error, b.n) == (5.0, pytest.approx(0.2), 10)
    # a placeholder input keeps its flag (finite value, n = 0)
    c = site_size(Quantity(2.0, 0.1, 0, None, "", "", "guess"))
    assert c.value == pytest.approx(2 * SITE_FACTOR) and c.n == 0 and "guess" in c.flag


@pytest.mark.parametrize("kwargs,name", [({}, "xi"), ({"xi": 1.0, "area": 2.0}, "xi"),
                                         ({"xi": -1.0}, "xi"), ({"xi": 0.0}, "xi"), ({"area": -4.0}, "area"),
                                         ({"xi": 1.0, "factor": 0.0}, "factor"), ({"xi": "big"}, "xi")])
def test_site_size_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        site_size(**kwargs)


# -- tiling and site softness ---------------------------------------------------------

def test_site_grid_and_periodic_images():
    assert site_grid(BOX, A) == (5, 4)
    assert site_grid((30.0, 24.0, 0.0), 100.0) == (1, 1)
    rng = np.random.default_rng(1)
    pos, i1, i2 = planted(BOX, 5, 4, 3, rng)
    idx = site_index(pos, BOX, A)
    np.testing.assert_array_equal(idx, i1 * 4 + i2)
    Lx, Ly, tilt = BOX
    m1, m2 = rng.integers(-3, 4, (2, len(pos)))
    shifted = pos + m1[:, None] * np.array([Lx, 0.0]) + m2[:, None] * np.array([tilt * Ly, Ly])
    np.testing.assert_array_equal(site_index(shifted, BOX, A), idx)
    # the same lattice with an unreduced tilt (a2 + a1): the same sites
    np.testing.assert_array_equal(site_index(pos, (Lx, Ly, tilt + Lx / Ly), A), idx)


def test_planted_constant_per_site_gives_it_exactly():
    rng = np.random.default_rng(2)
    pos, i1, i2 = planted(BOX, 5, 4, 4, rng)
    value = 10.0 * i1 - 3.0 * i2 + 0.25
    S = value.copy()
    S[::7] = np.nan                                  # non-finite S are skipped
    mean, cnt = site_softness(pos, S, BOX, A, return_counts=True)
    expect = (10.0 * np.arange(5)[:, None] - 3.0 * np.arange(4)[None, :] + 0.25).ravel()
    np.testing.assert_allclose(mean, expect, rtol=0, atol=1e-12)
    assert cnt.sum() == np.isfinite(S).sum()
    np.testing.assert_allclose(site_softness_of_particles(pos, S, BOX, A), value, rtol=0, atol=1e-12)


def test_planted_linear_field_gives_the_site_centre_value():
    """S = 2 x + 1 on a symmetric grid of particles in each (sheared) site:
    the site mean is S at the site's centre, to round-off."""
    Lx, Ly, tr = BOX
    pos, i1, i2 = planted(BOX, 5, 4, 6)
    mean = site_softness(pos, 2 * pos[:, 0] + 1, BOX, A)
    cx = (np.arange(5)[:, None] + 0.5) / 5 * Lx + (np.arange(4)[None, :] + 0.5) / 4 * tr * Ly
    np.testing.assert_allclose(mean, (2 * cx + 1).ravel(), rtol=1e-13)


def test_site_mean_equals_particle_mean_for_uniform_density():
    """Equal counts: exact. Random uniform positions: within the documented
    5 sd(S)/sqrt(N). Each particle's site S averages to the particle mean exactly."""
    rng = np.random.default_rng(3)
    pos, _, _ = planted(BOX, 5, 4, 5, rng)
    S = rng.normal(0.3, 1.2, len(pos))
    assert site_softness(pos, S, BOX, A).mean() == pytest.approx(S.mean(), abs=1e-13)
    N = 20000
    Lx, Ly, tilt = BOX
    s = rng.random((N, 2))
    pos = np.column_stack([s[:, 0] * Lx + s[:, 1] * tilt * Ly, s[:, 1] * Ly])
    S = rng.normal(-0.4, 0.8, N)
    for a in (2.0, 3.0, 5.0):
        sites = site_softness(pos, S, BOX, a)
        assert np.all(np.isfinite(sites))
        assert abs(sites.mean() - S.mean()) < 5 * S.std() / math.sqrt(N), a
        assert site_softness_of_particles(pos, S, BOX, a).mean() == pytest.approx(S.mean(), abs=1e-12)


def test_site_softness_thin_data_and_bad_arguments():
    mean, cnt = site_softness(np.empty((0, 2)), np.empty(0), BOX, A, return_counts=True)
    assert mean.shape == (20,) and np.all(np.isnan(mean)) and cnt.sum() == 0
    mean = site_softness([[1.0, 1.0]], [np.nan], BOX, A)
    assert np.all(np.isnan(mean))
    with pytest.raises(ValueError, match="^a "):
        site_softness([[1.0, 1.0]], [0.0], BOX, 0.0)
    with pytest.raises(ValueError, match="box"):
        site_softness([[1.0, 1.0]], [0.0], (30.0, -1.0, 0.0), A)
    with pytest.raises(ValueError, match="pos"):
        site_softness([1.0, 1.0], [0.0], BOX, A)
    with pytest.raises(ValueError, match="pos"):
        site_softness([[np.nan, 1.0]], [0.0], BOX, A)
    with pytest.raises(ValueError, match="S"):
        site_softness([[1.0, 1.0]], [0.0, 1.0], BOX, A)


# -- P(S) of sites -------------------------------------------------------------------

def test_p_s_sites_is_a_normalised_histogram_in_the_file_format():
    rng = np.random.default_rng(4)
    parts = [rng.normal(-0.5, 0.4, 300) for _ in range(4)]
    parts[0][:5] = np.nan
    h = p_s_sites(parts)
    assert set(h) == {"edges", "density", "n"}
    assert (h["density"] * np.diff(h["edges"])).sum() == pytest.approx(1.0, abs=1e-12)
    assert h["n"].sum() == 1195 and np.allclose(np.diff(h["edges"]), 0.1)
    h2 = p_s_sites(np.concatenate(parts))
    np.testing.assert_array_equal(h2["n"], h["n"])
    # it is a valid p_s for the calibration file
    d = placeholder_calibration().to_json()
    d["curves"]["p_s"] = {k: v.tolist() for k, v in h.items()}
    parse_calibration(d, "test")
    h3 = p_s_sites(parts, edges=np.linspace(-3, 2, 26))
    assert (h3["density"] * 0.2).sum() == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="edges"):
        p_s_sites(parts, edges=[-1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="bin_width"):
        p_s_sites(parts, bin_width=0)
    empty = p_s_sites([np.full(3, np.nan)])
    assert np.all(np.isnan(empty["density"])) and empty["n"].sum() == 0


# -- yield strain by site S ----------------------------------------------------------------

def test_yield_strain_by_site_softness_fills_the_table():
    rng = np.random.default_rng(5)
    S = rng.uniform(-1.5, 1.0, 4000)
    eps = (0.05 - 0.01 * S) * rng.lognormal(0.0, 0.3, S.size)   # median 0.05 - 0.01 S
    table, res = yield_strain_sites(eps, S, s_edges=np.arange(-1.5, 1.01, 0.25), u=np.linspace(0.02, 0.98, 49),
                                    n_boot=30)
    assert table["value"].shape == (10, 49) and table["n"].sum() == 4000
    assert res.a.value == pytest.approx(0.05, abs=4 * res.a.error + 1e-3)
    assert res.b.value == pytest.approx(-0.01, abs=4 * res.b.error + 1e-3)
    d = placeholder_calibration().to_json()
    d["curves"]["yield_strain"] = {k: v.tolist() for k, v in table.items()}
    cal = parse_calibration(d, "test")
    assert cal.curves["yield_strain"]["u"][0] == pytest.approx(0.02)
    # thin data: no table, NaN fit with n = 0 and a flag
    table, res = yield_strain_sites(eps[:5], S[:5], n_boot=10)
    assert table is None and math.isnan(res.a.value) and res.a.n == 0 and res.a.flag


# -- softness kernels on sites ----------------------------------------------------------------

R = np.arange(1.0, 10.01, 0.5)


def power_curve(A, p, sign, r=R):
    return {"r": r, "value": sign * A * r**-p, "error": 0.1 * A * r**-p, "n": np.ones(r.size, np.int64),
            "fit": {"amplitude": Quantity(A, 0.0, 1), "exponent": Quantity(p, 0.0, 1), "sign": sign}}


def test_source_strength_from_drops():
    """kappa = sum of the avalanches' plastic strain / sum of the onset e2 of
    their site events; avalanches without events still count their drop;
    events of unknown avalanches and NaN e2 are ignored; not positive: NaN
    and a flag."""
    from step_epm.calibrate.lattice_mapping import source_strength_from_drops
    from step_epm.calibrate.site_events import SiteEvents

    def events(traj, av, e2):
        n = len(av)
        i = np.zeros(n, np.int64)
        return SiteEvents(np.asarray(traj, np.int64), i, i, i + 1, np.zeros(n), np.asarray(av, np.int64), i + 1,
                          np.column_stack([np.zeros(n), e2]), np.zeros((n, 2)), np.zeros(n), np.zeros(n))
    ev = events([0, 0, 0, 1, 1], [0, 0, 1, 0, 9], [0.01, 0.02, np.nan, 0.03, 0.5])
    plastic = {(0, 0): 0.3, (0, 1): 0.1, (1, 0): 0.2, (1, 1): 0.05}
    q = source_strength_from_drops(ev, plastic, n_boot=50)
    assert q.value == pytest.approx(0.65 / 0.06, rel=1e-12) and q.n == 4 and q.flag is None
    assert np.isfinite(q.error) and q.error > 0
    bad = source_strength_from_drops(ev, {(0, 0): -0.3}, n_boot=0)
    assert math.isnan(bad.value) and bad.n == 0 and "not positive" in bad.flag
    assert "no avalanches" in source_strength_from_drops(ev, {}, n_boot=0).flag


# -- time and diffusion ---------------------------------------------------------------------

def test_time_per_frame_recovers_a_planted_mean():
    rng = np.random.default_rng(6)
    dt = rng.exponential(7.0, 20000)
    q = time_per_frame(dt, n_boot=100)
    se = 7.0 / math.sqrt(dt.size)
    assert abs(q.value - 7.0) < 4 * se and 0.7 < q.error / se < 1.4 and q.n == dt.size and q.unit == "time"
    assert q.value == pytest.approx(frame_times(dt, n_boot=2)[1].value, rel=1e-14)
    q = time_per_frame([])
    assert math.isnan(q.value) and q.n == 0 and q.flag
    with pytest.raises(ValueError, match="dt"):
        time_per_frame([1.0, -2.0])


def test_lattice_diffusion_is_the_lattice_D():
    cal = placeholder_calibration()
    par = LatticeParams.from_calibration(cal, ModelOptions())
    s = cal.scalars
    q = lattice_diffusion(s["lambda_relaxed"], s["mu_relaxed"], s["number_density"], s["time_per_frame"],
                          s["site_size"])
    assert q.value == pytest.approx(par.D, rel=1e-14) and q.n == 0 and "placeholder" in q.flag
    q = lattice_diffusion(Quantity(0.2, 0.02, 5), Quantity(0.05, 0.01, 7), Quantity(1.0, 0.0, 9),
                          Quantity(10.0, 1.0, 30), Quantity(4.0, 0.2, 12))
    assert q.value == pytest.approx(0.3 * 10 / 16) and q.n == 5 and q.flag is None
    rel = math.sqrt((0.02**2 + 4 * 0.01**2) / 0.3**2 + 0.1**2 + 4 * 0.05**2)
    assert q.error == pytest.approx(q.value * rel)
    q = lattice_diffusion(0.2, Quantity(math.nan, math.nan, 0, None, "", "", "no data"), 1.0, 10.0, 4.0)
    assert math.isnan(q.value) and q.n == 0 and "mu: no data" in q.flag
    for i, name in enumerate(("lam", "number_density", "time_per_frame", "site_size")):
        args = [0.2, 0.05, 1.0, 10.0, 4.0]
        args[[0, 2, 3, 4][i]] = -1.0
        with pytest.raises(ValueError, match=name):
            lattice_diffusion(*args)


# -- measurement results -> calibration file entries --------------------------------------

def test_measurement_results_become_valid_optional_entries():
    """g2, strain profiles, frame times and the yield tables by lag, built
    from the measurement functions' results, are valid v2 entries."""
    rng = np.random.default_rng(7)
    box = (20.0, 20.0, 0.1)
    avalanches = [[(rng.uniform(0, 20, (rng.integers(1, 6), 2)), box) for _ in range(6)] for _ in range(8)]
    pc = pair_correlation(avalanches, lags=(2, 0, 1), r_edges=np.arange(0.0, 10.01, 1.0), n_boot=10)
    events = []
    for _ in range(3):
        pos = rng.uniform(0, 20, (400, 2))
        events.append(FieldEvent(origin=np.array([10.0, 10.0]), pos=pos, box=box, k=rng.normal(0, 1e-3, 400),
                                 eps_dev=np.abs(rng.normal(0, 1e-3, 400)), eps_xy=rng.normal(0, 1e-3, 400)))
    sf = strain_fields(events, n_boot=10)
    hist, _ = frame_times(rng.exponential(5.0, 500))
    S = rng.uniform(-2, 1, 3000)
    by_lag = {"df=1": yield_table_entry(yield_strain(S, rng.lognormal(-3, 0.3, S.size), n_boot=10), "particle S at f - 1"),
              "since_last": yield_table_entry(yield_strain(S[:300], rng.lognormal(-3, 0.3, 300), n_boot=10))}
    assert np.any(np.isnan(by_lag["since_last"]["value"][:, 0]))       # thin S bins stay NaN
    cal = placeholder_calibration()
    cal.curves.update(g2=g2_entry(pc), strain_profiles=strain_profiles_entry(sf), frame_times=histogram_entry(hist),
                      yield_strain_by_lag=by_lag, p_s_particles=p_s_sites(S))
    back = parse_calibration(json.loads(cal.dumps()), "test")
    np.testing.assert_array_equal(back.curves["g2"]["lags"], [0, 1, 2])
    np.testing.assert_array_equal(back.curves["g2"]["n"][2], pc.radial[0].n)     # lag 2 was first
    assert set(back.curves["strain_profiles"]["profiles"]) == {"k", "eps_dev", "eps_xy", "abs_k", "abs_eps_xy",
                                                               "k_sin2", "k_iso"}
    assert back.curves["yield_strain_by_lag"]["df=1"]["description"] == "particle S at f - 1"
    # thin data: no entry to write
    assert histogram_entry(frame_times([])[0]) is None
    assert yield_table_entry(yield_strain(S[:5], np.ones(5) * 0.05, n_boot=2)) is None
