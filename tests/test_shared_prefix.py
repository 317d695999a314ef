"""Shared-prefix text encoding: the same features and gradients as the text tower's own forward, and when it is off."""

from __future__ import annotations

import pytest
import torch
from test_model import CLASSES, make_adapted

from maple_peft import PromptClassifier
from maple_peft.shared_prefix import common_prefix_length, encode_prefix

CASES = [
    ("maple", {}, 3),
    ("maple", {}, 1),
    ("maple_shared", {}, 2),
    ("ivlp", {"n_ctx_vision": 3}, 3),
    ("language", {"n_ctx": 4}, 3),  # the 4 prompt tokens replace all of "a photo of a": the prefix is <start> + 4
    ("language", {}, 1),  # CoOp
    ("vision", {}, 3),  # no text prompts: the prefix is plain CLIP's
]


def train_step(model, clf, pixel_values, labels):
    model.zero_grad()
    logits = clf(pixel_values)
    torch.nn.functional.cross_entropy(logits, labels).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("variant,extra,depth", CASES)
@pytest.mark.parametrize("checkpointing", [False, True])
def test_training_logits_and_gradients_equal_the_towers_own_forward(
    tokenizer, pixel_values, variant, extra, depth, checkpointing
):
    model, _ = make_adapted(variant=variant, depth=depth, **extra)
    model.train()
    labels = torch.tensor([0, 3, 1])
    names = [*CLASSES, "golden eagle", "okapi"]
    shared = PromptClassifier(model, tokenizer, names, text_batch_size=2, gradient_checkpointing=checkpointing)
    assert shared.shared_prefix_reason() is None
    own = PromptClassifier(model, tokenizer, names, shared_prefix=False)
    logits, grads = train_step(model, shared, pixel_values, labels)
    expected_logits, expected_grads = train_step(model, own, pixel_values, labels)
    torch.testing.assert_close(logits, expected_logits, atol=1e-5, rtol=0)
    assert grads.keys() == expected_grads.keys() and grads  # the same parameters get gradients
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_prefix_is_encoded_once_and_each_class_only_runs_its_own_tokens(tokenizer):
    model, _ = make_adapted(depth=3)
    clf = PromptClassifier(model, tokenizer, CLASSES)
    input_ids = clf.input_ids()
    lengths = ((input_ids == tokenizer.eos_token_id).int().argmax(-1) + 1).tolist()
    prefix = common_prefix_length(input_ids, lengths)
    assert tokenizer.decode(input_ids[0, 1:prefix]).strip() == "a photo of a"  # <start> a photo of a
    seen = []
    q_proj = model.get_base_model().text_model.encoder.layers[0].self_attn.q_proj  # layer 0 is not wrapped
    q_proj.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape[:2])))
    with torch.no_grad():
        clf.text_features()
    assert seen[0] == (1, prefix)  # the prefix: one sequence
    assert sum(n * length for n, length in seen[1:]) == sum(length - prefix for length in lengths)


def test_prefix_reaching_into_class_names_and_a_single_class(tokenizer, pixel_values):
    model, _ = make_adapted(depth=3)
    model.eval()
    for names in (["golden retriever", "golden eagle", "golden_pheasant"], ["cat"]):
        shared = PromptClassifier(model, tokenizer, names)
        own = PromptClassifier(model, tokenizer, names, shared_prefix=False)
        assert shared.shared_prefix_reason() is None
        with torch.no_grad():
            torch.testing.assert_close(shared(pixel_values), own(pixel_values), atol=1e-5, rtol=0)


def test_plain_clip_and_disabled_adapter_use_the_shared_prefix(tokenizer, pixel_values):
    model, untouched = make_adapted(depth=3)
    model.eval()
    input_ids = PromptClassifier(untouched, tokenizer, CLASSES).input_ids()
    with torch.no_grad():
        plain = PromptClassifier(untouched, tokenizer, CLASSES)
        assert plain.shared_prefix_reason() is None
        expected = untouched.get_text_features(input_ids=input_ids).pooler_output
        expected = expected / expected.norm(dim=-1, keepdim=True)
        torch.testing.assert_close(plain.text_features(), expected, atol=1e-5, rtol=0)
        clf = PromptClassifier(model, tokenizer, CLASSES)
        with model.disable_adapter():
            assert clf.shared_prefix_reason() is None
            torch.testing.assert_close(clf.text_features(), expected, atol=1e-5, rtol=0)


def test_bf16_model_stays_within_bf16_tolerance(tokenizer, pixel_values):
    model, _ = make_adapted(depth=3)
    model.get_base_model().to(torch.bfloat16)
    model.eval()
    with torch.no_grad():
        shared = PromptClassifier(model, tokenizer, CLASSES).text_features()
        own = PromptClassifier(model, tokenizer, CLASSES, shared_prefix=False).text_features()
    assert shared.dtype == own.dtype == torch.bfloat16
    torch.testing.assert_close(shared.float(), own.float(), atol=2e-2, rtol=0)


def test_bf16_autocast_training_stays_within_bf16_tolerance(tokenizer, pixel_values):
    model, _ = make_adapted(depth=3)
    model.train()
    labels = torch.tensor([0, 3, 1])
    results = []
    for shared_prefix in (True, False):
        clf = PromptClassifier(model, tokenizer, CLASSES, shared_prefix=shared_prefix)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            results.append(train_step(model, clf, pixel_values, labels))
    (logits, grads), (expected_logits, expected_grads) = results
    torch.testing.assert_close(logits.float(), expected_logits.float(), atol=0.1, rtol=0.02)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        assert grad.dtype == torch.float32, name  # the adapter parameters stay float32
        cosine = torch.nn.functional.cosine_similarity(grad.flatten(), expected_grads[name].flatten(), dim=0)
        assert cosine > 0.99, (name, cosine)


def test_falls_back_to_the_towers_forward_and_says_why(tokenizer, pixel_values):
    model, _ = make_adapted(depth=3)
    clip = model.get_base_model()
    clf = PromptClassifier(model, tokenizer, CLASSES)
    assert PromptClassifier(model, tokenizer, CLASSES, shared_prefix=False).shared_prefix_reason() == (
        "shared_prefix=False"
    )

    # a template that starts with the class name shares only the start token
    early = PromptClassifier(model, tokenizer, CLASSES, template="{} in a photo.")
    assert "share 1 leading tokens" in early.shared_prefix_reason()
    with torch.no_grad():
        early_own = PromptClassifier(model, tokenizer, CLASSES, template="{} in a photo.", shared_prefix=False)
        torch.testing.assert_close(early.text_features(), early_own.text_features(), atol=1e-6, rtol=0)

    # forward hooks that only the tower's own forward would run
    calls = []
    handle = clip.text_model.encoder.layers[2].register_forward_hook(lambda *args: calls.append(1))
    assert "hooks" in clf.shared_prefix_reason()
    with torch.no_grad():
        clf.text_features()
    assert calls  # the hook ran: the tower's own forward was used
    handle.remove()
    assert clf.shared_prefix_reason() is None

    # accelerate's device_map / offloading hooks replace the modules' own forward
    layer = clip.text_model.encoder.layers[1].get_base_layer()
    layer._hf_hook = object()
    assert "accelerate hooks" in clf.shared_prefix_reason()
    del layer._hf_hook

    # in training mode: transformers' gradient checkpointing, or attention dropout (applied even under no_grad)
    model.train()
    clip.text_model.encoder.gradient_checkpointing = True
    assert "gradient checkpointing" in clf.shared_prefix_reason()
    clip.text_model.encoder.gradient_checkpointing = False
    clip.text_model.config.attention_dropout = 0.1
    assert "attention dropout is 0.1" in clf.shared_prefix_reason()
    with torch.no_grad():
        assert "attention dropout is 0.1" in clf.shared_prefix_reason()
    model.eval()
    assert clf.shared_prefix_reason() is None  # no dropout in eval mode


def test_prefix_cache_holds_keys_and_values_of_every_layer(tokenizer):
    model, _ = make_adapted(depth=2)
    clip = model.get_base_model()
    ids = PromptClassifier(model, tokenizer, CLASSES).input_ids()[:1, :5]
    cache = encode_prefix(clip, ids)
    heads = clip.config.text_config.num_attention_heads
    head_dim = clip.config.text_config.hidden_size // heads
    assert len(cache) == len(clip.text_model.encoder.layers)
    assert all(k.shape == v.shape == (1, heads, 5, head_dim) for _, k, v in cache)
