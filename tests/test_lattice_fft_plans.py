"""FFTW planning of the lattice (lattice/fft_plans.py): estimate plans are
deterministic whatever wisdom the process holds; measure plans are
re-created bit for bit from the wisdom a run stores."""
import logging

import numpy as np
import pyfftw
import pytest

from step_epm.lattice.fft_plans import Planner

L = 256  # at this size FFTW_MEASURE picks another algorithm than FFTW_ESTIMATE here


def inverse(planner, spectrum):
    """c2r of ``spectrum`` with a plan made by ``planner`` (planned first:
    MEASURE overwrites the arrays)."""
    a = pyfftw.empty_aligned(spectrum.shape, dtype=complex)
    b = pyfftw.empty_aligned((L, L), dtype=float)
    plan = planner.plan(a, b, (0, 1), "FFTW_BACKWARD", destroy_input=True)
    a[...] = spectrum
    plan()
    return b.copy()


@pytest.fixture(scope="module")
def spectrum():
    rng = np.random.default_rng(3)
    x = np.fft.rfft2(rng.standard_normal((L, L)))
    return x


def test_estimate_plans_ignore_wisdom_in_the_process(spectrum):
    first = inverse(Planner("estimate"), spectrum)
    measured = Planner("measure")
    inverse(measured, spectrum)
    assert measured.finish()  # the process now holds wisdom for this transform
    again = inverse(Planner("estimate"), spectrum)
    assert np.array_equal(first, again)
    np.testing.assert_allclose(first, np.fft.irfft2(spectrum, s=(L, L)), atol=1e-12)


def test_measure_plans_are_recreated_from_their_wisdom(spectrum):
    p = Planner("measure")
    ref = inverse(p, spectrum)
    wisdom = p.finish()
    np.testing.assert_allclose(ref, np.fft.irfft2(spectrum, s=(L, L)), atol=1e-12)
    for _ in range(3):
        Planner("measure")  # other plans in between: replaced by the stored wisdom below
        inverse(Planner("measure"), spectrum)
        replay = Planner("measure", wisdom)
        assert replay.replayed
        assert np.array_equal(inverse(replay, spectrum), ref)
        assert replay.finish() == wisdom


def test_unusable_wisdom_warns_and_measures(spectrum, caplog):
    with caplog.at_level(logging.WARNING, logger="step_epm.lattice.fft_plans"):
        p = Planner("measure", b"(not fftw wisdom)")
    assert not p.replayed and "does not load here" in caplog.text
    np.testing.assert_allclose(inverse(p, spectrum), np.fft.irfft2(spectrum, s=(L, L)), atol=1e-12)


def test_unknown_planner_is_refused():
    with pytest.raises(ValueError, match="estimate"):
        Planner("patient")
