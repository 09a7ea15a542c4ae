"""Tests of particles/structure.py and particles/softness.py (SPEC.md section 3, issue 5).

Tolerances follow from the maths:
- hat values at dyadic distances with dyadic r_m are computed without
  round-off, so the kernel must return them exactly;
- the numpy brute force and the lattice-shift / gamma + 1 identities only
  reorder sums and re-round image vectors of lengths <= ~100: each hat
  value (<= 1) then differs by ~1e-14 at most, and G by a few 1e-14;
  rtol = 1e-12 with an absolute floor of 1e-12 (for hats near 0);
- the saved model is the same float64 arrays, so softness after a round
  trip must be bit-identical.
"""

import itertools

import h5py
import numpy as np
import pytest

from step_epm.config_checks import ConfigError
from step_epm.particles import random_state
from step_epm.particles.softness import (SCHEMA, EnsembleParams, SoftnessModel,
                                         SoftnessModelError, train_ensemble)
from step_epm.particles.structure import (RadialHats, structure_function_sets,
                                          structure_functions)

R_A = np.arange(0.5, 3.51, 0.25)                  # uniform, r_{-1} = 0.25, r_c = 3.75
R_B = np.array([0.8, 1.0, 1.3, 1.9, 2.6, 3.2])    # non-uniform, r_c = 3.8
TILTS = [0.0, 0.37, 1.62, -2.45]


# --------------------------------------------------------------------------
# numpy reference
# --------------------------------------------------------------------------

def reference_structure(pos, species, Lx, Ly, tilt, r_m):
    """O(N^2) brute force: every pair and every image shift m1, m2 in -2..2
    (after moving the pair vector into the central fractional cell) adds
    the analytic hat values; self-pairs are excluded."""
    edges = RadialHats(r_m).edges
    nh = len(r_m)
    h = np.array([[Lx, tilt * Ly], [0.0, Ly]])
    d = pos[None, :, :] - pos[:, None, :]          # [k, i] = x_i - x_k
    s = d @ np.linalg.inv(h).T
    d = (s - np.round(s)) @ h.T
    n = len(pos)
    out = np.zeros((n, 2 * nh))
    for m1, m2 in itertools.product(range(-2, 3), repeat=2):
        v = d + m1 * h[:, 0] + m2 * h[:, 1]
        r = np.linalg.norm(v, axis=-1)
        if m1 == 0 and m2 == 0:
            np.fill_diagonal(r, np.inf)
        for m in range(nh):
            lo, c, hi = edges[m], edges[m + 1], edges[m + 2]
            g = np.clip(np.minimum((r - lo) / (c - lo), (hi - r) / (hi - c)), 0.0, None)
            for sp in (0, 1):
                out[:, sp * nh + m] += (g * (species[None, :] == sp)).sum(axis=1)
    return out


def _moved_by_lattice(pos, Lx, Ly, tilt, seed):
    """Positions with every particle shifted by a random lattice vector."""
    rng = np.random.default_rng(seed)
    m = rng.integers(-3, 4, size=(len(pos), 2))
    return pos + m[:, :1] * np.array([Lx, 0.0]) + m[:, 1:] * np.array([tilt * Ly, Ly])


# --------------------------------------------------------------------------
# structure functions
# --------------------------------------------------------------------------

@pytest.mark.parametrize("tilt", TILTS)
def test_structure_matches_brute_force(tilt):
    st = random_state(160, 0.9, seed=11)
    pos = _moved_by_lattice(st.pos, st.Lx, st.Ly, tilt, seed=5)
    for r_m in (R_A, R_B):
        got = structure_functions(pos, st.species, st.Lx, st.Ly, tilt, r_m)
        ref = reference_structure(pos, st.species, st.Lx, st.Ly, tilt, r_m)
        assert got.shape == (st.n, 2 * len(r_m))
        assert ref.sum() > 10 * st.n      # dense enough to mean something
        np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)


def test_structure_lattice_and_gamma_invariance():
    st = random_state(200, 0.9, seed=4)
    base = structure_functions(st.pos, st.species, st.Lx, st.Ly, 0.37, R_B)
    for tilt in (0.37, 1.37, -2.63):
        moved = _moved_by_lattice(st.pos, st.Lx, st.Ly, tilt, seed=9)
        got = structure_functions(moved, st.species, st.Lx, st.Ly, tilt, R_B)
        np.testing.assert_allclose(got, base, rtol=1e-12, atol=1e-12)


def test_structure_sets_share_search_bitwise():
    st = random_state(200, 0.9, seed=2)
    both = structure_function_sets(st.pos, st.species, st.Lx, st.Ly, 1.62, [R_A, R_B])
    for r_m, got in zip((R_A, R_B), both):
        np.testing.assert_array_equal(got, structure_functions(st.pos, st.species, st.Lx,
                                                               st.Ly, 1.62, r_m))


R_HAT = [0.5, 1.0, 1.5, 2.0]      # edges 0, 0.5, 1, 1.5, 2, 2.5
R_UNEVEN = [1.0, 1.25, 2.0]       # edges 0.75, 1, 1.25, 2, 2.75


@pytest.mark.parametrize("r_m, dist, expected", [
    (R_HAT, 1.25, {1: 0.5, 2: 0.5}),
    (R_HAT, 1.0, {1: 1.0}),
    (R_HAT, 0.25, {0: 0.5}),                    # rising side of the first hat, from r_{-1} = 0
    (R_HAT, 2.25, {3: 0.5}),                    # falling side of the last hat, to r_M = 2.5
    (R_HAT, 2.5, {}),                           # at the cutoff
    (R_UNEVEN, 1.75, {1: 0.25 / 0.75, 2: 0.5 / 0.75}),
    (R_UNEVEN, 0.875, {0: 0.125 / 0.25}),
])
def test_hat_values_of_a_pair(r_m, dist, expected):
    """Small particle 0 and large particle 1 at distance dist, once across
    the periodic x boundary of a tilted box (all coordinates dyadic)."""
    M = len(r_m)
    species = np.array([0, 1])
    for p0, p1 in (([5.0, 5.0], [5.0 + dist, 5.0]), ([0.125, 3.0], [20.125 - dist, 3.0])):
        g = structure_functions(np.array([p0, p1]), species, 20.0, 20.0, 0.375, r_m)
        want = np.zeros((2, 2 * M))
        for m, val in expected.items():
            want[0, M + m] = val     # particle 0 sees a large neighbour
            want[1, m] = val         # particle 1 sees a small neighbour
        np.testing.assert_array_equal(g, want)


def test_structure_input_errors():
    st = random_state(50, 0.9, seed=0)   # L ~ 8: too narrow for r_c = 4.25
    with pytest.raises(ValueError, match="r_c = 4.25"):
        structure_functions(st.pos, st.species, st.Lx, st.Ly, 0.0, np.arange(0.5, 4.01, 0.25))
    with pytest.raises(ValueError, match="strictly increasing"):
        RadialHats([1.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="must be >= 0"):
        RadialHats([1.0, 2.5])
    with pytest.raises(ValueError, match="at least 2"):
        RadialHats([1.0])
    with pytest.raises(ValueError, match="species"):
        structure_functions(st.pos, np.full(st.n, 2), st.Lx, st.Ly, 0.0, [0.5, 1.0])
    with pytest.raises(ValueError, match="pos"):
        structure_functions(st.pos[:, :1], st.species, st.Lx, st.Ly, 0.0, [0.5, 1.0])


# --------------------------------------------------------------------------
# SVM ensemble
# --------------------------------------------------------------------------

def test_ensemble_recovers_planted_rule():
    """Features x ~ N(0, diag(scales^2)), label = [u . x + c > 0] (c small,
    so classes are near balanced). Standardising is an invertible affine
    map, so the Bayes boundary in original units is exactly u; the data
    are separable, so with ~800 training particles per class in 8
    dimensions a max-margin fit leaves a gap of order 1/800 of the
    projected spread and tilts by a few degrees at most: cosine > 0.99
    (angle < 8 deg) and accuracies > 0.95 (a boundary error of a few
    percent of the spread misclassifies ~1-2%) have a wide margin."""
    rng = np.random.default_rng(0)
    scales = np.array([0.5, 1.0, 2.0, 4.0, 1.0, 3.0, 0.7, 1.5])
    u = rng.normal(size=8)
    c = 0.3

    def draw(n):
        x = rng.normal(size=(n, 8)) * scales
        return x, (x @ u + c > 0).astype(int), rng.integers(0, 2, n)

    x, labels, species = draw(8000)
    r_m = [1.0, 1.5, 2.0, 2.5]                   # only fixes F = 8
    params = EnsembleParams(n_subsets=2, n_seeds=2, subset_size=1000, seed=3)
    model = train_ensemble([x], labels, species, [r_m], params)
    tab = model.table()
    assert model.n_hyperplanes(0) == model.n_hyperplanes(1) == 4
    assert np.all(tab["val_acc"] > 0.95) and np.all(tab["train_acc"] > 0.95)
    assert set(tab["C"]) <= set(params.C_grid)
    assert np.all(tab["n_iter"] < params.max_iter)
    for s in (0, 1):
        wf = model.weight_function(s, 0).ravel()
        assert wf @ u / (np.linalg.norm(wf) * np.linalg.norm(u)) > 0.99
        assert not model.training[str(s)]["subset_size_reduced"]
    xf, lf, sf = draw(4000)
    S = model.decision([xf], sf)
    assert np.mean((S > 0) == (lf == 1)) > 0.95
    # standardised weights: the unit-vector direction of each hyperplane, so
    # they equal the original-unit weights times each hyperplane's scale
    hp = model.hyperplanes[0]
    for s in (0, 1):
        sel = hp.species == s
        a, _ = hp.affine()
        want = (a[:, sel] * hp.scale[sel].T).mean(axis=1).reshape(2, -1)
        np.testing.assert_allclose(model.weight_function(s, 0, standardised=True), want,
                                   rtol=1e-12, atol=1e-15)
        assert np.all(np.abs(model.weight_function(s, 0, standardised=True)) <= 1.0)


def _training_data():
    """Structure functions of three random states, labels from a planted
    rule on them (with 10% noise)."""
    feats, labels, species = [[], []], [], []
    rng = np.random.default_rng(1)
    for seed, tilt in ((0, 0.1), (1, 0.8), (2, -1.3)):
        st = random_state(300, 0.9, seed)
        ga, gb = structure_function_sets(st.pos, st.species, st.Lx, st.Ly, tilt, [R_A, R_B])
        feats[0].append(ga)
        feats[1].append(gb)
        score = ga[:, 3] - ga[:, 16] + rng.normal(0.0, 0.3, st.n)
        labels.append((score > np.median(score)).astype(int))
        species.append(st.species)
    return [np.concatenate(f) for f in feats], np.concatenate(labels), np.concatenate(species)


@pytest.fixture(scope="module")
def small_model():
    feats, labels, species = _training_data()
    params = EnsembleParams(n_subsets=2, n_seeds=1, subset_size=120, C_grid=(0.1, 1.0))
    prov = {"training_files": ["a.h5"], "d_hard": 1e-4}
    return train_ensemble(feats, labels, species, [R_A, R_B], params, provenance=prov)


def test_training_is_deterministic(small_model):
    feats, labels, species = _training_data()
    again = train_ensemble(feats, labels, species, [R_A, R_B], small_model.params)
    for a, b in zip(small_model.hyperplanes, again.hyperplanes):
        for name in ("w", "b", "mean", "scale", "C", "val_acc", "subset", "seed", "species"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert small_model.n_hyperplanes() == 2 * 2 * 2 * 1


def test_reduced_subset_is_recorded():
    feats, labels, species = _training_data()
    model = train_ensemble(feats, labels, species, [R_A, R_B],
                           EnsembleParams(n_subsets=1, n_seeds=1, subset_size=10**6, C_grid=(1.0,)))
    for s in (0, 1):
        info = model.training[str(s)]
        avail = info["n_available"]
        assert info["subset_size_reduced"]
        assert info["n_per_class"] == min(avail["rearrangers"], avail["non_rearrangers"])


def test_model_round_trip_bitwise(small_model, tmp_path):
    path = tmp_path / "model.h5"
    small_model.save(path)
    assert not (tmp_path / "model.h5.tmp").exists()
    loaded = SoftnessModel.load(path)
    st = random_state(400, 0.9, seed=7)
    s0 = small_model.softness(st.pos, st.species, st.Lx, st.Ly, 2.3)
    s1 = loaded.softness(st.pos, st.species, st.Lx, st.Ly, 2.3)
    np.testing.assert_array_equal(s0, s1)
    assert np.all(np.isfinite(s0)) and np.std(s0) > 0
    for key, val in small_model.table().items():
        np.testing.assert_array_equal(loaded.table()[key], val)
    np.testing.assert_array_equal(loaded.weight_function(1, 1), small_model.weight_function(1, 1))
    assert loaded.params == small_model.params
    assert loaded.provenance == small_model.provenance
    assert loaded.training == small_model.training
    assert loaded.code_version == small_model.code_version
    # softness equals the decision on separately computed features
    feats = [structure_functions(st.pos, st.species, st.Lx, st.Ly, 2.3, r) for r in (R_A, R_B)]
    np.testing.assert_array_equal(loaded.decision(feats, st.species), s1)


@pytest.mark.parametrize("edit, field", [
    (lambda f: f.attrs.__setitem__("schema", "something-else"), "schema"),
    (lambda f: f.attrs.__setitem__("schema_version", 2), "schema_version"),
    (lambda f: f.attrs.__delitem__("params"), "params"),
    (lambda f: f.__delitem__("rlists/1/w"), "rlists/1/w"),
    (lambda f: f.__delitem__("rlists/0/r_m"), "rlists/0/r_m"),
    (lambda f: (f.__delitem__("rlists/0/scale"), f.create_dataset("rlists/0/scale", data=np.ones(3))),
     "scale"),
])
def test_bad_model_file_names_the_field(small_model, tmp_path, edit, field):
    path = tmp_path / "model.h5"
    small_model.save(path)
    with h5py.File(path, "r+") as f:
        assert f.attrs["schema"] == SCHEMA
        edit(f)
    with pytest.raises(SoftnessModelError, match=field):
        SoftnessModel.load(path)


@pytest.mark.parametrize("kwargs, field", [
    ({"n_subsets": 0}, "n_subsets"),
    ({"n_seeds": 1.5}, "n_seeds"),
    ({"subset_size": 1}, "subset_size"),
    ({"val_fraction": 1.0}, "val_fraction"),
    ({"C_grid": ()}, "C_grid"),
    ({"C_grid": (1.0, 0.1)}, "C_grid"),
    ({"C_grid": (0.0, 1.0)}, "C_grid"),
    ({"seed": -1}, "seed"),
    ({"max_iter": 0}, "max_iter"),
])
def test_bad_params_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        EnsembleParams(**kwargs)


def test_training_input_errors():
    x = np.random.default_rng(0).normal(size=(40, 4))
    labels = np.tile([0, 1], 20)
    species = np.zeros(40, int)
    with pytest.raises(ValueError, match="species 1"):
        train_ensemble([x], labels, species, [[1.0, 2.0]])
    with pytest.raises(ValueError, match=r"features\[0\]"):
        train_ensemble([x[:, :3]], labels, species, [[1.0, 2.0]])
    with pytest.raises(ValueError, match="labels"):
        train_ensemble([x], labels + 1, species, [[1.0, 2.0]])
    with pytest.raises(ValueError, match="JSON"):
        train_ensemble([x], labels, np.tile([0, 0, 1, 1], 10), [[1.0, 2.0]],
                       provenance={"bad": object()})
