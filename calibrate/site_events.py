"""Particle data coarse-grained on the lattice tiling (SPEC.md section 4,
item 8): site events and the site-level laws the lattice applies.

Units: lengths in small-particle diameters, stress in energy/length^2,
strains dimensionless (e1 = (exx - eyy)/2, e2 = exy; eps_dev = 2 |e|),
softness in the SVM unit, frames and rows of the global frame sequence
(``extract`` module docstring).

Tiling: ``lattice_mapping.site_index`` (n1 x n2 cells of the sheared box in
fractional coordinates, tilt reduced, side ~ a). A particle belongs to the
cell of its position in the first frame of whatever is measured (the
assignment is Lagrangian over a frame pair or an event, so that a
particle crossing a cell border does not change a site's mean).

Site events (``group_runs``): a site rearranges when any of its particles
does. The particle runs (``extract`` definition 5: particle p rearranges in
the pairs f0 + 1 .. e_end, i.e. from frame f0 to frame e_end) are assigned
to the cell of the particle at f0; per cell, runs whose frame intervals
[f0, e_end] overlap or touch are merged into one site event [F0, E]: it
starts at frame F0 (the last frame before the site yields) and ends at
frame E; it lasts E - F0 frames (the lattice's frames per rearrangement).

Per site event (``SiteEvents``), with the cell membership of frame F0:
- e_el: the site's elastic deviatoric strain at F0, its deviatoric stress
  (sum of the per-particle virials of its particles over the cell area
  Lx Ly / (n1 n2)) over 2 mu (the threshold, in the variable the lattice
  triggers on); de: the same at E minus at F0 (the relaxation);
- S0, S1: the site softness (mean particle softness of the cell) at F0
  and at E;
- avalanche: the avalanche id of frame F0.

Softness change at the site level (``site_softness_law``): the frame
pairs (f -> f + 1) in which exactly one site event is active (F0 <= f < E)
and no other site rearranges. For such a pair every site j gives a
``softness_change.SoftnessEvent`` entry: its S at f, its change
S(f + 1) - S(f) (same particles), its mean volumetric strain k of the
pair, at the position a (i1, i2) of its cell in index space, the active
site at the origin and the box (n1 a, n2 a, 0): distances are lattice
distances a |d| (d the site offset, minimum image), exactly what the
lattice uses. ``softness_change`` with ``lattice_distance_edges`` then
gives c0(r), c1(r), b at the lattice's scale, r = 0 the active site itself
(its own change per frame).
"""

import math
from dataclasses import dataclass

import numpy as np

from .lattice_mapping import cell_means, site_grid, site_index


@dataclass
class SiteEvents:
    """Site events of one or several trajectories (module docstring), one
    entry per event: ``traj`` (index of the input pair), ``cell``, ``F0``,
    ``E`` (rows), ``gamma`` (the strain at F0), ``avalanche``, ``n_runs``
    (particle runs merged), ``e_el`` (n, 2), ``de`` (n, 2), ``S0``, ``S1``."""

    traj: np.ndarray
    cell: np.ndarray
    F0: np.ndarray
    E: np.ndarray
    gamma: np.ndarray
    avalanche: np.ndarray
    n_runs: np.ndarray
    e_el: np.ndarray
    de: np.ndarray
    S0: np.ndarray
    S1: np.ndarray

    @property
    def frames(self):
        """(n,) frames each event lasts, E - F0."""
        return self.E - self.F0

    def __len__(self):
        return len(self.F0)

    @staticmethod
    def concat(items):
        items = list(items)
        if not items:
            i, f = np.zeros(0, np.int64), np.zeros(0)
            return SiteEvents(i, i, i, i, f, i, i, np.zeros((0, 2)), np.zeros((0, 2)), f, f)
        return SiteEvents(**{k: np.concatenate([getattr(o, k) for o in items])
                             for k in SiteEvents.__dataclass_fields__})


def group_runs(runs, cells):
    """Merge particle runs into site events (module docstring).

    Args:
        runs: (m, 3) int (particle, f0, e_end), f0 < e_end.
        cells: (m,) int, the cell of each run's particle at its f0.
    Returns:
        (cell, F0, E, n_runs), each (n,) int64, ordered by F0 then cell.
    """
    runs = np.asarray(runs, np.int64).reshape(-1, 3)
    cells = np.asarray(cells, np.int64)
    if len(cells) != len(runs):
        raise ValueError(f"cells has {len(cells)} entries for {len(runs)} runs")
    out = []
    order = np.lexsort((runs[:, 1], cells))
    cur = None
    for j in order:
        c, f0, e = int(cells[j]), int(runs[j, 1]), int(runs[j, 2])
        if cur is not None and cur[0] == c and f0 <= cur[2]:
            cur[2] = max(cur[2], e)
            cur[3] += 1
        else:
            if cur is not None:
                out.append(cur)
            cur = [c, f0, e, 1]
    if cur is not None:
        out.append(cur)
    arr = np.array(out, np.int64).reshape(-1, 4)
    arr = arr[np.lexsort((arr[:, 0], arr[:, 1]))]
    return arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3]


def cell_stress(virial, cells, n_cells, cell_area):
    """(n_cells, 2) deviatoric stress (s1, s2) = ((sxx - syy)/2, sxy) of each
    cell: the sum of the per-particle virials (N, 2, 2) of its particles
    over the cell area (energy/length^2)."""
    s1 = np.bincount(cells, 0.5 * (virial[:, 0, 0] - virial[:, 1, 1]), minlength=n_cells)
    s2 = np.bincount(cells, 0.5 * (virial[:, 0, 1] + virial[:, 1, 0]), minlength=n_cells)
    return np.column_stack([s1, s2]) / cell_area


def index_positions(box, a):
    """(n1 n2, 2) positions a (i1, i2) of the cells in index space and the
    square box (n1 a, n2 a, 0) they live in: minimum-image distances there
    are the lattice distances a |d|."""
    n1, n2 = site_grid(box, a)
    i1, i2 = np.divmod(np.arange(n1 * n2), n2)
    return np.column_stack([i1, i2]).astype(float) * a, (n1 * a, n2 * a, 0.0)


def lattice_distances(r_max):
    """Sorted distinct |d| = sqrt(dx^2 + dy^2) of integer offsets up to r_max (sites)."""
    m = int(math.floor(r_max)) + 1
    d = np.sqrt(np.add.outer(np.arange(m) ** 2, np.arange(m) ** 2).ravel().astype(float))
    return np.unique(np.round(d[d <= r_max + 1e-9], 12))


def lattice_distance_edges(a, r_max):
    """(edges, r): radial bins (lengths) with one lattice distance class
    a |d| each, edges midway between consecutive classes (the first at 0,
    so the site itself is bin 0; the last edge midway to the next class),
    up to r_max (lengths); r the classes."""
    all_d = lattice_distances(r_max / a + 2.0) * a
    n = int(np.sum(all_d <= r_max * (1 + 1e-12)))
    edges = np.concatenate([[0.0], 0.5 * (all_d[1:n + 1] + all_d[:n])])
    return edges, all_d[:n]


def single_active_pairs(F0, E):
    """{row i: event index} of the pairs (i - 1 -> i) in which exactly one
    event is active (F0 < i <= E)."""
    count, owner = {}, {}
    for j, (f0, e) in enumerate(zip(F0, E)):
        for i in range(int(f0) + 1, int(e) + 1):
            count[i] = count.get(i, 0) + 1
            owner[i] = j
    return {i: owner[i] for i, c in count.items() if c == 1}


def _cell_centre(pos, members, box):
    """The mean position of a cell's particles (minimum image about the
    first of them in the sheared box)."""
    from .fits import min_image
    p = pos[members]
    if len(p) == 0:
        return np.full(2, np.nan)
    return p[0] + min_image(p - p[0], box).mean(axis=0)


def site_softness_law(sites, r_max=15.0, far_range=(4.0, 12.0), tail_range=(1.0, 10.0), n_boot=200,
                      seed=0):
    """The site-level softness law of ``sites`` (a SiteSamples): the
    ``softness_change`` of its single-active frame pairs with one bin per
    lattice distance class a |d| up to r_max (lengths,
    ``lattice_distance_edges``), the site itself in bin 0; its c0, c1
    Curves carry the class distances as r. None without a site side."""
    from dataclasses import replace

    from .softness_change import softness_change

    if not (math.isfinite(sites.a) and sites.a > 0):
        return None
    edges, d = lattice_distance_edges(sites.a, r_max)
    sc = softness_change(sites.softness, r_edges=edges, far_range=tuple(far_range),
                         tail_range=tuple(tail_range), n_boot=n_boot, seed=seed, keep_origin=True)
    return replace(sc, c0=replace(sc.c0, r=d), c1=replace(sc.c1, r=d))


def cells_of(pos, box, a):
    """site_index, and the number of cells and their area for ``box``."""
    n1, n2 = site_grid(box, a)
    return site_index(pos, box, a), n1 * n2, box[0] * box[1] / (n1 * n2)


@dataclass
class SiteSamples:
    """Everything measured on the lattice tiling of side ``a`` (length).

    sites: (n,) site S over the sampled minimised frames (P(S)); frames:
        (n,) the row of each of those samples (unique across trajectories:
        trajectory j's rows are offset by j x 10^9); gammas: (n,) its strain.
    particles: (m,) particle S over the same frames.
    rearrangers: (r,) particle S of each particle run at its onset f0.
    events: SiteEvents (their e_el over 2 mu, mu the files' mean relaxed
        shear modulus, the lattice's).
    softness: [SoftnessEvent] of the single-active frame pairs, in index
        space (module docstring).
    fields: [strain_fields.FieldEvent] of the same pairs: every particle's
        J strain of the pair around the active site's centre (the mean
        position of its particles in the pair's first frame): the far field
        of one site rearrangement, frame by frame.
    plastic: {(traj, avalanche id): plastic strain x area of the avalanche,
        stress drop x V / (2 mu)}.
    initial_e: (m, 2) the site elastic strain (site stress / 2 mu) of every
        site of every trajectory's first (unstrained, jammed) state, its
        per-trajectory mean removed: the residual stresses of jamming.
    n_frames: sampled minimised frames.
    """

    a: float
    sites: np.ndarray
    frames: np.ndarray
    gammas: np.ndarray
    particles: np.ndarray
    rearrangers: np.ndarray
    events: SiteEvents
    softness: list
    fields: list
    plastic: dict
    initial_e: np.ndarray
    n_frames: int = 0


def measure_sites(pairs, runs_list, a, mu, sample_every=50, progress=None) -> SiteSamples:
    """The site-level pass over every (trajectory, analysis file) pair.

    Args:
        pairs: [(trajectory, analysis file)] in the order of ``runs_list``.
        runs_list: per pair the (m, 3) particle runs (``extract.Extract.runs``).
        a: site side (length); NaN gives empty samples.
        mu: relaxed shear modulus (energy/length^2) converting stress to strain.
        sample_every: every k-th minimised step is a P(S) sample.
        progress: optional callable(str).
    """
    from ..particles.analysis_file import SoftnessAnalysis
    from ..particles.potential import evaluate
    from ..particles.state import State
    from ..particles.trajectory import Trajectory
    from .softness_change import SoftnessEvent
    from .strain_fields import FieldEvent

    empty = SiteSamples(a, np.zeros(0), np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0),
                        SiteEvents.concat([]), [], [], {}, np.zeros((0, 2)), 0)
    if not (math.isfinite(a) and a > 0):
        return empty
    sites, frames, gammas, parts, rear, evs, soft, fields, plastic, init = [], [], [], [], [], [], [], [], {}, []
    for ti, ((tp, ap), runs) in enumerate(zip(pairs, runs_list)):
        if progress:
            progress(f"site events and site softness: {ap}")
        with Trajectory(tp) as t, SoftnessAnalysis(ap) as an:
            seq = an.sequence()
            Lx, Ly = t.box_lengths
            radii = t.radii
            table = t.avalanches()
            for aid, drop in zip(np.asarray(table["id"]).tolist(), np.asarray(table["stress_drop"]).tolist()):
                plastic[(ti, int(aid))] = drop * Lx * Ly / (2 * mu)

            def frame(r):
                pos = t.sequence_position(int(seq["kind"][r]), int(seq["row"][r]))
                return pos, (Lx, Ly, float(seq["gamma"][r]))

            def softness(r):
                return an.field("softness", int(r)).astype(float)

            # the unstrained state's site strains
            pos, box = frame(0)
            cells, nc, area = cells_of(pos, box, a)
            e0 = cell_stress(evaluate(State(pos, radii, Lx, Ly, box[2])).virial_per_particle, cells, nc,
                             area) / (2 * mu)
            init.append(e0 - e0.mean(axis=0))
            # P(S) samples
            for r in np.flatnonzero(seq["kind"] == 0)[::sample_every]:
                pos, box = frame(r)
                S = softness(r)
                cells, nc, _ = cells_of(pos, box, a)
                sites.append(cell_means(S, cells, nc))
                frames.append(np.full(nc, r + ti * 10**9, np.int64))
                gammas.append(np.full(nc, box[2]))
                parts.append(S)
            # runs -> site events
            runs = np.asarray(runs, np.int64).reshape(-1, 3)
            run_cell = np.empty(len(runs), np.int64)
            for f0 in np.unique(runs[:, 1]):
                j = np.flatnonzero(runs[:, 1] == f0)
                pos, box = frame(f0)
                run_cell[j] = cells_of(pos, box, a)[0][runs[j, 0]]
                rear.append(softness(f0)[runs[j, 0]])
            cell, F0, E, n_runs = group_runs(runs, run_cell)
            n = len(F0)
            e_el, e_end, S0, S1 = np.full((n, 2), np.nan), np.full((n, 2), np.nan), np.full(n, np.nan), \
                np.full(n, np.nan)
            members = {}
            for f0 in np.unique(F0):          # membership and stress at the onsets
                j = np.flatnonzero(F0 == f0)
                pos, box = frame(f0)
                cells, nc, area = cells_of(pos, box, a)
                st = State(pos, radii, Lx, Ly, box[2])
                e_el[j] = cell_stress(evaluate(st).virial_per_particle, cells, nc, area)[cell[j]] / (2 * mu)
                S0[j] = cell_means(softness(f0), cells, nc)[cell[j]]
                for jj in j:
                    members[jj] = np.flatnonzero(cells == cell[jj])
            for e in np.unique(E):            # the same particles (their onset cells) at the ends
                j = np.flatnonzero(E == e)
                pos, box = frame(e)
                label = np.full(len(pos), len(j), np.int64)   # events ending at e: disjoint cells
                for q, jj in enumerate(j):
                    label[members[jj]] = q
                vir = evaluate(State(pos, radii, Lx, Ly, box[2])).virial_per_particle
                area = Lx * Ly / np.prod(site_grid(box, a))
                e_end[j] = cell_stress(vir, label, len(j) + 1, area)[:len(j)] / (2 * mu)
                S1[j] = cell_means(softness(e), label, len(j) + 1)[:len(j)]
            evs.append(SiteEvents(np.full(n, ti, np.int64), cell, F0, E, np.asarray(seq["gamma"][F0], float),
                                  np.asarray(seq["avalanche"][F0], np.int64), n_runs, e_el, e_end - e_el,
                                  S0, S1))
            # site-level softness change: pairs with exactly one active site
            for i, j in sorted(single_active_pairs(F0, E).items()):
                pos, box = frame(i - 1)
                cells, nc, _ = cells_of(pos, box, a)
                S_a, S_b = softness(i - 1), softness(i)
                k = an.field("k", int(i)).astype(float)
                xs, ibox = index_positions(box, a)
                s_site = cell_means(S_a, cells, nc)
                soft.append(SoftnessEvent(xs[cell[j]].copy(), xs, ibox, s_site,
                                          cell_means(S_b - S_a, cells, nc), cell_means(k, cells, nc),
                                          float(np.nanmean(s_site))))
                fields.append(FieldEvent(_cell_centre(pos, cells == cell[j], box), pos, box, k,
                                         an.field("eps_dev", int(i)).astype(float),
                                         an.field("e2", int(i)).astype(float)))
    cat = (lambda x, dt=float: np.concatenate(x) if x else np.zeros(0, dt))
    return SiteSamples(a, cat(sites), cat(frames, np.int64), cat(gammas), cat(parts), cat(rear),
                       SiteEvents.concat(evs),
                       soft, fields, plastic, np.concatenate(init) if init else np.zeros((0, 2)), len(sites))
