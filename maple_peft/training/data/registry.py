"""Benchmarks on the 🤗 Hub: which dataset holds a benchmark, its columns, readable class names, template and split.

Built in: `eurosat` -> `timm/eurosat-rgb`; users add theirs in a YAML file (`--dataset_registry FILE`), whose format
is in docs/formats.md#the-dataset-registry---dataset_registry-file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = [
    "HUB_DATASETS",
    "HubDatasetSpec",
    "find_hub_dataset",
    "hub_dataset_for_benchmark",
    "load_dataset_registry",
    "split_source_of",
]


@dataclass(frozen=True)
class HubDatasetSpec:
    """Where a benchmark lives on the Hub (or in a local folder) and how to read it.

    Args:
        name (`str`): The benchmark's name (`"eurosat"`), as in tables and published figures.
        dataset_id (`str`): The 🤗 dataset id (`"timm/eurosat-rgb"`), or a builder such as `"imagefolder"`.
        data_dir (`str | None`): A local folder for builders such as `imagefolder`.
        image_column (`str`): The `datasets.Image` column.
        label_column (`str`): The `datasets.ClassLabel` column.
        train_split (`str`): The split the few-shot training images are drawn from.
        test_split (`str`): The split evaluated.
        class_names (`dict[str, str]`): ClassLabel name -> the name written in the prompts (names not listed are
            kept as they are).
        template (`str`): The hand-written zero-shot template, with one `{}` for the class name.
        split_note (`str`): One sentence saying which split this is (recorded with every result).

    Example:
        ```python
        >>> spec = HubDatasetSpec("eurosat", "timm/eurosat-rgb", template="a centered satellite photo of {}.")
        >>> spec.split_source
        'hub:timm/eurosat-rgb:train/test'
        ```
    """

    name: str
    dataset_id: str
    data_dir: str | None = None
    image_column: str = "image"
    label_column: str = "label"
    train_split: str = "train"
    test_split: str = "test"
    class_names: dict[str, str] = field(default_factory=dict)
    template: str = "a photo of a {}."
    split_note: str = ""

    def __post_init__(self) -> None:
        for name in ("name", "dataset_id", "image_column", "label_column", "train_split", "test_split"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"Dataset registry entry {self.name!r}: {name}={value!r} must be non-empty text.")
        if not isinstance(self.template, str) or self.template.count("{}") != 1:
            raise ValueError(
                f"Dataset registry entry {self.name!r}: template={self.template!r} must hold exactly one '{{}}' "
                "where the class name goes, e.g. 'a photo of a {}.'."
            )
        if not isinstance(self.class_names, Mapping):
            raise ValueError(
                f"Dataset registry entry {self.name!r}: class_names must map ClassLabel names to prompt names, got "
                f"{type(self.class_names).__name__}."
            )

    @property
    def split_source(self) -> str:
        """The split as recorded with results: `hub:<dataset id>:<train split>/<test split>` (or `local:...`)."""
        return split_source_of(self.dataset_id, self.data_dir, self.train_split, self.test_split)


def split_source_of(dataset_name: str, data_dir: str | os.PathLike | None, train_split: str, test_split: str) -> str:
    """The recorded split of a 🤗 dataset: `hub:<id>:<train>/<test>`, or `local:<train>/<test>` for a local folder
    (whose identity, recorded as the dataset, already names the folder).

    Args:
        dataset_name (`str`): The Hub id or builder.
        data_dir (`str | os.PathLike | None`): The local folder, if any.
        train_split (`str`): The training split.
        test_split (`str`): The evaluated split.
    """
    if data_dir is not None:
        return f"local:{train_split}/{test_split}"
    return f"hub:{dataset_name}:{train_split}/{test_split}"


HUB_DATASETS: dict[str, HubDatasetSpec] = {
    "eurosat": HubDatasetSpec(
        name="eurosat",
        dataset_id="timm/eurosat-rgb",
        # CoOp's readable EuroSAT names (its datasets/eurosat.py) and template (its trainers' CUSTOM_TEMPLATES)
        class_names={
            "AnnualCrop": "Annual Crop Land",
            "Forest": "Forest",
            "HerbaceousVegetation": "Herbaceous Vegetation Land",
            "Highway": "Highway or Road",
            "Industrial": "Industrial Buildings",
            "Pasture": "Pasture Land",
            "PermanentCrop": "Permanent Crop Land",
            "Residential": "Residential Buildings",
            "River": "River",
            "SeaLake": "Sea or Lake",
        },
        template="a centered satellite photo of {}.",
        split_note=(
            "timm/eurosat-rgb's own train/test split (16,200 / 5,400 images, from google-research's "
            "remote_sensing_representations), not CoOp's split_zhou_EuroSAT.json: results are not comparable "
            "with the papers' EuroSAT figures"
        ),
    ),
}
"""The built-in registry: benchmark name -> where it lives on the Hub."""


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).lower()


def load_dataset_registry(path: str | os.PathLike | None = None) -> dict[str, HubDatasetSpec]:
    """The built-in registry, extended (or overridden, entry by entry) by a user's YAML file.

    Args:
        path (`str | os.PathLike | None`): A YAML file mapping benchmark names to entries (see the module docstring);
            `None` for the built-in registry only.

    Returns:
        `dict[str, HubDatasetSpec]`: Benchmark name -> entry.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is not YAML, an entry is not a mapping, has an unknown key, or a bad value.
    """
    registry = dict(HUB_DATASETS)
    if path is None:
        return registry
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset_registry={str(path)!r} is not a file; pass a YAML file of dataset entries.")
    try:
        entries = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"dataset_registry {path} is not a YAML text file: {error}") from None
    entries = {} if entries is None else entries
    if not isinstance(entries, Mapping):
        raise ValueError(
            f"dataset_registry {path} holds a {type(entries).__name__}; it must map benchmark names to entries."
        )
    known = {f.name for f in fields(HubDatasetSpec)} - {"name"}
    for name, entry in entries.items():
        if not isinstance(entry, Mapping):
            raise ValueError(f"dataset_registry {path}: entry {name!r} must be a mapping (dataset_id: ..., ...).")
        unknown = sorted(set(entry) - known)
        if unknown:
            raise ValueError(
                f"dataset_registry {path}: entry {name!r} has unknown key(s) {unknown}; known: {sorted(known)}."
            )
        if "dataset_id" not in entry:
            raise ValueError(
                f"dataset_registry {path}: entry {name!r} needs a dataset_id (a Hub id or 'imagefolder')."
            )
        values: dict[str, Any] = dict(entry)
        if values.get("class_names") is None:
            values["class_names"] = {}
        if values.get("split_note") is None:
            values["split_note"] = ""
        registry[str(name)] = HubDatasetSpec(name=str(name), **values)
    return registry


def find_hub_dataset(
    dataset_name: str, data_dir: str | os.PathLike | None = None, registry: Mapping[str, HubDatasetSpec] | None = None
) -> HubDatasetSpec | None:
    """The registry entry of a 🤗 dataset id (and local folder, for builders such as `imagefolder`), if any.

    Args:
        dataset_name (`str`): The id given as `dataset_name` (e.g. `"timm/eurosat-rgb"`).
        data_dir (`str | os.PathLike | None`): The local folder given with it, if any.
        registry (`Mapping[str, HubDatasetSpec] | None`): The registry (`load_dataset_registry()` by default).

    Returns:
        `HubDatasetSpec | None`: The entry, or `None` when the dataset is not registered.
    """
    registry = load_dataset_registry() if registry is None else registry
    wanted_dir = None if data_dir is None else os.path.abspath(data_dir)
    for spec in registry.values():
        spec_dir = None if spec.data_dir is None else os.path.abspath(spec.data_dir)
        if spec.dataset_id.lower() == dataset_name.lower() and spec_dir == wanted_dir:
            return spec
    return None


def hub_dataset_for_benchmark(name: str, registry: Mapping[str, HubDatasetSpec] | None = None) -> HubDatasetSpec:
    """The registry entry of a benchmark name (`"eurosat"`; case, `-`, `_` and spaces ignored).

    Args:
        name (`str`): The benchmark's name.
        registry (`Mapping[str, HubDatasetSpec] | None`): The registry (`load_dataset_registry()` by default).

    Raises:
        KeyError: The benchmark has no entry; the message lists those that do.
    """
    registry = load_dataset_registry() if registry is None else registry
    for key, spec in registry.items():
        if _norm(key) == _norm(name):
            return spec
    raise KeyError(
        f"No Hub dataset is registered for benchmark {name!r} (registered: {sorted(registry)}); add it to a "
        "--dataset_registry YAML file, or use the CoOp layout with --data_root."
    )
