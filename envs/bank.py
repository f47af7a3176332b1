"""A bank of logged exposure runs: a wrapper that records every window of an env, and its reader.

A bank is a directory of JSONL files, one per env instance (`<env>__<controller>__<seed>__<id>.jsonl`),
each line one record, flushed as it is written (a crash loses at most the window in flight):
- `{"kind": "meta", ...}` first: the env's class, `observation_names`, `bands`, action size, its
  `reward_spec` (H, gamma, T, lambda_gt, signed) as a dict, and the env's config when the recorder
  was given it (`config`: run.py and bench.py give the resolved `real.*` or `mock.*` tree);
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
from typing import Any

import gymnasium as gym
import numpy as np

from atesd.priors import IGNORED, first_difference


def _floats(values: Any) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def _finite_or_none(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


class BankRecorder(gym.Wrapper):
    """Records every reset and window of `env` into a new JSONL file under `directory`."""

    def __init__(
        self, env: gym.Env, directory: str | Path, tag: str = "", config: dict[str, Any] | None = None
    ) -> None:
        super().__init__(env)
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        name = "__".join(part for part in (tag, uuid.uuid4().hex[:8]) if part).replace("/", "-")
        self.path = self.directory / f"{name}.jsonl"
        self._file = self.path.open("a", encoding="utf-8")
        self.episode, self.window, self._obs = -1, 0, None
        base = env.unwrapped
        reward = getattr(base, "reward_spec", None)
        self._write(
            {
                "kind": "meta",
                "env": type(base).__name__,
                "observation_names": list(getattr(base, "observation_names", ()) or ()),
                "bands": list(getattr(base, "bands", ()) or ()),
                "action_size": int(np.prod(env.action_space.shape)),
                "reward_spec": reward._asdict() if reward is not None else None,
                "config": config,
            }
        )

    def _write(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

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
        scored = evaluation is not None or "oracle_alpha" in info  # the mock scores every window
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
        self._file.flush()
        return {"path": str(self.path.resolve()), "offset": self._file.tell(), "episode": self.episode,
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
        if path.resolve() != self.path.resolve():
            self._file.close()
            self.path.unlink(missing_ok=True)
        else:
            self._file.close()
        with path.open("r+b") as fh:
            fh.truncate(int(state["offset"]))
        self.path, self._file = path, path.open("a", encoding="utf-8")
        self.episode, self.window = int(state["episode"]), int(state["window"])
        self._obs = None if state["obs"] is None else _floats(state["obs"])

    def close(self) -> None:
        if not self._file.closed:
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


def read_bank(directory: str | Path) -> Bank:
    """Every run of the bank at `directory`; ValueError when it has none, or mixes envs of other
    classes, observation layouts, action sizes or rewards, or files whose env configs differ (every
    file that records one is compared). Windows with a non-finite observation, action or reward (a
    window whose updates were all skipped pays NaN) are left out, each named in `Bank.dropped`."""
    directory = Path(directory)
    paths = sorted(directory.glob("*.jsonl")) if directory.is_dir() else []
    if not paths:
        raise ValueError(f"no bank at {directory}: no .jsonl files (record one with bank_dir={directory})")
    meta: dict[str, Any] | None = None
    config: tuple[Path, dict[str, Any]] | None = None  # the first recorded env config and its file
    runs: list[dict[str, Any]] = []
    unconfigured, dropped = 0, []
    keys = ("env", "observation_names", "action_size", "reward_spec")
    for path in paths:
        current: dict[int, dict[str, Any]] = {}
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
                kind = record.get("kind")
                if kind == "meta":
                    if meta is None:
                        meta = record
                    differ = [k for k in keys if record.get(k) != meta.get(k)]
                    if differ:
                        raise ValueError(
                            f"{path}: its env differs from the one of {paths[0].name} in {', '.join(differ)} "
                            f"({record.get('env')} against {meta.get('env')})"
                        )
                    if not record.get("config"):
                        unconfigured += 1
                    elif config is None:
                        config = (path, record["config"])
                    else:
                        diff = first_difference(config[1], record["config"], IGNORED)
                        if diff is not None:
                            key, mine, first = diff
                            raise ValueError(
                                f"{path}: its env config has {key}={mine}, {config[0].name}'s {first}"
                            )
                elif kind == "reset":
                    current[record["episode"]] = {"name": f"{path.stem}#{record['episode']}", "start": record,
                                                  "windows": []}  # fmt: skip
                elif kind == "window" and record["episode"] in current:
                    if _finite_window(record):
                        current[record["episode"]]["windows"].append(record)
                    else:
                        dropped.append(f"{path.name}:{number}")
        runs += [run for run in current.values() if run["windows"]]
    if meta is None or not runs:
        raise ValueError(f"the bank at {directory} holds no recorded window")
    return Bank(meta=meta, runs=runs, files=len(paths), config=config and config[1],
                unconfigured=unconfigured, dropped=dropped)  # fmt: skip
