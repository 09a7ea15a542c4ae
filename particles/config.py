"""Structured configs of ``step-particles`` (validated before any work starts).

Every field is type-checked by OmegaConf against these dataclasses (an
unknown key or a wrong type is refused with the key named) and
range-checked in ``__post_init__`` by :func:`step_epm.config_checks.check_range`,
whose error names the field and the allowed range. The YAML side is
conf/particles.yaml with the presets in conf/particles/ (Hydra group
``particles``).

Units (SPEC.md section 0): lengths in small-particle diameters, energies in
the pair prefactor, time in the overdamped unit (dx/dt = F, unit drag).
"""

from dataclasses import asdict, dataclass, field
from typing import Optional

from step_epm.config_checks import check_range
from step_epm.provenance import short_hash

from .minimize import DescentParams


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
    newton_switch: float = 1e-7
    max_fire_iter: int = 1_000_000

    def __post_init__(self):
        check_range("minimizer.ftol", self.ftol, lo=0.0, hi=1e-3, lo_open=True)
        check_range("minimizer.newton_switch", self.newton_switch, lo=self.ftol, hi=1e-2)
        check_range("minimizer.max_fire_iter", self.max_fire_iter, lo=1)


@dataclass
class ElasticConfig:
    """Elastic constants of the initial packing (strain amplitude; on/off)."""

    strain: float = 1e-6
    enabled: bool = True

    def __post_init__(self):
        check_range("elastic.strain", self.strain, lo=0.0, hi=1e-2, lo_open=True, hi_open=True)


@dataclass
class ShearConfig:
    """AQS protocol: strain steps d_gamma (engineering xy strain) up to gamma_end."""

    d_gamma: float = 1e-3
    gamma_end: float = 0.1

    def __post_init__(self):
        check_range("shear.d_gamma", self.d_gamma, lo=0.0, hi=0.1, lo_open=True)
        check_range("shear.gamma_end", self.gamma_end, lo=self.d_gamma, hi=1e3)

    @property
    def n_steps(self) -> int:
        """Number of strain steps: round(gamma_end / d_gamma)."""
        return int(round(self.gamma_end / self.d_gamma))


@dataclass
class AvalancheConfig:
    """Plastic-event detection and the overdamped re-relaxation of an event.

    A step is an avalanche when any enabled test fires (null disables one):
    energy_tol: dissipation W - dE > energy_tol, with W = V d_gamma
        (sigma_xy(prev) + sigma_xy(new)) / 2 the trapezoidal work of the
        step (the elastic prediction of dE) [energy units];
    stress_tol: sigma_xy(new) < sigma_xy(prev) - stress_tol (a stress drop;
        an elastic step raises the stress) [energy / length^2];
    nonaffine_threshold: max_i |x_i(min) - x_i(affine start)| above it
        [length]. At large N one small event may show no net energy drop,
        so this test is on by default.
    A step whose direct minimisation fails is always re-relaxed.

    The re-relaxation is adaptive overdamped steepest descent from the
    affinely strained start, saving a frame every ``frame_spacing`` of
    configuration-space distance, run to max|F| < sd_ftol and then
    polished by Newton to minimizer.ftol; where Newton refuses (an
    indefinite Hessian: the descent can slow down near a saddle too) the
    descent goes on to a 100 times smaller tolerance and Newton is tried
    again (see aqs.relax_avalanche).
    sd_eta, sd_grow, sd_shrink, sd_dt0, sd_dt_max: the step-size control
    (accept when |F' - F| <= eta |F| and F'.F > 0; grow / shrink).
    """

    energy_tol: Optional[float] = 1e-6
    stress_tol: Optional[float] = None
    nonaffine_threshold: Optional[float] = 0.05
    frame_spacing: float = 0.15
    sd_ftol: float = 1e-6
    max_sd_steps: int = 50_000_000
    # defaults are the engine's (minimize.DescentParams), stated once
    sd_dt0: float = DescentParams.dt0
    sd_dt_max: float = DescentParams.dt_max
    sd_eta: float = DescentParams.eta
    sd_grow: float = DescentParams.grow
    sd_shrink: float = DescentParams.shrink

    def __post_init__(self):
        for name in ("energy_tol", "stress_tol", "nonaffine_threshold"):
            value = getattr(self, name)
            if value is not None:
                check_range(f"avalanche.{name}", value, lo=0.0, lo_open=True)
        check_range("avalanche.frame_spacing", self.frame_spacing, lo=0.0, hi=100.0, lo_open=True)
        check_range("avalanche.sd_ftol", self.sd_ftol, lo=0.0, hi=1e-2, lo_open=True)
        check_range("avalanche.max_sd_steps", self.max_sd_steps, lo=1)
        check_range("avalanche.sd_dt0", self.sd_dt0, lo=0.0, lo_open=True)
        check_range("avalanche.sd_dt_max", self.sd_dt_max, lo=self.sd_dt0)
        check_range("avalanche.sd_eta", self.sd_eta, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        check_range("avalanche.sd_grow", self.sd_grow, lo=1.0, hi=10.0)
        check_range("avalanche.sd_shrink", self.sd_shrink, lo=0.0, hi=1.0, lo_open=True, hi_open=True)


@dataclass
class OutputConfig:
    """What is written and how.

    position_every: store minimised positions every k-th step (1 = every
        step, the default: softness training needs every step). Steps that
        close a segment are always stored (they are resume points).
    segment_steps: steps per segment file while the run is in progress
        (segment k holds steps [k S, (k + 1) S - 1]; each completed segment
        is renamed into place atomically; the final trajectory.h5
        concatenates them). With position_every > 1 keep it unchanged when
        resuming: segment ends are stored steps.
    compression: gzip level of every dataset (0 = none).
    keep_segments: keep the segment files after trajectory.h5 is written.
    plots: write stress_strain.png and avalanche.png next to the trajectory.
    progress: tqdm progress bar over strain (only on a terminal).
    """

    position_every: int = 1
    segment_steps: int = 200
    compression: int = 4
    keep_segments: bool = False
    plots: bool = True
    progress: bool = True

    def __post_init__(self):
        check_range("output.position_every", self.position_every, lo=1)
        check_range("output.segment_steps", self.segment_steps, lo=1, hi=10_000_000)
        check_range("output.compression", self.compression, lo=0, hi=9)


@dataclass
class ParticlesConfig:
    """Top-level config of ``step-particles``. ``output_dir`` follows from the
    config (conf/particles.yaml: readable prefix + hash of the physics), so
    the same command finds the same run and resumes it."""

    system: SystemConfig = field(default_factory=SystemConfig)
    minimizer: MinimizerConfig = field(default_factory=MinimizerConfig)
    elastic: ElasticConfig = field(default_factory=ElasticConfig)
    shear: ShearConfig = field(default_factory=ShearConfig)
    avalanche: AvalancheConfig = field(default_factory=AvalancheConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    output_dir: str = "outputs/particles"


#: Config sections (and output fields) that change the trajectory's data.
PHYSICS_KEYS = ("system", "minimizer", "elastic", "shear", "avalanche")


def physics_dict(cfg) -> dict:
    """The part of a config (dataclass, DictConfig or dict) that determines
    the trajectory's numbers: every PHYSICS_KEYS section plus
    output.position_every. Progress bars, plots, segment size, compression
    and paths are left out (a run may be resumed with other values)."""
    if hasattr(cfg, "__dataclass_fields__"):
        d = asdict(cfg)
        out = {k: dict(d[k]) for k in PHYSICS_KEYS}
        out["output"] = {"position_every": d["output"]["position_every"]}
        return out
    if isinstance(cfg, dict):
        out = {k: dict(cfg[k]) for k in PHYSICS_KEYS}
        out["output"] = {"position_every": cfg["output"]["position_every"]}
        return out
    from omegaconf import OmegaConf  # a DictConfig: convert section by section
    out = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in PHYSICS_KEYS}
    out["output"] = {"position_every": cfg.output.position_every}
    return out


def physics_hash(cfg, length: int = 10) -> str:
    """Short sha256 of :func:`physics_dict` (canonical JSON, repr of floats)."""
    return short_hash(physics_dict(cfg), length)
