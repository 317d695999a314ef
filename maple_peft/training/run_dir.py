"""The output folder of a training run: safe writes, a lock, status markers, and what "overwrite" clears.

A run folder always describes one run. While a run writes to it, the folder holds `run.lock` (the process id) and a
`RUNNING` marker; a run that fails leaves `FAILED` (with the error) instead, and a finished run leaves neither. The
result files (adapter, model card, metrics, history, plots) are written only at the end of a run, after the previous
ones were removed, so a result file in the folder is always the result of the run that finished last.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

LOCK_FILE = "run.lock"
RUNNING_MARKER = "RUNNING"
FAILED_MARKER = "FAILED"
LOG_FILE = "training_log.txt"
CHECKPOINTS_DIR = "checkpoints"
TRACKER_DIR = "maple_peft"
"""Where `--report_to` trackers log (Accelerate's `project_dir / project_name`)."""
RESULT_FILES = (
    "adapter_model.safetensors",
    "adapter_config.json",
    "README.md",
    "metrics.json",
    "training_history.json",
    "training_curves.png",
    "per_class_accuracy.png",
    "base_novel_hm.png",
)
"""The files a finished run writes at its end (the plots only when plotting is on)."""

RUN_FILES = (*RESULT_FILES, LOG_FILE, RUNNING_MARKER, FAILED_MARKER, CHECKPOINTS_DIR, TRACKER_DIR)
"""Everything a run writes into its folder besides the lock; `--overwrite_output_dir` removes exactly these."""


# ---- safe writing -----------------------------------------------------------------------------------------------


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes a text file through a temporary file in the same folder and a rename: never a half-written file.

    The file gets the permissions of any newly created file (the user's umask), not the private mode of a temporary
    file.

    Args:
        path (`str` or `os.PathLike`): The file to write.
        text (`str`): Its content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        apply_umask(tmp)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def apply_umask(*paths: str | os.PathLike) -> None:
    """Gives files the permissions of any newly created file (the user's umask), e.g. after a library wrote them
    with a private mode (`safetensors` writes 0600).

    Args:
        paths (`str` or `os.PathLike`): The files.
    """
    umask = os.umask(0)
    os.umask(umask)
    for path in paths:
        os.chmod(path, 0o666 & ~umask)


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Writes `data` as indented JSON with `atomic_write_text`.

    Args:
        path (`str` or `os.PathLike`): The file to write.
        data (`Any`): A JSON-serializable object.
    """
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


# ---- the lock -----------------------------------------------------------------------------------------------------


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class RunLock:
    """An exclusive lock on a run folder: a `run.lock` file holding the owner's process id.

    A second run on the same folder gets a clear error naming the process that holds it; a lock left behind by a
    process that no longer exists (a killed run) is taken over.

    Args:
        output_dir (`str` or `os.PathLike`): The run folder (created if needed).

    Example:
        ```python
        >>> with RunLock("outputs/eurosat/seed1"):
        ...     ...  # write the run
        ```
    """

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.path = Path(output_dir) / LOCK_FILE
        self.acquired = False

    def acquire(self) -> None:
        """Takes the lock.

        Raises:
            RuntimeError: Another living process holds it.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                try:
                    owner = int(self.path.read_text(encoding="utf-8").split()[0])
                except (OSError, ValueError, IndexError):
                    owner = None
                if owner is not None and owner != os.getpid() and _process_alive(owner):
                    raise RuntimeError(
                        f"{self.path.parent} is in use by another run (process {owner}, see {self.path}); wait for "
                        "it to finish, stop it, or choose another output_dir."
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(f"{os.getpid()}\n")
            self.acquired = True
            return
        raise RuntimeError(f"Could not take the lock {self.path}; another run is starting on the same folder.")

    def release(self) -> None:
        """Removes the lock file if this process holds it."""
        if self.acquired:
            self.path.unlink(missing_ok=True)
            self.acquired = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---- what a run may find in its folder ----------------------------------------------------------------------------


def check_output_dir(output_dir: str | os.PathLike, *, overwrite: bool, resume: bool) -> None:
    """Refuses a folder that a run would mix with another one, before anything is created.

    Without `overwrite`, the folder may be missing, empty, hold only what a failed run left (`training_log.txt`,
    `FAILED`, tracker logs, a stale lock), or, when resuming, a run's checkpoints and log. Result files of an earlier run
    (adapter, card, metrics, plots) are only replaced with `overwrite`, even when resuming.

    Args:
        output_dir (`str` or `os.PathLike`): The run folder.
        overwrite (`bool`): The user asked to replace the previous run in it.
        resume (`bool`): The run resumes from a checkpoint.

    Raises:
        ValueError: The folder is a file, or holds files that the run would overwrite or mix with.
    """
    path = Path(output_dir)
    if path.is_file():
        raise ValueError(f"output_dir={str(path)!r} is a file; pass a folder.")
    if not path.is_dir() or overwrite:
        return
    present = {p.name for p in path.iterdir()} - {LOCK_FILE}
    failed_leftovers = {LOG_FILE, FAILED_MARKER, RUNNING_MARKER, TRACKER_DIR}
    if resume:
        results = sorted(present & set(RESULT_FILES))
        if results:
            raise ValueError(
                f"output_dir={str(path)!r} holds the results of an earlier run ({', '.join(results)}); resuming "
                "would overwrite them. Pass overwrite_output_dir=True to replace them (the checkpoints are kept), "
                "or resume into another output_dir from a checkpoint folder."
            )
        return
    if present and not present <= failed_leftovers:
        raise ValueError(
            f"output_dir={str(path)!r} exists and is not empty ({', '.join(sorted(present)[:5])}); pass "
            "overwrite_output_dir=True to replace the run in it, resume_from_checkpoint='latest' to continue its "
            "run, or another output_dir."
        )


def clear_previous_run(output_dir: str | os.PathLike, *, keep_checkpoints: bool) -> list[str]:
    """Removes what an earlier run wrote into the folder (never other files), so it describes only the new run.

    Call it while holding the `RunLock`. Results, markers and the log are always removed; checkpoints only when
    `keep_checkpoints` is `False` (a fresh run), except hidden leftovers of interrupted checkpoint writes, which
    are always removed.

    Args:
        output_dir (`str` or `os.PathLike`): The run folder.
        keep_checkpoints (`bool`): Keep `checkpoints/` (and the log and tracker logs) for a resumed run.

    Returns:
        The names removed.
    """
    path = Path(output_dir)
    removed = []
    keep = {CHECKPOINTS_DIR, LOG_FILE, TRACKER_DIR} if keep_checkpoints else set()
    for name in RUN_FILES:
        target = path / name
        if name in keep or not (target.exists() or target.is_symlink()):
            continue
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
        removed.append(name)
    for leftover in path.glob(".*.tmp"):  # interrupted atomic writes
        leftover.unlink(missing_ok=True)
    return removed


def mark_running(output_dir: str | os.PathLike) -> None:
    """Writes the `RUNNING` marker (removing a `FAILED` one).

    Args:
        output_dir (`str` or `os.PathLike`): The run folder.
    """
    (Path(output_dir) / FAILED_MARKER).unlink(missing_ok=True)
    atomic_write_text(Path(output_dir) / RUNNING_MARKER, f"Started by process {os.getpid()}; not finished.\n")


def mark_failed(output_dir: str | os.PathLike, error: BaseException) -> None:
    """Replaces the `RUNNING` marker with `FAILED`, holding the error.

    Args:
        output_dir (`str` or `os.PathLike`): The run folder.
        error (`BaseException`): Why the run stopped.
    """
    atomic_write_text(Path(output_dir) / FAILED_MARKER, f"{type(error).__name__}: {error}\n")
    (Path(output_dir) / RUNNING_MARKER).unlink(missing_ok=True)


def mark_finished(output_dir: str | os.PathLike) -> None:
    """Removes the `RUNNING` marker: the folder now holds a finished run.

    Args:
        output_dir (`str` or `os.PathLike`): The run folder.
    """
    (Path(output_dir) / RUNNING_MARKER).unlink(missing_ok=True)
