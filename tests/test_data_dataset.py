"""The torch Dataset over records, its decode cache, corrupt-file handling and batching (maple_peft.training.data.dataset)."""

from __future__ import annotations

import io
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maple_peft.training.data import CLIPTransforms, ImageClassificationDataset, ImageRecord, ImageRecords

TFM = CLIPTransforms(crop_size=(8, 8), resize=8)


def _records(tmp_path: Path, n_per_class: int = 3, fmt: str = "PNG") -> ImageRecords:
    records = []
    for label in range(2):
        for i in range(n_per_class):
            path = tmp_path / f"c{label}_{i}.{fmt.lower()}"
            pixels = np.random.default_rng(10 * label + i).integers(0, 256, (10, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path, format=fmt)
            records.append(ImageRecord(path=str(path), label=label, class_name=f"c{label}", key=path.name))
    return ImageRecords(records, ["c0", "c1"])


class _OpenCounter:
    """Counts PIL.Image.open calls (thread-safe; the dataset may validate in threads)."""

    def __init__(self, monkeypatch):
        self.count = 0
        self._lock = threading.Lock()
        real_open = Image.open

        def counting_open(*args, **kwargs):
            with self._lock:
                self.count += 1
            return real_open(*args, **kwargs)

        monkeypatch.setattr(Image, "open", counting_open)


def test_items_batch_with_the_default_collate(tmp_path):
    ds = ImageClassificationDataset(_records(tmp_path), TFM.test())
    assert len(ds) == 6 and ds.num_skipped == 0 and ds.class_names == ["c0", "c1"]
    item = ds[4]
    assert set(item) == {"pixel_values", "labels"}
    assert item["pixel_values"].shape == (3, 8, 8) and item["pixel_values"].dtype == torch.float32
    assert item["labels"] == 1 and isinstance(item["labels"], int)
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    assert batch["pixel_values"].shape == (6, 3, 8, 8)
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [0, 0, 0, 1, 1, 1]
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    assert [b["pixel_values"].shape[0] for b in loader] == [4, 2]
    assert torch.equal(ds[-1]["pixel_values"], ds[5]["pixel_values"])
    with pytest.raises(IndexError, match="Index 6 is out of range"):
        ds[6]


def test_corrupt_and_missing_files_are_skipped_and_counted(tmp_path):
    records = list(_records(tmp_path))
    garbage = tmp_path / "broken.jpg"
    garbage.write_bytes(b"this is not a jpeg at all" * 10)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    records.insert(2, ImageRecord(path=str(garbage), label=0, class_name="c0"))
    records.append(ImageRecord(path=str(empty), label=1, class_name="c1"))
    records.append(ImageRecord(path=str(tmp_path / "gone.png"), label=1, class_name="c1"))
    with pytest.warns(UserWarning, match=r"Skipped 3 unreadable image\(s\) of 9: .*broken\.jpg") as caught:
        ds = ImageClassificationDataset(ImageRecords(records, ["c0", "c1"]), TFM.test())
    message = str(caught[0].message)
    assert "empty.png" in message and "gone.png" in message
    assert ds.num_skipped == 3 and len(ds) == 6
    assert len(ds.skipped) == 3
    assert [ds[i]["labels"] for i in range(len(ds))] == [0, 0, 0, 1, 1, 1]


def test_all_unreadable_is_an_error(tmp_path):
    bad = tmp_path / "x.jpg"
    bad.write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="None of the 1 images could be read"):
        ImageClassificationDataset([ImageRecord(path=str(bad), label=0, class_name="a")], TFM.test())


def test_cached_dataset_decodes_each_image_once(tmp_path, monkeypatch):
    records = _records(tmp_path)
    counter = _OpenCounter(monkeypatch)
    ds = ImageClassificationDataset(records, TFM.train(seed=0), cache_decoded=True)
    assert counter.count == len(records)
    for _ in range(3):  # three epochs
        for i in range(len(ds)):
            ds[i]
    assert counter.count == len(records)
    assert ds.cached_bytes == 6 * 12 * 10 * 3
    # augmentations still differ between epochs
    assert not torch.equal(ds[0]["pixel_values"], ds[0]["pixel_values"])


def test_uncached_dataset_opens_on_every_access(tmp_path, monkeypatch):
    records = _records(tmp_path)
    counter = _OpenCounter(monkeypatch)
    ds = ImageClassificationDataset(records, TFM.test())
    assert counter.count == len(records)  # the construction-time check
    for _ in range(2):
        for i in range(len(ds)):
            ds[i]
    assert counter.count == 3 * len(records)
    assert ds.cached_bytes == 0


def test_cache_with_threads_keeps_order(tmp_path):
    records = []
    for i in range(70):  # above the threading threshold
        path = tmp_path / f"{i}.png"
        Image.new("L", (4, 4), i).save(path)
        records.append(ImageRecord(path=str(path), label=i % 2, class_name=str(i % 2)))
    ds = ImageClassificationDataset(records, lambda im: torch.tensor(im.getpixel((0, 0))), cache_decoded=True)
    assert [ds[i]["pixel_values"].tolist() for i in range(70)] == [[i, i, i] for i in range(70)]


def test_truncated_image_passing_the_open_check_is_replaced_at_load(tmp_path):
    records = list(_records(tmp_path, fmt="JPEG"))
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    records.insert(0, ImageRecord(path=str(truncated), label=1, class_name="c1"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the header is fine: no warning at construction
        ds = ImageClassificationDataset(records, TFM.test())
    assert len(ds) == 7
    with pytest.warns(UserWarning, match=r"Cannot decode .*truncated\.jpg.*using the next image"):
        item = ds[0]
    assert item["labels"] == 0 and ds.num_failed_loads == 1
    # a full decode check drops it up front
    with pytest.warns(UserWarning, match=r"Skipped 1 unreadable.*truncated\.jpg"):
        strict = ImageClassificationDataset(records, TFM.test(), validate="decode")
    assert len(strict) == 6 and strict.num_skipped == 1


def test_in_memory_images_and_modes(tmp_path):
    records = [
        ImageRecord(path=None, label=0, class_name="a", image=Image.new("L", (9, 9), 30), key="0"),
        ImageRecord(path=None, label=1, class_name="b", image=Image.new("RGBA", (9, 9), (1, 2, 3, 0)), key="1"),
    ]
    ds = ImageClassificationDataset(ImageRecords(records, ["a", "b"]), TFM.test(), cache_decoded=True)
    assert len(ds) == 2 and ds[1]["pixel_values"].shape == (3, 8, 8)
    assert "in-memory L image 9x9" in records[0].describe()


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="validate='full'"):
        ImageClassificationDataset(_records(tmp_path), TFM.test(), validate="full")
    with pytest.raises(TypeError, match="not callable"):
        ImageClassificationDataset(_records(tmp_path), transform=None)


def test_dataloader_workers_are_reproducible(tmp_path):
    ds = ImageClassificationDataset(_records(tmp_path), TFM.train(seed=0), cache_decoded=True)

    def epoch() -> torch.Tensor:
        torch.manual_seed(123)  # the trainer's seed: DataLoader derives the workers' seeds from it
        loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)
        return torch.cat([batch["pixel_values"] for batch in loader])

    first, second = epoch(), epoch()
    assert first.shape == (6, 3, 8, 8)
    assert torch.equal(first, second)
