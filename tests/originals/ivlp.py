"""IVLP, the MaPLe paper's independent vision-language prompting (muzairkhattak/multimodal-prompt-learning):
configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml."""

from originals import NO_SRC, SGD_5_EPOCHS, Original

ORIGINALS = {
    "ivlp_base2novel.yaml": Original(
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
}
