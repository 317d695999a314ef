"""🤗 datasets loading (maple_peft.training.data.hf) with imagefolders generated in tmp_path (no network)."""

from __future__ import annotations

import io
import json
import pickle

import datasets
import numpy as np
import pytest
from PIL import Image

from maple_peft.training.data import (
    HFImageRef,
    ImageClassificationDataset,
    ImageRecords,
    dataset_identity,
    load_class_name_map,
    load_image_classification,
    make_synthetic_imagefolder,
    records_from_hf_dataset,
)

CLASSES = ["sea_lake", "forest", "desert"]


@pytest.fixture(scope="module")
def data_imagefolder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagefolder")
    make_synthetic_imagefolder(root, CLASSES, train_per_class=4, test_per_class=2, image_size=16)
    return root


def _load(root, tmp_path, **kwargs):
    return load_image_classification("imagefolder", data_dir=root, cache_dir=tmp_path / "hf_cache", **kwargs)


def test_imagefolder_records_and_class_names(data_imagefolder, tmp_path):
    data = _load(data_imagefolder, tmp_path)
    train, test, class_names = data  # unpacks like a tuple
    assert class_names == sorted(CLASSES)  # imagefolder orders classes alphabetically
    assert isinstance(train, ImageRecords) and train.class_names == class_names
    assert len(train) == 12 and len(test) == 6
    assert train.class_counts() == [4, 4, 4]
    for record in train:
        assert record.path is not None and record.path.endswith(".png") and record.image is None
        assert f"/{record.class_name}/" in record.path
        assert record.key.startswith(f"train/{record.class_name}/")  # relative to data_dir
    assert train.few_shot(2, seed=0).class_counts() == [2, 2, 2]
    item = ImageClassificationDataset(train, lambda im: np.asarray(im))[0]
    assert item["pixel_values"].shape == (16, 16, 3)


def test_class_name_map_dict_json_and_lines(data_imagefolder, tmp_path):
    expected = ["desert", "forest", "sea or lake"]
    assert _load(data_imagefolder, tmp_path, class_name_map={"sea_lake": "sea or lake"}).class_names == expected
    json_map = tmp_path / "names.json"
    json_map.write_text(json.dumps({"sea_lake": "sea or lake"}))
    data = _load(data_imagefolder, tmp_path, class_name_map=str(json_map))
    assert data.class_names == expected
    assert {r.class_name for r in data.train} == set(expected)
    lines = tmp_path / "names.txt"
    lines.write_text("# old new\nsea_lake sea or lake\n\nforest woods\n")
    assert load_class_name_map(lines) == {"sea_lake": "sea or lake", "forest": "woods"}
    assert _load(data_imagefolder, tmp_path, class_name_map=lines).class_names == ["desert", "woods", "sea or lake"]
    with pytest.warns(UserWarning, match=r"\['typo'\] match no class"):
        _load(data_imagefolder, tmp_path, class_name_map={"typo": "x"})
    with pytest.raises(FileNotFoundError, match=r"class_name_map='.*missing\.txt' is not a file"):
        load_class_name_map(tmp_path / "missing.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("lonely\n")
    with pytest.raises(ValueError, match=r"bad\.txt:1: expected '<old name> <new name>'"):
        load_class_name_map(bad)


def test_missing_column_and_split(data_imagefolder, tmp_path):
    with pytest.raises(
        ValueError, match=r"Column 'img' not found in .* columns \['image', 'label'\]; pass image_column="
    ):
        _load(data_imagefolder, tmp_path, image_column="img")
    with pytest.raises(ValueError, match=r"Column 'y' not found .*; pass label_column="):
        _load(data_imagefolder, tmp_path, label_column="y")
    with pytest.raises(
        ValueError, match=r"test_split='validation' is not a split of 'imagefolder' \(splits: \['train', 'test'\]\)"
    ):
        _load(data_imagefolder, tmp_path, test_split="validation")


def test_non_classlabel_label_column(tmp_path):
    root = tmp_path / "meta"
    make_synthetic_imagefolder(root, ["a", "b"], train_per_class=2, test_per_class=1, image_size=8)
    for split in ("train", "test"):
        files = sorted(p.relative_to(root / split).as_posix() for p in (root / split).rglob("*.png"))
        (root / split / "metadata.csv").write_text(
            "file_name,score\n" + "".join(f"{f},{i}\n" for i, f in enumerate(files))
        )
    with pytest.raises(ValueError, match=r"Column 'score' .* is a Value .*not a datasets.ClassLabel"):
        _load(root, tmp_path, label_column="score")


def test_single_class_imagefolder(tmp_path):
    root = tmp_path / "one"
    for split in ("train", "test"):
        (root / split / "only").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / split / "only" / "x.png")
    with pytest.raises(ValueError, match="at least two classes"):
        _load(root, tmp_path)


def _in_memory_dsd(names: list[str], train_labels: list[int], test_labels: list[int]) -> datasets.DatasetDict:
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})

    def split(labels):
        images = [Image.new("RGB", (6, 6), (40 * y, 0, 0)) for y in labels]
        return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)

    return datasets.DatasetDict({"train": split(train_labels), "test": split(test_labels)})


def test_hub_style_bytes_dataset_fewer_than_two_classes_and_empty_class(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: _in_memory_dsd(["only"], [0], [0]))
    with pytest.raises(ValueError, match=r"has 1 class\(es\) \['only'\]"):
        load_image_classification("user/ds")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: _in_memory_dsd(["a", "b", "c"], [0, 2], [0, 1]))
    with pytest.raises(ValueError, match=r"class\(es\) 1 \('b'\) of 'user/ds' have no image in split 'train'"):
        load_image_classification("user/ds")


def test_hub_style_bytes_dataset_uses_lazy_row_references(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: _in_memory_dsd(["a", "b"], [0, 1, 1], [1, 0]))
    train, test, names = load_image_classification("user/ds")
    assert names == ["a", "b"] and train.labels == [0, 1, 1]
    record = train[1]
    assert record.path is None and isinstance(record.image, HFImageRef)
    assert record.key == "000000000001"
    image = record.load()
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (40, 0, 0)
    assert record.describe() == "user/ds/train[1]['image']"
    clone = pickle.loads(pickle.dumps(record))
    assert clone.load().getpixel((0, 0)) == (40, 0, 0)


def test_records_from_shuffled_dataset_keep_row_alignment(data_imagefolder, tmp_path):
    ds = datasets.load_dataset("imagefolder", data_dir=str(data_imagefolder), cache_dir=str(tmp_path / "c"))["train"]
    shuffled = ds.shuffle(seed=0)
    recs = records_from_hf_dataset(shuffled)
    assert recs.labels == list(shuffled["label"])
    for r in recs:
        assert f"/{recs.class_names[r.label]}/" in r.path


def test_corrupt_row_of_a_bytes_dataset_is_skipped():
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    buf = io.BytesIO()
    Image.new("RGB", (5, 5), (1, 2, 3)).save(buf, format="PNG")
    rows = {"image": [{"bytes": buf.getvalue(), "path": None}, {"bytes": b"garbage", "path": None}], "label": [0, 1]}
    ds = datasets.Dataset.from_dict(rows, features=features)
    recs = records_from_hf_dataset(ds, name="mem/train")
    with pytest.warns(UserWarning, match=r"Skipped 1 .*mem/train\[1\]\['image'\]"):
        dataset = ImageClassificationDataset(recs, lambda im: np.asarray(im))
    assert len(dataset) == 1 and dataset.num_skipped == 1
    assert dataset[0]["pixel_values"][0, 0].tolist() == [1, 2, 3]


def test_class_name_map_accepts_an_inline_json_object(data_imagefolder, tmp_path):
    inline = '{"sea_lake": "sea or lake", "forest": "woods"}'
    assert load_class_name_map(inline) == {"sea_lake": "sea or lake", "forest": "woods"}
    assert _load(data_imagefolder, tmp_path, class_name_map=inline).class_names == ["desert", "woods", "sea or lake"]
    with pytest.raises(ValueError, match="inline class_name_map looks like JSON but does not parse"):
        load_class_name_map('{"sea_lake": ')


def test_a_class_name_map_that_merges_two_classes_is_refused_naming_both(data_imagefolder, tmp_path):
    with pytest.raises(ValueError, match=r"'forest' -> 'land' and 'sea_lake' -> 'land' \(both 'land'\)"):
        _load(data_imagefolder, tmp_path, class_name_map={"forest": "land", "sea_lake": "land"})
    with pytest.raises(ValueError, match=r"'desert' and 'forest' -> 'desert'"):
        _load(data_imagefolder, tmp_path, class_name_map={"forest": "desert"})


def test_two_folders_that_give_the_same_prompt_are_refused(tmp_path):
    root = make_synthetic_imagefolder(tmp_path / "data", ["sea lake", "sea_lake", "forest"], 1, 1, image_size=8)
    with pytest.raises(ValueError, match=r"same prompt name.*'sea lake' and 'sea_lake' \(both 'sea lake'\)"):
        _load(root, tmp_path)


def test_a_class_folder_empty_in_both_splits_is_an_error_naming_it(tmp_path):
    root = make_synthetic_imagefolder(tmp_path / "data", ["alpha", "gamma", "omega"], 2, 1, image_size=8)
    (root / "train" / "beta").mkdir()  # sorts between the others: dropping it would shift gamma and omega
    (root / "test" / "beta").mkdir()
    with pytest.raises(ValueError, match=r"Class folder\(s\) \['beta'\] .* hold no image .*remove the empty folder"):
        _load(root, tmp_path)


def test_dataset_identity_tells_local_folders_apart_and_is_stable(tmp_path):
    flowers = dataset_identity("imagefolder", tmp_path / "a" / "flowers", ["rose", "tulip"])
    assert flowers.startswith("imagefolder:flowers-") and len(flowers) == len("imagefolder:flowers-") + 8
    # the same folder name and classes elsewhere (another machine), in another order: the same identity
    assert dataset_identity("imagefolder", tmp_path / "b" / "flowers", ["tulip", "rose"]) == flowers
    assert dataset_identity("imagefolder", tmp_path / "a" / "flowers", ["rose", "daisy"]) != flowers
    assert dataset_identity("imagefolder", tmp_path / "cars", ["rose", "tulip"]) != flowers
    assert dataset_identity("user/eurosat", None, ["a", "b"]) == "user/eurosat"
