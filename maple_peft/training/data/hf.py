"""Image-classification data from any 🤗 `datasets` dataset with an image column and a `ClassLabel` column.

Works for Hub datasets (`load_image_classification("user/ds")`) and local folders
(`load_image_classification("imagefolder", data_dir="path/to/folder")`, with `train/<class>/*` and
`test/<class>/*` inside). Records are lazy: nothing is decoded until the training dataset reads an image.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from .records import HFImageRef, ImageRecord, ImageRecords

__all__ = [
    "ImageClassificationData",
    "dataset_identity",
    "load_class_name_map",
    "load_image_classification",
    "records_from_hf_dataset",
]


class ImageClassificationData(NamedTuple):
    """The train and test records of an image-classification dataset, and its class names.

    A `NamedTuple`: unpack it as `train, test, class_names = load_image_classification(...)`.

    Args:
        train (`ImageRecords`): Training records.
        test (`ImageRecords`): Test records.
        class_names (`list[str]`): Class names ordered by label (shared by both splits).
    """

    train: ImageRecords
    test: ImageRecords
    class_names: list[str]


def load_class_name_map(mapping: str | os.PathLike | Mapping[str, str]) -> dict[str, str]:
    """Read a class-name cleaning map: a dict, an inline JSON object, a JSON file, or a text file of `"old new"` lines.

    In the text format the first whitespace-separated token is the old name and the rest of the line the new one
    (`"n01440764 tench"`, `"sea_lake sea or lake"`); blank lines and lines starting with `#` are ignored.

    Args:
        mapping (`str | os.PathLike | Mapping[str, str]`): The map; a string starting with `{` that is not an
            existing file is read as an inline JSON object (`'{"sea_lake": "sea or lake"}'`); any other string or
            path is the file to read.

    Returns:
        `dict[str, str]`: `{old name: new name}`.

    Example:
        ```python
        >>> load_class_name_map('{"sea_lake": "sea or lake"}')
        {'sea_lake': 'sea or lake'}
        ```
    """
    if isinstance(mapping, Mapping):
        return {str(k): str(v) for k, v in mapping.items()}
    if isinstance(mapping, str) and mapping.lstrip().startswith("{") and not Path(mapping).is_file():
        return _json_map(mapping, "the inline class_name_map")
    path = Path(mapping)
    if not path.is_file():
        raise FileNotFoundError(
            f"class_name_map={str(mapping)!r} is not a file; pass a JSON object (inline or in a file) or a file of "
            "'old new' lines."
        )
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("{"):
        return _json_map(text, f"class-name map {path}")
    out: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=1)
        if len(parts) != 2:
            raise ValueError(f"{path}:{lineno}: expected '<old name> <new name>', got {line!r}.")
        out[parts[0]] = parts[1].strip()
    return out


def _json_map(text: str, where: str) -> dict[str, str]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} looks like JSON but does not parse: {err}.") from err
    if not isinstance(data, dict):
        raise ValueError(f"{where} must hold a JSON object {{old: new}}, got a {type(data).__name__}.")
    return {str(k): str(v) for k, v in data.items()}


def dataset_identity(dataset_name: str, data_dir: str | os.PathLike | None, class_names: Sequence[str]) -> str:
    """A stable name for a dataset, to record in `metrics.json` and group runs by.

    A Hub dataset without `data_dir` is its id. A local folder (every `imagefolder` is named `"imagefolder"`)
    gets its folder name and a short hash of its sorted class names, so that two different local datasets never
    share a row in `examples/aggregate.py` and the same folder gives the same identity wherever it lives.

    Args:
        dataset_name (`str`): The builder or Hub id given to `load_image_classification`.
        data_dir (`str | os.PathLike | None`): The local folder, if any.
        class_names (`Sequence[str]`): The dataset's class names.

    Returns:
        `str`: E.g. `"user/ds"` or `"imagefolder:flowers-3f2a9c1d"`.

    Example:
        ```python
        >>> dataset_identity("imagefolder", "/data/flowers", ["rose", "tulip"])
        'imagefolder:flowers-...'
        ```
    """
    if data_dir is None:
        return dataset_name
    digest = hashlib.sha256("\n".join(sorted(map(str, class_names))).encode("utf-8")).hexdigest()[:8]
    folder = Path(os.path.abspath(data_dir)).name or "data"
    return f"{dataset_name}:{folder}-{digest}"


def _check_distinct_prompt_names(raw_names: list[str], class_names: list[str], where: str) -> None:
    """Two classes whose (cleaned) names give the same prompt cannot be told apart: refuse them, naming both."""
    from maple_peft.prompts import clean_class_name

    seen: dict[str, int] = {}
    clashes = []
    for label, name in enumerate(class_names):
        prompt_name = clean_class_name(name)
        if prompt_name in seen:
            first = seen[prompt_name]
            describe = [
                repr(raw_names[i]) if raw_names[i] == class_names[i] else f"{raw_names[i]!r} -> {class_names[i]!r}"
                for i in (first, label)
            ]
            clashes.append(f"{describe[0]} and {describe[1]} (both {prompt_name!r})")
        else:
            seen[prompt_name] = label
    if clashes:
        raise ValueError(
            f"Classes of {where} give the same prompt name, so the classifier could not tell them apart: "
            f"{'; '.join(clashes[:10])}. Rename one of each pair (folder or class_name_map entry)."
        )


def _classless_folders(data_dir: str | os.PathLike, splits: Sequence[str], class_names: Sequence[str]) -> list[str]:
    """Class folders of an imagefolder layout that hold no image in any split (`datasets` drops them)."""
    found: set[str] = set()
    for split in splits:
        folder = Path(data_dir) / split
        if folder.is_dir():
            found.update(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return sorted(found - set(class_names))


def _image_paths(dataset: Any, column: str) -> list[str | None]:
    """The `path` field of every row of an `Image` column, read from Arrow without decoding any image."""
    view = dataset.select_columns([column]).with_format("arrow")
    paths: list[str | None] = []
    for batch in view.iter(batch_size=4096):
        values = batch.column(column).combine_chunks()
        try:
            paths += values.field("path").to_pylist()
        except (AttributeError, KeyError, ValueError):  # not an image struct: no paths, rows are referenced instead
            paths += [None] * len(values)
    return paths


def records_from_hf_dataset(
    dataset: Any,
    image_column: str = "image",
    label_column: str = "label",
    class_names: list[str] | None = None,
    name: str | None = None,
    key_root: str | os.PathLike | None = None,
) -> ImageRecords:
    """Turn one split (a `datasets.Dataset`) into lazy `ImageRecords`.

    Rows whose image is a local file (`imagefolder`) become plain path records; others (images stored as bytes,
    e.g. Hub parquet datasets) reference their row through `HFImageRef`.

    Args:
        dataset (`Any`): The split.
        image_column (`str`): Name of the `datasets.Image` column.
        label_column (`str`): Name of the `datasets.ClassLabel` column.
        class_names (`list[str] | None`): Class names by label (defaults to the `ClassLabel` names).
        name (`str | None`): Name used in messages.
        key_root (`str | os.PathLike | None`): For file-backed rows, sampling keys are paths relative to this folder
            (e.g. the `data_dir` given to `imagefolder`) so that few-shot draws do not depend on where the data lives;
            absolute otherwise.
    """
    import datasets

    _check_columns(dataset, image_column, label_column, name or "dataset")
    label_feature = dataset.features[label_column]
    names = list(class_names) if class_names is not None else list(label_feature.names)
    raw = dataset.cast_column(image_column, datasets.Image(decode=False))
    labels = list(dataset[label_column])
    paths = _image_paths(raw, image_column)
    records = []
    for i, (label, path) in enumerate(zip(labels, paths, strict=True)):
        if label is None or label < 0:
            raise ValueError(
                f"Row {i} of {name or 'the dataset'} has no label ({label!r} in column {label_column!r}); "
                "filter out unlabeled rows first"
            )
        if path is not None and os.path.isabs(path) and os.path.isfile(path):
            key = path
            if key_root is not None:
                rel = os.path.relpath(path, key_root)
                if not rel.startswith(".."):
                    key = rel.replace(os.sep, "/")
            records.append(ImageRecord(path=path, label=label, class_name=names[label], key=key))
        else:
            ref = HFImageRef(raw, i, image_column, source=name)
            key = f"{path}#{i:012d}" if path else f"{i:012d}"
            records.append(ImageRecord(path=None, label=label, class_name=names[label], image=ref, key=key))
    return ImageRecords(records, names, name=name)


def _check_columns(dataset: Any, image_column: str, label_column: str, where: str) -> None:
    import datasets

    columns = list(dataset.column_names)
    for column, parameter in ((image_column, "image_column"), (label_column, "label_column")):
        if column not in columns:
            raise ValueError(
                f"Column {column!r} not found in {where} columns {columns}; pass {parameter}= one of these columns."
            )
    image_feature = dataset.features[image_column]
    if not isinstance(image_feature, datasets.Image):
        raise ValueError(
            f"Column {image_column!r} of {where} is a {type(image_feature).__name__}, not a datasets.Image; pass the "
            "image column as image_column= or cast it with dataset.cast_column(col, datasets.Image())."
        )
    label_feature = dataset.features[label_column]
    if not isinstance(label_feature, datasets.ClassLabel):
        raise ValueError(
            f"Column {label_column!r} of {where} is a {type(label_feature).__name__} ({label_feature}), not a "
            "datasets.ClassLabel, so it has no class names; pass the right label_column= or convert it with "
            f"dataset.class_encode_column({label_column!r})."
        )


def load_image_classification(
    dataset_name: str,
    data_dir: str | os.PathLike | None = None,
    image_column: str = "image",
    label_column: str = "label",
    train_split: str = "train",
    test_split: str = "test",
    class_name_map: str | os.PathLike | Mapping[str, str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    **load_dataset_kwargs: Any,
) -> ImageClassificationData:
    """Load an image-classification dataset with 🤗 `datasets` and return lazy train/test records.

    Class names come from the label column's `ClassLabel` feature, optionally cleaned by `class_name_map`
    (names not in the map are kept). Both splits must share the same `ClassLabel`.

    Args:
        dataset_name (`str`): A Hub id (`"user/ds"`) or a packaged builder (`"imagefolder"`).
        data_dir (`str | os.PathLike | None`): Local folder for builders such as `imagefolder`.
        image_column (`str`): Name of the `datasets.Image` column.
        label_column (`str`): Name of the `datasets.ClassLabel` column.
        train_split (`str`): Name of the training split.
        test_split (`str`): Name of the test split.
        class_name_map (`str | os.PathLike | Mapping[str, str] | None`): `{old: new}` dict, or a path to a JSON dict or
            an `"old new"`-lines file.
        cache_dir (`str | os.PathLike | None`): `datasets` cache folder.
        **load_dataset_kwargs (`Any`): Passed to `datasets.load_dataset` (e.g. `revision`).

    Raises:
        ValueError: a split or column is missing, the label column is not a `ClassLabel`, there are fewer than two
            classes, or a class has no training image.
    """
    import datasets

    kwargs = dict(load_dataset_kwargs)
    if data_dir is not None:
        kwargs["data_dir"] = str(data_dir)
    if cache_dir is not None:
        kwargs["cache_dir"] = str(cache_dir)
    dsd = datasets.load_dataset(dataset_name, **kwargs)
    if not isinstance(dsd, datasets.DatasetDict):
        raise ValueError(
            f"load_dataset({dataset_name!r}) returned a {type(dsd).__name__}; expected a DatasetDict of splits."
        )
    for split, parameter in ((train_split, "train_split"), (test_split, "test_split")):
        if split not in dsd:
            raise ValueError(
                f"{parameter}={split!r} is not a split of {dataset_name!r} (splits: {list(dsd)}); pass one of them."
            )
    train_ds, test_ds = dsd[train_split], dsd[test_split]
    no_labels = label_column not in train_ds.column_names and "label" not in train_ds.column_names
    if no_labels and dataset_name.lower() == "imagefolder":
        raise ValueError(
            f"Column {label_column!r} not found in imagefolder columns {train_ds.column_names}: imagefolder infers a "
            f"'label' column only from <split>/<class>/ folders with at least two classes; check the layout of "
            f"{data_dir} (or pass label_column=)."
        )
    _check_columns(train_ds, image_column, label_column, f"{dataset_name!r} split {train_split!r}")
    _check_columns(test_ds, image_column, label_column, f"{dataset_name!r} split {test_split!r}")

    raw_names = list(train_ds.features[label_column].names)
    test_names = list(test_ds.features[label_column].names)
    if test_names != raw_names:
        raise ValueError(
            f"Splits {train_split!r} and {test_split!r} of {dataset_name!r} have different classes "
            f"({raw_names[:10]} vs {test_names[:10]}); their ClassLabel features must match"
        )
    if len(raw_names) < 2:
        raise ValueError(
            f"{dataset_name!r} has {len(raw_names)} class(es) {raw_names} in column {label_column!r}; "
            "classification needs at least two (check label_column= and the folder layout: <split>/<class>/*)."
        )

    if data_dir is not None and dataset_name.lower() == "imagefolder":
        dropped = _classless_folders(data_dir, (train_split, test_split), raw_names)
        if dropped:
            raise ValueError(
                f"Class folder(s) {dropped[:20]} of {str(data_dir)!r} hold no image in {train_split!r} or "
                f"{test_split!r}, so they would be dropped and every later class (and the base/novel split) would "
                "shift; add images to them or remove the empty folder(s)."
            )
    class_names = raw_names
    if class_name_map is not None:
        mapping = load_class_name_map(class_name_map)
        unknown = sorted(set(mapping) - set(raw_names))
        if unknown:
            import warnings

            warnings.warn(
                f"Class-name map entries {unknown[:10]} match no class of {dataset_name!r} ({raw_names[:10]}...); "
                "they are ignored",
                UserWarning,
                stacklevel=2,
            )
        class_names = [mapping.get(n, n) for n in raw_names]

    _check_distinct_prompt_names(raw_names, class_names, repr(dataset_name))
    root = os.path.abspath(data_dir) if data_dir is not None else None
    train = records_from_hf_dataset(
        train_ds, image_column, label_column, class_names, f"{dataset_name}/{train_split}", key_root=root
    )
    test = records_from_hf_dataset(
        test_ds, image_column, label_column, class_names, f"{dataset_name}/{test_split}", key_root=root
    )
    empty = [f"{label} ({raw_names[label]!r})" for label, count in enumerate(train.class_counts()) if count == 0]
    if empty:
        raise ValueError(
            f"class(es) {', '.join(empty[:20])} of {dataset_name!r} have no image in split {train_split!r}; every "
            "class needs training images: add images or remove the class"
        )
    return ImageClassificationData(train, test, class_names)
