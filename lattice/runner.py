"""Run the STEP lattice from a validated config: resume, loop, checkpoint,
write the run file and the plots (used by ``step-lattice``)."""

import json
import logging
import time
from pathlib import Path

from omegaconf import OmegaConf
from tqdm import tqdm

from .analysis import fit_power_law, stress_plateau
from .calibration import load_calibration
from .config import RESUMABLE_KEYS, LatticeConfig
from .model import ModelOptions, STEPModel
from .output import RunFileError, load_run, read_attrs, restore, write_run
from .plots import plot_run

log = logging.getLogger(__name__)

FINAL_NAME = "lattice.h5"
CHECKPOINT_DIR = "checkpoints"


def build_model(cfg: LatticeConfig, fft_wisdom: bytes | None = None) -> STEPModel:
    """The model of ``cfg``; ``fft_wisdom``: the FFTW plans of the run it resumes."""
    m = cfg.model
    opts = ModelOptions(trigger=m.trigger, softness=m.softness, volumetric=m.volumetric, elastic=m.elastic)
    return STEPModel(cfg.lattice.L, load_calibration(cfg.calibration), opts, seed=cfg.seed,
                     threads=cfg.lattice.threads,
                     realspace_max_sources=cfg.lattice.realspace_max_sources,
                     transient_budget=cfg.lattice.transient_budget,
                     max_frames=cfg.run.max_frames, snapshots=cfg.output.snapshots,
                     fft_planner=cfg.lattice.fft_planner, fft_wisdom=fft_wisdom)


def result_config(yaml_text):
    """The config without the keys that do not change the result."""
    d = OmegaConf.to_container(OmegaConf.create(yaml_text), resolve=False)

    def drop(node, dotted):
        head, _, rest = dotted.partition(".")
        if isinstance(node, dict) and head in node:
            if rest:
                drop(node[head], rest)
            else:
                del node[head]
    for key in RESUMABLE_KEYS:
        drop(d, key)
    return d


def _diff(a, b, prefix=""):
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k} ({va!r} there, {vb!r} here)")
    return keys


def checkpoint_path(out, n_avalanches):
    return Path(out) / CHECKPOINT_DIR / f"ckpt_{n_avalanches:012d}.h5"


def find_resume_point(out, resolved_yaml):
    """The run file to resume from: the one with the most avalanches among
    the final file and the checkpoints; None for a fresh run. Refuses
    (RunFileError) a directory whose files were written with a config that
    changes the result; skips unreadable files (e.g. cut off by a kill)."""
    out = Path(out)
    cands = [out / FINAL_NAME] + sorted((out / CHECKPOINT_DIR).glob("ckpt_*.h5"))
    want = result_config(resolved_yaml)
    best, best_n = None, -1
    for p in cands:
        if not p.is_file():
            continue
        try:
            attrs = read_attrs(p)
        except OSError as exc:
            log.warning("skipping unreadable run file %s (%s)", p, exc)
            continue
        diff = _diff(result_config(attrs.get("config", "{}")), want)
        if diff:
            raise RunFileError(f"{p} was written with a different config: {'; '.join(diff)}. "
                               "Use another output_dir (or remove the old run) to start afresh.")
        if int(attrs["n_avalanches"]) > best_n:
            best, best_n = p, int(attrs["n_avalanches"])
    return best


def _prune(out, keep):
    if keep <= 0:
        return
    files = sorted((Path(out) / CHECKPOINT_DIR).glob("ckpt_*.h5"))
    for p in files[:-keep]:
        p.unlink()


def run_lattice(cfg: LatticeConfig, resolved_yaml: str) -> Path:
    """Run (or resume) to cfg.run.gamma_end; write lattice.h5, checkpoints
    and plots under cfg.output_dir. Returns the run file's path."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    for junk in list(out.glob("*.tmp")) + list((out / CHECKPOINT_DIR).glob("*.tmp")):
        junk.unlink()  # left by a kill during a write
    final = out / FINAL_NAME
    start = find_resume_point(out, resolved_yaml)
    model = build_model(cfg, None if start is None else read_attrs(start).get("fftw_wisdom", "").encode())
    if not model.cal.calibrated:
        log.warning("calibration %s is marked NOT calibrated (placeholder numbers)", model.cal.source)
    if start is not None:
        restore(model, start)
        log.info("resuming from %s: %d avalanches, gamma = %.6g", start, model.n_avalanches, model.gamma)
    else:
        log.info("fresh run: L = %d, seed %d, model %s", model.L, model.seed, cfg.model.name)
    target, max_av = cfg.run.gamma_end, cfg.run.max_avalanches
    ck = cfg.checkpoint
    if model.gamma >= target or model.n_avalanches >= max_av:
        if start != final:
            write_run(final, model, resolved_yaml, completed=True)
        log.info("run already complete (gamma = %.6g >= %.6g)", model.gamma, target)
    else:
        last_ck = time.monotonic()
        bar = tqdm(total=target, initial=min(model.gamma, target), unit="strain", disable=not cfg.output.progress,
                   bar_format="{l_bar}{bar}| gamma {n:.4f}/{total:.4f} [{elapsed}<{remaining}] {postfix}")
        shown = model.gamma
        t0, f0, r0 = time.perf_counter(), model.frame, len(model.rearrangements)
        while model.gamma < target and model.n_avalanches < max_av:
            model.avalanche()
            now = min(model.gamma, target)
            if now - shown > 1e-4 * target:
                bar.update(now - shown)
                shown = now
                bar.set_postfix_str(f"{model.n_avalanches} avalanches", refresh=False)
            n = model.n_avalanches
            if (ck.every_avalanches and n % ck.every_avalanches == 0) or \
                    time.monotonic() - last_ck >= ck.every_seconds:
                write_run(checkpoint_path(out, n), model, resolved_yaml, completed=False)
                _prune(out, ck.keep)
                last_ck = time.monotonic()
        bar.update(min(model.gamma, target) - shown)
        bar.close()
        wall = time.perf_counter() - t0
        frames, rearr = model.frame - f0, len(model.rearrangements) - r0
        if frames:
            log.info("%d frames, %d rearrangements in %.1f s: %.3f ms per frame, %.0f rearrangements/s",
                     frames, rearr, wall, 1e3 * wall / frames, rearr / wall)
        write_run(final, model, resolved_yaml, completed=True)
    log.info("wrote %s", final)
    summarize(final, cfg)
    return final


def summarize(path, cfg):
    """Log the avalanche-size exponent and the stress plateau; write plots."""
    run = load_run(path)
    av = run["avalanches"]
    if av["size"].size:
        fit = fit_power_law(av["size"])
        pl = stress_plateau(av["gamma"], av["stress_after"], 0.5 * float(av["gamma"][-1]))
        log.info("%d avalanches, %d rearrangements; mean size %.2f, largest %d; tau = %.3f +- %.3f; "
                 "stress plateau (second half of the strain) %.5g +- %.2g",
                 av["size"].size, int(av["size"].sum()), av["size"].mean(), av["size"].max(),
                 fit["tau"], fit["error"], pl["mean"], pl["error"])
        summary = Path(path).parent / "summary.json"
        tmp = summary.with_name(summary.name + ".tmp")
        tmp.write_text(json.dumps(
            {"n_avalanches": int(av["size"].size), "n_rearrangements": int(av["size"].sum()),
             "gamma": float(run["attrs"]["gamma"]), "tau": fit, "stress_plateau": pl}, indent=1))
        tmp.replace(summary)
    if cfg.output.plots:
        for p in plot_run(run, Path(path).parent):
            log.info("wrote %s", p)
