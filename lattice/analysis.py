"""Statistics of lattice runs: avalanche-size power law, stress plateau."""

import math

import numpy as np
from scipy.optimize import minimize_scalar


def fit_power_law(sizes, s_min=1, s_max=None):
    """Maximum-likelihood exponent tau of a discrete power law
    P(s) = s^-tau / Z(tau), Z = sum_{s = s_min}^{s_max} s^-tau, fitted to
    the sizes in [s_min, s_max] (s_max = the largest size if None).

    Returns dict(tau, error, n, s_min, s_max); error = 1/sqrt(n Var(ln s))
    (Fisher information at the optimum). Fewer than 10 sizes or a single
    distinct size: tau = error = NaN.
    """
    s = np.asarray(sizes, dtype=float)
    s_max = float(s.max()) if s_max is None and s.size else float(s_max or 0)
    sel = s[(s >= s_min) & (s <= s_max)]
    out = {"tau": math.nan, "error": math.nan, "n": int(sel.size), "s_min": float(s_min),
           "s_max": s_max}
    if sel.size < 10 or np.unique(sel).size < 2:
        return out
    support = np.arange(int(s_min), int(s_max) + 1, dtype=float)
    lns = np.log(support)
    mean_ln = float(np.log(sel).mean())

    def nll(tau):
        w = -tau * lns
        m = w.max()
        return tau * mean_ln + m + math.log(np.exp(w - m).sum())

    res = minimize_scalar(nll, bounds=(0.0, 6.0), method="bounded",
                          options={"xatol": 1e-10})
    tau = float(res.x)
    w = np.exp(-tau * lns - (-tau * lns).max())
    w /= w.sum()
    var = float((w * lns**2).sum() - (w * lns).sum() ** 2)
    out.update(tau=tau, error=1.0 / math.sqrt(sel.size * var) if var > 0 else math.nan)
    return out


def stress_plateau(gamma, stress, gamma_from):
    """Mean stress after avalanches at gamma >= gamma_from, with its
    standard error from 10 consecutive blocks (avalanches are correlated).
    Returns dict(mean, error, n)."""
    g, s = np.asarray(gamma), np.asarray(stress)
    sel = s[g >= gamma_from]
    if sel.size < 10:
        return {"mean": float(sel.mean()) if sel.size else math.nan, "error": math.nan, "n": int(sel.size)}
    blocks = np.array([b.mean() for b in np.array_split(sel, 10)])
    return {"mean": float(sel.mean()), "error": float(blocks.std(ddof=1) / math.sqrt(10)), "n": int(sel.size)}


def log_binned_pdf(sizes, bins_per_decade=5):
    """Density of sizes in logarithmic bins (integer-aware): returns
    (bin centres, density per unit size)."""
    s = np.asarray(sizes, dtype=float)
    if s.size == 0:
        return np.zeros(0), np.zeros(0)
    top = math.log10(s.max()) + 1e-9
    edges = np.unique(np.floor(10 ** np.arange(0, top + 1.0 / bins_per_decade, 1.0 / bins_per_decade)))
    edges = np.append(edges, edges[-1] + max(1.0, edges[-1] * (10 ** (1 / bins_per_decade) - 1)))
    counts, _ = np.histogram(s, bins=edges - 0.5)
    width = np.diff(edges)  # integers per bin
    centres = np.sqrt(edges[:-1] * (edges[1:] - 1).clip(min=edges[:-1]))
    keep = counts > 0
    return centres[keep], counts[keep] / (width[keep] * s.size)
