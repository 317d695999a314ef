"""KgCoOp (htyao89/KgCoOp): KgCoOp/configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml and its scripts."""

from originals import COOP, XD, Original

KGCOOP = {  # scripts/base2new_train.sh and scripts/xd_train.sh: N_CTX 4; scripts/run.sh and xd_train.sh: W 8.0
    **COOP, "variant": "language", "objective": "kgcoop", "kg_weight": 8.0, "kg_template": None, "epochs": 100,
    "batch_size": 128,
}  # fmt: skip
CONFIG = "KgCoOp/configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml"

ORIGINALS = {
    "kgcoop_base2novel.yaml": Original(
        "htyao89/KgCoOp",
        [CONFIG],
        "fp16",
        {**KGCOOP, "setting": "base2novel"},
        # KgCoOp/trainers/kgcoop.py CUSTOM_TEMPLATES: DTD's differs from the dataset's template (the others are equal)
        {"dtd": {"kg_template": "a photo of a {}, a type of texture."}},
    ),
    "kgcoop_cross_dataset.yaml": Original(  # scripts/xd_train.sh: SHOTS 4, all classes
        "htyao89/KgCoOp",
        [CONFIG, "scripts/xd_train.sh"],
        "fp16",
        {**KGCOOP, **XD, "num_shots": 4},
        {},
    ),
}
