"""A tiny, learnable, offline image-classification dataset written as an `imagefolder` layout."""

from __future__ import annotations

import colorsys
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["SMOKE_MODEL_MARKER", "make_synthetic_imagefolder", "smoke_assets"]

MARKER = ".maple_peft_synthetic.json"
"""The hidden file that lists the images `make_synthetic_imagefolder` wrote (its only claim on a folder)."""
SMOKE_MODEL_MARKER = ".maple_peft_smoke_asset"
"""The file `examples/make_smoke_assets.py` writes into each tiny random model folder it builds (its claim on it)."""


def smoke_assets(model_name_or_path: str | os.PathLike | None, data_dir: str | os.PathLike | None) -> list[str]:
    """Which inputs of a run are the offline smoke run's stand-ins, told by the markers their writers leave.

    Args:
        model_name_or_path (`str | os.PathLike | None`): The base model: a local folder holding `SMOKE_MODEL_MARKER`
            is a tiny random model built by `examples/make_smoke_assets.py`.
        data_dir (`str | os.PathLike | None`): The image folder: one holding `MARKER` holds generated images.

    Returns:
        `list[str]`: `"base_model"` and / or `"data"`, empty for a real run. Results of a run with either measure
        nothing.
    """
    found = []
    if model_name_or_path is not None and (Path(model_name_or_path) / SMOKE_MODEL_MARKER).is_file():
        found.append("base_model")
    if data_dir is not None and (Path(data_dir) / MARKER).is_file():
        found.append("data")
    return found


def _class_image(k: int, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One `size x size` RGB image of class `k` of `n`: a class colour, a class pattern, and noise."""
    hue = k / max(n, 1)
    base = np.array(colorsys.hsv_to_rgb(hue, 0.75, 0.85), dtype=np.float64)
    other = np.array(colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.6, 0.35), dtype=np.float64)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    period = 4 + 2 * (k % 3)
    phase = rng.uniform(0, period)
    orientation = (k // 3) % 4
    coord = (yy, xx, xx + yy, xx - yy)[orientation] if orientation < 3 else None
    if coord is None:  # checkerboard
        pattern = ((np.floor((xx + phase) / period) + np.floor((yy + phase) / period)) % 2).astype(np.float64)
    else:
        pattern = (np.sin(2 * np.pi * (coord + phase) / period) > 0).astype(np.float64)
    weight = 0.35 * pattern[..., None]
    image = (1 - weight) * base + weight * other
    image = image * rng.uniform(0.85, 1.15) + rng.normal(0.0, 0.06, size=image.shape)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def make_synthetic_imagefolder(
    root: str | os.PathLike,
    class_names: Sequence[str],
    train_per_class: int,
    test_per_class: int,
    *,
    image_size: int = 32,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write `root/train/<class>/*.png` and `root/test/<class>/*.png` with class-dependent images.

    Each class has its own colour (evenly spaced hues), stripe period and stripe orientation; every image gets a
    random pattern phase, brightness jitter and Gaussian noise, so the classes are easy but not trivial to separate.
    Deterministic for a given `seed`. Load it with
    `load_image_classification("imagefolder", data_dir=root)`; note that `imagefolder` orders the classes
    alphabetically by folder name.

    The images written are listed in `root/.maple_peft_synthetic.json` (a hidden file, which `imagefolder`
    ignores); `overwrite=True` deletes only those files, and refuses a folder that holds anything else.

    Args:
        root (`str | os.PathLike`): Output folder (created if needed). Must not already hold `train/` or `test/`
            unless `overwrite`.
        class_names (`Sequence[str]`): Class (folder) names, at least two, unique, without path separators.
        train_per_class (`int`): Training images per class (>= 1).
        test_per_class (`int`): Test images per class (>= 0; 0 writes no test split).
        image_size (`int`): Side of the square images in pixels.
        seed (`int`): Seed of the `numpy` generator.
        overwrite (`bool`): Replace the images an earlier call wrote into `root` (and only them).

    Returns:
        `Path`: `root`.

    Raises:
        FileExistsError: `root` holds `train/` or `test/` and `overwrite` is false, or they hold files this
            function did not write (a user's files are never deleted).
    """
    names = list(class_names)
    if len(names) < 2:
        raise ValueError(f"class_names={names} has fewer than two classes; classification needs at least two")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names={names} has duplicates; class names must be unique")
    for name in names:
        if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(
                f"Class name {name!r} cannot be a folder name; use a non-empty name without '/' or '\\\\'"
            )
    if train_per_class < 1 or test_per_class < 0:
        raise ValueError(
            f"train_per_class={train_per_class}, test_per_class={test_per_class}: need >= 1 training and >= 0 test "
            "images per class"
        )
    if image_size < 8:
        raise ValueError(f"image_size={image_size} is too small for the class patterns; use >= 8")

    root = Path(root)
    existing = [root / split for split in ("train", "test") if (root / split).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} already exists; pass overwrite=True or use an empty folder.")
    if existing:
        _remove_previous_images(root, existing)

    rng = np.random.default_rng(seed)
    written: list[str] = []
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for k, name in enumerate(names):
            if count == 0:
                continue
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                array = _class_image(k, len(names), image_size, rng)
                path = folder / f"{split}_{k:03d}_{i:04d}.png"
                Image.fromarray(array).save(path)
                written.append(path.relative_to(root).as_posix())
    (root / MARKER).write_text(json.dumps({"files": written}, indent=0) + "\n", encoding="utf-8")
    return root


def _remove_previous_images(root: Path, splits: list[Path]) -> None:
    """Deletes the images an earlier call wrote into `root`, refusing if the split folders hold anything else."""
    marker = root / MARKER
    if not marker.is_file():
        raise FileExistsError(
            f"{splits[0]} exists but was not written by make_synthetic_imagefolder (no {MARKER} in {root}); its files "
            "are left alone: pass an empty or new folder."
        )
    try:
        written = set(json.loads(marker.read_text(encoding="utf-8"))["files"])
    except (ValueError, KeyError, TypeError) as error:
        raise FileExistsError(f"{marker} is unreadable ({error}); pass an empty or new folder.") from error
    present = {path.relative_to(root).as_posix() for split in splits for path in split.rglob("*") if not path.is_dir()}
    foreign = sorted(present - written)
    if foreign:
        raise FileExistsError(
            f"{root} holds {len(foreign)} file(s) that make_synthetic_imagefolder did not write (e.g. {foreign[:3]}); "
            "they are left alone: move them away or pass an empty or new folder."
        )
    for relative in present:
        (root / relative).unlink()
    for split in splits:  # the now-empty class folders, deepest first
        for folder in sorted((p for p in split.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            folder.rmdir()
        split.rmdir()
    marker.unlink()
