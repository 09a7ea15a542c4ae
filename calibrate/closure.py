"""The closure table: does a lattice calibrated from particles behave like
particles that were not used to calibrate it? (SPEC.md section 6.)

One row per item, each with the particle value +- error, the lattice value
+- error, the band and a verdict: True (inside the band), False (outside)
or None (undecided: NaN or fewer than 2 units on one side). The particle side
should come from held-out runs (``held_out``: none of the trajectories is
among the calibration's inputs); the lattice side from runs at the same
physical size (L a = the particle box side) with every number from the
calibration. Nothing here is tuned: the bands are the issue's.

Units: stress over the calibrated relaxed mu; lengths in small-particle
diameters (lattice lengths are sites x a); softness in the SVM unit;
strain x length^2 for the plastic strain of an avalanche (the shear stress
drop x V / (2 mu), exact for the lattice: the q = 0 response).

Rows (``closure_rows``):

- ``stress``: steady-state sigma_xy / mu, the strain average over the
  second half of each run's strain range. Particles: the mean of the
  minimised states' stress (uniform strain steps); lattice: the sawtooth
  (stress after the loading, then after the avalanche) integrated over
  gamma. Error: blocks of the second half (``STRESS_BLOCKS`` per run), the
  standard error of their means. Band: |lattice / particles - 1| <= 25 %.
- ``P(S) sites`` / ``P(S) rearranging sites``: mean and width (standard
  deviation) of the site-averaged softness in the second half of the
  strain range. Particles: site S of the sampled minimised frames, and of
  each site event at its onset (calibrate/site_events.py); lattice: the avalanche table's
  S_mean, S_std (after each avalanche), and S_before of every
  rearrangement. Errors: standard error over frames (particles, all
  sites), over avalanches (lattice, all sites), bootstrap over onsets
  (rearranging sites). Bands: mean within 0.1, width within 20 %.
- ``far field``: c_dev, c_xy, k_sin2 of one site rearrangement, per
  frame (``strain_fields`` conventions). Particles: ``strain_fields`` on
  the frame pairs with exactly one rearranging site
  (calibrate/site_events.py), as the calibration measures it. Lattice: its far field is analytic (the
  kernels match the continuum within 1 % from 16 sites, docs/model.md):
  a rearrangement releases (p1, p2) a^2 / n_f per frame, so c_dev =
  (1 + nu) <|P|> / pi, c_xy = (1 + nu) <|P|> / pi^2 (the angular mean of
  |cos 4 theta| is 2/pi) and k_sin2 = (nu - 1) <P2> / (2 pi), means over
  the rearrangements of the second half, errors their standard errors.
  Band: within 15 %.
- ``avalanche plastic strain``: the two-sample Kolmogorov-Smirnov test of
  the positive plastic strains of the second half (band: p > 0.05) and
  the mean (standard errors; band: within 25 %).
- ``g2 anisotropy``: the sin 2 theta and cos 4 theta amplitudes of the
  rearranger pairs' angles (``g2_anisotropy``; for a lattice relative to
  its uncorrelated-pair geometry, ``lattice_geometry``), pooled over the
  lags <= 2 and the r bins in [``G2_R_MIN``, ``G2_R_MAX``]. Particles and STEP must be
  consistent with 0 (|A| <= 2 sigma); the e2-trigger ablation, when it was
  run, must be resolvably anisotropic (|A| > 2 sigma in at least one).
- ``dS(r)``: the site-level c0(r) the lattice applies (the calibration's
  curve at the lattice distances a |d|) against the same law measured on
  the compared runs coarse-grained on the lattice tiling
  (calibrate/site_events.py), per distance class within 2 sigma (both
  errors in quadrature).
"""

import math
from dataclasses import dataclass, field

import numpy as np

from .fits import bootstrap

#: blocks per run of the second half of the strain range (stress errors)
STRESS_BLOCKS = 5
#: g2 anisotropy: r range (lengths) and the lags pooled
G2_R_MIN, G2_R_MAX = 2.0, 20.0
G2_LAGS = (0, 1, 2)


@dataclass
class Row:
    """One line of the table: ``item``, ``particles`` and ``lattice``
    {value, error, n}, ``band`` (text), ``passed`` (True, False or None =
    undecided), ``note``."""

    item: str
    particles: dict
    lattice: dict
    band: str
    passed: bool | None
    note: str = ""

    def to_json(self):
        return {"item": self.item, "particles": self.particles, "lattice": self.lattice,
                "band": self.band, "pass": self.passed, "note": self.note}


@dataclass
class Closure:
    """The table: ``rows``, ``held_out`` (bool), ``notes`` (what limits it)."""

    rows: list
    held_out: bool
    notes: list = field(default_factory=list)

    def to_json(self):
        return {"held_out": self.held_out, "rows": [r.to_json() for r in self.rows],
                "passed": sum(r.passed is True for r in self.rows),
                "failed": sum(r.passed is False for r in self.rows),
                "undecided": sum(r.passed is None for r in self.rows), "notes": list(self.notes)}


def _v(value, error, n):
    return {"value": float(value), "error": float(error), "n": int(n)}


def _nan():
    return _v(math.nan, math.nan, 0)


def _sem(x):
    """(mean, standard error, n) of the finite entries of x."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan, 0
    err = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
    return float(x.mean()), err, int(x.size)


def _decidable(*ds):
    """Both sides finite and measured on at least 2 units."""
    return all(math.isfinite(d["value"]) and d["n"] >= 2 for d in ds)


def _relative_row(item, p, lat, tol, note=""):
    ok = None
    if _decidable(p, lat) and p["value"] != 0:
        ok = bool(abs(lat["value"] / p["value"] - 1.0) <= tol)
    return Row(item, p, lat, f"within {100 * tol:g} %", ok, note)


def _absolute_row(item, p, lat, tol, note=""):
    ok = None
    if _decidable(p, lat):
        ok = bool(abs(lat["value"] - p["value"]) <= tol)
    return Row(item, p, lat, f"within {tol:g}", ok, note)


# --------------------------------------------------------------------------
# the measurements
# --------------------------------------------------------------------------

def steady_stress_particles(curves, frac=0.5, blocks=STRESS_BLOCKS):
    """{value, error, n = blocks}: strain average of sigma / mu over the last
    (1 - frac) of each run's strain range, from ``curves`` [(gamma, sigma/mu)]
    of minimised states at uniform strain steps."""
    means = []
    for g, s in curves:
        g, s = np.asarray(g, float), np.asarray(s, float)
        keep = g >= frac * g.max()
        for part in np.array_split(s[keep], blocks):
            if part.size:
                means.append(part.mean())
    return _v(*_sem(means))


def _sawtooth_mean(g, s):
    """Strain average of a piecewise linear curve (vertical drops have no width)."""
    w = np.diff(g)
    return float(np.sum(0.5 * (s[1:] + s[:-1]) * w) / np.sum(w)) if np.sum(w) > 0 else math.nan


def steady_stress_lattice(curves, frac=0.5, blocks=STRESS_BLOCKS):
    """The same for lattice sawtooth curves [(gamma, sigma/mu)]."""
    means = []
    for g, s in curves:
        g, s = np.asarray(g, float), np.asarray(s, float)
        if g.size < 2:
            continue
        lo, hi = frac * g.max(), g.max()
        edges = np.linspace(lo, hi, blocks + 1)
        for a, b in zip(edges[:-1], edges[1:]):
            sel = (g >= a) & (g <= b)
            if sel.sum() >= 2:
                means.append(_sawtooth_mean(g[sel], s[sel]))
    return _v(*_sem(means))


def framewise_stats(values, frames):
    """Mean and width (sd) of samples grouped by frame: ({mean}, {width}),
    each the mean over frames of the per-frame statistic with its standard
    error over frames (frames are the independent units)."""
    values, frames = np.asarray(values, float), np.asarray(frames)
    ok = np.isfinite(values)
    values, frames = values[ok], frames[ok]
    if values.size == 0:
        return _nan(), _nan()
    _, inv = np.unique(frames, return_inverse=True)
    m = np.bincount(inv, values) / np.bincount(inv)
    sd = np.sqrt(np.maximum(np.bincount(inv, (values - m[inv]) ** 2) / np.bincount(inv), 0.0))
    return _v(*_sem(m)), _v(*_sem(sd))


def sample_stats(values, n_boot=200, seed=0):
    """Mean and sd of independent samples with bootstrap errors."""
    x = np.asarray(values, float)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return _nan(), _nan()
    def stat(w):
        m = w @ x / w.sum()
        return {"m": np.array(m), "s": np.array(math.sqrt(w @ (x - m) ** 2 / w.sum()))}
    val, err, _ = bootstrap(stat, x.size, max(n_boot, 2), seed)
    return _v(val["m"], err["m"], x.size), _v(val["s"], err["s"], x.size)


def lattice_far_field(p1, p2, a, n_frames, nu):
    """{"c_dev", "c_xy", "k_sin2"}: the per-frame far-field amplitudes of
    lattice rearrangements with plastic strains (p1, p2) (x site areas,
    whole rearrangement), site side a, released over n_frames (module
    docstring)."""
    p1, p2 = np.asarray(p1, float) * a * a / n_frames, np.asarray(p2, float) * a * a / n_frames
    mag = np.hypot(p1, p2)
    out = {}
    for name, x in (("c_dev", (1 + nu) * mag / math.pi), ("c_xy", (1 + nu) * mag / math.pi**2),
                    ("k_sin2", (nu - 1) * p2 / (2 * math.pi))):
        out[name] = _v(*_sem(x))
    return out


def lattice_geometry(L, a):
    """expected(r_lo, r_hi, theta_edges): the number of site offsets d != 0
    of an L x L periodic lattice (minimum image, side a) whose distance
    a |d| lies in [r_lo, r_hi) and angle in each theta bin: the angular
    density of pairs of uncorrelated sites, which is not uniform at lattice
    distances (the square lattice puts its offsets at particular angles)."""
    idx = np.arange(L)
    idx = np.where(idx > L // 2, idx - L, idx)
    X, Y = np.meshgrid(idx, idx, indexing="ij")
    r = a * np.hypot(X, Y).ravel()
    th = np.mod(np.arctan2(Y, X).ravel(), 2 * np.pi)

    def expected(r_lo, r_hi, edges):
        sel = (r >= r_lo) & (r < r_hi) & (r > 0)
        t = np.mod(th[sel] - edges[0], 2 * np.pi) + edges[0]
        return np.histogram(t, edges)[0].astype(float)
    return expected


def g2_anisotropy(pc, lags=G2_LAGS, r_min=G2_R_MIN, r_max=G2_R_MAX, geometry=None):
    """{"sin2": {value, error, n}, "cos4": ...}: the relative amplitudes
    A_m = 2 <f_m(theta)> of the rearranger pairs' angles, f = sin 2 theta,
    cos 4 theta, from the pair counts of the (r, theta) maps of ``pc`` (a
    PairCorrelation) in the r rows within [r_min, r_max] and the lags in
    ``lags``. Each row's counts n_ij are divided by the relative density
    of uncorrelated pairs per theta bin g_ij (1 for particles; for a
    lattice ``geometry`` (r_lo, r_hi, theta edges) -> counts,
    ``lattice_geometry``; rows with a theta bin that no site offset reaches
    are left out) and pooled, d_j = sum_i n_ij / g_ij; A = 2 sum_j d_j f_j /
    sum_j d_j. Error: Poisson counts (pairs sharing a rearranger are not
    independent: an estimate), at least the isotropic sqrt(2 / N); n: the
    pairs used. NaN with no pair."""
    if pc is None:
        return {"sin2": _nan(), "cos4": _nan()}
    theta = None
    rows = []
    for lag, m in zip(pc.lags, pc.angular):
        if int(lag) not in lags or m.r.size < 2:
            continue
        theta = np.asarray(m.theta, float)
        nt = theta.size
        edges = np.concatenate([theta - np.pi / nt, [theta[-1] + np.pi / nt]])
        r_edges = np.concatenate([[1.5 * m.r[0] - 0.5 * m.r[1]], 0.5 * (m.r[1:] + m.r[:-1]),
                                  [1.5 * m.r[-1] - 0.5 * m.r[-2]]])
        for i, r in enumerate(m.r):
            cnt = np.asarray(m.n[i], float)
            if not (r_min <= r <= r_max) or cnt.sum() < 1 or nt < 4:
                continue
            geo = np.ones(nt) if geometry is None else geometry(r_edges[i], r_edges[i + 1], edges)
            if np.any(geo <= 0):
                continue
            rows.append((cnt, geo / geo.mean()))
    if not rows:
        return {"sin2": _nan(), "cos4": _nan()}
    d = sum(c / g for c, g in rows)
    n_used = int(sum(c.sum() for c, _ in rows))
    tot = d.sum()
    out = {}
    for name, f in (("sin2", np.sin(2 * theta)), ("cos4", np.cos(4 * theta))):
        A = 2.0 * np.sum(d * f) / tot
        # dA/dn_ij = (2 f_j - A) / (g_ij tot), Poisson var(n_ij) = n_ij; at
        # least the isotropic value 4 <f^2> / N = 2 / N (a few pairs in one
        # bin would otherwise claim a zero error)
        var = sum(np.sum(((2 * f - A) / (g * tot)) ** 2 * c) for c, g in rows)
        out[name] = _v(A, math.sqrt(max(var, 2.0 / n_used)), n_used)
    return out


def _zero_row(item, p, lat, extra=None):
    """Particles and STEP consistent with 0 (|A| <= 2 sigma); ``extra``
    (label, value dict) must be resolvably non-zero."""
    def zero(d):
        return abs(d["value"]) <= 2 * d["error"] if math.isfinite(d["value"]) and math.isfinite(d["error"]) else None
    checks = [zero(p), zero(lat)]
    note = ""
    if extra is not None:
        label, d = extra
        z = zero(d)
        checks.append(None if z is None else not z)
        note = f"{label}: {d['value']:.3g} +- {d['error']:.2g}"
    ok = None if any(c is None for c in checks) else all(checks)
    return Row(item, p, lat, "particles and STEP |A| <= 2 sigma" +
               ("; e2 trigger |A| > 2 sigma" if extra is not None else ""), ok, note)


# --------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------

def closure_rows(particles, step, cal, e2=None, held_out=True):
    """The closure table.

    Args:
        particles: compare.SourceResult of the (held-out) particle runs.
        step: list of compare.SourceResult of the STEP lattice runs (same
            options, several seeds pooled).
        cal: the Calibration the lattice ran from.
        e2: list of SourceResult of the e2-trigger ablation, or None.
        held_out: whether the particle runs were left out of the calibration.
    Returns:
        Closure.
    """
    from scipy.stats import ks_2samp

    from ..lattice.model import radial_profile

    rows, notes = [], []
    if not held_out:
        notes.append("the particle runs were used to calibrate the lattice (not held out): this "
                     "table checks self-consistency, not prediction")
    # stress
    ps = steady_stress_particles([(g, s) for _, g, s in particles.stress])
    ls = steady_stress_lattice([(g, s) for r in step for _, g, s in r.stress])
    rows.append(_relative_row("steady-state sigma_xy / mu", ps, ls, 0.25))
    # P(S)
    x = particles.extra
    g_all, g_re = x.get("ps_site_all_gamma"), x.get("ps_site_rearr_gamma")
    gmax = max((float(np.max(g)) for _, g, _ in particles.stress if len(g)), default=math.nan)
    if g_all is not None and math.isfinite(gmax):
        keep = g_all >= 0.5 * gmax
        pm, pw = framewise_stats(particles.ps_site_all[keep], x["ps_site_all_frames"][keep])
        keep = g_re >= 0.5 * gmax
        rm, rw = sample_stats(particles.ps_site_rearr[keep])
    else:
        pm = pw = rm = rw = _nan()
    lm_list, lw_list, lre = [], [], []
    for r in step:
        st = r.extra.get("s_stats")
        if st is not None:
            g, m, sd = st
            keep = g >= 0.5 * np.max(g) if g.size else g.astype(bool)
            lm_list.append(m[keep])
            lw_list.append(sd[keep])
        g_rows = r.extra.get("ps_site_rearr_gamma")
        if g_rows is not None and g_rows.size:
            lre.append(r.ps_site_rearr[g_rows >= 0.5 * g_rows.max()])
    cat = (lambda v: np.concatenate(v) if v else np.zeros(0))
    lm, lw = _v(*_sem(cat(lm_list))), _v(*_sem(cat(lw_list)))
    lrm, lrw = sample_stats(cat(lre))
    rows += [_absolute_row("P(S) sites: mean", pm, lm, 0.1),
             _relative_row("P(S) sites: width", pw, lw, 0.2),
             _absolute_row("P(S) rearranging sites: mean", rm, lrm, 0.1),
             _relative_row("P(S) rearranging sites: width", rw, lrw, 0.2)]
    # far field
    pf = particles.extra.get("far_field", {})
    lf_src = []
    for r in step:
        if "p1" in r.extra:
            g = r.extra["ps_site_rearr_gamma"]
            keep = g >= 0.5 * g.max() if g.size else g.astype(bool)
            lf_src.append((r.extra["p1"][keep], r.extra["p2"][keep]))
    if lf_src:
        r0 = step[0].extra
        lf = lattice_far_field(cat([p for p, _ in lf_src]), cat([q for _, q in lf_src]),
                               r0["a"], r0["n_frames"], r0["nu"])
    else:
        lf = {}
    for name in ("c_dev", "c_xy", "k_sin2"):
        q = pf.get(name)
        p = _v(q.value, q.error, q.n) if q is not None else _nan()
        rows.append(_relative_row(f"far field {name}", p, lf.get(name, _nan()), 0.15,
                                  "per frame of one rearranging site (particles: frame pairs with "
                                  "exactly one" + ("" if p["n"] else "; none found") + ")"))
    # avalanche plastic strain
    pp = _steady(particles.plastic, x.get("plastic_gamma"), gmax)
    lp = cat([_steady(r.plastic, r.extra.get("plastic_gamma"),
                      float(np.max(r.extra["plastic_gamma"])) if r.extra.get("plastic_gamma") is not None
                      and r.extra["plastic_gamma"].size else math.nan) for r in step])
    if pp.size >= 2 and lp.size >= 2:
        ks = ks_2samp(pp, lp)
        rows.append(Row("avalanche plastic strain: distribution", _v(ks.statistic, math.nan, pp.size),
                        _v(ks.pvalue, math.nan, lp.size), "KS p > 0.05", bool(ks.pvalue > 0.05),
                        "particle column: KS statistic D; lattice column: p-value"))
    else:
        rows.append(Row("avalanche plastic strain: distribution", _v(math.nan, math.nan, pp.size),
                        _v(math.nan, math.nan, lp.size), "KS p > 0.05", None, "too few avalanches"))
    rows.append(_relative_row("avalanche plastic strain: mean", _v(*_sem(pp)), _v(*_sem(lp)), 0.25))
    # g2 anisotropy
    pa = g2_anisotropy(particles.g2)
    lat_aniso = (lambda r: g2_anisotropy(r.g2, geometry=lattice_geometry(r.extra["L"], r.extra["a"])))
    la = _pool_anisotropy([lat_aniso(r) for r in step])
    ea = _pool_anisotropy([lat_aniso(r) for r in e2]) if e2 else None
    for name, label in (("sin2", "g2 sin 2theta amplitude"), ("cos4", "g2 cos 4theta amplitude")):
        rows.append(_zero_row(label, pa[name], la[name], None if ea is None else ("e2 trigger", ea[name])))
    if e2 is None:
        notes.append("no e2-trigger run: the g2 rows do not check that the ablation is anisotropic")
    # dS(r) at the site level: the kernel the lattice applies (the
    # calibration's) vs the one measured on these particle runs
    c0m = particles.extra.get("c0_measured")
    item = "dS(r) after a site rearrangement: c0 per distance class"
    if c0m is not None and "c0" in cal.curves:
        applied = radial_profile(cal.curves["c0"])(c0m.r)
        app_err = np.interp(c0m.r, cal.curves["c0"]["r"], cal.curves["c0"]["error"])
        sig = np.hypot(c0m.error, app_err)
        ok = np.isfinite(c0m.value) & np.isfinite(sig) & (sig > 0)
        within = np.abs(c0m.value - applied)[ok] <= 2 * sig[ok]
        frac = within.mean() if ok.any() else math.nan
        rows.append(Row(item, _v(frac, math.nan, int(ok.sum())),
                        _v(int(within.sum()), math.nan, int(ok.sum())), "every class within 2 sigma",
                        None if not ok.any() else bool(within.all()),
                        "particle column: fraction of the distance classes within 2 sigma (both errors "
                        "in quadrature); lattice column: classes within"))
    else:
        rows.append(Row(item, _nan(), _nan(), "every class within 2 sigma", None,
                        "no site-level c0 measured on the particle runs"))
    return Closure(rows, held_out, notes)


def _steady(values, gamma, gmax):
    v = np.asarray(values, float)
    if gamma is None or not math.isfinite(gmax):
        return v[np.isfinite(v) & (v > 0)]
    keep = (np.asarray(gamma) >= 0.5 * gmax) & np.isfinite(v) & (v > 0)
    return v[keep]


def _pool_anisotropy(parts):
    """Inverse-variance pool of g2_anisotropy dicts (several seeds)."""
    out = {}
    for name in ("sin2", "cos4"):
        ds = [p[name] for p in parts if math.isfinite(p[name]["value"]) and p[name]["error"] > 0]
        if not ds:
            out[name] = _nan()
            continue
        w = np.array([1 / d["error"] ** 2 for d in ds])
        v = np.array([d["value"] for d in ds])
        out[name] = _v(np.sum(w * v) / w.sum(), 1 / math.sqrt(w.sum()), sum(d["n"] for d in ds))
    return out
