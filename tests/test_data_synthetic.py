"""The synthetic imagefolder generator (maple_peft.training.data.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from maple_peft.training.data import make_synthetic_imagefolder

NAMES = ["alpha", "beta", "gamma", "delta", "epsilon"]


def _load_split(root, split):
    xs, ys = [], []
    for label, name in enumerate(NAMES):
        for path in sorted((root / split / name).glob("*.png")):
            xs.append(np.asarray(Image.open(path), dtype=np.float64).ravel() / 255.0)
            ys.append(label)
    return np.stack(xs), np.array(ys)


def test_layout_counts_and_images(tmp_path):
    root = make_synthetic_imagefolder(tmp_path / "syn", NAMES, train_per_class=6, test_per_class=3, image_size=24)
    assert root == tmp_path / "syn"
    for split, n in (("train", 6), ("test", 3)):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(NAMES)
        for name in NAMES:
            files = list((root / split / name).glob("*.png"))
            assert len(files) == n
    image = Image.open(next((root / "train" / "alpha").glob("*.png")))
    assert image.size == (24, 24) and image.mode == "RGB"


def test_deterministic_under_a_seed(tmp_path):
    a = make_synthetic_imagefolder(tmp_path / "a", NAMES[:2], 2, 1, seed=3)
    b = make_synthetic_imagefolder(tmp_path / "b", NAMES[:2], 2, 1, seed=3)
    c = make_synthetic_imagefolder(tmp_path / "c", NAMES[:2], 2, 1, seed=4)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)


def test_classes_are_separable_but_images_vary(tmp_path):
    root = make_synthetic_imagefolder(tmp_path, NAMES, train_per_class=8, test_per_class=8, image_size=16)
    x_train, y_train = _load_split(root, "train")
    x_test, y_test = _load_split(root, "test")
    # A nearest-class-mean classifier on raw pixels separates the classes ...
    means = np.stack([x_train[y_train == c].mean(0) for c in range(len(NAMES))])
    predictions = np.argmin(((x_test[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    assert (predictions == y_test).mean() >= 0.95
    # ... while images of one class are not identical copies.
    assert len({x.tobytes() for x in x_train[y_train == 0]}) == 8


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="fewer than two classes"):
        make_synthetic_imagefolder(tmp_path, ["one"], 1, 1)
    with pytest.raises(ValueError, match="duplicates"):
        make_synthetic_imagefolder(tmp_path, ["a", "a"], 1, 1)
    with pytest.raises(ValueError, match="cannot be a folder name"):
        make_synthetic_imagefolder(tmp_path, ["a", "b/c"], 1, 1)
    with pytest.raises(ValueError, match="train_per_class=0"):
        make_synthetic_imagefolder(tmp_path, ["a", "b"], 0, 1)
    make_synthetic_imagefolder(tmp_path, ["a", "b"], 1, 0)
    assert not (tmp_path / "test").exists()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make_synthetic_imagefolder(tmp_path, ["a", "b"], 1, 1)
    make_synthetic_imagefolder(tmp_path, ["x", "y"], 1, 1, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["x", "y"]


def test_overwrite_replaces_only_its_own_images_and_refuses_a_users_files(tmp_path):
    root = make_synthetic_imagefolder(tmp_path / "data", ["a", "b", "c"], 2, 1, image_size=8)
    make_synthetic_imagefolder(root, ["x", "y"], 1, 1, image_size=8, overwrite=True)
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png")) == [
        "test/x/test_000_0000.png",
        "test/y/test_001_0000.png",
        "train/x/train_000_0000.png",
        "train/y/train_001_0000.png",
    ]

    mine = root / "train" / "x" / "my_photo.jpg"
    mine.write_bytes(b"a user's file")
    with pytest.raises(FileExistsError, match=r"1 file\(s\) that make_synthetic_imagefolder did not write.*my_photo"):
        make_synthetic_imagefolder(root, ["x", "y"], 1, 1, image_size=8, overwrite=True)
    assert mine.read_bytes() == b"a user's file" and len(list(root.rglob("*.png"))) == 4


def test_overwrite_refuses_a_folder_it_did_not_create(tmp_path):
    users = tmp_path / "photos" / "train" / "cats"
    users.mkdir(parents=True)
    (users / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(FileExistsError, match="was not written by make_synthetic_imagefolder"):
        make_synthetic_imagefolder(tmp_path / "photos", ["a", "b"], 1, 1, overwrite=True)
    assert (users / "cat.jpg").read_bytes() == b"meow"
