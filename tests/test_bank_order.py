"""read_bank's run order follows what the runs recorded, not the random ids in their file names: the
order is the surrogate fit's summation order, fit_report's folds and the index of the starts it
draws, so the same runs recorded again must fit the same."""

import shutil
import uuid
from pathlib import Path

import numpy as np

import envs.bank as bank_mod
from envs.bank import read_bank
from envs.mock_env import MockConfig, MockExposureEnv
from envs.surrogate_env import fit_report, fit_surrogate

SHIPPED = Path(__file__).resolve().parents[1] / "banks" / "embedded"


def _contents(bank):
    return [[run["start"], *run["windows"]] for run in bank.runs]


def test_a_bank_copied_under_other_ids_reads_and_fits_the_same(tmp_path):
    """The shipped bank under new ids, chosen to reverse the name order of each tag's files (four
    fixed:alpha=... runs of one seed share a tag): the same runs in the same order, the same fit."""
    paths = sorted(SHIPPED.glob("*.jsonl"))
    for i, path in enumerate(paths):
        tag = path.stem.rpartition("__")[0]
        shutil.copy(path, tmp_path / f"{tag}__{len(paths) - i:08x}.jsonl")
    shipped, copied = read_bank(SHIPPED), read_bank(tmp_path)
    assert _contents(copied) == _contents(shipped)
    assert copied.meta == shipped.meta and copied.config == shipped.config
    a, b = fit_surrogate(shipped), fit_surrogate(copied)
    assert np.array_equal(a.w_step, b.w_step) and np.array_equal(a.w_score, b.w_score)
    assert np.array_equal(a.sd_step, b.sd_step) and np.array_equal(a.starts, b.starts)
    assert fit_report(copied) == fit_report(shipped)
    # within a tag the runs go by what they recorded: the fixed exposures of seed 111 in alpha order
    fixed = [run["windows"][0]["action"][0] for run in shipped.runs if "__fixed__111__" in run["name"]]
    assert fixed == [0.25, 0.5, 0.75, 1.0]


def _record(directory: Path, alpha: float) -> None:
    env = bank_mod.BankRecorder(MockExposureEnv(MockConfig(total_steps=20)), directory, tag="mock__fixed__1")
    env.reset(seed=0)
    done = False
    while not done:
        done = env.step(np.array([alpha], dtype=np.float32))[2]
    env.close()


def test_runs_recorded_in_another_order_under_other_ids_read_the_same(tmp_path, monkeypatch):
    """Three fixed exposures of one tag recorded in two orders, each file's id following the order of
    recording (so the name order is the recording order): one order of runs. The tag is recorded in
    the meta line, and counts where a file was renamed without it."""
    counter = iter(range(1, 100))
    monkeypatch.setattr(bank_mod.uuid, "uuid4", lambda: uuid.UUID(int=next(counter) << 96))
    for directory, alphas in ((tmp_path / "up", (0.2, 0.5, 0.9)), (tmp_path / "down", (0.9, 0.5, 0.2))):
        for alpha in alphas:
            _record(directory, alpha)
    up, down = read_bank(tmp_path / "up"), read_bank(tmp_path / "down")
    assert _contents(up) == _contents(down)
    assert [round(run["windows"][0]["action"][0], 6) for run in up.runs] == [0.2, 0.5, 0.9]
    assert up.meta["tag"] == "mock__fixed__1"
    assert np.array_equal(fit_surrogate(up).w_step, fit_surrogate(down).w_step)
    renamed = sorted((tmp_path / "down").glob("*.jsonl"))[0]  # the 0.9 run, named outside any tag
    renamed.rename(renamed.with_name("zz-my-run.jsonl"))
    assert _contents(read_bank(tmp_path / "down")) == _contents(up)


def test_a_recorder_makes_its_file_at_its_first_record(tmp_path):
    """The file and its meta line were made as the recorder was built: a run refused right after
    (a controller_init that does not fit) left a file of its config alone, which blocked the bank's
    fit as a mismatch with the runs recorded there."""
    from envs.bank import BankRecorder

    refused = BankRecorder(MockExposureEnv(total_steps=20), tmp_path, tag="refused")
    refused.close()
    assert list(tmp_path.iterdir()) == []
    env = BankRecorder(MockExposureEnv(), tmp_path, tag="run")
    env.reset(seed=0)
    env.step(np.array([0.5], np.float32))
    env.close()
    assert [p.name for p in tmp_path.iterdir()] == [env.path.name] and read_bank(tmp_path).windows == 1
