"""VPT-deep, the MaPLe paper's vision prompting baseline (muzairkhattak/multimodal-prompt-learning):
configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml."""

from originals import NO_SRC, SGD_5_EPOCHS, Original

ORIGINALS = {
    "vpt_base2novel.yaml": Original(
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
}
