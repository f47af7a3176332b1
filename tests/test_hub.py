"""A hub that cannot be reached: the local cache at once, a clear error for what is not cached.

Nothing here touches the network: the hub's endpoint is a port on this machine, open (a listening
socket) or closed (bound, then released)."""

import logging
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from huggingface_hub import constants

from atesd import hub

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def listening():
    """http://127.0.0.1:PORT of a socket that accepts connections."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def closed_port_url() -> str:
    """http://127.0.0.1:PORT of a port nothing listens on (connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def fresh(monkeypatch):
    """No offline setting and no proxy in the environment, no check made yet; the libraries'
    offline flags are restored after the test."""
    for name in (*hub._USER_SETTINGS, "http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        for spelling in {name, name.upper()}:
            monkeypatch.setenv(spelling, "")  # recorded, so that a value the test sets is removed after it
            monkeypatch.delenv(spelling)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "_checked", {})
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        monkeypatch.setattr(datasets_config, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(datasets_config, "HF_DATASETS_OFFLINE", False)
    return monkeypatch


def test_reachable_tells_an_open_port_from_a_closed_one(listening):
    assert hub.reachable(listening)
    assert not hub.reachable(closed_port_url())
    assert not hub.reachable("http://no-such-host.invalid")  # a name that does not resolve
    with pytest.raises(ValueError, match="host"):
        hub.reachable("not a url")


def test_an_unreachable_hub_switches_the_process_to_the_cache_once(fresh, caplog):
    url = closed_port_url()
    fresh.setattr(hub, "endpoint", lambda: url)
    with caplog.at_level(logging.WARNING, logger="atesd.hub"):
        assert hub.offline_unless_reachable()
        assert hub.offline_unless_reachable()
    assert constants.HF_HUB_OFFLINE and os.environ["HF_HUB_OFFLINE"] == "1"
    assert len(caplog.records) == 1 and url in caplog.text and "HF_HUB_OFFLINE=0" in caplog.text


def test_a_reachable_hub_leaves_the_libraries_online(fresh, listening):
    fresh.setattr(hub, "endpoint", lambda: listening)
    assert not hub.offline_unless_reachable()
    assert not constants.HF_HUB_OFFLINE and "HF_HUB_OFFLINE" not in os.environ


@pytest.mark.parametrize(
    "setting", [("HF_HUB_OFFLINE", "0"), ("TRANSFORMERS_OFFLINE", "0"), ("HTTP_PROXY", "http://127.0.0.1:1")]
)
def test_a_users_setting_or_a_proxy_is_not_second_guessed(fresh, setting):
    fresh.setattr(hub, "endpoint", closed_port_url)
    fresh.setenv(*setting)
    assert not hub.offline_unless_reachable()
    assert not constants.HF_HUB_OFFLINE and hub._checked == {}


def test_a_proxy_the_hub_bypasses_does_not_stop_the_check(fresh):
    url = closed_port_url()
    fresh.setattr(hub, "endpoint", lambda: url)
    fresh.setenv("HTTP_PROXY", "http://127.0.0.1:1")
    fresh.setenv("NO_PROXY", "127.0.0.1")
    assert hub.offline_unless_reachable()


def test_other_errors_pass_unchanged_and_nothing_is_checked_for_local_loads(fresh):
    fresh.setattr(hub, "endpoint", closed_port_url)
    with pytest.raises(OSError, match="^offline mode is enabled$"), hub.cache_only_hint(None, "model", "x"):
        raise OSError("offline mode is enabled")  # a local load: no check, no hint
    assert hub._checked == {} and not constants.HF_HUB_OFFLINE
    with pytest.raises(OSError, match="^disk full$"), hub.cache_only_hint("owner/name", "model", "x"):
        raise OSError("disk full")
    with pytest.raises(OSError, match="^a damaged file in the cache$"):
        with hub.cache_only_hint("owner/name", "model", "x"):
            raise OSError("a damaged file in the cache")  # not a missing one
    assert constants.HF_HUB_OFFLINE  # the hub was checked, and is not reachable
    with pytest.raises(OSError, match="owner/name is not in the local") as info:
        with hub.cache_only_hint("owner/name", "model", "x"):
            raise OSError("offline mode is enabled")
    assert str(info.value.__cause__) == "offline mode is enabled"


def _hub_cache(home: Path, repo: str, checkpoint: Path) -> None:
    """`checkpoint` as huggingface_hub keeps a downloaded model: HF_HOME/hub/models--owner--name with
    the files in a snapshot that refs/main names."""
    owner, name = repo.split("/")
    folder = home / "hub" / f"models--{owner}--{name}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(checkpoint, folder / "snapshots" / revision)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)


@pytest.mark.slow  # a subprocess importing transformers
def test_offline_a_cached_hub_model_loads_and_one_not_cached_fails_at_once(tmp_path, checkpoint):
    """The whole path in a fresh process (the libraries read HF_HOME and HF_ENDPOINT when imported):
    load_pretrained by hub id with the hub unreachable."""
    _hub_cache(tmp_path / "hf", "atesd-test/tiny", checkpoint)
    script = textwrap.dedent(
        """
        import logging, sys
        logging.basicConfig(level=logging.WARNING)
        from atesd.models import load_pretrained
        model, tokenizer = load_pretrained("atesd-test/tiny")
        print("loaded", type(model).__name__, model.config.num_hidden_layers)
        try:
            load_pretrained("atesd-test/absent")
        except OSError as err:
            print("refused:", err)
        try:
            import datasets  # noqa: F401
        except ImportError:
            print("no datasets")
        else:
            from atesd.tasks.math import _hf_rows
            try:
                _hf_rows("atesd-test/absent-data", None, "train")
            except OSError as err:
                print("refused:", err)
        """
    )
    unset = {*hub._USER_SETTINGS, "HF_HOME", "HF_HUB_CACHE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"}
    env = {k: v for k, v in os.environ.items() if k.upper() not in unset}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=closed_port_url(), PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    assert "loaded Qwen3ForCausalLM 2" in out.stdout
    refusals = [line for line in out.stdout.splitlines() if line.startswith("refused:")]
    assert "the model atesd-test/absent is not in the local Hugging Face cache" in refusals[0]
    assert "real.hf.name_or_path=PATH" in refusals[0]
    if "no datasets" not in out.stdout:
        assert "the dataset atesd-test/absent-data is not in the local Hugging Face cache" in refusals[1]
        assert "real.data.data_dir" in refusals[1]
    assert out.stderr.count("cannot be reached") == 1  # one check, one warning
    assert "Retrying" not in out.stderr


def test_no_switch_outlives_the_tests_above():
    """Runs after the tests above in this file: the process is online again."""
    assert "HF_HUB_OFFLINE" not in os.environ and not constants.HF_HUB_OFFLINE
