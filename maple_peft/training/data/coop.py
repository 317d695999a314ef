"""The CoOp / CoCoOp / MaPLe benchmark datasets, read from the on-disk layout of CoOp's `DATASETS.md`
(docs/formats.md#the-coop-data-layout---dataset-name---data_root-dir).

`load_coop_split` gives a split's `ImageRecords`; `get_benchmark` a dataset's `BenchmarkSpec` (folders, layout,
prompt template).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .records import ImageRecord, ImageRecords

__all__ = ["BENCHMARKS", "BenchmarkSpec", "get_benchmark", "list_benchmarks", "load_coop_split", "read_classnames"]

Layout = Literal["split_json", "fgvc_txt", "imagenet", "imagenetv2", "wnid_folders"]

DATASETS_MD = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"


@dataclass(frozen=True)
class BenchmarkSpec:
    """Where one benchmark lives under the data root and how to read it.

    Args:
        name (`str`): Canonical name (`"eurosat"`).
        dataset_dir (`str`): Folder under the data root (`"eurosat"`).
        image_dir (`str`): Image folder relative to `dataset_dir` (`""` for the dataset folder itself). For
            `imagenet` it is the parent of `train/` and `val/`.
        split_file (`str | None`): The `split_zhou_*.json` file in `dataset_dir` (`None` for the other layouts).
        template (`str`): The hand-crafted CoOp prompt template, with `{}` for the class name.
        layout (`Layout`): How splits are stored: `"split_json"` (`split_file`), `"fgvc_txt"` (`variants.txt` and
            `images_variant_<split>.txt`), `"imagenet"` (`<image_dir>/<train|val>/<wnid>/`), `"imagenetv2"`
            (`<image_dir>/<label index>/`) or `"wnid_folders"` (`<image_dir>/<wnid>/`).
        class_names_from (`Literal["split_file", "variants.txt", "classnames.txt"]`): Where class names come from:
            `"split_file"`, `"variants.txt"` or `"classnames.txt"` (lines `"<wnid> <name>"`, in the dataset folder or
            the sibling `imagenet/`).
        class_subset_from_folders (`bool`): For ImageNet-A/-R: the wnid folders present define a class subset,
            relabelled `0..n-1` in sorted wnid order.
        splits (`tuple[str, ...]`): The splits the dataset provides.
        aliases (`tuple[str, ...]`): Other accepted names (matched case-insensitively, ignoring `-`, `_` and spaces).
    """

    name: str
    dataset_dir: str
    image_dir: str
    split_file: str | None
    template: str
    layout: Layout = "split_json"
    class_names_from: Literal["split_file", "variants.txt", "classnames.txt"] = "split_file"
    class_subset_from_folders: bool = False
    splits: tuple[str, ...] = ("train", "val", "test")
    aliases: tuple[str, ...] = field(default=())

    @property
    def test_only(self) -> bool:
        """Whether the dataset is evaluation-only (the ImageNet variants)."""
        return self.splits == ("test",)


def _spec(name: str, dataset_dir: str, image_dir: str, split_name: str | None, template: str, **kw) -> BenchmarkSpec:
    split_file = f"split_zhou_{split_name}.json" if split_name else None
    return BenchmarkSpec(name, dataset_dir, image_dir, split_file, template, **kw)


_IMAGENET_VARIANT = dict(class_names_from="classnames.txt", splits=("test",))

BENCHMARKS: dict[str, BenchmarkSpec] = {
    s.name: s
    for s in (
        _spec("caltech101", "caltech-101", "101_ObjectCategories", "Caltech101", "a photo of a {}."),
        _spec(
            "oxford_pets", "oxford_pets", "images", "OxfordPets", "a photo of a {}, a type of pet.", aliases=("pets",)
        ),
        _spec("stanford_cars", "stanford_cars", "", "StanfordCars", "a photo of a {}.", aliases=("cars",)),
        _spec(
            "oxford_flowers",
            "oxford_flowers",
            "jpg",
            "OxfordFlowers",
            "a photo of a {}, a type of flower.",
            aliases=("flowers", "flowers102"),
        ),
        _spec("food101", "food-101", "images", "Food101", "a photo of {}, a type of food.", aliases=("food",)),
        _spec(
            "fgvc_aircraft",
            "fgvc_aircraft",
            "images",
            None,
            "a photo of a {}, a type of aircraft.",
            layout="fgvc_txt",
            class_names_from="variants.txt",
            aliases=("fgvcaircraft", "aircraft", "fgvc"),
        ),
        _spec("sun397", "sun397", "SUN397", "SUN397", "a photo of a {}."),
        _spec(
            "dtd",
            "dtd",
            "images",
            "DescribableTextures",
            "{} texture.",
            aliases=("describabletextures", "textures"),
        ),
        _spec("eurosat", "eurosat", "2750", "EuroSAT", "a centered satellite photo of {}."),
        _spec("ucf101", "ucf101", "UCF-101-midframes", "UCF101", "a photo of a person doing {}."),
        _spec(
            "imagenet",
            "imagenet",
            "images",
            None,
            "a photo of a {}.",
            layout="imagenet",
            class_names_from="classnames.txt",
            aliases=("imagenet1k", "ilsvrc2012"),
        ),
        _spec(
            "imagenetv2",
            "imagenetv2",
            "imagenetv2-matched-frequency-format-val",
            None,
            "a photo of a {}.",
            layout="imagenetv2",
            **_IMAGENET_VARIANT,
        ),
        _spec(
            "imagenet_sketch",
            "imagenet-sketch",
            "images",
            None,
            "a photo of a {}.",
            layout="wnid_folders",
            aliases=("sketch",),
            **_IMAGENET_VARIANT,
        ),
        _spec(
            "imagenet_a",
            "imagenet-adversarial",
            "imagenet-a",
            None,
            "a photo of a {}.",
            layout="wnid_folders",
            class_subset_from_folders=True,
            aliases=("imagenetadversarial",),
            **_IMAGENET_VARIANT,
        ),
        _spec(
            "imagenet_r",
            "imagenet-rendition",
            "imagenet-r",
            None,
            "a photo of a {}.",
            layout="wnid_folders",
            class_subset_from_folders=True,
            aliases=("imagenetrendition",),
            **_IMAGENET_VARIANT,
        ),
    )
}


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).lower()


_ALIASES: dict[str, str] = {}
for _s in BENCHMARKS.values():
    for _alias in (
        _s.name,
        _s.dataset_dir,
        _s.split_file[len("split_zhou_") : -len(".json")] if _s.split_file else "",
    ):
        if _alias:
            _ALIASES[_norm(_alias)] = _s.name
    for _alias in _s.aliases:
        _ALIASES[_norm(_alias)] = _s.name


def list_benchmarks() -> list[str]:
    """The canonical names of the supported benchmarks (11 datasets, ImageNet and its 4 variants)."""
    return list(BENCHMARKS)


def get_benchmark(name: str) -> BenchmarkSpec:
    """Look up a benchmark by name or alias (case-insensitive; `-`, `_` and spaces ignored).

    Args:
        name (`str`): e.g. `"eurosat"`, `"EuroSAT"`, `"OxfordPets"`, `"DescribableTextures"`, `"ImageNetV2"`,
            `"imagenet-r"`.
    """
    key = _ALIASES.get(_norm(name))
    if key is None:
        raise ValueError(f"Unknown benchmark {name!r}; choose one of {list_benchmarks()}")
    return BENCHMARKS[key]


def _missing(path: Path, what: str, spec: BenchmarkSpec) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} not found: expected {path} for dataset {spec.name!r}. Lay out the data root as in CoOp's "
        f"DATASETS.md ({DATASETS_MD}): {spec.name} lives in <data_root>/{spec.dataset_dir}/"
    )


def _list_dir(path: Path, dirs: bool) -> list[str]:
    """Sorted, non-hidden entries of `path` that are directories (`dirs`) or files."""
    with os.scandir(path) as it:
        names = [e.name for e in it if not e.name.startswith(".") and e.is_dir() == dirs]
    return sorted(names)


def read_classnames(path: str | os.PathLike) -> dict[str, str]:
    """Read CoOp's ImageNet `classnames.txt` (lines `"n01440764 tench"`) into an ordered `{wnid: name}`.

    Args:
        path (`str | os.PathLike`): The file.
    """
    out: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(maxsplit=1)
            if len(parts) != 2:
                raise ValueError(f"{path}:{lineno}: expected '<wnid> <class name>', got {line!r}")
            wnid, name = parts
            if wnid in out:
                raise ValueError(f"{path}:{lineno}: wnid {wnid!r} appears twice")
            out[wnid] = name
    if not out:
        raise ValueError(f"{path} is empty; it should list '<wnid> <class name>' lines (1000 for ImageNet)")
    return out


def _find_classnames(spec: BenchmarkSpec, dataset_dir: Path) -> dict[str, str]:
    candidates = [dataset_dir / "classnames.txt", dataset_dir.parent / "imagenet" / "classnames.txt"]
    for path in candidates:
        if path.is_file():
            return read_classnames(path)
    raise FileNotFoundError(
        f"classnames.txt not found for dataset {spec.name!r}: looked for {candidates[0]} and {candidates[1]}. Copy "
        f"CoOp's ImageNet classnames.txt there, as its DATASETS.md ({DATASETS_MD}) says"
    )


def _canonical_split(spec: BenchmarkSpec, split: str) -> str:
    s = {"validation": "val", "valid": "val", "eval": "test"}.get(split.lower(), split.lower())
    if s not in ("train", "val", "test"):
        raise ValueError(f"split={split!r} is invalid; use 'train', 'val' or 'test'")
    if s not in spec.splits:
        raise ValueError(
            f"Dataset {spec.name!r} has only a {'/'.join(spec.splits)} split (it is evaluation-only); "
            f"asked for split={split!r}"
        )
    return s


def _check_first_exists(records: list[ImageRecord], spec: BenchmarkSpec, image_dir: Path) -> None:
    if records and records[0].path is not None and not os.path.exists(records[0].path):
        raise _missing(Path(records[0].path), f"image (listed in the split, relative to {image_dir})", spec)


def _load_split_json(spec: BenchmarkSpec, dataset_dir: Path, image_dir: Path, split: str) -> ImageRecords:
    assert spec.split_file is not None
    split_path = dataset_dir / spec.split_file
    if not split_path.is_file():
        raise _missing(split_path, "split file", spec)
    with open(split_path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict) or split not in data:
        keys = list(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{split_path} has no {split!r} key (found {keys}); it should map train/val/test to lists")

    names: dict[int, str] = {}
    for part in ("train", "val", "test"):
        for i, item in enumerate(data.get(part, [])):
            if not (isinstance(item, (list, tuple)) and len(item) == 3):
                raise ValueError(f"{split_path}: {part}[{i}] = {item!r}; expected [relative_path, label, class_name]")
            _, label, cname = item
            if not isinstance(label, int) or label < 0:
                raise ValueError(f"{split_path}: {part}[{i}] has label {label!r}; labels must be ints >= 0")
            if names.setdefault(label, cname) != cname:
                raise ValueError(
                    f"{split_path}: label {label} is named both {names[label]!r} and {cname!r} ({part}[{i}])"
                )
    num_classes = max(names) + 1 if names else 0
    gaps = [label for label in range(num_classes) if label not in names]
    if gaps:
        raise ValueError(f"{split_path}: labels are not contiguous, no item has label(s) {gaps[:10]}")
    class_names = [names[label] for label in range(num_classes)]

    records = [
        ImageRecord(path=str(image_dir / rel), label=label, class_name=cname, key=rel.replace("\\", "/"))
        for rel, label, cname in data[split]
    ]
    _check_first_exists(records, spec, image_dir)
    return ImageRecords(records, class_names, name=f"{spec.name}/{split}")


def _load_fgvc(spec: BenchmarkSpec, dataset_dir: Path, image_dir: Path, split: str) -> ImageRecords:
    variants = dataset_dir / "variants.txt"
    if not variants.is_file():
        raise _missing(variants, "variants.txt (the aircraft class list)", spec)
    with open(variants, encoding="utf-8") as f:
        class_names = [line.strip() for line in f if line.strip()]
    label_of = {name: i for i, name in enumerate(class_names)}
    split_path = dataset_dir / f"images_variant_{split}.txt"
    if not split_path.is_file():
        raise _missing(split_path, "split list", spec)
    records = []
    with open(split_path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.strip().split(" ")
            if not parts[0]:
                continue
            if len(parts) < 2:
                raise ValueError(f"{split_path}:{lineno}: expected '<image_id> <variant>', got {line.strip()!r}")
            image_id, cname = parts[0], " ".join(parts[1:])
            if cname not in label_of:
                raise ValueError(f"{split_path}:{lineno}: variant {cname!r} is not listed in {variants}")
            rel = f"{image_id}.jpg"
            records.append(ImageRecord(path=str(image_dir / rel), label=label_of[cname], class_name=cname, key=rel))
    _check_first_exists(records, spec, image_dir)
    return ImageRecords(records, class_names, name=f"{spec.name}/{split}")


def _folder_records(folder: Path, rel_prefix: str, label: int, cname: str) -> list[ImageRecord]:
    return [
        ImageRecord(path=str(folder / fname), label=label, class_name=cname, key=f"{rel_prefix}/{fname}")
        for fname in _list_dir(folder, dirs=False)
    ]


def _load_wnid_folders(
    spec: BenchmarkSpec, dataset_dir: Path, image_dir: Path, split: str, classnames: dict[str, str]
) -> ImageRecords:
    folders = _list_dir(image_dir, dirs=True)
    unknown = [w for w in folders if w not in classnames]
    if unknown:
        raise ValueError(
            f"{image_dir} has folder(s) {unknown[:10]} that are not wnids listed in classnames.txt; "
            "remove them or use the classnames.txt of CoOp's ImageNet"
        )
    if not folders:
        raise ValueError(f"{image_dir} has no class folders; expected one folder per wnid (n01440764, ...)")
    if spec.class_subset_from_folders:
        wnids = folders  # sorted: labels 0..n-1 in wnid order
    else:
        wnids = list(classnames)
    class_names = [classnames[w] for w in wnids]
    label_of = {w: i for i, w in enumerate(wnids)}
    records: list[ImageRecord] = []
    for wnid in folders:
        records += _folder_records(image_dir / wnid, wnid, label_of[wnid], classnames[wnid])
    return ImageRecords(records, class_names, name=f"{spec.name}/{split}")


def _load_imagenetv2(spec: BenchmarkSpec, image_dir: Path, classnames: dict[str, str]) -> ImageRecords:
    class_names = list(classnames.values())
    folders = _list_dir(image_dir, dirs=True)
    bad = [f for f in folders if not f.isdigit() or int(f) >= len(class_names)]
    if bad:
        raise ValueError(
            f"{image_dir} has folder(s) {bad[:10]} that are not label indices 0..{len(class_names) - 1}; "
            "expected the imagenetv2-matched-frequency-format-val layout"
        )
    records: list[ImageRecord] = []
    for folder in sorted(folders, key=int):
        label = int(folder)
        records += _folder_records(image_dir / folder, folder, label, class_names[label])
    return ImageRecords(records, class_names, name=f"{spec.name}/test")


def load_coop_split(name: str, data_root: str | os.PathLike, split: str) -> ImageRecords:
    """Load one split of a CoOp benchmark as `ImageRecords`.

    The result's `class_names` (ordered by label) cover the dataset's whole label space. Each record has an
    absolute `path`, its `label`, its raw `class_name` and a `key` (the path relative to the image folder,
    which `ImageRecords.few_shot` uses so that sampling does not depend on where the data lives).

    Conventions follow CoOp: ImageNet's `val` is its test set (`images/val`); ImageNet labels follow the order of
    `classnames.txt` (sorted by wnid, as CoOp's folder order); the ImageNet variants only have `test`;
    ImageNet-A/-R keep the 200 classes whose folders are present, relabelled `0..199` in sorted wnid order.

    Args:
        name (`str`): Benchmark name or alias (see `get_benchmark`).
        data_root (`str | os.PathLike`): The folder holding the per-dataset folders (CoOp's `$DATA`).
        split (`str`): `"train"`, `"val"` or `"test"`.

    Raises:
        FileNotFoundError: a file or folder of the expected layout is missing (the message names the path).
        ValueError: the split does not exist for this dataset, or a file is malformed.
    """
    spec = get_benchmark(name)
    split = _canonical_split(spec, split)
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"Data root {root} does not exist; pass the folder that holds the dataset folders (CoOp's $DATA, "
            f"see {DATASETS_MD})"
        )
    dataset_dir = root / spec.dataset_dir
    if not dataset_dir.is_dir():
        raise _missing(dataset_dir, "dataset folder", spec)
    image_dir = dataset_dir / spec.image_dir if spec.image_dir else dataset_dir

    if spec.layout == "split_json":
        return _load_split_json(spec, dataset_dir, image_dir, split)
    if spec.layout == "fgvc_txt":
        if not image_dir.is_dir():
            raise _missing(image_dir, "image folder", spec)
        return _load_fgvc(spec, dataset_dir, image_dir, split)

    classnames = _find_classnames(spec, dataset_dir)
    if spec.layout == "imagenet":
        folder = image_dir / ("train" if split == "train" else "val")
        if not folder.is_dir():
            raise _missing(folder, f"ImageNet {split} image folder", spec)
        return _load_wnid_folders(spec, dataset_dir, folder, split, classnames)
    if not image_dir.is_dir():
        raise _missing(image_dir, "image folder", spec)
    if spec.layout == "imagenetv2":
        return _load_imagenetv2(spec, image_dir, classnames)
    return _load_wnid_folders(spec, dataset_dir, image_dir, split, classnames)
