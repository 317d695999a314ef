"""Plain re-implementations of CoCoOp, KgCoOp and MMRL, for the tests to compare the package against.

Written from the equations of the original code (CoOp's `trainers/cocoop.py`, KgCoOp's `trainers/kgcoop.py`, MMRL's
`trainers/mmrl.py` and `clip/model_mmrl.py`), like `reference.py` is for MaPLe: explicit loops over the layers of an
untouched transformers `CLIPModel`, attention computed by hand, the trainable tensors given as plain tensors keyed as
the original code's checkpoints key them. They use none of the package's wrappers. They compute in the model's dtype
(float32 in the tests): the originals' math, without the fp16 rounding of their default precisions.

Token ids are CLIP's, padded to the context length (77); the end-of-text token is the highest id of a row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from reference import _block, reference_image_embeds, reference_text_embeds

#: MMRL's logits are `100 * cos`, a fixed scale (not CLIP's `logit_scale`)
MMRL_LOGIT_SCALE = 100.0


def causal_mask(length: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The additive `(length, length)` mask of CLIP's text tower: -inf above the diagonal."""
    return torch.full((length, length), float("-inf"), dtype=dtype).triu(1)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def cosine(a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """Row-wise cosine as `torch.nn.CosineSimilarity(dim=1, eps=eps)` computes it: each norm clamped at `eps`."""
    return (a * b).sum(-1) / (a.norm(dim=-1).clamp_min(eps) * b.norm(dim=-1).clamp_min(eps))


def pooled_position(clip, input_ids: torch.Tensor) -> torch.Tensor:
    """Where the text is pooled: the end-of-text token (CLIP's highest id; MetaCLIP 2's first `eos_token_id`)."""
    if clip.config.model_type == "metaclip_2":
        return (input_ids == clip.config.text_config.eos_token_id).int().argmax(dim=-1)
    return input_ids.argmax(dim=-1)


def text_embeds_from_token_embeds(clip, token_embeds: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """CLIP's text tower on given token embeddings `(n, L, d_text)`: position embeddings added, causal layers, final
    layer norm, pooled at the end-of-text token of `input_ids`, projected (CoOp's `TextEncoder`)."""
    tm = clip.text_model
    length = token_embeds.shape[1]
    x = token_embeds + tm.embeddings.position_embedding.weight[:length]
    mask = causal_mask(length, x.dtype)
    for layer in tm.encoder.layers:
        x = _block(layer, x, mask)
    x = tm.final_layer_norm(x)
    return clip.text_projection(x[torch.arange(x.shape[0]), pooled_position(clip, input_ids)])


# ---- CoCoOp (Zhou et al., CVPR 2022; CoOp repository, trainers/cocoop.py) -------------------------------------------


def cocoop_meta_net(learner: dict[str, torch.Tensor], image_features: torch.Tensor) -> torch.Tensor:
    """`linear2(relu(linear1(f)))`: the shift `pi` `(batch, d_text)` of the context, from normalised image features."""
    hidden = F.relu(image_features @ learner["meta_net.linear1.weight"].t() + learner["meta_net.linear1.bias"])
    return hidden @ learner["meta_net.linear2.weight"].t() + learner["meta_net.linear2.bias"]


def cocoop_logits(clip, input_ids: torch.Tensor, pixel_values: torch.Tensor, learner: dict[str, torch.Tensor]):
    """CoCoOp's logits `(batch, n_cls)`.

    Args:
        input_ids: `(n_cls, 77)` the ids of `"{ctx words or X X ..} {name}."`; positions `1..n_ctx` are replaced.
        learner: the prompt learner's tensors as the original saves them: `ctx` `(n_ctx, d_text)`,
            `meta_net.linear1.{weight,bias}`, `meta_net.linear2.{weight,bias}`.
    """
    ctx = learner["ctx"]
    n_ctx = ctx.shape[0]
    image = normalize(reference_image_embeds(clip, pixel_values, []))
    shift = cocoop_meta_net(learner, image)
    tokens = clip.text_model.embeddings.token_embedding.weight[input_ids]
    scale = clip.logit_scale.exp()
    rows = []
    for image_i, shift_i in zip(image, shift):  # each image has its own context, for every class
        ctx_i = (ctx + shift_i).expand(input_ids.shape[0], -1, -1)
        embeds = torch.cat([tokens[:, :1], ctx_i, tokens[:, 1 + n_ctx :]], dim=1)
        text = normalize(text_embeds_from_token_embeds(clip, embeds, input_ids))
        rows.append(scale * image_i @ text.t())
    return torch.stack(rows)


def cocoop_loss(clip, input_ids, pixel_values, learner, labels) -> torch.Tensor:
    """CoCoOp's training loss: cross-entropy of its logits."""
    return F.cross_entropy(cocoop_logits(clip, input_ids, pixel_values, learner), labels)


# ---- KgCoOp (Yao et al., CVPR 2023; trainers/kgcoop.py) -----------------------------------------------------------

#: KgCoOp's `torch.nn.CosineSimilarity(dim=1, eps=1e-07)`
KGCOOP_EPS = 1e-7


def kgcoop_loss(
    clip,
    input_ids: torch.Tensor,
    pixel_values: torch.Tensor,
    learner: dict[str, torch.Tensor],
    template_ids: torch.Tensor,
    labels: torch.Tensor,
    weight: float = 8.0,
):
    """KgCoOp's loss `CE(logits, y) + weight * (1 - mean_c cos(t_c, g_c))`, its logits and the score.

    Args:
        input_ids: `(n_cls, 77)` the ids of `"a photo of a {name}."` (CoOp's prompts; positions 1..n_ctx replaced).
        learner: `{"ctx": (n_ctx, d_text)}` (the file's `bias_vectors` and `meta_net.linear1` are unused).
        template_ids: `(n_cls, 77)` the ids of the dataset's hand-written template for each class.
        weight: the `TRAINER.COOP.W` of its scripts (8.0).

    Returns:
        `(loss, logits, score)` with `score = 1 - mean_c cos(t_c, g_c)`: `t_c` CoOp's class features, `g_c` frozen
        CLIP's on the template, both normalised.
    """
    text = normalize(reference_text_embeds(clip, input_ids, [learner["ctx"]]))
    image = normalize(reference_image_embeds(clip, pixel_values, []))
    logits = clip.logit_scale.exp() * image @ text.t()
    with torch.no_grad():
        frozen = normalize(reference_text_embeds(clip, template_ids, []))
    score = 1.0 - cosine(text, frozen, KGCOOP_EPS).mean()
    return F.cross_entropy(logits, labels) + weight * score, logits, score


# ---- MMRL (Guo et al., CVPR 2025; trainers/mmrl.py, clip/model_mmrl.py) --------------------------------------------


def _mmrl_insert(x: torch.Tensor, tokens: torch.Tensor, first: bool) -> torch.Tensor:
    """`[x_0, tokens, x_1 ..]` at the first representation layer, `[x_0, tokens, x_{1+n} ..]` at later ones."""
    n = tokens.shape[0]
    rest = x[:, 1:] if first else x[:, 1 + n :]
    return torch.cat([x[:, :1], tokens.expand(x.shape[0], -1, -1), rest], dim=1)


def mmrl_projected_tokens(learner: dict[str, torch.Tensor], tower: str, n_layers: int) -> list[torch.Tensor]:
    """The representation tokens mapped to one tower (`"t"` text, `"v"` vision), one `(n_rep, d)` per rep layer."""
    rep = learner["representation_learner.compound_rep_tokens"]
    prefix = f"representation_learner.compound_rep_tokens_r2{tower}proj"
    return [rep @ learner[f"{prefix}.{k}.weight"].t() + learner[f"{prefix}.{k}.bias"] for k in range(n_layers)]


def mmrl_text_embeds(clip, input_ids: torch.Tensor, learner: dict[str, torch.Tensor], rep_layers: list[int]):
    """MMRL's text features `(n_cls, embed_dim)`: the projected representation tokens enter after the start token at
    the input of text layer `rep_layers[0]` (1-based), replace those positions at the later layers of `rep_layers`;
    no position embedding on them, causal mask over the longer sequence, pooled at end-of-text + n_rep."""
    assert rep_layers, "MMRL needs at least one representation layer"
    tokens = mmrl_projected_tokens(learner, "t", len(rep_layers))
    return representation_text_embeds(clip, input_ids, tokens, rep_layers, _mmrl_insert)


def mmrl_image_embeds(clip, pixel_values: torch.Tensor, learner: dict[str, torch.Tensor], rep_layers: list[int]):
    """MMRL's image features: `(class path, representation path)`, each `(batch, embed_dim)`.

    The projected tokens enter after the class token (after `pre_layrnorm`) at the input of vision layer
    `rep_layers[0]` and replace those positions at the later rep layers. Class path: `post_layernorm(x_0)` through
    CLIP's projection; representation path: `mean_j post_layernorm(x_j)` over the n_rep tokens, times `proj_rep`
    (`(d_vision, embed_dim)`, the file's `image_encoder.proj_rep`).
    """
    assert rep_layers, "MMRL needs at least one representation layer"
    tokens = mmrl_projected_tokens(learner, "v", len(rep_layers))
    return representation_image_embeds(
        clip, pixel_values, tokens, rep_layers, _mmrl_insert, learner["image_encoder.proj_rep"]
    )


def representation_text_embeds(clip, input_ids, tokens: list[torch.Tensor], rep_layers: list[int], place):
    """The text pass of MMRL's family: at the input of each layer of `rep_layers`, `place(x, tokens[k], first)` puts
    that layer's tokens `(n_rep, d_text)` into the sequence (MMRL inserts, then replaces; MMRL++ composes); causal mask
    over the longer sequence, pooled at end-of-text + n_rep."""
    tm = clip.text_model
    length = input_ids.shape[1]
    x = tm.embeddings.token_embedding.weight[input_ids] + tm.embeddings.position_embedding.weight[:length]
    counter = 0
    for index, layer in enumerate(tm.encoder.layers):
        if index + 1 in rep_layers:
            x = place(x, tokens[counter], index + 1 == rep_layers[0])
            counter += 1
        x = _block(layer, x, causal_mask(x.shape[1], x.dtype))
    x = tm.final_layer_norm(x)
    n_rep = tokens[0].shape[0]
    return clip.text_projection(x[torch.arange(x.shape[0]), pooled_position(clip, input_ids) + n_rep])


def representation_image_embeds(clip, pixel_values, tokens, rep_layers: list[int], place, proj_rep: torch.Tensor):
    """The vision pass of MMRL's family, `(class path, representation path)`: the tokens placed as in
    `representation_text_embeds` after the class token; `post_layernorm(x_0)` through CLIP's projection, and `mean_j
    post_layernorm(x_j)` over the n_rep tokens times `proj_rep` `(d_vision, embed_dim)`."""
    vm = clip.vision_model
    emb = vm.embeddings
    patches = emb.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
    cls = emb.class_embedding.expand(pixel_values.shape[0], 1, -1)
    x = vm.pre_layrnorm(torch.cat([cls, patches], dim=1) + emb.position_embedding.weight)
    counter = 0
    for index, layer in enumerate(vm.encoder.layers):
        if index + 1 in rep_layers:
            x = place(x, tokens[counter], index + 1 == rep_layers[0])
            counter += 1
        x = _block(layer, x, None)
    n_rep = tokens[0].shape[0]
    image = clip.visual_projection(vm.post_layernorm(x[:, 0]))
    image_rep = vm.post_layernorm(x[:, 1 : 1 + n_rep]).mean(dim=1) @ proj_rep
    return image, image_rep


def mmrl_logits(clip, input_ids, pixel_values, learner, rep_layers, alpha: float = 0.7):
    """MMRL's `(logits, logits_rep, logits_fusion, image_features, text_features)` (features normalised).

    `logits = 100 cos(image, text)` (class path), `logits_rep = 100 cos(image_rep, text)`, `fusion = alpha logits +
    (1 - alpha) logits_rep`. The original evaluates with the fusion on the classes it was trained on (base classes;
    ImageNet as the cross-dataset source; few-shot) and with the class path elsewhere.
    """
    text = normalize(mmrl_text_embeds(clip, input_ids, learner, rep_layers))
    image, image_rep = (normalize(f) for f in mmrl_image_embeds(clip, pixel_values, learner, rep_layers))
    logits = MMRL_LOGIT_SCALE * image @ text.t()
    logits_rep = MMRL_LOGIT_SCALE * image_rep @ text.t()
    return logits, logits_rep, alpha * logits + (1 - alpha) * logits_rep, image, text


def mmrl_loss(clip, input_ids, pixel_values, learner, rep_layers, labels, alpha: float = 0.7, reg_weight: float = 1.0):
    """MMRL's loss and its terms.

    `alpha CE(logits) + (1 - alpha) CE(logits_rep) + reg_weight (1 - mean cos(image, image_clip)) + reg_weight (1 -
    mean cos(text, text_clip))`: `image_clip` frozen CLIP's image features, `text_clip` frozen CLIP's text features on
    the same template prompts (`input_ids`), all normalised; `F.cosine_similarity`'s default eps (1e-8).
    """
    outputs = mmrl_logits(clip, input_ids, pixel_values, learner, rep_layers, alpha)
    return representation_loss(clip, input_ids, pixel_values, outputs, labels, alpha, reg_weight)


def representation_loss(clip, input_ids, pixel_values, outputs, labels, alpha: float, reg_weight: float):
    """The loss of MMRL (and of MMRL++, whose `MMRLpp_Loss` is the same) from the model's `outputs` `(logits,
    logits_rep, fusion, image, text)`: see `mmrl_loss`."""
    logits, logits_rep, fusion, image, text = outputs
    with torch.no_grad():
        image_clip = normalize(reference_image_embeds(clip, pixel_values, []))
        text_clip = normalize(reference_text_embeds(clip, input_ids, []))
    terms = {
        "ce": F.cross_entropy(logits, labels),
        "ce_rep": F.cross_entropy(logits_rep, labels),
        "reg_image": 1 - cosine(image, image_clip, 1e-8).mean(),
        "reg_text": 1 - cosine(text, text_clip, 1e-8).mean(),
    }
    loss = (
        alpha * terms["ce"]
        + (1 - alpha) * terms["ce_rep"]
        + reg_weight * terms["reg_image"]
        + reg_weight * terms["reg_text"]
    )
    return loss, terms, fusion
