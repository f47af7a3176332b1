"""The Hugging Face hub where it cannot be reached: the local cache at once, not a minute of retries.

On a machine without network (a cluster's compute node, a GPU box behind a firewall) every file that
`transformers` or `datasets` looks up on the hub is retried five times over about 25 s before the
cache is read or an error comes: a hub model costs about 50 s of "Retrying in 8s" lines, a hub
dataset 25 s. `offline_unless_reachable` opens one TCP connection to the hub's endpoint (`HF_ENDPOINT`,
huggingface.co by default) with a short timeout, once per process, before the first hub id is read.
If it fails, the process switches to the libraries' own offline mode (`HF_HUB_OFFLINE=1`): cached
files load at once, and a file that is not cached fails at once.

It does not check, and leaves the libraries as they are, where
- `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`, or `HF_DATASETS_OFFLINE`) is set in the environment,
  to any value: `HF_HUB_OFFLINE=0` keeps the libraries' retries for a network that is only slow;
- a proxy serves the endpoint (`HTTPS_PROXY` and the like): a direct connection says nothing then.

Knows nothing of runs or tasks.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0
_USER_SETTINGS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")
_checked: dict[str, bool] = {}  # endpoint -> reachable, for this process


def endpoint() -> str:
    """The hub's address as huggingface_hub uses it (`HF_ENDPOINT`, huggingface.co by default)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def reachable(url: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to `url`'s host and port opens within `timeout` seconds."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"not a URL with a host: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:  # no route, refused, timed out, or the name does not resolve
        return False


def proxied(url: str) -> bool:
    """Whether requests to `url` go through a proxy set in the environment (as httpx reads it)."""
    parts = urllib.parse.urlsplit(url)
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass_environment(parts.hostname or "", proxies)


def offline_unless_reachable(timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether this process reads the hub from its local cache only; switches to that if the hub
    cannot be reached (see the module's docstring for when it does not check). Call it before a hub
    id is read; the check runs once per process and endpoint, and a switch holds for the process and
    the processes it starts afterwards."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    if any(name in os.environ for name in _USER_SETTINGS):
        return False  # the user chose (HF_HUB_OFFLINE=0 keeps the libraries' retries)
    url = endpoint()
    if proxied(url):
        return False
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


def _go_offline() -> None:
    """Offline mode for huggingface_hub (which transformers asks), for datasets (which keeps its own
    copy of the setting, read when it is imported) and for processes started from now on."""
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
    alternative). Other errors pass unchanged."""
    if hub_id is None:
        yield
        return
    offline = offline_unless_reachable()
    try:
        yield
    except OSError as err:  # transformers: OSError; datasets: ConnectionError, an OSError too
        if not offline or not _not_cached(err):
            raise
        raise OSError(
            f"the {what} {hub_id} is not in the local Hugging Face cache and the hub cannot be reached "
            f"(offline mode): load it once on a machine with network and copy its cache (HF_HOME), or "
            f"{instead}"
        ) from err


def _not_cached(err: BaseException) -> bool:
    """Whether `err` says a hub file is not in the cache while offline: huggingface_hub's
    LocalEntryNotFoundError in its chain (transformers), or "offline" in its text (datasets says
    "Couldn't reach ... (OfflineModeIsEnabled)")."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, LocalEntryNotFoundError) or "offline" in str(err).lower():
            return True
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return False
