"""TeacherExposureEnv: the exposure problem as a Gymnasium env over a real DistillEngine.

One env step = one hold window of H student updates at the chosen alpha; the reward is the window's
discounted learning progress plus lambda_gt times its grounded score (atesd.progress). Owns the
episode (step budget, evaluations, reset to the warm-started student); knows nothing of controllers.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Literal

import gymnasium as gym
import numpy as np

from atesd.builder import RealConfig, build_engine
from atesd.engine import DistillEngine, EngineConfig
from atesd.models import TinyModelConfig
from atesd.progress import RewardSpec, grounded_change, window_reward
from atesd.tasks.base import action_bands
from atesd.tasks.synthetic import ChainBagConfig
from atesd.warmstart import WarmStartConfig
from envs import spec


@dataclass(frozen=True)
class ExposureEnvConfig:
    """The episode around the engine: window, budget, reward and evaluation."""

    hold_steps: int = field(default=5, metadata={"help": "student updates per env step, H (>= 1)"})
    total_steps: int = field(
        default=100, metadata={"help": "student updates per episode, T (a multiple of hold_steps)"}
    )
    gamma: float = field(default=0.9, metadata={"help": "per-update discount inside a window, in (0, 1]"})
    lambda_gt: float = field(
        default=30.0,
        metadata={
            "help": "weight of the grounded score (>= 0; 0.1 for the paper's form: ours, it gives none)"
        },
    )
    signed_progress: bool = field(default=False, metadata={"help": "charge rises of the tracked loss too"})
    grounded_change: bool = field(
        default=True,
        metadata={
            "help": "the grounded term is the change of the window's mean grounded score since the "
            "previous window (pays for a student that got better); False: its level (the paper's)"
        },
    )
    eval_every: int = field(
        default=0, metadata={"help": "evaluate every this many env steps (0 = only at the episode's end)"}
    )
    eval_k: int = field(
        default=0, metadata={"help": "Average@k samples per problem at evaluation (0 = greedy only)"}
    )
    action: Literal["global", "per_band"] = field(
        default="global",
        metadata={
            "help": "global: one alpha for every problem; per_band: one alpha per difficulty band of "
            "the task (its `action_bands()`, else its evaluation bands; math data: real.data.band_field)"
        },
    )
    eval_at_reset: bool = field(
        default=True,
        metadata={
            "help": "evaluate the warm-started student at reset too (the start of the accuracy curve): "
            "greedy, computed once per env (every reset restores the same student); with eval_k > 0 "
            "also Average@k, sampled again at every reset"
        },
    )

    def __post_init__(self) -> None:
        spec.check_field_types(self)
        checks = (
            *spec.window_checks(self.hold_steps, self.total_steps),
            ("gamma", 0 < self.gamma <= 1, "in (0, 1]"),
            ("lambda_gt", math.isfinite(self.lambda_gt) and self.lambda_gt >= 0, "finite and >= 0"),
            ("eval_every", self.eval_every >= 0, ">= 0"),
            ("eval_k", self.eval_k >= 0, ">= 0"),
        )
        for name, ok, rule in checks:
            if not ok:
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)}")
        spec.check_action_kind(self.action)

    @property
    def reward_spec(self) -> RewardSpec:
        """H, gamma and the other facts of the reward that agents share with the env."""
        return RewardSpec.of(self)


class TeacherExposureEnv(gym.Env):
    """Choose the teacher's exposure alpha for each hold window of on-policy self-distillation.

    ## Description
    The student (an HF causal LM) trains by on-policy self-distillation: each update it samples
    rollouts, the same model with the reference revealed at alpha scores them, and the student moves
    toward the teacher (atesd.engine.DistillEngine). An env step holds alpha for H updates. With
    no engine given, the env builds the embedded default (tiny Qwen3, chain-then-bag task, cached
    warm start; see docs/TASK.md).

    ## Action Space
    `Box(0, 1, (1,), float32)`: alpha for the next window. NaN, infinite or out-of-range actions raise
    ValueError (never clipped: see envs/spec.py). With `action="per_band"`: `Box(0, 1, (K,))`, one
    alpha per difficulty band, in the order of `env.bands` (the task's evaluation bands; the embedded
    task: C6, B4, M44, M64, each training problem taking the alpha of its nearest band in chain length
    and bag size); `info["alpha"]` is then the list of the K alphas.

    ## Observation Space
    `Box(6,)` float32 of the engine's training-state statistics (EMA decay `engine.stats_decay`):

    | index | name | range | meaning |
    |---|---|---|---|
    | 0 | progress | [0, 1] | student updates this episode / T |
    | 1 | ema_alpha | [0, 1] | EMA of the alpha used |
    | 2 | ema_loss | [-1, 1] | EMA of the distillation loss, squashed x / (1 + abs(x)) |
    | 3 | ema_mismatch | [0, 1] | EMA of top-1 student-teacher disagreement |
    | 4 | ema_probe_nll | [0, 4] | EMA of the probe NLL / the probe NLL at reset |
    | 5 | confidence | [0, 1] | EMA of the student's mean max next-token probability |
    | 6.. | rollout_accuracy/<band> | [0, 1] | per-band action only: EMA of the band's rollout accuracy |

    ## Rewards
    `sum_j gamma^(j-1) max(0, l_(j-1) - l_j)` over the window's tracked losses l_0..l_H (the probe NLL
    before and after each update; signed if `signed_progress`) plus `lambda_gt` (default 30) times the
    grounded term: the mean log-prob of the gold final answer after the student's reasoning, scored
    by the student before its update (`engine.grounded_by`, default `student`; the paper's `teacher`
    reads it from the teacher at the window's alpha), by default as the rise of the window's
    discount-weighted mean over the previous window's (`grounded_change`; 0 in the first window),
    else that mean itself (the paper's form; lambda_gt 0.1 is our choice for it). Agents that
    discount windows by gamma^H over L/H windows receive the paper's lookahead return; the delayed
    credit lives in the agent. A window whose every update was skipped as non-finite (the engine
    tolerates `max_nonfinite_steps` in a row) measures no grounded score: its grounded term is NaN in
    `info["reward/grounded"]` and credits nothing (the reward is the progress term alone), and the
    next window's change compares with the last window that measured one (0 when none has yet).

    ## Starting State
    The warm-started student (weights, optimiser, teacher, statistics as at construction); `reset(seed)`
    also reseeds the problem stream and the samplers.

    ## Episode End
    `terminated` when T student updates are done (T is a multiple of H: every window holds H
    updates); never truncated.
    An evaluation (greedy accuracy per band, Average@k if `eval_k`) runs every `eval_every` steps
    and always at the end: `info["eval"]`, and `info["score"]` = its mean accuracy over bands (a task
    without evaluation sets, allowed with eval_every=0 and eval_at_reset=false: none, score NaN). With
    `eval_at_reset` (default) the reset info carries the warm-started student's evaluation and score
    too (where the run started): greedy, computed once per env; with `eval_k`, Average@k too, sampled
    again at every reset.

    ## Info
    The keys of `envs.spec.INFO_KEYS`, always; a value not measured is NaN, never left out: `score`
    before the first evaluation (eval_at_reset=false), `reward/grounded` without the grounded score
    (engine.grounded=false) and, per band, `band_accuracy` for a band no row of the window drew.
    gymnasium's `check_env` compares infos with `==`, under which NaN is unequal to itself: with those
    options its step-determinism check fails although two seeded runs give the same infos
    (`tests/test_exposure_env.py` compares them with NaN equal to NaN). The defaults pass it.

    ## Arguments
    `TeacherExposureEnv(cfg=ExposureEnvConfig(...), engine=None, engine_cfg=EngineConfig(...),
    task_cfg=..., model_cfg=..., warmstart_cfg=..., cache_dir=None, real=None)`, or the same keywords
    through `gymnasium.make("atesd/TeacherExposure-v0", ...)`; instead of `cfg`, its fields may be
    given as keywords (`gymnasium.make("atesd/TeacherExposure-v0", eval_every=4)`), on top of
    `real.env` where `real` carries one. The engine comes from one of: `engine`
    (a built DistillEngine), `real` (an `atesd.builder.RealConfig`, built with its `engine.seed`), or
    the `*_cfg` and `cache_dir` keywords (the embedded default where none is given); mixing them is a
    ValueError. A `real` with an `env` field (recipes' `RealEnvConfig`) gives the episode config
    too: `cfg` may then be left out (or must equal it).
    """

    metadata = {"render_modes": []}
    scores_every_window = False  # info["score"] is the last evaluation's between evaluations

    @property
    def reward_spec(self) -> RewardSpec:
        """The reward's H and gamma (and T, lambda_gt, signed): the one source controllers read."""
        return self.cfg.reward_spec

    def __init__(
        self,
        cfg: ExposureEnvConfig | None = None,
        engine: DistillEngine | None = None,
        engine_cfg: EngineConfig | None = None,
        task_cfg: ChainBagConfig | None = None,
        model_cfg: TinyModelConfig | None = None,
        warmstart_cfg: WarmStartConfig | None = None,
        cache_dir: str | None = None,
        real: RealConfig | None = None,
        **overrides,
    ) -> None:
        self.cfg = self._episode_config(cfg, real, overrides)
        engine = self._given_engine(engine, real, engine_cfg, task_cfg, model_cfg, warmstart_cfg, cache_dir)
        self._check_engine(engine)
        self.engine = engine
        self.per_band = self.cfg.action == "per_band"
        self.bands: tuple[str, ...] = action_bands(engine.task) if self.per_band else ()
        if self.per_band and not self.bands:
            raise ValueError("the per-band action needs a task with evaluation bands; this one has none")
        if self.per_band and len(self.bands) == 1:  # a run meant to vary exposure by band would not
            warnings.warn(
                f"the per-band action on a task of one band ({self.bands[0]}) is one alpha, as the global "
                "action is (math data: real.data.band_field names the difficulty bands)",
                stacklevel=2,
            )
        self.action_space = spec.action_space(len(self.bands) or 1)
        self.observation_space = spec.observation_space(self.bands)
        self.observation_names = spec.observation_names(self.bands)  # what each entry is, by name
        self.ema_bands: dict[str, float] = {}
        self._initial = engine.state_dict()
        self._start_eval: dict[str, float] | None = None  # greedy: the same after every reset
        self.score = math.nan
        self.timings: dict[str, float] = {}  # the last step's wall times (time/window_s, ...)
        self.step_timings: list[dict[str, float]] = []  # the same per student update of that step

    @staticmethod
    def _given_engine(
        engine: DistillEngine | None,
        real: RealConfig | None,
        engine_cfg: EngineConfig | None,
        task_cfg: ChainBagConfig | None,
        model_cfg: TinyModelConfig | None,
        warmstart_cfg: WarmStartConfig | None,
        cache_dir: str | None,
    ) -> DistillEngine:
        """The engine given, or built from `real` or the *_cfg keywords (the embedded default where
        none is given); refused where keywords would be ignored beside `engine` or `real`."""
        named = {"engine_cfg": engine_cfg, "task_cfg": task_cfg, "model_cfg": model_cfg,
                 "warmstart_cfg": warmstart_cfg, "cache_dir": cache_dir}  # fmt: skip
        given = [name for name, value in named.items() if value is not None]
        if engine is not None and real is not None:
            given.insert(0, "real")
        if given and (engine is not None or real is not None):
            source = "engine" if engine is not None else "real"
            raise ValueError(
                f"{', '.join(given)} would be ignored beside {source}=, which fixes the engine already: "
                "give only one of engine, real, or the *_cfg and cache_dir keywords"
            )
        if engine is None:  # the embedded default (or `real`), through the one builder
            real = real or RealConfig(
                task=task_cfg or ChainBagConfig(), model=model_cfg or TinyModelConfig(),
                warmstart=warmstart_cfg or WarmStartConfig(), engine=engine_cfg or EngineConfig(),
                cache_dir=cache_dir or "",
            )  # fmt: skip
            engine = build_engine(real, real.engine.seed)
        return engine

    def _check_engine(self, engine: DistillEngine) -> None:
        """Refuse an engine the episode cannot run on: no probe set, a probe not every update, an
        evaluation with no evaluation set, a grounded term without the grounded score."""
        if not engine.probe:
            raise ValueError(
                "the env's reward needs a probe set of reference solutions (the tracked loss); this "
                "task has none (e.g. benchmark rows without solutions): give the data references"
            )
        if engine.cfg.probe_every != 1:
            raise ValueError(
                "the env's reward needs the probe NLL every update: engine.probe_every must be 1"
            )
        evaluates = self.cfg.eval_every > 0 or self.cfg.eval_at_reset
        self.has_eval = any(engine.task.eval_sets().values())  # none: no evaluation, not even the last
        if evaluates and not self.has_eval:  # the score would be a mean of nothing
            raise ValueError(
                "the env evaluates (real.env.eval_every, eval_at_reset) but this task has no evaluation "
                "set: hold rows out of the data (real.data.eval_size=N), or set real.env.eval_every=0 "
                "real.env.eval_at_reset=false (the run then reports no score)"
            )
        if not engine.cfg.grounded and self.cfg.lambda_gt > 0:
            raise ValueError(
                f"the reward's grounded term (lambda_gt={self.cfg.lambda_gt}) needs the grounded score: set "
                "engine.grounded=true, or lambda_gt=0 for a reward of the learning progress alone"
            )

    @staticmethod
    def _episode_config(
        cfg: ExposureEnvConfig | None, real: RealConfig | None, overrides: dict
    ) -> ExposureEnvConfig:
        """The episode config: `cfg`, else `real.env` (recipes' RealEnvConfig), else the default; keyword
        overrides of its fields (`eval_every=4`) go on top of real.env's or the default's."""
        known = [f.name for f in dataclasses.fields(ExposureEnvConfig)]
        unknown = [key for key in overrides if key not in known]
        if unknown:
            raise TypeError(
                f"TeacherExposureEnv got unknown keyword(s) {', '.join(unknown)}: it takes cfg, engine, "
                f"engine_cfg, task_cfg, model_cfg, warmstart_cfg, cache_dir, real, or the episode "
                f"config's fields ({', '.join(known)})"
            )
        if cfg is not None and overrides:
            raise ValueError(f"pass either cfg or keyword fields of it ({', '.join(overrides)}), not both")
        episode = getattr(real, "env", None)  # recipes' RealEnvConfig carries the episode's config
        if isinstance(episode, ExposureEnvConfig):
            if cfg is not None and cfg != episode:
                raise ValueError(
                    "cfg and real.env are two different episode configs: give one (real.env is used "
                    "when cfg is None)"
                )
            return dataclasses.replace(episode, **spec.coerced(ExposureEnvConfig, overrides))
        return cfg or ExposureEnvConfig(**spec.coerced(ExposureEnvConfig, overrides))

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.engine.load_state_dict(self._initial)
        self.engine.reseed(int(self.np_random.integers(2**63)))
        self.steps_done = 0
        self.grounded_prev: float | None = None  # the last window's mean grounded score (change form)
        self.probe_start = self.engine.probe_nll()
        self.score = math.nan
        self.ema_bands = {}
        self.timings, self.step_timings = {}, []
        info = {key: math.nan for key in spec.INFO_KEYS} | {"losses": [self.probe_start], "steps_done": 0}
        if self.cfg.eval_at_reset:  # the score is the last evaluation's until the next one
            info["eval"] = self._evaluate_start()
            info["score"] = self.score = _mean_accuracy(info["eval"])
        return self._obs(), info

    def _evaluate_start(self) -> dict[str, float]:
        """The warm-started student's evaluation: computed once when greedy (every reset restores the
        same weights and the eval sets are fixed), after each reseed when Average@k samples."""
        if self._start_eval is None or self.cfg.eval_k > 0:
            self._start_eval = self.engine.evaluate(k=self.cfg.eval_k)
        return dict(self._start_eval)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        started = hasattr(self, "steps_done")  # set by reset (or load_state_dict)
        spec.check_stepping(started, started and self.steps_done >= self.cfg.total_steps)
        if self.per_band:
            alphas = spec.check_alphas(action, len(self.bands))
            alpha: float | dict[str, float] = dict(zip(self.bands, alphas))
        else:
            alpha = spec.check_action(action)
        t0 = time.perf_counter()
        hold = min(self.cfg.hold_steps, self.cfg.total_steps - self.steps_done)
        window = self.engine.run_window(alpha, hold)
        self._update_bands(window)
        self.steps_done += hold
        terms = window_reward(
            window.losses, window.grounded, self.cfg.gamma, self.cfg.lambda_gt, self.cfg.signed_progress
        )
        if self.cfg.grounded_change:
            terms = grounded_change(terms, self.grounded_prev, self.cfg.lambda_gt)
            level = terms.pop("grounded_level")
            if math.isfinite(level):  # a window that measured no score leaves the level to compare with
                self.grounded_prev = level
        if self.cfg.lambda_gt and not math.isfinite(terms["grounded"]):
            # every update skipped as non-finite measured no g: no grounded credit (NaN stays in info)
            terms["reward"] = terms["progress"]
        terminated = self.steps_done >= self.cfg.total_steps
        metrics = [s.metrics() for s in window.steps]
        info = {
            "alpha": list(alphas) if self.per_band else alpha,
            "reward/progress": terms["progress"],
            "reward/grounded": terms["grounded"],
            "reward/total": terms["reward"],
            "stats/loss": window.mean("loss"),
            "stats/mismatch": window.mean("mismatch_top1"),
            "stats/probe_nll": window.losses[-1],
            "stats/confidence": window.mean("confidence"),
            "stats/divergence_p90": window.mean("divergence_p90"),
            "stats/divergence_p99": window.mean("divergence_p99"),
            "stats/rollout_accuracy": window.mean("rollout_accuracy"),
            "stats/skipped_updates": sum(s.skipped for s in window.steps),
            "losses": window.losses,
            "steps_done": self.steps_done,
            "step_stats": [_untimed(m) for m in metrics],  # every update, namespaced
        }
        if self.per_band:  # each band's rollout accuracy in this window (NaN for a band not drawn)
            by_band = window.band_accuracy()
            info["band_accuracy"] = [by_band.get(b, math.nan) for b in self.bands]
            info |= {f"stats/rollout_accuracy/{b}": v for b, v in by_band.items()}
        steps_taken = self.steps_done // self.cfg.hold_steps
        if self.has_eval and (terminated or (self.cfg.eval_every and steps_taken % self.cfg.eval_every == 0)):
            info["eval"] = self.engine.evaluate(k=self.cfg.eval_k)
            self.score = _mean_accuracy(info["eval"])
        info["score"] = self.score
        self.timings = {  # wall clock: the machine's, not the env's, so not in info (see `timings`)
            "time/window_s": time.perf_counter() - t0,
            "time/rollout_s": sum(s.rollout_s for s in window.steps),
            "time/teacher_s": sum(s.teacher_s for s in window.steps),
            "time/update_s": sum(s.update_s for s in window.steps),
        }
        self.step_timings = [_timed(m) for m in metrics]
        return self._obs(), float(terms["reward"]), terminated, False, info

    def state_dict(self) -> dict:
        """The episode's state (engine included) for a checkpoint; the warm-started snapshot that
        `reset` restores is not in it (the env is rebuilt from the same cached warm start)."""
        spec.check_started(hasattr(self, "steps_done"))
        return {
            "engine": self.engine.state_dict(),
            "steps_done": self.steps_done,
            "probe_start": self.probe_start,
            "score": self.score,
            "ema_bands": dict(self.ema_bands),
            "grounded_prev": self.grounded_prev,
            "np_random": self.np_random.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue the episode of `state_dict()` (call instead of `reset`)."""
        self.engine.load_state_dict(state["engine"])
        self.steps_done, self.probe_start = int(state["steps_done"]), float(state["probe_start"])
        self.score = float(state["score"])
        self.ema_bands = {str(k): float(v) for k, v in state.get("ema_bands", {}).items()}
        prev = state.get("grounded_prev")
        self.grounded_prev = None if prev is None else float(prev)
        self.np_random.bit_generator.state = state["np_random"]

    def _update_bands(self, window) -> None:
        """The per-band observation: each band's rollout accuracy, an EMA over the updates that drew
        the band (the engine's stats decay; the first value taken as is)."""
        decay = self.engine.cfg.stats_decay
        for s in window.steps:
            for band, value in s.band_accuracy.items():
                old = self.ema_bands.get(band)
                self.ema_bands[band] = value if old is None else decay * old + (1 - decay) * value

    def _obs(self) -> np.ndarray:
        ema = self.engine.stats.values
        probe = ema.get("probe_nll", self.probe_start)
        obs = spec.make_observation(
            progress=self.steps_done / self.cfg.total_steps,
            ema_alpha=ema.get("alpha", 0.0),
            ema_loss=ema.get("loss", 0.0),
            ema_mismatch=ema.get("mismatch", 0.0),
            probe_ratio=probe / self.probe_start if self.probe_start > 0 else 1.0,
            confidence=ema.get("confidence", 0.0),
        )
        return spec.with_bands(obs, [self.ema_bands.get(b, 0.0) for b in self.bands])


def _timed(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if k.startswith("time/")}


def _untimed(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}


def _mean_accuracy(evaluation: dict[str, float]) -> float:
    """The env's score: the mean greedy accuracy over the bands (NaN for none)."""
    accuracies = [v for k, v in evaluation.items() if k.startswith("accuracy/")]
    return float(np.mean(accuracies)) if accuracies else math.nan
