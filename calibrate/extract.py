"""From trajectories and their analysis files to the inputs of the
calibrate/ measurement functions (SPEC.md section 4), and ``measure``.

Conventions (SPEC.md sections 0 and 2): lengths in small-particle
diameters, time in the overdamped unit, strains dimensionless (k = half
trace, e1, e2, eps_dev = 2 sqrt(e1^2 + e2^2)), D2min in length^2. The
"rows" below are rows of the global frame sequence
(``Trajectory.frame_sequence``, the analysis file's ``frames/*``): row f
is one frame; the analysis fields of row f (d2min, k, e1, e2, eps_dev)
describe the frame PAIR (f - 1 -> f); the softness of row f is that of
frame f. Boxes are (Lx, Ly, gamma) with gamma the frame's accumulated
strain (the tilt to pass).

Streaming: nothing of size (F, N, 2) or (F, N) is loaded. The analysis
fields are read in blocks of ``ExtractParams.block`` rows (an LRU of a few
blocks), positions one frame at a time when needed (an LRU of recent
frames); one pass over the rows serves every extraction below.

Memory: besides the caches, one avalanche's (F_a, N) flags and eps_dev
rows (for ``find_rearrangements``), the (N,) arrays of every isolated
event, and the cropped arrays of every all-rearranger event.

Definitions
-----------
Rearranger of pair f: ``particles.rearrangements.rearrangers`` on d2min
row f (d_soft 0.0025 small, 0.0015 large). The origin species is
``ExtractParams.species`` ("small" by default, SPEC.md section 2; "large"
or "both" as a check): only rearrangers of that species are used as
origins, as onsets and in the statistics. Rows whose previous frame is not
adjacent (a gap in the stored steps) and the affine pair (minimised state
of step s - 1 -> affinely strained start of step s's avalanche) are
skipped without reading positions (no rearranger there).

1. Isolated events (``isolated_events``): every pair f with
   ``isolated_rearranger`` (d2min row f, positions and box of frame
   f - 1, r_far = 5, quiet level 0.01 d_soft) returning a particle of the
   chosen species. FieldEvent: origin = its position in frame f - 1, pos
   and box of frame f - 1, k, eps_dev and eps_xy = e2 of row f.
   SoftnessEvent: S = softness of frame f - 1, dS = softness[f] -
   softness[f - 1] (float64 of the stored float32), k of row f,
   S_mean = mean finite softness of frame f - 1. Pairs between two
   minimised states (no avalanche) are included when isolated.
2. All rearrangers (``all_rearranger_events``): one SoftnessEvent per
   rearranger of the chosen species in every pair, built as in 1 around
   that rearranger. A pair with n rearrangers gives n events that share the
   same frame arrays (no copies): every other particle, the other
   rearrangers included, is in each of them. This is meant for the
   near-field c1(r) (small r, where the own rearranger dominates). To
   bound memory each event keeps only the particles within the largest
   ds_r bin edge of its rearranger (``softness_change`` ignores the others;
   S_mean is still the whole frame's mean).
3. Avalanche rearrangers (``avalanche_rearrangers``): per avalanche, its
   frame pairs in order, from (affinely strained start -> frame 1) to
   (last frame -> the step's minimised state); per pair (positions in the
   pair's first frame of its rearrangers of the chosen species (n_f, 2),
   box of that frame). Pairs without rearrangers are kept (n_f = 0) so
   that lags count frames.
4. Yield onsets (``yield_onsets``): a particle STARTS rearranging at frame
   f0 when it is a rearranger of pair (f0 -> f0 + 1) (row f0 + 1) and not
   of pair (f0 - 1 -> f0) (row f0). Frame f0 is the last state before it
   yields (in the brief's wording, "starts at f" with f = f0 + 1, the
   window ends at f - 1 = f0). For lag df: eps = eps_dev of one J fit
   (``local_deformation``, R_D = 2) between frame f0 - df and frame f0, the
   strain its neighbourhood accumulated over the df frames just before
   yielding; S = its softness at frame f0 - df. Requires f0 - df >= 0 and
   rows f0 - df .. f0 contiguous in the global frame order. "since_last":
   the J fit from frame e to f0, with e the frame after its previous
   rearrangement ended (the second frame of its last rearranging pair,
   e <= f0 - 1), S = its softness at e; only particles that rearranged
   before in the same trajectory. The window may span strain steps and
   avalanches (it then includes the imposed affine strain). (e1, e2) of
   the same fits are kept.
5. Rearrangements: per avalanche, flags (F_a, N) = rearrangers (chosen
   species) of its pairs (as in 3) and eps_dev (F_a, N) of the same rows ->
   ``events.find_rearrangements`` (runs of consecutive flagged pairs).
   Runs (``Extract.runs``): every rearrangement run of a particle of any
   species (consecutive flagged pairs, any pair) as (particle, f0, e_end):
   it starts at frame f0 (the last frame before it yields) and its last
   flagged pair ends at frame e_end. Once the site side is known the runs
   are grouped into site events (a site rearranges when any of its
   particles does, SPEC.md section 4 item 8; calibrate/site_events.py),
   which give the lattice its laws. Self change (per particle, reported):
   softness at e_end minus softness at f0, particles of the chosen species. Frame times: consecutive differences of
   the frame table's ``time`` within each avalanche (its saved frames; the
   last frame -> minimised state interval is not a full frame and is left
   out; ``skip_first_interval`` drops the start -> frame 1 interval, which
   includes the escape from the affinely strained start; non-positive
   intervals, if any, are dropped).
6. D2min correlation: ``d2min_correlation`` of d2min row f with positions
   and box of frame f - 1 on the isolated pairs of 1 (``corr_frames =
   "isolated"``) or on every avalanche pair (``"avalanche"``), averaged
   over pairs weighted by their pair counts per bin, then
   ``correlation_length``. r_max is capped at 0.49 of the box width.
7. Compression (``calibrate.compression``): each isolated event of 1 whose
   pair lies inside an avalanche is followed from its onset frame f - 1 to
   the avalanche's end (the step's minimised state, whose time is the
   avalanche ``duration``): per pair j >= f, dQ_j over the particles within
   ``compression_radius`` of the rearranger in frame f - 1, t_j = time of
   frame j - time of frame f - 1. An isolated pair that is its
   avalanche's last pair gives a one-point event. With
   ``compression_source = "onsets"`` every yield onset (definition 4, onset
   frame f0 inside an avalanche) is followed the same way instead.
8. Elastic constants (/parameters/elastic, relaxed and instantaneous
   lam, mu, nu): mean over the files, error = standard deviation / sqrt(n)
   (NaN for one file), n = files; number density N / (Lx Ly) likewise.
"""

import math
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from step_epm.config_checks import ConfigError, check_choice, check_range
from step_epm.provenance import file_sha256

from ..particles.analysis_file import SoftnessAnalysis
from ..particles.rearrangements import (correlation_length, d2min_correlation, isolated_rearranger,
                                        local_deformation, minimum_image_distance, rearrangers)
from ..particles.trajectory import Trajectory
from . import compression as comp
from .correlations import pair_correlation
from .events import find_rearrangements, frame_times, rearrangement_stats
from .fits import quantity
from .softness_change import SoftnessEvent, self_change, softness_change
from .strain_fields import FieldEvent, strain_fields
from .yield_strain import yield_strain

_FIELDS = ("softness", "d2min", "k", "e1", "e2", "eps_dev")


# --------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------

def grid_edges(spec):
    """(lo, hi, step) -> edges lo, lo + step, ... <= hi (+ 1e-9)."""
    lo, hi, step = spec
    return np.arange(lo, hi + 1e-9 * max(1.0, abs(hi)), step)


@dataclass(frozen=True)
class ExtractParams:
    """Parameters of the extraction and of the measurements (defaults in
    parentheses; lengths in small diameters, time overdamped).

    species ("small"): origin species of rearrangers ("small", "large", "both").
    r_far (5.0), quiet_factor (0.01): isolated-pair rule (SPEC.md section 2).
    lags ((1, 2, 4, 8)): yield-onset window lengths df in frames.
    field_r ((0.5, 15.0, 0.5)): (lo, hi, step) r bins of the strain fields;
    field_n_theta (16); field_fit_range ((2, 8)): c_dev, c_xy, k_sin2 fits;
    field_iso_range ((1, 8)): Gaussian fit of k_iso.
    g2_lags ((0, 1, 2, 4)), g2_r ((0, 20, 1)), g2_n_theta (8),
    g2_fit_range ((2, 10)): rearranger pair correlation.
    ds_r ((0.5, 15.0, 0.5)), ds_far_range ((4, 12)), ds_tail_range ((1, 10)):
    softness change (isolated events); ds_near_tail_range ((1, 5)): the
    tail range of the all-rearranger (near-field) version.
    s_edges ((-2, 2, 0.25)): softness bins of the yield strain; n_u (19):
    quantile levels linspace(0.05, 0.95, n_u); min_count (10).
    corr_frames ("isolated"), corr_r_max (10), corr_dr (0.5; coarser than
    the neighbour-shell structure), corr_floor (0.05), corr_model ("exp"):
    D2min correlation length, fitted from the first bin with pairs.
    compression_radius (3.0), compression_min_events (2),
    compression_source ("isolated": the isolated events of definition 1;
    "onsets": every onset of definition 4 inside an avalanche, for data
    where isolated pairs are too rare; other rearrangers then contaminate
    the region).
    frame_bins_per_decade (5), skip_first_interval (False): frame times.
    n_boot (200), seed (0): bootstraps.
    block (64): analysis rows per read; pos_cache (24): frames kept.
    """

    species: str = "small"
    r_far: float = 5.0
    quiet_factor: float = 0.01
    lags: tuple = (1, 2, 4, 8)
    field_r: tuple = (0.5, 15.0, 0.5)
    field_n_theta: int = 16
    field_fit_range: tuple = (2.0, 8.0)
    field_iso_range: tuple = (1.0, 8.0)
    g2_lags: tuple = (0, 1, 2, 4)
    g2_r: tuple = (0.0, 20.0, 1.0)
    g2_n_theta: int = 8
    g2_fit_range: tuple = (2.0, 10.0)
    ds_r: tuple = (0.5, 15.0, 0.5)
    ds_far_range: tuple = (4.0, 12.0)
    ds_tail_range: tuple = (1.0, 10.0)
    ds_near_tail_range: tuple = (1.0, 5.0)
    s_edges: tuple = (-2.0, 2.0, 0.25)
    n_u: int = 19
    min_count: int = 10
    corr_frames: str = "isolated"
    corr_r_max: float = 10.0
    corr_dr: float = 0.5
    corr_floor: float = 0.05
    corr_model: str = "exp"
    compression_radius: float = 3.0
    compression_source: str = "isolated"
    compression_min_events: int = 2
    frame_bins_per_decade: int = 5
    skip_first_interval: bool = False
    n_boot: int = 200
    seed: int = 0
    block: int = 64
    pos_cache: int = 24

    def __post_init__(self):
        p = "ExtractParams."
        check_choice(p + "species", self.species, ("small", "large", "both"))
        check_choice(p + "corr_frames", self.corr_frames, ("isolated", "avalanche"))
        check_choice(p + "corr_model", self.corr_model, ("exp", "gauss"))
        check_choice(p + "compression_source", self.compression_source, ("isolated", "onsets"))
        check_range(p + "r_far", self.r_far, 0.0, lo_open=True)
        check_range(p + "quiet_factor", self.quiet_factor, 0.0, 1.0)
        lags = tuple(self.lags)
        if not lags or any(not isinstance(x, (int, np.integer)) or x < 1 for x in lags):
            raise ConfigError(f"{p}lags = {self.lags!r} must be a non-empty tuple of integers >= 1")
        object.__setattr__(self, "lags", tuple(int(x) for x in lags))
        g2 = tuple(self.g2_lags)
        if not g2 or any(not isinstance(x, (int, np.integer)) or x < 0 for x in g2):
            raise ConfigError(f"{p}g2_lags = {self.g2_lags!r} must be a non-empty tuple of integers >= 0")
        object.__setattr__(self, "g2_lags", tuple(int(x) for x in g2))
        for name in ("field_r", "g2_r", "ds_r", "s_edges"):
            v = getattr(self, name)
            if len(v) != 3:
                raise ConfigError(f"{p}{name} = {v!r} must be (lo, hi, step)")
            check_range(f"{p}{name}[2] (step)", v[2], 0.0, lo_open=True)
            check_range(f"{p}{name}[1] (hi)", v[1], v[0] + v[2])
        for name in ("field_r", "g2_r", "ds_r"):
            check_range(f"{p}{name}[0] (lo)", getattr(self, name)[0], 0.0)
        for name in ("field_fit_range", "field_iso_range", "g2_fit_range", "ds_far_range",
                     "ds_tail_range", "ds_near_tail_range"):
            v = getattr(self, name)
            if len(v) != 2:
                raise ConfigError(f"{p}{name} = {v!r} must be (lo, hi)")
            check_range(f"{p}{name}[0]", v[0], 0.0)
            check_range(f"{p}{name}[1]", v[1], v[0], lo_open=True)
        for name, lo in (("field_n_theta", 1), ("g2_n_theta", 1), ("n_u", 2), ("min_count", 2),
                         ("compression_min_events", 1), ("frame_bins_per_decade", 1),
                         ("n_boot", 0), ("block", 1), ("pos_cache", 4)):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise ConfigError(f"{p}{name} = {v!r} must be an integer")
            check_range(p + name, v, lo)
        check_range(p + "corr_r_max", self.corr_r_max, 0.0, lo_open=True)
        check_range(p + "corr_dr", self.corr_dr, 0.0, self.corr_r_max, lo_open=True)
        check_range(p + "corr_floor", self.corr_floor, 0.0, 1.0, lo_open=True, hi_open=True)
        check_range(p + "compression_radius", self.compression_radius, 0.0, lo_open=True)
        check_range(p + "seed", self.seed, 0)


# --------------------------------------------------------------------------
# results of the extraction
# --------------------------------------------------------------------------

@dataclass
class IsolatedEvents:
    """Isolated pairs (definition 1): ``field`` [FieldEvent], ``softness``
    [SoftnessEvent], and per event ``row`` (the pair's second frame f),
    ``particle``, ``species`` (0 small, 1 large), ``avalanche`` (id of the
    avalanche of frame f - 1, -1 for a pair of minimised states)."""

    field: list
    softness: list
    row: np.ndarray
    particle: np.ndarray
    species: np.ndarray
    avalanche: np.ndarray


@dataclass
class Onsets:
    """Yield onsets of one window label (definition 4): per onset ``S``
    (softness at the window start), ``eps`` (eps_dev of the window's J
    fit), ``e1``, ``e2``, ``species``, ``particle``, ``row`` (f0, the onset
    frame), ``start_row`` (window start) and ``traj`` (index of the input
    pair in ``measure``; 0 for a single file)."""

    S: np.ndarray
    eps: np.ndarray
    e1: np.ndarray
    e2: np.ndarray
    species: np.ndarray
    particle: np.ndarray
    row: np.ndarray
    start_row: np.ndarray
    traj: np.ndarray

    @staticmethod
    def empty():
        f, i = np.empty(0), np.empty(0, np.int64)
        return Onsets(f, f, f, f, i, i, i, i, i)

    @staticmethod
    def concat(items):
        items = list(items)
        if not items:
            return Onsets.empty()
        return Onsets(**{k: np.concatenate([getattr(o, k) for o in items])
                         for k in Onsets.__dataclass_fields__})


@dataclass
class Extract:
    """Everything one pass over one trajectory collects (see the module
    docstring for the definitions). ``rearrangements``: one
    ``events.Rearrangements`` per avalanche; ``runs`` (m, 3) int64
    (particle, f0, e_end) of every rearrangement run (definition 5);
    ``self_dS_all`` (m,) the self change of each run; ``dt``
    frame intervals; ``corr`` (r, sum of C x pairs, pairs) per bin;
    ``compression`` [CompressionEvent]; ``elastic`` the file's
    /parameters/elastic; ``n_particles``, ``area`` (Lx Ly), ``n_rows``."""

    isolated: IsolatedEvents
    all_events: list
    avalanches: list
    onsets: dict
    rearrangements: list
    runs: np.ndarray
    self_dS_all: np.ndarray
    dt: np.ndarray
    corr: tuple
    compression: list
    elastic: dict
    n_particles: int
    area: float
    n_rows: int


# --------------------------------------------------------------------------
# the reader
# --------------------------------------------------------------------------

class _Source:
    """Row access to one trajectory and its analysis file, with small caches."""

    def __init__(self, traj_path, analysis_path, params: ExtractParams):
        self.t = Trajectory(traj_path)
        try:
            self.a = SoftnessAnalysis(analysis_path)
        except Exception:
            self.t.close()
            raise
        self.p = params
        seq = self.a.sequence()
        ref = self.t.frame_sequence()
        if len(seq["frame"]) != len(ref["frame"]) or not all(
                np.array_equal(seq[k], ref[k]) for k in ("frame", "kind", "row")):
            self.close()
            raise ValueError(f"{analysis_path} does not match the frame sequence of {traj_path}")
        self.seq = seq
        self.n_rows = len(seq["frame"])
        self.radii = self.t.radii
        self.species = self.t.species.astype(np.int64)
        self.n = len(self.radii)
        self.Lx, self.Ly = self.t.box_lengths
        self.sel = {"small": self.species == 0, "large": self.species == 1,
                    "both": np.ones(self.n, bool)}[params.species]
        # time of every row: avalanche frames from the frame table, an
        # avalanche's minimised end state its duration, others NaN
        ft = self.t.frame_table()
        av = self.t.avalanches()
        dur = dict(zip(av["id"].tolist(), av["duration"].tolist()))
        time = np.full(self.n_rows, np.nan)
        k1 = seq["kind"] == 1
        time[k1] = ft["time"][seq["row"][k1]]
        end = (seq["kind"] == 0) & (seq["avalanche"] >= 0)
        time[end] = [dur.get(int(a), np.nan) for a in seq["avalanche"][end]]
        self.time = time
        self.frame_table = ft
        self._pos = OrderedDict()
        self._blocks = OrderedDict()

    def close(self):
        self.t.close()
        self.a.close()

    def box(self, i):
        return (self.Lx, self.Ly, float(self.seq["gamma"][i]))

    def pos(self, i):
        x = self._pos.get(i)
        if x is None:
            x = self.t.sequence_position(int(self.seq["kind"][i]), int(self.seq["row"][i]))
            self._pos[i] = x
            if len(self._pos) > self.p.pos_cache:
                self._pos.popitem(last=False)
        else:
            self._pos.move_to_end(i)
        return x

    def row(self, name, i):
        """(N,) float64 of analysis field ``name`` at row i (block cache)."""
        b = i // self.p.block
        blk = self._blocks.get(b)
        if blk is None:
            lo, hi = b * self.p.block, min(self.n_rows, (b + 1) * self.p.block)
            blk = {k: self.a.field(k, slice(lo, hi)) for k in _FIELDS}
            self._blocks[b] = blk
            if len(self._blocks) > 3:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(b)
        return blk[name][i - b * self.p.block].astype(np.float64)

    def contiguous(self, lo, hi):
        """Rows lo..hi are consecutive global frames."""
        return lo >= 0 and int(self.seq["frame"][hi] - self.seq["frame"][lo]) == hi - lo

    def deformation(self, lo, hi):
        return local_deformation(self.pos(lo), self.pos(hi), self.radii, *self.box(lo),
                                 *self.box(hi))


def _progress(progress, total, desc):
    """A callable update(n_done) from ``progress`` (None, True: tqdm, or a
    callable(done, total, desc))."""
    if progress is None or progress is False:
        return lambda done: None, lambda: None
    if callable(progress):
        return (lambda done: progress(done, total, desc)), (lambda: None)
    from tqdm import tqdm
    bar = tqdm(total=total, desc=desc, unit="frame")
    state = {"n": 0}

    def upd(done):
        bar.update(done - state["n"])
        state["n"] = done
    return upd, bar.close


def extract(traj_path, analysis_path, params: ExtractParams = ExtractParams(), traj_index=0,
            want=("isolated", "all", "avalanches", "onsets", "rearrangements", "corr",
                  "compression"), progress=None) -> Extract:
    """One streaming pass over a trajectory and its analysis file collecting
    the inputs named in ``want`` (module docstring, definitions 1-8).

    Args:
        traj_path, analysis_path: the trajectory and its ``analysis.h5``.
        params: ExtractParams.
        traj_index: stored in the onsets' ``traj``.
        want: which inputs to collect ("isolated", "all", "avalanches",
            "onsets", "rearrangements", "corr", "compression"); the others
            are left empty.
        progress: None, True (tqdm bar) or callable(done_rows, total_rows, name).
    Returns:
        Extract.
    """
    want = set(want)
    p = params
    src = _Source(traj_path, analysis_path, p)
    try:
        return _scan(src, p, want, traj_index, progress, Path(traj_path).parent.name)
    finally:
        src.close()


def _scan(src: _Source, p: ExtractParams, want, traj_index, progress, desc):
    seq, n, sel = src.seq, src.n, src.sel
    F = src.n_rows
    area = src.Lx * src.Ly
    a_per = area / n
    need_onsets = bool(want & {"onsets", "rearrangements"}) or (
        "compression" in want and p.compression_source == "onsets")
    iso = {k: [] for k in ("field", "softness", "row", "particle", "species", "avalanche")}
    all_events, avalanches, rearr = [], [], []
    labels = [f"df={d}" for d in p.lags] + ["since_last"]
    ons = {lab: [] for lab in labels}
    runs, self_all = [], []
    corr_r, corr_s, corr_c = None, None, None
    comp_events, trackers = [], []
    last_end = np.full(n, -1, np.int64)       # e: second frame of the last rearranging pair
    last_S = np.full(n, np.nan)               # softness at e
    onset_row = np.full(n, -1, np.int64)      # f0 of the running rearrangement
    prev_flags = np.zeros(n, bool)
    cur_av = None                             # [id, flags rows, eps rows, g2 frames]
    upd, done = _progress(progress, F, desc)
    tr = src.t

    def start_tracker(origin, pos0, box0, i, kk):
        """Follow the region around ``origin`` (frame i - 1) from pair i to
        the end of the avalanche (definition 7)."""
        if seq["kind"][i - 1] != 1 or not np.isfinite(src.time[i - 1]):
            return
        mask = comp.region(origin, pos0, box0, p.compression_radius)
        trk = {"t0": src.time[i - 1], "t": [src.time[i] - src.time[i - 1]],
               "dQ": [comp.frame_compression(kk, mask, a_per)], "mask": mask}
        if seq["kind"][i] == 0:                    # the avalanche's last pair
            finish_tracker(trk)
        else:
            trackers.append(trk)

    def finish_tracker(trk):
        t_arr, dq = np.array(trk["t"]), np.array(trk["dQ"])
        ok = np.isfinite(t_arr)
        if ok.any() and np.all(np.diff(t_arr[ok]) > 0) and np.all(t_arr[ok] > 0):
            comp_events.append(comp.CompressionEvent(t_arr[ok], dq[ok]))

    def end_runs(mask, e_end):
        """Rearrangements of particles in ``mask`` end at frame e_end (runs of
        every species; the self change of the chosen species)."""
        idx = np.flatnonzero(mask & (onset_row >= 0))
        if idx.size == 0:
            return
        S_end = src.row("softness", e_end)
        for f0 in np.unique(onset_row[idx]):
            g = idx[onset_row[idx] == f0]
            runs.append(np.column_stack([g, np.full(g.size, f0), np.full(g.size, e_end)]))
            g = g[sel[g]]
            if g.size:
                S0 = src.row("softness", int(f0))
                self_all.append(S_end[g] - S0[g])
        onset_row[idx] = -1

    for i in range(1, F):
        if i % 64 == 0:
            upd(i)
        k_prev, k_cur = int(seq["kind"][i - 1]), int(seq["kind"][i])
        in_av = k_prev == 1                        # pair inside an avalanche (or its end)
        affine = k_cur == 1 and (k_prev == 0 or seq["avalanche"][i - 1] != seq["avalanche"][i])
        valid = src.contiguous(i - 1, i) and not affine
        if valid:
            d2 = src.row("d2min", i)
            flags = rearrangers(d2, src.radii)
        else:
            flags = np.zeros(n, bool)
        fsel = flags & sel
        # -- avalanche bookkeeping (pairs of the avalanche of frame i - 1)
        if in_av and ("avalanches" in want or "rearrangements" in want):
            if cur_av is None or cur_av[0] != seq["avalanche"][i - 1]:
                cur_av = [int(seq["avalanche"][i - 1]), [], [], []]
            cur_av[1].append(fsel)
            cur_av[2].append(src.row("eps_dev", i) if valid else np.full(n, np.nan))
            cur_av[3].append((src.pos(i - 1)[fsel] if fsel.any() else np.empty((0, 2)),
                              src.box(i - 1)))
            if k_cur == 0:                         # reached the step's minimised state
                if "avalanches" in want:
                    avalanches.append(cur_av[3])
                if "rearrangements" in want:
                    rearr.append(find_rearrangements(np.array(cur_av[1]), np.array(cur_av[2])))
                cur_av = None
        # -- compression trackers (pairs after an isolated onset)
        if trackers:
            kk = src.row("k", i) if valid else np.full(n, np.nan)
            for trk in trackers:
                trk["t"].append(src.time[i] - trk["t0"])
                trk["dQ"].append(comp.frame_compression(kk, trk["mask"], a_per))
            if k_cur == 0 or not in_av:
                for trk in trackers:
                    finish_tracker(trk)
                trackers.clear()
        # -- rearrangement runs: ends, then onsets at f0 = i - 1
        if need_onsets:
            end_runs(prev_flags & ~flags, i - 1)
            onset_row[flags & ~prev_flags] = i - 1     # runs of every species start
            new = fsel & ~prev_flags
            if new.any():
                f0 = i - 1
                idx = np.flatnonzero(new)
                for lab, df in zip(labels, p.lags):
                    if src.contiguous(f0 - df, f0):
                        d = src.deformation(f0 - df, f0)
                        S = src.row("softness", f0 - df)
                        ons[lab].append((S[idx], d.eps_dev[idx], d.e1[idx], d.e2[idx], idx,
                                         np.full(idx.size, f0), np.full(idx.size, f0 - df)))
                if "compression" in want and p.compression_source == "onsets" and in_av:
                    kk, pos0 = src.row("k", i), src.pos(f0)
                    for q in idx:
                        start_tracker(pos0[q].copy(), pos0, src.box(f0), i, kk)
                prev = idx[last_end[idx] >= 0]
                for e in np.unique(last_end[prev]):
                    g = prev[last_end[prev] == e]
                    if not src.contiguous(int(e), f0):
                        continue
                    d = src.deformation(int(e), f0)
                    ons["since_last"].append((last_S[g], d.eps_dev[g], d.e1[g], d.e2[g], g,
                                              np.full(g.size, f0), np.full(g.size, int(e))))
            if flags.any():
                S_i = src.row("softness", i)
                last_end[flags] = i
                last_S[flags] = S_i[flags]
        prev_flags = flags
        if not fsel.any():
            continue
        # -- events around rearrangers of pair i
        pos0, box0 = None, src.box(i - 1)
        if flags.sum() == 1 and ({"isolated", "compression"} & want or
                                  ("corr" in want and p.corr_frames == "isolated")):
            pos0 = src.pos(i - 1)
            r = isolated_rearranger(pos0, d2, src.radii, *box0, r_far=p.r_far,
                                    quiet_factor=p.quiet_factor)
            S0 = src.row("softness", i - 1)
            if r >= 0 and sel[r] and np.isfinite(S0).any():
                S1 = src.row("softness", i)
                kk, dev, e2 = src.row("k", i), src.row("eps_dev", i), src.row("e2", i)
                origin = pos0[r].copy()
                iso["field"].append(FieldEvent(origin, pos0, box0, kk, dev, e2))
                iso["softness"].append(SoftnessEvent(origin, pos0, box0, S0, S1 - S0, kk,
                                                     float(np.nanmean(S0))))
                iso["row"].append(i)
                iso["particle"].append(r)
                iso["species"].append(int(src.species[r]))
                iso["avalanche"].append(int(seq["avalanche"][i - 1]) if in_av else -1)
                if "corr" in want and p.corr_frames == "isolated":
                    corr_r, corr_s, corr_c = _corr_add(src, pos0, d2, box0, p, corr_r, corr_s,
                                                       corr_c)
                if "compression" in want and p.compression_source == "isolated":
                    start_tracker(origin, pos0, box0, i, kk)
        if "all" in want and np.isfinite(src.row("softness", i - 1)).any():
            pos0 = src.pos(i - 1) if pos0 is None else pos0
            S0, S1 = src.row("softness", i - 1), src.row("softness", i)
            kk, dS, Sm = src.row("k", i), S1 - S0, float(np.nanmean(S0))
            r_crop = p.ds_r[1]
            for r in np.flatnonzero(fsel):
                keep = minimum_image_distance(pos0, pos0[r], *box0) <= r_crop
                all_events.append(SoftnessEvent(pos0[r].copy(), pos0[keep], box0, S0[keep],
                                                dS[keep], kk[keep], Sm))
        if "corr" in want and p.corr_frames == "avalanche" and in_av:
            pos0 = src.pos(i - 1) if pos0 is None else pos0
            corr_r, corr_s, corr_c = _corr_add(src, pos0, d2, box0, p, corr_r, corr_s, corr_c)
    if need_onsets:
        end_runs(prev_flags, F - 1)
    upd(F)
    done()

    def onsets_of(lab):
        rows = ons[lab]
        if not rows:
            return Onsets.empty()
        S, eps, e1, e2, idx, row, start = (np.concatenate(c) for c in zip(*rows))
        return Onsets(S, eps, e1, e2, src.species[idx], idx.astype(np.int64),
                      row.astype(np.int64), start.astype(np.int64),
                      np.full(idx.size, traj_index, np.int64))

    # frame times: differences within each avalanche's saved frames
    ft = src.frame_table
    dts = []
    for aid in np.unique(ft["avalanche"]):
        t = ft["time"][ft["avalanche"] == aid]
        d = np.diff(t)
        d = d[1:] if p.skip_first_interval else d
        dts.append(d[np.isfinite(d) & (d > 0)])
    dt = np.concatenate(dts) if dts else np.empty(0)
    isolated = IsolatedEvents(iso["field"], iso["softness"], np.array(iso["row"], np.int64),
                              np.array(iso["particle"], np.int64),
                              np.array(iso["species"], np.int64),
                              np.array(iso["avalanche"], np.int64))
    cat1 = (lambda a: np.concatenate(a) if a else np.empty(0))
    return Extract(isolated=isolated, all_events=all_events, avalanches=avalanches,
                   onsets={lab: onsets_of(lab) for lab in labels}, rearrangements=rearr,
                   runs=np.concatenate(runs).astype(np.int64) if runs else np.empty((0, 3), np.int64),
                   self_dS_all=cat1(self_all), dt=dt, corr=(corr_r, corr_s, corr_c),
                   compression=comp_events, elastic=tr.elastic(), n_particles=n, area=area,
                   n_rows=F)


def _corr_add(src, pos0, d2, box0, p, r, s, c):
    """Accumulate one pair's D2min correlation (count-weighted)."""
    Lx, Ly, g = box0
    tr = g - math.floor(g + 0.5)
    width = min(Lx / math.sqrt(1 + tr * tr), Ly)
    r_max = min(p.corr_r_max, 0.49 * width)
    rr, C, cnt = d2min_correlation(pos0, d2, Lx, Ly, g, r_max, p.corr_dr, return_counts=True)
    nb = int(math.ceil(p.corr_r_max / p.corr_dr - 1e-12))
    rs, ss, cs = np.arange(nb) * p.corr_dr + 0.5 * p.corr_dr, np.zeros(nb), np.zeros(nb)
    m = min(nb, len(C))
    ok = np.isfinite(C[:m])
    ss[:m][ok] = (C[:m] * cnt[:m])[ok]
    cs[:m][ok] = cnt[:m][ok]
    if r is None:
        return rs, ss, cs
    return r, s + ss, c + cs


# --------------------------------------------------------------------------
# the single-purpose entry points
# --------------------------------------------------------------------------

def isolated_events(traj_path, analysis_path, params: ExtractParams = ExtractParams(),
                    progress=None) -> IsolatedEvents:
    """Isolated frame pairs with a rearranger of ``params.species``
    (definition 1): FieldEvents and SoftnessEvents with their rows."""
    return extract(traj_path, analysis_path, params, want=("isolated",),
                   progress=progress).isolated


def all_rearranger_events(traj_path, analysis_path, params: ExtractParams = ExtractParams(),
                          progress=None) -> list:
    """One SoftnessEvent per rearranger of every frame pair (definition 2)."""
    return extract(traj_path, analysis_path, params, want=("all",), progress=progress).all_events


def avalanche_rearrangers(traj_path, analysis_path, params: ExtractParams = ExtractParams(),
                          progress=None) -> list:
    """Per avalanche the list of (rearranger positions (n_f, 2), box) of its
    frame pairs in order (definition 3), the input of
    ``correlations.pair_correlation``."""
    return extract(traj_path, analysis_path, params, want=("avalanches",),
                   progress=progress).avalanches


def yield_onsets(traj_path, analysis_path, lags=(1, 2, 4, 8),
                 params: ExtractParams = ExtractParams(), progress=None) -> dict:
    """{"df=1": Onsets, ..., "since_last": Onsets} (definition 4); ``lags``
    overrides ``params.lags``."""
    from dataclasses import replace
    params = replace(params, lags=tuple(lags))
    return extract(traj_path, analysis_path, params, want=("onsets",),
                   progress=progress).onsets


def d2min_corr_curve(extracts, floor=0.05, model="exp"):
    """Pooled D2min correlation of several Extracts: (dict {r, C, n_pairs},
    CorrelationLength fitted from the first bin with pairs, r_min, up to
    the first bin at or below ``floor``)."""
    r, s, c = None, None, None
    for ex in extracts:
        er, es, ec = ex.corr
        if er is None:
            continue
        if r is None:
            r, s, c = er, es.copy(), ec.copy()
        else:
            s, c = s + es, c + ec
    if r is None:
        r, C, c = np.empty(0), np.empty(0), np.empty(0)
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            C = np.where(c > 0, s / np.maximum(c, 1), np.nan)
    has = np.flatnonzero(c > 0)
    r_min = float(r[has[0]]) if has.size else 0.0
    return ({"r": r, "C": C, "n_pairs": c.astype(np.int64)},
            correlation_length(r, C, floor=floor, r_min=r_min, model=model))


# --------------------------------------------------------------------------
# measure
# --------------------------------------------------------------------------

@dataclass
class Measurements:
    """Every measurement of SPEC.md section 4 from a set of trajectories.

    strain_fields: StrainFields (isolated events).
    pair_correlation: PairCorrelation (avalanche rearrangers).
    softness_change: SoftnessChange (isolated events: c0, c1, b).
    softness_change_near: SoftnessChange (every rearranger: near-field c1).
    self_change: Quantity (every rearrangement: softness at its end frame
        minus at its onset frame).
    yield_strain: {label: YieldStrain} for "df=<lag>" and "since_last".
    onsets: {label: Onsets} (raw, positions-free: particle, row, traj).
    rearrangement_stats: {"frames_per_rearrangement", "plastic_strain"}.
    runs: [(m_j, 3) int64 (particle, f0, e_end) per input pair]: every
        rearrangement run (definition 5), read again with the site side
        for the yield strain and the relaxation (calibrate/assemble.py).
    frame_time_hist: events.Histogram; time_per_frame: Quantity.
    d2min_corr: {r, C, n_pairs}; correlation_length: CorrelationLength.
    compression: {"compression_p", "compression_t_centre",
        "compression_width"}: Quantities (p from the region's Q with the
        relaxed nu, ``compression.compression_fit``).
    elastic: {"lambda_relaxed", "mu_relaxed", "nu_relaxed",
        "lambda_instantaneous", "mu_instantaneous", "nu_instantaneous"}.
    number_density: Quantity (N / V).
    counts: numbers of isolated events, all events, avalanches, onsets per
        label, rearrangements, rearrangement runs, compression events, rows.
    inputs: [{"path", "sha256"}] of every trajectory and analysis file.
    params: the ExtractParams as a dict.
    """

    strain_fields: object
    pair_correlation: object
    softness_change: object
    softness_change_near: object
    self_change: object
    yield_strain: dict
    onsets: dict
    rearrangement_stats: dict
    runs: list
    frame_time_hist: object
    time_per_frame: object
    d2min_corr: dict
    correlation_length: object
    compression: dict
    elastic: dict
    number_density: object
    counts: dict
    inputs: list
    params: dict = field(default_factory=dict)


def _file_mean(values, unit, desc):
    v = np.array([x for x in values if x is not None and np.isfinite(x)], float)
    if v.size == 0:
        return quantity(math.nan, math.nan, 0, None, unit, desc, "not in the input files")
    err = float(np.std(v, ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan
    return quantity(float(v.mean()), err, v.size, None, unit, desc)


def _poisson(lam, mu, kind):
    """nu = lambda / (lambda + 2 mu) of the mean lambda and mu (the 2-D
    Poisson ratio as the calibration file defines it; a file's own nu is
    c12/c11, which differs for a slightly anisotropic packing), error
    propagated from theirs."""
    value = lam.value / (lam.value + 2 * mu.value)
    err = 2 * math.hypot(mu.value * lam.error, lam.value * mu.error) / (lam.value + 2 * mu.value) ** 2
    return quantity(value, err, min(lam.n, mu.n), None, "1",
                    f"nu ({kind}) = lambda/(lambda + 2 mu) of the mean lambda, mu")


def measure(pairs, params: ExtractParams = ExtractParams(), progress=None) -> Measurements:
    """Extract from every (trajectory, analysis file) pair and run every
    measurement function (SPEC.md section 4).

    Args:
        pairs: list of (traj_path, analysis_path).
        params: ExtractParams.
        progress: None, True (tqdm bars) or callable(done_rows, total_rows, name).
    Returns:
        Measurements. Thin data gives NaN / n = 0 / flagged results.
    """
    p = params
    pairs = [(Path(a), Path(b)) for a, b in pairs]
    if not pairs:
        raise ValueError("measure needs at least one (trajectory, analysis file) pair")
    exs = [extract(tp, ap, p, traj_index=j, progress=progress) for j, (tp, ap) in enumerate(pairs)]
    kw = dict(n_boot=p.n_boot, seed=p.seed)
    field_ev = [e for ex in exs for e in ex.isolated.field]
    soft_ev = [e for ex in exs for e in ex.isolated.softness]
    sf = strain_fields(field_ev, r_edges=grid_edges(p.field_r), n_theta=p.field_n_theta,
                       fit_range=p.field_fit_range, iso_range=p.field_iso_range, **kw)
    g2 = pair_correlation([av for ex in exs for av in ex.avalanches], lags=p.g2_lags,
                          r_edges=grid_edges(p.g2_r), n_theta=p.g2_n_theta,
                          fit_range=p.g2_fit_range, **kw)
    sc = softness_change(soft_ev, r_edges=grid_edges(p.ds_r), far_range=p.ds_far_range,
                         tail_range=p.ds_tail_range, **kw)
    sc_near = softness_change([e for ex in exs for e in ex.all_events], r_edges=grid_edges(p.ds_r),
                              far_range=p.ds_far_range, tail_range=p.ds_near_tail_range, **kw)
    selfq = self_change(np.concatenate([ex.self_dS_all for ex in exs]), **kw)
    labels = [f"df={d}" for d in p.lags] + ["since_last"]
    onsets = {lab: Onsets.concat(ex.onsets[lab] for ex in exs) for lab in labels}
    u = np.linspace(0.05, 0.95, p.n_u)
    ys = {lab: yield_strain(o.S, o.eps, s_edges=grid_edges(p.s_edges), u=u, min_count=p.min_count, **kw)
          for lab, o in onsets.items()}
    rearr = [r for ex in exs for r in ex.rearrangements]
    rs = rearrangement_stats(rearr, **kw)
    hist, tpf = frame_times(np.concatenate([ex.dt for ex in exs]),
                            bins_per_decade=p.frame_bins_per_decade, **kw)
    curve, xi = d2min_corr_curve(exs, floor=p.corr_floor, model=p.corr_model)
    el = {}
    for kind in ("relaxed", "instantaneous"):
        for key, name, unit in (("lam", "lambda", "energy/length^2"), ("mu", "mu", "energy/length^2")):
            el[f"{name}_{kind}"] = _file_mean(
                [ex.elastic.get(kind, {}).get(key) for ex in exs], unit,
                f"{name} ({kind}) of the initial packing, mean over files")
        el[f"nu_{kind}"] = _poisson(el[f"lambda_{kind}"], el[f"mu_{kind}"], kind)
    cq = comp.compression_fit([c for ex in exs for c in ex.compression], el["nu_relaxed"].value,
                              min_events=p.compression_min_events, radius=p.compression_radius, **kw)
    rho = _file_mean([ex.n_particles / ex.area for ex in exs], "1/length^2",
                     "number density N/V, mean over files")
    counts = {"files": len(exs), "rows": int(sum(ex.n_rows for ex in exs)),
              "isolated_events": len(field_ev),
              "all_rearranger_events": int(sum(len(ex.all_events) for ex in exs)),
              "avalanches": int(sum(len(ex.avalanches) for ex in exs)),
              "rearrangements": int(sum(len(r.particle) for r in rearr)),
              "rearrangement_runs": int(sum(len(ex.runs) for ex in exs)),
              "compression_events": int(sum(len(ex.compression) for ex in exs)),
              "frame_intervals": int(sum(len(ex.dt) for ex in exs))}
    counts.update({f"onsets[{lab}]": int(len(o.S)) for lab, o in onsets.items()})
    inputs = [{"path": str(x.resolve()), "sha256": file_sha256(x)} for pr in pairs for x in pr]
    return Measurements(strain_fields=sf, pair_correlation=g2, softness_change=sc,
                        softness_change_near=sc_near, self_change=selfq, yield_strain=ys,
                        onsets=onsets, rearrangement_stats=rs, runs=[ex.runs for ex in exs],
                        frame_time_hist=hist, time_per_frame=tpf, d2min_corr=curve,
                        correlation_length=xi, compression=cq, elastic=el, number_density=rho,
                        counts=counts, inputs=inputs, params=asdict(p))
