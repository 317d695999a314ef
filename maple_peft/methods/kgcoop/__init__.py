"""KgCoOp (Yao et al., "Visual-Language Prompt Tuning with Knowledge-guided Context Optimization", CVPR 2023,
https://huggingface.co/papers/2303.13283): CoOp's prompts trained with a knowledge-guided loss, `CE + weight * (1 -
mean_c cos(t_c, g_c))`, `g_c` the frozen model's text features on the hand-written template. The loss applies to any
variant; with CoOp's adapter (`variant="language"`, `depth=1`) it is KgCoOp."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    recipes = ("kgcoop_base2novel",)
    is_variant = False
    objective = "kgcoop"
    objective_options = KgCoOpObjectiveOptions
    #: the method a card names when this loss trains CoOp's adapter; other adapters are "<name> + KgCoOp"
    own_model = "CoOp"
    suffix = "KgCoOp"
    trained_with = "trained with the knowledge-guided loss of {paper}"

    def objective_class(self) -> type:
        from .modeling import KnowledgeGuidedLoss

        return KnowledgeGuidedLoss


register(KgCoOp())
