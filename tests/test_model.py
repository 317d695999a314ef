"""MaPLe's forward pass against a plain reference implementation, for MaPLe and each variant."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TOKENIZER_DIR, tiny_clip
from peft import get_peft_model, get_peft_model_state_dict
from reference import prompts_from_state_dict, reference_logits

from maple_peft import MaPLeConfig, PromptClassifier, format_prompts, tokenize_prompts

CLASSES = ["cat", "golden_retriever", "sea anemone", "Boeing 737-800"]


def make_adapted(shape="narrow_text", seed=0, **config_kwargs):
    clip = tiny_clip(shape, seed=seed)
    untouched = copy.deepcopy(clip)
    config = MaPLeConfig(tokenizer_name_or_path=TOKENIZER_DIR, **config_kwargs)
    model = get_peft_model(clip, config)
    # random, large adapter values so that any mistake in where a prompt goes shows in the logits
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model, untouched


def padded77(tokenizer, config, class_names):
    prompts = format_prompts(config, class_names)
    return tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]


def test_format_prompts_follow_the_original_template():
    assert format_prompts(MaPLeConfig(), ["golden_retriever", "cat"]) == [
        "a photo of a golden retriever.",
        "a photo of a cat.",
    ]
    assert format_prompts(MaPLeConfig(prompt_init=None, n_ctx=3), ["cat"]) == ["X X X cat."]
    assert format_prompts(MaPLeConfig(variant="vision"), ["cat"]) == ["a photo of a cat."]
    assert format_prompts(None, ["sea_lion"], template="a centered satellite photo of {}.") == [
        "a centered satellite photo of sea lion."
    ]


def test_prompt_init_tokens_initialize_the_first_context(tokenizer):
    model, untouched = make_adapted(depth=2)
    config = model.peft_config["default"]
    assert config.prompt_init_token_ids == tokenizer("a photo")["input_ids"][1:3] == [320, 1125]
    fresh = get_peft_model(copy.deepcopy(untouched), MaPLeConfig(depth=2, tokenizer_name_or_path=TOKENIZER_DIR))
    ctx = fresh.base_model.model.text_model.embeddings.token_embedding.maple_ctx["default"]
    expected = untouched.text_model.embeddings.token_embedding.weight[[320, 1125]]
    assert torch.equal(ctx, expected)


def test_random_init_uses_normal_std_002():
    torch.manual_seed(0)
    clip = tiny_clip("wide_text")
    model = get_peft_model(clip, MaPLeConfig(prompt_init=None, n_ctx=16, depth=3))
    ctx = model.base_model.model.text_model.encoder.layers[1].maple_ctx["default"]
    assert ctx.shape == (16, 64)
    assert 0.015 < ctx.std().item() < 0.025


VARIANT_CASES = [
    ("maple", {}, 1),
    ("maple", {}, 2),
    ("maple", {}, 3),  # the maximum for the narrow_text shape (3 text layers)
    ("maple_shared", {}, 3),
    ("ivlp", {"n_ctx_vision": 3}, 3),
    ("ivlp", {}, 1),
    ("language", {"n_ctx": 4}, 3),
    ("language", {}, 1),  # CoOp
    ("vision", {"n_ctx": 3}, 4),  # VPT-deep, vision tower has 4 layers
    ("vision", {}, 1),
]


@pytest.mark.parametrize("variant,extra,depth", VARIANT_CASES)
def test_logits_match_reference_implementation(tokenizer, pixel_values, variant, extra, depth):
    model, untouched = make_adapted(variant=variant, depth=depth, **extra)
    config = model.peft_config["default"]
    state = get_peft_model_state_dict(model)
    text_prompts, vision_prompts = prompts_from_state_dict(state, variant, depth)
    input_ids = padded77(tokenizer, config, CLASSES)
    with torch.no_grad():
        expected = reference_logits(untouched, input_ids, pixel_values, text_prompts, vision_prompts)
        plain = model(input_ids=input_ids, pixel_values=pixel_values).logits_per_image
        shared = PromptClassifier(model, tokenizer, CLASSES)
        assert shared.shared_prefix_reason() is None  # the default encodes the common prefix once
        ours = shared(pixel_values)
        own_forward = PromptClassifier(model, tokenizer, CLASSES, shared_prefix=False)(pixel_values)
        base = untouched(input_ids=input_ids, pixel_values=pixel_values).logits_per_image
    torch.testing.assert_close(plain, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(own_forward, expected, atol=1e-5, rtol=0)
    assert (plain - base).abs().max() > 1e-3  # the adapter does change the model


@pytest.mark.parametrize("variant", ["maple", "ivlp", "language", "vision"])
def test_logits_match_reference_on_wider_text_tower(tokenizer, pixel_values, variant):
    model, untouched = make_adapted("wide_text", variant=variant, depth=3)
    state = get_peft_model_state_dict(model)
    text_prompts, vision_prompts = prompts_from_state_dict(state, variant, 3)
    input_ids = padded77(tokenizer, model.peft_config["default"], CLASSES)
    with torch.no_grad():
        expected = reference_logits(untouched, input_ids, pixel_values, text_prompts, vision_prompts)
        ours = PromptClassifier(model, tokenizer, CLASSES)(pixel_values)
        own_forward = PromptClassifier(model, tokenizer, CLASSES, shared_prefix=False)(pixel_values)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(own_forward, expected, atol=1e-5, rtol=0)


def test_deeper_couplings_start_as_identical_copies_but_are_separate_parameters():
    clip = tiny_clip()
    model = get_peft_model(clip, MaPLeConfig(depth=3, tokenizer_name_or_path=TOKENIZER_DIR))
    layers = model.base_model.model.vision_model.encoder.layers
    first, second = layers[1].maple_coupling["default"], layers[2].maple_coupling["default"]
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)
    assert first.weight is not second.weight
    embeddings_coupling = model.base_model.model.vision_model.embeddings.maple_coupling["default"]
    assert not torch.equal(embeddings_coupling.weight, first.weight)


def test_shared_coupling_has_one_linear_for_all_depths():
    clip = tiny_clip()
    model = get_peft_model(clip, MaPLeConfig(depth=3, variant="maple_shared", tokenizer_name_or_path=TOKENIZER_DIR))
    couplings = [n for n, _ in model.named_parameters() if "maple_coupling" in n]
    assert couplings == [
        "base_model.model.vision_model.embeddings.maple_coupling.default.weight",
        "base_model.model.vision_model.embeddings.maple_coupling.default.bias",
    ]


def test_vitb16_has_the_papers_trainable_parameter_count():
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
        vision_config=dict(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16
        ),
        projection_dim=512,
    )
    with torch.device("meta"):
        clip = CLIPModel(config)
        model = get_peft_model(clip, MaPLeConfig(n_ctx=2, depth=9, prompt_init_token_ids=[320, 1125]))
    trainable, _ = model.get_nb_trainable_parameters()
    assert trainable == 3_555_072


def test_vision_sequence_is_n_ctx_longer_and_text_length_unchanged(tokenizer, pixel_values):
    model, untouched = make_adapted(depth=2)
    input_ids = padded77(tokenizer, model.peft_config["default"], CLASSES)
    with torch.no_grad():
        out = model(input_ids=input_ids, pixel_values=pixel_values)
        ref = untouched(input_ids=input_ids, pixel_values=pixel_values)
    assert out.vision_model_output.last_hidden_state.shape[1] == ref.vision_model_output.last_hidden_state.shape[1] + 2
    assert out.text_model_output.last_hidden_state.shape == ref.text_model_output.last_hidden_state.shape


def test_interpolate_pos_encoding_works_at_other_resolutions(tokenizer):
    model, _ = make_adapted(depth=2)
    clf = PromptClassifier(model, tokenizer, CLASSES)
    with torch.no_grad():
        logits = clf(torch.randn(2, 3, 48, 48), interpolate_pos_encoding=True)
    assert logits.shape == (2, len(CLASSES)) and torch.isfinite(logits).all()


def test_trimmed_prompts_equal_77_token_padding(tokenizer, pixel_values):
    model, _ = make_adapted(depth=3)
    clf = PromptClassifier(model, tokenizer, CLASSES)
    ids = clf.input_ids()
    assert ids.shape[1] == max(len(tokenizer(p)["input_ids"]) for p in clf.prompts) < 77
    input_ids = padded77(tokenizer, model.peft_config["default"], CLASSES)
    with torch.no_grad():
        torch.testing.assert_close(
            clf(pixel_values),
            model(input_ids=input_ids, pixel_values=pixel_values).logits_per_image,
            atol=1e-5,
            rtol=0,
        )


def test_tokenize_prompts_pads_right_with_the_pad_token(tokenizer):
    ids = tokenize_prompts(tokenizer, ["a photo of a cat.", "a photo of a golden retriever."])
    assert ids[0].tolist()[:8] == [49406, 320, 1125, 539, 320, 2368, 269, 49407]
    assert ids[0, 8:].eq(tokenizer.pad_token_id).all()
