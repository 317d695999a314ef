"""Deep language prompting (a baseline of MaPLe) and, at `depth=1`, CoOp (Zhou et al., "Learning to Prompt for
Vision-Language Models", IJCV 2022, https://huggingface.co/papers/2109.01134): learned text prompts only, the image
encoder untouched."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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

    def display_title(self, peft_config: Mapping[str, Any]) -> str:
        return "CoOp" if peft_config.get("depth") == 1 else self.title

    def papers(self) -> dict[str, tuple[str, str]]:
        coop = f"[CoOp]({COOP_LINK}) (Context Optimization, Zhou et al., IJCV 2022)"
        return {self.title: (self.paper, self.citation), "CoOp": (coop, COOP_CITATION)}


register(LanguagePrompts())
