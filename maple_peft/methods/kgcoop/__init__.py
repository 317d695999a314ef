"""KgCoOp (Yao et al., "Visual-Language Prompt Tuning with Knowledge-guided Context Optimization", CVPR 2023,
https://huggingface.co/papers/2303.13283): CoOp's prompts trained with a knowledge-guided loss, `CE + weight * (1 -
mean_c cos(t_c, g_c))`, `g_c` the frozen model's text features on the hand-written template. The loss applies to any
variant; with CoOp's adapter (`variant="language"`, `depth=1`) it is KgCoOp."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import Method, register


@dataclass
class KgCoOpObjectiveOptions:
    """The options of KgCoOp's loss."""

    kg_weight: float = field(
        default=8.0,
        metadata={"help": "kgcoop: weight of 1 - mean cos(text, frozen text)", "title": "Knowledge weight"},
    )
    kg_template: str = field(
        default="a photo of a {}.",
        metadata={
            "help": "kgcoop: template of the frozen text",
            "title": "Knowledge template",
            "shown_default": "the dataset's template",
            "dataset_template": True,  # the training script gives the dataset's template when it is unset
        },
    )


class KgCoOp(Method):
    name = "kgcoop"
    title = "KgCoOp"
    paper = "[KgCoOp](https://arxiv.org/abs/2303.13283) (Knowledge-guided Context Optimization, Yao et al., CVPR 2023)"
    citation = """@inproceedings{yao2023kgcoop,
  title={Visual-Language Prompt Tuning with Knowledge-guided Context Optimization},
  author={Yao, Hantao and Zhang, Rui and Xu, Changsheng},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2023}
}"""
    recipes = ("kgcoop_base2novel", "kgcoop_cross_dataset")
    is_variant = False
    objective = "kgcoop"
    objective_options = KgCoOpObjectiveOptions
    #: the method a card names when this loss trains CoOp's adapter; other adapters are "<name> + KgCoOp"
    own_model = "CoOp"
    suffix = "KgCoOp"
    trained_with = "trained with the knowledge-guided loss of {paper}"

    checkpoint_priority = 40
    checkpoint_files = ("KgCoOp", "a prompt learner alone, 'ctx' with 'bias_vectors' and 'meta_net.linear1.*'")
    #: what KgCoOp's prompt learner saves beside `ctx` and never uses
    learner_keys = frozenset({"ctx", "bias_vectors", "meta_net.linear1.weight", "meta_net.linear1.bias"})

    def read_checkpoint(self, state: dict[str, Any]) -> Any:
        """KgCoOp's `prompt_learner/model.pth.tar-N`: `ctx` and two tensors its model never uses, `bias_vectors` and a
        square `meta_net.linear1` (no `linear2`). Its model is CoOp: `variant="language"` with `depth=1`."""
        from ...convert import OfficialCheckpoint, prompt_learner_alone
        from ..language import convert_coop_state_dict

        learner = prompt_learner_alone(state)
        if learner is None or not is_kgcoop_learner(learner):
            return None
        n_ctx, converted = convert_coop_state_dict(learner)
        return OfficialCheckpoint("KgCoOp", "language", n_ctx, None, 1, converted)

    def objective_class(self) -> type:
        from .modeling import KnowledgeGuidedLoss

        return KnowledgeGuidedLoss


register(KgCoOp())


def is_kgcoop_learner(learner: dict[str, Any]) -> bool:
    """KgCoOp's prompt learner holds `bias_vectors` or a square `meta_net.linear1` (`Linear(512, 512)`), and never
    CoCoOp's `meta_net.linear2`."""
    import torch

    if any(key.startswith("meta_net.linear2.") for key in learner):
        return False
    linear1 = learner.get("meta_net.linear1.weight")
    square = isinstance(linear1, torch.Tensor) and linear1.ndim == 2 and linear1.shape[0] == linear1.shape[1]
    return "bias_vectors" in learner or square
