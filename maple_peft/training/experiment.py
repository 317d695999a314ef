"""Reusable parts of the training and evaluation scripts: data set-up, per-item seeded augmentations, evaluation.

The loops live in `examples/`; checkpoints are in `checkpointing.py`, the run folder (lock, markers) in `run_dir.py`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .data import (
    IMAGENET_HUB_DATASET,
    ImageRecords,
    TrainingDraw,
    dataset_identity,
    draw_training_images,
    find_hub_dataset,
    get_benchmark,
    load_coop_split,
    load_dataset_registry,
    load_image_classification,
    load_imagenet_from_hub,
    parse_hub_root,
    split_source_of,
)
from .metrics import classification_metrics

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
        split_source: Which split the records come from, as recorded with results: `"coop"` (the papers' splits),
            `"hub:<id>:<train>/<test>"` or `"local:<train>/<test>"` (see `split_source_of`).
        split_note: The same in a sentence, for logs and cards.
        benchmark: The benchmark the data stands for (`"eurosat"`), if any: a CoOp benchmark, or a registered Hub
            dataset.
        val: The validation pool the original code draws after the training images (CoOp layouts with one), else
            `None`.
        few_shot_draw: How the training images are drawn (`maple_peft.training.data.DRAWS`): `"dassl"`, the
            original code's draw, on CoOp layouts (their split files fix the order); `"sorted"` on other sources.
        data_source: Where CoOp-layout data was downloaded from, as `hf://<repo>@<revision>` (the hub data root),
            else `None`.
    """

    name: str
    train: ImageRecords | None
    test: ImageRecords
    class_names: list[str]
    template: str = "a photo of a {}."
    split_source: str = "coop"
    split_note: str = ""
    benchmark: str | None = None
    val: ImageRecords | None = None
    few_shot_draw: str = "sorted"
    data_source: str | None = None


def draw_experiment_training_images(data: ExperimentData, num_shots: int, seed: int, setting: str) -> TrainingDraw:
    """The run's training images: the few-shot draw of `data` (its `few_shot_draw`), then the base half of the
    classes for the base-to-novel setting.

    Args:
        data (`ExperimentData`): The run's data.
        num_shots (`int`): Shots per class.
        seed (`int`): The run's seed.
        setting (`str`): `"base2novel"` trains on the base classes; other settings on all of them.
    """
    subset = "base" if setting == "base2novel" else "all"
    return draw_training_images(data.train, num_shots, seed, subset=subset, draw=data.few_shot_draw, val=data.val)


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
    dataset_registry: str | None = None,
) -> ExperimentData:
    """Load a CoOp benchmark (`dataset` + `data_root`) or a 🤗 dataset (`dataset_name`, optional `data_dir`).

    A `data_root` of `"hub"` (`"hub@REVISION"`, `"hf://OWNER/REPO[@REVISION]"`) downloads and extracts the benchmark's
    CoOp-layout archive once (see `maple_peft.training.data.hub_root`); ImageNet then comes from `ILSVRC/imagenet-1k`.

    A 🤗 dataset registered in `maple_peft.training.data.registry` (built in, or in the `dataset_registry` YAML file)
    gets the registry's readable class names, template and columns/splits (for the options left at their defaults:
    `image`, `label`, `train`, `test`); an explicit `class_name_map` replaces the registry's names.

    Raises:
        ValueError: neither or both sources given, fewer than two classes.
    """
    if bool(dataset) == bool(dataset_name):
        raise ValueError(
            f"Pass exactly one of dataset (a CoOp benchmark, got dataset={dataset!r}) and dataset_name (a 🤗 "
            f"dataset, got dataset_name={dataset_name!r})."
        )
    registry = load_dataset_registry(dataset_registry)
    if dataset:
        spec = get_benchmark(dataset)
        if not data_root:
            hub = next((entry for entry in registry.values() if entry.name == spec.name), None)
            hint = f"; or train on {hub.dataset_id} from the Hub: dataset_name={hub.dataset_id!r}" if hub else ""
            raise ValueError(
                f"dataset={dataset!r} needs data_root, the folder holding the CoOp dataset folders, or 'hub' to "
                f"download them (got data_root={data_root!r}; the CoOp layout has the papers' exact splits){hint}."
            )
        hub_root = parse_hub_root(data_root)
        if hub_root is not None and spec.name == "imagenet":  # from ILSVRC/imagenet-1k, with CoOp's names
            test = load_imagenet_from_hub("validation")
            train = None if train_split == test_split else load_imagenet_from_hub("train")  # evaluate.py: no train
            note = f"ImageNet's train/validation split ({IMAGENET_HUB_DATASET}), CoOp's ImageNet split"
            return ExperimentData(
                spec.name, train, test, list(test.class_names), spec.template, "coop", note, spec.name, None,
                "dassl", f"hf://datasets/{IMAGENET_HUB_DATASET}",
            )  # fmt: skip
        if hub_root is not None:  # the dataset's archive, downloaded and extracted once
            data_root = str(hub_root.prepare(spec.name))
        test = load_coop_split(spec.name, data_root, "test")
        train = None if spec.test_only else load_coop_split(spec.name, data_root, "train")
        # the validation pool the original draws after the training images (ImageNet's original draws none)
        val = load_coop_split(spec.name, data_root, "val") if spec.layout in ("split_json", "fgvc_txt") else None
        where = spec.split_file or f"the {spec.layout} folders"
        note = f"CoOp's split ({where}), as in the papers"
        source = None if hub_root is None else hub_root.source
        if source:
            note += f", from {source}"
        data = ExperimentData(
            spec.name,
            train,
            test,
            list(test.class_names),
            spec.template,
            "coop",
            note,
            spec.name,
            val,
            "dassl",
            source,
        )
    else:
        hub = find_hub_dataset(dataset_name, data_dir, registry)
        if hub is not None:  # the registry's values, for the options left at their defaults
            data_dir = hub.data_dir if data_dir is None else data_dir
            image_column = hub.image_column if image_column == "image" else image_column
            label_column = hub.label_column if label_column == "label" else label_column
            train_split = hub.train_split if train_split == "train" else train_split
            test_split = hub.test_split if test_split == "test" else test_split
            class_name_map = hub.class_names if class_name_map is None else class_name_map
        loaded = load_image_classification(
            dataset_name,
            data_dir=data_dir,
            image_column=image_column,
            label_column=label_column,
            train_split=train_split,
            test_split=test_split,
            class_name_map=class_name_map,
        )
        # a local folder is named by its folder and class list, not "imagefolder" (runs of different folders differ)
        name = dataset_identity(dataset_name, data_dir, loaded.class_names)
        source = split_source_of(dataset_name, data_dir, train_split, test_split)
        note = (hub.split_note if hub else "") or f"the {train_split}/{test_split} splits of {name}"
        template = hub.template if hub else "a photo of a {}."
        benchmark = hub.name if hub else None
        data = ExperimentData(
            name, loaded.train, loaded.test, list(loaded.class_names), template, source, note, benchmark
        )
    if len(data.class_names) < 2:
        raise ValueError(
            f"{data.name} has {len(data.class_names)} class(es) ({data.class_names}); at least 2 are needed."
        )
    return data


def load_experiment_data_from_args(args: Any) -> ExperimentData:
    """`load_experiment_data` with the attributes of `args` named like its parameters (e.g. an argparse namespace).

    Args:
        args (`Any`): An object with one attribute per parameter of `load_experiment_data`.
    """
    names = inspect.signature(load_experiment_data).parameters
    return load_experiment_data(**{name: getattr(args, name) for name in names})


# ---- evaluation -------------------------------------------------------------------------------------------------


def image_batch(batch: dict[str, Any]) -> Any:
    """The images of a collated batch as the classifier and the losses take them: the `pixel_values` tensor, or the
    dict of a patch-based processor's inputs (SigLIP 2: `pixel_values`, `pixel_attention_mask`, `spatial_shapes`).

    Args:
        batch (`dict`): a batch of `ImageClassificationDataset` items (`labels` and the image inputs).
    """
    images = {key: value for key, value in batch.items() if key != "labels"}
    return images["pixel_values"] if list(images) == ["pixel_values"] else images


@torch.no_grad()
def evaluate_classifier(
    accelerator: Any, classifier: Any, dataloader: Any, class_names: Sequence[str], *, desc: str = "eval"
) -> dict:
    """Accuracy, macro-F1 and per-class accuracy of `classifier` on a prepared dataloader, over all processes.

    `gather_for_metrics` drops the samples that distributed sampling duplicates, so every test image counts once. A
    progress bar (main process, on a terminal only) shows the batches.

    Args:
        accelerator (`accelerate.Accelerator`): The accelerator that prepared `dataloader`.
        classifier (`maple_peft.PromptClassifier`): Maps `pixel_values` to logits over `class_names`.
        dataloader (`torch.utils.data.DataLoader`): Batches of `{"pixel_values", "labels"}` (and SigLIP 2's other
            image inputs).
        class_names (`Sequence[str]`): The class names, in label order.
        desc (`str`): The progress bar's label.
    """
    from tqdm.auto import tqdm

    from ..console import progress_bars_wanted

    bar = accelerator.is_local_main_process and progress_bars_wanted()  # in a log file a bar is noise between lines
    predictions, labels = [], []
    for batch in tqdm(dataloader, desc=desc, disable=not bar, leave=False):
        logits = classifier(image_batch(batch))
        gathered_predictions, gathered_labels = accelerator.gather_for_metrics(
            (logits.argmax(dim=-1), batch["labels"])
        )
        predictions.append(gathered_predictions.cpu())
        labels.append(gathered_labels.cpu())
    return classification_metrics(torch.cat(predictions), torch.cat(labels), list(class_names))


# ---- training data: augmentations that depend on (seed, epoch, image) only ----------------------------------------


class EpochSeededDataset(torch.utils.data.Dataset):
    """Wraps a dataset so that the random augmentation of item `i` in epoch `e` depends only on `(seed, e, i)`.

    Each item is produced under a torch RNG seeded from `(seed, epoch, index)` (the global RNG is restored after),
    so the augmentations do not depend on the number of `DataLoader` workers, on which worker loads an item, on the
    number of processes, or on resuming mid-epoch. Call `set_epoch` before iterating an epoch.

    Args:
        dataset (`torch.utils.data.Dataset`): The training dataset (its transform uses the global torch RNG).
        seed (`int`): The run's seed.

    Example:
        ```python
        >>> train_set = EpochSeededDataset(ImageClassificationDataset(records, transforms.train()), seed=1)
        >>> train_set.set_epoch(0)
        ```
    """

    def __init__(self, dataset: torch.utils.data.Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch (0-based) whose augmentations the next items get.

        Args:
            epoch (`int`): The epoch about to be iterated.
        """
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        item_seed = ((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index) % (2**63)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            return self.dataset[index]
