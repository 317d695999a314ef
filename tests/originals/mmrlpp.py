"""MMRL++ (yunncheng/MMRL): configs/trainers/MMRLpp/*.yaml, scripts/mmrlpp/*.sh and trainers/config.py."""

from originals import XD, Original
from originals.mmrl import MMRL, MMRL_IMAGENET, REPOSITORY, trained_per_dataset

# configs/trainers/MMRLpp/*.yaml: MMRL's values, BETA 0.9, PROJ_LORA_DIM 64, RES_LORA_DIM 4
MMRLPP = {**MMRL, "variant": "mmrlpp", "beta": 0.9, "proj_lora_dim": 64, "res_lora_dim": 4}
# trainers/config.py: get_dataset_specified_config for MMRLpp, TASK B2N and FS
MMRLPP_PER_DATASET = {
    "imagenet": {"beta": 0.9, "reg_weight": 0.2}, "fgvc_aircraft": {"beta": 0.9, "reg_weight": 2.0},
    "ucf101": {"beta": 0.9, "reg_weight": 3.0}, "dtd": {"beta": 0.9, "reg_weight": 7.0},
    "oxford_pets": {"beta": 0.7, "reg_weight": 0.01}, "stanford_cars": {"beta": 0.7, "reg_weight": 6.0},
    "caltech101": {"beta": 0.6, "reg_weight": 3.0}, "sun397": {"beta": 0.5, "reg_weight": 3.0},
    "oxford_flowers": {"beta": 0.4, "reg_weight": 7.0}, "eurosat": {"beta": 0.2, "reg_weight": 0.01},
    "food101": {"beta": 0.1, "reg_weight": 1.0},
}  # fmt: skip

ORIGINALS = {
    "mmrlpp_base2novel.yaml": trained_per_dataset(  # scripts/mmrlpp/base2new_*.sh
        "MMRLpp",
        "vit_b16.yaml",
        {**MMRLPP, "reg_weight": 1.0, "epochs": 10, "warmup_epochs": 1, "batch_size": 4, "setting": "base2novel"},
        MMRLPP_PER_DATASET,
        MMRL_IMAGENET,
    ),
    "mmrlpp_cross_dataset.yaml": Original(  # scripts/mmrlpp/cross_datasets_train.sh: TASK CD, ImageNet's CD values
        REPOSITORY,
        ["configs/trainers/MMRLpp/vit_b16_cross_datasets.yaml", "trainers/config.py"],
        "amp",
        {**MMRLPP, **XD, "reg_weight": 0.1, "epochs": 1, "warmup_epochs": 0, "batch_size": 32},  # (REG 0.1)
        {},
    ),
    "mmrlpp_few_shot.yaml": trained_per_dataset(  # scripts/mmrlpp/few_shot.sh; ImageNet: vit_b16_imagenet.yaml
        "MMRLpp",
        "vit_b16_few_shot.yaml",
        {
            **MMRLPP,
            "reg_weight": 1.0,
            "lr": 0.002,
            "epochs": 100,
            "warmup_epochs": 1,
            "batch_size": 32,
            "setting": "all",
        },
        MMRLPP_PER_DATASET,
        {"lr": 0.001, "epochs": 5},
    ),
}
