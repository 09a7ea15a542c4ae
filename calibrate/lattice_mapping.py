"""Mapping particle measurements onto the lattice (SPEC.md sections 4 and 5).

The lattice (SPEC.md section 5) is a periodic grid of square sites of side
a, about the size of one rearrangement; a site's softness is the mean
particle softness of a site-sized region, so the calibrated P(S) and
eps_y(S) must be stated for that site-averaged S, the per-particle
softness kernels c0(r), c1(r) averaged over site areas, and time and the
diffusion constant expressed per lattice frame and site. This module does
those conversions on plain arrays (a driver reads trajectories and calls
it); its results go into the calibration file (lattice/calibration.py,
docs/calibration.md).

Conventions (SPEC.md section 0): lengths in small-particle diameters,
time in the overdamped unit (unit drag per particle), softness in the SVM
distance unit, strains dimensionless (eps_dev = 2 sqrt(e1^2 + e2^2)). A
box is ``(Lx, Ly, tilt)``: the parallelogram spanned by a1 = (Lx, 0) and
a2 = (tilt Ly, Ly) (``calibrate.fits``); positions may lie in any
periodic image.

Site size: ``site_size`` (a = SITE_FACTOR x the D2min correlation length,
or the side of a square of a given rearrangement area).

Site tiling (``site_grid``, ``site_index``): the box is cut into
n1 x n2 = max(1, round(Lx/a)) x max(1, round(Ly/a)) cells of equal
fractional size: cell (i1, i2) holds the points s1 a1 + s2 a2' with
s1 in [i1/n1, (i1 + 1)/n1) and s2 in [i2/n2, (i2 + 1)/n2) (mod 1), where
a2' = (tr Ly, Ly) is the box's second vector with the tilt reduced to
[-1/2, 1/2) (``fits.reduced_tilt``; the same periodic lattice, the least
sheared cells). Each site is a parallelogram of width Lx/n1 along x,
height Ly/n2 and tilt tr, area Lx Ly/(n1 n2) (a^2 up to the rounding of
n1, n2: at most a factor (1 +- 1/(2n))^2 off), the square of side a for an
unsheared box whose sides are multiples of a. Sites are numbered
i1 n2 + i2. The tiling is a partition: every particle belongs to exactly
one site.

Site softness (``site_softness``): the unweighted mean of the finite
particle softnesses in the site (both species); NaN for a site without
one. The mean over sites of the site means equals the particle mean when
every site holds the same number of particles; for positions independent
of S it differs from it by about sd(S)/sqrt(N x particles per site)
(the site means are reweighted by 1/count), which the tests bound by
5 sd(S)/sqrt(N).

Errors: bad arguments raise ValueError naming the argument; too little
data gives NaN (curves, site values) or a Quantity with NaN, n = 0 and a
flag, never an exception.
"""

import math

import numpy as np

from step_epm.lattice.calibration import Quantity

from .fits import bootstrap, check_array, check_box, check_edges, mean_quantity, reduced_tilt
from .yield_strain import yield_strain

#: a = SITE_FACTOR x xi: the side of the square whose area equals the
#: correlation area 2 pi xi^2 = integral of exp(-r/xi) over the plane of an
#: exponentially decaying D2min correlation C(r) = exp(-r/xi)
SITE_FACTOR = math.sqrt(2.0 * math.pi)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def _as_quantity(x, name):
    """A Quantity, or a plain number as Quantity(x, error NaN, n = 1)."""
    if isinstance(x, Quantity):
        return x
    if isinstance(x, bool):
        raise ValueError(f"{name} must be a number or a Quantity, got {x!r}")
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a Quantity, got {x!r}") from None
    return Quantity(v, math.nan, 1)


def _positive(q, name, allow_zero=False):
    """ValueError unless a finite value is > 0 (>= 0 with allow_zero)."""
    v = q.value
    if math.isfinite(v) and (v < 0 or (v == 0 and not allow_zero)):
        raise ValueError(f"{name} must be {'>=' if allow_zero else '>'} 0, got {v!r}")
    if math.isinf(v):
        raise ValueError(f"{name} must be finite or NaN, got {v!r}")


def _derived(value, rel_err, inputs, unit, description, fit_range=None):
    """A Quantity computed from ``inputs`` {name: Quantity}: NaN, n = 0 and a
    flag when the value is not finite; otherwise n = the smallest input n,
    error = value x rel_err (NaN if any input error is unknown) and a flag
    collecting the inputs' flags (required when n = 0)."""
    by_flag = {}
    for k, q in inputs.items():
        if q.flag:
            by_flag.setdefault(q.flag, []).append(k)
    flags = [f"{', '.join(ks)}: {f}" for f, ks in by_flag.items()]
    nan_in = [k for k, q in inputs.items() if not math.isfinite(q.value)]
    if nan_in or not math.isfinite(value):
        flag = "; ".join(flags) or f"not finite ({', '.join(nan_in) or 'result'})"
        return Quantity(math.nan, math.nan, 0, fit_range, unit, description, flag)
    n = min(int(q.n) for q in inputs.values())
    flag = "; ".join(flags) or (None if n > 0 else "an input has n = 0")
    err = abs(value) * rel_err if math.isfinite(rel_err) else math.nan
    return Quantity(float(value), float(err), n, fit_range, unit, description, flag)


# --------------------------------------------------------------------------
# site size
# --------------------------------------------------------------------------

def site_size(xi=None, *, area=None, factor=SITE_FACTOR) -> Quantity:
    """Lattice site side a (length), "about the size of one rearrangement".

    Exactly one of:
        xi: the D2min correlation length (length; Quantity or number): a =
            ``factor`` x xi; the default factor sqrt(2 pi) = 2.507 makes a^2
            the correlation area 2 pi xi^2 of C(r) = exp(-r/xi).
        area: the area of one rearrangement (length^2): a = sqrt(area).
    Returns:
        Quantity (unit length): error propagated (factor x error of xi, or
        error/(2 sqrt(area))), n and fit_range of the input, its flag
        kept; NaN with n = 0 and a flag when the input is NaN.
    Raises:
        ValueError: neither or both of xi, area; factor not finite and > 0;
        xi or area <= 0.
    """
    if (xi is None) == (area is None):
        raise ValueError("give exactly one of xi (D2min correlation length) and area")
    factor = float(factor)
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"factor must be finite and > 0, got {factor!r}")
    if xi is not None:
        q = _as_quantity(xi, "xi")
        _positive(q, "xi")
        value, rel = factor * q.value, q.error / q.value if q.value else math.nan
        desc = f"lattice site side a = {factor:.6g} x D2min correlation length xi"
        name = "xi"
    else:
        q = _as_quantity(area, "area")
        _positive(q, "area")
        value = math.sqrt(q.value) if math.isfinite(q.value) else math.nan
        rel = 0.5 * q.error / q.value if q.value else math.nan
        desc = "lattice site side a = sqrt(area of one rearrangement)"
        name = "area"
    return _derived(value, rel, {name: q}, "length", desc, q.fit_range)


# --------------------------------------------------------------------------
# site tiling and site softness
# --------------------------------------------------------------------------

def _check_a(a):
    try:
        a = float(a.value if isinstance(a, Quantity) else a)
    except (TypeError, ValueError):
        raise ValueError(f"a must be a number, got {a!r}") from None
    if not (math.isfinite(a) and a > 0):
        raise ValueError(f"a must be finite and > 0, got {a!r}")
    return a


def site_grid(box, a):
    """(n1, n2) = (max(1, round(Lx/a)), max(1, round(Ly/a))): the number of
    sites along a1 and a2 of ``box`` (Lx, Ly, tilt) for site side ``a``."""
    Lx, Ly, _ = check_box(box, "box")
    a = _check_a(a)
    return max(1, int(round(Lx / a))), max(1, int(round(Ly / a)))


def site_index(pos, box, a):
    """Site of each particle: (N,) int in [0, n1 n2), numbered i1 n2 + i2
    (module docstring: the fractional-coordinate tiling with the reduced
    tilt). ``pos`` (N, 2) finite positions (any periodic image)."""
    pos = check_array(pos, (None, 2), "pos")
    if not np.all(np.isfinite(pos)):
        raise ValueError("pos must be finite")
    Lx, Ly, tilt = check_box(box, "box")
    n1, n2 = site_grid(box, a)
    tr = reduced_tilt(Lx, Ly, tilt)
    s2 = np.mod(pos[:, 1] / Ly, 1.0)
    s1 = np.mod((pos[:, 0] - tr * pos[:, 1]) / Lx, 1.0)
    i1 = np.minimum((s1 * n1).astype(np.int64), n1 - 1)  # s = 1 - tiny rounds to 1.0
    i2 = np.minimum((s2 * n2).astype(np.int64), n2 - 1)
    return i1 * n2 + i2


def site_softness(pos, S, box, a, return_counts=False):
    """Site-averaged softness of one configuration.

    Args:
        pos: (N, 2) positions; S: (N,) particle softness (non-finite skipped);
        box: (Lx, Ly, tilt); a: site side (length; number or Quantity).
    Returns:
        (n1 n2,) mean softness per site (``site_index`` numbering; NaN for a
        site without a finite S); with ``return_counts`` also (n1 n2,) int
        particle counts (finite S only).
    """
    pos = check_array(pos, (None, 2), "pos")
    S = check_array(S, (len(pos),), "S")
    n1, n2 = site_grid(box, a)
    idx = site_index(pos, box, a)
    mean = cell_means(S, idx, n1 * n2)
    if not return_counts:
        return mean
    return mean, np.bincount(idx[np.isfinite(S)], minlength=n1 * n2).astype(np.int64)


def cell_means(values, cells, n_cells):
    """(n_cells,) mean of the finite ``values`` per cell index (NaN for a
    cell without one)."""
    v = np.asarray(values, float)
    ok = np.isfinite(v)
    cnt = np.bincount(cells[ok], minlength=n_cells)
    tot = np.bincount(cells[ok], v[ok], minlength=n_cells)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)


def site_softness_of_particles(pos, S, box, a):
    """(N,) the site softness (``site_softness``) of each particle's site,
    e.g. to re-bin yield-strain onsets by site S. NaN for a particle whose
    site has no finite S."""
    mean = site_softness(pos, S, box, a)
    return mean[site_index(pos, box, a)]


def p_s_sites(site_S, edges=None, bin_width=0.1):
    """P(S) of the site softness, in the calibration file's ``p_s`` format.

    Args:
        site_S: one array or a sequence of arrays of site softness (e.g.
            one per configuration); non-finite entries skipped.
        edges: (nb + 1,) increasing bin edges that must cover every finite
            value; default: multiples of ``bin_width`` spanning the data.
        bin_width: > 0, for the default edges.
    Returns:
        {"edges", "density", "n"}: density = n / (total x bin width),
        integrating to 1 over the bins. With no finite value: density NaN
        and n = 0 (edges as given, or [0, bin_width]); such a histogram is
        not a valid ``p_s`` (the file refuses it).
    """
    bw = float(bin_width)
    if not (math.isfinite(bw) and bw > 0):
        raise ValueError(f"bin_width must be finite and > 0, got {bin_width!r}")
    if isinstance(site_S, np.ndarray) or np.isscalar(site_S):
        parts = [np.asarray(site_S, dtype=float).ravel()]
    else:
        try:
            parts = [np.asarray(x, dtype=float).ravel() for x in site_S]
        except (TypeError, ValueError):
            raise ValueError("site_S must be an array or a sequence of arrays of numbers") from None
    x = np.concatenate(parts) if parts else np.empty(0)
    x = x[np.isfinite(x)]
    if edges is not None:
        e = check_edges(edges, "edges")
        if x.size and (x.min() < e[0] or x.max() > e[-1]):
            raise ValueError(f"edges [{e[0]:g}, {e[-1]:g}] must cover every site softness "
                             f"(range [{x.min():g}, {x.max():g}])")
    elif x.size:
        i0, i1 = math.floor(x.min() / bw), math.floor(x.max() / bw) + 1
        e = np.round(np.arange(i0, i1 + 1) * bw, 12)
        e[0], e[-1] = min(e[0], x.min()), max(e[-1], x.max())  # round-off
    else:
        e = np.array([0.0, bw])
    n, _ = np.histogram(x, e)
    if x.size == 0:
        return {"edges": e, "density": np.full(e.size - 1, np.nan), "n": n.astype(np.int64)}
    return {"edges": e, "density": n / (x.size * np.diff(e)), "n": n.astype(np.int64)}


def yield_strain_sites(eps, S_site, s_edges=np.arange(-3.0, 2.01, 0.5), u=np.linspace(0.05, 0.95, 19),
                       min_count=10, n_boot=200, seed=0):
    """Yield strain versus site softness: ``calibrate.yield_strain.yield_strain``
    on onsets (eps, S_site), as the calibration file's ``yield_strain`` table.

    Args:
        eps: (n,) eps_dev accumulated since the particle's last
            rearrangement at each onset (SPEC.md section 4 item 5; >= 0).
        S_site: (n,) the site softness of the onset's site at the start of
            that interval (``site_softness_of_particles``).
        s_edges, u, min_count, n_boot, seed: as ``yield_strain`` (u sets
            the table's quantile levels: the lattice clamps draws outside
            [u[0], u[-1]] to the end quantiles, so span as much of [0, 1]
            as the onsets allow).
    Returns:
        (table, result): ``table`` the ``yield_strain`` dict {s, u, value,
        error, n} (empty S bins filled from the nearest bin with data), or
        None with too little data; ``result`` the ``YieldStrain`` (its
        ``a``, ``b`` are the file's ``yield_a``, ``yield_b``).
    """
    res = yield_strain(S_site, eps, s_edges=s_edges, u=u, min_count=min_count, n_boot=n_boot, seed=seed)
    return res.calibration_curve(), res


# --------------------------------------------------------------------------
# time and diffusion
# --------------------------------------------------------------------------

def time_per_frame(dt, n_boot=200, seed=0) -> Quantity:
    """The lattice frame's time dt: the mean time between consecutive
    particle frames of the avalanches (time units).

    Args:
        dt: (n,) times between consecutive frames (finite, > 0).
        n_boot, seed: bootstrap over frames.
    Returns:
        Quantity: mean, bootstrap error, n = number of dt (NaN, n = 0 and
        a flag with none). The distribution itself: ``events.frame_times``.
    """
    dt = check_array(dt, (None,), "dt")
    if np.any(~np.isfinite(dt)) or np.any(dt <= 0):
        raise ValueError("dt must be finite and > 0")
    return mean_quantity(dt, "dt", "time", "time dt of one lattice frame (mean time between particle frames)",
                         n_boot, seed)


def lattice_diffusion(lam, mu, number_density, time_per_frame, site_size) -> Quantity:
    """D_L in lattice units, D = D_L dt / a^2 (SPEC.md sections 0 and 5),
    with D_L = (lambda + 2 mu)/eta and eta = number_density (unit drag per
    particle), as ``lattice.model.LatticeParams`` computes it.

    Args (numbers or Quantities): lam, mu (energy/length^2), number_density
    (1/length^2), time_per_frame (time), site_size (length).
    Returns:
        Quantity (unit 1, sites^2 per frame): error by first-order
        propagation of independent input errors (NaN if one is unknown;
        lambda and mu are in fact correlated: an estimate), n = the
        smallest input n, the inputs' flags kept; NaN, n = 0 and a flag if
        an input is NaN.
    Raises:
        ValueError: lam + 2 mu, number_density, time_per_frame or site_size <= 0.
    """
    q = {"lam": _as_quantity(lam, "lam"), "mu": _as_quantity(mu, "mu"),
         "number_density": _as_quantity(number_density, "number_density"),
         "time_per_frame": _as_quantity(time_per_frame, "time_per_frame"),
         "site_size": _as_quantity(site_size, "site_size")}
    for name in ("number_density", "time_per_frame", "site_size"):
        _positive(q[name], name)
    M = q["lam"].value + 2 * q["mu"].value
    if math.isfinite(M) and M <= 0:
        raise ValueError(f"lam + 2 mu must be > 0, got {M!r}")
    rho, dt, a = q["number_density"].value, q["time_per_frame"].value, q["site_size"].value
    value = M / rho * dt / a**2
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = math.sqrt((q["lam"].error**2 + 4 * q["mu"].error**2) / M**2
                        + (q["number_density"].error / rho) ** 2 + (q["time_per_frame"].error / dt) ** 2
                        + 4 * (q["site_size"].error / a) ** 2) if math.isfinite(value) else math.nan
    return _derived(value, rel, q, "1", "D_L dt / a^2: longitudinal diffusion constant in sites^2 per frame")


def source_strength(c_dev, frames, nu, e_el, n_boot=200, seed=0) -> Quantity:
    """The lattice source strength kappa (length^2): the plastic deviatoric
    strain x area one site rearrangement releases per unit of the site's
    elastic strain at its onset, fixed by its far field (SPEC.md section 4,
    item 7).

    A point source of plastic strain magnitude |P| (x area) has the far
    field eps_dev = (1 + nu) |P| / (pi r^2) (SPEC.md section 5, the
    deviatoric magnitude of the e2 source, isotropic); c_dev is measured per
    frame pair (``strain_fields`` of the frame pairs with exactly one
    rearranging site, calibrate/site_events.py), so one site rearrangement
    releases <|P|> = frames pi c_dev / (1 + nu), and kappa = <|P|> / <|e_el|>
    with |e_el| = sqrt(e1^2 + e2^2) of the site's elastic strain at onset.
    The lattice releases P = kappa e (site units: kappa / a^2), so its mean
    far field per frame is the particles' c_dev.

    Args:
        c_dev: Quantity (strain x length^2), ``strain_fields`` fit.
        frames: Quantity, frames per site rearrangement.
        nu: Quantity, 2-D Poisson ratio (relaxed, the kernel's).
        e_el: (m, 2) site elastic (e1, e2) at the onsets (rows with a
            non-finite entry skipped); its mean magnitude gets a bootstrap
            error over onsets.
    Returns:
        Quantity (length^2): error from the inputs' relative errors in
        quadrature; NaN, n = 0 and a flag when an input is missing, c_dev
        is not positive or its error exceeds it.
    """
    e = check_array(e_el, (None, 2), "e_el")
    mag = np.hypot(e[:, 0], e[:, 1])
    mag = mag[np.isfinite(mag)]
    m = mean_quantity(mag, "|e_el|", "strain", "mean local elastic strain at onset", n_boot, seed)
    unit = "length^2"
    desc = "plastic strain x area per unit local elastic strain, pi frames c_dev / ((1 + nu) <|e_el|>)"
    c = _as_quantity(c_dev, "c_dev")
    if math.isfinite(c.value) and (c.value <= 0 or (math.isfinite(c.error) and c.error >= c.value)):
        return Quantity(math.nan, math.nan, 0, c.fit_range, unit, desc,
                        f"far-field amplitude c_dev = {c.value:.3g} +- {c.error:.2g} is not resolved")
    q = {"c_dev": c, "frames": _as_quantity(frames, "frames"), "nu": _as_quantity(nu, "nu"), "e_el": m}
    value = (math.pi * q["frames"].value * c.value / ((1.0 + q["nu"].value) * m.value)
             if m.value > 0 else math.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = math.sqrt((c.error / c.value) ** 2 + (q["frames"].error / q["frames"].value) ** 2
                        + (q["nu"].error / (1.0 + q["nu"].value)) ** 2 + (m.error / m.value) ** 2) \
            if math.isfinite(value) else math.nan
    return _derived(value, rel, q, unit, desc, c.fit_range)




def source_strength_from_drops(events, plastic, n_boot=200, seed=0) -> Quantity:
    """The source strength the avalanches' stress drops imply (length^2,
    reported next to ``source_strength``): the plastic deviatoric strain x
    area per site rearrangement per unit of the site's elastic strain at its
    onset if the site events carried all of the plastic strain.

    The lattice releases
    P = kappa e per site event, whose far field is (1 + nu) |P| / (pi r^2)
    and whose q = 0 part (the field at the largest distance) is the drop
    2 mu P2 / V of the shear stress. The particles' avalanches drop the
    stress by Delta sigma, i.e. release the plastic strain x area
    Delta sigma V / (2 mu) (``site_events.SiteSamples.plastic``), carried
    by their site events. Matching the two over all avalanches,
    kappa = sum_avalanches Delta sigma V / (2 mu) / sum_site events e2(F0),
    a ratio of sums over every avalanche. At N = 1024 it is ~15x the far
    field's kappa: most of the plastic strain of an avalanche is carried by
    particles below the rearranger threshold (a third of the avalanches
    have no rearranger and still drop the stress), so it is reported, not
    used. Error: bootstrap over avalanches.

    Args:
        events: site_events.SiteEvents (e_el at onset; traj, avalanche).
        plastic: {(traj, avalanche id): plastic strain x area}.
    Returns:
        Quantity (length^2), n = avalanches; NaN, n = 0 and a flag when
        there is none, or when either sum is not positive.
    """
    unit, desc = "length^2", "plastic strain x area per unit site elastic strain, from the stress drops"
    keys = sorted(plastic)
    if not keys:
        return Quantity(math.nan, math.nan, 0, None, unit, desc, "no avalanches")
    where = {k: i for i, k in enumerate(keys)}
    P = np.array([plastic[k] for k in keys], float)
    E = np.zeros(len(keys))
    e2 = np.asarray(events.e_el, float)[:, 1] if len(events) else np.zeros(0)
    for tr, av, x in zip(np.asarray(events.traj), np.asarray(events.avalanche), e2):
        i = where.get((int(tr), int(av)))
        if i is not None and math.isfinite(x):
            E[i] += x
    ok = np.isfinite(P)
    P, E = P[ok], E[ok]
    if P.sum() <= 0 or E.sum() <= 0:
        return Quantity(math.nan, math.nan, 0, None, unit, desc,
                        f"sum of stress drops {P.sum():.3g} or of onset e2 {E.sum():.3g} not positive")
    with np.errstate(divide="ignore", invalid="ignore"):   # a resample without events: inf, dropped
        val, err, _ = bootstrap(lambda w: {"k": np.array((w @ P) / (w @ E))}, P.size, n_boot, seed)
    return Quantity(float(val["k"]), float(err["k"]), int(P.size), None, unit, desc, None)


# --------------------------------------------------------------------------
# calibration file entries from measurement results
# --------------------------------------------------------------------------

def g2_entry(pc):
    """``correlations.PairCorrelation`` -> the file's optional ``g2`` curve
    {lags, r, value, error, n (lags x r), fits} (lags sorted)."""
    order = np.argsort(np.asarray(pc.lags))
    rad = [pc.radial[i] for i in order]
    return {"lags": np.asarray(pc.lags, dtype=np.int64)[order], "r": np.asarray(rad[0].r, dtype=float),
            "value": np.array([c.value for c in rad], dtype=float),
            "error": np.array([c.error for c in rad], dtype=float),
            "n": np.array([c.n for c in rad], dtype=np.int64), "fits": [dict(pc.fits[i]) for i in order]}


def strain_profiles_entry(sf):
    """``strain_fields.StrainFields`` -> the file's optional ``strain_profiles``
    {r, n, profiles: {name: {value, error}}} (k, eps_dev, eps_xy, abs_k,
    abs_eps_xy, k_sin2, k_iso)."""
    first = sf.profiles["k"]
    return {"r": np.asarray(first.r, dtype=float), "n": np.asarray(first.n, dtype=np.int64),
            "profiles": {name: {"value": np.asarray(c.value, dtype=float), "error": np.asarray(c.error, dtype=float)}
                         for name, c in sf.profiles.items()}}


def histogram_entry(h):
    """An ``events.Histogram`` (or a dict edges/density/n) -> the file's
    histogram format; None when it has no bin or no count (leave the
    optional curve out)."""
    get = (lambda k: h[k]) if isinstance(h, dict) else (lambda k: getattr(h, k))
    edges, dens, n = (np.asarray(get(k)) for k in ("edges", "density", "n"))
    if edges.size < 2 or n.sum() == 0 or not np.all(np.isfinite(dens)):
        return None
    return {"edges": edges.astype(float), "density": dens.astype(float), "n": n.astype(np.int64)}


def yield_table_entry(ys, description=None):
    """A ``yield_strain.YieldStrain`` -> one table of the file's optional
    ``yield_strain_by_lag`` {s, u, value, error, n, mean, mean_error, fit
    {a, b}, description}: S bins without data stay NaN (not filled). None
    when no bin has data or a quantile is <= 0."""
    good = np.all(np.isfinite(ys.value), axis=1)
    if not good.any() or np.any(ys.value[good] <= 0):
        return None
    out = {"s": np.asarray(ys.s, float), "u": np.asarray(ys.u, float), "value": np.asarray(ys.value, float),
           "error": np.asarray(ys.error, float), "n": np.asarray(ys.n, np.int64),
           "mean": np.asarray(ys.mean, float), "mean_error": np.asarray(ys.mean_error, float),
           "fit": {"a": ys.a, "b": ys.b}}
    if description is not None:
        out["description"] = str(description)
    return out
