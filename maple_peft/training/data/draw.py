"""The training images of a run: the few-shot draw (the original code's on CoOp-layout data), then the class subset,
written down in `train_images.json` (docs/formats.md#the-few-shot-draw-and-train_imagesjson).
"""

from __future__ import annotations

import os
import random
import warnings
from dataclasses import dataclass
from typing import Any, Literal

from .records import ImageRecords
from .sampling import sample_few_shot_dassl

__all__ = ["DRAWS", "TRAIN_IMAGES_FILE", "TrainingDraw", "draw_training_images"]

TRAIN_IMAGES_FILE = "train_images.json"
"""The file of a run folder that lists its training images."""

DRAWS = {
    "dassl": (
        "the original code's draw (Dassl's generate_fewshot_dataset after random.seed(seed)): the split file's items "
        "grouped by label in order of first appearance, random.sample(items, num_shots) per label, then the "
        "validation pool with min(num_shots, 4), then the base/novel class subset; the same images as the "
        "original's split_fewshot/shot_<num_shots>-seed_<seed>.pkl"
    ),
    "sorted": (
        "the items of each class sorted by path (or row), classes in label order, random.Random(seed).sample per "
        "class, then the base/novel class subset: independent of the order the source lists them in"
    ),
}
"""The few-shot draws, by name, with what each does (written in `train_images.json`)."""


@dataclass
class TrainingDraw:
    """The training images of a run and how they were drawn.

    Args:
        train (`ImageRecords`): The training images, in draw order, labelled in the trained label space.
        val (`ImageRecords | None`): The validation images drawn after them (the `dassl` draw of a dataset with a
            validation pool), else `None`.
        draw (`str`): The draw's name, a key of `DRAWS`.
        seed (`int`): The seed.
        num_shots (`int`): Shots per class asked for.
        subset (`str`): The class subset trained on (`"all"`, `"base"` or `"novel"`).
    """

    train: ImageRecords
    val: ImageRecords | None
    draw: str
    seed: int
    num_shots: int
    subset: str

    def to_json(self, **info: Any) -> dict[str, Any]:
        """What `train_images.json` holds: the draw, its parameters, `info` (e.g. the dataset) and the images.

        Args:
            **info (`Any`): More JSON-able fields to record (dataset, data source).
        """

        def images(records: ImageRecords) -> list[dict[str, Any]]:
            return [{"path": r.sort_key, "label": r.label, "class_name": r.class_name} for r in records]

        out: dict[str, Any] = {
            "draw": self.draw,
            "draw_rule": DRAWS[self.draw],
            "seed": self.seed,
            "num_shots": self.num_shots,
            "subset": self.subset,
            **info,
            "class_names": list(self.train.class_names),
            "images": images(self.train),
        }
        if self.val is not None:
            out["val_images"] = images(self.val)
        return out

    def write(self, output_dir: str | os.PathLike, **info: Any) -> None:
        """Writes `train_images.json` into the run folder (atomically).

        Args:
            output_dir (`str | os.PathLike`): The run folder.
            **info (`Any`): More JSON-able fields to record (see `to_json`).
        """
        from ..run_dir import apply_umask, atomic_write_json

        path = os.path.join(output_dir, TRAIN_IMAGES_FILE)
        atomic_write_json(path, self.to_json(**info))
        apply_umask(path)


def draw_training_images(
    train: ImageRecords,
    num_shots: int,
    seed: int,
    *,
    subset: Literal["all", "base", "novel"] = "all",
    draw: Literal["dassl", "sorted"] = "dassl",
    val: ImageRecords | None = None,
) -> TrainingDraw:
    """Draws a run's training images: `num_shots` per class over all classes, then the class subset.

    Args:
        train (`ImageRecords`): The training pool, in its source's order (the split file's, for `dassl`).
        num_shots (`int`): Shots per class (a class with fewer images keeps them all, with a warning).
        seed (`int`): The run's seed.
        subset (`Literal["all", "base", "novel"]`): The class subset trained on, taken after the draw.
        draw (`Literal["dassl", "sorted"]`): `"dassl"`, the original code's draw (data in a fixed order: CoOp
            layouts), or `"sorted"` (sources without a fixed order).
        val (`ImageRecords | None`): `dassl` only: the validation pool, drawn after the training pool with
            `min(num_shots, 4)` shots (`None`: no validation pool, as ImageNet).

    Returns:
        `TrainingDraw`: The images, in draw order.

    Example:
        ```python
        >>> draw = draw_training_images(load_coop_split("eurosat", root, "train"), 16, seed=1, subset="base")
        >>> draw.train[0].key
        'Forest/Forest_1234.jpg'
        ```
    """
    if draw not in DRAWS:
        raise ValueError(f"draw={draw!r} is not one of {list(DRAWS)}")
    drawn_val = None
    if draw == "dassl":
        rng = random.Random(seed)  # the stream of Dassl's random.seed(seed), consumed by nothing else first
        drawn = train.select(sample_few_shot_dassl(train.labels, num_shots, rng, train.class_names))
        if val is not None:  # not trained on: no warning about its classes with fewer images
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                drawn_val = val.select(sample_few_shot_dassl(val.labels, min(num_shots, 4), rng))
            drawn_val = drawn_val.class_subset(subset)
    else:
        drawn = train.few_shot(num_shots, seed=seed)
    return TrainingDraw(drawn.class_subset(subset), drawn_val, draw, seed, num_shots, subset)
