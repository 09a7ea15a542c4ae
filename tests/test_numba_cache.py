"""numba's on-disk cache across processes.

A cached serial kernel that calls a parallel one can be written with a
reference to the callee's parallel region that a later process cannot
resolve, and that process crashes (SIGSEGV) on the first call (numba issue
#8578). particles/kernels.py therefore keeps parallel kernels out of the
serial minimiser loops (kernels.build_neighbour_list is serial). This test replays
the order of compilations that crashed before that change: the neighbour
list is cached by one process, the FIRE and steepest-descent loops are
compiled against the cached list by a second, and a third loads the loops
from the cache.
"""

import os
import subprocess
import sys
import textwrap

FORCES = """
    from step_epm.particles.potential import NeighbourList, forces
    from step_epm.particles.state import random_state
    forces(random_state(64, 0.9, seed=1), NeighbourList())
"""
LOOPS_AFTER_CACHED_LIST = FORCES + """
    from step_epm.particles.minimize import fire, steepest_descent
    state = random_state(64, 0.9, seed=1)
    fire(state, 1e-6)
    steepest_descent(state, 1e-3)
"""
LOOPS_FROM_CACHE = """
    from step_epm.particles.minimize import fire, steepest_descent
    from step_epm.particles.state import random_state
    state = random_state(64, 0.9, seed=1)
    fire(state, 1e-6)
    steepest_descent(state, 1e-3)
"""


def test_cached_minimiser_loops_load_in_a_fresh_process(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba_cache"))
    for name, code in [("neighbour list cached", FORCES),
                       ("loops compiled against the cached list", LOOPS_AFTER_CACHED_LIST),
                       ("loops loaded from the cache", LOOPS_FROM_CACHE)]:
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (f"{name}: exit status {proc.returncode}\n"
                                      f"{proc.stderr[-2000:]}")
