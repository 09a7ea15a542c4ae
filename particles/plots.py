"""Pictures of an AQS run: the stress-strain curve with avalanches marked,
and one avalanche's frames coloured by displacement.

Units: lengths in small-particle diameters, stress in pair prefactor per
length^2, strain is the engineering xy strain gamma.
"""

from pathlib import Path

import numpy as np

from .trajectory import Trajectory, wrap


def _pyplot():
    import matplotlib
    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo"):
        try:
            matplotlib.use("Agg")
        except Exception:  # a backend is already in use: keep it
            pass
    import matplotlib.pyplot as plt
    return plt


def plot_stress_strain(path, out=None) -> Path:
    """sigma_xy and energy per particle against gamma; each avalanche marked
    by its drop (affine start -> end of the avalanche). Returns the PNG path."""
    plt = _pyplot()
    path = Path(path)
    out = Path(out) if out else path.with_name("stress_strain.png")
    with Trajectory(path) as t:
        g = t.observable("gamma")
        sxy = t.observable("stress")[:, 0, 1]
        e = t.observable("energy") / t.n_particles
        av = t.avalanches()
        ft = t.frame_table()
        steps = t.step_numbers
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    ax1.plot(g, sxy, lw=0.8, color="k")
    if len(av["id"]):
        first = np.searchsorted(ft["frame"], av["first_frame"])
        s0 = ft["stress"][first, 0, 1]
        s1 = sxy[np.searchsorted(steps, av["step"])]
        ax1.vlines(av["gamma"], s1, s0, color="tab:red", lw=1.2, label="avalanche (start to end)")
        ax1.plot(av["gamma"], s1, "v", ms=3, color="tab:red")
        ax1.legend(loc="lower right", fontsize=8)
    ax1.set_ylabel(r"$\sigma_{xy}$")
    ax1.set_title(f"{len(av['id'])} avalanches in {len(g) - 1} steps")
    ax2.plot(g, e, lw=0.8, color="k")
    ax2.set_xlabel(r"$\gamma$")
    ax2.set_ylabel("energy / N")
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    plt.close(fig)
    return out


def _disks(ax, pos, edges, radii, colour, vmax, cmap="viridis"):
    from matplotlib.collections import EllipseCollection
    xy = wrap(pos, edges)
    d = 2 * radii
    coll = EllipseCollection(d, d, np.zeros_like(d), units="xy", offsets=xy,
                             offset_transform=ax.transData, cmap=cmap)
    coll.set_array(colour)
    coll.set_clim(0.0, vmax)
    ax.add_collection(coll)
    a1, a2 = edges
    corners = np.array([[0, 0], a1, a1 + a2, a2, [0, 0]])
    ax.plot(corners[:, 0], corners[:, 1], color="0.4", lw=0.8)
    lo = corners.min(axis=0) - 1
    hi = corners.max(axis=0) + 1
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    return coll


def choose_avalanche(t: Trajectory) -> int | None:
    """The avalanche with most frames (ties: largest energy drop), or None."""
    av = t.avalanches()
    if len(av["id"]) == 0:
        return None
    order = np.lexsort((av["energy_drop"], av["n_frames"]))
    return int(av["id"][order[-1]])


def plot_avalanche(path, out=None, avalanche: int | None = None) -> Path | None:
    """One avalanche: the total displacement from its affinely strained start
    to its step's minimised state, and the displacement between successive
    frames (up to three panels), disks coloured by |displacement|. Returns
    the PNG path, or None when the run has no avalanche."""
    plt = _pyplot()
    path = Path(path)
    out = Path(out) if out else path.with_name("avalanche.png")
    with Trajectory(path) as t:
        aid = choose_avalanche(t) if avalanche is None else avalanche
        if aid is None:
            return None
        fr = t.frames(aid)
        step = int(fr["step"][0])
        end = t.positions(step)
        radii = t.radii
    starts = list(fr["position"]) + [end]
    pairs = [(0, len(starts) - 1, f"avalanche {aid} (step {step}): start to end")]
    n = len(starts) - 1
    picks = sorted(set(np.linspace(0, n - 1, min(3, n)).astype(int))) if n > 1 else []
    for k in picks:
        label = "end" if k + 1 == n else f"frame {k + 1}"
        pairs.append((k, k + 1, f"frame {k} to {label}  (t = {fr['time'][k]:.4g})"))
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 4.6), squeeze=False)
    for ax, (i, j, title) in zip(axes[0], pairs):
        u = np.linalg.norm(starts[j] - starts[i], axis=1)
        coll = _disks(ax, starts[i], fr["edges"][0], radii, u, max(float(u.max()), 1e-12))
        ax.set_title(title, fontsize=9)
        fig.colorbar(coll, ax=ax, shrink=0.75, label="|displacement|")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_run(path) -> list[Path]:
    """Both pictures next to the trajectory file; returns the paths written."""
    outs = [plot_stress_strain(path)]
    a = plot_avalanche(path)
    if a is not None:
        outs.append(a)
    return outs
