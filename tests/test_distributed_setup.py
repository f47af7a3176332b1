"""The torchrun group's set-up in one process, torch.distributed's and torch.cuda's answers stood in
for: which GPU each rank takes, and the group's timeout. (tests/test_distributed.py launches torchrun.)"""

import pytest
import torch


@pytest.mark.parametrize("visible", [8, 1])
def test_under_torchrun_each_rank_takes_its_own_gpu(monkeypatch, visible):
    """real.device=cuda:0 under torchrun put every rank's model on GPU 0 (NCCL bound to cuda:LOCAL_RANK);
    a launcher that shows each process its own GPU only made set_device(LOCAL_RANK) fail. No GPU is
    needed: torch.cuda's answers are stood in for."""
    from atesd.builder import resolve_device
    from atesd.distributed import Dist, local_cuda_index

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7" if visible == 8 else "3")
    rank3, own = Dist(rank=3, world_size=8), f"cuda:{3 if visible == 8 else 0}"
    assert local_cuda_index() == (3 if visible == 8 else 0)
    assert resolve_device("auto", rank3) == resolve_device("cuda", rank3) == own
    for explicit in ("cuda:0", own):  # refused on every rank alike: rank 0's own went on loading
        with pytest.raises(ValueError, match=rf"real.device={explicit} under torchrun would put every rank"):
            resolve_device(explicit, rank3)
    assert resolve_device("cuda:0", Dist.single()) == "cuda:0" and resolve_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # some GPUs shown, too few
    with pytest.raises(ValueError, match="LOCAL_RANK is 3, but this process sees 2 CUDA devices"):
        local_cuda_index()
    # one GPU shown to all (torchrun --nproc_per_node 2 on a 1-GPU machine): refused, not both on cuda:0
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with pytest.raises(ValueError, match="LOCAL_RANK is 3, but this process sees 1 CUDA devices"):
        local_cuda_index()


def test_the_group_timeout_comes_from_atesd_dist_timeout(monkeypatch):
    """Other ranks wait in a collective while rank 0 loads a checkpoint or writes a run checkpoint,
    within the group's timeout: torch's 30 minutes could not be raised. No group is joined here:
    torch.distributed's calls are stood in for."""
    from datetime import timedelta

    import atesd.distributed as distributed

    joined = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda **kw: joined.append(kw))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.Dist.from_env() == distributed.Dist(rank=1, world_size=2)
    assert joined.pop() == {"backend": "gloo"}  # torch's default timeout
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "7200")
    distributed.Dist.from_env()
    assert joined.pop() == {"backend": "gloo", "timeout": timedelta(hours=2)}
    for bad in ("0", "-5", "two hours", "inf", "nan"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(
            ValueError, match=f"ATESD_DIST_TIMEOUT must be a positive number of seconds, got '{bad}'"
        ):
            distributed.Dist.from_env()
    assert joined == []  # refused before joining: no rank waits for one that left
