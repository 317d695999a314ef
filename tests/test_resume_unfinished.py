"""A run folder is always recoverable: killed or out of disk space in its final save, or requeued before its first
checkpoint, `--resume_from_checkpoint latest` finishes it (train.py in-process, on the offline smoke recipe)."""

from __future__ import annotations

import contextlib
import errno
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from script_runs import as_a_process, example
from test_train import FAST, REPO, assets, smoke_args  # noqa: F401 (assets: the smoke assets fixture)

RESULTS = ("adapter_model.safetensors", "adapter_config.json", "README.md", "metrics.json", "training_history.json")


def train(argv: list) -> None:
    """`examples/train.py` with `argv`, in this process, leaving no Accelerate state or log handler behind."""
    with as_a_process(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        example("train").main([str(arg) for arg in argv])


def half_written_then_disk_full(tensors, filename, metadata=None):
    """safetensors' writer on a disk that fills up halfway through the file."""
    Path(filename).write_bytes(b"\x00" * 64)
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture(scope="module")
def full_disk_run(assets, tmp_path_factory):  # noqa: F811
    """A job killed before its first checkpoint (its marker, log and an interrupted checkpoint write left), requeued
    with the same command (`--resume_from_checkpoint latest`), whose final save then meets a full disk."""
    out = tmp_path_factory.mktemp("requeued") / "run"
    (out / "checkpoints" / "checkpoint_1").mkdir(parents=True)  # the write the kill interrupted
    (out / "RUNNING").write_text("Started by process 999999999; not finished.\n")
    (out / "training_log.txt").write_text("the first attempt's log\n")

    def argv(output_dir: Path) -> list:
        return smoke_args(assets, output_dir, *FAST, "--epochs", "2", "--resume_from_checkpoint", "latest")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("peft.peft_model.safe_save_file", half_written_then_disk_full)
        with pytest.raises(Exception, match="No space left on device"):
            train(argv(out))
    return out, argv


def test_resuming_latest_before_the_first_checkpoint_starts_from_the_beginning_saying_so(full_disk_run):
    out, _ = full_disk_run
    log = (out / "training_log.txt").read_text()
    assert log.startswith("the first attempt's log\n")  # the requeued job's log continues the first one's
    assert "holds no checkpoint yet (the run stopped before its first); starting from the beginning" in log
    assert "Resumed from" not in log and "epoch 1/2" in log and "epoch 2/2" in log
    state = json.loads((out / "checkpoints" / "checkpoint_2" / "trainer_state.json").read_text())
    assert state["history"][0]["step"] == 1 and state["epoch"] == 2


def test_a_full_disk_in_the_final_save_leaves_no_half_written_file(full_disk_run):
    out, _ = full_disk_run
    names = {p.name for p in out.iterdir()}
    assert "FAILED" in names and "No space left on device" in (out / "FAILED").read_text()
    assert not names & {*RESULTS, "RUNNING"}
    assert not [name for name in names if name.startswith(".")]  # no temporary file or folder left


def test_a_run_that_met_a_full_disk_resumes_from_its_latest_checkpoint_once_space_is_freed(full_disk_run, tmp_path):
    failed, argv = full_disk_run
    out = tmp_path / "run"
    shutil.copytree(failed, out)
    train(argv(out))  # the same command (in a copy of the folder)
    assert_finished_from_latest_checkpoint(out)


def test_a_run_killed_in_its_final_save_resumes_replacing_its_partial_results(full_disk_run, tmp_path):
    failed, argv = full_disk_run
    out = tmp_path / "run"
    shutil.copytree(failed, out)
    (out / "FAILED").rename(out / "RUNNING")  # SIGKILL: no FAILED marker, and what a non-atomic save left
    (out / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    (out / "README.md").write_text("---\nlicense: mit\n")
    (out / ".results.x1y2z3.tmp").mkdir()
    (out / ".results.x1y2z3.tmp" / "adapter_model.safetensors").write_bytes(b"\x00" * 10)
    (out / ".metrics.json.a1b2.tmp").write_text("{")
    (out / "run.lock").write_text("999999999\n")
    train(argv(out))
    assert_finished_from_latest_checkpoint(out)


def assert_finished_from_latest_checkpoint(out: Path) -> None:
    names = {p.name for p in out.iterdir()}
    assert set(RESULTS) <= names and not names & {"RUNNING", "FAILED", "run.lock"}
    assert not [name for name in names if name.startswith(".")]
    assert "Resumed from" in (out / "training_log.txt").read_text()
    saved = load_file(out / "adapter_model.safetensors")
    checkpoint = load_file(out / "checkpoints" / "checkpoint_2" / "adapter_model.safetensors")
    assert saved.keys() == checkpoint.keys() and all(torch.equal(saved[k], checkpoint[k]) for k in saved)
    assert "# " in (out / "README.md").read_text()  # the run's card, not the partial one
    assert json.loads((out / "metrics.json").read_text())["num_shots"] == 4
