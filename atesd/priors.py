"""Shipped controller priors: a controller's state pre-trained for one env config, and its check.

In the embedded default's 100 student updates a learner makes 20 decisions and 4 policy updates,
too few to move a Beta(2, 2) start (docs/BENCHMARKS.md). A prior is a controller's state after
pre-training on a surrogate env fitted to a bank of logged real runs of one env config
(`recipes/surrogate.py --ship`): the run starts where that learning ended and goes on learning.

`controller_init=auto` (the default of `recipes.common.RunConfig`) loads the shipped prior of the
run's controller when the run's `real` config and the controller's config equal the ones it was
pre-trained for, up to the keys in `IGNORED` (seeds, evaluation, devices, backends: nothing that
changes the env's dynamics or the controller's learning), its local paths (`PATH_KEYS`) compared as
absolute paths; any other difference, and the controller starts from its own config, with a line
naming the first key that differs. The files are checked against their sha256 in the manifest before
they load, as the shipped warm start's are.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from atesd.state import read_json_object, write_atomic

PRIORS_DIR = Path(__file__).resolve().parent / "weights" / "priors"
# {controller name: {"env", "controller", "files", "made_with", "provenance"}}
MANIFEST = PRIORS_DIR / "manifest.json"
FILES = ("controller.json", "controller.safetensors")

# dotted keys (a trailing "." is a prefix) of the `real` config that change no training dynamics
IGNORED = (
    "engine.seed",
    "engine.eval.",
    "env.eval_every",
    "env.eval_k",
    "env.eval_at_reset",
    "engine.sampling.compile",
    "engine.sampling.backend",
    "engine.sampling.vllm.",
    "engine.overlap_probe",
    "engine.loss.chunk_size",  # the loss in chunks of positions: the same sums, in other shapes
    "engine.max_nonfinite_steps",
    "engine.fsdp",
    "device",
    "cache_dir",
)
IGNORED_CONTROLLER = ("seed",)
# dotted keys of the `real` config that name local paths: run.py stores them absolute
# (recipes.common.absolute_paths), a config recorded before (a bank's file, a prior) or given on a
# command line may hold them relative; compared absolute on both sides (`absolute_paths`)
PATH_KEYS = ("data.source", "data.data_dir", "hf.name_or_path", "cache_dir")


def absolute_path(path: str | os.PathLike) -> str:
    """`path` absolute: `~` expanded, against this directory, `.` and `..` folded; a symlink is kept as
    named, not resolved (a link pointed at an identical copy since names the same path)."""
    return os.path.normpath(Path(path).expanduser().absolute())


def local_path(key: str, value: Any) -> Any:
    """The value of the `real` config's dotted key `key` as run.py stores it: a local path of
    `PATH_KEYS` absolute (an input where it exists here, a named data source, a hub id or a missing
    path as given; `cache_dir`, written to, always), any other value as it is."""
    if key not in PATH_KEYS or not isinstance(value, str) or not value:
        return value
    if key == "cache_dir":
        return absolute_path(value)
    if key == "data.source":
        from atesd.tasks.sources import DATASETS

        if value in DATASETS:
            return value
    return absolute_path(value) if Path(value).expanduser().exists() else value


def absolute_paths(tree: dict[str, Any]) -> dict[str, Any]:
    """A copy of the `real` config tree `tree` with its local paths (`PATH_KEYS`) as run.py stores them
    (`local_path`), for `first_difference`: `models/qwen` given here is the absolute path a run's
    config.json, a bank's file or a prior holds, and an older relative record still matches it."""
    out = copy.deepcopy(tree)
    for key in PATH_KEYS:
        *parents, last = key.split(".")
        node: Any = out
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and last in node:
            node[last] = local_path(key, node[last])
    return out


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}, with tuples as lists (as JSON gives them back)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = json.loads(json.dumps(value))
    return out


def _kept(tree: dict[str, Any], ignored: tuple[str, ...]) -> dict[str, Any]:
    return {
        k: v
        for k, v in flat(tree).items()
        if not any(k.startswith(i) if i.endswith(".") else k == i for i in ignored)
    }


ABSENT = "<absent>"  # a key one config tree lacks (and no default fills in)


def first_difference(
    want: dict[str, Any],
    have: dict[str, Any],
    ignored: tuple[str, ...],
    defaults: dict[str, Any] | None = None,
) -> tuple[str, Any, Any] | None:
    """None when two config trees agree outside the dotted keys `ignored`, else the first differing
    (key, value in `have`, value in `want`) of `differences`."""
    return next(differences(want, have, ignored, defaults), None)


def differences(
    want: dict[str, Any],
    have: dict[str, Any],
    ignored: tuple[str, ...],
    defaults: dict[str, Any] | None = None,
) -> Iterator[tuple[str, Any, Any]]:
    """Every dotted key, in sorted order, where two config trees differ outside the keys `ignored`, as
    (key, value in `have`, value in `want`). A key one tree lacks takes its value in the config tree
    `defaults` (a field added after that tree was written, at its default, changes nothing: a prior
    or a bank made before `real.data.band_field` existed still fits a run that leaves it unset), else
    it is '<absent>'."""
    want, have = _kept(want, ignored), _kept(have, ignored)
    fill = flat(defaults) if defaults else {}
    for key in sorted(set(want) | set(have)):
        mine, its = have.get(key, fill.get(key, ABSENT)), want.get(key, fill.get(key, ABSENT))
        if mine != its:
            yield key, mine, its


def manifest() -> dict[str, dict[str, Any]]:
    """The shipped priors by controller name ({} if none); ValueError naming the file when it does not
    read (a damaged install)."""
    return read_json_object(MANIFEST, "the priors' manifest")


def _sha256(path: Path) -> str:
    from atesd.warmstart import sha256_file

    return sha256_file(path)


def entry_problem(entry: Any) -> str:
    """Why a manifest entry is not one `ship` wrote ('' when it is): a hand-edited or cut entry then
    starts the controller from its own config with a line, not a KeyError."""
    if not isinstance(entry, dict):
        return f"its entry in {MANIFEST} is not a JSON object"
    for key in ("env", "controller", "files"):
        if not isinstance(entry.get(key), dict):
            return (
                f"its entry in {MANIFEST} has no '{key}' mapping (not one recipes/surrogate.py --ship wrote)"
            )
    return ""


def difference(
    name: str,
    entry: dict[str, Any],
    env_cfg: dict[str, Any],
    controller_cfg: dict[str, Any],
    env_defaults: dict[str, Any] | None = None,
    controller_defaults: dict[str, Any] | None = None,
) -> tuple[str, Any, Any] | None:
    """None when the manifest entry `entry` of `name` was pre-trained for these env and controller
    configs, else the first differing (dotted key, its value in these configs, its value in the entry's),
    the key under `real.` or `controllers.<name>.`; the env's local paths compared absolute."""
    for where, want, have, ignored, defaults in (
        ("real.", absolute_paths(entry["env"]), absolute_paths(env_cfg), IGNORED, env_defaults),
        (
            f"controllers.{name}.",
            entry["controller"],
            controller_cfg,
            IGNORED_CONTROLLER,
            controller_defaults,
        ),
    ):
        diff = first_difference(want, have, ignored, defaults)
        if diff is not None:
            return f"{where}{diff[0]}", diff[1], diff[2]
    return None


def find(
    name: str,
    env_cfg: dict[str, Any],
    controller_cfg: dict[str, Any],
    env_defaults: dict[str, Any] | None = None,
    controller_defaults: dict[str, Any] | None = None,
) -> tuple[Path | None, str]:
    """(the base path of `name`'s shipped prior, '') when one is shipped for this env and controller
    config and its files match their sha256; (None, why) otherwise, why '' when none is shipped. A key
    the prior's record predates compares at its value in the defaults given (`first_difference`)."""
    try:
        entry = manifest().get(name)
    except ValueError as err:  # every controller starts from its own config, and the line says why
        return None, str(err)
    if entry is None:
        return None, ""
    bad = entry_problem(entry)
    if bad:
        return None, bad
    diff = difference(name, entry, env_cfg, controller_cfg, env_defaults, controller_defaults)
    if diff is not None:
        key, mine, its = diff
        return None, f"this run has {key}={mine}, the prior was pre-trained at {its}"
    base = PRIORS_DIR / name
    if set(entry["files"]) != set(FILES):  # every file the prior loads is checked, or it is not used
        return (
            None,
            f"its manifest entry lists {sorted(entry['files'])}, not the prior's files {sorted(FILES)}",
        )
    for file, want in entry["files"].items():
        if not (base / file).is_file():
            return None, f"its file {base / file} is missing"
        if _sha256(base / file) != want:
            return None, f"{base / file} does not match its sha256 in {MANIFEST}"
    return base / "controller", ""


def replacing(
    name: str,
    env_cfg: dict[str, Any],
    controller_cfg: dict[str, Any],
    force: bool = False,
    env_defaults: dict[str, Any] | None = None,
    controller_defaults: dict[str, Any] | None = None,
    episodes: int | None = None,
) -> str:
    """What shipping a prior of `name` for these configs would replace: '' when none is shipped, else
    a line naming the shipped one's config and how it was made. The manifest holds one prior per
    controller, so one pre-trained for another config is replaced only with `force` (ValueError naming
    the first key that differs otherwise): controller_init=auto would find no prior for its runs. So
    is one of the same config pre-trained for more episodes than this one's `episodes` (a trial run
    with --ship replaced the default's 10,000-episode prior without a word)."""
    entry = manifest().get(name)
    if entry is None:
        return ""
    bad = entry_problem(entry)
    if bad:  # find uses no such entry: nothing that loads is lost
        return f"replaced {name}'s unusable prior ({bad})"
    made = _made(entry)
    diff = difference(name, entry, env_cfg, controller_cfg, env_defaults, controller_defaults)
    if diff is None:
        theirs = (entry.get("provenance") or {}).get("episodes")
        if not force and episodes is not None and isinstance(theirs, int) and theirs > episodes:
            raise ValueError(
                f"{name}'s shipped prior for this config was pre-trained for {theirs} episodes, this one for "
                f"{episodes} ({made}): pass --force to replace it with the shorter one"
            )
        return f"replaced {name}'s prior for the same config ({made})"
    key, mine, its = diff
    if not force:
        raise ValueError(
            f"{name}'s shipped prior was pre-trained at {key}={its}, this one at {mine} ({made}): shipping "
            f"this one replaces it, and runs at {key}={its} would start from their own config; pass --force "
            "to replace it"
        )
    return f"replaced {name}'s prior pre-trained at {key}={its} (this one: {mine}; {made})"


def _made(entry: dict[str, Any]) -> str:
    """How a manifest entry's prior was made, from its provenance: the command to make it again."""
    made = entry.get("provenance")
    made = made if isinstance(made, dict) else {}
    command = made.get("command")
    how = (
        f"made by python {shlex.join(map(str, command))}"
        if isinstance(command, list)
        else "made by a command not recorded"
    )
    when = "".join(
        f" {word} {made[key]}" for word, key in (("at commit", "commit"), ("on", "date")) if made.get(key)
    )
    return how + when


def ship(
    name: str,
    state: Path,
    env_cfg: dict[str, Any],
    controller_cfg: dict[str, Any],
    provenance: dict[str, Any],
    force: bool = False,
    env_defaults: dict[str, Any] | None = None,
    controller_defaults: dict[str, Any] | None = None,
) -> tuple[Path, str]:
    """Copy the saved state `state` (`<state>.json` + `<state>.safetensors`) in as `name`'s prior for
    these configs, and record it in the manifest with each file's sha256. Returns (its base path, the
    line `replacing` gives on the prior it replaced); a prior of another config is kept unless `force`."""
    base = PRIORS_DIR / name
    entries = manifest()  # refused before anything is replaced when it does not read
    episodes = provenance.get("episodes")
    replaced = replacing(
        name, env_cfg, controller_cfg, force, env_defaults, controller_defaults,
        episodes if isinstance(episodes, int) else None,
    )  # fmt: skip
    base.mkdir(parents=True, exist_ok=True)
    for file in FILES:  # each file whole or not at all (a crash between them: the sha256 check catches it)
        tmp = base / f".tmp-{file}"
        shutil.copyfile(f"{state}{Path(file).suffix}", tmp)  # as atesd.state.state_files names them
        os.replace(tmp, base / file)
    entries[name] = {
        "env": env_cfg,
        "controller": controller_cfg,
        "files": {file: _sha256(base / file) for file in FILES},
        "made_with": {"torch": torch.__version__, "python": platform.python_version()},
        "provenance": provenance,
    }
    write_atomic(MANIFEST, json.dumps(entries, indent=1, sort_keys=True) + "\n")
    return base / "controller", replaced


def describe(name: str) -> str:
    """One line on how `name`'s shipped prior was made."""
    made = manifest()[name].get("provenance") or {}
    bank, episodes = made.get("bank", {}), made.get("episodes", "?")
    goal = {"score": "the predicted final score", "bank": "the bank's window reward"}.get(
        made.get("reward"), "?"
    )
    return (
        f"atesd/weights/priors/{name}: {episodes} episodes on a surrogate of {bank.get('runs', '?')} "
        f"logged runs, maximising {goal}"
    )
