"""Shared-prefix text encoding: the token prefix that all class prompts share is encoded once, not once per class.

The text encoders of CLIP and MetaCLIP 2 are causal: the hidden state of a token depends only on the tokens before it.
All class prompts of an adapter start with the same tokens (`<start> ctx_1 .. ctx_n of a` for `"a photo of a {}."`),
and the text prompts, at every depth, replace positions inside that prefix only. So the prefix has the same hidden states in every
prompt, at every layer. This module runs the prefix through the text tower once (one sequence), keeps its attention
keys and values at every layer, then runs each class's own tokens attending causally to the cached prefix keys/values
and to themselves. In the last layer only the end-of-text token is computed, since only it is pooled. The result
equals the text tower's own forward up to float rounding, and gradients reach the prompts through the prefix's keys
and values.

With the default template, about half of each prompt's tokens are prefix tokens, so training steps and evaluation
text features cost about half as much on the text side (see `benchmarks/README.md`).

The encoder layer is re-expressed here from the modules of transformers' `CLIPEncoderLayer` and
`MetaClip2EncoderLayer` (pre-LayerNorm attention with `q/k/v/out_proj`, then the MLP). `shared_prefix_unsupported`
checks that the model has exactly that structure (the layer class its backbone description names) and says why not
otherwise, e.g. for SigLIP's bidirectional text encoder; the class-text encoder then runs the text tower's own
forward instead.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import backbone_of
from .layer import MaPLeTextPromptLayer, replace_text_prompt, unwrap

#: (encoder layer without the MaPLe wrapper, prefix keys, prefix values), one per layer; keys/values `(1, heads, P, d)`
PrefixCache = list[tuple[nn.Module, torch.Tensor, torch.Tensor]]


def common_prefix_length(input_ids: torch.Tensor, lengths: torch.Tensor | list[int]) -> int:
    """Number of leading tokens that all rows of `input_ids` share, leaving each prompt at least its last token.

    Args:
        input_ids (`torch.LongTensor`): `(n_prompts, longest)` token ids.
        lengths (`torch.Tensor` or `list[int]`): the length of each prompt up to and including its end-of-text token.
    """
    same = (input_ids == input_ids[:1]).all(dim=0)
    shared = int(same.int().cumprod(0).sum())
    return min(shared, int(min(lengths)) - 1)


def _text_prompt_layers(model: nn.Module) -> tuple[MaPLeTextPromptLayer | None, list[nn.Module]]:
    backbone = backbone_of(model)
    embedding = model.get_submodule(backbone.token_embedding)
    first = embedding if isinstance(embedding, MaPLeTextPromptLayer) else None
    return first, list(backbone.text_layers(model))


def active_text_prompt(model: nn.Module) -> tuple[int, int]:
    """`(n_ctx, start)`: the number of text prompt tokens the active adapter writes and the position of the first
    (`(0, 0)` without text prompts or with adapters off).

    Args:
        model (`nn.Module`): the dual encoder (with prompt layers injected, or plain).
    """
    first, layers = _text_prompt_layers(model)
    found = []
    for module in [first, *layers]:
        prompt = _prompt(module)
        if prompt is not None:
            found.append((prompt.shape[-2], module.maple_prompt_start[module.prompt_adapter()]))
    return max(found, default=(0, 0))


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def shared_prefix_unsupported(model: nn.Module, prefix_length: int, n_ctx: int, start: int = 1) -> str | None:
    """Why the shared-prefix encoding cannot be used for this model and these prompts now, or None if it can.

    Args:
        model (`nn.Module`): the dual encoder (with prompt layers injected, or plain).
        prefix_length (`int`): the number of leading tokens all prompts share (`common_prefix_length`).
        n_ctx (`int`): the number of text prompt tokens the active adapter writes.
        start (`int`): the position of the first of them.
    """
    backbone = backbone_of(model)
    if not backbone.causal_text:
        return (
            f"{backbone.display_name}'s text encoder is bidirectional (every token sees the class name), so no "
            "prefix is shared; all positions are encoded"
        )
    text_model = model.text_model
    if prefix_length < max(2, start + n_ctx):
        return (
            f"the prompts share {prefix_length} leading tokens; the {start} special token(s) and the {n_ctx} text "
            "prompt tokens after them (and at least 2 tokens) must be shared"
        )
    if type(text_model.embeddings).__name__ != backbone.text_embeddings_class_name:
        return (
            f"the text embeddings are a {type(text_model.embeddings).__name__}, not transformers' "
            f"{backbone.text_embeddings_class_name}"
        )
    for index, module in enumerate(text_model.encoder.layers):
        layer = unwrap(module)
        if type(layer).__name__ != backbone.text_layer_class_name:
            return (
                f"text encoder layer {index} is a {type(layer).__name__}, not transformers' "
                f"{backbone.text_layer_class_name}"
            )
        if _has_hooks(module) or _has_hooks(layer) or _has_hooks(layer.self_attn):
            return f"text encoder layer {index} has forward hooks, which only the model's own forward runs"
    if _has_hooks(text_model) or _has_hooks(text_model.encoder) or _has_hooks(text_model.embeddings):
        return "the text model has forward hooks, which only its own forward runs"
    if any(hasattr(module, "_hf_hook") for module in text_model.modules()):
        # accelerate's device placement / offloading (device_map) wraps the modules' own forward
        return "accelerate hooks (device_map or offloading) are attached to the text model"
    if text_model.training:
        if getattr(text_model.encoder, "gradient_checkpointing", False):
            return (
                "transformers' gradient checkpointing is on for the text encoder (use "
                "PromptClassifier(gradient_checkpointing=True) instead to checkpoint the shared-prefix encoding)"
            )
        if text_model.config.attention_dropout > 0:
            return f"attention dropout is {text_model.config.attention_dropout} in training mode"
    return None


def _heads(x: torch.Tensor, attention: nn.Module) -> torch.Tensor:
    return x.view(*x.shape[:2], -1, attention.head_dim).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def _prompt(module: Any) -> torch.Tensor | None:
    if isinstance(module, MaPLeTextPromptLayer):
        name = module.prompt_adapter()
        if name is not None:
            return module.maple_ctx[name]
    return None


def _write_prompt(module: Any, hidden: torch.Tensor) -> torch.Tensor:
    """`hidden` with the active prompt of `module` written at its positions (unchanged without one). Under a CoCoOp
    condition the single prefix row becomes one row per image, each with its own shifted context."""
    if _prompt(module) is None:
        return hidden
    name = module.prompt_adapter()
    condition = module.maple_condition
    if condition is not None and hidden.shape[0] == 1:
        hidden = hidden.expand(condition.shape[0], -1, -1)
    prompt = module.rows_prompt(name, hidden.shape[0])
    return replace_text_prompt(hidden, prompt, module.maple_prompt_start[name])


def encode_prefix(clip: nn.Module, prefix_ids: torch.Tensor) -> PrefixCache:
    """Run the shared prefix through the text tower, with the active adapter's prompts; keep its keys and values.

    Args:
        clip (`nn.Module`): the (causal) dual encoder whose text tower encodes the prefix.
        prefix_ids (`torch.LongTensor`): `(1, P)` the tokens that all prompts share, start token included.

    Returns:
        `PrefixCache`: per layer, the (unwrapped) encoder layer and the prefix's keys and values `(1, heads, P, d)`;
        `(n_images, heads, P, d)` under a CoCoOp condition (`maple_peft.layer.conditioned`), one prefix per image.
    """
    text_model = clip.text_model
    embeddings = text_model.embeddings
    first, layers = _text_prompt_layers(clip)
    hidden = _write_prompt(first, unwrap(embeddings.token_embedding)(prefix_ids))
    hidden = hidden + embeddings.position_embedding(embeddings.position_ids[:, : prefix_ids.shape[1]])
    cache: PrefixCache = []
    for module in layers:
        hidden = _write_prompt(module, hidden)
        layer = unwrap(module)
        attention = layer.self_attn
        normed = layer.layer_norm1(hidden)
        q, k, v = (_heads(proj(normed), attention) for proj in (attention.q_proj, attention.k_proj, attention.v_proj))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attention.scale)
        hidden = hidden + attention.out_proj(_merge_heads(out))
        hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
        cache.append((layer, k, v))
    return cache


def encode_suffixes(clip: nn.Module, cache: PrefixCache, suffix_ids: torch.Tensor) -> torch.Tensor:
    """Pooled, projected (not normalized) text features of prompts `prefix + suffix_ids[i]`.

    With one prefix per image in `cache` (CoCoOp), every suffix is encoded after every image's prefix: the rows of
    the result are image-major, `(n_images * n, embed_dim)`.

    Args:
        clip (`nn.Module`): the dual encoder whose text tower produced `cache`.
        cache (`PrefixCache`): from `encode_prefix`.
        suffix_ids (`torch.LongTensor`): `(n, L)` the tokens after the prefix, all of the same length, each ending
            with the end-of-text token (no padding).
    """
    text_model = clip.text_model
    embeddings = text_model.embeddings
    prefixes, _, prefix_length, _ = cache[0][1].shape
    n, length = suffix_ids.shape
    positions = embeddings.position_ids[:, prefix_length : prefix_length + length]
    hidden = unwrap(embeddings.token_embedding)(suffix_ids) + embeddings.position_embedding(positions)
    if prefixes > 1:
        hidden = hidden.repeat(prefixes, 1, 1)
    rows = hidden.shape[0]
    # suffix token i (absolute position P + i) sees the whole prefix and suffix tokens 0..i
    mask = torch.ones(length, prefix_length + length, dtype=torch.bool, device=suffix_ids.device)
    mask = mask.tril(diagonal=prefix_length)
    for index, (layer, k_prefix, v_prefix) in enumerate(cache):
        attention = layer.self_attn
        normed = layer.layer_norm1(hidden)
        k_prefix, v_prefix = (
            (t.expand(rows, -1, -1, -1) if prefixes == 1 else t.repeat_interleave(n, dim=0))
            for t in (k_prefix, v_prefix)
        )
        k = torch.cat([k_prefix, _heads(attention.k_proj(normed), attention)], dim=2)
        v = torch.cat([v_prefix, _heads(attention.v_proj(normed), attention)], dim=2)
        layer_mask = mask
        if index == len(cache) - 1:  # only the end-of-text token (the last one) is pooled
            hidden, normed, layer_mask = hidden[:, -1:], normed[:, -1:], mask[-1:]
        q = _heads(attention.q_proj(normed), attention)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=layer_mask, scale=attention.scale)
        hidden = hidden + attention.out_proj(_merge_heads(out))
        hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
    pooled = text_model.final_layer_norm(hidden[:, -1])
    return clip.text_projection(pooled)
