"""Calibration of the lattice model from particle trajectories (SPEC.md section 4).

Installed as ``step_epm.calibrate``. Measurement functions on plain arrays
(no file reading; a driver reads trajectories and calls them), each
returning ``step_epm.lattice.calibration.Quantity`` objects and binned
curves with bootstrap errors:

- ``fits``: minimum image in a sheared box, least squares from moments,
  power-law tails, bootstrap, Quantity helpers (shared by the others);
- ``strain_fields``: strain around an isolated rearrangement (item 1);
- ``correlations``: rearranger pair correlation g2(r, df) (item 2);
- ``softness_change``: c0(r), c1(r), b and the rearranger's own change (items 3, 4);
- ``yield_strain``: yield strain quantiles versus softness (item 5);
- ``events``: frames per rearrangement, plastic strain, relaxed fraction
  and residual, time between frames (items 6, 7);
- ``compression``: the transient compression source's amplitude and time
  profile (SPEC.md section 5 item 3).

The data side and the command line:

- ``extract``: streaming extraction from trajectories and their analysis
  files into the functions above; ``measure()`` -> ``Measurements``;
- ``lattice_mapping``: site size, site-averaged softness, P(S) of sites,
  yield table vs site S, site kernels, time per frame (section 5);
- ``assemble``: Measurements -> a validated calibration file (flagged
  placeholders for what could not be measured);
- ``config``, ``cli``, ``report``: ``step-calibrate`` and its HTML report.
"""
