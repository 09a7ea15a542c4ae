"""Softness: an ensemble of linear SVMs on structure functions (SPEC.md section 3).

Conventions: lengths in small-particle diameters; species 0 small, 1
large; label 1 = rearranger, 0 = non-rearranger. Features are the
structure functions of :mod:`step_epm.particles.structure` (per r-list l an
(n, 2 M_l) matrix, columns [small neighbours, large neighbours]).
Softness is dimensionless (a signed distance in standardised feature
space); S > 0 leans towards rearranging.

Training (:func:`train_ensemble`), separately for each central species s:

- n_pc = min(subset_size, rearrangers of s, non-rearrangers of s)
  particles per class; when the smaller class has fewer than
  subset_size, every particle of it is used in every subset (recorded in
  ``SoftnessModel.training``).
- For each subset u: a balanced subset, n_pc per class drawn without
  replacement by a generator seeded with (seed, s, u). The same particles
  serve every r-list, so r-lists differ only in their features.
- For each r-list l and seed k: a generator seeded with
  (seed, s, u, l, k) splits off a balanced validation part (round(
  val_fraction n_pc) per class, at least 1) and gives the SVM's
  random_state; the features are standardised on the training part
  (StandardScaler: mean, population std, std 0 -> 1); a LinearSVC
  (squared hinge, dual='auto', no class weights) is fitted for each C of
  C_grid, and the C with the best validation accuracy is kept (ties: the
  smallest C). The kept hyperplane is the one fitted on the training part
  only, so its recorded validation accuracy is held out (up to the choice
  of C). Per hyperplane: species, r-list, subset, seed, C, train and
  validation accuracy, per-class training/validation counts, solver
  iterations, mean, scale, w, b.

Softness of a particle of species s: the mean over all hyperplanes of
species s (all subsets, r-lists and seeds) of the signed distance
(w . z + b) / |w| with z = (x - mean) / scale in that hyperplane's
standardisation. It is evaluated as the equivalent affine map of the
original features, x . a + c with a = w / (|w| scale) and
c = (b - w . (mean / scale)) / |w|.

The model file (HDF5, schema ``step-softness-model`` version 1, no pickle)
is documented in docs/softness_model.md.
"""

import json
import os
import warnings
from dataclasses import asdict, dataclass, field

import h5py
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from ..config_checks import ConfigError, check_range
from ..provenance import code_version
from .structure import N_SPECIES, RadialHats, structure_function_sets

SCHEMA = "step-softness-model"
SCHEMA_VERSION = 1
CREATED_BY = "step_epm.particles.softness.train_ensemble"

#: Per-hyperplane (H,) columns of :class:`Hyperplanes`: name -> dtype kind.
_COLUMNS = {"species": "i", "subset": "i", "seed": "i", "C": "f", "train_acc": "f",
            "val_acc": "f", "n_train": "i", "n_val": "i", "n_iter": "i", "b": "f"}
#: Per-hyperplane (H, F) vectors of :class:`Hyperplanes`.
_VECTORS = ("mean", "scale", "w")


class SoftnessModelError(ValueError):
    """A softness model file that does not follow the schema."""


def _check_int(field_name, value, lo):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{field_name} = {value!r} must be an integer")
    check_range(field_name, value, lo=lo)


@dataclass(frozen=True)
class EnsembleParams:
    """Settings of the SVM ensemble (see the module docstring).

    Attributes:
        n_subsets: balanced training subsets per species (>= 1).
        n_seeds: train/validation splits per subset and r-list (>= 1).
        subset_size: particles per class in a subset (>= 2; capped by the
            smaller class).
        val_fraction: fraction of each class held out for validation, in (0, 1).
        C_grid: strictly increasing positive SVM regularisation values.
        seed: base seed (>= 0) of every random draw.
        max_iter: LinearSVC iteration limit (>= 1).
    """

    n_subsets: int = 5
    n_seeds: int = 2
    subset_size: int = 2000
    val_fraction: float = 0.2
    C_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    seed: int = 0
    max_iter: int = 10000

    def __post_init__(self):
        _check_int("n_subsets", self.n_subsets, 1)
        _check_int("n_seeds", self.n_seeds, 1)
        _check_int("subset_size", self.subset_size, 2)
        check_range("val_fraction", self.val_fraction, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        _check_int("seed", self.seed, 0)
        _check_int("max_iter", self.max_iter, 1)
        grid = np.asarray(self.C_grid, dtype=np.float64)
        if grid.ndim != 1 or grid.size == 0:
            raise ConfigError(f"C_grid = {self.C_grid!r} must be a non-empty list of numbers")
        if not (np.all(np.isfinite(grid)) and np.all(grid > 0) and np.all(np.diff(grid) > 0)):
            raise ConfigError(f"C_grid = {self.C_grid!r} must be finite, positive and strictly increasing")
        object.__setattr__(self, "C_grid", tuple(float(c) for c in grid))


@dataclass(frozen=True, eq=False)
class Hyperplanes:
    """All H hyperplanes of one r-list, in training order (species, subset, seed).

    Attributes (F = 2M features):
        r_m: (M,) radial positions of the r-list (length).
        species: (H,) int central species (0 small, 1 large).
        subset, seed: (H,) int training-subset index and seed index.
        C: (H,) chosen regularisation.
        train_acc, val_acc: (H,) accuracy on the training / validation part.
        n_train, n_val: (H,) particles per class in the training / validation part.
        n_iter: (H,) solver iterations (== max_iter: not converged).
        mean, scale: (H, F) standardisation, z = (x - mean) / scale.
        w: (H, F) weights on z; b: (H,) intercept. Decision w . z + b > 0
            predicts a rearranger.
    """

    r_m: np.ndarray
    species: np.ndarray
    subset: np.ndarray
    seed: np.ndarray
    C: np.ndarray
    train_acc: np.ndarray
    val_acc: np.ndarray
    n_train: np.ndarray
    n_val: np.ndarray
    n_iter: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    w: np.ndarray
    b: np.ndarray

    def __post_init__(self):
        r_m = np.asarray(RadialHats(self.r_m).r_m)
        object.__setattr__(self, "r_m", r_m)
        h = np.asarray(self.species).size
        if np.ndim(self.species) != 1 or h == 0:
            raise ValueError(f"species must be a non-empty 1-D array, got shape {np.shape(self.species)}")
        f = N_SPECIES * r_m.size
        for name, kind in _COLUMNS.items():
            arr = np.asarray(getattr(self, name))
            if arr.shape != (h,) or arr.dtype.kind not in ("iu" if kind == "i" else "f"):
                raise ValueError(f"{name} must be ({h},) {'int' if kind == 'i' else 'float'}, "
                                 f"got {arr.shape} {arr.dtype}")
            object.__setattr__(self, name, arr.astype(np.int64 if kind == "i" else np.float64))
        for name in _VECTORS:
            arr = np.asarray(getattr(self, name))
            if arr.shape != (h, f) or arr.dtype.kind != "f":
                raise ValueError(f"{name} must be ({h}, {f}) float, got {arr.shape} {arr.dtype}")
            object.__setattr__(self, name, arr.astype(np.float64))
        if not np.all((self.species == 0) | (self.species == 1)):
            raise ValueError("species must hold 0 or 1 only")
        if not all(np.all(np.isfinite(getattr(self, n))) for n in ("mean", "scale", "w", "b")):
            raise ValueError("mean, scale, w and b must be finite")
        if not np.all(self.scale > 0):
            raise ValueError("scale must be positive")
        if not np.all(np.linalg.norm(self.w, axis=1) > 0):
            raise ValueError("w must be non-zero in every hyperplane")

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(a (F, H), c (H,)): signed distances are x @ a + c for original features x."""
        norm = np.linalg.norm(self.w, axis=1)
        a = self.w / (self.scale * norm[:, None])
        c = (self.b - np.sum(self.w * self.mean / self.scale, axis=1)) / norm
        return a.T, c


@dataclass(frozen=True, eq=False)
class SoftnessModel:
    """A trained softness ensemble that can be applied to any state.

    Attributes:
        hyperplanes: one :class:`Hyperplanes` per r-list, in r-list order.
        params: the :class:`EnsembleParams` it was trained with.
        provenance: the caller's JSON-serialisable description of the
            training data (files, config hashes, d_soft / d_hard, windows...).
        training: per species ("0", "1"): available particles per class,
            the per-class subset size used and whether it was reduced.
        code_version: ``step_epm.provenance.code_version()`` at training.
        created_by: the producing function.
    """

    hyperplanes: tuple[Hyperplanes, ...]
    params: EnsembleParams
    provenance: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    code_version: str = ""
    created_by: str = CREATED_BY

    def __post_init__(self):
        object.__setattr__(self, "hyperplanes", tuple(self.hyperplanes))
        if not self.hyperplanes:
            raise ValueError("a softness model needs at least one r-list")
        for s in range(N_SPECIES):
            if self.n_hyperplanes(s) == 0:
                raise ValueError(f"no hyperplane for species {s}")

    @property
    def r_lists(self) -> tuple[np.ndarray, ...]:
        """The (M_l,) radial positions of each r-list."""
        return tuple(hp.r_m for hp in self.hyperplanes)

    def n_hyperplanes(self, species: int | None = None) -> int:
        """Number of hyperplanes (of one central species, or all)."""
        return sum(int(np.sum(hp.species == species)) if species is not None else hp.species.size
                   for hp in self.hyperplanes)

    def table(self) -> dict[str, np.ndarray]:
        """Per-hyperplane table: (H,) arrays rlist, species, subset, seed, C,
        train_acc, val_acc, n_train, n_val, n_iter, b over all r-lists."""
        out = {"rlist": np.concatenate([np.full(hp.species.size, l, np.int64)
                                        for l, hp in enumerate(self.hyperplanes)])}
        for name in _COLUMNS:
            out[name] = np.concatenate([getattr(hp, name) for hp in self.hyperplanes])
        return out

    def weight_function(self, species: int, rlist: int, standardised: bool = False) -> np.ndarray:
        """(2, M_l) ensemble-mean weight of one central species and r-list:
        row = neighbour species (0 small, 1 large), column = r_m.

        standardised=False: w / (|w| scale), softness per unit structure
        function (the r-list's mean signed distance is G . weight + const);
        a rarely populated feature (tiny scale) gets a large weight.
        standardised=True: w / |w|, softness per standard deviation of the
        feature (each feature's importance in the training data)."""
        hp = self.hyperplanes[rlist]
        sel = hp.species == species
        if not np.any(sel):
            raise ValueError(f"no hyperplane of species {species} in r-list {rlist}")
        if standardised:
            a = (hp.w / np.linalg.norm(hp.w, axis=1)[:, None]).T
        else:
            a, _ = hp.affine()
        return a[:, sel].mean(axis=1).reshape(N_SPECIES, hp.r_m.size)

    def decision(self, features_by_rlist, species) -> np.ndarray:
        """Softness (n,) from precomputed features.

        Args:
            features_by_rlist: one (n, 2 M_l) array per r-list, in order.
            species: (n,) central species, 0 or 1.
        Returns:
            (n,) mean signed distance over the species' hyperplanes.
        """
        sp = np.asarray(species)
        if sp.ndim != 1 or not np.all((sp == 0) | (sp == 1)):
            raise ValueError("species must be a 1-D array of 0 (small) or 1 (large)")
        if len(features_by_rlist) != len(self.hyperplanes):
            raise ValueError(f"expected features for {len(self.hyperplanes)} r-lists, "
                             f"got {len(features_by_rlist)}")
        total = np.zeros(sp.size)
        for l, (hp, x) in enumerate(zip(self.hyperplanes, features_by_rlist)):
            x = np.asarray(x, dtype=np.float64)
            if x.shape != (sp.size, hp.mean.shape[1]):
                raise ValueError(f"features of r-list {l} must be ({sp.size}, {hp.mean.shape[1]}), "
                                 f"got {x.shape}")
            a, c = hp.affine()
            for s in range(N_SPECIES):
                rows = sp == s
                sel = hp.species == s
                total[rows] += (x[rows] @ a[:, sel] + c[sel]).sum(axis=1)
        counts = np.array([self.n_hyperplanes(s) for s in range(N_SPECIES)], dtype=np.float64)
        return total / counts[sp]

    def softness(self, pos, species, Lx, Ly, tilt) -> np.ndarray:
        """Softness (N,) of every particle of a state.

        Args:
            pos: (N, 2) Cartesian positions (length; unwrapped allowed).
            species: (N,) 0 small, 1 large.
            Lx, Ly, tilt: the box spanned by (Lx, 0) and (tilt Ly, Ly); any tilt.
        Returns:
            (N,) softness; the structure functions of every r-list come
            from one neighbour search.
        """
        feats = structure_function_sets(pos, species, Lx, Ly, tilt, self.r_lists)
        return self.decision(feats, species)

    def save(self, path) -> None:
        """Write the model to an HDF5 file (atomically: path.tmp, then rename)."""
        path = os.fspath(path)
        tmp = path + ".tmp"
        with h5py.File(tmp, "w") as f:
            f.attrs.update(schema=SCHEMA, schema_version=SCHEMA_VERSION,
                           code_version=self.code_version, created_by=self.created_by,
                           n_rlists=len(self.hyperplanes),
                           params=json.dumps(asdict(self.params)),
                           provenance=json.dumps(self.provenance),
                           training=json.dumps(self.training))
            for l, hp in enumerate(self.hyperplanes):
                g = f.create_group(f"rlists/{l}")
                g["r_m"] = hp.r_m
                for name in (*_COLUMNS, *_VECTORS):
                    g[name] = getattr(hp, name)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path) -> "SoftnessModel":
        """Read and validate a model file; SoftnessModelError names a bad field."""
        path = os.fspath(path)
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            for key in ("schema", "schema_version", "code_version", "created_by", "n_rlists",
                        "params", "provenance", "training"):
                if key not in attrs:
                    raise SoftnessModelError(f"{path}: missing attribute {key!r}")
            if attrs["schema"] != SCHEMA:
                raise SoftnessModelError(f"{path}: attribute 'schema' is {attrs['schema']!r}, "
                                         f"expected {SCHEMA!r}")
            if int(attrs["schema_version"]) != SCHEMA_VERSION:
                raise SoftnessModelError(f"{path}: attribute 'schema_version' is "
                                         f"{attrs['schema_version']!r}; this code reads {SCHEMA_VERSION}")
            parsed = {}
            for key in ("params", "provenance", "training"):
                try:
                    parsed[key] = json.loads(attrs[key])
                except (TypeError, json.JSONDecodeError) as err:
                    raise SoftnessModelError(f"{path}: attribute {key!r} is not JSON: {err}") from err
            try:
                params = EnsembleParams(**parsed["params"])
            except (TypeError, ValueError) as err:
                raise SoftnessModelError(f"{path}: attribute 'params': {err}") from err
            n_rlists = int(attrs["n_rlists"])
            names = sorted(f["rlists"].keys()) if isinstance(f.get("rlists"), h5py.Group) else []
            if names != sorted(str(l) for l in range(n_rlists)):
                raise SoftnessModelError(f"{path}: group 'rlists' holds {names}, expected "
                                         f"0..{n_rlists - 1} (attribute 'n_rlists' = {n_rlists})")
            sets = []
            for l in range(n_rlists):
                data = {}
                for name in ("r_m", *_COLUMNS, *_VECTORS):
                    key = f"rlists/{l}/{name}"
                    if not isinstance(f.get(key), h5py.Dataset):
                        raise SoftnessModelError(f"{path}: missing dataset {key!r}")
                    data[name] = f[key][()]
                try:
                    sets.append(Hyperplanes(**data))
                except ValueError as err:
                    raise SoftnessModelError(f"{path}: rlists/{l}: {err}") from err
        try:
            return cls(hyperplanes=tuple(sets), params=params, provenance=parsed["provenance"],
                       training=parsed["training"], code_version=str(attrs["code_version"]),
                       created_by=str(attrs["created_by"]))
        except ValueError as err:
            raise SoftnessModelError(f"{path}: {err}") from err


# --------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------

def _fit_one(x, labels, train, val, C_grid, max_iter, random_state):
    """Standardise on train, pick C by validation accuracy; returns a dict row."""
    scaler = StandardScaler().fit(x[train])
    z_tr = scaler.transform(x[train])
    z_va = scaler.transform(x[val])
    best = None
    for C in C_grid:
        svm = LinearSVC(C=C, dual="auto", max_iter=max_iter, random_state=random_state)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # n_iter records it
            svm.fit(z_tr, labels[train])
        acc = svm.score(z_va, labels[val])
        if best is None or acc > best[0]:
            best = (acc, C, svm)
    acc, C, svm = best
    return {"C": C, "train_acc": svm.score(z_tr, labels[train]), "val_acc": acc,
            "n_iter": int(np.max(svm.n_iter_)), "mean": scaler.mean_, "scale": scaler.scale_,
            "w": svm.coef_[0], "b": float(svm.intercept_[0])}


def train_ensemble(features, labels, species, r_lists, params: EnsembleParams = EnsembleParams(),
                   provenance: dict | None = None) -> SoftnessModel:
    """Train the softness ensemble (see the module docstring for the procedure).

    Args:
        features: one (n, 2 M_l) array per r-list: the structure functions
            of the n training particles (the same particles, in the same
            order, in every array).
        labels: (n,) 1 = rearranger, 0 = non-rearranger.
        species: (n,) central species, 0 small and 1 large. Each species
            needs at least 2 particles of each class.
        r_lists: the (M_l,) radial positions behind each feature matrix.
        params: ensemble settings.
        provenance: JSON-serialisable description of the training data,
            stored verbatim in the model.
    Returns:
        The :class:`SoftnessModel`, n_subsets x len(r_lists) x n_seeds
        hyperplanes per species.
    """
    hats = [RadialHats(r) for r in r_lists]
    if len(features) != len(hats) or not hats:
        raise ValueError(f"features ({len(features)} arrays) and r_lists ({len(hats)}) "
                         "must have the same non-zero length")
    labels = np.asarray(labels)
    sp = np.asarray(species)
    n = labels.shape[0] if labels.ndim == 1 else -1
    if n < 1 or sp.shape != (n,):
        raise ValueError(f"labels and species must be (n,) arrays of one length, "
                         f"got {labels.shape} and {sp.shape}")
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError("labels must hold 0 (non-rearranger) or 1 (rearranger) only")
    if not np.all((sp == 0) | (sp == 1)):
        raise ValueError("species must hold 0 (small) or 1 (large) only")
    labels = labels.astype(np.int64)
    xs = []
    for l, (x, h) in enumerate(zip(features, hats)):
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (n, h.n_features):
            raise ValueError(f"features[{l}] must be ({n}, {h.n_features}) for r-list {l}, got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"features[{l}] must be finite")
        xs.append(x)
    provenance = dict(provenance or {})
    try:
        json.dumps(provenance)
    except TypeError as err:
        raise ValueError(f"provenance must be JSON-serialisable: {err}") from err

    rows = [[] for _ in hats]
    training = {}
    for s in range(N_SPECIES):
        pools = [np.flatnonzero((sp == s) & (labels == c)) for c in (0, 1)]
        n_pc = min(params.subset_size, pools[0].size, pools[1].size)
        if n_pc < 2:
            raise ValueError(f"species {s} has {pools[1].size} rearrangers and {pools[0].size} "
                             "non-rearrangers; each class needs at least 2")
        n_val = min(max(1, round(params.val_fraction * n_pc)), n_pc - 1)
        training[str(s)] = {"n_available": {"rearrangers": int(pools[1].size),
                                            "non_rearrangers": int(pools[0].size)},
                            "n_per_class": int(n_pc), "n_val_per_class": int(n_val),
                            "subset_size_reduced": bool(n_pc < params.subset_size)}
        for u in range(params.n_subsets):
            rng_u = np.random.default_rng([params.seed, s, u])
            chosen = [rng_u.choice(pool, n_pc, replace=False) for pool in pools]
            for l, x in enumerate(xs):
                for k in range(params.n_seeds):
                    rng = np.random.default_rng([params.seed, s, u, l, k])
                    perm = [rng.permutation(c) for c in chosen]
                    train = np.concatenate([p[n_val:] for p in perm])
                    val = np.concatenate([p[:n_val] for p in perm])
                    row = _fit_one(x, labels, train, val, params.C_grid, params.max_iter,
                                   int(rng.integers(2**31 - 1)))
                    row.update(species=s, subset=u, seed=k, n_train=n_pc - n_val, n_val=n_val)
                    rows[l].append(row)
    sets = []
    for h, rs in zip(hats, rows):
        cols = {name: np.array([r[name] for r in rs]) for name in (*_COLUMNS, *_VECTORS)}
        sets.append(Hyperplanes(r_m=np.asarray(h.r_m), **cols))
    return SoftnessModel(hyperplanes=tuple(sets), params=params, provenance=provenance,
                         training=training, code_version=code_version(), created_by=CREATED_BY)
