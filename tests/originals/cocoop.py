"""CoCoOp (KaiyangZhou/CoOp): configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml, scripts/cocoop/*.sh."""

from originals import COOP, NO_SRC, XD, Original

COCOOP = {**COOP, **NO_SRC, "variant": "cocoop", "epochs": 10, "batch_size": 1}  # the config file
CONFIG = "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml"

ORIGINALS = {
    "cocoop_base2novel.yaml": Original(
        "KaiyangZhou/CoOp",
        [CONFIG, "scripts/cocoop/base2new_train.sh"],
        "fp16",
        {**COCOOP, "setting": "base2novel"},
        {},
    ),
    "cocoop_cross_dataset.yaml": Original(
        "KaiyangZhou/CoOp",
        [CONFIG, "scripts/cocoop/xd_train.sh"],
        "fp16",
        {**COCOOP, **XD},
        {},
    ),
}
