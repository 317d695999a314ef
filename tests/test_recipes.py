"""Every recipe in examples/configs holds the values of the original configuration it names, dataset by dataset.

ORIGINALS below is written from the original repositories' files (each named in a comment beside its values, and in
the recipe's own header), in this project's option names: a recipe that drifts from its source, or a new recipe
without a source here, fails. Dassl's defaults fill what a config leaves out (SGD momentum 0.9, weight decay 5e-4,
random resized crops of 8-100% of the image); every paper's scripts train on 16 shots from "a photo of a".
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import tiny_clip_config
from transformers import CLIPModel

import maple_peft

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "examples" / "configs"
sys.path.insert(0, str(REPO / "examples"))
from options import parse_args  # noqa: E402

DATASETS = (
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft", "sun397",
    "dtd", "eurosat", "ucf101",
)  # fmt: skip
TARGETS = list(DATASETS[1:])
HUB_EUROSAT = "timm/eurosat-rgb"  # the registry's Hub copy of EuroSAT: the same per-dataset values

COMMON = {  # Dassl's defaults, and the 16 shots and ctx_init of every paper's scripts
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "crop_scale": [0.08, 1.0],
    "num_shots": 16,
    "prompt_init": "a photo of a",
}
SGD_5_EPOCHS = {**COMMON, "optimizer": "sgd", "epochs": 5, "warmup_epochs": 1, "warmup_lr": 1e-5, "batch_size": 4}
NO_SRC = {"text_weight": None, "image_weight": None, "logits_weight": None, "gpa_mean": None, "gpa_std": None}
PROMPTSRC = {  # PromptSRC's TEXT_LOSS_WEIGHT 25, IMAGE_LOSS_WEIGHT 10; the KL term's weight is 1 in trainers/promptsrc.py
    **COMMON, "variant": "ivlp", "n_ctx": 4, "n_ctx_vision": 4, "optimizer": "sgd", "lr": 0.0025, "warmup_epochs": 1,
    "warmup_lr": 1e-5, "batch_size": 4, "objective": "src", "text_weight": 25.0, "image_weight": 10.0,
    "logits_weight": 1.0,
}  # fmt: skip
MMRL = {  # N_REP_TOKENS 5, REP_DIM 512, REP_LAYERS 6..12, ALPHA 0.7, AdamW lr 0.001, RRCROP_SCALE (0.5, 1)
    **COMMON, "variant": "mmrl", "objective": "mmrl", "n_rep": 5, "rep_dim": 512, "rep_layers": list(range(6, 13)),
    "alpha": 0.7, "optimizer": "adamw", "lr": 0.001, "warmup_lr": 1e-5, "crop_scale": [0.5, 1.0],
}  # fmt: skip
# yunncheng/MMRL trainers/config.py: get_dataset_specified_config, merged after the config file for every TASK
MMRL_PER_DATASET = {
    "stanford_cars": {"reg_weight": 7.0}, "fgvc_aircraft": {"reg_weight": 6.0}, "sun397": {"reg_weight": 6.0},
    "dtd": {"reg_weight": 6.0}, "food101": {"reg_weight": 5.0}, "oxford_flowers": {"reg_weight": 4.0},
    "ucf101": {"reg_weight": 3.0}, "imagenet": {"reg_weight": 0.5}, "caltech101": {"reg_weight": 0.5},
    "oxford_pets": {"reg_weight": 0.2}, "eurosat": {"reg_weight": 0.01, "rep_dim": 2048},
}  # fmt: skip
# yunncheng/MMRL configs/trainers/MMRL/vit_b16_imagenet.yaml: what scripts/mmrl/*.sh run on ImageNet
MMRL_IMAGENET = {"epochs": 5, "warmup_epochs": 1, "batch_size": 32}
XD = {"dataset": "imagenet", "setting": "cross_dataset", "eval_datasets": TARGETS}
# yunncheng/MMRL configs/trainers/MMRLpp/*.yaml: MMRL's values, BETA 0.9, PROJ_LORA_DIM 64, RES_LORA_DIM 4
MMRLPP = {**MMRL, "variant": "mmrlpp", "beta": 0.9, "proj_lora_dim": 64, "res_lora_dim": 4}
# yunncheng/MMRL trainers/config.py: get_dataset_specified_config for MMRLpp, TASK B2N and FS
MMRLPP_PER_DATASET = {
    "imagenet": {"beta": 0.9, "reg_weight": 0.2}, "fgvc_aircraft": {"beta": 0.9, "reg_weight": 2.0},
    "ucf101": {"beta": 0.9, "reg_weight": 3.0}, "dtd": {"beta": 0.9, "reg_weight": 7.0},
    "oxford_pets": {"beta": 0.7, "reg_weight": 0.01}, "stanford_cars": {"beta": 0.7, "reg_weight": 6.0},
    "caltech101": {"beta": 0.6, "reg_weight": 3.0}, "sun397": {"beta": 0.5, "reg_weight": 3.0},
    "oxford_flowers": {"beta": 0.4, "reg_weight": 7.0}, "eurosat": {"beta": 0.2, "reg_weight": 0.01},
    "food101": {"beta": 0.1, "reg_weight": 1.0},
}  # fmt: skip

# recipe -> (repository, the original files, the original's precision, values, per-dataset values)
ORIGINALS: dict[str, tuple[str, list[str], str, dict, dict[str, dict]]] = {
    "maple_base2novel.yaml": (
        "muzairkhattak/multimodal-prompt-learning",
        ["configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml"],
        "fp16",
        {**SGD_5_EPOCHS, **NO_SRC, "variant": "maple", "n_ctx": 2, "depth": 9, "lr": 0.0035, "setting": "base2novel"},
        {},
    ),
    "maple_cross_dataset.yaml": (
        "muzairkhattak/multimodal-prompt-learning",
        ["configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml"],
        "fp16",
        {**SGD_5_EPOCHS, **NO_SRC, **XD, "variant": "maple", "n_ctx": 2, "depth": 3, "lr": 0.0026, "epochs": 2},
        {},
    ),
    "ivlp_base2novel.yaml": (
        "muzairkhattak/multimodal-prompt-learning",
        ["configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml"],
        "fp16",
        {
            **SGD_5_EPOCHS,
            **NO_SRC,
            "variant": "ivlp",
            "n_ctx": 2,
            "n_ctx_vision": 2,
            "depth": 12,
            "lr": 0.0035,
            "setting": "base2novel",
        },  # fmt: skip
        {},
    ),
    "language_base2novel.yaml": (
        "muzairkhattak/multimodal-prompt-learning",
        ["configs/trainers/IVLP/vit_b16_c2_ep5_batch4_4ctx_language_only.yaml"],
        "fp16",
        {
            **SGD_5_EPOCHS,
            **NO_SRC,
            "variant": "language",
            "n_ctx": 4,
            "n_ctx_vision": 0,
            "depth": 12,
            "lr": 0.0025,
            "setting": "base2novel",
        },  # fmt: skip
        {},
    ),
    "vpt_base2novel.yaml": (
        "muzairkhattak/multimodal-prompt-learning",
        ["configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml"],
        "fp16",
        {
            **SGD_5_EPOCHS,
            **NO_SRC,
            "variant": "vision",
            "n_ctx_vision": 8,
            "depth": 12,
            "lr": 0.0025,
            "setting": "base2novel",
        },  # fmt: skip
        {},
    ),
    "maple_src_base2novel.yaml": (  # MaPLe's recipe with PromptSRC's loss weights; its GPA is this project's
        "muzairkhattak/multimodal-prompt-learning",
        ["configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml"],
        "fp16",
        {
            **SGD_5_EPOCHS,
            "variant": "maple",
            "n_ctx": 2,
            "depth": 9,
            "lr": 0.0035,
            "setting": "base2novel",
            "objective": "src",
            "text_weight": 25.0,
            "image_weight": 10.0,
            "logits_weight": 1.0,
            "gpa_mean": 4.0,
            "gpa_std": 1.0,
        },  # fmt: skip
        {},
    ),
    "promptsrc_base2novel.yaml": (
        "muzairkhattak/PromptSRC",
        ["configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml"],
        "fp16",
        {**PROMPTSRC, "depth": 9, "epochs": 20, "gpa_mean": 15.0, "gpa_std": 1.0, "setting": "base2novel"},
        {},
    ),
    "promptsrc_cross_dataset.yaml": (
        "muzairkhattak/PromptSRC",
        ["configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets.yaml"],
        "fp16",
        {**PROMPTSRC, **XD, "depth": 3, "epochs": 20, "gpa_mean": 6.0, "gpa_std": 10.0},
        {},
    ),
    "promptsrc_few_shot.yaml": (
        "muzairkhattak/PromptSRC",
        ["configs/trainers/PromptSRC/vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml", "scripts/promptsrc/few_shot.sh"],
        "fp16",
        {**PROMPTSRC, "depth": 9, "epochs": 50, "gpa_mean": 30.0, "gpa_std": 30.0, "setting": "all"},
        {  # the config's comment: GPA_MEAN 45, GPA_STD 5 for StanfordCars, Flowers102, FGVCAircraft, DTD and EuroSAT
            name: {"gpa_mean": 45.0, "gpa_std": 5.0}
            for name in ("stanford_cars", "oxford_flowers", "fgvc_aircraft", "dtd", "eurosat")
        },
    ),
    "cocoop_base2novel.yaml": (
        "KaiyangZhou/CoOp",
        ["configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml", "scripts/cocoop/base2new_train.sh"],
        "fp16",
        {
            **COMMON,
            **NO_SRC,
            "variant": "cocoop",
            "n_ctx": 4,
            "depth": 1,
            "optimizer": "sgd",
            "lr": 0.002,
            "epochs": 10,
            "warmup_epochs": 1,
            "warmup_lr": 1e-5,
            "batch_size": 1,
            "setting": "base2novel",
        },  # fmt: skip
        {},
    ),
    "cocoop_cross_dataset.yaml": (
        "KaiyangZhou/CoOp",
        ["configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml", "scripts/cocoop/xd_train.sh"],
        "fp16",
        {
            **COMMON,
            **NO_SRC,
            **XD,
            "variant": "cocoop",
            "n_ctx": 4,
            "depth": 1,
            "optimizer": "sgd",
            "lr": 0.002,
            "epochs": 10,
            "warmup_epochs": 1,
            "warmup_lr": 1e-5,
            "batch_size": 1,
        },  # fmt: skip
        {},
    ),
    "coop_base2novel.yaml": (  # scripts/cocoop/base2new_train.sh with TRAINER=CoOp (the CoCoOp paper's CoOp)
        "KaiyangZhou/CoOp",
        ["configs/trainers/CoOp/vit_b16_ctxv1.yaml", "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml"],
        "fp16",
        {
            **COMMON,
            **NO_SRC,
            "variant": "language",
            "n_ctx": 4,
            "depth": 1,
            "optimizer": "sgd",
            "lr": 0.002,
            "epochs": 200,
            "warmup_epochs": 1,
            "warmup_lr": 1e-5,
            "batch_size": 32,
            "setting": "base2novel",
            "objective": "ce",
        },  # fmt: skip
        {"imagenet": {"epochs": 50}},  # vit_b16_ep50_ctxv1.yaml
    ),
    "kgcoop_base2novel.yaml": (  # scripts/base2new_train.sh: N_CTX 4; scripts/run.sh: W 8.0
        "htyao89/KgCoOp",
        ["KgCoOp/configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml"],
        "fp16",
        {
            **COMMON,
            "variant": "language",
            "n_ctx": 4,
            "depth": 1,
            "objective": "kgcoop",
            "kg_weight": 8.0,
            "kg_template": None,
            "optimizer": "sgd",
            "lr": 0.002,
            "epochs": 100,
            "warmup_epochs": 1,
            "warmup_lr": 1e-5,
            "batch_size": 128,
            "setting": "base2novel",
        },  # fmt: skip
        # KgCoOp/trainers/kgcoop.py CUSTOM_TEMPLATES: DTD's differs from the dataset's template (the others are equal)
        {"dtd": {"kg_template": "a photo of a {}, a type of texture."}},
    ),
    "kgcoop_cross_dataset.yaml": (  # scripts/xd_train.sh: N_CTX 4, W 8.0, SHOTS 4, all classes
        "htyao89/KgCoOp",
        ["KgCoOp/configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml", "scripts/xd_train.sh"],
        "fp16",
        {
            **COMMON,
            **XD,
            "variant": "language",
            "n_ctx": 4,
            "depth": 1,
            "objective": "kgcoop",
            "kg_weight": 8.0,
            "kg_template": None,
            "optimizer": "sgd",
            "lr": 0.002,
            "epochs": 100,
            "warmup_epochs": 1,
            "warmup_lr": 1e-5,
            "batch_size": 128,
            "num_shots": 4,
        },  # fmt: skip
        {},
    ),
    "mmrl_base2novel.yaml": (
        "yunncheng/MMRL",
        ["configs/trainers/MMRL/vit_b16.yaml", "vit_b16_imagenet.yaml", "trainers/config.py"],
        "amp",
        {**MMRL, "reg_weight": 1.0, "epochs": 10, "warmup_epochs": 1, "batch_size": 4, "setting": "base2novel"},
        {**MMRL_PER_DATASET, "imagenet": {**MMRL_PER_DATASET["imagenet"], **MMRL_IMAGENET}},
    ),
    "mmrl_cross_dataset.yaml": (  # scripts/mmrl/cross_datasets_train.sh: TRAINER.MMRL.REG_WEIGHT 0.2 after the rest
        "yunncheng/MMRL",
        ["configs/trainers/MMRL/vit_b16_cross_datasets.yaml"],
        "amp",
        {**MMRL, **XD, "reg_weight": 0.2, "epochs": 1, "warmup_epochs": 0, "batch_size": 32},
        {},
    ),
    "mmrl_few_shot.yaml": (  # scripts/mmrl/few_shot.sh: vit_b16_few_shot.yaml, vit_b16_imagenet.yaml on ImageNet
        "yunncheng/MMRL",
        ["configs/trainers/MMRL/vit_b16_few_shot.yaml", "vit_b16_imagenet.yaml", "trainers/config.py"],
        "amp",
        {**MMRL, "reg_weight": 0.5, "epochs": 50, "warmup_epochs": 1, "batch_size": 32, "setting": "all"},
        {**MMRL_PER_DATASET, "imagenet": {**MMRL_PER_DATASET["imagenet"], **MMRL_IMAGENET}},
    ),
    "mmrlpp_base2novel.yaml": (  # scripts/mmrlpp/base2new_*.sh: vit_b16.yaml, vit_b16_imagenet.yaml on ImageNet
        "yunncheng/MMRL",
        ["configs/trainers/MMRLpp/vit_b16.yaml", "vit_b16_imagenet.yaml", "trainers/config.py"],
        "amp",
        {**MMRLPP, "reg_weight": 1.0, "epochs": 10, "warmup_epochs": 1, "batch_size": 4, "setting": "base2novel"},
        {**MMRLPP_PER_DATASET, "imagenet": {**MMRLPP_PER_DATASET["imagenet"], **MMRL_IMAGENET}},
    ),
    "mmrlpp_cross_dataset.yaml": (  # scripts/mmrlpp/cross_datasets_train.sh: TASK CD, ImageNet's CD values (REG 0.1)
        "yunncheng/MMRL",
        ["configs/trainers/MMRLpp/vit_b16_cross_datasets.yaml", "trainers/config.py"],
        "amp",
        {**MMRLPP, **XD, "reg_weight": 0.1, "epochs": 1, "warmup_epochs": 0, "batch_size": 32},
        {},
    ),
    "mmrlpp_few_shot.yaml": (  # scripts/mmrlpp/few_shot.sh: vit_b16_few_shot.yaml, vit_b16_imagenet.yaml on ImageNet
        "yunncheng/MMRL",
        ["configs/trainers/MMRLpp/vit_b16_few_shot.yaml", "vit_b16_imagenet.yaml", "trainers/config.py"],
        "amp",
        {
            **MMRLPP,
            "reg_weight": 1.0,
            "lr": 0.002,
            "epochs": 100,
            "warmup_epochs": 1,
            "batch_size": 32,
            "setting": "all",
        },
        {**MMRLPP_PER_DATASET, "imagenet": {**MMRLPP_PER_DATASET["imagenet"], "lr": 0.001, "epochs": 5}},
    ),
}
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


def test_every_recipe_names_an_original_here_and_in_its_header():
    shipped = {path.name for path in CONFIGS.glob("*.yaml")}
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
