"""The import of MMRL++'s checkpoints (`MultiModalRepresentationLearner/model.pth.tar-N` of an MMRL++ run).

MMRL++'s code stores the whole model. Its trainable tensors: `representation_learner.compound_rep_tokens` `(n_rep,
rep_dim)`; per tower (`t` text, `v` vision) the aligner's shared weight `representation_learner.srra_r2{t,v}proj.weight`
`(d, rep_dim)` and, per representation layer `k`, `representation_learner.srra_r2{t,v}proj.srra.{k}.{A,B,bias}` `(d,
res_lora_dim)`, `(res_lora_dim, rep_dim)`, `(d,)`; and `image_encoder.A` `(d_vision, proj_lora_dim)`, `image_encoder.B`
`(proj_lora_dim, embed_dim)`. The frozen CLIP weights (`image_encoder.proj` included) and `prompt_embeddings` are
ignored; `rep_layers`, `alpha` and `beta` are not in the file. MMRL's files have `compound_rep_tokens_r2{t,v}proj.{k}.*`
and `image_encoder.proj_rep` instead of the aligners and `A`, `B`: a file is MMRL++'s when it has
`representation_learner.srra_r2tproj.weight`.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ...backbones import TEXT_LAYER, VISION_LAYER
from ...config import MaPLeConfig
from ...convert import OfficialCheckpoint, check_numbered, check_same_shape, checkpoint_tensor
from ..mmrl.convert import layered_config

PREFIX = "representation_learner."
TOKENS = "representation_learner.compound_rep_tokens"
SHARED = re.compile(r"representation_learner\.srra_r2([tv])proj\.weight")
RESIDUAL = re.compile(r"representation_learner\.srra_r2([tv])proj\.srra\.(\d+)\.(A|B|bias)")
PROJ_LORA = ("image_encoder.A", "image_encoder.B")
TOWERS = {"t": ("text", TEXT_LAYER), "v": ("vision", VISION_LAYER)}
#: The BETA the original trains and evaluates each dataset with (`trainers/config.py`, base-to-novel and few-shot;
#: ImageNet as the cross-dataset source too): a file does not hold it, its dataset tells it.
DATASET_BETA = {
    "imagenet": 0.9, "fgvc_aircraft": 0.9, "ucf101": 0.9, "dtd": 0.9, "oxford_pets": 0.7, "stanford_cars": 0.7,
    "caltech101": 0.6, "sun397": 0.5, "oxford_flowers": 0.4, "eurosat": 0.2, "timm/eurosat-rgb": 0.2, "food101": 0.1,
}  # fmt: skip


def aligner_key(tower: str, k: int | None = None, part: str = "weight") -> str:
    """The file's key of a tower's shared weight (`k` None) or of layer `k`'s `A`, `B` or `bias`."""
    prefix = f"representation_learner.srra_r2{tower}proj"
    return f"{prefix}.weight" if k is None else f"{prefix}.srra.{k}.{part}"


def read_checkpoint(state: dict[str, Any]) -> OfficialCheckpoint | None:
    """The MMRL++ adapter of a checkpoint's state dict, or `None` when it has no aligner (not an MMRL++ file)."""
    if aligner_key("t") not in state:
        return None
    unknown = sorted(
        key
        for key in state
        if key.startswith(PREFIX) and key != TOKENS and not SHARED.fullmatch(key) and not RESIDUAL.fullmatch(key)
    )
    if unknown:
        raise ValueError(
            f"The checkpoint has representation-learner tensors that MMRL++'s code does not write ({unknown[:5]}); it "
            "was written by other code and cannot be imported."
        )
    tokens = checkpoint_tensor(state, TOKENS, 2, TOKENS)
    n_rep, rep_dim = tokens.shape
    lora_a, lora_b = (checkpoint_tensor(state, key, 2, key) for key in PROJ_LORA)
    tensors = {TOKENS: tokens, PROJ_LORA[0]: lora_a, PROJ_LORA[1]: lora_b}
    counts, widths, ranks = {}, {}, set()
    for tower, (name, _) in TOWERS.items():
        shared = checkpoint_tensor(state, aligner_key(tower), 2, aligner_key(tower))
        numbers = sorted({int(m.group(2)) for key in state if (m := RESIDUAL.fullmatch(key)) and m.group(1) == tower})
        check_numbered(numbers, f"{name} aligner layers (srra_r2{tower}proj.srra.k)", 0)
        for part, ndim in (("A", 2), ("B", 2), ("bias", 1)):
            parts = {
                aligner_key(tower, k, part): checkpoint_tensor(
                    state,
                    aligner_key(tower, k, part),
                    ndim,
                    aligner_key(tower, k, part),
                )
                for k in numbers
            }
            check_same_shape(parts, f"{name} aligner {part}s")
            tensors.update(parts)
        width = shared.shape[0]
        residual = tensors[aligner_key(tower, 0, "A")] @ tensors[aligner_key(tower, 0, "B")]
        if (
            shared.shape[1] != rep_dim
            or residual.shape != shared.shape
            or tensors[aligner_key(tower, 0, "bias")].shape != (width,)
        ):
            raise ValueError(
                f"The checkpoint is malformed: the {name} aligner's shared weight is {tuple(shared.shape)}, its layers' "
                f"A, B and bias {tuple(tensors[aligner_key(tower, 0, 'A')].shape)}, "
                f"{tuple(tensors[aligner_key(tower, 0, 'B')].shape)}, {tuple(tensors[aligner_key(tower, 0, 'bias')].shape)}, "
                f"but the representation tokens are {tuple(tokens.shape)}; expected (d, {rep_dim}), (d, r), "
                f"(r, {rep_dim}) and (d,)."
            )
        tensors[aligner_key(tower)] = shared
        counts[name], widths[name] = len(numbers), width
        ranks.add(tensors[aligner_key(tower, 0, "A")].shape[1])
    if counts["text"] != counts["vision"] or len(ranks) != 1:
        raise ValueError(
            f"The checkpoint is malformed: it has text aligner layers for {counts['text']} layers (rank "
            f"{tensors[aligner_key('t', 0, 'A')].shape[1]}) but vision ones for {counts['vision']} (rank "
            f"{tensors[aligner_key('v', 0, 'A')].shape[1]}); MMRL++ maps its tokens into the same layers of both "
            "towers with one rank."
        )
    if lora_a.shape[0] != widths["vision"] or lora_b.shape[0] != lora_a.shape[1]:
        raise ValueError(
            f"The checkpoint is malformed: 'image_encoder.A' is {tuple(lora_a.shape)} and 'image_encoder.B' "
            f"{tuple(lora_b.shape)}, but the vision aligner is {widths['vision']}-wide; expected ({widths['vision']}, "
            "r) and (r, embed_dim)."
        )
    converted = {key: value.float().contiguous() for key, value in tensors.items()}
    options = {
        "n_rep": n_rep,
        "rep_dim": rep_dim,
        "proj_lora_dim": lora_a.shape[1],
        "res_lora_dim": ranks.pop(),
    }
    return OfficialCheckpoint("MMRL++", "mmrlpp", 0, None, None, converted, options)


def layers(converted: OfficialCheckpoint) -> int:
    """The number of representation layers the checkpoint was trained with (its aligner layers per tower)."""
    return sum(1 for key in converted.state_dict if (m := RESIDUAL.fullmatch(key)) and m.group(1, 3) == ("t", "A"))


def dims(converted: OfficialCheckpoint) -> dict[str, int]:
    """The widths of the CLIP the checkpoint was trained on."""
    state = converted.state_dict
    return {
        "d_text": state[aligner_key("t")].shape[0],
        "d_vision": state[aligner_key("v")].shape[0],
        "embed_dim": state[PROJ_LORA[1]].shape[1],
    }


def checkpoint_config(
    converted: OfficialCheckpoint,
    clip_config: Any,
    rep_layers: list[int] | None = None,
    template: str | None = None,
    beta: float | None = None,
    **options: Any,
) -> MaPLeConfig:
    """The `MaPLeConfig` of an MMRL++ checkpoint on a base model (see MMRL's `layered_config`); `beta` (default: the
    original's value for the `dataset` given, else 0.9) and `alpha` (default 0.7) are not in the file."""
    if beta is None:
        beta = DATASET_BETA.get(options.get("dataset"))
    return layered_config(converted, clip_config, layers(converted), "aligner layers", "srra_r2tproj.srra",
                          rep_layers, template, beta=beta, **options)  # fmt: skip


def adapter_state_dict(converted: OfficialCheckpoint, config: MaPLeConfig) -> dict[str, torch.Tensor]:
    """The file's tensors keyed for the adapter: `R` in the first text layer of `rep_layers`, each tower's shared
    weight in its first one, `A` and `B` of the projection in the first vision one, aligner layer `k` in layer
    `rep_layers[k]` (1-based) of each tower."""
    tensors, rep_layers = converted.state_dict, config.rep_layers
    count = layers(converted)
    if rep_layers is None or len(rep_layers) != count:
        raise ValueError(
            f"rep_layers={rep_layers!r}: this MMRL++ checkpoint has aligner layers for {count} layers; pass the "
            f"{count} layers (1-based) they go to."
        )
    first = rep_layers[0] - 1
    state = {
        f"{TEXT_LAYER.format(first)}.maple_rep_tokens": tensors[TOKENS],
        f"{VISION_LAYER.format(first)}.maple_proj_lora_A": tensors[PROJ_LORA[0]],
        f"{VISION_LAYER.format(first)}.maple_proj_lora_B": tensors[PROJ_LORA[1]],
    }
    for tower, (_, owner) in TOWERS.items():
        state[f"{owner.format(first)}.maple_rep_shared"] = tensors[aligner_key(tower)]
        for k, layer in enumerate(rep_layers):
            for part in ("A", "B", "bias"):
                state[f"{owner.format(layer - 1)}.maple_rep_proj.{part}"] = tensors[aligner_key(tower, k, part)]
    return {f"base_model.model.{key}": value for key, value in state.items()}
