"""Every variant on every CLIP-family backbone (CLIP, MetaCLIP 2, SigLIP, SigLIP 2) against the plain model and a
hand-written reference; the backbone descriptions; family checks when saving and loading."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import FAMILIES, TOKENIZER_DIRS, family_images, family_tokenizer, tiny_model
from peft import PeftModel, get_peft_model, get_peft_model_state_dict
from reference import prompts_from_state_dict, reference_image_embeds, reference_logits, reference_text_embeds

from maple_peft import MaPLeConfig, PromptClassifier, SelfRegularizedLoss, format_prompts
from maple_peft.backbones import BACKBONES, backbone_of
from maple_peft.layer import MaPLeLayer

CLASSES = ["cat", "golden_retriever", "sea anemone", "okapi"]
VARIANTS = {
    "maple": {},
    "maple_shared": {},
    "ivlp": {"n_ctx_vision": 3},
    "language": {"n_ctx": 3},
    "vision": {"n_ctx": 3},
}


def adapted(family, variant="maple", depth=3, seed=0, randomize=True, **kwargs):
    """(PeftModel, untouched copy of the base model, tokenizer) with large random adapter values."""
    base = tiny_model(family, seed=seed)
    untouched = copy.deepcopy(base)
    config = MaPLeConfig(variant=variant, depth=depth, tokenizer_name_or_path=TOKENIZER_DIRS[family], **kwargs)
    model = get_peft_model(base, config)
    if randomize:
        generator = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for param in model.parameters():
                if param.requires_grad:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return model, untouched, family_tokenizer(family)


def model_input_ids(family, tokenizer, prompts):
    """The ids the model is fed: right-padded to the longest prompt (causal) or to 64 positions (SigLIP)."""
    length = 64 if family.startswith("siglip") else None
    return tokenizer(prompts, padding="max_length" if length else "longest", max_length=length, padding_side="right",
                     return_tensors="pt")["input_ids"]  # fmt: skip


def test_each_family_has_a_description_found_by_its_class():
    for family in FAMILIES:
        backbone = backbone_of(tiny_model(family))
        assert backbone is BACKBONES[family] and backbone.family == family
    assert [b.causal_text for b in BACKBONES.values()] == [True, True, False, False]
    assert [b.text_prompt_start for b in BACKBONES.values()] == [1, 1, 0, 0]


@pytest.mark.parametrize("family", FAMILIES)
def test_text_prompt_start_and_family_are_worked_out_and_saved(family, tmp_path):
    model, _, _ = adapted(family, depth=2)
    config = model.peft_config["default"]
    assert config.backbone == family
    assert config.text_prompt_start == (1 if family in ("clip", "metaclip_2") else 0)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["backbone"] == family and saved["text_prompt_start"] == config.text_prompt_start


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("family", FAMILIES)
def test_wrappers_equal_the_reference_loop(family, variant):
    model, untouched, tokenizer = adapted(family, variant, **VARIANTS[variant])
    config = model.peft_config["default"]
    images = family_images(family)
    clf = PromptClassifier(model, tokenizer, CLASSES)
    with torch.no_grad():
        logits = clf(images)
        text, vision = prompts_from_state_dict(get_peft_model_state_dict(model), variant, config.depth)
        ids = model_input_ids(family, tokenizer, format_prompts(config, CLASSES))
        expected = reference_logits(untouched, ids, images, text, vision, start=config.text_prompt_start)
    torch.testing.assert_close(logits, expected, atol=2e-5 * expected.abs().max().item(), rtol=1e-4)


@pytest.mark.parametrize("family", ["siglip", "siglip2"])
@pytest.mark.parametrize("pool_prompts", [False, True])
def test_attention_pooling_head_sees_the_prompts_only_when_asked(family, pool_prompts):
    model, untouched, _ = adapted(family, "ivlp", n_ctx_vision=3, vision_pool_prompts=pool_prompts)
    images = family_images(family)
    _, vision = prompts_from_state_dict(get_peft_model_state_dict(model), "ivlp", 3)
    with torch.no_grad():
        got = PromptClassifier(model, family_tokenizer(family), CLASSES).image_features(images, normalize=False)
        expected = reference_image_embeds(untouched, images, vision, pool_prompts=pool_prompts)
        other = reference_image_embeds(untouched, images, vision, pool_prompts=not pool_prompts)
    torch.testing.assert_close(got, expected, atol=2e-5 * expected.abs().max().item(), rtol=1e-4)
    assert not torch.allclose(got, other, atol=1e-3)  # the choice matters
    head_layers = [m for m in model.modules() if type(m).__name__ == "MaPLeVisionHeadLayer"]
    assert len(head_layers) == (0 if pool_prompts else 1)


@pytest.mark.parametrize("variant", ["maple", "ivlp", "vision"])
def test_siglip2_padded_patches_do_not_matter_and_the_mask_covers_the_prompts(variant):
    model, _, tokenizer = adapted("siglip2", variant, **VARIANTS[variant])
    images = family_images("siglip2", batch=4, padded=True)
    assert (images["pixel_attention_mask"] == 0).any()
    clf = PromptClassifier(model, tokenizer, CLASSES)
    changed = {**images, "pixel_values": images["pixel_values"].clone()}
    changed["pixel_values"][images["pixel_attention_mask"] == 0] = 100.0  # garbage in the padded patches
    with torch.no_grad():
        torch.testing.assert_close(clf(changed), clf(images), atol=1e-5, rtol=1e-5)
        # the processor's output passed whole, or as keywords
        torch.testing.assert_close(clf(**images), clf(images), atol=0, rtol=0)
    assert images["pixel_attention_mask"].shape[1] == 16  # the caller's mask is not extended in place


@pytest.mark.parametrize("family", FAMILIES)
def test_disabled_adapter_is_the_plain_model_bit_for_bit(family):
    model, untouched, tokenizer = adapted(family, "maple")
    images = family_images(family)
    untouched.requires_grad_(False)  # frozen, as PEFT leaves the base weights (torch picks kernels by this flag)
    with torch.no_grad():
        plain = PromptClassifier(untouched, tokenizer, CLASSES, template="a photo of a {}.")(images)
        with model.disable_adapter():
            disabled = PromptClassifier(model, tokenizer, CLASSES, template="a photo of a {}.")(images)
        enabled = PromptClassifier(model, tokenizer, CLASSES, template="a photo of a {}.")(images)
    assert torch.equal(disabled, plain)
    assert not torch.allclose(enabled, plain, atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_depth_one_context_from_the_tokens_it_replaces_is_the_plain_model_on_the_template(family):
    model, untouched, tokenizer = adapted(family, "language", depth=1, n_ctx=2, randomize=False)
    images = family_images(family)
    with torch.no_grad():
        adapted_logits = PromptClassifier(model, tokenizer, CLASSES)(images)
        plain = PromptClassifier(untouched, tokenizer, CLASSES, template="a photo of a {}.")(images)
    torch.testing.assert_close(adapted_logits, plain, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["clip", "metaclip_2"])
def test_deep_prompts_set_to_the_plain_hidden_states_give_the_plain_model(family):
    model, untouched, tokenizer = adapted(family, "language", depth=3, n_ctx=2, randomize=False)
    ids = model_input_ids(family, tokenizer, format_prompts(model.peft_config["default"], CLASSES))
    with torch.no_grad():
        hidden = untouched.text_model(input_ids=ids, output_hidden_states=True).hidden_states
        base = model.get_base_model().text_model.encoder.layers
        for depth in (1, 2):  # hidden_states[i] is the input of layer i; positions 1..2 are shared by every prompt
            base[depth].maple_ctx["default"].copy_(hidden[depth][0, 1:3])
        clf = PromptClassifier(model, tokenizer, CLASSES)
        plain = PromptClassifier(untouched, tokenizer, CLASSES, template="a photo of a {}.")
        torch.testing.assert_close(clf.text_features(), plain.text_features(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["maple", "language"])
def test_metaclip2_fast_path_equals_the_full_padded_forward(variant):
    model, _, tokenizer = adapted("metaclip_2", variant, **VARIANTS[variant])
    names = [*CLASSES, "golden eagle", "zebra giraffe dog"]
    clf = PromptClassifier(model, tokenizer, names, text_batch_size=2)
    assert clf.shared_prefix_reason() is None
    with torch.no_grad():
        fast = clf.text_features()
        ids = tokenizer(clf.prompts, padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
        full = model.get_base_model().get_text_features(input_ids=ids).pooler_output
        full = full / full.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(fast, full, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("family", ["siglip", "siglip2"])
def test_siglip_class_features_are_get_text_features_on_64_padded_ids_without_a_mask(family):
    model, tokenizer = tiny_model(family), family_tokenizer(family)
    clf = PromptClassifier(model, tokenizer, CLASSES, template="a photo of a {}.", text_batch_size=3)
    assert "bidirectional" in clf.shared_prefix_reason()
    ids = clf.input_ids()
    assert ids.shape == (len(CLASSES), 64)
    assert (ids[:, -1] == tokenizer.pad_token_id).all() and (ids[:, 0] != tokenizer.pad_token_id).all()  # right pad
    with torch.no_grad():
        expected = model.get_text_features(input_ids=model_input_ids(family, tokenizer, clf.prompts)).pooler_output
        torch.testing.assert_close(clf.text_features(), expected / expected.norm(dim=-1, keepdim=True))


@pytest.mark.parametrize("family", FAMILIES)
def test_classifier_logits_are_the_models_logits_per_image_bias_included(family):
    model, tokenizer = tiny_model(family), family_tokenizer(family)
    images = family_images(family)
    clf = PromptClassifier(model, tokenizer, CLASSES, template="a photo of a {}.")
    image_kwargs = images if isinstance(images, dict) else {"pixel_values": images}
    with torch.no_grad():
        ids = model_input_ids(family, tokenizer, clf.prompts)
        expected = model(input_ids=ids, **image_kwargs).logits_per_image
        torch.testing.assert_close(clf(images), expected, atol=1e-5, rtol=1e-5)


def test_siglip_prompts_are_limited_to_64_tokens_and_tokenized_without_punctuation():
    tokenizer = family_tokenizer("siglip")
    clf = PromptClassifier(tiny_model("siglip"), tokenizer, ["cat"])
    assert clf.prompts == ["a photo of a cat."] and "." not in tokenizer.convert_ids_to_tokens(clf.input_ids()[0])
    with pytest.raises(ValueError, match="more than the text encoder's 64"):
        clf.set_class_names(["cat", " ".join(["giraffe"] * 70)])
    assert clf.class_names == ["cat"]


@pytest.mark.parametrize("family", FAMILIES)
def test_self_regularized_loss_and_gradients_match_a_plain_reference(family):
    model, untouched, tokenizer = adapted(family, "ivlp", depth=2, n_ctx_vision=2)
    model.train()
    images, labels = family_images(family), torch.tensor([0, 2, 1])
    templates = ["a photo of a {}.", "a drawing of the {}."]
    config = model.peft_config["default"]
    clf = PromptClassifier(model, tokenizer, CLASSES)
    out = SelfRegularizedLoss(clf, text_weight=25.0, image_weight=10.0, logits_weight=1.0, templates=templates)(
        images, labels
    )
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}

    # the reference: prompts as leaf tensors, frozen features from the untouched model
    state = {k: v.detach().clone().requires_grad_(True) for k, v in get_peft_model_state_dict(model).items()}
    text, vision = prompts_from_state_dict(state, "ivlp", 2)
    start = config.text_prompt_start
    logits = reference_logits(untouched, model_input_ids(family, tokenizer, clf.prompts), images, text, vision,
                              start=start)  # fmt: skip
    with torch.no_grad():
        frozen_text = 0
        for template in templates:
            prompts = [template.format(n.replace("_", " ")) for n in CLASSES]
            frozen_text = frozen_text + reference_logits_text(untouched, family, tokenizer, prompts)
        g_t = frozen_text / len(templates)
        g_t = g_t / g_t.norm(dim=-1, keepdim=True)
        g_i = reference_image_embeds(untouched, images, [])
        g_i = g_i / g_i.norm(dim=-1, keepdim=True)
        zs = untouched.logit_scale.exp() * g_i @ g_t.t() + (untouched.logit_bias if family.startswith("sig") else 0)
    f_t = reference_text_embeds(untouched, model_input_ids(family, tokenizer, clf.prompts), text, start)
    f_t = f_t / f_t.norm(dim=-1, keepdim=True)
    f_i = reference_image_embeds(untouched, images, vision)
    f_i = f_i / f_i.norm(dim=-1, keepdim=True)
    kl = (zs.softmax(-1) * (zs.log_softmax(-1) - logits.log_softmax(-1))).sum() / logits.numel()
    loss = (
        torch.nn.functional.cross_entropy(logits, labels)
        + 25.0 * (f_t - g_t).abs().mean()
        + 10.0 * (f_i - g_i).abs().mean()
        + kl
    )
    loss.backward()
    torch.testing.assert_close(out.loss, loss, atol=1e-5 * loss.abs().item(), rtol=1e-5)
    assert len(grads) == len(state) > 0
    for name, grad in grads.items():
        key = name.replace("base_model.model.", "").replace(".default", "")
        ref = next(v.grad for k, v in state.items() if k.replace("base_model.model.", "") == key)
        assert grad.abs().sum() > 0  # every trainable tensor gets a gradient
        torch.testing.assert_close(grad, ref, atol=1e-5 * ref.abs().max().item() + 1e-8, rtol=1e-4)


def reference_logits_text(model, family, tokenizer, prompts):
    return reference_text_embeds(model, model_input_ids(family, tokenizer, prompts), [])


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_load_round_trip_gives_the_same_logits(family, tmp_path):
    model, untouched, tokenizer = adapted(family, "maple", vision_pool_prompts=family == "siglip")
    images = family_images(family)
    with torch.no_grad():
        before = PromptClassifier(model, tokenizer, CLASSES)(images)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(untouched, tmp_path).eval()
    with torch.no_grad():
        after = PromptClassifier(loaded, tokenizer, CLASSES)(images)
    assert torch.equal(before, after)


@pytest.mark.parametrize("family", ["siglip", "siglip2"])
def test_a_siglip_model_whose_text_and_image_embeddings_differ_in_width_is_refused_naming_both(family):
    model = tiny_model(family, projection_size=24)  # its text head projects to 24, its images are 48 wide
    message = r"text embeddings are 24 wide \(text_config.projection_size\) and its image embeddings 48 wide"
    with pytest.raises(ValueError, match=message):  # not a matrix-shape error deep in the classifier
        get_peft_model(model, MaPLeConfig(variant="ivlp", n_ctx=2, depth=2, prompt_init=None))
    with pytest.raises(ValueError, match=message):  # zero-shot, without an adapter
        PromptClassifier(model, family_tokenizer(family), ["cat", "dog"])


def test_adapter_of_one_family_is_refused_on_another_even_with_matching_widths(tmp_path):
    model, _, _ = adapted("clip", "ivlp", depth=2)
    model.save_pretrained(tmp_path)
    metaclip = tiny_model("metaclip_2")  # same widths (32 / 48) and layers as the tiny CLIP
    with pytest.raises(ValueError, match=r"trained on a CLIP model \(backbone='clip'\).*MetaCLIP 2"):
        PeftModel.from_pretrained(metaclip, tmp_path)
    assert not any(isinstance(m, MaPLeLayer) for m in metaclip.modules())


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_of_another_layout_is_refused_for_an_adapter(family):
    model, _, _ = adapted(family, "maple", depth=2)
    other = family_tokenizer("siglip" if family in ("clip", "metaclip_2") else "metaclip_2")
    with pytest.raises(ValueError, match="special token.*before the text|end-of-text token"):
        PromptClassifier(model, other, CLASSES)


def test_siglip2_tokenizer_pads_left_but_prompts_are_padded_right():
    tokenizer = family_tokenizer("siglip2")
    assert tokenizer.padding_side == "left"
    model, _, _ = adapted("siglip2", "language", depth=1, n_ctx=2, randomize=False)
    ids = PromptClassifier(model, tokenizer, CLASSES).input_ids()
    assert (ids[:, 0] != tokenizer.pad_token_id).all() and (ids[:, -1] == tokenizer.pad_token_id).all()


def test_predict_proba_reports_sigmoid_scores_for_siglip():
    from PIL import Image
    from transformers import CLIPImageProcessor, SiglipImageProcessor

    images = [Image.new("RGB", (40, 30), color) for color in ("red", "blue")]
    for family, processor in (
        ("clip", CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})),
        ("siglip", SiglipImageProcessor(size={"height": 32, "width": 32})),
    ):
        clf = PromptClassifier(tiny_model(family), family_tokenizer(family), CLASSES, image_processor=processor)
        scores = [[r["score"] for r in row] for row in clf.predict_proba(images)]
        with torch.no_grad():
            logits = clf(processor(images=images, return_tensors="pt")["pixel_values"])
        expected = logits.sigmoid() if family == "siglip" else logits.softmax(-1)
        for row, exp in zip(scores, expected):
            assert sorted(row, reverse=True) == pytest.approx(sorted(exp.tolist(), reverse=True), abs=1e-6)
        total = sum(scores[0])
        assert (total == pytest.approx(1.0)) == (family == "clip")
