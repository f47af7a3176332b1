import sys

import pytest
import torch

import atesd.threads as th


class FakeMachine:
    """A 2-core machine whose other processes keep `others` cores busy (monotonic clock, /proc/stat and
    this process's CPU time all simulated)."""

    def __init__(self, monkeypatch, others: float, own: float = 1.0, cpus=(0, 1), quota=float("inf")) -> None:
        self.t, self.busy, self.own, self.others, self.own_rate = 0.0, 0.0, 0.0, others, own
        monkeypatch.setattr(th, "allowed_cpus", lambda: list(cpus))
        monkeypatch.setattr(th, "cpu_quota", lambda: quota)
        monkeypatch.setattr(th, "_busy_seconds", lambda cpus=None: self.busy)
        monkeypatch.setattr(th, "_own_seconds", lambda: self.own)
        monkeypatch.setattr(th.time, "monotonic", lambda: self.t)
        monkeypatch.setattr(th.time, "sleep", self.advance)

    def advance(self, seconds: float) -> None:
        self.t += seconds
        self.own += self.own_rate * seconds
        self.busy += (self.others + self.own_rate) * seconds


@pytest.fixture(autouse=True)
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("others, want", [(0.0, 2), (0.1, 2), (0.6, 1), (1.0, 1), (2.0, 1)])
def test_threads_follow_the_cores_others_leave_free(monkeypatch, others, want):
    machine = FakeMachine(monkeypatch, others)
    follower = th.FreeCoreThreads()
    assert follower.threads == want and torch.get_num_threads() == want
    machine.others = 0.0  # the other job ends: the next window takes both cores back
    machine.advance(5.0)
    assert follower.update() == 2 and torch.get_num_threads() == 2


def test_own_threads_do_not_count_as_others(monkeypatch):
    FakeMachine(monkeypatch, others=0.0, own=2.0)  # this process keeps both cores busy itself
    assert th.FreeCoreThreads().threads == 2


def test_the_cores_are_those_the_process_may_use(monkeypatch):
    """A cpuset (taskset, Slurm, docker --cpuset-cpus) or a cgroup quota (docker --cpus) bounds the
    threads on an idle machine, where the machine's core count would oversubscribe them."""
    FakeMachine(monkeypatch, others=0.0, cpus=(3,))
    assert th.FreeCoreThreads().threads == 1
    FakeMachine(monkeypatch, others=0.0, cpus=(0, 1), quota=0.5)
    assert th.FreeCoreThreads().threads == 1


def test_busy_time_is_counted_on_the_allowed_cpus(monkeypatch, tmp_path):
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  30 0 10 500 5 0 0 0 0 0\ncpu0 10 0 0 250 0 0 0 0 0 0\ncpu1 20 0 10 250 5 0 0 0 0 0\n"
    )
    monkeypatch.setattr(th, "_PROC_STAT", str(stat))
    tick = th.os.sysconf("SC_CLK_TCK")
    assert th._busy_seconds() == 40 / tick and th._busy_seconds([1]) == 30 / tick
    assert th._busy_seconds([0, 1]) == 40 / tick
    assert (
        th._busy_seconds([7]) == 40 / tick
    )  # numbered otherwise here (a container's view): the whole machine
    cpu_max = tmp_path / "cpu.max"
    monkeypatch.setattr(th, "_CGROUP_CPU_MAX", str(cpu_max))
    for text, quota in (("150000 100000", 1.5), ("max 100000", float("inf"))):
        cpu_max.write_text(text)
        assert th.cpu_quota() == quota


def test_without_proc_stat_the_maximum_is_kept(monkeypatch):
    monkeypatch.setattr(th, "_busy_seconds", lambda cpus=None: None)
    follower = th.FreeCoreThreads(max_threads=3, probe_s=0)
    assert follower.update() == 3 and torch.get_num_threads() == 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
def test_proc_stat_is_read_on_linux():
    cpus = th.allowed_cpus()
    one, allowed = th._busy_seconds(cpus[:1]), th._busy_seconds(cpus)  # read before the total: never above it
    busy = th._busy_seconds()
    assert busy is not None and busy > 0
    assert one is not None and allowed is not None and 0 < one <= allowed <= busy


def test_set_threads():
    assert th.set_threads(1) is None and torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="threads must be >= 0"):
        th.set_threads(-1)
    assert isinstance(th.set_threads(0), th.FreeCoreThreads)


@pytest.mark.parametrize("name", ["beta_reinforce", "ppo"])
def test_a_controller_computes_the_same_whatever_the_thread_count_and_gives_it_back(name):
    """Under threads=0 the count follows the machine's load from window to window. A controller built
    and run at 2 threads (switching to 1 and back between episodes) ends with the weights and alphas of
    one run at 1 thread; before, its orthogonal init (a QR) and its updates moved in the last bits, and
    a resumed mock run differed from the uncut one when the load differed."""
    from controllers import CONTROLLERS
    from controllers.base import run_episode
    from envs.mock_env import MockExposureEnv

    cls, cfg_cls = CONTROLLERS[name]
    runs = []
    for counts in ([1, 1, 1, 1], [2, 1, 2, 2]):
        torch.set_num_threads(counts[0])
        env = MockExposureEnv(total_steps=50)
        controller = cls(env.observation_space, env.action_space, cfg_cls())
        alphas = []
        for episode, threads in enumerate(counts):
            torch.set_num_threads(threads)
            alphas += run_episode(env, controller, seed=episode).alphas
            assert torch.get_num_threads() == threads  # the caller's count is given back
        runs.append((alphas, controller.state_dict()))
    (alphas_1, state_1), (alphas_2, state_2) = runs
    assert alphas_1 == alphas_2
    tensors_1, tensors_2 = _tensors(state_1), _tensors(state_2)
    assert len(tensors_1) > 4 and all(torch.equal(a, b) for a, b in zip(tensors_1, tensors_2, strict=True))


def _tensors(state) -> list[torch.Tensor]:
    """Every tensor of a nested state dict, in order (weights, optimiser moments)."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for v in state.values() for t in _tensors(v)]
    if isinstance(state, list | tuple):
        return [t for v in state for t in _tensors(v)]
    return []
