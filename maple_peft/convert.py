"""Import of the `model.pth.tar-N` checkpoints written by the original code of MaPLe, PromptSRC / IVLP, CoCoOp, KgCoOp
(and CoOp) and MMRL.

- MaPLe (`MultiModalPromptLearner/model.pth.tar-N`) stores its prompt learner as `prompt_learner.ctx`,
  `prompt_learner.proj.*`, `prompt_learner.compound_prompts_text.{k}` and `prompt_learner.compound_prompt_projections.
  {k}.*`: `variant="maple"`.
- PromptSRC / independent vision-language prompting (`VLPromptLearner/model.pth.tar-N`) stores `prompt_learner.ctx`
  (the first text prompt), `image_encoder.VPT` (the first vision prompt) and, for the deeper layers `i = 1 .. depth-1`,
  `text_encoder.transformer.resblocks.{i}.VPT_shallow` and `image_encoder.transformer.resblocks.{i}.VPT_shallow`:
  `variant="ivlp"`.
- CoCoOp (`prompt_learner/model.pth.tar-N`) stores `ctx` and its meta-net `meta_net.linear{1,2}.{weight,bias}`:
  `variant="cocoop"`.
- KgCoOp (`prompt_learner/model.pth.tar-N`) stores `ctx` and two tensors its model never uses, `bias_vectors` and a
  square `meta_net.linear1` (no `linear2`): its model is CoOp, `variant="language"` with `depth=1` (a file of CoOp
  itself, `ctx` alone, imports the same way).
- MMRL (`MultiModalRepresentationLearner/model.pth.tar-N`) stores the whole model: `representation_learner.
  compound_rep_tokens`, one projection per representation layer and tower `representation_learner.
  compound_rep_tokens_r2{t,v}proj.{k}.*` and `image_encoder.proj_rep`: `variant="mmrl"` (its `rep_layers` and `alpha`
  are not in the file).

The files also hold the frozen CLIP weights (PromptSRC a frozen zero-shot image encoder under
`prompt_learner.ZS_image_encoder.*`, MMRL its `prompt_embeddings`) and the prompt learners' `token_prefix` /
`token_suffix` buffers, which are ignored.

The files are written by Dassl's trainer: `{"state_dict", "epoch", "optimizer", "scheduler", "val_result"}`, where
`scheduler` is the state of a Dassl warm-up scheduler that holds pickled `torch.optim` objects (the cosine scheduler,
with the optimizer inside). They are read with PyTorch's restricted `weights_only` unpickler: tensors and plain
containers are materialised; every other object named in the file (Dassl's and `torch.optim`'s classes, or anything
else) is replaced by an inert stand-in that keeps what the file says and runs nothing, so neither `dassl` nor any code
of the file is needed or run.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .backbones import TEXT_EMBEDDING, TEXT_LAYER, VISION_EMBEDDING, VISION_LAYER, backbone_for_config
from .config import MaPLeConfig
from .console import peft_deprecation_quieted
from .model import non_finite_keys
from .prompts import prompt_template

_OPTIONAL_PREFIXES = ("module.", "prompt_learner.")
_IGNORED = ("token_prefix", "token_suffix")
#: the original code ignores its `ctx_init` (and uses the placeholder "X X ...") beyond this many context tokens
_MAX_CTX_INIT_TOKENS = 4

#: modules whose functions PyTorch's restricted unpickler refuses outright: a checkpoint never needs them
_BLOCKED_MODULES = ("os", "posix", "nt", "sys")


class _InertObject:
    """Stands for an object of a checkpoint that is neither a tensor nor a plain container; nothing of it runs.

    `read_official_checkpoint` maps every class or function that a file names (beyond tensors and plain containers)
    to a subclass of this one, named after it: building or "calling" it only records the pickled arguments
    (`args`) and state (`state`).

    Args:
        *args: the arguments the file gives the object (kept as they are, never called).
    """

    pickled_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> _InertObject:
        obj = object.__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.pickled_name}>"


def _plain_dict(*args: Any) -> dict:
    """`collections.defaultdict` (the optimizers' `state`) as a plain dict: its default factory is dropped."""
    return {}


def _stand_in(name: str) -> Any:
    if name == "collections.defaultdict":
        return _plain_dict
    return type(name.rpartition(".")[2] or name, (_InertObject,), {"pickled_name": name, "__module__": __name__})


def _stand_ins(path: str) -> list[tuple[Any, str]]:
    """An inert stand-in for every global the file names beyond PyTorch's own (read without unpickling anything).

    Raises:
        `ValueError` when the file names functions of `os`, `posix`, `nt` or `sys`.
    """
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - not a zip checkpoint: `torch.load` reports it
        return []
    blocked = sorted(name for name in names if name.split(".")[0] in _BLOCKED_MODULES)
    if blocked:
        raise ValueError(
            f"{path} refers to {', '.join(blocked)}, which a checkpoint never needs (such a file is usually crafted "
            "to run commands when it is loaded); nothing of it was run or loaded. Get the file again from a source "
            "you trust."
        )
    if names and torch.__version__ < "2.6":
        raise ValueError(
            f"{path} holds pickled objects ({', '.join(sorted(names))}) that PyTorch {torch.__version__} cannot "
            "replace by inert stand-ins; upgrade to torch>=2.6 to read it."
        )
    return [(_stand_in(name), name) for name in names]


_TEXT_DEEP = re.compile(r"text_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow")
_VISION_DEEP = re.compile(r"image_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow")

#: CoCoOp's meta-net: `Linear(embed_dim, embed_dim // 16) -> ReLU -> Linear(embed_dim // 16, d_text)`
_META_NET = ("meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight", "meta_net.linear2.bias")
#: what KgCoOp's prompt learner saves beside `ctx` and never uses
_KGCOOP_UNUSED = ("bias_vectors", "meta_net.linear1.weight", "meta_net.linear1.bias")
#: every key of the prompt learners of CoOp, CoCoOp and KgCoOp (`prompt_learner/model.pth.tar-N`)
_PROMPT_LEARNER_KEYS = frozenset({"ctx", *_META_NET, *_KGCOOP_UNUSED, *_IGNORED})

_MMRL_PREFIX = "representation_learner."
_MMRL_TOKENS = "representation_learner.compound_rep_tokens"
_MMRL_PROJ = re.compile(r"representation_learner\.compound_rep_tokens_r2([tv])proj\.(\d+)\.(weight|bias)")
_MMRL_PROJ_REP = "image_encoder.proj_rep"
#: MMRL's projections of the representation tokens, one per representation layer: into the text and vision layers
_MMRL_TOWERS = {"t": ("text", TEXT_LAYER), "v": ("vision", VISION_LAYER)}


def _mmrl_proj(tower: str, k: int, part: str) -> str:
    return f"representation_learner.compound_rep_tokens_r2{tower}proj.{k}.{part}"


@dataclass
class OfficialCheckpoint:
    """The adapter inside a checkpoint of the original code, converted to this library's tensors.

    Args:
        source (`str`): the code that wrote the file: `"MaPLe"`, `"PromptSRC/IVLP"`, `"CoCoOp"`, `"KgCoOp"`, `"CoOp"`
            or `"MMRL"`.
        variant (`str`): the `MaPLeConfig.variant` that computes the same model (`"maple"`, `"ivlp"`, `"cocoop"`,
            `"language"` for KgCoOp's and CoOp's model, `"mmrl"`).
        n_ctx (`int`): number of text context tokens (0 for MMRL, which learns none).
        n_ctx_vision (`int`, *optional*): number of vision prompt tokens (IVLP; `None` otherwise).
        depth (`int`, *optional*): prompt depth (`None` for MMRL, whose tokens are placed by `rep_layers`).
        state_dict (`dict[str, torch.Tensor]`): float32 tensors (the file's fp16 or fp32 values, exactly) keyed like
            a saved `adapter_model.safetensors`. MMRL's are keyed as the file keys them, because the layers they go
            to (`rep_layers`) are not in the file: `adapter_state_dict(rep_layers)` keys them for the adapter.
        n_rep (`int`, *optional*): MMRL: number of representation tokens.
        rep_dim (`int`, *optional*): MMRL: width of the representation tokens.
    """

    source: str
    variant: str
    n_ctx: int
    n_ctx_vision: int | None
    depth: int | None
    state_dict: dict[str, torch.Tensor]
    n_rep: int | None = None
    rep_dim: int | None = None

    @property
    def rep_projections(self) -> int:
        """MMRL: the number of representation layers the checkpoint was trained with (its projections per tower)."""
        return sum(
            1 for key in self.state_dict if (m := _MMRL_PROJ.fullmatch(key)) and m.group(1, 3) == ("t", "weight")
        )

    def dims(self) -> dict[str, int]:
        """The widths of the CLIP the checkpoint was trained on, as far as its tensors tell: `d_text`, and `d_vision`
        and `embed_dim` (the width of the image embedding) when its tensors depend on them."""
        state = self.state_dict
        if self.variant == "mmrl":
            return {
                "d_text": state[_mmrl_proj("t", 0, "weight")].shape[0],
                "d_vision": state[_mmrl_proj("v", 0, "weight")].shape[0],
                "embed_dim": state[_MMRL_PROJ_REP].shape[1],
            }
        dims = {"d_text": state[f"base_model.model.{TEXT_EMBEDDING}.maple_ctx"].shape[1]}
        if self.variant == "ivlp":
            dims["d_vision"] = state[f"base_model.model.{VISION_EMBEDDING}.maple_vision_ctx"].shape[1]
        elif self.variant == "maple":
            dims["d_vision"] = state[f"base_model.model.{VISION_EMBEDDING}.maple_coupling.weight"].shape[0]
        elif self.variant == "cocoop":
            dims["embed_dim"] = state[f"base_model.model.{_meta_net_key('linear1.weight')}"].shape[1]
        return dims

    def adapter_state_dict(
        self, rep_layers: list[int] | None = None, adapter_name: str = "default"
    ) -> dict[str, torch.Tensor]:
        """The tensors keyed like a saved `adapter_model.safetensors` of adapter `adapter_name`.

        Args:
            rep_layers (`list[int]`, *optional*): MMRL: the 1-based layers the file's projections `0, 1, ..` go to
                (required for MMRL, ignored otherwise).
            adapter_name (`str`): the adapter's name (the saved keys do not carry it).
        """
        if self.variant == "mmrl":
            if rep_layers is None or len(rep_layers) != self.rep_projections:
                raise ValueError(
                    f"rep_layers={rep_layers!r}: this MMRL checkpoint has a projection per tower for "
                    f"{self.rep_projections} layers; pass the {self.rep_projections} layers (1-based) they go to."
                )
            return _mmrl_adapter_state_dict(self.state_dict, rep_layers)
        return dict(self.state_dict)


def _meta_net_key(name: str) -> str:
    """The saved key of a tensor of CoCoOp's meta-net (`linear1.weight` -> `...maple_meta_linear1.weight`)."""
    layer, _, param = name.partition(".")
    return f"{TEXT_EMBEDDING}.maple_meta_{layer}.{param}"


def _tensor(learner: dict[str, Any], key: str, ndim: int, shown: str) -> torch.Tensor:
    if key not in learner:
        raise ValueError(f"The checkpoint is malformed: it has no {shown!r}.")
    value = learner[key]
    if not isinstance(value, torch.Tensor) or value.ndim != ndim or not value.is_floating_point():
        if isinstance(value, torch.Tensor):
            described = f"a {value.ndim}-d {value.dtype} tensor"
        elif isinstance(value, _InertObject):
            described = f"an object of {value.pickled_name} (not loaded)"
        else:
            described = type(value).__name__
        raise ValueError(f"The checkpoint is malformed: {shown!r} is {described}, expected a {ndim}-d float tensor.")
    if 0 in value.shape:
        raise ValueError(f"The checkpoint is malformed: {shown!r} is empty (shape {tuple(value.shape)}).")
    return value


def _same_shape(tensors: dict[str, torch.Tensor], what: str) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"The checkpoint is malformed: the {what} have different shapes: {shapes}.")


def _numbered(keys: list[int], what: str, start: int) -> None:
    if keys != list(range(start, start + len(keys))):
        raise ValueError(
            f"The checkpoint is malformed: its {what} are numbered {keys}; expected {start} .. {start + len(keys) - 1}."
        )


def _final(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"base_model.model.{key}": value.float().contiguous() for key, value in state.items()}


def convert_official_state_dict(learner: dict[str, torch.Tensor]) -> tuple[int, int, dict[str, torch.Tensor]]:
    """Map the original MaPLe prompt learner's tensors to this library's adapter keys (float32).

    Args:
        learner (`dict[str, torch.Tensor]`): the prompt learner's tensors without the `prompt_learner.` prefix
            (`ctx`, `proj.weight`, `compound_prompts_text.0`, ...).

    Returns:
        `(n_ctx, depth, state_dict)` where `state_dict` is keyed like a saved `adapter_model.safetensors`.
    """
    deep = sorted(int(m.group(1)) for k in learner if (m := re.fullmatch(r"compound_prompts_text\.(\d+)", k)))
    _numbered(deep, "compound prompts (compound_prompts_text.k)", 0)
    text = {"ctx": _tensor(learner, "ctx", 2, "prompt_learner.ctx")}
    weights = {"proj.weight": _tensor(learner, "proj.weight", 2, "prompt_learner.proj.weight")}
    biases = {"proj.bias": _tensor(learner, "proj.bias", 1, "prompt_learner.proj.bias")}
    for k in deep:
        prefix = f"compound_prompt_projections.{k}"
        text[f"compound_prompts_text.{k}"] = _tensor(
            learner, f"compound_prompts_text.{k}", 2, f"prompt_learner.compound_prompts_text.{k}"
        )
        weights[f"{prefix}.weight"] = _tensor(learner, f"{prefix}.weight", 2, f"prompt_learner.{prefix}.weight")
        biases[f"{prefix}.bias"] = _tensor(learner, f"{prefix}.bias", 1, f"prompt_learner.{prefix}.bias")
    _same_shape(text, "text prompts")
    _same_shape(weights, "coupling weights")
    _same_shape(biases, "coupling biases")
    d_text = text["ctx"].shape[1]
    if weights["proj.weight"].shape[1] != d_text or biases["proj.bias"].shape[0] != weights["proj.weight"].shape[0]:
        raise ValueError(
            f"The checkpoint is malformed: the couplings are {tuple(weights['proj.weight'].shape)} with bias "
            f"{tuple(biases['proj.bias'].shape)}, but the text prompts are {d_text}-wide."
        )
    state = {
        f"{TEXT_EMBEDDING}.maple_ctx": text["ctx"],
        f"{VISION_EMBEDDING}.maple_coupling.weight": weights["proj.weight"],
        f"{VISION_EMBEDDING}.maple_coupling.bias": biases["proj.bias"],
    }
    for k in deep:
        prefix = f"compound_prompt_projections.{k}"
        state[f"{TEXT_LAYER.format(k + 1)}.maple_ctx"] = text[f"compound_prompts_text.{k}"]
        state[f"{VISION_LAYER.format(k + 1)}.maple_coupling.weight"] = weights[f"{prefix}.weight"]
        state[f"{VISION_LAYER.format(k + 1)}.maple_coupling.bias"] = biases[f"{prefix}.bias"]
    return text["ctx"].shape[0], len(deep) + 1, _final(state)


def convert_ivlp_state_dict(state: dict[str, torch.Tensor]) -> tuple[int, int, int, dict[str, torch.Tensor]]:
    """Map the prompts of a PromptSRC / IVLP checkpoint (full model state dict) to this library's `ivlp` adapter keys.

    Args:
        state (`dict[str, torch.Tensor]`): the checkpoint's `state_dict` (without a `module.` prefix).

    Returns:
        `(n_ctx, n_ctx_vision, depth, state_dict)` where `state_dict` is keyed like a saved
        `adapter_model.safetensors` (float32).
    """
    text_deep = sorted(int(m.group(1)) for k in state if (m := _TEXT_DEEP.fullmatch(k)))
    vision_deep = sorted(int(m.group(1)) for k in state if (m := _VISION_DEEP.fullmatch(k)))
    _numbered(text_deep, "deep text prompts (text_encoder.transformer.resblocks.i.VPT_shallow)", 1)
    _numbered(vision_deep, "deep vision prompts (image_encoder.transformer.resblocks.i.VPT_shallow)", 1)
    if len(text_deep) != len(vision_deep):
        raise ValueError(
            f"The checkpoint has text prompts in {len(text_deep) + 1} layers but vision prompts in "
            f"{len(vision_deep) + 1}; variant='ivlp' uses one depth for both towers, so this checkpoint (different "
            "PROMPT_DEPTH_TEXT and PROMPT_DEPTH_VISION) cannot be imported."
        )
    text = {"prompt_learner.ctx": _tensor(state, "prompt_learner.ctx", 2, "prompt_learner.ctx")}
    vision = {"image_encoder.VPT": _tensor(state, "image_encoder.VPT", 2, "image_encoder.VPT")}
    for i in text_deep:
        key = f"text_encoder.transformer.resblocks.{i}.VPT_shallow"
        text[key] = _tensor(state, key, 2, key)
        key = f"image_encoder.transformer.resblocks.{i}.VPT_shallow"
        vision[key] = _tensor(state, key, 2, key)
    _same_shape(text, "text prompts")
    _same_shape(vision, "vision prompts")
    converted = {
        f"{TEXT_EMBEDDING}.maple_ctx": text["prompt_learner.ctx"],
        f"{VISION_EMBEDDING}.maple_vision_ctx": vision["image_encoder.VPT"],
    }
    for i in text_deep:
        converted[f"{TEXT_LAYER.format(i)}.maple_ctx"] = text[f"text_encoder.transformer.resblocks.{i}.VPT_shallow"]
        converted[f"{VISION_LAYER.format(i)}.maple_vision_ctx"] = vision[
            f"image_encoder.transformer.resblocks.{i}.VPT_shallow"
        ]
    n_ctx = text["prompt_learner.ctx"].shape[0]
    n_ctx_vision = vision["image_encoder.VPT"].shape[0]
    return n_ctx, n_ctx_vision, len(text_deep) + 1, _final(converted)


def _maple_learner(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    learner: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key.removeprefix("prompt_learner.")
        if key.startswith("prompt_learner.") or "." not in key or key.startswith(("proj.", "compound_prompt")):
            if name not in _IGNORED:
                learner[name] = value
    return learner


def convert_cocoop_state_dict(learner: dict[str, torch.Tensor]) -> tuple[int, dict[str, torch.Tensor]]:
    """Map CoCoOp's prompt learner (`ctx`, `meta_net.linear{1,2}.{weight,bias}`) to this library's `cocoop` adapter
    keys (float32).

    Args:
        learner (`dict[str, torch.Tensor]`): the prompt learner's tensors, without a `prompt_learner.` prefix.

    Returns:
        `(n_ctx, state_dict)` where `state_dict` is keyed like a saved `adapter_model.safetensors`.
    """
    if "bias_vectors" in learner:
        raise ValueError(
            "The checkpoint is malformed: it holds KgCoOp's 'bias_vectors' beside CoCoOp's 'meta_net.linear2'; it "
            "is a file of neither."
        )
    ctx = _tensor(learner, "ctx", 2, "ctx")
    tensors = {key: _tensor(learner, key, 2 if key.endswith("weight") else 1, key) for key in _META_NET}
    weight1, bias1, weight2, bias2 = (tensors[key] for key in _META_NET)
    d_text, hidden = ctx.shape[1], weight1.shape[0]
    if (
        bias1.shape[0] != hidden
        or weight2.shape[1] != hidden
        or weight2.shape[0] != d_text
        or bias2.shape[0] != d_text
    ):
        shapes = ", ".join(f"{key} {tuple(value.shape)}" for key, value in tensors.items())
        raise ValueError(
            f"The checkpoint is malformed: its meta-net ({shapes}) does not map image features to the {d_text}-wide "
            f"context; expected meta_net.linear1 (h, embed_dim) + (h,), meta_net.linear2 ({d_text}, h) + ({d_text},)."
        )
    state = {f"{TEXT_EMBEDDING}.maple_ctx": ctx}
    state.update({_meta_net_key(key.removeprefix("meta_net.")): value for key, value in tensors.items()})
    return ctx.shape[0], _final(state)


def convert_coop_state_dict(learner: dict[str, torch.Tensor]) -> tuple[int, dict[str, torch.Tensor]]:
    """Map the context of a KgCoOp (or CoOp) prompt learner to this library's `language` adapter keys (float32).

    Args:
        learner (`dict[str, torch.Tensor]`): the prompt learner's tensors, without a `prompt_learner.` prefix (KgCoOp's
            unused `bias_vectors` and `meta_net.linear1` are ignored).

    Returns:
        `(n_ctx, state_dict)` where `state_dict` is keyed like a saved `adapter_model.safetensors`.
    """
    ctx = learner.get("ctx")
    if isinstance(ctx, torch.Tensor) and ctx.ndim == 3:
        raise ValueError(
            f"The checkpoint has class-specific contexts ('ctx' of shape {tuple(ctx.shape)}, trained with CSC=True); "
            "variant='language' learns one context shared by every class, so it cannot be imported."
        )
    ctx = _tensor(learner, "ctx", 2, "ctx")
    return ctx.shape[0], _final({f"{TEXT_EMBEDDING}.maple_ctx": ctx})


def convert_mmrl_state_dict(state: dict[str, torch.Tensor]) -> tuple[int, int, dict[str, torch.Tensor]]:
    """Check MMRL's trainable tensors in its checkpoint's state dict and return them as float32.

    Args:
        state (`dict[str, torch.Tensor]`): the checkpoint's `state_dict` (the whole model, without a `module.`
            prefix); the frozen CLIP weights and `prompt_embeddings` are ignored.

    Returns:
        `(n_rep, rep_dim, tensors)`, `tensors` keyed as the file keys them (`OfficialCheckpoint.adapter_state_dict`
        keys them for the adapter once `rep_layers` is known).
    """
    unknown = sorted(
        key for key in state if key.startswith(_MMRL_PREFIX) and key != _MMRL_TOKENS and not _MMRL_PROJ.fullmatch(key)
    )
    if unknown:
        raise ValueError(
            f"The checkpoint has representation-learner tensors that MMRL's code does not write ({unknown[:5]}); it "
            "was written by other code and cannot be imported."
        )
    tokens = _tensor(state, _MMRL_TOKENS, 2, _MMRL_TOKENS)
    proj_rep = _tensor(state, _MMRL_PROJ_REP, 2, _MMRL_PROJ_REP)
    tensors = {_MMRL_TOKENS: tokens, _MMRL_PROJ_REP: proj_rep}
    counts = {}
    for tower, (name, _) in _MMRL_TOWERS.items():
        numbers = sorted(
            {int(m.group(2)) for key in state if (m := _MMRL_PROJ.fullmatch(key)) and m.group(1) == tower}
        )
        _tensor(state, _mmrl_proj(tower, 0, "weight"), 2, _mmrl_proj(tower, 0, "weight"))
        _numbered(numbers, f"{name} projections (compound_rep_tokens_r2{tower}proj.k)", 0)
        weights = {
            k: _tensor(state, _mmrl_proj(tower, k, "weight"), 2, _mmrl_proj(tower, k, "weight")) for k in numbers
        }
        biases = {k: _tensor(state, _mmrl_proj(tower, k, "bias"), 1, _mmrl_proj(tower, k, "bias")) for k in numbers}
        _same_shape({_mmrl_proj(tower, k, "weight"): w for k, w in weights.items()}, f"{name} projection weights")
        _same_shape({_mmrl_proj(tower, k, "bias"): b for k, b in biases.items()}, f"{name} projection biases")
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
            f"The checkpoint is malformed: '{_MMRL_PROJ_REP}' is {tuple(proj_rep.shape)}, but the vision projections "
            f"are {d_vision}-wide; expected ({d_vision}, embed_dim)."
        )
    converted = {key: value.float().contiguous() for key, value in tensors.items()}
    return tokens.shape[0], tokens.shape[1], converted


def _mmrl_adapter_state_dict(tensors: dict[str, torch.Tensor], rep_layers: list[int]) -> dict[str, torch.Tensor]:
    """MMRL's tensors keyed for the adapter: `R` and `proj_rep` in the first representation layer of the text and vision
    tower, projection `k` in layer `rep_layers[k]` (1-based) of each tower."""
    first = rep_layers[0] - 1
    state = {
        f"{TEXT_LAYER.format(first)}.maple_rep_tokens": tensors[_MMRL_TOKENS],
        f"{VISION_LAYER.format(first)}.maple_proj_rep": tensors[_MMRL_PROJ_REP],
    }
    for k, layer in enumerate(rep_layers):
        for tower, (_, owner) in _MMRL_TOWERS.items():
            for part in ("weight", "bias"):
                state[f"{owner.format(layer - 1)}.maple_rep_proj.{part}"] = tensors[_mmrl_proj(tower, k, part)]
    return {f"base_model.model.{key}": value for key, value in state.items()}


def _is_kgcoop(learner: dict[str, Any]) -> bool:
    """KgCoOp's prompt learner holds `bias_vectors` or a square `meta_net.linear1` (`Linear(512, 512)`), and never
    CoCoOp's `meta_net.linear2`."""
    if any(key.startswith("meta_net.linear2.") for key in learner):
        return False
    linear1 = learner.get("meta_net.linear1.weight")
    square = isinstance(linear1, torch.Tensor) and linear1.ndim == 2 and linear1.shape[0] == linear1.shape[1]
    return "bias_vectors" in learner or square


def _recognize(state: dict[str, Any]) -> OfficialCheckpoint | None:
    """The adapter of a checkpoint's state dict, by the code that wrote it (recognized from its keys), or `None`."""
    learner = _maple_learner(state)
    if "ctx" in learner and "proj.weight" in learner:
        n_ctx, depth, converted = convert_official_state_dict(learner)
        return OfficialCheckpoint("MaPLe", "maple", n_ctx, None, depth, converted)
    if "prompt_learner.ctx" in state and "image_encoder.VPT" in state:
        n_ctx, n_ctx_vision, depth, converted = convert_ivlp_state_dict(state)
        return OfficialCheckpoint("PromptSRC/IVLP", "ivlp", n_ctx, n_ctx_vision, depth, converted)
    if any(key.startswith(_MMRL_PREFIX) for key in state):
        n_rep, rep_dim, converted = convert_mmrl_state_dict(state)
        return OfficialCheckpoint("MMRL", "mmrl", 0, None, None, converted, n_rep=n_rep, rep_dim=rep_dim)
    # CoOp, CoCoOp and KgCoOp save their prompt learner alone (`prompt_learner/model.pth.tar-N`)
    learner = {key.removeprefix("prompt_learner."): value for key, value in state.items()}
    if not set(learner) <= _PROMPT_LEARNER_KEYS or not set(learner) - set(_IGNORED):
        return None
    if _is_kgcoop(learner):  # before CoCoOp: KgCoOp's file holds a meta_net.linear1 too
        n_ctx, converted = convert_coop_state_dict(learner)
        return OfficialCheckpoint("KgCoOp", "language", n_ctx, None, 1, converted)
    if any(key.startswith("meta_net.") for key in learner):
        n_ctx, converted = convert_cocoop_state_dict(learner)
        return OfficialCheckpoint("CoCoOp", "cocoop", n_ctx, None, 1, converted)
    n_ctx, converted = convert_coop_state_dict(learner)
    return OfficialCheckpoint("CoOp", "language", n_ctx, None, 1, converted)


def read_official_checkpoint(checkpoint_path: str | os.PathLike) -> OfficialCheckpoint:
    """Read a `model.pth.tar-N` of the original MaPLe, PromptSRC / IVLP, CoCoOp, KgCoOp (or CoOp) or MMRL code and
    convert its trainable tensors.

    The file is read with `torch.load(..., weights_only=True)`, the objects that Dassl saves beside the weights
    (optimizer, scheduler) replaced by inert stand-ins: no pickled code runs, and `dassl` is not needed. A file that
    names `os`, `posix`, `nt` or `sys` functions is refused. The code that wrote it is recognized from its keys;
    nothing of the base model is needed (the widths are checked against it later).

    Args:
        checkpoint_path: path of the checkpoint file.

    Raises:
        `FileNotFoundError` (no such file), `IsADirectoryError` (a folder), `ValueError` (unreadable, not a checkpoint
        of the original code, or malformed), each with a one-line message.
    """
    path = os.fspath(checkpoint_path)
    if os.path.isdir(path):
        found = sorted(str(p) for p in Path(path).glob("**/model.pth.tar-*"))[:3]
        hint = f"; it contains {found}" if found else ""
        raise IsADirectoryError(
            f"{path} is a folder; pass the model.pth.tar-N file written by the original code{hint}."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint file at {path!r}.")
    stand_ins = _stand_ins(path)
    try:
        with torch.serialization.safe_globals(stand_ins):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is reported the same way
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{path} could not be read as a PyTorch checkpoint with weights_only=True: {first_line}"
        ) from error
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f"{path} holds a {type(checkpoint).__name__}, not a checkpoint of the original code (a dict with "
            "'state_dict')."
        )
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: 'state_dict' is a {type(state).__name__}, not a dict of tensors.")
    state = {str(key).removeprefix("module."): value for key, value in state.items()}
    try:
        found = _recognize(state)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    if found is None:
        raise ValueError(
            f"{path} is not a checkpoint of the original MaPLe, PromptSRC / IVLP, CoCoOp, KgCoOp, CoOp or MMRL code: "
            "its state_dict has none of their layouts (MaPLe: 'prompt_learner.ctx' with 'prompt_learner.proj.*'; "
            "PromptSRC / IVLP: 'prompt_learner.ctx' with 'image_encoder.VPT'; MMRL: 'representation_learner.*'; "
            "CoOp, CoCoOp, KgCoOp: a prompt learner alone, 'ctx' with only 'meta_net.*', 'bias_vectors', "
            f"'token_prefix', 'token_suffix'); found keys such as {sorted(state)[:5]}."
        )
    non_finite = non_finite_keys(found.state_dict)
    if non_finite:
        raise ValueError(
            f"{path}: the trained tensors hold NaN or inf values ({', '.join(k.removeprefix('base_model.model.') for k in non_finite)}); "
            "the run that wrote them probably diverged. Use an earlier checkpoint of that run."
        )
    return found


def _mmrl_config(
    converted: OfficialCheckpoint,
    clip_config: Any,
    rep_layers: list[int] | None = None,
    alpha: float | None = None,
    template: str | None = None,
    **extra: Any,
) -> MaPLeConfig:
    """The `MaPLeConfig` of an MMRL checkpoint on a base model: `rep_layers` (default: the last k text layers, k the
    file's projections per tower, as every MMRL config places them) checked against the file's projections and the
    towers; the other options validated."""
    n_text = clip_config.text_config.num_hidden_layers
    n_vision = clip_config.vision_config.num_hidden_layers
    count = converted.rep_projections
    shown = f"rep_layers={rep_layers}"
    if rep_layers is None:
        if count > n_text:
            raise ValueError(
                f"The checkpoint has a projection per tower for {count} layers, but the base model's text tower has "
                f"{n_text}; pass the CLIP the checkpoint was trained on."
            )
        rep_layers = list(range(n_text - count + 1, n_text + 1))
        shown = f"rep_layers={rep_layers} (the default: the last {count} text layers, one per projection in the file)"
    config = MaPLeConfig(
        variant="mmrl",
        n_rep=converted.n_rep,
        rep_dim=converted.rep_dim,
        rep_layers=rep_layers,
        alpha=alpha,
        template=template if template is not None else prompt_template(None),
        **extra,
    )
    if len(config.rep_layers) != count:
        example = list(range(max(1, n_text - count + 1), n_text + 1))
        raise ValueError(
            f"{shown} has {len(config.rep_layers)} layers, but the checkpoint has a projection per tower for {count} "
            f"(compound_rep_tokens_r2tproj.0 .. {count - 1}); pass the REP_LAYERS of the run that wrote it (MMRL's "
            f"configs use 6 .. 12 on ViT-B/16), e.g. rep_layers={example}."
        )
    limit = min(n_text, n_vision)
    if config.rep_layers[-1] > limit:
        raise ValueError(
            f"{shown} but the base model's towers have {n_text} (text) and {n_vision} (vision) layers; use 1-based "
            f"layer numbers up to {limit}."
        )
    return config


def _list(parts: list[str]) -> str:
    return ", ".join(parts[:-1]) + f" and {parts[-1]}" if len(parts) > 1 else parts[0]


def check_official_checkpoint_fits(
    converted: OfficialCheckpoint,
    clip_config: Any,
    rep_layers: list[int] | None = None,
    alpha: float | None = None,
    template: str | None = None,
) -> None:
    """Refuse a checkpoint trained on another CLIP (widths or depth), naming both, or options that do not fit it.

    Args:
        converted (`OfficialCheckpoint`): from `read_official_checkpoint`.
        clip_config (`CLIPConfig`): the base model's config (`CLIPConfig.from_pretrained(...)` is enough).
        rep_layers, alpha, template: MMRL's options (see `from_official_checkpoint`); refused for the other formats.
    """
    options = {"rep_layers": rep_layers, "alpha": alpha, "template": template}
    given = [f"{name}={value!r}" for name, value in options.items() if value is not None]
    if given and converted.variant != "mmrl":
        raise ValueError(
            f"{', '.join(given)} given, but these options belong to MMRL checkpoints, and this is a "
            f"{converted.source} checkpoint (variant={converted.variant!r}); leave them unset."
        )
    backbone = backbone_for_config(clip_config)
    d_text, d_vision = backbone.widths(clip_config)
    base = {"d_text": d_text, "d_vision": d_vision, "embed_dim": backbone.embed_dim(clip_config)}
    dims = converted.dims()
    if any(base[name] != value for name, value in dims.items()):
        labels = {"d_text": "text", "d_vision": "vision", "embed_dim": "image embedding"}
        got = _list([f"{value}-wide ({labels[name]})" for name, value in dims.items()])
        has = ", ".join(f"{name}={base[name]}" for name in dims)
        raise ValueError(
            f"The checkpoint's tensors are {got}, but the base model has {has}; pass the CLIP the checkpoint was "
            "trained on."
        )
    layers = min(clip_config.text_config.num_hidden_layers, clip_config.vision_config.num_hidden_layers)
    if converted.depth is not None and converted.depth > layers:
        raise ValueError(
            f"The checkpoint has prompts in {converted.depth} layers, but the base model's towers have {layers}; "
            "pass the CLIP the checkpoint was trained on."
        )
    if converted.variant == "mmrl":
        _mmrl_config(converted, clip_config, rep_layers, alpha, template)


def _prompt_init(converted: OfficialCheckpoint, prompt_init: str | None) -> str | None:
    """The `prompt_init` that gives the original's class prompts, or `None` for its placeholder `"X X ... X"`."""
    if prompt_init is None:
        return None
    if converted.variant in ("maple", "ivlp"):
        # MaPLe's and PromptSRC's code use their ctx_init only up to 4 context tokens
        return prompt_init if converted.n_ctx <= _MAX_CTX_INIT_TOKENS else None
    # CoOp, CoCoOp and KgCoOp take n_ctx from ctx_init's word count when it is set
    return prompt_init if len(prompt_init.replace("_", " ").split()) == converted.n_ctx else None


def _check_shapes(model: nn.Module, state: dict[str, torch.Tensor], adapter_name: str) -> None:
    """Refuse tensors whose shapes differ from the new adapter's (e.g. a CoCoOp meta-net of another hidden width)."""
    from peft import get_peft_model_state_dict

    expected = get_peft_model_state_dict(model, adapter_name=adapter_name)
    for key, value in state.items():
        if key in expected and expected[key].shape != value.shape:
            raise ValueError(
                f"The checkpoint's {key.removeprefix('base_model.model.')} is {tuple(value.shape)}, but the adapter "
                f"on this base model needs {tuple(expected[key].shape)}; pass the CLIP the checkpoint was trained on."
            )


def peft_model_from_official(
    base_model: nn.Module,
    converted: OfficialCheckpoint,
    prompt_init: str | None = "a photo of a",
    tokenizer_name_or_path: str | None = None,
    adapter_name: str = "default",
    class_names: list[str] | None = None,
    template: str | None = None,
    rep_layers: list[int] | None = None,
    alpha: float | None = None,
    dataset: str | None = None,
):
    """The `PeftModel` of an `OfficialCheckpoint` (see `from_official_checkpoint` for the arguments)."""
    from peft import get_peft_model, set_peft_model_state_dict

    check_official_checkpoint_fits(converted, base_model.config, rep_layers, alpha, template)
    extra: dict[str, Any] = {"class_names": list(class_names)} if class_names is not None else {}
    if dataset is not None:
        extra["dataset"] = dataset
    if converted.variant == "mmrl":
        config = _mmrl_config(converted, base_model.config, rep_layers, alpha, template, **extra)
    else:
        config = MaPLeConfig(
            n_ctx=converted.n_ctx,
            n_ctx_vision=converted.n_ctx_vision,
            depth=converted.depth,
            variant=converted.variant,
            prompt_init=_prompt_init(converted, prompt_init),
            tokenizer_name_or_path=tokenizer_name_or_path,
            **extra,
        )
    with peft_deprecation_quieted():
        model = get_peft_model(base_model, config, adapter_name=adapter_name)
    state = converted.adapter_state_dict(config.rep_layers, adapter_name)
    _check_shapes(model, state, adapter_name)
    result = set_peft_model_state_dict(model, state, adapter_name=adapter_name)
    missing = [k for k in result.missing_keys if ".maple_" in k]
    if missing:
        raise ValueError(f"The checkpoint did not fill these adapter tensors: {missing}.")
    return model


def from_official_checkpoint(
    base_model: nn.Module,
    checkpoint_path: str | os.PathLike,
    prompt_init: str | None = "a photo of a",
    tokenizer_name_or_path: str | None = None,
    adapter_name: str = "default",
    class_names: list[str] | None = None,
    template: str | None = None,
    rep_layers: list[int] | None = None,
    alpha: float | None = None,
    dataset: str | None = None,
):
    """Load a checkpoint saved by the original MaPLe, PromptSRC / IVLP, CoCoOp, KgCoOp (or CoOp) or MMRL code as a
    `PeftModel` with the same logits.

    The file (`MultiModalPromptLearner/model.pth.tar-N` for MaPLe, `VLPromptLearner/model.pth.tar-N` for PromptSRC
    and IVLP, `prompt_learner/model.pth.tar-N` for CoCoOp, KgCoOp and CoOp, `MultiModalRepresentationLearner/
    model.pth.tar-N` for MMRL) is read with `torch.load(..., weights_only=True)`, so no arbitrary pickle runs, and
    checked before the adapter is built. The code that wrote it is recognized from its keys: MaPLe gives
    `variant="maple"`, PromptSRC / IVLP `variant="ivlp"`, CoCoOp `variant="cocoop"`, KgCoOp and CoOp
    `variant="language"` with `depth=1` (CoOp, KgCoOp's model; KgCoOp's unused `bias_vectors` and `meta_net.linear1`
    are ignored), MMRL `variant="mmrl"`. `n_ctx`, `n_ctx_vision`, `depth`, `n_rep` and `rep_dim` are inferred from the
    tensors. The tensors (fp16 or fp32 in the file) are kept exactly, as float32 adapter weights, and cast to the base
    model's dtype where they enter it, like those of any adapter: the model computes in the base model's dtype and
    adds no rounding, so with a float32 base the logits and gradients equal the original's math in float32. The
    optimizer and scheduler state that Dassl saves beside the weights are never run (see `read_official_checkpoint`).
    The frozen CLIP weights, PromptSRC's zero-shot image encoder, MMRL's `prompt_embeddings` and the
    `token_prefix`/`token_suffix` buffers in the file are ignored.

    Args:
        base_model (`CLIPModel`): the CLIP the checkpoint was trained on (e.g. `openai/clip-vit-base-patch16`).
        checkpoint_path: path of the checkpoint.
        prompt_init (`str`, *optional*): the `ctx_init` the model was trained with (the prompts are
            `f"{prompt_init} {class_name}."`); `"a photo of a"` in all of the papers' configs (KgCoOp's code uses it
            whatever its config says). Like the original code, it is not used when the checkpoint's number of context
            tokens does not match it: beyond 4 tokens for MaPLe and PromptSRC / IVLP, another word count for CoCoOp,
            KgCoOp and CoOp (the prompts are then `"X X ... X {class_name}."`). Not used by MMRL (see `template`).
        tokenizer_name_or_path (`str`, *optional*): the tokenizer for `prompt_init` (defaults to the base model's).
        adapter_name (`str`): the name of the adapter.
        class_names (`list[str]`, *optional*): the class names the checkpoint was trained on, stored in the adapter
            config (`MaPLeConfig.class_names`). For MMRL they decide its test-time rule: the fused logits on these
            classes, the class-token logits on others (`PromptClassifier(rep_logits="auto")`).
        template (`str`, *optional*): MMRL: the class prompt template it was trained with (its per-dataset
            `CUSTOM_TEMPLATES`, e.g. `"{} texture."` for DTD); defaults to `"a photo of a {}."`.
        rep_layers (`list[int]`, *optional*): MMRL: its `REP_LAYERS` (1-based), which the file does not hold; defaults
            to the last k text layers, k the number of projections per tower in the file (6 .. 12 on ViT-B/16 for a
            file of 7, as all of MMRL's configs). A given list must have k layers.
        alpha (`float`, *optional*): MMRL: its `ALPHA`, the weight of the class-token logits in the fused logits,
            which the file does not hold; defaults to 0.7 (all of MMRL's configs).
        dataset (`str`, *optional*): the dataset the checkpoint was trained on, stored in the adapter config (MMRL's
            test-time rule then also fuses only on that dataset, e.g. not on ImageNet's shifted variants).

    Example:

        ```py
        >>> clip = CLIPModel.from_pretrained("openai/clip-vit-base-patch16")
        >>> model = maple_peft.from_official_checkpoint(clip, "output/imagenet/MaPLe/seed1/MultiModalPromptLearner/model.pth.tar-2")
        >>> model.save_pretrained("maple-imagenet")
        >>> mmrl = maple_peft.from_official_checkpoint(
        ...     clip, "output/dtd/MMRL/seed1/MultiModalRepresentationLearner/model.pth.tar-10",
        ...     class_names=dtd_base_classes, template="{} texture.", dataset="dtd",
        ... )
        ```
    """
    converted = read_official_checkpoint(checkpoint_path)
    return peft_model_from_official(
        base_model,
        converted,
        prompt_init=prompt_init,
        tokenizer_name_or_path=tokenizer_name_or_path,
        adapter_name=adapter_name,
        class_names=class_names,
        template=template,
        rep_layers=rep_layers,
        alpha=alpha,
        dataset=dataset,
    )
