"""Validation of the STEP lattice in classic-EPM mode (issue 4, part 6):
avalanche-size exponent tau and the finite-size cutoff vs L.

Run on demand (not collected by pytest; minutes per L):

    NUMBA_NUM_THREADS=1 python benchmarks/lattice_tau.py --sizes 64 128 256 --seconds 180

For each L a lattice of the variant ``--model`` (any preset of
conf/lattice_model/; default classic: e2 trigger, softness off, volumetric
off; default calibration, seed 0, one FFTW thread) is sheared by avalanches for ``--seconds`` of wall time. The
avalanches after the stress plateau is reached (gamma >= the larger of
``--gamma-ss`` and half the final strain) are analysed:

- tau: maximum-likelihood discrete power law (analysis.fit_power_law) on
  [1, s_c] with s_c = <s^2>/<s> (the cutoff), and on the whole range
  [1, s_max]; errors from the Fisher information (avalanches treated as
  independent).
- cutoff: s_c = <s^2>/<s> (bootstrap error, 200 resamples) and the largest
  size s_max; their log-log slopes vs L (s_c ~ L^d_f) by least squares.

Published 2-D quasistatic EPM values are tau ~ 1.2-1.4; 1.5 is the
mean-field value. Prints one line per L, the slopes, and a JSON summary.
"""

import argparse
import json
import math
import time
from importlib import resources

import numpy as np
import yaml
from scipy.stats import linregress

from step_epm.lattice.analysis import fit_power_law
from step_epm.lattice.calibration import load_calibration
from step_epm.lattice.model import ModelOptions, STEPModel

def _presets():
    """The model variants of conf/lattice_model/ (name -> ModelOptions)."""
    out = {}
    for f in resources.files("step_epm.conf").joinpath("lattice_model").iterdir():
        if f.name.endswith(".yaml"):
            d = yaml.safe_load(f.read_text())
            out[d["name"]] = ModelOptions(trigger=d["trigger"], softness=d["softness"],
                                          volumetric=d["volumetric"], elastic=d["elastic"])
    return out


MODELS = _presets()


def run(L, seconds, gamma_ss, seed=0, model="classic"):
    """Shear for ``seconds``; returns the steady-state sizes and run facts."""
    m = STEPModel(L, load_calibration(), MODELS[model], seed=seed, threads=1, snapshots=False)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(20):
            m.avalanche()
    wall = time.perf_counter() - t0
    av = m.avalanches
    g_from = max(gamma_ss, 0.5 * m.gamma)
    sel = av["gamma"] >= g_from
    sizes = av["size"][sel].astype(float)
    stress = av["stress_after"][sel]
    return sizes, {"L": L, "gamma": m.gamma, "gamma_from": g_from, "n_avalanches": int(sel.sum()),
                   "n_avalanches_total": len(av), "frames": m.frame, "wall_s": wall,
                   "ms_per_frame": 1e3 * wall / max(m.frame, 1),
                   "stress_plateau": float(stress.mean()) if stress.size else math.nan}


def cutoff(sizes, rng, n_boot=200):
    """s_c = <s^2>/<s> and its bootstrap standard error."""
    sc = lambda s: float((s * s).mean() / s.mean())
    boot = [sc(rng.choice(sizes, sizes.size)) for _ in range(n_boot)]
    return sc(sizes), float(np.std(boot, ddof=1))


def slope(L, y):
    """Least-squares slope of log y vs log L and its standard error (NaN for two points)."""
    fit = linregress(np.log(L), np.log(y))
    return float(fit.slope), float(fit.stderr) if len(L) > 2 else math.nan


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--seconds", type=float, default=180.0, help="wall time per L")
    ap.add_argument("--gamma-ss", type=float, default=0.0, help="analyse avalanches from this strain on")
    ap.add_argument("--model", choices=sorted(MODELS), default="classic",
                    help="a model variant of conf/lattice_model/ (classic EPM, the full STEP model, ablations)")
    ap.add_argument("--json", help="write the summary here")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for L in args.sizes:
        sizes, info = run(L, args.seconds, args.gamma_ss, model=args.model)
        sc, sc_err = cutoff(sizes, rng) if sizes.size else (math.nan, math.nan)
        info.update(s_c=sc, s_c_error=sc_err, s_max=float(sizes.max()) if sizes.size else math.nan,
                    mean_size=float(sizes.mean()) if sizes.size else math.nan,
                    fit_cut=fit_power_law(sizes, 1, math.floor(sc)) if sizes.size else {},
                    fit_all=fit_power_law(sizes) if sizes.size else {})
        rows.append(info)
        fc, fa = info["fit_cut"], info["fit_all"]
        print(f"L={L}: gamma {info['gamma']:.3f} ({info['n_avalanches']} of {info['n_avalanches_total']} "
              f"avalanches from gamma {info['gamma_from']:.3f}; {info['ms_per_frame']:.3f} ms/frame), "
              f"stress {info['stress_plateau']:.4g}; <s> {info['mean_size']:.2f}, "
              f"s_c {sc:.1f} +- {sc_err:.1f}, s_max {info['s_max']:.0f}; "
              f"tau[1, s_c] {fc.get('tau', math.nan):.3f} +- {fc.get('error', math.nan):.3f}, "
              f"tau[1, s_max] {fa.get('tau', math.nan):.3f} +- {fa.get('error', math.nan):.3f}", flush=True)
    summary = {"runs": rows}
    if len(rows) >= 2:
        Ls = np.array([r["L"] for r in rows], float)
        summary["s_c_slope"] = slope(Ls, [r["s_c"] for r in rows])
        summary["s_max_slope"] = slope(Ls, [r["s_max"] for r in rows])
        print(f"cutoff scaling: s_c ~ L^{summary['s_c_slope'][0]:.2f} (+- {summary['s_c_slope'][1]:.2f}), "
              f"s_max ~ L^{summary['s_max_slope'][0]:.2f} (+- {summary['s_max_slope'][1]:.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
