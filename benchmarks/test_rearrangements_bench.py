"""D2min / local strain benchmarks and agreement, side by side with OVITO
(issue 5, part 6).

Run on demand (deselected by default; ovito comes with the ``bench`` extra):

    pip install -e ".[test,bench]"
    NUMBA_NUM_THREADS=2 python -m pytest -m benchmark benchmarks/test_rearrangements_bench.py -s

Frames: N = 4000, a minimised state (``jammed_packing(4000, 0.9, seed=0)``,
max|F| < 1e-12) sheared affinely to gamma = 0.3 (a tilted cell, so boundary
pairs carry images through a sheared box) and, as the second frame, the
state sheared by 1e-3 more and re-minimised (non-affine relaxation, a few
rearrangements). N = 1e5 (timing only): random positions at phi = 0.9
(minimising 1e5 disks takes minutes and does not change the work), second
frame affine 1e-3 plus Gaussian displacements of 0.01.

OVITO (AtomicStrainModifier, cutoff 2, affine mapping off, minimum image)
runs on OVITO_THREAD_COUNT = 2 threads, ours on NUMBA_NUM_THREADS (2 by
benchmarks/conftest.py). Timings are best-of-several per frame pair, both
codes in the same process one after the other; the ratio OVITO / ours is
printed and stored in benchmark.extra_info. Where ovito cannot be imported
the module is skipped (pytest.importorskip).
"""

import numpy as np
import pytest

from step_epm.particles import jammed_packing, minimize, random_state
from step_epm.particles.rearrangements import local_deformation, neighbour_images

from ovito_reference import (OvitoAtomicStrain, carried_frames, ovito_available,
                             ovito_neighbour_pairs)

pytestmark = pytest.mark.benchmark
ovito_available(threads=2)          # sets OVITO_THREAD_COUNT before the import
pytest.importorskip("ovito")

R_D = 2.0
_frames = {}


def _frame_pair(n):
    """(pos0, pos1, radii, box0, box1), frame 0 wrapped, images carried."""
    if n not in _frames:
        if n <= 4000:
            base, _ = jammed_packing(n, 0.9, seed=0)
            s0 = base.sheared(0.3)
            s1, _ = minimize(s0.sheared(1e-3), 1e-12, raise_on_failure=True)
            pos1 = s1.pos
        else:
            s0 = random_state(n, 0.9, seed=0).sheared(0.3)
            s1 = s0.sheared(1e-3)
            pos1 = s1.pos + np.random.default_rng(0).normal(scale=0.01, size=s1.pos.shape)
        box0 = (s0.Lx, s0.Ly, s0.gamma)
        box1 = (s1.Lx, s1.Ly, s1.gamma)
        pos0w, pos1w = carried_frames(s0.pos, pos1, box0, box1)
        _frames[n] = (pos0w, pos1w, s0.radii, box0, box1)
    return _frames[n]


def test_agreement_with_ovito():
    """Neighbour sets, D2min and J agree with OVITO at N = 4000.

    Tolerances: D2min and J are the same least-squares fit summed in a
    different order (OVITO sums neighbours in its own order, in double
    precision), so they agree to round-off relative to the sums: rtol 1e-8,
    with an absolute floor for D2min of 1e-14 * <|r|^2> (a residual is a
    difference of O(|r|^2 ~ 2)-sized terms, so its round-off is ~1e-16 *
    |r|^2 per term times ~10 terms and a condition number of a few) and
    1e-12 on J (entries ~1).
    """
    pos0, pos1, radii, box0, box1 = _frame_pair(4000)
    ours = local_deformation(pos0, pos1, radii, *box0, *box1, r_d=R_D)
    ov = OvitoAtomicStrain(pos0, box0, cutoff=R_D)
    d2sum, J, invalid = ov.compute(pos1, box1)

    # neighbour sets: OVITO's finder vs neighbour_images (pairs and images)
    off, nbr, im1, im2 = neighbour_images(pos0, *box0, R_D)
    k = np.repeat(np.arange(len(pos0)), np.diff(off))
    a1 = np.array([box0[0], 0.0])
    a2 = np.array([box0[2] * box0[1], box0[1]])
    r = pos0[nbr] - pos0[k] + im1[:, None] * a1 + im2[:, None] * a2
    dist = np.hypot(r[:, 0], r[:, 1])
    idx, vec = ovito_neighbour_pairs(pos0, box0, R_D)
    ovdist = np.hypot(vec[:, 0].astype(float), vec[:, 1].astype(float))
    near_cut = np.sum(np.abs(dist - R_D) < 1e-9) + np.sum(np.abs(ovdist - R_D) < 1e-6)
    print(f"\nN=4000: {len(nbr)} neighbour entries ours, {len(idx)} OVITO; "
          f"{near_cut} within 1e-9 (ours) / 1e-6 (OVITO, float32 vectors) of the cutoff")
    ours_pairs = set(zip(k.tolist(), nbr.tolist()))
    ov_pairs = set(zip(idx[:, 0].tolist(), idx[:, 1].tolist()))
    assert len(idx) == len(ov_pairs)          # one image per pair
    diff = ours_pairs ^ ov_pairs
    assert not diff, f"neighbour sets differ in {len(diff)} pairs, e.g. {sorted(diff)[:5]}"
    # same images: OVITO's float32 vector matches ours entry by entry
    order = np.lexsort((idx[:, 1], idx[:, 0]))
    np.testing.assert_allclose(vec[order], r, atol=1e-4)

    np.testing.assert_array_equal(invalid, np.isnan(ours.d2min))
    ok = ~invalid
    d2 = d2sum / ours.n_neighbours
    floor = 1e-14 * np.mean(dist ** 2)
    err_d2 = np.abs(d2[ok] - ours.d2min[ok]) / np.maximum(np.abs(ours.d2min[ok]), floor / 1e-8)
    err_J = np.abs(J[ok] - ours.J[ok])
    print(f"D2min: max relative error {err_d2.max():.2e} (floor {floor:.1e}); "
          f"J: max abs error {err_J.max():.2e}; D2min range "
          f"[{np.nanmin(ours.d2min):.2e}, {np.nanmax(ours.d2min):.2e}]; "
          f"{np.sum(invalid)} particles without a fit")
    np.testing.assert_allclose(d2[ok], ours.d2min[ok], rtol=1e-8, atol=floor)
    np.testing.assert_allclose(J[ok], ours.J[ok], rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("n", [4000, 100000])
def test_frame_pair_time(benchmark, n):
    """ms per frame pair (neighbour search + fit + strains), ours vs OVITO."""
    pos0, pos1, radii, box0, box1 = _frame_pair(n)
    args = (pos0, pos1, radii, *box0, *box1)
    local_deformation(*args)
    ov = OvitoAtomicStrain(pos0, box0, cutoff=R_D)
    rounds = 30 if n <= 4000 else 7
    theirs_before = ov.time_pair(pos1, box1, repeats=rounds)
    benchmark.pedantic(local_deformation, args=args, rounds=rounds, warmup_rounds=1)
    theirs_after = ov.time_pair(pos1, box1, repeats=rounds)
    ours = benchmark.stats.stats.min
    theirs = min(theirs_before, theirs_after)
    benchmark.extra_info["ovito_ms"] = theirs * 1e3
    benchmark.extra_info["ratio_ovito_over_ours"] = theirs / ours
    print(f"\nN={n}: ours {ours * 1e3:.2f} ms (median {benchmark.stats.stats.median * 1e3:.2f}) "
          f"per frame pair; OVITO {theirs * 1e3:.2f} ms; ratio OVITO/ours {theirs / ours:.2f}")
