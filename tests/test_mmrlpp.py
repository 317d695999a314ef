"""MMRL++ (Guo & Gu, IJCV 2026): the plain re-implementation of its original code (tests/reference_mmrlpp.py) reduces
to MMRL and to transformers' own layers where its equations say it should."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_clip
from reference_methods import causal_mask, mmrl_logits
from reference_mmrlpp import (
    TOKENS,
    aligner_key,
    mmrlpp_aligned_tokens,
    mmrlpp_image_embeds,
    mmrlpp_logits,
    mmrlpp_loss,
    mmrlpp_proj_rep,
    mmrlpp_text_embeds,
)

CLASSES = ["cat", "golden retriever", "sea anemone", "Boeing 737-800"]


def ids(tokenizer, texts):
    return tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]


def close(got, expected, rel=1e-5):
    torch.testing.assert_close(got, expected, atol=rel * expected.abs().max().item(), rtol=0)


def random_learner(clip, n_layers, n_rep=3, rep_dim=8, proj_lora_dim=4, res_lora_dim=2, seed=0):
    """MMRL++'s tensors keyed as its checkpoints, random (the residuals and `A B` non-zero)."""
    g = torch.Generator().manual_seed(seed)
    d_text, d_vision = clip.config.text_config.hidden_size, clip.config.vision_config.hidden_size
    embed_dim = clip.config.projection_dim
    learner = {
        TOKENS: torch.randn(n_rep, rep_dim, generator=g),
        "image_encoder.A": torch.randn(d_vision, proj_lora_dim, generator=g) * 0.2,
        "image_encoder.B": torch.randn(proj_lora_dim, embed_dim, generator=g) * 0.2,
    }
    for tower, width in (("t", d_text), ("v", d_vision)):
        learner[aligner_key(tower)] = torch.randn(width, rep_dim, generator=g) * 0.3
        for k in range(n_layers):
            learner[aligner_key(tower, k, "A")] = torch.randn(width, res_lora_dim, generator=g) * 0.3
            learner[aligner_key(tower, k, "B")] = torch.randn(res_lora_dim, rep_dim, generator=g) * 0.3
            learner[aligner_key(tower, k, "bias")] = torch.randn(width, generator=g) * 0.3
    return learner


def as_mmrl(clip, learner, n_layers):
    """The MMRL tensors with the same mapped tokens: layer k's projection `W + A_k B_k`, its bias, and `proj_rep` the
    frozen projection plus `A B`."""
    mmrl = {"representation_learner.compound_rep_tokens": learner[TOKENS], "image_encoder.proj_rep": None}
    mmrl["image_encoder.proj_rep"] = mmrlpp_proj_rep(clip, learner)
    for tower in ("t", "v"):
        for k in range(n_layers):
            weight = (
                learner[aligner_key(tower)] + learner[aligner_key(tower, k, "A")] @ learner[aligner_key(tower, k, "B")]
            )
            prefix = f"representation_learner.compound_rep_tokens_r2{tower}proj.{k}"
            mmrl[f"{prefix}.weight"] = weight
            mmrl[f"{prefix}.bias"] = learner[aligner_key(tower, k, "bias")]
    return mmrl


@pytest.mark.parametrize("rep_layers", [[1], [2, 3], [1, 3]])
def test_mmrlpp_with_beta_1_is_mmrl_with_each_layers_summed_weight(tokenizer, pixel_values, rep_layers):
    clip = tiny_clip()
    input_ids = ids(tokenizer, [f"a photo of a {name}." for name in CLASSES])
    learner = random_learner(clip, len(rep_layers))
    with torch.no_grad():
        got = mmrlpp_logits(clip, input_ids, pixel_values, learner, rep_layers, alpha=0.6, beta=1.0)
        expected = mmrl_logits(clip, input_ids, pixel_values, as_mmrl(clip, learner, len(rep_layers)), rep_layers, 0.6)
        other = mmrlpp_logits(clip, input_ids, pixel_values, learner, rep_layers, alpha=0.6, beta=0.5)
    for a, b in zip(got, expected):
        close(a, b)
    if len(rep_layers) > 1:  # beta mixes in the tokens coming out of the previous layer
        assert not torch.allclose(other[0], got[0], atol=1e-3)


@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_mmrlpp_composition_around_transformers_layers(tokenizer, pixel_values, beta):
    """Layers 1 and 3 of rep_layers with layer 2 between them (which carries the tokens): the same composition around
    transformers' own encoder layers (their attention, a 4-d causal mask)."""
    clip = tiny_clip()
    rep_layers = [1, 3]
    input_ids = ids(tokenizer, [f"a photo of a {name}." for name in CLASSES])
    learner = random_learner(clip, 2)
    text_tokens, vision_tokens = (mmrlpp_aligned_tokens(learner, tower, 2) for tower in ("t", "v"))
    with torch.no_grad():
        text = mmrlpp_text_embeds(clip, input_ids, learner, rep_layers, beta)
        image, image_rep = mmrlpp_image_embeds(clip, pixel_values, learner, rep_layers, beta)
        tm, vm = clip.text_model, clip.vision_model

        def composed(x, index, tokens):
            if index + 1 not in rep_layers:
                return x
            k = rep_layers.index(index + 1)
            new = tokens[k].expand(x.shape[0], -1, -1)
            if k == 0:
                return torch.cat([x[:, :1], new, x[:, 1:]], dim=1)
            return torch.cat([x[:, :1], beta * new + (1 - beta) * x[:, 1:4], x[:, 4:]], dim=1)

        x = tm.embeddings(input_ids=input_ids)
        for index, layer in enumerate(tm.encoder.layers):
            x = composed(x, index, text_tokens)
            x = layer(x, causal_mask(x.shape[1]).clamp_min(torch.finfo(x.dtype).min)[None, None])
        expected_text = clip.text_projection(tm.final_layer_norm(x)[torch.arange(4), input_ids.argmax(-1) + 3])
        x = vm.pre_layrnorm(vm.embeddings(pixel_values))
        for index, layer in enumerate(vm.encoder.layers):
            x = layer(composed(x, index, vision_tokens), None)
        expected_image = clip.visual_projection(vm.post_layernorm(x[:, 0]))
        proj_rep = clip.visual_projection.weight.t() + learner["image_encoder.A"] @ learner["image_encoder.B"]
        expected_rep = vm.post_layernorm(x[:, 1:4]).mean(1) @ proj_rep
    close(text, expected_text)
    close(image, expected_image)
    close(image_rep, expected_rep)


def test_mmrlpp_loss_with_beta_0_ignores_the_later_aligners(tokenizer, pixel_values):
    """beta 0 keeps the tokens of the first representation layer: the later layers' residuals and biases get no
    gradient; all the other trainable tensors do."""
    clip = tiny_clip()
    input_ids = ids(tokenizer, [f"a photo of a {name}." for name in CLASSES])
    learner = {k: v.requires_grad_(True) for k, v in random_learner(clip, 2).items()}
    loss, terms, _ = mmrlpp_loss(clip, input_ids, pixel_values, learner, [2, 3], torch.tensor([1, 0, 3]), beta=0.0)
    loss.backward()
    for key, tensor in learner.items():
        later = ".srra.1." in key
        assert (tensor.grad.abs().sum() > 0) != later, key
    assert set(terms) == {"ce", "ce_rep", "reg_image", "reg_text"}
