import math

import numpy as np
import pytest

from controllers.hint import HintConfig, HintController
from envs import spec

OBS = np.zeros(len(spec.OBS_NAMES), dtype=np.float32)


def feed(ctl: HintController, successes: list[float], key: str = "stats/rollout_accuracy") -> list[float]:
    alphas = []
    for s in successes:
        action = ctl.act(OBS)
        alphas.append(float(action[0]))
        ctl.observe(OBS, action, 0.0, OBS, False, False, {"score": math.nan} | {key: s})
    return alphas + [float(ctl.act(OBS)[0])]


def make(**kw) -> HintController:
    return HintController(spec.observation_space(), spec.action_space(), HintConfig(**kw))


def test_ghpo_raises_while_rollouts_fail_lowers_as_they_succeed_and_holds_between():
    alphas = feed(make(kind="ghpo", alpha0=0.5, step=0.25), [0.0, 0.1, 0.5, 0.9, 0.9, 0.9, 0.9])
    assert alphas == pytest.approx([0.5, 0.75, 1.0, 1.0, 0.75, 0.5, 0.25, 0.0])  # clipped at both ends


def test_paint_reveals_in_proportion_to_failure():
    alphas = feed(make(kind="paint", decay=0.5, alpha_min=0.2, alpha_max=0.8), [0.0, 1.0])
    assert alphas == pytest.approx([0.5, 0.8, 0.5])  # EMA 0 -> alpha_max; EMA 0.5 -> the middle


def test_without_a_success_signal_alpha_holds_and_score_is_the_fallback():
    ctl = make(kind="ghpo")
    assert feed(ctl, [math.nan, math.nan]) == pytest.approx([0.5, 0.5, 0.5])
    assert feed(ctl, [0.0], key="score")[-1] == pytest.approx(0.75)  # the mock: competence


def test_per_band_a_band_no_problem_drew_holds_instead_of_reading_the_overall_score():
    bands = ("a", "b", "c", "d")
    ctl = HintController(spec.observation_space(bands), spec.action_space(4), HintConfig(kind="ghpo"))
    obs = np.zeros(len(spec.observation_names(bands)), dtype=np.float32)
    action = ctl.act(obs)
    info = {"score": 0.8, "stats/rollout_accuracy": 0.4, "band_accuracy": [0.1, math.nan, 0.5, math.nan]}
    ctl.observe(obs, action, 0.0, obs, False, False, info)
    assert ctl.act(obs) == pytest.approx([0.75, 0.5, 0.5, 0.5])  # fails: up, no signal, dead band, none


def test_state_round_trips_and_reset_starts_again():
    ctl = make()
    feed(ctl, [0.0])
    other = make()
    other.load_state_dict(ctl.state_dict())
    assert other.act(OBS)[0] == ctl.act(OBS)[0] == pytest.approx(0.75)
    other.reset(seed=1)
    assert other.act(OBS)[0] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "kw, message",
    [({"kind": "gpho"}, "kind must be one of"), ({"alpha0": 0.9, "alpha_max": 0.8}, "alpha_min <= alpha0"),
     ({"low": 0.8, "high": 0.2}, "low <= high"), ({"step": 0.0}, "step must be in"),
     ({"decay": 1.0}, "decay must be in"), ({"alpha0": math.nan}, "alpha0 must be in")],
)  # fmt: skip
def test_bad_configs_say_which_rule(kw, message):
    with pytest.raises(ValueError, match=message):
        HintConfig(**kw)
