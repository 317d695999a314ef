"""The Hub dataset registry: timm/eurosat-rgb with CoOp's names and template, user entries, and the split recorded.

Offline: a dataset in timm/eurosat-rgb's schema (image, ClassLabel label with the ten folder names, image_id; splits
train / validation / test) is written as a Hub repository folder (README.md + data/*.parquet), and
`datasets.load_dataset("timm/eurosat-rgb")` is pointed at it.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
from pathlib import Path

import datasets
import pytest
from accelerate.state import AcceleratorState
from PIL import Image

from maple_peft.training.data import (
    HUB_DATASETS,
    find_hub_dataset,
    get_benchmark,
    hub_dataset_for_benchmark,
    load_dataset_registry,
)
from maple_peft.training.experiment import load_experiment_data

REPO = Path(__file__).resolve().parents[1]
FOLDER_NAMES = [
    "AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture", "PermanentCrop",
    "Residential", "River", "SeaLake",
]  # fmt: skip
COOP_NAMES = [
    "Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road", "Industrial Buildings",
    "Pasture Land", "Permanent Crop Land", "Residential Buildings", "River", "Sea or Lake",
]  # fmt: skip


def write_hub_folder(root: Path, per_split: dict[str, int]) -> Path:
    """A folder laid out like the timm/eurosat-rgb repository, with tiny images."""
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=FOLDER_NAMES),
            "image_id": datasets.Value("string"),
        }
    )
    (root / "data").mkdir(parents=True)
    for split, count in per_split.items():
        rows: dict[str, list] = {"image": [], "label": [], "image_id": []}
        for label, name in enumerate(FOLDER_NAMES):
            for i in range(count):
                rows["image"].append(Image.new("RGB", (16, 16), (25 * label, 200 - 20 * label, 40 * i)))
                rows["label"].append(label)
                rows["image_id"].append(f"{name}_{split}_{i}")
        datasets.Dataset.from_dict(rows, features=features).to_parquet(
            root / "data" / f"{split}-00000-of-00001.parquet"
        )
    names = "".join(f"          '{i}': {name}\n" for i, name in enumerate(FOLDER_NAMES))
    configs = "".join(f"  - split: {split}\n    path: data/{split}-*\n" for split in per_split)
    (root / "README.md").write_text(
        "---\ndataset_info:\n  features:\n  - name: image\n    dtype: image\n  - name: label\n    dtype:\n"
        f"      class_label:\n        names:\n{names}  - name: image_id\n    dtype: string\n"
        f"configs:\n- config_name: default\n  data_files:\n{configs}---\n# EuroSAT (RGB), offline copy\n"
    )
    return root


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory):
    return write_hub_folder(tmp_path_factory.mktemp("eurosat-rgb"), {"train": 2, "validation": 1, "test": 2})


@pytest.fixture
def offline_hub(hub_folder, monkeypatch, tmp_path):
    """`load_dataset("timm/eurosat-rgb")` reads the local copy (and nothing reaches the network)."""
    load = datasets.load_dataset

    def fake(path, *args, **kwargs):
        assert path == "timm/eurosat-rgb", path
        return load(str(hub_folder), *args, cache_dir=str(tmp_path / "cache"), **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", fake)
    return hub_folder


def test_the_builtin_eurosat_entry_has_coops_names_template_and_says_its_split():
    spec = HUB_DATASETS["eurosat"]
    assert spec.dataset_id == "timm/eurosat-rgb"
    assert [spec.class_names[name] for name in FOLDER_NAMES] == COOP_NAMES
    assert spec.template == get_benchmark("eurosat").template == "a centered satellite photo of {}."
    assert spec.split_source == "hub:timm/eurosat-rgb:train/test"
    assert "not CoOp's split_zhou_EuroSAT.json" in spec.split_note
    assert hub_dataset_for_benchmark("EuroSAT") is find_hub_dataset("timm/eurosat-rgb") is spec


def test_a_hub_dataset_loads_with_readable_names_and_records_its_split(offline_hub):
    data = load_experiment_data(dataset_name="timm/eurosat-rgb")

    assert data.name == "timm/eurosat-rgb" and data.benchmark == "eurosat"
    assert data.class_names == COOP_NAMES
    assert data.template == "a centered satellite photo of {}."
    assert data.split_source == "hub:timm/eurosat-rgb:train/test"
    assert len(data.train) == 20 and len(data.test) == 20  # the train and test splits, not validation
    assert list(data.test.class_subset("base").class_names) == COOP_NAMES[:5]
    # a class_name_map given by the user replaces the registry's names
    mapped = load_experiment_data(dataset_name="timm/eurosat-rgb", class_name_map={"SeaLake": "sea or lake"})
    assert mapped.class_names[-1] == "sea or lake" and mapped.class_names[0] == "AnnualCrop"


def test_a_coop_dataset_without_data_root_points_at_the_hub_entry():
    with pytest.raises(ValueError, match=r"dataset='eurosat' needs data_root.*dataset_name='timm/eurosat-rgb'"):
        load_experiment_data(dataset="eurosat")


def test_a_user_registry_adds_a_dataset_from_a_local_folder(hub_folder, tmp_path):
    registry = tmp_path / "datasets.yaml"
    registry.write_text(
        f"my_eurosat:\n  dataset_id: {hub_folder}\n  test_split: validation\n"
        "  template: 'a satellite photo of {}.'\n  class_names: {SeaLake: sea}\n"
        "  split_note: my own split\n"
    )
    assert set(load_dataset_registry(registry)) == {"eurosat", "my_eurosat"}

    data = load_experiment_data(dataset_name=str(hub_folder), dataset_registry=str(registry))

    assert data.benchmark == "my_eurosat" and data.template == "a satellite photo of {}."
    assert data.class_names[-1] == "sea" and data.class_names[0] == "AnnualCrop"
    assert len(data.test) == 10  # the validation split, one image per class
    assert data.split_source == f"hub:{hub_folder}:train/validation" and data.split_note == "my own split"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x:\n  dataset_id: a/b\n  colour: red\n", r"entry 'x' has unknown key\(s\) \['colour'\]"),
        ("x:\n  template: a {}\n", "entry 'x' needs a dataset_id"),
        ("x:\n  dataset_id: a/b\n  template: a photo\n", r"template='a photo' must hold exactly one '\{\}'"),
        ("- a\n- b\n", "holds a list; it must map benchmark names to entries"),
    ],
)
def test_a_bad_registry_file_is_refused_naming_the_problem(tmp_path, text, message):
    path = tmp_path / "datasets.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_dataset_registry(path)
    with pytest.raises(FileNotFoundError, match="is not a file"):
        load_dataset_registry(tmp_path / "missing.yaml")


def test_timm_eurosat_trains_with_coops_names_and_records_its_own_split(offline_hub, tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import train
        from make_smoke_assets import save_tiny_clip
    finally:
        sys.path.remove(str(REPO / "examples"))
    check_sources = train.check_sources  # the dataset is the local copy: only the other sources are looked up
    monkeypatch.setattr(
        train,
        "check_sources",
        lambda sources, **kwargs: check_sources({k: v for k, v in sources.items() if k != "--dataset_name"}, **kwargs),
    )
    clip = save_tiny_clip(tmp_path / "tiny-clip")
    out = tmp_path / "run"
    argv = [
        "--config", str(REPO / "examples" / "configs" / "maple_base2novel.yaml"), "--dataset_name", "timm/eurosat-rgb",
        "--seed", "1", "--model_name_or_path", str(clip), "--depth", "2", "--num_shots", "1", "--batch_size", "2",
        "--epochs", "2", "--eval_batch_size", "20", "--num_workers", "0", "--no_plots", "--output_dir", str(out),
    ]  # fmt: skip
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            train.main(argv)
    finally:  # as a process of its own would: no accelerate state or log handler left for later tests
        AcceleratorState._reset_state(reset_partial_state=True)
        for handler in set(root.handlers) - set(handlers):
            handler.close()
        root.handlers[:], root.level = handlers, level

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "timm/eurosat-rgb" and metrics["benchmark"] == "eurosat"
    assert metrics["split_source"] == "hub:timm/eurosat-rgb:train/test"
    assert "not CoOp's split_zhou_EuroSAT.json" in metrics["split_note"]
    assert list(metrics["results"]["novel"]["per_class_accuracy"]) == COOP_NAMES[5:]
    assert "split: timm/eurosat-rgb's own train/test split" in (out / "training_log.txt").read_text()
