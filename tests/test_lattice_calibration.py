"""The calibration file (lattice/calibration.py, docs/calibration.md): shipped
default, round trip (with every optional entry), older versions refused
with the reason, clear errors for bad files, the lattice running from a
file with or without the optional entries."""
import copy
import json
import math

import numpy as np
import pytest

from step_epm.lattice.calibration import (CURVES, DEFAULT_PATH, OPTIONAL_SCALARS,
                                          REQUIRED_SCALARS, SCALARS, SCHEMA_VERSION,
                                          CalibrationError, Quantity, load_calibration,
                                          parse_calibration, placeholder_calibration, save_calibration)
from step_epm.lattice.model import ModelOptions, STEPModel


@pytest.fixture
def good():
    return placeholder_calibration().to_json()


def q(value, error=0.01, n=20, fit_range=None, flag=None):
    return {"value": value, "error": error, "n": n, "fit_range": fit_range, "unit": "", "description": "",
            "flag": flag}


def power_fit(amp=0.5, expo=2.0, sign=1):
    return {"amplitude": q(amp, fit_range=[2.0, 8.0]), "exponent": q(expo, fit_range=[2.0, 8.0]), "sign": sign}


def yield_table(s, u, empty_row=None):
    val = [[0.02 * (1 + j) * (1.0 - 0.1 * si) for j in range(len(u))] for si in s]
    if empty_row is not None:
        val[empty_row] = [None] * len(u)
    return {"s": list(s), "u": list(u), "value": val,
            "error": [[None if v is None else 0.1 * v for v in row] for row in val],
            "n": [0 if empty_row == i else 50 for i in range(len(s))]}


def full_file():
    """The placeholder plus every optional scalar and curve (JSON form)."""
    d = placeholder_calibration().to_json()
    d["config"] = "particles:\n  N: 4000\nseed: 3\n"
    d["code_version"] = "0123abc"
    d["inputs"] = [{"path": "runs/seed0.h5", "sha256": "cd" * 32}]
    opt = {"residual": q(0.015), "c_dev": q(0.12, fit_range=[2.0, 8.0]), "bg_dev": q(-1e-5),
           "c_xy": q(0.04), "bg_xy": q(2e-5), "k_sin2": q(-0.02), "compression_length": q(1.7),
           "plastic_strain": q(0.3), "yield_a": q(0.05), "yield_b": q(-0.008),
           "d2min_length": q(None, None, 0, flag="no D2min correlation measured"),
           "self_change": q(-0.02), "self_change_particle": q(-0.03), "softness_b_particle": q(4.0),
           "source_strength_drops": q(100.0), "c_dev_site": q(0.04), "c_xy_site": q(0.014),
           "k_sin2_site": q(-0.001)}
    assert set(opt) == set(OPTIONAL_SCALARS)
    d["scalars"].update(opt)
    r = [0.5, 1.5, 2.5, 3.5]
    d["curves"]["g2"] = {"lags": [0, 1, 4], "r": r,
                         "value": [[3.0, 1.5, 1.1, None], [2.0, 1.2, 1.0, None], [1.5, 1.1, 1.0, None]],
                         "error": [[0.3, 0.1, 0.1, None]] * 3, "n": [[30, 40, 50, 0]] * 3,
                         "fits": [power_fit(), power_fit(0.3, 1.5, 1),
                                  {"amplitude": q(None, None, 0, flag="fit failed"),
                                   "exponent": q(None, None, 0, flag="fit failed"), "sign": -1}]}
    prof = {name: {"value": [0.01, 0.002, None, 0.0005], "error": [0.001] * 4}
            for name in ("k", "eps_dev", "eps_xy", "abs_k", "abs_eps_xy", "k_sin2", "k_iso")}
    d["curves"]["strain_profiles"] = {"r": r, "n": [100, 300, 0, 700], "profiles": prof}
    d["curves"]["frame_times"] = {"edges": [0.1, 1.0, 10.0, 100.0], "density": [0.5, 0.05, 0.1 / 90],
                                  "n": [45, 45, 10]}
    s5, u3 = [-1.0, -0.5, 0.0, 0.5, 1.0], [0.1, 0.5, 0.9]
    lag1 = yield_table(s5, u3, empty_row=4)
    lag1.update(mean=[0.04, 0.038, 0.036, 0.034, None], mean_error=[0.001] * 4 + [None],
                fit={"a": q(0.036), "b": q(-0.004)}, description="particle S at f - 1")
    d["curves"]["yield_strain_by_lag"] = {"df=1": lag1, "df=4": yield_table(s5, u3),
                                          "since_last": yield_table([-1.0, 0.0, 1.0], [0.0, 1.0])}
    d["curves"]["p_s_particles"] = {"edges": [-2.0, 0.0, 2.0], "density": [0.3, 0.2], "n": [600, 400]}
    d["curves"]["p_s_rearrangers"] = {"edges": [-2.0, 0.0, 2.0], "density": [0.1, 0.4], "n": [10, 40]}
    for name in ("c0_particle", "c1_particle"):
        d["curves"][name] = {"r": [0.75, 1.25, 2.0], "value": [0.05, -0.01, 0.001], "error": [0.01] * 3,
                             "n": [10, 50, 80], "fit": power_fit(0.05, 3.0, 1)}
    assert set(d["curves"]) == set(CURVES)
    return d


def assert_json_close(a, b, rtol=1e-13, path="$"):
    """Equal JSON trees, floats to ``rtol`` (a few ulp), everything else exactly."""
    if isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, (int, float)) and isinstance(b, (int, float)), path
        assert a == pytest.approx(b, rel=rtol, abs=0.0), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), path
        for k in a:
            assert_json_close(a[k], b[k], rtol, f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_json_close(x, y, rtol, f"{path}[{i}]")
    else:
        assert a == b, path


def test_assert_json_close_catches_a_change():
    assert_json_close({"a": [1.0, None, "x"]}, {"a": [1.0 + 1e-15, None, "x"]})
    for other in ({"a": [1.0 + 1e-9, None, "x"]}, {"a": [1.0, 0.0, "x"]}, {"b": [1.0, None, "x"]}):
        with pytest.raises(AssertionError):
            assert_json_close({"a": [1.0, None, "x"]}, other)


def test_default_file_is_the_documented_placeholder():
    cal = load_calibration("default")
    assert cal.calibrated is False and "NOT CALIBRATED" in cal.description
    # numpy's exp/log1p differ in the last ulp between SIMD builds (AVX-512 vs
    # AVX2): the shipped file must equal the generator to a few ulp, not bitwise
    assert_json_close(json.loads(DEFAULT_PATH.read_text()), json.loads(placeholder_calibration().dumps()))
    assert SCHEMA_VERSION == 3 and cal.config == ""
    # the required entries, no optional one
    assert set(cal.scalars) == set(REQUIRED_SCALARS)
    assert set(REQUIRED_SCALARS) | set(OPTIONAL_SCALARS) == set(SCALARS)
    assert set(cal.curves) == {"c0", "c1", "p_s", "yield_strain"}
    for name, q in cal.scalars.items():
        assert q.n == 0 and q.flag and math.isfinite(q.value), name
        assert q.unit == SCALARS[name][0]
    for kind in ("relaxed", "instantaneous"):
        lam, mu = cal[f"lambda_{kind}"], cal[f"mu_{kind}"]
        assert cal[f"nu_{kind}"] == pytest.approx(lam / (lam + 2 * mu), rel=1e-6)
    # measured by our particle engine at phi = 0.9: lam + 2 mu = 0.36 instantaneous, ~0.25 relaxed
    assert cal["lambda_instantaneous"] + 2 * cal["mu_instantaneous"] == pytest.approx(0.365, abs=0.01)
    assert cal["lambda_relaxed"] + 2 * cal["mu_relaxed"] == pytest.approx(0.25, abs=0.01)
    ps = cal.curves["p_s"]
    assert (ps["density"] * np.diff(ps["edges"])).sum() == pytest.approx(1.0, abs=1e-12)


def test_round_trip(tmp_path, good):
    """Everything survives write -> read: NaN (as null) with n = 0 and a flag,
    fit ranges, input hashes, integer sample sizes."""
    d = copy.deepcopy(good)
    d["calibrated"] = True
    d["inputs"] = [{"path": "runs/seed0.h5", "sha256": "ab" * 32}]
    d["scalars"]["residual"] = q(None, None, 0, flag="too few isolated events")
    d["scalars"]["site_size"].update(value=4.5, error=0.25, n=1234, fit_range=[1.0, 8.0], flag=None)
    d["curves"]["c0"]["n"] = list(range(len(d["curves"]["c0"]["r"])))
    cal = parse_calibration(json.loads(json.dumps(d)), "test")
    p = save_calibration(cal, tmp_path / "sub" / "cal.json")
    back = load_calibration(p)
    assert back.to_json() == cal.to_json()
    assert back.sha256() == cal.sha256()
    assert math.isnan(back["residual"]) and back.scalars["residual"].flag == "too few isolated events"
    site = back.scalars["site_size"]
    assert (site.value, site.error, site.n, site.fit_range) == (4.5, 0.25, 1234, (1.0, 8.0))
    np.testing.assert_array_equal(back.curves["c0"]["n"], np.arange(len(d["curves"]["c0"]["r"])))
    assert back.curves["yield_strain"]["value"].shape == (13, 100)
    assert not list(tmp_path.glob("**/*.tmp"))


def test_round_trip_with_every_optional_entry(tmp_path):
    d = full_file()
    cal = parse_calibration(json.loads(json.dumps(d)), "test")
    assert set(cal.scalars) == set(SCALARS) and set(cal.curves) == set(CURVES)
    p = save_calibration(cal, tmp_path / "full.json")
    back = load_calibration(p)
    assert back.to_json() == cal.to_json() and back.sha256() == cal.sha256()
    assert json.loads(p.read_text())["schema_version"] == SCHEMA_VERSION
    assert back.config == d["config"] and back.code_version == "0123abc" and back.inputs == d["inputs"]
    assert back["c_dev"] == 0.12 and back.scalars["c_dev"].fit_range == (2.0, 8.0)
    assert back.scalars["c_dev"].unit == SCALARS["c_dev"][0]          # unit filled from the schema
    assert math.isnan(back["d2min_length"]) and back.scalars["d2min_length"].flag
    g2 = back.curves["g2"]
    np.testing.assert_array_equal(g2["lags"], [0, 1, 4])
    assert g2["value"].shape == (3, 4) and math.isnan(g2["value"][0, 3]) and g2["n"].dtype == np.int64
    assert g2["fits"][0]["amplitude"].value == 0.5 and math.isnan(g2["fits"][2]["exponent"].value)
    sp = back.curves["strain_profiles"]
    assert set(sp["profiles"]) == {"k", "eps_dev", "eps_xy", "abs_k", "abs_eps_xy", "k_sin2", "k_iso"}
    assert math.isnan(sp["profiles"]["eps_dev"]["value"][2])
    tabs = back.curves["yield_strain_by_lag"]
    assert list(tabs) == ["df=1", "df=4", "since_last"]
    assert np.all(np.isnan(tabs["df=1"]["value"][4])) and tabs["df=1"]["fit"]["b"].value == -0.004
    assert tabs["df=1"]["description"] == "particle S at f - 1"
    assert back.curves["frame_times"]["n"].sum() == 100
    assert back.get("residual").value == 0.015 and placeholder_calibration().get("c_dev") is None


@pytest.mark.parametrize("version", [1, 2])
def test_older_versions_are_refused_with_the_reason(version):
    """Version 1 and 2 files meant other things by the compression and the
    yield strain (lattice/calibration.py, module docstring): refused, with
    what changed and what to do, not silently misread."""
    d = full_file()
    d["schema_version"] = version
    with pytest.raises(CalibrationError, match="'schema_version'.*rerun step-calibrate"):
        parse_calibration(d, "old")
    # residual is optional
    d = full_file()
    del d["scalars"]["residual"]
    assert "residual" not in parse_calibration(d, "v3").scalars


def test_continuum_source_strength_is_the_circular_inclusion():
    """kappa = 4 phi a^2/(1 + nu): a circular inclusion of area a^2 with
    plastic strain kappa e / a^2 changes its own elastic strain by
    -(1 + nu)/4 times that, i.e. by -phi e."""
    from step_epm.lattice.calibration import continuum_source_strength
    phi, nu, a = 0.3, 0.6, 4.0
    kappa = continuum_source_strength(phi, nu, a)
    assert -(1 + nu) / 4 * kappa / a**2 == pytest.approx(-phi, rel=1e-15)


def mutate(path, value):
    """Set (or delete, value=DELETE) the item at a dotted path."""
    def apply(d):
        keys = path.split(".")
        for k in keys[:-1]:
            d = d[int(k)] if isinstance(d, list) else d[k]
        last = keys[-1]
        if value is DELETE:
            del d[last]
        elif isinstance(d, list):
            d[int(last)] = value
        else:
            d[last] = value
    return apply


DELETE = object()

BAD = [
    ("schema", mutate("schema", "something-else"), "schema"),
    ("version", mutate("schema_version", SCHEMA_VERSION + 1), "schema_version"),
    ("calibrated", mutate("calibrated", "no"), "calibrated"),
    ("missing scalar", mutate("scalars.mu_relaxed", DELETE), "scalars.mu_relaxed"),
    ("unknown scalar", mutate("scalars.shear_rate", {"value": 1, "error": 0, "n": 1}), "scalars.shear_rate"),
    ("negative mu", mutate("scalars.mu_relaxed.value", -0.1), "scalars.mu_relaxed.value"),
    ("fraction > 1", mutate("scalars.relaxed_fraction.value", 1.5), "scalars.relaxed_fraction.value"),
    ("string value", mutate("scalars.site_size.value", "5"), "scalars.site_size.value"),
    ("missing error", mutate("scalars.site_size.error", DELETE), "scalars.site_size.error"),
    ("negative n", mutate("scalars.site_size.n", -1), "scalars.site_size.n"),
    ("float n", mutate("scalars.site_size.n", 2.5), "scalars.site_size.n"),
    ("NaN with data", lambda d: d["scalars"]["site_size"].update(value=None, n=10), "scalars.site_size.value"),
    ("no data no flag", mutate("scalars.site_size.flag", None), "scalars.site_size.flag"),
    ("bad fit range", mutate("scalars.site_size.fit_range", [3.0, 1.0]), "scalars.site_size.fit_range"),
    ("nu inconsistent", mutate("scalars.nu_relaxed.value", 0.5), "scalars.nu_relaxed.value"),
    ("missing curve", mutate("curves.p_s", DELETE), "curves.p_s"),
    ("r not increasing", mutate("curves.c0.r.3", 0.2), "curves.c0.r"),
    ("c0 length", lambda d: d["curves"]["c0"]["value"].pop(), "curves.c0.value"),
    ("c1 fit sign", mutate("curves.c1.fit.sign", 0), "curves.c1.fit.sign"),
    ("c1 fit missing", mutate("curves.c1.fit", DELETE), "curves.c1.fit"),
    ("P(S) normalisation", lambda d: d["curves"]["p_s"]["density"].__setitem__(0, 5.0), "curves.p_s.density"),
    ("P(S) counts", mutate("curves.p_s.n.0", -3), "curves.p_s.n"),
    ("yield not monotone", mutate("curves.yield_strain.value.2.50", 5.0), "curves.yield_strain.value"),
    ("yield non-positive", mutate("curves.yield_strain.value.0.0", 0.0), "curves.yield_strain.value"),
    ("yield S grid", mutate("curves.yield_strain.s.1", -1.9), "curves.yield_strain.s"),
    ("yield u range", lambda d: d["curves"]["yield_strain"].update(
        u=[x - 0.01 for x in d["curves"]["yield_strain"]["u"]]), "curves.yield_strain.u"),
    ("yield shape", lambda d: d["curves"]["yield_strain"]["error"].pop(), "curves.yield_strain.error"),
    ("inputs", mutate("inputs", [{"path": "x"}]), "inputs"),
]


BY_LAG = "curves.yield_strain_by_lag"
BAD_V2 = [
    ("unknown top level", mutate("curve", {}), "curve"),
    ("config not text", mutate("config", 3), "config"),
    ("unknown curve", mutate("curves.g3", {}), "curves.g3"),
    ("compression length 0", mutate("scalars.compression_length.value", 0.0), "scalars.compression_length.value"),
    ("negative plastic strain", mutate("scalars.plastic_strain.value", -0.1), "scalars.plastic_strain.value"),
    ("negative d2min length", mutate("scalars.d2min_length", q(-1.0)), "scalars.d2min_length.value"),
    ("negative residual", mutate("scalars.residual.value", -0.01), "scalars.residual.value"),
    ("c_dev string", mutate("scalars.c_dev.value", "big"), "scalars.c_dev.value"),
    ("c_dev no data no flag", lambda d: d["scalars"]["c_dev"].update(n=0), "scalars.c_dev.flag"),
    ("yield_b NaN with data", lambda d: d["scalars"]["yield_b"].update(value=None), "scalars.yield_b.value"),
    ("c0 unknown key", mutate("curves.c0.median", [1.0]), "curves.c0.median"),
    ("c0 NaN value", mutate("curves.c0.value.2", None), "curves.c0.value"),
    ("lattice yield table empty row", mutate("curves.yield_strain.value.0", [None] * 100), "curves.yield_strain.value"),
    ("g2 lags order", mutate("curves.g2.lags", [0, 4, 1]), "curves.g2.lags"),
    ("g2 negative lag", mutate("curves.g2.lags.0", -1), "curves.g2.lags"),
    ("g2 missing n", mutate("curves.g2.n", DELETE), "curves.g2.n"),
    ("g2 shape", lambda d: d["curves"]["g2"]["value"].pop(), "curves.g2.value"),
    ("g2 negative", mutate("curves.g2.value.0.0", -0.5), "curves.g2.value"),
    ("g2 r", mutate("curves.g2.r.0", 0.0), "curves.g2.r"),
    ("g2 fits count", lambda d: d["curves"]["g2"]["fits"].pop(), "curves.g2.fits"),
    ("g2 fit sign", mutate("curves.g2.fits.1.sign", 2), "curves.g2.fits.1.sign"),
    ("g2 fit negative amplitude", mutate("curves.g2.fits.0.amplitude.value", -1.0), "curves.g2.fits.0.amplitude.value"),
    ("profile missing", mutate("curves.strain_profiles.profiles.abs_k", DELETE), "curves.strain_profiles.profiles.abs_k"),
    ("profile unknown", mutate("curves.strain_profiles.profiles.k_cos2", {"value": [0.0] * 4, "error": [0.0] * 4}),
     "curves.strain_profiles.profiles.k_cos2"),
    ("negative magnitude", mutate("curves.strain_profiles.profiles.eps_dev.value.0", -0.01),
     "curves.strain_profiles.profiles.eps_dev.value"),
    ("profile length", lambda d: d["curves"]["strain_profiles"]["profiles"]["k"]["error"].pop(),
     "curves.strain_profiles.profiles.k.error"),
    ("profile counts", mutate("curves.strain_profiles.n.1", 2.5), "curves.strain_profiles.n"),
    ("frame times edge 0", mutate("curves.frame_times.edges.0", 0.0), "curves.frame_times.edges"),
    ("frame times normalisation", mutate("curves.frame_times.density.0", 0.6), "curves.frame_times.density"),
    ("p_s_particles normalisation", mutate("curves.p_s_particles.density.1", 0.3), "curves.p_s_particles.density"),
    ("p_s_rearrangers counts", mutate("curves.p_s_rearrangers.n", [1]), "curves.p_s_rearrangers.density"),
    ("by lag empty", mutate(BY_LAG, {}), BY_LAG),
    ("by lag label", lambda d: d["curves"]["yield_strain_by_lag"].update({"df 2": yield_table([0.0, 1.0], [0.0, 1.0])}),
     BY_LAG + ".df 2"),
    ("by lag partial row", mutate(BY_LAG + ".df=1.value.4.0", 0.1), BY_LAG + ".df=1.value"),
    ("by lag all rows empty", lambda d: d["curves"]["yield_strain_by_lag"]["since_last"].update(
        value=[[None, None]] * 3), BY_LAG + ".since_last.value"),
    ("by lag not monotone", mutate(BY_LAG + ".df=4.value.0.2", 0.0001), BY_LAG + ".df=4.value"),
    ("by lag non-uniform s", mutate(BY_LAG + ".df=4.s.1", -0.7), BY_LAG + ".df=4.s"),
    ("by lag fit", mutate(BY_LAG + ".df=1.fit.a", DELETE), BY_LAG + ".df=1.fit.a"),
    ("by lag mean length", lambda d: d["curves"]["yield_strain_by_lag"]["df=1"]["mean"].pop(), BY_LAG + ".df=1.mean"),
    ("by lag unknown key", mutate(BY_LAG + ".df=4.median", [1.0]), BY_LAG + ".df=4.median"),
]


@pytest.mark.parametrize("label,change,field", BAD_V2, ids=[b[0] for b in BAD_V2])
def test_bad_v2_entry_gives_error_naming_the_field(tmp_path, label, change, field):
    d = full_file()
    parse_calibration(copy.deepcopy(d), "unchanged")   # the base is valid
    change(d)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(CalibrationError) as exc:
        load_calibration(p)
    msg = str(exc.value)
    assert f"'{field}" in msg and str(p) in msg, msg


@pytest.mark.parametrize("label,change,field", BAD, ids=[b[0] for b in BAD])
def test_bad_file_gives_error_naming_the_field(tmp_path, good, label, change, field):
    d = copy.deepcopy(good)
    change(d)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(CalibrationError) as exc:
        load_calibration(p)
    msg = str(exc.value)
    assert f"'{field}" in msg and str(p) in msg, msg


def test_unreadable_files(tmp_path):
    with pytest.raises(CalibrationError, match="cannot read"):
        load_calibration(tmp_path / "absent.json")
    p = tmp_path / "broken.json"
    p.write_text('{"schema": "step-calibration", ')
    with pytest.raises(CalibrationError, match="not valid JSON"):
        load_calibration(p)
    p.write_text(DEFAULT_PATH.read_text().replace('"value": 0.19', '"value": NaN', 1))
    with pytest.raises(CalibrationError, match="NaN is not allowed"):
        load_calibration(p)


def test_never_writes_an_invalid_file(tmp_path):
    cal = placeholder_calibration()
    cal.scalars["mu_relaxed"] = Quantity(-1.0, 0.1, 3, None, "", "", None)
    with pytest.raises(CalibrationError, match="mu_relaxed"):
        save_calibration(cal, tmp_path / "x.json")
    assert not list(tmp_path.iterdir())


def test_model_refuses_missing_numbers_it_needs():
    """A NaN (too little data) is a valid file but the lattice refuses to run
    on it, naming the field; it runs if the quantity is switched off. NaN or
    absent optional entries (d2min_length here) do not matter to it."""
    d = full_file()
    d["scalars"]["compression_p"].update(value=None, n=0, flag="no isolated events")
    cal = parse_calibration(d, "test")
    with pytest.raises(CalibrationError, match="scalars.compression_p"):
        STEPModel(16, cal, ModelOptions(volumetric=True))
    STEPModel(16, cal, ModelOptions(volumetric=False))
    with pytest.raises(CalibrationError, match="scalars.plastic_strain"):   # absent: named too
        placeholder_calibration().require_finite(["site_size", "plastic_strain"])


def test_optional_entries_do_not_change_the_lattice(tmp_path):
    """The optional entries do not change the dynamics: a file with every
    optional entry gives the placeholder's avalanches."""
    def run(cal):
        m = STEPModel(16, cal, ModelOptions(), seed=5)
        rows = [m.avalanche() for _ in range(25)]
        return m.avalanches["size"][rows].tolist(), m.gamma, m.S.copy()
    ref = run(placeholder_calibration())
    assert max(ref[0]) > 1                      # some avalanches do propagate
    for d in (full_file(),):
        p = tmp_path / "full.json"
        p.write_text(json.dumps(d))
        sizes, gamma, S = run(load_calibration(p))
        assert sizes == ref[0] and gamma == ref[1]
        np.testing.assert_array_equal(S, ref[2])
