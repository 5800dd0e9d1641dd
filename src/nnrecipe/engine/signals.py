"""SIGTERM passed on to the processes a command started, so that they stop as they would on Ctrl-C.

A terminal's Ctrl-C reaches every process of its group; a SIGTERM (kill, a cluster's preemption, docker stop)
reaches only the process it was sent to. A launcher (`train --nproc` over torchrun, `tune --jobs`) that died
of it, or was turned into a KeyboardInterrupt, left its children training on, unattended, their runs saying
"running"; passed on, each child saves a checkpoint and records itself interrupted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager


@contextmanager
def sigterm_passed_on(children: Callable[[], Iterable[int]]) -> Iterator[threading.Event]:
    """While the block runs, a SIGTERM is sent on to each process id `children()` gives (alive ones), once;
    the event it yields is set then (a launcher starts no more processes). Outside the main thread it does
    nothing."""
    passed = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield passed
        return

    def pass_on(signum, frame) -> None:
        if passed.is_set():
            return
        passed.set()
        for pid in children():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:  # it ended meanwhile
                pass

    previous = signal.signal(signal.SIGTERM, pass_on)
    try:
        yield passed
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_for_launched(proc: subprocess.Popen) -> int:
    """The exit code of a launched group of processes (torchrun), waited for through a stop: a SIGTERM is
    passed on; a Ctrl-C reached it too, so it is waited for while it saves (`subprocess.run` killed torchrun
    0.25 s after a Ctrl-C, its workers left behind)."""
    with sigterm_passed_on(lambda: [proc.pid]):
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                continue
