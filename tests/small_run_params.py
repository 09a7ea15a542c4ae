"""Parameters of the shared small run (tests/conftest.py ``small_run``):
N = 128, d_gamma = 1e-3 up to 0.12, seed 1: 120 steps, a few avalanches with
15-30 rearrangers per species across their frames (about 10 s), a tiny
softness ensemble on two r-lists. A module of its own (not conftest) so
that test modules can import it unambiguously."""

import numpy as np

SMALL_RUN = dict(n=128, d_gamma=1e-3, gamma_end=0.12, seed=1, quiet_steps=5,
                 r_lists=[np.arange(0.8, 3.01, 0.2), np.arange(0.9, 3.11, 0.3)])
