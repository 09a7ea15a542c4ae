"""``step-lattice``: the Hydra command line of the STEP lattice model.

    step-lattice                                  # L = 64 STEP model, default calibration
    step-lattice lattice.L=128 run.gamma_end=2 seed=3
    step-lattice lattice_model=classic            # ablations: classic, no_softness,
                                                  # no_volumetric, e2_trigger
    step-lattice calibration=/path/to/calibration.json
    step-lattice --multirun seed=0,1,2 hydra/launcher=joblib

Writes ``lattice.h5`` (every rearrangement, the avalanche table, the
stress-strain curve, the final state, the resolved config, the code
version; lattice/output.py), ``summary.json`` and the plots in the run
directory, which follows from the config; checkpoints go to its
``checkpoints/`` folder and the same command resumes a killed run from
the newest one (same result as an uninterrupted run, at the same
``lattice.threads``).
"""

import logging

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from .config import LatticeConfig
from .runner import run_lattice

log = logging.getLogger(__name__)
ConfigStore.instance().store(name="lattice_schema", node=LatticeConfig)


@hydra.main(version_base="1.3", config_path="pkg://step_epm.conf", config_name="lattice")
def _main(cfg: DictConfig) -> None:
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    run_lattice(OmegaConf.to_object(cfg), resolved)


def main() -> None:
    """Console-script entry point."""
    _main()
