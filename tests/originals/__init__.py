"""The original code's values for each method's recipes, one module per method (named as the method is registered:
`maple.py`, `mmrlpp.py`), read by `tests/test_recipes.py`.

A module defines `ORIGINALS`: recipe file name -> `Original`, written from the original repositories' files (each
named beside its values, and in the recipe's own header), in this project's option names. It holds exactly the recipes
its method declares (`Method.recipes`); a recipe without an entry, or an entry in another method's module, fails.
Dassl's defaults fill what a config leaves out (SGD momentum 0.9, weight decay 5e-4, random resized crops of 8-100% of
the image); every paper's scripts train on 16 shots from "a photo of a".
"""

from __future__ import annotations

from typing import NamedTuple

DATASETS = (
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft", "sun397",
    "dtd", "eurosat", "ucf101",
)  # fmt: skip
TARGETS = list(DATASETS[1:])

COMMON = {  # Dassl's defaults, and the 16 shots and ctx_init of every paper's scripts
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "crop_scale": [0.08, 1.0],
    "num_shots": 16,
    "prompt_init": "a photo of a",
}
SGD_5_EPOCHS = {**COMMON, "optimizer": "sgd", "epochs": 5, "warmup_epochs": 1, "warmup_lr": 1e-5, "batch_size": 4}
NO_SRC = {"text_weight": None, "image_weight": None, "logits_weight": None, "gpa_mean": None, "gpa_std": None}
XD = {"dataset": "imagenet", "setting": "cross_dataset", "eval_datasets": TARGETS}
# CoOp's code base (CoOp, CoCoOp, KgCoOp): a depth-1 context of 4 tokens, SGD lr 0.002, one constant warm-up epoch
COOP = {**COMMON, "n_ctx": 4, "depth": 1, "optimizer": "sgd", "lr": 0.002, "warmup_epochs": 1, "warmup_lr": 1e-5}


class Original(NamedTuple):
    """What a recipe reproduces: the original repository, its files (their names appear in the recipe's header), the
    original's precision (`"fp16"`: CLIP's weights in half precision; `"amp"`: autocast), the values of a run of the
    recipe (options as `examples/options.py` parses them) and, per dataset, the values that replace them."""

    repository: str
    files: list[str]
    precision: str
    values: dict
    per_dataset: dict[str, dict]
