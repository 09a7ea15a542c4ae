"""The calibration file: the one module that reads, writes and validates it.

``calibrate/`` writes it from particle trajectories (SPEC.md section 4) and
``lattice/`` reads it (SPEC.md section 5). A default file,
``lattice/data/default_calibration.json``, marked ``"calibrated": false``,
holds placeholder numbers of plausible magnitude so that the lattice runs
before any particle data exists (``placeholder_calibration`` documents each
of them). The full schema, field by field, is docs/calibration.md.

Format: JSON (human-readable), UTF-8, schema ``step-calibration`` version
``SCHEMA_VERSION`` (= 3; older versions are refused, see below). Units
are particle units (SPEC.md section 0): lengths in small-particle
diameters, energies in the pair prefactor, time in the overdamped unit
(unit drag per particle). NaN is written as JSON ``null``.

Top level::

    schema, schema_version, calibrated (bool), description, code_version,
    config (the resolved config text of the producing run),
    inputs: [{"path": str, "sha256": str}, ...]      (hashes of the inputs)
    scalars: {name: quantity}
    curves:  {name: curve}

A *quantity* is ``{"value", "error", "n", "fit_range", "unit",
"description", "flag"}``: ``n`` is the sample size (int >= 0), ``fit_range``
null or [lo, hi] of the fit's abscissa, ``flag`` null or a string (why a
number is unreliable). ``n = 0`` requires a flag; a NaN value requires
``n = 0`` (too little data gives NaN, n = 0 and a flag, never a crash).

Required entries (``REQUIRED_SCALARS``, ``REQUIRED_CURVES``) are the ones
the lattice reads (or checks, like nu); optional ones (``OPTIONAL_SCALARS``,
``OPTIONAL_CURVES``) are measurements reported for the comparison and may
be absent. ``SCALARS`` lists every scalar's unit and allowed range.

Required curves (every array a JSON list; ``n`` per point is a sample size):

- ``c0``, ``c1``: the softness change per frame of a SITE whose centre is
  at the lattice distance r = a |d| from a rearranging site (r = 0: the
  rearranging site itself), dS = c0(r) + c1(r) (S - <S>) + b k with site
  S and site k (SPEC.md section 4, items 3 and 8; measured on the particle
  data coarse-grained on the lattice tiling, calibrate/site_events.py):
  ``r`` (increasing, >= 0), ``value`` (finite), ``error``, ``n``; ``fit``:
  the power law of the tail, ``{"amplitude": q, "exponent": q, "sign": +1
  or -1}``, value(r) = sign * amplitude * r^-exponent over
  ``amplitude.fit_range``. The per-particle laws are the optional
  ``c0_particle``, ``c1_particle`` (same format, r > 0).
- ``p_s``: P(S) of the site-averaged softness (SPEC.md section 5: the mean
  particle softness over a site-sized region): histogram ``edges`` (nb + 1,
  increasing), ``density`` (nb, >= 0, integrating to 1), ``n`` (nb counts).
- ``yield_strain``: quantiles of the yield strain eps_y given the
  site-averaged softness, in the variable the lattice triggers on: the
  site's elastic deviatoric strain eps_dev at the onset of a site event,
  its deviatoric stress divided by 2 mu_relaxed (SPEC.md section 4 item
  5): ``s``
  (nS, uniform grid), ``u`` (nU, uniform grid in [0, 1], the quantile
  levels), ``value`` (nS, nU, > 0, non-decreasing along u), ``error``
  (nS, nU), ``n`` (nS samples per S bin).

Optional curves: ``c0_particle``, ``c1_particle`` (the per-particle
softness change laws of isolated rearrangers), ``g2`` (rearranger pair correlation per frame lag,
with power-law tail fits), ``strain_profiles`` (radial strain profiles
around an isolated rearranger), ``frame_times`` (histogram of the time
between particle frames), ``yield_strain_by_lag`` ({label: yield table}),
``p_s_particles`` and ``p_s_rearrangers`` (P(S) of particle softness, of
all particles and of rearrangers). Their formats are in docs/calibration.md
and in the validators below.

Conventions fixed in version 3 (and why older files are refused rather
than converted): ``compression_p`` is the plastic half-trace x area p of
the rearrangement's volumetric source (p > 0: the source dilates, its
surroundings are compressed: outside field -(1 + nu)/2 p H(r, t)); a
version 2 ``compression_amplitude`` was the rearranger region's own
half-trace x area, which the lattice used with the wrong sign. The yield
table is the local elastic strain from the stress (version 1 and 2: the
J strain since the last rearrangement, which has no stress-free reference
and gave a lattice stress ~10x the particles'). ``source_strength`` (new)
ties a lattice rearrangement's far field to the particles'. The softness
kernels ``c0``, ``c1`` and ``softness_b`` are site-level laws (the
lattice applies them per site event without further averaging), and
``self_change`` is reported, not read. A version 1
or 2 file cannot be made to mean this without the trajectories: rerun
step-calibrate.
"""

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCHEMA = "step-calibration"
SCHEMA_VERSION = 3
#: the versions this code reads
READABLE_VERSIONS = (3,)
#: why a file of an older version is refused (module docstring)
OLD_VERSION_NOTE = ("version 3 changed the compression's sign convention (compression_p), the "
                    "yield strain's variable (local elastic strain from the stress) and added "
                    "source_strength; an older file cannot be converted: rerun step-calibrate")
DEFAULT_PATH = Path(__file__).resolve().parent / "data" / "default_calibration.json"


class CalibrationError(ValueError):
    """A calibration file that is missing, malformed or out of range.
    The message names the file and the offending field."""


# name: (unit, description, lo, hi, lo_open, hi_open) -- range of a finite value
SCALARS = {
    # -- required: read (or checked) by the lattice ------------------------
    "lambda_relaxed": ("energy/length^2", "Lame lambda, relaxed (non-affine) response", None, None, False, False),
    "mu_relaxed": ("energy/length^2", "shear modulus mu, relaxed response", 0.0, None, True, False),
    "nu_relaxed": ("1", "2-D Poisson ratio lambda/(lambda + 2 mu), relaxed", -1.0, 1.0, True, True),
    "lambda_instantaneous": ("energy/length^2", "Lame lambda, instantaneous (affine)", None, None, False, False),
    "mu_instantaneous": ("energy/length^2", "shear modulus mu, instantaneous", 0.0, None, True, False),
    "nu_instantaneous": ("1", "2-D Poisson ratio, instantaneous", -1.0, 1.0, True, True),
    "number_density": ("1/length^2", "N/V; the continuum drag per unit area eta", 0.0, None, True, False),
    "site_size": ("length", "lattice site side a (about one rearrangement)", 0.0, None, True, False),
    "time_per_frame": ("time", "time dt of one lattice frame (mean time between particle frames)", 0.0, None, True, False),
    "compression_p": ("length^2", "plastic half-trace x area p of a rearrangement's volumetric source (> 0: the source dilates; outside field -(1 + nu)/2 p H(r, t))", None, None, False, False),
    "compression_t_centre": ("time", "centre of the Gaussian compression rate after the rearrangement starts", 0.0, None, False, False),
    "compression_width": ("time", "standard deviation of the Gaussian compression rate", 0.0, None, True, False),
    "softness_b": ("1/strain", "b in dS = ... + b k of a site (per-frame site volumetric strain)", None, None, False, False),
    "relaxed_fraction": ("1", "fraction of the local elastic deviatoric strain a rearrangement relaxes", 0.0, 1.0, True, False),
    "site_strain_sd": ("strain", "standard deviation of a site's elastic e1 and e2 in the unstrained jammed packing (site stress / 2 mu_relaxed; residual stresses of jamming): the lattice's initial strain field", 0.0, None, False, False),
    "source_strength": ("length^2", "plastic deviatoric strain x area a site rearrangement releases per unit site elastic strain (e1, e2) at its onset, from its far field (c_dev_site)", 0.0, None, True, False),
    "frames_per_rearrangement": ("frames", "frames a site rearrangement lasts", 1.0, None, False, False),
    # -- optional: reported, not read by the lattice -----------------------
    "residual": ("strain (eps_dev)", "eps_dev of the local elastic strain a rearrangement leaves", 0.0, None, False, False),
    "self_change": ("softness", "a rearranging site's own softness change over its event, after minus before", None, None, False, False),
    "self_change_particle": ("softness", "a rearranging particle's own softness change, after minus before", None, None, False, False),
    "softness_b_particle": ("1/strain", "b of the per-particle law (isolated events)", None, None, False, False),
    "source_strength_drops": ("length^2", "the source strength the avalanches' stress drops imply if the site events carried all of the plastic strain", None, None, False, False),
    "c_dev_site": ("strain x length^2", "c_dev around one rearranging site per frame (frame pairs with exactly one rearranging site)", None, None, False, False),
    "c_xy_site": ("strain x length^2", "c_xy around one rearranging site per frame", None, None, False, False),
    "k_sin2_site": ("strain x length^2", "k_sin2 around one rearranging site per frame", None, None, False, False),
    "c_dev": ("strain x length^2", "c_dev in eps_dev = c_dev / r^2 + bg_dev around an isolated rearranger", None, None, False, False),
    "bg_dev": ("strain", "bg_dev in eps_dev = c_dev / r^2 + bg_dev (noise floor)", None, None, False, False),
    "c_xy": ("strain x length^2", "c_xy in <|eps_xy|>_theta = c_xy / r^2 + bg_xy", None, None, False, False),
    "bg_xy": ("strain", "bg_xy in <|eps_xy|>_theta = c_xy / r^2 + bg_xy (noise floor)", None, None, False, False),
    "k_sin2": ("strain x length^2", "a in k = a sin(2 theta) / r^2 + ... (pooled over the fit range)", None, None, False, False),
    "compression_length": ("length", "spatial width w of the isotropic compression k_iso = Q exp(-r^2/2w^2)/(2 pi w^2)", 0.0, None, True, False),
    "plastic_strain": ("strain (eps_dev)", "eps_dev released per rearrangement, summed over its frames", 0.0, None, False, False),
    "yield_a": ("strain (eps_dev)", "a in the median yield strain eps_y = a + b S (site S, local elastic strain at onset)", None, None, False, False),
    "yield_b": ("strain (eps_dev)/softness", "b in the median yield strain eps_y = a + b S (site S, local elastic strain at onset)", None, None, False, False),
    "d2min_length": ("length", "D2min correlation length xi (size of a rearrangement)", 0.0, None, True, False),
}
#: the scalars the lattice reads or checks (a v2 file must have them all)
REQUIRED_SCALARS = ("lambda_relaxed", "mu_relaxed", "nu_relaxed", "lambda_instantaneous",
                    "mu_instantaneous", "nu_instantaneous", "number_density", "site_size",
                    "time_per_frame", "compression_p", "compression_t_centre",
                    "compression_width", "softness_b", "relaxed_fraction",
                    "source_strength", "site_strain_sd", "frames_per_rearrangement")
OPTIONAL_SCALARS = tuple(n for n in SCALARS if n not in REQUIRED_SCALARS)

#: site-level softness kernels (r >= 0, r = 0 the rearranging site itself)
RADIAL_CURVES = ("c0", "c1")
#: the per-particle versions (reported; r > 0)
PARTICLE_RADIAL_CURVES = ("c0_particle", "c1_particle")
REQUIRED_CURVES = RADIAL_CURVES + ("p_s", "yield_strain")
OPTIONAL_CURVES = PARTICLE_RADIAL_CURVES + ("g2", "strain_profiles", "frame_times", "yield_strain_by_lag",
                                            "p_s_particles", "p_s_rearrangers")
CURVES = REQUIRED_CURVES + OPTIONAL_CURVES
#: radial strain profiles (``strain_profiles.profiles``): required, then optional
PROFILES = ("k", "eps_dev", "eps_xy", "abs_k", "abs_eps_xy")
OPTIONAL_PROFILES = ("k_sin2", "k_iso")
#: profiles that are magnitudes (finite values >= 0)
_NONNEGATIVE_PROFILES = ("eps_dev", "abs_k", "abs_eps_xy")
TOP_LEVEL = ("schema", "schema_version", "calibrated", "description", "code_version", "config",
             "inputs", "scalars", "curves")
#: keys of ``yield_strain_by_lag``: letters, digits and _ . = + -
LABEL_PATTERN = r"[A-Za-z0-9_.=+-]{1,64}"


# --------------------------------------------------------------------------
# In-memory form
# --------------------------------------------------------------------------

@dataclass
class Quantity:
    """One calibrated number: value, error, sample size n, fit range."""

    value: float
    error: float = math.nan
    n: int = 0
    fit_range: tuple | None = None
    unit: str = ""
    description: str = ""
    flag: str | None = None

    def to_json(self):
        return {"value": _num(self.value), "error": _num(self.error), "n": int(self.n),
                "fit_range": None if self.fit_range is None else [_num(x) for x in self.fit_range],
                "unit": self.unit, "description": self.description, "flag": self.flag}


@dataclass
class Calibration:
    """A validated calibration: ``scalars`` {name: Quantity} (every required
    one, and the optional ones present); ``curves`` {name: curve} with
    numpy arrays and Quantity fits (formats in the module docstring and
    docs/calibration.md)."""

    scalars: dict
    curves: dict
    calibrated: bool = False
    description: str = ""
    code_version: str = ""
    inputs: list | None = None
    source: str = "<memory>"
    config: str = ""

    def __getitem__(self, name):
        """Value of a scalar."""
        return self.scalars[name].value

    def get(self, name):
        """The Quantity of a scalar, or None when an optional one is absent."""
        return self.scalars.get(name)

    def require_finite(self, names, context="the lattice model"):
        """Raise CalibrationError naming every scalar in ``names`` that is
        absent or whose value is NaN."""
        bad = [n for n in names if n not in self.scalars or not math.isfinite(self.scalars[n].value)]
        if bad:
            raise CalibrationError(f"calibration {self.source}: {context} needs finite values of "
                                   f"{', '.join('scalars.' + b for b in bad)} (NaN: too little data?)")

    def to_json(self):
        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "calibrated": bool(self.calibrated),
                "description": self.description, "code_version": self.code_version,
                "config": self.config, "inputs": list(self.inputs or []),
                "scalars": {k: self.scalars[k].to_json() for k in _ordered(self.scalars, SCALARS)},
                "curves": {k: _jsonify(self.curves[k]) for k in _ordered(self.curves, CURVES)}}

    def dumps(self):
        """The file's text (validated first)."""
        text = json.dumps(self.to_json(), indent=1, allow_nan=False)
        parse_calibration(json.loads(text), self.source)  # never write what we would refuse to read
        return text + "\n"

    def sha256(self):
        return hashlib.sha256(self.dumps().encode()).hexdigest()


def _ordered(d, known):
    """Keys of ``d``: the known ones in schema order, then any others (which
    validation refuses)."""
    return [k for k in known if k in d] + [k for k in d if k not in known]


def _num(x):
    x = float(x)
    return None if math.isnan(x) else x


def _arr(a):
    a = np.asarray(a)
    if a.dtype.kind in "iu":
        return a.tolist()
    return [(_arr(v) if a.ndim > 1 else _num(v)) for v in a]


def _jsonify(x):
    """Curve contents -> JSON: arrays (NaN -> null), Quantities, nested dicts
    and lists, ints, strings."""
    if isinstance(x, Quantity):
        return x.to_json()
    if isinstance(x, np.ndarray):
        return _arr(x)
    if isinstance(x, dict):
        return {str(k): _jsonify(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonify(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return _num(x)
    return x


# --------------------------------------------------------------------------
# Reading and validation
# --------------------------------------------------------------------------

def load_calibration(path="default"):
    """Read and validate a calibration file (version 3); ``"default"``
    is the shipped placeholder file. Raises CalibrationError (naming the
    file and field)."""
    p = DEFAULT_PATH if str(path) == "default" else Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise CalibrationError(f"calibration file {p}: cannot read ({exc.strerror or exc})") from None
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise CalibrationError(f"calibration file {p}: not valid JSON ({exc})") from None
    return parse_calibration(data, str(p))


def _refuse_constant(name):
    raise ValueError(f"{name} is not allowed (write NaN as null)")


def save_calibration(cal, path):
    """Write atomically (temporary file + rename) as SCHEMA_VERSION; returns the path."""
    p = Path(path)
    text = cal.dumps()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, p)
    return p


def parse_calibration(data, source="<memory>"):
    """Validate a decoded JSON object (schema version 3) and build a Calibration."""
    err = _Err(source)
    if not isinstance(data, dict):
        err("", "the top level must be a JSON object")
    if data.get("schema") != SCHEMA:
        err("schema", f"must be {SCHEMA!r}, got {data.get('schema')!r}")
    ver = data.get("schema_version")
    if isinstance(ver, bool) or ver not in READABLE_VERSIONS:
        older = isinstance(ver, int) and not isinstance(ver, bool) and ver < SCHEMA_VERSION
        err("schema_version", f"this code reads version {SCHEMA_VERSION}, got {ver!r}"
            + (f": {OLD_VERSION_NOTE}" if older else ""))
    unknown = sorted(set(data) - set(TOP_LEVEL))
    if unknown:
        err(unknown[0], f"unknown top-level entry (known: {', '.join(TOP_LEVEL)})")
    calibrated = data.get("calibrated")
    if not isinstance(calibrated, bool):
        err("calibrated", "must be true or false")
    for key in ("description", "code_version", "config"):
        if key in data and not isinstance(data[key], str):
            err(key, f"must be a string, got {type(data[key]).__name__}")
    inputs = data.get("inputs", [])
    if not isinstance(inputs, list) or not all(
            isinstance(i, dict) and isinstance(i.get("path"), str) and isinstance(i.get("sha256"), str)
            for i in inputs):
        err("inputs", "must be a list of {path, sha256}")

    required, allowed = REQUIRED_SCALARS, tuple(SCALARS)
    scal = data.get("scalars")
    if not isinstance(scal, dict):
        err("scalars", "missing or not an object")
    unknown = sorted(set(scal) - set(allowed))
    if unknown:
        err(f"scalars.{unknown[0]}", f"unknown scalar (known: {', '.join(allowed)})")
    for name in required:
        if name not in scal:
            err(f"scalars.{name}", "missing")
    scalars = {}
    for name in [n for n in SCALARS if n in scal]:
        unit, desc, lo, hi, lo_open, hi_open = SCALARS[name]
        q = _quantity(scal[name], f"scalars.{name}", err)
        v = q.value
        if math.isfinite(v):
            ok = (lo is None or (v > lo if lo_open else v >= lo)) and \
                 (hi is None or (v < hi if hi_open else v <= hi))
            if not ok:
                err(f"scalars.{name}.value", f"{v!r} is outside the allowed range {_range_text(lo, hi, lo_open, hi_open)}")
        if not q.unit:
            q.unit = unit
        if not q.description:
            q.description = desc
        scalars[name] = q
    for kind in ("relaxed", "instantaneous"):
        lam, mu, nu = (scalars[f"{p}_{kind}"].value for p in ("lambda", "mu", "nu"))
        if all(math.isfinite(x) for x in (lam, mu, nu)):
            if lam + mu <= 0:
                err(f"scalars.lambda_{kind}.value", f"lambda + mu must be > 0 (got {lam + mu!r})")
            if abs(nu - lam / (lam + 2 * mu)) > 1e-6 * max(1.0, abs(nu)):
                err(f"scalars.nu_{kind}.value",
                    f"{nu!r} != lambda/(lambda + 2 mu) = {lam / (lam + 2 * mu)!r}")

    required, allowed = REQUIRED_CURVES, CURVES
    cur = data.get("curves")
    if not isinstance(cur, dict):
        err("curves", "missing or not an object")
    unknown = sorted(set(cur) - set(allowed))
    if unknown:
        err(f"curves.{unknown[0]}", f"unknown curve (known: {', '.join(allowed)})")
    for name in required:
        if name not in cur:
            err(f"curves.{name}", "missing or not an object")
    for name in cur:
        if not isinstance(cur[name], dict):
            err(f"curves.{name}", "missing or not an object")
    curves = {}
    for name in [n for n in CURVES if n in cur]:
        d, f = cur[name], f"curves.{name}"
        if name in RADIAL_CURVES + PARTICLE_RADIAL_CURVES:
            curves[name] = _radial_curve(d, f, err, zero_ok=name in RADIAL_CURVES)
        elif name in ("p_s", "p_s_particles", "p_s_rearrangers"):
            curves[name] = _histogram(d, f, err)
        elif name == "frame_times":
            curves[name] = _histogram(d, f, err, positive=True)
        elif name == "yield_strain":
            curves[name] = _yield_table(d, f, err)
        elif name == "yield_strain_by_lag":
            curves[name] = _yield_tables(d, f, err)
        elif name == "g2":
            curves[name] = _g2(d, f, err)
        elif name == "strain_profiles":
            curves[name] = _strain_profiles(d, f, err)
    return Calibration(scalars=scalars, curves=curves, calibrated=calibrated,
                       description=str(data.get("description", "")),
                       code_version=str(data.get("code_version", "")), inputs=inputs, source=source,
                       config=str(data.get("config", "")))


def _range_text(lo, hi, lo_open, hi_open):
    return (f"{'(' if lo_open or lo is None else '['}{'-inf' if lo is None else lo}, "
            f"{'inf' if hi is None else hi}{')' if hi_open or hi is None else ']'}")


class _Err:
    def __init__(self, source):
        self.source = source

    def __call__(self, field, msg):
        where = f" field {field!r}:" if field else ""
        raise CalibrationError(f"calibration {self.source}:{where} {msg}")


def _keys(d, field, err, required, optional=()):
    """``d`` must be an object with every ``required`` key and no key
    outside ``required + optional``."""
    if not isinstance(d, dict):
        err(field, "must be an object")
    for key in required:
        if key not in d:
            err(f"{field}.{key}", "missing")
    unknown = sorted(set(d) - set(required) - set(optional))
    if unknown:
        err(f"{field}.{unknown[0]}", f"unknown entry (known: {', '.join(tuple(required) + tuple(optional))})")


def _float(x, field, err):
    if x is None:
        return math.nan
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        err(field, f"must be a number or null, got {x!r}")
    return float(x)


def _quantity(d, field, err):
    if not isinstance(d, dict):
        err(field, "must be an object {value, error, n, fit_range, ...}")
    for key in ("value", "error", "n"):
        if key not in d:
            err(f"{field}.{key}", "missing")
    value = _float(d["value"], f"{field}.value", err)
    error = _float(d["error"], f"{field}.error", err)
    n = d["n"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        err(f"{field}.n", f"must be an integer >= 0, got {n!r}")
    if math.isfinite(error) and error < 0:
        err(f"{field}.error", f"must be >= 0, got {error!r}")
    fr = d.get("fit_range")
    if fr is not None:
        if not (isinstance(fr, list) and len(fr) == 2):
            err(f"{field}.fit_range", "must be null or [lo, hi]")
        fr = tuple(_float(x, f"{field}.fit_range", err) for x in fr)
        if not fr[0] <= fr[1]:
            err(f"{field}.fit_range", f"needs lo <= hi, got {list(fr)}")
    flag = d.get("flag")
    if flag is not None and not isinstance(flag, str):
        err(f"{field}.flag", "must be null or a string")
    if math.isnan(value) and n != 0:
        err(f"{field}.value", "NaN (null) requires n = 0 and a flag")
    if n == 0 and not flag:
        err(f"{field}.flag", "n = 0 (no data) requires a flag saying why")
    return Quantity(value, error, n, fr, str(d.get("unit", "")), str(d.get("description", "")), flag)


def _array(d, key, field, err, ndim=1, integer=False):
    if key not in d:
        err(f"{field}.{key}", "missing")

    def conv(x, depth):
        if depth == 0:
            return math.nan if x is None else x
        if not isinstance(x, list):
            raise TypeError
        return [conv(v, depth - 1) for v in x]
    try:
        a = np.array(conv(d[key], ndim), dtype=float)
    except (TypeError, ValueError):
        err(f"{field}.{key}", f"must be a {ndim}-D array of numbers")
    if a.ndim != ndim or a.size == 0:
        err(f"{field}.{key}", f"must be a non-empty {ndim}-D array, got shape {a.shape}")
    if integer:
        if not (np.all(np.isfinite(a)) and np.all(a == np.round(a)) and np.all(a >= 0)):
            err(f"{field}.{key}", "must hold integers >= 0")
        return a.astype(np.int64)
    return a


def _increasing(a, field, err, uniform=False):
    if not np.all(np.isfinite(a)) or np.any(np.diff(a) <= 0):
        err(field, "must be finite and strictly increasing")
    if uniform and a.size > 2:
        step = (a[-1] - a[0]) / (a.size - 1)
        if np.abs(np.diff(a) - step).max() > 1e-9 * max(abs(step), 1e-300) + 1e-12:
            err(field, f"must be a uniform grid (constant spacing {step:g})")


def _shape(a, shape, field, err, what):
    if a.shape != shape:
        err(field, f"shape {a.shape} != {what} = {shape}")


def _radii(d, field, err, zero_ok=False):
    r = _array(d, "r", field, err)
    _increasing(r, f"{field}.r", err)
    if r[0] < 0 or (r[0] == 0 and not zero_ok):
        err(f"{field}.r", "must be >= 0" if zero_ok else "must be > 0")
    return r


def _power_fit(fit, field, err):
    """{amplitude: q, exponent: q, sign: +1/-1}: sign * amplitude * r^-exponent."""
    if not isinstance(fit, dict):
        err(field, "missing: the power-law tail fit {amplitude, exponent, sign}")
    _keys(fit, field, err, (), ("amplitude", "exponent", "sign"))
    sign = fit.get("sign")
    if isinstance(sign, bool) or sign not in (1, -1):
        err(f"{field}.sign", f"must be +1 or -1, got {sign!r}")
    amp = _quantity(fit.get("amplitude"), f"{field}.amplitude", err)
    expo = _quantity(fit.get("exponent"), f"{field}.exponent", err)
    if math.isfinite(amp.value) and amp.value < 0:
        err(f"{field}.amplitude.value", "must be >= 0 (the sign is separate)")
    return {"amplitude": amp, "exponent": expo, "sign": int(sign)}


def _radial_curve(d, field, err, zero_ok=False):
    _keys(d, field, err, (), ("r", "value", "error", "n", "fit"))
    r = _radii(d, field, err, zero_ok)
    out = {"r": r}
    for key in ("value", "error"):
        out[key] = _array(d, key, field, err)
    out["n"] = _array(d, "n", field, err, integer=True)
    for key in ("value", "error", "n"):
        if out[key].shape != r.shape:
            err(f"{field}.{key}", f"length {out[key].size} != length of r ({r.size})")
    if not np.all(np.isfinite(out["value"])):
        err(f"{field}.value", "must be finite (the lattice interpolates it: drop bins without data)")
    out["fit"] = _power_fit(d.get("fit"), f"{field}.fit", err)
    return out


def _histogram(d, field, err, positive=False):
    _keys(d, field, err, (), ("edges", "density", "n"))
    edges = _array(d, "edges", field, err)
    _increasing(edges, f"{field}.edges", err)
    if positive and edges[0] <= 0:
        err(f"{field}.edges", "must be > 0")
    dens = _array(d, "density", field, err)
    n = _array(d, "n", field, err, integer=True)
    if dens.size != edges.size - 1 or n.size != edges.size - 1:
        err(f"{field}.density", f"needs len(edges) - 1 = {edges.size - 1} values (density {dens.size}, n {n.size})")
    if not np.all(np.isfinite(dens)) or np.any(dens < 0):
        err(f"{field}.density", "must be finite and >= 0")
    total = float((dens * np.diff(edges)).sum())
    if abs(total - 1.0) > 1e-6:
        err(f"{field}.density", f"must integrate to 1 over the bins, got {total!r}")
    return {"edges": edges, "density": dens, "n": n}


_YIELD_KEYS = ("s", "u", "value", "error", "n")
_YIELD_EXTRA = ("mean", "mean_error", "fit", "description")


def _yield_table(d, field, err, empty_rows=False, extras=False):
    """The yield-strain quantile table. ``empty_rows``: a row may be all NaN
    (an S bin with too little data; reported tables only). ``extras``: the
    optional mean, mean_error (nS), fit {a, b} and description."""
    _keys(d, field, err, (), _YIELD_KEYS + (_YIELD_EXTRA if extras else ()))
    s = _array(d, "s", field, err)
    _increasing(s, f"{field}.s", err, uniform=True)
    u = _array(d, "u", field, err)
    _increasing(u, f"{field}.u", err, uniform=True)
    if u[0] < 0 or u[-1] > 1:
        err(f"{field}.u", "quantile levels must lie in [0, 1]")
    if u.size < 2:
        err(f"{field}.u", "needs at least 2 quantile levels")
    val = _array(d, "value", field, err, ndim=2)
    errs = _array(d, "error", field, err, ndim=2)
    n = _array(d, "n", field, err, integer=True)
    for key, a in (("value", val), ("error", errs)):
        _shape(a, (s.size, u.size), f"{field}.{key}", err, "(len(s), len(u))")
    if n.shape != s.shape:
        err(f"{field}.n", f"length {n.size} != length of s ({s.size})")
    rows = np.all(np.isfinite(val), axis=1)
    if empty_rows:
        if not np.all(rows | np.all(np.isnan(val), axis=1)):
            err(f"{field}.value", "each S row must be all finite or all NaN (a bin with too little data)")
        if not rows.any():
            err(f"{field}.value", "no S row has data (leave the table out)")
    elif not rows.all():
        err(f"{field}.value", "yield strains must be finite and > 0 (fill empty S bins before writing)")
    good = val[rows]
    if np.any(good <= 0):
        err(f"{field}.value", "yield strains must be > 0")
    if np.any(np.diff(good, axis=1) < 0):
        i = int(np.flatnonzero(rows)[np.argwhere(np.diff(good, axis=1) < 0)[0, 0]])
        err(f"{field}.value", f"quantiles must be non-decreasing along u (row s = {s[i]:g})")
    out = {"s": s, "u": u, "value": val, "error": errs, "n": n}
    if extras:
        for key in ("mean", "mean_error"):
            if key in d:
                out[key] = _array(d, key, field, err)
                _shape(out[key], s.shape, f"{field}.{key}", err, "(len(s),)")
        if "mean" in out and np.any(out["mean"][np.isfinite(out["mean"])] <= 0):
            err(f"{field}.mean", "mean yield strains must be > 0")
        if "fit" in d:
            fit = d["fit"]
            _keys(fit, f"{field}.fit", err, ("a", "b"))
            out["fit"] = {k: _quantity(fit[k], f"{field}.fit.{k}", err) for k in ("a", "b")}
        if "description" in d:
            if not isinstance(d["description"], str):
                err(f"{field}.description", "must be a string")
            out["description"] = d["description"]
    return out


def _yield_tables(d, field, err):
    """{label: yield table} (``yield_strain_by_lag``): labels such as
    "df=1", "df=4", "since_last"."""
    if not d:
        err(field, "must hold at least one table (leave it out otherwise)")
    out = {}
    for label, table in d.items():
        if not re.fullmatch(LABEL_PATTERN, label):
            err(f"{field}.{label}", f"label must match {LABEL_PATTERN}")
        out[label] = _yield_table(table, f"{field}.{label}", err, empty_rows=True, extras=True)
    return out


def _g2(d, field, err):
    """Pair correlation: lags (nl,) distinct ints >= 0, r (nb,) bin centres,
    value/error (nl, nb) (NaN where a bin has no data), n (nl, nb) pairs,
    fits [nl x {amplitude, exponent, sign}] of g2 - 1."""
    _keys(d, field, err, ("lags", "r", "value", "error", "n", "fits"))
    lags = _array(d, "lags", field, err, integer=True)
    if np.any(np.diff(lags) <= 0):
        err(f"{field}.lags", "must be strictly increasing")
    r = _radii(d, field, err)
    out = {"lags": lags, "r": r}
    for key in ("value", "error"):
        out[key] = _array(d, key, field, err, ndim=2)
    out["n"] = _array(d, "n", field, err, ndim=2, integer=True)
    for key in ("value", "error", "n"):
        _shape(out[key], (lags.size, r.size), f"{field}.{key}", err, "(len(lags), len(r))")
    v = out["value"]
    if np.any(v[np.isfinite(v)] < 0):
        err(f"{field}.value", "a pair correlation must be >= 0")
    fits = d["fits"]
    if not isinstance(fits, list) or len(fits) != lags.size:
        err(f"{field}.fits", f"must be a list of {lags.size} fits (one per lag)")
    out["fits"] = [_power_fit(f, f"{field}.fits.{i}", err) for i, f in enumerate(fits)]
    return out


def _strain_profiles(d, field, err):
    """Radial strain profiles around an isolated rearranger: r (nb,), n
    (nb,) particles per bin, profiles {name: {value, error}} for PROFILES
    (and optionally OPTIONAL_PROFILES); NaN where a bin has no data."""
    _keys(d, field, err, ("r", "n", "profiles"))
    r = _radii(d, field, err)
    n = _array(d, "n", field, err, integer=True)
    _shape(n, r.shape, f"{field}.n", err, "(len(r),)")
    prof = d["profiles"]
    _keys(prof, f"{field}.profiles", err, PROFILES, OPTIONAL_PROFILES)
    out = {"r": r, "n": n, "profiles": {}}
    for name in PROFILES + tuple(p for p in OPTIONAL_PROFILES if p in prof):
        f = f"{field}.profiles.{name}"
        _keys(prof[name], f, err, ("value", "error"))
        pair = {key: _array(prof[name], key, f, err) for key in ("value", "error")}
        for key, a in pair.items():
            _shape(a, r.shape, f"{f}.{key}", err, "(len(r),)")
        if name in _NONNEGATIVE_PROFILES and np.any(pair["value"][np.isfinite(pair["value"])] < 0):
            err(f"{f}.value", "a magnitude must be >= 0")
        out["profiles"][name] = pair
    return out


# --------------------------------------------------------------------------
# The shipped placeholder
# --------------------------------------------------------------------------

#: flag of every placeholder number in the default file
PLACEHOLDER = "placeholder: not measured (default file, see lattice/calibration.py)"


#: sum over the square lattice Z^2 minus 0 of |d|^-3 = 4 zeta(3/2) beta(3/2) (= 9.03362)
LATTICE_SUM_R3 = 9.0336


def continuum_source_strength(phi, nu, a):
    """The source strength kappa (plastic strain x area per unit local
    elastic strain, length^2) of a continuum circular inclusion of the
    site's area a^2 that relaxes the fraction ``phi`` of its own elastic
    deviatoric strain: its interior elastic strain changes by -(1 + nu)/4
    times its plastic strain (2-D Eshelby, nu the 2-D Poisson ratio), so
    kappa = 4 phi a^2 / (1 + nu). The fallback when the far field was not
    measured (calibrate/assemble.py) and the placeholder's value."""
    return 4.0 * phi * a * a / (1.0 + nu)


def placeholder_calibration():
    """The default calibration (``calibrated: false``): plausible magnitudes only.

    - Elastic constants: measured once by this project's particle engine at
      phi = 0.9 (N = 256): instantaneous lambda + 2 mu = 0.36, lambda =
      0.133, mu = 0.116; relaxed lambda + 2 mu ~ 0.25, lambda ~ 0.19,
      mu ~ 0.03 (n = 1 packing, so errors are guesses of 20 %).
    - number density N/V = 0.9 / (pi (0.5^2 + 0.7^2)/2) (exact for phi = 0.9).
    - site size 5 (a rearrangement involves ~10-20 particles), time per
      frame 20, compression source p = 0.05 (the source dilates; plastic
      half-trace x area), rate centred 30 after the start with width 10
      (1.5 and 0.5 frames): guesses.
    - source strength: ``continuum_source_strength`` (the circular
      inclusion of the site's area that relaxes the fraction phi of its
      own strain) = 4 x 0.5 x 25 / 1.76 = 28.4.
    - site-level softness kernels (per frame of a rearranging site, r the
      distance between site centres): c0(r) = 0.01 (r/a)^-3, c1(r) =
      -0.002 (r/a)^-3 for r >= a (softening around a rearrangement that
      decays with distance, a weak relaxation of S towards <S>; order of
      magnitude of the literature, e.g. Zhang et al., PRX 12, 031010
      (2022)); the site itself c0(0) = -0.01 x 9.0336 (so that the total
      softness is conserved: sum over the square lattice of |d|^-3 =
      4 zeta(3/2) beta(3/2) = 9.0336) and c1(0) = -0.02; b = 5 (dilation
      softens).
    - P(S) of site-averaged S: Gaussian, mean -0.5, sd 0.5, on [-3, 2].
    - yield strain given S: Weibull, shape 2, scale 0.06 exp(-0.3 S)
      (eps_dev units), quantiles u = 0.005 ... 0.995, S = -2 ... 1.
    - relaxed fraction 0.5, frames per rearrangement 3.
    - site strain sd 0.012 (the order measured in the unstrained N = 1024
      packings at phi = 0.9 with a = 3.8).

    The optional (reported-only) scalars and curves are measurements with
    no meaningful placeholder and are absent.
    """
    def q(value, rel_err=0.2, unit=""):
        return Quantity(float(value), abs(float(value)) * rel_err, 0, None, unit, "", PLACEHOLDER)

    density = 0.9 / (np.pi * (0.5**2 + 0.7**2) / 2)
    frames, a = 3.0, 5.0
    expo = 3.0
    scalars = {
        "lambda_relaxed": q(0.19), "mu_relaxed": q(0.03), "nu_relaxed": q(0.19 / 0.25, 0.1),
        "lambda_instantaneous": q(0.133, 0.05), "mu_instantaneous": q(0.116, 0.05),
        "nu_instantaneous": q(0.133 / (0.133 + 0.232), 0.05),
        "number_density": Quantity(density, 0.0, 0, None, "", "", PLACEHOLDER),
        "site_size": q(5.0), "time_per_frame": q(20.0, 0.5),
        "compression_p": q(0.05, 0.5), "compression_t_centre": q(30.0, 0.5),
        "compression_width": q(10.0, 0.5), "softness_b": q(5.0, 0.5), "relaxed_fraction": q(0.5),
        "source_strength": q(round(continuum_source_strength(0.5, 0.19 / 0.25, a), 6)),
        "site_strain_sd": q(0.012, 0.3),
        "frames_per_rearrangement": q(frames, 0.3),
    }
    r = np.concatenate([[0.0], np.arange(a, 10 * a + 1e-9, a / 2)])

    def radial(amp, sign, self_value):
        rng = (a, 10 * a)
        fit = {"amplitude": Quantity(amp * a**expo, 0.3 * amp * a**expo, 0, rng, "softness/frame", "",
                                     PLACEHOLDER),
               "exponent": Quantity(expo, 0.5, 0, rng, "1", "", PLACEHOLDER), "sign": sign}
        val = np.concatenate([[self_value], sign * amp * (r[1:] / a) ** -expo])
        return {"r": r, "value": val, "error": 0.3 * np.abs(val), "n": np.zeros(r.size, np.int64), "fit": fit}

    edges = np.round(np.arange(-3.0, 2.0001, 0.1), 10)
    cdf = 0.5 * (1 + np.vectorize(math.erf)((edges + 0.5) / (0.5 * np.sqrt(2))))
    dens = np.diff(cdf) / np.diff(edges)
    dens /= (dens * np.diff(edges)).sum()
    s = np.linspace(-2.0, 1.0, 13)
    u = np.linspace(0.005, 0.995, 100)
    table = 0.06 * np.exp(-0.3 * s)[:, None] * np.sqrt(-np.log1p(-u))[None, :]
    curves = {
        "c0": radial(0.01, +1, -0.01 * LATTICE_SUM_R3), "c1": radial(0.002, -1, -0.02),
        "p_s": {"edges": edges, "density": dens, "n": np.zeros(dens.size, np.int64)},
        "yield_strain": {"s": s, "u": u, "value": table, "error": 0.3 * table,
                         "n": np.zeros(s.size, np.int64)},
    }
    for k, quant in scalars.items():
        quant.unit, quant.description = SCALARS[k][:2]
    return Calibration(scalars=scalars, curves=curves, calibrated=False,
                       description="Placeholder calibration shipped with the code so that the lattice "
                                   "runs before any particle data exists. NOT CALIBRATED: every number "
                                   "is a plausible magnitude, see lattice/calibration.py "
                                   "(placeholder_calibration).",
                       code_version="", inputs=[], source="placeholder_calibration()", config="")


if __name__ == "__main__":  # regenerate the shipped default file
    print(save_calibration(placeholder_calibration(), DEFAULT_PATH))
