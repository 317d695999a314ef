"""Shared-prefix text encoding: the token prefix that all class prompts share is encoded once, not once per class.

CLIP's text encoder is causal: the hidden state of a token depends only on the tokens before it. All class prompts of
an adapter start with the same tokens (`<start> ctx_1 .. ctx_n of a` for `"a photo of a {}."`), and MaPLe's text
prompts, at every depth, replace positions inside that prefix only. So the prefix has the same hidden states in every
prompt, at every layer. This module runs the prefix through the text tower once (one sequence), keeps its attention
keys and values at every layer, then runs each class's own tokens attending causally to the cached prefix keys/values
and to themselves. In the last layer only the end-of-text token is computed, since only it is pooled. The result
equals the text tower's own forward up to float rounding, and gradients reach the prompts through the prefix's keys
and values.

With the default template, about half of each prompt's tokens are prefix tokens, so training steps and evaluation
text features cost about half as much on the text side (see `benchmarks/README.md`).

The encoder layer is re-expressed here from the modules of transformers' `CLIPEncoderLayer` (pre-LayerNorm attention
with `q/k/v/out_proj`, then the MLP). `shared_prefix_unsupported` checks that the model has exactly that structure
and says why not otherwise; `PromptClassifier` then runs the text tower's own forward instead.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

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


def _text_prompt_layers(clip: nn.Module) -> tuple[MaPLeTextPromptLayer | None, list[nn.Module]]:
    embedding = clip.text_model.embeddings.token_embedding
    first = embedding if isinstance(embedding, MaPLeTextPromptLayer) else None
    return first, list(clip.text_model.encoder.layers)


def active_text_n_ctx(clip: nn.Module) -> int:
    """The number of text prompt tokens the active adapter inserts (0 without text prompts or with adapters off).

    Args:
        clip (`CLIPModel`): the model (with MaPLe layers injected, or plain).
    """
    first, layers = _text_prompt_layers(clip)
    return max((prompt.shape[0] for module in [first, *layers] if (prompt := _prompt(module)) is not None), default=0)


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks)


def shared_prefix_unsupported(clip: nn.Module, prefix_length: int, n_ctx: int) -> str | None:
    """Why the shared-prefix encoding cannot be used for this model and these prompts now, or None if it can.

    Args:
        clip (`CLIPModel`): the model (with MaPLe layers injected, or plain).
        prefix_length (`int`): the number of leading tokens all prompts share (`common_prefix_length`).
        n_ctx (`int`): the number of text prompt tokens the active adapter inserts after the start token.
    """
    from transformers.models.clip.modeling_clip import CLIPEncoderLayer, CLIPTextEmbeddings

    text_model = clip.text_model
    if prefix_length < max(2, 1 + n_ctx):
        return (
            f"the prompts share {prefix_length} leading tokens; the start token and the {n_ctx} text prompt tokens "
            "after it (and at least 2 tokens) must be shared"
        )
    if not isinstance(text_model.embeddings, CLIPTextEmbeddings):
        return (
            f"the text embeddings are a {type(text_model.embeddings).__name__}, not transformers' CLIPTextEmbeddings"
        )
    for index, module in enumerate(text_model.encoder.layers):
        layer = unwrap(module)
        if not isinstance(layer, CLIPEncoderLayer):
            return f"text encoder layer {index} is a {type(layer).__name__}, not transformers' CLIPEncoderLayer"
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


def encode_prefix(clip: nn.Module, prefix_ids: torch.Tensor) -> PrefixCache:
    """Run the shared prefix through the text tower, with the active adapter's prompts; keep its keys and values.

    Args:
        clip (`CLIPModel`): the model whose text tower encodes the prefix.
        prefix_ids (`torch.LongTensor`): `(1, P)` the tokens that all prompts share, start token included.

    Returns:
        `PrefixCache`: per layer, the (unwrapped) encoder layer and the prefix's keys and values `(1, heads, P, d)`.
    """
    text_model = clip.text_model
    embeddings = text_model.embeddings
    first, layers = _text_prompt_layers(clip)
    hidden = unwrap(embeddings.token_embedding)(prefix_ids)
    if (prompt := _prompt(first)) is not None:
        hidden = replace_text_prompt(hidden, prompt)
    hidden = hidden + embeddings.position_embedding(embeddings.position_ids[:, : prefix_ids.shape[1]])
    cache: PrefixCache = []
    for module in layers:
        if (prompt := _prompt(module)) is not None:
            hidden = replace_text_prompt(hidden, prompt)
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

    Args:
        clip (`CLIPModel`): the model whose text tower produced `cache`.
        cache (`PrefixCache`): from `encode_prefix`.
        suffix_ids (`torch.LongTensor`): `(n, L)` the tokens after the prefix, all of the same length, each ending
            with the end-of-text token (no padding).
    """
    text_model = clip.text_model
    embeddings = text_model.embeddings
    prefix_length = cache[0][1].shape[2]
    n, length = suffix_ids.shape
    positions = embeddings.position_ids[:, prefix_length : prefix_length + length]
    hidden = unwrap(embeddings.token_embedding)(suffix_ids) + embeddings.position_embedding(positions)
    # suffix token i (absolute position P + i) sees the whole prefix and suffix tokens 0..i
    mask = torch.ones(length, prefix_length + length, dtype=torch.bool, device=suffix_ids.device)
    mask = mask.tril(diagonal=prefix_length)
    for index, (layer, k_prefix, v_prefix) in enumerate(cache):
        attention = layer.self_attn
        normed = layer.layer_norm1(hidden)
        k = torch.cat([k_prefix.expand(n, -1, -1, -1), _heads(attention.k_proj(normed), attention)], dim=2)
        v = torch.cat([v_prefix.expand(n, -1, -1, -1), _heads(attention.v_proj(normed), attention)], dim=2)
        layer_mask = mask
        if index == len(cache) - 1:  # only the end-of-text token (the last one) is pooled
            hidden, normed, layer_mask = hidden[:, -1:], normed[:, -1:], mask[-1:]
        q = _heads(attention.q_proj(normed), attention)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=layer_mask, scale=attention.scale)
        hidden = hidden + attention.out_proj(_merge_heads(out))
        hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
    pooled = text_model.final_layer_norm(hidden[:, -1])
    return clip.text_projection(pooled)
