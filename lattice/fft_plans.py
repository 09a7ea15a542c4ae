"""FFTW plans of the lattice, reproducible between a run and its resume.

FFTW picks an algorithm per transform when it plans it, and different
algorithms give results that differ in the last bits:

- ``"estimate"`` (FFTW_ESTIMATE): a fixed heuristic; the same transform
  gets the same plan in every process with the same FFTW build and CPU, so
  a fresh run and a resumed one agree bit for bit. But FFTW_ESTIMATE also
  uses any *wisdom* the process holds, so :class:`Planner` first forgets it.
- ``"measure"`` (FFTW_MEASURE): times candidate algorithms and keeps the
  fastest (the inverse real transform at L = 256 is about 1.3x faster here).
  Two planning runs may pick different algorithms, so the plans are
  recorded as FFTW wisdom (:meth:`Planner.finish`), stored in every run
  file, and a resumed run re-creates exactly those plans from it
  (FFTW_WISDOM_ONLY). Two *fresh* runs of the same config may differ in
  the last bits.

FFTW wisdom is global to the process: a Planner forgets what the process
held and replaces it with its own (plans already made keep working).
MEASURE planning overwrites the arrays it plans on: plan before filling them.
"""

import logging

import pyfftw

log = logging.getLogger(__name__)

PLANNERS = {"estimate": "FFTW_ESTIMATE", "measure": "FFTW_MEASURE"}


class Planner:
    """Makes the FFTW plans of one model.

    kind: "estimate" or "measure" (module docstring).
    wisdom: FFTW double-precision wisdom (bytes) from an earlier run of the
        same model, to re-create its plans ("measure" only; ignored, with a
        warning, if this machine's FFTW cannot use it).
    """

    def __init__(self, kind: str = "estimate", wisdom: bytes | None = None):
        if kind not in PLANNERS:
            raise ValueError(f"FFT planner must be one of {sorted(PLANNERS)}, got {kind!r}")
        self.kind = kind
        self.replayed = False
        self._imported = bytes(wisdom or b"")
        pyfftw.forget_wisdom()
        if kind == "measure" and wisdom:
            self.replayed = bool(pyfftw.import_wisdom((self._imported, b"", b""))[0])
            if not self.replayed:
                log.warning("the run's stored FFTW wisdom does not load here: re-measuring plans; "
                            "the resumed run may differ from an uninterrupted one in the last bits")

    def plan(self, inp, out, axes, direction, destroy_input=False, threads=1):
        """A pyfftw.FFTW from ``inp`` to ``out`` over ``axes``."""
        flags = [PLANNERS[self.kind]]
        if destroy_input:
            flags.append("FFTW_DESTROY_INPUT")
        if self.replayed:
            try:
                return pyfftw.FFTW(inp, out, axes=axes, direction=direction,
                                   flags=flags + ["FFTW_WISDOM_ONLY"], threads=threads)
            except RuntimeError:
                log.warning("the run's stored FFTW wisdom has no plan for a %s transform of %s: "
                            "re-measuring; the resumed run may differ in the last bits",
                            direction, inp.shape)
                self.replayed = False
        return pyfftw.FFTW(inp, out, axes=axes, direction=direction, flags=flags, threads=threads)

    def finish(self) -> bytes:
        """The double-precision wisdom of the plans made (call right after
        the last plan, before anything else plans in this process): the
        imported wisdom itself if every plan came from it, b"" for
        "estimate", whose plans need none."""
        if self.kind != "measure":
            return b""
        return self._imported if self.replayed else pyfftw.export_wisdom()[0]
