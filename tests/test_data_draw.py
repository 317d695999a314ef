"""The few-shot draw on CoOp-layout data is the original code's: the same seed trains on the same images.

The reference below is a plain re-implementation of what Dassl and CoOp do (`set_random_seed`, then
`generate_fewshot_dataset` for the training and the validation pool, then `subsample_classes`), on split files whose
items are not grouped by class.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from PIL import Image

from maple_peft.training.data import TRAIN_IMAGES_FILE, draw_training_images, get_benchmark, load_coop_split
from maple_peft.training.experiment import draw_experiment_training_images, load_experiment_data

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
from make_smoke_assets import save_tiny_clip  # noqa: E402
from test_benchmark_grid import in_process  # noqa: E402

EUROSAT = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop"]
PER_CLASS = {"train": (3, 9, 5, 12, 7, 10, 4), "val": (2, 5, 3, 6, 1, 4, 5), "test": (1, 1, 1, 1, 1, 1, 1)}


def write_shuffled_split(root: Path, name: str = "eurosat", seed: int = 0) -> dict[str, list]:
    """A CoOp split_zhou_*.json dataset whose items are in no class order, with unequal class sizes."""
    spec = get_benchmark(name)
    image_dir = root / spec.dataset_dir / spec.image_dir
    shuffle = random.Random(seed)
    split: dict[str, list] = {}
    for part, counts in PER_CLASS.items():
        items = [
            [f"{class_name}/{class_name}_{part}_{i}.png", label, class_name]
            for label, class_name in enumerate(EUROSAT)
            for i in range(counts[label])
        ]
        shuffle.shuffle(items)
        split[part] = items
        for rel, label, _ in items:
            (image_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (30 * label, 200 - 20 * label, 7 * len(rel))).save(image_dir / rel)
    (root / spec.dataset_dir / spec.split_file).write_text(json.dumps(split))
    return split


def original_draw(split: dict[str, list], num_shots: int, seed: int, subset: str) -> tuple[list, list]:
    """What the original code trains on: Dassl's seeding and few-shot draw, then CoOp's `subsample_classes`."""
    state = random.getstate()
    try:
        random.seed(seed)  # Dassl's set_random_seed: nothing draws from Python's random before the dataset
        pools = []
        for part, shots in (("train", num_shots), ("val", min(num_shots, 4))):
            tracker = defaultdict(list)  # split_dataset_by_label
            for item in split[part]:
                tracker[item[1]].append(item)
            drawn = []
            for items in tracker.values():
                drawn.extend(random.sample(items, shots) if len(items) >= shots else items)
            pools.append(drawn)
    finally:
        random.setstate(state)
    if subset == "all":
        return pools[0], pools[1]
    labels = sorted({item[1] for item in pools[0]})
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if subset == "base" else labels[m:]
    relabel = {old: new for new, old in enumerate(selected)}
    return tuple([[rel, relabel[label], name] for rel, label, name in pool if label in relabel] for pool in pools)


@pytest.fixture(scope="module")
def coop_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coop")
    return root, write_shuffled_split(root)


@pytest.mark.parametrize("seed", [1, 2, 3, 17])
@pytest.mark.parametrize("num_shots", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("setting", ["base2novel", "all"])
def test_coop_data_trains_on_the_images_the_original_code_draws(coop_root, seed, num_shots, setting):
    root, split = coop_root
    data = load_experiment_data(dataset="eurosat", data_root=str(root))
    with pytest.warns(UserWarning) if num_shots > 3 else contextlib.nullcontext():  # classes with fewer images
        draw = draw_experiment_training_images(data, num_shots, seed, setting)

    train, val = original_draw(split, num_shots, seed, "base" if setting == "base2novel" else "all")
    assert draw.draw == "dassl"
    assert [[r.key, r.label, r.class_name] for r in draw.train] == train
    assert [[r.key, r.label, r.class_name] for r in draw.val] == val
    assert list(draw.train.class_names) == (EUROSAT[:4] if setting == "base2novel" else EUROSAT)


def test_the_draw_depends_on_the_split_files_order_as_the_originals_does(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    write_shuffled_split(first, seed=0)
    write_shuffled_split(second, seed=1)  # the same items, listed in another order
    keys = [
        [r.key for r in draw_training_images(load_coop_split("eurosat", root, "train"), 2, seed=1).train]
        for root in (first, second)
    ]
    assert sorted(keys[0]) != sorted(keys[1])


def test_imagenet_draws_the_training_pool_only(tmp_path):
    wnids = ["n01440764", "n01443537", "n01484850"]
    (tmp_path / "imagenet").mkdir()
    (tmp_path / "imagenet" / "classnames.txt").write_text("".join(f"{w} class {w}\n" for w in wnids))
    for split, count in (("train", 6), ("val", 1)):
        for label, wnid in enumerate(wnids):
            for i in range(count):
                path = tmp_path / "imagenet" / "images" / split / wnid / f"{wnid}_{i}.JPEG"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (8, 8), (label * 50, i, 0)).save(path, format="PNG")
    data = load_experiment_data(dataset="imagenet", data_root=str(tmp_path))
    assert data.val is None and data.few_shot_draw == "dassl"

    draw = draw_experiment_training_images(data, 2, seed=5, setting="all")

    items = [[r.key, r.label, r.class_name] for r in data.train]
    expected, _ = original_draw({"train": items, "val": []}, 2, 5, "all")
    assert [[r.key, r.label, r.class_name] for r in draw.train] == expected and draw.val is None


def test_train_py_writes_the_images_the_original_draws_in_train_images_json(coop_root, tmp_path):
    root, split = coop_root
    out = tmp_path / "run"
    argv = [
        "--dataset", "eurosat", "--data_root", str(root), "--seed", "3", "--num_shots", "2",
        "--model_name_or_path", str(save_tiny_clip(tmp_path / "tiny-clip")), "--depth", "1", "--batch_size", "4",
        "--epochs", "2", "--num_workers", "0", "--no_plots", "--no_zero_shot_baseline", "--output_dir", str(out),
    ]  # fmt: skip
    assert in_process([sys.executable, "train.py", *argv], {}, tmp_path / "log.txt") == 0

    written = json.loads((out / TRAIN_IMAGES_FILE).read_text())
    train_items, val_items = original_draw(split, 2, 3, "base")
    assert [[i["path"], i["label"], i["class_name"]] for i in written["images"]] == train_items
    assert [[i["path"], i["label"], i["class_name"]] for i in written["val_images"]] == val_items
    assert (written["draw"], written["seed"], written["num_shots"], written["subset"]) == ("dassl", 3, 2, "base")
    assert written["class_names"] == EUROSAT[:4] and written["dataset"] == "eurosat"
    assert "split_fewshot/shot_<num_shots>-seed_<seed>.pkl" in written["draw_rule"]
    assert "'dassl' few-shot draw" in (out / "training_log.txt").read_text()
