"""The STEP lattice model: quasistatic extremal dynamics of a periodic
lattice of sites with elastic strain, softness and yield quantiles
(SPEC.md section 5; equations and conventions in docs/model.md, "Model").

Units: lengths in sites (side a, from the calibration, in particle
diameters), time in lattice frames (dt from the calibration), strains
dimensionless (k = half trace, e1 = (exx - eyy)/2, e2 = exy; eps_dev =
2 sqrt(e1^2 + e2^2)), stress in the calibration's unit (sigma_xy =
2 mu <e2>), softness in the calibration's (SVM distance) unit. The applied
strain ``gamma`` is the engineering shear strain: a uniform e2 increment x
raises gamma by 2 x (SPEC.md section 0).

``STEPModel(L, calibration, options, seed, threads)`` holds the state;
``avalanche()`` loads to the next instability and runs the avalanche to
its end; ``load()`` and ``run_avalanche(site)`` are its two halves. Every
rearrangement and every avalanche is appended to ``rearrangements`` and
``avalanches`` (``Table``).
"""

import logging
import math
from dataclasses import dataclass

import numpy as np
import pyfftw

from . import dynamics as dyn
from .calibration import Calibration, CalibrationError
from .fft_plans import Planner
from .kernels import EshelbyKernels

log = logging.getLogger(__name__)

TRIGGERS = {"eps_dev": 0, "e2": 1}
ELASTIC = ("relaxed", "instantaneous")



@dataclass(frozen=True)
class ModelOptions:
    """Ablation switches (SPEC.md section 5).

    trigger: "eps_dev" (2 sqrt(e1^2 + e2^2) >= eps_y of the elastic strain) or
        "e2" (2 |e2| >= eps_y).
    softness: False = classic EPM: S frozen, thresholds from the marginal
        yield-strain distribution (the calibrated one averaged over P(S)).
    volumetric: the transient compression source of each rearrangement.
    elastic: which calibrated Lame constants set the kernels ("relaxed" or
        "instantaneous").
    """

    trigger: str = "eps_dev"
    softness: bool = True
    volumetric: bool = True
    elastic: str = "relaxed"

    def __post_init__(self):
        if self.trigger not in TRIGGERS:
            raise ValueError(f"trigger must be one of {sorted(TRIGGERS)}, got {self.trigger!r}")
        if self.elastic not in ELASTIC:
            raise ValueError(f"elastic must be one of {ELASTIC}, got {self.elastic!r}")


# --------------------------------------------------------------------------
# Calibration -> lattice parameters
# --------------------------------------------------------------------------

def quarter_planes(G, odd):
    """The quarter Q[c, qx, qy], 0 <= qx, qy <= L // 2, of real-space kernel
    planes G (n, L, L) (offsets mod L) that are even in each offset, or odd
    in both for the planes listed in ``odd`` (dynamics module docstring),
    symmetrised exactly: the mean of the four mirror images (the planes
    come from inverse transforms, symmetric to round-off only)."""
    n, L, _ = G.shape
    mirror = (-np.arange(L)) % L
    sign = np.ones((n, 1, 1))
    sign[list(odd)] = -1.0
    gx, gy = G[:, mirror, :], G[:, :, mirror]
    sym = 0.25 * ((G + sign * gx) + (sign * gy + G[:, mirror][:, :, mirror]))
    h = L // 2 + 1
    return np.ascontiguousarray(sym[:, :h, :h])


def radial_profile(curve):
    """A calibration's radial curve c(r) (c0 or c1; r in particle lengths) as
    a function of r: the first point's value for r < r_0, linear
    interpolation between the points, and the power-law fit
    sign * amplitude * r^-exponent beyond the last point, or 0 there when
    the fit is not a result (NaN, an exponent <= 0, or an error above the
    value: no tail is extrapolated from an unresolved fit)."""
    r, v = curve["r"], curve["value"]
    fit = curve["fit"]
    A, P = fit["amplitude"], fit["exponent"]
    amp, expo, sign = A.value, P.value, fit["sign"]
    tail = (math.isfinite(amp) and math.isfinite(expo) and expo > 0
            and not A.error > abs(amp) and not P.error > abs(expo))

    def c(rr):
        rr = np.asarray(rr, dtype=float)
        out = np.interp(rr, r, v)
        far = rr > r[-1]
        if np.any(far):
            out[far] = sign * amp * rr[far] ** -expo if tail else 0.0
        return out
    return c


def site_kernel(c, L, a):
    """The site-level softness kernel on the periodic L x L lattice: entry
    [dx, dy] is c(a |d|) at the minimum-image offset d = (dx, dy) (sites),
    c a site-level radial law (``radial_profile`` of the calibration's c0 or
    c1, measured between site centres at exactly these distances, r = 0 the
    rearranging site itself; calibrate/site_events.py)."""
    idx = np.minimum(np.arange(L), L - np.arange(L)).astype(float)
    return np.ascontiguousarray(c(a * np.hypot(idx[:, None], idx[None, :])))


def marginal_yield_table(ytab, p_s, n_u=512):
    """Quantiles of the yield strain averaged over P(S), on n_u uniform
    levels spanning the calibrated u grid: F(eps) = sum_b P_b F(eps | S_b)
    over the P(S) bins (S_b the bin centre, F(. | S) interpolated in S and
    inverted in u), inverted on a fine eps grid. Returns (u grid, 1 x n_u table)."""
    s, u, val = ytab["s"], ytab["u"], ytab["value"]
    edges, dens = p_s["edges"], p_s["density"]
    pb = dens * np.diff(edges)
    sb = 0.5 * (edges[1:] + edges[:-1])
    # quantile curves at the bin centres (clamped in S, as the lattice does)
    rows = np.array([[np.interp(np.clip(x, s[0], s[-1]), s, val[:, j]) for j in range(u.size)]
                     for x in sb])
    eps = np.linspace(val.min(), val.max(), 20001)
    cdf = np.zeros_like(eps)
    for p, row in zip(pb, rows):
        cdf += p * np.interp(eps, row, u)  # F(eps | S_b), clamped to [u0, u1]
    ug = np.linspace(u[0], u[-1], n_u)
    cdf = np.maximum.accumulate(cdf)
    q = np.interp(ug, cdf, eps)
    return ug, np.maximum.accumulate(q)[None, :]


@dataclass
class LatticeParams:
    """Everything the lattice takes from the calibration, in lattice units.

    lam, mu, nu: the chosen Lame constants. a: site size (particle
    lengths). n_per_site = number density x a^2. D = D_L dt / a^2 with
    D_L = (lam + 2 mu)/eta and eta = number density (unit drag per particle).
    comp_p = compression_p / a^2: the volumetric source's plastic half-trace
    x site areas (> 0: it dilates, its surroundings are compressed);
    comp_t, comp_w: centre and width of its rate in frames (time / dt).
    n_frames: frames a rearrangement lasts (calibrated value rounded, >= 1).
    phi: relaxed fraction. kappa: source strength in site areas
    (source_strength / a^2 / strain_scale): a rearrangement releases the
    plastic strain x area kappa (e1, e2) of its elastic strain at onset.
    strain_scale = mu_relaxed / mu: the yield table is local stress over
    2 mu_relaxed, so with the instantaneous constants every threshold (and
    the initial strain spread) is multiplied by it (the same stress) and
    kappa divided by it. e0_sd: the initial site strain spread,
    site_strain_sd x strain_scale.
    b: softness per unit dk (site level).
    """

    lam: float
    mu: float
    nu: float
    a: float
    n_per_site: float
    dt: float
    D: float
    comp_p: float
    comp_t: float
    comp_w: float
    n_frames: int
    phi: float
    kappa: float
    strain_scale: float
    e0_sd: float
    b: float

    @classmethod
    def from_calibration(cls, cal: Calibration, options: ModelOptions):
        kind = options.elastic
        need = [f"lambda_{kind}", f"mu_{kind}", "mu_relaxed", "number_density", "site_size",
                "time_per_frame", "relaxed_fraction", "source_strength", "site_strain_sd",
                "frames_per_rearrangement"]
        if options.volumetric:
            need += ["compression_p", "compression_t_centre", "compression_width"]
        if options.softness:
            need += ["softness_b"]
        cal.require_finite(need)
        lam, mu = cal[f"lambda_{kind}"], cal[f"mu_{kind}"]
        a, dens, dt = cal["site_size"], cal["number_density"], cal["time_per_frame"]
        n_site = dens * a * a
        if n_site < 1.0:
            raise CalibrationError(f"calibration {cal.source}: a site must hold at least one particle "
                                   f"(number_density x site_size^2 = {n_site:g})")
        n_frames = max(1, int(round(cal["frames_per_rearrangement"])))
        soft = options.softness
        b = cal["softness_b"] if soft else 0.0
        vol = options.volumetric
        scale = cal["mu_relaxed"] / mu
        return cls(lam=lam, mu=mu, nu=lam / (lam + 2 * mu), a=a, n_per_site=n_site, dt=dt,
                   D=(lam + 2 * mu) / dens * dt / a**2,
                   comp_p=cal["compression_p"] / a**2 if vol else 0.0,
                   comp_t=cal["compression_t_centre"] / dt if vol else 0.0,
                   comp_w=cal["compression_width"] / dt if vol else 1.0,
                   n_frames=n_frames, phi=cal["relaxed_fraction"],
                   kappa=cal["source_strength"] / a**2 / scale, strain_scale=scale,
                   e0_sd=cal["site_strain_sd"] * scale, b=b)


def _aligned_zeros(shape, dtype):
    """Zeroed SIMD-aligned array (for FFTW plans on it)."""
    a = pyfftw.empty_aligned(shape, dtype=dtype)
    a[...] = 0
    return a


# --------------------------------------------------------------------------
# Growable column tables
# --------------------------------------------------------------------------

class Table:
    """Columns of equal length that grow by appending rows (amortised O(1))."""

    def __init__(self, columns):
        self.dtypes = dict(columns)
        self.n = 0
        self._cols = {k: np.zeros(16, dtype=t) for k, t in self.dtypes.items()}

    def _reserve(self, m):
        cap = next(iter(self._cols.values())).size
        if self.n + m > cap:
            new = max(2 * cap, self.n + m)
            for k, v in self._cols.items():
                w = np.zeros(new, dtype=v.dtype)
                w[:self.n] = v[:self.n]
                self._cols[k] = w

    def append(self, m=1, **cols):
        """Append m rows: every column a scalar or an array of length m.
        Columns not given are zero. Returns the first new row index."""
        self._reserve(m)
        for k, v in cols.items():
            self._cols[k][self.n:self.n + m] = v
        start = self.n
        self.n += m
        return start

    def __getitem__(self, key):
        return self._cols[key][:self.n]

    def col(self, key):
        """Writable view of a column (length n)."""
        return self._cols[key][:self.n]

    def as_dict(self):
        return {k: v[:self.n].copy() for k, v in self._cols.items()}

    @classmethod
    def from_dict(cls, columns, data):
        t = cls(columns)
        n = len(next(iter(data.values()))) if data else 0
        t._reserve(n)
        for k in t.dtypes:
            t._cols[k][:n] = data[k]
        t.n = n
        return t

    def __len__(self):
        return self.n


REARRANGEMENT_COLUMNS = [
    ("site_x", np.int32), ("site_y", np.int32), ("avalanche", np.int64),
    ("frame", np.int64), ("frame_end", np.int64), ("gamma", np.float64),
    ("k", np.float64), ("e1", np.float64), ("e2", np.float64),
    ("eps_y", np.float64),
    ("p1", np.float64), ("p2", np.float64),
    ("S_before", np.float64), ("S_after", np.float64),
    ("r1", np.float64), ("r2", np.float64),
]
AVALANCHE_COLUMNS = [
    ("id", np.int64), ("frame", np.int64), ("duration", np.int64), ("size", np.int64),
    ("n_sites", np.int64), ("extent", np.float64), ("gamma", np.float64),
    ("stress_before", np.float64), ("stress_after", np.float64),
    ("S_mean", np.float64), ("S_std", np.float64), ("first", np.int64),
]
#: units and meaning of every column, stored with the output
COLUMN_DOC = {
    "site_x": "site index along x (axis 0)", "site_y": "site index along y (axis 1)",
    "avalanche": "avalanche id", "frame": "global frame in which the rearrangement starts",
    "frame_end": "global frame in which its release completes (last frame + 1)",
    "gamma": "applied engineering shear strain", "k": "elastic k at the start",
    "e1": "elastic e1 at the start", "e2": "elastic e2 at the start",
    "eps_y": "the site's yield strain (eps_dev or 2|e2| units) at the trigger",
    "p1": "plastic e1 x site area released (total)", "p2": "plastic e2 x site area released (total)",
    "S_before": "softness at the start", "S_after": "softness when the release completes",
    "r1": "residual e1 (elastic e1 when the release completes)", "r2": "residual e2 (likewise)",
    "id": "avalanche id", "duration": "frames", "size": "number of rearrangements",
    "n_sites": "distinct sites that rearranged",
    "extent": "radius of gyration of the distinct sites (sites, periodic)",
    "stress_before": "2 mu <e2> after the loading step", "stress_after": "2 mu <e2> at the end",
    "S_mean": "lattice mean S at the end", "S_std": "lattice standard deviation of S at the end",
    "first": "index of the avalanche's first rearrangement row",
}


# --------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------

def default_realspace_max_sources(L):
    """The number of rearranging sites up to which a frame is cheaper with
    real-space kernel adds than with whole-field transforms, on one core:
    max(4, round(5 + 5.4 log2(L / 64))), i.e. 5, 10, 16, 21 at
    L = 64, 128, 256, 512. Fitted to the break-even measured in steady
    state (benchmarks/README.md: 5, 9.4, 15.8 at L = 64, 128, 256; a
    real-space frame costs a + b n for n sources, a transform frame a
    constant). A function of L only, so the choice of path, and with it
    every bit of a run, follows from the config."""
    return max(4, int(round(5.0 + 5.4 * np.log2(L / 64.0))))


#: the real-space transient drops window tails below this fraction of the
#: largest value a unit source's field can take, (1 + nu)/4 (all of its
#: volume on one site): the round-off of the field itself
TRANSIENT_TOL = 2.0 ** -52
#: at most this many ages, and table planes of at most this many values in
#: all (16 MB), are kept for the real-space transient
TRANSIENT_MAX_AGES = 256
TRANSIENT_TABLE_SITES = 2 ** 21


def default_transient_budget(L):
    """Window values (sum over the pending sources of the window areas) up
    to which a frame adds the transient in real space rather than by the
    Fourier recursion: 4 L^2 (benchmarks/README.md, "transient windows").
    A function of L only, so the choice, and every bit of a run, follows
    from the config."""
    return 4 * L * L


@dataclass(frozen=True)
class WindowTable:
    """Real-space planes on square windows (``dynamics.window_sum``): plane
    a covers the offsets lo[a] .. lo[a] + width[a] - 1 (sites) from the
    source along both axes, as width[a]^2 values from planes[off[a]], row
    by row, and has the uniform value uni[a] outside; the window holds the
    plane minus uni[a]."""

    lo: np.ndarray
    width: np.ndarray
    off: np.ndarray
    planes: np.ndarray
    uni: np.ndarray

    @classmethod
    def from_windows(cls, windows):
        lo, width, vals, uni = zip(*windows)
        width = np.array(width, dtype=np.int64)
        off = np.concatenate([[0], np.cumsum(width * width)[:-1]]).astype(np.int64)
        return cls(np.array(lo, dtype=np.int64), width, off, np.concatenate(vals), np.array(uni))


def plane_window(field, tol):
    """(lo, width, values, uniform) of a real (L, L) plane with its source
    at site (0, 0): the uniform value u is the plane at the farthest site
    (L/2, L/2); the window is the smallest square of offsets [-R, R]^2
    outside which |plane - u| <= tol, or the whole lattice (offsets
    -(L//2) .. L - L//2 - 1) if 2 R + 1 >= L; values = plane - u on the
    window, row-major."""
    L = field.shape[0]
    u = field[L // 2, L // 2]
    rest = field - u
    dev = np.abs(rest)
    d = np.minimum(np.arange(L), L - np.arange(L))
    far = np.zeros(L // 2 + 1)
    np.maximum.at(far, d, np.maximum(dev.max(axis=1), dev.max(axis=0)))
    over = np.nonzero(far > tol)[0]
    R = int(over[-1]) if over.size else 0
    lo, w = (-(L // 2), L) if 2 * R + 1 >= L else (-R, 2 * R + 1)
    idx = (lo + np.arange(w)) % L
    return lo, w, rest[np.ix_(idx, idx)].ravel(), u


def transient_windows(K, par):
    """Window tables of the transient of a unit compression source (A = 1)
    in real space: D[m] = h(m + 1) - h(m), its change in the frame at age m
    (whole frames since its start; h(0) = 0), and H[m] = h(m + 1), the
    field after m + 1 frames, h = ``K.compression_hat`` transformed back,
    for the ages m = 0 .. A - 1 that fit TRANSIENT_MAX_AGES and
    TRANSIENT_TABLE_SITES; windows drop the tails below TRANSIENT_TOL
    (1 + nu)/4 (``plane_window``). Returns (D, H) as WindowTable."""
    L = K.L
    tol = TRANSIENT_TOL * 0.25 * (1.0 + K.nu)
    D, H = [], []
    prev = np.zeros((L, L))
    sites = 0
    for m in range(TRANSIENT_MAX_AGES):
        h = K.irfft2(K.compression_hat(float(m + 1), 1.0, par.comp_t, par.comp_w, par.D))
        wd, wh = plane_window(h - prev, tol), plane_window(h, tol)
        sites += wd[1] ** 2 + wh[1] ** 2
        if m > 0 and sites > TRANSIENT_TABLE_SITES:
            break
        D.append(wd)
        H.append(wh)
        prev = h
    return WindowTable.from_windows(D), WindowTable.from_windows(H)


class AvalancheTooLong(RuntimeError):
    """An avalanche ran past the frame limit (a runaway: check the calibration)."""


class STEPModel:
    """STEP lattice of L x L sites (see module docstring and docs/model.md).

    Parameters
    ----------
    L : int (>= 8)
    calibration : Calibration
    options : ModelOptions
    seed : int, the numpy PCG64 seed of the initial S, the yield quantiles u.
    threads : FFTW threads (results are reproducible for a fixed count).
    realspace_max_sources : a frame with at most this many rearranging
        sites adds real-space kernels; more use whole-field transforms.
        None: ``default_realspace_max_sources(L)``.
    transient_budget : the volumetric transient is added in real space, on
        windows around its sources, while their window areas sum to at most
        this many values and all are younger than the window tables
        (``transient_windows``); then by the Fourier recursion until it
        relaxes (docs/model.md). None: ``default_transient_budget(L)``.
    max_frames : frame limit of one avalanche (AvalancheTooLong beyond).
    snapshots : keep the maps of the largest avalanche (copies 4 fields
        per avalanche).
    fft_planner, fft_wisdom : FFTW planning, "estimate" (deterministic) or
        "measure" (faster; its plans are kept as ``self.fft_wisdom`` and
        re-created from ``fft_wisdom`` when given; lattice/fft_plans.py).

    The state arrays (e1, e2, k, S, u) are public; between
    avalanches they may be set from outside, followed by ``state_changed()``
    (required after changing u).
    """

    def __init__(self, L, calibration, options=ModelOptions(), seed=0, threads=1,
                 realspace_max_sources=None, max_frames=1_000_000, snapshots=True,
                 fft_planner="estimate", fft_wisdom=None, transient_budget=None):
        L = int(L)
        if L < 8:
            raise ValueError(f"L must be >= 8, got {L}")
        self.L, self.cal, self.opt = L, calibration, options
        self.seed, self.threads = int(seed), int(threads)
        self.realspace_max_sources = (default_realspace_max_sources(L) if realspace_max_sources is None
                                      else int(realspace_max_sources))
        self.max_frames = int(max_frames)
        self.snapshots = bool(snapshots)
        self.par = p = LatticeParams.from_calibration(calibration, options)
        self.mode = TRIGGERS[options.trigger]
        planner = Planner(fft_planner, fft_wisdom)
        self.K = K = EshelbyKernels(L, p.lam, p.mu, threads, planner)
        # a rearrangement releases p = kappa e (its far field is the
        # particles'); its own site relaxes by phi e: self term -phi/kappa.
        # Two bounds of the model (docs/model.md, "Rearrangement"): a site
        # releases at most what makes its own elastic strain vanish through
        # the elastic self term (kappa <= 1/|G(0)|; beyond, a site overshoots
        # and the dynamics run away), and its self term is never less
        # negative than the elastic one (a smaller relaxation makes the
        # propagator's modes along the axes, whose elastic response is ~0,
        # grow). Either bound, when it acts, is logged and recorded.
        st = K.self_term()
        self.kappa_calibrated = p.kappa
        kmax = 1.0 / max(-st[1, 0], -st[2, 1])
        if p.kappa > kmax:
            log.warning("the calibrated source strength kappa = %.3g site areas exceeds what a site "
                        "can release, 1/|G(0)| = %.3g (its own strain would overshoot zero): kappa "
                        "= %.3g is used", p.kappa, kmax, kmax)
            p.kappa = kmax
        want = -p.phi / p.kappa
        self.self_clipped = bool(want > min(st[1, 0], st[2, 1]))
        if self.self_clipped:
            log.warning("the calibrated relaxation phi = %.3g is below the elastic self term of the "
                        "source (kappa = %.3g site areas): the site relaxes by the elastic self term "
                        "instead (%.3g, %.3g per unit source)", p.phi, p.kappa, st[1, 0], st[2, 1])
        K.set_self_term(min(want, st[1, 0]), min(want, st[2, 1]))
        st = K.self_term()
        self.self1, self.self2 = float(st[1, 0]), float(st[2, 1])

        # yield-strain table
        yt = calibration.curves["yield_strain"]
        if options.softness:
            ug, tab = yt["u"], yt["value"]
            s = yt["s"]
            self._s0 = float(s[0])
            self._sinv = (s.size - 1) / (s[-1] - s[0]) if s.size > 1 else 0.0
        else:
            ug, tab = marginal_yield_table(yt, calibration.curves["p_s"])
            self._s0, self._sinv = 0.0, 0.0
        self.ytab = np.ascontiguousarray(np.asarray(tab, dtype=float) * p.strain_scale)
        self._u0 = float(ug[0])
        self._uinv = (ug.size - 1) / (ug[-1] - ug[0])
        self.u_grid = np.asarray(ug, dtype=float)
        # largest slope d eps_y / dS of the table (bound of dynamics._over), with a margin
        self._lip = float(np.abs(np.diff(self.ytab, axis=0)).max(initial=0.0) * self._sinv) * (1 + 1e-9)

        # kernels: real-space planes G[c, dx, dy] (dynamics module docstring;
        # c0, c1 planes only with softness) and transforms of the softness kernels
        if options.softness:
            self.c0_site = site_kernel(radial_profile(calibration.curves["c0"]), L, p.a)
            self.c1_site = site_kernel(radial_profile(calibration.curves["c1"]), L, p.a)
        else:
            self.c0_site = np.zeros((L, L))
            self.c1_site = np.zeros((L, L))
        G = K.real_space_kernels()  # (3, 2, L, L); G[1, 1] == G[2, 0] (reciprocity)
        self.Q = quarter_planes(np.concatenate(
            [G[[0, 0, 1, 1, 2], [0, 1, 0, 1, 1]]]
            + ([self.c0_site[None], self.c1_site[None]] if options.softness else [])), odd=(1, 3))
        self.C0h = np.ascontiguousarray(K.rfft2(self.c0_site).real)  # symmetric kernels: real spectra
        self.C1h = np.ascontiguousarray(K.rfft2(self.c1_site).real)
        self.prop = np.ascontiguousarray(K.prop)

        # transient compression: per-frame injection per source age (Fourier)
        h = L // 2 + 1
        if options.volumetric:
            self.M = max(1, int(math.ceil(p.comp_t + 8.0 * p.comp_w)) + 1)
            self.decay = np.exp(-p.D * K.lap)
            hk = [K.compression_hat(float(t), 1.0, p.comp_t, p.comp_w, p.D) for t in range(self.M + 1)]
            self.J = np.empty((self.M, L, h))
            self.J[0] = hk[1]
            for m in range(1, self.M):
                self.J[m] = hk[m + 1] - self.decay * hk[m]
            self._ring = np.zeros((self.M, L, h), dtype=complex)
            self._slot_used = np.zeros(self.M, dtype=bool)
            n = np.arange(L)
            self._ex = np.exp(-1j * np.outer(n, K.qx[:, 0]))
            self._ey = np.exp(-1j * np.outer(n, K.qy[0, :]))
            # the same transient in real space, on windows around the sources
            self._tD, self._tH = transient_windows(K, p)
        else:
            self._tD = self._tH = WindowTable.from_windows([(0, 0, np.zeros(0), 0.0)])
        self._tarea = self._tD.width ** 2
        self._none = np.zeros(0, dtype=np.int64)
        self.transient_budget = (default_transient_budget(L) if transient_budget is None
                                 else int(transient_budget))
        self._Kt = np.zeros((L, h), dtype=complex)
        self._dkt = _aligned_zeros((L, h), complex)
        self._dkt_real = _aligned_zeros((L, L), float)
        self._tfourier = False
        self._clear_transient()
        self._smean = None

        # work buffers of the transform path; its FFTW plans work in place on
        # them, without copies in and out. The inverse transforms are
        # EshelbyKernels.irfft2's plan (the same problem: the same bits).
        # The forward transforms of the (sparse) source fields: their row
        # transforms are phase rows (dynamics.source_rows: only the rows with
        # sources are non-zero), then FFTW column transforms.
        self._inc = _aligned_zeros((5, L, L), float)
        self._zrow = _aligned_zeros((3, L, h), complex)
        self._pspec = _aligned_zeros((3, L, h), complex)
        self._spec = _aligned_zeros((5, L, h), complex)
        n = np.arange(L)
        self._eyq = np.exp(-2j * np.pi * ((n[:, None] * n[None, :h]) % L) / L)  # exp(-i qy y), exact argument
        self._fwd = [planner.plan(self._zrow[c], self._pspec[c], (0,), "FFTW_FORWARD", threads=self.threads)
                     for c in range(3)]
        self._inv = [planner.plan(self._spec[c], self._inc[c], (0, 1), "FFTW_BACKWARD", destroy_input=True,
                                  threads=self.threads) for c in range(5)]
        # the Fourier transient's change on real-space frames: dkt -> dkt_real
        # in place (dkt is rewritten by every transient_step)
        self._dkt_inv = planner.plan(self._dkt, self._dkt_real, (0, 1), "FFTW_BACKWARD", destroy_input=True,
                                     threads=self.threads)
        self.fft_wisdom = planner.finish()
        for buf in (self._inc, self._zrow, self._pspec, self._spec, self._dkt, self._dkt_real):
            buf[...] = 0  # FFTW_MEASURE planning writes into the arrays
        self._done = np.zeros(L * L, dtype=np.int64)
        self._over = np.zeros(L * L, dtype=np.int64)

        self.rearrangements = Table(REARRANGEMENT_COLUMNS)
        self.avalanches = Table(AVALANCHE_COLUMNS)
        self.snapshot = None
        self._init_state()

    # -- state ----------------------------------------------------------------
    def _init_state(self):
        L = self.L
        self.rng = np.random.Generator(np.random.PCG64(self.seed))
        ps = self.cal.curves["p_s"]
        edges, dens = ps["edges"], ps["density"]
        cdf = np.concatenate([[0.0], np.cumsum(dens * np.diff(edges))])
        cdf /= cdf[-1]
        # inverse CDF of the piecewise-constant density (uniform within a bin)
        self.S = np.interp(self.rng.random(L * L), cdf, edges).reshape(L, L)
        self.u = self.rng.random((L, L))
        # the residual stresses of the jammed state: e1, e2 independent
        # Gaussians of the calibrated spread, their lattice means removed
        # (the initial stress is zero)
        e = self.rng.normal(0.0, self.par.e0_sd, (2, L, L))
        e -= e.mean(axis=(1, 2), keepdims=True)
        z = lambda: np.zeros((L, L))
        self.e1, self.e2, self.k = np.ascontiguousarray(e[0]), np.ascontiguousarray(e[1]), z()
        self.dp1, self.dp2 = z(), z()
        self.busy = np.zeros((L, L), dtype=np.int32)
        self.row_of_site = np.full((L, L), -1, dtype=np.int64)
        self.gamma = 0.0
        self.frame = 0
        self.n_avalanches = 0
        self.state_changed()

    def state_changed(self):
        """(Re)builds the threshold cache (eps_y at the current u and S,
        dynamics module docstring). Required after changing u from outside
        (the cache holds eps_y at each site's u); optional after changing S
        (the bound covers any S)."""
        self._sref = self.S.copy()
        self._yref = self.yield_strains()

    STATE_FIELDS = ("e1", "e2", "k", "S", "u")

    def get_state(self):
        """The complete state between avalanches (arrays copied), for checkpoints."""
        if np.any(self.busy) or self._transient_live:
            raise RuntimeError("state is only defined between avalanches")
        d = {f: getattr(self, f).copy() for f in self.STATE_FIELDS}
        d.update(gamma=self.gamma, frame=self.frame, n_avalanches=self.n_avalanches,
                 rng=self.rng.bit_generator.state)
        return d

    def set_state(self, d):
        for f in self.STATE_FIELDS:
            arr = np.asarray(d[f], dtype=float)
            if arr.shape != (self.L, self.L):
                raise ValueError(f"state field {f} has shape {arr.shape}, expected {(self.L, self.L)}")
            setattr(self, f, np.ascontiguousarray(arr).copy())
        self.gamma, self.frame = float(d["gamma"]), int(d["frame"])
        self.n_avalanches = int(d["n_avalanches"])
        self.rng.bit_generator.state = d["rng"]
        self.state_changed()

    # -- observables ----------------------------------------------------------
    def stress(self):
        """Shear stress sigma_xy = 2 mu <e2> (calibration stress units)."""
        return 2.0 * self.par.mu * float(np.mean(self.e2))

    def yield_strains(self):
        """eps_y = F^-1(u | S) of every site (L, L)."""
        return dyn.yield_strains(self.u, self.S, self.ytab, self._s0, self._sinv, self._u0, self._uinv)

    def trigger_strain(self):
        """The trigger measure of every site: eps_dev = 2 |(e1, e2)| (or 2 |e2|)
        of its elastic strain."""
        return 2 * np.hypot(self.e1, self.e2) if self.mode == 0 else 2 * np.abs(self.e2)

    # -- dynamics -------------------------------------------------------------
    def load(self):
        """Exact extremal loading: raise the uniform e2 by the smallest x >= 0
        that brings a site to threshold; gamma += 2x. Returns (x, flat site)."""
        x, site = dyn.loading_step(self.e1, self.e2, self.S, self.u, self.busy,
                                   self.ytab, self._s0, self._sinv, self._u0, self._uinv,
                                   self._yref, self._sref, self._lip, self.mode)
        if site < 0:
            raise RuntimeError("no site can be loaded (all busy)")
        self.e2 += x
        self.gamma += 2.0 * x
        return x, site

    def avalanche(self):
        """Load to the next instability and run the avalanche; returns its table row index."""
        _, site = self.load()
        return self.run_avalanche(site)

    def run_avalanche(self, site):
        """Run frames from the trigger of ``site`` (flat index) until no site
        is over threshold, no release is pending and the transient has
        relaxed. Returns the avalanche's row index."""
        L = self.L
        aid = self.n_avalanches
        first_row = self.rearrangements.n
        frame0 = self.frame
        stress0 = self.stress()
        before = ({f: getattr(self, f).copy() for f in ("S", "e1", "e2", "k")}
                  if self.snapshots else None)
        triggers = np.array([site], dtype=np.int64)
        active = np.zeros(0, dtype=np.int64)
        self._smean = None  # lattice mean S, recomputed (S may have been set from outside)
        while True:
            if self.frame - frame0 >= self.max_frames:
                raise AvalancheTooLong(f"avalanche {aid} ran past {self.max_frames} frames")
            if triggers.size:
                self._start(triggers, aid)
                active = np.sort(np.concatenate((active, triggers)))  # disjoint: busy sites do not trigger
            elif self.opt.volumetric:
                self._slot_used[self.frame % self.M] = False
            nd, no = self._frame(active)
            self.frame += 1
            if nd:
                done = self._done[:nd].copy()
                self._complete(done)
                active = active[self.busy.ravel()[active] > 0]
            triggers = self._over[:no].copy()
            if no == 0 and active.size == 0:
                if self._transient_live:
                    no = self._relax_transient()
                    triggers = self._over[:no].copy()
                if no == 0:
                    break
        rows = slice(first_row, self.rearrangements.n)
        sx, sy = self.rearrangements["site_x"][rows], self.rearrangements["site_y"][rows]
        flat = np.unique(sx.astype(np.int64) * L + sy)
        s_mean, s_std = dyn.field_stats(self.S)
        row = self.avalanches.append(
            id=aid, frame=frame0, duration=self.frame - frame0, size=rows.stop - rows.start,
            n_sites=flat.size, extent=dyn.periodic_extent(flat // L, flat % L, L), gamma=self.gamma,
            stress_before=stress0, stress_after=self.stress(), S_mean=s_mean, S_std=s_std,
            first=first_row)
        self.n_avalanches += 1
        if before is not None and (self.snapshot is None or rows.stop - rows.start > self.snapshot["size"]):
            self.snapshot = {"avalanche": aid, "size": rows.stop - rows.start, "first": first_row,
                             **{f"{f}_before": v for f, v in before.items()},
                             **{f"{f}_after": getattr(self, f).copy() for f in before}}
        return row

    def _start(self, sites, aid):
        """Rearrangements starting this frame: the plastic strain kappa (e1, e2)
        of the site's own elastic strain (its far field the calibrated one),
        which the calibrated self term turns into the relaxation -phi (e1, e2)
        of the site itself, released in n_frames equal parts
        (dynamics.start_sites)."""
        L, p = self.L, self.par
        rec = np.empty((7, sites.size))
        dyn.start_sites(sites, self.e1, self.e2, self.k, self.S, self.u, self.dp1, self.dp2, self.busy,
                        p.kappa, p.n_frames, self.ytab, self._s0, self._sinv, self._u0, self._uinv, rec)
        k, e1, e2, eps_y, p1, p2, s = rec
        first = self.rearrangements.append(
            sites.size, site_x=sites // L, site_y=sites % L, avalanche=aid, frame=self.frame, frame_end=-1,
            gamma=self.gamma, k=k, e1=e1, e2=e2, eps_y=eps_y, p1=p1, p2=p2,
            S_before=s, S_after=np.nan, r1=np.nan, r2=np.nan)
        self.row_of_site.ravel()[sites] = first + np.arange(sites.size)
        if self.opt.volumetric:
            self._tsites = np.concatenate([self._tsites, sites])
            self._tstart = np.concatenate([self._tstart, np.full(sites.size, self.frame)])
            if self._tfourier:
                slot = self.frame % self.M
                dyn.source_spectrum(sites, p.comp_p, self._ex, self._ey, self._ring[slot])
                self._slot_used[slot] = True
            self._transient_live = True

    def _complete(self, sites):
        """Releases completed this frame: new yield quantile u (and its
        threshold cache entry), table entries."""
        rec = np.empty((3, sites.size))
        dyn.complete_sites(sites, self.rng.random(sites.size), self.S, self.e1, self.e2, self.u,
                           self._yref, self._sref, self.ytab, self._s0, self._sinv, self._u0,
                           self._uinv, rec)
        rows_of = self.row_of_site.ravel()
        rows = rows_of[sites]
        t = self.rearrangements
        t.col("S_after")[rows] = rec[0]
        t.col("frame_end")[rows] = self.frame
        t.col("r1")[rows] = rec[1]
        t.col("r2")[rows] = rec[2]
        rows_of[sites] = -1

    def _frame(self, active):
        """One frame with the busy sites ``active`` (sorted flat indices):
        increments by real-space adds (few sources) or transforms (many),
        then the per-site update (dynamics.frame_pass). Advances nothing but
        the fields; returns (number done, number over) with the lists in
        self._done, self._over."""
        L, p = self.L, self.par
        ix, iy = active // L, active % L
        dp1, dp2 = self.dp1[ix, iy], self.dp2[ix, iy]
        use_rs = active.size <= self.realspace_max_sources
        use_dkt = False
        dkt_real = self._inc[0]
        tsrc, tage = self._none, self._none
        if self.opt.volumetric and self._transient_live:
            f = self.frame
            if not self._tfourier:
                ages = f - self._tstart
                if ages.max() >= self._tD.lo.size or self._tarea[ages].sum() > self.transient_budget:
                    self._to_fourier()
                else:
                    tsrc, tage = self._tsites, ages
            if self._tfourier:
                use_dkt = True
                slots = (f - np.arange(self.M)) % self.M
                age_slot = np.where(self._slot_used[slots], slots, -1)
                dyn.transient_step(self._Kt.view(np.float64), self.decay, self.J, self._ring.view(np.float64),
                                   age_slot, self._dkt.view(np.float64))
                if use_rs:
                    self._dkt_inv()
                    dkt_real = self._dkt_real
        soft = self.opt.softness
        if self._smean is None:
            self._smean = dyn.field_mean(self.S) if soft else 0.0
        if not use_rs:
            dyn.source_rows(active, dp1, dp2, self._eyq, self._zrow, False)
            for c in range(3):
                self._fwd[c]()
            dyn.source_rows(active, dp1, dp2, self._eyq, self._zrow, True)
            P1, P2, NN = self._pspec
            dyn.spectral_products(P1, P2, NN, self.prop, self.C0h, self.C1h, self._dkt, use_dkt,
                                  soft, self._spec)
            for c in range(5 if soft else 3):  # without softness inc[3], inc[4] stay 0
                self._inv[c]()
        td = self._tD
        nd, no, ssum = dyn.frame_pass(
            self.e1, self.e2, self.k, self.S, self.u, self.busy, self.dp1, self.dp2,
            use_rs, active, dp1, dp2, self.Q, self._inc, use_dkt, dkt_real,
            tsrc, tage, td.lo, td.width, td.off, td.planes, td.uni, p.comp_p,
            self._smean, p.b, soft, self.ytab, self._s0, self._sinv, self._u0,
            self._uinv, self._yref, self._sref, self._lip, self.mode, self._done, self._over)
        self._smean = ssum / (L * L) if soft else 0.0
        return nd, no

    def _relax_transient(self):
        """Quasistatic relaxation of the pending compression transient at the
        end of an avalanche: k loses the transient field, S changes by b dk.
        Returns the number of sites then over threshold (in self._over)."""
        if self._tfourier:
            kt = self.K.irfft2(self._Kt)
        else:
            kt = self._transient_field()
        no = dyn.relax_and_check(self.k, self.S, kt, self.par.b, self.opt.softness, self.e1, self.e2,
                                 self.u, self.busy, self.ytab, self._s0, self._sinv,
                                 self._u0, self._uinv, self._yref, self._sref, self._lip,
                                 self.mode, self._over)
        self._clear_transient()
        self._smean = None
        return no

    def _clear_transient(self):
        """No transient pending: the sources list is empty and real space is used
        for the next ones (K_t is only written by the Fourier recursion)."""
        if self._tfourier:
            self._Kt[:] = 0.0
        if self.opt.volumetric:
            self._slot_used[:] = False
        self._tsites = np.zeros(0, dtype=np.int64)
        self._tstart = np.zeros(0, dtype=np.int64)
        self._tfourier = False
        self._transient_live = False

    def _transient_field(self):
        """The pending transient's k field in real space, A sum_j h(m_j)(r - r_j)
        (m_j whole frames since source j started; h(0) = 0), from the window
        tables H, into the scratch self._dkt_real."""
        H = self._tH
        dyn.window_sum(self._tsites, self.frame - self._tstart - 1, H.lo, H.width, H.off, H.planes, H.uni,
                       self.par.comp_p, self._dkt_real)
        return self._dkt_real

    def _to_fourier(self):
        """Switch the pending transient from real-space windows to the Fourier
        recursion: K_t = the transform of the field so far (its q = 0 mode
        zero, volume conservation), and the source spectra of the ages < M
        in their ring slots."""
        f, M = self.frame, self.M
        self._Kt[:] = self.K.rfft2(self._transient_field())
        self._Kt[0, 0] = 0.0
        self._slot_used[:] = False
        for start in np.unique(self._tstart[f - self._tstart < M]):
            slot = start % M
            dyn.source_spectrum(self._tsites[self._tstart == start], self.par.comp_p, self._ex, self._ey,
                                self._ring[slot])
            self._slot_used[slot] = True
        self._tfourier = True
