"""Shared helpers of the calibrate/ measurements (SPEC.md section 4).

Geometry (SPEC.md section 0): lengths in small-particle diameters. The box
of a frame, ``box = (Lx, Ly, tilt)``, is the parallelogram spanned by
a1 = (Lx, 0) and a2 = (tilt * Ly, Ly), for any tilt (it is reduced to
[-1/2, 1/2) first; for a non-square box by whole multiples of Lx / Ly). ``min_image`` returns minimum-image displacement
vectors, ``polar`` the distance r and angle theta (from the x axis, in
[0, 2 pi)) of many particles seen from one point.

Fits:

- ``moments`` / ``solve_moments``: linear least squares from per-bin
  sufficient statistics (sums of X^T X and X^T y with X = [1, x_1..x_q]),
  so that a bootstrap over events only re-weights per-event sums. Each
  regressor is either fitted per bin or shared by all bins (fixed
  effects: one slope, a separate intercept per bin).
- ``power_law``: value(r) = sign * A * r^-p by weighted non-linear least
  squares (scipy curve_fit) started from a log-log line.
- ``bootstrap``: resampling of independent units (events, avalanches,
  rearrangements) with a seeded numpy Generator; the error of a number is
  the standard deviation of its bootstrap replicates.
- ``quantity``: a ``step_epm.lattice.calibration.Quantity`` that follows
  the file's rule (a NaN value has n = 0 and a flag).

Binned results are ``Curve`` (radial) and ``Map`` ((r, theta)) dataclasses.
"""

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import curve_fit

from step_epm.lattice.calibration import Quantity


# --------------------------------------------------------------------------
# binned results
# --------------------------------------------------------------------------

@dataclass
class Curve:
    """A binned radial curve: bin centres ``r`` (nb,), ``value`` (nb,),
    bootstrap ``error`` (nb,) and sample size ``n`` (nb,) int (what is
    counted is stated by the function that returns it). NaN where a bin
    has too little data."""

    r: np.ndarray
    value: np.ndarray
    error: np.ndarray
    n: np.ndarray


@dataclass
class Map:
    """A binned (r, theta) map: bin centres ``r`` (nr,) and ``theta`` (nt,)
    (radians from the x axis), ``value``, ``error`` and ``n`` (nr, nt)."""

    r: np.ndarray
    theta: np.ndarray
    value: np.ndarray
    error: np.ndarray
    n: np.ndarray


# --------------------------------------------------------------------------
# argument checks and geometry
# --------------------------------------------------------------------------

def check_edges(edges, name, uniform=False):
    """Bin edges as a float array: 1-D, >= 2 finite, strictly increasing
    (and evenly spaced if ``uniform``); ValueError naming ``name`` otherwise."""
    e = np.asarray(edges, dtype=float)
    if e.ndim != 1 or e.size < 2 or not np.all(np.isfinite(e)) or np.any(np.diff(e) <= 0):
        raise ValueError(f"{name} must be a 1-D array of >= 2 finite, strictly increasing edges")
    if uniform and np.ptp(np.diff(e)) > 1e-9 * (e[-1] - e[0]):
        raise ValueError(f"{name} must be evenly spaced")
    return e


def check_range(rng, name):
    """A fit range (lo, hi) with 0 <= lo < hi, as a float tuple."""
    try:
        lo, hi = (float(x) for x in rng)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (lo, hi)") from None
    if not (0 <= lo < hi):
        raise ValueError(f"{name} must satisfy 0 <= lo < hi, got ({lo:g}, {hi:g})")
    return lo, hi


def check_box(box, name):
    """(Lx, Ly, tilt) as floats; Lx, Ly > 0 and all finite."""
    try:
        Lx, Ly, tilt = (float(x) for x in box)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (Lx, Ly, tilt)") from None
    if not (Lx > 0 and Ly > 0 and math.isfinite(Lx) and math.isfinite(Ly) and math.isfinite(tilt)):
        raise ValueError(f"{name} needs finite Lx, Ly > 0 and a finite tilt, got {box!r}")
    return Lx, Ly, tilt


def check_array(a, shape, name):
    """Float array of the given shape (None in ``shape`` matches any length)."""
    a = np.asarray(a, dtype=float)
    if a.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, a.shape)):
        want = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {a.shape}")
    return a


def reduced_tilt(Lx, Ly, tilt):
    """The tilt tr of the same lattice with tr Ly in [-Lx/2, Lx/2):
    a2 - m a1 for the integer m = round(tilt Ly / Lx) (tr in [-1/2, 1/2)
    for a square box)."""
    xy = tilt * Ly
    return (xy - Lx * math.floor(xy / Lx + 0.5)) / Ly


def half_width(box):
    """Half the smallest perpendicular width of the box: below this distance
    every pair has a unique nearest image and annuli are not cut."""
    Lx, Ly, tilt = box
    tr = reduced_tilt(Lx, Ly, tilt)
    return 0.5 * min(Ly, Lx / math.sqrt(1.0 + tr * tr))


def min_image(d, box):
    """Minimum-image versions of displacement vectors ``d`` (..., 2).

    The tilt is reduced (``reduced_tilt``: tr in [-1/2, 1/2) for a square
    box; a2 -> a2 - m a1, the same lattice for any Lx, Ly); d is brought to the unit
    cell of fractional coordinates of the basis a1 = (Lx, 0),
    a2 = (tr Ly, Ly) and the shortest of its 3 x 3 neighbouring images is
    returned (the true nearest image for any box whose reduced cell is not
    extremely elongated; always for |d| below ``half_width``)."""
    Lx, Ly, tilt = box
    tr = reduced_tilt(Lx, Ly, tilt)
    d = np.array(d, dtype=float)
    m2 = np.round(d[..., 1] / Ly)
    dx = d[..., 0] - m2 * tr * Ly
    dy = d[..., 1] - m2 * Ly
    dx -= np.round(dx / Lx) * Lx
    best_x, best_y = dx.copy(), dy.copy()
    best = dx * dx + dy * dy
    for i in (-1, 0, 1):
        for j in (-1, 0, 1):
            if i == 0 and j == 0:
                continue
            cx = dx + i * Lx + j * tr * Ly
            cy = dy + j * Ly
            c = cx * cx + cy * cy
            better = c < best
            best = np.where(better, c, best)
            best_x = np.where(better, cx, best_x)
            best_y = np.where(better, cy, best_y)
    return np.stack([best_x, best_y], axis=-1)


def polar(origin, pos, box):
    """Distance r (N,) and angle theta (N,) in [0, 2 pi) from the x axis of
    particles ``pos`` (N, 2) seen from ``origin`` (2,), minimum image."""
    d = min_image(np.asarray(pos, dtype=float) - np.asarray(origin, dtype=float), box)
    return np.hypot(d[:, 0], d[:, 1]), np.mod(np.arctan2(d[:, 1], d[:, 0]), 2 * np.pi)


def radial_bins(r, edges, cap, keep_origin=False):
    """Bin index of each r in ``edges``; -1 outside the bins, in a bin
    whose upper edge exceeds ``cap`` (only whole annuli are kept), or at
    r = 0 (the origin itself) unless ``keep_origin``."""
    b = np.searchsorted(edges, r, side="right") - 1
    nb = edges.size - 1
    ok = (b >= 0) & (b < nb) & ((r > 0) | keep_origin)
    ok[ok] &= edges[b[ok] + 1] <= cap
    return np.where(ok, b, -1)


# --------------------------------------------------------------------------
# linear least squares from moments
# --------------------------------------------------------------------------

def moments(bins, x, y, nb):
    """Per-bin sums M (nb, p, p) = sum X^T X and v (nb, p) = sum X^T y with
    X = [1, x] (p = 1 + q); ``bins`` (N,) int (-1 = unused), x (N, q), y (N,)."""
    keep = bins >= 0
    b = bins[keep]
    X = np.column_stack([np.ones(b.size), np.asarray(x, dtype=float).reshape(len(bins), -1)[keep]])
    yk = np.asarray(y, dtype=float)[keep]
    p = X.shape[1]
    M = np.empty((nb, p, p))
    v = np.empty((nb, p))
    for i in range(p):
        v[:, i] = np.bincount(b, X[:, i] * yk, minlength=nb)
        for j in range(i, p):
            M[:, i, j] = M[:, j, i] = np.bincount(b, X[:, i] * X[:, j], minlength=nb)
    return M, v


def solve_moments(M, v, shared=(), use=None):
    """Least squares y = a_b + sum_j beta_bj x_j + sum_s beta_s x_s from
    moments (``moments``): intercept and non-shared regressors per bin,
    the regressors listed in ``shared`` (column indices >= 1 of X) one
    value for all bins, fitted on the bins in ``use`` (bool (nb,), default
    all). Returns coef (nb, p): per-bin coefficients, evaluated with the
    shared ones fixed, in every bin that determines them (others NaN);
    the shared columns hold the shared values (NaN if undetermined)."""
    nb, p, _ = M.shape
    shared = list(shared)
    per = [j for j in range(p) if j not in shared]
    App = M[:, per][:, :, per]
    ok = M[:, 0, 0] >= len(per)
    with np.errstate(all="ignore"):
        ok &= np.linalg.cond(App) < 1e12
    Ainv = np.full_like(App, np.nan)
    Ainv[ok] = np.linalg.inv(App[ok])
    beta_s = np.zeros(len(shared))
    if shared:
        use = ok & (np.ones(nb, bool) if use is None else np.asarray(use, bool))
        Aps = M[use][:, per][:, :, shared]
        S = M[use][:, shared][:, :, shared] - np.einsum("bji,bjk,bkl->bil", Aps, Ainv[use], Aps)
        rhs = v[use][:, shared] - np.einsum("bji,bjk,bk->bi", Aps, Ainv[use], v[use][:, per])
        S, rhs = S.sum(axis=0), rhs.sum(axis=0)
        if use.any() and np.linalg.cond(S) < 1e12:
            beta_s = np.linalg.solve(S, rhs)
        else:
            beta_s[:] = np.nan
    r = v[:, per] - np.einsum("bjs,s->bj", M[:, per][:, :, shared], beta_s)
    coef = np.full((nb, p), np.nan)
    coef[:, per] = np.einsum("bjk,bk->bj", Ainv, r)
    coef[:, shared] = beta_s
    return coef


# --------------------------------------------------------------------------
# power law
# --------------------------------------------------------------------------

def power_law(r, y, err, fit_range, sign=None):
    """Fit y = sign * A * r^-p on the points with r in ``fit_range`` and
    finite y (weights 1/err^2 when every err there is finite and > 0,
    else unweighted). ``sign`` (+1/-1) defaults to the sign of the
    weighted mean of y in the range; a fit that lands on A < 0 is
    returned as (-A, -sign), so A >= 0 always. Returns (A, p, sign,
    n_points); A = p = NaN with fewer than 3 points or when the fit fails."""
    r, y, err = (np.asarray(a, dtype=float) for a in (r, y, err))
    sel = (r >= fit_range[0]) & (r <= fit_range[1]) & np.isfinite(y) & (r > 0)
    rs, ys, es = r[sel], y[sel], err[sel]
    weighted = bool(np.all(np.isfinite(es)) and np.all(es > 0))
    if sign is None:
        w = 1.0 / es**2 if weighted else np.ones_like(ys)
        sign = 1 if np.sum(w * ys) >= 0 else -1
    if rs.size < 3:
        return math.nan, math.nan, sign, int(rs.size)
    pos = sign * ys > 0
    if pos.sum() >= 2 and np.ptp(np.log(rs[pos])) > 0:
        slope, icpt = np.polyfit(np.log(rs[pos]), np.log(sign * ys[pos]), 1)
        p0 = (math.exp(icpt), -slope)
    else:
        p0 = (abs(np.mean(ys)) * np.mean(rs) ** 2 + 1e-300, 2.0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (A, p), _ = curve_fit(lambda x, A, p: sign * A * x**-p, rs, ys, p0=p0,
                                  sigma=es if weighted else None, maxfev=2000)
    except (RuntimeError, ValueError, TypeError):
        return math.nan, math.nan, sign, int(rs.size)
    if not (math.isfinite(A) and math.isfinite(p)):
        return math.nan, math.nan, sign, int(rs.size)
    if A < 0:  # the same curve with the sign carried separately (A >= 0 by convention)
        A, sign = -A, -sign
    return float(A), float(p), sign, int(rs.size)


#: a tail fit is flagged when more than this fraction of its bins has the other sign
SIGN_CHANGE_FRACTION = 0.2


def tail_fit_flag(curve, fit_range, A, p, sign, npts, eA, ep):
    """Why a power-law tail fit sign A r^-p of ``curve`` over ``fit_range``
    is not a result, or None: fewer than 3 finite bins, a failed fit, an
    exponent <= 0 (not a decaying tail), an error above the value (amplitude
    or exponent), or more than SIGN_CHANGE_FRACTION of the bins of the
    other sign (a single-sign power law does not describe the data)."""
    if npts < 3:
        return f"fewer than 3 finite bins in the fit range {tuple(fit_range)}"
    if not (math.isfinite(A) and math.isfinite(p)):
        return "power-law fit failed"
    if p <= 0:
        return f"exponent {p:.3g} <= 0: not a decaying tail"
    if (math.isfinite(eA) and eA > A) or (math.isfinite(ep) and ep > abs(p)):
        return f"undetermined: error above value (A {A:.2g} +- {eA:.2g}, p {p:.2g} +- {ep:.2g})"
    r, y = np.asarray(curve.r, float), np.asarray(curve.value, float)
    sel = (r >= fit_range[0]) & (r <= fit_range[1]) & np.isfinite(y) & (r > 0)
    other = np.mean(np.sign(y[sel]) == -sign) if sel.any() else 0.0
    if other > SIGN_CHANGE_FRACTION:
        return f"the data change sign in the fit range ({100 * other:.0f} % of the bins of the other sign)"
    return None


def power_law_fit(curve, replicates, fit_range, n, unit, what):
    """Power-law tail of a ``Curve`` as the calibration file's radial fit
    {"amplitude": Quantity, "exponent": Quantity, "sign": +1/-1}.

    The point estimate fits ``curve`` (weighted by its errors); the errors
    are the spread of the same fit (same weights and sign) over the
    bootstrap ``replicates`` (n_boot, nb) of the curve. ``n`` is the number
    of independent units behind the curve; ``unit`` that of the amplitude."""
    A, p, sign, npts = power_law(curve.r, curve.value, curve.error, fit_range)
    reps = np.array([power_law(curve.r, rep, curve.error, fit_range, sign)[:2] for rep in replicates])
    eA, ep = spread(reps.reshape(-1, 2)) if len(reps) else (math.nan, math.nan)
    flag = tail_fit_flag(curve, fit_range, A, p, sign, npts, eA, ep)
    nn = n if math.isfinite(A) else 0
    return {"amplitude": quantity(A, eA, nn, fit_range, unit, f"{what}: amplitude A of sign A r^-p", flag),
            "exponent": quantity(p, ep, nn, fit_range, "1", f"{what}: exponent p of sign A r^-p", flag),
            "sign": int(sign)}


# --------------------------------------------------------------------------
# bootstrap and quantities
# --------------------------------------------------------------------------

def bootstrap(stat, n_units, n_boot, seed):
    """Resample ``n_units`` independent units with replacement.

    ``stat(w)`` returns a dict of arrays from per-unit multiplicities
    w (n_units,) (ones = the data as measured). Returns (value, error,
    replicates): dicts with the same keys; replicates stacked on a first
    axis of length n_boot; error = their standard deviation (``spread``),
    NaN with fewer than 2 units."""
    value = {k: np.asarray(a, dtype=float) for k, a in stat(np.ones(n_units)).items()}
    if n_units < 2 or n_boot < 2:
        return value, {k: np.full(a.shape, np.nan) for k, a in value.items()}, \
            {k: np.empty((0,) + a.shape) for k, a in value.items()}
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n_units, np.full(n_units, 1.0 / n_units), size=n_boot).astype(float)
    outs = [stat(w) for w in weights]
    reps = {k: np.array([o[k] for o in outs], dtype=float) for k in value}
    return value, {k: spread(a) for k, a in reps.items()}, reps


def spread(replicates):
    """Standard deviation (ddof 1) over axis 0 of the finite replicates;
    NaN where fewer than half of them are finite."""
    a = np.asarray(replicates, dtype=float)
    fin = np.isfinite(a)
    cnt = fin.sum(axis=0)
    z = np.where(fin, a, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = z.sum(axis=0) / cnt
        var = (np.where(fin, a - mean, 0.0) ** 2).sum(axis=0) / (cnt - 1)
    return np.where(cnt >= max(2, a.shape[0] / 2), np.sqrt(var), np.nan)


def quantity(value, error, n, fit_range=None, unit="", description="", flag=None):
    """A calibration Quantity; a non-finite value or n = 0 gives NaN with
    n = 0 and a flag (``flag`` or "too little data")."""
    value = float(value)
    rng = None if fit_range is None else tuple(float(x) for x in fit_range)
    if not math.isfinite(value) or n <= 0:
        return Quantity(math.nan, math.nan, 0, rng, unit, description, flag or "too little data")
    return Quantity(value, float(error), int(n), rng, unit, description, flag)


def mean_quantity(x, name, unit, description, n_boot, seed):
    """Mean of the finite entries of the 1-D array ``x`` (argument name
    ``name``) as a Quantity: error by bootstrap over the entries, n = their
    number (NaN, n = 0 and a flag when there is none)."""
    x = check_array(x, (None,), name)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return quantity(math.nan, math.nan, 0, None, unit, description, f"no finite {name}")
    val, err, _ = bootstrap(lambda w: {"m": np.array(w @ x / w.sum())}, x.size, n_boot, seed)
    return quantity(val["m"], err["m"], x.size, None, unit, description)
