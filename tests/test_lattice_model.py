"""Physics of the STEP lattice model (lattice/model.py; docs/model.md, "Model").

References are built here from the model's equations, independently of the
code under test: thresholds by scipy's bilinear interpolation of the
calibrated quantile table, elastic increments by EshelbyKernels.response
and compression_hat (tested in test_lattice_kernels.py), site averages by
the site-level kernels evaluated at the lattice distances.
"""
import json
import math

import numpy as np
import pytest
from scipy.interpolate import RegularGridInterpolator

from step_epm.lattice.analysis import fit_power_law, stress_plateau
from step_epm.lattice.calibration import (PLACEHOLDER, load_calibration, parse_calibration,
                                          placeholder_calibration)
from step_epm.lattice import dynamics as dyn
from step_epm.lattice.kernels import EshelbyKernels
from step_epm.lattice.dynamics import periodic_extent
from step_epm.lattice.model import (TRANSIENT_TOL, ModelOptions, STEPModel, marginal_yield_table,
                                    quarter_planes, radial_profile, site_kernel)


@pytest.fixture(scope="module")
def cal():
    return load_calibration()


def ref_yield(cal, u, S):
    """eps_y = F^-1(u | S): bilinear in (S, u) of the quantile table, clamped."""
    y = cal.curves["yield_strain"]
    f = RegularGridInterpolator((y["s"], y["u"]), y["value"], method="linear")
    pts = np.stack([np.clip(S, y["s"][0], y["s"][-1]), np.clip(u, y["u"][0], y["u"][-1])], axis=-1)
    return f(pts.reshape(-1, 2)).reshape(np.shape(u))


def trigger_measure(m, trigger):
    """The elastic strain's eps_dev (or 2 |e2|): the trigger has a
    stress-free reference, no residual is subtracted."""
    return 2 * np.hypot(m.e1, m.e2) if trigger == "eps_dev" else 2 * np.abs(m.e2)


# -- loading -------------------------------------------------------------------

@pytest.mark.parametrize("trigger,softness", [("eps_dev", True), ("e2", True), ("e2", False)])
def test_loading_step_brings_exactly_one_site_to_threshold(cal, trigger, softness):
    """After some avalanches (strains and S non-uniform) every site is below
    threshold; the exact loading step raises e2 uniformly by x (gamma by 2x)
    so that the returned site sits on its threshold to round-off and every
    other site stays strictly below. (Softness off: thresholds from the
    marginal quantile table, checked in test_marginal_yield_table.)"""
    m = STEPModel(24, cal, ModelOptions(trigger=trigger, softness=softness), seed=3)
    for _ in range(40):
        m.avalanche()
    if softness:
        ey = ref_yield(cal, m.u, m.S)
    else:
        ey = np.interp(m.u, m.u_grid, m.ytab[0])
    assert np.all(trigger_measure(m, trigger) < ey)
    e1, e2, g = m.e1.copy(), m.e2.copy(), m.gamma
    x, site = m.load()
    assert x > 0
    np.testing.assert_array_equal(m.e1, e1)
    np.testing.assert_allclose(m.e2 - e2, x, rtol=0, atol=1e-15)
    assert m.gamma == pytest.approx(g + 2 * x, rel=1e-15)
    eps = trigger_measure(m, trigger).ravel()
    ey = ey.ravel()
    assert abs(eps[site] - ey[site]) < 1e-12 * ey[site]
    others = np.delete(np.arange(eps.size), site)
    assert np.all(eps[others] < ey[others])


def test_yield_lookup_is_bilinear_and_clamped(cal):
    """F^-1(u | S) at grid points, inside cells and beyond both ends of both
    grids equals scipy's bilinear interpolation of the clamped point."""
    from step_epm.lattice import dynamics as dyn
    y = cal.curves["yield_strain"]
    m = STEPModel(8, cal, ModelOptions(), seed=0)
    rng = np.random.default_rng(1)
    u = np.concatenate([rng.random(500), y["u"], [0.0, 1e-9, 0.999999, y["u"][-1] + 1e-12]])
    S = np.concatenate([rng.normal(-0.5, 1.5, 500), np.resize(y["s"], y["u"].size),
                        [-5.0, 5.0, y["s"][-1], y["s"][0]]])
    got = dyn.yield_strains(u, S, m.ytab, m._s0, m._sinv, m._u0, m._uinv)
    np.testing.assert_allclose(got, ref_yield(cal, u, S), rtol=1e-14)


# -- a single rearrangement ------------------------------------------------------

def single_event_calibration(C0=0.02, C1=-0.05, b=3.0, self_c0=-0.3, self_c1=-0.1, frames=2):
    """Placeholder calibration with site-level kernels c0 = C0, c1 = C1 at
    every site but the rearranging one (self_c0, self_c1 there), two frames
    per rearrangement and a yield table of eps_y = 0.01 at u = 0 rising to
    10 at u = 1 for every S."""
    d = placeholder_calibration().to_json()
    r = [0.0] + [5.0 * j for j in range(1, 41)]       # beyond every distance of the test lattices
    for name, C, own in (("c0", C0, self_c0), ("c1", C1, self_c1)):
        c = d["curves"][name]
        c.update(r=r, value=[own] + [C] * (len(r) - 1), error=[0.0] * len(r), n=[0] * len(r))
        c["fit"]["amplitude"]["value"] = abs(C)
        c["fit"]["exponent"]["value"] = 0.0
        c["fit"]["sign"] = 1 if C >= 0 else -1
    d["scalars"]["softness_b"]["value"] = b
    d["scalars"]["frames_per_rearrangement"]["value"] = float(frames)
    d["scalars"]["site_strain_sd"]["value"] = 0.0          # a strain-free start
    d["curves"]["yield_strain"] = {"s": [-1.0, 1.0], "u": [0.0, 1.0],
                                   "value": [[0.01, 10.0], [0.01, 10.0]],
                                   "error": [[0.0, 0.0], [0.0, 0.0]], "n": [0, 0]}
    return parse_calibration(json.loads(json.dumps(d)), "single-event test")


@pytest.mark.parametrize("volumetric", [True, False])
def test_single_rearrangement_on_uniform_S_follows_update_law(volumetric):
    """One site rearranges on a uniform S field (two frames). Each frame every
    site changes by c0 + c1 (S - <S>) + b dk with the site-level kernels
    (the rearranging site by their d = 0 entries); dk is the static k of the released plastic strain
    plus the transient compression, whose remainder relaxes (b dk again) when
    the avalanche ends. The site releases the plastic strain kappa e of its
    elastic strain e at onset; the strains change by the kernel responses
    (self term -phi/kappa), so the site's own elastic strain changes by
    exactly -phi times itself."""
    C0, C1, b, own0, own1 = 0.02, -0.05, 3.0, -0.3, -0.1
    cal = single_event_calibration(C0, C1, b, own0, own1, frames=2)
    L, s0 = 32, -0.3
    m = STEPModel(L, cal, ModelOptions(volumetric=volumetric), seed=0)
    m.S[:] = s0
    m.u[:] = 0.5
    i = (5, 9)
    m.u[i] = 0.0
    m.state_changed()
    x, site = m.load()
    assert site == i[0] * L + i[1] and x == pytest.approx(0.005, rel=1e-14)
    e1b, e2b, kb = m.e1.copy(), m.e2.copy(), m.k.copy()
    m.run_avalanche(site)

    p = m.par
    K = EshelbyKernels(L, cal["lambda_relaxed"], cal["mu_relaxed"])
    kappa = cal["source_strength"] / cal["site_size"] ** 2
    K.set_self_term(-cal["relaxed_fraction"] / kappa, -cal["relaxed_fraction"] / kappa)
    P1, P2 = np.zeros((L, L)), np.zeros((L, L))
    P1[i] = kappa * e1b[i]
    P2[i] = kappa * e2b[i]
    half = K.response(P1 / 2, P2 / 2)  # per frame
    D = (cal["lambda_relaxed"] + 2 * cal["mu_relaxed"]) / cal["number_density"] \
        * cal["time_per_frame"] / cal["site_size"] ** 2

    def kt(t):
        if not volumetric:
            return np.zeros((L, L))
        f = K.irfft2(K.compression_hat(t, cal["compression_p"] / cal["site_size"] ** 2,
                                       cal["compression_t_centre"] / cal["time_per_frame"],
                                       cal["compression_width"] / cal["time_per_frame"], D))
        return np.roll(f, i, axis=(0, 1))

    c0 = np.full((L, L), C0)
    c1 = np.full((L, L), C1)
    c0[i], c1[i] = own0, own1
    S = np.full((L, L), s0)
    dks = [half[0] + kt(1), half[0] + kt(2) - kt(1)]
    for dk in dks:
        S = S + c0 + c1 * (S - S.mean()) + b * dk
    S_release_end = S[i]
    S = S - b * kt(2)
    np.testing.assert_allclose(m.S, S, rtol=0, atol=1e-13)
    np.testing.assert_allclose(m.e1, e1b + 2 * half[1], rtol=0, atol=1e-15)
    np.testing.assert_allclose(m.e2, e2b + 2 * half[2], rtol=0, atol=1e-15)
    np.testing.assert_allclose(m.k, kb + 2 * half[0], rtol=0, atol=1e-15)
    assert m.e2[i] == pytest.approx((1 - p.phi) * e2b[i], rel=1e-12)
    # the records
    r, a = m.rearrangements, m.avalanches
    assert len(r) == 1 and len(a) == 1
    assert (r["site_x"][0], r["site_y"][0]) == i and r["frame_end"][0] - r["frame"][0] == 2
    assert r["S_before"][0] == s0 and r["S_after"][0] == pytest.approx(S_release_end, abs=1e-13)
    assert r["p2"][0] == pytest.approx(P2[i], rel=1e-14)
    assert a["size"][0] == 1 and a["duration"][0] == 2 and a["n_sites"][0] == 1


def test_softness_off_freezes_S():
    cal = single_event_calibration()
    m = STEPModel(16, cal, ModelOptions(softness=False), seed=0)
    S0 = m.S.copy()
    for _ in range(5):
        m.avalanche()
    np.testing.assert_array_equal(m.S, S0)


# -- records and conservation laws ---------------------------------------------------

@pytest.fixture(scope="module")
def ran(cal):
    m = STEPModel(24, cal, ModelOptions(), seed=7)
    while m.gamma < 0.4:
        m.avalanche()
    return m


def test_stress_drop_is_plastic_strain_over_area(ran):
    """Strain control (q = 0): the mean elastic e2 drops by the plastic e2 x
    area over L^2, and k has no uniform part, so each avalanche's stress drop
    is 2 mu sum(p2) / L^2 (the transient carries no e2)."""
    m = ran
    r, a = m.rearrangements, m.avalanches
    psum = np.bincount(r["avalanche"], weights=r["p2"], minlength=len(a))
    drop = a["stress_after"] - a["stress_before"]
    np.testing.assert_allclose(drop, -2 * m.par.mu * psum / m.L**2, rtol=1e-9, atol=1e-15)
    assert abs(m.k.mean()) < 1e-15


def test_records_are_consistent(ran):
    m = ran
    r, a = m.rearrangements, m.avalanches
    assert a["size"].sum() == len(r)
    np.testing.assert_array_equal(np.bincount(r["avalanche"], minlength=len(a)), a["size"])
    assert np.all(r["frame_end"] - r["frame"] == m.par.n_frames)
    assert np.all(np.isfinite(r["S_after"])) and np.all(a["duration"] >= m.par.n_frames)
    # the trigger measure of every rearrangement reached its threshold, except
    # (only in frame 0) the loaded site, which sits on it to round-off
    eps = 2 * np.hypot(r["e1"], r["e2"])
    assert np.all(eps >= r["eps_y"] * (1 - 1e-12))
    assert np.all(np.diff(a["gamma"]) >= 0) and np.all(np.diff(r["frame"]) >= 0)
    assert np.all((a["n_sites"] <= a["size"]) & (a["n_sites"] >= 1))


def test_threshold_cache_holds_eps_y_at_each_sites_current_u(ran):
    """The per-site threshold cache (dynamics module docstring) after many
    avalanches: yref is exactly eps_y at the site's current u and the cached
    S (every new u refreshed its entry), so the bound eps_y >= yref -
    lip |S - sref| holds for every site at its current S."""
    m = ran
    assert len(m.rearrangements) > 100
    np.testing.assert_array_equal(m._yref, dyn.yield_strains(m.u, m._sref, m.ytab, m._s0, m._sinv,
                                                             m._u0, m._uinv))
    assert np.all(m.yield_strains() >= m._yref - m._lip * np.abs(m.S - m._sref) - 1e-15)


@pytest.mark.parametrize("L", [10, 12])
def test_frame_sum_of_S_is_the_field_stats_mean(cal, L):
    """frame_pass returns the lattice sum of the updated S in the summation
    order of field_stats (four interleaved sums; L = 10 leaves a remainder
    of 2 per row): a frame without increments gives exactly L^2 times the
    field_stats mean, and the sum to within round-off of the exact one."""
    m = STEPModel(L, cal, ModelOptions(), seed=2)
    for _ in range(20):
        m.avalanche()
    S = m.S.copy()
    none = np.zeros(0, dtype=np.int64)
    td = m._tD
    _, _, ssum = dyn.frame_pass(m.e1.copy(), m.e2.copy(), m.k.copy(), S, m.u,
                                m.busy.copy(), m.dp1.copy(), m.dp2.copy(), True, none, np.zeros(0),
                                np.zeros(0), m.Q, m._inc, False, m._dkt_real, none, none, td.lo, td.width,
                                td.off, td.planes, td.uni, 0.0, 0.0, m.par.b,
                                True, m.ytab, m._s0, m._sinv, m._u0, m._uinv, m._yref.copy(),
                                m._sref.copy(), m._lip, m.mode, m._done.copy(), m._over.copy())
    assert np.array_equal(S, m.S)  # no increments: S unchanged
    assert ssum / S.size == dyn.field_stats(S)[0] == dyn.field_mean(S)
    assert dyn.field_stats(S)[1] == pytest.approx(np.std(S), rel=1e-12)
    assert ssum == pytest.approx(math.fsum(S.ravel()), rel=1e-14)


def test_stress_strain_reaches_plateau(cal):
    """Before the first avalanche the response is elastic, stress = mu gamma
    (sigma_xy = 2 mu e2, e2 = gamma / 2). Later the stress saturates: over
    the second half of gamma <= 1.2 the tangent modulus (least-squares slope
    of the stress after each avalanche) is below 5 % of mu, in each of three
    seeds, and the plateau stress is well above zero."""
    for seed in range(3):
        m = STEPModel(16, cal, ModelOptions(), seed=seed)
        while m.gamma < 1.2:
            m.avalanche()
        a = m.avalanches
        mu = m.par.mu
        assert a["stress_before"][0] == pytest.approx(mu * a["gamma"][0], rel=1e-12)
        late = a["gamma"] >= 0.6
        slope = np.polyfit(a["gamma"][late], a["stress_after"][late], 1)[0]
        assert abs(slope) < 0.05 * mu, (seed, slope / mu)
        pl = stress_plateau(a["gamma"], a["stress_after"], 0.6)
        assert pl["mean"] > 10 * pl["error"] and pl["mean"] > 0.02 * mu


# -- determinism and the two frame paths --------------------------------------------

def tables_and_state(m):
    return (m.rearrangements.as_dict(), m.avalanches.as_dict(),
            {f: getattr(m, f) for f in m.STATE_FIELDS}, m.rng.bit_generator.state)


def assert_same_run(x, y):
    for dx, dy in zip(x[:3], y[:3]):
        assert dx.keys() == dy.keys()
        for k in dx:
            np.testing.assert_array_equal(dx[k], dy[k], err_msg=k)
    assert x[3] == y[3]


def test_fixed_seed_is_deterministic(cal):
    runs = []
    for seed in (11, 11, 12):
        m = STEPModel(24, cal, ModelOptions(), seed=seed, realspace_max_sources=2)
        for _ in range(80):
            m.avalanche()
        runs.append(tables_and_state(m))
    assert_same_run(runs[0], runs[1])
    assert not np.array_equal(runs[0][2]["S"], runs[2][2]["S"])


@pytest.mark.parametrize("L", [32, 25])
def test_realspace_and_transform_paths_agree(cal, L):
    """Real-space kernel adds (from the quarter table; odd L has no Nyquist
    row) and whole-field transforms give the same frame (strains, S through
    the c0, c1 and b dk terms, transient with two source ages) to round-off."""
    rng = np.random.default_rng(5)
    e1, e2 = rng.normal(0, 0.02, (2, L, L))
    sites = np.sort(rng.choice(L * L, 6, replace=False)).astype(np.int64)
    fields = []
    for nmax in (100, 0):
        m = STEPModel(L, cal, ModelOptions(), seed=0, realspace_max_sources=nmax)
        m.e1[:], m.e2[:] = e1, e2
        m._start(sites, 0)
        m._frame(sites)
        m.frame += 1
        m._start(sites[:2], 0)
        m._frame(sites)
        fields.append({f: getattr(m, f).copy() for f in ("e1", "e2", "k", "S")})
    for f in fields[0]:
        a, b = fields[0][f], fields[1][f]
        scale = np.abs(a - fields[0][f].mean()).max()
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-13 * max(scale, np.abs(a).max()), err_msg=f)
    dk = fields[0]["k"]
    assert np.abs(dk).max() > 0



def embed_window(table, a, L):
    """Plane a of a WindowTable as the full (L, L) field (source at site 0)."""
    lo, w = table.lo[a], table.width[a]
    out = np.full((L, L), table.uni[a])
    idx = (lo + np.arange(w)) % L
    out[np.ix_(idx, idx)] += table.planes[table.off[a]:table.off[a] + w * w].reshape(w, w)
    return out


def test_transient_windows_hold_the_closed_form(cal):
    """The real-space transient tables: every window plane plus its uniform
    value reproduces the closed form (compression_hat transformed back; D
    from the difference of the spectra, an independent round-off) to the
    truncation tolerance, windows are minimal (a value above the tolerance
    on their border) and smaller than the lattice for young sources, and
    the field table is the running sum of the change table."""
    L = 64
    m = STEPModel(L, cal, ModelOptions(), seed=0)
    D, H, K, p = m._tD, m._tH, m.K, m.par
    tol = TRANSIENT_TOL * 0.25 * (1 + K.nu)
    n = D.lo.size
    assert n >= 8 and D.width[0] < L // 2 and D.width[3] < L
    def hk(t):  # h(0) = 0: the source starts at its first frame (docs/model.md)
        return K.compression_hat(float(t), 1.0, p.comp_t, p.comp_w, p.D) if t > 0 else 0.0
    run = np.zeros((L, L))
    for a in range(n):
        ref_d = K.irfft2(hk(a + 1) - hk(a))
        ref_h = K.irfft2(hk(a + 1))
        for table, ref in ((D, ref_d), (H, ref_h)):
            emb = embed_window(table, a, L)
            assert np.abs(emb - ref).max() <= 2 * tol, a
            w = table.width[a]
            if w < L:  # minimal: its border holds a value above the tolerance
                vals = np.abs(table.planes[table.off[a]:table.off[a] + w * w].reshape(w, w))
                border = max(vals[0].max(), vals[-1].max(), vals[:, 0].max(), vals[:, -1].max())
                assert border > tol, a
        run += embed_window(D, a, L)
        np.testing.assert_allclose(run, embed_window(H, a, L), rtol=0, atol=(a + 2) * 2 * tol)


def test_transient_windows_agree_with_the_fourier_recursion(cal):
    """The same avalanches with the transient in real-space windows (default
    budget), always in the Fourier recursion (budget 0), and with a budget
    that makes avalanches switch from windows to the recursion part way
    through: the same frames and rearrangements, and fields that agree to
    round-off."""
    L = 64
    base = STEPModel(L, cal, ModelOptions(), seed=3, snapshots=False)
    while base.gamma < 0.3:  # towards the plateau: avalanches of many frames
        base.avalanche()
    state = base.get_state()
    runs, switches = [], []
    for budget in (None, 0, int(3 * base._tarea[4])):
        m = STEPModel(L, cal, ModelOptions(), seed=3, snapshots=False, transient_budget=budget)
        m.set_state(state)
        count = [0]
        to_fourier = m._to_fourier

        def counted():
            count[0] += int(np.any(m.frame - m._tstart >= 1))  # windows already in use
            to_fourier()
        m._to_fourier = counted
        for _ in range(30):
            m.avalanche()
        runs.append(m)
        switches.append(count[0])
    assert switches[0] < switches[2] and switches[2] >= 3 and switches[1] == 0
    ref = runs[1]
    for m in (runs[0], runs[2]):
        assert m.frame == ref.frame and len(m.rearrangements) == len(ref.rearrangements)
        for f in ("e1", "e2", "k", "S"):
            np.testing.assert_allclose(getattr(m, f), getattr(ref, f), rtol=0, atol=1e-12, err_msg=f)
    assert ref.frame - base.frame > 100

# -- pieces ------------------------------------------------------------------------

@pytest.mark.parametrize("L", [15, 16])
def test_quarter_planes_give_the_whole_kernel(L):
    """The real-space adds read a quarter of each kernel plane: unfolded by
    the mirror rules of the dynamics module docstring (planes 1 and 3 odd in
    both offsets, the others even) it gives back every plane of the full
    table (real_space_kernels, c0/c1-like radial planes) to round-off, for
    odd and even L (the Nyquist row of the odd planes is exactly zero)."""
    K = EshelbyKernels(L, 0.4, 0.3)
    G = K.real_space_kernels()
    d = np.minimum(np.arange(L), L - np.arange(L))
    radial = np.exp(-np.hypot(d[:, None], d[None, :]))
    full = np.concatenate([G[[0, 0, 1, 1, 2], [0, 1, 0, 1, 1]], radial[None], 2 * radial[None]])
    Q = quarter_planes(full, odd=(1, 3))
    h = L // 2 + 1
    assert Q.shape == (7, h, h)
    sgn = np.where(np.arange(L) <= L // 2, 1.0, -1.0)
    for c in range(7):
        back = Q[c][np.ix_(d, d)]
        if c in (1, 3):
            back = back * sgn[:, None] * sgn[None, :]
        scale = np.abs(full[c]).max()
        np.testing.assert_allclose(back, full[c], rtol=0, atol=1e-15 * scale, err_msg=str(c))
        if c in (1, 3):
            assert np.all(Q[c, 0] == 0) and np.all(Q[c, :, 0] == 0)
            if L % 2 == 0:
                assert np.all(Q[c, L // 2] == 0) and np.all(Q[c, :, L // 2] == 0)
    assert np.abs(Q[1]).max() > 0.1 * np.abs(Q[0]).max()  # the odd planes are not trivial


def test_site_kernel_is_the_law_at_the_lattice_distances():
    """Entry [dx, dy] is c(a |d|) at the minimum-image offset, the source
    itself c(0); symmetric under x <-> y and each mirror."""
    L, a = 16, 3.0
    c = lambda r: np.exp(-np.asarray(r) / 4.0) * (1 + 0.1 * np.asarray(r))
    K = site_kernel(c, L, a)
    for dx, dy in [(0, 0), (1, 0), (0, 2), (3, 1), (15, 1), (8, 8), (12, 5)]:
        mx, my = min(dx, L - dx), min(dy, L - dy)
        assert K[dx, dy] == pytest.approx(float(c(a * math.hypot(mx, my))), rel=1e-15), (dx, dy)
    np.testing.assert_array_equal(K, K.T)
    np.testing.assert_array_equal(K[1:, :], K[:0:-1, :])


def test_radial_profile_interpolates_and_extrapolates(cal):
    c = radial_profile(cal.curves["c0"])
    r, v = cal.curves["c0"]["r"], cal.curves["c0"]["value"]
    fit = cal.curves["c0"]["fit"]
    np.testing.assert_allclose(c(r), v, rtol=1e-15)
    assert r[0] == 0.0 and c(np.array([-1.0]))[0] == v[0]       # the site itself at r = 0
    mid = 0.5 * (r[3] + r[4])
    assert c(np.array([mid]))[0] == pytest.approx(0.5 * (v[3] + v[4]), rel=1e-14)
    far = np.array([60.0, 90.0])
    np.testing.assert_allclose(c(far), fit["sign"] * fit["amplitude"].value * far ** -fit["exponent"].value)


def test_marginal_yield_table(cal):
    """Classic mode's fixed threshold distribution is the calibrated one
    averaged over P(S): at its quantile eps(u), sum_b P_b F(eps | S_b) = u,
    within the resolution of the eps grid (range / 20000)."""
    y, ps = cal.curves["yield_strain"], cal.curves["p_s"]
    ug, tab = marginal_yield_table(y, ps)
    assert tab.shape == (1, ug.size) and np.all(np.diff(tab[0]) >= 0)
    pb = ps["density"] * np.diff(ps["edges"])
    sb = 0.5 * (ps["edges"][1:] + ps["edges"][:-1])
    res = (y["value"].max() - y["value"].min()) / 20000
    for j in (10, 100, 256, 400, 500):
        eps = tab[0, j]
        F = sum(p * np.interp(eps, ref_yield(cal, y["u"], np.full(y["u"].size, s)), y["u"])
                for p, s in zip(pb, sb))
        dF = max(abs(F - np.interp(eps + res, tab[0], ug)), 1e-3)
        assert abs(F - ug[j]) < dF, j


def test_periodic_extent_is_translation_invariant():
    L = 32
    x, y = np.array([0, 1, 2, 1]), np.array([0, 0, 1, 3])
    base = periodic_extent(x + 10, y + 10, L)
    assert periodic_extent((x - 1) % L, (y - 2) % L, L) == pytest.approx(base, rel=1e-12)
    dx, dy = x - x.mean(), y - y.mean()
    assert base == pytest.approx(math.sqrt((dx**2 + dy**2).mean()), rel=1e-12)


def test_power_law_fit_recovers_exponent():
    """Discrete power law on [1, 2000] with tau = 1.3, 20000 samples (inverse
    CDF): the fit is within 3 of its standard errors of 1.3."""
    rng = np.random.default_rng(0)
    s = np.arange(1, 2001)
    p = s ** -1.3
    cdf = np.cumsum(p) / p.sum()
    sizes = s[np.searchsorted(cdf, rng.random(20000))]
    fit = fit_power_law(sizes, 1, 2000)
    assert abs(fit["tau"] - 1.3) < 3 * fit["error"] and fit["error"] < 0.02
    assert math.isnan(fit_power_law([1, 1, 2])["tau"])


def test_placeholder_flag_is_stated(cal):
    assert not cal.calibrated and all(q.flag == PLACEHOLDER for q in cal.scalars.values())


def test_default_realspace_max_sources_follows_from_L(cal):
    """The default path choice is the fitted break-even (a function of L
    only): increasing in L, the documented values, used when None is given."""
    from step_epm.lattice.model import default_realspace_max_sources
    values = [default_realspace_max_sources(L) for L in (8, 32, 64, 128, 256, 512, 1024)]
    assert values == sorted(values) and min(values) >= 4
    assert values[2:6] == [5, 10, 16, 21]
    assert STEPModel(64, cal, ModelOptions()).realspace_max_sources == 5
    assert STEPModel(64, cal, ModelOptions(), realspace_max_sources=0).realspace_max_sources == 0


# -- the model's bounds and the initial strain field ----------------------------------

def test_source_strength_beyond_a_sites_reach_is_bounded_and_runs_stably():
    """A calibrated kappa above 1/|G(0)| (the site would overshoot its own
    strain and the dynamics run away) is bounded to it, and a relaxation
    phi below |G(0)| kappa gives the elastic self term: the run stays finite,
    and the run file's parameters record both."""
    d = placeholder_calibration().to_json()
    d["scalars"]["source_strength"]["value"] = 400.0          # 16 site areas at a = 5
    d["scalars"]["relaxed_fraction"]["value"] = 0.05
    cal = parse_calibration(json.loads(json.dumps(d)), "huge kappa")
    m = STEPModel(16, cal, ModelOptions(), seed=1)
    K = EshelbyKernels(16, cal["lambda_relaxed"], cal["mu_relaxed"])
    st = K.self_term()
    assert m.kappa_calibrated == pytest.approx(16.0)
    assert m.par.kappa == pytest.approx(1.0 / max(-st[1, 0], -st[2, 1]), rel=1e-12)
    assert m.self_clipped and m.self1 == pytest.approx(st[1, 0], abs=1e-14)
    while m.gamma < 0.3:
        m.avalanche()
    assert np.all(np.isfinite(m.e1)) and np.all(np.isfinite(m.e2)) and np.all(np.isfinite(m.S))
    assert np.abs(m.e2).max() < 1.0


def test_initial_strain_field_has_the_calibrated_spread_and_no_stress():
    """e1, e2 start as Gaussians of spread site_strain_sd with the lattice
    mean removed (zero initial stress), the same bits for the same seed."""
    cal = placeholder_calibration()
    a, b = STEPModel(64, cal, ModelOptions(), seed=4), STEPModel(64, cal, ModelOptions(), seed=4)
    sd = cal["site_strain_sd"]
    for f in (a.e1, a.e2):
        assert abs(f.mean()) < 1e-17 and f.std() == pytest.approx(sd, rel=0.05)
    assert abs(np.corrcoef(a.e1.ravel(), a.e2.ravel())[0, 1]) < 0.05
    np.testing.assert_array_equal(a.e1, b.e1)
    assert a.stress() == pytest.approx(0.0, abs=1e-17)
