"""MaPLe (muzairkhattak/multimodal-prompt-learning): configs/trainers/MaPLe/*.yaml."""

from originals import NO_SRC, SGD_5_EPOCHS, XD, Original

REPOSITORY = "muzairkhattak/multimodal-prompt-learning"

ORIGINALS = {
    "maple_base2novel.yaml": Original(
        REPOSITORY,
        ["configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml"],
        "fp16",
        {**SGD_5_EPOCHS, **NO_SRC, "variant": "maple", "n_ctx": 2, "depth": 9, "lr": 0.0035, "setting": "base2novel"},
        {},
    ),
    "maple_cross_dataset.yaml": Original(
        REPOSITORY,
        ["configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml"],
        "fp16",
        {**SGD_5_EPOCHS, **NO_SRC, **XD, "variant": "maple", "n_ctx": 2, "depth": 3, "lr": 0.0026, "epochs": 2},
        {},
    ),
}
