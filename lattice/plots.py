"""Plots of a lattice run (matplotlib, Agg backend), written next to the run file."""

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .analysis import fit_power_law, log_binned_pdf  # noqa: E402


def plot_run(run, out_dir, s_min=1):
    """Write avalanche_sizes.png, stress_strain.png and (if a snapshot
    exists) avalanche_maps.png; ``run`` is output.load_run's dict.
    Returns the list of paths."""
    out_dir = Path(out_dir)
    paths = [plot_sizes(run, out_dir / "avalanche_sizes.png", s_min),
             plot_stress_strain(run, out_dir / "stress_strain.png")]
    if run.get("snapshot") is not None:
        paths.append(plot_maps(run, out_dir / "avalanche_maps.png"))
    return paths


def _title(run):
    a = run["attrs"]
    try:
        o = json.loads(run["params"].get("options", "{}"))
        opts = (f"trigger {o['trigger']}, softness {'on' if o['softness'] else 'off'}, "
                f"volumetric {'on' if o['volumetric'] else 'off'}")
    except (ValueError, KeyError):
        opts = ""
    return f"L = {a['L']}, seed {a['seed']}, {opts}" + ("" if a.get("calibrated") else " [placeholder calibration]")


def _save(fig, path):
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def plot_sizes(run, path, s_min=1):
    sizes = run["avalanches"]["size"]
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    if sizes.size:
        x, p = log_binned_pdf(sizes)
        ax.loglog(x, p, "o", label=f"{sizes.size} avalanches")
        fit = fit_power_law(sizes, s_min=s_min)
        if np.isfinite(fit["tau"]):
            s = np.arange(int(fit["s_min"]), int(fit["s_max"]) + 1, dtype=float)
            z = (s ** -fit["tau"]).sum()
            frac = fit["n"] / sizes.size
            xs = np.geomspace(fit["s_min"], fit["s_max"], 50)
            ax.loglog(xs, frac * xs ** -fit["tau"] / z, "-",
                      label=f"power law, tau = {fit['tau']:.3f} +- {fit['error']:.3f}")
        ax.legend(fontsize=8)
    ax.set_xlabel("avalanche size s (rearrangements)")
    ax.set_ylabel("P(s)")
    ax.set_title(_title(run), fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_stress_strain(run, path):
    ss, av = run["stress_strain"], run["avalanches"]
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(6, 5.5), sharex=True)
    ax.plot(ss["gamma"], ss["stress"], lw=0.6)
    ax.set_ylabel("shear stress 2 mu <e2>")
    ax.set_title(_title(run), fontsize=7)
    if av["gamma"].size:
        bx.plot(av["gamma"], av["S_mean"], lw=0.8, label="<S>")
        bx.fill_between(av["gamma"], av["S_mean"] - av["S_std"], av["S_mean"] + av["S_std"],
                        alpha=0.3, label="+- sd")
        bx.legend(fontsize=8)
    bx.set_xlabel("applied shear strain gamma")
    bx.set_ylabel("softness S")
    fig.tight_layout()
    return _save(fig, path)


def plot_maps(run, path):
    snap, re = run["snapshot"], run["rearrangements"]
    first, size = int(snap["first"]), int(snap["size"])
    sx = re["site_x"][first:first + size]
    sy = re["site_y"][first:first + size]
    fr = re["frame"][first:first + size]
    dev = lambda e1, e2: 2 * np.hypot(e1, e2)
    panels = [
        ("S before", snap["S_before"], "viridis"),
        ("S after - S before", snap["S_after"] - snap["S_before"], "RdBu_r"),
        ("elastic eps_dev after - before",
         dev(snap["e1_after"], snap["e2_after"]) - dev(snap["e1_before"], snap["e2_before"]), "RdBu_r"),
        ("elastic k after - before", snap["k_after"] - snap["k_before"], "RdBu_r"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(9, 8))
    for ax, (title, f, cmap) in zip(axes.ravel(), panels):
        if cmap == "RdBu_r":
            v = np.abs(f).max() or 1.0
            im = ax.imshow(f.T, origin="lower", cmap=cmap, vmin=-v, vmax=v)
        else:
            im = ax.imshow(f.T, origin="lower", cmap=cmap)
        fig.colorbar(im, ax=ax, shrink=0.8)
        ax.scatter(sx, sy, c=fr, s=6, cmap="autumn", edgecolors="none")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("x (sites)")
        ax.set_ylabel("y (sites)")
    fig.suptitle(f"avalanche {int(snap['avalanche'])}: {size} rearrangements (dots, coloured by frame)",
                 fontsize=9)
    fig.tight_layout()
    return _save(fig, path)
