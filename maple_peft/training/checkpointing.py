"""Resumable checkpoints on Accelerate's own mechanism, holding the adapter only (never the frozen CLIP).

`accelerator.save_state()` writes `checkpoints/checkpoint_<k>/` (automatic naming, `total_limit`); the hooks
registered by `register_adapter_checkpointing` replace the full model state dict by the PEFT adapter weights
(`adapter_model.safetensors`), and the training script writes `trainer_state.json` (epoch, step, history, options)
last, so a checkpoint without it is an interrupted write and is never resumed from. Before `load_state` reads
anything, every pickled file of the checkpoint is opened with `torch.load(..., weights_only=True)`: a crafted file
is refused and never runs code (Accelerate loads registered custom objects with `weights_only=False`).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from .run_dir import CHECKPOINT_NAME as _CHECKPOINT_NAME
from .run_dir import (
    CHECKPOINTS_DIR,
    TEMPORARY,
    apply_umask,
    atomic_write_json,
    holds_only_unfinished_state,
    is_run_checkpoint_entry,
)

TRAINER_STATE = "trainer_state.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def register_adapter_checkpointing(accelerator: Any, model: Any) -> None:
    """Makes `accelerator.save_state`/`load_state` write and read only `model`'s adapter, as safetensors.

    Args:
        accelerator (`accelerate.Accelerator`): The accelerator whose checkpoints hold the model.
        model (`peft.PeftModel`): The (unwrapped) PEFT model whose adapter is trained.
    """
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    def save_hook(models: list, weights: list, output_dir: str) -> None:
        weights.clear()  # Accelerate would save the full state dict, frozen CLIP included
        if accelerator.is_main_process:
            state = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(model).items()}
            save_file(state, str(Path(output_dir) / ADAPTER_WEIGHTS))
            apply_umask(Path(output_dir) / ADAPTER_WEIGHTS)

    def load_hook(models: list, input_dir: str) -> None:
        check_checkpoint_is_safe(input_dir)
        models.clear()
        weights = load_file(str(Path(input_dir) / ADAPTER_WEIGHTS))
        bad = [name for name, tensor in weights.items() if not torch.isfinite(tensor).all()]
        if bad:
            raise ValueError(
                f"The checkpoint {input_dir} holds non-finite adapter weights ({bad[:3]}); resume from an earlier one."
            )
        set_peft_model_state_dict(model, weights)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def check_checkpoint_is_safe(checkpoint: str | Path) -> None:
    """Opens every pickled file of a checkpoint with `weights_only=True`, so none can run code when loaded.

    Args:
        checkpoint (`str` or `Path`): A checkpoint folder written by `accelerator.save_state`.

    Raises:
        ValueError: A file holds more than tensors and plain containers (a crafted or foreign pickle).
    """
    from accelerate.utils import load

    for path in sorted(Path(checkpoint).iterdir()):
        if path.suffix not in (".bin", ".pkl", ".pt", ".pth"):
            continue
        try:
            load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(
                f"The checkpoint file {path} holds more than tensors and plain values, so it was not loaded (it may "
                f"have been tampered with or come from another program): {type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}. Resume from a checkpoint this package wrote."
            ) from None


def write_trainer_state(checkpoint: str | Path, state: Mapping[str, Any]) -> None:
    """Writes `trainer_state.json`, the last file of a complete checkpoint.

    Args:
        checkpoint (`str` or `Path`): The checkpoint folder just written by `accelerator.save_state`.
        state (`Mapping[str, Any]`): JSON-serializable trainer state (epoch, step, history, options).
    """
    atomic_write_json(Path(checkpoint) / TRAINER_STATE, dict(state))


def read_trainer_state(checkpoint: str | Path) -> dict[str, Any]:
    """Reads a checkpoint's `trainer_state.json`.

    Args:
        checkpoint (`str` or `Path`): A complete checkpoint folder.
    """
    return json.loads((Path(checkpoint) / TRAINER_STATE).read_text(encoding="utf-8"))


def _number(path: Path) -> int:
    return int(_CHECKPOINT_NAME.match(path.name).group(1))


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """The complete checkpoints (`trainer_state.json` written) of a run folder, oldest first.

    Args:
        output_dir (`str` or `Path`): The run folder.
    """
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _CHECKPOINT_NAME.match(p.name) and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=_number)


def remove_incomplete_checkpoints(output_dir: str | Path) -> list[str]:
    """Removes what an interrupted checkpoint write left in `checkpoints/`: `checkpoint_<k>` folders without
    `trainer_state.json` that hold only checkpoint files, and hidden temporary entries (`.<name>.tmp<...>`). Nothing
    else is removed.

    Args:
        output_dir (`str` or `Path`): The run folder.

    Returns:
        The names removed.
    """
    root = Path(output_dir) / CHECKPOINTS_DIR
    removed = []
    if not root.is_dir():
        return removed
    for path in sorted(root.iterdir()):
        incomplete = _CHECKPOINT_NAME.match(path.name) and not (path / TRAINER_STATE).is_file()
        if (incomplete or TEMPORARY.match(path.name)) and is_run_checkpoint_entry(path):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
            removed.append(path.name)
    return removed


def next_checkpoint_number(output_dir: str | Path) -> int:
    """The number Accelerate's automatic naming should give the next checkpoint (1 for the first).

    Args:
        output_dir (`str` or `Path`): The run folder.
    """
    found = list_checkpoints(output_dir)
    return _number(found[-1]) + 1 if found else 1


def resolve_checkpoint(value: str, output_dir: str | Path) -> Path | None:
    """`"latest"` → the newest complete checkpoint of `output_dir`; otherwise the given checkpoint folder.

    `"latest"` before the first checkpoint was written, in a folder that holds nothing but an unfinished run's state
    (`holds_only_unfinished_state`: a job killed early and requeued with the same command), gives `None`: the run
    starts from the beginning.

    Args:
        value (`str`): `"latest"` or a checkpoint folder.
        output_dir (`str` or `Path`): The run folder.

    Raises:
        ValueError: No checkpoint found in a folder holding more (results of a finished run, other files), or `value`
            is not a complete checkpoint folder.
    """
    if value == "latest":
        found = list_checkpoints(output_dir)
        if not found and holds_only_unfinished_state(output_dir):
            return None
        if not found:
            raise ValueError(
                f"resume_from_checkpoint='latest' but {Path(output_dir) / CHECKPOINTS_DIR} holds no complete "
                "checkpoint; start a new run instead."
            )
        return found[-1]
    path = Path(value)
    if not (path / TRAINER_STATE).is_file():
        raise ValueError(
            f"resume_from_checkpoint={value!r} is not a complete checkpoint folder (no {TRAINER_STATE} in it); pass "
            "a checkpoints/checkpoint_<k> folder or 'latest'."
        )
    return path


def checkpoint_is_finite(checkpoint: str | Path) -> bool:
    """Whether every adapter weight of a checkpoint is finite (a state worth resuming from).

    Args:
        checkpoint (`str` or `Path`): A checkpoint folder.
    """
    from safetensors.torch import load_file

    path = Path(checkpoint) / ADAPTER_WEIGHTS
    if not path.is_file():
        return False
    return all(torch.isfinite(t).all() for t in load_file(str(path)).values())


def last_good_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint whose adapter weights are all finite, or `None`.

    Args:
        output_dir (`str` or `Path`): The run folder.
    """
    for checkpoint in reversed(list_checkpoints(output_dir)):
        if checkpoint_is_finite(checkpoint):
            return checkpoint
    return None


def differing_options(saved: Mapping[str, Any], current: Mapping[str, Any], may_change: Iterable[str]) -> list[str]:
    """The options whose value differs between a checkpoint's run and the resuming run, as `"name: old -> new"`.

    Args:
        saved (`Mapping[str, Any]`): The options recorded in the checkpoint.
        current (`Mapping[str, Any]`): The resuming run's options.
        may_change (`Iterable[str]`): Options allowed to differ (output and logging options).
    """
    ignore = set(may_change)
    differences = []
    for name in sorted((set(saved) | set(current)) - ignore):
        old, new = saved.get(name), current.get(name)
        same = old == new or (
            isinstance(old, float) and isinstance(new, float) and math.isnan(old) and math.isnan(new)
        )
        if not same:
            differences.append(f"{name}: {old!r} -> {new!r}")
    return differences
