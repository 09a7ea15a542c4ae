"""Export a strain step or an avalanche frame to extended XYZ, with the
sheared cell intact, for OVITO, freud (via ASE / OVITO readers) and ASE.

The cell is written as ``Lattice="a1x a1y 0 a2x a2y 0 0 0 Lz"`` with
a1 = (Lx, 0), a2 = (tilt Ly, Ly) (the sheared box; tilt = gamma remapped
into [-1/2, 1/2)), a third vector (0, 0, Lz) with Lz = ``lz`` (default 1)
and ``pbc="T T F"``. Positions are wrapped into the cell, z = 0.
Per-particle columns: species (placeholder element symbols "H" small, "He"
large, so that ASE reads the file too), type (0 small, 1 large), pos,
radius (OVITO shows the disks with it), and optionally disp (3 components,
z = 0: the displacement from a reference configuration, unwrapped) and
disp_mag.

    python -m step_epm.particles.export run/trajectory.h5 --step 120 -o step120.xyz
    python -m step_epm.particles.export run/trajectory.h5 --avalanche 3 -o aval3.xyz

(an avalanche exports every frame, then its step's minimised state, as a
multi-frame file with displacements from the avalanche's start.)
"""

import argparse
from pathlib import Path

import numpy as np

from .trajectory import Trajectory, wrap


def _frame_text(pos, edges, radii, comment: dict, disp=None, lz: float = 1.0) -> str:
    xy = wrap(pos, edges)
    a1, a2 = edges
    lattice = f"{a1[0]:.17g} {a1[1]:.17g} 0 {a2[0]:.17g} {a2[1]:.17g} 0 0 0 {lz:.17g}"
    props = "species:S:1:type:I:1:pos:R:3:radius:R:1"
    if disp is not None:
        props += ":disp:R:3:disp_mag:R:1"
    extra = " ".join(f'{k}="{v}"' if isinstance(v, str) else f"{k}={v:.17g}"
                     for k, v in comment.items())
    lines = [str(len(radii)), f'Lattice="{lattice}" Properties={props} pbc="T T F" {extra}'.rstrip()]
    kind = (radii > 0.6).astype(int)
    names = np.where(kind == 1, "He", "H")
    for i in range(len(radii)):
        row = f"{names[i]} {kind[i]} {xy[i, 0]:.17g} {xy[i, 1]:.17g} 0 {radii[i]:.17g}"
        if disp is not None:
            row += f" {disp[i, 0]:.17g} {disp[i, 1]:.17g} 0 {np.hypot(*disp[i]):.17g}"
        lines.append(row)
    return "\n".join(lines) + "\n"


def export_step(path, step: int, out, reference_step: int | None = None, lz: float = 1.0) -> Path:
    """Write strain step ``step``'s minimised state to extended XYZ ``out``;
    with ``reference_step``, add displacements from that step."""
    out = Path(out)
    with Trajectory(path) as t:
        pos, edges, radii = t.positions(step), t.edges(step), t.radii
        gamma = float(t.observable("gamma")[step - t.first_step])
        disp = None if reference_step is None else pos - t.positions(reference_step)
        frame = int(t.observable("frame")[step - t.first_step])
    out.write_text(_frame_text(pos, edges, radii, {"step": step, "frame": frame, "gamma": gamma},
                               disp, lz))
    return out


def export_avalanche(path, avalanche: int, out, lz: float = 1.0) -> Path:
    """Write every frame of one avalanche, then its step's minimised state,
    as a multi-frame extended XYZ with displacements from the start."""
    out = Path(out)
    with Trajectory(path) as t:
        fr = t.frames(avalanche)
        step = int(fr["step"][0])
        end = t.positions(step)
        end_frame = int(t.observable("frame")[step - t.first_step])
        radii = t.radii
    start = fr["position"][0]
    parts = []
    for k in range(len(fr["time"])):
        parts.append(_frame_text(fr["position"][k], fr["edges"][k], radii,
                                 {"avalanche": avalanche, "step": step, "frame": int(fr["frame"][k]),
                                  "time": float(fr["time"][k])},
                                 fr["position"][k] - start, lz))
    parts.append(_frame_text(end, fr["edges"][0], radii,
                             {"avalanche": avalanche, "step": step, "frame": end_frame,
                              "time": float("nan")}, end - start, lz))
    out.write_text("".join(parts))
    return out


def read_extxyz_cell(path) -> np.ndarray:
    """(3, 3) cell (rows = lattice vectors) of the first frame of an
    extended XYZ file (a small reader for checks; OVITO/ASE read the rest)."""
    with open(path) as fh:
        fh.readline()
        header = fh.readline()
    start = header.index('Lattice="') + len('Lattice="')
    values = np.array(header[start:header.index('"', start)].split(), dtype=float)
    return values.reshape(3, 3)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m step_epm.particles.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trajectory")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--step", type=int)
    g.add_argument("--avalanche", type=int)
    p.add_argument("--reference-step", type=int, default=None)
    p.add_argument("-o", "--out", required=True)
    a = p.parse_args(argv)
    if a.step is not None:
        print(export_step(a.trajectory, a.step, a.out, a.reference_step))
    else:
        print(export_avalanche(a.trajectory, a.avalanche, a.out))


if __name__ == "__main__":
    main()
