"""Test hook: a process that SIGKILLs itself at a chosen point, so that the
resume of long jobs can be tested at exact places (never at random times).

``KillSwitch("STEP_PARTICLES_KILL_AT")`` reads ``event:k`` from that
environment variable; ``switch("event")`` then kills the process at the
k-th call with that event. Unset variable: the switch does nothing.
"""

import os
import signal


class KillSwitch:
    """SIGKILL at the k-th occurrence of one event (see the module docstring)."""

    def __init__(self, env_var: str):
        spec = os.environ.get(env_var, "")
        self.event, self.at, self.count = None, 0, 0
        if spec:
            event, _, k = spec.partition(":")
            self.event, self.at = event, int(k or 1)

    def __call__(self, event: str):
        if event == self.event:
            self.count += 1
            if self.count >= self.at:
                os.kill(os.getpid(), signal.SIGKILL)
