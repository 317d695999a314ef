"""PromptSRC (muzairkhattak/PromptSRC): configs/trainers/PromptSRC/*.yaml and scripts/promptsrc/few_shot.sh; and
MaPLe's recipe trained with PromptSRC's losses."""

from originals import COMMON, SGD_5_EPOCHS, XD, Original

REPOSITORY = "muzairkhattak/PromptSRC"
PROMPTSRC = {  # PromptSRC's TEXT_LOSS_WEIGHT 25, IMAGE_LOSS_WEIGHT 10; the KL term's weight is 1 in trainers/promptsrc.py
    **COMMON, "variant": "ivlp", "n_ctx": 4, "n_ctx_vision": 4, "optimizer": "sgd", "lr": 0.0025, "warmup_epochs": 1,
    "warmup_lr": 1e-5, "batch_size": 4, "objective": "src", "text_weight": 25.0, "image_weight": 10.0,
    "logits_weight": 1.0,
}  # fmt: skip

ORIGINALS = {
    "promptsrc_base2novel.yaml": Original(
        REPOSITORY,
        ["configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml"],
        "fp16",
        {**PROMPTSRC, "depth": 9, "epochs": 20, "gpa_mean": 15.0, "gpa_std": 1.0, "setting": "base2novel"},
        {},
    ),
    "promptsrc_cross_dataset.yaml": Original(
        REPOSITORY,
        ["configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets.yaml"],
        "fp16",
        {**PROMPTSRC, **XD, "depth": 3, "epochs": 20, "gpa_mean": 6.0, "gpa_std": 10.0},
        {},
    ),
    "promptsrc_few_shot.yaml": Original(
        REPOSITORY,
        ["configs/trainers/PromptSRC/vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml", "scripts/promptsrc/few_shot.sh"],
        "fp16",
        {**PROMPTSRC, "depth": 9, "epochs": 50, "gpa_mean": 30.0, "gpa_std": 30.0, "setting": "all"},
        {  # the config's comment: GPA_MEAN 45, GPA_STD 5 for StanfordCars, Flowers102, FGVCAircraft, DTD and EuroSAT
            name: {"gpa_mean": 45.0, "gpa_std": 5.0}
            for name in ("stanford_cars", "oxford_flowers", "fgvc_aircraft", "dtd", "eurosat")
        },
    ),
    "maple_src_base2novel.yaml": Original(  # MaPLe's recipe with PromptSRC's loss weights; its GPA is this project's
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
}
