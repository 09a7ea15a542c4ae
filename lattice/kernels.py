"""Elastic and volumetric kernels of the STEP lattice (SPEC.md section 5).

Units and conventions (docs/model.md, section "Kernels", has the derivation):

- Periodic L x L lattice, site side a = 1: lengths in sites, areas in site
  areas.  Every field is an array ``f[ix, iy]`` of shape (L, L), x along
  axis 0, y along axis 1; angles theta are measured from the x axis.
- Fourier transforms are unnormalised forward, ``f_hat(q) = sum_r f(r)
  exp(-i q.r)``, with q = 2 pi n / L, and the inverse carries 1/L^2 (numpy's
  convention).  Half spectra (real-to-complex) have shape (L, L//2 + 1).
- Strains are dimensionless: k = (exx + eyy)/2, e1 = (exx - eyy)/2,
  e2 = exy.  A point source is a plastic strain component times its area,
  i.e. a unit value on one site of a source field.
- Discrete elasticity on a staggered (marker-and-cell) grid: ux[ix, iy] at
  (ix + 1/2, iy), uy[ix, iy] at (ix, iy + 1/2), exx and eyy (hence k, e1)
  at site centres (ix, iy), the shear exy at corners (ix + 1/2, iy + 1/2).
  Strain is the forward difference of u, the divergence its adjoint, so
  compatibility and equilibrium hold to round-off.  A site's e2 is the
  4 x 4 cubic midpoint interpolation of the corner field (1-D weights
  (-1, 9, 9, -1)/16), and a site's plastic e2 is spread onto the corners
  with the same (adjoint) weights, so all site responses are centred.
- Strain control: the applied (mean total) strain is fixed, so the q = 0
  elastic response to a plastic source is minus the source: the mean
  elastic strain drops by (plastic strain x area) / L^2.
- The self term (r = 0) is the discrete elasticity's own value
  (``EshelbyKernels.self_term``) until ``set_self_term`` replaces it by a
  calibrated one (a zero-mean change at the source site only); the far
  field keeps the continuum amplitude exactly either way.
- Elastic constants lam, mu in any stress unit (only nu enters the strain
  response); nu = lam / (lam + 2 mu) is the 2-D Poisson ratio.
"""
import numpy as np
import pyfftw
from scipy.special import erfc, erfcx

from .fft_plans import Planner

#: 1-D weights of the cubic midpoint interpolation from the corners at
#: offsets -3/2, -1/2, +1/2, +3/2 to the site centre (corner index offsets
#: -2, -1, 0, +1).
INTERP_WEIGHTS = np.array([-1.0, 9.0, 9.0, -1.0]) / 16.0
_INTERP_OFFSETS = np.arange(-2, 2)


class EshelbyKernels:
    """Fourier-space strain propagators of a periodic L x L lattice.

    Parameters
    ----------
    L : int
        Lattice side in sites (>= 4).
    lam, mu : float
        Lame constants (mu > 0, lam + mu > 0); only nu = lam/(lam + 2 mu)
        enters the strain responses.
    threads : int
        FFTW threads.
    planner : fft_plans.Planner or None
        Makes the FFTW plans; None: a fresh ``Planner("estimate")``, which is
        deterministic (the same L and thread count give the same bits in
        every process; see fft_plans).

    Attributes
    ----------
    nu : float
        2-D Poisson ratio.
    qx, qy : ndarray, shapes (L, 1) and (1, L//2 + 1)
        Wavevector components of the half spectrum, in rad per site.
    lap : ndarray, (L, L//2 + 1)
        Eigenvalues of minus the 5-point lattice Laplacian,
        (2 - 2 cos qx) + (2 - 2 cos qy), per site^2; the longitudinal
        eigenvalue of the discrete elasticity is (lam + 2 mu) * lap.
    prop : ndarray, (3, 2, L, L//2 + 1), float64
        ``prop[a, b]``: Fourier transform of the elastic strain component
        a (0: k, 1: e1, 2: e2) at every site per unit plastic source
        component b (0: e1, 1: e2) at site (0, 0).  Real (the responses are
        inversion symmetric); ``prop[:, :, 0, 0]`` holds the strain-control
        q = 0 values (0, and -1 on the diagonal e1<-e1, e2<-e2).  The cross
        terms are equal, ``prop[1, 1] == prop[2, 0]`` (reciprocity).
    """

    def __init__(self, L, lam, mu, threads=1, planner=None):
        L = int(L)
        if L < 4:
            raise ValueError(f"L must be >= 4, got {L}")
        if not (mu > 0 and lam + mu > 0):
            raise ValueError(f"need mu > 0 and lam + mu > 0, got lam={lam}, mu={mu}")
        self.L, self.lam, self.mu = L, float(lam), float(mu)
        self.nu = self.lam / (self.lam + 2.0 * self.mu)
        self.threads = int(threads)
        self.qx = 2.0 * np.pi * np.fft.fftfreq(L)[:, None]
        self.qy = 2.0 * np.pi * np.fft.rfftfreq(L)[None, :]
        self.lap = (2.0 - 2.0 * np.cos(self.qx)) + (2.0 - 2.0 * np.cos(self.qy))
        self._hx = _interp_symbol(self.qx)
        self._hy = _interp_symbol(self.qy)

        shape_half = (L, L // 2 + 1)
        self._r_in = pyfftw.empty_aligned((L, L), dtype="float64")
        self._c_out = pyfftw.empty_aligned(shape_half, dtype="complex128")
        self._c_in = pyfftw.empty_aligned(shape_half, dtype="complex128")
        self._r_out = pyfftw.empty_aligned((L, L), dtype="float64")
        planner = planner or Planner("estimate")
        self._fwd = planner.plan(self._r_in, self._c_out, (0, 1), "FFTW_FORWARD", threads=self.threads)
        self._inv = planner.plan(self._c_in, self._r_out, (0, 1), "FFTW_BACKWARD",
                                 destroy_input=True, threads=self.threads)

        one, zero = np.ones(shape_half, complex), np.zeros(shape_half, complex)
        self.prop = np.empty((3, 2) + shape_half)
        for b, (p1, p2) in enumerate(((one, zero), (zero, one))):
            _, _, exx, eyy, exy = self._solve(p1, p2)
            self.prop[0, b] = (0.5 * (exx + eyy)).real
            self.prop[1, b] = (0.5 * (exx - eyy)).real
            self.prop[2, b] = (self._hx * self._hy * exy).real
        # reciprocity (the response derives from a quadratic elastic energy):
        # e1 per unit e2 source = e2 per unit e1 source; the two computed
        # values agree to round-off (tests), one shared value makes it exact
        cross = 0.5 * (self.prop[1, 1] + self.prop[2, 0])
        self.prop[1, 1] = cross
        self.prop[2, 0] = cross

    # -- transforms -------------------------------------------------------
    def rfft2(self, field):
        """Forward transform of a real (L, L) field -> new (L, L//2+1) complex array."""
        self._r_in[...] = field
        return self._fwd().copy()

    def irfft2(self, field_hat):
        """Inverse transform of a (L, L//2+1) half spectrum -> new real (L, L) array."""
        self._c_in[...] = field_hat
        return self._inv().copy()

    # -- deviatoric sources -----------------------------------------------
    def response_hat(self, p1_hat, p2_hat):
        """Elastic strain change from plastic source spectra.

        p1_hat, p2_hat : (L, L//2+1) complex, transforms of the plastic e1
        and e2 fields (strain x site area per site).
        Returns (3, L, L//2+1) complex: transforms of (k, e1, e2).
        """
        return self.prop[:, 0] * p1_hat + self.prop[:, 1] * p2_hat

    def response(self, p1, p2):
        """Elastic strain change (k, e1, e2), shape (3, L, L), at every site
        from plastic e1 and e2 fields p1, p2 of shape (L, L)."""
        out_hat = self.response_hat(self.rfft2(p1), self.rfft2(p2))
        return np.stack([self.irfft2(f) for f in out_hat])

    def real_space_kernels(self):
        """Response to a unit plastic source at site (0, 0), shape (3, 2, L, L):
        ``[a, b]`` is strain component a (k, e1, e2) per source component b
        (e1, e2); the source at site j is ``np.roll`` of it by j."""
        return np.stack([[self.irfft2(self.prop[a, b]) for b in range(2)]
                         for a in range(3)])

    def set_self_term(self, s1, s2):
        """Replace the diagonal self terms (e1 <- e1, e2 <- e2 at r = 0,
        including the -1/L^2 of strain control) by s1, s2: the response
        gains delta (delta_{r,0} - 1/L^2), i.e. delta at every q != 0, with
        delta = (s - old)/(1 - 1/L^2). The change has zero mean, so the
        q = 0 (strain control, stress drop) and every site but the source
        keep their response up to a uniform -delta/L^2. The model uses it to
        give a rearranging site the calibrated relaxation of its own strain
        while its far field is the calibrated one (docs/model.md)."""
        L2 = self.L ** 2
        st = self.self_term()
        for (a, b), s in (((1, 0), s1), ((2, 1), s2)):
            delta = (float(s) - st[a, b]) / (1.0 - 1.0 / L2)
            q0 = self.prop[a, b, 0, 0]
            self.prop[a, b] += delta
            self.prop[a, b, 0, 0] = q0

    def self_term(self):
        """Elastic strain at the source site per unit source, shape (3, 2)
        (rows k, e1, e2; columns source e1, e2).  Only the diagonal e1<-e1,
        e2<-e2 is non-zero (see ``set_self_term`` and docs/model.md)."""
        w = np.full(self.prop.shape[-1], 2.0)
        w[0] = 1.0
        if self.L % 2 == 0:
            w[-1] = 1.0
        return (self.prop * w).sum(axis=(-2, -1)) / self.L**2

    def staggered_response(self, p1, p2):
        """The discrete elastic fields on their staggered positions.

        p1, p2 : (L, L) plastic e1 (site centres) and site e2 (spread onto
        the corners with the interpolation weights).
        Returns a dict of (L, L) real arrays: 'ux' at (ix+1/2, iy), 'uy' at
        (ix, iy+1/2) (displacements, sites; zero mean); elastic strains
        'exx', 'eyy' at centres (ix, iy) and 'exy' at corners
        (ix+1/2, iy+1/2).  These are the fields that satisfy discrete
        compatibility (total strain) and equilibrium; ``response`` returns
        k = (exx+eyy)/2, e1 = (exx-eyy)/2 and the interpolated e2.
        """
        fields = self._solve(self.rfft2(p1), self.rfft2(p2))
        return {name: self.irfft2(f)
                for name, f in zip(("ux", "uy", "exx", "eyy", "exy"), fields)}

    def _solve(self, p1_hat, p2_hat):
        """Equilibrium of the staggered discrete elasticity for plastic
        spectra; returns spectra (ux, uy, elastic exx, eyy, corner exy)."""
        lam, mu = self.lam, self.mu
        bx = 1.0 - np.exp(-1j * self.qx)  # face -> centre (backward difference)
        by = 1.0 - np.exp(-1j * self.qy)
        fx = np.exp(1j * self.qx) - 1.0   # face -> corner (forward difference)
        fy = np.exp(1j * self.qy) - 1.0
        pxx, pyy = p1_hat, -p1_hat
        pxy = np.conj(self._hx * self._hy) * p2_hat
        # polarisation stress tau = C : p
        txx = (lam + 2 * mu) * pxx + lam * pyy
        tyy = lam * pxx + (lam + 2 * mu) * pyy
        txy = 2 * mu * pxy
        # B^H C B u = B^H tau, B the strain operator, B^H minus the divergence
        a11 = (lam + 2 * mu) * np.abs(bx) ** 2 + mu * np.abs(fy) ** 2
        a22 = (lam + 2 * mu) * np.abs(by) ** 2 + mu * np.abs(fx) ** 2
        a12 = lam * np.conj(bx) * by + mu * np.conj(fy) * fx
        r1 = np.conj(bx) * txx + np.conj(fy) * txy
        r2 = np.conj(by) * tyy + np.conj(fx) * txy
        det = a11 * a22 - np.abs(a12) ** 2
        det[0, 0] = 1.0  # q = 0: u = 0, total strain fixed by the applied strain
        ux = (a22 * r1 - a12 * r2) / det
        uy = (a11 * r2 - np.conj(a12) * r1) / det
        ux[0, 0] = uy[0, 0] = 0.0
        exx = bx * ux - pxx
        eyy = by * uy - pyy
        exy = 0.5 * (fy * ux + fx * uy) - pxy
        return ux, uy, exx, eyy, exy

    # -- transient compression source ---------------------------------------
    def compression_hat(self, t, p, t_centre, width, D):
        """Volumetric strain k around a transient volumetric point source at site (0, 0).

        The source's plastic half-trace x area grows to ``p`` (site areas;
        p > 0: the source dilates, so it compresses its surroundings, k < 0
        there) with a Gaussian rate profile of centre ``t_centre`` and
        standard deviation ``width`` (> 0); the field outside is that rate
        convolved in time with -((1 + nu)/2) times the lattice diffusion
        kernel exp(-D lap t) (SPEC.md section 5): each mode q != 0 is
        ``-(1+nu)/2 * p * int g(t') exp(-D lap_q (t - t')) dt'``, g the
        unit-area Gaussian, in closed form.  The q = 0 mode is zero (volume
        conservation), so the field sums to zero at every time and vanishes
        once the transient has relaxed.

        t, t_centre, width : lattice time units (frames).
        D : D_L dt / a^2, sites^2 per frame.
        Returns (L, L//2+1) float64 (real: the field is inversion symmetric).
        """
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}")
        rate = D * self.lap
        s = width * np.sqrt(2.0)
        z = (t_centre + rate * width**2 - t) / s
        out = np.empty_like(rate)
        pos = z >= 0  # erfcx form: no overflow of exp(rate^2 width^2 / 2)
        out[pos] = np.exp(-((t - t_centre) / s) ** 2) * erfcx(z[pos])
        neg = ~pos
        out[neg] = np.exp(rate[neg] * (t_centre - t) + 0.5 * (rate[neg] * width) ** 2) \
            * erfc(z[neg])
        out *= -0.25 * (1.0 + self.nu) * p
        out[0, 0] = 0.0
        return out


def _interp_symbol(q):
    """Transform of the corner -> centre interpolation along one axis,
    ``sum_i w_i exp(i q i)`` for corner offsets i = -2..1."""
    return sum(w * np.exp(1j * q * i) for w, i in zip(INTERP_WEIGHTS, _INTERP_OFFSETS))
