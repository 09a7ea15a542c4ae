"""The calibration file (lattice/calibration.py): shipped default, round trip,
clear errors for bad files."""
import copy
import json
import math

import numpy as np
import pytest

from step_epm.lattice.calibration import (DEFAULT_PATH, SCALARS, SCHEMA_VERSION, CalibrationError,
                                          Quantity, load_calibration, parse_calibration,
                                          placeholder_calibration, save_calibration)
from step_epm.lattice.model import ModelOptions, STEPModel


@pytest.fixture
def good():
    return placeholder_calibration().to_json()


def test_default_file_is_the_documented_placeholder():
    cal = load_calibration("default")
    assert cal.calibrated is False and "NOT CALIBRATED" in cal.description
    assert DEFAULT_PATH.read_text() == placeholder_calibration().dumps()
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
    d["scalars"]["residual"].update(value=None, error=None, n=0, flag="too few isolated events")
    d["scalars"]["site_size"].update(value=4.5, error=0.25, n=1234, fit_range=[1.0, 8.0], flag=None)
    d["curves"]["c0"]["n"] = list(range(len(d["curves"]["c0"]["r"])))
    cal = parse_calibration(json.loads(json.dumps(d)), "test")
    p = save_calibration(cal, tmp_path / "sub" / "cal.json")
    back = load_calibration(p)
    assert back.to_json() == cal.to_json()
    assert back.sha256() == cal.sha256()
    assert math.isnan(back["residual"]) and back.scalars["residual"].flag == "too few isolated events"
    q = back.scalars["site_size"]
    assert (q.value, q.error, q.n, q.fit_range) == (4.5, 0.25, 1234, (1.0, 8.0))
    np.testing.assert_array_equal(back.curves["c0"]["n"], np.arange(len(d["curves"]["c0"]["r"])))
    assert back.curves["yield_strain"]["value"].shape == (13, 100)
    assert not list(tmp_path.glob("**/*.tmp"))


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


def test_model_refuses_missing_numbers_it_needs(good):
    """A NaN (too little data) is a valid file but the lattice refuses to run
    on it, naming the field; it runs if the quantity is switched off."""
    d = copy.deepcopy(good)
    d["scalars"]["compression_amplitude"].update(value=None, n=0, flag="no isolated events")
    cal = parse_calibration(d, "test")
    with pytest.raises(CalibrationError, match="scalars.compression_amplitude"):
        STEPModel(16, cal, ModelOptions(volumetric=True))
    STEPModel(16, cal, ModelOptions(volumetric=False))
