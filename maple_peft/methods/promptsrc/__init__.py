"""PromptSRC (Khattak et al., "Self-regulating Prompts: Foundational Model Adaptation without Forgetting", ICCV 2023,
https://huggingface.co/papers/2307.06948): IVLP's prompts trained with self-regulating losses that keep the model close
to the frozen one (L1 to its text and image features, KL to its logits) and Gaussian prompt aggregation. The loss
applies to any variant; with IVLP's adapter it is PromptSRC."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import Method, register


@dataclass
class PromptSRCObjectiveOptions:
    """The options of PromptSRC's self-regulating loss (its recipes' weights as defaults)."""

    text_weight: float = field(
        default=25.0,
        metadata={"help": "src: L1 to the frozen text features", "title": "Self-regulating text weight", "off": 0.0},
    )
    image_weight: float = field(
        default=10.0,
        metadata={"help": "src: L1 to the frozen image features", "title": "Self-regulating image weight", "off": 0.0},
    )
    logits_weight: float = field(
        default=1.0,
        metadata={"help": "src: KL to the frozen logits", "title": "Self-regulating logits weight", "off": 0.0},
    )


class PromptSRC(Method):
    name = "promptsrc"
    title = "PromptSRC"
    paper = "[PromptSRC](https://arxiv.org/abs/2307.06948) (Self-regulating Prompts, Khattak et al., ICCV 2023)"
    citation = """@inproceedings{khattak2023promptsrc,
  title={Self-regulating Prompts: Foundational Model Adaptation without Forgetting},
  author={Khattak, Muhammad Uzair and Wasim, Syed Talal and Naseer, Muzammal and Khan, Salman and Yang, Ming-Hsuan and Khan, Fahad Shahbaz},
  booktitle={Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year={2023}
}"""
    recipes = ("promptsrc_base2novel", "promptsrc_cross_dataset", "promptsrc_few_shot", "maple_src_base2novel")
    is_variant = False
    objective = "src"
    objective_options = PromptSRCObjectiveOptions
    own_model = "IVLP"
    suffix = "SRC"
    trained_with = "trained with the self-regulating losses and prompt aggregation of {paper}"

    def objective_class(self) -> type:
        from .modeling import SelfRegularizedLoss

        return SelfRegularizedLoss


register(PromptSRC())
