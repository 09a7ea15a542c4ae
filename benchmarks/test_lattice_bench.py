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
"""

import time

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

    def restored():
        model.set_state(state)
        return model

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

    def restored():
        dense.set_state(state)
        return dense

    ours, frames, rearr = _best(restored, n, ROUNDS_OURS)
    benchmark.pedantic(_run, setup=lambda: ((restored(), n), {}), rounds=ROUNDS_OURS, iterations=1)
    ms = 1e3 * ours / frames
    benchmark.extra_info.update({"L": L, "frames": frames, "rearrangements": rearr,
                                 "transform_ms_per_frame": ms})
    print(f"\nL={L}, transforms every frame: {frames} frames, {rearr} rearrangements: {ms:.3f} ms/frame")
