"""The output folder of a training run: safe (atomic) writes, the lock (`run.lock`), the `RUNNING` / `FAILED` markers,
and what "overwrite" clears.

What a run folder holds and when: docs/training.md#what-a-run-folder-holds and docs/formats.md#the-run-folder. What a
run wrote is recognised by name and content (the files at the top of the folder, `checkpoints/checkpoint_<k>/`
folders holding only checkpoint files, TensorBoard files in `maple_peft/`); a folder a run writes into that holds
anything else is refused, and nothing else is ever removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from filelock import FileLock, Timeout

LOCK_FILE = "run.lock"
RUNNING_MARKER = "RUNNING"
FAILED_MARKER = "FAILED"
LOG_FILE = "training_log.txt"
CHECKPOINTS_DIR = "checkpoints"
TRACKER_DIR = "maple_peft"
"""Where `--report_to` trackers log (Accelerate's `project_dir / project_name`)."""
EVALUATIONS_FILE = "evaluations.json"
"""The result files `examples/evaluate.py` wrote inside the run folder (path and SHA-256 of each)."""
RESULT_FILES = (
    "adapter_model.safetensors",
    "adapter_config.json",
    "README.md",
    "metrics.json",
    "training_history.json",
    "train_images.json",
    "training_curves.png",
    "per_class_accuracy.png",
    "base_novel_hm.png",
)
"""The files a finished run writes at its end (the plots only when plotting is on)."""

RUN_FILES = (*RESULT_FILES, LOG_FILE, RUNNING_MARKER, FAILED_MARKER, EVALUATIONS_FILE)
"""The files at the top of a run folder that `--overwrite_output_dir` removes (with the evaluation results recorded
in `evaluations.json`, and the run's entries of `RUN_FOLDERS`)."""
RUN_FOLDERS = (CHECKPOINTS_DIR, TRACKER_DIR)
"""The folders a run writes into; only the entries recognised as a run's are ever removed from them."""

CHECKPOINT_NAME = re.compile(r"^checkpoint_(\d+)$")
_CHECKPOINT_FILE = re.compile(
    r"^(adapter_model\.safetensors|trainer_state\.json|scaler\.pt"
    r"|(optimizer|scheduler|sampler|dl_state_dict)(_\d+)?\.bin"
    r"|(random_states|custom_checkpoint)_\d+\.pkl"
    r"|(model|pytorch_model)(_\d+)?\.(safetensors|bin))$"
)  # what `accelerator.save_state` and `register_adapter_checkpointing` write into a checkpoint folder
TEMPORARY = re.compile(r"^\.[^.].*\.tmp\w*$")
"""The hidden temporary entries of interrupted writes (`atomic_write_text`'s `.<name>.<random>.tmp`)."""
_TENSORBOARD_FILE = re.compile(r"^events\.out\.tfevents\.")
_TENSORBOARD_RUN = re.compile(r"^\d+(\.\d+)?$")  # the time-stamped folders of `add_hparams` and Accelerate
_LONGEST_INSIDE = len("/checkpoints/checkpoint_1000000/.custom_checkpoint_10.pkl.12345678.tmp")
"""The longest path a run writes below its folder, for the path-length check."""


# ---- safe writing -----------------------------------------------------------------------------------------------


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Writes a file through a temporary file in the same folder, flushed to disk and then renamed over `path`: a
    reader (or a run resumed after a kill or a full disk) finds the previous file or the complete new one, never a
    half-written one.

    The file gets the permissions of any newly created file (the user's umask), not the private mode of a temporary
    file. When `write` fails, the temporary file is removed and `path` is left as it was.

    Args:
        path (`str` or `os.PathLike`): The file to write.
        write (`Callable[[Path], Any]`): Writes the content to the path it is given (the temporary file), e.g.
            `lambda tmp: figure.savefig(tmp, format="png")`.

    Example:
        ```python
        >>> atomic_write("out/weights.safetensors", lambda tmp: save_file(state_dict, tmp))
        ```
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        apply_umask(tmp)
        _flush_to_disk(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _flush_to_disk(path: str | os.PathLike) -> None:
    """`fsync`s a file, so that its content is on disk before a rename makes it visible."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes a text file (UTF-8) with `atomic_write`: never a half-written file.

    Args:
        path (`str` or `os.PathLike`): The file to write.
        text (`str`): Its content.
    """
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_into_atomically(output_dir: str | os.PathLike, save: Callable[[Path], Any]) -> list[str]:
    """Lets `save` write files into a hidden temporary folder inside `output_dir`, then moves each of them into
    `output_dir` by a rename after flushing it to disk: every file is there complete or not at all, whenever the
    process is killed or the disk fills up.

    For writers that take a folder, e.g. `model.save_pretrained`. A temporary folder left by a killed process is a
    hidden `.<name>.<random>.tmp` entry, which `clear_previous_run` removes.

    Args:
        output_dir (`str` or `os.PathLike`): The folder the files are for.
        save (`Callable[[Path], Any]`): Writes the files into the folder it is given (flat: no sub-folders).

    Returns:
        The names of the files moved into `output_dir`.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=output_dir, prefix=".results.", suffix=".tmp"))
    try:
        save(staging)
        names = sorted(entry.name for entry in staging.iterdir())
        for name in names:
            apply_umask(staging / name)
            _flush_to_disk(staging / name)
        for name in names:
            os.replace(staging / name, output_dir / name)
        return names
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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

_HELD_LOCKS: set[tuple[int, int]] = set()
"""The (device, inode) of the lock files this process holds."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    except (OverflowError, OSError):
        return False
    return True


def _process_command(pid: int) -> str:
    """The command line of a process of this machine (shortened), or `""` where it cannot be read."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    command = raw.replace(b"\0", b" ").decode(errors="replace").strip()
    return command if len(command) <= 100 else command[:97] + "..."


def _lock_content(text: str) -> int | None:
    """The process id a lock file of ours holds, `None` for an empty one (a run killed while taking it).

    Raises:
        ValueError: It holds anything else: it is not a lock of this package.
    """
    if not text.strip():
        return None
    if not re.fullmatch(r"\d{1,10}\s*", text):
        raise ValueError(text)
    return int(text)


class RunLockError(RuntimeError):
    """The run folder's lock cannot be taken: another process holds it, or its path is not a lock of this package."""


def _check_lock_path(path: Path) -> None:
    """Refuses a lock path that is not a lock file of this package: a folder, a link, or a file of other content."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        kind = "link" if path.is_symlink() else "folder" if path.is_dir() else "special file"
        raise RunLockError(
            f"The lock path {path} is a {kind}, not a lock file written by this package; nothing was changed. Move "
            f"it away (or delete it if it is not yours), or choose another --output_dir."
        )
    if path.is_file():
        try:
            with open(path, "rb") as handle:
                text = handle.read(200).decode("utf-8", errors="replace")
            _lock_content(text)
        except ValueError:
            raise RunLockError(
                f"{path} holds {text[:40]!r}, not a process id: it is not a lock written by this package, so it is "
                "left alone. Move it away (or delete it if it is not yours), or choose another --output_dir."
            ) from None


class RunLock:
    """An exclusive lock on a run folder: `run.lock`, an OS file lock (`filelock.FileLock`) holding the owner's process
    id.

    Of several runs started together on one folder, exactly one gets the lock. The operating system frees it when its
    process ends, however it ends (a data-loading worker the run forked does not keep it), so a killed run's lock is
    taken over; a second run on the same folder gets a clear error naming the process that holds it. A lock path that
    is a folder, a link, or a file holding anything but a process id is refused and left alone (it is not ours).

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
        self._lock: FileLock | None = None
        self._identity: tuple[int, int] | None = None  # the locked file's (device, inode)

    @property
    def acquired(self) -> bool:
        """Whether this object holds the lock."""
        return self._lock is not None

    def _in_use_error(self) -> RunLockError:
        try:
            owner = _lock_content(self.path.read_text(encoding="utf-8", errors="replace"))
        except (OSError, ValueError):
            owner = None
        hint = ""
        if owner is None:
            holder = "a process that has not written its id"
        elif _process_alive(owner):
            command = _process_command(owner)
            holder = f"process {owner}" + (f": {command}" if command else "")
        else:
            holder = f"process {owner}, which no longer runs on this machine"
            hint = (
                " The lock is still held, by a process that run started and that outlives it, or by a run in another "
                f"container or on another machine sharing this folder: `fuser -v {self.path}` shows the holder; stop "
                "it to free the folder."
            )
        return RunLockError(
            f"{self.path.parent} is in use by another run ({holder}; lock {self.path}); wait for it to finish, stop "
            "it, or choose another --output_dir. The operating system frees the lock when the process holding it "
            f"exits; deleting {LOCK_FILE} would not stop that run.{hint}"
        )

    def _take(self) -> FileLock:
        """Takes the OS lock (the file is created if missing, its content left as it is); raises `RunLockError`."""
        lock = FileLock(self.path, timeout=0, thread_local=False, fallback_to_soft=False, on_acquired=self._locked)
        try:
            lock.acquire()
        except Timeout:
            raise self._in_use_error() from None
        except RunLockError:
            raise
        except OSError as error:
            raise RunLockError(
                f"Cannot lock {self.path}: {error.strerror or error}; the file system of --output_dir does not "
                "support file locks. Choose an --output_dir on a local disk."
            ) from None
        return lock

    def _locked(self, fd: int) -> None:
        """Called by `FileLock` once the file is locked: refuses a file that is not ours, then writes our id."""
        try:
            _lock_content(os.pread(fd, 200, 0).decode("utf-8", errors="replace"))
        except ValueError:
            _check_lock_path(self.path)  # raises the error naming the content (the lock is then rolled back)
            raise
        opened = os.fstat(fd)
        self._identity = (opened.st_dev, opened.st_ino)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    def check_free(self) -> None:
        """Checks, without taking it, that the lock could be taken now (for an early refusal before any work).

        Raises:
            RunLockError: Another process holds it, or the lock path is not a lock file of this package.
        """
        _check_lock_path(self.path)
        try:
            current = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return
        if (current.st_dev, current.st_ino) in _HELD_LOCKS:
            return
        probe = FileLock(self.path, timeout=0, thread_local=False, fallback_to_soft=False)
        try:
            probe.acquire()
        except Timeout:
            raise self._in_use_error() from None
        except OSError:
            return  # `acquire` says what is wrong with the file system
        probe.release()

    def acquire(self) -> None:
        """Takes the lock.

        Raises:
            RunLockError: Another process holds it, or the lock path is not a lock file of this package.
        """
        if self.acquired:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _check_lock_path(self.path)
        self._lock = self._take()
        _HELD_LOCKS.add(self._identity)

    def release(self) -> None:
        """Removes the lock file and frees the lock, if this object holds it."""
        if self._lock is None:
            return
        lock, self._lock = self._lock, None
        _HELD_LOCKS.discard(self._identity)
        try:
            current = os.stat(self.path, follow_symlinks=False)
            if (current.st_dev, current.st_ino) == self._identity:
                self.path.unlink()  # while still locked: a run waiting on this file then sees it is gone
        except FileNotFoundError:
            pass
        finally:
            lock.release()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# ---- where a run may write -----------------------------------------------------------------------------------------


def _pathconf(path: Path, name: str, default: int) -> int:
    try:
        value = os.pathconf(path, name)
    except (OSError, ValueError):
        return default
    return value if value and value > 0 else default


def check_can_write(output_dir: str | os.PathLike) -> None:
    """Refuses an output folder that cannot be created or written, before anything is created: a parent that is a
    file, a name longer than the file system allows, a path longer than the system's limit, a read-only folder or
    file system.

    Args:
        output_dir (`str` or `os.PathLike`): The run folder (existing or not).

    Raises:
        ValueError: The folder cannot be created or written; the message says why.
    """
    path = Path(output_dir)
    absolute = Path(os.path.abspath(path))
    existing = absolute
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    name_max = _pathconf(existing if existing.is_dir() else existing.parent, "PC_NAME_MAX", 255)
    for part in absolute.parts:
        size = len(os.fsencode(part))
        if size > name_max:
            raise ValueError(
                f"--output_dir: the name {part[:40]}... is {size} bytes long, but the file system allows at most "
                f"{name_max} bytes per name; choose a shorter --output_dir."
            )
    path_max = _pathconf(existing if existing.is_dir() else existing.parent, "PC_PATH_MAX", 4096)
    size = len(os.fsencode(str(absolute)))
    if size + _LONGEST_INSIDE >= path_max:
        raise ValueError(
            f"--output_dir {str(path)[:60]}... is {size} bytes long as an absolute path; with the files a run writes "
            f"inside it (up to {_LONGEST_INSIDE} more), that exceeds the system's limit of {path_max} bytes per "
            "path. Choose a shorter --output_dir."
        )
    if not existing.is_dir():
        kind = "a file" if existing.is_file() else "not a folder"
        what = (
            f"is {kind}"
            if existing == absolute
            else f"cannot be created: {existing} is {kind}" + (", not a folder" if existing.is_file() else "")
        )
        raise ValueError(f"--output_dir {path} {what}; choose another --output_dir.")
    try:  # the only sure test: create (and remove) a file where the run will write
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".maple_peft-write-test-", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        where = "" if existing == absolute else f" (its nearest existing folder {existing})"
        raise ValueError(
            f"--output_dir {path} is not writable{where}: {error.strerror or error}. Choose a folder you can write to."
        ) from None


# ---- what a run wrote, and what it did not ------------------------------------------------------------------------


def _is_plain_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _is_plain_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def is_run_checkpoint_entry(path: Path) -> bool:
    """Whether an entry of `checkpoints/` was written by a run: a `checkpoint_<k>` folder holding only the files of
    a checkpoint (complete or interrupted), or a hidden temporary entry of an interrupted write.

    Args:
        path (`Path`): An entry of a run's `checkpoints/` folder.
    """
    if TEMPORARY.match(path.name) and not path.is_symlink():
        return True
    if not (CHECKPOINT_NAME.match(path.name) and _is_plain_dir(path)):
        return False
    return all(
        _is_plain_file(entry) and (_CHECKPOINT_FILE.match(entry.name) or TEMPORARY.match(entry.name))
        for entry in path.iterdir()
    )


def _is_tracker_entry(path: Path) -> bool:
    """Whether an entry of the tracker folder was written by TensorBoard (`--report_to tensorboard`)."""
    if _TENSORBOARD_FILE.match(path.name):
        return _is_plain_file(path)
    if not (_TENSORBOARD_RUN.match(path.name) and _is_plain_dir(path)):
        return False
    return all(
        _is_plain_file(entry) and (_TENSORBOARD_FILE.match(entry.name) or entry.name == "hparams.yml")
        for entry in path.iterdir()
    )


def _read_evaluations(run_dir: Path) -> list[dict[str, str]]:
    """The records of `evaluations.json` (`[]` when there is none).

    Raises:
        ValueError: The file is not a record written by this package.
    """
    path = run_dir / EVALUATIONS_FILE
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        records = data["files"]
        if not all(isinstance(r["path"], str) and isinstance(r["sha256"], str) for r in records):
            raise TypeError
    except (OSError, ValueError, TypeError, KeyError, IndexError):
        raise ValueError(f"{path} is not a record of the result files evaluate.py wrote") from None
    return records


def foreign_entries(output_dir: str | os.PathLike) -> list[str]:
    """What a run would write into or remove but did not write: the paths (relative to the folder) that make a
    folder unfit for a run.

    These are: an entry of `checkpoints/` or of the tracker folder `maple_peft/` not recognised as a run's, a file
    where a run writes a folder (or the reverse), and an `evaluations.json` that is not a record of this package.
    Other files at the top of the folder (a user's notes) are not listed: a run never writes or removes them.

    Args:
        output_dir (`str` or `os.PathLike`): The run folder.
    """
    path = Path(output_dir)
    if not path.is_dir():
        return []
    found = [f"{name}/" for name in RUN_FILES if _is_plain_dir(path / name)]
    for name, is_ours in ((CHECKPOINTS_DIR, is_run_checkpoint_entry), (TRACKER_DIR, _is_tracker_entry)):
        folder = path / name
        if folder.is_dir():  # (a link to a folder is followed: its entries must be a run's too)
            found += [f"{name}/{entry.name}" for entry in sorted(folder.iterdir()) if not is_ours(entry)]
        elif os.path.lexists(folder):
            found.append(name)
    try:
        _read_evaluations(path)
    except ValueError:
        found.append(EVALUATIONS_FILE)
    return found


# ---- what a run may find in its folder ----------------------------------------------------------------------------


def check_output_dir(output_dir: str | os.PathLike, *, overwrite: bool, resume: bool) -> None:
    """Refuses a folder that a run could not write or would mix with another one, before anything is created.

    The folder must be creatable and writable (`check_can_write`), its lock free, and the folders a run writes into
    (`checkpoints/`, `maple_peft/`) must hold nothing but a run's files. Without `overwrite`, the folder may be missing,
    empty, hold only what a failed run left (`training_log.txt`, `FAILED`, tracker logs, a stale lock), or, when
    resuming, a run's checkpoints and log. Result files of a finished run (adapter, card, metrics, plots, recorded
    evaluation results) are only replaced with `overwrite`, even when resuming; those of an unfinished run (marked
    `RUNNING` or `FAILED`: killed or failed while writing them) are partial, and resuming replaces them.

    Args:
        output_dir (`str` or `os.PathLike`): The run folder.
        overwrite (`bool`): The user asked to replace the previous run in it.
        resume (`bool`): The run resumes from a checkpoint.

    Raises:
        ValueError: The folder cannot be written, or holds files that the run would overwrite or mix with.
        RunLockError: Another run holds the folder's lock, or its lock path is not a lock file of this package.
    """
    path = Path(output_dir)
    check_can_write(path)
    if not path.is_dir():
        return
    RunLock(path).check_free()
    foreign = foreign_entries(path)
    if foreign:
        listed = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ValueError(
            f"--output_dir {path} holds files that no run of this package wrote, where a run writes ({listed}); they "
            f"are left alone. Move them out of {path}, or choose another --output_dir."
        )
    if overwrite:
        return
    present = {p.name for p in path.iterdir() if not TEMPORARY.match(p.name)} - {LOCK_FILE}
    failed_leftovers = {LOG_FILE, FAILED_MARKER, RUNNING_MARKER, TRACKER_DIR}
    if resume:
        results = sorted(present & {*RESULT_FILES, EVALUATIONS_FILE})
        unfinished = bool(present & {RUNNING_MARKER, FAILED_MARKER})  # its results are partial: resumed, replaced
        if results and not unfinished:
            raise ValueError(
                f"--output_dir {path} holds the results of an earlier run ({', '.join(results)}); resuming would "
                "overwrite them. Pass --overwrite_output_dir to replace them (the checkpoints are kept), or resume "
                "into another --output_dir from a checkpoint folder."
            )
        return
    if present and not present <= failed_leftovers:
        listed = ", ".join(sorted(present)[:5])
        if present & {RUNNING_MARKER, FAILED_MARKER}:  # stopped, killed or failed: resuming is what it is for
            raise ValueError(
                f"--output_dir {path} exists and is not empty ({listed}): it holds an unfinished run; pass "
                "--resume_from_checkpoint latest to continue it, --overwrite_output_dir to start it again (other "
                "files are kept), or another --output_dir."
            )
        what = ": it holds a finished run" if present & set(RESULT_FILES) else ""  # nothing left to resume
        raise ValueError(
            f"--output_dir {path} exists and is not empty ({listed}){what}; pass --overwrite_output_dir to replace "
            "the run in it (other files are kept), or another --output_dir."
        )


def holds_only_unfinished_state(output_dir: str | os.PathLike) -> bool:
    """Whether a run folder is missing, empty, or holds only what an unfinished run left (its status marker, log,
    tracker logs, stale lock, interrupted writes, and, when it is marked `RUNNING` or `FAILED`, partial results) and
    no complete checkpoint: a run asked to resume from its latest checkpoint (a job requeued with the same command)
    may start from the beginning there.

    Args:
        output_dir (`str` or `os.PathLike`): The run folder.
    """
    path = Path(output_dir)
    if not path.is_dir():
        return not os.path.lexists(path)
    present = {p.name for p in path.iterdir() if not TEMPORARY.match(p.name)} - {LOCK_FILE}
    allowed = {LOG_FILE, RUNNING_MARKER, FAILED_MARKER, TRACKER_DIR, CHECKPOINTS_DIR}
    if present & {RUNNING_MARKER, FAILED_MARKER}:
        allowed |= {*RESULT_FILES, EVALUATIONS_FILE}
    checkpoints = path / CHECKPOINTS_DIR
    complete = checkpoints.is_dir() and any(
        (entry / "trainer_state.json").is_file() for entry in checkpoints.iterdir()
    )
    return present <= allowed and not complete


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _clear_evaluations(run_dir: Path) -> list[str]:
    """Removes the result files recorded in `evaluations.json` that still hold what evaluate.py wrote."""
    removed = []
    for record in _read_evaluations(run_dir):
        relative = PurePosixPath(record["path"])
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            continue  # never outside the run folder (a crafted record)
        target = run_dir.joinpath(*relative.parts)
        if not _is_plain_file(target):
            continue
        if hashlib.sha256(target.read_bytes()).hexdigest() != record["sha256"]:
            continue  # changed since evaluate.py wrote it: someone's file now
        target.unlink()
        removed.append(relative.as_posix())
    return removed


def clear_previous_run(output_dir: str | os.PathLike, *, keep_checkpoints: bool) -> list[str]:
    """Removes what an earlier run wrote into the folder (never other files), so it describes only the new run.

    Call it while holding the `RunLock`, after `check_output_dir`. Results, markers, the log and the evaluation
    results recorded in `evaluations.json` are always removed; the run's checkpoints and tracker files only when
    `keep_checkpoints` is `False` (a fresh run). Interrupted writes' temporaries are always removed.

    Args:
        output_dir (`str` or `os.PathLike`): The run folder.
        keep_checkpoints (`bool`): Keep `checkpoints/`, the log and tracker logs, for a resumed run.

    Returns:
        The paths removed, relative to the folder.

    Raises:
        ValueError: A folder the run writes into holds files no run wrote (`foreign_entries`); nothing is removed.
    """
    path = Path(output_dir)
    foreign = foreign_entries(path)
    if foreign:
        raise ValueError(f"{path} holds files no run of this package wrote ({', '.join(foreign[:5])}); move them.")
    removed = _clear_evaluations(path) if (path / EVALUATIONS_FILE).is_file() else []
    for name in RUN_FILES:
        target = path / name
        if (name == LOG_FILE and keep_checkpoints) or not os.path.lexists(target):
            continue
        target.unlink()
        removed.append(name)
    if not keep_checkpoints:
        for name in RUN_FOLDERS:  # every entry is a run's (checked above)
            folder = path / name
            if not folder.is_dir():
                continue
            for entry in sorted(folder.iterdir()):
                _remove(entry)
                removed.append(f"{name}/{entry.name}")
            if not folder.is_symlink():
                folder.rmdir()
                removed.append(name)
    for leftover in path.iterdir():  # interrupted atomic writes
        if TEMPORARY.match(leftover.name) and _is_plain_file(leftover):
            leftover.unlink()
        elif _is_staging_folder(leftover):
            shutil.rmtree(leftover)
    return removed


def _is_staging_folder(path: Path) -> bool:
    """Whether `path` is a temporary folder of `save_into_atomically` left by an interrupted run."""
    return (
        path.name.startswith(".results.")
        and TEMPORARY.match(path.name) is not None
        and _is_plain_dir(path)
        and all(_is_plain_file(entry) for entry in path.iterdir())
    )


# ---- result files of evaluate.py in a run folder ---------------------------------------------------------------------


def find_run_folder(path: str | os.PathLike) -> Path | None:
    """The run folder that a file would lie in: the nearest folder above it holding a run's log, a status marker, a
    training history or `evaluations.json`; `None` when there is none.

    Args:
        path (`str` or `os.PathLike`): A file (existing or not).
    """
    here = Path(os.path.abspath(path)).parent
    markers = (LOG_FILE, RUNNING_MARKER, FAILED_MARKER, "training_history.json", EVALUATIONS_FILE)
    for folder in (here, *here.parents):
        if any(_is_plain_file(folder / name) for name in markers):
            return folder
    return None


def write_result_json(path: str | os.PathLike, data: Any) -> Path | None:
    """Writes a result file as JSON (atomically); inside a run folder, records it first in the run's
    `evaluations.json`, so that `--overwrite_output_dir` of that run removes it with the run's other results.

    The record holds the file's SHA-256: a file changed since is not removed. The run folder's lock is held while
    recording, so this fails while a training run writes into the folder.

    Args:
        path (`str` or `os.PathLike`): The file to write.
        data (`Any`): A JSON-serializable object.

    Returns:
        The run folder the file was recorded in, or `None`.

    Raises:
        ValueError: The file would replace a run's own file or lie in a folder the run manages (`checkpoints/`,
            `maple_peft/`).
        RunLockError: A training run holds the folder's lock.
    """
    text = json.dumps(data, indent=2) + "\n"
    run_dir = find_run_folder(path)
    if run_dir is None:
        atomic_write_text(path, text)
        return None
    relative = Path(os.path.abspath(path)).relative_to(run_dir)
    if relative.parts[0] in (*RUN_FOLDERS, *RUN_FILES, LOCK_FILE):
        raise ValueError(
            f"{path} is {'a file' if len(relative.parts) == 1 else 'inside a folder'} of the training run in "
            f"{run_dir} ({relative.parts[0]}); write the result beside the run's files instead, e.g. "
            f"{run_dir / 'eval_all.json'}."
        )
    with RunLock(run_dir):
        records = [r for r in _read_evaluations(run_dir) if r["path"] != relative.as_posix()]
        records.append({"path": relative.as_posix(), "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()})
        atomic_write_json(run_dir / EVALUATIONS_FILE, {"written_by": "examples/evaluate.py", "files": records})
        atomic_write_text(path, text)
    return run_dir


# ---- status markers -----------------------------------------------------------------------------------------------


def mark_running(output_dir: str | os.PathLike) -> None:
    """Writes the `RUNNING` marker (removing a `FAILED` one).

    Args:
        output_dir (`str` or `os.PathLike`): The run folder.
    """
    (Path(output_dir) / FAILED_MARKER).unlink(missing_ok=True)
    atomic_write_text(Path(output_dir) / RUNNING_MARKER, f"Started by process {os.getpid()}; not finished.\n")


def mark_failed(output_dir: str | os.PathLike, error: BaseException) -> None:
    """Replaces the `RUNNING` marker with `FAILED`, holding the error. Where `FAILED` cannot be written (a full
    disk), `RUNNING` stays: the folder still reads as unfinished.

    Args:
        output_dir (`str` or `os.PathLike`): The run folder.
        error (`BaseException`): Why the run stopped.
    """
    try:
        atomic_write_text(Path(output_dir) / FAILED_MARKER, f"{type(error).__name__}: {error}\n")
    except OSError:  # a full disk: the RUNNING marker stays, which says "unfinished" as well
        return
    (Path(output_dir) / RUNNING_MARKER).unlink(missing_ok=True)


def mark_finished(output_dir: str | os.PathLike) -> None:
    """Removes the `RUNNING` marker: the folder now holds a finished run.

    Args:
        output_dir (`str` or `os.PathLike`): The run folder.
    """
    (Path(output_dir) / RUNNING_MARKER).unlink(missing_ok=True)
