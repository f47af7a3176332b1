"""Benchmark of the env layer (a script, not a test; numbers go to docs/BENCHMARKS.md).

    python recipes/bench_controllers.py            # ~20 s on one core
    python recipes/bench_controllers.py --probe-noise   # ~1 minute: the real env's tracked-loss noise

1. The mock env's speed (env steps per second, a fixed action), bare and through gymnasium.make.
2. Each registered controller's overhead per decision (act + observe, learning updates included,
   on the mock env) against the wall time of one real window of the embedded default
   (H = 5 student updates; measured here when the warm start is cached, else skipped).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import envs  # noqa: E402, F401  (registers the atesd/ envs)
from controllers import CONTROLLERS  # noqa: E402
from controllers.base import run_episode  # noqa: E402
from envs.mock_env import MockExposureEnv  # noqa: E402


def mock_steps_per_second(seconds: float = 2.0, make: bool = False) -> float:
    """Env steps per second with a fixed action; `make`: through gymnasium.make and its wrappers."""
    env = gym.make("atesd/MockExposure-v0") if make else MockExposureEnv()
    env.reset(seed=0)
    action = np.array([0.5], dtype=np.float32)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        if env.step(action)[2]:
            env.reset()
        n += 1
    return n / (time.perf_counter() - t0)


def controller_overhead(name: str, env_rate: float, episodes: int = 5) -> float:
    """Mean seconds per decision spent inside the controller and the loop (episode time minus the
    env's own time at `env_rate` steps per second)."""
    cls, cfg_cls = CONTROLLERS[name]
    env = MockExposureEnv()
    controller = cls(env.observation_space, env.action_space, cfg_cls())
    env_time, total, decisions = 0.0, 0.0, 0
    for ep in range(episodes):
        t0 = time.perf_counter()
        result = run_episode(env, controller, seed=ep)
        total += time.perf_counter() - t0
        decisions += result.steps
        env_time += result.steps / env_rate
    return max(0.0, total - env_time) / decisions


def real_window_seconds(windows: int = 3) -> float | None:
    """Mean wall time of one step of the real env on the embedded default (H = 5 student updates),
    after one warm-up step; None where the warm start is neither shipped nor cached (training it
    takes minutes)."""
    from atesd.models import TinyModelConfig
    from atesd.tasks.synthetic import ChainBagTask
    from atesd.warmstart import WarmStartConfig, locate
    from envs.exposure_env import TeacherExposureEnv

    if locate(ChainBagTask().cfg, TinyModelConfig(), WarmStartConfig())[0] is None:
        return None
    env = TeacherExposureEnv()
    env.reset(seed=0)
    action = np.array([0.5], dtype=np.float32)
    env.step(action)  # warm-up
    t0 = time.perf_counter()
    for _ in range(windows):
        env.step(action)
    return (time.perf_counter() - t0) / windows


def probe_noise(alpha: float = 0.75, windows: int = 20) -> None:
    """Per-update drops of the real env's tracked loss (probe NLL) from the cached warm start: their
    mean and std over the first and last quarter of `windows` windows (the mock's noise, in context)."""
    from envs.exposure_env import TeacherExposureEnv

    env = TeacherExposureEnv()
    env.reset(seed=0)
    losses: list[float] = []
    for _ in range(windows):
        window = env.step(np.array([alpha], dtype=np.float32))[4]["losses"]
        losses += list(window) if not losses else list(window[1:])
    drops = -np.diff(np.asarray(losses))
    q = len(drops) // 4
    print(f"probe NLL per update at alpha {alpha}: {losses[0]:.4f} -> {losses[-1]:.4f}")
    for name, part in (("first quarter", drops[:q]), ("last quarter", drops[-q:])):
        ratio = part.mean() / part.std()
        print(f"  {name}: mean drop {part.mean():.5f}, std {part.std():.5f}, mean / std {ratio:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--probe-noise",
        action="store_true",
        help="instead: the real env's tracked-loss noise over 20 windows at alpha 0.75 (~1 minute)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.probe_noise:
        probe_noise()
        return 0
    mock_rate = mock_steps_per_second()
    print(f"mock env: {mock_rate:,.0f} steps/s (no wrappers, fixed action)")
    print(f"mock env via gymnasium.make: {mock_steps_per_second(make=True):,.0f} steps/s (default wrappers)")
    window = real_window_seconds()
    if window:
        print(f"real env step (embedded default: H = 5 updates, 32 prompts each): {window:.2f} s")
    else:
        print("real env step: skipped (no cached warm start; run recipes/sweep.py or the tests first)")
    for name in CONTROLLERS:
        overhead = controller_overhead(name, mock_rate)
        share = f"{100 * overhead / window:.3f}% of a real window" if window else ""
        print(f"  {name:15s} {1e3 * overhead:8.3f} ms per decision  {share}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
