"""CoCoOp and MMRL on the engine against plain re-implementations of their original code (tests/reference_methods.py,
tests/reference.py): logits, losses and every adapter gradient, on every backbone each method supports."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import FAMILIES, TOKENIZER_DIRS, family_images, family_tokenizer, tiny_model
from peft import get_peft_model
from reference import reference_image_embeds, reference_text_embeds
from reference_methods import mmrl_logits
from test_backbones import model_input_ids

from maple_peft import MaPLeConfig, PromptClassifier

CLASSES = ["cat", "golden_retriever", "sea anemone", "okapi"]


def randomized(model, seed=1, scale=0.5):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return model


def cocoop(family, **kwargs):
    base = tiny_model(family)
    untouched = copy.deepcopy(base)
    config = MaPLeConfig(variant="cocoop", tokenizer_name_or_path=TOKENIZER_DIRS[family], **kwargs)
    model = randomized(get_peft_model(base, config))
    with torch.no_grad():  # the tiny models' meta-net has 1 to 3 hidden units: keep them active, for the gradients
        model.get_base_model().text_model.embeddings.token_embedding.maple_meta_linear1["default"].bias.fill_(2.0)
    return model, untouched, family_tokenizer(family)


def cocoop_learner(model):
    layer = model.get_base_model().text_model.embeddings.token_embedding
    learner = {"ctx": layer.maple_ctx["default"]}
    for index in (1, 2):
        for name, param in getattr(layer, f"maple_meta_linear{index}")["default"].named_parameters():
            learner[f"meta_net.linear{index}.{name}"] = param
    return learner


def cocoop_reference(model, ids, images, learner, start):
    """CoCoOp's logits on any family, written from its equations with the plain reference towers: image features
    normalized, `pi = linear2(relu(linear1(f)))`, the context `ctx + pi_i` for every class of image `i`."""
    image = reference_image_embeds(model, images, [])
    image = image / image.norm(dim=-1, keepdim=True)
    hidden = F.relu(image @ learner["meta_net.linear1.weight"].t() + learner["meta_net.linear1.bias"])
    shift = hidden @ learner["meta_net.linear2.weight"].t() + learner["meta_net.linear2.bias"]
    rows = []
    for image_i, shift_i in zip(image, shift):
        text = reference_text_embeds(model, ids, [learner["ctx"] + shift_i], start)
        text = text / text.norm(dim=-1, keepdim=True)
        row = model.logit_scale.exp() * image_i @ text.t()
        rows.append(row + model.logit_bias if hasattr(model, "logit_bias") else row)
    return torch.stack(rows)


def test_cocoop_config_takes_n_ctx_from_prompt_init_and_depth_one():
    config = MaPLeConfig(variant="cocoop", prompt_init="a photo of a")
    assert (config.n_ctx, config.depth, config.num_vision_tokens) == (4, 1, 0)
    assert MaPLeConfig(variant="cocoop", prompt_init=None, n_ctx=16).n_ctx == 16
    with pytest.raises(ValueError, match="CoCoOp takes n_ctx from prompt_init's word count"):
        MaPLeConfig(variant="cocoop", prompt_init="a photo of a", n_ctx=8)
    with pytest.raises(ValueError, match="learns its context at the input only"):
        MaPLeConfig(variant="cocoop", depth=3)


@pytest.mark.parametrize("family", FAMILIES)
def test_cocoop_logits_and_gradients_equal_the_original_equations(family):
    model, untouched, tokenizer = cocoop(family)
    config = model.peft_config["default"]
    layer = model.get_base_model().text_model.embeddings.token_embedding
    linear1, linear2 = layer.maple_meta_linear1["default"], layer.maple_meta_linear2["default"]
    embed = 16 if family in ("clip", "metaclip_2") else 48  # the image embedding width
    assert (linear1.in_features, linear1.out_features) == (embed, embed // 16)
    assert linear2.out_features == 32  # d_text
    images, labels = family_images(family), torch.tensor([0, 3, 1])
    model.train()
    clf = PromptClassifier(model, tokenizer, CLASSES, text_batch_size=2)
    logits = clf(images)
    F.cross_entropy(logits, labels).backward()
    learner = {k: v.detach().clone().requires_grad_(True) for k, v in cocoop_learner(model).items()}
    ids = model_input_ids(family, tokenizer, clf.prompts)
    expected = cocoop_reference(untouched, ids, images, learner, config.text_prompt_start)
    F.cross_entropy(expected, labels).backward()
    torch.testing.assert_close(logits, expected, atol=2e-5 * expected.abs().max().item(), rtol=1e-4)
    for name, param in cocoop_learner(model).items():
        ref = learner[name].grad
        assert param.grad.abs().sum() > 0, name
        torch.testing.assert_close(param.grad, ref, atol=1e-5 * ref.abs().max().item() + 1e-8, rtol=1e-4)
    if family in ("clip", "metaclip_2"):
        assert clf.shared_prefix_reason() is None  # each image's prefix encoded once, shared by its classes


def test_cocoop_text_features_are_per_image_and_never_cached():
    model, _, tokenizer = cocoop("clip")
    model.eval()
    clf = PromptClassifier(model, tokenizer, CLASSES)
    images = family_images("clip")
    with torch.no_grad():
        out = clf.outputs(images)
        assert out.text_features.shape == (3, len(CLASSES), 16)
        single = clf(images[1:2])
    torch.testing.assert_close(single[0], out.logits[1], atol=1e-5, rtol=1e-5)  # the same image alone: same row
    assert not torch.allclose(out.text_features[0], out.text_features[1])
    with pytest.raises(ValueError, match="depend on the image"):
        clf.text_features()
    with pytest.raises(ValueError, match="shared_prefix=False with a CoCoOp adapter"):
        PromptClassifier(model, tokenizer, CLASSES, shared_prefix=False)(images)


def test_cocoop_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        model, _, tokenizer = cocoop("siglip")
        model.train()
        clf = PromptClassifier(model, tokenizer, CLASSES, text_batch_size=3, gradient_checkpointing=checkpointing)
        F.cross_entropy(clf(family_images("siglip")), torch.tensor([0, 1, 2])).backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain, atol=1e-6, rtol=1e-5)


# ---- MMRL ---------------------------------------------------------------------------------------------------------


def mmrl(family="clip", **kwargs):
    base = tiny_model(family)
    untouched = copy.deepcopy(base)
    config = MaPLeConfig(variant="mmrl", n_rep=3, rep_dim=24, template="a photo of a {}.", **kwargs)
    return randomized(get_peft_model(base, config), scale=0.3), untouched, family_tokenizer(family)


def mmrl_learner(model):
    """The engine's MMRL tensors, keyed as the original checkpoint keys them."""
    base = model.get_base_model()
    layers = model.peft_config["default"].rep_layers
    text, vision = base.text_model.encoder.layers, base.vision_model.encoder.layers
    learner = {
        "representation_learner.compound_rep_tokens": text[layers[0] - 1].maple_rep_tokens["default"],
        "image_encoder.proj_rep": vision[layers[0] - 1].maple_proj_rep["default"],
    }
    for k, layer in enumerate(layers):
        for tower, modules in (("t", text), ("v", vision)):
            proj = modules[layer - 1].maple_rep_proj["default"]
            learner[f"representation_learner.compound_rep_tokens_r2{tower}proj.{k}.weight"] = proj.weight
            learner[f"representation_learner.compound_rep_tokens_r2{tower}proj.{k}.bias"] = proj.bias
    return learner


def test_mmrl_config_defaults_and_layers():
    config = MaPLeConfig(variant="mmrl")
    assert (config.n_rep, config.rep_dim, config.alpha, config.depth) == (5, 512, 0.7, None)
    assert config.num_text_tokens == config.num_vision_tokens == 0
    model = get_peft_model(tiny_model("clip"), MaPLeConfig(variant="mmrl", n_rep=2, rep_dim=8))
    assert model.peft_config["default"].rep_layers == [1, 2, 3]  # the last 7 of 3 text layers
    with pytest.raises(ValueError, match=r"rep_layers=\[2, 5\] but the towers have 3 \(text\) and 4 \(vision\)"):
        get_peft_model(tiny_model("clip"), MaPLeConfig(variant="mmrl", rep_layers=[2, 5]))
    with pytest.raises(ValueError, match="increasing list of 1-based layer numbers"):
        MaPLeConfig(variant="mmrl", rep_layers=[3, 2])
    with pytest.raises(ValueError, match="options of variant='mmrl'"):
        MaPLeConfig(variant="maple", n_rep=3)
    with pytest.raises(ValueError, match=r"alpha=1.5 must be a number in \[0, 1\]"):
        MaPLeConfig(variant="mmrl", alpha=1.5)


@pytest.mark.parametrize("family", ["siglip", "siglip2"])
def test_mmrl_is_refused_on_backbones_without_a_class_token(family):
    with pytest.raises(ValueError, match="does not carry over to SigLIP.*no class token"):
        get_peft_model(tiny_model(family), MaPLeConfig(variant="mmrl"))


@pytest.mark.parametrize("rep_layers", [None, [2, 3]])
@pytest.mark.parametrize("family", ["clip", "metaclip_2"])
def test_mmrl_logits_and_gradients_equal_the_original_equations(family, rep_layers):
    model, untouched, tokenizer = mmrl(family, rep_layers=rep_layers)
    layers = model.peft_config["default"].rep_layers
    images, labels = family_images(family), torch.tensor([0, 3, 1])
    model.train()
    clf = PromptClassifier(model, tokenizer, CLASSES, rep_logits="fusion")
    out = clf.outputs(images)
    loss = 0.7 * F.cross_entropy(out.logits_class, labels) + 0.3 * F.cross_entropy(out.logits_rep, labels)
    loss.backward()
    learner = {k: v.detach().clone().requires_grad_(True) for k, v in mmrl_learner(model).items()}
    ids = model_input_ids(family, tokenizer, clf.prompts)
    logits, logits_rep, fusion, _, _ = mmrl_logits(untouched, ids, images, learner, layers, alpha=0.7)
    (0.7 * F.cross_entropy(logits, labels) + 0.3 * F.cross_entropy(logits_rep, labels)).backward()
    for got, ref in ((out.logits_class, logits), (out.logits_rep, logits_rep), (out.logits, fusion)):
        torch.testing.assert_close(got, ref, atol=2e-5 * ref.abs().max().item(), rtol=1e-4)
    for name, param in mmrl_learner(model).items():
        ref = learner[name].grad
        assert param.grad.abs().sum() > 0, name
        torch.testing.assert_close(param.grad, ref, atol=1e-5 * ref.abs().max().item() + 1e-8, rtol=1e-4)


def test_mmrl_test_time_rule_fuses_on_the_training_classes_only():
    model, _, tokenizer = mmrl()
    model.peft_config["default"].class_names = CLASSES
    model.peft_config["default"].dataset = "imagenet"
    model.eval()
    images = family_images("clip")
    with torch.no_grad():
        base = PromptClassifier(model, tokenizer, CLASSES).outputs(images)
        assert torch.equal(base.logits, 0.7 * base.logits_class + 0.3 * base.logits_rep)
        novel = PromptClassifier(model, tokenizer, ["zebra", "giraffe"]).outputs(images)
        assert torch.equal(novel.logits, novel.logits_class)
        shifted = PromptClassifier(model, tokenizer, CLASSES, dataset="imagenetv2").outputs(images)
        assert torch.equal(shifted.logits, shifted.logits_class)
        forced = PromptClassifier(model, tokenizer, ["zebra", "giraffe"], rep_logits="fusion").outputs(images)
        assert torch.equal(forced.logits, 0.7 * forced.logits_class + 0.3 * forced.logits_rep)
    with pytest.raises(ValueError, match="rep_logits='both' is not one of"):
        PromptClassifier(model, tokenizer, CLASSES, rep_logits="both")


def test_mmrl_uses_the_eager_causal_mask_over_the_longer_sequence():
    from transformers import CLIPModel

    base = tiny_model("clip")
    eager = CLIPModel.from_pretrained(
        None, config=base.config, state_dict=base.state_dict(), attn_implementation="eager"
    )
    for model in (base, eager):
        peft = get_peft_model(model, MaPLeConfig(variant="mmrl", n_rep=2, rep_dim=8, rep_layers=[2]))
        randomized(peft, seed=3, scale=0.3).eval()
    with torch.no_grad():
        sdpa = PromptClassifier(base, family_tokenizer("clip"), CLASSES, rep_logits="fusion")(family_images("clip"))
        manual = PromptClassifier(eager, family_tokenizer("clip"), CLASSES, rep_logits="fusion")(family_images("clip"))
    torch.testing.assert_close(manual, sdpa, atol=1e-4, rtol=1e-4)


# ---- the losses: KgCoOp and MMRL ------------------------------------------------------------------------------------


def kgcoop_reference(model, ids, template_ids, images, ctx, labels, start, weight):
    """KgCoOp's loss on any family, from its equations: CE + weight * (1 - mean_c cos(t_c, g_c)), eps 1e-7."""
    text = reference_text_embeds(model, ids, [ctx], start)
    text = text / text.norm(dim=-1, keepdim=True)
    image = reference_image_embeds(model, images, [])
    image = image / image.norm(dim=-1, keepdim=True)
    logits = model.logit_scale.exp() * image @ text.t()
    logits = logits + model.logit_bias if hasattr(model, "logit_bias") else logits
    with torch.no_grad():
        frozen = reference_text_embeds(model, template_ids, [])
        frozen = frozen / frozen.norm(dim=-1, keepdim=True)
    score = 1 - torch.nn.functional.cosine_similarity(text, frozen, dim=-1, eps=1e-7).mean()
    return F.cross_entropy(logits, labels) + weight * score, logits


@pytest.mark.parametrize("family", FAMILIES)
def test_kgcoop_loss_and_gradients_equal_the_original_equations(family):
    from maple_peft import KnowledgeGuidedLoss

    base = tiny_model(family)
    untouched = copy.deepcopy(base)
    config = MaPLeConfig(variant="language", depth=1, n_ctx=2, tokenizer_name_or_path=TOKENIZER_DIRS[family])
    model = randomized(get_peft_model(base, config), scale=0.2)  # CoOp, KgCoOp's model
    tokenizer = family_tokenizer(family)
    template = "a photo of a {}, a type of pet."
    clf = PromptClassifier(model, tokenizer, CLASSES)
    model.train()
    images, labels = family_images(family), torch.tensor([1, 0, 3])
    out = KnowledgeGuidedLoss(clf, weight=8.0, template=template)(images, labels)
    out.loss.backward()
    ctx_param = model.get_base_model().text_model.embeddings.token_embedding.maple_ctx["default"]
    ctx = ctx_param.detach().clone().requires_grad_(True)
    ids = model_input_ids(family, tokenizer, clf.prompts)
    template_ids = model_input_ids(family, tokenizer, [template.format(n.replace("_", " ")) for n in CLASSES])
    loss, logits = kgcoop_reference(untouched, ids, template_ids, images, ctx, labels, clf_start(model), 8.0)
    loss.backward()
    torch.testing.assert_close(out.logits, logits, atol=2e-5 * logits.abs().max().item(), rtol=1e-4)
    torch.testing.assert_close(out.loss, loss, atol=1e-5 * loss.abs().item(), rtol=1e-5)
    assert set(out.terms) == {"ce", "knowledge"} and out.terms["knowledge"] > 0
    torch.testing.assert_close(ctx_param.grad, ctx.grad, atol=1e-5 * ctx.grad.abs().max().item(), rtol=1e-4)


def clf_start(model):
    return model.peft_config["default"].text_prompt_start


def test_kgcoop_works_with_every_variant_and_refuses_bad_values():
    from maple_peft import KnowledgeGuidedLoss

    images, labels = family_images("clip"), torch.tensor([0, 1, 2])
    for variant, kwargs in (("maple", {}), ("cocoop", {})):
        base = tiny_model("clip")
        config = MaPLeConfig(variant=variant, depth=2 if variant == "maple" else None, **kwargs)
        config.tokenizer_name_or_path = TOKENIZER_DIRS["clip"]
        model = get_peft_model(base, config).train()
        out = KnowledgeGuidedLoss(PromptClassifier(model, family_tokenizer("clip"), CLASSES))(images, labels)
        out.loss.backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    clf = PromptClassifier(model, family_tokenizer("clip"), CLASSES)
    with pytest.raises(ValueError, match=r"weight=-1.0 must be a finite number >= 0"):
        KnowledgeGuidedLoss(clf, weight=-1.0)
    with pytest.raises(ValueError, match="exactly one '{}'"):
        KnowledgeGuidedLoss(clf, template="a photo")


@pytest.mark.parametrize("family", ["clip", "metaclip_2"])
def test_mmrl_loss_and_gradients_equal_the_original_equations(family):
    from reference_methods import mmrl_loss

    from maple_peft import RepresentationLoss

    model, untouched, tokenizer = mmrl(family, rep_layers=[2, 3])
    model.train()
    images, labels = family_images(family), torch.tensor([2, 0, 1])
    clf = PromptClassifier(model, tokenizer, CLASSES)
    out = RepresentationLoss(clf, reg_weight=2.0)(images, labels)
    out.loss.backward()
    learner = {k: v.detach().clone().requires_grad_(True) for k, v in mmrl_learner(model).items()}
    ids = model_input_ids(family, tokenizer, clf.prompts)
    loss, terms, fusion = mmrl_loss(untouched, ids, images, learner, [2, 3], labels, alpha=0.7, reg_weight=2.0)
    loss.backward()
    torch.testing.assert_close(out.loss, loss, atol=1e-5 * loss.abs().item(), rtol=1e-5)
    torch.testing.assert_close(out.logits, fusion, atol=2e-5 * fusion.abs().max().item(), rtol=1e-4)
    for name in terms:
        torch.testing.assert_close(out.terms[name], terms[name].detach(), atol=1e-5, rtol=1e-4)
    for name, param in mmrl_learner(model).items():
        ref = learner[name].grad
        torch.testing.assert_close(param.grad, ref, atol=1e-5 * ref.abs().max().item() + 1e-8, rtol=1e-4)


def test_mmrl_loss_refuses_other_adapters_and_bad_weights():
    from maple_peft import RepresentationLoss

    model, _, tokenizer = mmrl()
    clf = PromptClassifier(model, tokenizer, CLASSES)
    with pytest.raises(ValueError, match=r"reg_weight=-0.5 must be a finite number >= 0"):
        RepresentationLoss(clf, reg_weight=-0.5)
    with pytest.raises(ValueError, match=r"alpha=2 must be a number in \[0, 1\]"):
        RepresentationLoss(clf, alpha=2)
    maple = get_peft_model(tiny_model("clip"), MaPLeConfig(depth=2, prompt_init=None))
    with pytest.raises(ValueError, match="not an MMRL adapter"):
        RepresentationLoss(PromptClassifier(maple, tokenizer, CLASSES))


@pytest.mark.parametrize("variant", ["cocoop", "mmrl"])
def test_cocoop_and_mmrl_adapters_save_and_load_in_one_line(variant, saved_base, tmp_path):
    from maple_peft.loading import load_base_model

    base = load_base_model(saved_base)
    kwargs = {"n_rep": 2, "rep_dim": 8} if variant == "mmrl" else {}
    config = MaPLeConfig(variant=variant, tokenizer_name_or_path=saved_base, class_names=CLASSES, **kwargs)
    model = randomized(get_peft_model(base, config), scale=0.3).eval()
    images = family_images("clip")
    with torch.no_grad():
        before = PromptClassifier(model, family_tokenizer("clip"), CLASSES)(images)
    model.save_pretrained(tmp_path)
    clf = PromptClassifier.from_pretrained(tmp_path)
    assert clf.class_names == CLASSES and clf.model.peft_config["default"].variant == variant
    with torch.no_grad():
        torch.testing.assert_close(clf(images), before, atol=1e-6, rtol=1e-6)


def test_a_cocoop_adapter_loads_under_any_adapter_name(tmp_path):
    from peft import PeftModel

    model, _, tokenizer = cocoop("clip")
    model.save_pretrained(tmp_path)
    images = family_images("clip")
    with torch.no_grad():
        expected = PromptClassifier(model.eval(), tokenizer, CLASSES)(images)
        loaded = PeftModel.from_pretrained(tiny_model("clip"), tmp_path, adapter_name="pets").eval()
        loaded.load_adapter(tmp_path, adapter_name="second")
        for name in ("pets", "second"):
            loaded.set_adapter(name)
            torch.testing.assert_close(PromptClassifier(loaded, tokenizer, CLASSES)(images), expected)
