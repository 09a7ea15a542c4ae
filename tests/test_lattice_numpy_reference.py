"""The plain numpy reference of the benchmarks (benchmarks/lattice_numpy_reference.py)
runs the same dynamics as STEPModel: from the same state and RNG state the two
take the same frames and agree to round-off on the strains and the softness.

The reference does every frame by whole-field numpy.fft transforms; the
model adds real-space kernels for few sources (realspace_max_sources = 8)
or uses pyfftw transforms (= 0), so both of its paths are compared.
"""
import sys
from pathlib import Path

import numpy as np
import pytest

from step_epm.lattice.calibration import load_calibration
from step_epm.lattice.model import ModelOptions, STEPModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from lattice_numpy_reference import NumpySTEP  # noqa: E402


@pytest.fixture(scope="module")
def cal():
    return load_calibration()


@pytest.mark.parametrize("options,realspace_max", [
    (ModelOptions(), 8), (ModelOptions(), 0),
    (ModelOptions(softness=False), 8), (ModelOptions(trigger="e2", volumetric=False), 8)])
def test_numpy_reference_agrees_with_model(cal, options, realspace_max):
    L = 32
    m = STEPModel(L, cal, options, seed=1, snapshots=False, realspace_max_sources=realspace_max)
    for _ in range(60):  # past the first, single-site avalanches
        m.avalanche()
    ref = NumpySTEP(m)
    n0, f0 = len(m.rearrangements), m.frame
    for _ in range(40):
        m.avalanche()
        ref.avalanche()
        assert ref.frame == m.frame
        assert ref.n_rearrangements == len(m.rearrangements) - n0
        assert ref.gamma == pytest.approx(m.gamma, rel=1e-12)
        for f in ("e1", "e2", "k"):
            np.testing.assert_allclose(getattr(ref, f), getattr(m, f), rtol=0, atol=1e-13, err_msg=f)
        np.testing.assert_allclose(ref.S, m.S, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(ref.u, m.u)  # same draws, same sites, same order
    assert m.frame - f0 >= 100 and ref.n_rearrangements >= 40
