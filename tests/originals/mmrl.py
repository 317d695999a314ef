"""MMRL (yunncheng/MMRL): configs/trainers/MMRL/*.yaml, scripts/mmrl/*.sh and trainers/config.py; `trained_per_dataset`
is shared with MMRL++, whose recipes come from the same repository and scripts."""

from originals import COMMON, XD, Original

REPOSITORY = "yunncheng/MMRL"
MMRL = {  # N_REP_TOKENS 5, REP_DIM 512, REP_LAYERS 6..12, ALPHA 0.7, AdamW lr 0.001, RRCROP_SCALE (0.5, 1)
    **COMMON, "variant": "mmrl", "objective": "mmrl", "n_rep": 5, "rep_dim": 512, "rep_layers": list(range(6, 13)),
    "alpha": 0.7, "optimizer": "adamw", "lr": 0.001, "warmup_lr": 1e-5, "crop_scale": [0.5, 1.0],
}  # fmt: skip
# trainers/config.py: get_dataset_specified_config, merged after the config file for every TASK
MMRL_PER_DATASET = {
    "stanford_cars": {"reg_weight": 7.0}, "fgvc_aircraft": {"reg_weight": 6.0}, "sun397": {"reg_weight": 6.0},
    "dtd": {"reg_weight": 6.0}, "food101": {"reg_weight": 5.0}, "oxford_flowers": {"reg_weight": 4.0},
    "ucf101": {"reg_weight": 3.0}, "imagenet": {"reg_weight": 0.5}, "caltech101": {"reg_weight": 0.5},
    "oxford_pets": {"reg_weight": 0.2}, "eurosat": {"reg_weight": 0.01, "rep_dim": 2048},
}  # fmt: skip
# configs/trainers/MMRL/vit_b16_imagenet.yaml: what scripts/mmrl/*.sh run on ImageNet
MMRL_IMAGENET = {"epochs": 5, "warmup_epochs": 1, "batch_size": 32}


def trained_per_dataset(folder: str, config: str, values: dict, per_dataset: dict, imagenet: dict) -> Original:
    """A recipe of the repository's scripts that run `configs/trainers/<folder>/<config>`, `vit_b16_imagenet.yaml` on
    ImageNet (its values: `imagenet`) and the per-dataset values of `trainers/config.py` (`per_dataset`)."""
    return Original(
        REPOSITORY,
        [f"configs/trainers/{folder}/{config}", "vit_b16_imagenet.yaml", "trainers/config.py"],
        "amp",
        values,
        {**per_dataset, "imagenet": {**per_dataset["imagenet"], **imagenet}},
    )


ORIGINALS = {
    "mmrl_base2novel.yaml": trained_per_dataset(
        "MMRL",
        "vit_b16.yaml",
        {**MMRL, "reg_weight": 1.0, "epochs": 10, "warmup_epochs": 1, "batch_size": 4, "setting": "base2novel"},
        MMRL_PER_DATASET,
        MMRL_IMAGENET,
    ),
    "mmrl_cross_dataset.yaml": Original(  # scripts/mmrl/cross_datasets_train.sh: TRAINER.MMRL.REG_WEIGHT 0.2 last
        REPOSITORY,
        ["configs/trainers/MMRL/vit_b16_cross_datasets.yaml"],
        "amp",
        {**MMRL, **XD, "reg_weight": 0.2, "epochs": 1, "warmup_epochs": 0, "batch_size": 32},
        {},
    ),
    "mmrl_few_shot.yaml": trained_per_dataset(  # scripts/mmrl/few_shot.sh
        "MMRL",
        "vit_b16_few_shot.yaml",
        {**MMRL, "reg_weight": 0.5, "epochs": 50, "warmup_epochs": 1, "batch_size": 32, "setting": "all"},
        MMRL_PER_DATASET,
        MMRL_IMAGENET,
    ),
}
