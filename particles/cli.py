"""``step-particles``: the Hydra command line of the AQS avalanche study.

    step-particles                                    # small preset (N = 256), a few minutes
    step-particles particles=paper_n4000 system.seed=3
    step-particles --multirun system.seed=0,1,2 hydra/launcher=joblib
    step-particles --multirun particles=paper_n4000 system.seed='range(20)' hydra/launcher=slurm

Jams a packing (step 0; its elastic constants are stored too), shears it
quasistatically with avalanches followed frame by frame, and writes in the
run directory (which follows from the config: same command, same
directory):

- ``trajectory.h5``: the trajectory (schema in docs/trajectory.md);
- ``stress_strain.png``: stress and energy against strain, avalanches marked;
- ``avalanche.png``: one avalanche's frames coloured by displacement;
- Hydra's ``.hydra/`` (config, overrides) and the log.

A run killed at any moment resumes from its last complete step when the
same command is given again, and ends with the same data bit for bit.
Every config field is type- and range-checked before work starts (see
particles/config.py); a bad value stops with the field and the allowed
range named.
"""

import logging

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from step_epm.cli_support import register_hash_resolver, validate_and_run
from step_epm.config_checks import validated

from .config import ParticlesConfig, physics_hash

log = logging.getLogger(__name__)
ConfigStore.instance().store(name="particles_schema", node=ParticlesConfig)
register_hash_resolver("step_physics_hash", physics_hash)


def validate(cfg: DictConfig) -> ParticlesConfig:
    """The typed, range-checked config object (raises ConfigError naming the field)."""
    return validated(cfg, ParticlesConfig, "particles/config.py")


def run(cfg: ParticlesConfig, resolved_yaml: str):
    """Run or resume the AQS job of ``cfg``; plots next to the trajectory.
    Returns the aqs.RunSummary."""
    from .aqs import run_aqs

    summary = run_aqs(cfg, resolved_yaml)
    if cfg.output.plots:
        from .plots import plot_run
        for path in plot_run(summary.path):
            log.info("wrote %s", path)
    return summary


@hydra.main(version_base="1.3", config_path="pkg://step_epm.conf", config_name="particles")
def _main(cfg: DictConfig) -> None:
    from .trajectory import TrajectoryError

    validate_and_run("step-particles", cfg, validate, run, (TrajectoryError,))


def main() -> None:
    """Console-script entry point."""
    _main()


if __name__ == "__main__":
    main()
