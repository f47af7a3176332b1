r"""Fit a surrogate env to a bank of logged runs, report its error on held-out runs, and pre-train a
controller on it for many episodes; the saved controller then goes on learning on the real env.

    # 1. record a bank of your own (banks/embedded is the shipped one, seeds 110-113): any run.py or
    #    bench.py run with bank_dir set records every window
    python recipes/bench.py --env real --seeds 110-113 --workers 2 --set bank_dir=banks/mine \
        --controllers fixed:alpha=0.25,fixed:alpha=0.5,fixed:alpha=0.75,fixed:alpha=1,random
    # 2. fit, report the fit error, pre-train (a few CPU minutes)
    python recipes/surrogate.py --bank banks/mine --controller beta_reinforce --episodes 2000
    # 3. continue on the real env from the pre-trained state (the command printed at the end, with
    #    the --config and --set given to step 2)
    python recipes/run.py --controller beta_reinforce controller_init=<out>/controller
    # or ship it as the controller's prior for the run config's env (controller_init=auto loads it);
    # one prior per controller: one shipped for another config is replaced only with --force
    python recipes/surrogate.py --bank banks/mine --controller beta_reinforce --episodes 10000 --ship

The surrogate (envs/surrogate_env.py) is a ridge model of each window's observation change and
reward given the observation and the exposure, with the residual noise of the fit; the fit error is
measured on whole runs held out of the fit (`--folds`), beside the error of predicting the mean, so
what the surrogate cannot predict is stated, not hidden. The controller is built from the run config
(`--config`, `--set controllers.<name>.key=value`, `seed`) for the surrogate, which carries the
bank's H, gamma and observation layout; it maximises the predicted final score (`--reward score`) or
the bank's window reward as fitted (`--reward bank`). Before pre-training, fixed exposures (`--alphas`) are
replayed in the surrogate (does it reproduce the sweep's order?); after it, the controller's own
predicted score. Writes <out>/surrogate__<YYYYmmdd-HHMMSS>/: surrogate.json
(the fitted model: `gymnasium.make("atesd/Surrogate-v0", model=PATH)`), fit.json (the fit error),
controller.{json,safetensors} (the pre-trained state) and pretrain.json (the learning curve).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atesd import config as cfglib  # noqa: E402
from atesd import priors  # noqa: E402
from atesd.progress import RewardSpec  # noqa: E402
from atesd.state import save_state  # noqa: E402
from controllers.base import mean_alpha, run_episode  # noqa: E402
from envs.bank import Bank, read_bank  # noqa: E402
from envs.mock_env import MockConfig  # noqa: E402
from envs.surrogate_env import (  # noqa: E402
    REWARDS,
    SurrogateExposureEnv,
    SurrogateModel,
    fit_report,
    fit_surrogate,
)
from recipes._progress import discard_dir, fresh_dir, progress, user_errors  # noqa: E402
from recipes._rundir import git_commit  # noqa: E402
from recipes._tables import json_safe  # noqa: E402
from recipes.common import (  # noqa: E402
    EnvFreeRunConfig,
    Once,
    RealEnvConfig,
    RunConfig,
    absolute_paths,
    build_controller,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--bank", type=Path, required=True, help="bank directory (recorded with bank_dir=DIR)"
    )
    parser.add_argument(
        "--controller",
        default=None,
        help="registered controller to pre-train (config field `controller`; default beta_reinforce)",
    )
    parser.add_argument(
        "--episodes", type=int, default=2000, help="pre-training episodes on the surrogate (>= 0)"
    )
    parser.add_argument(
        "--reward",
        choices=REWARDS,
        default="score",
        help="what pre-training maximises: score (the change of the predicted score each window, whose "
        "sum is the predicted final score) or bank (the bank env's window reward as the fit predicts it)",
    )
    parser.add_argument("--folds", type=int, default=5, help="leave-runs-out folds of the fit error (>= 2)")
    parser.add_argument("--l2", type=float, default=1e-3, help="ridge penalty of the fit (>= 0)")
    parser.add_argument(
        "--alphas",
        default="0,0.25,0.5,0.75,1",
        help="fixed exposures replayed in the surrogate before and beside the controller (comma list)",
    )
    parser.add_argument(
        "--config", type=Path, default=None, action=Once, help="YAML file of RunConfig fields (once)"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="RunConfig override")
    parser.add_argument("--out", type=Path, default=Path("runs"), help="parent of the output directory")
    parser.add_argument(
        "--ship",
        action="store_true",
        help="also ship the pre-trained state as the controller's prior for the run config's real env "
        "(atesd/weights/priors/, loaded by controller_init=auto); the bank must be of that env",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="with --ship: replace the controller's shipped prior even when it was pre-trained for another "
        "env or controller config (one prior per controller: runs of that config then start from their own), "
        "or for more episodes than this one",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser


def print_fit(report: dict) -> None:
    print(f"fit error on held-out runs ({report['runs']} runs, {report['windows']} windows, "
          f"{report['folds']} folds): RMSE of the surrogate / of the mean, R^2")  # fmt: skip
    for name, t in report["targets"].items():
        r2 = f"{t['r2']:+.3f}" if math.isfinite(t["r2"]) else "n/a (a constant target)"
        print(f"  {name:<28} {t['rmse']:.4g} / {t['rmse_mean']:.4g}   R^2 {r2}   (n {t['n']})")


def replay(env: SurrogateExposureEnv, act, episodes: int, seed: int) -> float:
    """Mean predicted final score of `act(obs) -> action` over `episodes` surrogate episodes."""
    scores = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        done = False
        while not done:
            obs, _, done, _, info = env.step(act(obs))
        scores.append(info["score"])
    return float(np.mean(scores))


def main(argv: list[str] | None = None) -> Path:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.episodes < 0 or args.folds < 2 or not 0 <= args.l2 < math.inf:  # NaN passed `< 0`: an all-NaN fit
        parser.error("--episodes must be >= 0, --folds >= 2, --l2 >= 0 and finite")
    if args.force and not args.ship:
        parser.error("--force needs --ship (it lets --ship replace a prior of another config)")
    written: list[Path] = []  # the output directory once it holds the surrogate and the controller
    with user_errors(args.debug, lambda: stopped_line(written)):
        return _main(args, sys.argv[1:] if argv is None else argv, written)


def stopped_line(written: list[Path]) -> str:
    if not written:
        return "pre-training stopped; nothing was saved"
    return f"stopped after the pre-trained controller was saved in {written[0]}; nothing was shipped"


def parse_alphas(text: str) -> list[float]:
    """--alphas: a comma list of exposures in [0, 1]; ConfigError in one line naming --alphas."""
    try:
        alphas = [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise cfglib.ConfigError(
            f"--alphas must be a comma list of numbers in [0, 1], got '{text}'"
        ) from None
    bad = [a for a in alphas if not 0.0 <= a <= 1.0]  # NaN too
    if bad:
        raise cfglib.ConfigError(
            f"--alphas must be a comma list of numbers in [0, 1], got {bad[0]:g} in '{text}'"
        )
    return alphas


def run_config(args: argparse.Namespace) -> RunConfig:
    """The run config of the command line: --config, then --set, then --controller (a --controller
    that a --set controller=... contradicts is refused); its local paths absolute, as run.py stores
    them (`absolute_paths`): the bank's config and a prior shipped from it name the files run.py's do."""
    overrides = cfglib.command_overrides(list(args.overrides), {"controller": args.controller})
    # the controller's H and gamma are the bank's, checked once it is read (against real.env's, a
    # lookahead that fitted the bank was refused naming real.env.hold_steps)
    return absolute_paths(cfglib.load(EnvFreeRunConfig, args.config, overrides))


def _main(args: argparse.Namespace, argv: list[str], written: list[Path]) -> Path:
    # everything given is checked, and the output directory made, before the bank is read and fitted
    # and the controller pre-trained (minutes): a bad --alphas or --out fails now, not after them
    alphas = parse_alphas(args.alphas)
    cfg = run_config(args)
    out = fresh_dir(args.out, f"surrogate__{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        return _pretrain(args, argv, written, cfg, alphas, out)
    except BaseException:  # before the controller was saved: no directory that looks like a result
        if not written:
            discard_dir(out)
        raise


def _read_bank(args: argparse.Namespace, cfg: RunConfig) -> Bank:
    """The bank of --bank, its left-out windows named; with --ship, refused if not of the run config's env."""
    bank = read_bank(args.bank)
    if bank.dropped:
        print(f"left out {len(bank.dropped)} window(s) with a non-finite observation, action or reward: "
              f"{', '.join(bank.dropped[:3])}{' ...' if len(bank.dropped) > 3 else ''}")  # fmt: skip
    if args.ship:
        check_shippable(bank, cfg)
    return bank


def _fit(
    args: argparse.Namespace, bank: Bank, seed: int, fixed_alphas: list[float]
) -> tuple[dict, SurrogateModel, SurrogateExposureEnv, dict[float, float]]:
    """The fit error (printed), the surrogate fitted to the whole bank, its env, and the fixed
    exposures' predicted final scores in it (printed)."""
    report = fit_report(bank, args.folds, args.l2, seed)
    print_fit(report)
    model = fit_surrogate(bank, args.l2)
    env = SurrogateExposureEnv(model, reward=args.reward)
    size = model.action_size
    fixed = {
        a: replay(env, lambda obs, a=a: np.full(size, a, dtype=np.float32), 50, 10**6) for a in fixed_alphas
    }
    print("fixed exposures in the surrogate (predicted final score, 50 episodes): "
          + ", ".join(f"{a:g}: {v:.3f}" for a, v in fixed.items()))  # fmt: skip
    return report, model, env, fixed


def _controller(args: argparse.Namespace, cfg: RunConfig, env: SurrogateExposureEnv):
    """The run config's controller for the surrogate env; with --ship, refused before the pre-training
    where no prior could be checked against its config, or where it would replace one of another config."""
    # H and gamma are the bank's (the surrogate carries them), whatever real.env.* or mock.* say
    controller = build_controller(cfg, env, env_key="the bank's ")
    if args.ship and not dataclasses.is_dataclass(getattr(controller, "cfg", None)):
        raise cfglib.ConfigError(
            f"--ship: a {cfg.controller} controller keeps no config dataclass as its `cfg`, so no run "
            "could tell whether the prior fits its config"
        )
    if args.ship:  # before the pre-training (minutes), not after: a prior of another config is kept
        try:
            configs = ship_configs(cfg, controller)
            priors.replacing(cfg.controller, force=args.force, episodes=args.episodes, **configs)
        except ValueError as err:
            raise cfglib.ConfigError(f"--ship: {err}") from None
    return controller


def _train(
    env: SurrogateExposureEnv, controller, episodes: int, seed: int
) -> tuple[list[float], list[float]]:
    """`episodes` pre-training episodes in the surrogate: each one's return and mean exposure."""
    returns, alphas = [], []
    with progress("pre-training", episodes) as update:
        for episode in range(episodes):
            result = run_episode(env, controller, seed=episode_seed(seed, episode))
            returns.append(float(np.sum(result.rewards)))
            alphas.append(float(np.mean([mean_alpha(a) for a in result.alphas])))
            if (episode + 1) % max(1, episodes // 100) == 0 or episode + 1 == episodes:
                update(
                    episode + 1, f"return {np.mean(returns[-100:]):.4f} alpha {np.mean(alphas[-100:]):.3f}"
                )
    return returns, alphas


def episode_seed(seed: int, episode: int) -> int:
    """Pre-training episode `episode`'s seed, from (seed, episode) through a SeedSequence (63 bits):
    `1000 seed + episode` had given seeds 0 and 1 9,000 of their 10,000 episodes in common, and seed
    1,000 the episodes the pre-trained controller is then scored on (10**6 + e)."""
    return int(np.random.SeedSequence([seed, episode]).generate_state(1, np.uint64)[0] >> 1)


def _print_curve(
    controller_name: str, episodes: int, seconds: float, returns: list[float], alphas: list[float]
) -> None:
    """The learning curve in one line (nothing when no episode ran): first and last tenth."""
    if returns:
        first, last = (
            np.mean(returns[: max(1, len(returns) // 10)]),
            np.mean(returns[-max(1, len(returns) // 10) :]),
        )
        print(f"pre-trained {controller_name} for {episodes} episodes in {seconds:.1f} s: return "
              f"{first:.4f} -> {last:.4f} (first and last tenth), mean alpha {alphas[0]:.3f} (first "
              f"episode) -> {np.mean(alphas[-max(1, len(alphas) // 10):]):.3f} (last tenth)")  # fmt: skip


def _ship(
    args: argparse.Namespace,
    argv: list[str],
    cfg: RunConfig,
    controller,
    bank: Bank,
    init: Path,
    *,
    seconds: float,
    report: dict,
    fixed: dict[float, float],
    learned: float,
) -> None:
    """Ship the saved state `init` as the controller's prior, with its provenance (the command, the
    bank, the pre-training and what it predicts in the surrogate)."""
    provenance = {
        "command": ["recipes/surrogate.py", *argv], "commit": git_commit(dirty=True),
        "date": time.strftime("%Y-%m-%d"),
        "bank": {"runs": len(bank.runs), "windows": bank.windows, "files": bank.files},
        "episodes": args.episodes, "reward": args.reward, "seconds": seconds, "fit": report["targets"],
        "fixed_in_surrogate": fixed, "controller_in_surrogate": learned,
    }  # fmt: skip
    shipped, replaced = priors.ship(
        cfg.controller, init, provenance=json_safe(provenance), force=args.force,
        **ship_configs(cfg, controller),
    )  # fmt: skip
    if replaced:
        print(replaced)
    print(f"shipped as {cfg.controller}'s prior: {shipped} (controller_init=auto loads it for this env)")


def _pretrain(
    args: argparse.Namespace,
    argv: list[str],
    written: list[Path],
    cfg: RunConfig,
    fixed_alphas: list[float],
    out: Path,
) -> Path:
    """Fit the surrogate, pre-train the controller on it and save both into `out` (appended to `written`
    once the controller is saved); with --ship, ship the controller's state as its prior."""
    bank = _read_bank(args, cfg)
    t0 = time.perf_counter()
    report, model, env, fixed = _fit(args, bank, cfg.seed, fixed_alphas)
    controller = _controller(args, cfg, env)
    returns, alphas = _train(env, controller, args.episodes, cfg.seed)
    seconds = time.perf_counter() - t0
    model.save(out / "surrogate.json")
    save_state(controller.state_dict(), out / "controller")
    written.append(out)
    learned = float(
        np.mean([run_episode(env, controller, seed=10**6 + e).final_info["score"] for e in range(50)])
    )  # the pre-trained controller over 50 more episodes (still learning, after its state was saved)
    print(f"{cfg.controller} after pre-training, in the surrogate: predicted final score {learned:.3f}")
    report |= {"bank": str(args.bank), "fixed_in_surrogate": fixed, "controller_in_surrogate": learned}
    (out / "fit.json").write_text(json.dumps(json_safe(report), indent=1))
    curve = {
        "command": ["recipes/surrogate.py", *argv], "controller": cfg.controller, "episodes": args.episodes,
        "reward": args.reward,
        "seconds": seconds, "returns": returns, "alpha_mean": alphas, "config": cfglib.to_dict(cfg),
    }  # fmt: skip
    (out / "pretrain.json").write_text(json.dumps(json_safe(curve)))
    _print_curve(cfg.controller, args.episodes, seconds, returns, alphas)
    init = out / "controller"
    print(f"wrote {out}; go on learning with {continue_command(args, cfg, init, bank)}")
    if args.ship:
        _ship(args, argv, cfg, controller, bank, init,
              seconds=seconds, report=report, fixed=fixed, learned=learned)  # fmt: skip
    return out


RUN_ENVS = {"TeacherExposureEnv": "real", "MockExposureEnv": "mock"}  # a bank's env class -> run.py's env


def continue_command(args: argparse.Namespace, cfg: RunConfig, init: Path, bank: Bank) -> str:
    """The command that goes on from the pre-trained state `init` on the env the bank was recorded on:
    run.py with the --config and --set this one was given (without them a per-band env builds a
    controller the state does not fit), `--env` where the bank's env class is another than the
    config's, and a `--set` for each key of that env's config where the bank's differs from the one
    given (another `mock.hold_steps`, say: the printed command had run another env). An env given by
    id, which run.py does not run, goes on in bench.py with the bank's `--env-set`."""
    recorded = bank.config or {}
    given = [w for override in args.overrides for w in ("--set", override)]
    given = (["--config", str(args.config)] if args.config is not None else []) + given
    if bank.meta.get("env") not in RUN_ENVS and "id" in recorded:
        env_sets = [w for k, v in recorded.items() if k != "id" for w in ("--env-set", f"{k}={_set_text(v)}")]
        words = ["python", "recipes/bench.py", "--env", str(recorded["id"]), *env_sets,
                 "--controllers", f"{cfg.controller}:init={init}", "--seeds", "1", *given]  # fmt: skip
        return shlex.join(words)
    env = RUN_ENVS.get(bank.meta.get("env") or "", cfg.env)
    words = ["python", "recipes/run.py", "--controller", cfg.controller]
    words += ["--env", env] if env != cfg.env else []
    if recorded:
        tree, defaults = (cfg.mock, MockConfig()) if env == "mock" else (cfg.real, RealEnvConfig())
        have = priors.absolute_paths(cfglib.to_dict(tree))
        for key, value, _ in priors.differences(
            have, priors.absolute_paths(recorded), priors.IGNORED, cfglib.to_dict(defaults)
        ):
            if value != priors.ABSENT and key in priors.flat(have):  # a key this code no longer has: left out
                given += ["--set", f"{env}.{key}={_set_text(value)}"]
    return shlex.join([*words, *given, f"controller_init={init}"])


def _set_text(value: Any) -> str:
    """`value` as the text of a --set that reads back as it (YAML; JSON where plain text would not)."""
    text = value if isinstance(value, str) else json.dumps(value)
    try:
        return text if cfglib.parse_value(text, text) == value else json.dumps(value)
    except cfglib.ConfigError:
        return json.dumps(value)


def ship_configs(cfg: RunConfig, controller) -> dict:
    """The configs `priors.ship` and `priors.replacing` take: the run config's real env and the
    controller's, with their defaults (a key a shipped prior's record predates compares at its default)."""
    return {
        "env_cfg": cfglib.to_dict(cfg.real),
        "controller_cfg": cfglib.to_dict(controller.cfg),
        "env_defaults": cfglib.to_dict(RealEnvConfig()),
        "controller_defaults": cfglib.to_dict(type(controller.cfg)()),
    }


def check_shippable(bank, cfg: RunConfig) -> None:
    """A prior is shipped for the run config's real env: refuse a bank of another env (local paths
    compared absolute: a bank recorded before run.py stored them so holds them relative)."""
    want = RewardSpec.of(cfg.real.env)._asdict()
    if bank.meta.get("env") != "TeacherExposureEnv" or bank.meta.get("reward_spec") != want:
        raise cfglib.ConfigError(
            f"--ship: the bank is of {bank.meta.get('env')} with reward {bank.meta.get('reward_spec')}, not "
            f"of this run config's real env (reward {want}); pass the config it was recorded with"
        )
    if bank.unconfigured:  # recorded without its config (a bank from before configs were kept)
        # trusted for the embedded default only, the config banks/embedded was recorded at: a prior
        # shipped for another config from it was loaded by controller_init=auto for runs it never saw
        default = priors.first_difference(
            priors.absolute_paths(cfglib.to_dict(RunConfig().real)),
            priors.absolute_paths(cfglib.to_dict(cfg.real)),
            priors.IGNORED,
        )
        if default is not None:
            key, mine, theirs = default
            raise cfglib.ConfigError(
                f"--ship: {bank.unconfigured} of the bank's {bank.files} files record no env config, and "
                f"this run config is not the embedded default (real.{key}={mine}, the default's {theirs}): "
                "record a bank at this config (bank_dir=DIR keeps it) to ship a prior for it"
            )
        warnings.warn(
            f"--ship: {bank.unconfigured} of the bank's {bank.files} files record no env config: the prior "
            "is shipped for the embedded default, the config they are taken to be recorded at",
            stacklevel=2,
        )
    recorded = bank.config
    diff = (
        priors.first_difference(
            priors.absolute_paths(recorded),
            priors.absolute_paths(cfglib.to_dict(cfg.real)),
            priors.IGNORED,
            cfglib.to_dict(RealEnvConfig()),
        )
        if recorded
        else None
    )
    if diff is not None:
        key, mine, theirs = diff
        raise cfglib.ConfigError(
            f"--ship: this run config has real.{key}={mine}, the bank was recorded at {theirs}"
        )


if __name__ == "__main__":
    main()
