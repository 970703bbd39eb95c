"""Waiting for a child made with os.fork in a test, without hanging the suite if it hangs."""

import os
import signal
import time


def wait_for_child(pid, timeout_s=120.0):
    """The child's exit status; a child still running after timeout_s is killed and fails."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"the forked child did not finish in {timeout_s:.0f} s")
