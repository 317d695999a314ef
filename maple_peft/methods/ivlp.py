"""IVLP (independent vision-language prompting, a baseline of MaPLe, https://huggingface.co/papers/2210.03117): deep
text and vision prompts in the first `depth` layers of both towers, learned independently (no coupling). PromptSRC
trains this adapter with its own loss (`maple_peft.methods.promptsrc`)."""

from __future__ import annotations

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


register(IVLP())
