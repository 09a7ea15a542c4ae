"""Transient compression source of a rearrangement (SPEC.md section 5,
item 3 needs its amplitude, time centre and Gaussian width in time).

Definitions (lengths in small-particle diameters, time in the overdamped
unit of SPEC.md section 0):

- Region: the particles within ``radius`` R of the rearranger (minimum
  image) in the frame where the rearrangement starts (the first frame of
  its isolated frame pair). The region is Lagrangian: the same particles
  are followed over the next frames.
- Compression of one frame pair j (frames j - 1 -> j): the half-trace x
  area of the region's strain, dQ_j = sum_{i in region} k_i(j) a with
  k_i(j) the volumetric strain (eps_xx + eps_yy)/2 of particle i between
  the two frames and a = V / N the area per particle (``frame_compression``;
  NaN k are left out). dQ > 0: the region dilates.
- Time: t_j = time of frame j minus the time of the onset frame (the
  rearrangement's first frame), so the first pair has t = its frame
  interval. Cumulative Q(t_j) = sum_{j' <= j} dQ_j'.
- Model: Q(t) = A Phi((t - t_c) / w), Phi the standard normal CDF, i.e. a
  Gaussian compression RATE A / (w sqrt(2 pi)) exp(-(t - t_c)^2 / 2 w^2)
  starting at the onset; t_c = ``compression_t_centre`` (time, >= 0),
  w = ``compression_width`` (time, > 0). Fitted by least squares on the
  pooled (t, Q) points of all events (every event's points weigh the
  same), errors by bootstrap over events (each replicate refitted).
- From the region's Q to the source (SPEC.md section 4, "Signs"): a
  source of plastic half-trace x area p (an inclusion whose eigenstrain
  dilates it) in an overdamped elastic medium has the total volumetric
  strain ((1 + nu)/2) p [delta_source(r) - H(r, t)], H the diffusion
  kernel of D_L = (lambda + 2 mu)/eta (unit integral): the inclusion
  itself dilates by the 2-D Eshelby factor (1 + nu)/2 while the
  compression it pushes into its surroundings, -(1 + nu)/2 p H, diffuses
  away (volume is conserved at every time). A region of radius R around
  it therefore holds Q_R(t) = ((1 + nu)/2) p (1 - int_{r<R} H) ->
  ((1 + nu)/2) p once the cloud has left it (R^2 / 4 D_L is ~10 time
  units against particle frames of ~100: the lag is below the frame
  resolution). So ``compression_p`` = 2 A / (1 + nu), nu the relaxed 2-D
  Poisson ratio (the lattice kernel's), and the lattice's outside field is
  -(1 + nu)/2 p H = -A H.

Too little data (fewer than ``min_events`` events or fewer than 4 points)
or a failed fit gives NaN quantities with n = 0 and a flag.
"""

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import curve_fit
from scipy.special import ndtr

from .fits import check_array, polar, quantity, spread


@dataclass
class CompressionEvent:
    """One rearrangement followed over the frames after its onset: ``t``
    (m,) time since the onset of the end of each frame pair (increasing,
    > 0), ``dQ`` (m,) the region's compression in that pair (half-trace x
    area, length^2)."""

    t: np.ndarray
    dQ: np.ndarray


def region(origin, pos, box, radius) -> np.ndarray:
    """(N,) bool: particles within ``radius`` (minimum image in ``box`` =
    (Lx, Ly, tilt)) of ``origin``, the rearranger included."""
    r, _ = polar(origin, pos, box)
    return r <= radius


def frame_compression(k, mask, area_per_particle) -> float:
    """Half-trace x area of one frame pair's strain over a region:
    sum of the finite k over ``mask`` times ``area_per_particle``."""
    k = np.asarray(k, dtype=float)[mask]
    return float(np.sum(k[np.isfinite(k)]) * area_per_particle)


def cumulative_model(t, amplitude, t_centre, width):
    """A Phi((t - t_c) / w)."""
    return amplitude * ndtr((np.asarray(t, float) - t_centre) / width)


def _fit(t, Q, weight):
    """(A, t_c, w) by least squares with per-point weights; NaN on failure."""
    keep = weight > 0
    t, Q, weight = t[keep], Q[keep], weight[keep]
    if t.size < 4 or np.ptp(t) <= 0:
        return (math.nan,) * 3
    order = np.argsort(t)
    ts, Qs = t[order], Q[order]
    A0 = float(np.median(Qs[-max(1, len(Qs) // 5):]))
    if A0 == 0.0:
        A0 = float(Qs[-1]) or 1e-12
    half = np.flatnonzero(Qs / A0 >= 0.5)
    tc0 = float(ts[half[0]]) if half.size else float(np.median(ts))
    w0 = max(0.5 * tc0, 0.1 * float(np.ptp(ts)), 1e-12)
    scale = float(ts[-1])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p, _ = curve_fit(cumulative_model, t / scale, Q, p0=(A0, tc0 / scale, w0 / scale),
                             sigma=1.0 / np.sqrt(weight),
                             bounds=([-np.inf, 0.0, 1e-9], [np.inf, np.inf, np.inf]),
                             maxfev=20000)
    except (RuntimeError, ValueError):
        return (math.nan,) * 3
    A, tc, w = float(p[0]), float(p[1]) * scale, float(p[2]) * scale
    if not all(map(math.isfinite, (A, tc, w))):
        return (math.nan,) * 3
    return A, tc, w


def compression_fit(events, nu, n_boot=200, seed=0, min_events=2, radius=None) -> dict:
    """Fit Q(t) = A Phi((t - t_c)/w) to the cumulative compression of the
    events and convert A to the source's p = 2 A / (1 + nu) (module
    docstring).

    Args:
        events: sequence of ``CompressionEvent``.
        nu: the 2-D Poisson ratio of the conversion (relaxed; NaN gives a
            NaN p with a flag).
        n_boot, seed: bootstrap over events.
        min_events: fewest events for a fit.
        radius: the region radius used (recorded as the fit range of p;
            None if unknown).
    Returns:
        {"compression_p", "compression_t_centre", "compression_width"}:
        Quantities (length^2, time, time), n = events.
    """
    ts, Qs, ids = [], [], []
    for i, ev in enumerate(events):
        t = check_array(ev.t, (None,), f"events[{i}].t")
        dQ = check_array(ev.dQ, (t.size,), f"events[{i}].dQ")
        ok = np.isfinite(t) & np.isfinite(dQ)
        if np.any(t[ok] <= 0) or np.any(np.diff(t[ok]) <= 0):
            raise ValueError(f"events[{i}].t must be > 0 and increasing")
        Q = np.cumsum(np.where(np.isfinite(dQ), dQ, 0.0))
        ts.append(t[ok])
        Qs.append(Q[ok])
        ids.append(np.full(ok.sum(), i))
    n_ev = len(ts)
    specs = [("compression_p", "length^2",
              "p = 2 A / (1 + nu), A in Q(t) = A Phi((t - t_c)/w) the rearranger region's own "
              "half-trace x area: the source's plastic half-trace x area (> 0: it dilates)"),
             ("compression_t_centre", "time", "t_c: centre of the Gaussian compression rate after the onset"),
             ("compression_width", "time", "w: standard deviation of the Gaussian compression rate")]
    rng = None if radius is None else (0.0, float(radius))
    t = np.concatenate(ts) if ts else np.empty(0)
    Q = np.concatenate(Qs) if Qs else np.empty(0)
    ev = np.concatenate(ids) if ids else np.empty(0, int)
    val = np.array(_fit(t, Q, np.ones_like(t))) if n_ev >= min_events else np.full(3, np.nan)
    flag = None
    if n_ev < min_events:
        flag = f"{n_ev} events (need {min_events})"
    elif not np.all(np.isfinite(val)):
        flag = "fit failed or too few points"
    err = np.full(3, np.nan)
    if flag is None and n_boot >= 2:
        g = np.random.default_rng(seed)
        reps = np.array([_fit(t, Q, g.multinomial(n_ev, np.full(n_ev, 1.0 / n_ev))[ev].astype(float))
                         for _ in range(n_boot)])
        err = spread(reps)
    nu = float(nu)
    to_p = 2.0 / (1.0 + nu) if math.isfinite(nu) and nu > -1.0 else math.nan
    out = {name: quantity(val[j] * (to_p if j == 0 else 1.0), err[j] * (to_p if j == 0 else 1.0),
                          n_ev if flag is None else 0, rng if j == 0 else None, unit, desc, flag)
           for j, (name, unit, desc) in enumerate(specs)}
    if flag is None and not math.isfinite(to_p):
        out["compression_p"] = quantity(math.nan, math.nan, 0, rng, specs[0][1], specs[0][2],
                                        f"no Poisson ratio for the conversion (nu = {nu!r})")
    return out
