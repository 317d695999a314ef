"""MaPLe (Khattak et al., "MaPLe: Multi-modal Prompt Learning", CVPR 2023, https://huggingface.co/papers/2210.03117)
and its lighter ablation MaPLe†: deep text prompts in the first `depth` layers, whose vision prompts are linear
projections ("couplings") of the text prompts of the same depth: one `Linear(d_text, d_vision)` per depth (MaPLe) or
one shared by all depths (MaPLe†)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from . import Method, register

PAPER_LINK = "https://arxiv.org/abs/2210.03117"
CITATION = """@inproceedings{khattak2023maple,
  title={MaPLe: Multi-modal Prompt Learning},
  author={Khattak, Muhammad Uzair and Rasheed, Hanoona and Maaz, Muhammad and Khan, Salman and Khan, Fahad Shahbaz},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages={19113--19122},
  year={2023}
}"""


class MaPLe(Method):
    name = "maple"
    title = "MaPLe"
    paper = f"[MaPLe]({PAPER_LINK}) (Multi-modal Prompt Learning, Khattak et al., CVPR 2023)"
    citation = CITATION
    description = (
        "learns {prompts} of the text encoder, and linear coupling functions that project each text prompt into a "
        "prompt of the image encoder, so that both modalities adapt together."
    )
    recipes = ("maple_base2novel", "maple_cross_dataset")
    text_prompts = True
    vision_prompts = True
    coupling = "per_depth"
    checkpoint_priority = 10
    checkpoint_files = ("MaPLe", "'prompt_learner.ctx' with 'prompt_learner.proj.*'")
    ctx_init_max_tokens = 4

    def read_checkpoint(self, state: dict[str, Any]) -> Any:
        """`MultiModalPromptLearner/model.pth.tar-N`: `prompt_learner.ctx`, `.proj.*`, `.compound_prompts_text.{k}`
        and `.compound_prompt_projections.{k}.*`."""
        from ..convert import OfficialCheckpoint, prompt_learner_tensors

        learner = prompt_learner_tensors(state)
        if "ctx" not in learner or "proj.weight" not in learner:
            return None
        n_ctx, depth, converted = convert_maple_state_dict(learner)
        return OfficialCheckpoint("MaPLe", "maple", n_ctx, None, depth, converted)

    def checkpoint_dims(self, converted: Any) -> dict[str, int]:
        from ..backbones import VISION_EMBEDDING
        from ..convert import text_width

        weight = converted.state_dict[f"base_model.model.{VISION_EMBEDDING}.maple_coupling.weight"]
        return {"d_text": text_width(converted), "d_vision": weight.shape[0]}


class MaPLeShared(MaPLe):
    name = "maple_shared"
    title = "MaPLe†"
    paper = f"MaPLe† (one coupling function shared by all layers; an ablation of [MaPLe]({PAPER_LINK}))"
    description = (
        "learns {prompts} of the text encoder, and one linear coupling function, shared by all layers, that projects "
        "each text prompt into a prompt of the image encoder."
    )
    recipes = ()
    coupling = "shared"

    checkpoint_files = None

    def read_checkpoint(self, state: dict[str, Any]) -> Any:
        return None  # MaPLe's code has no shared coupling: its files are MaPLe's


register(MaPLe())
register(MaPLeShared())


def convert_maple_state_dict(learner: dict[str, torch.Tensor]) -> tuple[int, int, dict[str, torch.Tensor]]:
    """Map the original MaPLe prompt learner's tensors to this library's adapter keys (float32).

    Args:
        learner (`dict[str, torch.Tensor]`): the prompt learner's tensors without the `prompt_learner.` prefix
            (`ctx`, `proj.weight`, `compound_prompts_text.0`, ...).

    Returns:
        `(n_ctx, depth, state_dict)` where `state_dict` is keyed like a saved `adapter_model.safetensors`.
    """
    import re

    from ..backbones import TEXT_EMBEDDING, TEXT_LAYER, VISION_EMBEDDING, VISION_LAYER
    from ..convert import adapter_tensors, check_numbered, check_same_shape, checkpoint_tensor

    deep = sorted(int(m.group(1)) for k in learner if (m := re.fullmatch(r"compound_prompts_text\.(\d+)", k)))
    check_numbered(deep, "compound prompts (compound_prompts_text.k)", 0)
    text = {"ctx": checkpoint_tensor(learner, "ctx", 2, "prompt_learner.ctx")}
    weights = {"proj.weight": checkpoint_tensor(learner, "proj.weight", 2, "prompt_learner.proj.weight")}
    biases = {"proj.bias": checkpoint_tensor(learner, "proj.bias", 1, "prompt_learner.proj.bias")}
    for k in deep:
        prefix = f"compound_prompt_projections.{k}"
        text[f"compound_prompts_text.{k}"] = checkpoint_tensor(
            learner, f"compound_prompts_text.{k}", 2, f"prompt_learner.compound_prompts_text.{k}"
        )
        weights[f"{prefix}.weight"] = checkpoint_tensor(
            learner, f"{prefix}.weight", 2, f"prompt_learner.{prefix}.weight"
        )
        biases[f"{prefix}.bias"] = checkpoint_tensor(learner, f"{prefix}.bias", 1, f"prompt_learner.{prefix}.bias")
    check_same_shape(text, "text prompts")
    check_same_shape(weights, "coupling weights")
    check_same_shape(biases, "coupling biases")
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
    return text["ctx"].shape[0], len(deep) + 1, adapter_tensors(state)
