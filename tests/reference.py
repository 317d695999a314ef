"""A plain re-implementation of MaPLe's forward pass, for the tests to compare the package against.

Written from the equations alone: explicit loops over the layers of an untouched CLIP, attention computed by hand,
prompts given as plain tensors. It uses none of the package's wrappers.
"""

from __future__ import annotations

import torch


def _attention(layer, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    attn = layer.self_attn
    batch, length, width = x.shape
    heads = attn.num_heads
    head = width // heads

    def split(t):
        return t.view(batch, length, heads, head).transpose(1, 2)

    q, k, v = split(attn.q_proj(x)), split(attn.k_proj(x)), split(attn.v_proj(x))
    scores = q @ k.transpose(-1, -2) * head**-0.5
    if mask is not None:
        scores = scores + mask
    out = scores.softmax(dim=-1) @ v
    return attn.out_proj(out.transpose(1, 2).reshape(batch, length, width))


def _block(layer, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    x = x + _attention(layer, layer.layer_norm1(x), mask)
    return x + layer.mlp(layer.layer_norm2(x))


def reference_text_embeds(clip, input_ids: torch.Tensor, text_prompts: list[torch.Tensor]) -> torch.Tensor:
    """`text_prompts[i]` (n_ctx, d_text) replaces positions 1..n_ctx at the input of text layer i (i=0: embeddings)."""
    tm = clip.text_model
    x = tm.embeddings.token_embedding.weight[input_ids].clone()
    length = input_ids.shape[1]
    for depth, prompt in enumerate(text_prompts):
        if depth == 0:
            x[:, 1 : 1 + prompt.shape[0]] = prompt
    x = x + tm.embeddings.position_embedding.weight[:length]
    mask = torch.full((length, length), float("-inf")).triu(1)
    for i, layer in enumerate(tm.encoder.layers):
        if 0 < i < len(text_prompts):
            n = text_prompts[i].shape[0]
            x = torch.cat([x[:, :1], text_prompts[i].expand(x.shape[0], -1, -1), x[:, 1 + n :]], dim=1)
        x = _block(layer, x, mask)
    x = tm.final_layer_norm(x)
    eos = input_ids.argmax(dim=-1)  # the end-of-text token has the highest id
    pooled = x[torch.arange(x.shape[0]), eos]
    return clip.text_projection(pooled)


def reference_image_embeds(clip, pixel_values: torch.Tensor, vision_prompts: list[torch.Tensor]) -> torch.Tensor:
    """`vision_prompts[0]` is appended after [CLS, patches] + positions; deeper ones replace the last tokens."""
    vm = clip.vision_model
    emb = vm.embeddings
    patches = emb.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
    cls = emb.class_embedding.expand(pixel_values.shape[0], 1, -1)
    x = torch.cat([cls, patches], dim=1) + emb.position_embedding.weight
    if vision_prompts:
        x = torch.cat([x, vision_prompts[0].expand(x.shape[0], -1, -1)], dim=1)
    x = vm.pre_layrnorm(x)
    for i, layer in enumerate(vm.encoder.layers):
        if 0 < i < len(vision_prompts):
            n = vision_prompts[i].shape[0]
            x = torch.cat([x[:, :-n], vision_prompts[i].expand(x.shape[0], -1, -1)], dim=1)
        x = _block(layer, x, None)
    pooled = vm.post_layernorm(x[:, 0])
    return clip.visual_projection(pooled)


def reference_logits(clip, input_ids, pixel_values, text_prompts, vision_prompts) -> torch.Tensor:
    text = reference_text_embeds(clip, input_ids, text_prompts)
    image = reference_image_embeds(clip, pixel_values, vision_prompts)
    text = text / text.norm(dim=-1, keepdim=True)
    image = image / image.norm(dim=-1, keepdim=True)
    return clip.logit_scale.exp() * image @ text.t()


def prompts_from_state_dict(state: dict[str, torch.Tensor], variant: str, depth: int):
    """Rebuild the per-depth prompts from an adapter state dict (`get_peft_model_state_dict` keys)."""

    def get(key):
        matches = [v for k, v in state.items() if k.endswith(key)]
        assert len(matches) == 1, (key, list(state))
        return matches[0]

    text_keys = ["text_model.embeddings.token_embedding.maple_ctx"] + [
        f"text_model.encoder.layers.{i}.maple_ctx" for i in range(1, depth)
    ]
    vision_names = ["vision_model.embeddings"] + [f"vision_model.encoder.layers.{i}" for i in range(1, depth)]
    text_prompts = [get(k) for k in text_keys] if variant != "vision" else []
    if variant == "language":
        vision_prompts = []
    elif variant in ("ivlp", "vision"):
        vision_prompts = [get(f"{name}.maple_vision_ctx") for name in vision_names]
    else:
        vision_prompts = []
        for i, name in enumerate(vision_names):
            owner = name if variant == "maple" else vision_names[0]
            weight, bias = get(f"{owner}.maple_coupling.weight"), get(f"{owner}.maple_coupling.bias")
            vision_prompts.append(text_prompts[i] @ weight.t() + bias)
    return text_prompts, vision_prompts
