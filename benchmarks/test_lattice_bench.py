"""STEP lattice benchmarks, side by side with a plain numpy implementation
of the same model (issue 4, part 6).

Run on demand (deselected by default):

    NUMBA_NUM_THREADS=1 python -m pytest -m benchmark benchmarks/test_lattice_bench.py -s --benchmark-enable

For L = 64, 128, 256, 512 the full model (eps_dev trigger, softness on,
volumetric transient on, default calibration, seed 0, one FFTW thread) is
first run for WARMUP avalanches; from that state STEPModel and the numpy
reference (benchmarks/lattice_numpy_reference.py) run the same
AVALANCHES[L] avalanches (they take the same frames: the two agree to
round-off, tests/test_lattice_numpy_reference.py). Reported per L: ms per
frame and rearrangements per second of both (best of several rounds, each
from the same state), the ratio numpy / ours, and the mean number of
rearranging sites per frame; printed and stored in benchmark.extra_info.

``test_lattice_transform_frames``: the same avalanches at L = 256 with
realspace_max_sources = 0, so every frame uses the whole-field transforms
(the dense regime's frame cost, which does not depend on the number of
busy sites; ours only).

``test_lattice_steady_state_frames``: the same comparison in steady state
(the stress plateau, where avalanches are large and most frames have
several busy sites and a live volumetric transient), with both FFT
planners (lattice/fft_plans.py). The steady state is reached by running
the model to gamma = STEADY_GAMMA once (about 1 min at L = 128, 10 min at
L = 256 on one core; L = 512 only with STEP_BENCH_STEADY_512=1, hours) and
cached in benchmarks/.cache/ (keyed by L, seed, calibration and gamma).
"""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from step_epm.lattice.calibration import load_calibration
from step_epm.lattice.model import ModelOptions, STEPModel

from lattice_numpy_reference import NumpySTEP

pytestmark = pytest.mark.benchmark
SIZES = [64, 128, 256, 512]
WARMUP = 200
AVALANCHES = {64: 300, 128: 150, 256: 80, 512: 40}
ROUNDS_OURS, ROUNDS_NUMPY = 5, 2


def _run(model, n):
    """n avalanches of a STEPModel or NumpySTEP; returns (frames, rearrangements)."""
    f0 = model.frame
    r0 = len(model.rearrangements) if isinstance(model, STEPModel) else model.n_rearrangements
    for _ in range(n):
        model.avalanche()
    r1 = len(model.rearrangements) if isinstance(model, STEPModel) else model.n_rearrangements
    return model.frame - f0, r1 - r0


def _restorer(model, state):
    """A function that resets ``model`` to ``state`` and returns it."""
    def restored():
        model.set_state(state)
        return model
    return restored


def _best(make, n, rounds):
    """Best wall time of ``rounds`` runs of n avalanches, each on make()."""
    best = float("inf")
    for _ in range(rounds):
        model = make()
        t = time.perf_counter()
        frames, rearr = _run(model, n)
        best = min(best, time.perf_counter() - t)
    return best, frames, rearr


@pytest.mark.parametrize("L", SIZES)
def test_lattice_frames(benchmark, L):
    model = STEPModel(L, load_calibration(), ModelOptions(), seed=0, threads=1, snapshots=False)
    _run(model, WARMUP)
    state = model.get_state()
    n = AVALANCHES[L]
    restored = _restorer(model, state)

    ours, frames, rearr = _best(restored, n, ROUNDS_OURS)
    benchmark.pedantic(_run, setup=lambda: ((restored(), n), {}), rounds=ROUNDS_OURS, iterations=1)
    theirs, frames_np, rearr_np = _best(lambda: NumpySTEP(restored()), n, ROUNDS_NUMPY)
    assert (frames_np, rearr_np) == (frames, rearr)  # the same dynamics
    ms, ms_np = 1e3 * ours / frames, 1e3 * theirs / frames
    t = model.rearrangements
    busy = float((t["frame_end"][-rearr:] - t["frame"][-rearr:]).sum())  # site-frames of the last round
    info = {"L": L, "frames": frames, "rearrangements": rearr, "sources_per_frame": busy / frames,
            "ms_per_frame": ms, "rearrangements_per_s": rearr / ours,
            "numpy_ms_per_frame": ms_np, "numpy_rearrangements_per_s": rearr / theirs,
            "ratio_numpy_over_ours": ms_np / ms, "gamma": state["gamma"]}
    benchmark.extra_info.update(info)
    print(f"\nL={L}: {frames} frames, {rearr} rearrangements ({info['sources_per_frame']:.2f} busy sites "
          f"per frame, gamma {state['gamma']:.4f}): ours {ms:.3f} ms/frame, {rearr / ours:.0f} rearr/s; "
          f"numpy {ms_np:.3f} ms/frame, {rearr / theirs:.0f} rearr/s; ratio numpy/ours {ms_np / ms:.1f}")


@pytest.mark.parametrize("L", [256])
def test_lattice_transform_frames(benchmark, L):
    model = STEPModel(L, load_calibration(), ModelOptions(), seed=0, threads=1, snapshots=False)
    _run(model, WARMUP)
    state = model.get_state()
    dense = STEPModel(L, load_calibration(), ModelOptions(), seed=0, threads=1, snapshots=False,
                      realspace_max_sources=0)
    n = AVALANCHES[L]
    restored = _restorer(dense, state)

    ours, frames, rearr = _best(restored, n, ROUNDS_OURS)
    benchmark.pedantic(_run, setup=lambda: ((restored(), n), {}), rounds=ROUNDS_OURS, iterations=1)
    ms = 1e3 * ours / frames
    benchmark.extra_info.update({"L": L, "frames": frames, "rearrangements": rearr,
                                 "transform_ms_per_frame": ms})
    print(f"\nL={L}, transforms every frame: {frames} frames, {rearr} rearrangements: {ms:.3f} ms/frame")


STEADY_GAMMA = 1.0
STEADY_SIZES = [64, 128, 256] + ([512] if os.environ.get("STEP_BENCH_STEADY_512") else [])
STEADY_AVALANCHES = {64: 400, 128: 200, 256: 100, 512: 40}
CACHE = Path(__file__).parent / ".cache"


def steady_state(L, seed=0):
    """The full model's state after loading to STEADY_GAMMA (cached)."""
    cal = load_calibration()
    path = CACHE / f"steady_L{L}_seed{seed}_gamma{STEADY_GAMMA:g}_{cal.sha256()[:12]}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in STEPModel.STATE_FIELDS}
            d.update(gamma=float(z["gamma"]), frame=int(z["frame"]), n_avalanches=int(z["n_avalanches"]),
                     rng=json.loads(str(z["rng"])))
        return d
    model = STEPModel(L, cal, ModelOptions(), seed=seed, threads=1, snapshots=False)
    while model.gamma < STEADY_GAMMA:
        model.avalanche()
    d = model.get_state()
    CACHE.mkdir(exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **{k: d[k] for k in STEPModel.STATE_FIELDS}, gamma=d["gamma"], frame=d["frame"],
             n_avalanches=d["n_avalanches"], rng=json.dumps(d["rng"]))
    os.replace(tmp, path)
    return d


@pytest.mark.parametrize("L", STEADY_SIZES)
def test_lattice_steady_state_frames(benchmark, L):
    state = steady_state(L)
    n = STEADY_AVALANCHES[L]
    models = {planner: STEPModel(L, load_calibration(), ModelOptions(), seed=0, threads=1, snapshots=False,
                                 fft_planner=planner) for planner in ("estimate", "measure")}
    restorers = {planner: _restorer(m, state) for planner, m in models.items()}

    def restored(planner):
        return restorers[planner]()

    t_est, frames, rearr = _best(lambda: restored("estimate"), n, ROUNDS_OURS)
    t_mea, frames_m, rearr_m = _best(lambda: restored("measure"), n, ROUNDS_OURS)
    assert (frames_m, rearr_m) == (frames, rearr)
    benchmark.pedantic(_run, setup=lambda: ((restored("estimate"), n), {}), rounds=ROUNDS_OURS, iterations=1)
    theirs, frames_np, rearr_np = _best(lambda: NumpySTEP(restored("estimate")), n, ROUNDS_NUMPY)
    assert (frames_np, rearr_np) == (frames, rearr)
    t = models["estimate"].rearrangements
    busy = float((t["frame_end"][-rearr:] - t["frame"][-rearr:]).sum())
    ms, ms_m, ms_np = (1e3 * x / frames for x in (t_est, t_mea, theirs))
    info = {"L": L, "gamma": state["gamma"], "frames": frames, "rearrangements": rearr,
            "sources_per_frame": busy / frames, "ms_per_frame": ms, "ms_per_frame_measure": ms_m,
            "rearrangements_per_s": rearr / t_est, "numpy_ms_per_frame": ms_np,
            "ratio_numpy_over_ours": ms_np / ms, "ratio_estimate_over_measure": ms / ms_m}
    benchmark.extra_info.update(info)
    print(f"\nsteady state L={L} (gamma {state['gamma']:.3f}): {frames} frames, {rearr} rearrangements "
          f"({busy / frames:.2f} busy sites per frame): ours {ms:.3f} ms/frame (estimate plans), "
          f"{ms_m:.3f} (measure), {rearr / t_est:.0f} rearr/s; numpy {ms_np:.3f} ms/frame; "
          f"ratio numpy/ours {ms_np / ms:.1f}")
