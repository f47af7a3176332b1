"""A bank of logged exposure runs: a wrapper that records every window of an env, and its reader.

A bank is a directory of JSONL files, one per env instance (`<env>__<controller>__<seed>__<id>.jsonl`),
each line one record, flushed as it is written (a crash loses at most the window in flight):
- `{"kind": "meta", ...}` first: the recorder's `tag`, the env's class, `observation_names`, `bands`,
  action size, its `reward_spec` (H, gamma, T, lambda_gt, signed) as a dict, and the env's config
  when the recorder was given it (`config`: run.py and bench.py give the resolved `real.*` or
  `mock.*` tree);
- `{"kind": "reset", "episode": e, "obs": [...], "score": s, "eval": {...}}` at each reset;
- `{"kind": "window", "episode": e, "window": w, "obs": [...], "action": [...], "reward": r,
  "progress": ..., "grounded": ..., "next_obs": [...], "terminated": bool, "score": s or null,
  "eval": {...} or null, "band_accuracy": [...] or null}` per env step (`score`/`eval` only where an
  evaluation ran; on the mock, which scores every window, always).

`recipes/surrogate.py` fits `envs.surrogate_env.SurrogateExposureEnv` to a bank; `bank_dir=DIR` (a
RunConfig key) makes run.py and bench.py record theirs. run.py's checkpoints hold the recorder's place
(`BankRecorder.state_dict`), so a resumed run cuts its file back and records on in it: the bank of a
cut and resumed run equals an uncut one's.
"""

from __future__ import annotations

import json
import math
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import gymnasium as gym
import numpy as np

from atesd.priors import IGNORED, absolute_paths, first_difference


def _floats(values: Any) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def _finite_or_none(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class BankRecorder(gym.Wrapper):
    """Records every reset and window of `env` into a new JSONL file under `directory`. A window's
    score is kept where an evaluation ran (`info["eval"]`) or where the env declares
    `scores_every_window = True` (its `info["score"]` measured at every step: the simulated envs here,
    an outside env that says so); else it is recorded as null."""

    def __init__(
        self, env: gym.Env, directory: str | Path, tag: str = "", config: dict[str, Any] | None = None
    ) -> None:
        super().__init__(env)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        name = "__".join(part for part in (tag, uuid.uuid4().hex[:8]) if part).replace("/", "-")
        self.path = self.directory / f"{name}.jsonl"
        # opened at the first record: a run refused before it (a controller_init that does not fit) left
        # a file of its meta line alone, of its config, which then blocked the bank's fit as a mismatch
        self._file: IO[str] | None = None
        self.episode, self.window, self._obs = -1, 0, None
        base = env.unwrapped
        reward = getattr(base, "reward_spec", None)
        self._meta = {
            "kind": "meta",
            "tag": tag,  # read_bank orders runs by it (the file name adds a random id)
            "env": type(base).__name__,
            "observation_names": list(getattr(base, "observation_names", ()) or ()),
            "bands": list(getattr(base, "bands", ()) or ()),
            "action_size": int(np.prod(env.action_space.shape)),
            "reward_spec": reward._asdict() if reward is not None else None,
            "config": config,
        }

    def _opened(self) -> IO[str]:
        """The bank file, made with its meta line at the first call."""
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8")
            self._file.write(json.dumps(self._meta) + "\n")
        return self._file

    def _write(self, record: dict) -> None:
        file = self._opened()
        file.write(json.dumps(record) + "\n")
        file.flush()

    def reset(self, **kwargs) -> tuple[np.ndarray, dict]:
        obs, info = self.env.reset(**kwargs)
        self.episode, self.window, self._obs = self.episode + 1, 0, _floats(obs)
        evaluation = info.get("eval")
        self._write(
            {"kind": "reset", "episode": self.episode, "obs": self._obs,
             "score": _finite_or_none(info.get("score")),
             "eval": {k: float(v) for k, v in evaluation.items()} if evaluation else None}
        )  # fmt: skip
        return obs, info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        evaluation = info.get("eval")
        # a window's score where it was measured: an evaluation ran, or the env scores every window
        # (the simulated envs; the real env carries its last evaluation's forward in between)
        scored = evaluation is not None or getattr(self.env.unwrapped, "scores_every_window", False)
        band = info.get("band_accuracy")
        self._write(
            {"kind": "window", "episode": self.episode, "window": self.window, "obs": self._obs,
             "action": _floats(action), "reward": float(reward),
             "progress": _finite_or_none(info.get("reward/progress")),
             "grounded": _finite_or_none(info.get("reward/grounded")),
             "next_obs": _floats(obs), "terminated": bool(terminated),
             "score": _finite_or_none(info.get("score")) if scored else None,
             "eval": {k: float(v) for k, v in evaluation.items()} if evaluation else None,
             "band_accuracy": [_finite_or_none(v) for v in band] if band is not None else None}
        )  # fmt: skip
        self.window += 1
        self._obs = _floats(obs)
        return obs, reward, terminated, truncated, info

    def state_dict(self) -> dict[str, Any]:
        """Where the recording stands (its file, the bytes written, the episode and window), for a
        checkpoint: a resumed run cuts the file back to it and goes on recording into it."""
        file = self._opened()
        file.flush()
        return {"path": str(self.path.resolve()), "offset": file.tell(), "episode": self.episode,
                "window": self.window, "obs": self._obs}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go on recording where `state_dict` was taken: the file this recorder opened (its meta line
        alone) is removed, and the run's file is cut back to the checkpoint's offset (the windows
        after it are recorded again as the resumed run replays them)."""
        path = Path(state["path"])
        if not path.is_file() or path.stat().st_size < int(state["offset"]):
            warnings.warn(  # moved or removed since: the resumed run records on into a new file
                f"the bank file {path} this run recorded into is missing or shorter than its checkpoint: "
                f"recording goes on in {self.path} from the next episode (read_bank keeps whole episodes)",
                stacklevel=2,
            )
            return
        if self._file is not None:
            self._file.close()
        if path.resolve() != self.path.resolve():
            self.path.unlink(missing_ok=True)
        with path.open("r+b") as fh:
            fh.truncate(int(state["offset"]))
        self.path, self._file = path, path.open("a", encoding="utf-8")
        self.episode, self.window = int(state["episode"]), int(state["window"])
        self._obs = None if state["obs"] is None else _floats(state["obs"])

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
        super().close()


def find_recorder(env: gym.Env) -> BankRecorder | None:
    """The BankRecorder among `env`'s wrappers, or None."""
    while isinstance(env, gym.Wrapper):
        if isinstance(env, BankRecorder):
            return env
        env = env.env
    return None


@dataclass
class Bank:
    """The runs of a bank directory: one entry per (file, episode) that has at least one window."""

    meta: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)  # {"name", "start", "windows": [...]}
    files: int = 0
    config: dict[str, Any] | None = None  # the env config every file that records one agrees on
    unconfigured: int = 0  # files that record no env config (recorded without one: not checkable)
    dropped: list[str] = field(default_factory=list)  # "file:line" of windows left out (non-finite)

    @property
    def windows(self) -> int:
        return sum(len(r["windows"]) for r in self.runs)


def _finite_window(record: dict[str, Any]) -> bool:
    try:
        values = [*record["obs"], *record["action"], *record["next_obs"], record["reward"]]
        return all(math.isfinite(float(v)) for v in values)
    except (KeyError, TypeError, ValueError):
        return False


def _tag(path: Path, meta: dict[str, Any] | None) -> str:
    """The run's tag (env__controller__seed): as recorded in its meta line, else its file name without
    the random id the recorder appends (`<tag>__<8 hex>`, or the id alone for an untagged run)."""
    if meta is not None and isinstance(meta.get("tag"), str):
        return meta["tag"]
    tag, _, last = path.stem.rpartition("__")
    if len(last) == 8 and all(c in "0123456789abcdef" for c in last):
        return tag
    return path.stem


def _read_file(path: Path) -> tuple[list[dict], list[dict], list[str]]:
    """A bank file's meta records, its runs with a window (in episode order) and its dropped windows."""
    metas: list[dict[str, Any]] = []
    current: dict[int, dict[str, Any]] = {}
    dropped: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if fh.readline() == "":  # a last line cut by a crash: the windows before it stand
                    break
                raise ValueError(f"{path}:{number}: not a JSON line") from None
            kind = record.get("kind") if isinstance(record, dict) else None
            if kind not in ("meta", "reset", "window") or (kind != "meta" and "episode" not in record):
                raise ValueError(f"{path}:{number}: not a bank record (a meta, reset or window line)")
            if kind == "meta":
                metas.append(record)
            elif kind == "reset":
                current[record["episode"]] = {"name": f"{path.stem}#{record['episode']}", "start": record,
                                              "windows": []}  # fmt: skip
            elif kind == "window" and record["episode"] in current:
                if _finite_window(record):
                    current[record["episode"]]["windows"].append(record)
                else:
                    dropped.append(f"{path.name}:{number}")
    return metas, [run for run in current.values() if run["windows"]], dropped


def _content_key(path: Path, metas: list[dict], runs: list[dict]) -> tuple[str, str, str, str]:
    """Where a file's runs go in the bank: by what it recorded (its tag, its meta with the env config,
    then its runs' records, the first reset and window first), the file name only to break a tie
    between files of equal content. By name alone, the runs of one tag (four fixed:alpha=... runs of a
    seed) fell in the order of their random ids, and that order is the fit's summation order, its
    folds and the index of the starts a surrogate draws: the same runs recorded again fitted
    otherwise (banks/embedded under other ids: held-out reward R^2 0.0129 against 0.0151)."""
    meta = metas[0] if metas else None
    records = json.dumps([[run["start"], *run["windows"]] for run in runs], sort_keys=True)
    return _tag(path, meta), json.dumps(meta, sort_keys=True), records, path.name


def config_defaults(env_class: Any) -> dict[str, Any] | None:
    """The default config tree of the env class a bank's meta names (the real env's `real.*` tree, the
    mock's `mock.*`), against which a file recorded before a config field existed is read: that field
    at its default then changes nothing. None for another env (its config is the id and the keywords
    given to `gymnasium.make`, missing ones at the env's own defaults)."""
    from atesd.config import to_dict

    if env_class == "TeacherExposureEnv":
        from atesd.builder import RealConfig
        from envs.exposure_env import ExposureEnvConfig

        return {**to_dict(RealConfig()), "env": to_dict(ExposureEnvConfig())}
    if env_class == "MockExposureEnv":
        from envs.mock_env import MockConfig

        return to_dict(MockConfig())
    return None


def read_bank(directory: str | Path) -> Bank:
    """Every run of the bank at `directory`; ValueError when it has none, or mixes envs of other
    classes, observation layouts, action sizes or rewards, or files whose env configs differ (every
    file that records one is compared, a key one file lacks at its default: `config_defaults`).
    Windows with a non-finite observation, action or reward (a window whose updates were all skipped
    pays NaN) are left out, each named in `Bank.dropped`.

    The runs come in an order fixed by their content (`_content_key`), not by the random ids of
    the file names: a bank recorded again from the same runs reads, and fits, the same."""
    directory = Path(directory)
    paths = sorted(directory.glob("*.jsonl")) if directory.is_dir() else []
    if not paths:
        raise ValueError(f"no bank at {directory}: no .jsonl files (record one with bank_dir={directory})")
    parsed = [(path, *_read_file(path)) for path in paths]
    parsed.sort(key=lambda item: _content_key(item[0], item[1], item[2]))
    meta: tuple[Path, dict[str, Any]] | None = None  # the first file's meta record and its file
    config: tuple[Path, dict[str, Any]] | None = None  # the first recorded env config and its file
    runs: list[dict[str, Any]] = []
    unconfigured, dropped = 0, []
    keys = ("env", "observation_names", "action_size", "reward_spec")
    for path, metas, file_runs, file_dropped in parsed:
        for record in metas:
            if meta is None:
                meta = (path, record)
            differ = [k for k in keys if record.get(k) != meta[1].get(k)]
            if differ:
                key, mine, first = differ[0], record.get(differ[0]), meta[1].get(differ[0])
                if isinstance(mine, dict) and isinstance(first, dict):  # reward_spec: name its field
                    sub = first_difference(first, mine, ())
                    key, mine, first = (f"{key}.{sub[0]}", sub[1], sub[2]) if sub else (key, mine, first)
                raise ValueError(
                    f"{path}: its env differs from the one of {meta[0].name} in {', '.join(differ)} "
                    f"({key}={mine}, {meta[0].name}'s {first})"
                )
            if not record.get("config"):
                unconfigured += 1
            elif config is None:
                config = (path, record["config"])
            else:
                # local paths compared absolute (older files hold them as given)
                diff = first_difference(
                    absolute_paths(config[1]),
                    absolute_paths(record["config"]),
                    IGNORED,
                    config_defaults(record.get("env")),
                )
                if diff is not None:
                    key, mine, first = diff
                    raise ValueError(f"{path}: its env config has {key}={mine}, {config[0].name}'s {first}")
        runs += file_runs
        dropped += file_dropped
    if meta is None or not runs:
        raise ValueError(f"the bank at {directory} holds no recorded window")
    return Bank(meta=meta[1], runs=runs, files=len(paths), config=config and config[1],
                unconfigured=unconfigured, dropped=dropped)  # fmt: skip
