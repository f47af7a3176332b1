"""What a checkpoint costs in host memory: the snapshot copies each tensor once (tied weights once), and
counting and saving it copy nothing more. A full fine-tune's state is the size of the model and its
optimiser (~131 GB for an 8B model): each extra copy was that much more RAM."""

import gc
import weakref

import numpy as np
import torch
from safetensors import safe_open

import atesd.state as state_mod
from atesd import checkpoint
from atesd.engine import DistillEngine, EngineConfig, SamplingConfig
from atesd.state import cpu_copy, flatten_state, load_state, save_state, state_bytes


class Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(8, 4)
        self.body = torch.nn.Linear(4, 4)
        self.lm_head = torch.nn.Linear(4, 8, bias=False)
        self.lm_head.weight = self.embed_tokens.weight


def test_a_tied_pair_is_one_tensor_in_the_snapshot_and_never_the_live_one():
    """state_dict() gives the tied pair as two tensor objects over one storage: the copy deduplicated by
    id() held (and a checkpoint wrote) the head twice."""
    model = Tied()
    live = model.state_dict()
    assert live["embed_tokens.weight"] is not live["lm_head.weight"]  # what the id() memo missed
    snap = cpu_copy({"student": live, "again": [live["lm_head.weight"]]})
    head = snap["student"]["lm_head.weight"]
    assert head is snap["student"]["embed_tokens.weight"] and head is snap["again"][0]
    before = head.clone()
    with torch.no_grad():  # training goes on: the snapshot must not see it
        model.embed_tokens.weight.add_(1.0)
        model.body.weight.add_(1.0)
    assert torch.equal(head, before) and not torch.equal(snap["student"]["body.weight"], model.body.weight)
    # the same storage seen as other views is not one tensor: each keeps its own values
    w = torch.arange(6.0).reshape(2, 3)
    views = cpu_copy([w, w.T, w[1], w.view(3, 2)])
    assert len({id(v) for v in views}) == 4
    assert all(torch.equal(c, v) for c, v in zip(views, [w, w.T, w[1], w.view(3, 2)]))


def test_a_tensor_the_caller_made_for_the_copy_can_be_kept_as_it_is():
    """The memo maps a view to its copy: a caller holding tensors made for this snapshot alone (gathered
    whole on the CPU) can seed it and they are not copied a second time."""
    fresh, live = torch.ones(3), torch.zeros(3)
    snap = cpu_copy({"fresh": fresh, "live": live}, memo={state_mod.view_key(fresh): fresh})
    assert snap["fresh"] is fresh and snap["live"] is not live


def test_counting_the_bytes_of_a_state_copies_nothing(monkeypatch):
    """state_bytes flattened the state, a clone of every tensor, only to count them."""
    model = Tied()
    state = {"student": model.state_dict(), "n": np.zeros(5, dtype=np.float64), "w": torch.ones(3, 2).T}
    clones = []
    real = torch.Tensor.clone
    monkeypatch.setattr(torch.Tensor, "clone", lambda t, *a, **k: clones.append(t.shape) or real(t, *a, **k))
    total = state_bytes(state)
    assert clones == []
    params = sum(p.numel() * 4 for p in model.parameters())  # the tied weight once, as it is stored
    assert total == params + 5 * 8 + 6 * 4


def test_saving_writes_contiguous_cpu_tensors_as_they_are_and_frees_what_it_copied(tmp_path, monkeypatch):
    """save_state cloned every tensor before writing (safetensors writes from the tensors' memory), and
    its walk, a recursive closure, kept those clones alive until the garbage collector ran."""
    w = torch.arange(12.0).reshape(3, 4)
    meta, flat = flatten_state({"w": w, "t": w.T})
    assert flat["/w"].data_ptr() == w.data_ptr()  # no copy
    assert flat["/t"].data_ptr() != w.data_ptr() and torch.equal(flat["/t"], w.T)  # strided: its values
    seen, real_save = [], state_mod.save_file

    def spy(tensors, filename):
        seen.extend(weakref.ref(t) for t in tensors.values())
        real_save(tensors, filename)

    monkeypatch.setattr(state_mod, "save_file", spy)
    gc.disable()
    try:
        save_state({"t": w.T, "m": [w[:, 1:]]}, tmp_path / "s")  # both copied: strided views
        assert len(seen) == 2 and all(ref() is None for ref in seen)
    finally:
        gc.enable()


def test_a_tied_pair_is_stored_once_and_loads_under_both_names(tmp_path):
    model = Tied()
    snap = cpu_copy({"student": model.state_dict()})
    root = checkpoint.save(tmp_path, 0, snap).parent
    with safe_open(str(tmp_path / "ckpt-000000" / "state.safetensors"), "pt") as f:
        stored = list(f.keys())
    assert len(stored) == 3  # embed (= head), body weight and bias
    back, _ = checkpoint.load_latest(root, warn=lambda m: None)
    student = back["student"]
    assert student["lm_head.weight"] is student["embed_tokens.weight"]
    assert all(torch.equal(student[k], v) for k, v in model.state_dict().items())
    twin = Tied()
    twin.load_state_dict(student)
    assert twin.lm_head.weight is twin.embed_tokens.weight
    assert torch.equal(twin.lm_head.weight, model.lm_head.weight)


def test_tensors_that_overlap_in_memory_are_saved_with_values_of_their_own(tmp_path):
    """safetensors refuses tensors that share memory: a tensor beside a slice of it, or two overlapping
    slices, get copies; one seen twice as the same view is stored once."""
    w = torch.arange(12.0)
    state = {"w": w, "head": w[:4], "mid": w[2:6], "again": w, 3: [w.view(3, 4), np.arange(2)]}
    save_state(state, tmp_path / "s")
    back = load_state(tmp_path / "s")
    assert torch.equal(back["w"], w) and torch.equal(back["head"], w[:4]) and torch.equal(back["mid"], w[2:6])
    assert back["again"] is back["w"] and torch.equal(back[3][0], w.view(3, 4))
    assert np.array_equal(back[3][1], np.arange(2))
    assert w.tolist() == list(range(12))  # the state itself untouched


def test_an_engine_checkpoint_of_a_tied_model_keeps_it_tied_and_round_trips(
    tiny_model, tokenizer, small_task, tmp_path
):
    cfg = EngineConfig(batch_size=4, sampling=SamplingConfig(max_new_tokens=8))
    engine = DistillEngine(tiny_model, tokenizer, small_task, cfg)
    state = engine.state_dict()
    student = state["student"]
    assert student["lm_head.weight"] is student["model.embed_tokens.weight"]
    checkpoint.save(tmp_path, 0, state)
    back = checkpoint.load(tmp_path / "ckpt-000000")
    assert back["student"]["lm_head.weight"] is back["student"]["model.embed_tokens.weight"]
    with torch.no_grad():
        tiny_model.model.embed_tokens.weight.add_(1.0)
    engine.load_state_dict(back)
    assert tiny_model.lm_head.weight is tiny_model.model.embed_tokens.weight
    assert torch.equal(tiny_model.lm_head.weight, student["lm_head.weight"])
    assert all(torch.equal(v, student[k]) for k, v in tiny_model.state_dict().items())
