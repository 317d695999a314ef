"""A tiny, learnable, offline image-classification dataset written as an ``imagefolder`` layout."""

from __future__ import annotations

import colorsys
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["make_synthetic_imagefolder"]


def _class_image(k: int, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``size x size`` RGB image of class ``k`` of ``n``: a class colour, a class pattern, and noise."""
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
    image_size: int = 32,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write ``root/train/<class>/*.png`` and ``root/test/<class>/*.png`` with class-dependent images.

    Each class has its own colour (evenly spaced hues), stripe period and stripe orientation; every image gets a
    random pattern phase, brightness jitter and Gaussian noise, so the classes are easy but not trivial to separate.
    Deterministic for a given ``seed``. Load it with
    ``load_image_classification("imagefolder", data_dir=root)``; note that ``imagefolder`` orders the classes
    alphabetically by folder name.

    Args:
        root: Output folder (created if needed). Must not already hold ``train/`` or ``test/`` unless ``overwrite``.
        class_names: Class (folder) names, at least two, unique, without path separators.
        train_per_class: Training images per class (>= 1).
        test_per_class: Test images per class (>= 0; 0 writes no test split).
        image_size: Side of the square images in pixels.
        seed: Seed of the ``numpy`` generator.
        overwrite: Delete existing ``root/train`` and ``root/test`` first.

    Returns:
        ``root`` as a ``Path``.
    """
    names = list(class_names)
    if len(names) < 2:
        raise ValueError(f"class_names={names} has fewer than two classes; classification needs at least two")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names={names} has duplicates; class names must be unique")
    for name in names:
        if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(
                f"class name {name!r} cannot be a folder name; use a non-empty name without '/' or '\\\\'"
            )
    if train_per_class < 1 or test_per_class < 0:
        raise ValueError(
            f"train_per_class={train_per_class}, test_per_class={test_per_class}: need >= 1 training and >= 0 test "
            "images per class"
        )
    if image_size < 8:
        raise ValueError(f"image_size={image_size} is too small for the class patterns; use >= 8")

    root = Path(root)
    for split in ("train", "test"):
        if (root / split).exists():
            if not overwrite:
                raise FileExistsError(f"{root / split} already exists; pass overwrite=True or use an empty folder")
            shutil.rmtree(root / split)

    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for k, name in enumerate(names):
            if count == 0:
                continue
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                array = _class_image(k, len(names), image_size, rng)
                Image.fromarray(array).save(folder / f"{split}_{k:03d}_{i:04d}.png")
    return root
