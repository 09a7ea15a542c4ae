"""``step-softness``: train the softness model on AQS trajectories, apply it
to every frame, and report (SPEC.md section 3).

    step-softness                                   # every outputs/particles/*/trajectory.h5
    step-softness 'trajectories=[run0/trajectory.h5,run1/trajectory.h5]'
    step-softness model=outputs/softness/<run>/model.h5 'trajectories=[big/*/trajectory.h5]'
    step-softness ensemble.n_subsets=10 ensemble.n_seeds=3 training.max_per_class=7500

Writes in the run directory (it follows from the config and the matched
trajectory files, so the same command finds the same run):

- ``model.h5``: the softness model (docs/softness_model.md), unless
  ``model=`` names an existing one;
- ``report.html``: training-set counts, per-hyperplane accuracies, the
  weight function over r, P(S), P(S | rearranger), P_R(S) and the
  fractions (self-contained, figures embedded); ``summary.json``: the same
  numbers for scripts.

and next to every trajectory ``analysis.h5`` (docs/analysis.md): softness,
D2min and local strains of every particle in every frame. A killed run
resumes: a saved model is reused, finished analysis blocks are kept.
"""

import json
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from step_epm.cli_support import register_hash_resolver, validate_and_run
from step_epm.config_checks import ConfigError, validated

from .softness_config import SoftnessConfig, softness_hash

log = logging.getLogger(__name__)
ConfigStore.instance().store(name="softness_schema", node=SoftnessConfig)


register_hash_resolver("step_softness_hash", softness_hash)


def validate(cfg: DictConfig) -> SoftnessConfig:
    """The typed, range-checked config (raises ConfigError naming the field)."""
    obj = validated(cfg, SoftnessConfig, "particles/softness_config.py")
    paths = obj.trajectory_paths()
    from .trajectory import Trajectory, TrajectoryError
    for p in paths:
        try:
            with Trajectory(p) as t:
                if t.n_positions != t.n_steps:
                    raise ConfigError(
                        f"trajectories: {p} stores positions of {t.n_positions} of "
                        f"{t.n_steps} steps; softness needs every step "
                        "(step-particles output.position_every=1)")
        except TrajectoryError as exc:
            raise ConfigError(f"trajectories: {exc}") from None
    if obj.model and not Path(obj.model).is_file():
        raise ConfigError(f"model = {obj.model!r}: no such file")
    return obj


def _train(cfg: SoftnessConfig, paths, model_path: Path, run_hash: str):
    from .softness import SoftnessModel, train_ensemble
    from .training_set import build_training_set

    if model_path.exists():
        model = SoftnessModel.load(model_path)
        if model.provenance.get("run_hash") == run_hash:
            log.info("reusing %s (same config and inputs)", model_path)
            return model
        raise ConfigError(f"{model_path} was trained with another config or other inputs; "
                          "move it away or change output_dir")
    ts = build_training_set(paths, cfg.training, progress=log.info)
    for name, c in ts.counts.items():
        log.info("training set, %s particles: %d positive / %d negative drawn from %d / %d "
                 "candidates", name, c["positive"], c["negative"], c["positive_candidates"],
                 c["negative_candidates"])
    r_lists = cfg.ensemble.radial_lists()
    log.info("structure functions of %d samples for %d r-lists", len(ts.label), len(r_lists))
    feats = ts.features(paths, r_lists)
    provenance = {"run_hash": run_hash, "trajectories": paths,
                  "training": dict(vars(cfg.training)), "counts": ts.counts}
    from .trajectory import Trajectory
    provenance["trajectory_config_hashes"] = []
    for p in paths:
        with Trajectory(p) as t:
            provenance["trajectory_config_hashes"].append(t.config_hash)
    model = train_ensemble(feats, ts.label, ts.species, r_lists, cfg.ensemble.params(),
                           provenance=provenance)
    model.save(model_path)
    log.info("wrote %s", model_path)
    return model


def _report(cfg: SoftnessConfig, model, analyses, out: Path, resolved_yaml: str) -> dict:
    from step_epm.report import HtmlReport

    from .softness_report import SPECIES, SoftnessStats, accumulate, figures

    stats = SoftnessStats()
    for a in analyses:
        accumulate(stats, a, (cfg.training.d_soft_small, cfg.training.d_soft_large))
    tab = model.table()
    dec, rng = stats.p_r_decades()
    counts = model.provenance.get("counts", {})
    summary = {"model": str(out / "model.h5") if not cfg.model else cfg.model,
               "analyses": [str(a) for a in analyses], "training_counts": counts,
               "species": {}}
    for sp, name in enumerate(SPECIES):
        m = tab["species"] == sp
        summary["species"][name] = {
            "hyperplanes": int(m.sum()),
            "train_accuracy_range": [float(tab["train_acc"][m].min()),
                                     float(tab["train_acc"][m].max())] if m.any() else None,
            "val_accuracy_range": [float(tab["val_acc"][m].min()),
                                   float(tab["val_acc"][m].max())] if m.any() else None,
            "samples": int(stats.n_all[sp]), "rearrangers": int(stats.n_rearr[sp]),
            "frac_rearrangers_S_positive": float(stats.frac_rearr_positive()[sp]),
            "frac_non_rearrangers_S_negative": float(stats.frac_quiet_negative()[sp]),
            "p_r_decades": float(dec[sp]), "p_r_S_range": rng[sp].tolist()}
    rep = HtmlReport("Softness model and statistics")
    rep.paragraph(f"Model: {summary['model']}. Analysed frames from {len(analyses)} "
                  "trajectories. Rearranger: D2min between a frame and the next above "
                  f"d_soft = {cfg.training.d_soft_small} (small), "
                  f"{cfg.training.d_soft_large} (large).")
    rep.heading("Training set")
    rep.table(["species", "positive candidates", "negative candidates", "drawn per class"],
              [[k, v["positive_candidates"], v["negative_candidates"], v["positive"]]
               for k, v in counts.items()])
    rep.heading("Results")
    rep.table(["species", "hyperplanes", "train accuracy", "validation accuracy",
               "rearrangers with S > 0", "non-rearrangers with S < 0",
               "P_R(S) rises over (decades)", "samples (rearrangers)"],
              [[name, d["hyperplanes"],
                "%.3f - %.3f" % tuple(d["train_accuracy_range"]) if d["hyperplanes"] else "-",
                "%.3f - %.3f" % tuple(d["val_accuracy_range"]) if d["hyperplanes"] else "-",
                f"{d['frac_rearrangers_S_positive']:.3f}",
                f"{d['frac_non_rearrangers_S_negative']:.3f}",
                f"{d['p_r_decades']:.2f} (S {d['p_r_S_range'][0]:.1f} to "
                f"{d['p_r_S_range'][1]:.1f})", f"{d['samples']} ({d['rearrangers']})"]
               for name, d in summary["species"].items()])
    for fig, caption in figures(stats, model):
        rep.figure(fig, caption)
    rep.heading("Hyperplanes")
    rep.table(["#", "species", "r-list", "subset", "seed", "C", "train acc", "val acc"],
              [[i, SPECIES[tab["species"][i]], tab["rlist"][i], tab["subset"][i],
                tab["seed"][i], f"{tab['C'][i]:g}", f"{tab['train_acc'][i]:.3f}",
                f"{tab['val_acc'][i]:.3f}"] for i in range(len(tab["species"]))])
    rep.heading("Config")
    rep.preformatted(resolved_yaml)
    rep.write(out / "report.html")
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, out / "summary.json")
    log.info("wrote %s and summary.json", out / "report.html")
    return summary


def run(cfg: SoftnessConfig, resolved_yaml: str) -> dict:
    """Train (or load), analyse every trajectory, report. Returns the summary."""
    from .analysis_file import analyse_trajectory
    from .softness import SoftnessModel

    paths = cfg.trajectory_paths()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_hash = softness_hash(cfg)
    if cfg.model:
        model_path = Path(cfg.model)
        model = SoftnessModel.load(model_path)
    else:
        model_path = out / "model.h5"
        model = _train(cfg, paths, model_path, run_hash)
    analyses = []
    if cfg.output.analyse:
        progress = cfg.output.progress and sys.stderr.isatty()
        for p in paths:
            log.info("analysing %s", p)
            analyses.append(analyse_trajectory(p, model, model_path, block=cfg.output.block,
                                               config_yaml=resolved_yaml, progress=progress))
    summary = {}
    if cfg.output.report and analyses:
        summary = _report(cfg, model, analyses, out, resolved_yaml)
    return summary


@hydra.main(version_base="1.3", config_path="pkg://step_epm.conf", config_name="softness")
def _main(cfg: DictConfig) -> None:
    from .analysis_file import AnalysisError
    from .softness import SoftnessModelError
    from .trajectory import TrajectoryError

    validate_and_run("step-softness", cfg, validate, run,
                     (AnalysisError, SoftnessModelError, TrajectoryError))


def main() -> None:
    """Console-script entry point."""
    _main()


if __name__ == "__main__":
    main()
