"""Yield strain versus softness (SPEC.md section 4, item 5).

Input, one entry per rearrangement onset (a particle that starts
rearranging at frame f): ``S``, its softness at f - df (or at its last
rearrangement), and ``eps``, the eps_dev of its neighbourhood's strain from
then to f (one J fit; dimensionless, >= 0). Computing these from frames is
the driver's job; call once per df and once for "since the last
rearrangement". Pairs with a non-finite S or eps are skipped.

Binning: S into ``s_edges`` (evenly spaced, as the calibration file's
yield_strain table needs a uniform s grid; s = bin centres). Per bin with
at least ``min_count`` onsets: the mean and the quantiles at levels ``u``
(np.quantile, linear interpolation; non-decreasing in u by construction);
thinner bins are NaN (their n is still reported). Errors by bootstrap over
the onsets of each bin (a stratified bootstrap: bins are resampled
independently, keeping their counts). Fit: the bin medians
eps_med(S) = a + b S by weighted least squares (weights 1/error^2 of the
medians), errors from the same fit on the bootstrap replicates.
"""

import math
from dataclasses import dataclass

import numpy as np

from .fits import check_array, check_edges, quantity, spread


@dataclass
class YieldStrain:
    """Result of ``yield_strain``: ``s`` (nS,) bin centres, ``u`` (nU,)
    levels, ``mean``/``mean_error`` (nS,), ``value``/``error`` (nS, nU)
    quantiles, ``n`` (nS,) onsets per bin, ``a`` and ``b`` (Quantity) of the
    median fit eps_med = a + b S."""

    s: np.ndarray
    u: np.ndarray
    mean: np.ndarray
    mean_error: np.ndarray
    value: np.ndarray
    error: np.ndarray
    n: np.ndarray
    a: object
    b: object

    def calibration_curve(self):
        """The calibration file's ``yield_strain`` dict {s, u, value, error,
        n}. Rows without data (NaN) are filled with the nearest row that has
        data (flat extrapolation in S, n kept as measured). Returns None
        when no row has data or a quantile is <= 0 (the file needs > 0)."""
        good = np.all(np.isfinite(self.value), axis=1)
        if not good.any() or np.any(self.value[good] <= 0):
            return None
        idx = np.flatnonzero(good)
        near = idx[np.argmin(np.abs(np.arange(self.s.size)[:, None] - idx[None, :]), axis=1)]
        return {"s": self.s.copy(), "u": self.u.copy(), "value": self.value[near],
                "error": self.error[near], "n": self.n.astype(np.int64)}


def _line(s, y, e):
    """Weighted least squares y = a + b s on finite points; (a, b) or NaN."""
    ok = np.isfinite(y) & np.isfinite(e) & (e > 0)
    if ok.sum() < 3:
        return math.nan, math.nan
    w = 1.0 / e[ok] ** 2
    X = np.column_stack([np.ones(ok.sum()), s[ok]])
    a, b = np.linalg.solve(X.T @ (w[:, None] * X), X.T @ (w * y[ok]))
    return float(a), float(b)


def yield_strain(S, eps, s_edges=np.arange(-3.0, 2.01, 0.5), u=np.linspace(0.05, 0.95, 19),
                 min_count=10, n_boot=200, seed=0) -> YieldStrain:
    """Yield-strain statistics binned by softness (module docstring).

    Args:
        S: (n,) softness of each onset; eps: (n,) its yield strain (eps_dev >= 0).
        s_edges: (nS + 1,) evenly spaced increasing softness bin edges.
        u: (nU,) evenly spaced quantile levels in [0, 1], nU >= 2.
        min_count: fewest onsets for a bin's statistics.
        n_boot, seed: bootstrap.
    Returns:
        YieldStrain (a, b NaN with n = 0 and a flag when fewer than 3 bins
        have data).
    """
    S = check_array(S, (None,), "S")
    eps = check_array(eps, (S.size,), "eps")
    edges = check_edges(s_edges, "s_edges", uniform=True)
    u = check_edges(u, "u", uniform=True)
    if u[0] < 0 or u[-1] > 1:
        raise ValueError("u must lie in [0, 1]")
    if np.any(eps[np.isfinite(eps)] < 0):
        raise ValueError("eps must be >= 0 (an eps_dev)")
    if not (isinstance(min_count, (int, np.integer)) and min_count >= 2):
        raise ValueError("min_count must be an integer >= 2")
    ok = np.isfinite(S) & np.isfinite(eps)
    S, eps = S[ok], eps[ok]
    nS, nU = edges.size - 1, u.size
    b = np.searchsorted(edges, S, side="right") - 1
    b[S == edges[-1]] = nS - 1
    levels = np.append(u, 0.5)   # the quantiles, then the median for the fit
    est = np.full((nS, nU + 2), np.nan)          # mean, quantiles, median
    reps = np.full((max(n_boot, 0), nS, nU + 2), np.nan)
    n = np.zeros(nS, np.int64)
    rng = np.random.default_rng(seed)
    for j in range(nS):
        x = eps[b == j]
        n[j] = x.size
        if x.size < min_count:
            continue
        est[j] = np.concatenate([[x.mean()], np.quantile(x, levels)])
        for lo in range(0, n_boot, 32):
            hi = min(n_boot, lo + 32)
            xb = x[rng.integers(0, x.size, (hi - lo, x.size))]
            reps[lo:hi, j, 0] = xb.mean(axis=1)
            reps[lo:hi, j, 1:] = np.quantile(xb, levels, axis=1).T
    err = spread(reps) if n_boot >= 2 else np.full_like(est, np.nan)
    s = 0.5 * (edges[:-1] + edges[1:])
    a_, b_ = _line(s, est[:, -1], err[:, -1])
    fit_reps = np.array([_line(s, rep[:, -1], err[:, -1]) for rep in reps]).reshape(-1, 2)
    ea, eb = spread(fit_reps) if len(fit_reps) >= 2 else (math.nan, math.nan)
    used = int(n[np.isfinite(est[:, -1])].sum()) if math.isfinite(a_) else 0
    rng_s = (float(edges[0]), float(edges[-1]))
    flag = None if used else "fewer than 3 softness bins with enough onsets"
    qa = quantity(a_, ea, used, rng_s, "strain (eps_dev)", "a in median eps_y(S) = a + b S", flag)
    qb = quantity(b_, eb, used, rng_s, "strain (eps_dev)/softness", "b in median eps_y(S) = a + b S", flag)
    return YieldStrain(s=s, u=u, mean=est[:, 0], mean_error=err[:, 0], value=est[:, 1:-1],
                       error=err[:, 1:-1], n=n, a=qa, b=qb)
