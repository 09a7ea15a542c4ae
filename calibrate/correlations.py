"""Rearranger pair correlation g2(r, df) (SPEC.md section 4, item 2).

Input: avalanches, each a list of frames in order; a frame is a pair
(positions (n_f, 2) of the small rearrangers between frame f and f + 1,
box (Lx, Ly, tilt) of frame f). Lengths in small-particle diameters.
Pairs are taken within one avalanche only: i a rearranger of frame f, j one
of frame f + df (df >= 0; i != j when df = 0), distance and angle of
x_j - x_i by the minimum image in frame f's box (an avalanche's frames
share the box of its strain step), theta from the x axis in [0, 2 pi).

Definition, for an r bin b of area A_b = pi (r2^2 - r1^2) (and a (r, theta)
bin of area A_b / n_theta):

    g2(b, df) = sum_f #pairs(f, f + df in b)
                / sum_f [ n_f n'_{f+df} / V_f ] A_b,

with V_f = Lx Ly, n'_{f+df} = n_{f+df} (df > 0) or n_f - 1 (df = 0), and
both sums over the frames f of every avalanche for which f + df exists
and whose box contains the whole annulus (upper edge <= half the smallest
box width). It is the density of rearrangers at r in frame f + df given
one at the origin in frame f, divided by the mean density at that lag; 1
for uncorrelated rearrangers (up to the finite-number offset -1/n of a
fixed number n of rearrangers per frame).

Errors by bootstrap over avalanches. The tail fit is
g2 - 1 = sign A r^-alpha over ``fit_range`` (``fits.power_law_fit``).
"""

from dataclasses import dataclass

import numpy as np

from .fits import (Curve, Map, bootstrap, check_array, check_box, check_edges, check_range,
                   half_width, min_image, power_law_fit)

_CHUNK = 1 << 20  # pairs per vectorised block


@dataclass
class PairCorrelation:
    """Result of ``pair_correlation``: ``lags`` (nlag,); per lag a radial
    ``Curve`` (``radial[i]``; n = pairs counted) and an (r, theta) ``Map``
    (``angular[i]``); ``fits[i]`` the tail fit {"amplitude", "exponent":
    Quantity, "sign"} of g2 - 1; ``n_avalanches``."""

    lags: np.ndarray
    radial: list
    angular: list
    fits: list
    n_avalanches: int


def _pair_counts(pi, pj, box, edges, nt, same):
    """Histogram (nb * nt,) of pairs i in pi, j in pj (excluding i == j if
    ``same``) in (r, theta) bins; pairs beyond the box's half width dropped."""
    nb = edges.size - 1
    out = np.zeros(nb * nt)
    cap = half_width(box)
    rows = max(1, _CHUNK // max(len(pj), 1))
    for s in range(0, len(pi), rows):
        d = min_image(pj[None, :, :] - pi[s:s + rows, None, :], box)
        if same:
            ii = np.arange(s, min(s + rows, len(pi)))
            d[ii - s, ii] = np.nan
        r = np.hypot(d[..., 0], d[..., 1]).ravel()
        th = np.mod(np.arctan2(d[..., 1], d[..., 0]), 2 * np.pi).ravel()
        b = np.searchsorted(edges, r, side="right") - 1
        ok = (b >= 0) & (b < nb) & np.isfinite(r)
        ok[ok] &= edges[b[ok] + 1] <= cap
        t = np.minimum((th[ok] * nt / (2 * np.pi)).astype(int), nt - 1)
        out += np.bincount(b[ok] * nt + t, minlength=nb * nt)
    return out


def pair_correlation(avalanches, lags=(0, 1, 2, 4), r_edges=np.arange(0.0, 20.01, 1.0), n_theta=8,
                     fit_range=(2.0, 10.0), n_boot=200, seed=0) -> PairCorrelation:
    """g2(r, df), radial and (r, theta), with a power-law tail fit per lag.

    Args:
        avalanches: sequence of avalanches; each a sequence of frames
            (positions (n_f, 2), box (Lx, Ly, tilt)); see the module docstring.
        lags: frame lags df (integers >= 0).
        r_edges: (nb + 1,) increasing radial bin edges (length, >= 0).
        n_theta: equal theta bins on [0, 2 pi) for the maps.
        fit_range: (lo, hi) r range of the tail fit.
        n_boot, seed: bootstrap over avalanches.
    Returns:
        PairCorrelation. Bins without pairs in the denominator are NaN with
        n = 0; fits without data are NaN with n = 0 and a flag.
    """
    edges = check_edges(r_edges, "r_edges")
    if edges[0] < 0:
        raise ValueError("r_edges must be >= 0")
    lags = np.asarray(lags)
    if lags.ndim != 1 or lags.size == 0 or lags.dtype.kind not in "iu" or np.any(lags < 0):
        raise ValueError("lags must be a non-empty 1-D sequence of integers >= 0")
    if not (isinstance(n_theta, (int, np.integer)) and n_theta >= 1):
        raise ValueError("n_theta must be an integer >= 1")
    fit_range = check_range(fit_range, "fit_range")
    nb, nt, nl = edges.size - 1, int(n_theta), lags.size
    area = np.pi * (edges[1:] ** 2 - edges[:-1] ** 2)

    counts, norms = [], []
    for a, frames in enumerate(avalanches):
        pos, boxes = [], []
        for f, fr in enumerate(frames):
            try:
                p, box = fr
            except (TypeError, ValueError):
                raise ValueError(f"avalanches[{a}][{f}] must be (positions, box)") from None
            pos.append(check_array(p, (None, 2), f"avalanches[{a}][{f}] positions"))
            boxes.append(check_box(box, f"avalanches[{a}][{f}] box"))
        c = np.zeros((nl, nb * nt))
        z = np.zeros((nl, nb))
        for li, df in enumerate(lags):
            for f in range(len(pos) - df):
                pi, pj, box = pos[f], pos[f + df], boxes[f]
                nj = len(pj) - 1 if df == 0 else len(pj)
                if len(pi) == 0 or nj <= 0:
                    continue
                c[li] += _pair_counts(pi, pj, box, edges, nt, df == 0)
                z[li] += len(pi) * nj / (box[0] * box[1]) * (edges[1:] <= half_width(box))
        counts.append(c)
        norms.append(z)
    n_av = len(counts)
    centres = 0.5 * (edges[:-1] + edges[1:])
    theta_c = (np.arange(nt) + 0.5) * 2 * np.pi / nt

    if n_av:
        counts, norms = np.array(counts), np.array(norms)

        def stat(w):
            c = np.einsum("e,elk->lk", w, counts).reshape(nl, nb, nt)
            z = np.einsum("e,elb->lb", w, norms)[:, :, None] * area[None, :, None]
            with np.errstate(invalid="ignore", divide="ignore"):
                return {"radial": c.sum(axis=2) / z[:, :, 0], "map": c / (z / nt)}
        val, err, reps = bootstrap(stat, n_av, n_boot, seed)
        n_pairs = counts.sum(axis=0).reshape(nl, nb, nt).astype(np.int64)
        has = norms.sum(axis=0) > 0
        for key in ("radial", "map"):
            val[key][~has] = np.nan
            err[key][~has] = np.nan
    else:
        val = {"radial": np.full((nl, nb), np.nan), "map": np.full((nl, nb, nt), np.nan)}
        err = {k: v.copy() for k, v in val.items()}
        reps = {"radial": np.empty((0, nl, nb))}
        n_pairs = np.zeros((nl, nb, nt), np.int64)

    radial, angular, fits = [], [], []
    for li, df in enumerate(lags):
        cur = Curve(centres, val["radial"][li], err["radial"][li], n_pairs[li].sum(axis=1))
        radial.append(cur)
        angular.append(Map(centres, theta_c, val["map"][li], err["map"][li], n_pairs[li]))
        excess = Curve(centres, cur.value - 1.0, cur.error, cur.n)
        fits.append(power_law_fit(excess, reps["radial"][:, li] - 1.0, fit_range, n_av, "1",
                                  f"g2(r, df={int(df)}) - 1"))
    return PairCorrelation(lags=lags, radial=radial, angular=angular, fits=fits, n_avalanches=n_av)
