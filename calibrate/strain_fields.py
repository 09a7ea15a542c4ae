"""Strain fields around an isolated rearrangement (SPEC.md section 4, item 1).

Each ``FieldEvent`` is one isolated-rearrangement frame pair: the small
rearranger's position, every particle's position in the first frame, the
box (Lx, Ly, tilt) of that frame, and each particle's local strain between
the two frames (k, eps_dev, eps_xy = e2; SPEC.md section 2). Lengths in
small-particle diameters, strains dimensionless. r and theta are the
minimum-image distance and angle (from the x axis) of a particle from the
rearranger. Particles with a non-finite strain are skipped; only whole
annuli inside half the box's smallest width are used (``fits.radial_bins``),
so bins beyond it have n = 0.

Profiles (``Curve``, n = particles in the bin): per r bin, the mean over
particles (= angular average for uniformly spread particles) of k,
eps_dev, eps_xy, |k|, |eps_xy|; ``k_sin2``: the r^2-scaled amplitude a(r)
of k's sin(2 theta) component, the per-bin least squares
k = k_0 + a sin(2 theta)/r^2 + a' cos(2 theta)/r^2; ``k_iso``: the
isotropic part of k, the per-bin intercept k_0 with the pooled a, a'
removed. Maps (``Map``): mean k, eps_dev, eps_xy per (r, theta) bin.

Fits (``Quantity``, n = events; errors by bootstrap over events):

- c_dev, bg_dev: eps_dev = c_dev / r^2 + bg_dev, least squares over the
  particles with r in ``fit_range``;
- c_xy, bg_xy: |eps_xy| = c_xy / r^2 + bg_xy likewise. For the far field
  e2 = c cos(4 theta) / r^2 the angular average of |e2| is (2/pi)|c|/r^2,
  so c_xy = (2/pi)|c| while c_dev = 2|c|; the constants absorb the noise
  floor of the magnitudes;
- k_sin2: a, pooled over the bins in ``fit_range`` (one a and a' for all
  bins, a separate intercept per bin); for the SPEC.md section 5 far
  field of a unit source, a = (nu - 1)/(2 pi);
- k_iso_q Q and compression_length w: the isotropic part of k of one
  frame pair fitted as a Gaussian, k_iso(r) = Q / (2 pi w^2)
  exp(-r^2 / (2 w^2)), so that Q is its half-trace x area (the integral of
  k_iso over the plane, > 0 for dilation; length^2; reported only: the
  source's p comes from the region followed over time,
  ``calibrate.compression``) and w
  its spatial width (length; for the diffusive transient w^2 = 2 D_L t,
  not the file's ``compression_width``, which is a time). Each bin's
  model is the exact annulus average
  Q (exp(-r1^2/2w^2) - exp(-r2^2/2w^2)) / (pi (r2^2 - r1^2)),
  fitted to ``k_iso`` over the bins inside ``iso_range`` weighted by
  their particle counts.

Fit ranges are capped at the smallest half width of the events' boxes
(hi = max(lo, min(hi, half width)); an empty range gives NaN fits).
"""

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import curve_fit

from .fits import (Curve, Map, bootstrap, check_array, check_box, check_edges, check_range,
                   half_width, moments, polar, quantity, radial_bins, solve_moments)

PROFILES = ("k", "eps_dev", "eps_xy", "abs_k", "abs_eps_xy")
MAPS = ("k", "eps_dev", "eps_xy")


@dataclass
class FieldEvent:
    """One isolated rearrangement: ``origin`` (2,) the rearranger, ``pos``
    (N, 2) positions in the first frame, ``box`` (Lx, Ly, tilt) of that
    frame, and per-particle strains between the frames ``k``, ``eps_dev``,
    ``eps_xy`` (N,)."""

    origin: np.ndarray
    pos: np.ndarray
    box: tuple
    k: np.ndarray
    eps_dev: np.ndarray
    eps_xy: np.ndarray


@dataclass
class StrainFields:
    """Result of ``strain_fields``: ``profiles`` {name: Curve} for
    PROFILES + ("k_sin2", "k_iso"), ``maps`` {name: Map} for MAPS,
    ``fits`` {name: Quantity} for c_dev, bg_dev, c_xy, bg_xy, k_sin2,
    k_iso_q, compression_length; ``n_events``."""

    profiles: dict
    maps: dict
    fits: dict
    n_events: int


def _gauss_fit(edges, k_iso, n, sel):
    """(Q, w) of the annulus-averaged Gaussian on bins ``sel``; NaN if < 3 bins."""
    sel = sel & np.isfinite(k_iso) & (n > 0)
    if sel.sum() < 3:
        return math.nan, math.nan
    r1, r2 = edges[:-1][sel], edges[1:][sel]
    mids, y = 0.5 * (r1 + r2), k_iso[sel]

    def f(_, Q, w):
        s = 2.0 * w * w
        return Q * (np.exp(-r1**2 / s) - np.exp(-r2**2 / s)) / (np.pi * (r2**2 - r1**2))
    w0 = max(mids[0], 1.0)
    Q0 = y[0] * np.pi * 2 * w0 * w0 * math.exp(mids[0] ** 2 / (2 * w0 * w0))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (Q, w), _ = curve_fit(f, mids, y, p0=(Q0, w0), sigma=1.0 / np.sqrt(n[sel]), maxfev=4000)
    except (RuntimeError, ValueError):
        return math.nan, math.nan
    return float(Q), float(abs(w))


def strain_fields(events, r_edges=np.arange(0.5, 15.01, 0.5), n_theta=16, fit_range=(2.0, 8.0),
                  iso_range=(1.0, 8.0), n_boot=200, seed=0) -> StrainFields:
    """Radial profiles, (r, theta) maps and far-field fits of the strain
    caused by isolated rearrangements (see the module docstring).

    Args:
        events: sequence of ``FieldEvent``.
        r_edges: (nb + 1,) increasing radial bin edges (length).
        n_theta: number of equal theta bins on [0, 2 pi) for the maps.
        fit_range: (lo, hi) r range of the c_dev, c_xy and k_sin2 fits.
        iso_range: (lo, hi) r range of the Gaussian fit of k_iso.
        n_boot, seed: bootstrap over events.
    Returns:
        StrainFields. With no events (or no data in a fit range) the fits
        are NaN with n = 0 and a flag and the curves NaN with n = 0.
    """
    edges = check_edges(r_edges, "r_edges")
    if edges[0] < 0:
        raise ValueError("r_edges must be >= 0")
    if not (isinstance(n_theta, (int, np.integer)) and n_theta >= 1):
        raise ValueError("n_theta must be an integer >= 1")
    fit_range = check_range(fit_range, "fit_range")
    iso_range = check_range(iso_range, "iso_range")
    nb, nt = edges.size - 1, int(n_theta)
    centres = 0.5 * (edges[:-1] + edges[1:])
    theta_c = (np.arange(nt) + 0.5) * 2 * np.pi / nt

    events = list(events)
    boxes = [check_box(ev.box, f"events[{i}].box") for i, ev in enumerate(events)]
    n_ev = len(events)
    cap = min((half_width(box) for box in boxes), default=math.inf)
    fit_range = (fit_range[0], max(fit_range[0], min(fit_range[1], cap)))
    iso_range = (iso_range[0], max(iso_range[0], min(iso_range[1], cap)))
    in_fit = (edges[:-1] >= fit_range[0]) & (edges[1:] <= fit_range[1])
    in_iso = (edges[:-1] >= iso_range[0]) & (edges[1:] <= iso_range[1])

    n_bin, sums, map_n, map_sums, mom_k, mom_dev, mom_xy = [], [], [], [], [], [], []
    for i, (ev, box) in enumerate(zip(events, boxes)):
        origin = check_array(ev.origin, (2,), f"events[{i}].origin")
        pos = check_array(ev.pos, (None, 2), f"events[{i}].pos")
        n = len(pos)
        k, dev, xy = (check_array(getattr(ev, a), (n,), f"events[{i}].{a}") for a in ("k", "eps_dev", "eps_xy"))
        r, th = polar(origin, pos, box)
        b = radial_bins(r, edges, half_width(box))
        b[~(np.isfinite(k) & np.isfinite(dev) & np.isfinite(xy))] = -1
        use = b >= 0
        vals = np.column_stack([k, dev, xy, np.abs(k), np.abs(xy)])[use]
        bu = b[use]
        n_bin.append(np.bincount(bu, minlength=nb))
        sums.append(np.stack([np.bincount(bu, vals[:, j], minlength=nb) for j in range(vals.shape[1])], 1))
        bm = bu * nt + np.minimum((th[use] * nt / (2 * np.pi)).astype(int), nt - 1)
        map_n.append(np.bincount(bm, minlength=nb * nt))
        map_sums.append(np.stack([np.bincount(bm, vals[:, j], minlength=nb * nt) for j in range(3)], 1))
        with np.errstate(divide="ignore", invalid="ignore"):  # the origin (r = 0) is unbinned
            inv_r2 = 1.0 / r**2
            aniso = np.column_stack([np.sin(2 * th) * inv_r2, np.cos(2 * th) * inv_r2])
        mom_k.append(moments(b, aniso, k, nb))
        one = np.where((r >= fit_range[0]) & (r <= fit_range[1]) & (b >= 0), 0, -1)
        mom_dev.append(moments(one, inv_r2, dev, 1))
        mom_xy.append(moments(one, inv_r2, np.abs(xy), 1))

    if n_ev:
        n_bin, sums, map_n, map_sums = (np.array(a, dtype=float) for a in (n_bin, sums, map_n, map_sums))
        Mk, vk = (np.array([m[j] for m in mom_k]) for j in (0, 1))
        Md, vd = (np.array([m[j] for m in mom_dev]) for j in (0, 1))
        Mx, vx = (np.array([m[j] for m in mom_xy]) for j in (0, 1))

    def stat(w):
        with np.errstate(invalid="ignore", divide="ignore"):
            nw = w @ n_bin
            out = {"profiles": (w @ sums.reshape(n_ev, -1)).reshape(nb, -1) / nw[:, None],
                   "maps": (w @ map_sums.reshape(n_ev, -1)).reshape(nb * nt, 3) / (w @ map_n)[:, None]}
        Mkw, vkw = np.einsum("e,ebij->bij", w, Mk), np.einsum("e,ebi->bi", w, vk)
        per_bin = solve_moments(Mkw, vkw)
        pooled = solve_moments(Mkw, vkw, shared=(1, 2), use=in_fit)
        Q, wd = _gauss_fit(edges, pooled[:, 0], nw, in_iso)
        cd = solve_moments(np.einsum("e,ebij->bij", w, Md), np.einsum("e,ebi->bi", w, vd))[0]
        cx = solve_moments(np.einsum("e,ebij->bij", w, Mx), np.einsum("e,ebi->bi", w, vx))[0]
        out.update(k_sin2_r=per_bin[:, 1], k_iso=pooled[:, 0],
                   fits=np.array([cd[1], cd[0], cx[1], cx[0], pooled[0, 1], Q, wd]))
        return out

    if n_ev:
        val, err, _ = bootstrap(stat, n_ev, n_boot, seed)
        nb_tot = n_bin.sum(axis=0).astype(np.int64)
        nm_tot = map_n.sum(axis=0).astype(np.int64).reshape(nb, nt)
    else:
        val = {"profiles": np.full((nb, 5), np.nan), "maps": np.full((nb * nt, 3), np.nan),
               "k_sin2_r": np.full(nb, np.nan), "k_iso": np.full(nb, np.nan), "fits": np.full(7, np.nan)}
        err = {k: np.full_like(a, np.nan) for k, a in val.items()}
        nb_tot, nm_tot = np.zeros(nb, np.int64), np.zeros((nb, nt), np.int64)

    profiles = {name: Curve(centres, val["profiles"][:, j], err["profiles"][:, j], nb_tot)
                for j, name in enumerate(PROFILES)}
    profiles["k_sin2"] = Curve(centres, val["k_sin2_r"], err["k_sin2_r"], nb_tot)
    profiles["k_iso"] = Curve(centres, val["k_iso"], err["k_iso"], nb_tot)
    maps = {name: Map(centres, theta_c, val["maps"][:, j].reshape(nb, nt),
                      err["maps"][:, j].reshape(nb, nt), nm_tot) for j, name in enumerate(MAPS)}
    flag = "no events" if n_ev == 0 else None
    specs = [("c_dev", fit_range, "strain x length^2", "eps_dev = c_dev / r^2 + bg_dev"),
             ("bg_dev", fit_range, "strain", "background of eps_dev = c_dev / r^2 + bg_dev"),
             ("c_xy", fit_range, "strain x length^2", "<|eps_xy|>_theta = c_xy / r^2 + bg_xy"),
             ("bg_xy", fit_range, "strain", "background of <|eps_xy|>_theta = c_xy / r^2 + bg_xy"),
             ("k_sin2", fit_range, "strain x length^2", "a in k = a sin(2 theta) / r^2 + ..., pooled"),
             ("k_iso_q", iso_range, "length^2",
              "Q in k_iso = Q exp(-r^2 / 2 w^2) / (2 pi w^2) (half-trace x area)"),
             ("compression_length", iso_range, "length", "w in k_iso = Q exp(-r^2 / 2 w^2) / (2 pi w^2)")]
    fits = {name: quantity(val["fits"][j], err["fits"][j], n_ev, rng, unit, desc,
                           flag or (None if np.isfinite(val["fits"][j]) else "too little data in the fit range"))
            for j, (name, rng, unit, desc) in enumerate(specs)}
    return StrainFields(profiles=profiles, maps=maps, fits=fits, n_events=n_ev)
