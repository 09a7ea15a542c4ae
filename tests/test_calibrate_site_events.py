"""Site events and site-level measurements (calibrate/site_events.py):
grouping of particle runs, cell stresses, lattice distance bins, the
single-active pairs, and a planted site-level softness law recovered by
softness_change in index space."""
import numpy as np
import pytest

from step_epm.calibrate.lattice_mapping import cell_means
from step_epm.calibrate.site_events import (cell_stress, group_runs, index_positions,
                                            lattice_distance_edges, lattice_distances,
                                            single_active_pairs)
from step_epm.calibrate.softness_change import SoftnessEvent, softness_change


def test_group_runs_merges_touching_runs_of_a_cell():
    """Runs are merged per cell when their [f0, e_end] intervals overlap or
    touch; other cells and separate intervals stay apart."""
    runs = np.array([[1, 10, 12],   # cell 0
                     [2, 12, 14],   # cell 0, touches -> same event
                     [3, 11, 13],   # cell 0, overlaps
                     [4, 20, 21],   # cell 0, later: new event
                     [5, 10, 11],   # cell 1
                     [6, 15, 16]])  # cell 1, separate
    cells = np.array([0, 0, 0, 0, 1, 1])
    cell, F0, E, n = group_runs(runs, cells)
    got = sorted(zip(cell.tolist(), F0.tolist(), E.tolist(), n.tolist()))
    assert got == [(0, 10, 14, 3), (0, 20, 21, 1), (1, 10, 11, 1), (1, 15, 16, 1)]
    assert list(F0) == sorted(F0)
    with pytest.raises(ValueError, match="cells"):
        group_runs(runs, cells[:2])
    assert group_runs(np.zeros((0, 3)), np.zeros(0))[0].size == 0


def test_single_active_pairs():
    """Pairs (i - 1 -> i) with exactly one event active, F0 < i <= E."""
    F0, E = np.array([10, 12, 30]), np.array([13, 14, 31])
    assert single_active_pairs(F0, E) == {11: 0, 12: 0, 14: 1, 31: 2}


def test_cell_stress_sums_to_the_global_stress():
    """Mean over cells of the cell stress = the box's deviatoric stress (each
    virial in exactly one cell); cell means of values by hand."""
    rng = np.random.default_rng(0)
    vir = rng.normal(size=(50, 2, 2))
    vir = 0.5 * (vir + vir.transpose(0, 2, 1))
    cells = rng.integers(0, 4, 50)
    area = 2.5
    st = cell_stress(vir, cells, 4, area)
    tot = vir.sum(axis=0) / (4 * area)
    np.testing.assert_allclose(st.mean(axis=0), [0.5 * (tot[0, 0] - tot[1, 1]), tot[0, 1]], rtol=1e-12)
    v = rng.normal(size=50)
    v[3] = np.nan
    m = cell_means(v, cells, 5)
    for c in range(4):
        sel = (cells == c) & np.isfinite(v)
        assert m[c] == pytest.approx(v[sel].mean())
    assert np.isnan(m[4])


def test_lattice_distance_bins():
    """One bin per distance class a|d| (0, 1, sqrt 2, 2, sqrt 5, sqrt 8, 3, ...),
    edges midway, the class inside its bin."""
    d = lattice_distances(3.0)
    np.testing.assert_allclose(d, [0, 1, np.sqrt(2), 2, np.sqrt(5), np.sqrt(8), 3])
    edges, r = lattice_distance_edges(2.0, 6.0)
    np.testing.assert_allclose(r, 2.0 * d)
    assert edges[0] == 0 and np.all((r > edges[:-1]) & (r < edges[1:]) | (r == 0))


def test_site_level_law_recovered_in_index_space():
    """Planted site-level law on a sheared tiling's index space: dS_j =
    c0(r) + c1(r)(S_j - <S>) + b k_j with r = a |d| the lattice distance to
    the active site; softness_change with one bin per distance class gives
    c0, c1 per class and b (noise-free: to round-off)."""
    a, n1 = 3.0, 12
    box = (n1 * a, n1 * a, 0.37)
    xs, ibox = index_positions(box, a)
    edges, r = lattice_distance_edges(a, 12.0)
    c0 = lambda rr: np.where(rr == 0, -0.2, 0.03 * (np.maximum(rr, a) / a) ** -2.0)
    c1 = lambda rr: np.where(rr == 0, -0.5, -0.01 * (np.maximum(rr, a) / a) ** -2.0)
    b = 4.0
    rng = np.random.default_rng(1)
    events = []
    for _ in range(40):
        o = rng.integers(0, n1 * n1)
        S = rng.normal(0, 0.3, n1 * n1)
        k = rng.normal(0, 1e-3, n1 * n1)
        dx = np.abs(np.round((xs - xs[o]) / a))
        dx = np.minimum(dx, n1 - dx)
        rr = a * np.hypot(dx[:, 0], dx[:, 1])
        dS = c0(rr) + c1(rr) * (S - S.mean()) + b * k
        events.append(SoftnessEvent(xs[o].copy(), xs, ibox, S, dS, k, float(S.mean())))
    sc = softness_change(events, r_edges=edges, far_range=(4.0, 12.0), tail_range=(3.0, 12.0), n_boot=0,
                         keep_origin=True)
    ok = np.isfinite(sc.c0.value)
    assert ok[0] and ok.sum() >= 8
    np.testing.assert_allclose(sc.c0.value[ok], c0(r[ok]), rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(sc.c1.value[ok], c1(r[ok]), rtol=1e-6, atol=1e-10)
    assert sc.b.value == pytest.approx(b, rel=1e-8)
