"""Candidate optimizations of `PromptClassifier`, measured by `bench.py --sections options` before they enter the package.

`SharedPrefixClassifier` encodes the token prefix that all class prompts share once, instead of once per class.
(The length-bucketed encoding measured here earlier is now the package's own behaviour: `PromptClassifier` encodes
prompts in groups of equal length, with no padding token.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from maple_peft import PromptClassifier


def _heads(x: torch.Tensor, attention: torch.nn.Module) -> torch.Tensor:
    return x.view(*x.shape[:2], -1, attention.head_dim).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


class SharedPrefixClassifier(PromptClassifier):
    """`PromptClassifier` that encodes the prompts' common token prefix once, then only each class's own tokens.

    The text encoder is causal, so the hidden states of a token depend only on the tokens before it: the prefix that
    all prompts share (`<start> ctx_1 .. ctx_n of a` for "a photo of a {}.") has the same hidden states in every
    prompt, and MaPLe's deeper text prompts replace positions inside that prefix only. This classifier runs the prefix
    through the text tower once (one sequence), keeps its keys and values at every layer, and runs the class tokens
    (in groups of equal length, as `PromptClassifier` does) attending to the cached prefix keys/values and to
    themselves, causally. In the last layer only the end-of-text token is computed, since only it is pooled. Exact up
    to float rounding; the gradients reach the prompts through the prefix's keys and values.

    A prototype for measuring the idea: it re-implements CLIP's text encoder layer (pre-LayerNorm attention + MLP with
    SDPA) from the modules of transformers' `CLIPEncoderLayer`, so it depends on that structure.
    """

    def _prefix_length(self, input_ids: torch.Tensor, lengths: torch.Tensor) -> int:
        same = (input_ids == input_ids[:1]).all(dim=0)
        prefix = int(same.int().cumprod(0).sum())
        return min(prefix, int(lengths.min()) - 1)  # at least the end token of each prompt is its own

    def _compute_text_features(self, clip: torch.nn.Module) -> torch.Tensor:
        from maple_peft.layer import MaPLeTextPromptLayer

        device = clip.text_projection.weight.device
        input_ids = self.input_ids()
        text_model = clip.text_model
        eos_token_id = text_model.config.eos_token_id
        lengths = (input_ids == eos_token_id).int().argmax(dim=-1) + 1
        prefix_len = self._prefix_length(input_ids, lengths)
        embeddings = text_model.embeddings
        token_embedding = embeddings.token_embedding
        first = token_embedding if isinstance(token_embedding, MaPLeTextPromptLayer) else None
        n_ctx = first.maple_n_ctx.get(first.prompt_adapter(), 0) if first and first.prompt_adapter() else 0
        if prefix_len < 1 + n_ctx + 1:  # the prompt positions must lie inside the shared prefix
            return super()._compute_text_features(clip)

        # 1. the shared prefix, once: keys and values of every layer (MaPLe prompts inserted as usual)
        prefix_ids = input_ids[:1, :prefix_len].to(device)
        hidden = embeddings(input_ids=prefix_ids)
        layers = []
        for module in text_model.encoder.layers:
            if isinstance(module, MaPLeTextPromptLayer) and module.prompt_adapter() is not None:
                hidden = module._insert(hidden, module.maple_ctx[module.prompt_adapter()])
            layer = module.get_base_layer() if isinstance(module, MaPLeTextPromptLayer) else module
            attention = layer.self_attn
            normed = layer.layer_norm1(hidden)
            q, k, v = (_heads(p(normed), attention) for p in (attention.q_proj, attention.k_proj, attention.v_proj))
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attention.scale)
            hidden = hidden + attention.out_proj(_merge(out))
            hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
            layers.append((layer, k, v))

        # 2. the class tokens, in groups of equal length, attending to the prefix keys/values
        order = torch.argsort(lengths, stable=True)
        sorted_lengths = lengths[order].tolist()
        use_checkpoint = self.gradient_checkpointing and torch.is_grad_enabled()
        chunks = []
        start = 0
        while start < len(sorted_lengths):
            stop = start
            while (
                stop < len(sorted_lengths)
                and sorted_lengths[stop] == sorted_lengths[start]
                and stop - start < self.text_batch_size
            ):
                stop += 1
            ids = input_ids[order[start:stop], prefix_len : sorted_lengths[start]].to(device)
            args = (clip, layers, ids, prefix_len)
            chunks.append(
                checkpoint(self._suffix, *args, use_reentrant=False) if use_checkpoint else self._suffix(*args)
            )
            start = stop
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))
        return torch.cat(chunks)[inverse.to(device)]

    @staticmethod
    def _suffix(clip, layers, ids: torch.Tensor, prefix_len: int) -> torch.Tensor:
        text_model = clip.text_model
        embeddings = text_model.embeddings
        token_embedding = embeddings.token_embedding
        if hasattr(token_embedding, "get_base_layer"):
            token_embedding = token_embedding.get_base_layer()
        n, length = ids.shape
        positions = embeddings.position_ids[:, prefix_len : prefix_len + length]
        hidden = token_embedding(ids) + embeddings.position_embedding(positions)
        mask = torch.ones(length, prefix_len + length, dtype=torch.bool, device=ids.device).tril(diagonal=prefix_len)
        for index, (layer, k_prefix, v_prefix) in enumerate(layers):
            attention = layer.self_attn
            normed = layer.layer_norm1(hidden)
            k = torch.cat([k_prefix.expand(n, -1, -1, -1), _heads(attention.k_proj(normed), attention)], dim=2)
            v = torch.cat([v_prefix.expand(n, -1, -1, -1), _heads(attention.v_proj(normed), attention)], dim=2)
            layer_mask = mask
            if index == len(layers) - 1:  # only the end token (the last one of each prompt here) is pooled
                hidden, normed, layer_mask = hidden[:, -1:], normed[:, -1:], mask[-1:]
            q = _heads(attention.q_proj(normed), attention)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=layer_mask, scale=attention.scale)
            hidden = hidden + attention.out_proj(_merge(out))
            hidden = hidden + layer.mlp(layer.layer_norm2(hidden))
        pooled = text_model.final_layer_norm(hidden[:, -1])
        features = clip.text_projection(pooled)
        return features / features.norm(dim=-1, keepdim=True)
