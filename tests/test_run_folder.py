"""The run folder and checkpoints, in-process: lock, what overwriting clears, markers, safe resuming, permissions."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from conftest import tiny_clip
from peft import get_peft_model
from safetensors.torch import save_file

import maple_peft
from maple_peft.training.checkpointing import (
    check_checkpoint_is_safe,
    differing_options,
    last_good_checkpoint,
    list_checkpoints,
    register_adapter_checkpointing,
    remove_incomplete_checkpoints,
    write_trainer_state,
)
from maple_peft.training.run_dir import (
    RunLock,
    atomic_write_json,
    check_output_dir,
    clear_previous_run,
    mark_failed,
    mark_running,
)


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


def test_a_second_run_on_a_locked_folder_gets_a_clear_error(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run.lock").write_text(f"{holder.pid}\n")
        with pytest.raises(RuntimeError, match=f"in use by another run \\(process {holder.pid}"):
            RunLock(tmp_path).acquire()
        assert (tmp_path / "run.lock").read_text() == f"{holder.pid}\n"
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_dead_process_is_taken_over_and_released(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / "run.lock").write_text(dead.stdout)
    with RunLock(tmp_path):
        assert (tmp_path / "run.lock").read_text() == f"{os.getpid()}\n"
    assert not (tmp_path / "run.lock").exists()


def test_output_folder_guard(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="exists and is not empty.*overwrite_output_dir=True"):
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
