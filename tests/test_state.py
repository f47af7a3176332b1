"""atesd/state.py: nested states with tensors through safetensors + JSON, and what it refuses."""

from pathlib import Path

import numpy as np
import pytest
import torch

from atesd.state import load_state, save_state


def test_a_nested_state_round_trips(tmp_path):
    state = {"w": torch.arange(12.0).reshape(3, 4).T, "n": np.arange(3), 1: [torch.ones(2), 0.5, None]}
    save_state(state, tmp_path / "s")  # a transposed (non-contiguous) tensor is stored as its values
    back = load_state(tmp_path / "s")
    assert torch.equal(back["w"], state["w"]) and np.array_equal(back["n"], state["n"])
    assert torch.equal(back[1][0], torch.ones(2)) and back[1][1:] == [0.5, None]


def test_a_pruned_load_reads_those_parts_as_empty_and_leaves_their_arrays_unread(tmp_path, monkeypatch):
    """Under FSDP the ranks other than rank 0 resume without the weights and optimiser state, which rank 0
    broadcasts into their shards: each read them whole (4 models' worth of host memory per rank)."""
    import safetensors

    shared = torch.ones(3)  # saved once, under the pruned path, and referred to from outside it too
    state = {"env": {"engine": {"student": {"w": shared, "big": torch.zeros(1000)}, "rng": torch.arange(4)},
                     "also": shared, "steps": 7}}  # fmt: skip
    save_state(state, tmp_path / "s")
    read = []
    real = safetensors.safe_open

    class Recording:
        def __init__(self, *args, **kwargs):
            self.f = real(*args, **kwargs)

        def __enter__(self):
            self.f.__enter__()
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def get_tensor(self, key):
            read.append(key)
            return self.f.get_tensor(key)

    monkeypatch.setattr("atesd.state.safe_open", Recording)
    back = load_state(tmp_path / "s", prune=["/env/engine/student"])
    assert back["env"]["engine"]["student"] == {} and back["env"]["steps"] == 7
    assert torch.equal(back["env"]["engine"]["rng"], torch.arange(4)) and torch.equal(
        back["env"]["also"], shared
    )
    assert sorted(read) == ["/env/engine/rng", "/env/engine/student/w"]  # not the 1000 zeros
    assert torch.equal(load_state(tmp_path / "s")["env"]["engine"]["student"]["big"], torch.zeros(1000))


def test_states_whose_names_hold_a_dot_are_two_states_and_numpy_bools_save(tmp_path):
    """The suffix replaced the name's last dot: `ctl_alpha0.25` and `ctl_alpha0.75` were both written
    as `ctl_alpha0.*`, the second overwriting the first. A numpy bool (a comparison of numpy floats)
    was refused as "cannot serialise bool"."""
    for centre in (0.25, 0.75):
        save_state({"centre": centre, "wide": np.float64(centre) > 0.5}, tmp_path / f"ctl_alpha{centre}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ctl_alpha0.25.json", "ctl_alpha0.25.safetensors", "ctl_alpha0.75.json", "ctl_alpha0.75.safetensors",
    ]  # fmt: skip
    assert load_state(tmp_path / "ctl_alpha0.25") == {"centre": 0.25, "wide": False}
    assert load_state(tmp_path / "ctl_alpha0.75") == {"centre": 0.75, "wide": True}


def test_two_tensors_that_would_share_a_name_are_refused(tmp_path):
    with pytest.raises(TypeError, match="would be stored as /1"):
        save_state({1: torch.ones(1), "1": torch.zeros(1)}, tmp_path / "s")
    with pytest.raises(TypeError, match="would be stored as /a/b"):
        save_state({"a/b": torch.ones(1), "a": {"b": torch.zeros(1)}}, tmp_path / "t")


def test_a_save_hashes_only_the_new_checkpoint_and_keeps_the_newest(tmp_path, monkeypatch):
    """Pruning judges the kept checkpoints by manifest and size: a save reads back only what it wrote
    (it used to re-hash every kept checkpoint, GBs a window for a real model); a truncated older one
    still does not count as complete, and load_latest verifies every checksum."""
    from atesd import checkpoint

    for i in range(3):
        checkpoint.save(tmp_path, i, {"w": torch.full((4,), float(i))}, keep=2)
    hashed = []
    real = checkpoint._sha256
    monkeypatch.setattr(checkpoint, "_sha256", lambda p: hashed.append(p.parent.name) or real(p))
    checkpoint.save(tmp_path, 3, {"w": torch.full((4,), 3.0)}, keep=2)
    assert set(hashed) == {".tmp-ckpt-000003"}
    assert [p.name for p in sorted(tmp_path.glob("ckpt-*"))] == ["ckpt-000002", "ckpt-000003"]
    with (tmp_path / "ckpt-000003" / "state.safetensors").open("r+b") as f:  # same size, other bytes
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(b"\xff" if last != b"\xff" else b"\x00")
    state, ckpt = checkpoint.load_latest(tmp_path, warn=lambda m: None)
    assert ckpt.name == "ckpt-000002" and float(state["w"][0]) == 2.0
    assert checkpoint.problem(tmp_path / "ckpt-000003", verify=False) is None  # the size check alone
    (tmp_path / "ckpt-000002" / "state.json").write_text("{}")  # truncated
    assert "bytes, the manifest says" in checkpoint.problem(tmp_path / "ckpt-000002", verify=False)


def test_a_checkpoint_whose_removal_was_cut_short_is_cleared_by_the_next_save(tmp_path):
    """Ctrl-C while an old checkpoint was pruned left it half deleted, and pruning (complete ones
    only) never removed it: model-sized disk space that never came back."""
    from atesd import checkpoint

    for i in range(2):
        checkpoint.save(tmp_path, i, {"w": torch.full((4,), float(i))}, keep=2)
    (tmp_path / "ckpt-000000" / "state.json").unlink()  # as a cut rmtree leaves it
    (tmp_path / ".tmp-ckpt-000001x").mkdir()  # a renamed one a cut removal left
    checkpoint.save(tmp_path, 2, {"w": torch.full((4,), 2.0)}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000001", "ckpt-000002"]


def test_a_save_after_resuming_from_an_older_checkpoint_keeps_what_it_wrote(tmp_path):
    """Resumed from checkpoint 1 (the newer 3 refused: corrupted, or past the logs), the run's next
    save (2) counted 3 as complete and, keeping 1, pruned the checkpoint it had just written: the
    run held no usable checkpoint until it passed 3, and every kill restarted it from window 0."""
    from atesd import checkpoint

    for i in (1, 3):
        checkpoint.save(tmp_path, i, {"w": torch.full((4,), float(i))}, keep=2)
    checkpoint.save(tmp_path, 2, {"w": torch.full((4,), 2.0)}, keep=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000002"]
    state, ckpt = checkpoint.load_latest(tmp_path, warn=lambda m: None)
    assert ckpt.name == "ckpt-000002" and float(state["w"][0]) == 2.0


def test_checkpoints_past_window_999999_keep_their_order(tmp_path):
    """Named ckpt-NNNNNN and sorted as text, ckpt-1000000 came before ckpt-999995: a save kept only
    one, removing the older as "a timeline the run left", and a resume took the older."""
    from atesd import checkpoint

    for i in (999995, 1000000):
        checkpoint.save(tmp_path, i, {"w": torch.full((2,), float(i))}, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-1000000", "ckpt-999995"]
    state, ckpt = checkpoint.load_latest(tmp_path, warn=lambda m: None)
    assert ckpt.name == "ckpt-1000000" and float(state["w"][0]) == 1000000.0


def test_a_state_file_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """save_state wrote in place: a kill mid-write left a truncated file (a safetensors traceback on
    the next load). Now a failed write leaves the file it would have replaced."""
    import atesd.state as state_mod

    save_state({"w": torch.ones(3)}, tmp_path / "s")

    def cut(tensors, path):
        Path(path).write_bytes(b"cut")
        raise KeyboardInterrupt

    monkeypatch.setattr(state_mod, "save_file", cut)
    with pytest.raises(KeyboardInterrupt):
        save_state({"w": torch.zeros(3)}, tmp_path / "s")
    assert torch.equal(load_state(tmp_path / "s")["w"], torch.ones(3))
