"""Deep language prompting (a baseline of MaPLe) and, at `depth=1`, CoOp (Zhou et al., "Learning to Prompt for
Vision-Language Models", IJCV 2022, https://huggingface.co/papers/2109.01134): learned text prompts only, the image
encoder untouched."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from . import Method, register
from .maple import CITATION as MAPLE_CITATION
from .maple import PAPER_LINK as MAPLE_LINK

COOP_LINK = "https://arxiv.org/abs/2109.01134"
COOP_CITATION = """@article{zhou2022coop,
  title={Learning to Prompt for Vision-Language Models},
  author={Zhou, Kaiyang and Yang, Jingkang and Loy, Chen Change and Liu, Ziwei},
  journal={International Journal of Computer Vision (IJCV)},
  year={2022}
}"""


class LanguagePrompts(Method):
    name = "language"
    title = "Deep language prompting"
    paper = f"deep language prompting (a baseline of [MaPLe]({MAPLE_LINK}))"
    citation = MAPLE_CITATION
    description = "learns {prompts} of the text encoder only (language prompting baseline)."
    recipes = ("language_base2novel", "coop_base2novel")
    text_prompts = True
    checkpoint_priority = 60
    checkpoint_files = ("CoOp", "a prompt learner alone, 'ctx' with only 'token_prefix', 'token_suffix'")
    learner_keys = frozenset({"ctx"})

    def read_checkpoint(self, state: dict[str, Any]) -> Any:
        """CoOp's `prompt_learner/model.pth.tar-N`: its context `ctx` alone."""
        from ..convert import OfficialCheckpoint, prompt_learner_alone

        learner = prompt_learner_alone(state)
        if learner is None:
            return None
        n_ctx, converted = convert_coop_state_dict(learner)
        return OfficialCheckpoint("CoOp", "language", n_ctx, None, 1, converted)

    def display_title(self, peft_config: Mapping[str, Any]) -> str:
        return "CoOp" if peft_config.get("depth") == 1 else self.title

    def papers(self) -> dict[str, tuple[str, str]]:
        coop = f"[CoOp]({COOP_LINK}) (Context Optimization, Zhou et al., IJCV 2022)"
        return {self.title: (self.paper, self.citation), "CoOp": (coop, COOP_CITATION)}


register(LanguagePrompts())


def convert_coop_state_dict(learner: dict[str, torch.Tensor]) -> tuple[int, dict[str, torch.Tensor]]:
    """Map the context of a KgCoOp (or CoOp) prompt learner to this library's `language` adapter keys (float32).

    Args:
        learner (`dict[str, torch.Tensor]`): the prompt learner's tensors, without a `prompt_learner.` prefix (KgCoOp's
            unused `bias_vectors` and `meta_net.linear1` are ignored).

    Returns:
        `(n_ctx, state_dict)` where `state_dict` is keyed like a saved `adapter_model.safetensors`.
    """
    import torch

    from ..backbones import TEXT_EMBEDDING
    from ..convert import adapter_tensors, checkpoint_tensor

    ctx = learner.get("ctx")
    if isinstance(ctx, torch.Tensor) and ctx.ndim == 3:
        raise ValueError(
            f"The checkpoint has class-specific contexts ('ctx' of shape {tuple(ctx.shape)}, trained with CSC=True); "
            "variant='language' learns one context shared by every class, so it cannot be imported."
        )
    ctx = checkpoint_tensor(learner, "ctx", 2, "ctx")
    return ctx.shape[0], adapter_tensors({f"{TEXT_EMBEDDING}.maple_ctx": ctx})
