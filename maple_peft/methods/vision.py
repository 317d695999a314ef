"""VPT (Jia et al., "Visual Prompt Tuning", ECCV 2022, https://huggingface.co/papers/2203.12119): learned vision
prompts only, in the first `depth` layers (VPT-deep; VPT-shallow at `depth=1`), the text encoder untouched."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from . import Method, register

VPT_LINK = "https://arxiv.org/abs/2203.12119"


class VisionPrompts(Method):
    name = "vision"
    title = "VPT-deep"
    paper = f"VPT-deep ([Visual Prompt Tuning]({VPT_LINK}), Visual Prompt Tuning, Jia et al., ECCV 2022)"
    citation = """@inproceedings{jia2022vpt,
  title={Visual Prompt Tuning},
  author={Jia, Menglin and Tang, Luming and Chen, Bor-Chiang and Cardie, Claire and Belongie, Serge and Hariharan, Bharath and Lim, Ser-Nam},
  booktitle={European Conference on Computer Vision (ECCV)},
  year={2022}
}"""
    description = "learns {prompts} of the image encoder only (vision prompting baseline)."
    recipes = ("vpt_base2novel",)
    vision_prompts = True

    def display_title(self, peft_config: Mapping[str, Any]) -> str:
        return "VPT-shallow" if peft_config.get("depth") == 1 else self.title

    def papers(self) -> dict[str, tuple[str, str]]:
        shallow = self.paper.replace("VPT-deep", "VPT-shallow", 1)
        return {self.title: (self.paper, self.citation), "VPT-shallow": (shallow, self.citation)}


register(VisionPrompts())
