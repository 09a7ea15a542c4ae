"""Structured config of ``step-pipeline`` (validated before any work starts).

The pipeline chains the project's command lines (particles -> softness ->
calibrate -> lattice -> compare, see step_epm/pipeline.py). This file holds
the pipeline's own fields: which runs to make and a few typed knobs per
stage. Anything else a stage accepts is passed through that stage's
``overrides`` list (the stage's own Hydra overrides, e.g.
``softness.overrides=[ensemble.n_subsets=2]``); every stage config is then
built with Hydra compose and checked by the stage's own ``validate`` (its
error names the field) before the first stage starts.

YAML side: conf/pipeline.yaml and the presets conf/pipeline/{default,tiny,paper}.yaml
(Hydra group ``pipeline``). Every range check raises
``step_epm.config_checks.ConfigError`` naming the field.
"""

import json
from dataclasses import asdict, dataclass, field
from typing import Optional

from .provenance import short_hash
from step_epm.config_checks import ConfigError, check_choice, check_range

#: The stages, in order.
STAGES = ("particles", "softness", "calibrate", "lattice", "compare")

#: Keys a stage's ``overrides`` must not set: the pipeline sets them.
PIPELINE_OWNED = {
    "particles": ("output_dir", "system.seed", "particles"),
    "softness": ("output_dir", "trajectories", "model"),
    "calibrate": ("output_dir", "trajectories"),
    "lattice": ("output_dir", "calibration", "seed", "lattice_model", "lattice.L", "run.gamma_end"),
    "compare": ("output_dir", "trajectories", "calibration", "lattice"),
}


def _check_overrides(section: str, stage: str, overrides) -> None:
    """Refuse overrides of keys the pipeline sets itself, naming them."""
    for ov in overrides:
        if not isinstance(ov, str) or "=" not in ov:
            raise ConfigError(f"{section}.overrides: {ov!r} is not a key=value override")
        key = ov.split("=", 1)[0].lstrip("+~")
        for owned in PIPELINE_OWNED[stage]:
            if key == owned:
                raise ConfigError(f"{section}.overrides: {key} is set by the pipeline "
                                  f"(see step_epm/pipeline_config.py); remove {ov!r}")


@dataclass
class ParticleRuns:
    """One group of step-particles runs: the same physics, several seeds.

    preset: the particles preset (conf/particles/<preset>.yaml: small,
        train_small, paper_n4000, paper_n1e5).
    seeds: system.seed of each run (one run directory each).
    n, d_gamma, gamma_end: system.n, shear.d_gamma, shear.gamma_end
        (null = the preset's value).
    overrides: any other step-particles overrides (e.g. avalanche.energy_tol=1e-5).
    """

    preset: str = "small"
    seeds: list = field(default_factory=lambda: [0])
    n: Optional[int] = None
    d_gamma: Optional[float] = None
    gamma_end: Optional[float] = None
    overrides: list = field(default_factory=list)

    def check(self, section: str):
        if len(self.seeds) == 0:
            raise ConfigError(f"{section}.seeds must hold at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"{section}.seeds = {list(self.seeds)} repeats a seed")
        for s in self.seeds:
            check_range(f"{section}.seeds[]", s, lo=0)
        _check_overrides(section, "particles", self.overrides)

    def stage_overrides(self, seed: int) -> list:
        """step-particles overrides of the run with this seed."""
        out = [f"particles={self.preset}", f"system.seed={seed}"]
        if self.n is not None:
            out.append(f"system.n={self.n}")
        if self.d_gamma is not None:
            out.append(f"shear.d_gamma={self.d_gamma!r}")
        if self.gamma_end is not None:
            out.append(f"shear.gamma_end={self.gamma_end!r}")
        return out + list(self.overrides)


@dataclass
class SlurmConfig:
    """How particle runs go to a cluster (particles.executor = slurm or local).

    launcher: the submitit preset in conf/hydra/launcher/ whose resources
        (timeout_min, cpus_per_task, mem_gb, partition, setup, ...) the jobs
        get: slurm (the cluster) or local_submitit (local processes).
    partition, account, timeout_min, mem_gb: replace the preset's values
        (null = keep).
    folder: submitit's log folder, relative to the pipeline run directory.
    wait: block until the jobs end and go on with the next stages; false =
        submit, record the job ids, stop; run the same command again once
        the jobs are done (runs still queued or running are not resubmitted;
        a run that ended unfinished is resubmitted and resumes).
    """

    launcher: str = "slurm"
    partition: Optional[str] = None
    account: Optional[str] = None
    timeout_min: Optional[int] = None
    mem_gb: Optional[float] = None
    folder: str = "submitit"
    wait: bool = False

    def __post_init__(self):
        check_choice("particles.slurm.launcher", self.launcher, {"slurm", "local_submitit"})
        if self.timeout_min is not None:
            check_range("particles.slurm.timeout_min", self.timeout_min, lo=1)
        if self.mem_gb is not None:
            check_range("particles.slurm.mem_gb", self.mem_gb, lo=0.0, lo_open=True)


@dataclass
class ParticlesStage:
    """The particle study.

    train: the runs the softness model is trained on (also analysed).
    analysis: optional larger runs the trained model is applied to; the
        calibration and the comparison then use them instead of ``train``.
    validate: optional held-out runs (other seeds, never used to train or
        calibrate): the trained model is applied to them and the comparison
        and its closure table use them instead (SPEC.md section 6).
    executor: inprocess (one after the other in this process) or submitit
        (each run a job, see ``slurm``).
    """

    train: ParticleRuns = field(default_factory=ParticleRuns)
    analysis: Optional[ParticleRuns] = None
    validate: Optional[ParticleRuns] = None
    executor: str = "inprocess"
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def __post_init__(self):
        check_choice("particles.executor", self.executor, {"inprocess", "submitit"})
        self.train.check("particles.train")
        if self.analysis is not None:
            self.analysis.check("particles.analysis")
        if self.validate is not None:
            self.validate.check("particles.validate")
            measured = self.analysis or self.train
            same = set(self.validate.seeds) & set(measured.seeds)
            if same and self.validate.stage_overrides(0)[2:] == measured.stage_overrides(0)[2:] \
                    and self.validate.preset == measured.preset:
                raise ConfigError(f"particles.validate.seeds {sorted(same)} are also calibrated on: "
                                  "held-out runs need other seeds")


@dataclass
class StageOverrides:
    """A stage configured by its own Hydra overrides only."""

    overrides: list = field(default_factory=list)


@dataclass
class LatticeStage:
    """step-lattice runs from the new calibration: every model preset
    (conf/lattice_model/) x every seed, at L x L up to gamma_end;
    ``overrides``: any other step-lattice overrides (e.g. lattice.threads=2).
    L: sites per side, or null: the particle box of the compared runs (L a =
    their box side, a the calibrated site side; at least 8), known once the
    calibration exists (SPEC.md section 6: the same physical size)."""

    models: list = field(default_factory=lambda: ["step", "classic", "no_volumetric", "e2_trigger"])
    L: Optional[int] = 64
    gamma_end: float = 1.0
    seeds: list = field(default_factory=lambda: [0])
    overrides: list = field(default_factory=list)

    def __post_init__(self):
        if len(self.models) == 0:
            raise ConfigError("lattice.models must name at least one lattice_model preset")
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"lattice.models = {list(self.models)} repeats a model")
        if len(self.seeds) == 0:
            raise ConfigError("lattice.seeds must hold at least one seed")
        for s in self.seeds:
            check_range("lattice.seeds[]", s, lo=0)
        if self.L is not None:
            check_range("lattice.L", self.L, lo=8, hi=8192)
        check_range("lattice.gamma_end", self.gamma_end, lo=0.0, hi=1e3, lo_open=True)
        _check_overrides("lattice", "lattice", self.overrides)


@dataclass
class CompareStage:
    """step-compare of the particles with every lattice run.

    note: a sentence shown on the comparison page (e.g. that exponents at
        this size are smoke-test values); passed as compare's ``note`` when
        its config has that field, else written to the pipeline summary.
    overrides: any other step-compare overrides (its fit settings).
    """

    note: str = ""
    overrides: list = field(default_factory=list)

    def __post_init__(self):
        _check_overrides("compare", "compare", self.overrides)


@dataclass
class PipelineConfig:
    """Top-level config of ``step-pipeline``.

    name: the preset's name (prefix of the run directory).
    root: where every stage's run directory goes (root/particles/...,
        root/softness/..., root/calibrate/..., root/lattice/...,
        root/compare/..., root/pipeline/<name>_<hash>).
    until: the last stage to run (stages after it are neither validated nor run).
    dry_run: validate every stage, print what would run (and the SLURM
        jobs it would submit) and stop without doing any work.
    output_dir: the pipeline's run directory (follows from the config).
    """

    name: str = "default"
    root: str = "outputs"
    until: str = "compare"
    dry_run: bool = False
    particles: ParticlesStage = field(default_factory=ParticlesStage)
    softness: StageOverrides = field(default_factory=StageOverrides)
    calibrate: StageOverrides = field(default_factory=StageOverrides)
    lattice: LatticeStage = field(default_factory=LatticeStage)
    compare: CompareStage = field(default_factory=CompareStage)
    output_dir: str = "outputs/pipeline"

    def __post_init__(self):
        check_choice("until", self.until, set(STAGES))
        if not self.name or "/" in self.name:
            raise ConfigError(f"name = {self.name!r} must be a non-empty name without '/'")
        _check_overrides("softness", "softness", self.softness.overrides)
        _check_overrides("calibrate", "calibrate", self.calibrate.overrides)

    def stages(self) -> tuple:
        """The stages to run: the first ones up to ``until``."""
        return STAGES[: STAGES.index(self.until) + 1]


#: Fields that do not change any result (left out of the pipeline hash).
NON_RESULT_KEYS = ("root", "until", "dry_run", "output_dir")


def pipeline_hash(cfg, length: int = 10) -> str:
    """Short sha256 of the pipeline config without NON_RESULT_KEYS and the
    particle executor settings (``cfg``: PipelineConfig or DictConfig)."""
    if hasattr(cfg, "__dataclass_fields__"):
        d = asdict(cfg)
    else:
        from omegaconf import OmegaConf
        d = OmegaConf.to_container(cfg, resolve=False)
        d.pop("output_dir", None)
        d = json.loads(json.dumps(d, default=repr))
    for k in NON_RESULT_KEYS:
        d.pop(k, None)
    parts = d.get("particles") or {}
    parts.pop("executor", None)
    parts.pop("slurm", None)
    return short_hash(d, length)
