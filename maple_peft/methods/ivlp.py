"""IVLP (independent vision-language prompting, a baseline of MaPLe, https://huggingface.co/papers/2210.03117): deep
text and vision prompts in the first `depth` layers of both towers, learned independently (no coupling). PromptSRC
trains this adapter with its own loss (`maple_peft.methods.promptsrc`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from . import Method, register
from .maple import CITATION, PAPER_LINK


class IVLP(Method):
    name = "ivlp"
    title = "IVLP"
    paper = f"IVLP (independent vision-language prompting, a baseline of [MaPLe]({PAPER_LINK}))"
    citation = CITATION
    description = (
        "learns {prompts} of both the text and the image encoder, independently (the IVLP baseline, no coupling)."
    )
    recipes = ("ivlp_base2novel",)
    text_prompts = True
    vision_prompts = True
    checkpoint_priority = 20
    checkpoint_files = ("PromptSRC / IVLP", "'prompt_learner.ctx' with 'image_encoder.VPT'")
    ctx_init_max_tokens = 4

    def read_checkpoint(self, state: dict[str, Any]) -> Any:
        """PromptSRC's and IVLP's `VLPromptLearner/model.pth.tar-N`: `prompt_learner.ctx`, `image_encoder.VPT` and,
        for the deeper layers, `{text_encoder,image_encoder}.transformer.resblocks.{i}.VPT_shallow`."""
        from ..convert import OfficialCheckpoint

        if "prompt_learner.ctx" not in state or "image_encoder.VPT" not in state:
            return None
        n_ctx, n_ctx_vision, depth, converted = convert_ivlp_state_dict(state)
        return OfficialCheckpoint("PromptSRC/IVLP", "ivlp", n_ctx, n_ctx_vision, depth, converted)

    def checkpoint_dims(self, converted: Any) -> dict[str, int]:
        from ..backbones import VISION_EMBEDDING
        from ..convert import text_width

        prompt = converted.state_dict[f"base_model.model.{VISION_EMBEDDING}.maple_vision_ctx"]
        return {"d_text": text_width(converted), "d_vision": prompt.shape[1]}


register(IVLP())


def convert_ivlp_state_dict(state: dict[str, torch.Tensor]) -> tuple[int, int, int, dict[str, torch.Tensor]]:
    """Map the prompts of a PromptSRC / IVLP checkpoint (full model state dict) to this library's `ivlp` adapter keys.

    Args:
        state (`dict[str, torch.Tensor]`): the checkpoint's `state_dict` (without a `module.` prefix).

    Returns:
        `(n_ctx, n_ctx_vision, depth, state_dict)` where `state_dict` is keyed like a saved
        `adapter_model.safetensors` (float32).
    """
    import re

    from ..backbones import TEXT_EMBEDDING, TEXT_LAYER, VISION_EMBEDDING, VISION_LAYER
    from ..convert import adapter_tensors, check_numbered, check_same_shape, checkpoint_tensor

    text_deep_key = re.compile(r"text_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow")
    vision_deep_key = re.compile(r"image_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow")

    text_deep = sorted(int(m.group(1)) for k in state if (m := text_deep_key.fullmatch(k)))
    vision_deep = sorted(int(m.group(1)) for k in state if (m := vision_deep_key.fullmatch(k)))
    check_numbered(text_deep, "deep text prompts (text_encoder.transformer.resblocks.i.VPT_shallow)", 1)
    check_numbered(vision_deep, "deep vision prompts (image_encoder.transformer.resblocks.i.VPT_shallow)", 1)
    if len(text_deep) != len(vision_deep):
        raise ValueError(
            f"The checkpoint has text prompts in {len(text_deep) + 1} layers but vision prompts in "
            f"{len(vision_deep) + 1}; variant='ivlp' uses one depth for both towers, so this checkpoint (different "
            "PROMPT_DEPTH_TEXT and PROMPT_DEPTH_VISION) cannot be imported."
        )
    text = {"prompt_learner.ctx": checkpoint_tensor(state, "prompt_learner.ctx", 2, "prompt_learner.ctx")}
    vision = {"image_encoder.VPT": checkpoint_tensor(state, "image_encoder.VPT", 2, "image_encoder.VPT")}
    for i in text_deep:
        key = f"text_encoder.transformer.resblocks.{i}.VPT_shallow"
        text[key] = checkpoint_tensor(state, key, 2, key)
        key = f"image_encoder.transformer.resblocks.{i}.VPT_shallow"
        vision[key] = checkpoint_tensor(state, key, 2, key)
    check_same_shape(text, "text prompts")
    check_same_shape(vision, "vision prompts")
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
    return n_ctx, n_ctx_vision, len(text_deep) + 1, adapter_tensors(converted)
