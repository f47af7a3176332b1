"""SurrogateExposureEnv: an exposure env whose dynamics are fitted to a bank of logged runs.

Real windows cost seconds (the embedded default) to minutes (a GPU model); a controller that must
learn for thousands of episodes cannot learn there. The surrogate learns, from a bank (envs/bank.py),
how the observation moves and what reward a window pays given the observation and the exposure,
and replays that as a Gymnasium env of microseconds per step, so a controller can pre-train on CPU
and then go on learning on the real env (`controller_init`).

The model (fitted by `fit_surrogate`, ridge regression, numpy only) per window:
- features phi(obs, a) = [1, obs, a, a^2, a (x) obs]: linear in the state, quadratic in each alpha
  (an interior best exposure), with the state shifting the alpha effect;
- targets: the change of the observation (next_obs - obs) and the window's reward, each with
  Gaussian residual noise of the sd the fit left on the bank;
- the score (final accuracy) as a ridge function of the observation, fitted on every observation the
  bank evaluated (the runs' starts and the windows after which an evaluation ran);
- a start drawn from the bank's reset observations, T / H windows an episode as in the bank.
`fit_report` gives the error of each on runs held out of the fit (leave-runs-out folds) beside the
error of predicting the training mean, so a user sees what the surrogate can and cannot predict.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from atesd.progress import RewardSpec
from envs import spec
from envs.bank import Bank, read_bank

REWARDS = ("bank", "score")  # what a surrogate step pays (SurrogateExposureEnv, "Rewards")


def features(obs: np.ndarray, action: np.ndarray) -> np.ndarray:
    """phi(obs, a) for rows of obs (n, D) and actions (n, K): (n, 1 + D + 2K + K D)."""
    obs, action = np.atleast_2d(obs), np.atleast_2d(action)
    cross = (action[:, :, None] * obs[:, None, :]).reshape(len(obs), -1)
    return np.concatenate([np.ones((len(obs), 1)), obs, action, action**2, cross], axis=1)


def score_features(obs: np.ndarray) -> np.ndarray:
    obs = np.atleast_2d(obs)
    return np.concatenate([np.ones((len(obs), 1)), obs], axis=1)


def ridge(x: np.ndarray, y: np.ndarray, l2: float) -> np.ndarray:
    """argmin |x w - y|^2 + l2 |w[1:]|^2 (the intercept unpenalised)."""
    penalty = l2 * np.eye(x.shape[1])
    penalty[0, 0] = 0.0
    try:
        return np.linalg.solve(x.T @ x + penalty, x.T @ y)
    except np.linalg.LinAlgError:  # collinear features (one exposure only, l2 = 0): the least-norm fit
        return np.linalg.lstsq(x.T @ x + penalty, x.T @ y, rcond=None)[0]


def _arrays(runs: list[dict]) -> dict[str, np.ndarray]:
    windows = [w for run in runs for w in run["windows"]]
    # the score model's data: every evaluated observation, the runs' starts among them (without the
    # starts it extrapolates there: the embedded default's start, far from every later state, was
    # predicted at -1.7 for a measured 0.44)
    scored = [
        (run["start"]["obs"], run["start"]["score"]) for run in runs if run["start"].get("score") is not None
    ]
    scored += [(w["next_obs"], w["score"]) for w in windows if w.get("score") is not None]
    dim = len(runs[0]["start"]["obs"]) if runs else 0  # (a bank without one score: an empty (0, D))
    return {
        "obs": np.array([w["obs"] for w in windows], dtype=np.float64),
        "action": np.array([w["action"] for w in windows], dtype=np.float64),
        "next_obs": np.array([w["next_obs"] for w in windows], dtype=np.float64),
        "reward": np.array([w["reward"] for w in windows], dtype=np.float64),
        "scored_obs": np.array([o for o, _ in scored], dtype=np.float64).reshape(len(scored), dim),
        "score": np.array([sc for _, sc in scored], dtype=np.float64),
    }


@dataclass
class SurrogateModel:
    """The fitted dynamics: weights, residual sds, starts and the facts of the bank's env."""

    w_step: np.ndarray  # (features, D + 1): the observation change, then the reward
    sd_step: np.ndarray  # (D + 1,)
    w_score: np.ndarray | None  # (D + 1,) or None when the bank has no evaluation
    starts: np.ndarray  # (n, D) reset observations
    start_scores: list[float | None]
    observation_names: list[str]
    bands: list[str]
    action_size: int
    reward_spec: RewardSpec
    windows_per_episode: int
    l2: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "w_step": self.w_step.tolist(), "sd_step": self.sd_step.tolist(),
            "w_score": None if self.w_score is None else self.w_score.tolist(),
            "starts": self.starts.tolist(), "start_scores": self.start_scores,
            "observation_names": self.observation_names, "bands": self.bands,
            "action_size": self.action_size, "reward_spec": self.reward_spec._asdict(),
            "windows_per_episode": self.windows_per_episode, "l2": self.l2,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SurrogateModel:
        return cls(
            w_step=np.asarray(d["w_step"], dtype=np.float64),
            sd_step=np.asarray(d["sd_step"], dtype=np.float64),
            w_score=None if d["w_score"] is None else np.asarray(d["w_score"], dtype=np.float64),
            starts=np.asarray(d["starts"], dtype=np.float64), start_scores=list(d["start_scores"]),
            observation_names=list(d["observation_names"]), bands=list(d["bands"]),
            action_size=int(d["action_size"]), reward_spec=RewardSpec(**d["reward_spec"]),
            windows_per_episode=int(d["windows_per_episode"]), l2=float(d["l2"]),
        )  # fmt: skip

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> SurrogateModel:
        return cls.from_dict(json.loads(Path(path).read_text()))


def fit_surrogate(bank: Bank, l2: float = 1e-3, runs: list[dict] | None = None) -> SurrogateModel:
    """Fit the surrogate to the bank's runs (or the subset `runs`)."""
    runs = bank.runs if runs is None else runs
    a = _arrays(runs)
    if len(a["obs"]) < 2:
        which = "the bank holds" if runs is bank.runs else f"the {len(runs)} run(s) fitted hold"
        raise ValueError(f"{which} fewer than 2 windows: record more or longer runs before fitting")
    x = features(a["obs"], a["action"])
    y = np.concatenate([a["next_obs"] - a["obs"], a["reward"][:, None]], axis=1)
    w_step = ridge(x, y, l2)
    sd_step = (y - x @ w_step).std(axis=0, ddof=min(1, len(y) - 1))
    w_score = ridge(score_features(a["scored_obs"]), a["score"], l2) if len(a["score"]) >= 2 else None
    meta = bank.meta
    if meta.get("reward_spec") is None:
        raise ValueError(
            "the bank's env has no reward_spec: the surrogate cannot tell controllers H and gamma"
        )
    reward_spec = RewardSpec(**meta["reward_spec"])
    return SurrogateModel(
        w_step=w_step, sd_step=sd_step, w_score=w_score,
        starts=np.array([run["start"]["obs"] for run in runs], dtype=np.float64),
        start_scores=[run["start"].get("score") for run in runs],
        observation_names=list(meta["observation_names"]), bands=list(meta.get("bands") or []),
        action_size=int(meta["action_size"]), reward_spec=reward_spec,
        windows_per_episode=reward_spec.total_steps // reward_spec.hold_steps, l2=l2,
    )  # fmt: skip


def fit_report(bank: Bank, folds: int = 5, l2: float = 1e-3, seed: int = 0) -> dict[str, Any]:
    """Leave-runs-out error: runs split into `folds` groups; each group's windows predicted by a fit
    on the others. Per target (each observation entry's change, the reward, the score): RMSE of the
    surrogate, RMSE of the training mean, and R^2 = 1 - (RMSE / RMSE of the mean)^2 over all folds."""
    folds = max(2, min(folds, len(bank.runs)))
    if len(bank.runs) < 2:
        raise ValueError("the fit error needs at least 2 runs in the bank (runs are held out whole)")
    order = np.random.default_rng(seed).permutation(len(bank.runs))
    names = [f"d_{n}" for n in bank.meta["observation_names"]] + ["reward"]
    err = {n: [0.0, 0.0, 0] for n in [*names, "score"]}
    for k in range(folds):
        test = [bank.runs[i] for i in order[k::folds]]
        train = [bank.runs[i] for i in order if i not in set(order[k::folds])]
        model, tr, te = fit_surrogate(bank, l2, train), _arrays(train), _arrays(test)
        y_te = np.concatenate([te["next_obs"] - te["obs"], te["reward"][:, None]], axis=1)
        y_tr = np.concatenate([tr["next_obs"] - tr["obs"], tr["reward"][:, None]], axis=1)
        pred = features(te["obs"], te["action"]) @ model.w_step
        for j, name in enumerate(names):
            err[name][0] += float(np.sum((y_te[:, j] - pred[:, j]) ** 2))
            err[name][1] += float(np.sum((y_te[:, j] - y_tr[:, j].mean()) ** 2))
            err[name][2] += len(y_te)
        if model.w_score is not None and len(te["score"]):
            p = score_features(te["scored_obs"]) @ model.w_score
            err["score"][0] += float(np.sum((te["score"] - p) ** 2))
            err["score"][1] += float(np.sum((te["score"] - tr["score"].mean()) ** 2))
            err["score"][2] += len(te["score"])
    out = {}
    for name, (sse, sse_mean, n) in err.items():
        if n == 0:
            continue
        rmse, rmse_mean = math.sqrt(sse / n), math.sqrt(sse_mean / n)
        r2 = 1.0 - sse / sse_mean if sse_mean > 1e-12 * n else math.nan  # a constant target: undefined
        out[name] = {"rmse": rmse, "rmse_mean": rmse_mean, "r2": r2, "n": n}
    return {"folds": folds, "runs": len(bank.runs), "windows": bank.windows, "l2": l2, "targets": out}


class SurrogateExposureEnv(gym.Env):
    """The exposure env a bank describes, replayed by the fitted model (module docstring).

    ## Action Space
    `Box(0, 1, (K,))` with K the bank's action size (1: the global action). Bad actions raise
    ValueError as in the other exposure envs.

    ## Observation Space
    The bank's env's: the six named statistics and, under the per-band action, one per band; each
    predicted step is clipped into the space.

    ## Rewards
    `reward="bank"`: the model's window reward plus its residual noise (the bank env's reward, as well
    as the fit predicts it: `fit_report` says how well). `reward="score"`: the change of the predicted
    score over the window, so an episode's return is the predicted final score less the start's: the
    objective itself, for a bank whose window reward the fit cannot predict (the default reward's
    grounded change on the embedded default: docs/BENCHMARKS.md). Info carries no
    `losses`/`reward/progress` (the surrogate predicts the reward whole), so controllers credit the
    step reward.

    ## Episode
    Starts from a reset observation of the bank; `terminated` after the bank's T / H windows.
    `info["score"]` is the score model's prediction from the observation (NaN when the bank had no
    evaluation).

    ## Arguments
    `SurrogateExposureEnv(model=SurrogateModel | path, bank=None, reward="bank")`: a fitted model (or
    its JSON, as `recipes/surrogate.py` writes it), or `bank=DIR` to fit one now; `reward` as above;
    also `gymnasium.make("atesd/Surrogate-v0", model=PATH, reward=...)`.
    """

    metadata = {"render_modes": []}
    scores_every_window = True  # info["score"] is measured at every step (a bank records each one)

    def __init__(
        self,
        model: SurrogateModel | str | Path | None = None,
        bank: str | Path | None = None,
        reward: str = "bank",
    ) -> None:
        if (model is None) == (bank is None):
            raise ValueError(
                "give the surrogate a fitted model (model=: the model or its JSON path) or a bank directory "
                "(bank=DIR), one of them"
            )
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {', '.join(REWARDS)}, got {reward!r}")
        if bank is not None:
            model = fit_surrogate(read_bank(bank))
        elif not isinstance(model, SurrogateModel):
            model = SurrogateModel.load(model)
        if reward == "score" and model.w_score is None:
            raise ValueError("reward='score' needs a score model: the bank has no evaluated window")
        self.model, self.reward = model, reward
        self.bands = tuple(model.bands)
        self.observation_names = tuple(model.observation_names)
        self.action_space = spec.action_space(model.action_size)
        self.observation_space = spec.observation_space(self.bands)
        if self.observation_space.shape[0] != len(self.observation_names):
            raise ValueError("the bank's observation names do not match its bands")

    @property
    def reward_spec(self) -> RewardSpec:
        return self.model.reward_spec

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        i = int(self.np_random.integers(len(self.model.starts)))
        self.obs = self.model.starts[i].astype(np.float64)
        self.windows_done = 0
        return self._observation(), {"score": self._score(), "steps_done": 0}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        started = hasattr(self, "windows_done")
        spec.check_stepping(started, started and self.windows_done >= self.model.windows_per_episode)
        if not self.bands:  # the global action (a bank of per-band runs holds K alphas, K = 1 too)
            alphas = np.array([spec.check_action(action)])
        else:
            alphas = np.asarray(spec.check_alphas(action, self.model.action_size), dtype=np.float64)
        mean = features(self.obs[None], alphas[None])[0] @ self.model.w_step
        draw = mean + self.model.sd_step * self.np_random.standard_normal(len(mean))
        low, high = self.observation_space.low, self.observation_space.high
        before = self._score()
        self.obs = np.clip(self.obs + draw[:-1], low, high)
        self.windows_done += 1
        if self.observation_names[0] == "progress":  # the share of the budget: known, not predicted
            self.obs[0] = self.windows_done / self.model.windows_per_episode
        score = self._score()
        reward = float(draw[-1]) if self.reward == "bank" else score - before
        done = self.windows_done >= self.model.windows_per_episode
        info = {
            "alpha": alphas.tolist() if self.bands else float(alphas[0]),
            "steps_done": self.windows_done * self.model.reward_spec.hold_steps,
            "score": score,
        }
        return self._observation(), reward, done, False, info

    def _observation(self) -> np.ndarray:
        return self.obs.astype(np.float32)

    def _score(self) -> float:
        if self.model.w_score is None:
            return math.nan
        return float(score_features(self.obs[None])[0] @ self.model.w_score)
