"""MMRL++ (Guo & Gu, "MMRL++: Parameter-Efficient and Interaction-Aware Representation Learning for Vision-Language
Models", IJCV 2026, https://arxiv.org/abs/2505.10088): MMRL with fewer trainable tensors and representation tokens that
flow from layer to layer.

Against MMRL (`maple_peft.methods.mmrl`): each tower maps the representation tokens `R` into layer `k` of `rep_layers`
with a Shared-Residual Representation Aligner, `R (W + A_k B_k)^T + b_k` (one `W` per tower; a rank-`res_lora_dim`
residual and a bias per layer); at the later layers of `rep_layers` the tokens become `beta * (aligned tokens) + (1 -
beta) * (the tokens out of the previous layer)` (Progressive Representation Composition) instead of being replaced;
the representation path's projection is CLIP's frozen visual projection plus a rank-`proj_lora_dim` term `A B`. The
logits, the test-time rule and the loss are MMRL's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import register
from ..mmrl import MMRL, MMRLOptions


@dataclass
class MMRLppOptions(MMRLOptions):
    """The adapter options of MMRL++: MMRL's, and three of its own (its configs' values as defaults)."""

    beta: float = field(
        default=0.9,
        metadata={
            "help": "mmrlpp: weight of the aligned tokens against the previous layer's ones at the later "
            "representation layers",
            "title": "Composition weight (beta)",
            "checkpoint_help": "its BETA (default: its scripts' value for --dataset, else 0.9)",
            "test_time": True,  # read at each pass: the original evaluates each cross-dataset target with its own
        },
    )
    proj_lora_dim: int = field(
        default=64,
        metadata={
            "help": "mmrlpp: rank of the term added to the frozen image projection of the representation path",
            "title": "Projection rank (proj_lora_dim)",
        },
    )
    res_lora_dim: int = field(
        default=4,
        metadata={
            "help": "mmrlpp: rank of each layer's residual on its tower's shared aligner weight",
            "title": "Aligner residual rank (res_lora_dim)",
        },
    )


class MMRLpp(MMRL):
    name = "mmrlpp"
    title = "MMRL++"
    paper = (
        "[MMRL++](https://arxiv.org/abs/2505.10088) (Parameter-Efficient and Interaction-Aware Representation "
        "Learning, Guo & Gu, IJCV 2026)"
    )
    citation = """@article{guo2026mmrlpp,
  title={MMRL++: Parameter-Efficient and Interaction-Aware Representation Learning for Vision-Language Models},
  author={Guo, Yuncheng and Gu, Xiaodong},
  journal={International Journal of Computer Vision},
  year={2026}
}"""
    description = (
        "learns representation tokens shared by both encoders, mapped into their later layers by one shared "
        "projection per encoder plus a low-rank residual per layer and mixed with the previous layer's tokens, and a "
        "low-rank update of the frozen image projection (MMRL++); the class prompts are the hand-written template."
    )
    recipes = ("mmrlpp_base2novel", "mmrlpp_cross_dataset", "mmrlpp_few_shot")
    options = MMRLppOptions
    objective = None  # it defines no loss of its own:
    objective_options = None
    default_objective = "mmrl"  # it trains with MMRL's (the original's MMRLpp_Loss is the same)

    counts = (*MMRL.counts, "proj_lora_dim", "res_lora_dim")
    weights = (*MMRL.weights, "beta")

    # ---- the original code's checkpoints (asked before MMRL's, whose files share the representation learner) -------

    checkpoint_priority = 25
    checkpoint_files = (
        "MMRL++",
        "'representation_learner.srra_r2tproj.weight' with 'image_encoder.A', 'image_encoder.B'",
    )


register(MMRLpp())
