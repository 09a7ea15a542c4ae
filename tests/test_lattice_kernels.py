"""Physics of the lattice kernels (lattice/kernels.py; docs/model.md, "Kernels").

References are computed here independently of the code under test: the
continuum far fields of SPEC.md section 5, the closed-form lattice symbols
derived in docs/model.md, real-space difference stencils, the lattice heat
kernel exp(-4 tau') I_x(tau) I_y(tau) (tau = 2 D t) and the continuum heat kernel.
"""
import numpy as np
import pytest
from scipy.special import ive, ndtr

from step_epm.lattice.kernels import EshelbyKernels

# SPEC.md section 5: within 2 % of the amplitude (1 + nu)/(2 pi r^2) from r = 16.
FAR_TOL = 0.02
R_MIN = 16
L_BIG = 1024
W = np.array([-1.0, 9.0, 9.0, -1.0]) / 16.0  # cubic midpoint interpolation, offsets -2..1


def polar(L):
    """Site coordinates (minimum image), r and theta from the x axis (axis 0)."""
    x = np.fft.fftfreq(L) * L
    X, Y = np.meshgrid(x, x, indexing="ij")
    r = np.hypot(X, Y)
    return X, Y, r, np.arctan2(Y, X)


def image_sum_cos4(M=600):
    """Z4 = sum over n in Z^2 \\ 0 of cos(4 theta_n)/|n|^2 in circular order
    (the order the discrete Fourier sum implies); partial sums up to M = 600
    are converged to ~1e-4 (checked against M = 2000)."""
    n = np.arange(-M, M + 1, dtype=float)
    NX, NY = np.meshgrid(n, n, indexing="ij")
    R2 = NX**2 + NY**2
    m = (R2 > 0) & (R2 < M * M)
    return ((NX[m] ** 4 - 6 * NX[m] ** 2 * NY[m] ** 2 + NY[m] ** 4) / R2[m] ** 3).sum()


def periodic_offset(nu, L, sign):
    """Uniform part of the diagonal deviatoric response on the periodic lattice.

    The lattice field near the source is the infinite-medium field plus the
    image sum (circular order: (1+nu) Z4 cos-sign/(2 pi L^2)) plus the
    difference between the strain-control q = 0 value (-1) and the angular
    mean of the small-q symbol (-(1+nu)/4), over L^2.  sign = +1 for e2<-e2,
    -1 for e1<-e1 (the e1 pattern is the e2 one rotated by 45 degrees).
    """
    return (-1.0 + (1 + nu) / 4 + sign * (1 + nu) * image_sum_cos4() / (2 * np.pi)) / L**2


@pytest.fixture(scope="module", params=[0.0, 2.0])
def big(request):
    """L = 1024 kernels for nu = 0 and nu = 1/2 (lam = 0, 2; mu = 1)."""
    K = EshelbyKernels(L_BIG, request.param, 1.0)
    return K, K.real_space_kernels()


def closed_forms(K):
    """Site propagators from docs/model.md: symbols of the 5-point Laplacian
    and sigma(q) = sin q (5 - cos q)/4 (derivative times interpolation)."""
    nu, qx, qy = K.nu, K.qx, K.qy
    sx2, sy2 = 2 - 2 * np.cos(qx), 2 - 2 * np.cos(qy)
    lap = sx2 + sy2
    lap[0, 0] = 1.0
    Sx, Sy = np.sin(qx) * (5 - np.cos(qx)) / 4, np.sin(qy) * (5 - np.cos(qy)) / 4
    d = sx2 - sy2
    ref = np.array([
        [(1 - nu) / 2 * d / lap, (1 - nu) * Sx * Sy / lap],
        [-(1 + nu) / 2 * d**2 / lap**2, -(1 + nu) * Sx * Sy * d / lap**2],
        [-(1 + nu) * Sx * Sy * d / lap**2, -2 * (1 + nu) * Sx**2 * Sy**2 / lap**2],
    ])
    ref[:, :, 0, 0] = [[0, 0], [-1, 0], [0, -1]]
    return ref


@pytest.mark.parametrize("lam", [-0.5, 0.0, 2.0, 20.0])
def test_propagators_are_the_closed_forms(lam):
    K = EshelbyKernels(64, lam, 1.0)
    assert K.prop.shape == (3, 2, 64, 33)
    np.testing.assert_allclose(K.prop, closed_forms(K), rtol=0, atol=1e-11)
    # reciprocity (symmetric Green operator): e2 <- e1 equals e1 <- e2
    np.testing.assert_allclose(K.prop[1, 1], K.prop[2, 0], rtol=0, atol=1e-13)


def test_far_field_of_e2_source(big):
    """SPEC.md section 5 far field, 16 <= r <= L/8, with the periodic uniform
    offset (q = 0 convention + image sum) added to e2."""
    K, G = big
    nu, L = K.nu, K.L
    _, _, r, th = polar(L)
    ring = (r >= R_MIN) & (r <= L / 8)
    rr, tt = r[ring], th[ring]
    amp = (1 + nu) / (2 * np.pi * rr**2)
    ref = {
        0: (nu - 1) * np.sin(2 * tt) / (2 * np.pi * rr**2),
        1: -(1 + nu) * np.sin(4 * tt) / (2 * np.pi * rr**2),
        2: (1 + nu) * np.cos(4 * tt) / (2 * np.pi * rr**2) + periodic_offset(nu, L, +1),
    }
    for a in range(3):
        err = np.abs(G[a, 1][ring] - ref[a]) / amp
        assert err.max() < FAR_TOL, (a, err.max())


def test_uniform_offset_is_q0_convention_plus_image_sum(big):
    """The mean of (lattice - infinite medium) e2 over 32 <= r <= L/8 is the
    predicted offset, to 0.5 % of the amplitude at r = L/8 (lattice m = 0
    corrections there are O(r^-4)); the q = 0 term alone would be off by
    more than that."""
    K, G = big
    nu, L = K.nu, K.L
    _, _, r, th = polar(L)
    sel = (r >= 32) & (r <= L / 8)
    resid = (G[2, 1] - (1 + nu) * np.cos(4 * th) / (2 * np.pi * np.maximum(r, 1) ** 2))[sel]
    tol = 0.005 * (1 + nu) / (2 * np.pi * (L / 8) ** 2)
    assert abs(resid.mean() - periodic_offset(nu, L, +1)) < tol
    assert abs(resid.mean() - (-1.0 + (1 + nu) / 4) / L**2) > tol


def test_deviatoric_magnitude_isotropic(big):
    """eps_dev = 2 sqrt(e1^2 + e2^2) -> (1+nu)/(pi r^2) for any theta: with
    each component within FAR_TOL of the amplitude, eps_dev r^2 pi/(1+nu) is
    within sqrt(2) FAR_TOL of 1."""
    K, G = big
    nu, L = K.nu, K.L
    _, _, r, _ = polar(L)
    ring = (r >= R_MIN) & (r <= L / 8)
    e1 = G[1, 1][ring]
    e2 = G[2, 1][ring] - periodic_offset(nu, L, +1)
    dev = 2 * np.hypot(e1, e2) * np.pi * r[ring] ** 2 / (1 + nu)
    assert np.abs(dev - 1).max() < np.sqrt(2) * FAR_TOL


def test_e1_source_is_e2_source_rotated_45_degrees(big):
    """Rotation by -45 degrees with scaling sqrt(2) maps site (a, b) to the
    site (a + b, b - a); with 1/r^2 fields the e1-source field there is half
    the e2-source field at (a, b): k -> k, e1 -> e2, e2 -> -e1.  Each side is
    within FAR_TOL of the continuum, so they agree within 2 FAR_TOL of the
    smaller amplitude."""
    K, G = big
    nu, L = K.nu, K.L
    X, Y, r, _ = polar(L)
    ring = (r >= R_MIN) & (r <= L / 16)
    a, b = X[ring].astype(int), Y[ring].astype(int)
    i, j = (a + b) % L, (b - a) % L
    c1, c2 = periodic_offset(nu, L, -1), periodic_offset(nu, L, +1)
    amp = (1 + nu) / (2 * np.pi * 2 * r[ring] ** 2)
    pairs = [
        (G[0, 0][i, j], G[0, 1][ring] / 2),
        (G[1, 0][i, j] - c1, (G[2, 1][ring] - c2) / 2),
        (G[2, 0][i, j], -G[1, 1][ring] / 2),
    ]
    for lhs, rhs in pairs:
        assert (np.abs(lhs - rhs) / amp).max() < 2 * FAR_TOL


def test_k_sin2theta_ring_component_flat(big):
    """r^2 times the sin(2 theta) component of k from an e2 source is
    (nu - 1)/(2 pi) from r = 16 outward: within 1 % of (1+nu)/(2 pi) (the k
    errors are at most FAR_TOL/2 there, see test_far_field_of_e2_source)."""
    K, G = big
    nu, L = K.nu, K.L
    _, _, r, th = polar(L)
    for r0 in range(R_MIN, L // 8, 4):
        ring = (r >= r0) & (r < r0 + 4)
        s = np.sin(2 * th[ring])
        flat = (r[ring] ** 2 * G[0, 1][ring] * s).sum() / (s * s).sum()
        assert abs(flat - (nu - 1) / (2 * np.pi)) < 0.01 * (1 + nu) / (2 * np.pi), r0


def test_incompressible_limit_is_classic_kernel():
    """lam -> infinity (nu -> 1): k vanishes and the corner-to-corner e2
    kernel is the classic -4 qx^2 qy^2 / q^4 with the discrete wavevector
    q -> 2 sin(q/2); the site kernel is that times the interpolation filter
    |h(qx) h(qy)|^2.  Deviations are bounded by 2 (1 - nu)."""
    L, lam = 64, 1e6
    K = EshelbyKernels(L, lam, 1.0)
    tol = 2 * (1 - K.nu) + 1e-9
    sx2, sy2 = 2 - 2 * np.cos(K.qx), 2 - 2 * np.cos(K.qy)
    lap = sx2 + sy2
    lap[0, 0] = 1.0
    classic = -4 * sx2 * sy2 / lap**2
    h = lambda q: sum(w * np.exp(1j * q * i) for w, i in zip(W, range(-2, 2)))
    filt = np.abs(h(K.qx) * h(K.qy)) ** 2
    q0 = np.zeros_like(lap, bool)
    q0[0, 0] = True
    assert np.abs(K.prop[2, 1] - classic * filt)[~q0].max() < tol
    assert np.abs(K.prop[0]).max() < tol
    # corner field of a site source = corner kernel applied to the spread source
    p2 = np.zeros((L, L))
    p2[0, 0] = 1.0
    exy_hat = K.rfft2(K.staggered_response(np.zeros((L, L)), p2)["exy"])
    spread = np.conj(h(K.qx) * h(K.qy))
    ok = (np.abs(spread) > 0.1) & ~q0
    assert np.abs(exy_hat[ok] / spread[ok] - classic[ok]).max() < tol + 1e-9


def test_q0_sum_rules():
    """Strain control: each kernel sums to minus its source on the diagonal
    (e1<-e1, e2<-e2) and to zero otherwise; for any source field the mean
    elastic strain changes by minus the mean plastic strain, k by zero."""
    L = 48
    K = EshelbyKernels(L, 2.0, 1.0)
    G = K.real_space_kernels()
    np.testing.assert_allclose(G.sum(axis=(-2, -1)), [[0, 0], [-1, 0], [0, -1]], atol=1e-12)
    rng = np.random.default_rng(0)
    p1, p2 = rng.normal(size=(2, L, L))
    k, e1, e2 = K.response(p1, p2)
    np.testing.assert_allclose([k.mean(), e1.mean(), e2.mean()],
                               [0.0, -p1.mean(), -p2.mean()], atol=1e-14)


def roll(f, dx, dy):
    """f shifted so that out[x, y] = f[x + dx, y + dy] (periodic)."""
    return np.roll(f, (-dx, -dy), axis=(0, 1))


@pytest.mark.parametrize("lam", [-0.5, 2.0])
def test_discrete_compatibility_and_equilibrium(lam):
    """Staggered fields (ux at (x+1/2, y), uy at (x, y+1/2), exx, eyy at
    centres, exy at corners): total strain = forward differences of u,
    Saint-Venant compatibility, and div sigma = 0 with the adjoint
    (backward) differences, all at round-off; the site fields returned by
    ``response`` are k, e1 of the centre fields and the interpolated e2."""
    L, mu = 32, 1.0
    K = EshelbyKernels(L, lam, mu)
    rng = np.random.default_rng(1)
    p1, p2 = rng.normal(size=(2, L, L))
    s = K.staggered_response(p1, p2)
    pxy = sum(W[i] * W[j] * roll(p2, -di, -dj)
              for i, di in enumerate(range(-2, 2)) for j, dj in enumerate(range(-2, 2)))
    exx, eyy, exy = s["exx"] + p1, s["eyy"] - p1, s["exy"] + pxy  # total strains
    ux, uy = s["ux"], s["uy"]
    scale = np.abs(exx).max()
    np.testing.assert_allclose(exx, ux - roll(ux, -1, 0), atol=1e-12 * scale)
    np.testing.assert_allclose(eyy, uy - roll(uy, 0, -1), atol=1e-12 * scale)
    np.testing.assert_allclose(exy, 0.5 * (roll(ux, 0, 1) - ux + roll(uy, 1, 0) - uy),
                               atol=1e-12 * scale)
    compat = (roll(exx, 0, 1) - 2 * exx + roll(exx, 0, -1)
              + roll(eyy, 1, 0) - 2 * eyy + roll(eyy, -1, 0)
              - 2 * (exy - roll(exy, -1, 0) - roll(exy, 0, -1) + roll(exy, -1, -1)))
    assert np.abs(compat).max() < 1e-12 * scale
    sxx = (lam + 2 * mu) * s["exx"] + lam * s["eyy"]
    syy = lam * s["exx"] + (lam + 2 * mu) * s["eyy"]
    sxy = 2 * mu * s["exy"]
    sscale = np.abs(sxx).max()
    fx = roll(sxx, 1, 0) - sxx + sxy - roll(sxy, 0, -1)  # at the ux face (x+1/2, y)
    fy = roll(syy, 0, 1) - syy + sxy - roll(sxy, -1, 0)  # at the uy face (x, y+1/2)
    assert max(np.abs(fx).max(), np.abs(fy).max()) < 1e-12 * sscale
    k, e1, e2 = K.response(p1, p2)
    e2_site = sum(W[i] * W[j] * roll(s["exy"], di, dj)
                  for i, di in enumerate(range(-2, 2)) for j, dj in enumerate(range(-2, 2)))
    np.testing.assert_allclose(k, 0.5 * (s["exx"] + s["eyy"]), atol=1e-12 * scale)
    np.testing.assert_allclose(e1, 0.5 * (s["exx"] - s["eyy"]), atol=1e-12 * scale)
    np.testing.assert_allclose(e2, e2_site, atol=1e-12 * scale)


def test_no_checkerboard_in_k():
    """k from either deviatoric source has no (pi, pi) component."""
    L = 32
    K = EshelbyKernels(L, 2.0, 1.0)
    chk = (-1.0) ** np.add.outer(np.arange(L), np.arange(L))
    G = K.real_space_kernels()
    assert abs((G[0] * chk).sum(axis=(-2, -1))).max() < 1e-13


def test_translation_and_superposition():
    """response() of a few point sources = sum of rolled real-space kernels."""
    L = 32
    K = EshelbyKernels(L, 1.0, 1.0)
    G = K.real_space_kernels()
    p1, p2 = np.zeros((L, L)), np.zeros((L, L))
    p1[3, 5], p2[3, 5], p2[20, 30] = 0.7, -0.2, 1.1
    expect = (0.7 * np.roll(G[:, 0], (3, 5), axis=(1, 2))
              - 0.2 * np.roll(G[:, 1], (3, 5), axis=(1, 2))
              + 1.1 * np.roll(G[:, 1], (20, 30), axis=(1, 2)))
    np.testing.assert_allclose(K.response(p1, p2), expect, atol=1e-14)


def test_reciprocity_of_cross_terms():
    """Betti reciprocity of the discrete elasticity: the site e1 response to a
    unit e2 source equals the site e2 response to a unit e1 source. Checked on
    the raw staggered solve (before kernels.py shares one value); the spectra
    are O(1), so round-off is ~1e-15. The stored propagator is exactly symmetric."""
    for L, lam in ((32, 0.3), (64, 4.0)):
        K = EshelbyKernels(L, lam, 1.0)
        one, zero = np.ones_like(K.prop[0, 0], complex), np.zeros_like(K.prop[0, 0], complex)
        _, _, exx1, eyy1, _ = K._solve(zero, one)  # e2 source
        _, _, _, _, exy2 = K._solve(one, zero)     # e1 source
        e1_per_e2 = (0.5 * (exx1 - eyy1)).real
        e2_per_e1 = (K._hx * K._hy * exy2).real
        assert np.abs(e1_per_e2).max() > 0.1
        np.testing.assert_allclose(e1_per_e2, e2_per_e1, rtol=0, atol=1e-14)
        assert np.array_equal(K.prop[1, 1], K.prop[2, 0])


def test_self_term():
    """Self term (not rescaled): e1<-e1 is -(1+nu)(1/2 - 1/pi) on the
    infinite lattice (the Brillouin-zone mean of -(1+nu)/2 (cx - cy)^2 /
    (cx + cy)^2, cx = 2 - 2 cos qx); on L = 256 the Riemann sum and the q = 0
    term shift it by O(1/L^2) (< 1e-4).  Both diagonal terms scale with
    1 + nu (apart from the q = 0 term), cross terms vanish, and it equals the
    real-space kernel at r = 0."""
    L = 256
    Ka, Kb = EshelbyKernels(L, 0.0, 1.0), EshelbyKernels(L, 6.0, 1.0)
    for K in (Ka, Kb):
        st = K.self_term()
        assert abs(st[1, 0] + (1 + K.nu) * (0.5 - 1 / np.pi)) < 1e-4
        np.testing.assert_allclose(st, K.real_space_kernels()[:, :, 0, 0], atol=1e-14)
        assert np.abs(st[[0, 0, 1, 2], [0, 1, 1, 0]]).max() < 1e-14
    # the q = 0 term -1/L^2 is the only part not proportional to 1 + nu
    ratio = (1 + Kb.nu) / (1 + Ka.nu)
    np.testing.assert_allclose(np.diag(Kb.self_term()[1:]) + 1 / L**2,
                               ratio * (np.diag(Ka.self_term()[1:]) + 1 / L**2), rtol=1e-12)


@pytest.mark.parametrize("L", [15, 32])
def test_set_self_term_changes_only_the_source_site(L):
    """set_self_term(s1, s2) makes the r = 0 response exactly s1 (e1 <- e1)
    and s2 (e2 <- e2); every other site of those planes moves by the same
    uniform amount (the change has zero mean), so the q = 0 strain control
    (a source lowers the mean of its component by itself / L^2), the
    other planes and the far-field shape are untouched."""
    K0, K = EshelbyKernels(L, 0.19, 0.03), EshelbyKernels(L, 0.19, 0.03)
    K.set_self_term(-0.3, -0.7)
    st = K.self_term()
    assert st[1, 0] == pytest.approx(-0.3, abs=1e-14) and st[2, 1] == pytest.approx(-0.7, abs=1e-14)
    G0, G = K0.real_space_kernels(), K.real_space_kernels()
    np.testing.assert_allclose(G[:, :, 0, 0], st, atol=1e-14)
    for a, b in ((1, 0), (2, 1)):
        d = (G[a, b] - G0[a, b]).ravel()
        np.testing.assert_allclose(d[1:], d[1], rtol=0, atol=1e-14)   # uniform off the source
        assert abs(d.sum()) < 1e-12                                   # zero mean
        assert K.prop[a, b, 0, 0] == K0.prop[a, b, 0, 0] == -1.0
    for a, b in ((0, 0), (0, 1), (1, 1), (2, 0)):
        np.testing.assert_array_equal(K.prop[a, b], K0.prop[a, b])


def test_deterministic_plans():
    """Two instances (as in a run and its resume) give the same bits."""
    L = 64
    rng = np.random.default_rng(2)
    p1, p2 = rng.normal(size=(2, L, L))
    a = EshelbyKernels(L, 2.0, 1.0).response(p1, p2)
    b = EshelbyKernels(L, 2.0, 1.0).response(p1, p2)
    assert np.array_equal(a, b)


# -- transient compression source ---------------------------------------------

def gauss_legendre(lo, hi, n=200):
    x, w = np.polynomial.legendre.leggauss(n)
    return 0.5 * (hi - lo) * x + 0.5 * (hi + lo), 0.5 * (hi - lo) * w


def rate_profile(t, t0, width):
    return np.exp(-0.5 * ((t - t0) / width) ** 2) / (width * np.sqrt(2 * np.pi))


@pytest.mark.parametrize("t", [3.0, 5.0, 6.5, 20.0])
def test_compression_is_lattice_heat_kernel_convolved(t):
    """Before, during and after the pulse the field equals -((1+nu)/2) p
    times the infinite-lattice heat kernel of the 5-point Laplacian,
    exp(-4 D s) I_x(2 D s) I_y(2 D s), convolved with the Gaussian rate in
    time (quadrature), minus the uniform mean (q = 0 removed); images are
    below 1e-30 for L = 128, D t < 40.  Agreement to quadrature accuracy."""
    L, D, A, t0, w = 128, 1.5, 0.8, 5.0, 1.0
    K = EshelbyKernels(L, 2.0, 1.0)
    field = K.irfft2(K.compression_hat(t, A, t0, w, D))
    tp, wt = gauss_legendre(t0 - 10 * w, t)
    s = t - tp
    n = np.arange(-12, 13)
    Ix = ive(n[:, None], 2 * D * s[None, :])  # exp(-2Ds) I_n(2Ds), shape (n, nodes)
    heat = np.einsum("in,jn,n->ij", Ix, Ix, wt * rate_profile(tp, t0, w))
    ref = -0.5 * (1 + K.nu) * A * (heat - ndtr((t - t0) / w) / L**2)
    got = np.roll(field, (12, 12), axis=(0, 1))[:25, :25]
    assert np.abs(got - ref).max() < 1e-10 * np.abs(ref).max()


def test_compression_matches_continuum_diffusion():
    """Against the continuum k(r, t) = -((1+nu)/2) p exp(-r^2/4Ds)/(4 pi D s)
    convolved with the rate, for r <= 2 sqrt(4 D t).  The lattice walk's
    excess kurtosis 1/(2 D s) per axis gives (Edgeworth) a deviation of at
    most peak/(8 D s); tolerance 1.25 peak/(8 D s_min), s_min = t - t0 - 5 w."""
    L, D, A, t0, w, t = 256, 1.0, 1.0, 5.0, 1.0, 45.0
    K = EshelbyKernels(L, 2.0, 1.0)
    field = K.irfft2(K.compression_hat(t, A, t0, w, D))
    _, _, r, _ = polar(L)
    sel = r <= 2 * np.sqrt(4 * D * (t - t0))
    tp, wt = gauss_legendre(t0 - 10 * w, t0 + 10 * w)
    s = t - tp
    cont = (np.exp(-r[sel][:, None] ** 2 / (4 * D * s)) / (4 * np.pi * D * s)
            * wt * rate_profile(tp, t0, w)).sum(axis=1)
    ref = -0.5 * (1 + K.nu) * A * (cont - 1 / L**2)
    s_min = t - t0 - 5 * w
    peak = 0.5 * (1 + K.nu) * A / (4 * np.pi * D * s_min)
    assert np.abs(field[sel] - ref).max() < 1.25 * peak / (8 * D * s_min)


def test_a_dilating_source_compresses_its_surroundings():
    """SPEC.md section 4, "Signs": p > 0 (the source dilates) gives k < 0
    around it while the transient is live (every site within the diffusion
    length), and the field is odd in p."""
    L, D, t0, w = 64, 0.5, 2.0, 0.5
    K = EshelbyKernels(L, 0.19, 0.03)
    for t in (3.0, 6.0, 12.0):
        f = K.irfft2(K.compression_hat(t, 0.3, t0, w, D))
        _, _, r, _ = polar(L)
        near = r <= np.sqrt(4 * D * (t - t0))
        assert np.all(f[near] < 0), t
        np.testing.assert_array_equal(K.irfft2(K.compression_hat(t, -0.3, t0, w, D)), -f)


def test_compression_conserves_volume_and_relaxes():
    """q = 0 is zero: the field sums to zero at every time; at late time every
    mode has decayed as exp(-D lap_min t), lap_min = 2 - 2 cos(2 pi/L)."""
    L, D, A, t0, w = 32, 1.0, 1.0, 5.0, 1.0
    K = EshelbyKernels(L, 2.0, 1.0)
    for t in (0.0, 4.0, 5.0, 8.0, 50.0):
        h = K.compression_hat(t, A, t0, w, D)
        assert h[0, 0] == 0.0
        f = K.irfft2(h)
        assert abs(f.sum()) < 1e-13 * max(np.abs(f).max(), 1e-300) * L**2
    t_late = t0 + 40.0 / (D * (2 - 2 * np.cos(2 * np.pi / L)))
    assert np.abs(K.irfft2(K.compression_hat(t_late, A, t0, w, D))).max() < 1e-15


@pytest.mark.parametrize("rate,t", [(1e-3, 6.0), (0.5, 2.0), (0.5, 9.0), (400.0, 5.2), (400.0, 12.0)])
def test_compression_mode_closed_form(rate, t):
    """Per mode the closed form equals the time integral of the Gaussian rate
    times exp(-rate (t - t')), also where exp(rate^2 w^2 / 2) would overflow."""
    t0, w, A = 5.0, 2.0, 1.0
    K = EshelbyKernels(8, 2.0, 1.0)
    # choose D so that mode (1, 0) has decay rate `rate`
    D = rate / K.lap[1, 0]
    got = K.compression_hat(t, A, t0, w, D)[1, 0] / (-0.5 * (1 + K.nu) * A)
    tp, wt = gauss_legendre(max(t0 - 12 * w, t - 60.0 / rate), t, 400)
    ref = (wt * rate_profile(tp, t0, w) * np.exp(-rate * (t - tp))).sum()
    assert np.isfinite(got) and abs(got - ref) < 1e-10 * max(ref, 1e-300) + 1e-300
