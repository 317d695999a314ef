"""Import of the `model.pth.tar-N` checkpoints written by the original MaPLe code."""

from __future__ import annotations

import os
import re
from typing import Any

import torch
from torch import nn

from .config import MaPLeConfig
from .model import TEXT_EMBEDDING, TEXT_LAYER, VISION_EMBEDDING, VISION_LAYER

_OPTIONAL_PREFIXES = ("module.", "prompt_learner.")
_IGNORED = ("token_prefix", "token_suffix")


def _prompt_learner_state(checkpoint: Any, path: str) -> dict[str, torch.Tensor]:
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f"{path} holds a {type(checkpoint).__name__}, not a MaPLe checkpoint (a dict with 'state_dict')."
        )
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: 'state_dict' is a {type(state).__name__}, not a dict of tensors.")
    learner: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key
        for prefix in _OPTIONAL_PREFIXES:
            name = name.removeprefix(prefix)
        if (
            key.startswith(("prompt_learner.", "module.prompt_learner."))
            or "." not in key
            or key.startswith(("proj.", "compound_prompt"))
        ):
            if name in _IGNORED:
                continue
            learner[name] = value
    if "ctx" not in learner or "proj.weight" not in learner:
        raise ValueError(
            f"{path} is not a checkpoint of the original MaPLe code: no 'prompt_learner.ctx' and "
            f"'prompt_learner.proj.weight' in its state_dict (found keys such as {sorted(state)[:5]})."
        )
    return learner


def convert_official_state_dict(learner: dict[str, torch.Tensor]) -> tuple[int, int, dict[str, torch.Tensor]]:
    """Map the original prompt learner's tensors to this library's adapter keys (float32).

    Returns:
        `(n_ctx, depth, state_dict)` where `state_dict` is keyed like a saved `adapter_model.safetensors`.
    """
    deep = sorted(int(m.group(1)) for k in learner if (m := re.fullmatch(r"compound_prompts_text\.(\d+)", k)))
    if deep != list(range(len(deep))):
        raise ValueError(f"The compound prompts are numbered {deep}; expected 0 .. {len(deep) - 1}.")
    n_ctx = learner["ctx"].shape[0]
    state = {
        f"{TEXT_EMBEDDING}.maple_ctx": learner["ctx"],
        f"{VISION_EMBEDDING}.maple_coupling.weight": learner["proj.weight"],
        f"{VISION_EMBEDDING}.maple_coupling.bias": learner["proj.bias"],
    }
    for k in deep:
        prefix = f"compound_prompt_projections.{k}"
        if f"{prefix}.weight" not in learner:
            raise ValueError(f"The checkpoint has compound_prompts_text.{k} but no {prefix}.weight.")
        state[f"{TEXT_LAYER.format(k + 1)}.maple_ctx"] = learner[f"compound_prompts_text.{k}"]
        state[f"{VISION_LAYER.format(k + 1)}.maple_coupling.weight"] = learner[f"{prefix}.weight"]
        state[f"{VISION_LAYER.format(k + 1)}.maple_coupling.bias"] = learner[f"{prefix}.bias"]
    return (
        n_ctx,
        len(deep) + 1,
        {f"base_model.model.{key}": value.float().contiguous() for key, value in state.items()},
    )


def from_official_checkpoint(
    base_model: nn.Module,
    checkpoint_path: str | os.PathLike,
    prompt_init: str | None = "a photo of a",
    tokenizer_name_or_path: str | None = None,
    adapter_name: str = "default",
):
    """Load a checkpoint saved by the original MaPLe repository as a `PeftModel` with the same logits.

    The file (`model.pth.tar-N`) is read with `torch.load(..., weights_only=True)`, so no arbitrary pickle runs.
    `n_ctx` and `depth` are inferred from the tensors; fp16 tensors become float32. The frozen CLIP weights and the
    `token_prefix`/`token_suffix` buffers in the file are ignored.

    Args:
        base_model (`CLIPModel`): the CLIP the checkpoint was trained on (e.g. `openai/clip-vit-base-patch16`).
        checkpoint_path: path of the checkpoint.
        prompt_init (`str`, *optional*): the `ctx_init` the model was trained with (the prompts are
            `f"{prompt_init} {class_name}."`); `"a photo of a"` in all of the paper's configs.
        tokenizer_name_or_path (`str`, *optional*): the tokenizer for `prompt_init` (defaults to the base model's).
        adapter_name (`str`): the name of the adapter.

    Example:

        ```py
        >>> clip = CLIPModel.from_pretrained("openai/clip-vit-base-patch16")
        >>> model = maple_peft.from_official_checkpoint(clip, "output/imagenet/MaPLe/seed1/MultiModalPromptLearner/model.pth.tar-2")
        >>> model.save_pretrained("maple-imagenet")
        ```
    """
    from peft import get_peft_model, set_peft_model_state_dict

    path = os.fspath(checkpoint_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint file at {path!r}.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ValueError(
            f"{path} could not be read as a PyTorch checkpoint with weights_only=True: {error}"
        ) from error
    n_ctx, depth, state = convert_official_state_dict(_prompt_learner_state(checkpoint, path))
    d_text = base_model.config.text_config.hidden_size
    d_vision = base_model.config.vision_config.hidden_size
    ctx = state[f"base_model.model.{TEXT_EMBEDDING}.maple_ctx"]
    proj = state[f"base_model.model.{VISION_EMBEDDING}.maple_coupling.weight"]
    if ctx.shape[1] != d_text or tuple(proj.shape) != (d_vision, d_text):
        raise ValueError(
            f"The checkpoint's prompts are {ctx.shape[1]}-wide and its coupling maps to {proj.shape[0]}, but the base "
            f"model has d_text={d_text}, d_vision={d_vision}; pass the CLIP the checkpoint was trained on."
        )
    config = MaPLeConfig(
        n_ctx=n_ctx, depth=depth, prompt_init=prompt_init, tokenizer_name_or_path=tokenizer_name_or_path
    )
    model = get_peft_model(base_model, config, adapter_name=adapter_name)
    result = set_peft_model_state_dict(model, state, adapter_name=adapter_name)
    missing = [k for k in result.missing_keys if ".maple_" in k]
    if missing:
        raise ValueError(f"The checkpoint did not fill these adapter tensors: {missing}.")
    return model
