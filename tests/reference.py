"""A plain re-implementation of the prompted forward pass, for the tests to compare the package against.

Written from the equations alone: explicit loops over the layers of an untouched dual encoder (CLIP, MetaCLIP 2,
SigLIP, SigLIP 2), attention computed by hand, prompts given as plain tensors. It uses none of the package's wrappers.
Only SigLIP 2's patch embeddings (with their resized position embeddings) and SigLIP's pooling head are the model's own
modules, called on hidden states computed here.
"""

from __future__ import annotations

import torch

CAUSAL = ("clip", "metaclip_2")


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


def _replace(x: torch.Tensor, prompt: torch.Tensor, start: int) -> torch.Tensor:
    n = prompt.shape[0]
    return torch.cat([x[:, :start], prompt.expand(x.shape[0], -1, -1), x[:, start + n :]], dim=1)


def reference_text_embeds(model, input_ids: torch.Tensor, text_prompts: list[torch.Tensor], start: int = 1):
    """`text_prompts[i]` (n_ctx, d_text) replaces positions start..start+n_ctx-1 at the input of text layer i (i=0:
    the token embeddings, before the position embeddings). Causal families pool at the end-of-text token and project
    with `text_projection`; SigLIP pools the last position (no mask) through the text head."""
    family = model.config.model_type
    tm = model.text_model
    x = tm.embeddings.token_embedding.weight[input_ids].clone()
    length = input_ids.shape[1]
    if text_prompts:
        x = _replace(x, text_prompts[0], start)
    x = x + tm.embeddings.position_embedding.weight[:length]
    mask = torch.full((length, length), float("-inf")).triu(1) if family in CAUSAL else None
    for i, layer in enumerate(tm.encoder.layers):
        if 0 < i < len(text_prompts):
            x = _replace(x, text_prompts[i], start)
        x = _block(layer, x, mask)
    x = tm.final_layer_norm(x)
    if family not in CAUSAL:
        return tm.head(x[:, -1])
    eos = model.config.text_config.eos_token_id
    if family == "clip" and eos == 2:
        position = input_ids.argmax(dim=-1)
    else:
        position = (input_ids == eos).int().argmax(dim=-1)
    pooled = x[torch.arange(x.shape[0]), position]
    return model.text_projection(pooled)


def reference_image_embeds(model, inputs, vision_prompts: list[torch.Tensor], pool_prompts: bool = False):
    """`vision_prompts[0]` is appended after the embedded image tokens; deeper ones replace the last tokens. CLIP pools
    its class token; SigLIP's head pools every token, the prompts only with `pool_prompts` (SigLIP 2: the padded
    patches are masked out of attention and of the head)."""
    family = model.config.model_type
    vm = model.vision_model
    emb = vm.embeddings
    key_mask = None
    if family in CAUSAL:
        pixel_values = inputs
        patches = emb.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
        cls = emb.class_embedding.expand(pixel_values.shape[0], 1, -1)
        x = torch.cat([cls, patches], dim=1) + emb.position_embedding.weight
    elif family == "siglip":
        x = emb.patch_embedding(inputs).flatten(2).transpose(1, 2) + emb.position_embedding.weight
    else:
        x = emb(inputs["pixel_values"], inputs["spatial_shapes"])
        key_mask = inputs["pixel_attention_mask"].bool()
    n = vision_prompts[0].shape[0] if vision_prompts else 0
    if vision_prompts:
        x = torch.cat([x, vision_prompts[0].expand(x.shape[0], -1, -1)], dim=1)
        if key_mask is not None:
            key_mask = torch.cat([key_mask, key_mask.new_ones(x.shape[0], n)], dim=1)
    if family in CAUSAL:
        x = vm.pre_layrnorm(x)
    additive = None
    if key_mask is not None:
        additive = torch.zeros(key_mask.shape, dtype=x.dtype).masked_fill(~key_mask, float("-inf"))[:, None, None]
    for i, layer in enumerate(vm.encoder.layers):
        if 0 < i < len(vision_prompts):
            x = torch.cat([x[:, :-n], vision_prompts[i].expand(x.shape[0], -1, -1)], dim=1)
        x = _block(layer, x, additive)
    if family in CAUSAL:
        return model.visual_projection(vm.post_layernorm(x[:, 0]))
    x = vm.post_layernorm(x)
    if n and not pool_prompts:
        x = x[:, :-n]
        key_mask = key_mask[:, :-n] if key_mask is not None else None
    return vm.head(x) if key_mask is None else vm.head(x, key_mask.long())


def reference_logits(
    model, input_ids, inputs, text_prompts, vision_prompts, *, start: int = 1, pool_prompts: bool = False
):
    """The family's logits: `exp(logit_scale) * cos(image, text)`, plus `logit_bias` for SigLIP."""
    text = reference_text_embeds(model, input_ids, text_prompts, start)
    image = reference_image_embeds(model, inputs, vision_prompts, pool_prompts)
    text = text / text.norm(dim=-1, keepdim=True)
    image = image / image.norm(dim=-1, keepdim=True)
    logits = model.logit_scale.exp() * image @ text.t()
    if model.config.model_type not in CAUSAL:
        logits = logits + model.logit_bias
    return logits


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
