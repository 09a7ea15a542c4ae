"""Structured configs of ``step-particles`` (validated before any work starts)."""

from dataclasses import dataclass, field

from step_epm.config_checks import check_range


@dataclass
class SystemConfig:
    """The disk packing: N disks (1:1 radii 0.5/0.7) at packing fraction phi."""

    n: int = 256
    phi: float = 0.9
    seed: int = 0

    def __post_init__(self):
        check_range("system.n", self.n, lo=16, hi=10_000_000)
        check_range("system.phi", self.phi, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        check_range("system.seed", self.seed, lo=0)


@dataclass
class MinimizerConfig:
    """Force tolerance max_i |F_i| < ftol and the FIRE -> Newton hand-over."""

    ftol: float = 1e-12
    newton_switch: float = 1e-9
    max_fire_iter: int = 1_000_000

    def __post_init__(self):
        check_range("minimizer.ftol", self.ftol, lo=0.0, hi=1e-3, lo_open=True)
        check_range("minimizer.newton_switch", self.newton_switch, lo=self.ftol, hi=1e-2)
        check_range("minimizer.max_fire_iter", self.max_fire_iter, lo=1)


@dataclass
class ElasticConfig:
    """Strain amplitude of the elastic-constant measurement."""

    strain: float = 1e-6

    def __post_init__(self):
        check_range("elastic.strain", self.strain, lo=0.0, hi=1e-2, lo_open=True, hi_open=True)


@dataclass
class ParticlesConfig:
    """Top-level config of ``step-particles``. ``output_dir`` follows from the
    config (conf/particles.yaml) so the same command finds the same run."""

    system: SystemConfig = field(default_factory=SystemConfig)
    minimizer: MinimizerConfig = field(default_factory=MinimizerConfig)
    elastic: ElasticConfig = field(default_factory=ElasticConfig)
    output_dir: str = "outputs/particles"
