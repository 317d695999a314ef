"""Reusable parts of the training and evaluation scripts: data set-up, evaluation, checkpoints, safe writing.

The loops themselves live in `examples/train.py` and `examples/evaluate.py`; this module holds what both use.
"""

from __future__ import annotations

import inspect
import json
import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import ImageRecords, get_benchmark, load_coop_split, load_image_classification
from .metrics import classification_metrics

CHECKPOINTS_DIR = "checkpoints"
TRAINER_STATE = "trainer_state.json"
TRAINING_STATE = "training_state.pt"


# ---- data -------------------------------------------------------------------------------------------------------


@dataclass
class ExperimentData:
    """Train and test records of one dataset, its class names and its zero-shot prompt template.

    Args:
        name: The dataset's name (benchmark name or 🤗 dataset id).
        train: Training records (`None` for evaluation-only datasets such as the ImageNet variants).
        test: Test records.
        class_names: Class names ordered by label.
        template: The dataset's hand-written zero-shot template (`"a photo of a {}."` when it has none).
    """

    name: str
    train: ImageRecords | None
    test: ImageRecords
    class_names: list[str]
    template: str = "a photo of a {}."
    extra: dict[str, Any] = field(default_factory=dict)


def load_experiment_data(
    dataset: str | None = None,
    data_root: str | None = None,
    dataset_name: str | None = None,
    data_dir: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    train_split: str = "train",
    test_split: str = "test",
    class_name_map: str | None = None,
) -> ExperimentData:
    """Load a CoOp benchmark (`dataset` + `data_root`) or a 🤗 dataset (`dataset_name`, optional `data_dir`).

    Raises:
        ValueError: neither or both sources given, fewer than two classes.
    """
    if bool(dataset) == bool(dataset_name):
        raise ValueError(
            f"Pass exactly one of --dataset (a CoOp benchmark, got {dataset!r}) and --dataset_name (a 🤗 dataset, "
            f"got {dataset_name!r})."
        )
    if dataset:
        if not data_root:
            raise ValueError(f"--dataset {dataset} needs --data_root, the folder holding the CoOp dataset folders.")
        spec = get_benchmark(dataset)
        test = load_coop_split(spec.name, data_root, "test")
        train = None if spec.test_only else load_coop_split(spec.name, data_root, "train")
        data = ExperimentData(spec.name, train, test, list(test.class_names), spec.template)
    else:
        loaded = load_image_classification(
            dataset_name,
            data_dir=data_dir,
            image_column=image_column,
            label_column=label_column,
            train_split=train_split,
            test_split=test_split,
            class_name_map=class_name_map,
        )
        data = ExperimentData(dataset_name, loaded.train, loaded.test, list(loaded.class_names))
    if len(data.class_names) < 2:
        raise ValueError(
            f"{data.name} has {len(data.class_names)} class(es) ({data.class_names}); at least 2 are needed."
        )
    return data


def add_data_arguments(parser: Any) -> None:
    """The command-line options of `load_experiment_data`, shared by the training and evaluation scripts."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset", default=None, help="a CoOp benchmark name (eurosat, imagenet, ...), with --data_root"
    )
    group.add_argument("--data_root", default=None, help="the folder holding the CoOp dataset folders")
    group.add_argument("--dataset_name", default=None, help="a 🤗 dataset id, or 'imagefolder' with --data_dir")
    group.add_argument("--data_dir", default=None)
    group.add_argument("--image_column", default="image")
    group.add_argument("--label_column", default="label")
    group.add_argument("--train_split", default="train")
    group.add_argument("--test_split", default="test")
    group.add_argument("--class_name_map", default=None, help="JSON dict or 'old new' lines cleaning class names")


def load_experiment_data_from_args(args: Any) -> ExperimentData:
    """`load_experiment_data` with the options that `add_data_arguments` declared."""
    names = inspect.signature(load_experiment_data).parameters
    return load_experiment_data(**{name: getattr(args, name) for name in names})


# ---- evaluation -------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_classifier(accelerator: Any, classifier: Any, dataloader: Any, class_names: Sequence[str]) -> dict:
    """Accuracy, macro-F1 and per-class accuracy of `classifier` on a prepared dataloader, over all processes.

    `gather_for_metrics` drops the samples that distributed sampling duplicates, so every test image counts once.
    """
    predictions, labels = [], []
    for batch in dataloader:
        logits = classifier(batch["pixel_values"])
        gathered_predictions, gathered_labels = accelerator.gather_for_metrics(
            (logits.argmax(dim=-1), batch["labels"])
        )
        predictions.append(gathered_predictions.cpu())
        labels.append(gathered_labels.cpu())
    return classification_metrics(torch.cat(predictions), torch.cat(labels), list(class_names))


# ---- safe writing -----------------------------------------------------------------------------------------------


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file through a temporary file in the same folder and a rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool, resuming: bool) -> None:
    """Refuse to write into a non-empty output folder unless asked to (or resuming a run in it)."""
    path = Path(output_dir)
    if path.is_file():
        raise ValueError(f"--output_dir {path} is a file; pass a folder.")
    if path.is_dir() and any(path.iterdir()) and not (overwrite or resuming):
        raise ValueError(
            f"--output_dir {path} exists and is not empty; pass --overwrite_output_dir to write into it, "
            "--resume_from_checkpoint to continue its run, or another --output_dir."
        )


# ---- checkpoints ------------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_training_checkpoint(
    output_dir: str | os.PathLike,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    trainer_state: dict[str, Any],
    keep: int = 1,
) -> Path:
    """Save what resuming needs, adapter weights only (not the frozen CLIP), in `checkpoints/epoch_N`.

    The folder is written under a temporary name and renamed when complete, so an interrupted save never replaces
    the last good checkpoint. Only the newest `keep` checkpoints are kept.
    """
    root = Path(output_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"epoch_{trainer_state['epoch']}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}."))
    try:
        model.save_pretrained(tmp / "adapter")
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
            tmp / TRAINING_STATE,
        )
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2, default=str), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The complete checkpoints of a run, oldest first."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [p for p in root.glob("epoch_*") if (p / TRAINER_STATE).is_file() and p.name[6:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[6:]))


def resolve_checkpoint(value: str, output_dir: str | os.PathLike) -> Path:
    """`"latest"` → the newest checkpoint of `output_dir`; otherwise the given checkpoint folder."""
    if value == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise ValueError(
                f"--resume_from_checkpoint latest: no checkpoint in {Path(output_dir) / CHECKPOINTS_DIR}."
            )
        return found[-1]
    path = Path(value)
    if not (path / TRAINER_STATE).is_file():
        raise ValueError(f"--resume_from_checkpoint {value}: not a checkpoint folder (no {TRAINER_STATE} in it).")
    return path


def load_training_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore adapter weights, optimizer, scheduler and RNG states; returns the saved trainer state."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    weights = load_file(path / "adapter" / "adapter_model.safetensors")
    set_peft_model_state_dict(model, weights)
    state = torch.load(path / TRAINING_STATE, map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))


def seed_epoch(seed: int, epoch: int) -> None:
    """Seed every RNG from (seed, epoch), so that an epoch's shuffling and augmentations do not depend on resuming."""
    value = seed * 1000 + epoch
    random.seed(value)
    np.random.seed(value % (2**32))
    torch.manual_seed(value)


def check_adapter_matches_model(adapter: str, clip: Any) -> None:
    """Refuse an adapter whose prompt widths do not fit `clip` (trained on another backbone), naming both."""
    from peft import PeftConfig
    from safetensors import safe_open

    config = PeftConfig.from_pretrained(adapter)
    path = Path(adapter) / "adapter_model.safetensors"
    if not path.is_file():
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(adapter, "adapter_model.safetensors"))
    d_text = clip.config.text_config.hidden_size
    d_vision = clip.config.vision_config.hidden_size
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            shape = tuple(handle.get_slice(key).get_shape())
            if key.endswith("maple_ctx") and shape[-1] != d_text:
                wrong = f"text prompts {shape[-1]} wide"
            elif key.endswith("maple_vision_ctx") and shape[-1] != d_vision:
                wrong = f"vision prompts {shape[-1]} wide"
            elif key.endswith("maple_coupling.weight") and shape != (d_vision, d_text):
                wrong = f"couplings of shape {shape}"
            else:
                continue
            raise ValueError(
                f"The adapter {adapter} was trained on another backbone ({config.base_model_name_or_path}: {wrong}), "
                f"but the base model has d_text={d_text}, d_vision={d_vision}; pass --model_name_or_path "
                f"{config.base_model_name_or_path} (or the CLIP it was trained on)."
            )
