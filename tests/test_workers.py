"""bench.py's worker processes die with it: SIGKILL or SIGTERM of the parent, and Ctrl-C (one line)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")


def children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").exists() else ""
        out |= {int(c) for c in text.split()}
    return out


def thread_names(pid: int) -> set[str]:
    names = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            names.add((task / "comm").read_text().strip())
        except OSError:
            pass
    return names


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] not in ("Z", "X")
    except OSError:
        return False


def start_bench(tmp_path: Path) -> tuple[subprocess.Popen, set[int]]:
    cmd = [sys.executable, str(ROOT / "recipes/bench.py"), "--env", "mock", "--controllers", "ppo",
           "--seeds", "5000", "--workers", "2", "--set", "plots=false", "--out", str(tmp_path)]  # fmt: skip
    # a shell without job control starts background jobs with SIGINT ignored, and Python keeps that:
    # give the bench the default disposition, as a terminal's Ctrl-C finds it
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        workers = {c for c in children(proc.pid) if alive(c)}
        # past their initializer: its watchdog thread runs (a worker still importing under load, as a
        # fixed second's wait assumed it was not, died only once it got there: after the test's wait)
        armed = {w for w in workers if "parent-watch" in thread_names(w)}
        if len(armed) >= 2:
            return proc, armed
        time.sleep(0.2)
    proc.kill()
    pytest.fail("bench.py started no workers")


def gone(pids: set[int], within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(alive(p) for p in pids):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_die_when_the_bench_is_killed(tmp_path, sig):
    proc, workers = start_bench(tmp_path)
    os.kill(proc.pid, sig)
    proc.wait(timeout=30)
    survivors = {p for p in workers if alive(p)}
    try:
        assert gone(workers), f"workers {survivors} outlived their parent"
    finally:
        for p in workers:
            if alive(p):
                os.kill(p, signal.SIGKILL)


@pytest.mark.slow
def test_ctrl_c_stops_the_bench_and_its_workers_with_one_line(tmp_path):
    proc, workers = start_bench(tmp_path)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert (
        err.strip().splitlines()[-1].startswith("interrupted: the bench stopped") and "Traceback" not in err
    )
    assert gone(workers)
    # no half-written run directory: none, or (a unit finished before the signal, as under load) one
    # that keeps its finished units and says how to go on
    kept = list(tmp_path.iterdir())
    if kept:
        (run_dir,) = kept
        units = [line for line in (run_dir / "units.jsonl").read_text().splitlines() if line.strip()]
        assert units and f"--resume {run_dir}" in err.strip().splitlines()[-1], err[-2000:]


def _warn_once() -> int:
    """A unit that warns (module level: a spawned worker imports it)."""
    import warnings

    warnings.warn("careful here", UserWarning, stacklevel=1)
    return 1


def test_a_workers_warning_prints_in_the_parents_one_line_form(capfd):
    """A warning raised in a worker came out in Python's two-line form (its second line the source of
    the warnings.warn call, which read like a crash) beside the parent's one-line warnings."""
    from recipes._progress import user_errors
    from recipes._workers import worker_pool

    with user_errors(), worker_pool(1) as pool:
        assert pool.submit(_warn_once).result() == 1
    err = capfd.readouterr().err
    assert "warning: careful here (UserWarning, test_workers.py:" in err and "warnings.warn(" not in err


def test_leaving_the_pool_by_an_exception_ends_its_manager_thread(monkeypatch):
    """A Ctrl-C of bench.py once ended in `OSError: [Errno 9] Bad file descriptor` after its one line:
    the pool's manager thread closed its wakeup pipe while the interpreter's exit hook wrote to it
    (CPython 3.11 takes no lock there). The pool now waits for that thread before the error goes on.
    The thread's last step is slowed down here, so a pool that does not wait is caught every time."""
    import concurrent.futures.process as cfp
    import threading

    from recipes._workers import worker_pool

    join_internals = cfp._ExecutorManagerThread.join_executor_internals

    def slowly(self):
        time.sleep(0.5)
        join_internals(self)

    monkeypatch.setattr(cfp._ExecutorManagerThread, "join_executor_internals", slowly)
    with pytest.raises(KeyboardInterrupt), worker_pool(1) as pool:
        assert pool.submit(_warn_once).result() == 1  # the worker is up
        pool.submit(time.sleep, 60)
        raise KeyboardInterrupt
    managers = [t for t in threading.enumerate() if isinstance(t, cfp._ExecutorManagerThread)]
    assert managers == [], managers
