"""Torch thread settings on an idle and on a loaded machine: which default never collapses.

    python recipes/bench_threads.py                       # 5 settings x 0, 1, 2 other busy processes
    python recipes/bench_threads.py --settings "threads=0 (auto),threads=2,threads=1" --repeats 2

Each setting (torch threads 0 = follow the free cores, the default; 1 or 2; libgomp's OpenMP wait
policy left alone or PASSIVE, or a short spin count) runs the main
command's workload, shortened to `--windows` windows (`recipes/run.py --controller fixed` on the
embedded default, warm start shipped or cached, evaluation at start and end), as a fresh process:
with the machine as it is and beside N CPU-bound processes this script starts (`--hogs`, a
`while True` loop: what a second job on a 2-core laptop looks like). Runs interleave so that drift in
the machine's load hits every setting alike; the table gives the wall time of each and the loaded /
idle ratio. A setting's "idle" is only as idle as the machine: say what else ran.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = (  # (label, run.py threads, extra environment of the run)
    ("threads=0 (auto)", 0, {}),
    ("threads=2", 2, {}),
    ("threads=2 passive", 2, {"OMP_WAIT_POLICY": "PASSIVE"}),
    ("threads=2 spin=10k", 2, {"GOMP_SPINCOUNT": "10000"}),
    ("threads=1", 1, {}),
)
OMP_VARS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "ATESD_THREADS")


def run_once(threads: int, extra: dict[str, str], windows: int, out: Path) -> float:
    """Wall seconds of one shortened main job in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k not in OMP_VARS}
    env |= {"PYTHONPATH": str(ROOT), **extra}
    cmd = [sys.executable, str(ROOT / "recipes/run.py"), "--controller", "fixed",
           f"real.env.total_steps={5 * windows}", f"threads={threads}", "plots=false", f"out_dir={out}",
           "checkpoint_every=1000"]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"run failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--windows", type=int, default=3, help="windows of the shortened main job (>= 1)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per setting and load (>= 1)")
    parser.add_argument("--hogs", default="0,1,2", help="comma list of CPU-bound processes beside each run")
    parser.add_argument("--settings", default="", help="comma list of setting labels (default: all)")
    args = parser.parse_args(argv)
    loads = [int(h) for h in args.hogs.split(",")]
    settings = [s for s in SETTINGS if not args.settings or s[0] in args.settings.split(",")]
    if args.windows < 1 or args.repeats < 1 or min(loads) < 0 or not settings:
        parser.error("--windows and --repeats must be >= 1, --hogs >= 0, --settings known labels")
    times: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="atesd-threads-") as scratch:
        run_once(1, {}, 1, Path(scratch))  # loads the warm start once: file caches warm for every setting
        for _ in range(args.repeats):
            for label, threads, extra in settings:
                for hogs in loads:
                    procs = [
                        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(hogs)
                    ]
                    try:
                        seconds = run_once(threads, extra, args.windows, Path(scratch))
                    finally:
                        for proc in procs:
                            proc.kill()
                            proc.wait()
                    times.setdefault((label, hogs), []).append(seconds)
                    print(f"{label:18s} {hogs} other CPU-bound processes {seconds:7.1f} s", flush=True)
    print(
        f"\n{os.cpu_count()} cores, {args.windows} windows, best of {args.repeats}; wall s (x its own alone)"
    )
    print(f"{'setting':18s}" + "".join(f"{f'{h} beside':>18s}" for h in loads))
    for label, *_ in settings:
        alone = min(times[(label, loads[0])])
        cells = [min(times[(label, h)]) for h in loads]
        print(f"{label:18s}" + "".join(f"{c:9.1f} ({c / alone:4.2f}x)" for c in cells))


if __name__ == "__main__":
    main()
