"""calibrate/extract.py and calibrate/compression.py on a real (small) AQS
trajectory with its analysis file, and the compression fit on planted data.

The trajectory is the session fixture ``small_run`` of tests/conftest.py
(N = 128, d_gamma = 1e-3 up to 0.12, seed 1: 121 steps, 10 avalanches, 40
avalanche frames) with a tiny softness model and its analysis.h5. With the SPEC.md isolation rule it has no
isolated pair (far particles reach 0.2-0.3 d_soft in this small box), which
tests the thin-data path; a looser quiet level (QUIET_LOOSE) gives a few
isolated pairs to check the extraction against the raw arrays.
"""

import math

import numpy as np
import pytest
from scipy.special import ndtr

from step_epm.calibrate.compression import (CompressionEvent, compression_fit, frame_compression,
                                            region)
from step_epm.calibrate.extract import ExtractParams, extract, measure
from step_epm.config_checks import ConfigError
from step_epm.particles.rearrangements import (D_LARGE, D_SMALL, local_deformation,
                                               rearrangers)
from step_epm.particles.analysis_file import SoftnessAnalysis
from step_epm.particles.trajectory import Trajectory

QUIET_LOOSE = 0.5
FAST = dict(n_boot=10)


@pytest.fixture(scope="module")
def files(small_run):
    return small_run.traj, small_run.analysis


@pytest.fixture(scope="module")
def raw(files):
    """Everything small enough to load whole, for the checks."""
    traj, ana = files
    with Trajectory(traj) as t, SoftnessAnalysis(ana) as a:
        seq = a.sequence()
        out = {k: a.field(k) for k in ("softness", "d2min", "k", "e1", "e2", "eps_dev")}
        out["pos"] = np.array([t.sequence_position(k, r) for k, r in zip(seq["kind"], seq["row"])])
        out.update(seq=seq, radii=t.radii, species=t.species, box=t.box_lengths,
                   table=t.avalanches())
    return out


@pytest.fixture(scope="module")
def loose(files):
    traj, ana = files
    return extract(traj, ana, ExtractParams(quiet_factor=QUIET_LOOSE, **FAST))


def _affine(seq, i):
    return seq["kind"][i] == 1 and (seq["kind"][i - 1] == 0 or
                                   seq["avalanche"][i - 1] != seq["avalanche"][i])


def _flags(raw, i):
    if _affine(raw["seq"], i):
        return np.zeros(len(raw["radii"]), bool)
    return rearrangers(raw["d2min"][i], raw["radii"])


def _brute_distance(x, x0, Lx, Ly, tilt):
    d = x - x0
    best = np.full(len(x), np.inf)
    for m1 in range(-3, 4):
        for m2 in range(-3, 4):
            v = d + m1 * np.array([Lx, 0.0]) + m2 * np.array([tilt * Ly, Ly])
            best = np.minimum(best, np.hypot(v[:, 0], v[:, 1]))
    return best


def test_isolated_events_are_isolated(raw, loose):
    iso = loose.isolated
    assert len(iso.field) == len(iso.row) >= 2
    Lx, Ly = raw["box"]
    seq = raw["seq"]
    for fe, se, i, r, sp in zip(iso.field, iso.softness, iso.row, iso.particle, iso.species):
        # the raw deformation of the pair, from positions
        g0, g1 = seq["gamma"][i - 1], seq["gamma"][i]
        d = local_deformation(raw["pos"][i - 1], raw["pos"][i], raw["radii"], Lx, Ly, g0, Lx, Ly, g1)
        np.testing.assert_allclose(d.d2min, raw["d2min"][i], rtol=1e-6, atol=1e-12)
        thr = np.where(raw["species"] == 0, D_SMALL, D_LARGE)
        assert np.flatnonzero(d.d2min > thr).tolist() == [r]          # exactly one rearranger
        assert sp == raw["species"][r] == 0                             # small
        far = _brute_distance(raw["pos"][i - 1], raw["pos"][i - 1][r], Lx, Ly, g0) > 5.0
        assert far.any() and np.all(d.d2min[far] <= QUIET_LOOSE * D_SMALL)
        # the events' arrays
        np.testing.assert_array_equal(fe.origin, raw["pos"][i - 1][r])
        np.testing.assert_array_equal(fe.pos, raw["pos"][i - 1])
        assert fe.box == (Lx, Ly, g0)
        np.testing.assert_array_equal(fe.k, raw["k"][i].astype(float))
        np.testing.assert_array_equal(fe.eps_xy, raw["e2"][i].astype(float))
        np.testing.assert_array_equal(fe.eps_dev, raw["eps_dev"][i].astype(float))
        S0, S1 = raw["softness"][i - 1].astype(float), raw["softness"][i].astype(float)
        np.testing.assert_array_equal(se.S, S0)
        np.testing.assert_array_equal(se.dS, S1 - S0)
        assert se.S_mean == pytest.approx(S0.mean())
    # and no isolated small pair is missed (independent scan of every pair)
    found = []
    for i in range(1, len(seq["frame"])):
        fl = _flags(raw, i)
        if fl.sum() != 1:
            continue
        r = int(np.flatnonzero(fl)[0])
        far = _brute_distance(raw["pos"][i - 1], raw["pos"][i - 1][r], Lx, Ly, seq["gamma"][i - 1]) > 5
        dsoft = D_SMALL if raw["species"][r] == 0 else D_LARGE
        if not np.any(raw["d2min"][i][far] > QUIET_LOOSE * dsoft) and raw["species"][r] == 0:
            found.append(i)
    assert iso.row.tolist() == found


def test_all_rearranger_events_and_dS(raw, loose):
    seq = raw["seq"]
    expect = []
    for i in range(1, len(seq["frame"])):
        fl = _flags(raw, i) & (raw["species"] == 0)
        expect += [(i, r) for r in np.flatnonzero(fl)]
    assert len(loose.all_events) == len(expect) > 0
    for ev, (i, r) in zip(loose.all_events, expect):
        np.testing.assert_array_equal(ev.origin, raw["pos"][i - 1][r])
        np.testing.assert_array_equal(ev.dS, raw["softness"][i].astype(float)
                                      - raw["softness"][i - 1].astype(float))
        np.testing.assert_array_equal(ev.k, raw["k"][i].astype(float))
        assert ev.S_mean == pytest.approx(raw["softness"][i - 1].astype(float).mean())


def test_all_rearranger_events_are_cropped(files, raw):
    traj, ana = files
    evs = extract(traj, ana, ExtractParams(ds_r=(0.5, 3.0, 0.5)), want=("all",)).all_events
    assert evs
    Lx, Ly = raw["box"]
    for ev in evs:
        d = _brute_distance(ev.pos, ev.origin, Lx, Ly, ev.box[2])
        assert 0 < len(ev.pos) < len(raw["radii"]) and np.all(d <= 3.0 + 1e-12)
        assert len(ev.S) == len(ev.dS) == len(ev.k) == len(ev.pos)


def test_avalanche_rearrangers_match_flags(raw, loose):
    seq, table = raw["seq"], raw["table"]
    assert len(loose.avalanches) == len(table["id"])
    for frames, aid, nf in zip(loose.avalanches, table["id"], table["n_frames"]):
        rows = np.flatnonzero(seq["avalanche"] == aid)       # its frames + minimised state
        assert len(frames) == nf == len(rows) - 1
        for (pos, box), i0 in zip(frames, rows[:-1]):
            fl = _flags(raw, i0 + 1) & (raw["species"] == 0)
            np.testing.assert_array_equal(pos, raw["pos"][i0][fl])
            assert box[2] == seq["gamma"][i0]
    # rearrangement runs: total flagged pairs inside avalanches = sum of frames
    n_flag = sum(int((_flags(raw, i0 + 1) & (raw["species"] == 0)).sum())
                 for aid in table["id"] for i0 in np.flatnonzero(seq["avalanche"] == aid)[:-1])
    assert sum(int(r.frames.sum()) for r in loose.rearrangements) == n_flag


def test_onsets_match_direct_fits(raw, loose):
    Lx, Ly = raw["box"]
    seq = raw["seq"]
    rng = np.random.default_rng(0)
    n_checked = 0
    for lab, o in loose.onsets.items():
        if lab == "since_last":
            continue
        df = int(lab.split("=")[1])
        assert np.all(o.row - o.start_row == df)
        for j in rng.choice(len(o.S), size=min(4, len(o.S)), replace=False):
            f0, s, p = o.row[j], o.start_row[j], o.particle[j]
            # p starts rearranging at f0: flagged in pair (f0 -> f0 + 1), not (f0 - 1 -> f0)
            assert _flags(raw, f0 + 1)[p] and not (f0 >= 1 and _flags(raw, f0)[p])
            d = local_deformation(raw["pos"][s], raw["pos"][f0], raw["radii"], Lx, Ly,
                                  seq["gamma"][s], Lx, Ly, seq["gamma"][f0])
            assert o.eps[j] == d.eps_dev[p] and o.e1[j] == d.e1[p] and o.e2[j] == d.e2[p]
            assert o.S[j] == float(raw["softness"][s][p])
            assert o.species[j] == 0
            n_checked += 1
    assert n_checked >= 8
    # every onset of df=1 is found
    expect = set()
    for i in range(2, len(seq["frame"])):
        new = _flags(raw, i) & ~_flags(raw, i - 1) & (raw["species"] == 0)
        expect |= {(i - 1, int(p)) for p in np.flatnonzero(new)}
    o = loose.onsets["df=1"]
    assert set(zip(o.row.tolist(), o.particle.tolist())) == expect


def test_measure_thin_data_and_end_to_end(files):
    traj, ana = files
    m = measure([(traj, ana)], ExtractParams(**FAST))
    # no isolated pair under the SPEC rule: NaN, n = 0, flagged, no crash
    assert m.counts["isolated_events"] == 0
    for q in m.strain_fields.fits.values():
        assert math.isnan(q.value) and q.n == 0 and q.flag
    assert math.isnan(m.softness_change.b.value) and m.softness_change.b.flag
    assert not m.correlation_length.ok and m.correlation_length.flag
    for q in m.compression.values():
        assert math.isnan(q.value) and q.n == 0 and q.flag
    assert m.onsets["since_last"].S.size == 0
    # every finished rearrangement run (any species): (particle, f0, e_end)
    # with f0 < e_end; the per-particle self change counts the chosen species
    runs = m.runs[0]
    assert len(runs) == m.counts["rearrangement_runs"] > 0 and np.all(runs[:, 1] < runs[:, 2])
    with Trajectory(traj) as t:
        small = np.asarray(t.species)[runs[:, 0]] == 0
    assert m.self_change.n == small.sum() < len(runs)
    # data that exist give finite numbers
    assert m.counts["avalanches"] == 10 and m.counts["rearrangements"] > 0
    assert np.isfinite(m.rearrangement_stats["frames_per_rearrangement"].value)
    assert m.rearrangement_stats["frames_per_rearrangement"].value >= 1
    assert np.isfinite(m.time_per_frame.value) and m.time_per_frame.value > 0
    assert np.isfinite(m.self_change.value)
    assert np.any(np.isfinite(m.pair_correlation.radial[0].value))
    with Trajectory(traj) as t:
        assert m.number_density.value == pytest.approx(t.n_particles / np.prod(t.box_lengths))
    for q in m.elastic.values():
        assert np.isfinite(q.value) and q.n == 1
    assert [x["sha256"] for x in m.inputs] and len(m.inputs) == 2
    # a looser quiet level: isolated events feed the field and softness fits
    m2 = measure([(traj, ana)], ExtractParams(quiet_factor=QUIET_LOOSE, corr_r_max=6.0,
                                              compression_source="onsets", **FAST))
    assert m2.counts["isolated_events"] >= 2
    assert m2.counts["compression_events"] > 0
    assert m2.correlation_length.ok
    assert np.any(np.isfinite(m2.strain_fields.profiles["eps_dev"].value))
    assert np.isfinite(m2.strain_fields.fits["c_dev"].value)
    assert np.any(np.isfinite(m2.d2min_corr["C"]))


def test_params_are_validated():
    with pytest.raises(ConfigError, match="lags"):
        ExtractParams(lags=(0, 1))
    with pytest.raises(ConfigError, match="r_far"):
        ExtractParams(r_far=-1.0)
    with pytest.raises(ConfigError, match="species"):
        ExtractParams(species="tiny")
    with pytest.raises(ConfigError, match="field_fit_range"):
        ExtractParams(field_fit_range=(5.0, 2.0))


def test_compression_fit_recovers_planted_values():
    """Synthetic k fields: per frame, the planted compression increment is
    spread over the particles within R of the origin, noise elsewhere."""
    A, tc, w, R = 3.0, 40.0, 12.0, 3.0
    rng = np.random.default_rng(1)
    L = 20.0
    box = (L, L, 0.3)
    a_per = L * L / 400
    events = []
    for _ in range(30):
        pos = rng.uniform(0, L, (400, 2))
        origin = pos[0]
        mask = region(origin, pos, box, R)
        t = np.cumsum(rng.uniform(2.0, 8.0, 25))
        Q = A * ndtr((t - tc) / w)
        dQ_true = np.diff(np.concatenate([[0.0], Q]))
        dQ = []
        for dq in dQ_true:
            k = rng.normal(0, 1e-3, 400)
            k[mask] = dq / (mask.sum() * a_per) + rng.normal(0, 1e-4, mask.sum())
            dQ.append(frame_compression(k, mask, a_per))
        events.append(CompressionEvent(t, np.array(dQ)))
    nu = 0.6
    q = compression_fit(events, nu, n_boot=20, seed=0, radius=R)
    # the region's own Q is ((1 + nu)/2) p: p = 2 A / (1 + nu)
    assert q["compression_p"].value == pytest.approx(2 * A / (1 + nu), rel=0.02)
    assert q["compression_t_centre"].value == pytest.approx(tc, rel=0.02)
    assert q["compression_width"].value == pytest.approx(w, rel=0.05)
    assert all(qq.n == 30 and np.isfinite(qq.error) for qq in q.values())
    # too little data: NaN, n = 0, flag
    q = compression_fit(events[:1], nu)
    assert all(math.isnan(qq.value) and qq.n == 0 and qq.flag for qq in q.values())
    q = compression_fit(events, math.nan, n_boot=0)
    assert math.isnan(q["compression_p"].value) and "Poisson" in q["compression_p"].flag
