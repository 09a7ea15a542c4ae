"""``step-calibrate``: the calibration of the lattice model from particle
trajectories and their softness analysis files (SPEC.md sections 4, 5).

    step-calibrate                                          # every outputs/particles/*/trajectory.h5
    step-calibrate 'trajectories=[runs/seed*/trajectory.h5]'
    step-calibrate measure.species=both measure.lags=[1,2,4] site.size=4
    step-lattice calibration=outputs/calibrate/<run>/calibration.json

Each trajectory needs its ``analysis.h5`` (run step-softness first). Writes
in the run directory (it follows from the config and the matched files):

- ``calibration.json``: the calibration file (docs/calibration.md), which
  step-lattice reads; required numbers that could not be measured are
  placeholders with a flag, and the file is then marked not calibrated;
- ``report.html``: every number with its error, sample size, fit range and
  flag, and the measured curves with their fits (figures embedded).

Every config field is checked before any work starts (calibrate/config.py).
The work is a few minutes per trajectory at N = 1e3 and reruns from the
files (nothing is half-written: both outputs are written to a temporary
name and renamed).
"""

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from step_epm.cli_support import register_hash_resolver, validate_and_run
from step_epm.config_checks import validated

from .config import CalibrateConfig, calibrate_hash

log = logging.getLogger(__name__)
ConfigStore.instance().store(name="calibrate_schema", node=CalibrateConfig)


register_hash_resolver("step_calibrate_hash", calibrate_hash)


def validate(cfg: DictConfig) -> CalibrateConfig:
    """The typed, range-checked config; also checks that every trajectory
    has its analysis file (ConfigError naming the field)."""
    obj = validated(cfg, CalibrateConfig, "calibrate/config.py")
    obj.pairs()
    return obj


def run(cfg: CalibrateConfig, resolved_yaml: str):
    """Measure, map onto the lattice, write calibration.json and the report.
    Returns (Calibration, path of calibration.json)."""
    import math

    from ..lattice.calibration import save_calibration
    from ..provenance import code_version
    from .assemble import assemble, choose_site, site_samples
    from .extract import measure
    from .report import write_report

    pairs = cfg.pairs()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    progress = True if (cfg.output.progress and sys.stderr.isatty()) else None
    log.info("measuring %d trajectories", len(pairs))
    meas = measure(pairs, cfg.measure.params(), progress=progress)
    for k, v in meas.counts.items():
        log.info("  %s: %s", k, v)
    site_q = choose_site(meas, cfg.site.size, cfg.site.factor)
    a = site_q.value
    if not math.isfinite(a):
        from ..lattice.calibration import placeholder_calibration
        a = placeholder_calibration()["site_size"]
        log.warning("no site side (%s): the site-level laws are measured at the placeholder "
                    "a = %g, which the file then carries (flagged); set site.size", site_q.flag, a)
    log.info("site side a = %.4g; coarse-graining on the lattice tiling", a)
    sites = site_samples(pairs, meas, a, cfg.site.sample_every, progress=log.info)
    cal, notes = assemble(meas, sites, site_q, config_yaml=resolved_yaml,
                          code_version=code_version(), n_boot=cfg.measure.n_boot,
                          seed=cfg.measure.seed)
    path = save_calibration(cal, out / "calibration.json")
    log.info("wrote %s (%s)", path, "calibrated" if cal.calibrated else
             f"NOT fully calibrated: {len(notes)} placeholder(s)")
    for n in notes:
        log.warning("placeholder: %s", n)
    if cfg.output.report:
        rp = write_report(out / "report.html", cal, meas, notes, pairs,
                          {"site samples (frames)": sites.n_frames, "site side a": f"{a:.4g}"})
        log.info("wrote %s", rp)
    return cal, path


@hydra.main(version_base="1.3", config_path="pkg://step_epm.conf", config_name="calibrate")
def _main(cfg: DictConfig) -> None:
    from ..lattice.calibration import CalibrationError
    from ..particles.analysis_file import AnalysisError
    from ..particles.trajectory import TrajectoryError

    validate_and_run("step-calibrate", cfg, validate, run,
                     (TrajectoryError, AnalysisError, CalibrationError))


def main() -> None:
    """Console-script entry point."""
    _main()


if __name__ == "__main__":
    main()
