"""Particle vs lattice comparison (SPEC.md section 6): the measurements
behind ``step-compare`` and its figures.

Units: lengths in small-particle diameters (the lattice's site positions
are site centres x the calibrated site side ``a``, its box L a); strain
dimensionless; stress in energy / length^2 (the lattice's stress 2 mu <e2>
is in the same unit, mu being the calibrated one); softness in the SVM
distance unit; time in frames (see "lags" below).

Definitions
-----------
Particle rearrangement (``cluster_rearrangements``). Within one avalanche,
take its frame pairs f = 0, 1, ... in order (``extract.avalanche_rearrangers``'
pairs: affinely strained start -> frame 1, ..., last frame -> the step's
minimised state). The nodes are (f, i) for every rearranger i of pair f
(D2min above d_soft, SPEC.md section 2; ``cluster_species`` of them,
default both species). Two nodes are linked when
  (a) they are in the same pair f and |x_i - x_j| <= ``link_distance``
      (positions of the pair's first frame, minimum image in that frame's
      sheared box, ``fits.min_image``), or
  (b) they are the same particle in consecutive pairs f and f + 1 of the
      same avalanche (a particle that stays a rearranger continues its
      rearrangement).
A rearrangement is a connected component of this graph; the size of an
avalanche is its number of rearrangements. Avalanches without any
rearranger (size 0) are counted in ``n_empty`` and left out of the
distributions.

Lattice rearrangement. The lattice records one row per rearrangement event
(``/rearrangements``: a site starts at ``frame`` and releases until
``frame_end``; a busy site cannot re-trigger, so one row covers all the
frames of that event). The rows are counted the same way as particles:
nodes (f, site) for every frame f in [frame, frame_end) of every row,
positions = site centre x a, rule (a) with the same physical
``link_distance`` (no two sites are linked when link_distance < a, the
usual case) and rule (b) with the site as the "particle". So a site
rearranging over several frames counts once, and two rows of one site
back to back (the second starting in the frame the first ended) would
count once, like a particle that stays a rearranger. ``rows_per_avalanche``
(= the avalanche table's ``size``) is kept alongside as a check.

Plastic strain per avalanche (strain x length^2, i.e. the plastic shear
strain released times the area it is released over): the shear stress drop
times V / (2 mu), with mu the calibrated relaxed shear modulus (the one the
lattice runs use). Particles: the avalanche table's ``stress_drop`` (start
minus end of the descent), V = Lx Ly; lattice: (stress_before -
stress_after) (L a)^2 / (2 mu), which equals the sum of the avalanche's
released plastic e2 x area, sum p2 a^2, exactly (the q = 0 part of the
Eshelby propagator). Only avalanches with a positive drop are fitted
(a small particle avalanche can end above its start stress).

Power-law fits (``lattice.analysis.fit_power_law``, discrete MLE): sizes
from ``s_min`` (rearrangements) up to the largest; plastic strain in units
of the quantum q = ``plastic_min`` / 20 (rounded to integers, the discrete
MLE then approximates the continuous one to well below its error) from
``plastic_min`` (q is coarsened to the largest value / 1e6 when the data
span more than 1e6 quanta, bounding the MLE's support). Fewer than 10
values: NaN.

g2(r, df) (``correlations.pair_correlation``): particles exactly as the
calibration does it (``extract`` definition 3: rearrangers of ``species``,
default small, per avalanche frame pair, positions in the pair's first
frame). Lattice: per avalanche, its frames frame0 .. frame0 + duration - 1;
in frame f the "rearrangers" are the sites busy in f (rows with frame <= f
< frame_end), at their site centres x a, box (L a, L a, tilt 0). Lags:
both time axes are calibrated to one frame (the lattice's frame lasts
``time_per_frame``, the mean time between particle frames), so a particle
lag of df frames is compared with a lattice lag of df frames. The lattice
r bins are (j + 1/2) a up to ``lattice_g2_r_max`` (the site distances
a sqrt(i^2 + j^2) do not fill finer bins), and its tail is fitted over
``lattice_g2_fit_range`` (lengths): the particle box (r < 18 at N = 1024)
is much smaller than the lattice (L a / 2), and a particle-sized range
holds only two lattice bins. The angular maps use n_theta bins centred
on multiples of 360 / n_theta degrees, the first on the x axis
(``recentre_map``): the lattice's axis directions then fall at bin
centres, not on bin edges.

dS(r): the lattice run files do not record the softness change of the
sites around a rearrangement, only the rearranging site's own S before and
after. So the figure compares the site-level c0(r), c1(r) measured on the
particle runs (calibrate/site_events.py: frames with exactly one
rearranging site, the lattice tiling of the calibrated side a) with the
kernels the lattice applies per frame of a rearrangement
(``lattice.model.site_kernel`` of the calibration's curves, radial average
over sites at distance a |d|; zero for the models without softness), and
the table compares the self change: the particle site events' mean
S(end) - S(onset) vs the lattice's mean S_after - S_before.

P(S): particles, from ``analysis.h5``: "all" = softness of every particle
of ``species`` in the minimised state of every ``ps_every``-th step;
"rearrangers" = softness of each particle rearrangement run (events
definition, particles of ``species``) at its onset frame (the first frame
of its first pair). Site-averaged: the site softness of the same frames
("all") and of each site event at its onset ("rearrangers"), on the
lattice tiling of the calibrated a (calibrate/site_events.py).
Lattice: "all" = the final state's S (every site), "rearrangers" =
S_before of every rearrangement row.

Stress-strain: sigma_xy / mu vs gamma, mu the calibrated relaxed shear
modulus (lattice: its own mu, the calibration's chosen one); particles
``observables/stress`` [0, 1] and ``gamma``, lattice ``/stress_strain``.
"""

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from ..lattice.analysis import fit_power_law, log_binned_pdf
from .correlations import pair_correlation
from .fits import min_image
from .strain_fields import strain_fields

log = logging.getLogger(__name__)

#: the plastic-strain quantum is plastic_min / PLASTIC_STEPS
PLASTIC_STEPS = 20
#: ... coarsened (q = largest value / PLASTIC_MAX_QUANTA) when the largest
#: value would exceed this many quanta
PLASTIC_MAX_QUANTA = 10**6
_CHUNK = 512


# --------------------------------------------------------------------------
# rearrangement counting
# --------------------------------------------------------------------------

def cluster_rearrangements(frames, link):
    """Connected rearrangements of one avalanche (module docstring).

    Args:
        frames: sequence over the avalanche's frames (pairs) in order of
            (ids (n_f,) int, positions (n_f, 2), box (Lx, Ly, tilt)); ids
            are particle (or site) numbers, unique within a frame.
        link: linking distance (length); <= 0 disables rule (a).
    Returns:
        (number of rearrangements, labels): labels[f] (n_f,) int component
        of each node, numbered 0 .. n - 1.
    """
    sizes = [len(fr[0]) for fr in frames]
    off = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    total = int(off[-1])
    if total == 0:
        return 0, [np.zeros(0, np.int64) for _ in frames]
    rows, cols = [], []
    for f, (ids, pos, box) in enumerate(frames):
        ids = np.asarray(ids, np.int64)
        n = ids.size
        if n > 1 and link > 0:
            pos = np.asarray(pos, float).reshape(n, 2)
            for s in range(0, n, _CHUNK):
                d = min_image(pos[None, :, :] - pos[s:s + _CHUNK, None, :], box)
                near = (d[..., 0] ** 2 + d[..., 1] ** 2) <= link * link
                i, j = np.nonzero(near)
                i = i + s
                keep = i < j
                rows.append(off[f] + i[keep])
                cols.append(off[f] + j[keep])
        if f + 1 < len(frames) and n:
            _, ia, ib = np.intersect1d(ids, np.asarray(frames[f + 1][0], np.int64),
                                       assume_unique=True, return_indices=True)
            rows.append(off[f] + ia)
            cols.append(off[f + 1] + ib)
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    g = coo_matrix((np.ones(r.size), (r, c)), shape=(total, total))
    n_comp, lab = connected_components(g, directed=False)
    return int(n_comp), [lab[off[f]:off[f + 1]] for f in range(len(frames))]


def lattice_frames(rows, L, a, frame0=None, duration=None):
    """The frames of one lattice avalanche as (site ids, positions, box):
    frame f holds the sites busy in f (rows with frame <= f < frame_end),
    at their centres (i + 1/2) a, box (L a, L a, 0). ``rows``: dict of
    the avalanche's rearrangement columns (site_x, site_y, frame,
    frame_end); frames run from ``frame0`` (default the first row's) for
    ``duration`` frames (default up to the last frame_end)."""
    fs = np.asarray(rows["frame"], np.int64)
    box = (L * a, L * a, 0.0)
    if fs.size == 0:
        return []
    fe = np.asarray(rows["frame_end"], np.int64)
    fe = np.where(fe > fs, fe, fs + 1)  # an unfinished row (never in a saved file) covers its start
    f0 = int(fs.min()) if frame0 is None else int(frame0)
    nf = int(fe.max() - f0) if duration is None else max(int(duration), int(fe.max() - f0))
    site = np.asarray(rows["site_x"], np.int64) * L + np.asarray(rows["site_y"], np.int64)
    lengths = fe - fs
    node_f = np.repeat(fs, lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    node_s = np.repeat(site, lengths)
    o = np.lexsort((node_s, node_f))
    node_f, node_s = node_f[o], node_s[o]
    cuts = np.searchsorted(node_f, f0 + np.arange(nf + 1))
    out = []
    for k in range(nf):
        s = node_s[cuts[k]:cuts[k + 1]]
        pos = np.column_stack([(s // L + 0.5) * a, (s % L + 0.5) * a])
        out.append((s, pos, box))
    return out


def lattice_sizes(rearr, n_avalanches, L, a, link):
    """Rearrangements per lattice avalanche counted like the particles'
    (module docstring) and the plain row counts, both (n_avalanches,) int.
    ``rearr``: the rearrangement columns (site_x, site_y, avalanche, frame,
    frame_end)."""
    av = np.asarray(rearr["avalanche"], np.int64)
    rows_per = np.bincount(av, minlength=n_avalanches)[:n_avalanches] if av.size else \
        np.zeros(n_avalanches, np.int64)
    sizes = np.zeros(n_avalanches, np.int64)
    order = np.argsort(av, kind="stable")
    bounds = np.searchsorted(av[order], np.arange(n_avalanches + 1))
    spatial = link >= a  # sites closer than the link exist only then
    for k in range(n_avalanches):
        idx = order[bounds[k]:bounds[k + 1]]
        if idx.size == 0:
            continue
        if idx.size == 1:
            sizes[k] = 1
            continue
        rows = {c: np.asarray(rearr[c])[idx] for c in ("site_x", "site_y", "frame", "frame_end")}
        sizes[k] = cluster_rearrangements(lattice_frames(rows, L, a), link if spatial else 0.0)[0]
    return sizes, rows_per


# --------------------------------------------------------------------------
# per-source results
# --------------------------------------------------------------------------

@dataclass
class SourceResult:
    """Everything measured on one source (particles pooled over their
    trajectories, or one lattice run). Arrays may be empty (thin data)."""

    label: str
    kind: str                                # "particles" or "lattice"
    sizes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    plastic: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_avalanches: int = 0
    n_empty: int = 0
    g2: object = None                        # correlations.PairCorrelation
    ps_all: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ps_rearr: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ps_site_all: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ps_site_rearr: np.ndarray = field(default_factory=lambda: np.zeros(0))
    stress: list = field(default_factory=list)   # [(name, gamma, sigma / mu)]
    self_change: float = math.nan
    ds_kernel: dict | None = None            # {"r", "c0", "c1"} (lattice: applied kernel)
    notes: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    color: str = ""                          # set by the caller: one colour per source


def fit_sizes(sizes, s_min):
    """Power-law fit of rearrangements per avalanche (fit_power_law)."""
    s = np.asarray(sizes, float)
    return fit_power_law(s[s >= 1], s_min=s_min)


def fit_plastic(plastic, plastic_min):
    """Power-law fit of the plastic strain per avalanche (module
    docstring: quantum plastic_min / PLASTIC_STEPS). Returns the
    fit_power_law dict with s_min, s_max converted back to strain x length^2."""
    q = plastic_min / PLASTIC_STEPS
    x = np.asarray(plastic, float)
    x = x[np.isfinite(x) & (x > 0)]
    if x.size and x.max() / q > PLASTIC_MAX_QUANTA:  # bounded support of the discrete MLE
        q = float(x.max()) / PLASTIC_MAX_QUANTA
    res = fit_power_law(np.round(x / q), s_min=max(1, int(round(plastic_min / q))))
    res["s_min"] = float(plastic_min)
    res["s_max"] = float(res["s_max"] * q) if math.isfinite(res["s_max"]) else math.nan
    res["quantum"] = q
    return res


def recentre_map(m):
    """A Map of 2n theta bins (edges at multiples of 180/n degrees) as n
    bins centred on multiples of 360/n degrees (the first on the x axis):
    bin j joins fine bins 2j - 1 and 2j (equal areas, so the value is
    their mean; errors in quadrature / 2; counts summed)."""
    from .fits import Map

    nt = m.theta.size // 2
    v, e, n = m.value, m.error, m.n
    lo = np.roll(np.arange(2 * nt), 1)[0::2]       # 2j - 1 (wrapping)
    hi = np.arange(0, 2 * nt, 2)                   # 2j
    with np.errstate(invalid="ignore"):
        val = 0.5 * (v[:, lo] + v[:, hi])
        err = 0.5 * np.hypot(e[:, lo], e[:, hi])
    return Map(m.r, np.arange(nt) * 2 * np.pi / nt, val, err, n[:, lo] + n[:, hi])


def _g2(avalanches, cfg, r_edges, fit_range):
    """pair_correlation with 2 n_theta bins, the maps recentred
    (``recentre_map``) so that theta bins are centred on the x axis."""
    pc = pair_correlation(avalanches, lags=tuple(cfg.g2_lags), r_edges=r_edges,
                          n_theta=2 * cfg.g2_n_theta, fit_range=tuple(fit_range),
                          n_boot=cfg.n_boot, seed=cfg.seed)
    pc.angular = [recentre_map(m) for m in pc.angular]
    return pc


def particle_r_edges(cfg):
    lo, hi, step = cfg.g2_r
    return np.arange(lo, hi + 1e-9 * max(1.0, abs(hi)), step)


def lattice_r_edges(cfg, a, L):
    hi = min(cfg.lattice_g2_r_max, 0.5 * L * a)
    n = max(1, int(math.floor(hi / a - 0.5)))
    return (np.arange(n + 1) + 0.5) * a


def _radial_kernel(plane, L, a):
    """Radial average of a site-kernel plane (entry [dx, dy] at the
    minimum-image offset) over sites at the same distance a |d|, r = 0 the
    rearranging site itself."""
    idx = np.minimum(np.arange(L), L - np.arange(L))
    d = np.hypot(idx[:, None], idx[None, :]) * a
    key = np.round(d, 9)
    u, inv = np.unique(key.ravel(), return_inverse=True)
    val = np.bincount(inv, plane.ravel()) / np.bincount(inv)
    keep = u <= 0.5 * L * a
    return u[keep], val[keep]


def measure_lattice(label, path, cfg):
    """SourceResult of one lattice run file (module docstring)."""
    from ..lattice.calibration import parse_calibration
    from ..lattice.model import radial_profile, site_kernel
    from ..lattice.output import load_run
    import json

    run = load_run(path)
    at, par = run["attrs"], run["params"]
    L, a, mu = int(at["L"]), float(par["a"]), float(par["mu"])
    R, A = run["rearrangements"], run["avalanches"]
    res = SourceResult(label=label, kind="lattice")
    n_av = int(len(A["id"]))
    res.n_avalanches = n_av
    sizes, rows_per = lattice_sizes(R, n_av, L, a, cfg.link_distance)
    if n_av and "size" in A and not np.array_equal(rows_per, A["size"]):
        res.notes.append("rows per avalanche differ from the avalanche table's size")
    res.n_empty = int(np.sum(sizes == 0))
    res.sizes = sizes[sizes > 0]
    res.extra["rows_per_avalanche_mean"] = float(rows_per.mean()) if n_av else math.nan
    res.extra["rearrangements_per_avalanche_mean"] = float(sizes.mean()) if n_av else math.nan
    res.plastic = (A["stress_before"] - A["stress_after"]) * (L * a) ** 2 / (2 * mu)
    res.extra.update(plastic_gamma=np.asarray(A["gamma"], float),
                     s_stats=(np.asarray(A["gamma"], float), np.asarray(A["S_mean"], float),
                              np.asarray(A["S_std"], float)),
                     ps_site_rearr_gamma=np.asarray(R["gamma"], float),
                     p1=np.asarray(R["p1"], float), p2=np.asarray(R["p2"], float),
                     n_frames=int(par["n_frames"]), nu=float(par["nu"]))
    # g2 on busy sites
    avs = []
    order = np.argsort(R["avalanche"], kind="stable")
    bounds = np.searchsorted(R["avalanche"][order], A["id"]) if n_av else []
    ends = np.searchsorted(R["avalanche"][order], A["id"], side="right") if n_av else []
    for k in range(n_av):
        idx = order[bounds[k]:ends[k]]
        rows = {c: R[c][idx] for c in ("site_x", "site_y", "frame", "frame_end")}
        frames = lattice_frames(rows, L, a, frame0=A["frame"][k], duration=A["duration"][k])
        if frames:
            avs.append([(p, box) for _, p, box in frames])
    res.g2 = _g2(avs, cfg, lattice_r_edges(cfg, a, L), cfg.lattice_g2_fit_range)
    res.ps_site_all = np.asarray(run["state"]["S"], float).ravel()
    res.ps_site_rearr = np.asarray(R["S_before"], float)
    dS = np.asarray(R["S_after"], float) - np.asarray(R["S_before"], float)
    dS = dS[np.isfinite(dS)]
    res.self_change = float(dS.mean()) if dS.size else math.nan
    ss = run["stress_strain"]
    res.stress = [(label, np.asarray(ss["gamma"]), np.asarray(ss["stress"]) / mu)]
    opts = json.loads(par.get("options", "{}")) if isinstance(par.get("options"), str) else {}
    if opts.get("softness", True):
        try:
            cal = parse_calibration(json.loads(at["calibration"]), f"{path} attrs")
            r0, c0 = _radial_kernel(site_kernel(radial_profile(cal.curves["c0"]), L, a), L, a)
            _, c1 = _radial_kernel(site_kernel(radial_profile(cal.curves["c1"]), L, a), L, a)
            res.ds_kernel = {"r": r0, "c0": c0, "c1": c1}
        except Exception as exc:  # an old or odd calibration: the figure goes without it
            res.notes.append(f"no softness kernel ({exc})")
    else:
        res.ds_kernel = {"r": np.zeros(0), "c0": np.zeros(0), "c1": np.zeros(0)}
        res.notes.append("softness off: no softness change around rearrangements")
    res.extra.update(L=L, a=a, mu=mu, options=opts, gamma_end=float(at.get("gamma", math.nan)))
    return res


def measure_particles(pairs, cfg, cal, progress=None):
    """SourceResult of the particle trajectories, pooled (module docstring).
    ``pairs``: [(trajectory, analysis file)]; ``cal``: lattice Calibration
    (site size a, relaxed mu, c0/c1, self change)."""
    from dataclasses import replace

    from ..particles.analysis_file import SoftnessAnalysis
    from ..particles.trajectory import Trajectory
    from .extract import ExtractParams, extract
    from .site_events import measure_sites, site_softness_law

    res = SourceResult(label="particles", kind="particles")
    mu = float(cal["mu_relaxed"])
    a = float(cal["site_size"])
    params = replace(ExtractParams(), species="both", lags=(1,), n_boot=0)
    g2_avs, sizes, plastic, plastic_g = [], [], [], []
    ps_all, ps_re, runs = [], [], []
    n_empty = n_av = 0
    sel_name = cfg.species
    cl_name = cfg.cluster_species
    for tp, ap in pairs:
        ex = extract(tp, ap, params, want=("avalanches", "rearrangements"), progress=progress)
        with Trajectory(tp) as t, SoftnessAnalysis(ap) as an:
            species = np.asarray(t.species, np.int64)
            Lx, Ly = t.box_lengths
            V = Lx * Ly
            table = t.avalanches()
            drop = dict(zip(np.asarray(table["id"]).tolist(), np.asarray(table["stress_drop"]).tolist()))
            av_gamma = dict(zip(np.asarray(table["id"]).tolist(), np.asarray(table["gamma"]).tolist()))
            seq = an.sequence()
            gam = t.observable("gamma")
            sxy = t.observable("stress")[:, 0, 1]
            res.stress.append((f"particles {Path(tp).parent.name}", np.asarray(gam), np.asarray(sxy) / mu))
            k1 = np.flatnonzero(seq["kind"] == 1)
            av_ids = list(dict.fromkeys(seq["avalanche"][k1].tolist()))
            first_row = {aid: int(k1[seq["avalanche"][k1] == aid][0]) for aid in av_ids}
            if len(av_ids) != len(ex.avalanches):
                res.notes.append(f"{tp}: {len(ex.avalanches)} avalanches extracted, {len(av_ids)} in the file")
            smask = {"small": species == 0, "large": species == 1, "both": np.ones(species.size, bool)}
            sel, clsel = smask[sel_name], smask[cl_name]
            onset_rows = {}
            for aid, frames, rr in zip(av_ids, ex.avalanches, ex.rearrangements):
                F = len(frames)
                flags = np.zeros((F, species.size), bool)
                for p, s0, nf in zip(rr.particle, rr.start, rr.frames):
                    flags[s0:s0 + nf, p] = True
                cl_frames, g2_frames = [], []
                for j, (pos, box) in enumerate(frames):
                    ids = np.flatnonzero(flags[j])
                    if ids.size != len(pos):
                        raise RuntimeError(f"{tp}: avalanche {aid} pair {j}: rearranger lists disagree")
                    c = clsel[ids]
                    cl_frames.append((ids[c], pos[c], box))
                    g2_frames.append((pos[sel[ids]], box))
                g2_avs.append(g2_frames)
                n_cl = cluster_rearrangements(cl_frames, cfg.link_distance)[0]
                n_av += 1
                if n_cl == 0:
                    n_empty += 1
                else:
                    sizes.append(n_cl)
                plastic.append(drop.get(aid, math.nan) * V / (2 * mu))
                plastic_g.append(av_gamma.get(aid, math.nan))
                r0 = first_row[aid]
                for p, s0 in zip(rr.particle, rr.start):
                    if sel[p]:
                        onset_rows.setdefault(r0 + int(s0), []).append(int(p))
            # P(S) of particles: minimised states every ps_every steps, and rearranger onsets
            for i in np.flatnonzero(seq["kind"] == 0)[::cfg.ps_every]:
                ps_all.append(an.field("softness", int(i)).astype(float)[sel])
            for i, parts in sorted(onset_rows.items()):
                ps_re.append(an.field("softness", int(i)).astype(float)[np.asarray(parts, np.int64)])
        runs.append(ex.runs)
    cat = (lambda x: np.concatenate(x) if x else np.zeros(0))
    res.sizes = np.asarray(sizes, np.int64)
    res.plastic = np.asarray(plastic, float)
    res.n_avalanches, res.n_empty = n_av, n_empty
    res.g2 = _g2(g2_avs, cfg, particle_r_edges(cfg), cfg.g2_fit_range)
    res.ps_all, res.ps_rearr = cat(ps_all), cat(ps_re)
    # the site level, as the calibration measures it (calibrate/site_events.py)
    sites = measure_sites(pairs, runs, a, mu, cfg.ps_every)
    ev = sites.events
    res.ps_site_all, res.ps_site_rearr = sites.sites, ev.S0
    dS = ev.S1 - ev.S0
    res.self_change = float(np.nanmean(dS)) if np.isfinite(dS).any() else math.nan
    sc = site_softness_law(sites, n_boot=cfg.n_boot, seed=cfg.seed)
    c0 = sc.c0
    res.ds_kernel = {"c0": (c0.r, c0.value, c0.error), "c1": (sc.c1.r, sc.c1.value, sc.c1.error)}
    res.extra.update(a=a, mu=mu, files=len(pairs), ps_site_all_gamma=sites.gammas,
                     ps_site_all_frames=sites.frames, ps_site_rearr_gamma=ev.gamma,
                     plastic_gamma=np.asarray(plastic_g, float), site_events=len(ev),
                     single_site_frames=len(sites.fields), c0_measured=c0)
    # one site rearrangement's far field per frame, measured as the calibration does
    sf = strain_fields(sites.fields, n_boot=cfg.n_boot, seed=cfg.seed)
    res.extra["far_field"] = {k: sf.fits[k] for k in ("c_dev", "c_xy", "k_sin2")}
    return res


# --------------------------------------------------------------------------
# the exponent table
# --------------------------------------------------------------------------

def exponent_table(results, cfg):
    """{label: {"tau_size": fit, "tau_plastic": fit, "g2_tail": {df: {exponent,
    error, n}}, counts...}} with NaN where there is too little data."""
    out = {}
    for r in results:
        g2 = {}
        if r.g2 is not None:
            for lag, f in zip(r.g2.lags, r.g2.fits):
                e = f["exponent"]
                g2[f"df={int(lag)}"] = {"exponent": _num(e.value), "error": _num(e.error), "n": int(e.n),
                                        "flag": e.flag}
        out[r.label] = {
            "kind": r.kind,
            "n_avalanches": int(r.n_avalanches), "n_empty": int(r.n_empty),
            "mean_size": _num(r.sizes.mean()) if r.sizes.size else math.nan,
            "tau_size": {k: _num(v) for k, v in fit_sizes(r.sizes, cfg.s_min).items()},
            "tau_plastic": {k: _num(v) for k, v in fit_plastic(r.plastic, cfg.plastic_min).items()},
            "g2_tail": g2,
            "self_change": _num(r.self_change),
            "notes": list(r.notes),
            **{k: v for k, v in r.extra.items() if isinstance(v, (int, float, str))},
        }
    return out


def _num(x):
    try:
        x = float(x)
    except (TypeError, ValueError):
        return math.nan
    return x


# --------------------------------------------------------------------------
# figures (each returns (fig, caption); thin data draws what exists)
# --------------------------------------------------------------------------

def _style(i, r):
    return dict(color=r.color or ("k" if r.kind == "particles" else f"C{i}"),
                marker="o" if r.kind == "particles" else "s")


def _legend(ax, size):
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=size)


def _safe_log(ax, x=True, y=True):
    from .report import _log
    _log(ax, x, y)


def fig_sizes(results, cfg):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for i, r in enumerate(results):
        st = _style(i, r)
        c, d = log_binned_pdf(r.sizes)
        fit = fit_sizes(r.sizes, cfg.s_min)
        lab = f"{r.label} ({r.sizes.size} av.), tau = {_fmt(fit['tau'])} +- {_fmt(fit['error'])}"
        ax.plot(c, d, ls="-", ms=4, label=lab, **st)
        if math.isfinite(fit["tau"]) and c.size:
            sel = c >= cfg.s_min
            if sel.any():
                x = np.geomspace(max(cfg.s_min, c[sel][0]), c[-1], 20)
                k = d[sel][0] * c[sel][0] ** fit["tau"]
                ax.plot(x, k * x ** -fit["tau"], ":", color=st["color"], lw=1)
    _safe_log(ax)
    ax.set_xlabel("rearrangements per avalanche")
    ax.set_ylabel("P(size)")
    _legend(ax, 7)
    return fig, (f"Avalanche size distributions in rearrangements (particles: connected clusters of "
                 f"rearrangers, link {cfg.link_distance:g}, continued over frames; lattice: events "
                 f"counted the same way), log-binned; dotted: power-law MLE from s_min = {cfg.s_min}.")


def fig_plastic(results, cfg):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    q = cfg.plastic_min / PLASTIC_STEPS
    for i, r in enumerate(results):
        st = _style(i, r)
        x = r.plastic[np.isfinite(r.plastic) & (r.plastic > 0)]
        fit = fit_plastic(r.plastic, cfg.plastic_min)
        c, d = log_binned_pdf(np.round(x / q)) if x.size else (np.zeros(0), np.zeros(0))
        keep = c > 0
        ax.plot(c[keep] * q, d[keep] / q, ls="-", ms=4, **st,
                label=f"{r.label} ({x.size}), tau = {_fmt(fit['tau'])} +- {_fmt(fit['error'])}")
    ax.axvline(cfg.plastic_min, color="0.5", lw=0.7, ls="--")
    _safe_log(ax)
    ax.set_xlabel("plastic strain x area per avalanche (length^2) = stress drop V / (2 mu)")
    ax.set_ylabel("P")
    _legend(ax, 7)
    return fig, (f"Plastic strain released per avalanche (stress drop times V/(2 mu), calibrated mu); "
                 f"fits from plastic_min = {cfg.plastic_min:g} (dashed).")


def fig_g2_radial(results, cfg):
    import matplotlib.pyplot as plt

    lags = list(cfg.g2_lags)
    fig, axes = plt.subplots(1, len(lags), figsize=(4 * len(lags), 3.6), squeeze=False)
    for li, (lag, ax) in enumerate(zip(lags, axes[0])):
        for i, r in enumerate(results):
            if r.g2 is None or li >= len(r.g2.radial):
                continue
            st = _style(i, r)
            c = r.g2.radial[li]
            ok = np.isfinite(c.value)
            ax.errorbar(c.r[ok], c.value[ok] - 1, np.nan_to_num(c.error[ok]), fmt=st["marker"], ms=3,
                        color=st["color"], label=r.label)
            f = r.g2.fits[li]
            if math.isfinite(f["amplitude"].value):
                rr = np.linspace(*f["amplitude"].fit_range, 30)
                ax.plot(rr, f["sign"] * f["amplitude"].value * rr ** -f["exponent"].value, "-",
                        color=st["color"], lw=1)
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=1e-2)
        ax.set_title(f"df = {lag} frames", fontsize=9)
        ax.set_xlabel("r (small diameters)")
    axes[0][0].set_ylabel("g2(r, df) - 1")
    _legend(axes[0][0], 7)
    return fig, ("Radial rearranger pair correlation within avalanches, g2 - 1, with power-law tail "
                 f"fits over r in {list(cfg.g2_fit_range)} (particles) and "
                 f"{list(cfg.lattice_g2_fit_range)} (lattice) (lags in frames: one lattice frame is "
                 "calibrated to the mean time between particle frames).")


def fig_g2_angular(results, cfg):
    import matplotlib.pyplot as plt

    lags = list(cfg.g2_lags)
    fig, axes = plt.subplots(1, len(lags), figsize=(4 * len(lags), 3.6), squeeze=False)
    for li, (lag, ax) in enumerate(zip(lags, axes[0])):
        for i, r in enumerate(results):
            if r.g2 is None or li >= len(r.g2.angular):
                continue
            lo, hi = cfg.g2_fit_range if r.kind == "particles" else cfg.lattice_g2_fit_range
            m = r.g2.angular[li]
            rows = (m.r >= lo) & (m.r <= hi)
            if not rows.any():
                continue
            w = m.n[rows].astype(float)
            v = np.where(np.isfinite(m.value[rows]), m.value[rows], 0.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                g = (v * w).sum(axis=0) / w.sum(axis=0)
            # pair-count weights vanish where no pair was counted: show the plain mean there
            plain = np.nanmean(np.where(np.isfinite(m.value[rows]), m.value[rows], np.nan), axis=0) \
                if np.isfinite(m.value[rows]).any() else np.full(m.theta.size, np.nan)
            g = np.where(w.sum(axis=0) > 0, g, plain)
            st = _style(i, r)
            ax.plot(np.degrees(m.theta), g, ls="-", ms=4, label=r.label, **st)
        ax.set_title(f"df = {lag}", fontsize=9)
        ax.set_xlabel("theta (degrees from x)")
    axes[0][0].set_ylabel("g2(r, theta, df)")
    _legend(axes[0][0], 7)
    return fig, ("Angular rearranger pair correlation g2(theta) (pair-count weighted mean over the r "
                 f"bins of the tail-fit range: particles {list(cfg.g2_fit_range)}, lattice "
                 f"{list(cfg.lattice_g2_fit_range)}).")


def fig_ds(results, cfg):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, name in zip(axes, ("c0", "c1")):
        for i, r in enumerate(results):
            st = _style(i, r)
            k = r.ds_kernel or {}
            if r.kind == "particles":
                if name in k:
                    rr, v, e = k[name]
                    ok = np.isfinite(v)
                    ax.errorbar(rr[ok], v[ok], np.nan_to_num(e[ok]), fmt="o", ms=3, color="k",
                                label=f"{r.label} (measured, site level)")
            elif k.get("r") is not None and len(k["r"]):
                ax.plot(k["r"], k[name], ls="-", ms=3, label=f"{r.label} (applied)", **st)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_yscale("symlog", linthresh=1e-4)
        ax.set_xlabel("r between site centres (small diameters; 0 = the rearranging site)")
        ax.set_ylabel(f"{name}(r) per frame")
        _legend(ax, 7)
    return fig, ("Softness change per frame of a site at distance r from a rearranging site (r = 0: the "
                 "site itself): dS = c0(r) + c1(r)(S - <S>) + b k. Particles: measured on these runs "
                 "coarse-grained on the lattice tiling (frames with exactly one rearranging site, "
                 "calibrate/site_events.py); lattice: the calibrated kernels each run applies "
                 "(zero without softness).")


def fig_ps(results, cfg):
    import matplotlib.pyplot as plt

    lo, hi, step = cfg.s_edges
    edges = np.arange(lo, hi + 1e-9, step)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, site in zip(axes, (False, True)):
        for i, r in enumerate(results):
            st = _style(i, r)
            if r.kind == "particles" and not site:
                pairs = ((r.ps_all, "all"), (r.ps_rearr, "rearrangers"))
            elif r.kind == "particles" or site:
                pairs = ((r.ps_site_all, "all sites"), (r.ps_site_rearr, "rearranging sites"))
            else:
                continue
            for x, what in pairs:
                x = x[np.isfinite(x)]
                if x.size == 0:
                    continue
                h, _ = np.histogram(x, edges, density=False)
                d = h / (x.size * step)
                ls = "-" if what.startswith("all") else "--"
                ax.plot(0.5 * (edges[1:] + edges[:-1]), d, ls=ls, color=st["color"],
                        label=f"{r.label}: {what} ({x.size})")
        ax.set_xlabel("site-averaged softness S" if site else "particle softness S")
        ax.set_ylabel("P(S)")
        _legend(ax, 6)
    axes[0].set_title(f"particles ({cfg.species})", fontsize=9)
    axes[1].set_title("site-averaged (side a of the calibration)", fontsize=9)
    return fig, ("P(S) of all particles / sites (solid) and of rearrangers at their onset (dashed): "
                 "particle level (left) and site-averaged with the calibrated a (right; lattice "
                 "sites: final state and S_before of each rearrangement).")


def fig_stress(results, cfg):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, r in enumerate(results):
        st = _style(i, r)
        for j, (name, g, s) in enumerate(r.stress):
            ax.plot(g, s, "-", lw=0.8, color=st["color"], alpha=1.0 if j == 0 else 0.6,
                    label=name if j < 3 else None)
    ax.set_xlabel("gamma (engineering shear strain)")
    ax.set_ylabel("sigma_xy / mu (calibrated relaxed mu)")
    _legend(ax, 7)
    return fig, ("Stress-strain curves, sigma_xy / mu vs gamma (particles: virial stress per step; "
                 "lattice: 2 mu <e2> sawtooth before/after each avalanche).")


FIGURES = (("sizes", fig_sizes), ("plastic", fig_plastic), ("g2_radial", fig_g2_radial),
           ("g2_angular", fig_g2_angular), ("ds", fig_ds), ("ps", fig_ps),
           ("stress_strain", fig_stress))


def _fmt(x, digits=3):
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "NaN"
    return "NaN" if not math.isfinite(x) else f"{x:.{digits}g}"


def error_figure(name, exc):
    """A placeholder figure saying why a figure could not be drawn."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 1.5))
    ax.axis("off")
    ax.text(0.01, 0.5, f"{name}: not drawn ({type(exc).__name__}: {exc})", fontsize=8, va="center",
            wrap=True)
    return fig
