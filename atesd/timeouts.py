"""A call cut off after a limit of its own CPU time: the thread-based timeout under which grading runs
math-verify. Owns the worker thread, its CPU-time clock, and the stop raised in an abandoned thread
until it ends (the reaper). Knows nothing of grading or of what the call computes.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import threading
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class _Abandoned(BaseException):
    """Raised inside an abandoned check's thread to stop it (BaseException: library code that
    catches Exception, as math-verify does, does not swallow it)."""


_WALL_FACTOR = 10.0  # a check gets timeout_s of its own CPU time, and at most this many times it on the clock
_POLL_S = 0.02


def _own_cpu_clock() -> int | None:
    """The calling thread's CPU-time clock id, where the platform keeps one. Asked by the thread itself:
    pthread_getcpuclockid on another thread's id reads that thread's record, freed once it ends (a
    segfault when the check ended first); the clock id itself names the thread's kernel id, so reading
    it after the thread ended is an error, not a crash."""
    try:
        clock = time.pthread_getcpuclockid(threading.get_ident())
        time.clock_gettime(clock)
    except (AttributeError, OSError):  # no per-thread clocks here (Windows, macOS)
        return None
    return clock


def _run_with_timeout(fn: Callable[[], T], timeout_s: float) -> T:
    """fn() in a fresh daemon thread; concurrent.futures.TimeoutError once the thread has used
    timeout_s of CPU time (or _WALL_FACTOR x timeout_s has passed on the clock; where no per-thread
    clock exists, timeout_s on the clock). A wall-clock limit alone made the verdict follow the
    machine's load: a check of 0.35 s on an idle core timed out at 1 s on a core shared with four busy
    processes, and the string compare then decided.

    On timeout the thread is abandoned, not joined: the caller returns at once, and an exception is
    raised inside the thread to stop it at its next Python bytecode. That exception can land where
    Python swallows it (a weakref callback or a __del__, which sympy's caches run often: "Exception
    ignored in ..."), so a reaper thread sends it again every _REAP_EVERY_S until the check has
    stopped. A single long C-level step (one huge integer power) cannot be interrupted and holds the
    GIL until it ends, which is why atesd.grading's GradeConfig.max_digits screens such answers before
    math-verify sees them.
    """
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    finished = threading.Lock()  # held by whoever decides the check is over: no exception after it
    stopped = threading.Event()

    clock: list[int | None] = []

    def target() -> None:
        try:
            clock.append(_own_cpu_clock())
        finally:  # the caller waits for it: set even if asking for the clock failed otherwise
            if not clock:
                clock.append(None)
            clocked.set()
        try:
            try:
                result = fn()
            except _Abandoned:
                return
            except BaseException as exc:  # noqa: B036 - handed to the waiting caller
                future.set_exception(exc)
            else:
                future.set_result(result)
        except _Abandoned:  # a resent stop that arrived while the result was handed over
            pass
        finally:
            while True:  # a stop sent just before this is delivered here at the latest
                try:
                    with finished:
                        stopped.set()
                    break
                except _Abandoned:
                    continue

    clocked = threading.Event()
    thread = threading.Thread(target=target, name="atesd-grade", daemon=True)
    thread.start()
    clocked.wait()
    try:
        return _wait(future, clock[0], timeout_s)
    except concurrent.futures.TimeoutError:
        threading.Thread(
            target=_reap, args=(thread, stopped, finished), name="atesd-grade-reaper", daemon=True
        ).start()
        raise


def _wait(future: concurrent.futures.Future[T], clock: int | None, timeout_s: float) -> T:
    """`future`'s result once the check's thread sets it; concurrent.futures.TimeoutError once that
    thread, whose CPU-time clock is `clock`, has used timeout_s of CPU time or _WALL_FACTOR x timeout_s
    has passed on the clock (where `clock` is None, once timeout_s has passed on the clock)."""
    if clock is None:
        return future.result(timeout=timeout_s)
    wall_deadline = time.monotonic() + _WALL_FACTOR * timeout_s
    while True:
        try:
            return future.result(timeout=_POLL_S)
        except concurrent.futures.TimeoutError:
            try:
                spent = time.clock_gettime(clock)
            except OSError:  # the thread ended: its result is set, or about to be
                return future.result(timeout=timeout_s)
            if spent >= timeout_s or time.monotonic() >= wall_deadline:
                raise


_REAP_EVERY_S = 0.1
_REAP_FOR_S = 60.0


def _reap(thread: threading.Thread, stopped: threading.Event, finished: threading.Lock) -> None:
    """Raise _Abandoned in `thread` until it stops (or _REAP_FOR_S passes: a C-level step then)."""
    deadline = time.monotonic() + _REAP_FOR_S
    while not stopped.is_set() and thread.is_alive() and time.monotonic() < deadline:
        with finished:
            if stopped.is_set() or thread.ident is None:
                return
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(thread.ident), ctypes.py_object(_Abandoned)
            )
        stopped.wait(_REAP_EVERY_S)
