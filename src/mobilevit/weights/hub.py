"""Fetch the file of a weights entry: the Hugging Face Hub cache, Apple's URLs, or an error saying how to get it.

Where files go:

- entries with ``hub_repo_id``: the standard Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
  ``~/.cache/huggingface/hub``), through ``huggingface_hub.hf_hub_download``, so a file fetched by timm,
  transformers or ``hf download`` is reused and vice versa;
- entries with only a ``url`` (ml-cvnets, ml-fastvit, ml-mobileone): ``torch.hub.get_dir()/checkpoints`` (which follows
  ``TORCH_HOME``), under :func:`local_weights_path`, through ``torch.hub.download_url_to_file``;
- entries with only a ``download_page`` (the MobileViTv3 release): nothing is downloaded; a file placed at
  :func:`local_weights_path` is used, otherwise the error says where to get it.

The cache is always looked at first, so a cached file is used without touching the network. ``HF_HUB_OFFLINE=1``
forbids any download (Hub and URLs alike). Otherwise the server's host is probed with a short timeout before
downloading: huggingface_hub retries a failing DNS lookup for tens of seconds, and a machine without internet
should get its answer in seconds.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import urllib.parse
import urllib.request
from pathlib import Path

from .entries import WeightsEntry, get_weights
from .load import HF_WEIGHT_FILES, CheckpointError, require_regular_file

logger = logging.getLogger(__name__)

PROBE_TIMEOUT = 3.0  # seconds to reach the server's host before giving up on a download
_DEFAULT_ENDPOINT = "https://huggingface.co"


class WeightsUnavailableError(CheckpointError, FileNotFoundError):
    """The file of a weights entry is not cached and cannot be downloaded now; the message says how to supply it."""


# ------------------------------------------------------------------------------------------------ environment
def _env_true(name: str) -> bool | None:
    value = os.environ.get(name)
    return None if value is None else value.strip().upper() in ("1", "ON", "YES", "TRUE")


def is_offline() -> bool:
    """Whether downloads are forbidden: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = _env_true(name)
        if value is not None:
            return value
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hf_cache_dir() -> Path:
    """The Hugging Face Hub cache folder, from the environment as it is now (huggingface_hub reads it at import)."""
    env = os.environ
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(name):
            return Path(os.path.expandvars(env[name])).expanduser()
    if env.get("HF_HOME"):
        return Path(os.path.expandvars(env["HF_HOME"])).expanduser() / "hub"
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "huggingface" / "hub"


def hf_endpoint() -> str:
    """The Hub endpoint: ``HF_ENDPOINT`` as set now, else https://huggingface.co."""
    return (os.environ.get("HF_ENDPOINT") or _DEFAULT_ENDPOINT).rstrip("/")


def local_weights_path(entry: WeightsEntry) -> Path:
    """Where the file of a URL or download-page entry is kept: ``torch.hub.get_dir()/checkpoints/<name>--<file>``.

    The entry name is part of the file name because upstream reuses file names across folders (every
    ``mobilevitv2-1.0.pt`` of ml-cvnets, the plain and distilled ``fastvit_t8.pth.tar``).
    """
    import torch.hub

    base = (entry.filename or entry.url or "checkpoint").replace("\\", "/").rsplit("/", 1)[-1]
    return Path(torch.hub.get_dir()) / "checkpoints" / f"{entry.name}--{base}"


# ------------------------------------------------------------------------------------------------ reachability
def _probe_target(url: str) -> tuple[str, int]:
    """The (host, port) a request to ``url`` connects to first: the proxy when one applies, else the server."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else "http://" + proxy)
        return proxy_parts.hostname or host, proxy_parts.port or 80
    return host, port


def probe(url: str, timeout: float | None = None) -> str | None:
    """Try to open a TCP connection to the host of ``url`` (or its proxy) within ``timeout`` seconds, DNS included.

    Args:
        url: the address a download would fetch.
        timeout: seconds; default :data:`PROBE_TIMEOUT`.

    Returns:
        ``None`` when the host answers, else the reason it could not be reached.
    """
    timeout = PROBE_TIMEOUT if timeout is None else timeout
    host, port = _probe_target(url)
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as e:
            outcome.append(e)

    # a thread bounds the DNS lookup too, which create_connection's timeout does not
    thread = threading.Thread(target=connect, name=f"probe-{host}", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        return f"no answer from {host}:{port} within {timeout:g} s"
    error = outcome[0]
    return None if error is None else f"cannot connect to {host}:{port} ({error})"


# ------------------------------------------------------------------------------------------------ messages
def _how_to_supply(entry: WeightsEntry, what: str, example: str, command: str | None) -> str:
    lines = ["Supply the weights in one of these ways:"]
    if command:
        lines.append(f"  - download them on a machine with internet: {command}")
    lines.append(
        f"  - or pass a local copy of {what}: create_model({entry.name!r}, pretrained={example!r}), "
        f"or on the command line --model {entry.name} --pretrained {example}"
    )
    return "\n".join(lines)


def _hub_error(entry: WeightsEntry, files: list[str], cache: Path, reason: str) -> WeightsUnavailableError:
    repo = entry.hub_repo_id
    folder = cache / _repo_folder(repo)
    is_folder = entry.filename is None  # a transformers repository: config.json + a weights file
    missing = "config.json and model.safetensors (or pytorch_model.bin)" if is_folder else files[0]
    verb = "are" if is_folder else "is"
    download = "config.json model.safetensors" if is_folder else " ".join(files)
    command = (
        f"`hf download {repo} {download}` (huggingface_hub < 0.34: `huggingface-cli download {repo} {download}`), "
        f"then copy the cache folder {folder} to this machine (HF_HUB_CACHE or HF_HOME choose the cache location)"
    )
    what, example = (
        ("the repository folder (config.json and the weights file)", "path/to/folder")
        if is_folder
        else (files[0], f"path/to/{files[0]}")
    )
    return WeightsUnavailableError(
        f"Pretrained weights {entry.name} are not available: {missing} of the Hugging Face Hub repository {repo} "
        f"{verb} not in the cache (looked in {folder}) and {reason}.\n" + _how_to_supply(entry, what, example, command)
    )


def _url_error(entry: WeightsEntry, target: Path, reason: str) -> WeightsUnavailableError:
    file = target.name.split("--", 1)[1]
    command = f"`curl -L -o {target} {entry.url}` (it is found there next time)"
    return WeightsUnavailableError(
        f"Pretrained weights {entry.name} are not available: {entry.url} is not in the cache (looked for {target}) "
        f"and {reason}.\n" + _how_to_supply(entry, file, f"path/to/{file}", command)
    )


def _page_error(entry: WeightsEntry, target: Path) -> WeightsUnavailableError:
    inside = f" (the file {entry.filename} in the release)" if entry.filename else ""
    return WeightsUnavailableError(
        f"Pretrained weights {entry.name} have no direct download: get them from {entry.download_page}{inside}, "
        f"then either place the file at {target} or pass it: create_model({entry.name!r}, "
        f"pretrained='path/to/checkpoint_ema_best.pt'), or on the command line --model {entry.name} --pretrained FILE."
    )


def _repo_folder(repo_id: str) -> str:
    return "models--" + repo_id.replace("/", "--")


# ------------------------------------------------------------------------------------------------ resolution
def _hub_files(entry: WeightsEntry) -> list[list[str]]:
    """Alternative file sets of a Hub entry, preferred first: one file, or config.json plus one weights file."""
    if entry.filename is not None:
        return [[entry.filename]]
    return [["config.json", weights] for weights in HF_WEIGHT_FILES]


def _cached_hub(entry: WeightsEntry, cache: Path) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for files in _hub_files(entry):
        found = [try_to_load_from_cache(entry.hub_repo_id, f, cache_dir=str(cache)) for f in files]
        if all(isinstance(p, str) for p in found):
            paths = [Path(p) for p in found]
            if len({p.parent for p in paths}) == 1:  # one snapshot
                return paths[0] if entry.filename is not None else paths[0].parent
    return None


def cached_weights(entry: WeightsEntry | str) -> Path | None:
    """The local file (or transformers folder) of a weights entry when it is already cached, else ``None``."""
    entry = get_weights(entry) if isinstance(entry, str) else entry
    if entry.hub_repo_id:
        return _cached_hub(entry, hf_cache_dir())
    target = local_weights_path(entry)
    require_regular_file(target, "Cached weights file")
    return target if target.is_file() else None


def _download_hub(entry: WeightsEntry, cache: Path) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        from huggingface_hub.errors import EntryNotFoundError
    except ImportError:  # huggingface_hub < 0.24
        from huggingface_hub.utils import EntryNotFoundError

    endpoint = hf_endpoint()
    alternatives = _hub_files(entry)
    for i, files in enumerate(alternatives):
        try:
            paths = [
                Path(hf_hub_download(entry.hub_repo_id, f, cache_dir=str(cache), endpoint=endpoint)) for f in files
            ]
        except EntryNotFoundError:
            if i + 1 < len(alternatives):
                continue  # the repository holds the other weights file
            raise
        return paths[0] if entry.filename is not None else paths[-1].parent
    raise AssertionError("unreachable")


def resolve_weights(entry: WeightsEntry | str) -> Path:
    """The local path of a weights entry's checkpoint, downloading it into the standard cache when needed.

    Args:
        entry: a :class:`~mobilevit.weights.entries.WeightsEntry`, or its name (a bare architecture name means its
            default weights).

    Returns:
        A checkpoint file, or for a transformers repository the snapshot folder holding ``config.json`` and the
        weights file; either is readable by :func:`mobilevit.weights.read_checkpoint`.

    Raises:
        WeightsUnavailableError: not cached, and offline (``HF_HUB_OFFLINE=1``), unreachable, refused by the server,
            or only available from a download page. The message names the file, the cache location looked in and how
            to supply the file.
    """
    entry = get_weights(entry) if isinstance(entry, str) else entry
    if entry.hub_repo_id:
        cache = hf_cache_dir()
        found = _cached_hub(entry, cache)
        if found is not None:
            logger.debug("Using cached %s for %s", found, entry.name)
            return found
        files = _hub_files(entry)[0]
        endpoint = hf_endpoint()
        if is_offline():
            raise _hub_error(entry, files, cache, "HF_HUB_OFFLINE is set, so nothing is downloaded")
        reason = probe(endpoint)
        if reason is not None:
            raise _hub_error(entry, files, cache, f"the Hub at {endpoint} is unreachable: {reason}")
        logger.info("Downloading %s from %s/%s", entry.name, endpoint, entry.hub_repo_id)
        try:
            return _download_hub(entry, cache)
        except Exception as e:  # huggingface_hub raises HTTP, OS, offline-mode and validation errors here
            raise _hub_error(
                entry, files, cache, f"the download failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
            ) from e

    target = local_weights_path(entry)
    require_regular_file(target, "Cached weights file")  # a FIFO there would block the reader
    if target.is_file():
        logger.debug("Using cached %s for %s", target, entry.name)
        return target
    if not entry.url:
        raise _page_error(entry, target)
    if is_offline():
        raise _url_error(entry, target, "HF_HUB_OFFLINE is set, so nothing is downloaded")
    reason = probe(entry.url)
    if reason is not None:
        raise _url_error(entry, target, f"the server is unreachable: {reason}")
    import torch.hub

    logger.info("Downloading %s from %s", entry.name, entry.url)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        # writes a temporary file next to the target and renames it when complete
        torch.hub.download_url_to_file(entry.url, str(target), progress=False)
    except Exception as e:  # urllib raises URLError / HTTPError / OSError / timeouts
        raise _url_error(entry, target, f"the download failed: {type(e).__name__}: {e}") from e
    return target


__all__ = [
    "WeightsUnavailableError",
    "cached_weights",
    "hf_cache_dir",
    "hf_endpoint",
    "is_offline",
    "local_weights_path",
    "probe",
    "resolve_weights",
]
