"""Structured configs of ``step-lattice`` (validated before any work starts).

Every range check raises ``step_epm.config_checks.ConfigError`` naming the
field (its dotted path), the value and the allowed range.
"""

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from step_epm.config_checks import ConfigError, check_choice, check_range

from .fft_plans import PLANNERS
from .model import ELASTIC, TRIGGERS


def calibration_tag(path: str) -> str:
    """Directory tag of a calibration: 'default' or the file's stem."""
    return "default" if str(path) == "default" else Path(str(path)).stem


if not OmegaConf.has_resolver("calib_tag"):
    OmegaConf.register_new_resolver("calib_tag", calibration_tag)


@dataclass
class GridConfig:
    """The periodic L x L lattice and how a frame is computed.

    threads: FFTW threads (a run resumes to the same bits only with the same
    count). realspace_max_sources: frames with at most this many rearranging
    sites add real-space kernels; more use whole-field transforms (null: the
    break-even measured for L, lattice.model.default_realspace_max_sources).
    transient_budget: the volumetric transient is added in real space, on
    windows around its sources, while their areas sum to at most this many
    sites (null: 4 L^2, lattice.model.default_transient_budget); beyond,
    by the Fourier recursion until it relaxes.
    fft_planner: "estimate" (deterministic FFTW plans: every fresh run of a
    config gives the same bits) or "measure" (faster transforms; the plans
    are stored in the run file and a resume re-creates them, but two fresh
    runs may differ in the last bits); lattice/fft_plans.py.
    """

    L: int = 64
    threads: int = 1
    realspace_max_sources: Optional[int] = None
    transient_budget: Optional[int] = None
    fft_planner: str = "estimate"

    def __post_init__(self):
        check_range("lattice.L", self.L, lo=8, hi=8192)
        check_range("lattice.threads", self.threads, lo=1, hi=256)
        if self.realspace_max_sources is not None:
            check_range("lattice.realspace_max_sources", self.realspace_max_sources, lo=0, hi=10**9)
        if self.transient_budget is not None:
            check_range("lattice.transient_budget", self.transient_budget, lo=0, hi=10**15)
        check_choice("lattice.fft_planner", self.fft_planner, set(PLANNERS))


@dataclass
class ModelConfig:
    """Model variant (SPEC.md section 5 ablations); presets in conf/lattice_model/."""

    name: str = "step"
    trigger: str = "eps_dev"
    softness: bool = True
    volumetric: bool = True
    elastic: str = "relaxed"

    def __post_init__(self):
        if not re.fullmatch(r"[A-Za-z0-9_.+-]+", self.name or ""):
            raise ConfigError(f"model.name = {self.name!r} must be a non-empty name of "
                              "letters, digits and _ . + - (it names the output directory)")
        check_choice("model.trigger", self.trigger, set(TRIGGERS))
        check_choice("model.elastic", self.elastic, set(ELASTIC))


@dataclass
class RunConfig:
    """Stop after the avalanche that takes the applied engineering shear strain
    past gamma_end (or after max_avalanches); max_frames bounds one avalanche."""

    gamma_end: float = 1.0
    max_avalanches: int = 1_000_000_000
    max_frames: int = 1_000_000

    def __post_init__(self):
        check_range("run.gamma_end", self.gamma_end, lo=0.0, hi=1e3, lo_open=True)
        check_range("run.max_avalanches", self.max_avalanches, lo=1)
        check_range("run.max_frames", self.max_frames, lo=1)


@dataclass
class CheckpointConfig:
    """A checkpoint (a complete run file under checkpoints/) is written every
    ``every_avalanches`` avalanches (0: never) and whenever ``every_seconds``
    of wall time have passed since the last one; the newest ``keep`` are kept
    (0: all). Results do not depend on when checkpoints are taken."""

    every_avalanches: int = 0
    every_seconds: float = 600.0
    keep: int = 2

    def __post_init__(self):
        check_range("checkpoint.every_avalanches", self.every_avalanches, lo=0)
        check_range("checkpoint.every_seconds", self.every_seconds, lo=0.0, lo_open=True)
        check_range("checkpoint.keep", self.keep, lo=0)


@dataclass
class OutputConfig:
    """plots: write the PNGs at the end; snapshots: keep the maps of the
    largest avalanche; progress: tqdm bar on stderr."""

    plots: bool = True
    snapshots: bool = True
    progress: bool = True


@dataclass
class LatticeConfig:
    """Top-level config of ``step-lattice``. ``output_dir`` follows from the
    config (conf/lattice.yaml), so the same command finds the same run and
    resumes it. ``calibration``: "default" (the shipped placeholder file) or
    a path to a calibration JSON file."""

    lattice: GridConfig = field(default_factory=GridConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    run: RunConfig = field(default_factory=RunConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    calibration: str = "default"
    seed: int = 0
    output_dir: str = "outputs/lattice"

    def __post_init__(self):
        check_range("seed", self.seed, lo=0, hi=2**63 - 1)
        if self.calibration != "default" and not Path(self.calibration).is_file():
            raise ConfigError(f"calibration = {self.calibration!r} is neither 'default' nor an existing file")


#: config keys that do not change the result (a run may resume with other values)
RESUMABLE_KEYS = ("run.gamma_end", "run.max_avalanches", "checkpoint", "output.plots",
                  "output.progress", "output_dir")
