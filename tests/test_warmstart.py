import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from atesd.exposure import PromptBuilder
from atesd.models import TinyModelConfig
from atesd.warmstart import WarmStartConfig, cache_key, sft_examples, warm_start

TINY = TinyModelConfig(num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=1, intermediate_size=64)
QUICK = WarmStartConfig(steps=3, copy_steps=1, batch_size=4, warmup_steps=1)


def test_cache_is_hit_on_the_second_call(tmp_path, small_task):
    calls = []
    m1, _, path1, hit1 = warm_start(
        small_task, TINY, QUICK, tmp_path, progress=lambda s, n, loss: calls.append(s)
    )
    m2, tok2, path2, hit2 = warm_start(
        small_task, TINY, QUICK, tmp_path, progress=lambda s, n, loss: calls.append(s)
    )
    assert (hit1, hit2) == (False, True) and path1 == path2
    assert calls == [1, 2, 3]  # progress reported while training, not on a hit
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert (path1 / "model.safetensors").exists() and (path1 / "warmstart.json").exists()
    assert tok2.apply_chat_template(
        [{"role": "user", "content": "Q1|2"}], tokenize=False, add_generation_prompt=True
    )


def test_cache_key_changes_with_any_config(small_task):
    """Every field of the task, model and warm-start configs keys the cache: a valid change to any one
    of them gives a key of its own (and a field added later must be listed here)."""
    import dataclasses

    changes = {
        "task": {
            "chain_lengths": (0, 4), "bag_sizes": (0, 3), "min_steps": 3, "ops": "+-*",
            "bands": ((3, 0), (0, 2)), "eval_size": 17, "probe_size": 9, "eval_seed": 1235,
        },
        "model": {
            "num_layers": 2, "hidden_size": 64, "num_heads": 4, "num_kv_heads": 2,
            "intermediate_size": 65, "init_seed": 1,
        },
        "warmstart": {
            "steps": 4, "copy_steps": 2, "batch_size": 5, "lr": 2e-3, "warmup_steps": 2,
            "min_lr_ratio": 0.2, "weight_decay": 0.02, "student_frac": 0.3, "teacher_frac": 0.4,
            "student_max_chain": 4, "long_chain_keep": 0.2, "seed": 1,
        },
    }  # fmt: skip
    base_cfgs = {"task": small_task.cfg, "model": TINY, "warmstart": QUICK}
    base = cache_key(*base_cfgs.values())
    assert cache_key(small_task.cfg, TINY, QUICK) == base
    keys = {base}
    for part, cfg in base_cfgs.items():
        unkeyed = {"max_position"} if part == "model" else set()  # no weight depends on it
        assert set(changes[part]) | unkeyed == {f.name for f in dataclasses.fields(cfg)}, part  # every field
        for name, value in changes[part].items():
            changed = dataclasses.replace(cfg, **{name: value})
            assert getattr(changed, name) != getattr(cfg, name), (part, name)
            key = cache_key(*(changed if p == part else c for p, c in base_cfgs.items()))
            assert key not in keys, (part, name)  # differs from the base and from every other change
            keys.add(key)
    assert len(keys) == 1 + sum(map(len, changes.values()))


def test_the_models_positions_key_no_cache_entry_and_a_loaded_one_holds_the_runs(tmp_path, small_task):
    """max_position keyed the cache though Qwen3 learns no position embedding: raising it, as the
    length check advises, retrained the same weights for minutes. Now one entry serves every
    max_position, and the loaded model holds the run's."""
    import dataclasses

    model, _, path, found = warm_start(small_task, TINY, QUICK, tmp_path)
    longer = dataclasses.replace(TINY, max_position=4 * TINY.max_position)
    assert cache_key(small_task.cfg, longer, QUICK) == cache_key(small_task.cfg, TINY, QUICK)
    again, _, again_path, again_found = warm_start(small_task, longer, QUICK, tmp_path)
    assert again_found and again_path == path
    assert again.config.max_position_embeddings == 4 * TINY.max_position
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_long_chains_are_only_copied_in_teacher_format(tokenizer):
    from atesd.tasks.synthetic import ChainBagConfig, ChainBagTask

    task = ChainBagTask(
        ChainBagConfig(chain_lengths=(5, 5), bag_sizes=(0, 3), eval_size=1, probe_size=1, bands=((5, 0),))
    )
    builder = PromptBuilder(tokenizer, task.prompt_format)
    cfg = WarmStartConfig(student_max_chain=3, long_chain_keep=0.0)
    for prompt, _ in sft_examples(task, builder, np.random.default_rng(0), 200, False, cfg):
        assert "<|ref|>" in prompt  # no student-format example of a long chain
        revealed = prompt.split("<|ref|>")[1].split("<|ans|>")[0]
        assert revealed.count(";") >= 5  # the whole chain is shown: computing it is never asked
    kept = sft_examples(
        task, builder, np.random.default_rng(0), 400, False, WarmStartConfig(long_chain_keep=1.0)
    )
    assert any("<|ref|>" not in prompt for prompt, _ in kept)


def test_the_default_config_finds_the_shipped_warm_start(tmp_path):
    """The package ships the embedded default's warm start: an empty cache loads it, no training."""
    import atesd.warmstart as ws
    from atesd.tasks.synthetic import ChainBagTask

    task = ChainBagTask()
    key = cache_key(task.cfg, TinyModelConfig(), WarmStartConfig())
    assert key in ws.shipped_manifest(), (
        "the default config's key is not shipped: run recipes/ship_warmstart.py"
    )
    path, why = ws.locate(task.cfg, TinyModelConfig(), WarmStartConfig(), tmp_path)
    assert path == ws.SHIPPED_DIR / key and why == ""
    model, tokenizer, found_path, found = warm_start(
        task, TinyModelConfig(), WarmStartConfig(), tmp_path, progress=lambda *a: pytest.fail("trained")
    )
    assert found and found_path == path and not (tmp_path / "warmstart").exists()
    assert sum(p.numel() for p in model.parameters()) > 100_000


def test_another_config_trains_its_own_and_says_why(tmp_path, small_task, caplog):
    with caplog.at_level("WARNING", logger="atesd.warmstart"):
        _, _, path, found = warm_start(small_task, TINY, QUICK, tmp_path)
    assert not found and path.parent == tmp_path / "warmstart"
    assert "no shipped warm start has key" in caplog.text and str(path) in caplog.text
    # and which setting made it another config (README: "a line says why")
    import atesd.warmstart as ws
    from atesd.tasks.synthetic import ChainBagConfig

    _, why = ws.locate(ChainBagConfig(), TinyModelConfig(), WarmStartConfig(steps=900), tmp_path / "none")
    assert why.endswith("this config has real.warmstart.steps=900, the embedded default's 800"), why


def test_a_shipped_file_that_fails_its_sha256_is_not_loaded(tmp_path, monkeypatch):
    import json
    import shutil

    import atesd.warmstart as ws

    (key,) = ws.shipped_manifest()
    copy = tmp_path / "shipped"
    shutil.copytree(ws.SHIPPED_DIR, copy)
    monkeypatch.setattr(ws, "SHIPPED_DIR", copy)
    monkeypatch.setattr(ws, "SHIPPED_MANIFEST", copy / "manifest.json")
    assert ws.shipped_path(key)[0] == copy / key
    with open(copy / key / "model.safetensors", "r+b") as f:  # one flipped byte deep in the weights
        f.seek(-10, 2)
        byte = f.read(1)
        f.seek(-10, 2)
        f.write(bytes([byte[0] ^ 1]))
    path, why = ws.shipped_path(key)
    assert path is None and "model.safetensors does not match its sha256" in why
    (copy / key / "model.safetensors").unlink()
    assert "lacks model.safetensors" in ws.shipped_path(key)[1]
    assert "no shipped warm start has key abc" in ws.shipped_path("abc")[1]
    json.dumps(ws.shipped_manifest())  # the manifest stays plain JSON


def test_a_diverged_warm_start_is_refused_and_never_cached(tmp_path, small_task):
    """A learning rate large enough to blow the weights up: one line saying so, nothing cached (a
    cached NaN model would be loaded by every later run with that config)."""
    blown = WarmStartConfig(steps=3, copy_steps=1, batch_size=4, warmup_steps=1, lr=1e30)
    with pytest.raises(ValueError, match="the warm start diverged"):
        warm_start(small_task, TINY, blown, tmp_path)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_a_broken_cache_entry_is_removed_and_trained_again(tmp_path, small_task, caplog):
    """A cache entry whose weights were cut (a full disk, a copy that stopped) is not loaded: the
    checksums written with it catch it, it is removed, and the warm start is trained again; an entry
    from before checksums were kept is judged by loading it."""
    import json

    import atesd.warmstart as ws

    _, _, path, _ = warm_start(small_task, TINY, QUICK, tmp_path)
    good = (path / "model.safetensors").read_bytes()
    assert set(json.loads((path / "warmstart.json").read_text())["files"]) >= {"model.safetensors"}
    (path / "model.safetensors").write_bytes(good[:100])
    assert "model.safetensors does not match the sha256" in ws.cache_problem(path)
    with caplog.at_level("WARNING", logger="atesd.warmstart"):
        _, _, again, found = warm_start(small_task, TINY, QUICK, tmp_path)
    assert again == path and not found and "does not match the sha256" in caplog.text
    assert (path / "model.safetensors").read_bytes() == good and ws.cache_problem(path) is None
    assert [p.name for p in (tmp_path / "warmstart").iterdir()] == [path.name]

    record = json.loads((path / "warmstart.json").read_text())
    del record["files"]  # an entry written before the checksums
    (path / "warmstart.json").write_text(json.dumps(record))
    (path / "model.safetensors").write_bytes(good[:100])
    caplog.clear()
    with caplog.at_level("WARNING", logger="atesd.warmstart"):
        _, _, again, found = warm_start(small_task, TINY, QUICK, tmp_path)
    assert not found and "does not load" in caplog.text and (path / "model.safetensors").read_bytes() == good
    (path / "warmstart.json").unlink()  # the write did not finish: trained again, not a stale load
    assert not warm_start(small_task, TINY, QUICK, tmp_path)[3] and ws.cache_problem(path) is None


def test_a_broken_cache_copy_of_the_shipped_key_falls_back_to_the_shipped_weights(tmp_path, monkeypatch):
    import shutil

    import atesd.warmstart as ws
    from atesd.tasks.synthetic import ChainBagTask

    task = ChainBagTask()
    key = cache_key(task.cfg, TinyModelConfig(), WarmStartConfig())
    shutil.copytree(ws.SHIPPED_DIR / key, tmp_path / "warmstart" / key)
    (tmp_path / "warmstart" / key / "model.safetensors").write_bytes(b"cut")  # its record lists no sums
    _, _, path, found = warm_start(
        task, TinyModelConfig(), WarmStartConfig(), tmp_path, progress=lambda *a: pytest.fail("trained")
    )
    assert found and path == ws.SHIPPED_DIR / key and not (tmp_path / "warmstart" / key).exists()
    monkeypatch.setenv("ATESD_CACHE", "~/atesd-cache")
    assert ws.default_cache_dir().is_absolute() and ws.cache_root("~/x") == Path.home() / "x"


def test_an_entry_that_matches_its_sums_but_does_not_load_names_itself(tmp_path, small_task, monkeypatch):
    """Its files are the ones written, so it is not removed (a retrain would not load either): the
    error names the entry and what to do, as an OSError the recipes say in one line (a RuntimeError
    gave three chained tracebacks)."""
    import atesd.warmstart as ws

    _, _, path, _ = warm_start(small_task, TINY, QUICK, tmp_path)

    def fails(where):
        raise OSError("no loader for this format")

    monkeypatch.setattr(ws, "load_pretrained", fails)
    with pytest.raises(OSError, match=f"the warm start cached at {path} matches its checksums but"):
        warm_start(small_task, TINY, QUICK, tmp_path)
    assert ws.cache_problem(path) is None and path.exists()


def test_an_empty_atesd_cache_means_the_default_not_the_current_directory(monkeypatch, tmp_path):
    """ATESD_CACHE= (set but empty) made the cache the current directory: a run from the checkout's
    root wrote warmstart/ and matplotlib/ into it."""
    from atesd.warmstart import cache_root, default_cache_dir

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("ATESD_CACHE", "")
    assert default_cache_dir() == tmp_path / ".cache" / "atesd"
    monkeypatch.setenv("ATESD_CACHE", "~/elsewhere")
    assert default_cache_dir() == tmp_path / "elsewhere"
    monkeypatch.chdir(tmp_path)  # a relative one: from here, said and recorded as the whole path
    monkeypatch.setenv("ATESD_CACHE", "rel")
    assert default_cache_dir() == tmp_path / "rel" and cache_root("rel/../x") == tmp_path / "x"


@pytest.mark.slow  # subprocesses
def test_two_first_runs_of_one_config_train_it_once(tmp_path, small_task):
    """Two runs started together on a new config both trained the warm start (minutes each); the
    second now waits for the first (an flock beside the entry) and loads what it cached."""
    import subprocess
    import sys
    import time

    script = tmp_path / "first_run.py"
    script.write_text(
        "import sys, time\n"
        f"sys.path[:0] = [{str(Path(__file__).parents[1])!r}, {str(Path(__file__).parent)!r}]\n"
        "import atesd.warmstart as ws\n"
        "from atesd.tasks.synthetic import ChainBagConfig, ChainBagTask\n"
        "from test_warmstart import QUICK, TINY\n"
        "train = ws.train_sft\n"
        "def slow(*a, **k):\n"
        "    print('trained', flush=True)\n"
        "    time.sleep(3.0)  # the other run arrives while this one trains\n"
        "    return train(*a, **k)\n"
        "ws.train_sft = slow\n"
        f"task = ChainBagTask(ChainBagConfig(**{dataclasses.asdict(small_task.cfg)!r}))\n"
        "print('hit', ws.warm_start(task, TINY, QUICK, sys.argv[1])[3], flush=True)\n"
    )
    runs = []
    for _ in range(2):
        runs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path / "cache")],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))  # fmt: skip
        time.sleep(1.0)
    outs = [run.communicate(timeout=300) for run in runs]
    assert all(run.returncode == 0 for run in runs), [err[-2000:] for _, err in outs]
    printed = [line for out, _ in outs for line in out.splitlines()]
    assert printed.count("trained") == 1 and sorted(p for p in printed if p.startswith("hit")) == [
        "hit False", "hit True",
    ]  # fmt: skip
    assert "another process is training" in "".join(err for _, err in outs)
    entries = sorted(p.name for p in (tmp_path / "cache" / "warmstart").iterdir())
    assert entries == [cache_key(small_task.cfg, TINY, QUICK)]  # the entry alone: no lock file left


def test_a_waiter_whose_lock_file_was_removed_takes_the_new_one(tmp_path, monkeypatch):
    """A first run that failed removed `<key>.lock` while a second run waited on it; the second then
    held the lock of a removed file, and a third run made a new file and trained beside it. Now the
    second sees its file is gone and locks the one there: one holder at a time."""
    import contextlib
    import threading
    import time

    import atesd.warmstart as ws

    path = tmp_path / "warmstart" / "key"
    path.parent.mkdir(parents=True)
    inside, most, guard = [0], [0], threading.Lock()
    first_in, fail_first, second_waits = threading.Event(), threading.Event(), threading.Event()
    monkeypatch.setattr(ws.log, "warning", lambda *a: second_waits.set())

    def hold(seconds: float) -> None:
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(seconds)
        with guard:
            inside[0] -= 1

    def first() -> None:
        with contextlib.suppress(RuntimeError), ws._training(path):
            first_in.set()
            fail_first.wait(10)
            raise RuntimeError("the warm start failed")

    def later() -> None:
        with ws._training(path):
            hold(0.5)

    threads = [threading.Thread(target=first), threading.Thread(target=later), threading.Thread(target=later)]
    threads[0].start()
    assert first_in.wait(10)
    threads[1].start()
    assert second_waits.wait(10)  # the second run waits on the first's lock file
    fail_first.set()
    threads[0].join(10)
    threads[2].start()  # the third arrives once the first has removed its file
    for thread in threads[1:]:
        thread.join(20)
    assert most[0] == 1 and not any(t.is_alive() for t in threads)
    assert list(path.parent.iterdir()) == []  # no lock file left


def test_a_shipped_manifest_that_does_not_read_trains_with_the_reason_said(
    tmp_path, small_task, monkeypatch, caplog
):
    """A damaged warm-start manifest raised ValueError for every config, those that never needed the
    shipped warm start too; now the warm start is trained and the line says why."""
    import atesd.warmstart as ws
    from atesd.tasks.synthetic import ChainBagConfig

    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "manifest.json").write_text('{"61c956eab2572d41": {"fi')
    monkeypatch.setattr(ws, "SHIPPED_DIR", shipped)
    monkeypatch.setattr(ws, "SHIPPED_MANIFEST", shipped / "manifest.json")
    path, why = ws.locate(ChainBagConfig(), TinyModelConfig(num_layers=2), WarmStartConfig(), tmp_path / "c")
    assert path is None and why.startswith(
        f"the shipped warm starts' manifest {shipped / 'manifest.json'} does"
    )
    assert why.endswith("; this config has real.model.num_layers=2, the embedded default's 4"), why
    assert ws.locate(ChainBagConfig(), TinyModelConfig(), WarmStartConfig(), tmp_path / "c")[0] is None
    with caplog.at_level("WARNING", logger="atesd.warmstart"):
        _, _, trained, found = warm_start(small_task, TINY, QUICK, tmp_path / "c")
    assert not found and trained.is_dir() and "manifest.json does not read" in caplog.text


def test_ship_warmstart_from_cache_refuses_an_entry_without_recorded_sums(tmp_path, monkeypatch, capsys):
    """An entry from before the sums were kept passed `cache_problem` (nothing to check) and was
    shipped with damaged weights: refused, naming the files no sha256 covers, nothing shipped."""
    import json
    import shutil

    import atesd.warmstart as ws
    import recipes.ship_warmstart as ship_warmstart

    (key,) = ws.shipped_manifest()
    entry = tmp_path / "cache" / "warmstart" / key
    shutil.copytree(ws.SHIPPED_DIR / key, entry)  # its warmstart.json is of the old format: no sums
    for module in (ws, ship_warmstart):  # nothing is written into the package, whatever happens
        monkeypatch.setattr(module, "SHIPPED_DIR", tmp_path / "shipped")
        monkeypatch.setattr(module, "SHIPPED_MANIFEST", tmp_path / "shipped" / "manifest.json")
    monkeypatch.setattr(ship_warmstart, "write", lambda *a: pytest.fail("shipped"))
    monkeypatch.setenv("ATESD_CACHE", str(tmp_path / "cache"))
    record = json.loads((entry / "warmstart.json").read_text())
    assert "files" not in record
    good = (entry / "model.safetensors").read_bytes()
    (entry / "model.safetensors").write_bytes(good[:100])
    for sums, unchecked in (
        ({}, "chat_template.jinja, config.json, generation_config.json, model.safetensors"),
        ({"model.safetensors": ws.sha256_file(entry / "model.safetensors")}, "chat_template.jinja"),
    ):  # no sums, and sums of some files (a hand-made record): what no sum covers is named
        (entry / "warmstart.json").write_text(json.dumps(record | ({"files": sums} if sums else {})))
        with pytest.raises(SystemExit) as exc:
            ship_warmstart.main(["--write", "--from-cache"])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and f"records no sha256 of {unchecked}" in err, err
        assert "train it without --from-cache" in err
