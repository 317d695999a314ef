"""The plain references of CoCoOp, KgCoOp and MMRL (tests/reference_methods.py) run on a tiny CLIP and reduce to
plain CLIP, or to transformers' own layers, where their definitions say they should."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_clip
from reference_methods import (
    causal_mask,
    cocoop_logits,
    kgcoop_loss,
    mmrl_image_embeds,
    mmrl_logits,
    mmrl_loss,
    mmrl_projected_tokens,
    mmrl_text_embeds,
    normalize,
)

CLASSES = ["cat", "golden retriever", "sea anemone", "Boeing 737-800"]
TEMPLATE_WORDS = "a photo of a"


def ids(tokenizer, texts):
    return tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]


def close(got, expected, rel=1e-5):
    torch.testing.assert_close(got, expected, atol=rel * expected.abs().max().item(), rtol=0)


def words_context(clip, tokenizer, words=TEMPLATE_WORDS):
    """The token embeddings of `words` (CoOp's `ctx_init`), as the original initialises its context."""
    word_ids = tokenizer(words, return_tensors="pt")["input_ids"][0, 1:-1]
    return clip.text_model.embeddings.token_embedding.weight[word_ids].detach().clone()


def cocoop_learner(clip, ctx, silent=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    embed_dim, d_text = clip.config.projection_dim, clip.config.text_config.hidden_size
    hidden = max(embed_dim // 16, 1)
    learner = {
        "ctx": ctx,
        "meta_net.linear1.weight": torch.randn(hidden, embed_dim, generator=g),
        "meta_net.linear1.bias": torch.randn(hidden, generator=g).abs(),
        "meta_net.linear2.weight": torch.randn(d_text, hidden, generator=g) * 0.5,
        "meta_net.linear2.bias": torch.randn(d_text, generator=g) * 0.5,
    }
    if silent:
        learner["meta_net.linear2.weight"] = torch.zeros(d_text, hidden)
        learner["meta_net.linear2.bias"] = torch.zeros(d_text)
    return learner


def test_cocoop_with_a_silent_meta_net_and_the_template_words_as_context_is_clip_on_the_template(
    tokenizer, pixel_values
):
    clip = tiny_clip()
    input_ids = ids(tokenizer, [f"{TEMPLATE_WORDS} {name}." for name in CLASSES])
    learner = cocoop_learner(clip, words_context(clip, tokenizer), silent=True)
    with torch.no_grad():
        got = cocoop_logits(clip, input_ids, pixel_values, learner)
        expected = clip(input_ids=input_ids, pixel_values=pixel_values).logits_per_image
    close(got, expected)


def test_cocoop_shifts_the_context_of_each_image_by_its_meta_net_output(tokenizer, pixel_values):
    clip = tiny_clip()
    input_ids = ids(tokenizer, [f"X X X {name}." for name in CLASSES])
    ctx = torch.randn(3, clip.config.text_config.hidden_size, generator=torch.Generator().manual_seed(4))
    learner = cocoop_learner(clip, ctx)
    with torch.no_grad():
        got = cocoop_logits(clip, input_ids, pixel_values, learner)
        image = clip.get_image_features(pixel_values=pixel_values).pooler_output
        image = normalize(image)
        shift = F.relu(image @ learner["meta_net.linear1.weight"].t() + learner["meta_net.linear1.bias"])
        shift = shift @ learner["meta_net.linear2.weight"].t() + learner["meta_net.linear2.bias"]
        for i in range(pixel_values.shape[0]):
            # image i: CoOp's prompts with the context ctx + pi_i, through transformers' own text tower
            embeds = clip.text_model.embeddings.token_embedding.weight[input_ids].clone()
            embeds[:, 1:4] = ctx + shift[i]
            text = _hf_text_features(clip, embeds, input_ids)
            close(got[i], clip.logit_scale.exp() * image[i] @ normalize(text).t())
        alone = cocoop_logits(clip, input_ids, pixel_values[1:2], learner)
    close(alone[0], got[1])
    assert not torch.allclose(got[0] - got[0].mean(), got[1] - got[1].mean(), atol=1e-3)


def _hf_text_features(clip, token_embeds, input_ids, extra_after_start=None):
    """Text features through transformers' encoder layers (their own attention), from token embeddings; optional
    tokens (without position embedding) inserted after the start token before the first layer."""
    tm = clip.text_model
    x = token_embeds + tm.embeddings.position_embedding.weight[: token_embeds.shape[1]]
    n = 0
    if extra_after_start is not None:
        n = extra_after_start.shape[0]
        x = torch.cat([x[:, :1], extra_after_start.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
    mask = causal_mask(x.shape[1]).clamp_min(torch.finfo(x.dtype).min)[None, None]
    x = tm.encoder(inputs_embeds=x, attention_mask=mask).last_hidden_state
    x = tm.final_layer_norm(x)
    return clip.text_projection(x[torch.arange(x.shape[0]), input_ids.argmax(dim=-1) + n])


def test_kgcoop_loss_is_cross_entropy_when_the_context_is_the_template_words(tokenizer, pixel_values):
    clip = tiny_clip()
    labels = torch.tensor([0, 3, 1])
    input_ids = ids(tokenizer, [f"{TEMPLATE_WORDS} {name}." for name in CLASSES])
    learner = {"ctx": words_context(clip, tokenizer)}
    with torch.no_grad():
        loss, logits, score = kgcoop_loss(clip, input_ids, pixel_values, learner, input_ids, labels, weight=8.0)
        expected = clip(input_ids=input_ids, pixel_values=pixel_values).logits_per_image
    close(logits, expected)
    assert abs(score.item()) < 1e-6
    torch.testing.assert_close(loss, F.cross_entropy(expected, labels), atol=1e-5, rtol=1e-5)


def test_kgcoop_loss_adds_weight_times_one_minus_the_mean_cosine_to_frozen_clip_on_the_template(
    tokenizer, pixel_values
):
    clip = tiny_clip()
    labels = torch.tensor([2, 0, 1])
    input_ids = ids(tokenizer, [f"{TEMPLATE_WORDS} {name}." for name in CLASSES])
    template_ids = ids(tokenizer, [f"a centered satellite photo of {name}." for name in CLASSES])
    ctx = words_context(clip, tokenizer) + 0.3 * torch.randn(4, 32, generator=torch.Generator().manual_seed(2))
    learner = {"ctx": ctx.requires_grad_(True)}
    loss, logits, score = kgcoop_loss(clip, input_ids, pixel_values, learner, template_ids, labels, weight=8.0)
    with torch.no_grad():
        embeds = clip.text_model.embeddings.token_embedding.weight[input_ids].clone()
        embeds[:, 1:5] = ctx
        adapted = _hf_text_features(clip, embeds, input_ids)
        frozen = clip.get_text_features(input_ids=template_ids).pooler_output
        expected_score = 1 - F.cosine_similarity(normalize(adapted), normalize(frozen), dim=1, eps=1e-7).mean()
    assert expected_score.item() > 1e-3
    close(score.detach(), expected_score)
    close(loss.detach(), F.cross_entropy(logits.detach(), labels) + 8.0 * expected_score)
    loss.backward()
    assert learner["ctx"].grad is not None and learner["ctx"].grad.abs().sum() > 0


def mmrl_learner(clip, n_rep=3, rep_dim=8, n_layers=2, seed=0):
    """MMRL's trainable tensors, keyed as its checkpoint keys them; the per-layer projections start as copies."""
    g = torch.Generator().manual_seed(seed)
    d_text, d_vision = clip.config.text_config.hidden_size, clip.config.vision_config.hidden_size
    learner = {
        "representation_learner.compound_rep_tokens": torch.randn(n_rep, rep_dim, generator=g),
        "image_encoder.proj_rep": torch.randn(d_vision, clip.config.projection_dim, generator=g) * d_vision**-0.5,
    }
    for tower, width in (("t", d_text), ("v", d_vision)):
        weight, bias = torch.randn(width, rep_dim, generator=g) * 0.3, torch.randn(width, generator=g) * 0.3
        for k in range(n_layers):
            learner[f"representation_learner.compound_rep_tokens_r2{tower}proj.{k}.weight"] = weight.clone()
            learner[f"representation_learner.compound_rep_tokens_r2{tower}proj.{k}.bias"] = bias.clone() + 0.1 * k
    return learner


@pytest.mark.parametrize("rep_layers", [[1], [2, 3]])
def test_mmrl_towers_equal_transformers_layers_on_the_longer_sequence(tokenizer, pixel_values, rep_layers):
    clip = tiny_clip()
    input_ids = ids(tokenizer, [f"a photo of a {name}." for name in CLASSES])
    learner = mmrl_learner(clip, n_layers=len(rep_layers))
    text_tokens = mmrl_projected_tokens(learner, "t", len(rep_layers))
    vision_tokens = mmrl_projected_tokens(learner, "v", len(rep_layers))
    with torch.no_grad():
        text = mmrl_text_embeds(clip, input_ids, learner, rep_layers)
        image, image_rep = mmrl_image_embeds(clip, pixel_values, learner, rep_layers)
        # the same insertions, around transformers' own encoder layers (their attention, a 4-d causal mask)
        tm, vm = clip.text_model, clip.vision_model
        x = tm.embeddings(input_ids=input_ids)
        for index, layer in enumerate(tm.encoder.layers):
            if index + 1 in rep_layers:
                k = rep_layers.index(index + 1)
                rest = x[:, 1:] if k == 0 else x[:, 1 + 3 :]
                x = torch.cat([x[:, :1], text_tokens[k].expand(x.shape[0], -1, -1), rest], dim=1)
            x = layer(x, causal_mask(x.shape[1]).clamp_min(torch.finfo(x.dtype).min)[None, None])
        x = tm.final_layer_norm(x)
        expected_text = clip.text_projection(x[torch.arange(4), input_ids.argmax(-1) + 3])
        x = vm.pre_layrnorm(vm.embeddings(pixel_values))
        for index, layer in enumerate(vm.encoder.layers):
            if index + 1 in rep_layers:
                k = rep_layers.index(index + 1)
                rest = x[:, 1:] if k == 0 else x[:, 1 + 3 :]
                x = torch.cat([x[:, :1], vision_tokens[k].expand(x.shape[0], -1, -1), rest], dim=1)
            x = layer(x, None)
        expected_image = clip.visual_projection(vm.post_layernorm(x[:, 0]))
        expected_rep = vm.post_layernorm(x[:, 1:4]).mean(1) @ learner["image_encoder.proj_rep"]
        plain_text = clip.get_text_features(input_ids=input_ids).pooler_output
    close(text, expected_text)
    close(image, expected_image)
    close(image_rep, expected_rep)
    assert not torch.allclose(text, plain_text, atol=1e-3)  # the tokens change the class features


def test_mmrl_logits_are_100_cos_and_fusion_mixes_the_two_paths(tokenizer, pixel_values):
    clip = tiny_clip()
    input_ids = ids(tokenizer, [f"a photo of a {name}." for name in CLASSES])
    learner = mmrl_learner(clip)
    with torch.no_grad():
        logits, logits_rep, fusion, image, text = mmrl_logits(clip, input_ids, pixel_values, learner, [2, 3], 0.7)
        raw_text = mmrl_text_embeds(clip, input_ids, learner, [2, 3])
        raw_image, raw_rep = mmrl_image_embeds(clip, pixel_values, learner, [2, 3])
    close(logits, 100 * F.cosine_similarity(raw_image[:, None], raw_text[None], dim=-1))
    close(logits_rep, 100 * F.cosine_similarity(raw_rep[:, None], raw_text[None], dim=-1))
    close(fusion, 0.7 * logits + 0.3 * logits_rep)
    assert logits.abs().max() > 1.0  # the fixed scale, not the tiny model's logit_scale


def test_mmrl_loss_terms_against_frozen_clip_features(tokenizer, pixel_values):
    clip = tiny_clip()
    labels = torch.tensor([1, 0, 3])
    input_ids = ids(tokenizer, [f"a photo of a {name}." for name in CLASSES])
    learner = {k: v.requires_grad_(True) for k, v in mmrl_learner(clip).items()}
    loss, terms, _ = mmrl_loss(clip, input_ids, pixel_values, learner, [2, 3], labels, alpha=0.7, reg_weight=6.0)
    logits, logits_rep, _, image, text = mmrl_logits(clip, input_ids, pixel_values, learner, [2, 3], 0.7)
    with torch.no_grad():
        image_clip = clip.get_image_features(pixel_values=pixel_values).pooler_output
        text_clip = clip.get_text_features(input_ids=input_ids).pooler_output
        reg_image = 1 - F.cosine_similarity(image, image_clip, dim=1).mean()
        reg_text = 1 - F.cosine_similarity(text, text_clip, dim=1).mean()
    close(terms["reg_image"].detach(), reg_image)
    close(terms["reg_text"].detach(), reg_text)
    expected = (
        0.7 * F.cross_entropy(logits, labels)
        + 0.3 * F.cross_entropy(logits_rep, labels)
        + 6.0 * (reg_image + reg_text)
    )
    close(loss.detach(), expected.detach())
    loss.backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in learner.values())
    # alpha 1 and no regularisation: cross-entropy of the class path alone
    only_ce, _, _ = mmrl_loss(clip, input_ids, pixel_values, learner, [2, 3], labels, alpha=1.0, reg_weight=0.0)
    close(only_ce.detach(), F.cross_entropy(logits, labels).detach())
