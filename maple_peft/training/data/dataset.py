"""A `torch.utils.data.Dataset` over `ImageRecord`s.

Its items batch with `torch.utils.data.default_collate` (the `DataLoader` default).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import torch
from PIL import Image

from .records import ImageRecord, ImageRecords

__all__ = ["ImageClassificationDataset"]

_PARALLEL_MIN = 64  # below this many records, validate / decode in the calling thread


def _verify(record: ImageRecord) -> None:
    """Open the image and check its header / structure without decoding the pixels."""
    if isinstance(record.image, Image.Image):
        return  # already in memory
    image = record.open()
    try:
        image.verify()
    finally:
        image.close()


class ImageClassificationDataset(torch.utils.data.Dataset):
    """Records + a transform → `{"pixel_values": FloatTensor(3, H, W), "labels": int}` items.

    Unreadable images are dropped when the dataset is built, so `len()` counts only usable images:
    `num_skipped` counts them and a warning names them (the first `max_warnings`, then a summary). An image that
    passes the construction check but still fails to decode later (e.g. a truncated JPEG with
    `validate="open"`) is replaced by the next readable item, with a warning, instead of crashing the epoch.

    With `cache_decoded=True` every image is decoded once, at construction, and kept in memory as an RGB PIL image
    (use it for the few-shot training set, `num_shots x num_classes` images, so that epochs do not re-decode; it
    holds about `3 x width x height` bytes per image, see `cached_bytes`; `DataLoader` workers share the
    cache copy-on-write when forked). Random augmentations still run every epoch on the cached images.

    Args:
        records (`ImageRecords | Sequence[ImageRecord]`): The images (an `ImageRecords` or a list of records).
        transform (`Callable[[Image.Image], torch.Tensor]`): Maps an RGB PIL image to a tensor (e.g.
            `CLIPTransforms.train()` / `.test()`).
        cache_decoded (`bool`): Decode all images once at construction and keep them in memory.
        validate (`Literal["open", "decode", "none"]`): How to check images at construction: `"open"` (default; PIL
            opens and verifies each file's structure without decoding the pixels: catches missing, empty, garbage and
            most corrupt files), `"decode"` (fully decode each image: catches everything, costs a full pass), or
            `"none"`. `cache_decoded=True` always decodes.
        num_threads (`int | None`): Threads used to validate / decode at construction (`None`: Python's default pool
            size; `0` or `1`: in the calling thread).
        max_warnings (`int`): How many skipped files are named individually in the warning.
    """

    def __init__(
        self,
        records: ImageRecords | Sequence[ImageRecord],
        transform: Callable[[Image.Image], torch.Tensor],
        *,
        cache_decoded: bool = False,
        validate: Literal["open", "decode", "none"] = "open",
        num_threads: int | None = None,
        max_warnings: int = 10,
    ) -> None:
        if validate not in ("open", "decode", "none"):
            raise ValueError(f"validate={validate!r} is invalid; use 'open', 'decode' or 'none'.")
        if not callable(transform):
            raise TypeError(f"transform={transform!r} is not callable; pass e.g. CLIPTransforms().test()")
        records = list(records) if not isinstance(records, ImageRecords) else records
        self.class_names: list[str] | None = list(records.class_names) if isinstance(records, ImageRecords) else None
        self.transform = transform
        self.cache_decoded = cache_decoded
        self.validate = validate
        self.num_failed_loads = 0

        mode = "decode" if cache_decoded else validate
        results = self._check_all(list(records), mode, num_threads)
        kept: list[ImageRecord] = []
        cache: list[Image.Image] = []
        self.skipped: list[str] = []
        for record, (image, error) in zip(records, results, strict=True):
            if error is not None:
                self.skipped.append(f"{record.describe()} ({type(error).__name__}: {error})")
                continue
            kept.append(record)
            if cache_decoded:
                cache.append(image)
        self.records: list[ImageRecord] = kept
        self._cache: list[Image.Image] | None = cache if cache_decoded else None

        if self.skipped:
            listed = "; ".join(self.skipped[:max_warnings])
            more = f"; and {len(self.skipped) - max_warnings} more" if len(self.skipped) > max_warnings else ""
            warnings.warn(
                f"Skipped {len(self.skipped)} unreadable image(s) of {len(results)}: {listed}{more}",
                UserWarning,
                stacklevel=2,
            )
        if results and not kept:
            raise ValueError(
                f"None of the {len(results)} images could be read (first: {self.skipped[0]}); check the data path "
                "and layout"
            )

    @staticmethod
    def _check_one(record: ImageRecord, mode: str) -> tuple[Image.Image | None, BaseException | None]:
        try:
            if mode == "decode":
                return record.load(), None
            if mode == "open":
                _verify(record)
            return None, None
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
            return None, err

    def _check_all(
        self, records: list[ImageRecord], mode: str, num_threads: int | None
    ) -> list[tuple[Image.Image | None, BaseException | None]]:
        if mode == "none":
            return [(None, None)] * len(records)
        if len(records) < _PARALLEL_MIN or (num_threads is not None and num_threads <= 1):
            return [self._check_one(r, mode) for r in records]
        with ThreadPoolExecutor(max_workers=num_threads) as pool:  # PIL releases the GIL while reading/decoding
            return list(pool.map(lambda r: self._check_one(r, mode), records))

    @property
    def num_skipped(self) -> int:
        """How many records were dropped at construction because their image could not be read."""
        return len(self.skipped)

    @property
    def labels(self) -> list[int]:
        """The label of every (kept) item."""
        return [r.label for r in self.records]

    @property
    def cached_bytes(self) -> int:
        """Memory held by the decoded-image cache, in bytes (0 without `cache_decoded`)."""
        if self._cache is None:
            return 0
        return sum(im.width * im.height * len(im.getbands()) for im in self._cache)

    def __len__(self) -> int:
        return len(self.records)

    def _image(self, index: int) -> Image.Image:
        if self._cache is not None:
            return self._cache[index]
        return self.records[index].load()

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.records)
        if not -n <= index < n:
            raise IndexError(f"Index {index} is out of range for a dataset of {n} items")
        index %= n
        for attempt in range(n):
            i = (index + attempt) % n
            try:
                image = self._image(i)
            except Exception as err:
                self.num_failed_loads += 1
                warnings.warn(
                    f"Cannot decode {self.records[i].describe()} ({type(err).__name__}: {err}); using the next "
                    "image instead (build the dataset with validate='decode' to drop such files up front)",
                    UserWarning,
                    stacklevel=2,
                )
                continue
            pixels = self.transform(image)
            if isinstance(pixels, Mapping):  # a patch-based processor's inputs (SigLIP 2): pixel values, mask, shapes
                return {**pixels, "labels": self.records[i].label}
            return {"pixel_values": pixels, "labels": self.records[i].label}
        raise RuntimeError(f"No image of the {n} in the dataset could be decoded")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_items={len(self)}, num_skipped={self.num_skipped}, "
            f"cache_decoded={self.cache_decoded}, transform={self.transform!r})"
        )
