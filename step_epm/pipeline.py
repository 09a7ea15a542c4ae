"""``step-pipeline``: the whole chain in one command.

    step-pipeline                                  # default preset: the README's main command (6-8 min, 2 cores)
    step-pipeline pipeline=tiny                    # a 1-3 minute smoke test
    step-pipeline pipeline=paper dry_run=true      # print the SLURM jobs it would submit
    step-pipeline pipeline=paper particles.slurm.partition=compute
    step-pipeline lattice.L=64 'softness.overrides=[ensemble.n_subsets=4]'

Stages, each one of the project's command lines called in-process through
its ``validate`` / ``run`` functions, with its config built by Hydra
compose (``initialize_config_module("step_epm.conf")``) from overrides:

1. particles  (step-particles): the training runs (several seeds), and
   optionally larger analysis runs; in this process or as submitit jobs
   (SLURM; ``particles.executor=submitit``);
2. softness   (step-softness): train the model on the training runs and
   write analysis.h5 next to each; apply it to the analysis runs;
3. calibrate  (step-calibrate): calibration.json + report.html;
4. lattice    (step-lattice): every model of ``lattice.models`` (STEP and
   its ablations) from the new calibration;
5. compare    (step-compare): the comparison page compare.html.

Every stage config is composed and validated before the first stage starts
(a stage whose inputs do not exist yet is checked field by field against
its schema, and fully once its inputs exist). Every stage's run directory
follows from its config (the stages' own rule, under ``root``), and each
stage resumes a killed run by its own resume logic. The pipeline's run
directory ``<root>/pipeline/<name>_<hash>`` holds ``pipeline.yaml`` (the
resolved config), one done-marker per stage (``stages/<stage>.json``: the
stage config's hash, its outputs, its wall time), ``pipeline.log``,
``summary.json`` and a copy of the comparison page (``compare.html``). A
stage whose marker has the current hash and whose outputs all exist is
skipped, so a second invocation only checks; a changed stage config reruns
that stage and every later one.

Test hook: ``STEP_PIPELINE_KILL_AT=stage:k`` SIGKILLs the process after the
k-th stage has finished or been skipped (``job:k``: after the k-th job of
any stage), see step_epm/kill_switch.py.
"""

import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from .config_checks import ConfigError, validated
from .kill_switch import KillSwitch
from .pipeline_config import STAGES, PipelineConfig, pipeline_hash

log = logging.getLogger("step_epm.pipeline")

KILL_ENV = "STEP_PIPELINE_KILL_AT"
MARKER_DIR = "stages"
COMPARE_MODULE = "step_epm.calibrate.compare_cli"

ConfigStore.instance().store(name="pipeline_schema", node=PipelineConfig)
if not OmegaConf.has_resolver("step_pipeline_hash"):
    OmegaConf.register_new_resolver("step_pipeline_hash",
                                    lambda *, _root_: pipeline_hash(_root_))


class PipelineError(RuntimeError):
    """A stage could not run (missing step-compare, failed jobs, ...)."""


# ---------------------------------------------------------------------------
# Hydra compose of every stage config
# ---------------------------------------------------------------------------

def _register_stage_schemas():
    """Import the stage CLIs: they store their schemas and hash resolvers."""
    from .calibrate import cli as _c  # noqa: F401
    from .lattice import cli as _l  # noqa: F401
    from .particles import cli as _p  # noqa: F401
    from .particles import softness_cli as _s  # noqa: F401


def compose_config(config_name: str, overrides) -> DictConfig:
    """``hydra.compose`` of conf/<config_name>.yaml with ``overrides``
    (inside a running Hydra app, its already initialised search path)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose(config_name=config_name, overrides=list(overrides))
    with initialize_config_module(config_module="step_epm.conf", version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def _compose_checked(where: str, config_name: str, overrides) -> DictConfig:
    """compose, turning Hydra's override / missing-preset errors into a
    ConfigError that names ``where`` (the pipeline field) and Hydra's message."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return compose_config(config_name, overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise ConfigError(f"{where}: {msg}") from None


def q(value) -> str:
    """A Hydra override value quoted as a string (paths, globs)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def qlist(values) -> str:
    return "[" + ",".join(q(v) for v in values) + "]"


def load_pipeline_config(overrides=()) -> tuple[PipelineConfig, str]:
    """The validated PipelineConfig of conf/pipeline.yaml + ``overrides``
    and its resolved YAML (ConfigError naming the field)."""
    cfg = _compose_checked("step-pipeline", "pipeline", overrides)
    obj = validated(cfg, PipelineConfig, "step_epm/pipeline_config.py")
    return obj, OmegaConf.to_yaml(cfg, resolve=True)


def _relocate(root: str, output_dir: str) -> str:
    """A stage's default run directory outputs/<stage>/<name> moved under root."""
    p = PurePosixPath(output_dir)
    if not p.is_absolute() and p.parts and p.parts[0] == "outputs":
        return str(Path(root, *p.parts[1:]))
    return output_dir


def _file_sha(path, length=10) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def _result_yaml(cfg: DictConfig) -> str:
    """The resolved config without the progress switch (it changes no result)."""
    d = OmegaConf.to_container(cfg, resolve=True)
    if isinstance(d.get("output"), dict):
        d["output"].pop("progress", None)
    return json.dumps(d, sort_keys=True, default=repr)


@dataclass
class Job:
    """One call of a stage's ``run``: its composed config, validated object
    (None when only its schema could be checked) and expected outputs."""

    stage: str
    label: str
    overrides: list
    cfg: DictConfig
    obj: object = None
    outputs: list = field(default_factory=list)
    complete_check: bool = True   # validated fully (inputs exist)
    full_validate: object = None  # the stage's validate, run when the stage starts if not yet

    @property
    def output_dir(self) -> str:
        return str(self.cfg.output_dir)

    def resolved_yaml(self) -> str:
        return OmegaConf.to_yaml(self.cfg, resolve=True)


class Plan:
    """The jobs of every stage, composed from the pipeline config. Jobs
    composed before their inputs exist are schema-checked only; composed
    again when their stage starts (``refresh``) they see the upstream
    outputs and are validated fully."""

    def __init__(self, pc: PipelineConfig):
        self.pc = pc
        self.root = pc.root
        self._cache = {}
        _register_stage_schemas()

    def jobs(self, stage: str) -> list:
        """The jobs of ``stage`` (composed once; see refresh)."""
        if stage not in self._cache:
            self._cache[stage] = getattr(self, f"_{stage}_jobs")()
        return self._cache[stage]

    def refresh(self, stage: str) -> None:
        """Forget the jobs of ``stage`` and every later stage: composed again
        they see the outputs that exist now (hash-named run directories,
        full validation)."""
        for s in STAGES[STAGES.index(stage):]:
            self._cache.pop(s, None)

    # -- particles ---------------------------------------------------------
    def particle_groups(self):
        groups = [("train", self.pc.particles.train)]
        for name in ("analysis", "validate"):
            if getattr(self.pc.particles, name) is not None:
                groups.append((name, getattr(self.pc.particles, name)))
        return groups

    def _particles_jobs(self) -> list:
        from .particles.cli import validate

        jobs = []
        for gname, group in self.particle_groups():
            for seed in group.seeds:
                where = f"particles.{gname} (seed {seed})"
                ov = group.stage_overrides(seed)
                cfg = _compose_checked(where, "particles", ov)
                cfg.output_dir = _relocate(self.root, str(cfg.output_dir))
                obj = _stage_validate(where, validate, cfg)
                jobs.append(Job("particles", f"{gname} seed {seed}", ov, cfg, obj,
                                [Path(obj.output_dir) / "trajectory.h5"]))
        return jobs

    def trajectories(self, group: str) -> list:
        """Paths of the trajectories of a particle group (predicted)."""
        return [str(j.outputs[0]) for j in self.jobs("particles") if j.label.startswith(group + " ")]

    def measured_group(self) -> str:
        """The runs the calibration measures."""
        return "analysis" if self.pc.particles.analysis is not None else "train"

    def compared_group(self) -> str:
        """The runs the comparison (and its closure table) uses: the
        held-out ones when there are."""
        return "validate" if self.pc.particles.validate is not None else self.measured_group()

    def lattice_L(self, cal: Path) -> int:
        """lattice.L, or (null) the compared runs' box side over the
        calibrated site side, rounded, at least 8 (16 before the calibration
        exists: a stand-in for validating the configs)."""
        if self.pc.lattice.L is not None:
            return int(self.pc.lattice.L)
        if not cal.is_file():
            return 16
        from .lattice.calibration import load_calibration
        c = load_calibration(cal)
        job = next(j for j in self.jobs("particles") if j.label.startswith(self.compared_group() + " "))
        side = math.sqrt(int(job.cfg.system.n) / c["number_density"])
        return max(8, int(round(side / c["site_size"])))

    # -- softness ----------------------------------------------------------
    def _softness_jobs(self) -> list:
        extra = list(self.pc.softness.overrides)
        train = self.trajectories("train")
        ov = [f"trajectories={qlist(train)}"] + extra
        jobs = [self._softness_job("softness (train)", "train", ov, train, None)]
        trajs = [t for g in ("analysis", "validate") if getattr(self.pc.particles, g) is not None
                 for t in self.trajectories(g)]
        if trajs:
            model = Path(jobs[0].output_dir) / "model.h5"
            ov = [f"trajectories={qlist(trajs)}", f"model={q(model)}"] + extra
            jobs.append(self._softness_job("softness (apply)", "apply", ov, trajs, model))
        return jobs

    def _softness_job(self, where, label, ov, trajs, model):
        from .particles import softness_cli
        from .particles.softness_config import SoftnessConfig

        cfg = _compose_checked(where, "softness", ov)
        ready = all(Path(t).is_file() for t in trajs) and (model is None or Path(model).is_file())
        cfg.output_dir = _relocate(self.root, str(cfg.output_dir))
        if ready:
            obj = _stage_validate(where, softness_cli.validate, cfg)
        else:  # inputs to come: the schema and ranges only
            obj = _stage_validate(where, lambda c: validated(
                c, SoftnessConfig, "particles/softness_config.py"), cfg)
        outs = [Path(t).with_name("analysis.h5") for t in trajs]
        if model is None:
            outs.insert(0, Path(cfg.output_dir) / "model.h5")
        if obj.output.report:
            outs.append(Path(cfg.output_dir) / "report.html")
        return Job("softness", label, ov, cfg, obj, outs, ready,
                   lambda c: _stage_validate(where, softness_cli.validate, c))

    # -- calibrate ---------------------------------------------------------
    def _calibrate_jobs(self) -> list:
        from .calibrate import cli as calibrate_cli
        from .calibrate.config import CalibrateConfig

        trajs = self.trajectories(self.measured_group())
        ov = [f"trajectories={qlist(trajs)}"] + list(self.pc.calibrate.overrides)
        where = "calibrate"
        cfg = _compose_checked(where, "calibrate", ov)
        cfg.output_dir = _relocate(self.root, str(cfg.output_dir))
        ready = all(Path(t).with_name("analysis.h5").is_file() for t in trajs)
        if ready:
            obj = _stage_validate(where, calibrate_cli.validate, cfg)
        else:
            obj = _stage_validate(where, lambda c: validated(
                c, CalibrateConfig, "calibrate/config.py"), cfg)
        outs = [Path(cfg.output_dir) / "calibration.json"]
        if obj.output.report:
            outs.append(Path(cfg.output_dir) / "report.html")
        return [Job("calibrate", "calibrate", ov, cfg, obj, outs, ready)]

    def calibration_path(self) -> Path:
        return self.jobs("calibrate")[0].outputs[0]

    # -- lattice -----------------------------------------------------------
    def _lattice_jobs(self) -> list:
        from .lattice.config import LatticeConfig

        lp = self.pc.lattice
        cal = self.calibration_path()
        ready = cal.is_file()
        tag = f"cal_{_file_sha(cal)}" if ready else "cal_pending"
        jobs = []
        for model in lp.models:
            for seed in lp.seeds:
                where = f"lattice ({model}, seed {seed})"
                ov = [f"lattice_model={model}", f"lattice.L={self.lattice_L(cal)}",
                      f"run.gamma_end={lp.gamma_end!r}", f"seed={seed}",
                      f"calibration={q(cal) if ready else 'default'}"] + list(lp.overrides)
                cfg = _compose_checked(where, "lattice", ov)
                name = f"{cfg.model.name}_L{cfg.lattice.L}_seed{cfg.seed}"
                cfg.output_dir = str(Path(self.root, "lattice", tag, name))
                obj = _stage_validate(where, lambda c: validated(
                    c, LatticeConfig, "lattice/config.py"), cfg)
                jobs.append(Job("lattice", f"{model} seed {seed}", ov, cfg, obj,
                                [Path(cfg.output_dir) / "lattice.h5"], ready))
        return jobs

    # -- compare -----------------------------------------------------------
    def _compare_jobs(self) -> list:
        cmod = _compare_module()
        lp = self.pc.lattice
        trajs = self.trajectories(self.compared_group())
        cal = self.calibration_path()
        lat = self.jobs("lattice")
        entries = []
        for j in lat:
            model, seed = j.label.split(" seed ")
            label = model if len(lp.seeds) == 1 else f"{model} (seed {seed})"
            entries.append("{label:%s,path:%s}" % (q(label), q(j.outputs[0])))
        ov = [f"trajectories={qlist(trajs)}", f"calibration={q(cal)}",
              f"lattice=[{','.join(entries)}]"]
        if self.pc.compare.note and _compare_has_field(cmod, "note"):
            ov.append(f"note={q(self.pc.compare.note)}")
        ov += list(self.pc.compare.overrides)
        where = "compare"
        cfg = _compose_checked(where, "compare", ov)
        cfg.output_dir = _relocate(self.root, str(cfg.output_dir))
        ready = (cal.is_file() and all(j.outputs[0].is_file() for j in lat)
                 and all(Path(t).with_name("analysis.h5").is_file() for t in trajs))
        if ready:
            obj = _stage_validate(where, cmod.validate, cfg)
        else:
            obj = _schema_check_tolerant(where, cfg, cmod)
        # the page's name is what compare's run() returns (recorded in the marker)
        return [Job("compare", "compare", ov, cfg, obj, [], ready)]


def _stage_validate(where, fn, cfg):
    try:
        return fn(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _compare_module():
    """step_epm.calibrate.compare_cli, or a clear error if it is missing."""
    import importlib

    try:
        return importlib.import_module(COMPARE_MODULE)
    except ImportError as exc:
        raise PipelineError(
            f"the compare stage needs step-compare ({COMPARE_MODULE}), which cannot be "
            f"imported: {exc}. Run the stages before it with until=lattice.") from None


def compare_available() -> bool:
    """Whether step-compare can be imported."""
    try:
        _compare_module()
        return True
    except PipelineError:
        return False


def _compare_has_field(cmod, name) -> bool:
    schema = getattr(cmod, "CompareConfig", None)
    return schema is not None and dataclasses.is_dataclass(schema) and \
        name in {f.name for f in dataclasses.fields(schema)}


#: compare's fields that name inputs: their checks wait until the inputs exist
_COMPARE_INPUTS = ("trajectories", "calibration", "lattice")


def _schema_check_tolerant(where, cfg, cmod):
    """compare's schema check while its inputs do not exist yet: every
    error is reported except those about the input fields."""
    schema = getattr(cmod, "CompareConfig", None)
    if schema is None:
        return None
    try:
        return validated(cfg, schema, "calibrate/compare_cli.py")
    except ConfigError as exc:
        if str(exc).startswith(_COMPARE_INPUTS) or " no file" in str(exc) \
                or "does not exist" in str(exc) or "matches no" in str(exc):
            return None
        raise ConfigError(f"{where}: {exc}") from None


# ---------------------------------------------------------------------------
# Stage markers
# ---------------------------------------------------------------------------

def stage_hash(jobs, upstream: str = "") -> str:
    """sha256 of the stage's resolved configs (progress switch left out) and
    the hash of the stage before (so a rerun upstream reruns this stage)."""
    text = json.dumps([upstream] + [_result_yaml(j.cfg) for j in jobs])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_marker(run_dir: Path, stage: str):
    p = Path(run_dir) / MARKER_DIR / f"{stage}.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def write_marker(run_dir: Path, stage: str, data: dict) -> Path:
    d = Path(run_dir) / MARKER_DIR
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f"{stage}.json.tmp"
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, d / f"{stage}.json")
    return d / f"{stage}.json"


def _is_done(marker, h, jobs) -> bool:
    return bool(marker) and marker.get("status") == "done" and marker.get("hash") == h and \
        all(Path(p).exists() for j in jobs for p in j.outputs) and \
        all(Path(p).exists() for p in marker.get("outputs", []))


def _done_elsewhere(run_dir: Path, stage: str, h: str, jobs):
    """Another pipeline run directory (same root) whose marker of ``stage``
    has hash ``h`` with every output present, or None."""
    parent = Path(run_dir).parent
    if not parent.is_dir():
        return None
    for other in sorted(parent.iterdir()):
        if other != Path(run_dir) and _is_done(read_marker(other, stage), h, jobs):
            return other
    return None


# ---------------------------------------------------------------------------
# Running the stages
# ---------------------------------------------------------------------------

def _particle_job(overrides, output_dir) -> str:
    """One particle run (also the body of a submitit job): compose,
    validate, run; returns the trajectory path."""
    from .particles.cli import run, validate

    _register_stage_schemas()
    cfg = compose_config("particles", overrides)
    cfg.output_dir = output_dir
    return str(run(validate(cfg), OmegaConf.to_yaml(cfg, resolve=True)).path)


def _run_job(job: Job):
    """The stage's own ``run`` on the job's validated config."""
    yaml_text = job.resolved_yaml()
    if job.stage == "particles":
        from .particles.cli import run
        return run(job.obj, yaml_text).path
    if job.stage == "softness":
        from .particles.softness_cli import run
        return run(job.obj, yaml_text)
    if job.stage == "calibrate":
        from .calibrate.cli import run
        return run(job.obj, yaml_text)[1]
    if job.stage == "lattice":
        from .lattice.runner import run_lattice
        return run_lattice(job.obj, yaml_text)
    if job.stage == "compare":
        return _compare_module().run(job.obj, yaml_text)
    raise ValueError(job.stage)


def launcher_parameters(sc) -> tuple[str, dict]:
    """(submitit cluster, AutoExecutor parameters) from the launcher preset
    conf/hydra/launcher/<sc.launcher>.yaml and the pipeline's overrides."""
    from importlib.resources import files

    import yaml

    text = files("step_epm.conf").joinpath("hydra", "launcher", f"{sc.launcher}.yaml").read_text()
    d = yaml.safe_load(text) or {}
    d.pop("defaults", None)
    cluster = "slurm" if sc.launcher == "slurm" else "local"
    for k in ("partition", "account", "timeout_min", "mem_gb"):
        if getattr(sc, k) is not None:
            d[k] = getattr(sc, k)
    common = {"timeout_min", "cpus_per_task", "tasks_per_node", "nodes", "mem_gb",
              "gpus_per_node", "name", "stderr_to_stdout"}
    params = {}
    for k, v in d.items():
        if v is None:
            continue
        if k in common:
            params[k] = v
        elif cluster == "slurm":
            params[f"slurm_{k}"] = v
    if cluster == "local":
        params.pop("mem_gb", None)
    return cluster, params


def particle_command(job: Job) -> str:
    """The equivalent step-particles command line of a particle job."""
    import shlex
    return " ".join(["step-particles"] + [shlex.quote(o) for o in job.overrides]
                    + [shlex.quote(f"output_dir={job.output_dir}")])


def _active_jobs(marker, folder) -> dict:
    """Earlier submitted jobs (label -> id) that are still queued or running."""
    active = {}
    if not marker or not marker.get("submitted"):
        return active
    try:
        import submitit
        for label, job_id in marker["submitted"].items():
            state = submitit.SlurmJob(folder, job_id).state
            if state in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING",
                         "RESIZING", "SUSPENDED", "UNKNOWN"):
                active[label] = job_id
    except Exception as exc:  # no sacct here, say: do not resubmit blindly
        log.warning("could not query the earlier jobs (%s); treating them as active", exc)
        return dict(marker["submitted"])
    return active


def _submit_particles(pc: PipelineConfig, jobs, run_dir: Path, marker, h: str, dry_run: bool,
                      out=None):
    """Submit the unfinished particle runs through submitit; returns 'done'
    (all finished, possibly after waiting), 'submitted' or 'dry_run'."""
    sc = pc.particles.slurm
    cluster, params = launcher_parameters(sc)
    todo = [j for j in jobs if not j.outputs[0].is_file()]
    folder = run_dir / sc.folder
    if dry_run:
        out = out or sys.stdout
        print(f"particles: {len(todo)} of {len(jobs)} run(s) to submit as submitit jobs "
              f"(cluster={cluster}, launcher preset conf/hydra/launcher/{sc.launcher}.yaml, "
              f"folder={folder}, one job each, a job array):", file=out)
        print("  executor parameters: " + json.dumps(params, sort_keys=True), file=out)
        for j in todo:
            print(f"  job {j.label}: {particle_command(j)}", file=out)
        if todo:
            print("  (the later stages run in this process once every particle run exists: "
                  "give the same command again without dry_run, then once the jobs are done)",
                  file=out)
        return "dry_run"
    if not todo:
        return "done"
    prev = marker if marker and marker.get("hash") == h else None
    active = _active_jobs(prev, folder) if cluster == "slurm" else {}
    submit = [j for j in todo if j.label not in active]
    if active:
        log.info("particles: %d job(s) still queued or running: %s", len(active),
                 ", ".join(f"{k} ({v})" for k, v in active.items()))
    import submitit

    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    executor.update_parameters(**params)
    handles = []
    if submit:
        with executor.batch():
            for j in submit:
                handles.append((j, executor.submit(_particle_job, list(j.overrides), j.output_dir)))
    ids = dict(active)
    ids.update({j.label: h_.job_id for j, h_ in handles})
    for j, h_ in handles:
        log.info("particles: submitted %s as job %s: %s", j.label, h_.job_id, particle_command(j))
    write_marker(run_dir, "particles", {"stage": "particles", "hash": h, "status": "submitted",
                                        "submitted": ids, "folder": str(folder)})
    if not sc.wait:
        return "submitted"
    for j, h_ in handles:
        h_.result()  # raises with the job's traceback if it failed
    missing = [str(j.outputs[0]) for j in todo if not j.outputs[0].is_file()]
    if missing:  # jobs submitted by an earlier invocation are not waited for
        return "submitted"
    return "done"


@dataclass
class StageResult:
    stage: str
    status: str               # done, skipped, submitted, dry_run
    elapsed: float
    hash: str
    outputs: list


@dataclass
class PipelineResult:
    run_dir: Path
    stages: dict              # stage -> StageResult
    page: Path | None         # the comparison page (copy in run_dir), if made
    elapsed: float

    @property
    def statuses(self) -> dict:
        return {k: v.status for k, v in self.stages.items()}


def prevalidate(pc: PipelineConfig) -> Plan:
    """Compose and validate every stage's config (up to ``until``) before any
    work: fully where the inputs exist, the schema fields otherwise.
    Raises ConfigError naming the stage and field, PipelineError if a stage
    cannot run at all (step-compare missing)."""
    plan = Plan(pc)
    for stage in pc.stages():
        jobs = plan.jobs(stage)
        partial = [j.label for j in jobs if not j.complete_check]
        log.info("config of %s: %d job(s) %s", stage, len(jobs),
                 "validated" if not partial else
                 "schema-checked (inputs not there yet; full check when the stage starts)")
    return plan


class _HydraContext:
    """Hydra initialised once for the whole pipeline (every compose reuses it)."""

    def __enter__(self):
        from hydra import initialize_config_module
        from hydra.core.global_hydra import GlobalHydra

        self.ctx = None
        if not GlobalHydra.instance().is_initialized():
            self.ctx = initialize_config_module(config_module="step_epm.conf", version_base="1.3")
            self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)


def run_pipeline(pc: PipelineConfig, resolved_yaml: str = "", *, out=None) -> PipelineResult:
    """Run (or resume, or recognise as complete) every stage up to
    ``pc.until``; every stage config is validated first. ``out``: where the
    dry run and the final line are printed (default stdout)."""
    with _HydraContext():
        return _run_pipeline(pc, resolved_yaml, out or sys.stdout)


def _dry_run(pc, plan, run_dir, out) -> dict:
    print(f"dry run of pipeline {pc.name} (nothing is run or submitted); run directory {run_dir}",
          file=out)
    results = {}
    for stage in pc.stages():
        jobs = plan.jobs(stage)
        marker = read_marker(run_dir, stage)
        h = stage_hash(jobs)
        if stage == "particles" and pc.particles.executor == "submitit":
            _submit_particles(pc, jobs, run_dir, marker, h, True, out)
        else:
            print(f"{stage}: {len(jobs)} job(s), in this process", file=out)
            for j in jobs:
                where = j.output_dir if j.complete_check else \
                    os.path.dirname(j.output_dir) + "/<hash of its inputs, known once they exist>"
                if stage == "particles":
                    print(f"  {j.label}: {particle_command(j)}", file=out)
                else:
                    print(f"  {j.label}: {where}", file=out)
        results[stage] = StageResult(stage, "dry_run", 0.0, "", [])
    return results


def _run_pipeline(pc, resolved_yaml, out) -> PipelineResult:
    t_start = time.perf_counter()
    kill = KillSwitch(KILL_ENV)
    plan = prevalidate(pc)
    run_dir = Path(pc.output_dir)
    if pc.dry_run:
        results = _dry_run(pc, plan, run_dir, out)
        return PipelineResult(run_dir, results, None, time.perf_counter() - t_start)

    run_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "pipeline.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    logging.getLogger().addHandler(handler)
    results = {}
    try:
        (run_dir / "pipeline.yaml").write_text(resolved_yaml)
        upstream, page, ran = "", None, False
        stages = pc.stages()
        for i, stage in enumerate(stages, 1):
            t0 = time.perf_counter()
            if ran or not all(j.complete_check for j in plan.jobs(stage)):
                plan.refresh(stage)  # compose again: the upstream outputs exist now
            jobs = plan.jobs(stage)
            h = stage_hash(jobs, upstream)
            marker = read_marker(run_dir, stage)
            tag = f"stage {i}/{len(stages)} {stage}"
            if not _is_done(marker, h, jobs):
                other = _done_elsewhere(run_dir, stage, h, jobs)
                if other is not None:  # another pipeline config made the same stage
                    marker = dict(read_marker(other, stage), copied_from=str(other))
                    write_marker(run_dir, stage, marker)
            if _is_done(marker, h, jobs):
                log.info("%s: skipped (complete, config unchanged; %s%s)", tag,
                         run_dir / MARKER_DIR / f"{stage}.json",
                         f", made by {marker['copied_from']}" if "copied_from" in marker else "")
                res = StageResult(stage, "skipped", time.perf_counter() - t0, h, marker["outputs"])
            else:
                log.info("%s: start (%d job(s))", tag, len(jobs))
                status, returned = _run_stage(pc, stage, jobs, run_dir, marker, h, kill, out)
                elapsed = time.perf_counter() - t0
                outputs = [str(p) for j in jobs for p in j.outputs] + [str(p) for p in returned]
                if status == "submitted":
                    log.info("%s: jobs submitted; run the same command again when they have "
                             "finished", tag)
                    results[stage] = StageResult(stage, status, elapsed, h, outputs)
                    print(f"particle runs submitted (job ids in "
                          f"{run_dir / MARKER_DIR / 'particles.json'}); run the same command "
                          "again when they have finished", file=out)
                    _write_summary(pc, run_dir, results, None, time.perf_counter() - t_start)
                    return PipelineResult(run_dir, results, None, time.perf_counter() - t_start)
                missing = [p for p in outputs if not Path(p).exists()]
                if missing:
                    raise PipelineError(f"stage {stage} finished without its outputs: {missing}")
                write_marker(run_dir, stage, {
                    "stage": stage, "hash": h, "status": "done", "outputs": outputs,
                    "jobs": [{"label": j.label, "output_dir": j.output_dir,
                              "overrides": j.overrides} for j in jobs],
                    "elapsed_s": round(elapsed, 3),
                    "finished": datetime.datetime.now().isoformat(timespec="seconds")})
                log.info("%s: finished in %.1f s", tag, elapsed)
                res = StageResult(stage, "done", elapsed, h, outputs)
                ran = True
            results[stage] = res
            upstream = h
            if stage == "compare":
                page = _publish_page(Path(res.outputs[-1]), run_dir, pc.compare.note)
            kill("stage")
        total = time.perf_counter() - t_start
        _write_summary(pc, run_dir, results, page, total)
        log.info("pipeline %s: %s; %.1f s", pc.name,
                 ", ".join(f"{k} {v.status}" for k, v in results.items()), total)
        print(f"comparison page: {page}" if page is not None else
              f"pipeline run directory: {run_dir}", file=out)
        return PipelineResult(run_dir, results, page, total)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def _run_stage(pc, stage, jobs, run_dir, marker, h, kill, out) -> tuple[str, list]:
    """Run every job of a stage; (status, paths the stage's run() returned
    that are not among the jobs' expected outputs, i.e. compare's page)."""
    if stage == "particles" and pc.particles.executor == "submitit":
        return _submit_particles(pc, jobs, run_dir, marker, h, False, out), []
    returned = []
    for n, job in enumerate(jobs, 1):
        t0 = time.perf_counter()
        log.info("  %s %d/%d (%s): %s", stage, n, len(jobs), job.label, job.output_dir)
        if not job.complete_check and job.full_validate is not None:
            job.obj = job.full_validate(job.cfg)  # its inputs exist now (made by this stage)
            job.complete_check = True
        r = _run_job(job)
        if stage == "compare":
            returned.append(Path(r))
        log.info("  %s %d/%d (%s): done in %.1f s", stage, n, len(jobs), job.label,
                 time.perf_counter() - t0)
        kill("job")
    return "done", returned


def _publish_page(page: Path, run_dir: Path, note: str = "") -> Path:
    """A copy of the comparison page in the pipeline's run directory, with
    the preset's note (e.g. smoke-test sizes) at the top when step-compare
    has no field for it."""
    import html

    text = page.read_text(encoding="utf-8")
    if note and html.escape(note) not in text:
        box = ("<p style='border:2px solid #c60;padding:0.5em;background:#fff4e5'>"
               f"<b>Note (step-pipeline):</b> {html.escape(note)}</p>")
        i = text.find("<h1")
        j = text.find("</h1>", i) if i >= 0 else -1
        if j >= 0:
            text = text[: j + 5] + "\n" + box + text[j + 5:]
        else:
            k = text.find("<body>")
            text = text[: k + 6] + box + text[k + 6:] if k >= 0 else box + text
    dst = run_dir / "compare.html"
    tmp = run_dir / "compare.html.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, dst)
    return dst


def _write_summary(pc, run_dir, results, page, total):
    summary = {"name": pc.name, "run_dir": str(run_dir), "elapsed_s": round(total, 3),
               "stages": {k: {"status": v.status, "elapsed_s": round(v.elapsed, 3),
                              "hash": v.hash, "outputs": v.outputs} for k, v in results.items()},
               "comparison_page": str(page) if page else None}
    if pc.compare.note:
        summary["note"] = pc.compare.note
    tmp = run_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, run_dir / "summary.json")


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def main(argv=None) -> None:
    """Console-script entry point: ``step-pipeline [key=value ...]``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return
    logging.basicConfig(level=logging.INFO,
                        format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    from .lattice.calibration import CalibrationError
    from .lattice.output import RunFileError
    from .particles.analysis_file import AnalysisError
    from .particles.softness import SoftnessModelError
    from .particles.trajectory import TrajectoryError

    try:
        pc, resolved = load_pipeline_config(argv)
        run_pipeline(pc, resolved)
    except ConfigError as exc:
        log.error("invalid config: %s", exc)
        print(f"step-pipeline: invalid config: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except (PipelineError, TrajectoryError, AnalysisError, SoftnessModelError,
            CalibrationError, RunFileError) as exc:
        log.error("%s", exc)
        print(f"step-pipeline: {exc}", file=sys.stderr)
        raise SystemExit(3) from None


if __name__ == "__main__":
    main()
