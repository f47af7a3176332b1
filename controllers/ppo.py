"""PPO with a Beta actor and an MLP critic over the exposure alpha: a standard alternative to ATESD.

Schulman et al., "Proximal Policy Optimization Algorithms", arXiv 1707.06347, with GAE (Schulman et
al., arXiv 1506.02438), written after CleanRL's `ppo_continuous_action.py`; the actor is ATESD's Beta
head (arXiv 2605.11458, section 3). One transition per env step (a hold window of H updates), so the
per-step discount is gamma^H; the reward is the env's step reward. Knows nothing of engines or models.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Literal

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
from controllers.beta_reinforce import beta_metrics, sample_betas


@dataclass(frozen=True)
class PPOConfig:
    """Hyperparameters of the PPO controller (small rollouts: a real env step costs minutes)."""

    hold_steps: int = field(
        default=5,
        metadata={"help": "updates per env step, H: taken from the env; a different value is refused"},
    )
    gamma: float = field(
        default=0.9,
        metadata={"help": "per-update discount: taken from the env; a different value is refused"},
    )
    gae_lambda: float = field(default=0.95, metadata={"help": "GAE lambda, in [0, 1]"})
    n_steps: int = field(default=8, metadata={"help": "transitions per rollout before an update (>= 2)"})
    n_epochs: int = field(default=4, metadata={"help": "passes over each rollout (>= 1)"})
    minibatch_size: int = field(default=4, metadata={"help": "transitions per minibatch, in [1, n_steps]"})
    clip_coef: float = field(default=0.2, metadata={"help": "PPO ratio clip, in (0, 1)"})
    vf_coef: float = field(default=0.5, metadata={"help": "value-loss coefficient (>= 0)"})
    ent_coef: float = field(default=0.01, metadata={"help": "entropy-bonus coefficient (>= 0)"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate (> 0)"})
    max_grad_norm: float = field(default=0.5, metadata={"help": "gradient-norm clip (> 0)"})
    norm_adv: bool = field(default=True, metadata={"help": "standardise advantages over the rollout"})
    hidden: tuple[int, ...] = field(
        default=(64, 64), metadata={"help": "MLP hidden widths (actor and critic)"}
    )
    activation: Literal["tanh", "relu"] = field(default="tanh", metadata={"help": "MLP activation"})
    alpha_min: float = field(default=0.05, metadata={"help": "lower clip of the sampled alpha, in [0, 1)"})
    alpha_max: float = field(
        default=1.0, metadata={"help": "upper clip of the sampled alpha, in (alpha_min, 1]"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the weight init and the sampling generator"})

    def __post_init__(self) -> None:
        checks = (
            ("hold_steps", whole(self.hold_steps) and self.hold_steps >= 1, "a whole number >= 1"),
            ("seed", whole(self.seed) and self.seed >= 0, "a whole number >= 0"),
            ("gamma", 0 < self.gamma <= 1, "in (0, 1]"),
            ("gae_lambda", 0 <= self.gae_lambda <= 1, "in [0, 1]"),
            ("n_steps", whole(self.n_steps) and self.n_steps >= 2, "a whole number >= 2"),
            ("n_epochs", whole(self.n_epochs) and self.n_epochs >= 1, "a whole number >= 1"),
            (
                "minibatch_size",
                whole(self.minibatch_size) and 1 <= self.minibatch_size <= self.n_steps,
                "a whole number in [1, n_steps]",
            ),
            ("clip_coef", 0 < self.clip_coef < 1, "in (0, 1)"),
            ("vf_coef", 0 <= self.vf_coef < math.inf, ">= 0 and finite"),
            ("ent_coef", 0 <= self.ent_coef < math.inf, ">= 0 and finite"),
            ("lr", 0 < self.lr < math.inf, "> 0 and finite"),
            ("max_grad_norm", self.max_grad_norm > 0, "> 0"),
            (
                "hidden",
                len(self.hidden) >= 1 and all(whole(h) and h >= 1 for h in self.hidden),
                "non-empty, whole widths >= 1",
            ),
            ("activation", self.activation in ("tanh", "relu"), "tanh or relu"),
            ("alpha_min", 0 <= self.alpha_min < 1, "in [0, 1)"),
            ("alpha_max", self.alpha_min < self.alpha_max <= 1, "in (alpha_min, 1]"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"{type(self).__name__}.{name} must be {rule}, got {getattr(self, name)!r}")

    @property
    def window_gamma(self) -> float:
        """gamma^H: the discount between consecutive env steps."""
        return self.gamma**self.hold_steps


def gae(
    rewards: np.ndarray, values: np.ndarray, next_values: np.ndarray, terminated: np.ndarray,
    done: np.ndarray, gamma: float, lam: float,
) -> np.ndarray:  # fmt: skip
    """Generalised advantage estimates over a rollout; all inputs (T,), `done` = terminated or truncated.

    delta_t = r_t + gamma (1 - terminated_t) V(s'_t) - V(s_t): a truncated step still bootstraps from
    V(s'_t), a terminated one does not; the recursion A_t = delta_t + gamma lam (1 - done_t) A_{t+1}
    stops at every episode end, and the rollout's last step bootstraps through V(s'_T) only.
    """
    deltas = rewards + gamma * (1.0 - terminated) * next_values - values
    adv, running = np.zeros_like(deltas), 0.0
    for t in reversed(range(len(deltas))):
        running = deltas[t] + gamma * lam * (1.0 - done[t]) * running
        adv[t] = running
    return adv


def _mlp(
    sizes: tuple[int, ...], activation: str, out_gain: float, generator: torch.Generator
) -> nn.Sequential:
    """Orthogonal-init MLP (CleanRL's layer_init) drawing only from `generator`."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.utils.skip_init(nn.Linear, n_in, n_out)  # no draw from the global RNG
        last = i == len(sizes) - 2
        nn.init.orthogonal_(lin.weight, gain=out_gain if last else math.sqrt(2), generator=generator)
        nn.init.zeros_(lin.bias)
        layers += [lin] if last else [lin, nn.Tanh() if activation == "tanh" else nn.ReLU()]
    return nn.Sequential(*layers)


class BetaActorCritic(nn.Module):
    """Actor: (a, b) = 1 + softplus(f(s)), starting at Beta(2, 2) (zero last layer, softplus(bias) = 1).
    Critic: V(s) from a separate MLP."""

    def __init__(self, obs_dim: int, cfg: PPOConfig, generator: torch.Generator, size: int = 1) -> None:
        super().__init__()
        self.size = size  # K Betas (one per band under the per-band action) from one factorised head
        self.actor = _mlp((obs_dim, *cfg.hidden, 2 * size), cfg.activation, 0.0, generator)
        nn.init.constant_(self.actor[-1].bias, math.log(math.e - 1.0))  # softplus^-1(1)
        self.critic = _mlp((obs_dim, *cfg.hidden, 1), cfg.activation, 1.0, generator)

    def dist(self, obs: torch.Tensor) -> torch.distributions.Beta:
        """The Betas at `obs` (B, obs_dim): batch shape (B, K)."""
        ab = 1.0 + nn.functional.softplus(self.actor(obs)).unflatten(-1, (self.size, 2))  # (B, K, 2)
        return torch.distributions.Beta(ab[..., 0], ab[..., 1])

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self.critic(obs)[..., 0]  # (B,)


class PPOController:
    """Clipped-objective PPO over rollouts of `n_steps` transitions; implements `controllers.base.Controller`.

    The rollout buffer spans episodes (each transition keeps its terminated / truncated flags), so it is
    not cleared by `reset`; a reset that abandons an episode mid-way marks its last transition truncated.
    Values are recomputed at update time (the critic only changes there), from s and s' of each step.
    """

    @one_thread  # the same numbers at any torch thread count
    def __init__(
        self, observation_space: gym.spaces.Box, action_space: gym.spaces.Box, cfg: PPOConfig | None = None
    ) -> None:
        self.cfg = cfg or PPOConfig()
        self.action_space = action_space
        gen = torch.Generator().manual_seed(self.cfg.seed)
        self.size = action_size(action_space)
        check_alpha_range(self.cfg.alpha_min, self.cfg.alpha_max, action_space, "PPOConfig")
        self.obs_size = int(np.prod(observation_space.shape))
        self.agent = BetaActorCritic(self.obs_size, self.cfg, gen, self.size)
        self.optimizer = torch.optim.Adam(self.agent.parameters(), lr=self.cfg.lr, eps=1e-5)
        self.rng = np.random.default_rng(self.cfg.seed)
        self.buffer: list[
            dict[str, Any]
        ] = []  # {"obs", "raw_alpha", "logp", "reward", "next_obs", "terminated", "done"}
        self.last: dict[str, Any] | None = None  # the decision `act` made, until `observe`
        self.updates = 0

    def reset(self, seed: int | None = None, info: dict | None = None) -> None:
        """New episode; `seed` reseeds sampling and minibatch shuffling (SeedSequence([cfg.seed, seed]))."""
        if seed is not None:
            self.rng = np.random.default_rng(np.random.SeedSequence([self.cfg.seed, seed]))
        if self.buffer and not self.buffer[-1]["done"]:
            self.buffer[-1]["done"] = True  # abandoned episode: cut GAE there, bootstrap from V(s')
        self.last = None

    @one_thread  # the same numbers at any torch thread count
    def act(self, obs: np.ndarray) -> np.ndarray:
        check_observation(obs, self.obs_size)
        with torch.no_grad():
            dist = self.agent.dist(torch.as_tensor(obs, dtype=torch.float32)[None])  # batch of 1
        raw, alpha, a, b = sample_betas(dist, self.rng, self.cfg.alpha_min, self.cfg.alpha_max)
        logp = float(dist.log_prob(torch.tensor(raw, dtype=torch.float32).reshape(1, self.size)).sum())
        self.last = {"obs": np.asarray(obs, dtype=np.float32).copy(), "raw_alpha": raw, "logp": logp,
                     "a": a, "b": b, "entropy": float(dist.entropy()[0].mean())}  # fmt: skip
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
        done = bool(terminated or truncated)
        self.buffer.append({"obs": last["obs"], "raw_alpha": last["raw_alpha"], "logp": last["logp"],
                            "reward": float(reward), "next_obs": np.array(next_obs, dtype=np.float32),
                            "terminated": bool(terminated), "done": done})  # fmt: skip
        metrics = beta_metrics(last["a"], last["b"], action, last["entropy"])
        if len(self.buffer) >= self.cfg.n_steps:
            metrics |= self._update()
            self.buffer = []
        return metrics

    def _update(self) -> dict[str, float]:
        """GAE over the rollout, then n_epochs of clipped-objective minibatch steps."""
        cfg, buf = self.cfg, self.buffer
        obs = torch.as_tensor(np.stack([t["obs"] for t in buf]), dtype=torch.float32)  # (T, obs_dim)
        next_obs = torch.as_tensor(
            np.stack([t["next_obs"] for t in buf]), dtype=torch.float32
        )  # (T, obs_dim)
        raw = torch.tensor([t["raw_alpha"] for t in buf], dtype=torch.float32).reshape(len(buf), self.size)
        old_logp = torch.tensor([t["logp"] for t in buf], dtype=torch.float32)  # (T,)
        with torch.no_grad():
            values, next_values = self.agent.value(obs).numpy(), self.agent.value(next_obs).numpy()  # (T,)
        flags = {k: np.array([t[k] for t in buf], dtype=np.float32) for k in ("reward", "terminated", "done")}
        adv_np = gae(flags["reward"], values, next_values, flags["terminated"], flags["done"],
                     cfg.window_gamma, cfg.gae_lambda)  # fmt: skip
        advantages = torch.as_tensor(adv_np, dtype=torch.float32)  # (T,)
        returns = advantages + torch.as_tensor(values)  # (T,)
        if cfg.norm_adv:  # over the whole rollout: minibatches of a few steps are too small to standardise
            advantages = (advantages - advantages.mean()) / (advantages.std(correction=0) + 1e-8)
        stats: dict[str, list[float]] = {"approx_kl": [], "clipfrac": [], "policy_loss": [], "value_loss": []}
        for _ in range(cfg.n_epochs):
            order = self.rng.permutation(len(buf))
            for start in range(0, len(buf), cfg.minibatch_size):
                mb = torch.as_tensor(order[start : start + cfg.minibatch_size])
                dist = self.agent.dist(obs[mb])
                log_ratio = dist.log_prob(raw[mb]).sum(-1) - old_logp[mb]  # (M,): independent Betas
                ratio = log_ratio.exp()
                clipped = ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)
                pg_loss = torch.max(-advantages[mb] * ratio, -advantages[mb] * clipped).mean()
                v_loss = 0.5 * ((self.agent.value(obs[mb]) - returns[mb]) ** 2).mean()
                entropy = dist.entropy().mean()
                loss = pg_loss - cfg.ent_coef * entropy + cfg.vf_coef * v_loss
                self.optimizer.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(self.agent.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():  # CleanRL's k3 estimator of KL(old || new)
                    stats["approx_kl"].append(((ratio - 1) - log_ratio).mean().item())
                    stats["clipfrac"].append(((ratio - 1).abs() > cfg.clip_coef).float().mean().item())
                stats["policy_loss"].append(pg_loss.item())
                stats["value_loss"].append(v_loss.item())
        self.updates += 1
        out = {f"controller/{k}": float(np.mean(v)) for k, v in stats.items()}
        return out | {
            "controller/return_mean": returns.mean().item(),
            "controller/updates": float(self.updates),
        }

    def pop_credits(self) -> list[dict[str, float]]:
        """No per-decision credit to report (returns are not rebuilt here)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """Weights, optimiser, sampling RNG, the undecided `act` and the rollout buffer."""
        return {
            "agent": dict(self.agent.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "rng": self.rng.bit_generator.state,
            "last": copy.deepcopy(self.last),
            "buffer": copy.deepcopy(self.buffer),
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # the config owns the rate (a prior trained at
            group["lr"] = self.cfg.lr  # another keeps its moments, not its rate)
        self.rng = np.random.default_rng(0)  # state overwritten next
        self.rng.bit_generator.state = state["rng"]
        self.last, self.buffer = copy.deepcopy(state["last"]), copy.deepcopy(state["buffer"])
        self.updates = int(state["updates"])
