"""From measurements to the calibration file (SPEC.md sections 4 and 5).

:func:`site_samples` reads the site-averaged softness the lattice needs
(P(S) of sites; the site S of every yield onset) from the trajectories and
their analysis files; :func:`assemble` turns ``extract.Measurements`` plus
those samples into a validated ``lattice.calibration.Calibration``.

Fallback rule: a required entry (one the lattice reads) that could not be
measured (NaN: too little data), whose measured value lies outside the
allowed range, or whose error exceeds its value (undetermined) is taken from the shipped placeholder
(``lattice.calibration.placeholder_calibration``), with n = 0 and a flag
that says why; the file is then marked ``calibrated: false`` and its
description lists these entries, so the lattice still runs and nobody
mistakes a placeholder for a measurement. Optional entries that cannot be
measured are written as NaN with n = 0 and a flag (scalars) or left out
(curves).
"""

import logging
import math
from dataclasses import replace

import numpy as np

from ..lattice.calibration import (REQUIRED_CURVES, REQUIRED_SCALARS, SCALARS, Calibration,
                                   CalibrationError, Quantity, continuum_source_strength,
                                   parse_calibration, placeholder_calibration)
from .events import relaxation
from .fits import bootstrap, mean_quantity
from .extract import grid_edges
from .lattice_mapping import (SITE_FACTOR, g2_entry, histogram_entry, p_s_sites, site_size,
                              source_strength, source_strength_from_drops, strain_profiles_entry,
                              yield_strain_sites, yield_table_entry)
from .site_events import SiteSamples, measure_sites, site_softness_law
from .softness_change import softness_change
from .strain_fields import strain_fields

log = logging.getLogger(__name__)

#: a required number whose error exceeds this multiple of its value is
#: undetermined and replaced by the placeholder (with a flag)
MAX_RELATIVE_ERROR = 1.0
#: bins of the lattice's yield table over the onsets' site-S range
YIELD_BINS = 6


def site_samples(pairs, meas, a: float, sample_every: int = 50, progress=None):
    """``site_events.measure_sites`` with the runs of ``meas`` (an
    extract.Measurements of the same ``pairs``) and its mean relaxed mu."""
    return measure_sites(pairs, meas.runs, a, meas.elastic["mu_relaxed"].value, sample_every, progress)


def _in_range(name, value):
    _, _, lo, hi, lo_open, hi_open = SCALARS[name]
    if not math.isfinite(value):
        return False
    if lo is not None and (value <= lo if lo_open else value < lo):
        return False
    if hi is not None and (value >= hi if hi_open else value > hi):
        return False
    return True


#: placeholder times that are meant in units of the time per frame
_IN_FRAMES = ("compression_t_centre", "compression_width")


def _scalar(name, q: Quantity | None, placeholder: Calibration, notes: list,
            dt: float | None = None) -> Quantity:
    """The file's Quantity for scalar ``name`` (measured, or the fallback;
    ``dt`` the measured time per frame, which rescales placeholder times)."""
    unit, desc = SCALARS[name][:2]
    required = name in REQUIRED_SCALARS
    undetermined = (q is not None and required and math.isfinite(q.error)
                    and q.error > MAX_RELATIVE_ERROR * abs(q.value))
    if q is not None and _in_range(name, q.value) and (q.n > 0 or q.flag) and not undetermined:
        return replace(q, unit=unit, description=desc)
    why = ("not measured" if q is None else
           f"measured {q.value:.4g} +- {q.error:.2g} is undetermined" if undetermined else
           f"measured value {q.value:.4g} outside the allowed range" if math.isfinite(q.value)
           else f"not measurable ({q.flag or 'too little data'})")
    if required:
        ph = placeholder.scalars[name]
        value, error, how = ph.value, ph.error, ""
        if name in _IN_FRAMES and dt is not None:  # keep the placeholder's value in frames
            scale = dt / placeholder["time_per_frame"]
            value, error = value * scale, error * scale
            how = f" = {ph.value:.4g} x measured/placeholder time per frame"
        notes.append(f"{name}: placeholder {value:.4g}{how} ({why})")
        return Quantity(value, error, 0, None, unit, desc, f"placeholder{how}: {why}")
    return Quantity(math.nan, math.nan, 0, None, unit, desc, why)


def _valid_curve(name, curve, placeholder: Calibration) -> str | None:
    """None if ``curve`` is a valid entry ``name``, else the reason."""
    if curve is None:
        return "not measurable (too little data)"
    trial = placeholder.to_json()
    from ..lattice.calibration import _jsonify
    trial["curves"][name] = _jsonify(curve)
    try:
        parse_calibration(trial, f"<{name}>")
    except CalibrationError as exc:
        return str(exc)
    return None


def _xi_quantity(meas) -> Quantity:
    xi = meas.correlation_length
    return Quantity(xi.xi, xi.xi_err, xi.n if xi.ok else 0, (xi.r_lo, xi.r_hi) if xi.ok else None,
                    "length", "", None if xi.ok else (xi.flag or "no fit"))


def _site_softness_change(sites, params, n_boot, seed):
    """``site_events.site_softness_law`` over the particle ``ds_r`` range:
    (SoftnessChange, {"c0", "c1"} as calibration curves whose r is the class
    distance, r = 0 the site itself; None where there is no finite bin)."""
    sc = site_softness_law(sites, float(params.get("ds_r", (0, 15.0, 0))[1]),
                           params.get("ds_far_range", (4.0, 12.0)), params.get("ds_tail_range", (1.0, 10.0)),
                           n_boot, seed)
    if sc is None:
        return softness_change([], n_boot=0), {"c0": None, "c1": None}
    curves = {}
    for name, c, fit in (("c0", sc.c0, sc.c0_fit), ("c1", sc.c1, sc.c1_fit)):
        keep = np.isfinite(c.value)
        curves[name] = ({"r": c.r[keep], "value": c.value[keep], "error": c.error[keep],
                         "n": c.n[keep].astype(np.int64), "fit": dict(fit)} if keep.any() else None)
    return sc, curves


def _strain_sd(e, n_boot, seed) -> Quantity:
    """The spread of the unstrained sites' e1 and e2 (pooled; their mean
    already removed), root mean square over both components, error by
    bootstrap over sites."""
    e = np.asarray(e, float).reshape(-1, 2)
    e = e[np.all(np.isfinite(e), axis=1)]
    unit, desc = SCALARS["site_strain_sd"][:2]
    if len(e) < 2:
        return Quantity(math.nan, math.nan, 0, None, unit, desc, "no unstrained state")
    sq = 0.5 * (e ** 2).sum(axis=1)
    val, err, _ = bootstrap(lambda w: {"s": np.array(math.sqrt((w @ sq) / w.sum()))}, len(sq), n_boot, seed)
    return Quantity(float(val["s"]), float(err["s"]), len(sq), None, unit, desc, None)


def choose_site(meas, size: float = 0.0, factor: float = SITE_FACTOR) -> Quantity:
    """The site side a (length): ``size`` if > 0 (flagged as chosen), else
    factor x the D2min correlation length (NaN, n = 0, flag if unfitted)."""
    if size > 0:
        unit, desc = SCALARS["site_size"][:2]
        return Quantity(float(size), 0.0, 1, None, unit, desc, "chosen (site.size), not measured")
    return site_size(xi=_xi_quantity(meas), factor=factor)


def assemble(meas, sites: SiteSamples, site_q: Quantity, config_yaml: str = "",
             code_version: str = "", s_edges=None, u=None, n_boot: int = 200, seed: int = 0):
    """The calibration file's content from measurements.

    Args:
        meas: extract.Measurements; sites: SiteSamples (site side sites.a);
        site_q: the site side as a Quantity (choose_site).
        s_edges: uniform softness bins of the lattice's yield table (site S;
            default: YIELD_BINS bins from the 2nd to the 98th percentile of
            the onsets' site S: site averaging narrows S, so fixed widths
            would leave one or two bins); u: quantile levels (default 0.02
            ... 0.98).
    Returns:
        (Calibration, notes): notes lists every placeholder used.
    """
    ph = placeholder_calibration()
    notes = []
    sf, sc = meas.strain_fields, meas.softness_change
    fits = getattr(sf, "fits", {}) or {}
    xi_q = _xi_quantity(meas)
    measured = dict(meas.elastic)
    ev = sites.events
    rel = relaxation(ev.e_el, ev.de, n_boot=n_boot, seed=seed)
    site_sc, site_curves = _site_softness_change(sites, meas.params, n_boot, seed)
    measured.update(
        number_density=meas.number_density, time_per_frame=meas.time_per_frame,
        softness_b=site_sc.b, softness_b_particle=sc.b, self_change_particle=meas.self_change,
        self_change=mean_quantity(ev.S1 - ev.S0, "self change", "softness",
                                  "a rearranging site's own softness change", n_boot, seed),
        site_size=site_q, **meas.compression, **rel,
        frames_per_rearrangement=mean_quantity(ev.frames.astype(float), "frames", "frames",
                                               "frames a site rearrangement lasts", n_boot, seed),
        plastic_strain=meas.rearrangement_stats["plastic_strain"],
        source_strength_drops=source_strength_from_drops(ev, sites.plastic, n_boot, seed),
        site_strain_sd=_strain_sd(sites.initial_e, n_boot, seed))
    measured["d2min_length"] = xi_q
    for k in ("c_dev", "bg_dev", "c_xy", "bg_xy", "k_sin2"):
        measured[k] = fits.get(k)
    measured["compression_length"] = fits.get("compression_length")
    p = meas.params
    site_ff = strain_fields(sites.fields, r_edges=grid_edges(p.get("field_r", (0.5, 15.0, 0.5))),
                            n_theta=int(p.get("field_n_theta", 16)),
                            fit_range=tuple(p.get("field_fit_range", (2.0, 8.0))),
                            iso_range=tuple(p.get("field_iso_range", (1.0, 8.0))), n_boot=n_boot, seed=seed)
    for k in ("c_dev", "c_xy", "k_sin2"):
        measured[f"{k}_site"] = site_ff.fits[k]
    measured["source_strength"] = source_strength(site_ff.fits["c_dev"], measured["frames_per_rearrangement"],
                                                  meas.elastic["nu_relaxed"], ev.e_el, n_boot=n_boot, seed=seed)
    # the lattice's yield table: the site's elastic strain at the onset of
    # every site event (the variable the lattice triggers on), by site S
    ys_table, ys = None, None
    eps = 2 * np.hypot(ev.e_el[:, 0], ev.e_el[:, 1])
    ok = np.isfinite(ev.S0) & np.isfinite(eps) & (eps > 0)
    if ok.sum() >= 2:
        S_site = ev.S0[ok]
        if s_edges is None:  # YIELD_BINS uniform bins over the central 96 % of the onsets
            lo, hi = np.percentile(S_site, [2, 98])
            s_edges = np.linspace(lo, hi, YIELD_BINS + 1) if hi > lo else np.array([lo, lo + 0.1])
        u = np.linspace(0.02, 0.98, 49) if u is None else u
        ys_table, ys = yield_strain_sites(eps[ok], S_site, s_edges=s_edges, u=u, n_boot=n_boot,
                                          seed=seed)
    if ys is not None:
        measured["yield_a"], measured["yield_b"] = ys.a, ys.b
    scalars = {"time_per_frame": _scalar("time_per_frame", measured.get("time_per_frame"), ph, notes)}
    dt = scalars["time_per_frame"].value if scalars["time_per_frame"].n > 0 else None
    for name in SCALARS:
        if name not in scalars and (name in measured or name in REQUIRED_SCALARS):
            scalars[name] = _scalar(name, measured.get(name), ph, notes, dt)
    for kind in ("relaxed", "instantaneous"):  # nu follows from the (mean) lambda and mu
        lam, mu, nu = (scalars[f"{x}_{kind}"] for x in ("lambda", "mu", "nu"))
        if lam.n > 0 and mu.n > 0:
            value = lam.value / (lam.value + 2 * mu.value)
            # d nu = (2 mu d lambda - 2 lambda d mu) / (lambda + 2 mu)^2
            err = 2 * math.hypot(mu.value * lam.error, lam.value * mu.error) / (
                lam.value + 2 * mu.value) ** 2
            scalars[f"nu_{kind}"] = replace(nu, value=value, error=err, n=min(lam.n, mu.n),
                                            flag=None)
    kq = scalars["source_strength"]
    if kq.n == 0:  # the continuum inclusion with this file's phi, a and nu, still a placeholder
        phi, a, nu = (scalars[k] for k in ("relaxed_fraction", "site_size", "nu_relaxed"))
        value = continuum_source_strength(phi.value, nu.value, a.value)
        notes[:] = [n for n in notes if not n.startswith("source_strength:")]
        why = kq.flag.split(": ", 1)[-1]
        notes.append(f"source_strength: continuum inclusion {value:.4g} = 4 phi a^2/(1 + nu) ({why})")
        scalars["source_strength"] = replace(kq, value=value, error=0.5 * value,
                                             flag=f"placeholder, the continuum inclusion 4 phi a^2/"
                                                  f"(1 + nu) of this file's phi, a, nu: {why}")
    curves = {}
    p_s = p_s_sites(sites.sites) if sites.sites.size else None
    candidates = {
        "c0": site_curves["c0"], "c1": site_curves["c1"],
        "c0_particle": sc.calibration_curve("c0"),
        "c1_particle": meas.softness_change_near.calibration_curve("c1"),
        "p_s": p_s,
        "yield_strain": ys_table,
        "g2": g2_entry(meas.pair_correlation),
        "strain_profiles": strain_profiles_entry(sf),
        "frame_times": histogram_entry(meas.frame_time_hist),
        "p_s_particles": p_s_sites(sites.particles) if sites.particles.size else None,
        "p_s_rearrangers": p_s_sites(sites.rearrangers) if sites.rearrangers.size else None,
    }
    by_lag = {}
    for label, y in meas.yield_strain.items():
        entry = yield_table_entry(y, f"yield strain vs particle softness, window {label}")
        if entry is not None and _valid_curve("yield_strain_by_lag", {label: entry}, ph) is None:
            by_lag[label] = entry
    candidates["yield_strain_by_lag"] = by_lag or None
    for name, curve in candidates.items():
        why = _valid_curve(name, curve, ph)
        if why is None:
            curves[name] = curve
        elif name in REQUIRED_CURVES:
            notes.append(f"{name}: placeholder curve ({why.splitlines()[0][:160]})")
            curves[name] = ph.curves[name]
        else:
            log.info("optional curve %s left out: %s", name, why.splitlines()[0][:160])
    calibrated = not notes
    desc = ("Calibration measured from particle trajectories by step-calibrate."
            if calibrated else
            "Calibration from particle trajectories by step-calibrate, NOT fully calibrated: "
            "these required entries are placeholders: " + "; ".join(notes))
    cal = Calibration(scalars=scalars, curves=curves, calibrated=calibrated, description=desc,
                      code_version=code_version, inputs=list(meas.inputs), config=config_yaml,
                      source="step-calibrate")
    cal.dumps()  # validates the whole file
    return cal, notes
