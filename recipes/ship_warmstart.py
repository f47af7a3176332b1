"""The shipped warm start of the embedded default: regenerate it and check, or (re)write it.

    python recipes/ship_warmstart.py --check               # retrain (minutes), compare with the shipped hash
    python recipes/ship_warmstart.py --write               # retrain and ship (after a deliberate change)
    python recipes/ship_warmstart.py --write --from-cache  # ship the cached warm start of the default config

The package carries the embedded default's warm start under `atesd/weights/warmstart/<key>/` so that
the main job, sweep.py, bench.py and eval.py start distilling at once; `atesd.warmstart` loads it for a
config with that key (after checking every file's sha256 against the manifest) and trains its own for
any other. The code that made it stays the source: `--check` trains the default warm start again from
scratch and compares the weights' sha256 (model.safetensors) with the shipped one; exit code 1 when
they differ. Training is deterministic on CPU for a given torch build and thread count (recorded in the
manifest under `made_with`); `--threads` must match it for a bitwise comparison.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from atesd.models import TinyModelConfig  # noqa: E402
from atesd.state import write_atomic  # noqa: E402
from atesd.tasks.synthetic import ChainBagTask  # noqa: E402
from atesd.warmstart import (  # noqa: E402
    SHIPPED_DIR,
    SHIPPED_MANIFEST,
    WarmStartConfig,
    cache_key,
    cache_problem,
    default_cache_dir,
    sha256_file,
    shipped_manifest,
    warm_start,
)
from recipes._progress import warmstart_progress  # noqa: E402

WEIGHTS = "model.safetensors"  # what --check compares: the other files carry library versions


def train_default(out: Path, threads: int) -> float:
    """Train the default warm start from scratch into `out` (a scratch cache); returns seconds."""
    torch.set_num_threads(threads)
    task = ChainBagTask()
    t0 = time.perf_counter()
    model, tokenizer, path, found = warm_start(
        task,
        TinyModelConfig(),
        WarmStartConfig(),
        out,
        use_shipped=False,
        progress=warmstart_progress(
            "warm start: training it from scratch in a temporary directory (minutes)"
        ),
    )
    assert not found, "a scratch cache cannot hold the warm start already"
    return time.perf_counter() - t0


def write(source: Path, key: str, threads: int, from_cache: bool) -> None:
    """Copy the checkpoint `source` into the package and record its files' sha256."""
    target = SHIPPED_DIR / key
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for item in sorted(source.iterdir()):
        if item.is_file():
            shutil.copy2(item, target / item.name)
    manifest = {}  # one shipped warm start, the default's: an older default's is dead weight
    for stale in SHIPPED_DIR.iterdir():
        if stale.is_dir() and stale.name != key:
            shutil.rmtree(stale)
    manifest[key] = {
        "files": {f.name: sha256_file(f) for f in sorted(target.iterdir()) if f.is_file()},
        "made_with": {
            "torch": torch.__version__,
            "threads": threads,
            "machine": platform.machine(),
            "command": "python recipes/ship_warmstart.py --write" + (" --from-cache" if from_cache else ""),
        },
    }
    write_atomic(SHIPPED_MANIFEST, json.dumps(manifest, indent=1) + "\n")  # every run reads it
    size = sum(f.stat().st_size for f in target.iterdir()) / 2**20
    print(f"shipped {target} ({size:.1f} MiB); manifest {SHIPPED_MANIFEST}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="retrain and compare with the shipped weights")
    mode.add_argument("--write", action="store_true", help="ship the default's warm start")
    parser.add_argument("--from-cache", action="store_true", help="with --write: ship the cached one")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads the warm start trains (or trained) on (>= 1)"
    )
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.from_cache and not args.write:
        parser.error("--from-cache needs --write (--check always trains the warm start again)")
    key = cache_key(ChainBagTask().cfg, TinyModelConfig(), WarmStartConfig())
    if args.write and args.from_cache:
        source = default_cache_dir() / "warmstart" / key
        if not (source / "warmstart.json").exists():
            parser.error(f"no cached warm start at {source}: run without --from-cache to train it")
        broken = cache_problem(source)
        if broken is not None:  # shipping it would record the damaged bytes' sha256 as the good ones
            parser.error(
                f"the cached warm start at {source} is damaged ({broken}): train it without --from-cache"
            )
        sums = json.loads((source / "warmstart.json").read_text()).get("files") or {}  # it reads: checked
        unchecked = sorted(
            p.name for p in source.iterdir() if p.is_file() and p.name not in {*sums, "warmstart.json"}
        )
        if unchecked:  # an entry from before the sums were kept: damaged weights would be shipped as good
            parser.error(
                f"the cached warm start at {source} records no sha256 of {', '.join(unchecked)} (written "
                "before they were kept), so it cannot be checked: train it without --from-cache"
            )
        write(source, key, args.threads, True)
        return 0
    entry = None
    if not args.write:  # read before minutes of training: a damaged manifest failed after them
        try:
            entry = shipped_manifest().get(key)
        except ValueError as err:
            parser.error(str(err))
        if entry is None:
            print(f"no shipped warm start with key {key}: nothing to compare (ship one with --write)")
            return 1
    with tempfile.TemporaryDirectory(prefix="atesd-warmstart-") as scratch:
        seconds = train_default(Path(scratch), args.threads)
        fresh = Path(scratch) / "warmstart" / key
        print(f"trained the default warm start in {seconds:.0f} s on {args.threads} threads")
        if args.write:
            write(fresh, key, args.threads, False)
            return 0
        want, got = entry["files"][WEIGHTS], sha256_file(fresh / WEIGHTS)
        print(f"sha256 shipped    {want}\nsha256 regenerated {got}")
        if want != got:
            made = entry.get("made_with", {})
            print(f"DIFFERENT (shipped with {made}; this: torch {torch.__version__}, {args.threads} threads)")
            return 1
        print("identical: the shipped weights are what the code makes")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
