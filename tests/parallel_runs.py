"""Threads that start together, and a child made with os.fork waited for without hanging the
suite if it hangs."""

import os
import signal
import threading
import time


def run_concurrently(work, workers):
    """Run work(i) in `workers` threads that start together; re-raise the first failure."""
    start = threading.Barrier(workers)
    errors = []

    def body(i):
        try:
            start.wait()
            work(i)
        except BaseException as exc:  # noqa: BLE001 - reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(workers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]


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
