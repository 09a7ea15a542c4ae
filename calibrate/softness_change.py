"""Softness change around a rearrangement (SPEC.md section 4, items 3 and 4).

Each ``SoftnessEvent`` is one frame pair with one rearranger at ``origin``
(isolated frames for c0 and b; the driver may also pass every frame's
rearrangers for the near-field c1): positions ``pos`` (N, 2) and box
(Lx, Ly, tilt) of the first frame, per particle the softness ``S`` before,
its change ``dS`` over the frame pair and the volumetric strain ``k``
between the frames, and ``S_mean`` = <S>, the mean softness of the frame.
Lengths in small-particle diameters; softness dimensionless; r is the
minimum-image distance from the rearranger. Particles with a non-finite
S, dS or k are skipped; only whole annuli inside half the box's smallest
width are used.

Model, per frame: dS = c0(r) + c1(r) (S - <S>) + b k.

1. b: one least-squares fit over the particles in the r bins inside
   ``far_range``, with a separate intercept c0 and slope c1 per bin and
   one b for all (identifiable because k varies with angle around the
   rearranger at fixed r).
2. c0(r), c1(r): per r bin, least squares of dS - b k on (1, S - <S>).
   If b is undetermined (NaN) it is taken as 0 here and every curve and
   fit is flagged.
3. Tails: sign A r^-p fits of c0 and c1 over ``tail_range``
   (``fits.power_law_fit``), in the calibration file's radial-curve format.

Curves: n = particles per bin. Errors by bootstrap over events; the
fitted numbers' n is the number of events.
"""

import math
from dataclasses import dataclass

import numpy as np

from .fits import (Curve, bootstrap, check_array, check_box, check_edges, check_range, half_width,
                   mean_quantity, moments, polar, power_law_fit, quantity, radial_bins,
                   solve_moments)


@dataclass
class SoftnessEvent:
    """One frame pair around a rearranger: ``origin`` (2,), ``pos`` (N, 2),
    ``box`` (Lx, Ly, tilt), ``S``, ``dS``, ``k`` (N,), ``S_mean`` float."""

    origin: np.ndarray
    pos: np.ndarray
    box: tuple
    S: np.ndarray
    dS: np.ndarray
    k: np.ndarray
    S_mean: float


@dataclass
class SoftnessChange:
    """Result of ``softness_change``: ``c0``, ``c1`` Curves (softness per
    frame; n = particles), their tail fits ``c0_fit``, ``c1_fit``
    ({"amplitude", "exponent": Quantity, "sign"}), ``b`` (Quantity,
    1/strain), ``n_events``."""

    c0: Curve
    c1: Curve
    c0_fit: dict
    c1_fit: dict
    b: object
    n_events: int

    def calibration_curve(self, name):
        """``"c0"`` or ``"c1"`` as the calibration file's radial curve dict,
        keeping the bins with r > 0 and a finite value; None if there is none."""
        c, fit = (self.c0, self.c0_fit) if name == "c0" else (self.c1, self.c1_fit)
        keep = (c.r > 0) & np.isfinite(c.value)
        if not keep.any():
            return None
        return {"r": c.r[keep], "value": c.value[keep], "error": c.error[keep],
                "n": c.n[keep].astype(np.int64), "fit": dict(fit)}


def softness_change(events, r_edges=np.arange(0.5, 15.01, 0.5), far_range=(4.0, 12.0),
                    tail_range=(1.0, 10.0), n_boot=200, seed=0, keep_origin=False) -> SoftnessChange:
    """c0(r), c1(r), b and the power-law tails of |c0|, |c1| (module docstring).

    Args:
        events: sequence of ``SoftnessEvent``.
        r_edges: (nb + 1,) increasing radial bin edges (length, >= 0).
        far_range: (lo, hi) r range of the pooled fit of b.
        tail_range: (lo, hi) r range of the power-law fits.
        n_boot, seed: bootstrap over events.
        keep_origin: count the entries at r = 0 (the rearranging site
            itself in the site-level law, calibrate/site_events.py); the
            per-particle law leaves the rearranger out (its own change is
            ``self_change``).
    Returns:
        SoftnessChange; NaN with n = 0 (and a flag on the fitted numbers)
        where there is too little data.
    """
    edges = check_edges(r_edges, "r_edges")
    if edges[0] < 0:
        raise ValueError("r_edges must be >= 0")
    far_range = check_range(far_range, "far_range")
    tail_range = check_range(tail_range, "tail_range")
    nb = edges.size - 1
    Ms, vs, ns = [], [], []
    for i, ev in enumerate(events):
        origin = check_array(ev.origin, (2,), f"events[{i}].origin")
        pos = check_array(ev.pos, (None, 2), f"events[{i}].pos")
        box = check_box(ev.box, f"events[{i}].box")
        n = len(pos)
        S, dS, k = (check_array(getattr(ev, a), (n,), f"events[{i}].{a}") for a in ("S", "dS", "k"))
        S_mean = float(ev.S_mean)
        if not math.isfinite(S_mean):
            raise ValueError(f"events[{i}].S_mean must be finite")
        r, _ = polar(origin, pos, box)
        b = radial_bins(r, edges, half_width(box), keep_origin)
        b[~(np.isfinite(S) & np.isfinite(dS) & np.isfinite(k))] = -1
        M, v = moments(b, np.column_stack([S - S_mean, k]), dS, nb)
        Ms.append(M)
        vs.append(v)
        ns.append(np.bincount(b[b >= 0], minlength=nb))
    n_ev = len(Ms)
    far = (edges[:-1] >= far_range[0]) & (edges[1:] <= far_range[1])
    centres = 0.5 * (edges[:-1] + edges[1:])

    if n_ev:
        Ms, vs = np.array(Ms), np.array(vs)

        def stat(w):
            M, v = np.einsum("e,ebij->bij", w, Ms), np.einsum("e,ebi->bi", w, vs)
            b = solve_moments(M, v, shared=(2,), use=far)[0, 2]
            coef = solve_moments(M[:, :2, :2], v[:, :2] - (b if math.isfinite(b) else 0.0) * M[:, :2, 2])
            return {"c0": coef[:, 0], "c1": coef[:, 1], "b": np.array(b)}
        val, err, reps = bootstrap(stat, n_ev, n_boot, seed)
        n_bin = np.sum(ns, axis=0).astype(np.int64)
    else:
        val = {"c0": np.full(nb, np.nan), "c1": np.full(nb, np.nan), "b": np.array(np.nan)}
        err = {k: np.full_like(a, np.nan) for k, a in val.items()}
        reps = {"c0": np.empty((0, nb)), "c1": np.empty((0, nb))}
        n_bin = np.zeros(nb, np.int64)

    b_ok = bool(np.isfinite(val["b"]))
    flag = "no events" if n_ev == 0 else (None if b_ok else "b undetermined (no far-field data): b k not removed")
    curves = {name: Curve(centres, val[name], err[name], n_bin) for name in ("c0", "c1")}
    fits = {name: power_law_fit(curves[name], reps[name], tail_range, n_ev, "softness/frame",
                                f"{name}(r) per frame") for name in ("c0", "c1")}
    if flag and n_ev:
        for f in fits.values():
            for q in (f["amplitude"], f["exponent"]):
                q.flag = q.flag or flag
    b = quantity(val["b"], err["b"], n_ev, far_range, "1/strain",
                 "b in dS = c0(r) + c1(r) (S - <S>) + b k, pooled over the far-field bins", flag)
    return SoftnessChange(c0=curves["c0"], c1=curves["c1"], c0_fit=fits["c0"], c1_fit=fits["c1"],
                          b=b, n_events=n_ev)


def self_change(dS, n_boot=200, seed=0):
    """The rearranger's own softness change (SPEC.md section 4, item 4).

    Args:
        dS: (n,) softness after minus before of each rearranger (softness;
            before = the frame it starts, after = the frame it ends; the
            driver's choice, stated in its report). Non-finite entries skipped.
    Returns:
        Quantity ``self_change``: the mean, bootstrap error over rearrangers,
        n = number used (NaN, n = 0 and a flag when none)."""
    return mean_quantity(dS, "dS", "softness", "the rearranger's own softness change, after minus before",
                         n_boot, seed)

