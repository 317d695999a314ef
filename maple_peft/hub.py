"""Where a model, adapter or dataset comes from, a local folder or the Hub, checked before anything is loaded.

The libraries treat every name that is not an existing local path as a Hub id, and wait on the network for it:
a misspelled local folder (`outputs/smok`) is retried as the Hub repository `outputs/smok` for a minute, and a Hub
that never answers is waited on for minutes before "Can't find adapter_config.json". `check_sources` answers in one
line instead, before any work:

- a name that can only be a local path (absolute, `./`, `~`, a backslash, several `/`, or `a/b` where the folder
  `a` exists here) and does not exist: `FileNotFoundError`, naming the closest existing names;
- Hub ids while the Hub cannot be reached (one request, `HF_HUB_ETAG_TIMEOUT` seconds at most): `HubUnreachableError`
  naming the network problem, `HF_HUB_OFFLINE` and local paths, unless every one of them is in the cache, in which
  case the process switches to offline mode and uses the cached files;
- `check_writable_cache`: a cache folder that cannot be written (a read-only home): `CacheNotWritableError`.

With `HF_HUB_OFFLINE=1` the network is never touched, and every Hub id must be in the cache: those that are not are
named together in one `HubUnreachableError` (a model with no snapshot in the Hub cache, a dataset with no prepared
copy in the datasets cache, which is where `datasets` looks offline). Nothing is checked for names that exist locally,
and nothing at all with `local_files_only=True`.
"""

from __future__ import annotations

import difflib
import glob
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence

__all__ = [
    "CacheNotWritableError",
    "HubUnreachableError",
    "check_sources",
    "check_writable_cache",
    "local_path_reason",
]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_PROBE_TTL_S = 60.0
_probed: dict[str, tuple[float, str | None]] = {}


class HubUnreachableError(OSError):
    """The Hugging Face Hub cannot be reached and what is asked for is not in the local cache."""


class CacheNotWritableError(OSError):
    """A cache folder (Hugging Face hub or datasets cache) cannot be created or written."""


def _described(what: str, name: str) -> str:
    """`--adapter outputs/x` for a flag, `adapter_name_or_path='outputs/x'` for a Python argument, else `what 'x'`."""
    if what.startswith("-"):
        return f"{what} {name}"
    return f"{what}={name!r}" if what.isidentifier() else f"{what} {name!r}"


def local_path_reason(name: str) -> str | None:
    """Why `name` can only be a local path, or `None` when it may be a Hub id (`"user/repo"` or `"repo"`).

    Args:
        name (`str`): a model, adapter or dataset name or path.
    """
    if os.path.isabs(name) or name.startswith(("./", "../", "~", ".\\", "..\\")) or name in (".", ".."):
        return "it is a path"
    if "\\" in name or name.endswith("/") or name.count("/") > 1:
        return "it is a path"
    if not _HUB_ID.match(name):
        return "it is not a valid Hub id"
    first = name.split("/")[0]
    if "/" in name and os.path.isdir(first):
        return f"the folder {first!r} exists here"
    return None


def _closest(name: str) -> str:
    """` Did you mean ...?` with the existing paths closest to the missing path `name`, or `""`: each missing folder
    on the way is replaced by its closest existing name (`smoke_asset/data` -> `smoke_assets/data`)."""
    *folders, leaf = name.rstrip("/\\").split("/")
    parent = "/".join(folders)
    for index, folder in enumerate(folders):
        here = "/".join(folders[:index]) or ("/" if name.startswith("/") else "")
        if folder in ("", ".", "..", "~") or os.path.isdir(os.path.expanduser(os.path.join(here, folder))):
            continue
        try:
            match = difflib.get_close_matches(folder, os.listdir(os.path.expanduser(here) or "."), n=1, cutoff=0.6)
        except OSError:
            return ""
        if not match:
            return ""
        folders[index] = match[0]
        parent = "/".join(folders)
    try:
        entries = os.listdir(os.path.expanduser(parent) if parent else ".")
    except OSError:
        return ""
    matches = [leaf] if leaf in entries else difflib.get_close_matches(leaf, entries, n=3, cutoff=0.6)
    if not matches:
        return ""
    return " Did you mean " + " or ".join(f"{parent}/{m}" if parent else m for m in matches) + "?"


def _probe(endpoint: str, timeout: float) -> str | None:
    """`None` when `endpoint` answers within `timeout` seconds (any HTTP status), otherwise the network problem."""
    now = time.monotonic()
    cached = _probed.get(endpoint)
    if cached is not None and now - cached[0] < _PROBE_TTL_S:
        return cached[1]
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=timeout, follow_redirects=False)
        problem = None
    except Exception as error:  # the session's connection and timeout errors (httpx), SSL errors, proxies...
        reason = " ".join(str(error).split()) or "no answer"
        problem = f"{type(error).__name__}: {reason}"
        if "timeout" in type(error).__name__.lower() or "timed out" in reason.lower():
            problem = f"no answer within {timeout:g} s ({type(error).__name__})"
    _probed[endpoint] = (now, problem)
    return problem


def _datasets_cache_entry(repo_id: str) -> str:
    """The folder where `datasets` keeps the prepared copy of the Hub dataset `repo_id` (and looks for it offline)."""
    from datasets import config  # only the training scripts name datasets, and they have `datasets`
    from datasets.naming import camelcase_to_snakecase

    *namespace, name = repo_id.split("/")
    return os.path.join(
        os.path.expanduser(str(config.HF_DATASETS_CACHE)), "___".join([*namespace, camelcase_to_snakecase(name)])
    )


def _missing_from_cache(repo_id: str, repo_type: str, cache_dir: str | None) -> str | None:
    """What the libraries would look for in vain in the caches without the network, or `None` when it is there."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    if repo_type == "dataset":
        entry = _datasets_cache_entry(repo_id)
        if glob.glob(os.path.join(glob.escape(entry), "*", "*", "*")):
            return None
        return f"no prepared copy in the datasets cache ({entry})"
    cache = cache_dir or constants.HF_HUB_CACHE
    snapshots = os.path.join(cache, repo_folder_name(repo_id=repo_id, repo_type=repo_type), "snapshots")
    if os.path.isdir(snapshots) and os.listdir(snapshots):
        return None
    return f"no file of it in the Hub cache ({cache})"


def _in_cache(repo_id: str, repo_type: str, cache_dir: str | None) -> bool:
    return _missing_from_cache(repo_id, repo_type, cache_dir) is None


def _go_offline() -> None:
    """Offline mode for the rest of the process: the libraries use their caches without trying the network."""
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    if "datasets.config" in sys.modules:
        sys.modules["datasets.config"].HF_HUB_OFFLINE = True


def check_sources(
    sources: Mapping[str, tuple[str | os.PathLike | None, str]],
    *,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
    offline_lacking: Sequence[str] = (),
) -> None:
    """Checks, before anything is loaded, that each source is an existing local path or a Hub id that can be fetched.

    Args:
        sources (`Mapping[str, tuple]`): how the source is called in messages (`"--adapter"` or
            `"adapter_name_or_path"`) -> `(name or path, repo type)`, the repo type being `"model"` or `"dataset"`,
            or `"folder"` for a source that can only be a local folder (`--data_dir` of an image folder); a `None`
            name is skipped.
        cache_dir (`str` or `os.PathLike`, *optional*): the Hub cache the downloads go to (default: `HF_HUB_CACHE`).
        local_files_only (`bool`): no download is wanted: only the local paths are checked.
        offline_lacking (`Sequence[str]`): what the caller found missing from the caches by other means (a file of
            a Hub data root), named with the rest in offline mode.

    Raises:
        `FileNotFoundError`: a name that can only be a local path does not exist.
        `HubUnreachableError`: a Hub id is not in the cache and the Hub does not answer.
        `CacheNotWritableError`: a Hub id is to be downloaded into a cache that cannot be written.

    Example:
        ```python
        >>> check_sources({"--adapter": ("outputs/smok", "model")})
        FileNotFoundError: --adapter outputs/smok: no such folder (the folder 'outputs' exists here, so it is not tried
        as the Hub repository 'outputs/smok'). Did you mean outputs/smoke? Pass an existing folder or a Hub id ...
        ```
    """
    from huggingface_hub import constants

    hub_ids = []
    for what, (name, repo_type) in sources.items():
        if name is None or name == "":
            continue
        name = os.fspath(name)
        if repo_type == "folder":
            if not os.path.isdir(os.path.expanduser(name)):
                problem = "is a file, not a folder" if os.path.exists(os.path.expanduser(name)) else "no such folder"
                raise FileNotFoundError(
                    f"{_described(what, name)}: {problem}.{_closest(name)} Pass an existing folder."
                )
            continue
        if os.path.exists(os.path.expanduser(name)):
            continue
        reason = local_path_reason(name)
        if reason is not None:
            if _HUB_ID.match(name):
                reason += f", so it is not tried as the Hub repository {name!r}"
            raise FileNotFoundError(
                f"{_described(what, name)}: no such folder ({reason}).{_closest(name)} Pass an existing folder or a "
                "Hub id (user/name)."
            )
        hub_ids.append((what, name, repo_type))
    if not (hub_ids or offline_lacking) or local_files_only:
        return
    cache = os.fspath(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE
    if constants.HF_HUB_OFFLINE:  # nothing will be downloaded: say now everything the caches lack, not one at a time
        lacking = [(what, name, _missing_from_cache(name, repo_type, cache)) for what, name, repo_type in hub_ids]
        lacking = [f"{_described(what, name)} ({why})" for what, name, why in lacking if why is not None]
        lacking += offline_lacking
        if lacking:
            raise HubUnreachableError(
                f"HF_HUB_OFFLINE=1 (offline mode: nothing is downloaded) and the cache lacks {'; '.join(lacking)}. "
                "Run once without HF_HUB_OFFLINE to download them, or pass local folders."
            )
        return
    problem = _probe(constants.ENDPOINT, float(constants.HF_HUB_ETAG_TIMEOUT))
    if problem is None:
        if not all(_in_cache(name, repo_type, cache) for _, name, repo_type in hub_ids):
            check_writable_cache(cache, "the Hugging Face cache (HF_HUB_CACHE)")
        return
    missing = [(what, name) for what, name, repo_type in hub_ids if not _in_cache(name, repo_type, cache)]
    if missing:
        named = " and ".join(_described(what, name) for what, name in missing)
        raise HubUnreachableError(
            f"Cannot reach the Hugging Face Hub at {constants.ENDPOINT} ({problem}) to download {named}, "
            f"{'which is' if len(missing) == 1 else 'which are'} not in the cache {cache}. Check the network or proxy "
            "settings, or pass a local folder instead (HF_HUB_OFFLINE=1, which uses only the cache, would not help)."
        )
    import logging

    logging.getLogger(__name__).warning(
        f"The Hugging Face Hub at {constants.ENDPOINT} cannot be reached ({problem}); using the cached "
        f"{', '.join(name for _, name, _ in hub_ids)} (offline mode, as with HF_HUB_OFFLINE=1)."
    )
    _go_offline()


def check_writable_cache(path: str | os.PathLike, what: str) -> None:
    """Refuses a cache folder that cannot be written (or created): a read-only home, a parent that is a file.

    Args:
        path (`str` or `os.PathLike`): the cache folder.
        what (`str`): its name in the message, e.g. `"the datasets cache (HF_DATASETS_CACHE)"`.

    Raises:
        `CacheNotWritableError`: naming the folder, why, and the environment variables that move it.
    """
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    existing = path
    while not os.path.exists(existing):
        parent = os.path.dirname(existing)
        if parent == existing:
            break
        existing = parent
    if not os.path.isdir(existing):
        problem = f"{existing} is a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    else:
        return
    raise CacheNotWritableError(
        f"Cannot write {what} at {path}: {problem}. Set HF_HOME (or HF_HUB_CACHE / HF_DATASETS_CACHE) to a writable "
        "folder, e.g. HF_HOME=/tmp/hf."
    )
