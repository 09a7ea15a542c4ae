"""``step-pipeline``: the whole chain on the tiny preset in-process (every
stage's output passes its own schema check, the comparison page shows
every figure), a second invocation skips every stage, a kill between
stages resumes and completes, the paper preset's dry run prints its SLURM
jobs and submits nothing, bad overrides are refused naming the field
before any work.

The compare stage needs step-compare (step_epm.calibrate.compare_cli);
without it the pipeline stops after the lattice stage and the tests that
need the page are skipped.
"""

import glob
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from step_epm.config_checks import ConfigError
from step_epm.pipeline import (KILL_ENV, MARKER_DIR, PipelineError, compare_available,
                               load_pipeline_config, main, run_pipeline)
from step_epm.pipeline_config import STAGES

HAS_COMPARE = compare_available()
needs_compare = pytest.mark.skipif(
    not HAS_COMPARE, reason="step-compare (step_epm.calibrate.compare_cli) cannot be imported yet")
UNTIL = "compare" if HAS_COMPARE else "lattice"
RUN_STAGES = STAGES[: STAGES.index(UNTIL) + 1]


def _tiny(root, *extra):
    return load_pipeline_config(["pipeline=tiny", f"root={root}", f"until={UNTIL}",
                                 *extra])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny pipeline, run once in-process."""
    root = tmp_path_factory.mktemp("pipeline") / "outputs"
    pc, resolved = _tiny(root)
    out = io.StringIO()
    res = run_pipeline(pc, resolved, out=out)
    return root, pc, res, out.getvalue()


def test_tiny_pipeline_runs_every_stage_and_outputs_pass_their_schema(tiny):
    from step_epm.lattice.calibration import load_calibration
    from step_epm.lattice.output import check_schema, load_run
    from step_epm.particles import analysis_file, trajectory

    root, pc, res, printed = tiny
    assert res.statuses == {s: "done" for s in RUN_STAGES}
    assert res.run_dir == root / "pipeline" / Path(pc.output_dir).name
    assert Path(pc.output_dir).name.startswith("tiny_")
    markers = {s: json.loads((res.run_dir / MARKER_DIR / f"{s}.json").read_text())
               for s in RUN_STAGES}
    for s, m in markers.items():
        assert m["status"] == "done" and m["hash"] == res.stages[s].hash
        assert all(Path(p).exists() for p in m["outputs"])
    trajs = sorted(glob.glob(str(root / "particles" / "*" / "trajectory.h5")))
    assert len(trajs) == 3 and trajs == sorted(markers["particles"]["outputs"])   # 2 train, 1 held out
    for t in trajs:
        trajectory.validate(t)
        analysis_file.validate(Path(t).with_name("analysis.h5"))
    assert any(p.endswith("model.h5") for p in markers["softness"]["outputs"])
    cal_path = next(p for p in markers["calibrate"]["outputs"] if p.endswith("calibration.json"))
    cal = load_calibration(cal_path)
    assert cal.scalars
    # calibrated on the training seeds only: the held-out seed is not an input
    used = {i["path"] for i in cal.inputs}
    assert sum("seed2_" in p for p in used) == 0 and sum("seed0_" in p for p in used) == 2
    lat = markers["lattice"]["outputs"]
    assert len(lat) == 4
    for p in lat:
        attrs = check_schema(p)
        # the particle box's size: N = 128 at the calibrated density and site side, at least 8
        side = (128 / cal["number_density"]) ** 0.5
        assert int(attrs["L"]) == max(8, round(side / cal["site_size"]))
        assert attrs["calibration_sha256"] == cal.sha256()
        assert load_run(p)["avalanches"]["size"].size > 0
    assert {Path(p).parent.name.split("_L")[0] for p in lat} == \
        {"step", "classic", "no_volumetric", "e2_trigger"}
    assert (res.run_dir / "pipeline.yaml").is_file()
    assert (res.run_dir / "pipeline.log").is_file()
    summary = json.loads((res.run_dir / "summary.json").read_text())
    assert set(summary["stages"]) == set(RUN_STAGES)


@needs_compare
def test_comparison_page_lists_every_figure(tiny):
    root, pc, res, printed = tiny
    assert res.page == res.run_dir / "compare.html"
    assert f"comparison page: {res.page}" in printed
    page = res.page.read_text()
    original = Path(json.loads((res.run_dir / MARKER_DIR / "compare.json").read_text())
                    ["outputs"][-1])
    figures = json.loads((original.parent / "summary.json").read_text())["figures"]
    pngs = glob.glob(str(original.parent / "*.png"))
    assert len(figures) == len(pngs) > 0
    assert page.count("<img") == len(figures)
    assert "smoke-test" in page  # the preset's note on the page
    for label in ("step", "classic", "no_volumetric", "e2_trigger"):
        assert label in page
    # the closure table on the held-out seed, with the calibration's status
    summary = json.loads((original.parent / "summary.json").read_text())
    closure = summary["closure"]
    assert closure["held_out"] is True and len(closure["rows"]) == 13
    assert closure["passed"] + closure["failed"] + closure["undecided"] == 13
    assert "Closure: particles (held-out)" in page and "Calibration status" in page
    assert summary["calibration_status"]["calibrated"] is False


def test_second_invocation_skips_every_stage(tiny, caplog):
    root, pc, res, _ = tiny
    pc2, resolved = _tiny(root)
    assert pc2.output_dir == pc.output_dir
    with caplog.at_level(logging.INFO, logger="step_epm.pipeline"):
        again = run_pipeline(pc2, resolved, out=io.StringIO())
    assert again.statuses == {s: "skipped" for s in RUN_STAGES}
    assert again.elapsed < 60
    for i, s in enumerate(RUN_STAGES, 1):
        assert f"stage {i}/{len(RUN_STAGES)} {s}: skipped" in caplog.text
    assert again.page == res.page


@pytest.mark.parametrize("kill_at,seed", [("stage:3", 1), ("job:1", 2)])
def test_kill_resumes_and_completes(tiny, tmp_path, kill_at, seed):
    """A changed lattice stage (another seed): the first three stages are
    skipped; the process is SIGKILLed after the third stage (between stages)
    or after the lattice stage's first run (inside a stage); the same
    command then completes the lattice stage."""
    root, pc, res, _ = tiny
    overrides = ["pipeline=tiny", f"root={root}", "until=lattice", f"lattice.seeds=[{seed}]",
                 "lattice.models=[step,classic]"]
    run_dir = Path(load_pipeline_config(overrides)[0].output_dir)
    args = [sys.executable, "-m", "step_epm.pipeline", *overrides]
    env = dict(os.environ, MPLBACKEND="Agg", **{KILL_ENV: kill_at})
    first = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == -9, first.stderr[-3000:]
    for s in ("particles", "softness", "calibrate"):
        assert f"{s}: skipped" in first.stderr
        assert (run_dir / MARKER_DIR / f"{s}.json").is_file()
    assert not (run_dir / MARKER_DIR / "lattice.json").exists()
    done_before = sorted(glob.glob(str(root / "lattice" / "*" / f"*_seed{seed}" / "lattice.h5")))
    assert len(done_before) == (1 if kill_at.startswith("job") else 0)
    env.pop(KILL_ENV)
    second = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "stage 4/4 lattice: finished" in second.stderr
    if done_before:
        assert "run already complete" in second.stderr
    marker = json.loads((run_dir / MARKER_DIR / "lattice.json").read_text())
    assert len(marker["outputs"]) == 2
    assert all(f"_seed{seed}" in p and Path(p).is_file() for p in marker["outputs"])
    assert f"pipeline run directory: {run_dir}" in second.stdout


def test_paper_dry_run_prints_the_jobs_and_submits_nothing(tmp_path, capsys):
    root = tmp_path / "outputs"
    main(["pipeline=paper", f"root={root}", "dry_run=true", f"until={UNTIL}",
          "particles.slurm.partition=compute"])
    text = capsys.readouterr().out
    jobs = [line for line in text.splitlines() if line.strip().startswith("job ")]
    assert len(jobs) == 25  # 20 training + 5 analysis runs
    assert "step-particles particles=paper_n4000 system.seed=19 output_dir=" in text
    assert "step-particles particles=paper_n1e5 system.seed=4 output_dir=" in text
    assert '"slurm_partition": "compute"' in text and '"timeout_min": 2880' in text
    assert "cluster=slurm" in text
    for stage in RUN_STAGES[1:]:
        assert f"{stage}: " in text
    assert not root.exists()  # nothing run, nothing submitted


@pytest.mark.parametrize("override,field", [
    ("particles.train.n=3", "system.n"),
    ("particles.train.d_gamma=-1", "shear.d_gamma"),
    ("particles.train.n=abc", "particles.train.n"),
    ("particles.train.seeds=[]", "particles.train.seeds"),
    ("particles.train.preset=nonexistent", "nonexistent"),
    ("+particles.train.bogus=1", "particles.train.bogus"),
    ("particles.executor=cluster", "particles.executor"),
    ("softness.overrides=['ensemble.n_subsets=0']", "ensemble.n_subsets"),
    ("softness.overrides=['output_dir=x']", "output_dir is set by the pipeline"),
    ("calibrate.overrides=['measure.lags=[0,2]']", "measure.lags"),
    ("lattice.L=4", "lattice.L"),
    ("lattice.models=[step,bogus]", "bogus"),
    ("lattice.overrides=['model.trigger=sxy']", "model.trigger"),
    ("until=everything", "until"),
    pytest.param("compare.overrides=['s_min=0']", "s_min", marks=needs_compare),
])
def test_bad_override_is_refused_naming_the_field_before_any_work(tmp_path, override, field):
    root = tmp_path / "outputs"
    with pytest.raises(ConfigError) as exc:
        pc, resolved = load_pipeline_config(["pipeline=tiny", f"root={root}", override])
        run_pipeline(pc, resolved, out=io.StringIO())
    assert field in str(exc.value)
    assert not root.exists()


def test_command_line_refuses_a_bad_override_with_exit_code_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["pipeline=tiny", f"root={tmp_path / 'outputs'}", "particles.train.n=3"])
    assert exc.value.code == 2
    assert "system.n = 3" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()


def test_missing_step_compare_is_a_clear_error_before_any_work(tmp_path, monkeypatch):
    import step_epm.pipeline as pipeline

    monkeypatch.setattr(pipeline, "COMPARE_MODULE", "step_epm.calibrate.no_such_module")
    root = tmp_path / "outputs"
    pc, resolved = load_pipeline_config(["pipeline=tiny", f"root={root}", "until=compare"])
    with pytest.raises(PipelineError, match="step-compare"):
        run_pipeline(pc, resolved, out=io.StringIO())
    assert not root.exists()
