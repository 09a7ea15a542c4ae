"""``step-particles``: the Hydra command line of the particle engine.

    step-particles                      # small default (N = 256, phi = 0.9)
    step-particles system.n=4000 system.seed=3
    step-particles --multirun system.seed=0,1,2 hydra/launcher=joblib

Writes ``packing.h5`` (positions, radii, box, energy, stress, elastic
constants; the resolved config and code version as attributes) in the run
directory, which follows from the config.
"""

import logging
from pathlib import Path

import h5py
import hydra
import numpy as np
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from step_epm.provenance import code_version

from .config import ParticlesConfig
from .elastic import elastic_constants
from .minimize import minimize
from .potential import evaluate
from .state import random_state

log = logging.getLogger(__name__)
ConfigStore.instance().store(name="particles_schema", node=ParticlesConfig)


def run(cfg: ParticlesConfig, resolved_yaml: str) -> Path:
    """Jam a packing, measure it, write packing.h5; returns the file path."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    s = cfg.system
    log.info("jamming N=%d at phi=%g (seed %d)", s.n, s.phi, s.seed)
    state, res = minimize(random_state(s.n, s.phi, s.seed), cfg.minimizer.ftol,
                          newton_switch=cfg.minimizer.newton_switch,
                          max_fire_iter=cfg.minimizer.max_fire_iter, raise_on_failure=True)
    ev = evaluate(state)
    log.info("minimised by %s: %d FIRE iterations, %d Newton solves, max|F| = %.2e",
             res.method, res.iterations, res.newton_solves, res.fmax)
    log.info("energy per particle %.6e, pressure %.6e", ev.energy / s.n, ev.pressure)
    ec = elastic_constants(state, cfg.elastic.strain, cfg.minimizer.ftol)
    for name, m in (("instantaneous", ec.instantaneous), ("relaxed", ec.relaxed)):
        log.info("%s: lambda+2mu = %.5f, lambda = %.5f, mu = %.5f, nu = %.4f",
                 name, m.lam_2mu, m.lam, m.mu, m.nu)
    path = out / "packing.h5"
    tmp = path.with_suffix(".h5.tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs["schema"] = "step-packing"
        f.attrs["schema_version"] = 1
        f.attrs["code_version"] = code_version()
        f.attrs["config"] = resolved_yaml
        f["position"] = state.wrapped_positions()
        f["radius"] = state.radii
        f["box"] = np.array([state.Lx, state.Ly, state.tilt])
        f["box"].attrs["columns"] = "Lx, Ly, tilt (xy offset / Ly)"
        f.attrs["energy"] = ev.energy
        f.attrs["pressure"] = ev.pressure
        f.attrs["max_force"] = res.fmax
        f["stress"] = ev.stress
        for name, m in (("instantaneous", ec.instantaneous), ("relaxed", ec.relaxed)):
            g = f.create_group(f"elastic/{name}")
            for key in ("c11", "c22", "c12", "mu", "lam_2mu", "lam", "nu"):
                g.attrs[key] = float(getattr(m, key))
    tmp.replace(path)  # never leave a half-written file under the final name
    log.info("wrote %s", path)
    return path


@hydra.main(version_base="1.3", config_path="pkg://step_epm.conf", config_name="particles")
def _main(cfg: DictConfig) -> None:
    resolved = OmegaConf.to_yaml(cfg, resolve=True)
    run(OmegaConf.to_object(cfg), resolved)


def main() -> None:
    """Console-script entry point."""
    _main()
