"""The HTML report of ``step-calibrate``: every fitted number in a table
(value, error, sample size, fit range, flag) and the measured curves with
their fits, figures embedded (step_epm.report.HtmlReport)."""

import math

import numpy as np

from ..lattice.calibration import REQUIRED_SCALARS
from ..report import HtmlReport


def _fmt(x, digits=4):
    return "NaN" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


def _log(ax, x=True, y=True):
    """Log axes where the plotted data allow it (thin data may plot nothing)."""
    xs, ys = [], []
    for line in ax.get_lines():
        xs.append(np.asarray(line.get_xdata(), float))
        ys.append(np.asarray(line.get_ydata(), float))
    for coll in ax.collections:
        off = np.asarray(coll.get_offsets(), float).reshape(-1, 2)
        xs.append(off[:, 0])
        ys.append(off[:, 1])
    for flag, data, setter in ((x, xs, ax.set_xscale), (y, ys, ax.set_yscale)):
        vals = np.concatenate(data) if data else np.empty(0)
        if flag and np.any(np.isfinite(vals) & (vals > 0)):
            setter("log")


def _errorbar(ax, r, v, e, **kw):
    r, v, e = (np.asarray(x, float) for x in (r, v, e))
    ok = np.isfinite(v)
    ax.errorbar(r[ok], v[ok], np.where(np.isfinite(e[ok]), e[ok], 0), fmt="o", ms=3, **kw)


def _fig_strain(meas):
    import matplotlib.pyplot as plt

    sf = meas.strain_fields
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, name, fit in ((axes[0], "eps_dev", "c_dev"), (axes[1], "abs_eps_xy", "c_xy")):
        c = sf.profiles.get(name)
        if c is None:
            continue
        _errorbar(ax, c.r, c.value, c.error, label=name)
        q, bg = sf.fits.get(fit), sf.fits.get("bg_" + fit[2:])
        if q is not None and math.isfinite(q.value):
            rr = np.linspace(max(c.r[0], 0.5), c.r[-1], 100)
            ax.plot(rr, q.value / rr**2 + (bg.value if bg is not None and math.isfinite(bg.value) else 0),
                    "k-", lw=1, label=f"{fit}/r^2 + bg, {fit} = {_fmt(q.value, 3)}")
        _log(ax)
        ax.set_xlabel("r (small diameters)")
        ax.legend(fontsize=7)
    for name in ("k", "k_iso"):
        c = sf.profiles.get(name)
        if c is not None:
            _errorbar(axes[2], c.r, c.value, c.error, label=f"<{name}>")
    axes[2].axhline(0, color="k", lw=0.5)
    axes[2].set_xlabel("r")
    axes[2].legend(fontsize=7)
    axes[0].set_title(f"isolated rearrangers: {sf.n_events} events", fontsize=9)
    return fig, ("Strain around an isolated small-particle rearranger (one frame): "
                 "angular averages of eps_dev and |eps_xy| with the c/r^2 + background fits, "
                 "and the volumetric strain k (mean and isotropic part).")


def _fig_g2(meas):
    import matplotlib.pyplot as plt

    pc = meas.pair_correlation
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, lag in enumerate(pc.lags):
        c = pc.radial[i]
        _errorbar(ax, c.r, np.asarray(c.value) - 1, c.error, label=f"df = {lag}", color=f"C{i}")
        f = pc.fits[i]
        if math.isfinite(f["amplitude"].value):
            rr = np.linspace(*f["amplitude"].fit_range, 50)
            ax.plot(rr, f["sign"] * f["amplitude"].value * rr ** -f["exponent"].value, "-",
                    color=f"C{i}", lw=1)
    _log(ax, y=False)
    ax.set_yscale("symlog", linthresh=1e-2)
    ax.set_xlabel("r")
    ax.set_ylabel("g2(r, df) - 1")
    ax.legend(fontsize=7)
    return fig, (f"Rearranger pair correlation within avalanches ({pc.n_avalanches} avalanches), "
                 "with power-law tail fits.")


def _fig_softness_change(meas):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, sc, name, src in ((axes[0], meas.softness_change, "c0", "isolated"),
                              (axes[1], meas.softness_change_near, "c1", "all rearrangers")):
        c = getattr(sc, name)
        _errorbar(ax, c.r, c.value, c.error, label=f"{name}(r) ({src})")
        fit = getattr(sc, name + "_fit")
        if math.isfinite(fit["amplitude"].value):
            rr = np.linspace(*fit["amplitude"].fit_range, 50)
            ax.plot(rr, fit["sign"] * fit["amplitude"].value * rr ** -fit["exponent"].value, "k-",
                    lw=1, label=f"power law, exponent {_fmt(fit['exponent'].value, 3)}")
        _log(ax, y=False)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlabel("r")
        ax.legend(fontsize=7)
    return fig, ("Softness change per frame of a particle at r from a rearranger (the per-particle "
                 "law, reported as c0_particle, c1_particle): dS = c0(r) + c1(r)(S - <S>) + b k.")


def _fig_yield(meas):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (label, y) in enumerate(meas.yield_strain.items()):
        if y.value.size == 0:
            continue
        mid = y.value.shape[1] // 2
        med = y.value[:, mid]
        ok = np.isfinite(med)
        if ok.any():
            ax.errorbar(np.asarray(y.s)[ok], med[ok], np.nan_to_num(y.error[ok, mid]), fmt="o-",
                        ms=3, color=f"C{i}", label=f"{label} (median)")
            ax.fill_between(np.asarray(y.s)[ok], y.value[ok, 0], y.value[ok, -1], alpha=0.12,
                            color=f"C{i}")
    ax.set_xlabel("softness S at the window start")
    ax.set_ylabel("eps_dev at onset")
    _log(ax, x=False)
    if ax.get_lines():
        ax.legend(fontsize=7)
    return fig, ("Yield strain vs particle softness in J strain (reported, not read by the "
                 "lattice): eps_dev of the neighbourhood accumulated over a window before a "
                 "rearrangement starts; medians with bootstrap errors, bands from the lowest to "
                 "the highest quantile level.")


def _fig_site(cal):
    """The laws the lattice reads, measured on the lattice tiling."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for name in ("c0", "c1"):
        c = cal.curves[name]
        _errorbar(axes[0], c["r"], c["value"], c["error"], label=f"{name}(r)")
    axes[0].axhline(0, color="k", lw=0.5)
    axes[0].set_xscale("symlog", linthresh=1.0)
    axes[0].set_xlabel("r between site centres (0 = the rearranging site)")
    axes[0].set_ylabel("per frame")
    axes[0].legend(fontsize=7)
    y = cal.curves["yield_strain"]
    mid = y["value"].shape[1] // 2
    axes[1].plot(y["s"], y["value"][:, mid], "o-", ms=3, label=f"median (u = {y['u'][mid]:.2f})")
    axes[1].fill_between(y["s"], y["value"][:, 0], y["value"][:, -1], alpha=0.15,
                         label=f"u = {y['u'][0]:.2f} ... {y['u'][-1]:.2f}")
    axes[1].set_xlabel("site softness at onset")
    axes[1].set_ylabel("site eps_dev at onset (stress / 2 mu)")
    axes[1].legend(fontsize=7)
    return fig, ("What the lattice reads, measured on the lattice tiling (site events, "
                 "calibrate/site_events.py): the site-level softness change per frame of a site at "
                 "distance r from a rearranging site, and the yield table (quantiles of the site's "
                 "elastic strain at onset by its softness).")


def _fig_misc(meas, cal):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    d = meas.d2min_corr
    if d is not None and len(d["r"]):
        _errorbar(axes[0], d["r"], d["C"], np.zeros(len(d["r"])), label="C(r)")
        xi = meas.correlation_length
        if xi.ok:
            rr = np.linspace(0, d["r"][-1], 100)
            f = np.exp(-rr / xi.xi) if xi.model == "exp" else np.exp(-(rr / xi.xi) ** 2)
            axes[0].plot(rr, xi.amplitude * f, "k-", lw=1, label=f"xi = {_fmt(xi.xi, 3)}")
        axes[0].set_xlabel("r")
        axes[0].set_title("D2min correlation", fontsize=9)
        axes[0].legend(fontsize=7)
    for name, lab in (("p_s", "sites"), ("p_s_particles", "particles"),
                      ("p_s_rearrangers", "rearrangers (particle S)")):
        h = cal.curves.get(name)
        if h is not None:
            c = 0.5 * (h["edges"][1:] + h["edges"][:-1])
            axes[1].plot(c, h["density"], label=lab)
    axes[1].set_xlabel("softness")
    axes[1].set_title("P(S)", fontsize=9)
    axes[1].legend(fontsize=7)
    h = cal.curves.get("frame_times")
    if h is not None:
        c = np.sqrt(h["edges"][1:] * h["edges"][:-1])
        axes[2].plot(c, h["density"], "o-", ms=3)
        _log(axes[2])
        axes[2].set_xlabel("time between particle frames")
        axes[2].set_title("frame times", fontsize=9)
    return fig, ("D2min spatial correlation with its fit; P(S) of site-averaged and particle "
                 "softness (the lattice uses the site one); distribution of the overdamped "
                 "time between avalanche frames.")


def write_report(path, cal, meas, notes, pairs, counts_extra=None):
    """Write report.html: summary, the table of every scalar, the curves."""
    rep = HtmlReport("STEP calibration from particle trajectories")
    rep.paragraph(cal.description)
    rep.heading("Inputs")
    rep.table(["file", "sha256"], [[i["path"], i["sha256"][:16] + "..."] for i in cal.inputs])
    counts = dict(meas.counts)
    counts.update(counts_extra or {})
    rep.table(["sample", "count"], [[k, v] for k, v in counts.items()])
    if notes:
        rep.heading("Placeholders (not measured)")
        rep.table(["entry and reason"], [[n] for n in notes])
    rep.heading("Every number")
    rows = []
    for name, q in cal.scalars.items():
        fr = "" if q.fit_range is None else f"[{_fmt(q.fit_range[0], 3)}, {_fmt(q.fit_range[1], 3)}]"
        rows.append([name + (" *" if name in REQUIRED_SCALARS else ""), _fmt(q.value),
                     _fmt(q.error, 2), q.n, fr, q.unit, q.flag or ""])
    for cname in ("c0", "c1"):
        fit = cal.curves[cname]["fit"]
        for k in ("amplitude", "exponent"):
            q = fit[k]
            fr = "" if q.fit_range is None else f"[{_fmt(q.fit_range[0], 3)}, {_fmt(q.fit_range[1], 3)}]"
            rows.append([f"{cname} tail {k} (sign {fit['sign']:+d})", _fmt(q.value), _fmt(q.error, 2),
                         q.n, fr, q.unit, q.flag or ""])
    rep.table(["quantity (* read by the lattice)", "value", "error", "n", "fit range", "unit", "flag"],
              rows)
    for make in (_fig_strain, _fig_g2, _fig_softness_change, _fig_yield):
        fig, cap = make(meas)
        rep.figure(fig, cap)
    for make in (_fig_site, lambda c: _fig_misc(meas, c)):
        fig, cap = make(cal)
        rep.figure(fig, cap)
    rep.heading("Config")
    rep.preformatted(cal.config)
    return rep.write(path)
