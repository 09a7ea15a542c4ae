"""Structured config of ``step-softness`` (validated before any work starts).

YAML side: conf/softness.yaml. Every range check raises
``step_epm.config_checks.ConfigError`` naming the field and the allowed
range. Units (SPEC.md section 0): lengths in small-particle diameters,
D2min in length^2.
"""

import glob
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from step_epm.config_checks import ConfigError, check_range
from step_epm.provenance import short_hash

from .rearrangements import D_LARGE, D_SMALL


@dataclass
class TrainingConfig:
    """Training-set selection (particles/training_set.py): rearranger
    thresholds d_soft (small, large), the quiet threshold d_hard and window
    quiet_steps of the negatives, the balanced size per class and species,
    and the draw's seed."""

    d_soft_small: float = D_SMALL
    d_soft_large: float = D_LARGE
    d_hard: float = 2e-4
    quiet_steps: int = 20
    max_per_class: int = 7500
    seed: int = 0

    def __post_init__(self):
        check_range("training.d_soft_small", self.d_soft_small, 0.0, None, lo_open=True)
        check_range("training.d_soft_large", self.d_soft_large, 0.0, None, lo_open=True)
        check_range("training.d_hard", self.d_hard, 0.0,
                    min(self.d_soft_small, self.d_soft_large), lo_open=True)
        check_range("training.quiet_steps", self.quiet_steps, 1, None)
        check_range("training.max_per_class", self.max_per_class, 1, None)
        check_range("training.seed", self.seed, 0, None)


@dataclass
class EnsembleConfig:
    """The linear-SVM ensemble (particles/softness.py): n_subsets training
    subsets x r_lists x n_seeds hyperplanes per species, subset_size
    samples per class, val_fraction held out, C chosen from C_grid by
    validation accuracy (LinearSVC max_iter iterations at most). r_lists: radial positions of the structure
    functions, each as [first, last, spacing] (length), expanded to
    first, first + spacing, ..., last."""

    n_subsets: int = 5
    n_seeds: int = 2
    subset_size: int = 2000
    val_fraction: float = 0.2
    C_grid: list = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0])
    r_lists: list = field(default_factory=lambda: [[0.8, 4.0, 0.1], [0.85, 3.95, 0.1],
                                                    [0.8, 4.1, 0.15]])
    seed: int = 0
    max_iter: int = 10000

    def __post_init__(self):
        try:
            self.params()
        except ConfigError as exc:
            raise ConfigError(f"ensemble.{exc}") from None
        if len(self.r_lists) == 0:
            raise ConfigError("ensemble.r_lists must hold at least one [first, last, spacing]")
        for i, r in enumerate(self.r_lists):
            if len(r) != 3:
                raise ConfigError(f"ensemble.r_lists[{i}] = {list(r)} must be [first, last, spacing]")
            check_range(f"ensemble.r_lists[{i}][0] (first)", r[0], 0.0, None, lo_open=True)
            check_range(f"ensemble.r_lists[{i}][2] (spacing)", r[2], 0.0, r[0], lo_open=True)
            check_range(f"ensemble.r_lists[{i}][1] (last)", r[1], r[0] + r[2], 20.0)

    def params(self):
        """The softness.EnsembleParams of this section (which range-checks it)."""
        from .softness import EnsembleParams
        return EnsembleParams(n_subsets=self.n_subsets, n_seeds=self.n_seeds,
                              subset_size=self.subset_size, val_fraction=self.val_fraction,
                              C_grid=tuple(self.C_grid), seed=self.seed, max_iter=self.max_iter)

    def radial_lists(self) -> list:
        """The r_m arrays (M_l,) of every r-list."""
        out = []
        for first, last, dr in self.r_lists:
            m = int(np.floor((last - first) / dr + 1e-9)) + 1
            out.append(first + dr * np.arange(m))
        return out


@dataclass
class OutputConfig:
    """analyse: write analysis.h5 (softness, D2min, strains of every frame)
    next to every trajectory. report: write report.html and its figures.
    block: frames per resumable block of an analysis file.
    progress: tqdm bars (only on a terminal)."""

    analyse: bool = True
    report: bool = True
    block: int = 128
    progress: bool = True

    def __post_init__(self):
        check_range("output.block", self.block, 1, 100_000)


@dataclass
class SoftnessConfig:
    """Top-level config of ``step-softness``.

    trajectories: glob patterns of trajectory files (a multirun's outputs).
    model: an existing model file to apply instead of training one ("" =
        train on the trajectories).
    output_dir: where model.h5 and the report go (follows from the config).
    """

    trajectories: list = field(default_factory=lambda: ["outputs/particles/*/trajectory.h5"])
    model: str = ""
    training: TrainingConfig = field(default_factory=TrainingConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    output_dir: str = "outputs/softness"

    def __post_init__(self):
        if len(self.trajectories) == 0:
            raise ConfigError("trajectories must hold at least one path or glob pattern")

    def trajectory_paths(self) -> list:
        """The sorted, de-duplicated files the patterns match (error if none)."""
        return match_trajectories(self.trajectories)


def match_trajectories(patterns) -> list:
    """Resolved paths matched by glob ``patterns``, sorted, de-duplicated;
    ConfigError naming the field if none matches."""
    paths = sorted({str(Path(p).resolve()) for pat in patterns for p in glob.glob(str(pat))})
    if not paths:
        raise ConfigError(f"trajectories = {list(patterns)} matches no file "
                          "(run step-particles first, or give paths/glob patterns)")
    return paths


def softness_hash(cfg, length: int = 10) -> str:
    """Short sha256 of what determines the run: the matched trajectory files
    (resolved paths), the model path, the training and ensemble sections.
    ``cfg`` is a SoftnessConfig or a DictConfig (output_dir is not read, so
    it may interpolate this hash)."""
    if hasattr(cfg, "__dataclass_fields__"):
        d = {"training": asdict(cfg.training), "ensemble": asdict(cfg.ensemble)}
    else:
        from omegaconf import OmegaConf
        d = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("training", "ensemble")}
    d.update(trajectories=match_trajectories(list(cfg.trajectories)), model=str(cfg.model))
    return short_hash(d, length)
