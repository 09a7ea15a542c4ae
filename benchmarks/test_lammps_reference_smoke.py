"""Checks of the LAMMPS reference (lammps_reference.py) against a brute-force
O(N^2) minimum-image numpy evaluation of the same energy, forces and stress.

Run on demand: ``python -m pytest -m benchmark benchmarks/test_lammps_reference_smoke.py -s``.
Fails (never skips) when LAMMPS cannot be started, with the reason.
"""
import numpy as np
import pytest

from lammps_reference import LammpsHertzian, lammps_available, random_packing

pytestmark = pytest.mark.benchmark


def brute_force(pos, radii, lx, ly, xy):
    """Energy, forces (N, 2) and stress (2, 2) (our convention) by summing
    every pair at its minimum image in the box a = (lx, 0), b = (xy, ly)
    (exact when all contacts are shorter than half the cell widths)."""
    d = pos[None, :, :] - pos[:, None, :]          # r_ij = x_j - x_i
    ny = np.round(d[..., 1] / ly)
    d[..., 0] -= ny * xy
    d[..., 1] -= ny * ly
    d[..., 0] -= np.round(d[..., 0] / lx) * lx
    r = np.sqrt(np.sum(d**2, axis=-1))
    s = radii[:, None] + radii[None, :]
    touch = (r < s) & ~np.eye(len(radii), dtype=bool)
    gap = np.where(touch, 1.0 - r / s, 0.0)
    rr = np.where(touch, r, 1.0)
    du = np.where(touch, -2.5 / s * gap**1.5, 0.0)      # u'(r)
    energy = 0.5 * np.sum(gap**2.5)
    forces = np.sum((du / rr)[..., None] * d, axis=1)   # F_i = sum_j u' r_ij/r
    stress = 0.5 * np.einsum("ij,ija,ijb->ab", du / rr, d, d) / (lx * ly)
    return energy, forces, stress


@pytest.fixture(scope="module")
def state():
    ok, why = lammps_available()
    assert ok, why
    pos, radii, side = random_packing(200, phi=0.9, seed=3)
    xy = 0.3 * side
    pos[:, 0] += 0.3 * pos[:, 1]                     # affine into the tilted cell
    return pos, radii, side, side, xy


def _errors(style, state, **kw):
    pos, radii, lx, ly, xy = state
    e0, f0, s0 = brute_force(pos, radii, lx, ly, xy)
    with LammpsHertzian(pos, radii, lx, ly, xy, style=style, **kw) as lmp:
        e, f, s = lmp.energy_forces_stress()
        assert np.allclose(lmp.positions, pos, rtol=0, atol=1e-12)
    return (abs(e - e0) / abs(e0), np.max(np.abs(f - f0)),
            np.max(np.abs(s - s0)) / np.max(np.abs(s0)))


def test_lepton_matches_brute_force(state):
    de, df, ds = _errors("lepton", state)
    print(f"\nlepton: rel. error energy {de:.2e}, stress {ds:.2e}; "
          f"max abs. force error {df:.2e}")
    assert de < 1e-10 and ds < 1e-10 and df < 1e-12


@pytest.mark.parametrize("points", [10000, 100000])
def test_table_close_to_brute_force(state, points):
    de, df, ds = _errors("table", state, table_points=points)
    print(f"\ntable {points}: rel. error energy {de:.2e}, stress {ds:.2e}; "
          f"max abs. force error {df:.2e}")
    assert de < 1e-5 and ds < 1e-5 and df < 1e-2


def test_fire_converges_and_set_state_shears(state):
    pos, radii, lx, ly, xy = state
    with LammpsHertzian(pos, radii, lx, ly, xy) as lmp:
        res = lmp.minimize_fire(ftol=1e-12)
        assert res.stop_criterion == "force tolerance" and res.max_force < 1e-12
        f_exact = brute_force(res.positions, radii, lx, ly, xy)[1]
        assert np.max(np.linalg.norm(f_exact, axis=1)) < 2e-12
        dg = 1e-4
        sheared = res.positions.copy()
        sheared[:, 0] += dg * sheared[:, 1]
        lmp.set_state(sheared, xy=xy + dg * ly)
        e, f, s = lmp.energy_forces_stress()
        e0, f0, s0 = brute_force(sheared, radii, lx, ly, xy + dg * ly)
        assert abs(e - e0) < 1e-10 * e0 and np.allclose(s, s0, rtol=1e-10, atol=0)
        step = lmp.minimize_fire(ftol=1e-12)
        assert step.max_force < 1e-12
        assert np.max(np.abs(step.positions - sheared)) < 1.0   # same image kept
