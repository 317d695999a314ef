"""MaPLe (Khattak et al., "MaPLe: Multi-modal Prompt Learning", CVPR 2023, https://huggingface.co/papers/2210.03117)
and its lighter ablation MaPLe†: deep text prompts in the first `depth` layers, whose vision prompts are linear
projections ("couplings") of the text prompts of the same depth: one `Linear(d_text, d_vision)` per depth (MaPLe) or
one shared by all depths (MaPLe†)."""

from __future__ import annotations

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
    recipes = ("maple_base2novel", "maple_cross_dataset", "maple_src_base2novel")
    text_prompts = True
    vision_prompts = True
    coupling = "per_depth"


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


register(MaPLe())
register(MaPLeShared())
