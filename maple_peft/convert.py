"""Import of the `model.pth.tar-N` checkpoints written by the original MaPLe, PromptSRC and IVLP code.

The original MaPLe code (`MultiModalPromptLearner/model.pth.tar-N`) stores its prompt learner as `prompt_learner.ctx`,
`prompt_learner.proj.*`, `prompt_learner.compound_prompts_text.{k}` and `prompt_learner.compound_prompt_projections.
{k}.*`. The PromptSRC / independent vision-language prompting code (`VLPromptLearner/model.pth.tar-N`) stores
`prompt_learner.ctx` (the first text prompt), `image_encoder.VPT` (the first vision prompt) and, for the deeper layers
`i = 1 .. depth-1`, `text_encoder.transformer.resblocks.{i}.VPT_shallow` and `image_encoder.transformer.resblocks.{i}.
VPT_shallow`. Both files also hold the frozen CLIP weights (and PromptSRC a frozen zero-shot image encoder under
`prompt_learner.ZS_image_encoder.*`), which are ignored.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import MaPLeConfig
from .model import TEXT_EMBEDDING, TEXT_LAYER, VISION_EMBEDDING, VISION_LAYER, non_finite_keys

_OPTIONAL_PREFIXES = ("module.", "prompt_learner.")
_IGNORED = ("token_prefix", "token_suffix")
#: the original code ignores its `ctx_init` (and uses the placeholder "X X ...") beyond this many context tokens
_MAX_CTX_INIT_TOKENS = 4

_TEXT_DEEP = re.compile(r"text_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow")
_VISION_DEEP = re.compile(r"image_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow")


@dataclass
class OfficialCheckpoint:
    """The adapter inside a checkpoint of the original code, converted to this library's tensors.

    Args:
        source (`str`): `"MaPLe"` or `"PromptSRC/IVLP"`: the code that wrote the file.
        variant (`str`): the `MaPLeConfig.variant` that computes the same model (`"maple"` or `"ivlp"`).
        n_ctx (`int`): number of text prompt tokens.
        n_ctx_vision (`int`, *optional*): number of vision prompt tokens (IVLP; `None` for MaPLe).
        depth (`int`): prompt depth.
        state_dict (`dict[str, torch.Tensor]`): float32 tensors keyed like a saved `adapter_model.safetensors`.
    """

    source: str
    variant: str
    n_ctx: int
    n_ctx_vision: int | None
    depth: int
    state_dict: dict[str, torch.Tensor]

    def widths(self) -> tuple[int, int]:
        """The `(d_text, d_vision)` of the CLIP the checkpoint was trained on."""
        text = self.state_dict[f"base_model.model.{TEXT_EMBEDDING}.maple_ctx"]
        if self.variant == "ivlp":
            return text.shape[1], self.state_dict[f"base_model.model.{VISION_EMBEDDING}.maple_vision_ctx"].shape[1]
        return text.shape[1], self.state_dict[f"base_model.model.{VISION_EMBEDDING}.maple_coupling.weight"].shape[0]


def _tensor(learner: dict[str, Any], key: str, ndim: int, shown: str) -> torch.Tensor:
    if key not in learner:
        raise ValueError(f"The checkpoint is malformed: it has no {shown!r}.")
    value = learner[key]
    if not isinstance(value, torch.Tensor) or value.ndim != ndim or not value.is_floating_point():
        described = (
            f"a {value.ndim}-d {value.dtype} tensor" if isinstance(value, torch.Tensor) else type(value).__name__
        )
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
        # the original vision tower inserts `self.VPT.half()`: its first vision prompt is the fp16-rounded tensor
        # whatever the training precision (a no-op for the default fp16 runs)
        f"{VISION_EMBEDDING}.maple_vision_ctx": vision["image_encoder.VPT"].half(),
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


def read_official_checkpoint(checkpoint_path: str | os.PathLike) -> OfficialCheckpoint:
    """Read a `model.pth.tar-N` of the original MaPLe or PromptSRC / IVLP code and convert its prompts.

    The file is read with `torch.load(..., weights_only=True)`: no arbitrary pickle runs. The code that wrote it is
    recognized from its keys; nothing of the base model is needed (the widths are checked against it later).

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
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is reported the same way
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{path} could not be read as a PyTorch checkpoint with weights_only=True: {first_line}"
        ) from error
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f"{path} holds a {type(checkpoint).__name__}, not a checkpoint of the original MaPLe, PromptSRC or IVLP "
            "code (a dict with 'state_dict')."
        )
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: 'state_dict' is a {type(state).__name__}, not a dict of tensors.")
    state = {str(key).removeprefix("module."): value for key, value in state.items()}
    found = None
    try:
        learner = _maple_learner(state)
        if "ctx" in learner and "proj.weight" in learner:
            n_ctx, depth, converted = convert_official_state_dict(learner)
            found = OfficialCheckpoint("MaPLe", "maple", n_ctx, None, depth, converted)
        elif "prompt_learner.ctx" in state and "image_encoder.VPT" in state:
            n_ctx, n_ctx_vision, depth, converted = convert_ivlp_state_dict(state)
            found = OfficialCheckpoint("PromptSRC/IVLP", "ivlp", n_ctx, n_ctx_vision, depth, converted)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    if found is not None:
        non_finite = non_finite_keys(found.state_dict)
        if non_finite:
            raise ValueError(
                f"{path}: the prompts hold NaN or inf values ({', '.join(k.removeprefix('base_model.model.') for k in non_finite)}); "
                "the run that wrote them probably diverged. Use an earlier checkpoint of that run."
            )
        return found
    raise ValueError(
        f"{path} is not a checkpoint of the original MaPLe, PromptSRC or IVLP code: its state_dict has neither "
        "'prompt_learner.ctx' with 'prompt_learner.proj.weight' (MaPLe) nor 'prompt_learner.ctx' with "
        f"'image_encoder.VPT' (PromptSRC / IVLP); found keys such as {sorted(state)[:5]}."
    )


def check_official_checkpoint_fits(converted: OfficialCheckpoint, clip_config: Any) -> None:
    """Refuse a checkpoint trained on another CLIP (prompt widths or depth), naming both.

    Args:
        converted (`OfficialCheckpoint`): from `read_official_checkpoint`.
        clip_config (`CLIPConfig`): the base model's config (`CLIPConfig.from_pretrained(...)` is enough).
    """
    d_text, d_vision = clip_config.text_config.hidden_size, clip_config.vision_config.hidden_size
    if converted.widths() != (d_text, d_vision):
        got_text, got_vision = converted.widths()
        raise ValueError(
            f"The checkpoint's prompts are {got_text}-wide (text) and {got_vision}-wide (vision), but the base model "
            f"has d_text={d_text}, d_vision={d_vision}; pass the CLIP the checkpoint was trained on."
        )
    layers = min(clip_config.text_config.num_hidden_layers, clip_config.vision_config.num_hidden_layers)
    if converted.depth > layers:
        raise ValueError(
            f"The checkpoint has prompts in {converted.depth} layers, but the base model's towers have {layers}; "
            "pass the CLIP the checkpoint was trained on."
        )


def peft_model_from_official(
    base_model: nn.Module,
    converted: OfficialCheckpoint,
    prompt_init: str | None = "a photo of a",
    tokenizer_name_or_path: str | None = None,
    adapter_name: str = "default",
    class_names: list[str] | None = None,
):
    """The `PeftModel` of an `OfficialCheckpoint` (see `from_official_checkpoint` for the arguments)."""
    from peft import get_peft_model, set_peft_model_state_dict

    check_official_checkpoint_fits(converted, base_model.config)
    if converted.n_ctx > _MAX_CTX_INIT_TOKENS:
        prompt_init = None  # the original code then uses the placeholder "X X ... {name}." (and a random init)
    extra = {"class_names": list(class_names)} if class_names is not None else {}
    config = MaPLeConfig(
        n_ctx=converted.n_ctx,
        n_ctx_vision=converted.n_ctx_vision,
        depth=converted.depth,
        variant=converted.variant,
        prompt_init=prompt_init,
        tokenizer_name_or_path=tokenizer_name_or_path,
        **extra,
    )
    model = get_peft_model(base_model, config, adapter_name=adapter_name)
    result = set_peft_model_state_dict(model, converted.state_dict, adapter_name=adapter_name)
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
):
    """Load a checkpoint saved by the original MaPLe, PromptSRC or IVLP code as a `PeftModel` with the same logits.

    The file (`MultiModalPromptLearner/model.pth.tar-N` for MaPLe, `VLPromptLearner/model.pth.tar-N` for PromptSRC
    and IVLP) is read with `torch.load(..., weights_only=True)`, so no arbitrary pickle runs, and checked before the
    adapter is built. The code that wrote it is recognized from its keys: MaPLe gives `variant="maple"`, PromptSRC /
    IVLP `variant="ivlp"`. `n_ctx`, `n_ctx_vision` and `depth` are inferred from the tensors; fp16 tensors become
    float32. PromptSRC / IVLP's first vision prompt is rounded to fp16, as the original vision tower does in its
    forward (`VPT.half()`), so that fp32- and amp-trained checkpoints give the original logits too. The frozen CLIP weights, PromptSRC's zero-shot image encoder and the `token_prefix`/`token_suffix`
    buffers in the file are ignored.

    Args:
        base_model (`CLIPModel`): the CLIP the checkpoint was trained on (e.g. `openai/clip-vit-base-patch16`).
        checkpoint_path: path of the checkpoint.
        prompt_init (`str`, *optional*): the `ctx_init` the model was trained with (the prompts are
            `f"{prompt_init} {class_name}."`); `"a photo of a"` in all of the papers' configs. Like the original
            code, it is not used when the checkpoint has more than 4 text context tokens (the prompts are then
            `"X X ... X {class_name}."`).
        tokenizer_name_or_path (`str`, *optional*): the tokenizer for `prompt_init` (defaults to the base model's).
        adapter_name (`str`): the name of the adapter.
        class_names (`list[str]`, *optional*): the class names the checkpoint was trained on, stored in the adapter
            config (`MaPLeConfig.class_names`).

    Example:

        ```py
        >>> clip = CLIPModel.from_pretrained("openai/clip-vit-base-patch16")
        >>> model = maple_peft.from_official_checkpoint(clip, "output/imagenet/MaPLe/seed1/MultiModalPromptLearner/model.pth.tar-2")
        >>> model.save_pretrained("maple-imagenet")
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
    )
