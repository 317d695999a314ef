"""MMRL++ (Guo & Gu, IJCV 2026): the plain re-implementation of its original code (tests/reference_mmrlpp.py) reduces
to MMRL and to transformers' own layers where its equations say it should; the engine's MMRL++ gives its logits, loss
and gradients, starts and trains as the original, and saves and loads."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import family_images, family_tokenizer, tiny_clip, tiny_model
from peft import get_peft_model
from reference_methods import causal_mask, mmrl_logits
from reference_mmrlpp import (
    TOKENS,
    aligner_key,
    kaiming_bound,
    mmrlpp_aligned_tokens,
    mmrlpp_image_embeds,
    mmrlpp_logits,
    mmrlpp_loss,
    mmrlpp_proj_rep,
    mmrlpp_text_embeds,
    mmrlpp_trainable,
)
from test_backbones import model_input_ids
from test_methods import randomized
from test_train import assets  # noqa: F401 (the smoke assets fixture)

import maple_peft
from maple_peft import MaPLeConfig, PromptClassifier

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


def test_mmrlpp_with_beta_1_is_mmrl_with_each_layers_summed_weight(tokenizer, pixel_values):
    clip = tiny_clip()
    rep_layers = [1, 3]  # layer 2 between them carries the tokens
    input_ids = ids(tokenizer, [f"a photo of a {name}." for name in CLASSES])
    learner = random_learner(clip, len(rep_layers))
    with torch.no_grad():
        got = mmrlpp_logits(clip, input_ids, pixel_values, learner, rep_layers, alpha=0.6, beta=1.0)
        expected = mmrl_logits(clip, input_ids, pixel_values, as_mmrl(clip, learner, len(rep_layers)), rep_layers, 0.6)
        other = mmrlpp_logits(clip, input_ids, pixel_values, learner, rep_layers, alpha=0.6, beta=0.5)
    for a, b in zip(got, expected):
        close(a, b)
    assert not torch.allclose(other[0], got[0], atol=1e-3)  # beta < 1 mixes in the tokens of the previous layer


def test_mmrlpp_composition_around_transformers_layers(tokenizer, pixel_values):
    """Layers 1 and 3 of rep_layers with layer 2 between them (which carries the tokens): the same composition around
    transformers' own encoder layers (their attention, a 4-d causal mask)."""
    clip = tiny_clip()
    rep_layers, beta = [1, 3], 0.3
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


# ---- MMRL++ on the engine: the same weights give the original's logits, loss and gradients ---------------------------

ENGINE_CLASSES = ["cat", "golden_retriever", "sea anemone", "okapi"]


def mmrlpp(family="clip", **kwargs):
    base = tiny_model(family)
    untouched = copy.deepcopy(base)
    options = {"n_rep": 3, "rep_dim": 24, "proj_lora_dim": 4, "res_lora_dim": 2, "template": "a photo of a {}."}
    model = get_peft_model(base, MaPLeConfig(variant="mmrlpp", **{**options, **kwargs}))
    return randomized(model, scale=0.3), untouched, family_tokenizer(family)


def mmrlpp_learner(model, adapter="default"):
    """The engine's MMRL++ tensors, keyed as the original's checkpoints key them."""
    base = model.get_base_model()
    layers = model.peft_config[adapter].rep_layers
    text, vision = base.text_model.encoder.layers, base.vision_model.encoder.layers
    first = layers[0] - 1
    learner = {
        TOKENS: text[first].maple_rep_tokens[adapter],
        "image_encoder.A": vision[first].maple_proj_lora_A[adapter],
        "image_encoder.B": vision[first].maple_proj_lora_B[adapter],
    }
    for tower, modules in (("t", text), ("v", vision)):
        learner[aligner_key(tower)] = modules[first].maple_rep_shared[adapter]
        for k, layer in enumerate(layers):
            aligner = modules[layer - 1].maple_rep_proj[adapter]
            for part in ("A", "B", "bias"):
                learner[aligner_key(tower, k, part)] = getattr(aligner, part)
    return learner


@pytest.mark.parametrize("family, rep_layers", [("clip", [1, 3]), ("metaclip_2", None)])
def test_mmrlpp_logits_loss_and_gradients_equal_the_original_equations(family, rep_layers):
    from maple_peft import RepresentationLoss

    model, untouched, tokenizer = mmrlpp(family, rep_layers=rep_layers, beta=0.6, alpha=0.8)
    layers = model.peft_config["default"].rep_layers
    model.train()
    images, labels = family_images(family), torch.tensor([2, 0, 1])
    clf = PromptClassifier(model, tokenizer, ENGINE_CLASSES)
    out = RepresentationLoss(clf, reg_weight=2.0)(images, labels)
    out.loss.backward()
    parts = clf.outputs(images)
    learner = {k: v.detach().clone().requires_grad_(True) for k, v in mmrlpp_learner(model).items()}
    ids = model_input_ids(family, tokenizer, clf.prompts)
    loss, terms, fusion = mmrlpp_loss(
        untouched, ids, images, learner, layers, labels, alpha=0.8, beta=0.6, reg_weight=2.0
    )
    loss.backward()
    with torch.no_grad():
        logits, logits_rep, _, _, _ = mmrlpp_logits(untouched, ids, images, learner, layers, alpha=0.8, beta=0.6)
    torch.testing.assert_close(out.loss, loss, atol=1e-5 * loss.abs().item(), rtol=1e-5)
    for got, ref in ((out.logits, fusion), (parts.logits_class, logits), (parts.logits_rep, logits_rep)):
        torch.testing.assert_close(got.detach(), ref.detach(), atol=2e-5 * ref.abs().max().item(), rtol=1e-4)
    for name in terms:
        torch.testing.assert_close(out.terms[name], terms[name].detach(), atol=1e-5, rtol=1e-4)
    for name, param in mmrlpp_learner(model).items():
        ref = learner[name].grad
        assert ref.abs().sum() > 0, name
        torch.testing.assert_close(param.grad, ref, atol=1e-5 * ref.abs().max().item() + 1e-8, rtol=1e-4, msg=name)


def test_mmrlpp_trains_the_tensors_the_original_trains_and_starts_as_it_does():
    torch.manual_seed(0)
    model = get_peft_model(tiny_model("clip"), MaPLeConfig(variant="mmrlpp", n_rep=4, rep_dim=40, res_lora_dim=3))
    config = model.peft_config["default"]
    assert (config.n_rep, config.rep_dim, config.alpha, config.beta) == (4, 40, 0.7, 0.9)
    assert (config.proj_lora_dim, config.res_lora_dim, config.rep_layers) == (64, 3, [1, 2, 3])
    learner = mmrlpp_learner(model)
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(t) for t in learner.values()}
    assert all(mmrlpp_trainable(key) for key in learner)
    assert not model.get_base_model().visual_projection.weight.requires_grad  # proj_rep's frozen part
    assert learner[TOKENS].shape == (4, 40) and 0.015 < learner[TOKENS].std() < 0.025  # normal, std 0.02
    assert learner["image_encoder.A"].shape == (48, 64) and learner["image_encoder.B"].shape == (64, 16)
    assert learner["image_encoder.A"].abs().max() <= kaiming_bound(64) and not learner["image_encoder.B"].any()
    for tower, width in (("t", 32), ("v", 48)):
        shared = learner[aligner_key(tower)]
        assert shared.shape == (width, 40) and shared.abs().max() <= kaiming_bound(40)  # nn.Linear(rep_dim, width)
        biases = [learner[aligner_key(tower, k, "bias")] for k in range(3)]
        assert biases[0].abs().max() <= 40**-0.5 and biases[0].std() > 0.05
        assert all(torch.equal(b, biases[0]) and b is not biases[0] for b in biases[1:])  # copies of one bias
        for k in range(3):
            lora_a, lora_b = learner[aligner_key(tower, k, "A")], learner[aligner_key(tower, k, "B")]
            assert lora_a.shape == (width, 3) and lora_a.abs().max() <= kaiming_bound(3) and lora_a.std() > 0.2
            assert lora_b.shape == (3, 40) and not lora_b.any()


def test_mmrlpp_test_time_rule_fuses_on_the_training_classes_only():
    model, _, tokenizer = mmrlpp()
    model.peft_config["default"].class_names = ENGINE_CLASSES
    model.eval()
    images = family_images("clip")
    with torch.no_grad():
        base = PromptClassifier(model, tokenizer, ENGINE_CLASSES).outputs(images)
        novel = PromptClassifier(model, tokenizer, ["zebra", "giraffe"]).outputs(images)
    assert torch.equal(base.logits, 0.7 * base.logits_class + 0.3 * base.logits_rep)
    assert torch.equal(novel.logits, novel.logits_class)


def test_a_beta_set_on_the_adapters_config_applies_at_the_next_pass():
    """The original evaluates each cross-dataset target with a beta of its own (e.g. 0.3 on Food101)."""
    model, untouched, tokenizer = mmrlpp(rep_layers=[1, 3])
    model.eval()
    model.peft_config["default"].beta = 0.3
    images, targets = family_images("clip"), ["pad thai", "ramen", "tacos"]
    clf = PromptClassifier(model, tokenizer, targets)  # not the training classes: the class path
    learner = {key: value.detach() for key, value in mmrlpp_learner(model).items()}
    with torch.no_grad():
        got = clf(images)
        expected = mmrlpp_logits(
            untouched, model_input_ids("clip", tokenizer, clf.prompts), images, learner, [1, 3], beta=0.3
        )[0]
    torch.testing.assert_close(got, expected, atol=2e-5 * expected.abs().max().item(), rtol=1e-4)


def test_test_time_options_change_beta_for_a_block_only_and_are_checked_first():
    model, untouched, tokenizer = mmrlpp(rep_layers=[1, 3])
    model.eval()
    images, targets = family_images("clip"), ["pad thai", "ramen", "tacos"]
    clf = PromptClassifier(model, tokenizer, targets)
    learner = {key: value.detach() for key, value in mmrlpp_learner(model).items()}
    input_ids = model_input_ids("clip", tokenizer, clf.prompts)
    trained = model.peft_config["default"].beta
    with torch.no_grad():
        with maple_peft.test_time_options(model, beta=0.3) as config:
            assert config.beta == 0.3
            got = clf(images)
        after = clf(images)
        expected = mmrlpp_logits(untouched, input_ids, images, learner, [1, 3], beta=0.3)[0]
        expected_after = mmrlpp_logits(untouched, input_ids, images, learner, [1, 3], beta=trained)[0]
    close(got, expected, rel=2e-5)
    close(after, expected_after, rel=2e-5)
    assert model.peft_config["default"].beta == trained
    with pytest.raises(
        ValueError, match=r"n_rep=2 cannot change at test time for a MMRL\+\+ adapter.*\['alpha', 'beta'\]"
    ):
        with maple_peft.test_time_options(model, n_rep=2):
            pass
    with pytest.raises(ValueError, match=r"beta=1.5 must be a number in \[0, 1\]"):
        with maple_peft.test_time_options(model, beta=1.5):
            pass
    assert model.peft_config["default"].beta == trained
    maple = get_peft_model(tiny_model("clip"), MaPLeConfig(n_ctx=2, depth=1, prompt_init=None))
    with pytest.raises(ValueError, match="for a MaPLe adapter; the options that can are none"):
        with maple_peft.test_time_options(maple, beta=0.3):
            pass


#: The BETA the original evaluates each cross-dataset target with (yunncheng/MMRL, trainers/config.py, TASK CD).
ORIGINAL_CD_BETA = {
    "imagenetv2": 0.9, "imagenet_r": 0.9, "imagenet_a": 0.8, "imagenet_sketch": 0.7, "fgvc_aircraft": 0.9,
    "ucf101": 0.9, "sun397": 0.7, "oxford_pets": 0.6, "caltech101": 0.6, "dtd": 0.5, "oxford_flowers": 0.4,
    "stanford_cars": 0.3, "eurosat": 0.3, "food101": 0.3,
}  # fmt: skip


def test_the_cross_dataset_recipe_evaluates_each_target_with_the_originals_beta(monkeypatch, tmp_path, capsys):
    from test_train import REPO

    monkeypatch.syspath_prepend(str(REPO / "examples"))
    import options
    import train

    args = options.parse_args(
        ["--config", str(REPO / "examples/configs/mmrlpp_cross_dataset.yaml"), "--data_root", "x"]
    )
    assert args.eval_dataset_overrides == {name: {"beta": beta} for name, beta in ORIGINAL_CD_BETA.items()}
    assert args.beta == 0.9  # trained (and evaluated on ImageNet) with the CD value of ImageNet

    model, _, tokenizer = mmrlpp(rep_layers=[1, 3], beta=0.9)
    seen = {}

    def evaluate(accelerator, classifier, loader, class_names, desc):
        seen[desc] = model.peft_config["default"].beta
        return {"accuracy": 50.0}

    monkeypatch.setattr(train, "evaluate_classifier", evaluate)
    monkeypatch.setattr(
        train, "ImageClassificationDataset", lambda records, transform: type("D", (), {"num_skipped": 0})
    )
    monkeypatch.setattr(train, "DataLoader", lambda dataset, **kwargs: dataset)
    accelerator = type("A", (), {"prepare": staticmethod(lambda loader: loader)})
    transforms = type("T", (), {"test": staticmethod(lambda: None)})
    splits = {
        "imagenet": (None, ["cat", "dog"], "a photo of a {}.", "imagenet"),
        "eurosat": (None, ["forest", "river"], "a centered satellite photo of {}.", "eurosat"),
    }
    args.text_batch_size, args.num_workers = 8, 0
    results = train.evaluate_all(
        accelerator, model, tokenizer, splits, transforms, args, zero_shot=False, method="MMRL++"
    )
    assert seen == {"MMRL++ imagenet": 0.9, "MMRL++ eurosat (beta 0.3)": 0.3}
    assert "test_time_options" not in results["imagenet"] and results["eurosat"]["test_time_options"] == {"beta": 0.3}
    assert model.peft_config["default"].beta == 0.9

    bad = tmp_path / "bad.yaml"
    bad.write_text("variant: mmrlpp\ndataset: imagenet\neval_dataset_overrides: {eurosat: {reg_weight: 1.0}}\n")
    with pytest.raises(SystemExit):
        options.parse_args(["--config", str(bad), "--data_root", "x"])
    assert "reg_weight does not act at test time" in capsys.readouterr().err
    bad.write_text("variant: mmrlpp\ndataset: imagenet\neval_dataset_overrides: {eurosat: {beta: 2.0}}\n")
    with pytest.raises(SystemExit):  # refused before any training, as the adapter's config would refuse it
        options.parse_args(["--config", str(bad), "--data_root", "x"])
    assert "eval_dataset_overrides: eurosat: beta=2.0 must be a number in [0, 1]" in capsys.readouterr().err


def test_mmrlpp_options_are_checked_and_its_own():
    with pytest.raises(ValueError, match=r"beta=1.5 must be a number in \[0, 1\]"):
        MaPLeConfig(variant="mmrlpp", beta=1.5)
    with pytest.raises(ValueError, match="proj_lora_dim=0 must be an integer >= 1"):
        MaPLeConfig(variant="mmrlpp", proj_lora_dim=0)
    with pytest.raises(ValueError, match="beta=0.5 given, but these are options of variant='mmrlpp'"):
        MaPLeConfig(variant="mmrl", beta=0.5)
    with pytest.raises(ValueError, match="does not carry over to SigLIP.*no class token"):
        get_peft_model(tiny_model("siglip"), MaPLeConfig(variant="mmrlpp"))
    mmrl_model = get_peft_model(tiny_model("clip"), MaPLeConfig(variant="mmrl", n_rep=2, rep_dim=8))
    with pytest.raises(ValueError, match="cannot share a model"):
        mmrl_model.add_adapter("pp", MaPLeConfig(variant="mmrlpp", n_rep=2, rep_dim=8))
    mmrlpp_model = get_peft_model(tiny_model("clip"), MaPLeConfig(variant="mmrlpp", n_rep=2, rep_dim=8))
    with pytest.raises(ValueError, match="cannot share a model"):  # nor the other way round
        mmrlpp_model.add_adapter("mmrl", MaPLeConfig(variant="mmrl", n_rep=2, rep_dim=8))


def test_an_mmrlpp_adapter_saves_its_options_and_loads_with_the_same_logits(saved_base, tmp_path):
    import json

    from maple_peft.loading import load_base_model

    config = MaPLeConfig(
        variant="mmrlpp", n_rep=2, rep_dim=8, beta=0.4, rep_layers=[2, 3], tokenizer_name_or_path=saved_base,
        class_names=ENGINE_CLASSES,
    )  # fmt: skip
    model = randomized(get_peft_model(load_base_model(saved_base), config), scale=0.3).eval()
    images = family_images("clip")
    with torch.no_grad():
        before = PromptClassifier(model, family_tokenizer("clip"), ENGINE_CLASSES)(images)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (saved["variant"], saved["beta"], saved["proj_lora_dim"], saved["res_lora_dim"]) == ("mmrlpp", 0.4, 64, 4)
    clf = PromptClassifier.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(clf(images), before, atol=1e-6, rtol=1e-6)


# ---- the original's checkpoints -------------------------------------------------------------------------------------


def write_mmrlpp_checkpoint(path, layers=3, n_rep=3, rep_dim=24, dtype=torch.float32, drop=(), extra=None):
    """MMRL++'s `MultiModalRepresentationLearner/model.pth.tar-N`: the whole model's state dict (representation learner,
    `image_encoder.A` / `.B`, `prompt_embeddings`, frozen CLIP weights), saved by Dassl after 10 epochs of AdamW; fp32
    (its amp) or fp16 (its code's default precision: the representation learner in fp16, `A` and `B` stay fp32). The
    tiny CLIP of conftest: d_text 32, d_vision 48, embed_dim 16."""
    from test_convert import save_like_dassl

    clip = tiny_clip()
    learner = {k: v * 2 for k, v in random_learner(clip, layers, n_rep, rep_dim, proj_lora_dim=4, seed=13).items()}
    state = {
        key: value.to(torch.float32 if key.startswith("image_encoder.") else dtype) for key, value in learner.items()
    }
    state["prompt_embeddings"] = torch.randn(4, 77, 32).to(dtype)
    state["image_encoder.conv1.weight"] = torch.randn(48, 3, 8, 8).to(dtype)
    state["image_encoder.proj"] = clip.visual_projection.weight.t().detach().to(dtype)
    state["text_encoder.positional_embedding"] = torch.randn(77, 32)
    for key in drop:
        del state[key]
    state.update(extra or {})
    save_like_dassl(path, state, 10, optimizer="adamw", shared=True)
    return {key: value.float() for key, value in state.items() if key in learner}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_mmrlpp_checkpoint_gives_the_original_logits_and_gradients(tmp_path, tokenizer, pixel_values, dtype):
    from test_model import padded77

    from maple_peft import from_official_checkpoint

    learner = write_mmrlpp_checkpoint(tmp_path / "model.pth.tar-10", dtype=dtype)
    clip = tiny_clip()
    untouched = copy.deepcopy(clip)
    model = from_official_checkpoint(
        clip, tmp_path / "model.pth.tar-10", class_names=CLASSES, template="{} texture.", alpha=0.6, beta=0.5
    )
    config = model.peft_config["default"]
    assert (config.variant, config.n_rep, config.rep_dim, config.proj_lora_dim, config.res_lora_dim) == (
        "mmrlpp", 3, 24, 4, 2,
    )  # fmt: skip
    assert (config.alpha, config.beta, config.rep_layers, config.template) == (0.6, 0.5, [1, 2, 3], "{} texture.")
    params = mmrlpp_learner(model)
    assert all(p.dtype == torch.float32 and torch.equal(p, learner[k]) for k, p in params.items())
    model.train()
    labels = torch.tensor([2, 0, 1])
    out = PromptClassifier(model, tokenizer, CLASSES).outputs(pixel_values)  # the training classes: fused
    (0.6 * F.cross_entropy(out.logits_class, labels) + 0.4 * F.cross_entropy(out.logits_rep, labels)).backward()
    leaves = {key: value.clone().requires_grad_(True) for key, value in learner.items()}
    ids = padded77(tokenizer, config, CLASSES)
    logits, logits_rep, fusion, _, _ = mmrlpp_logits(untouched, ids, pixel_values, leaves, [1, 2, 3], 0.6, 0.5)
    (0.6 * F.cross_entropy(logits, labels) + 0.4 * F.cross_entropy(logits_rep, labels)).backward()
    for got, ref in ((out.logits_class, logits), (out.logits_rep, logits_rep), (out.logits, fusion)):
        torch.testing.assert_close(got, ref, atol=1e-5 * ref.abs().max().item(), rtol=0)
    scale = max(leaf.grad.abs().max().item() for leaf in leaves.values())
    for key, param in params.items():
        assert leaves[key].grad.abs().sum() > 0, key
        torch.testing.assert_close(param.grad, leaves[key].grad, atol=1e-5 * scale, rtol=1e-4, msg=key)


def test_mmrl_and_mmrlpp_checkpoints_are_told_apart_by_their_keys(tmp_path):
    from test_convert_methods import write_mmrl_checkpoint

    from maple_peft.convert import read_official_checkpoint

    write_mmrl_checkpoint(tmp_path / "mmrl")
    write_mmrlpp_checkpoint(tmp_path / "mmrlpp", layers=2)
    mmrl, mmrlpp = read_official_checkpoint(tmp_path / "mmrl"), read_official_checkpoint(tmp_path / "mmrlpp")
    assert (mmrl.source, mmrl.variant, mmrlpp.source, mmrlpp.variant) == ("MMRL", "mmrl", "MMRL++", "mmrlpp")
    assert mmrlpp.options == {"n_rep": 3, "rep_dim": 24, "proj_lora_dim": 4, "res_lora_dim": 2}


@pytest.mark.parametrize(
    "change,message",
    [
        ({"drop": ["image_encoder.B"]}, "has no 'image_encoder.B'"),
        (
            {"drop": [aligner_key("v", 2, "A"), aligner_key("v", 2, "B"), aligner_key("v", 2, "bias")]},
            "text aligner layers for 3 layers",
        ),
        (
            {"extra": {"representation_learner.meta_net.weight": torch.ones(2, 2)}},
            "that MMRL\\+\\+'s code does not write",
        ),
        ({"extra": {aligner_key("t", 1, "A"): torch.ones(32, 5)}}, "text aligner As"),
    ],
    ids=["no-B", "fewer-vision-layers", "unknown-tensor", "other-rank"],
)
def test_a_malformed_mmrlpp_checkpoint_is_refused_naming_what_is_wrong(tmp_path, change, message):
    from maple_peft.convert import read_official_checkpoint

    write_mmrlpp_checkpoint(tmp_path / "ckpt", **change)
    with pytest.raises(ValueError, match=message):
        read_official_checkpoint(tmp_path / "ckpt")


def test_mmrlpp_checkpoint_goes_into_the_last_text_layers_with_its_datasets_beta_unless_told(tmp_path):
    from maple_peft import from_official_checkpoint

    write_mmrlpp_checkpoint(tmp_path / "ckpt", layers=2)
    model = from_official_checkpoint(tiny_clip(), tmp_path / "ckpt")
    assert (model.peft_config["default"].rep_layers, model.peft_config["default"].beta) == ([2, 3], 0.9)
    food = from_official_checkpoint(tiny_clip(), tmp_path / "ckpt", dataset="food101")  # its scripts' BETA 0.1
    assert food.peft_config["default"].beta == 0.1
    with pytest.raises(
        ValueError, match=r"rep_layers=\[1, 2, 3\] has 3 layers, but the checkpoint has aligner layers for 2"
    ):
        from_official_checkpoint(tiny_clip(), tmp_path / "ckpt", rep_layers=[1, 2, 3])


# ---- the training loop ----------------------------------------------------------------------------------------------


def test_mmrlpp_trains_in_the_training_loop_with_its_loss(assets, tmp_path):  # noqa: F811
    import json

    from test_benchmark_grid import in_process
    from test_train import SMOKE

    out = tmp_path / "run"
    argv = [
        "python", "examples/train.py", "--config", str(SMOKE), "--model_name_or_path", str(assets / "tiny-clip"),
        "--data_dir", str(assets / "data"), "--epochs", "1", "--warmup_epochs", "0", "--no_plots", "--no_zero_shot_baseline",
        "--variant", "mmrlpp", "--n_rep", "2", "--rep_dim", "16", "--beta", "0.6", "--res_lora_dim", "2",
        "--proj_lora_dim", "8", "--optimizer", "adamw", "--lr", "0.01", "--output_dir", str(out),
    ]  # fmt: skip
    assert in_process(argv, {}, tmp_path / "log") == 0, (tmp_path / "log").read_text()
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["variant"], config["beta"], config["proj_lora_dim"], config["res_lora_dim"]) == (
        "mmrlpp",
        0.6,
        8,
        2,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_config"]["objective"] == "mmrl"
    history = json.loads((out / "training_history.json").read_text())
    assert {"loss_ce", "loss_ce_rep", "loss_reg_image", "loss_reg_text"} <= set(history[-1])
    assert "# MMRL++ adapter" in (out / "README.md").read_text()

    # evaluate.py with another beta for this evaluation (the original's per-target value), the adapter left as it is
    data = ["--dataset_name", "imagefolder", "--data_dir", str(assets / "data"), "--num_workers", "0"]
    evaluate = ["python", "examples/evaluate.py", "--adapter", str(out), *data]
    result = tmp_path / "beta.json"
    assert in_process([*evaluate, "--beta", "0.3", "--output", str(result)], {}, tmp_path / "eval.log") == 0
    assert json.loads(result.read_text())["test_time_options"] == {"beta": 0.3}
    assert json.loads((out / "adapter_config.json").read_text())["beta"] == 0.6
    from script_runs import run_example  # as the command line runs it, leaving no Accelerate state behind

    refused = run_example("evaluate.py", *evaluate[2:], "--beta", "1.5")
    assert refused.returncode == 2  # refused in one line
    assert refused.stderr.startswith("error: --beta 1.5 must be a number in [0, 1]")
