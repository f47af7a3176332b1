"""A hub that cannot be reached: the local cache at once, a clear error for what is not cached.

Nothing here touches the network: the hub's endpoint is a port on this machine, open (a listening
socket) or closed (bound, then released)."""

import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from huggingface_hub import constants

from atesd import hub

ROOT = Path(__file__).resolve().parents[1]
REACHABLE = hub.reachable  # the real check (conftest's autouse fixture stands in for it in every test)
AT_IMPORT = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE


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
    monkeypatch.setattr(hub, "reachable", REACHABLE)
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        monkeypatch.setattr(datasets_config, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(datasets_config, "HF_DATASETS_OFFLINE", False)
    return monkeypatch


def test_reachable_tells_an_open_port_from_a_closed_one(listening):
    assert REACHABLE(listening)
    assert not REACHABLE(closed_port_url())
    assert not REACHABLE("http://no-such-host.invalid")  # a name that does not resolve
    with pytest.raises(ValueError, match="host"):
        REACHABLE("not a url")


def test_reachable_gives_up_when_its_time_is_up_whatever_hangs(monkeypatch):
    """A name lookup or an address that never answers: create_connection would wait the timeout per
    address and the lookup without limit; the check waits the timeout in all."""
    release = threading.Event()

    def hang(*args, **kw):
        release.wait(60)
        raise OSError("never answered")

    monkeypatch.setattr(socket, "create_connection", hang)
    start = time.monotonic()
    try:
        assert not REACHABLE("https://huggingface.co", timeout=0.2)
        assert time.monotonic() - start < 10  # not the 60 s the connection would hang
    finally:
        release.set()


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
    "settings",
    [
        {"HF_HUB_OFFLINE": "0"},
        {"TRANSFORMERS_OFFLINE": "0"},
        {"HTTP_PROXY": "http://127.0.0.1:1"},
        {"HTTPS_PROXY": "http://127.0.0.1:1", "NO_PROXY": "127.0.0.1"},  # clients read NO_PROXY otherwise
    ],
)
def test_a_users_setting_or_a_proxy_is_not_second_guessed(fresh, settings):
    fresh.setattr(hub, "endpoint", closed_port_url)
    for name, value in settings.items():
        fresh.setenv(name, value)
    assert not hub.offline_unless_reachable()
    assert not constants.HF_HUB_OFFLINE and hub._checked == {}


def test_datasets_imported_before_the_switch_is_switched_too(fresh):
    pytest.importorskip("datasets")
    import datasets.config

    fresh.setattr(hub, "endpoint", closed_port_url)
    assert not datasets.config.HF_HUB_OFFLINE
    assert hub.offline_unless_reachable()
    assert datasets.config.HF_HUB_OFFLINE and datasets.config.HF_DATASETS_OFFLINE


def test_other_errors_pass_unchanged_and_nothing_is_checked_for_local_loads(fresh):
    fresh.setattr(hub, "endpoint", closed_port_url)
    with pytest.raises(OSError, match="^offline mode is enabled$"), hub.cache_only_hint(None, "model", "x"):
        raise OSError("offline mode is enabled")  # a local load: no check, no hint
    assert hub._checked == {} and not constants.HF_HUB_OFFLINE
    with pytest.raises(OSError, match="^disk full$"), hub.cache_only_hint("owner/name", "model", "x"):
        raise OSError("disk full")
    damaged = "Failed to open local file '/data/hf_offline/datasets/x/train.arrow'"  # "offline" in a path
    with pytest.raises(OSError, match=f"^{re.escape(damaged)}$"):
        with hub.cache_only_hint("owner/name", "dataset", "x"):
            raise FileNotFoundError(damaged)
    assert constants.HF_HUB_OFFLINE  # the hub was checked, and is not reachable
    from huggingface_hub.errors import LocalEntryNotFoundError

    missing = [
        OSError("We couldn't connect ... couldn't find them in the cached files."),  # transformers
        ConnectionError("Couldn't reach 'owner/name' on the Hub (OfflineModeIsEnabled)"),  # datasets
        OSError("owner/name does not appear to have a file named model.safetensors."),  # weights not cached
        ValueError("Couldn't find cache for owner/name for config 'other'"),  # datasets, another config
    ]
    missing[0].__cause__ = LocalEntryNotFoundError("not in the cache")
    for err in missing:
        with pytest.raises(OSError, match="owner/name is not in the local .*the hub cannot be") as info:
            with hub.cache_only_hint("owner/name", "model", "give a path"):
                raise err
        assert info.value.__cause__ is err and str(err).splitlines()[0] in str(info.value)


def test_the_hint_names_the_users_own_offline_setting(fresh):
    fresh.setenv("HF_HUB_OFFLINE", "1")
    fresh.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="only in part .*and HF_HUB_OFFLINE is set"):
        with hub.cache_only_hint("owner/name", "model", "give a path"):
            raise ConnectionError("Couldn't reach 'owner/name' on the Hub (OfflineModeIsEnabled)")


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
            from atesd.tasks.sources import hf_rows
            try:
                hf_rows("atesd-test/absent-data", None, "train")
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


def test_a_hub_id_read_in_any_test_finds_the_hub_unreachable_without_a_connection():
    """conftest's stand-in for the check (every test): offline for this test, no network touched."""
    assert hub.offline_unless_reachable() and constants.HF_HUB_OFFLINE


def test_and_the_next_test_starts_as_the_session_did():
    """Runs after the one above (file order): its switch was undone."""
    assert (os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE) == AT_IMPORT
