"""CoOp benchmark layouts (maple_peft.training.data.coop), on tiny fake data roots generated in tmp_path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from maple_peft import format_prompts
from maple_peft.training.data import BENCHMARKS, get_benchmark, list_benchmarks, load_coop_split, read_classnames


def _png(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, value, value)).save(path, format="PNG")


def _json_dataset(root: Path, name: str, class_names: list[str], per_split: dict[str, int]) -> dict[str, list]:
    """Write a split_zhou_*.json dataset with `per_split[split]` images per class."""
    spec = get_benchmark(name)
    image_dir = root / spec.dataset_dir / spec.image_dir
    split: dict[str, list] = {}
    for part, n in per_split.items():
        split[part] = []
        for label, cname in enumerate(class_names):
            for i in range(n):
                rel = f"{cname}/{cname}_{part}_{i}.png"
                _png(image_dir / rel, label * 20)
                split[part].append([rel, label, cname])
    (root / spec.dataset_dir / spec.split_file).write_text(json.dumps(split))
    return split


EUROSAT = ["AnnualCrop", "Forest", "Herbaceous_Vegetation", "SeaLake"]


def test_registry_has_the_15_datasets_with_coop_layouts():
    assert len(list_benchmarks()) == 15
    expected = {
        "caltech101": ("caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", "a photo of a {}."),
        "oxford_pets": ("oxford_pets", "images", "split_zhou_OxfordPets.json", "a photo of a {}, a type of pet."),
        "stanford_cars": ("stanford_cars", "", "split_zhou_StanfordCars.json", "a photo of a {}."),
        "oxford_flowers": (
            "oxford_flowers",
            "jpg",
            "split_zhou_OxfordFlowers.json",
            "a photo of a {}, a type of flower.",
        ),
        "food101": ("food-101", "images", "split_zhou_Food101.json", "a photo of {}, a type of food."),
        "fgvc_aircraft": ("fgvc_aircraft", "images", None, "a photo of a {}, a type of aircraft."),
        "sun397": ("sun397", "SUN397", "split_zhou_SUN397.json", "a photo of a {}."),
        "dtd": ("dtd", "images", "split_zhou_DescribableTextures.json", "{} texture."),
        "eurosat": ("eurosat", "2750", "split_zhou_EuroSAT.json", "a centered satellite photo of {}."),
        "ucf101": ("ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", "a photo of a person doing {}."),
        "imagenet": ("imagenet", "images", None, "a photo of a {}."),
        "imagenetv2": ("imagenetv2", "imagenetv2-matched-frequency-format-val", None, "a photo of a {}."),
        "imagenet_sketch": ("imagenet-sketch", "images", None, "a photo of a {}."),
        "imagenet_a": ("imagenet-adversarial", "imagenet-a", None, "a photo of a {}."),
        "imagenet_r": ("imagenet-rendition", "imagenet-r", None, "a photo of a {}."),
    }
    for name, (dataset_dir, image_dir, split_file, template) in expected.items():
        spec = BENCHMARKS[name]
        assert (spec.dataset_dir, spec.image_dir, spec.split_file, spec.template) == (
            dataset_dir,
            image_dir,
            split_file,
            template,
        ), name
    assert [n for n in list_benchmarks() if BENCHMARKS[n].test_only] == [
        "imagenetv2",
        "imagenet_sketch",
        "imagenet_a",
        "imagenet_r",
    ]
    template = get_benchmark("eurosat").template  # the zero-shot prompt, formatted by the core
    assert format_prompts(None, ["Herbaceous_Vegetation"], template=template) == [
        "a centered satellite photo of Herbaceous Vegetation."
    ]


@pytest.mark.parametrize(
    ("alias", "name"),
    [
        ("EuroSAT", "eurosat"),
        ("OxfordPets", "oxford_pets"),
        ("DescribableTextures", "dtd"),
        ("ImageNetV2", "imagenetv2"),
        ("ImageNet-Sketch", "imagenet_sketch"),
        ("imagenet-r", "imagenet_r"),
        ("ImageNetA", "imagenet_a"),
        ("Caltech101", "caltech101"),
        ("caltech-101", "caltech101"),
        ("FGVCAircraft", "fgvc_aircraft"),
        ("StanfordCars", "stanford_cars"),
        ("OxfordFlowers", "oxford_flowers"),
        ("Food101", "food101"),
        ("SUN397", "sun397"),
        ("UCF101", "ucf101"),
        ("ImageNet", "imagenet"),
    ],
)
def test_aliases(alias, name):
    assert get_benchmark(alias).name == name


def test_unknown_benchmark():
    with pytest.raises(ValueError, match=r"Unknown benchmark 'mnist'; choose one of \['caltech101'"):
        get_benchmark("mnist")


def test_eurosat_json_split(tmp_path):
    _json_dataset(tmp_path, "eurosat", EUROSAT, {"train": 3, "val": 1, "test": 2})
    train = load_coop_split("EuroSAT", tmp_path, "train")
    assert train.class_names == EUROSAT  # raw: the underscore is replaced only at prompt time
    assert len(train) == 12 and train.class_counts() == [3, 3, 3, 3]
    first = train[0]
    assert first.path == str(tmp_path / "eurosat" / "2750" / "AnnualCrop" / "AnnualCrop_train_0.png")
    assert os.path.isfile(first.path)
    assert (first.label, first.class_name, first.key) == (0, "AnnualCrop", "AnnualCrop/AnnualCrop_train_0.png")
    assert load_coop_split("eurosat", tmp_path, "validation").class_counts() == [1, 1, 1, 1]
    test = load_coop_split("eurosat", str(tmp_path), "test")
    assert test.class_names == EUROSAT and len(test) == 8
    assert test.name == "eurosat/test"
    # few-shot keys are relative paths: the same draw wherever the root is
    assert [r.key for r in train.few_shot(2, seed=1)] == [
        r.key for r in load_coop_split("eurosat", tmp_path, "train").few_shot(2, seed=1)
    ]


@pytest.mark.parametrize(
    "name", ["caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "sun397", "dtd", "ucf101"]
)
def test_every_json_dataset_reads_its_layout(tmp_path, name):
    _json_dataset(tmp_path, name, ["a_b", "c"], {"train": 1, "val": 1, "test": 1})
    recs = load_coop_split(name, tmp_path, "test")
    assert recs.class_names == ["a_b", "c"]
    assert all(os.path.isfile(r.path) for r in recs)


def test_class_names_cover_all_splits(tmp_path):
    spec = get_benchmark("eurosat")
    _png(tmp_path / "eurosat" / "2750" / "x.png")
    split = {"train": [["x.png", 0, "A"]], "val": [], "test": [["x.png", 1, "B"]]}
    (tmp_path / "eurosat" / spec.split_file).write_text(json.dumps(split))
    assert load_coop_split("eurosat", tmp_path, "train").class_names == ["A", "B"]


def test_json_split_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Data root .* does not exist"):
        load_coop_split("eurosat", tmp_path / "nope", "train")
    with pytest.raises(FileNotFoundError, match=r"dataset folder not found: expected .*eurosat.*DATASETS\.md"):
        load_coop_split("eurosat", tmp_path, "train")
    (tmp_path / "eurosat").mkdir()
    with pytest.raises(FileNotFoundError, match=r"split file not found: expected .*split_zhou_EuroSAT\.json"):
        load_coop_split("eurosat", tmp_path, "train")
    (tmp_path / "eurosat" / "split_zhou_EuroSAT.json").write_text(json.dumps({"train": [["missing.png", 0, "A"]]}))
    with pytest.raises(FileNotFoundError, match=r"missing\.png.*DATASETS\.md"):
        load_coop_split("eurosat", tmp_path, "train")
    with pytest.raises(ValueError, match="no 'test' key"):
        load_coop_split("eurosat", tmp_path, "test")
    with pytest.raises(ValueError, match="split='dev' is invalid"):
        load_coop_split("eurosat", tmp_path, "dev")
    (tmp_path / "eurosat" / "split_zhou_EuroSAT.json").write_text(
        json.dumps({"train": [["a.png", 0, "A"], ["b.png", 0, "B"]]})
    )
    with pytest.raises(ValueError, match="label 0 is named both 'A' and 'B'"):
        load_coop_split("eurosat", tmp_path, "train")


def test_fgvc_aircraft_txt_layout(tmp_path):
    root = tmp_path / "fgvc_aircraft"
    variants = ["707-320", "A300B4", "F-16A/B", "Cessna 172"]
    root.mkdir()
    (root / "variants.txt").write_text("\n".join(variants) + "\n")
    lines = {"train": [], "val": [], "test": []}
    image_id = 1000000
    for part in lines:
        for v in variants:
            for _ in range(2):
                image_id += 1
                _png(root / "images" / f"{image_id}.jpg")
                lines[part].append(f"{image_id} {v}")
        (root / f"images_variant_{part}.txt").write_text("\n".join(lines[part]) + "\n")
    train = load_coop_split("FGVCAircraft", tmp_path, "train")
    assert train.class_names == variants
    assert train.class_counts() == [2, 2, 2, 2]
    cessna = [r for r in train if r.label == 3]
    assert cessna[0].class_name == "Cessna 172"
    assert cessna[0].path == str(root / "images" / "1000007.jpg") and cessna[0].key == "1000007.jpg"
    assert len(load_coop_split("fgvc_aircraft", tmp_path, "val")) == 8
    (root / "images_variant_test.txt").write_text("1000001 Boeing 999\n")
    with pytest.raises(ValueError, match="variant 'Boeing 999' is not listed"):
        load_coop_split("fgvc_aircraft", tmp_path, "test")
    (root / "variants.txt").unlink()
    with pytest.raises(FileNotFoundError, match="variants.txt"):
        load_coop_split("fgvc_aircraft", tmp_path, "test")


CLASSNAMES = {
    "n01440764": "tench",
    "n01443537": "goldfish",
    "n01484850": "great white shark",
    "n01491361": "tiger shark",
    "n01494475": "hammerhead shark",
}


def _write_classnames(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w} {n}\n" for w, n in CLASSNAMES.items()))


def _wnid_folders(image_dir: Path, wnids: list[str], per_class: int = 2) -> None:
    for i, wnid in enumerate(wnids):
        for j in range(per_class):
            _png(image_dir / wnid / f"{wnid}_{j}.JPEG", i * 30)


def test_imagenet_folders_and_classnames(tmp_path):
    root = tmp_path / "imagenet"
    _write_classnames(root / "classnames.txt")
    _wnid_folders(root / "images" / "train", list(CLASSNAMES), per_class=3)
    _wnid_folders(root / "images" / "val", list(CLASSNAMES), per_class=1)
    (root / "images" / "train" / "n01440764" / ".DS_Store").write_text("hidden")
    train = load_coop_split("imagenet", tmp_path, "train")
    assert train.class_names == list(CLASSNAMES.values())
    assert train.class_counts() == [3] * 5
    assert train[0].key == "n01440764/n01440764_0.JPEG" and train[0].class_name == "tench"
    assert train[4].label == 1 and train[4].class_name == "goldfish"
    test = load_coop_split("imagenet", tmp_path, "test")
    val = load_coop_split("imagenet", tmp_path, "val")
    assert [r.path for r in test] == [r.path for r in val]  # CoOp: val is the test set (images/val)
    assert all("/images/val/" in r.path.replace(os.sep, "/") for r in test)
    assert read_classnames(root / "classnames.txt") == CLASSNAMES


def test_imagenet_a_subset_is_relabelled_in_wnid_order(tmp_path):
    _write_classnames(tmp_path / "imagenet" / "classnames.txt")  # found in the sibling imagenet/ folder
    image_dir = tmp_path / "imagenet-adversarial" / "imagenet-a"
    _wnid_folders(image_dir, ["n01494475", "n01443537"], per_class=2)
    (image_dir / "README.txt").write_text("not a class")
    recs = load_coop_split("ImageNet-A", tmp_path, "test")
    assert recs.class_names == ["goldfish", "hammerhead shark"]
    assert recs.labels == [0, 0, 1, 1]
    assert [r.class_name for r in recs] == ["goldfish", "goldfish", "hammerhead shark", "hammerhead shark"]
    with pytest.raises(ValueError, match="has only a test split"):
        load_coop_split("imagenet_a", tmp_path, "train")
    _wnid_folders(image_dir, ["n99999999"], per_class=1)
    with pytest.raises(ValueError, match=r"\['n99999999'\] that are not wnids listed in classnames.txt"):
        load_coop_split("imagenet_a", tmp_path, "test")


def test_imagenet_r_and_sketch(tmp_path):
    _write_classnames(tmp_path / "imagenet-rendition" / "classnames.txt")  # in the variant's own folder
    _wnid_folders(tmp_path / "imagenet-rendition" / "imagenet-r", ["n01491361"], per_class=1)
    r = load_coop_split("imagenet_r", tmp_path, "test")
    assert r.class_names == ["tiger shark"] and r.labels == [0]
    _write_classnames(tmp_path / "imagenet-sketch" / "classnames.txt")
    _wnid_folders(tmp_path / "imagenet-sketch" / "images", ["n01491361", "n01440764"], per_class=1)
    sketch = load_coop_split("imagenet_sketch", tmp_path, "test")
    assert sketch.class_names == list(CLASSNAMES.values())  # all 1000 (here 5) ImageNet classes
    assert sketch.labels == [0, 3]


def test_imagenetv2_label_folders(tmp_path):
    root = tmp_path / "imagenetv2"
    _write_classnames(root / "classnames.txt")
    image_dir = root / "imagenetv2-matched-frequency-format-val"
    for label in (0, 2, 4):
        _png(image_dir / str(label) / f"img{label}.jpeg")
    recs = load_coop_split("ImageNetV2", tmp_path, "test")
    assert recs.class_names == list(CLASSNAMES.values())
    assert recs.labels == [0, 2, 4]
    assert recs[1].class_name == "great white shark" and recs[1].key == "2/img2.jpeg"
    _png(image_dir / "7" / "x.jpeg")
    with pytest.raises(ValueError, match=r"\['7'\] that are not label indices 0..4"):
        load_coop_split("imagenetv2", tmp_path, "test")


def test_missing_classnames_names_both_places(tmp_path):
    (tmp_path / "imagenetv2").mkdir()
    with pytest.raises(FileNotFoundError, match=r"imagenetv2/classnames\.txt and .*imagenet/classnames\.txt"):
        load_coop_split("imagenetv2", tmp_path, "test")
