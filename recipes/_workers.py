"""Worker processes that die with the recipe that started them (bench.py and sweep.py units).

A spawned `ProcessPoolExecutor` outlives a parent killed by SIGKILL or SIGTERM: its workers finish
their units (minutes each on the real env) with nobody to read the results. `worker_pool` gives every
worker the kernel's parent-death signal (Linux `prctl(PR_SET_PDEATHSIG)`) and a watchdog thread that
exits when the parent is gone (elsewhere too); workers ignore SIGINT, so Ctrl-C reaches the parent
only, which then terminates them at once instead of waiting for the running units. Workers print
warnings in the parent's format (a worker's warning came out in Python's two-line form, its second
line the source of the `warnings.warn` call, beside the parent's one-line ones).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import multiprocessing as mp
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator

PR_SET_PDEATHSIG, PR_SET_NAME = 1, 15


def _die_with_parent(parent: int, formatwarning: Callable = warnings.formatwarning) -> None:
    """Worker initializer: exit when `parent` is gone; leave Ctrl-C to the parent; print warnings as
    the parent does (`formatwarning`: its one-line form under `user_errors`, else Python's)."""
    warnings.formatwarning = formatwarning
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch, args=(parent,), daemon=True, name="parent-watch").start()


def _watch(parent: int) -> None:
    with contextlib.suppress(OSError, AttributeError):  # named for `ps -T` (and the tests): armed
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_NAME, b"parent-watch")
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[cf.ProcessPoolExecutor]:
    """A spawned pool of `workers` processes bound to this one; leaving by an exception (Ctrl-C
    included) cancels the queued units and terminates the running ones."""
    pool = cf.ProcessPoolExecutor(
        max_workers=workers,
        mp_context=mp.get_context("spawn"),
        initializer=_die_with_parent,
        initargs=(os.getpid(), warnings.formatwarning),
    )
    try:
        yield pool
    except BaseException:
        processes = list((pool._processes or {}).values())  # noqa: SLF001 (no public handle on them)
        manager = pool._executor_manager_thread  # noqa: SLF001 (shutdown forgets it)
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout=10)
        if manager is not None:  # it closes its wakeup pipe as it ends: before this process exits, whose
            manager.join(timeout=10)  # exit hook wrote to that pipe unlocked in CPython < 3.12 (EBADF)
        raise
    pool.shutdown(wait=True)
