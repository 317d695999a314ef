"""PromptSRC's self-regulating loss against a plain re-implementation of its three terms on a tiny CLIP."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from reference import prompts_from_state_dict, reference_image_embeds, reference_text_embeds
from test_model import CLASSES, make_adapted, padded77

from maple_peft import IMAGENET_TEMPLATES, PromptClassifier, SelfRegularizedLoss

# short prefixes ("<start> a"), a long one and the classifier's own: every prefix length of the fast path
TEMPLATES = ["a photo of a {}.", "a {} in a video game.", "a black and white photo of the {}."]
LABELS = torch.tensor([0, 3, 1])


def _normalize(x):
    return x / x.norm(dim=-1, keepdim=True)


def reference_target_text(untouched, tokenizer, class_names, templates):
    """g_t written plainly: 77-token padded prompts, un-normalized features averaged over templates, normalized."""
    features = []
    for template in templates:
        prompts = [template.format(name.replace("_", " ")) for name in class_names]
        ids = tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
        features.append(reference_text_embeds(untouched, ids, []))
    return _normalize(torch.stack(features).mean(dim=0))


def reference_loss(model, untouched, tokenizer, pixel_values, labels, templates, weights=(25.0, 10.0, 1.0)):
    """The original trainer's loss, on the reference forward, with the adapter's own parameters as prompts."""
    config = model.peft_config["default"]
    state = {name.replace(".default", ""): p for name, p in model.named_parameters() if p.requires_grad}
    text_prompts, vision_prompts = prompts_from_state_dict(state, config.variant, config.depth)
    f_t = _normalize(reference_text_embeds(untouched, padded77(tokenizer, config, CLASSES), text_prompts))
    f_i = _normalize(reference_image_embeds(untouched, pixel_values, vision_prompts))
    scale = untouched.logit_scale.exp()
    logits = scale * f_i @ f_t.t()
    with torch.no_grad():
        g_t = reference_target_text(untouched, tokenizer, CLASSES, templates)
        g_i = _normalize(reference_image_embeds(untouched, pixel_values, []))
        zs_logits = scale * g_i @ g_t.t()
    ce = F.cross_entropy(logits, labels)
    text = F.l1_loss(f_t, g_t, reduction="mean")
    image = F.l1_loss(f_i, g_i, reduction="mean")
    kl = F.kl_div(logits.log_softmax(1), zs_logits.log_softmax(1), reduction="sum", log_target=True) / logits.numel()
    loss = ce + weights[0] * text + weights[1] * image + weights[2] * kl
    return loss, logits, {"ce": ce, "text": text, "image": image, "logits": kl}


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("variant,extra", [("maple", {}), ("ivlp", {"n_ctx_vision": 3})])
@pytest.mark.parametrize(
    "encoding", ["shared_prefix", "own_forward", "shared_prefix_checkpointed", "own_forward_checkpointed"]
)
def test_loss_terms_and_gradients_equal_the_reference(tokenizer, pixel_values, variant, extra, encoding):
    model, untouched = make_adapted(variant=variant, n_ctx=2, depth=3, **extra)
    model.train()
    classifier = PromptClassifier(
        model,
        tokenizer,
        CLASSES,
        shared_prefix=encoding.startswith("shared_prefix"),
        gradient_checkpointing=encoding.endswith("checkpointed"),
        text_batch_size=2,
    )
    assert (classifier.shared_prefix_reason() is None) == encoding.startswith("shared_prefix")
    loss_fn = SelfRegularizedLoss(classifier, templates=TEMPLATES)
    out = loss_fn(pixel_values, LABELS)
    out.loss.backward()
    got = _grads(model)
    model.zero_grad()

    expected_loss, expected_logits, expected_terms = reference_loss(
        model, untouched, tokenizer, pixel_values, LABELS, TEMPLATES
    )
    expected_loss.backward()
    expected = _grads(model)

    torch.testing.assert_close(out.logits, expected_logits, rtol=1e-4, atol=1e-5)
    for name in ("ce", "text", "image", "logits"):
        assert out.terms[name] > 0, name
        torch.testing.assert_close(out.terms[name], expected_terms[name].detach(), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(out.loss, expected_loss, rtol=1e-5, atol=1e-6)
    assert set(got) == set(expected) and len(got) > 0
    for name in got:
        assert got[name].abs().max() > 0, name
        scale = expected[name].abs().max()
        torch.testing.assert_close(got[name], expected[name], rtol=1e-3, atol=1e-4 * scale, msg=name)


def test_weights_scale_their_terms(tokenizer, pixel_values):
    model, _ = make_adapted(variant="maple", n_ctx=2, depth=2)
    classifier = PromptClassifier(model, tokenizer, CLASSES)
    out = SelfRegularizedLoss(classifier, 2.0, 3.0, 0.5, templates=TEMPLATES)(pixel_values, LABELS)
    t = out.terms
    torch.testing.assert_close(out.loss, t["ce"] + 2.0 * t["text"] + 3.0 * t["image"] + 0.5 * t["logits"])


def test_zero_weights_are_plain_cross_entropy_without_a_frozen_pass(tokenizer, pixel_values):
    model, _ = make_adapted(variant="maple", n_ctx=2, depth=2)
    classifier = PromptClassifier(model, tokenizer, CLASSES).train()
    loss_fn = SelfRegularizedLoss(classifier, 0, 0, 0, templates=TEMPLATES)
    frozen_calls = []
    model.disable_adapter = lambda: frozen_calls.append(1)  # any frozen pass would call it
    out = loss_fn(pixel_values, LABELS)
    assert frozen_calls == [] and set(out.terms) == {"ce"}
    assert torch.equal(out.loss, F.cross_entropy(classifier(pixel_values).float(), LABELS))
    # the image term alone needs frozen image features but no frozen text features
    model.disable_adapter = type(model).disable_adapter.__get__(model)
    out = SelfRegularizedLoss(classifier, 0, 3.0, 0, templates=TEMPLATES)(pixel_values, LABELS)
    assert set(out.terms) == {"ce", "image"} and out.terms["image"] > 0


def test_default_targets_average_the_60_imagenet_templates(tokenizer):
    assert len(IMAGENET_TEMPLATES) == 60 == len(set(IMAGENET_TEMPLATES))
    assert IMAGENET_TEMPLATES[:3] == ("a photo of a {}.", "a bad photo of a {}.", "a photo of many {}.")
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES)
    model, untouched = make_adapted(variant="ivlp", n_ctx=2, depth=2)
    names = ["golden_retriever", "cat"]
    loss_fn = SelfRegularizedLoss(PromptClassifier(model, tokenizer, names))
    assert loss_fn.templates == IMAGENET_TEMPLATES
    expected = reference_target_text(untouched, tokenizer, names, IMAGENET_TEMPLATES)
    torch.testing.assert_close(loss_fn.target_text_features(), expected, rtol=1e-4, atol=1e-6)


def test_targets_follow_new_class_names(tokenizer, pixel_values):
    model, untouched = make_adapted(variant="maple", n_ctx=2, depth=2)
    classifier = PromptClassifier(model, tokenizer, CLASSES)
    loss_fn = SelfRegularizedLoss(classifier, templates=TEMPLATES)
    first = loss_fn.target_text_features()
    assert loss_fn.target_text_features() is first  # cached for the same classes
    classifier.set_class_names(["zebra", "okapi"])
    second = loss_fn.target_text_features()
    assert second.shape == (2, first.shape[1])
    torch.testing.assert_close(second, reference_target_text(untouched, tokenizer, ["zebra", "okapi"], TEMPLATES))
    assert loss_fn(pixel_values, torch.tensor([0, 1, 1])).logits.shape == (3, 2)


def test_variants_without_text_or_vision_prompts_get_their_terms(tokenizer, pixel_values):
    model, _ = make_adapted(variant="vision", n_ctx=2, depth=2)
    model.train()
    out = SelfRegularizedLoss(PromptClassifier(model, tokenizer, CLASSES), templates=TEMPLATES)(pixel_values, LABELS)
    assert out.terms["image"] > 0 and out.terms["text"] > 0 and out.terms["logits"] > 0
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in model.parameters() if p.requires_grad)

    model, _ = make_adapted(variant="language", n_ctx=2, depth=2)
    model.train()
    out = SelfRegularizedLoss(PromptClassifier(model, tokenizer, CLASSES), templates=TEMPLATES)(pixel_values, LABELS)
    assert out.terms["image"] == 0 and out.terms["text"] > 0 and out.terms["logits"] > 0
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().max() > 0 for p in model.parameters() if p.requires_grad)


def test_bf16_autocast_gives_float32_terms_close_to_float32(tokenizer, pixel_values):
    model, _ = make_adapted(variant="maple", n_ctx=2, depth=3)
    model.train()
    loss_fn = SelfRegularizedLoss(PromptClassifier(model, tokenizer, CLASSES), templates=TEMPLATES)
    reference = loss_fn(pixel_values, LABELS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss_fn(pixel_values, LABELS)
    assert out.loss.dtype == torch.float32
    assert all(value.dtype == torch.float32 for value in out.terms.values())
    out.loss.backward()
    torch.testing.assert_close(out.loss, reference.loss.detach(), rtol=3e-2, atol=0)
    # the targets are computed once, in float32, whatever the autocast dtype
    assert loss_fn.target_text_features().dtype == torch.float32


def test_frozen_pass_keeps_the_adapter_and_its_trainability(tokenizer, pixel_values):
    model, _ = make_adapted(variant="maple", n_ctx=2, depth=3)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    classifier = PromptClassifier(model, tokenizer, CLASSES)
    before = classifier(pixel_values)
    loss_fn = SelfRegularizedLoss(classifier, templates=TEMPLATES)
    out = loss_fn(pixel_values, LABELS)
    torch.testing.assert_close(out.logits, before)
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    # a frozen (inference) adapter stays frozen
    for param in model.parameters():
        param.requires_grad_(False)
    loss_fn(pixel_values, LABELS)
    assert not any(p.requires_grad for p in model.parameters())
    # no second copy of CLIP: the loss holds exactly the classifier's tensors
    assert list(loss_fn.state_dict()) == [f"classifier.{k}" for k in classifier.state_dict()]


def test_plain_clip_is_its_own_frozen_model(tokenizer, pixel_values):
    from conftest import tiny_clip

    out = SelfRegularizedLoss(PromptClassifier(tiny_clip(), tokenizer, CLASSES), templates=["a photo of a {}."])(
        pixel_values, LABELS
    )
    assert out.terms["image"] == 0 and out.terms["text"] < 1e-6 and out.terms["logits"] < 1e-6


@pytest.mark.parametrize("name", ["text_weight", "image_weight", "logits_weight"])
@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), True, "25"])
def test_bad_weights_are_refused(tokenizer, name, value):
    model, _ = make_adapted(variant="maple", n_ctx=2, depth=2)
    with pytest.raises(ValueError, match=rf"{name}={value!r}".replace("(", r"\(").replace(")", r"\)")):
        SelfRegularizedLoss(PromptClassifier(model, tokenizer, CLASSES), **{name: value})


def test_bad_templates_and_wrapped_classifiers_are_refused(tokenizer):
    model, _ = make_adapted(variant="maple", n_ctx=2, depth=2)
    classifier = PromptClassifier(model, tokenizer, CLASSES)
    with pytest.raises(ValueError, match="exactly one"):
        SelfRegularizedLoss(classifier, templates=["a photo."])
    with pytest.raises(ValueError, match="non-empty"):
        SelfRegularizedLoss(classifier, templates=[])
    with pytest.raises(ValueError, match="str.format"):
        SelfRegularizedLoss(classifier, templates=["a {} {0}."])

    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    with pytest.raises(TypeError, match="prepare the loss instead"):
        SelfRegularizedLoss(Wrapper(classifier))


def test_prepared_loss_runs_under_ddp_with_the_same_gradients(tmp_path, tokenizer, pixel_values):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model, _ = make_adapted(variant="maple", n_ctx=2, depth=3)
    model.train()
    loss_fn = SelfRegularizedLoss(PromptClassifier(model, tokenizer, CLASSES), templates=TEMPLATES)
    loss_fn(pixel_values, LABELS).loss.backward()
    expected = _grads(model)
    model.zero_grad()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(loss_fn)
        # two steps: DDP refuses a second forward if the first backward did not reach its gradient hooks
        for _ in range(2):
            model.zero_grad()
            out = wrapped(pixel_values, LABELS)
            out.loss.backward()
    finally:
        dist.destroy_process_group()
    assert set(out.terms) == {"ce", "text", "image", "logits"}
    got = _grads(model)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], msg=name)


def test_accelerate_prepared_loss_runs_in_bf16_mixed_precision(tokenizer, pixel_values):
    from accelerate import Accelerator

    model, _ = make_adapted(variant="ivlp", n_ctx=2, depth=3)
    model.train()
    loss_fn = SelfRegularizedLoss(PromptClassifier(model, tokenizer, CLASSES), templates=TEMPLATES)
    reference = loss_fn(pixel_values, LABELS).loss.detach()
    from accelerate.state import AcceleratorState

    accelerator = Accelerator(mixed_precision="bf16", cpu=True)
    try:
        prepared = accelerator.prepare(loss_fn)
        out = prepared(pixel_values, LABELS)
        accelerator.backward(out.loss)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)  # the state is a process-wide singleton
    assert out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss.detach(), reference, rtol=3e-2, atol=0)
    assert accelerator.unwrap_model(prepared).classifier.model is model
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


LONG = "a photo " * 40 + "of a {}."  # 86 tokens with a one-word class name
MEDIUM = "a photo " * 34 + "of a {}."  # 74


@pytest.mark.parametrize(
    "template,message",
    [
        ("a photo of a {}.<|endoftext|>", r"holds a special token of the tokenizer \(<\|endoftext\|>\)"),
        ("<|startoftext|>a photo of a {}.", r"holds a special token of the tokenizer \(<\|startoftext\|>\)"),
        ("a <|endoftext|> photo of a {}.", r"holds a special token of the tokenizer \(<\|endoftext\|>\)"),
        (LONG, r"gives prompts of 86 tokens even with a one-word class name, more than the text encoder's 77"),
    ],
)
def test_a_frozen_text_template_is_checked_as_class_names_are_naming_it(tokenizer, template, message):
    from maple_peft.objectives import KnowledgeGuidedLoss

    model, _ = make_adapted(n_ctx=2, depth=2)
    classifier = PromptClassifier(model, tokenizer, CLASSES)
    with pytest.raises(ValueError, match=rf"templates\[1\]={re.escape(repr(template))} {message}"):
        SelfRegularizedLoss(classifier, templates=["a photo of a {}.", template])  # refused before any step
    with pytest.raises(ValueError, match=rf"template={re.escape(repr(template))} {message}"):
        KnowledgeGuidedLoss(classifier, template=template)
    with pytest.raises(ValueError, match=rf"template={re.escape(repr(template))} {message}"):
        PromptClassifier(model, tokenizer, CLASSES, template=template)  # the classifier's own template too


def test_a_class_name_too_long_for_a_template_is_refused_naming_both(tokenizer, pixel_values):
    model, _ = make_adapted(n_ctx=2, depth=2)
    long_name = " ".join(["zebra"] * 8)  # fits the classifier's prompts, not the 74-token template's
    loss_fn = SelfRegularizedLoss(PromptClassifier(model, tokenizer, [*CLASSES[:-1], long_name]), templates=[MEDIUM])
    with pytest.raises(ValueError, match=rf"template {re.escape(repr(MEDIUM))}: The prompt of class '{long_name}'"):
        loss_fn(pixel_values, LABELS)
