"""eval.py's config side: `EvalConfig` with its sampling section, the config.json it writes, the config
read from the command line, a config file or an eval directory's config.json (refusing the `real.*`
keys an evaluation does not read), the task the config names (`load_task`) and the config `--resume
DIR` continues. It knows no model and samples nothing: eval.py loads the model, samples, grades and
summarises.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atesd import config as cfglib
from atesd.builder import RealConfig, build_task
from atesd.engine import SamplingConfig
from atesd.grading import GradeConfig, require_math_verify
from atesd.models import HFModelConfig
from atesd.rollout import BACKENDS, SamplingParams
from atesd.tasks.base import Task
from recipes._evalstate import STATE, SUMMARY
from recipes.common import refuse_run_config

PAPER_SAMPLES, PAPER_MAX_NEW_TOKENS = 12, 38_912  # docs/METHOD.md §4
TASKS_HELP = (
    "synthetic, a benchmark (aime24, aime25, hmmt25), gsm8k (its train split), gsm8k_test, opsd, "
    "an HF dataset id (owner/name) or a .jsonl path"
)
SYNTHETIC_SAMPLES, SYNTHETIC_MAX_NEW_TOKENS = 4, 96  # 96: the training sampler's default
ROOT = Path(__file__).resolve().parents[1]  # the repository; load_task looks in ../shared/data beside it


@dataclass(frozen=True)
class EvalSamplingConfig(SamplingConfig):
    """How completions are sampled: the training sampler's fields (`real.engine.sampling` has the same
    keys) with the paper's evaluation defaults (docs/METHOD.md §4), plus n, thinking and batching."""

    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (> 0)"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus filter in (0, 1], 1 = off"})
    max_new_tokens: int = field(
        default=0,
        metadata={
            "help": f"longest completion; 0 = {PAPER_MAX_NEW_TOKENS:,} (paper), "
            f"{SYNTHETIC_MAX_NEW_TOKENS} on synthetic"
        },
    )
    samples: int = field(
        default=0,
        metadata={
            "help": f"samples n per problem; 0 = {PAPER_SAMPLES} (paper), {SYNTHETIC_SAMPLES} on synthetic"
        },
    )
    thinking: bool = field(
        default=True, metadata={"help": "enable_thinking in the student prompt (paper: on)"}
    )
    batch_size: int = field(
        default=64,
        metadata={
            "help": "rollouts per sampler call (>= 1); the HF sampler preallocates the KV cache for "
            "max_new_tokens, so lower it for long real-model rollouts"
        },
    )

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"sampling.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.temperature <= 0:
            raise ValueError(
                f"temperature must be > 0 (greedy is the separate `greedy` flag), got {self.temperature}"
            )
        if self.samples < 0 or self.max_new_tokens < 0 or self.batch_size < 1:
            raise ValueError("samples and max_new_tokens must be >= 0 (0 = default) and batch_size >= 1")
        self.at(1)  # top-k / top-p range checks

    def resolved(self, synthetic: bool) -> tuple[int, int]:
        """(samples n, max_new_tokens) with the 0 defaults filled in for the task kind."""
        n = self.samples or (SYNTHETIC_SAMPLES if synthetic else PAPER_SAMPLES)
        return n, self.max_new_tokens or (SYNTHETIC_MAX_NEW_TOKENS if synthetic else PAPER_MAX_NEW_TOKENS)

    def at(self, max_new_tokens: int, greedy: bool = False) -> SamplingParams:
        """The sampler's parameters with the resolved token limit."""
        t = 0.0 if greedy else self.temperature
        return SamplingParams(
            temperature=t, top_k=self.top_k, top_p=self.top_p, max_new_tokens=max_new_tokens
        )


def _eval_real() -> RealConfig:
    # evaluation defaults: the device that is there, a checkpoint's weights in float32
    return RealConfig(device="auto", hf=HFModelConfig(dtype="float32"))


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation of one model on one task."""

    task: str = field(default="synthetic", metadata={"help": TASKS_HELP})
    data_dir: str = field(
        default="",
        metadata={
            "help": "benchmark files ('' = real.data.data_dir, else ../shared/data where it holds the file)"
        },
    )
    seed: int = field(default=0, metadata={"help": "seed of the sampling generator (>= 0)"})
    pass_k: tuple[int, ...] = field(
        default=(1, 2, 4, 8, 12), metadata={"help": "pass@k budgets (k <= n kept)"}
    )
    greedy: bool = field(default=False, metadata={"help": "also decode each problem greedily once"})
    max_problems: int = field(default=0, metadata={"help": "first N problems of each eval set (0 = all)"})
    threads: int = field(
        default=1, metadata={"help": "torch CPU threads (>= 1); the tiny model is fastest on one"}
    )
    out_dir: str = field(default="runs", metadata={"help": "where the eval directory is created"})
    sampling: EvalSamplingConfig = field(default_factory=EvalSamplingConfig)
    # math tasks: a completion's answer is its last box (no bare one-line answers, as in training)
    grading: GradeConfig = field(default_factory=lambda: GradeConfig(bare_answer_chars=0))
    # the model: real.hf.name_or_path (--model), else the embedded model of real.model / real.task /
    # real.warmstart, the same keys as in run.py, sweep.py and bench.py; real.engine.* (training) is
    # refused (`refuse_engine_keys`): completions are sampled with `sampling`
    real: RealConfig = field(default_factory=_eval_real)

    def __post_init__(self) -> None:
        for name, ok, rule in (
            ("seed", self.seed >= 0, ">= 0"),
            ("max_problems", self.max_problems >= 0, ">= 0"),
            ("threads", self.threads >= 1, ">= 1"),
            ("pass_k", bool(self.pass_k) and min(self.pass_k) >= 1, "non-empty, every k >= 1"),
            ("task", bool(self.task), "non-empty"),
        ):
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)!r}")

    @property
    def synthetic(self) -> bool:
        return self.task == "synthetic"


# ---- the task it names --------------------------------------------------------------------------
def load_task(cfg: EvalConfig) -> Task:
    """The embedded synthetic task (`real.task`), or a math benchmark / JSONL (`atesd.tasks.math`)
    read with the `real.data.*` settings (format, field names, instruction, ...), every row evaluated.
    A named benchmark comes from `data_dir` (or `real.data.data_dir`) when given, else from
    ../shared/data where that holds its file, else from the Hugging Face hub. `real.data.split` and
    `hf_name`, and what picks and names its rows (`band`, `band_field`, `band_buckets`, `max_rows`:
    `SOURCE_KEYS`), are the task's only where `real.data.source` is the task (`given_config` makes it
    so where they are given without a source); with another source they are its and left out."""
    if cfg.synthetic:
        return build_task(dataclasses.replace(cfg.real, task_kind="synthetic"))
    from atesd.tasks.math import MathTask
    from atesd.tasks.sources import DATASETS, local_file

    data = cfg.real.data
    # another source's split, HF config name, bands and row limit (a training config's): not the task's
    if cfg.task != data.source:
        data = dataclasses.replace(data, **SOURCE_KEYS)
    known, default = DATASETS.get(cfg.task), ROOT.parent / "shared" / "data"
    if cfg.data_dir and not known:  # the folder of named benchmarks; a path task is read from its path
        raise cfglib.ConfigError(
            f"data_dir ({cfg.data_dir}) is the folder of the named benchmarks "
            f"({', '.join(sorted(DATASETS))}); task {cfg.task!r} is not one of them: give its path as the "
            "task, without data_dir"
        )
    data_dir = (cfg.data_dir or data.data_dir) if known else None  # a training config's is its source's
    if not data_dir and known:
        try:
            if (default / local_file(cfg.task, known, data.split)).is_file():
                data_dir = str(default)
        except ValueError:  # a split no local file holds: from the hub
            pass
    data = dataclasses.replace(data, source=cfg.task, data_dir=data_dir or None, eval_size=-1)
    if cfg.grading.math_verify == "require":  # before sampling, not at the first grade
        require_math_verify()
    return MathTask.from_config(data, cfg.grading)


# ---- resuming -----------------------------------------------------------------------------------
def config_record(cfg: EvalConfig) -> dict[str, Any]:
    """config.json's content: the config with the resolved sampling, as JSON reads it back, without
    `real.engine` (nothing here reads it; `--config` refuses it)."""
    n, max_new_tokens = cfg.sampling.resolved(cfg.synthetic)
    record = own_config(cfglib.to_dict(cfg)) | {"resolved": {"samples": n, "max_new_tokens": max_new_tokens}}
    return json.loads(json.dumps(record))


def absolute_inputs(cfg: EvalConfig) -> EvalConfig:
    """`cfg` with a task and a model given as local paths made absolute (the data source too where it
    is the task): config.json named them as typed, so a resume from another directory found no such
    file, or read another one there (a relative model path read as a hub id)."""
    from atesd.priors import absolute_path, local_path
    from atesd.tasks.sources import DATASETS

    task = cfg.task
    if not cfg.synthetic and task not in DATASETS and Path(task).expanduser().exists():
        task = absolute_path(task)
    data = cfg.real.data
    if data.source == cfg.task:
        data = dataclasses.replace(data, source=task)
    hf = dataclasses.replace(
        cfg.real.hf, name_or_path=local_path("hf.name_or_path", cfg.real.hf.name_or_path)
    )
    return dataclasses.replace(cfg, task=task, real=dataclasses.replace(cfg.real, data=data, hf=hf))


def eval_inputs(cfg: EvalConfig) -> list[tuple[str, Path]]:
    """The local files an evaluation reads, for inputs.json: its task's data file or folder and its
    model's folder (a resume that went on with other weights or other rows mixed two evaluations)."""
    files = [("task", Path(cfg.task)), ("real.hf.name_or_path", Path(cfg.real.hf.name_or_path))]
    return [
        (key, path)
        for key, path in files
        if str(path) not in ("", ".") and path.is_absolute() and path.exists()
    ]


ENGINE = ("real", "engine")  # the training engine's section: nothing in an evaluation reads it


def own_config(record: dict[str, Any]) -> dict[str, Any]:
    """An eval.py config.json read as a config: without its `resolved` sampling (derived), the
    `real.engine` section older versions wrote and the `UNREAD` keys (read by nothing here)."""
    out = {k: v for k, v in record.items() if k != "resolved"}
    for path in (".".join(ENGINE), *UNREAD):
        *parents, last = path.split(".")
        node: Any = out
        for part in parents:  # copied on the way down: `record` stays as it is
            if not isinstance(node.get(part), dict):
                break
            node[part] = dict(node[part])
            node = node[part]
        else:
            node.pop(last, None)
    return out


UNREAD = {  # keys of the training config that an evaluation sets itself
    "real.task_kind": "the task kind follows `task`",
    "real.data.eval_size": (
        "every row of a math task is evaluated; max_problems=N takes the first N of each set"
    ),
    "real.data.probe_size": "an evaluation probes nothing",
    "real.data.seed": "every row is evaluated, in file order; `seed` seeds the sampling",
}


def refuse_engine_keys(given: dict[str, Any]) -> None:
    """ConfigError in one line for a `real.engine.*` key among `given` (a config file's and the
    command line's keys): eval.py trains nothing and samples with `sampling.*`, so such a key was
    accepted and changed nothing (`real.engine.sampling.max_new_tokens=8` still sampled 96 tokens)."""
    real = given.get(ENGINE[0])
    for path, why in UNREAD.items():
        node: Any = given
        for part in path.split("."):
            node = node.get(part, UNREAD) if isinstance(node, dict) else UNREAD
        if node is not UNREAD:
            raise cfglib.ConfigError(f"{path}: eval.py does not read it ({why})")
    if not isinstance(real, dict) or ENGINE[1] not in real:
        return
    key, value = ".".join(ENGINE), real[ENGINE[1]]
    while isinstance(value, dict) and value:
        inner = next(iter(value))
        key, value = f"{key}.{inner}", value[inner]
    sampling = key.removeprefix("real.engine.sampling.")
    hint = f"sampling.{sampling}" if sampling != key else "its sampling.* keys (--help lists them)"
    raise cfglib.ConfigError(
        f"{key}: eval.py does not read real.engine.* (the training engine's settings); it samples with {hint}"
    )


def given_config(args: argparse.Namespace) -> dict[str, Any]:
    """The keys given on the command line, --config's below the overrides (an eval directory's
    config.json read as `own_config`); real.engine.* refused. real.data.split, hf_name and the other
    `SOURCE_KEYS` given without real.data.source are the task's: the source is then the task
    (`task_data`)."""
    config = cfglib.read_yaml(args.config) if args.config else {}
    if "resolved" in config:  # eval.py's own config.json
        config = own_config(config)
    else:
        refuse_run_config(args.config, EvalConfig, "eval.py")
    overrides = cfglib.parse_overrides(given_overrides(args))
    given = cfglib.merge(config, overrides)
    refuse_engine_keys(given)
    real = overrides.get("real")
    data = real.get("data") if isinstance(real, dict) else None
    if isinstance(data, dict) and data and given.get("task", "synthetic") == "synthetic":
        key = next(iter(data))  # read by no task: the synthetic one has its own (real.task.*)
        raise cfglib.ConfigError(
            f"real.data.{key} sets how a math task's rows are read, but the task is the synthetic one "
            "(the default): give --task (a benchmark name or a data file), or set real.task.* for the "
            "synthetic task"
        )
    return task_data(given)


# real.data.* keys that belong to one source (their values when they are not the task's)
SOURCE_KEYS = {
    "split": None,
    "hf_name": None,
    "band": None,
    "band_field": None,
    "band_buckets": 0,
    "max_rows": 0,
}


def task_data(given: dict[str, Any]) -> dict[str, Any]:
    """`given` with real.data.source the task where one of `SOURCE_KEYS` (real.data.split, hf_name,
    band, band_field, band_buckets, max_rows) is given without a source, so that load_task keeps them
    (`--task gsm8k real.data.split=test` reads the test split, `real.data.band_field=level` bands the
    task by its level); given with another source (a training config's), they are that source's and
    left out."""
    real, task = given.get("real"), given.get("task")
    data = real.get("data") if isinstance(real, dict) else None
    if not isinstance(data, dict) or "source" in data or not SOURCE_KEYS.keys() & data.keys():
        return given
    if not isinstance(task, str) or task == "synthetic":
        return given
    return cfglib.merge(given, {"real": {"data": {"source": task}}})


RESUME_MAY_CHANGE = ("out_dir", "real.device")  # no result changes with them (restore checks the device)


def resume_config(args: argparse.Namespace) -> tuple[EvalConfig, Path, bool]:
    """The config and directory `--resume DIR` continues, and whether DIR is finished. ConfigError in
    one line where it cannot continue: not an eval directory, no chunk done yet, or a config given on
    the command line that differs from DIR's in a key that changes results (`real.device` may differ:
    the saved generator state is restored on the same device type alone, and that is checked)."""
    run_dir = Path(args.resume)
    if not (run_dir / "config.json").is_file():
        raise cfglib.ConfigError(f"--resume {run_dir}: not an eval.py directory (no config.json)")
    try:
        stored = own_config(json.loads((run_dir / "config.json").read_text(encoding="utf-8")))
        cfg = cfglib.from_dict(EvalConfig, stored)
    except (OSError, ValueError, AttributeError) as err:
        message = " ".join(str(err).split())
        raise cfglib.ConfigError(f"--resume {run_dir}: not an eval.py directory ({message})") from None
    if (run_dir / SUMMARY).exists():
        return cfg, run_dir, True
    if not (run_dir / STATE).exists():
        raise cfglib.ConfigError(f"--resume {run_dir}: nothing to resume (no {STATE}: no problem was done)")
    given_keys = given_config(args)
    if given_keys:  # what is given goes on top of DIR's own config
        given = cfglib.from_dict(EvalConfig, cfglib.merge(stored, given_keys))
        mine = own_config(config_record(cfg))  # DIR's config with the fields it predates at their defaults
        differ = cfglib.differences(mine, own_config(config_record(given)), ignore=RESUME_MAY_CHANGE)
        if differ:
            raise cfglib.ConfigError(
                f"--resume {run_dir}: the given config differs from the evaluation's in {', '.join(differ)}; "
                "continue it with --resume DIR alone, or start a new evaluation"
            )
        cfg = dataclasses.replace(cfg, real=dataclasses.replace(cfg.real, device=given.real.device))
    return cfg, run_dir, False


# ---- command line -------------------------------------------------------------------------------
def resolve_config(args: argparse.Namespace) -> EvalConfig:
    return cfglib.from_dict(EvalConfig, given_config(args))


def given_overrides(args: argparse.Namespace) -> list[str]:
    """The config overrides of eval.py's command line: key=value words, --set, and the field flags."""
    pass_k = [] if args.pass_k is None else [f"pass_k=[{args.pass_k}]"]
    flags = {"real.hf.name_or_path": args.model, "task": args.task, "data_dir": args.data_dir,
             "seed": args.seed, "greedy": args.greedy}  # fmt: skip
    names = {"real.hf.name_or_path": "--model", "data_dir": "--data-dir"}
    return cfglib.command_overrides([*args.overrides, *args.set, *pass_k], flags, names)
