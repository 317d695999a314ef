"""The import of MMRL's checkpoints (`MultiModalRepresentationLearner/model.pth.tar-N`).

MMRL's code stores the whole model: `representation_learner.compound_rep_tokens`, one projection per representation
layer and tower `representation_learner.compound_rep_tokens_r2{t,v}proj.{k}.*` and `image_encoder.proj_rep` (its
`rep_layers` and `alpha` are not in the file); the frozen CLIP weights and `prompt_embeddings` are ignored.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ...backbones import TEXT_LAYER, VISION_LAYER
from ...config import MaPLeConfig
from ...convert import OfficialCheckpoint, check_numbered, check_same_shape, checkpoint_tensor
from ...prompts import prompt_template

PREFIX = "representation_learner."
TOKENS = "representation_learner.compound_rep_tokens"
PROJ = re.compile(r"representation_learner\.compound_rep_tokens_r2([tv])proj\.(\d+)\.(weight|bias)")
PROJ_REP = "image_encoder.proj_rep"
#: MMRL's projections of the representation tokens, one per representation layer: into the text and vision layers
TOWERS = {"t": ("text", TEXT_LAYER), "v": ("vision", VISION_LAYER)}


def read_checkpoint(state: dict[str, Any]) -> OfficialCheckpoint | None:
    """The MMRL adapter of a checkpoint's state dict, or `None` when it has no representation learner."""
    if not any(key.startswith(PREFIX) for key in state):
        return None
    n_rep, rep_dim, converted = convert_mmrl_state_dict(state)
    return OfficialCheckpoint("MMRL", "mmrl", 0, None, None, converted, {"n_rep": n_rep, "rep_dim": rep_dim})


def projections(converted: OfficialCheckpoint) -> int:
    """The number of representation layers the checkpoint was trained with (its projections per tower)."""
    return sum(1 for key in converted.state_dict if (m := PROJ.fullmatch(key)) and m.group(1, 3) == ("t", "weight"))


def dims(converted: OfficialCheckpoint) -> dict[str, int]:
    """The widths of the CLIP the checkpoint was trained on."""
    state = converted.state_dict
    return {
        "d_text": state[_mmrl_proj("t", 0, "weight")].shape[0],
        "d_vision": state[_mmrl_proj("v", 0, "weight")].shape[0],
        "embed_dim": state[PROJ_REP].shape[1],
    }


def adapter_state_dict(converted: OfficialCheckpoint, config: MaPLeConfig) -> dict[str, torch.Tensor]:
    """The file's tensors keyed for the adapter, once `rep_layers` places its projections."""
    count = projections(converted)
    if config.rep_layers is None or len(config.rep_layers) != count:
        raise ValueError(
            f"rep_layers={config.rep_layers!r}: this MMRL checkpoint has a projection per tower for {count} layers; "
            f"pass the {count} layers (1-based) they go to."
        )
    return _mmrl_adapter_state_dict(converted.state_dict, config.rep_layers)


def _mmrl_proj(tower: str, k: int, part: str) -> str:
    return f"representation_learner.compound_rep_tokens_r2{tower}proj.{k}.{part}"


def convert_mmrl_state_dict(state: dict[str, torch.Tensor]) -> tuple[int, int, dict[str, torch.Tensor]]:
    """Check MMRL's trainable tensors in its checkpoint's state dict and return them as float32.

    Args:
        state (`dict[str, torch.Tensor]`): the checkpoint's `state_dict` (the whole model, without a `module.`
            prefix); the frozen CLIP weights and `prompt_embeddings` are ignored.

    Returns:
        `(n_rep, rep_dim, tensors)`, `tensors` keyed as the file keys them (`OfficialCheckpoint.adapter_state_dict`
        keys them for the adapter once `rep_layers` is known).
    """
    unknown = sorted(key for key in state if key.startswith(PREFIX) and key != TOKENS and not PROJ.fullmatch(key))
    if unknown:
        raise ValueError(
            f"The checkpoint has representation-learner tensors that MMRL's code does not write ({unknown[:5]}); it "
            "was written by other code and cannot be imported."
        )
    tokens = checkpoint_tensor(state, TOKENS, 2, TOKENS)
    proj_rep = checkpoint_tensor(state, PROJ_REP, 2, PROJ_REP)
    tensors = {TOKENS: tokens, PROJ_REP: proj_rep}
    counts = {}
    for tower, (name, _) in TOWERS.items():
        numbers = sorted({int(m.group(2)) for key in state if (m := PROJ.fullmatch(key)) and m.group(1) == tower})
        checkpoint_tensor(state, _mmrl_proj(tower, 0, "weight"), 2, _mmrl_proj(tower, 0, "weight"))
        check_numbered(numbers, f"{name} projections (compound_rep_tokens_r2{tower}proj.k)", 0)
        weights = {
            k: checkpoint_tensor(state, _mmrl_proj(tower, k, "weight"), 2, _mmrl_proj(tower, k, "weight"))
            for k in numbers
        }
        biases = {
            k: checkpoint_tensor(state, _mmrl_proj(tower, k, "bias"), 1, _mmrl_proj(tower, k, "bias")) for k in numbers
        }
        check_same_shape({_mmrl_proj(tower, k, "weight"): w for k, w in weights.items()}, f"{name} projection weights")
        check_same_shape({_mmrl_proj(tower, k, "bias"): b for k, b in biases.items()}, f"{name} projection biases")
        width, rep_dim = weights[0].shape
        if rep_dim != tokens.shape[1] or biases[0].shape[0] != width:
            raise ValueError(
                f"The checkpoint is malformed: the {name} projections are {tuple(weights[0].shape)} with bias "
                f"{tuple(biases[0].shape)}, but the representation tokens are {tuple(tokens.shape)}; expected "
                f"(d_{name}, {tokens.shape[1]}) with bias (d_{name},)."
            )
        for k in numbers:
            tensors[_mmrl_proj(tower, k, "weight")] = weights[k]
            tensors[_mmrl_proj(tower, k, "bias")] = biases[k]
        counts[name] = len(numbers)
    if counts["text"] != counts["vision"]:
        raise ValueError(
            f"The checkpoint is malformed: it has text projections for {counts['text']} layers but vision "
            f"projections for {counts['vision']}; MMRL projects its tokens into the same layers of both towers."
        )
    d_vision = tensors[_mmrl_proj("v", 0, "weight")].shape[0]
    if proj_rep.shape[0] != d_vision:
        raise ValueError(
            f"The checkpoint is malformed: '{PROJ_REP}' is {tuple(proj_rep.shape)}, but the vision projections "
            f"are {d_vision}-wide; expected ({d_vision}, embed_dim)."
        )
    converted = {key: value.float().contiguous() for key, value in tensors.items()}
    return tokens.shape[0], tokens.shape[1], converted


def _mmrl_adapter_state_dict(tensors: dict[str, torch.Tensor], rep_layers: list[int]) -> dict[str, torch.Tensor]:
    """MMRL's tensors keyed for the adapter: `R` and `proj_rep` in the first representation layer of the text and vision
    tower, projection `k` in layer `rep_layers[k]` (1-based) of each tower."""
    first = rep_layers[0] - 1
    state = {
        f"{TEXT_LAYER.format(first)}.maple_rep_tokens": tensors[TOKENS],
        f"{VISION_LAYER.format(first)}.maple_proj_rep": tensors[PROJ_REP],
    }
    for k, layer in enumerate(rep_layers):
        for tower, (_, owner) in TOWERS.items():
            for part in ("weight", "bias"):
                state[f"{owner.format(layer - 1)}.maple_rep_proj.{part}"] = tensors[_mmrl_proj(tower, k, part)]
    return {f"base_model.model.{key}": value for key, value in state.items()}


def checkpoint_config(
    converted: OfficialCheckpoint,
    clip_config: Any,
    rep_layers: list[int] | None = None,
    template: str | None = None,
    **options: Any,
) -> MaPLeConfig:
    """The `MaPLeConfig` of an MMRL checkpoint on a base model (see `layered_config`); `alpha` and the `extra` options
    of `MaPLeConfig` as given."""
    first = "compound_rep_tokens_r2tproj"
    return layered_config(converted, clip_config, projections(converted), "a projection per tower", first, rep_layers,
                          template, **options)  # fmt: skip


def layered_config(
    converted: OfficialCheckpoint,
    clip_config: Any,
    count: int,
    held: str,
    key: str,
    rep_layers: list[int] | None,
    template: str | None,
    **options: Any,
) -> MaPLeConfig:
    """The `MaPLeConfig` of a checkpoint of MMRL or MMRL++ (`converted.variant`, its options from the file) on a base
    model of config `clip_config`: `rep_layers` (default: the last `count` text layers, as every config of the
    original places them) checked against the file's `count` layers and the towers; `options` (`alpha`, `beta`,
    `class_names`, ...) validated by `MaPLeConfig`. `held` and `key` name, in messages, what the file holds per layer
    ("a projection per tower") and the key of its first one."""
    n_text = clip_config.text_config.num_hidden_layers
    n_vision = clip_config.vision_config.num_hidden_layers
    limit = min(n_text, n_vision)
    if count > limit:
        raise ValueError(
            f"The checkpoint has {held} for {count} layers, but the base model's text tower has {n_text} layers and "
            f"its vision tower {n_vision}; pass the CLIP the checkpoint was trained on."
        )
    shown = f"rep_layers={rep_layers}"
    if rep_layers is None:
        rep_layers = list(range(n_text - count + 1, n_text + 1))
        shown = f"rep_layers={rep_layers} (the default: the last {count} text layers, one per layer in the file)"
    config = MaPLeConfig(
        variant=converted.variant,
        **converted.options,
        rep_layers=rep_layers,
        template=template if template is not None else prompt_template(None),
        **options,
    )
    if len(config.rep_layers) != count:
        raise ValueError(
            f"{shown} has {len(config.rep_layers)} layers, but the checkpoint has {held} for {count} ({key}.0 .. "
            f"{count - 1}); pass the REP_LAYERS of the run that wrote it ({converted.source}'s configs use 6 .. 12 on "
            f"ViT-B/16), e.g. rep_layers={list(range(max(1, n_text - count + 1), n_text + 1))}."
        )
    if config.rep_layers[-1] > limit:
        raise ValueError(
            f"{shown} but the base model's towers have {n_text} (text) and {n_vision} (vision) layers; use 1-based "
            f"layer numbers up to {limit}."
        )
    return config
