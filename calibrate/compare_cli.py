"""``step-compare``: particles vs lattice runs on shared axes (SPEC.md
section 6; definitions in calibrate/compare.py).

    step-compare 'trajectories=[runs/seed*/trajectory.h5]' \\
        'lattice=[{label: STEP, path: outputs/lattice/x/step_L64_seed0}, {label: classic, path: ...}]'
    step-compare ... calibration=outputs/calibrate/<hash>/calibration.json s_min=2

Each trajectory needs its ``analysis.h5`` next to it; each lattice path is
a run directory (holding lattice.h5) or the lattice.h5 itself. Writes into
the run directory (``outputs/compare/<hash of the inputs and settings>``):
every figure as PNG and PDF, ``report.html`` (self-contained: the figures
embedded, the table of fitted exponents with errors per source) and
``summary.json`` (the same numbers). The first lattice source is the
reference the particles are compared with; when there are several lattice
sources the figures are drawn again for the lattice runs alone (STEP vs
its ablations).

Config (``CompareConfig``; every field checked before work, errors name
the field):
  trajectories: glob patterns of particle trajectories (may be empty: lattice only)
  analysis: the analysis file's name next to each trajectory (analysis.h5)
  calibration: calibration file; "" = the one stored in the first lattice run
  lattice: list of {label, path}
  species: origin species of the particle g2 and particle-level P(S) (small)
  cluster_species: rearrangers clustered into rearrangements (both)
  link_distance: linking distance of rearrangers in a frame (1.5 length)
  s_min: lower size cutoff of the size fits (rearrangements, 1)
  plastic_min: lower cutoff of the plastic-strain fits (strain x length^2, 0.25)
  g2_lags, g2_r (lo, hi, step), g2_n_theta, g2_fit_range: rearranger g2
  lattice_g2_r_max (60), lattice_g2_fit_range ([4, 40]): the lattice's g2 bins
      ((j + 1/2) a up to r_max) and tail-fit range (lengths)
  s_edges (lo, hi, step): softness bins of P(S); ps_every: every k-th step sampled
  n_boot, seed: bootstraps of g2
  output_dir: outputs/compare/<hash>
"""

import json
import logging
import math
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from step_epm.cli_support import register_hash_resolver, validate_and_run
from step_epm.config_checks import ConfigError, check_choice, check_range, validated
from step_epm.provenance import short_hash

log = logging.getLogger(__name__)


@dataclass
class LatticeSource:
    """One lattice run: ``label`` (legend, table row) and ``path`` (run
    directory or lattice.h5)."""

    label: str = ""
    path: str = ""

    def file(self) -> Path:
        p = Path(self.path)
        return p / "lattice.h5" if p.is_dir() else p


@dataclass
class CompareConfig:
    """Top-level config of ``step-compare`` (module docstring)."""

    trajectories: List[str] = field(default_factory=list)
    analysis: str = "analysis.h5"
    calibration: str = ""
    lattice: List[LatticeSource] = field(default_factory=list)
    species: str = "small"
    cluster_species: str = "both"
    link_distance: float = 1.5
    s_min: int = 1
    plastic_min: float = 0.25
    g2_lags: List[int] = field(default_factory=lambda: [0, 1, 2, 4])
    g2_r: List[float] = field(default_factory=lambda: [0.0, 20.0, 1.0])
    g2_n_theta: int = 8
    g2_fit_range: List[float] = field(default_factory=lambda: [2.0, 10.0])
    lattice_g2_r_max: float = 60.0
    lattice_g2_fit_range: List[float] = field(default_factory=lambda: [4.0, 40.0])
    s_edges: List[float] = field(default_factory=lambda: [-3.0, 3.0, 0.05])
    ps_every: int = 10
    n_boot: int = 50
    seed: int = 0
    output_dir: str = "outputs/compare"

    def __post_init__(self):
        check_choice("species", self.species, ("small", "large", "both"))
        check_choice("cluster_species", self.cluster_species, ("small", "large", "both"))
        check_range("link_distance", self.link_distance, 0.0)
        for name in ("s_min", "g2_n_theta", "ps_every", "n_boot", "seed"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigError(f"{name} = {v!r} must be an integer")
        check_range("s_min", self.s_min, 1)
        check_range("g2_n_theta", self.g2_n_theta, 1)
        check_range("ps_every", self.ps_every, 1)
        check_range("n_boot", self.n_boot, 0)
        check_range("seed", self.seed, 0)
        check_range("plastic_min", self.plastic_min, 0.0, lo_open=True)
        if not self.g2_lags or any(not isinstance(x, int) or x < 0 for x in self.g2_lags):
            raise ConfigError(f"g2_lags = {list(self.g2_lags)!r} must be a non-empty list of integers >= 0")
        for name in ("g2_r", "s_edges"):
            v = list(getattr(self, name))
            if len(v) != 3:
                raise ConfigError(f"{name} = {v!r} must be [lo, hi, step]")
            check_range(f"{name}[2] (step)", v[2], 0.0, lo_open=True)
            check_range(f"{name}[1] (hi)", v[1], v[0] + v[2])
        check_range("g2_r[0] (lo)", self.g2_r[0], 0.0)
        for name in ("g2_fit_range", "lattice_g2_fit_range"):
            v = list(getattr(self, name))
            if len(v) != 2:
                raise ConfigError(f"{name} = {v!r} must be [lo, hi]")
            check_range(f"{name}[0]", v[0], 0.0)
            check_range(f"{name}[1]", v[1], v[0], lo_open=True)
        check_range("lattice_g2_r_max", self.lattice_g2_r_max, 0.0, lo_open=True)
        labels = []
        for i, src in enumerate(self.lattice):
            if not src.label or not src.label.strip():
                raise ConfigError(f"lattice[{i}].label must be a non-empty name")
            if src.label in labels or src.label == "particles":
                raise ConfigError(f"lattice[{i}].label = {src.label!r} is used twice (or is 'particles')")
            labels.append(src.label)
            if not src.path:
                raise ConfigError(f"lattice[{i}].path must name a lattice run directory or lattice.h5")
        if not self.trajectories and not self.lattice:
            raise ConfigError("trajectories and lattice are both empty: nothing to compare")

    def pairs(self) -> list:
        """[(trajectory, analysis file)] of the matched files (ConfigError
        naming ``trajectories`` when a pattern matches nothing or an
        analysis file is missing)."""
        from ..particles.softness_config import match_trajectories

        if not self.trajectories:
            return []
        out = []
        for p in match_trajectories(list(self.trajectories)):
            a = Path(p).with_name(self.analysis)
            if not a.is_file():
                raise ConfigError(f"trajectories: {p} has no {self.analysis} next to it "
                                  "(run step-softness on it first)")
            out.append((p, str(a)))
        return out

    def lattice_files(self) -> list:
        """[(label, lattice.h5 path)]; ConfigError naming lattice[i].path if absent."""
        out = []
        for i, src in enumerate(self.lattice):
            f = src.file()
            if not f.is_file():
                raise ConfigError(f"lattice[{i}].path = {src.path!r}: no lattice.h5 there")
            out.append((src.label, f))
        return out

    def check_inputs(self):
        """Check every input file exists and a calibration can be found."""
        pairs, lat = self.pairs(), self.lattice_files()
        if self.calibration:
            if not Path(self.calibration).is_file():
                raise ConfigError(f"calibration = {self.calibration!r} is not a file")
        elif not lat:
            raise ConfigError("calibration must be given when there is no lattice run to read it from")
        return pairs, lat


def compare_hash(cfg, length: int = 10) -> str:
    """Short sha256 of the inputs (matched trajectories, lattice files with
    their size and mtime, calibration) and every setting but output_dir."""
    from ..particles.softness_config import match_trajectories

    if hasattr(cfg, "__dataclass_fields__"):
        d = asdict(cfg)
    else:
        d = OmegaConf.to_container(cfg, resolve=False)
        d.pop("hydra", None)
    d.pop("output_dir", None)
    d["trajectories"] = match_trajectories(list(d["trajectories"])) if d.get("trajectories") else []
    lat = []
    for src in d.get("lattice") or []:
        p = Path(src["path"])
        f = p / "lattice.h5" if p.is_dir() else p
        st = f.stat() if f.is_file() else None
        lat.append([src["label"], str(f.resolve()), st.st_size if st else None,
                    st.st_mtime_ns if st else None])
    d["lattice"] = lat
    if d.get("calibration"):
        d["calibration"] = str(Path(d["calibration"]).resolve())
    return short_hash(d, length)


ConfigStore.instance().store(name="compare_schema", node=CompareConfig)


register_hash_resolver("step_compare_hash", compare_hash)


def validate(cfg: DictConfig) -> CompareConfig:
    """The typed, range-checked config with its inputs checked (ConfigError
    naming the field)."""
    obj = validated(cfg, CompareConfig, "calibrate/compare_cli.py")
    obj.check_inputs()
    return obj


def _calibration(cfg: CompareConfig, lat):
    from ..lattice.calibration import load_calibration, parse_calibration
    from ..lattice.output import read_attrs

    if cfg.calibration:
        return load_calibration(cfg.calibration), str(cfg.calibration)
    label, f = lat[0]
    return parse_calibration(json.loads(read_attrs(f)["calibration"]), f"{f} attrs"), f"{f} (attrs)"


def _table_rows(table, lags):
    from .compare import _fmt

    def fit(d):
        if _fmt(d["tau"]) == "NaN":
            return f"NaN (too little data: n {int(d['n'])})"
        return f"{_fmt(d['tau'])} +- {_fmt(d['error'])} (n {int(d['n'])})"

    rows = []
    for label, t in table.items():
        row = [label, t["kind"], t["n_avalanches"], _fmt(t["mean_size"]), fit(t["tau_size"]),
               fit(t["tau_plastic"])]
        for lag in lags:
            g = t["g2_tail"].get(f"df={lag}")
            row.append("NaN" if g is None or _fmt(g["exponent"]) == "NaN"
                       else f"{_fmt(g['exponent'])} +- {_fmt(g['error'])}")
        row.append(_fmt(t["self_change"]))
        rows.append(row)
    return rows


def run(cfg: CompareConfig, resolved_yaml: str) -> Path:
    """Measure every source, draw the figures, write report.html and
    summary.json into cfg.output_dir. Returns the path of report.html."""
    import matplotlib
    matplotlib.use("Agg", force=False)

    from ..provenance import code_version
    from ..report import HtmlReport
    from . import compare as C

    pairs, lat = cfg.check_inputs()
    cal, cal_src = _calibration(cfg, lat)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    if pairs:
        log.info("measuring %d trajectories", len(pairs))
        results.append(C.measure_particles(pairs, cfg, cal))
    for label, f in lat:
        log.info("measuring lattice run %s (%s)", label, f)
        results.append(C.measure_lattice(label, f, cfg))
    table = C.exponent_table(results, cfg)
    for i, r in enumerate(x for x in results if x.kind == "lattice"):
        r.color = f"C{i % 10}"

    particles = [r for r in results if r.kind == "particles"]
    lattices = [r for r in results if r.kind == "lattice"]
    groups = []
    if particles:
        groups.append(("particles_vs_" + (lattices[0].label if lattices else "none"),
                       particles + lattices[:1],
                       f"Particles vs {lattices[0].label}" if lattices else "Particles"))
    if len(lattices) > 1 or not particles:
        groups.append(("lattice_models", lattices, "Lattice: " + " vs ".join(r.label for r in lattices)))

    rep = HtmlReport("step-compare: particles vs lattice")
    rep.paragraph(f"Calibration: {cal_src}. Particle trajectories: {len(pairs)}; lattice runs: "
                  + ", ".join(f"{lab} ({f})" for lab, f in lat) + ".")
    status = calibration_status(cal)
    rep.heading("Calibration status")
    rep.paragraph(status["text"])
    if status["placeholders"]:
        rep.table(["placeholder", "value", "why"], status["placeholders"])
    closure = None
    if particles and lattices:
        closure = _closure(particles[0], lattices, cal, pairs)
        rep.heading("Closure: particles (held-out) vs the calibrated STEP lattice"
                    if closure.held_out else "Closure: particles vs the calibrated STEP lattice")
        rows, classes = _closure_rows(closure)
        rep.table(["item", "particles", "lattice (STEP)", "band", "verdict", "note"], rows, classes)
        j = closure.to_json()
        rep.paragraph(f"{j['passed']} of {len(closure.rows)} rows pass, {j['failed']} fail, "
                      f"{j['undecided']} undecided (too little data). "
                      + " ".join(closure.notes) + (" " if closure.notes else "")
                      + "Definitions: calibrate/closure.py.")
    rep.heading("Fitted exponents")
    lags = list(cfg.g2_lags)
    rep.table(["source", "kind", "avalanches", "mean size", f"tau size (s_min {cfg.s_min})",
               f"tau plastic (min {cfg.plastic_min:g})"] + [f"g2 tail exponent df={x}" for x in lags]
              + ["self dS"], _table_rows(table, lags))
    rep.paragraph("NaN: too little data (fewer than 10 values above the cutoff, or no g2 tail). "
                  "Errors: Fisher information of the MLE (tau), bootstrap over avalanches (g2).")
    notes = [f"{r.label}: {n}" for r in results for n in r.notes]
    if notes:
        rep.preformatted("\n".join(notes))
    figures = []
    import matplotlib.pyplot as plt
    for gname, members, title in groups:
        rep.heading(title)
        for name, fn in C.FIGURES:
            stem = f"{gname}__{name}"
            try:
                fig, caption = fn(members, cfg)
            except Exception as exc:  # thin or odd data: say so, never crash
                log.warning("figure %s failed:\n%s", stem, traceback.format_exc())
                fig, caption = C.error_figure(stem, exc), f"{name}: could not be drawn ({exc})"
            fig.savefig(out / f"{stem}.png", dpi=110, bbox_inches="tight")
            fig.savefig(out / f"{stem}.pdf", bbox_inches="tight")
            figures.append({"name": stem, "png": f"{stem}.png", "pdf": f"{stem}.pdf", "caption": caption})
            rep.figure(fig, caption)
            plt.close(fig)
    rep.heading("Definitions")
    rep.preformatted(C.__doc__.split("Definitions\n-----------\n", 1)[-1].strip())
    rep.heading("Config")
    rep.preformatted(resolved_yaml)
    path = rep.write(out / "report.html")
    summary = {"code_version": code_version(), "calibration": cal_src,
               "inputs": {"trajectories": [p for p, _ in pairs],
                          "lattice": [{"label": lab, "path": str(f)} for lab, f in lat]},
               "settings": {"s_min": cfg.s_min, "plastic_min": cfg.plastic_min,
                            "plastic_quantum": cfg.plastic_min / C.PLASTIC_STEPS,
                            "link_distance": cfg.link_distance, "g2_lags": lags,
                            "g2_fit_range": list(cfg.g2_fit_range),
                            "lattice_g2_fit_range": list(cfg.lattice_g2_fit_range)},
               "calibration_status": {"calibrated": status["calibrated"],
                                      "placeholders": [r[0] for r in status["placeholders"]]},
               "closure": closure.to_json() if closure is not None else None,
               "exponents": table, "figures": figures}
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(_clean(summary), indent=1))
    tmp.replace(out / "summary.json")
    log.info("wrote %s", path)
    return path


def calibration_status(cal) -> dict:
    """{"calibrated", "text", "placeholders": [[name, value, why]]}: whether
    the calibration is measured, and every required number that is a
    placeholder (flag naming it so), for the top of the page."""
    from .compare import _fmt

    rows = []
    for name, q in cal.scalars.items():
        if q.flag and "placeholder" in q.flag:
            rows.append([name, _fmt(q.value), q.flag])
    if cal.calibrated:
        text = "The calibration is measured: every required number comes from the particle data."
    else:
        text = (f"The calibration is NOT fully calibrated: {len(rows)} required number(s) are "
                "placeholders (below), so the lattice is not the particles' material in those "
                "respects and the closure rows that depend on them are expected to fail.")
    return {"calibrated": bool(cal.calibrated), "text": text, "placeholders": rows}


def _held_out(pairs, cal) -> bool:
    """None of the trajectories (by content) is among the calibration's inputs."""
    from ..provenance import file_sha256

    used = {i.get("sha256") for i in (cal.inputs or [])}
    return not any(file_sha256(t) in used for t, _ in pairs)


def _closure(particles, lattices, cal, pairs):
    from .closure import closure_rows

    def opts(r):
        o = r.extra.get("options") or {}
        return (o.get("trigger", "eps_dev"), o.get("softness", True), o.get("volumetric", True))

    step = [r for r in lattices if opts(r) == ("eps_dev", True, True)]
    e2 = [r for r in lattices if opts(r) == ("e2", True, True)] or None
    if not step:
        step = lattices[:1]
    return closure_rows(particles, step, cal, e2=e2, held_out=_held_out(pairs, cal))


def _closure_rows(closure):
    from .compare import _fmt

    def cell(d):
        if not math.isfinite(d["value"]):
            return f"NaN (n {d['n']})"
        err = f" +- {_fmt(d['error'])}" if math.isfinite(d["error"]) else ""
        return f"{_fmt(d['value'])}{err} (n {d['n']})"

    rows, classes = [], []
    for r in closure.rows:
        verdict = {True: "pass", False: "FAIL", None: "undecided"}[r.passed]
        rows.append([r.item, cell(r.particles), cell(r.lattice), r.band, verdict, r.note])
        classes.append({True: "pass", False: "fail", None: "undecided"}[r.passed])
    return rows, classes


def _clean(x):
    """JSON-safe: NaN -> null, numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


@hydra.main(version_base="1.3", config_path="pkg://step_epm.conf", config_name="compare")
def _main(cfg: DictConfig) -> None:
    from ..lattice.calibration import CalibrationError
    from ..lattice.output import RunFileError
    from ..particles.analysis_file import AnalysisError
    from ..particles.trajectory import TrajectoryError

    path = validate_and_run("step-compare", cfg, validate, run,
                            (TrajectoryError, AnalysisError, CalibrationError, RunFileError))
    print(path)


def main() -> None:
    """Console-script entry point."""
    _main()


if __name__ == "__main__":
    main()
