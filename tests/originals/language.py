"""Deep language prompting: the MaPLe paper's ablation (muzairkhattak/multimodal-prompt-learning) and, at depth 1,
CoOp as the CoCoOp paper ran it (KaiyangZhou/CoOp)."""

from originals import COOP, NO_SRC, SGD_5_EPOCHS, Original

ORIGINALS = {
    "language_base2novel.yaml": Original(
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
    "coop_base2novel.yaml": Original(  # scripts/cocoop/base2new_train.sh with TRAINER=CoOp (the CoCoOp paper's CoOp)
        "KaiyangZhou/CoOp",
        ["configs/trainers/CoOp/vit_b16_ctxv1.yaml", "configs/trainers/CoOp/vit_b16_ep50_ctxv1.yaml"],
        "fp16",
        {
            **COOP,
            **NO_SRC,
            "variant": "language",
            "epochs": 200,
            "batch_size": 32,
            "setting": "base2novel",
            "objective": "ce",
        },
        {"imagenet": {"epochs": 50}},  # vit_b16_ep50_ctxv1.yaml
    ),
}
