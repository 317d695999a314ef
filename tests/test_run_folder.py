"""The run folder and checkpoints, in-process: lock, what overwriting clears, markers, safe resuming, permissions."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from conftest import tiny_clip
from peft import get_peft_model
from safetensors.torch import save_file
from script_runs import run_example

import maple_peft
from maple_peft.training.checkpointing import (
    check_checkpoint_is_safe,
    differing_options,
    last_good_checkpoint,
    list_checkpoints,
    register_adapter_checkpointing,
    remove_incomplete_checkpoints,
    resolve_checkpoint,
    write_trainer_state,
)
from maple_peft.training.run_dir import (
    RESULT_FILES,
    RUNNING_MARKER,
    RunLock,
    RunLockError,
    atomic_write,
    atomic_write_json,
    check_output_dir,
    clear_previous_run,
    mark_failed,
    mark_running,
    save_into_atomically,
    write_result_json,
)

RUN_DIR_PY = Path(maple_peft.__file__).parent / "training" / "run_dir.py"
REPO = Path(__file__).resolve().parents[1]


class WritesAMarker:
    """A pickle that creates a file when it is unpickled: what a crafted checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_atomic_writes_get_the_users_umask_not_a_private_mode(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "metrics.json", {"accuracy": 1.0})
    finally:
        os.umask(old)
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o644
    assert not list(tmp_path.glob(".*.tmp"))


def hold_lock(folder: Path, *, fork_child: bool = False) -> subprocess.Popen:
    """Another process that takes the folder's lock (and, with `fork_child`, forks a child that outlives it)."""
    code = (  # run_dir.py alone (standard library and filelock): no import of torch, so the holder starts at once
        "import importlib.util, os, sys, time\n"
        f"spec = importlib.util.spec_from_file_location('run_dir', {str(RUN_DIR_PY)!r})\n"
        "run_dir = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(run_dir)\n"
        f"run_dir.RunLock({str(folder)!r}).acquire()\n"
        "ready, started = os.pipe()\n"
        f"if {fork_child} and os.fork() == 0:\n"
        "    os.write(started, b'1'); time.sleep(60); os._exit(0)\n"  # after the child's at-fork handlers ran
        f"if {fork_child}:\n"
        "    os.read(ready, 1)\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    return holder


def test_a_second_run_on_a_locked_folder_gets_a_clear_error_naming_the_holder(tmp_path):
    holder = hold_lock(tmp_path)
    try:
        with pytest.raises(RunLockError, match=f"in use by another run \\(process {holder.pid}: .*python") as error:
            RunLock(tmp_path).acquire()
        assert "--output_dir" in str(error.value)
        with pytest.raises(RunLockError, match="in use by another run"):  # the early check, before any work
            check_output_dir(tmp_path, overwrite=True, resume=False)
        assert (tmp_path / "run.lock").read_text() == f"{holder.pid}\n"
    finally:
        holder.kill()
        holder.wait()
    with RunLock(tmp_path):  # the OS freed the killed holder's lock: taken over
        assert (tmp_path / "run.lock").read_text() == f"{os.getpid()}\n"
    assert not (tmp_path / "run.lock").exists()


def test_a_killed_runs_lock_is_not_kept_by_a_child_it_forked(tmp_path):
    # a data-loading worker forked by the run inherits the open lock file; it must not keep the folder locked
    holder = hold_lock(tmp_path, fork_child=True)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with RunLock(tmp_path):
        assert (tmp_path / "run.lock").read_text() == f"{os.getpid()}\n"


@pytest.mark.parametrize("content", ["", "999999999\n", "live"])
def test_a_lock_file_nobody_holds_is_stale_and_taken_over(tmp_path, content):
    # "live": the id of a live process that does not hold the lock (an unrelated process that got a dead run's id)
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run.lock").write_text(f"{unrelated.pid}\n" if content == "live" else content)
        with RunLock(tmp_path):
            assert (tmp_path / "run.lock").read_text() == f"{os.getpid()}\n"
        assert not (tmp_path / "run.lock").exists()
    finally:
        unrelated.kill()
        unrelated.wait()


@pytest.mark.parametrize("kind", ["garbage", "folder", "link"])
def test_a_lock_path_that_is_not_our_lock_file_is_refused_and_left_alone(tmp_path, kind):
    lock = tmp_path / "run.lock"
    if kind == "garbage":
        lock.write_text("my notes about this run")
        message = "holds 'my notes about this run', not a process id"
    elif kind == "folder":
        (lock / "inside").mkdir(parents=True)
        message = "is a folder, not a lock file"
    else:
        (tmp_path / "target.txt").write_text("mine")
        lock.symlink_to(tmp_path / "target.txt")
        message = "is a link, not a lock file"
    with pytest.raises(RunLockError, match=message):
        RunLock(tmp_path).acquire()
    with pytest.raises(RunLockError, match=message):
        check_output_dir(tmp_path, overwrite=True, resume=False)
    if kind == "garbage":
        assert lock.read_text() == "my notes about this run"
    elif kind == "folder":
        assert (lock / "inside").is_dir()
    else:
        assert lock.is_symlink() and (tmp_path / "target.txt").read_text() == "mine"


def test_runs_started_together_on_one_folder_never_both_hold_its_lock(tmp_path):
    """Rounds of 6 forked processes released at once onto a fresh folder, then onto one with a stale lock: in every
    round exactly one of them gets the lock."""
    rounds = []
    for round_index in range(8):
        folder = tmp_path / f"round{round_index}"
        folder.mkdir()
        if round_index % 2:
            (folder / "run.lock").write_text("999999999\n")  # a killed run's lock
        start_read, start_write = os.pipe()  # closed by the parent: all children start at once
        end_read, end_write = os.pipe()  # closed by the parent: the round is over
        result_read, result_write = os.pipe()
        children = []
        for _ in range(6):
            pid = os.fork()
            if pid == 0:  # the child: wait for the start, try once, report, hold the lock until the round ends
                try:
                    os.close(start_write)
                    os.close(end_write)
                    os.read(start_read, 1)
                    try:
                        RunLock(folder).acquire()
                        got = b"1"
                    except RunLockError:
                        got = b"0"
                    except BaseException:
                        got = b"E"
                    os.write(result_write, got)
                    os.read(end_read, 1)
                finally:
                    os._exit(0)
            children.append(pid)
        for fd in (start_read, end_read, result_write):
            os.close(fd)
        os.close(start_write)
        results = b""
        while len(results) < 6:
            chunk = os.read(result_read, 6)
            if not chunk:
                break
            results += chunk
        os.close(end_write)
        os.close(result_read)
        for pid in children:
            os.waitpid(pid, 0)
        rounds.append(results.decode())
    assert [r.count("1") for r in rounds] == [1] * 8 and not any("E" in r for r in rounds), rounds


def test_output_folder_guard(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="exists and is not empty.*--overwrite_output_dir"):
        check_output_dir(tmp_path, overwrite=False, resume=False)
    check_output_dir(tmp_path, overwrite=True, resume=False)

    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "training_log.txt").write_text("... ValueError: bad data\n")
    (failed / "FAILED").write_text("ValueError: bad data\n")
    check_output_dir(failed, overwrite=False, resume=False)  # only a failed run's leftovers: reusable

    finished = tmp_path / "finished"
    (finished / "checkpoints").mkdir(parents=True)
    (finished / "README.md").write_text("my own notes")
    (finished / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="README.md, metrics.json.*resuming would overwrite them"):
        check_output_dir(finished, overwrite=False, resume=True)


def test_overwriting_clears_the_previous_run_but_never_other_files(tmp_path):
    for name in ("adapter_model.safetensors", "README.md", "metrics.json", "per_class_accuracy.png", "FAILED"):
        (tmp_path / name).write_text("old")
    (tmp_path / "checkpoints" / "checkpoint_4").mkdir(parents=True)
    (tmp_path / "maple_peft").mkdir()  # --report_to tensorboard events
    (tmp_path / "training_log.txt").write_text("old run\n")
    (tmp_path / "notes.txt").write_text("mine")
    clear_previous_run(tmp_path, keep_checkpoints=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def a_finished_run(folder: Path) -> None:
    """What a finished run with checkpoints and `--report_to tensorboard` leaves (names as they are written)."""
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md", "metrics.json", "training_log.txt"):
        (folder / name).write_text("old")
    for number in (2, 3):
        checkpoint = folder / "checkpoints" / f"checkpoint_{number}"
        checkpoint.mkdir(parents=True)
        for name in ("adapter_model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
            (checkpoint / name).write_bytes(b"x")
        write_trainer_state(checkpoint, {"epoch": number})
    tracker = folder / "maple_peft"
    (tracker / "1764570000.123456").mkdir(parents=True)
    (tracker / "events.out.tfevents.1764570000.host.123.0").write_bytes(b"x")
    (tracker / "1764570000.123456" / "events.out.tfevents.1764570000.host.123.1").write_bytes(b"x")
    (tracker / "1764570000.123456" / "hparams.yml").write_text("lr: 0.05\n")


def test_overwriting_removes_a_runs_checkpoints_and_tensorboard_files_and_keeps_the_users(tmp_path):
    a_finished_run(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    check_output_dir(tmp_path, overwrite=True, resume=False)
    clear_previous_run(tmp_path, keep_checkpoints=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_overwriting_refuses_a_folder_whose_checkpoints_or_tracker_folder_holds_a_users_files(tmp_path):
    a_finished_run(tmp_path)
    users = {
        "checkpoints/other_model/epoch=3.ckpt": "other model",
        "checkpoints/best.pt": "best",
        "checkpoints/checkpoint_3/my_notes.txt": "a file of mine inside a checkpoint",
        "maple_peft/__init__.py": "# my package",
    }
    for name, text in users.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="holds files that no run of this package wrote") as error:
        check_output_dir(tmp_path, overwrite=True, resume=False)
    for listed in (
        "checkpoints/best.pt",
        "checkpoints/checkpoint_3",
        "checkpoints/other_model",
        "maple_peft/__init__",
    ):
        assert listed in str(error.value)
    with pytest.raises(ValueError, match="no run of this package wrote"):
        clear_previous_run(tmp_path, keep_checkpoints=False)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before  # nothing removed
    assert all((tmp_path / name).read_text() == text for name, text in users.items())
    with pytest.raises(ValueError, match="checkpoints/best.pt"):  # resuming would write into checkpoints/ too
        check_output_dir(tmp_path, overwrite=False, resume=True)


def test_a_folder_where_a_run_writes_a_file_or_a_file_where_it_writes_a_folder_is_refused(tmp_path):
    (tmp_path / "README.md").mkdir()  # the model card's name, as a folder of the user's
    (tmp_path / "README.md" / "chapter1.md").write_text("mine")
    (tmp_path / "checkpoints").write_text("a file named like the checkpoints folder")
    with pytest.raises(ValueError, match=r"README.md/, checkpoints\)"):
        check_output_dir(tmp_path, overwrite=True, resume=False)
    assert (tmp_path / "README.md" / "chapter1.md").read_text() == "mine"


def test_an_interrupted_checkpoint_holding_a_users_file_is_not_removed(tmp_path):
    (tmp_path / "checkpoints" / "checkpoint_3").mkdir(parents=True)
    (tmp_path / "checkpoints" / "checkpoint_3" / "optimizer.bin").write_bytes(b"x")
    (tmp_path / "checkpoints" / "checkpoint_3" / "mine.txt").write_text("mine")
    (tmp_path / "checkpoints" / ".hidden_notes").write_text("mine too")
    assert remove_incomplete_checkpoints(tmp_path) == []
    assert (tmp_path / "checkpoints" / "checkpoint_3" / "mine.txt").exists()
    assert (tmp_path / "checkpoints" / ".hidden_notes").exists()


def train_script(output_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    """examples/train.py on the smoke recipe (in this process, as its command line runs it), with a model and data
    that do not exist: a refusal of the output folder must come first, before anything is loaded."""
    command = ["--config", REPO / "examples/configs/smoke.yaml", "--model_name_or_path", "/no/such/model"]
    command += ["--data_dir", "/no/such/data", "--output_dir", output_dir]
    return run_example("train.py", *command, *extra)


def assert_one_error_line(done: subprocess.CompletedProcess, message: str) -> None:
    assert done.returncode != 0 and "Traceback" not in done.stderr
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert message in line and "/no/such" not in done.stderr  # refused before the data or model were looked at


def test_train_script_overwriting_a_folder_with_a_users_checkpoints_refuses_and_removes_nothing(tmp_path):
    a_finished_run(tmp_path)
    (tmp_path / "checkpoints" / "best.pt").write_text("my best model")
    (tmp_path / "maple_peft" / "__init__.py").write_text("# my package")
    before = {str(p.relative_to(tmp_path)): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    done = train_script(tmp_path, "--overwrite_output_dir")
    assert_one_error_line(done, "holds files that no run of this package wrote")
    assert "checkpoints/best.pt" in done.stderr and "maple_peft/__init__.py" in done.stderr
    assert {str(p.relative_to(tmp_path)): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_train_script_with_an_output_dir_it_cannot_create_says_so_in_one_line(tmp_path):
    (tmp_path / "a_file").write_text("x")
    assert_one_error_line(train_script(tmp_path / "a_file" / "run"), "is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


# ---- result files of evaluate.py inside a run folder ------------------------------------------------------------------


def test_an_evaluation_written_into_a_run_folder_is_removed_when_the_run_is_overwritten(tmp_path):
    a_finished_run(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    assert write_result_json(tmp_path / "eval_all.json", {"accuracy": 90.0}) == tmp_path
    assert write_result_json(tmp_path / "evals" / "novel.json", {"accuracy": 80.0}) == tmp_path  # a subfolder
    assert json.loads((tmp_path / "eval_all.json").read_text()) == {"accuracy": 90.0}
    recorded = json.loads((tmp_path / "evaluations.json").read_text())["files"]
    assert [r["path"] for r in recorded] == ["eval_all.json", "evals/novel.json"]
    with pytest.raises(ValueError, match="exists and is not empty"):  # a finished run is refused without overwrite
        check_output_dir(tmp_path, overwrite=False, resume=False)
    check_output_dir(tmp_path, overwrite=True, resume=False)
    removed = clear_previous_run(tmp_path, keep_checkpoints=False)
    assert "eval_all.json" in removed and "evals/novel.json" in removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evals", "notes.txt"]  # the (now empty) folder stays


def test_resuming_also_clears_the_evaluations_of_the_previous_results(tmp_path):
    (tmp_path / "checkpoints" / "checkpoint_2").mkdir(parents=True)
    (tmp_path / "training_log.txt").write_text("first half\n")
    write_result_json(tmp_path / "eval_all.json", {"accuracy": 90.0})
    with pytest.raises(ValueError, match="evaluations.json.*resuming would overwrite them"):
        check_output_dir(tmp_path, overwrite=False, resume=True)
    clear_previous_run(tmp_path, keep_checkpoints=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "training_log.txt"]


def test_a_recorded_evaluation_changed_since_or_a_crafted_record_never_removes_other_files(tmp_path):
    (tmp_path / "training_log.txt").write_text("a failed run\n")
    write_result_json(tmp_path / "eval_all.json", {"accuracy": 90.0})
    (tmp_path / "eval_all.json").write_text("my own edited copy")  # no longer what evaluate.py wrote
    outside = tmp_path.parent / f"{tmp_path.name}-outside.json"
    outside.write_text("{}")
    record = json.loads((tmp_path / "evaluations.json").read_text())
    digest = record["files"][0]["sha256"]
    record["files"] += [{"path": f"../{outside.name}", "sha256": digest}, {"path": str(outside), "sha256": digest}]
    (tmp_path / "evaluations.json").write_text(json.dumps(record))
    clear_previous_run(tmp_path, keep_checkpoints=False)
    assert (tmp_path / "eval_all.json").read_text() == "my own edited copy" and outside.exists()
    outside.unlink()


def test_an_evaluations_json_that_is_not_ours_is_refused(tmp_path):
    (tmp_path / "evaluations.json").write_text("my evaluation notes")
    with pytest.raises(ValueError, match=r"no run of this package wrote.*\(evaluations.json\)"):
        check_output_dir(tmp_path, overwrite=True, resume=False)
    assert (tmp_path / "evaluations.json").read_text() == "my evaluation notes"


def test_an_evaluation_is_not_written_over_a_runs_own_files_nor_into_a_run_in_progress(tmp_path):
    a_finished_run(tmp_path)
    for target in ("metrics.json", "checkpoints/eval.json", "maple_peft/eval.json"):
        with pytest.raises(ValueError, match="of the training run in .*write the result beside the run's files"):
            write_result_json(tmp_path / target, {"accuracy": 1.0})
    assert (tmp_path / "metrics.json").read_text() == "old"
    holder = hold_lock(tmp_path)  # a training run writes into the folder
    try:
        with pytest.raises(RunLockError, match="in use by another run"):
            write_result_json(tmp_path / "eval_all.json", {"accuracy": 1.0})
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "eval_all.json").exists() and not (tmp_path / "evaluations.json").exists()


def test_an_evaluation_outside_any_run_folder_is_only_written(tmp_path):
    assert write_result_json(tmp_path / "results" / "eval.json", {"accuracy": 1.0}) is None
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["eval.json", "results"]


# ---- where a run may write: one clear error before anything is created ----------------------------------------------


def test_an_output_dir_below_a_file_is_refused(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(ValueError, match=f"cannot be created: {tmp_path / 'a_file'} is a file, not a folder"):
        check_output_dir(tmp_path / "a_file" / "run", overwrite=False, resume=False)
    with pytest.raises(ValueError, match="is a file; choose another --output_dir"):
        check_output_dir(tmp_path / "a_file", overwrite=True, resume=False)


def test_a_name_longer_than_the_file_system_allows_is_refused(tmp_path):
    name = "r" * 300
    with pytest.raises(ValueError, match="is 300 bytes long, but the file system allows at most 255 bytes per name"):
        check_output_dir(tmp_path / name / "seed1", overwrite=False, resume=False)
    assert list(tmp_path.iterdir()) == []


def test_a_path_longer_than_the_system_allows_is_refused(tmp_path):
    deep = tmp_path.joinpath(*["d" * 200] * 21)  # 21 x 201 bytes > 4096
    with pytest.raises(ValueError, match="exceeds the system's limit of 4096 bytes per path"):
        check_output_dir(deep, overwrite=False, resume=False)
    assert list(tmp_path.iterdir()) == []


def errors_as_unprivileged_user(paths: list[Path]) -> list[str]:
    """The errors of `check_output_dir` for each path, in a forked child that runs as an unprivileged user (`nobody`
    when this process is root, who may write anywhere)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            lines = []
            for path in paths:
                try:
                    check_output_dir(path, overwrite=False, resume=False)
                    lines.append("accepted")
                except ValueError as error:
                    lines.append(str(error))
            os.write(write, "\n".join(lines).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as handle:
        output = handle.read().decode()
    os.waitpid(pid, 0)
    return output.splitlines()


def test_a_read_only_output_dir_is_refused():
    root = Path(tempfile.mkdtemp())  # a folder `nobody` can reach
    try:
        root.chmod(0o755)
        existing = root / "existing"
        existing.mkdir()
        existing.chmod(0o555)
        lines = errors_as_unprivileged_user([existing, existing / "new" / "seed1"])
        assert (
            lines[0]
            == f"--output_dir {existing} is not writable: Permission denied. Choose a folder you can write to."
        )
        assert lines[1] == (
            f"--output_dir {existing / 'new' / 'seed1'} is not writable (its nearest existing folder {existing}): "
            "Permission denied. Choose a folder you can write to."
        )
        assert list(existing.iterdir()) == []
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare to mount a read-only file system")
def test_an_output_dir_on_a_read_only_file_system_is_refused(tmp_path):
    mounted = tmp_path / "mnt"
    mounted.mkdir()
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from run_dir import check_output_dir\n"
        "try:\n"
        "    check_output_dir(sys.argv[2] + '/run', overwrite=False, resume=False)\n"
        "except ValueError as error:\n"
        "    print(error)\n"
    )
    script = f'mount -t tmpfs -o ro tmpfs {mounted} && {sys.executable} -c "$0" {RUN_DIR_PY.parent} {mounted}'
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script, code], capture_output=True, text=True)
    if done.returncode != 0 or not done.stdout:
        pytest.skip(f"no read-only mount here: {done.stderr.strip()[:200]}")
    assert done.stdout.strip() == (
        f"--output_dir {mounted}/run is not writable (its nearest existing folder {mounted}): Read-only file system. "
        "Choose a folder you can write to."
    )


def test_resuming_keeps_checkpoints_and_log_but_removes_stale_results(tmp_path):
    (tmp_path / "checkpoints" / "checkpoint_2").mkdir(parents=True)
    (tmp_path / "training_log.txt").write_text("first half\n")
    (tmp_path / "metrics.json").write_text("{}")
    clear_previous_run(tmp_path, keep_checkpoints=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "training_log.txt"]


def test_markers_say_running_then_failed_with_the_error(tmp_path):
    mark_running(tmp_path)
    assert (tmp_path / "RUNNING").is_file()
    mark_failed(tmp_path, ValueError("The loss became nan"))
    assert not (tmp_path / "RUNNING").exists()
    assert (tmp_path / "FAILED").read_text() == "ValueError: The loss became nan\n"


def test_an_atomic_write_that_fails_halfway_leaves_the_previous_file_and_no_temporary(tmp_path):
    import errno

    target = tmp_path / "metrics.json"
    target.write_text("the previous result")

    def disk_full(tmp):
        tmp.write_text("half of the new")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_into_atomically(tmp_path, lambda folder: disk_full(folder / "adapter_model.safetensors"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    assert target.read_text() == "the previous result"
    assert save_into_atomically(tmp_path, lambda folder: (folder / "b.json").write_text("{}")) == ["b.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "metrics.json"]


@pytest.mark.parametrize("marker", ["RUNNING", "FAILED"])
def test_an_unfinished_run_may_resume_over_its_partial_results_and_a_finished_one_may_not(tmp_path, marker):
    (tmp_path / "checkpoints" / "checkpoint_1").mkdir(parents=True)
    write_trainer_state(tmp_path / "checkpoints" / "checkpoint_1", {"epoch": 1})
    (tmp_path / "adapter_model.safetensors").write_bytes(b"half")
    (tmp_path / "README.md").write_text("half")
    with pytest.raises(ValueError, match=r"holds the results of an earlier run \(README.md, adapter_model"):
        check_output_dir(tmp_path, overwrite=False, resume=True)  # finished: its results are kept
    (tmp_path / marker).write_text("")
    (tmp_path / ".results.abc123.tmp").mkdir()  # a killed save's temporary folder
    (tmp_path / ".results.abc123.tmp" / "adapter_config.json").write_text("{")
    check_output_dir(tmp_path, overwrite=False, resume=True)
    clear_previous_run(tmp_path, keep_checkpoints=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]


@pytest.mark.parametrize(
    "left, starts_over",
    [
        ({}, True),  # requeued before the folder was created
        ({"RUNNING": "", "training_log.txt": "", "checkpoints/checkpoint_1/scheduler.bin": ""}, True),
        ({"FAILED": "", "training_log.txt": "", "run.lock": "99999999\n", ".metrics.json.x.tmp": ""}, True),
        ({"RUNNING": "", "adapter_model.safetensors": "half"}, True),  # killed in its final save
        ({"training_log.txt": "", "adapter_model.safetensors": "", "README.md": ""}, False),  # a finished run
        ({"RUNNING": "", "notes.txt": ""}, False),  # someone's file
    ],
)
def test_resume_latest_before_the_first_checkpoint_starts_over_only_in_an_unfinished_runs_folder(
    tmp_path, left, starts_over
):
    out = tmp_path / "run"
    for name, content in left.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(content)
    if starts_over:
        assert resolve_checkpoint("latest", out) is None
    else:
        with pytest.raises(ValueError, match="holds no complete checkpoint; start a new run"):
            resolve_checkpoint("latest", out)


def test_a_failed_marker_that_cannot_be_written_leaves_the_running_marker(tmp_path, monkeypatch):
    import errno

    from maple_peft.training import run_dir

    mark_running(tmp_path)

    def disk_full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_dir, "atomic_write_text", disk_full)
    mark_failed(tmp_path, OSError(errno.ENOSPC, "No space left on device"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RUNNING"]  # still marked unfinished


def test_interrupted_checkpoint_writes_are_removed_and_never_resumed(tmp_path):
    root = tmp_path / "checkpoints"
    write_trainer_state(root / "checkpoint_1", {"epoch": 1})
    (root / "checkpoint_2").mkdir()  # killed before trainer_state.json
    (root / ".epoch_3.tmpabc").mkdir()  # older hidden temporary folder
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint_1"]
    assert remove_incomplete_checkpoints(tmp_path) == [".epoch_3.tmpabc", "checkpoint_2"]
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint_1"]


def test_a_checkpoint_with_nan_weights_is_not_the_last_good_state(tmp_path):
    for number, value in ((1, 0.5), (2, float("nan"))):
        folder = tmp_path / "checkpoints" / f"checkpoint_{number}"
        write_trainer_state(folder, {"epoch": number})
        save_file({"w": torch.full((2,), value)}, str(folder / "adapter_model.safetensors"))
    assert last_good_checkpoint(tmp_path) == tmp_path / "checkpoints" / "checkpoint_1"


def test_differing_options_lists_each_change_except_output_options():
    saved = {"lr": 0.05, "seed": 1, "output_dir": "a", "report_to": None}
    current = {"lr": 0.5, "seed": 2, "output_dir": "b", "report_to": "tensorboard"}
    assert differing_options(saved, current, ["output_dir", "report_to"]) == ["lr: 0.05 -> 0.5", "seed: 1 -> 2"]


@pytest.fixture
def checkpointed(tmp_path):
    """An accelerator, a PEFT CLIP and a scheduler registered for checkpointing, and one saved checkpoint."""
    accelerator = Accelerator(
        cpu=True, project_config=ProjectConfiguration(project_dir=str(tmp_path), automatic_checkpoint_naming=True)
    )
    model = get_peft_model(tiny_clip(), maple_peft.MaPLeConfig(n_ctx=2, depth=2, prompt_init=None))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    register_adapter_checkpointing(accelerator, model)
    path = Path(accelerator.save_state())
    yield accelerator, model, path
    accelerator.end_training()


def test_checkpoints_hold_the_adapter_as_safetensors_never_the_frozen_clip(checkpointed):
    _, model, path = checkpointed
    from safetensors.torch import load_file

    weights = load_file(str(path / "adapter_model.safetensors"))
    assert weights and all("maple_" in name for name in weights)
    assert not (path / "model.safetensors").exists() and not (path / "pytorch_model.bin").exists()


@pytest.mark.parametrize("victim", ["custom_checkpoint_0.pkl", "optimizer.bin", "random_states_0.pkl"])
def test_a_crafted_pickle_in_a_checkpoint_is_refused_and_never_runs(checkpointed, tmp_path, victim):
    accelerator, _, path = checkpointed
    marker = tmp_path / "marker.txt"
    with open(path / victim, "wb") as handle:
        pickle.dump(WritesAMarker(marker), handle)
    with pytest.raises(ValueError, match=f"{victim} holds more than tensors and plain values"):
        accelerator.load_state(str(path))
    assert not marker.exists()
    with pytest.raises(ValueError):
        check_checkpoint_is_safe(path)
    assert not marker.exists()


def test_resuming_from_non_finite_adapter_weights_is_refused(checkpointed):
    accelerator, _, path = checkpointed
    from safetensors.torch import load_file

    weights = {
        name: torch.full_like(t, float("nan"))
        for name, t in load_file(str(path / "adapter_model.safetensors")).items()
    }
    save_file(weights, str(path / "adapter_model.safetensors"))
    with pytest.raises(ValueError, match="non-finite adapter weights"):
        accelerator.load_state(str(path))


def test_a_finished_run_is_not_offered_a_resume_and_an_unfinished_one_is_offered_one_that_is_accepted(tmp_path):
    finished, stopped = tmp_path / "finished", tmp_path / "stopped"
    finished.mkdir(), stopped.mkdir()
    a_finished_run(finished)
    with pytest.raises(ValueError, match="holds a finished run; pass --overwrite_output_dir") as refused:
        check_output_dir(finished, overwrite=False, resume=False)
    assert "--resume_from_checkpoint" not in str(refused.value)  # resuming it would be refused

    a_finished_run(stopped)  # then paused by --stop_after_epoch, or killed: checkpoints, log, RUNNING
    for name in RESULT_FILES:
        (stopped / name).unlink(missing_ok=True)
    (stopped / RUNNING_MARKER).write_text("")
    with pytest.raises(ValueError, match="holds an unfinished run; pass --resume_from_checkpoint latest"):
        check_output_dir(stopped, overwrite=False, resume=False)
    check_output_dir(stopped, overwrite=False, resume=True)  # the advice is accepted
