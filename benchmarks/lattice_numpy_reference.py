"""Plain numpy reference of the STEP lattice dynamics (benchmarks and the
agreement test only; the model is lattice/model.py, equations in
docs/model.md, "Model").

The same equations as ``STEPModel`` written as whole-field numpy
operations, every frame through ``numpy.fft`` (no numba, no real-space
kernel adds, no pyfftw): the reference that the per-frame speed of the
numba code is compared with, and an independent check of its dynamics.
The set-up (kernel spectra, site-averaged softness kernels, yield table,
parameters) is taken from a ``STEPModel``; only the dynamics are written
again here.

Units and layout as in the model: fields (L, L) float64 indexed [ix, iy],
flat site index ix * L + iy; half spectra (L, L//2 + 1); strains
dimensionless, lengths in sites, time in frames.
"""

from collections import deque

import numpy as np

rfft2, irfft2 = np.fft.rfft2, np.fft.irfft2


class NumpySTEP:
    """The STEP dynamics of ``model`` (a STEPModel between avalanches), from
    a copy of its current state and RNG state. ``avalanche()`` loads and
    runs one avalanche; ``frame`` and ``n_rearrangements`` count."""

    def __init__(self, model):
        m, p = model, model.par
        self.L, self.mode, self.soft = m.L, m.mode, m.opt.softness
        self.vol = m.opt.volumetric
        self.kappa, self.nf, self.b = p.kappa, p.n_frames, p.b
        self.prop, self.C0h, self.C1h = m.K.prop, m.C0h, m.C1h  # (3, 2, L, h), (L, h), (L, h)
        self.ytab, self.ygrid = m.ytab, (m._s0, m._sinv, m._u0, m._uinv)
        if self.vol:  # per-frame injection J[age] and decay of the transient (docs/model.md)
            hk = [m.K.compression_hat(float(t), 1.0, p.comp_t, p.comp_w, p.D) for t in range(m.M + 1)]
            self.decay = np.exp(-p.D * m.K.lap)
            self.J = [hk[1]] + [hk[a + 1] - self.decay * hk[a] for a in range(1, m.M)]
            self.amp = p.comp_p
        for f in ("e1", "e2", "k", "S", "u"):
            setattr(self, f, getattr(m, f).copy())
        self.gamma, self.frame = m.gamma, m.frame
        self.rng = np.random.Generator(np.random.PCG64())
        self.rng.bit_generator.state = m.rng.bit_generator.state
        L, h = self.L, self.L // 2 + 1
        self.dp1, self.dp2 = np.zeros((L, L)), np.zeros((L, L))
        self.busy = np.zeros((L, L), dtype=int)
        self.Kt = np.zeros((L, h), dtype=complex)
        self.n_rearrangements = 0

    def yield_strain(self, u, s):
        """eps_y = F^-1(u | S), bilinear in the table, clamped (arrays)."""
        s0, sinv, u0, uinv = self.ygrid
        y = self.ytab
        fu = np.clip((u - u0) * uinv, 0.0, y.shape[1] - 1.0)
        j = np.minimum(fu.astype(int), y.shape[1] - 2)
        tu = fu - j
        fs = np.clip((s - s0) * sinv, 0.0, y.shape[0] - 1.0)
        i = np.minimum(fs.astype(int), max(y.shape[0] - 2, 0))
        ts = fs - i if y.shape[0] > 1 else 0.0
        lo = y[i, j] + tu * (y[i, j + 1] - y[i, j])
        if y.shape[0] == 1:
            return lo
        hi = y[i + 1, j] + tu * (y[i + 1, j + 1] - y[i + 1, j])
        return lo + ts * (hi - lo)

    def over(self, busy):
        """Sites at or over threshold that are not in the boolean mask ``busy``."""
        d1, d2 = self.e1, self.e2
        eps = 2 * np.sqrt(d1 * d1 + d2 * d2) if self.mode == 0 else 2 * np.abs(d2)
        return (eps >= self.yield_strain(self.u, self.S)) & ~busy

    def load(self):
        """Exact extremal loading (uniform e2 += x, gamma += 2x); returns the flat site."""
        h = 0.5 * self.yield_strain(self.u, self.S)
        d1, d2 = self.e1, self.e2
        if self.mode == 0:
            rr = h * h - d1 * d1
            x = np.where((rr <= 0) | (d1 * d1 + d2 * d2 >= h * h), 0.0,
                         np.sqrt(np.maximum(rr, 0.0)) - d2)
        else:
            x = np.where(np.abs(d2) >= h, 0.0, h - d2)
        site = int(np.argmin(x))
        self.e2 += x.flat[site]
        self.gamma += 2 * x.flat[site]
        return site

    def avalanche(self):
        """Load to the next instability and run frames until the avalanche
        and its transient end; returns the number of rearrangements."""
        trig = np.zeros((self.L, self.L), dtype=bool)
        trig.flat[self.load()] = True
        n0 = self.n_rearrangements
        smean = self.S.mean()
        young = deque(maxlen=len(self.J) if self.vol else 1)  # sources by age, newest first
        while True:
            # rearrangements starting this frame
            self.dp1[trig] = self.kappa * self.e1[trig] / self.nf
            self.dp2[trig] = self.kappa * self.e2[trig] / self.nf
            self.busy[trig] = self.nf
            self.n_rearrangements += int(trig.sum())
            # increments: transient, deviatoric responses, softness sums
            spec = [self.prop[a, 0] * rfft2(self.dp1) + self.prop[a, 1] * rfft2(self.dp2)
                    for a in range(3)]
            if self.vol:
                young.appendleft(self.amp * rfft2(trig) if trig.any() else None)
                new = self.decay * self.Kt + sum(J * s for J, s in zip(self.J, young) if s is not None)
                spec[0] = spec[0] + (new - self.Kt)
                self.Kt = new
            dk, de1, de2 = (irfft2(f, s=self.e1.shape) for f in spec)
            active = self.busy > 0
            if self.soft:
                NN = rfft2(active)
                C0, C1 = irfft2(self.C0h * NN, s=dk.shape), irfft2(self.C1h * NN, s=dk.shape)
                self.S += C0 + C1 * (self.S - smean) + self.b * dk
                smean = self.S.mean()
            self.k += dk
            self.e1 += de1
            self.e2 += de2
            # releases
            self.busy[active] -= 1
            done = active & (self.busy == 0)
            self.dp1[done] = self.dp2[done] = 0.0
            trig = self.over(active)
            self.u.flat[np.flatnonzero(done)] = self.rng.random(int(done.sum()))
            self.frame += 1
            if not trig.any() and not self.busy.any():
                if not (self.vol and young):
                    break
                # end of the avalanche: the transient relaxes quasistatically
                kt = irfft2(self.Kt, s=dk.shape)
                self.k -= kt
                if self.soft:
                    self.S -= self.b * kt
                    smean = self.S.mean()
                self.Kt[:] = 0.0
                young.clear()
                trig = self.over(self.busy > 0)
                if not trig.any():
                    break
        return self.n_rearrangements - n0
