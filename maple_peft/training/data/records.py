"""The record types shared by every data loader: one labelled image, and a labelled list of them.

An `ImageRecord` says *where* an image is (a file path, an in-memory PIL image, or a lazy reference to a row
of a 🤗 `datasets.Dataset`), its integer label and its class name. Nothing is decoded until
`ImageRecord.load` is called, so records for a 50k-image test set are cheap to build and to pickle into
`DataLoader` workers.

`ImageRecords` is a list of records plus the `class_names` of the whole label space (ordered by label), and
knows how to apply the few-shot / base-to-novel protocol to itself (see `maple_peft.training.data.sampling`).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, overload

from PIL import Image

from .transforms import to_rgb

if TYPE_CHECKING:  # pragma: no cover
    import datasets

__all__ = ["HFImageRef", "ImageRecord", "ImageRecords"]


@dataclass(frozen=True)
class HFImageRef:
    """A lazy reference to the image in one row of a 🤗 `datasets.Dataset`.

    The dataset is kept with its image column cast to `Image(decode=False)`, so reading the reference yields the
    raw `{"bytes": ..., "path": ...}` struct and only the requested row is read from the (memory-mapped) Arrow
    table. Pickles cheaply for `DataLoader` workers when the dataset is backed by cache files.

    Args:
        dataset (`datasets.Dataset`): The dataset, with `column` cast to `datasets.Image(decode=False)`.
        index (`int`): The row index.
        column (`str`): The name of the image column.
        source (`str | None`): Optional name of the dataset and split (e.g. `"user/ds/train"`) used in messages.
    """

    dataset: datasets.Dataset = field(repr=False, compare=False)
    index: int
    column: str
    source: str | None = None

    def open(self) -> Image.Image:
        """Open (lazily, without decoding the pixels) the image of this row."""
        raw = self.dataset[self.index][self.column]
        if isinstance(raw, Image.Image):  # the column was not cast to decode=False: already decoded
            return raw
        if not isinstance(raw, dict):
            raise TypeError(
                f"Row {self.index} of column {self.column!r} holds a {type(raw).__name__}, expected an image struct "
                "{'bytes', 'path'}; cast the column to datasets.Image(decode=False)"
            )
        if raw.get("bytes"):
            return Image.open(io.BytesIO(raw["bytes"]))
        if raw.get("path"):
            return Image.open(raw["path"])
        raise ValueError(f"Row {self.index} of column {self.column!r} has neither image bytes nor a path")

    def describe(self) -> str:
        """A human-readable name for warnings, e.g. `"user/ds/train[12]['image']"`."""
        if self.source is not None:
            return f"{self.source}[{self.index}][{self.column!r}]"
        name = getattr(getattr(self.dataset, "info", None), "dataset_name", None) or "dataset"
        split = getattr(self.dataset, "split", None)
        split_part = f"/{split}" if split is not None else ""
        return f"{name}{split_part}[{self.index}][{self.column!r}]"


@dataclass(frozen=True)
class ImageRecord:
    """One labelled image.

    Args:
        path (`str | None`): Absolute (or caller-relative) path of the image file, or `None` when the image lives in
            memory or in a 🤗 dataset without a local file.
        label (`int`): Integer label, `0 <= label < len(class_names)` of the owning `ImageRecords`.
        class_name (`str`): The raw class name (as written in the source, e.g. `"Forest"` or `"Sea_or_Lake"`; prompt
            formatting replaces `_` with spaces later).
        image (`Image.Image | HFImageRef | None`): Where the pixels are when `path` is not enough: an in-memory
            `PIL.Image.Image` or an `HFImageRef`. When set it takes precedence over `path`.
        key (`str | None`): A stable identity used to order items before few-shot sampling (e.g. the path relative to
            the dataset's image directory, so that sampling does not depend on where the data root is mounted).
            Defaults to `path`.
    """

    path: str | None
    label: int
    class_name: str
    image: Image.Image | HFImageRef | None = field(default=None, repr=False, compare=False)
    key: str | None = None

    @property
    def sort_key(self) -> str:
        """The key used to order items within a class before few-shot sampling."""
        if self.key is not None:
            return self.key
        if self.path is not None:
            return self.path
        if isinstance(self.image, HFImageRef):
            return f"{self.image.index:012d}"
        return ""

    def describe(self) -> str:
        """A human-readable name of the image for warnings and errors."""
        if isinstance(self.image, HFImageRef):
            return self.path or self.image.describe()
        if self.path is not None:
            return self.path
        if isinstance(self.image, Image.Image):
            return f"<in-memory {self.image.mode} image {self.image.width}x{self.image.height}, key={self.key!r}>"
        return f"<record key={self.key!r}>"

    def open(self) -> Image.Image:
        """Open the image (lazily: PIL reads the header only; pixels are decoded on first access).

        Raises:
            OSError / PIL.UnidentifiableImageError / ValueError: the image cannot be read.
        """
        if isinstance(self.image, Image.Image):
            return self.image
        if isinstance(self.image, HFImageRef):
            return self.image.open()
        if self.path is None:
            raise ValueError(f"Record {self!r} has neither a path nor an image; build it with path=... or image=...")
        return Image.open(self.path)

    def load(self) -> Image.Image:
        """Decode the image and convert it to 8-bit RGB (see `maple_peft.training.data.transforms.to_rgb`)."""
        image = self.open()
        owned = image is not self.image  # we opened the file, so we close it
        try:
            image.load()
            rgb = to_rgb(image)
        except BaseException:
            if owned:
                image.close()
            raise
        if owned and rgb is not image:
            image.close()
        return rgb


@dataclass
class ImageRecords(Sequence[ImageRecord]):
    """A list of `ImageRecord` plus the class names of the full label space.

    Behaves like a read-only list (`len`, indexing, iteration); slicing or `select` returns a new
    `ImageRecords` with the same `class_names`.

    Args:
        records (`list[ImageRecord]`): The records.
        class_names (`list[str]`): Class names ordered by label (`class_names[record.label]` is the record's class). It
            covers the whole label space of the source dataset, including classes absent from this split.
        name (`str | None`): Optional name of the source (e.g. `"eurosat/train"`), used in messages.
    """

    records: list[ImageRecord]
    class_names: list[str]
    name: str | None = None

    def __post_init__(self) -> None:
        self.records = list(self.records)
        self.class_names = list(self.class_names)
        n = len(self.class_names)
        for record in self.records:
            if not 0 <= record.label < n:
                raise ValueError(
                    f"Record {record.describe()!r} has label {record.label}, outside the label space 0..{n - 1} "
                    f"of {n} class names; fix the labels or pass the full class_names list"
                )

    def __len__(self) -> int:
        return len(self.records)

    @overload
    def __getitem__(self, index: int) -> ImageRecord: ...

    @overload
    def __getitem__(self, index: slice) -> ImageRecords: ...

    def __getitem__(self, index: int | slice) -> ImageRecord | ImageRecords:
        if isinstance(index, slice):
            return ImageRecords(self.records[index], self.class_names, self.name)
        return self.records[index]

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.records)

    @property
    def labels(self) -> list[int]:
        """The label of every record, in order."""
        return [r.label for r in self.records]

    @property
    def keys(self) -> list[str]:
        """The sort key of every record, in order (see `ImageRecord.sort_key`)."""
        return [r.sort_key for r in self.records]

    @property
    def num_classes(self) -> int:
        """Size of the label space (`len(class_names)`)."""
        return len(self.class_names)

    def select(self, indices: Sequence[int]) -> ImageRecords:
        """A new `ImageRecords` with the records at `indices` (same class names).

        Args:
            indices (`Sequence[int]`): Positions into this list.
        """
        return ImageRecords([self.records[i] for i in indices], self.class_names, self.name)

    def few_shot(self, num_shots: int | None, seed: int) -> ImageRecords:
        """Draw `num_shots` items per class (see `maple_peft.training.data.sampling.sample_few_shot`).

        Args:
            num_shots (`int | None`): Items per class; `-1` or `None` keeps everything.
            seed (`int`): Seed of the `random.Random` used for sampling.
        """
        from .sampling import sample_few_shot

        indices = sample_few_shot(self.labels, num_shots, seed, keys=self.keys, class_names=self.class_names)
        return self.select(indices)

    def class_subset(self, subset: Literal["all", "base", "novel"]) -> ImageRecords:
        """Keep the `base` or `novel` half of the classes and relabel from 0.

        See `maple_peft.training.data.sampling.subsample_classes`. In the CoOp/MaPLe protocol shots are drawn first
        (`few_shot`), then the class subset is taken.

        Args:
            subset (`Literal["all", "base", "novel"]`): `"all"` (no-op), `"base"` (first `ceil(n/2)` labels) or
                `"novel"` (the rest).
        """
        from .sampling import subsample_classes

        indices, new_labels, new_names = subsample_classes(self.labels, self.class_names, subset)
        records = [
            ImageRecord(
                path=self.records[i].path,
                label=new_label,
                class_name=self.records[i].class_name,
                image=self.records[i].image,
                key=self.records[i].key,
            )
            for i, new_label in zip(indices, new_labels, strict=True)
        ]
        return ImageRecords(records, new_names, self.name)

    def class_counts(self) -> list[int]:
        """Number of records per label (length `num_classes`)."""
        counts = [0] * self.num_classes
        for record in self.records:
            counts[record.label] += 1
        return counts
