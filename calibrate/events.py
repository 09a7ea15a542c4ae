"""Per-rearrangement statistics (SPEC.md section 4, items 6 and 7).

- A *rearrangement* is a run of consecutive frame pairs f, f + 1, ... of one
  avalanche in which one particle is a rearranger (``find_rearrangements``
  on a (F, N) bool array: row f flags the rearrangers between frames f and
  f + 1). Its length in frames is the number of flagged rows; its plastic
  strain is the sum over those rows of the eps_dev of the particle's J
  between the two frames (dimensionless, a sum of magnitudes).
- ``rearrangement_stats``: mean frames per rearrangement and mean plastic
  strain, errors by bootstrap over rearrangements.
- ``relaxation``: what a rearrangement does to its own site. Input per
  rearrangement: e_el (2,) = (e1, e2), the deviatoric part of the local
  strain accumulated elastically before the onset (e.g. since the
  particle's last rearrangement), and de (2,), the change of (e1, e2) of
  the same neighbourhood over the rearrangement (onset frame to the frame
  after its last flagged row). The relaxed amount is the component of -de
  along e_el, rel = -de . e_el / |e_el|; the relaxed fraction is the
  least-squares slope through the origin of rel against |e_el|,
  f = sum rel |e_el| / sum |e_el|^2 (big strains weigh most; a ratio of
  sums, stable when some e_el are tiny). The residual is the eps_dev of
  the strain left, 2 |e_el + de|, averaged over rearrangements.
- ``frame_times``: the distribution of the time between consecutive
  frames (overdamped time units) on logarithmic bins, and its mean (the
  calibration's ``time_per_frame``).
"""

import math
from dataclasses import dataclass

import numpy as np

from .fits import bootstrap, check_array, mean_quantity, quantity


@dataclass
class Rearrangements:
    """Rearrangements of one avalanche (or several, concatenated): per
    rearrangement the ``particle`` index, ``start`` row, number of
    ``frames`` and ``plastic_strain`` (sum of eps_dev; NaN if any of its
    rows has a non-finite eps_dev)."""

    particle: np.ndarray
    start: np.ndarray
    frames: np.ndarray
    plastic_strain: np.ndarray


@dataclass
class Histogram:
    """``edges`` (nb + 1,), ``density`` (nb,) integrating to 1 over the
    bins, ``n`` (nb,) counts."""

    edges: np.ndarray
    density: np.ndarray
    n: np.ndarray


def find_rearrangements(flags, eps_dev) -> Rearrangements:
    """Runs of consecutive rearranger rows per particle (module docstring).

    Args:
        flags: (F, N) bool, rearranger between frames f and f + 1 of one avalanche.
        eps_dev: (F, N) eps_dev of each particle's J between the same frames.
    Returns:
        Rearrangements ordered by particle, then start.
    """
    flags = np.asarray(flags)
    if flags.ndim != 2 or flags.dtype != bool:
        raise ValueError(f"flags must be a 2-D bool array (F, N), got {flags.dtype} {flags.shape}")
    eps = check_array(eps_dev, flags.shape, "eps_dev")
    F, N = flags.shape
    pad = np.zeros((1, N), bool)
    d = np.diff(np.vstack([pad, flags, pad]).astype(np.int8), axis=0).T      # (N, F + 1)
    particle, start = np.nonzero(d == 1)
    _, end = np.nonzero(d == -1)
    x = np.where(flags, eps, 0.0)
    bad = ~np.isfinite(x)
    cs = np.vstack([np.zeros((1, N)), np.cumsum(np.where(bad, 0.0, x), axis=0)])
    cb = np.vstack([np.zeros((1, N), np.int64), np.cumsum(bad, axis=0)])
    plastic = cs[end, particle] - cs[start, particle]
    plastic[cb[end, particle] > cb[start, particle]] = np.nan
    return Rearrangements(particle=particle, start=start, frames=end - start, plastic_strain=plastic)


def rearrangement_stats(rearrangements, n_boot=200, seed=0):
    """Mean frames per rearrangement and mean plastic strain.

    Args:
        rearrangements: a sequence of ``Rearrangements`` (e.g. one per avalanche).
    Returns:
        {"frames_per_rearrangement": Quantity (frames), "plastic_strain":
        Quantity (eps_dev)}; errors by bootstrap over rearrangements, n =
        rearrangements used (NaN, n = 0 and a flag with none).
    """
    frames = np.concatenate([np.asarray(r.frames, float) for r in rearrangements] or [np.empty(0)])
    plastic = np.concatenate([np.asarray(r.plastic_strain, float) for r in rearrangements] or [np.empty(0)])
    return {"frames_per_rearrangement": mean_quantity(frames, "frames", "frames",
                                                      "frames a rearrangement lasts", n_boot, seed),
            "plastic_strain": mean_quantity(plastic, "plastic_strain", "strain (eps_dev)",
                                            "plastic strain of a rearrangement (sum of eps_dev over its frames)",
                                            n_boot, seed)}


def relaxation(e_el, de, n_boot=200, seed=0):
    """Relaxed fraction and residual of the local deviatoric strain.

    Args:
        e_el: (n, 2) elastic (e1, e2) before the onset; de: (n, 2) its change
            over the rearrangement (module docstring). Rows with a
            non-finite entry or e_el = 0 are skipped.
    Returns:
        {"relaxed_fraction": Quantity (1), "residual": Quantity (eps_dev)};
        errors by bootstrap over rearrangements.
    """
    e_el = check_array(e_el, (None, 2), "e_el")
    de = check_array(de, (len(e_el), 2), "de")
    mag = np.hypot(e_el[:, 0], e_el[:, 1])
    ok = np.all(np.isfinite(e_el), axis=1) & np.all(np.isfinite(de), axis=1) & (mag > 0)
    rel = -np.sum(de[ok] * e_el[ok], axis=1) / mag[ok]
    mag = mag[ok]
    left = 2 * np.hypot(*(e_el[ok] + de[ok]).T)
    n = int(ok.sum())
    if n == 0:
        val = err = {"f": np.nan, "res": np.nan}
    else:
        val, err, _ = bootstrap(lambda w: {"f": np.array((w @ (rel * mag)) / (w @ mag**2)),
                                           "res": np.array(w @ left / w.sum())}, n, n_boot, seed)
    flag = None if n else "no rearrangement with a finite, nonzero elastic strain"
    return {"relaxed_fraction": quantity(val["f"], err["f"], n, None, "1",
                                         "fraction of the local elastic deviatoric strain relaxed", flag),
            "residual": quantity(val["res"], err["res"], n, None, "strain (eps_dev)",
                                 "eps_dev of the local strain left, 2 |e_el + de|", flag)}


def frame_times(dt, bins_per_decade=5, n_boot=200, seed=0):
    """Distribution and mean of the time between consecutive frames.

    Args:
        dt: (n,) times between consecutive frames of the avalanches (> 0).
        bins_per_decade: logarithmic bins per factor 10; edges at
            10^(j / bins_per_decade) spanning the data.
    Returns:
        (Histogram, Quantity ``time_per_frame``: the mean dt, bootstrap
        error over frames). With no dt: an empty histogram (0 bins) and a
        NaN quantity with n = 0 and a flag.
    """
    dt = check_array(dt, (None,), "dt")
    if np.any(~np.isfinite(dt)) or np.any(dt <= 0):
        raise ValueError("dt must be finite and > 0")
    if not (isinstance(bins_per_decade, (int, np.integer)) and bins_per_decade >= 1):
        raise ValueError("bins_per_decade must be an integer >= 1")
    mean = mean_quantity(dt, "dt", "time", "mean time between particle frames", n_boot, seed)
    if dt.size == 0:
        return Histogram(np.empty(0), np.empty(0), np.empty(0, np.int64)), mean
    lo = math.floor(np.log10(dt.min()) * bins_per_decade)
    hi = math.floor(np.log10(dt.max()) * bins_per_decade) + 1
    edges = 10.0 ** (np.arange(lo, hi + 1) / bins_per_decade)
    edges[0], edges[-1] = min(edges[0], dt.min()), max(edges[-1], dt.max())   # round-off
    n, _ = np.histogram(dt, edges)
    return Histogram(edges, n / (dt.size * np.diff(edges)), n.astype(np.int64)), mean
