"""A plain re-implementation of MMRL++, for the tests to compare the package against.

Written from the equations of the original code (Guo & Gu, "MMRL++: Parameter-Efficient and Interaction-Aware
Representation Learning for Vision-Language Models", IJCV 2026; github.com/yunncheng/MMRL, `trainers/mmrlpp.py` and
`clip/model_mmrlpp.py`), in the style of `reference_methods.py` (MMRL): explicit loops over the layers of an untouched
transformers dual encoder, attention computed by hand, the trainable tensors given as plain tensors keyed as the
original's checkpoints (`MultiModalRepresentationLearner/model.pth.tar-N`) key them:

- `representation_learner.compound_rep_tokens` `(n_rep, rep_dim)`: the representation tokens `R`;
- `representation_learner.srra_r2{t,v}proj.weight` `(d, rep_dim)`: the Shared-Residual Representation Aligner's shared
  weight `W` of each tower (t: text, v: vision);
- `representation_learner.srra_r2{t,v}proj.srra.{k}.{A,B,bias}` `(d, r)`, `(r, rep_dim)`, `(d,)`: layer `k`'s residual
  (`r` = `RES_LORA_DIM`) and its own bias; layer `k` maps `R` to `R (W + A_k B_k)^T + bias_k`;
- `image_encoder.A` `(d_vision, p)`, `image_encoder.B` `(p, embed_dim)` (`p` = `PROJ_LORA_DIM`): the representation
  path's projection is the frozen visual projection plus `A B`.

Progressive Representation Composition: at the first layer of `rep_layers` the mapped tokens are inserted after the
first token (text: the start token, vision: the class token); at each later layer of `rep_layers` the tokens there
become `beta * (mapped tokens) + (1 - beta) * (the tokens coming out of the previous layer)`. The rest (the causal
mask over the longer text sequence, pooling, `100 cos` logits, fusion with `alpha`, the loss) is MMRL's.

They compute in the model's dtype (float32 in the tests), without the fp16 / amp rounding of the original's precisions.
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn.functional as F
from reference_methods import (
    MMRL_LOGIT_SCALE,
    normalize,
    representation_image_embeds,
    representation_loss,
    representation_text_embeds,
)

TOKENS = "representation_learner.compound_rep_tokens"


def aligner_key(tower: str, k: int | None = None, part: str = "weight") -> str:
    """The checkpoint key of a tower's (`"t"` / `"v"`) shared weight (`k` None) or of layer `k`'s `A`, `B`, `bias`."""
    prefix = f"representation_learner.srra_r2{tower}proj"
    return f"{prefix}.weight" if k is None else f"{prefix}.srra.{k}.{part}"


def mmrlpp_aligned_tokens(learner: dict[str, torch.Tensor], tower: str, n_layers: int) -> list[torch.Tensor]:
    """The representation tokens mapped to one tower, one `(n_rep, d)` per layer of `rep_layers`:
    `R (W + A_k B_k)^T + bias_k`."""
    rep, shared = learner[TOKENS], learner[aligner_key(tower)]
    tokens = []
    for k in range(n_layers):
        weight = shared + learner[aligner_key(tower, k, "A")] @ learner[aligner_key(tower, k, "B")]
        tokens.append(F.linear(rep, weight, learner[aligner_key(tower, k, "bias")]))
    return tokens


def _compose(x: torch.Tensor, tokens: torch.Tensor, first: bool, beta: float) -> torch.Tensor:
    """`[x_0, tokens, x_1 ..]` at the first representation layer; later, the tokens at `1 .. n` become `beta tokens +
    (1 - beta) x_{1..n}`."""
    n = tokens.shape[0]
    tokens = tokens.expand(x.shape[0], -1, -1)
    if first:
        return torch.cat([x[:, :1], tokens, x[:, 1:]], dim=1)
    return torch.cat([x[:, :1], beta * tokens + (1 - beta) * x[:, 1 : 1 + n], x[:, 1 + n :]], dim=1)


def mmrlpp_text_embeds(clip, input_ids, learner, rep_layers: list[int], beta: float) -> torch.Tensor:
    """MMRL++'s text features `(n_cls, embed_dim)` (no position embedding on the tokens, causal mask over the longer
    sequence, pooled at end-of-text + n_rep)."""
    assert rep_layers, "MMRL++ needs at least one representation layer"
    tokens = mmrlpp_aligned_tokens(learner, "t", len(rep_layers))
    return representation_text_embeds(clip, input_ids, tokens, rep_layers, partial(_compose, beta=beta))


def mmrlpp_proj_rep(clip, learner: dict[str, torch.Tensor]) -> torch.Tensor:
    """The representation path's projection `(d_vision, embed_dim)`: CLIP's frozen visual projection + `A B`."""
    return clip.visual_projection.weight.t() + learner["image_encoder.A"] @ learner["image_encoder.B"]


def mmrlpp_image_embeds(clip, pixel_values, learner, rep_layers: list[int], beta: float):
    """MMRL++'s image features `(class path, representation path)`, each `(batch, embed_dim)`: `post_layernorm(x_0)`
    through CLIP's projection, and `mean_j post_layernorm(x_j)` over the n_rep tokens through `mmrlpp_proj_rep`."""
    assert rep_layers, "MMRL++ needs at least one representation layer"
    tokens = mmrlpp_aligned_tokens(learner, "v", len(rep_layers))
    place = partial(_compose, beta=beta)
    return representation_image_embeds(clip, pixel_values, tokens, rep_layers, place, mmrlpp_proj_rep(clip, learner))


def mmrlpp_logits(clip, input_ids, pixel_values, learner, rep_layers, alpha: float = 0.7, beta: float = 0.9):
    """MMRL++'s `(logits, logits_rep, logits_fusion, image_features, text_features)` (features normalised), as MMRL's:
    `100 cos` on each path, `fusion = alpha logits + (1 - alpha) logits_rep`."""
    text = normalize(mmrlpp_text_embeds(clip, input_ids, learner, rep_layers, beta))
    image, image_rep = (normalize(f) for f in mmrlpp_image_embeds(clip, pixel_values, learner, rep_layers, beta))
    logits = MMRL_LOGIT_SCALE * image @ text.t()
    logits_rep = MMRL_LOGIT_SCALE * image_rep @ text.t()
    return logits, logits_rep, alpha * logits + (1 - alpha) * logits_rep, image, text


def mmrlpp_loss(
    clip, input_ids, pixel_values, learner, rep_layers, labels, alpha=0.7, beta=0.9, reg_weight=1.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """MMRL++'s loss (`MMRLpp_Loss`, MMRL's): `alpha CE(logits) + (1 - alpha) CE(logits_rep) + reg_weight (1 - mean
    cos(image, image_clip)) + reg_weight (1 - mean cos(text, text_clip))`, frozen CLIP's features on the same images
    and template prompts; returns `(loss, terms, fusion)`."""
    outputs = mmrlpp_logits(clip, input_ids, pixel_values, learner, rep_layers, alpha, beta)
    return representation_loss(clip, input_ids, pixel_values, outputs, labels, alpha, reg_weight)


def mmrlpp_trainable(key: str) -> bool:
    """Whether the original trains the tensor of checkpoint key `key`: its trainer turns on the gradients of the names
    containing `representation_learner`, `image_encoder.proj_rep` (none in MMRL++), `image_encoder.A` or
    `image_encoder.B`; the visual projection `image_encoder.proj` stays frozen."""
    return any(
        part in key
        for part in ("representation_learner", "image_encoder.proj_rep", "image_encoder.A", "image_encoder.B")
    )


def kaiming_bound(fan_in: int) -> float:
    """The bound of `nn.init.kaiming_uniform_(t, a=math.sqrt(5))` for a tensor with `fan_in` columns (PyTorch's
    default `Linear` weight initialisation): `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`."""
    gain = math.sqrt(2.0 / (1 + 5))
    return gain * math.sqrt(3.0 / fan_in)
