"""Athermal quasistatic (AQS) shear with avalanches followed frame by frame.

SPEC.md section 1. Units: lengths in small-particle diameters, energies in
the pair prefactor, time in the overdamped unit (dx/dt = F, unit drag per
particle). Shear strain gamma is the engineering strain (tilt / height).

One strain step (:func:`aqs_step`):

1. affine simple shear x += d_gamma y of positions and box;
2. direct minimisation (Newton with the run's one :class:`NewtonSolver`,
   FIRE fallback) to max|F| < ftol;
3. plastic-event tests against the elastic prediction (see
   :class:`~step_epm.particles.config.AvalancheConfig`): dissipation
   W - dE above ``energy_tol`` (W = V d_gamma (sigma_xy(prev) +
   sigma_xy(new)) / 2, the work of the step, equals dE on an elastic
   branch up to O(d_gamma^3)), a shear-stress drop, or a max non-affine
   displacement above ``nonaffine_threshold`` (a small event at large N may
   show no net energy drop), or a failed direct minimisation;
4. for an event, :func:`relax_avalanche` re-relaxes from the affinely
   strained start by adaptive overdamped steepest descent, saving a frame
   each time sqrt(sum_i |x_i - x_i(last frame)|^2) reaches frame_spacing
   (0.15), the start being the first frame, with each frame's overdamped
   time; the descent's end is polished by Newton (steepest descent again if
   Newton fails; FIRE never, it could change basin) and becomes the step's
   state, so the trajectory follows overdamped dynamics through every
   avalanche. The energy difference to the direct minimum is recorded.

Determinism and resume. Every engine call starts from its input state only
(neighbour lists are built at the call's start), except the Newton
solver's factorisation and its particle ordering, and the neighbour list of
the direct minimisation, which are carried between steps. They are
therefore always re-anchored at the stored state of the previous step
(``solver.factorize(state, nlist)`` with a fresh ``nlist``, a fresh ordering
included, after each step, and the same on resume; the next step's direct
minimisation starts with that list), so a resumed run repeats an
uninterrupted one bit for bit
(at the same thread count: the engine's reductions are thread-count
independent).

:func:`run_aqs` drives a whole run with the kill-safe trajectory store of
:mod:`step_epm.particles.trajectory`.
"""

import logging
import time as _time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..kill_switch import KillSwitch
from .config import ParticlesConfig, physics_hash
from .minimize import (DescentParams, MinimizeResult, NewtonSolver, max_force, minimize,
                       steepest_descent)
from .potential import Evaluation, NeighbourList, evaluate
from .state import State, random_state
from .trajectory import (METHOD_CODES, STEP_FIELDS, Header, SegmentStore, TrajectoryError,
                         box_edges)

log = logging.getLogger(__name__)

REASON_ENERGY, REASON_STRESS, REASON_NONAFFINE, REASON_FAILED = 1, 2, 4, 8
#: Largest configuration-space move accepted from the Newton polish of an
#: avalanche, as a fraction of the frame spacing.
POLISH_MAX_FRACTION = 0.1


# ---------------------------------------------------------------------------
# Test hook: die at a chosen point (SIGKILL), to test resume
# ---------------------------------------------------------------------------

#: ``STEP_PARTICLES_KILL_AT=event:k`` SIGKILLs the run at the k-th "commit"
#: (after a step is committed to disk), "write" (a step's rows appended, not
#: yet committed) or "frame" (an avalanche frame computed, mid-avalanche).
KILL_ENV = "STEP_PARTICLES_KILL_AT"


# ---------------------------------------------------------------------------
# One step
# ---------------------------------------------------------------------------

@dataclass
class Avalanche:
    """An avalanche's frames (the affinely strained start first) and its end.

    frames: dict of arrays: position (F, N, 2), time (F,), distance (F,),
        distance_bound (F,), energy (F,), stress (F, 2, 2), max_force (F,).
    final: the polished end state; result: its MinimizeResult (method
        "sd+newton" or "sd"); duration: overdamped time of the descent;
        sd_steps / sd_force_evals: descent work.
    """

    frames: dict
    final: State
    result: MinimizeResult
    duration: float
    sd_steps: int
    sd_force_evals: int


def descent_params(cfg: ParticlesConfig) -> DescentParams:
    a = cfg.avalanche
    return DescentParams(dt0=a.sd_dt0, dt_max=a.sd_dt_max, eta=a.sd_eta, grow=a.sd_grow,
                         shrink=a.sd_shrink)


def relax_avalanche(start: State, solver: NewtonSolver, cfg: ParticlesConfig,
                    on_frame=None) -> Avalanche:
    """Overdamped steepest descent from ``start`` with frames every
    ``avalanche.frame_spacing`` of configuration-space distance, then the
    polish to ``minimizer.ftol`` (see module docstring).

    A frame is saved at the first accepted descent state whose distance from
    the previous frame is >= frame_spacing; it overshoots by at most one
    descent step, whose length is bounded by dt_last |F| / (1 - eta)
    (the accept test |F' - F| <= eta |F|): ``distance_bound`` records
    frame_spacing plus that bound.

    The descent runs to max|F| < avalanche.sd_ftol; then Newton (with an LU
    factorised at the descent's end) polishes to minimizer.ftol. Newton
    refuses an indefinite Hessian: a small force does not mean a minimum
    (the descent slows down near saddles too). If it fails, the same descent
    goes on (frames included) to a tolerance 100 times smaller and Newton is
    tried again, down to ftol itself, so the end state always lies on the
    overdamped path's basin. A Newton polish that moves the configuration by
    more than POLISH_MAX_FRACTION * frame_spacing is refused the same way
    (a polish must not skip a frame's worth of motion: near an instability
    the Hessian can still be positive definite while the minimum is gone).
    """
    a = cfg.avalanche
    params = descent_params(cfg)
    spacing = a.frame_spacing
    ftol = cfg.minimizer.ftol
    ev = evaluate(start)
    rows = {"position": [start.pos.copy()], "time": [0.0], "distance": [0.0],
            "distance_bound": [0.0], "energy": [ev.energy], "stress": [ev.stress],
            "max_force": [max_force(ev.forces)]}
    cur, ref, dt = start, start.pos.copy(), None
    t = 0.0
    steps = fevals = 0
    f0, s0 = solver.factorizations, solver.solves
    tol = max(a.sd_ftol, ftol)
    notes = []
    final, res = None, None
    r = MinimizeResult(False, max_force(ev.forces), ev.energy)
    while True:
        status = "max_steps"
        while steps < a.max_sd_steps:
            cur, r, dt = steepest_descent(cur, tol, a.max_sd_steps - steps, params,
                                          stop_disp=spacing, reference=ref, dt=dt)
            t += r.time
            steps += r.iterations
            fevals += r.force_evals
            status = r.notes[-1]
            if status != "distance":
                break
            ev = evaluate(cur)
            dt_last = a.sd_dt_max if dt >= a.sd_dt_max else dt / a.sd_grow
            step_bound = dt_last * float(np.linalg.norm(ev.forces)) / (1.0 - a.sd_eta)
            rows["position"].append(cur.pos.copy())
            rows["time"].append(t)
            rows["distance"].append(float(np.sqrt(np.sum((cur.pos - ref) ** 2))))
            rows["distance_bound"].append(spacing + step_bound)
            rows["energy"].append(ev.energy)
            rows["stress"].append(ev.stress)
            rows["max_force"].append(max_force(ev.forces))
            ref = cur.pos.copy()
            if on_frame is not None:
                on_frame()
        if status == "converged" and tol <= ftol:
            final, res = cur, MinimizeResult(True, r.fmax, r.energy, method="sd")
            break
        if status == "max_steps":
            notes.append(f"descent stopped after {steps} steps")
            final, res = cur, MinimizeResult(False, r.fmax, r.energy, method="sd")
            break
        if solver.factorize(cur, NeighbourList()):
            polished, pres = solver.solve(cur, ftol)
            fevals += pres.force_evals
            jump = float(np.sqrt(np.sum((polished.pos - cur.pos) ** 2)))
            if pres.converged and jump > POLISH_MAX_FRACTION * spacing:
                pres.converged = False
                pres.notes.append(f"Newton polish moved {jump:.3g} (a jump, not a polish)")
            if pres.converged:
                final, res = polished, pres
                res.method = "sd+newton"
                break
            notes += pres.notes
        tol = max(tol * 1e-2, ftol)
    res.iterations = steps
    res.force_evals = fevals
    res.newton_solves = solver.solves - s0
    res.factorizations = solver.factorizations - f0
    res.notes = notes + list(res.notes)
    frames = {k: np.asarray(v) for k, v in rows.items()}
    return Avalanche(frames, final, res, t, steps, fevals)


@dataclass
class StepResult:
    """Everything one strain step produces (see trajectory.STEP_FIELDS)."""

    state: State
    evaluation: Evaluation
    record: dict
    avalanche: Avalanche | None = None
    avalanche_row: dict | None = None
    nlist: NeighbourList | None = None  # built at state; the solver is anchored with it
    wall: float = 0.0
    extra: dict = field(default_factory=dict)


def record_of(step: int, state: State, ev: Evaluation, res: MinimizeResult, method: str,
              frame: int, n_avalanches: int, avalanche: int = -1, reason: int = 0,
              dissipation: float = 0.0, nonaffine=(0.0, 0.0)) -> dict:
    """One row of per-step observables."""
    return {"step": step, "gamma": state.gamma, "energy": ev.energy, "stress": ev.stress,
            "pressure": ev.pressure, "max_force": max_force(ev.forces),
            "converged": int(bool(res.converged)),
            "iterations": res.iterations, "force_evals": res.force_evals,
            "newton_solves": res.newton_solves, "factorizations": res.factorizations,
            "method": METHOD_CODES.get(method, METHOD_CODES["fire"]),
            "avalanche": avalanche, "event_reason": reason, "dissipation": dissipation,
            "nonaffine_max": nonaffine[0], "nonaffine_norm": nonaffine[1], "frame": frame,
            "n_avalanches": n_avalanches}


def aqs_step(prev: State, prev_record: dict, step: int, solver: NewtonSolver,
             cfg: ParticlesConfig, on_frame=None, nlist: NeighbourList | None = None
             ) -> StepResult:
    """Strain step ``step`` from the stored state ``prev`` (whose record is
    ``prev_record``). ``solver`` must hold the LU factorised at ``prev``
    with the neighbour list ``nlist`` built there (see module docstring;
    None: a fresh list); it is re-anchored at the new state on return, with
    the list in ``StepResult.nlist``."""
    wall0 = _time.perf_counter()
    m, a = cfg.minimizer, cfg.avalanche
    dg = cfg.shear.d_gamma
    strained = prev.sheared(dg)
    solver.fresh = False
    direct, rd = minimize(strained, m.ftol, solver=solver, newton_switch=m.newton_switch,
                          max_fire_iter=m.max_fire_iter, nlist=nlist)
    evd = evaluate(direct)
    sxy_prev, e_prev = float(prev_record["stress"][0, 1]), float(prev_record["energy"])
    V = prev.volume

    def tests(st: State, ev: Evaluation):
        diss = V * dg * 0.5 * (sxy_prev + ev.stress[0, 1]) - (ev.energy - e_prev)
        u = st.pos - strained.pos
        u2 = np.sum(u * u, axis=1)
        return float(diss), (float(np.sqrt(u2.max())), float(np.sqrt(u2.sum())))

    diss, na = tests(direct, evd)
    reason = 0
    if a.energy_tol is not None and diss > a.energy_tol:
        reason |= REASON_ENERGY
    if a.stress_tol is not None and evd.stress[0, 1] < sxy_prev - a.stress_tol:
        reason |= REASON_STRESS
    if a.nonaffine_threshold is not None and na[0] > a.nonaffine_threshold:
        reason |= REASON_NONAFFINE
    if not rd.converged:
        reason |= REASON_FAILED
    frame_prev = int(prev_record["frame"])
    n_av = int(prev_record["n_avalanches"])
    if reason == 0:
        rec = record_of(step, direct, evd, rd, rd.method, frame_prev + 1, n_av,
                        dissipation=diss, nonaffine=na)
        out = StepResult(direct, evd, rec)
    else:
        av = relax_avalanche(strained, solver, cfg, on_frame)
        final = av.final
        ev = evaluate(final)
        diss_f, na_f = tests(final, ev)
        res = av.result
        res.iterations += rd.iterations
        res.force_evals += rd.force_evals
        res.newton_solves += rd.newton_solves
        res.factorizations += rd.factorizations
        n_frames = len(av.frames["time"])
        aid = n_av
        rec = record_of(step, final, ev, res, res.method, frame_prev + n_frames + 1, n_av + 1,
                        avalanche=aid, reason=reason, dissipation=diss_f, nonaffine=na_f)
        fr = av.frames
        fr["step"] = np.full(n_frames, step, np.int64)
        fr["frame"] = frame_prev + 1 + np.arange(n_frames, dtype=np.int64)
        fr["avalanche"] = np.full(n_frames, aid, np.int64)
        fr["edges"] = np.repeat(box_edges(strained.Lx, strained.Ly, strained.tilt)[None],
                                n_frames, axis=0)
        row = {"id": aid, "step": step, "gamma": final.gamma, "first_frame": int(fr["frame"][0]),
               "n_frames": n_frames, "duration": av.duration,
               "last_frame_time": float(fr["time"][-1]),
               "energy_drop": float(fr["energy"][0] - ev.energy),
               "stress_drop": float(fr["stress"][0][0, 1] - ev.stress[0, 1]),
               "dissipation": diss_f, "de_direct": float(ev.energy - evd.energy),
               "direct_distance": float(np.sqrt(np.sum((final.pos - direct.pos) ** 2))),
               "sd_steps": av.sd_steps, "sd_force_evals": av.sd_force_evals,
               "event_reason": reason, "converged": int(res.converged)}
        out = StepResult(final, ev, rec, av, row)
    if not out.record["converged"]:
        log.warning("step %d (gamma = %.6g) did not converge: max|F| = %.3g (%s)", step,
                    out.state.gamma, out.record["max_force"], out.record["method"])
    # anchor the LU at the stored state: what a resumed run does too
    out.nlist = NeighbourList()
    solver.factorize(out.state, out.nlist)
    out.wall = _time.perf_counter() - wall0
    return out


# ---------------------------------------------------------------------------
# A whole run
# ---------------------------------------------------------------------------

def initial_state(cfg: ParticlesConfig) -> tuple[State, MinimizeResult]:
    """Seeded random positions minimised to the force tolerance (step 0)."""
    s, m = cfg.system, cfg.minimizer
    return minimize(random_state(s.n, s.phi, s.seed), m.ftol, solver=NewtonSolver(),
                    newton_switch=m.newton_switch, max_fire_iter=m.max_fire_iter,
                    raise_on_failure=True)


def header_for(cfg: ParticlesConfig, config_yaml: str) -> Header:
    from step_epm.provenance import code_version
    s = cfg.system
    box = random_state(s.n, s.phi, s.seed)
    return Header(radii=box.radii, Lx=box.Lx, Ly=box.Ly, d_gamma=cfg.shear.d_gamma,
                  config_yaml=config_yaml, config_hash=physics_hash(cfg),
                  code_version=code_version())


def _elastic_dict(state: State, cfg: ParticlesConfig) -> dict | None:
    if not cfg.elastic.enabled:
        return None
    from .elastic import elastic_constants
    ec = elastic_constants(state, cfg.elastic.strain, cfg.minimizer.ftol)
    out = {}
    for name, mod in (("instantaneous", ec.instantaneous), ("relaxed", ec.relaxed)):
        out[name] = {k: float(getattr(mod, k))
                     for k in ("c11", "c22", "c12", "mu", "lam_2mu", "lam", "nu")}
        log.info("%s elastic constants: lambda+2mu = %.5f, lambda = %.5f, mu = %.5f, nu = %.4f",
                 name, mod.lam_2mu, mod.lam, mod.mu, mod.nu)
    return out


@dataclass
class RunSummary:
    path: Path
    steps_done: int
    avalanches: int
    wall: float
    resumed_from: int | None


def run_aqs(cfg: ParticlesConfig, config_yaml: str = "") -> RunSummary:
    """Run (or resume, or recognise as finished) the AQS run of ``cfg`` in
    ``cfg.output_dir``; returns a summary whose ``path`` is trajectory.h5.

    Raises TrajectoryError when the directory holds a foreign, damaged or
    differently configured run.
    """
    kill = KillSwitch(KILL_ENV)
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    header = header_for(cfg, config_yaml)
    out = cfg.output
    store = SegmentStore(run_dir, header, out.segment_steps, out.compression)
    store.lock()
    try:
        return _run_locked(cfg, store, kill)
    finally:
        store.unlock()


def _run_locked(cfg: ParticlesConfig, store: SegmentStore, kill) -> RunSummary:
    from tqdm import tqdm

    run_dir = store.dir
    out = cfg.output
    scan = store.scan()
    n_steps = cfg.shear.n_steps
    wall0 = _time.perf_counter()
    if scan["complete"]:
        log.info("%s is complete (%d steps): nothing to do", store.final_path, scan["last_step"])
        if not out.keep_segments and store.seg_dir.exists():  # killed while cleaning up
            for leftover in list(store.segments()) + [store.part_path]:
                leftover.unlink(missing_ok=True)
        return RunSummary(store.final_path, 0, 0, 0.0, scan["last_step"])

    def seal_due(step):
        # segments hold steps [k S, (k + 1) S - 1]: boundaries depend on the
        # step number only, so a resumed run stores the same steps
        return (step + 1) % out.segment_steps == 0 or step >= n_steps

    resumed_from = None
    if scan["last_step"] is None and scan["salvage"] is None:
        s = cfg.system
        log.info("jamming N = %d at phi = %g (seed %d)", s.n, s.phi, s.seed)
        state, res = initial_state(cfg)
        ev = evaluate(state)
        log.info("initial packing: %s, max|F| = %.2e, energy/N = %.6e, pressure = %.6e",
                 res.method, res.fmax, ev.energy / s.n, ev.pressure)
        elastic = _elastic_dict(state, cfg)
        rec = record_of(0, state, ev, res, "initial", 0, 0)
        rec["method"] = METHOD_CODES["initial"]
        store.open(0, elastic=elastic)
        store.writer.append_step(rec, state.pos, box_edges(state.Lx, state.Ly, state.tilt))
        store.writer.commit()
        if seal_due(0) and n_steps > 0:
            store.seal()
            store.open(1)
        next_step = 1
    else:
        state, last, row = store.last_state(scan)
        rec = dict(row)
        rec["stress"] = np.asarray(row["stress"])
        log.info("resuming %s after step %d (gamma = %.6g)", run_dir, last, state.gamma)
        resumed_from = last
        if scan["salvage"] is not None:
            store.open(0, salvage=scan["salvage"])
        else:
            store.open(last + 1)
        next_step = last + 1

    solver = NewtonSolver()
    nlist = NeighbourList()
    solver.factorize(state, nlist)
    n_av_start = int(rec["n_avalanches"])
    bar = tqdm(total=n_steps, initial=next_step - 1, unit="step", desc="AQS",
               disable=not out.progress,
               dynamic_ncols=True, mininterval=0.5)
    seg_wall, seg_av = _time.perf_counter(), int(rec["n_avalanches"])
    try:
        for step in range(next_step, n_steps + 1):
            r = aqs_step(state, rec, step, solver, cfg, on_frame=lambda: kill("frame"),
                         nlist=nlist)
            nlist = r.nlist
            sealing = seal_due(step)
            keep = sealing or step % out.position_every == 0
            frames = None
            if r.avalanche is not None:
                frames = r.avalanche.frames
            st = r.state
            store.writer.append_step(r.record, st.pos if keep else None,
                                     box_edges(st.Lx, st.Ly, st.tilt), frames, r.avalanche_row,
                                     wall=r.wall, avalanche_wall=r.wall if frames is not None else None)
            kill("write")
            store.writer.commit()
            kill("commit")
            state, rec = st, r.record
            bar.update(1)
            bar.set_postfix(gamma=f"{state.gamma:.4f}", avalanches=int(rec["n_avalanches"]),
                            refresh=False)
            if sealing and step < n_steps:
                first = int(store.writer.f.attrs["first_step"])
                store.seal()
                log.info("steps %d-%d: %d avalanches, %.1f s", first, step,
                         int(rec["n_avalanches"]) - seg_av, _time.perf_counter() - seg_wall)
                seg_wall, seg_av = _time.perf_counter(), int(rec["n_avalanches"])
                store.open(step + 1)
    finally:
        bar.close()
    path = store.finish(keep_segments=out.keep_segments)
    n_done = n_steps - next_step + 1
    n_av = int(rec["n_avalanches"]) - n_av_start
    wall = _time.perf_counter() - wall0
    log.info("wrote %s: %d steps (%d this session, %.2f steps/s), %d avalanches this session",
             path, n_steps, n_done, n_done / wall if wall > 0 else np.nan, n_av)
    return RunSummary(path, n_done, n_av, wall, resumed_from)


__all__ = ["Avalanche", "StepResult", "RunSummary", "aqs_step", "relax_avalanche", "run_aqs",
           "initial_state", "record_of", "TrajectoryError", "STEP_FIELDS"]
