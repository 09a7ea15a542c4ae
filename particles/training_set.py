"""The softness training set: rearranging and quiet particles from AQS
trajectories (SPEC.md section 3).

Definitions (lengths in small-particle diameters, D2min in length^2, with
R_D = 2 and the 1/M_k normalisation of SPEC.md section 2):

- **Positives**: particles with D2min > d_soft of their species (0.0025
  small, 0.0015 large) between two adjacent frames of an avalanche. The
  avalanche's frames are its affinely strained start, its intermediate
  frames and, last, its step's minimised state (the next frame in the
  global order). Features are taken from the earlier frame of the pair.
- **Negatives**: particles with D2min < d_hard between the minimised states
  of steps s - 1 and s, that also stayed below d_hard between every pair
  of consecutive minimised states over the ``quiet_steps`` steps before
  (steps s - quiet_steps .. s - 1). Features are taken from step s - 1.
  Default d_hard = 2e-4 (about a tenth of d_soft; elastic steps of
  d_gamma = 1e-4 give D2min of order 1e-7 to 1e-5, see the closing notes
  of issue 5), quiet_steps = 20 (of the order of the mean interval between
  avalanches at N = 1e3, d_gamma = 1e-4).
- Classes are balanced per species of the central particle: the same
  number of positives and negatives, at most ``max_per_class`` each, drawn
  at random (seeded) from the candidates. The counts of candidates and of
  the drawn samples are reported (``TrainingSet.counts``).

Every step's minimised positions must be stored (``output.position_every =
1``); a trajectory that skipped steps is refused.
"""

import logging
from dataclasses import dataclass, field

import numpy as np

from ..config_checks import ConfigError
from .rearrangements import local_deformation
from .softness_config import TrainingConfig
from .structure import structure_function_sets
from .trajectory import Trajectory

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """Where the samples of one source frame come from: trajectory index,
    the frame's kind/row (see Trajectory.frame_sequence) and gamma."""
    traj: int
    kind: int
    row: int
    gamma: float


@dataclass
class TrainingSet:
    """Balanced training samples.

    frames: the distinct source frames (list of Sample).
    frame_of: (n,) index into ``frames`` of each sample.
    particle: (n,) particle index; species: (n,) 0 small / 1 large.
    label: (n,) 1 rearranger (positive), 0 quiet (negative).
    counts: candidates and drawn samples per species and class.
    """
    frames: list
    frame_of: np.ndarray
    particle: np.ndarray
    species: np.ndarray
    label: np.ndarray
    counts: dict = field(default_factory=dict)

    def features(self, paths, r_lists) -> list:
        """Structure functions of every sample for each r-list.

        Args:
            paths: the trajectory files the set was built from (same order).
            r_lists: list of (M_l,) radial positions (length).
        Returns:
            list of (n, 2 M_l) arrays, one per r-list (rows in sample order).
        """
        out = [np.empty((len(self.label), 2 * len(r))) for r in r_lists]
        by_traj = {}
        for fi, fr in enumerate(self.frames):
            by_traj.setdefault(fr.traj, []).append(fi)
        for ti, fis in by_traj.items():
            with Trajectory(paths[ti]) as t:
                species = t.species.astype(np.int64)
                Lx, Ly = t.box_lengths
                for fi in fis:
                    fr = self.frames[fi]
                    sel = np.flatnonzero(self.frame_of == fi)
                    pos = t.sequence_position(fr.kind, fr.row)
                    gs = structure_function_sets(pos, species, Lx, Ly, fr.gamma, r_lists)
                    for l, g in enumerate(gs):
                        out[l][sel] = g[self.particle[sel]]
        return out


def _thresholds(radii, p: TrainingConfig):
    return np.where(radii < 0.6, p.d_soft_small, p.d_soft_large)


def _candidates(t: Trajectory, ti: int, p: TrainingConfig):
    """Positive and negative candidates of one trajectory: lists of
    (Sample, particle indices)."""
    seq = t.frame_sequence()
    steps = t.step_numbers
    if t.n_positions != t.n_steps:
        raise ConfigError(f"{t.path}: only {t.n_positions} of {t.n_steps} steps store "
                          "positions; softness training needs every step "
                          "(run step-particles with output.position_every=1)")
    radii = t.radii
    Lx, Ly = t.box_lengths
    d_soft = _thresholds(radii, p)
    pos_c, neg_c = [], []
    # positives: adjacent frames of an avalanche (its start .. its step's minimum)
    fr = seq["frame"]
    for i in range(len(fr) - 1):
        if seq["kind"][i] != 1 or fr[i + 1] != fr[i] + 1:
            continue
        x0 = t.sequence_position(1, seq["row"][i])
        x1 = t.sequence_position(seq["kind"][i + 1], seq["row"][i + 1])
        g = seq["gamma"][i]
        d = local_deformation(x0, x1, radii, Lx, Ly, g, Lx, Ly, seq["gamma"][i + 1]).d2min
        hit = np.flatnonzero(d > d_soft)
        if hit.size:
            pos_c.append((Sample(ti, 1, int(seq["row"][i]), float(g)), hit))
    # negatives: consecutive minimised states, quiet for quiet_steps before
    gam = t.observable("gamma")
    quiet_run = np.zeros(len(radii), np.int64)
    x_prev = t.sequence_position(0, 0)
    for s in range(1, len(steps)):
        if steps[s] != steps[s - 1] + 1:
            raise ConfigError(f"{t.path}: steps {steps[s - 1]} and {steps[s]} are not "
                              "consecutive")
        x = t.sequence_position(0, s)
        d = local_deformation(x_prev, x, radii, Lx, Ly, gam[s - 1], Lx, Ly, gam[s]).d2min
        quiet = d < p.d_hard  # NaN is not quiet
        if s > p.quiet_steps:
            ok = np.flatnonzero(quiet & (quiet_run >= p.quiet_steps))
            if ok.size:
                neg_c.append((Sample(ti, 0, s - 1, float(gam[s - 1])), ok))
        quiet_run = np.where(quiet, quiet_run + 1, 0)
        x_prev = x
    return pos_c, neg_c


def build_training_set(paths, params: TrainingConfig = None,
                       progress=None) -> TrainingSet:
    """Collect, balance and draw the training samples of several trajectories.

    Args:
        paths: trajectory files (schema step-aqs-trajectory, every step stored).
        params: TrainingConfig (default: the defaults; see softness_config.py).
        progress: optional callable(str) for progress messages.
    Returns:
        TrainingSet with counts {"small"|"large": {"positive_candidates",
        "negative_candidates", "positive", "negative"}}.
    """
    params = TrainingConfig() if params is None else params
    cands = {1: [], 0: []}
    for ti, path in enumerate(paths):
        with Trajectory(path) as t:
            if progress:
                progress(f"training set: scanning {path}")
            pc, nc = _candidates(t, ti, params)
            sp_of = t.species.astype(np.int64)
        cands[1] += [(smp, idx, sp_of[idx]) for smp, idx in pc]
        cands[0] += [(smp, idx, sp_of[idx]) for smp, idx in nc]
    rng = np.random.default_rng(params.seed)
    flat = {}
    for lab, cl in cands.items():  # candidate number, particle, species as flat arrays
        flat[lab] = [np.concatenate([np.full(len(c[1]), ci, np.int64) for ci, c in enumerate(cl)]
                                    or [np.zeros(0, np.int64)]),
                     np.concatenate([c[1] for c in cl] or [np.zeros(0, np.int64)]),
                     np.concatenate([c[2] for c in cl] or [np.zeros(0, np.int64)])]
    frames, frame_index, counts = [], {}, {}
    frame_of, particle, species, label = [], [], [], []
    for sp, name in ((0, "small"), (1, "large")):
        avail = {lab: np.flatnonzero(flat[lab][2] == sp) for lab in (1, 0)}
        n = min(len(avail[1]), len(avail[0]), params.max_per_class)
        counts[name] = {"positive_candidates": len(avail[1]),
                        "negative_candidates": len(avail[0]),
                        "positive": n, "negative": n}
        for lab in (1, 0):
            pick = np.sort(rng.choice(avail[lab], size=n, replace=False))
            for ci, j in zip(flat[lab][0][pick], flat[lab][1][pick]):
                smp = cands[lab][ci][0]
                key = (smp.traj, smp.kind, smp.row)
                if key not in frame_index:
                    frame_index[key] = len(frames)
                    frames.append(smp)
                frame_of.append(frame_index[key])
            particle.append(flat[lab][1][pick])
            species.append(np.full(n, sp, np.int64))
            label.append(np.full(n, lab, np.int64))
    ts = TrainingSet(frames, np.array(frame_of, np.int64), np.concatenate(particle),
                     np.concatenate(species), np.concatenate(label), counts)
    log.info("training set: %s", counts)
    return ts
