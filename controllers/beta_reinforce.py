"""The ATESD controller: a Beta policy over the exposure alpha trained by batched REINFORCE.

Han et al., "Adaptive Teacher Exposure for Self-Distillation", arXiv 2605.11458, section 3. One
decision per env step (a hold window of H student updates); a decision's return is known once its
lookahead of K = lookahead_steps / hold_steps windows has been observed; every B finished decisions,
one REINFORCE update with batch-standardised advantages (no critic) and a one-sided entropy penalty.

One departure from the paper, on by default: `baseline="trend"` centres a return on the run's return
trend when the decision was made instead of on its batch's mean (`advantages` says why; scaling is
still by the batch's std). On the mock env the paper's batch mean drifts toward overexposure over
repeated runs and ends below the random controller; the trend baseline climbs (docs/BENCHMARKS.md).
`baseline="batch"` is the paper's estimator; the paper-reproduction configs (recipes/configs/qwen3_*)
select it.
Reads only the `envs.spec` info keys of each step; knows nothing of engines or models.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from controllers.base import (
    action_size,
    as_action,
    check_alpha_range,
    check_observation,
    check_transition,
    one_thread,
    whole,
)
from controllers.credit import PendingDecisions, RewardMode, credit_checks, lookahead_windows

BETA22_ENTROPY = 5.0 / 3.0 - math.log(6.0)  # differential entropy of Beta(2, 2): -ln 6 - 2psi(2) + 2psi(4)
RAW_EPS = 1e-6  # raw samples are kept inside (0, 1) so their float32 log-prob stays finite


@dataclass(frozen=True)
class BetaReinforceConfig:
    """Hyperparameters of the ATESD controller (docs/METHOD.md §3; unpublished ones are our defaults)."""

    reward_mode: RewardMode = field(
        default="discounted_grounded",
        metadata={"help": "decision return: immediate | short_delayed | discounted | discounted_grounded"},
    )
    hold_steps: int = field(
        default=5,
        metadata={"help": "updates per env step, H: taken from the env; a different value is refused"},
    )
    lookahead_steps: int = field(default=10, metadata={"help": "lookahead L in updates, a multiple of H"})
    gamma: float = field(
        default=0.9,
        metadata={"help": "per-update discount: taken from the env; a different value is refused"},
    )
    batch_decisions: int = field(default=4, metadata={"help": "finished decisions per update, B (>= 2)"})
    entropy_target: float = field(default=BETA22_ENTROPY, metadata={"help": "H_target in nats (<= 0)"})
    entropy_coef: float = field(default=0.1, metadata={"help": "c of the one-sided entropy penalty (>= 0)"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate (> 0)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient-norm clip (> 0)"})
    hidden: tuple[int, ...] = field(default=(64, 64), metadata={"help": "MLP hidden widths"})
    activation: Literal["tanh", "relu"] = field(default="tanh", metadata={"help": "MLP activation"})
    alpha_min: float = field(default=0.05, metadata={"help": "lower clip of the sampled alpha, in [0, 1)"})
    alpha_max: float = field(
        default=1.0, metadata={"help": "upper clip of the sampled alpha, in (alpha_min, 1]"}
    )
    finish_truncated: Literal["drop", "truncate"] = field(
        default="drop", metadata={"help": "decisions cut by the episode end: drop, or use the truncated sum"}
    )
    adv_eps: float = field(default=1e-8, metadata={"help": "eps of (R - mean) / (std + eps) (> 0)"})
    baseline: Literal["batch", "trend"] = field(
        default="trend",
        metadata={
            "help": "batch: the paper's (R - batch mean) / batch std; trend: (R - b) / batch std of "
            "R - b, b an EMA of the run's returns finished before the decision was made"
        },
    )
    trend_decay: float = field(
        default=0.8, metadata={"help": "trend baseline: per-return decay of its EMA, in (0, 1)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the weight init and the sampling generator"})
    init_mean: float = field(
        default=0.5,
        metadata={
            "help": "mean of the starting Beta, in (0, 1): a prior exposure (0.5: the paper's Beta(2, 2))"
        },
    )
    init_concentration: float = field(
        default=4.0,
        metadata={
            "help": "a + b of the starting Beta (4: Beta(2, 2)); larger starts surer of init_mean; "
            "a and b must both be > 1"
        },
    )

    def __post_init__(self) -> None:
        checks = credit_checks(
            self.reward_mode, self.hold_steps, self.lookahead_steps, self.gamma, self.finish_truncated
        ) + (
            ("batch_decisions", whole(self.batch_decisions) and self.batch_decisions >= 2,
             "a whole number >= 2"),
            ("seed", whole(self.seed) and self.seed >= 0, "a whole number >= 0"),
            ("entropy_target", -math.inf < self.entropy_target <= 0,
             "finite and <= 0 (a Beta with a, b >= 1 has entropy <= 0)"),
            ("entropy_coef", 0 <= self.entropy_coef < math.inf, ">= 0 and finite"),
            ("lr", 0 < self.lr < math.inf, "> 0 and finite"),
            ("max_grad_norm", self.max_grad_norm > 0, "> 0"),
            ("hidden", len(self.hidden) >= 1 and all(whole(h) and h >= 1 for h in self.hidden),
             "non-empty, whole widths >= 1"),
            ("activation", self.activation in ("tanh", "relu"), "tanh or relu"),
            ("alpha_min", 0 <= self.alpha_min < 1, "in [0, 1)"),
            ("alpha_max", self.alpha_min < self.alpha_max <= 1, "in (alpha_min, 1]"),
            ("adv_eps", 0 < self.adv_eps < math.inf, "> 0 and finite"),
            ("baseline", self.baseline in ("batch", "trend"), "batch or trend"),
            ("trend_decay", 0 < self.trend_decay < 1, "in (0, 1)"),
            ("init_mean", 0 < self.init_mean < 1, "in (0, 1)"),
            ("init_concentration",
             1 < min(self.init_mean, 1 - self.init_mean) * self.init_concentration < math.inf,
             "finite, such that init_mean * it and (1 - init_mean) * it are > 1"),
        )  # fmt: skip
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"{type(self).__name__}.{name} must be {rule}, got {getattr(self, name)!r}")

    @property
    def lookahead_windows(self) -> int:
        """K: windows a decision waits for (1 for the immediate and short-delayed modes)."""
        return lookahead_windows(self.reward_mode, self.hold_steps, self.lookahead_steps)

    @property
    def window_discount(self) -> float:
        """gamma^H: the discount between consecutive windows."""
        return self.gamma**self.hold_steps


class Finished(NamedTuple):
    """A decision whose return is known: the state it saw, its raw Beta sample, its return."""

    obs: np.ndarray  # (obs_dim,)
    raw_alpha: float | list[float]  # one per band under the per-band action
    ret: float
    index: int = -1  # the decision's number (0, 1, ... over the controller's life)
    baseline: float | None = None  # the run's return trend when it was made (None: none yet)


def sample_betas(
    dist: torch.distributions.Beta, rng: np.random.Generator, low: float, high: float
) -> tuple[float | list[float], np.ndarray, Any, Any]:
    """One draw from each Beta of a batch-of-one `dist` (batch shape (1, K)): (raw, alpha, a, b),
    raw inside (0, 1) (RAW_EPS), alpha = raw clipped to [low, high]. K = 1 draws from scalars, the
    stream the global action always used; K > 1 one independent draw per band (lists)."""
    if dist.concentration1.shape[-1] == 1:
        a, b = float(dist.concentration1[0, 0]), float(dist.concentration0[0, 0])
        raw: float | list[float] = float(np.clip(rng.beta(a, b), RAW_EPS, 1.0 - RAW_EPS))
    else:
        a, b = dist.concentration1[0].tolist(), dist.concentration0[0].tolist()
        raw = np.clip(rng.beta(a, b), RAW_EPS, 1.0 - RAW_EPS).tolist()
    return raw, np.clip(raw, low, high), a, b


def beta_metrics(a: Any, b: Any, action: np.ndarray, entropy: float) -> dict[str, float]:
    """A decision's `controller/*` metrics: the Beta's a, b and mean (means over the bands), the
    alpha used, the entropy; with K > 1 Betas each band's too (`controller/beta_a/<i>`, ...)."""
    a, b = np.reshape(a, -1), np.reshape(b, -1)
    metrics = {"controller/beta_a": float(a.mean()), "controller/beta_b": float(b.mean()),
               "controller/beta_mean": float(np.mean(a / (a + b))),
               "controller/alpha": float(np.mean(action)), "controller/entropy": entropy}  # fmt: skip
    if a.size > 1:  # each band's Beta, in the action's order
        for i in range(a.size):
            metrics |= {f"controller/beta_a/{i}": float(a[i]), f"controller/beta_b/{i}": float(b[i]),
                        f"controller/beta_mean/{i}": float(a[i] / (a[i] + b[i]))}  # fmt: skip
    return metrics


def standardise(returns: torch.Tensor, eps: float) -> torch.Tensor:
    """(R - mean) / (std + eps) within the batch (population std); all-equal returns give zeros."""
    return (returns - returns.mean()) / (returns.std(correction=0) + eps)


def advantages(returns: torch.Tensor, baselines: list[float | None] | None, eps: float) -> torch.Tensor:
    """The batch's advantages: `standardise(returns)` without baselines (the paper's), else
    (R - b) / (std(R - b) + eps), where a missing b (a run's first decisions) gives R - b = 0.

    Why the trend baseline: the B decisions of a batch are consecutive, so their lookahead windows
    overlap and the batch mean holds neighbours' returns that the decision's own action moves (on the
    mock, an overexposure's dip raises the previous decision's return and its revert lowers the next
    one's), so the batch mean is not a valid baseline; and learning progress shrinks over a run, a
    trend the batch mean follows only within B. The EMA of the run's returns finished before the
    decision was made cannot depend on its action, so the expected policy gradient is unchanged; the
    bandits detrend their credit the same way (`controllers/bandit.py`).
    """
    if baselines is None:
        return standardise(returns, eps)
    base = torch.tensor([r if b is None else b for r, b in zip(returns.tolist(), baselines)])  # (B,)
    centred = returns - base.to(returns.dtype)
    return centred / (centred.std(correction=0) + eps)


def entropy_penalty(mean_entropy: torch.Tensor, target: float, coef: float) -> torch.Tensor:
    """c * max(0, mean Entropy - H_target)^2: charges only a policy more diffuse than the target."""
    return coef * torch.clamp(mean_entropy - target, min=0.0) ** 2


def reinforce_loss(
    dist: torch.distributions.Beta,
    raw_alpha: torch.Tensor,
    returns: torch.Tensor,
    cfg: BetaReinforceConfig,
    baselines: list[float | None] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """-mean(adv * log pi(raw alpha | s)) + entropy penalty over a batch of B decisions; `returns`
    (B,), `raw_alpha` and the Beta's batch shape (B,) or (B, K) with one Beta per band: log pi is
    then the sum over the bands (independent Betas), the entropy their mean; adv from
    `advantages` (the paper's batch standardisation when `baselines` is None)."""
    adv = advantages(returns, baselines, cfg.adv_eps)  # (B,)
    log_prob = dist.log_prob(raw_alpha)  # (B,) or (B, K)
    pg_loss = -(adv * (log_prob.sum(-1) if log_prob.ndim > 1 else log_prob)).mean()
    entropy = dist.entropy().mean()
    penalty = entropy_penalty(entropy, cfg.entropy_target, cfg.entropy_coef)
    metrics = {"controller/pg_loss": pg_loss.item(), "controller/entropy_penalty": penalty.item(),
               "controller/batch_entropy": entropy.item()}  # fmt: skip
    return pg_loss + penalty, metrics


def _softplus_inverse(y: float) -> float:
    """x with softplus(x) = y (> 0): log(e^y - 1), exactly log(e - 1) for y = 1 (past y = 700, where
    e^y overflows, as y + log(1 - e^-y))."""
    return math.log(math.expm1(y)) if y <= 700 else y + math.log(-math.expm1(-y))


class BetaPolicy(nn.Module):
    """MLP f(s) -> (a, b) = 1 + softplus(f(s)); starts at Beta(2, 2) (zero last layer, softplus(bias) = 1),
    or at the Beta of mean `init_mean` and a + b = `init_concentration`.

    With `size` K > 1 (the per-band action) the head gives K pairs: K independent Betas, one per
    band, sharing the trunk (a factorised head)."""

    def __init__(
        self, obs_dim: int, cfg: BetaReinforceConfig, generator: torch.Generator, size: int = 1
    ) -> None:
        super().__init__()
        act = nn.Tanh if cfg.activation == "tanh" else nn.ReLU
        sizes, layers = (obs_dim, *cfg.hidden), []
        for n_in, n_out in zip(sizes[:-1], sizes[1:]):
            lin = nn.utils.skip_init(nn.Linear, n_in, n_out)  # no draw from the global RNG
            nn.init.orthogonal_(lin.weight, gain=math.sqrt(2), generator=generator)
            nn.init.zeros_(lin.bias)
            layers += [lin, act()]
        self.size = size
        head = nn.utils.skip_init(nn.Linear, sizes[-1], 2 * size)
        nn.init.zeros_(head.weight)
        a0 = cfg.init_mean * cfg.init_concentration  # the starting Beta(a0, b0): 1 + softplus(bias)
        b0 = (1.0 - cfg.init_mean) * cfg.init_concentration
        bias = torch.tensor([_softplus_inverse(a0 - 1.0), _softplus_inverse(b0 - 1.0)] * size)
        with torch.no_grad():
            head.bias.copy_(bias)
        self.net = nn.Sequential(*layers, head)

    def forward(self, obs: torch.Tensor) -> torch.distributions.Beta:
        """The Betas at `obs` (B, obs_dim): batch shape (B, K)."""
        ab = 1.0 + nn.functional.softplus(self.net(obs)).unflatten(-1, (self.size, 2))  # (B, K, 2)
        return torch.distributions.Beta(ab[..., 0], ab[..., 1])


class BetaReinforceController:
    """The paper's controller (see the module docstring); implements `controllers.base.Controller`.

    Decisions still waiting for their lookahead are `pending` (cleared by `reset`); finished ones
    gather in `finished` until B of them make an update, and persist across episodes like the weights.
    Decisions made before an update and finished after it are used as if on-policy (no importance
    weights), as in the paper's plain REINFORCE.
    """

    @one_thread  # the same numbers at any torch thread count
    def __init__(
        self,
        observation_space: gym.spaces.Box,
        action_space: gym.spaces.Box,
        cfg: BetaReinforceConfig | None = None,
    ) -> None:
        self.cfg = cfg or BetaReinforceConfig()
        self.action_space = action_space
        self.size = action_size(action_space)  # K Betas: one per band under the per-band action
        self.obs_size = int(np.prod(observation_space.shape))
        check_alpha_range(self.cfg.alpha_min, self.cfg.alpha_max, action_space, "BetaReinforceConfig")
        self.policy = BetaPolicy(
            self.obs_size,
            self.cfg,
            torch.Generator().manual_seed(self.cfg.seed),
            self.size,
        )
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=self.cfg.lr)
        self.rng = np.random.default_rng(self.cfg.seed)
        self.credit = PendingDecisions.of(self.cfg)  # pending decisions {"obs", "raw_alpha", "windows"}
        self.finished: list[Finished] = []
        self.last: dict[str, Any] | None = None  # the decision `act` made, until `observe` sees its window
        self.updates = 0
        self.decisions = 0  # decisions made so far (the next one's index)
        self.credits: list[dict[str, float]] = []  # {decision, return, advantage} since `pop_credits`
        self.trend: float | None = None  # baseline="trend": EMA of this run's finished returns

    def reset(self, seed: int | None = None, info: dict | None = None) -> None:
        """New episode: drops pending decisions; `seed` reseeds sampling (SeedSequence([cfg.seed, seed]))."""
        if seed is not None:
            self.rng = np.random.default_rng(np.random.SeedSequence([self.cfg.seed, seed]))
        self.credit.clear()
        self.last = None
        self.trend = None  # a run's learning curve starts afresh

    @property
    def pending(self) -> list[dict[str, Any]]:
        """Decisions still waiting for their lookahead windows."""
        return self.credit.pending

    @one_thread  # the same numbers at any torch thread count
    def act(self, obs: np.ndarray) -> np.ndarray:
        check_observation(obs, self.obs_size)
        with torch.no_grad():
            dist = self.policy(torch.as_tensor(obs, dtype=torch.float32)[None])  # batch of 1
        raw, alpha, a, b = sample_betas(dist, self.rng, self.cfg.alpha_min, self.cfg.alpha_max)
        self.last = {"obs": np.asarray(obs, dtype=np.float32).copy(), "raw_alpha": raw, "a": a, "b": b,
                     "entropy": float(dist.entropy()[0].mean())}  # fmt: skip
        return as_action(alpha, self.action_space)

    @one_thread  # the same numbers at any torch thread count
    def observe(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: float,
        next_obs: np.ndarray,
        terminated: bool,
        truncated: bool,
        info: dict,
    ) -> dict[str, float]:
        check_transition(obs, reward, next_obs)
        if self.last is None:
            raise RuntimeError("observe() needs the decision of a preceding act()")
        last, self.last = self.last, None
        decision = {"obs": last["obs"], "raw_alpha": last["raw_alpha"], "index": self.decisions,
                    "baseline": self.trend}  # fmt: skip
        done = self.credit.push(decision, info, terminated or truncated, reward)
        self.decisions += 1
        self.finished += [Finished(d["obs"], d["raw_alpha"], ret, int(d["index"]), d.get("baseline"))
                          for d, ret in done]  # fmt: skip
        keep = self.cfg.trend_decay
        for _, ret in done:  # the trend moves only after the baselines above were taken
            self.trend = ret if self.trend is None else keep * self.trend + (1.0 - keep) * ret
        metrics = beta_metrics(last["a"], last["b"], action, last["entropy"])
        while len(self.finished) >= (n := self.cfg.batch_decisions):
            metrics |= self._update(self.finished[:n])
            self.finished = self.finished[n:]
        return metrics

    def _update(self, batch: list[Finished]) -> dict[str, float]:
        """One REINFORCE step on B finished decisions."""
        obs = torch.as_tensor(np.stack([f.obs for f in batch]), dtype=torch.float32)  # (B, obs_dim)
        raw = torch.tensor([f.raw_alpha for f in batch], dtype=torch.float32).reshape(len(batch), self.size)
        returns = torch.tensor([f.ret for f in batch], dtype=torch.float32)  # (B,)
        baselines = [f.baseline for f in batch] if self.cfg.baseline == "trend" else None
        loss, metrics = reinforce_loss(self.policy(obs), raw, returns, self.cfg, baselines)
        self.optimizer.zero_grad()
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()
        self.updates += 1
        advs = advantages(returns, baselines, self.cfg.adv_eps).tolist()
        centred = (
            returns
            if baselines is None
            else returns
            - torch.tensor(
                [r if b is None else b for r, b in zip(returns.tolist(), baselines)], dtype=returns.dtype
            )
        )  # what the advantages were scaled by: std(R), or std(R - b) under the trend baseline
        self.credits += [{"decision": f.index, "return": f.ret, "advantage": a} for f, a in zip(batch, advs)]
        return metrics | {"controller/loss": loss.item(), "controller/grad_norm": float(grad_norm),
                          "controller/adv_std": centred.std(correction=0).item(),
                          "controller/return_mean": returns.mean().item(),
                          "controller/updates": float(self.updates)}  # fmt: skip

    def pop_credits(self) -> list[dict[str, float]]:
        """The (decision index, return, advantage) of every decision used by an update since the last
        call: for the run's decisions log."""
        out, self.credits = self.credits, []
        return out

    def state_dict(self) -> dict[str, Any]:
        """Weights, optimiser, sampling RNG, the undecided `act`, pending and finished decisions."""
        return {
            "policy": dict(self.policy.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.bit_generator.state,
            "last": copy.deepcopy(self.last),
            "pending": self.credit.state_dict(),
            "finished": [f._asdict() for f in copy.deepcopy(self.finished)],
            "updates": self.updates,
            "decisions": self.decisions,
            "trend": self.trend,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # the config owns the rate (a prior trained at
            group["lr"] = self.cfg.lr  # another keeps its moments, not its rate)
        self.rng = np.random.default_rng(0)  # state overwritten next
        self.rng.bit_generator.state = state["rng"]
        self.last = copy.deepcopy(state["last"])
        self.credit.load_state_dict(state["pending"])
        self.finished = [Finished(**f) for f in copy.deepcopy(state["finished"])]
        self.updates = int(state["updates"])
        self.decisions = int(state.get("decisions", 0))
        self.trend = None if state.get("trend") is None else float(state["trend"])
