"""The Hugging Face hub where it cannot be reached: the local cache at once, not minutes of retries.

On a machine without network (a cluster's compute node, a GPU box behind a firewall) every file that
`transformers` or `datasets` looks up on the hub is retried five times over about 25 s before the
cache is read or an error comes: a cached hub model took 160-300 s to load, a missing one about
50 s to fail, a hub dataset about 25 s, each in "Retrying in 8s" lines. `offline_unless_reachable`
opens one TCP connection to the hub's endpoint (`HF_ENDPOINT`, huggingface.co by default), name
lookup included, within `CONNECT_TIMEOUT_S` in all, once per process, before the first hub id is
read. If it fails, the process switches to the libraries' own offline mode (`HF_HUB_OFFLINE=1`) for
the rest of its life and the processes it starts afterwards: cached files load at once, and a file
that is not cached fails at once (a later upload from that process, `push_to_hub`, fails too).

It does not check, and leaves the libraries as they are, where
- `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`, or `HF_DATASETS_OFFLINE`) is set in the environment,
  to any value: `HF_HUB_OFFLINE=0` keeps the libraries' retries for a network that is only slow;
- a proxy is set (`HTTPS_PROXY` and the like, or the system's; whatever `NO_PROXY` says, since
  clients read it differently): a direct connection says nothing then.

A TCP connection is all it asks: a hub that accepts one but blocks HTTP still gets the retries.
Knows nothing of runs or tasks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0
_USER_SETTINGS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
_checked: dict[str, bool] = {}  # endpoint -> reachable, for this process
# datasets names the hub's error in its own message: "Couldn't reach 'x' on the Hub (OfflineModeIsEnabled)"
_NAMED_HUB_ERROR = re.compile(r"\((OfflineModeIsEnabled|LocalEntryNotFoundError)\)")
_NOT_CACHED_TEXT = (
    "does not appear to have a file named",  # transformers: a cache holding the config but not the weights
    "Couldn't find cache for",  # datasets: a config or split of a dataset that was not cached
)


def endpoint() -> str:
    """The hub's address as huggingface_hub uses it (`HF_ENDPOINT`, huggingface.co by default)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def reachable(url: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to `url`'s host and port opens within `timeout` seconds in all: the
    name lookup and every address it gives (`socket.create_connection` allows each of them the
    timeout, and the lookup none), so the connection is tried on a thread that is abandoned when the
    time is up."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"not a URL with a host: {url!r}")
    address = (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    opened = threading.Event()

    def connect() -> None:
        try:
            with socket.create_connection(address, timeout=timeout):
                opened.set()
        except OSError:  # no route, refused, timed out, or the name does not resolve
            pass

    thread = threading.Thread(target=connect, name="atesd-hub-check", daemon=True)
    thread.start()
    thread.join(timeout)
    return opened.is_set()


def proxied() -> bool:
    """Whether a proxy is set, in the environment or the system's settings (which httpx, the hub's
    client, reads too), whatever `NO_PROXY` excludes."""
    return any(name in {"http", "https", "all"} for name in urllib.request.getproxies())


def offline_unless_reachable(timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether this process reads the hub from its local cache only; switches to that if the hub
    cannot be reached (see the module's docstring for when it does not check). Call it before a hub
    id is read; the check runs once per process and endpoint."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    if any(name in os.environ for name in _USER_SETTINGS):
        return False  # the user chose (HF_HUB_OFFLINE=0 keeps the libraries' retries)
    if proxied():
        return False
    url = endpoint()
    if url not in _checked:
        _checked[url] = reachable(url, timeout)
        if not _checked[url]:
            log.warning(
                "the Hugging Face hub (%s) cannot be reached: reading hub models and datasets from the "
                "local cache only (HF_HUB_OFFLINE=1); set HF_HUB_OFFLINE=0 to retry the hub instead",
                url,
            )
    if not _checked[url]:
        _go_offline()
    return not _checked[url]


def switched() -> bool:
    """Whether this process went offline because the hub could not be reached (not by a setting)."""
    return any(not ok for ok in _checked.values())


def _go_offline() -> None:
    """Offline mode for huggingface_hub (which transformers asks), for datasets (which keeps its own
    copy of the setting, read when it is imported) and for processes started from now on (peft reads
    the environment)."""
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    config = sys.modules.get("datasets.config")
    if config is not None:
        config.HF_HUB_OFFLINE = True
        config.HF_DATASETS_OFFLINE = True


@contextlib.contextmanager
def cache_only_hint(hub_id: str | None, what: str, instead: str) -> Iterator[None]:
    """Around a load of the hub repo `hub_id` (None: nothing is read from the hub): the check of
    `offline_unless_reachable` first; then, where this process is offline, the libraries' error for
    files that are not cached becomes one that says so and what to do (`instead`: a local
    alternative), the libraries' own first line kept. Other errors pass unchanged."""
    if hub_id is None:
        yield
        return
    offline = offline_unless_reachable()
    try:
        yield
    except (OSError, ValueError) as err:  # datasets: ConnectionError (an OSError) or ValueError
        if not offline or not _not_cached(err):
            raise
        why = "the hub cannot be reached" if switched() else "HF_HUB_OFFLINE is set"
        said = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OSError(
            f"the {what} {hub_id} is not in the local Hugging Face cache, or only in part ({said}), and "
            f"{why} (offline mode): load it once on a machine with network and copy its cache "
            f"(HF_HOME), or {instead}"
        ) from err


def _not_cached(err: BaseException) -> bool:
    """Whether `err` says that hub files are not in the cache: huggingface_hub's
    LocalEntryNotFoundError or OfflineModeIsEnabled in its chain (transformers, peft), one of them
    named in its text (datasets), or the libraries' words for a cache that lacks a file."""
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    seen = set()
    while err is not None and id(err) not in seen:
        text = str(err)
        if (
            isinstance(err, (LocalEntryNotFoundError, OfflineModeIsEnabled))
            or _NAMED_HUB_ERROR.search(text)
            or any(words in text for words in _NOT_CACHED_TEXT)
        ):
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False
