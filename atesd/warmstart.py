"""Warm start of the embedded model, cached by a hash of everything that shapes it: trained on a miss
(by atesd.sft; one process trains a key, another waits for it) and saved with `save_pretrained` under
<cache>/warmstart/<key>/ for the next call with the same key. The embedded default's is also shipped
(`atesd/weights/warmstart/<key>/`, its files' sha256 in `SHIPPED_MANIFEST`) and loads at once after its
hashes are checked; any other config trains its own (a line says why). `python recipes/ship_warmstart.py
--check` retrains the default and compares its sha256 with the shipped file. Knows nothing of distillation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from atesd.models import (
    TinyModelConfig,
    build_synthetic_tokenizer,
    build_tiny_qwen3,
    load_pretrained,
    save_pretrained,
)
from atesd.sft import WarmStartConfig, collate_sft, lr_at, sft_examples, train_sft
from atesd.state import model_bytes, read_json_object, writing
from atesd.tasks.synthetic import ChainBagConfig, ChainBagTask

# the SFT (now atesd.sft's) is imported from here too, as it always was; `_train_and_cache` calls
# train_sft by this module's name, so that a test replacing `warmstart.train_sft` replaces it
__all__ = [
    "CACHE_FORMAT", "SHIPPED_DIR", "SHIPPED_MANIFEST", "WarmStartConfig", "cache_key", "cache_problem",
    "cache_root", "collate_sft", "default_cache_dir", "locate", "lr_at", "sft_examples", "sha256_file",
    "shipped_manifest", "shipped_path", "train_sft", "warm_start",
]  # fmt: skip

log = logging.getLogger(__name__)
CACHE_FORMAT = 1  # bump when the warm-start code changes what it produces
SHIPPED_DIR = Path(__file__).resolve().parent / "weights" / "warmstart"
SHIPPED_MANIFEST = SHIPPED_DIR / "manifest.json"  # {key: {"files": {name: sha256}, "made_with": {...}}}


def _keyed(model_cfg: TinyModelConfig) -> TinyModelConfig:
    """`model_cfg` as the cache keys it: the positions it holds at the default's (Qwen3 learns no
    position embedding, so `max_position` changes no weight; keyed, raising it as the length check
    advises retrained the same weights for minutes). A loaded entry takes the run's (`_load`)."""
    return replace(model_cfg, max_position=TinyModelConfig().max_position)


def _load(path: Path, model_cfg: TinyModelConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The cached or shipped entry at `path`, holding `model_cfg.max_position` positions."""
    model, tokenizer = load_pretrained(path)
    model.config.max_position_embeddings = model_cfg.max_position
    return model, tokenizer


def cache_key(task_cfg: ChainBagConfig, model_cfg: TinyModelConfig, ws_cfg: WarmStartConfig) -> str:
    """A stable hash of (task, model, warm-start config, cache format); the model's `max_position`
    aside (`_keyed`)."""
    blob = json.dumps(
        {
            "task": asdict(task_cfg),
            "model": asdict(_keyed(model_cfg)),
            "warmstart": asdict(ws_cfg),
            "format": CACHE_FORMAT,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """$ATESD_CACHE, or ~/.cache/atesd where it is unset or empty (an empty one was the current
    directory: a run from the checkout's root wrote warmstart/ and matplotlib/ into it); absolute, `..`
    folded."""
    return Path(
        os.path.abspath(Path(os.environ.get("ATESD_CACHE") or Path.home() / ".cache" / "atesd").expanduser())
    )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def shipped_manifest() -> dict[str, dict]:
    """The shipped warm starts: key -> {"files": {name: sha256}, "made_with": ...} ({} if none);
    ValueError naming the file when it does not read (a damaged install)."""
    return read_json_object(SHIPPED_MANIFEST, "the shipped warm starts' manifest")


def shipped_path(key: str) -> tuple[Path | None, str]:
    """(the shipped checkpoint of `key`, "") when it is shipped and every file's sha256 matches the
    manifest, else (None, why not: a manifest that does not read too)."""
    try:
        manifest = shipped_manifest()
    except ValueError as err:  # a damaged install: every config trains its own, and the line says why
        return None, str(err)
    if key not in manifest:
        have = ", ".join(sorted(manifest)) or "none"
        return None, f"no shipped warm start has key {key} (shipped: {have}, the embedded default's config)"
    path = SHIPPED_DIR / key
    for name, want in manifest[key]["files"].items():
        if not (path / name).is_file():
            return None, f"the shipped warm start {key} lacks {name}"
        if sha256_file(path / name) != want:
            return None, f"the shipped warm start's {name} does not match its sha256 in {SHIPPED_MANIFEST}"
    return path, ""


def locate(
    task_cfg: ChainBagConfig,
    model_cfg: TinyModelConfig,
    cfg: WarmStartConfig,
    cache_dir: str | Path | None = None,
) -> tuple[Path | None, str]:
    """Where the warm start of this config already is: (the cache entry or the verified shipped
    checkpoint, ""), or (None, why it must be trained)."""
    key = cache_key(task_cfg, model_cfg, cfg)
    cached = cache_root(cache_dir) / "warmstart" / key
    if cached.exists():
        broken = cache_problem(cached)
        if broken is None:
            return cached, ""
        log.warning("warm start: the cache entry %s is not used: %s", cached, broken)
        shipped, why = shipped_path(key)
        return shipped, why and f"{why}; the cache entry {broken}"
    shipped, why = shipped_path(key)
    change = _first_change(task_cfg, model_cfg, cfg) if shipped is None else ""
    return shipped, f"{why}; this config has {change}" if change else why


def _first_change(task_cfg: ChainBagConfig, model_cfg: TinyModelConfig, cfg: WarmStartConfig) -> str:
    """The first field where the warm start's configs differ from the embedded default's (the config
    the shipped warm start was made from), as `real.<part>.<field>=value, the default's value`."""
    for part, have, default in (
        ("task", task_cfg, ChainBagConfig()),
        ("model", _keyed(model_cfg), TinyModelConfig()),
        ("warmstart", cfg, WarmStartConfig()),
    ):
        mine, theirs = asdict(have), asdict(default)
        for name, value in mine.items():
            if value != theirs.get(name):
                return f"real.{part}.{name}={value!r}, the embedded default's {theirs.get(name)!r}"
    return ""


def _discard(entry: Path) -> None:
    """Remove a broken cache entry: renamed aside first, so no reader sees it half removed."""
    aside = entry.with_name(f"{entry.name}.broken-{os.getpid()}")
    try:
        os.replace(entry, aside)
    except OSError:  # another process removed or replaced it first
        return
    shutil.rmtree(aside, ignore_errors=True)


def _has_sums(entry: Path) -> bool:
    try:
        return bool(json.loads((entry / "warmstart.json").read_text()).get("files"))
    except (OSError, ValueError, AttributeError):
        return False


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache directory: `cache_dir`, else $ATESD_CACHE, else ~/.cache/atesd (`~` expanded; a
    relative one taken from the current directory now, so the paths that runs print and record are
    the ones used)."""
    return (
        Path(os.path.abspath(Path(cache_dir).expanduser())) if cache_dir is not None else default_cache_dir()
    )


def cache_problem(entry: Path) -> str | None:
    """Why the cache entry `entry` is not a whole warm start, or None: its warmstart.json (written
    last) must read and every file it lists must match its sha256 (entries from before the list was
    kept are judged when they load)."""
    try:
        record = json.loads((entry / "warmstart.json").read_text())
    except FileNotFoundError:
        return "it has no warmstart.json (its write did not finish)"
    except (OSError, ValueError) as err:
        return f"its warmstart.json does not read ({type(err).__name__}: {err})"
    files = record.get("files", {}) if isinstance(record, dict) else None
    if not isinstance(files, dict):
        return "its warmstart.json is not one this package wrote"
    for name, want in files.items():
        if not (entry / name).is_file():
            return f"it lacks {name}"
        if sha256_file(entry / name) != want:
            return f"its {name} does not match the sha256 recorded when it was written"
    return None


def warm_start(
    task: ChainBagTask,
    model_cfg: TinyModelConfig,
    cfg: WarmStartConfig,
    cache_dir: str | Path | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    use_shipped: bool = True,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Path, bool]:
    """Return the warm-started (model, tokenizer, checkpoint dir, found), training on a miss: found
    is True when it came from the cache or (unless `use_shipped` is False) the shipped weights."""
    key = cache_key(task.cfg, model_cfg, cfg)
    path = cache_root(cache_dir) / "warmstart" / key
    broken = cache_problem(path) if path.exists() else None
    if broken is not None:  # entries are renamed into place whole: this one broke since
        log.warning("warm start: the cache entry %s is not used (%s); it is removed", path, broken)
        _discard(path)
    found, why = (
        locate(task.cfg, model_cfg, cfg, cache_dir) if use_shipped else (None, "the shipped one is not used")
    )
    if not use_shipped and path.exists():
        found = path
    if found == path:
        try:
            model, tokenizer = _load(path, model_cfg)
            log.info("warm start found: %s", path)
            return model, tokenizer, path, True
        except Exception as err:  # an entry from before checksums were kept, damaged since
            if _has_sums(path):  # its files are the ones written: the fault is not the entry's
                raise OSError(  # one line from the recipes, not three chained tracebacks
                    f"the warm start cached at {path} matches its checksums but does not load "
                    f"({type(err).__name__}: {err}); remove the directory to train it again"
                ) from err
            log.warning("warm start: the cache entry %s does not load (%s: %s); it is removed", path,
                        type(err).__name__, err)  # fmt: skip
            _discard(path)
            found, why = shipped_path(key) if use_shipped else (None, "the shipped one is not used")
    if found is not None:
        log.info("warm start found: %s", found)
        model, tokenizer = _load(found, model_cfg)
        return model, tokenizer, found, True
    _check_writable(path.parent)  # before minutes of training, not after
    with _training(path):  # one process trains a key; another that started it too waits, then loads
        if path.exists() and cache_problem(path) is None:
            log.info("warm start found: %s (trained by another process meanwhile)", path)
            model, tokenizer = _load(path, model_cfg)
            return model, tokenizer, path, True
        _clear_orphans(path)
        log.warning("warm start: training it (%s); it is cached under %s for later runs", why, path)
        _train_and_cache(task, model_cfg, cfg, path, progress)
    # hand back what a later run loads, not the objects that trained: a run right after training
    # must equal a run from the cache (the trained model, its code-built tokenizer and the global RNG
    # state training left behind are not what a cache hit sees)
    model, tokenizer = _load(path, model_cfg)
    return model, tokenizer, path, False


@contextlib.contextmanager
def _training(path: Path) -> Iterator[None]:
    """Hold `<key>.lock` beside the entry while it trains (an flock: released when the process dies);
    a second process waits, saying so, instead of training the same key again. The holder removes the
    file when it is done; a waiter that then gets the lock of the removed file takes the lock of the one
    there now (a third run may have made it and be training)."""
    try:
        import fcntl
    except ImportError:  # no flock on this system: two first runs may both train (one entry is kept)
        yield
        return
    lock = path.with_name(f"{path.name}.lock")
    said = False
    while True:
        fh = open(lock, "a")
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not said:
                    log.warning("warm start: another process is training %s; waiting for it", path.name)
                    said = True
                fcntl.flock(fh, fcntl.LOCK_EX)
            if _same_file(fh, lock):
                break
        except BaseException:
            fh.close()
            raise
        # the holder failed and removed the file after this one opened it: a third run may hold a new
        # file by that name, so the lock on the old one excludes nobody: take the one there now
        fh.close()
    with fh:
        try:
            yield
        finally:  # the cache keeps entries only; a waiter that locked this file sees it gone and retries
            with contextlib.suppress(OSError):
                lock.unlink()
            fcntl.flock(fh, fcntl.LOCK_UN)


def _same_file(fh, path: Path) -> bool:
    """Whether the open file `fh` is the file at `path` now (not one removed since)."""
    try:
        here, there = os.fstat(fh.fileno()), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _train_and_cache(
    task: ChainBagTask,
    model_cfg: TinyModelConfig,
    cfg: WarmStartConfig,
    path: Path,
    progress: Callable[[int, int, float], None] | None,
) -> None:
    """Train the warm start and rename it into the cache at `path` whole."""
    tokenizer = build_synthetic_tokenizer()
    model = build_tiny_qwen3(tokenizer, model_cfg)
    t0 = time.perf_counter()
    losses = train_sft(model, tokenizer, task, cfg, progress)
    bad = [name for name, p in model.named_parameters() if not bool(p.detach().isfinite().all())]
    if bad or not all(math.isfinite(x) for x in losses[-1:]):
        raise ValueError(
            f"the warm start diverged (final loss {losses[-1] if losses else 'none'}; {len(bad)} weight "
            f"tensors hold NaN or inf, e.g. {bad[0] if bad else '-'}): not cached; lower "
            f"real.warmstart.lr (now {cfg.lr})"
        )
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with writing(
        path, cleanup=tmp, need_bytes=model_bytes(model)
    ):  # a full disk: one line, no half-written entry
        save_pretrained(model, tokenizer, tmp)
        record = {
            "config": asdict(cfg),
            "final_loss": losses[-1],
            "train_s": time.perf_counter() - t0,
            "loss_curve": losses,
            "files": {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()},
        }
        (tmp / "warmstart.json").write_text(json.dumps(record, indent=1))
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, path)  # atomic: a reader sees no checkpoint or a whole one
    except OSError:  # another process finished the same key first (no flock on this system)
        shutil.rmtree(tmp, ignore_errors=True)


def _check_writable(directory: Path) -> None:
    """OSError naming the cache and the setting to change when `directory` cannot take an entry."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise OSError(
            f"the warm-start cache {directory} is not writable ({err.strerror or err}); the warm start "
            "would train and then fail to be kept: set real.cache_dir or ATESD_CACHE to a writable directory"
        ) from None


def _clear_orphans(path: Path) -> None:
    """Remove `<key>.tmp-<pid>` directories of this entry whose process is gone (killed while it
    wrote the entry: a model-sized copy each, never used)."""
    for tmp in path.parent.glob(f"{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True
