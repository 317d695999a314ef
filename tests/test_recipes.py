"""Every recipe in examples/configs holds the values of the original configuration it names, dataset by dataset.

The original code's values are in `tests/originals/`, one module per method (see its docstring): a recipe that drifts
from its source, or a recipe without a source there, fails.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

import originals
import pytest
from conftest import tiny_clip_config
from originals import DATASETS
from originals.mmrl import MMRL_PER_DATASET
from transformers import CLIPModel

import maple_peft

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "examples" / "configs"
sys.path.insert(0, str(REPO / "examples"))
from options import parse_args  # noqa: E402

HUB_EUROSAT = "timm/eurosat-rgb"  # the registry's Hub copy of EuroSAT: the same per-dataset values
# method name -> its recipes' originals (tests/originals/<method>.py)
BY_METHOD: dict[str, dict[str, originals.Original]] = {
    module.name: importlib.import_module(f"originals.{module.name}").ORIGINALS
    for module in pkgutil.iter_modules(originals.__path__)
}
ORIGINALS = {recipe: original for table in BY_METHOD.values() for recipe, original in table.items()}
NOT_A_PAPERS_RECIPE = {"smoke.yaml"}  # the offline smoke run on a tiny random CLIP


def _resolved(recipe: str, *data: str) -> dict:
    """The options a run of the recipe trains with, with the prompt shape the adapter gets (e.g. CoCoOp's n_ctx from
    its prompt_init, MMRL's default rep_layers on ViT-B/16's 12 layers)."""
    options = vars(parse_args(["--config", str(CONFIGS / recipe), *data]))
    method = maple_peft.methods.get(options["variant"])
    if hasattr(method, "rep_layers"):  # representation tokens (MMRL, MMRL++): the options the method declares
        names = [field.name for field in maple_peft.methods.fields_of(method.options)]
        given = {n: options[n] for n in names if options[n] is not None}
        config = maple_peft.MaPLeConfig(variant=method.name, **given)
        config.rep_layers = method.rep_layers(_VIT_B16_DEPTH, config)
        options.update({name: getattr(config, name) for name in names})
    else:
        names = ("variant", "n_ctx", "n_ctx_vision", "depth", "prompt_init")
        config = maple_peft.MaPLeConfig(**{name: options[name] for name in names})
        options.update(n_ctx=config.n_ctx, n_ctx_vision=config.num_vision_tokens, depth=config.depth)
        if config.variant == "vision":
            options.pop("n_ctx")  # VPT learns no text tokens
    return options


_VIT_B16_DEPTH = CLIPModel(
    tiny_clip_config(text_layers=12, vision_layers=12)
)  # ViT-B/16's 12 + 12 layers, at a tiny width


def test_each_methods_recipes_have_their_originals_in_that_methods_module():
    declared = {
        method.name: {f"{recipe}.yaml" for recipe in method.recipes}
        for method in maple_peft.methods.registry().values()
        if method.recipes
    }
    assert {name: set(table) for name, table in BY_METHOD.items()} == declared


def test_every_recipe_names_an_original_here_and_in_its_header():
    shipped = {path.name for path in CONFIGS.glob("*.yaml")}
    assert sum(map(len, BY_METHOD.values())) == len(ORIGINALS)  # no recipe in two methods' modules
    assert shipped - NOT_A_PAPERS_RECIPE == set(ORIGINALS)
    for recipe, (_, files, _, _, _) in ORIGINALS.items():
        header = (CONFIGS / recipe).read_text(encoding="utf-8")
        assert all(Path(name).name in header for name in files), (recipe, files)


@pytest.mark.parametrize("recipe", sorted(ORIGINALS))
def test_recipe_holds_the_values_of_its_original_config_on_every_dataset(recipe):
    _, _, precision, values, per_dataset = ORIGINALS[recipe]
    runs = {values["dataset"]: []} if "dataset" in values else {name: ["--dataset", name] for name in DATASETS}
    if "eurosat" in runs:
        runs[HUB_EUROSAT] = ["--dataset_name", HUB_EUROSAT]
    for dataset, data in runs.items():
        expected = {**values, **per_dataset.get("eurosat" if dataset == HUB_EUROSAT else dataset, {})}
        options = _resolved(recipe, *data)
        drift = {name: (options.get(name), value) for name, value in expected.items() if options.get(name) != value}
        assert not drift, f"{recipe} on {dataset}: option -> (the recipe's, the original's): {drift}"
        # The originals compute in half precision (PREC fp16: CLIP's weights in fp16; amp: autocast): the recipes
        # compute in float32, as the equal-logits tests of every method do; --mixed_precision fp16 is the nearest.
        assert precision in ("fp16", "amp") and options["mixed_precision"] == "no"


@pytest.mark.parametrize("given,dataset", [("EuroSAT", "eurosat"), ("cars", "stanford_cars"), ("Textures", "dtd")])
def test_a_dataset_named_by_an_alias_gets_the_recipes_values_for_it(given, dataset):
    expected = MMRL_PER_DATASET[dataset]  # e.g. EuroSAT: rep_dim 2048, reg_weight 0.01 (not MMRL's 512 and 1.0)
    options = vars(parse_args(["--config", str(CONFIGS / "mmrl_base2novel.yaml"), "--dataset", given]))
    assert {name: options[name] for name in expected} == expected
