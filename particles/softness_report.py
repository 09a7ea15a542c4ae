"""Softness statistics over analysis files, and the HTML report of
``step-softness`` (SPEC.md section 3).

Statistics run over every pair of adjacent frames (f, f + 1) of the global
frame order held by the analysis files: the particle's softness S is taken
at frame f and it is a *rearranger* of the pair when its D2min from f to
f + 1 exceeds d_soft of its species. Pairs whose D2min is undefined (gaps,
collinear neighbourhoods) are skipped. Then

- P(S): density of S over all (particle, pair) samples, per species;
- P(S | R): the same over rearrangers;
- P_R(S): fraction of the samples in an S bin that rearrange, with the
  binomial error sqrt(p (1 - p) / n); bins with fewer than ``min_count``
  samples are left out;
- the fractions of rearrangers with S > 0 and of non-rearrangers with S < 0.
"""

from dataclasses import dataclass, field

import numpy as np

from .analysis_file import SoftnessAnalysis

#: softness histogram bins (dimensionless: mean signed distance in
#: standardised feature units)
S_EDGES = np.linspace(-10.0, 10.0, 401)
SPECIES = ("small", "large")


@dataclass
class SoftnessStats:
    """Histograms per species (index 0 small, 1 large), (2, nb) counts."""
    edges: np.ndarray = field(default_factory=lambda: S_EDGES.copy())
    all: np.ndarray = field(default_factory=lambda: np.zeros((2, len(S_EDGES) - 1), np.int64))
    rearr: np.ndarray = field(default_factory=lambda: np.zeros((2, len(S_EDGES) - 1), np.int64))
    r_pos: np.ndarray = field(default_factory=lambda: np.zeros(2, np.int64))    # R with S > 0
    q_neg: np.ndarray = field(default_factory=lambda: np.zeros(2, np.int64))    # non-R with S < 0

    @property
    def n_rearr(self):
        return self.rearr.sum(axis=1)

    @property
    def n_all(self):
        return self.all.sum(axis=1)

    def frac_rearr_positive(self):
        """(2,) fraction of rearrangers with S > 0."""
        return self.r_pos / np.maximum(self.n_rearr, 1)

    def frac_quiet_negative(self):
        """(2,) fraction of non-rearrangers with S < 0."""
        return self.q_neg / np.maximum(self.n_all - self.n_rearr, 1)

    def p_r(self, min_count: int = 200):
        """(centres (nb,), p (2, nb), err (2, nb)); NaN where a bin holds
        fewer than min_count samples."""
        c = 0.5 * (self.edges[1:] + self.edges[:-1])
        n = self.all.astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            p = self.rearr / n
            err = np.sqrt(p * (1 - p) / n)
        bad = n < min_count
        p[bad] = np.nan
        err[bad] = np.nan
        return c, p, err

    def p_r_decades(self, min_count: int = 200):
        """(2,) log10(max P_R / min nonzero P_R) over well-sampled bins, and
        the (2, 2) S range [S at min, S at max]."""
        c, p, _ = self.p_r(min_count)
        dec, rng = np.full(2, np.nan), np.full((2, 2), np.nan)
        for sp in range(2):
            ok = np.isfinite(p[sp]) & (p[sp] > 0)
            if ok.sum() >= 2:
                i, j = np.argmin(np.where(ok, p[sp], np.inf)), np.argmax(np.where(ok, p[sp], -1))
                dec[sp] = np.log10(p[sp, j] / p[sp, i])
                rng[sp] = c[i], c[j]
        return dec, rng


def accumulate(stats: SoftnessStats, analysis_path, d_soft=(0.0025, 0.0015),
               block: int = 256) -> SoftnessStats:
    """Add the adjacent frame pairs of one analysis file to ``stats``.

    d_soft: (small, large) rearranger thresholds (length^2)."""
    with SoftnessAnalysis(analysis_path) as a:
        species = a.species.astype(np.int64)
        frame = a.sequence()["frame"]
        thr = np.where(species == 0, d_soft[0], d_soft[1])
        nf = len(frame)
        for lo in range(0, nf - 1, block):
            hi = min(lo + block + 1, nf)
            S = a.field("softness", slice(lo, hi))
            D = a.field("d2min", slice(lo, hi))
            adj = np.flatnonzero(frame[lo + 1: hi] == frame[lo: hi - 1] + 1)
            for i in adj:
                s, d = S[i], D[i + 1]
                ok = np.isfinite(d) & np.isfinite(s)
                rear = ok & (d > thr)
                for sp in (0, 1):
                    m = ok & (species == sp)
                    r = rear & (species == sp)
                    stats.all[sp] += np.histogram(s[m], stats.edges)[0]
                    stats.rearr[sp] += np.histogram(s[r], stats.edges)[0]
                    stats.r_pos[sp] += np.count_nonzero(s[r] > 0)
                    stats.q_neg[sp] += np.count_nonzero(s[m & ~rear] < 0)
    return stats


def _trimmed(stats):
    used = np.flatnonzero(stats.all.sum(axis=0) > 0)
    if used.size == 0:
        return slice(0, 0)
    return slice(max(used[0] - 1, 0), used[-1] + 2)


def figures(stats: SoftnessStats, model, min_count: int = 200):
    """The report's figures: list of (matplotlib figure, caption)."""
    import matplotlib.pyplot as plt

    out = []
    c = 0.5 * (stats.edges[1:] + stats.edges[:-1])
    w = np.diff(stats.edges)
    sl = _trimmed(stats)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for sp, ax in enumerate(axes):
        for h, lab in ((stats.all[sp], "P(S)"), (stats.rearr[sp], "P(S | rearranger)")):
            tot = h.sum()
            if tot:
                ax.plot(c[sl], (h / (tot * w))[sl], label=f"{lab} (n = {tot})")
        ax.axvline(0, color="k", lw=0.5)
        ax.set_xlabel("softness S")
        ax.set_ylabel("density")
        ax.set_title(f"{SPECIES[sp]} particles")
        ax.legend(fontsize=8)
    out.append((fig, "Distribution of softness over all particles and frames, and over "
                     "the particles that rearrange between a frame and the next."))
    cc, p, err = stats.p_r(min_count)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for sp in range(2):
        ok = np.isfinite(p[sp]) & (p[sp] > 0)
        if ok.any():
            ax.errorbar(cc[ok], p[sp, ok], err[sp, ok], fmt="o-", ms=3, label=SPECIES[sp])
    ax.set_yscale("log")
    ax.set_xlabel("softness S")
    ax.set_ylabel("P_R(S)")
    ax.legend()
    out.append((fig, f"Probability that a particle of softness S rearranges between a frame "
                     f"and the next (bins with >= {min_count} samples; binomial errors)."))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for sp, ax in enumerate(axes):
        for l, r in enumerate(model.r_lists):
            wf = model.weight_function(sp, l, standardised=True)
            ax.plot(r, wf[0], "-", color=f"C{l}", label=f"r-list {l}: small neighbours")
            ax.plot(r, wf[1], "--", color=f"C{l}", label=f"r-list {l}: large neighbours")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlabel("r (small diameters)")
        ax.set_title(f"central particle {SPECIES[sp]}")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("standardised weight w/|w|")
    out.append((fig, "Weight function over r: the ensemble-mean hyperplane weight w/|w| of "
                     "each standardised structure function (softness per standard deviation "
                     "of G), per neighbour species. Positive weight: more neighbours at that r "
                     "make a particle softer. Weights per neighbour in original units: "
                     "SoftnessModel.weight_function(species, rlist)."))
    tab = model.table()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for sp in range(2):
        m = tab["species"] == sp
        idx = np.flatnonzero(m)
        ax.plot(idx, tab["train_acc"][m], "o", ms=3, color=f"C{sp}",
                label=f"{SPECIES[sp]}: train")
        ax.plot(idx, tab["val_acc"][m], "x", ms=4, color=f"C{sp}",
                label=f"{SPECIES[sp]}: validation")
    ax.set_xlabel("hyperplane")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    out.append((fig, "Training and validation accuracy of every hyperplane of the ensemble."))
    return out
