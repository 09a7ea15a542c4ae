"""Structured config of ``step-calibrate`` (validated before any work starts).

YAML side: conf/calibrate.yaml. The ``measure`` section mirrors
``calibrate.extract.ExtractParams`` field by field (generated from it, so
the two cannot drift apart; tuples become lists) and is validated by it;
errors name the field as ``measure.<name>`` with the allowed range.
Units (SPEC.md section 0): lengths in small-particle diameters, time in
the overdamped unit.
"""

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

from step_epm.config_checks import ConfigError, check_range
from step_epm.provenance import short_hash

from ..particles.softness_config import match_trajectories
from .extract import ExtractParams
from .lattice_mapping import SITE_FACTOR


def _mirror(name, params_cls):
    """A mutable Hydra-friendly dataclass with the fields and defaults of a
    frozen params dataclass (tuples as lists)."""
    fields = []
    for f in dataclasses.fields(params_cls):
        if isinstance(f.default, tuple):
            fields.append((f.name, list, field(default_factory=lambda d=f.default: list(d))))
        else:
            fields.append((f.name, type(f.default), field(default=f.default)))

    def __post_init__(self):
        self.params()

    def params(self):
        """The validated ExtractParams (ConfigError names measure.<field>)."""
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in asdict(self).items()}
        try:
            return params_cls(**kw)
        except ConfigError as exc:
            raise ConfigError(str(exc).replace(f"{params_cls.__name__}.", "measure.")) from None

    return dataclasses.make_dataclass(name, fields, namespace={
        "__post_init__": __post_init__, "params": params,
        "__doc__": f"Mirror of {params_cls.__name__} (see calibrate/extract.py for each field)."})


MeasureConfig = _mirror("MeasureConfig", ExtractParams)


@dataclass
class SiteConfig:
    """The lattice site (SPEC.md section 5). size: side a (length); 0 = from
    the D2min correlation length xi, a = factor x xi. sample_every: every
    k-th minimised step is a P(S) sample of site softness."""

    size: float = 0.0
    factor: float = SITE_FACTOR
    sample_every: int = 50

    def __post_init__(self):
        check_range("site.size", self.size, 0.0, None)
        check_range("site.factor", self.factor, 0.0, None, lo_open=True)
        check_range("site.sample_every", self.sample_every, 1, None)


@dataclass
class OutputConfig:
    """report: write report.html; progress: tqdm bars (only on a terminal)."""

    report: bool = True
    progress: bool = True


@dataclass
class CalibrateConfig:
    """Top-level config of ``step-calibrate``.

    trajectories: glob patterns of trajectory files; each needs its
        analysis file (``analysis``, written by step-softness) next to it.
    output_dir: where calibration.json and the report go (follows from the
        config and the matched files).
    """

    trajectories: list = field(default_factory=lambda: ["outputs/particles/*/trajectory.h5"])
    analysis: str = "analysis.h5"
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    site: SiteConfig = field(default_factory=SiteConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    output_dir: str = "outputs/calibrate"

    def __post_init__(self):
        if len(self.trajectories) == 0:
            raise ConfigError("trajectories must hold at least one path or glob pattern")

    def pairs(self) -> list:
        """[(trajectory, analysis file)] of the matched files; ConfigError if
        an analysis file is missing."""
        out = []
        for p in match_trajectories(self.trajectories):
            a = Path(p).with_name(self.analysis)
            if not a.is_file():
                raise ConfigError(f"trajectories: {p} has no {self.analysis} next to it "
                                  "(run step-softness on it first)")
            out.append((p, str(a)))
        return out


def calibrate_hash(cfg, length: int = 10) -> str:
    """Short sha256 of the matched files and the measure/site sections
    (``cfg``: CalibrateConfig or DictConfig; output_dir is not read)."""
    if hasattr(cfg, "__dataclass_fields__"):
        d = {"measure": asdict(cfg.measure), "site": asdict(cfg.site)}
    else:
        from omegaconf import OmegaConf
        d = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("measure", "site")}
    d.update(trajectories=match_trajectories(list(cfg.trajectories)), analysis=str(cfg.analysis))
    return short_hash(d, length)
