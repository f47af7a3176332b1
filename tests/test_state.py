"""atesd/state.py: nested states with tensors through safetensors + JSON, and what it refuses."""

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


def test_two_tensors_that_would_share_a_name_are_refused(tmp_path):
    with pytest.raises(TypeError, match="would be stored as /1"):
        save_state({1: torch.ones(1), "1": torch.zeros(1)}, tmp_path / "s")
    with pytest.raises(TypeError, match="would be stored as /a/b"):
        save_state({"a/b": torch.ones(1), "a": {"b": torch.zeros(1)}}, tmp_path / "t")
