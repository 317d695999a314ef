"""Import of checkpoints written by the original CoCoOp, KgCoOp (and CoOp) and MMRL code, saved by Dassl's trainer.

Each file is written as the original code writes it (its keys, shapes and dtypes, the optimizer and the warm-up
scheduler's state beside the weights), imported, and compared against the plain references of `reference_methods.py`
fed with the file's own tensors.
"""

from __future__ import annotations

import copy
import pickle
import re
import shutil

import pytest
import torch
import torch.nn.functional as F
from conftest import TOKENIZER_DIR, tiny_clip
from peft import PeftModel, get_peft_model
from reference_methods import cocoop_logits, kgcoop_loss, mmrl_logits
from test_convert import Payload, RunsOnSetstate, save_like_dassl
from test_methods import cocoop_learner, mmrl_learner
from test_model import CLASSES, padded77
from transformers import CLIPModel

from maple_peft import MaPLeConfig, PromptClassifier, format_prompts, from_official_checkpoint, methods
from maple_peft.cli import main
from maple_peft.convert import read_official_checkpoint

# the tiny CLIP of conftest: d_text 32 (3 layers), d_vision 48 (4 layers), image embeddings 16 wide
D_TEXT, D_VISION, EMBED = 32, 48, 16
PET_TEMPLATE = "a photo of a {}, a type of pet."


def owners_of(*names: str) -> str:
    """A regex of the methods a refusal says the options `names` belong to, `MMRL and MMRL\\+\\+`: those that declare
    them (for `template`: the variants without learned prompts, which take a class template), in title order."""
    titles = {method.title for name in names for method in methods.owners(name)}
    if "template" in names:
        titles |= {m.title for m in methods.variants().values() if not (m.text_prompts or m.vision_prompts)}
    return re.escape(" and ".join(sorted(titles)))


def _read_back(tensors, dtype):
    """The values the file holds, as float32 (what the references are fed)."""
    return {key: value.to(dtype).float() for key, value in tensors.items()}


def write_cocoop_checkpoint(
    path, n_ctx=4, d_text=D_TEXT, embed_dim=EMBED, hidden=None, dtype=torch.float16, extra=None, **entries
):
    """CoCoOp's `prompt_learner/model.pth.tar-N`: `ctx`, the meta-net and the token buffers (no prefix: the prompt
    learner is the registered model), saved by Dassl after 10 epochs of SGD with a warm-up epoch."""
    g = torch.Generator().manual_seed(11)
    hidden = hidden or embed_dim // 16
    learner = {
        "ctx": torch.randn(n_ctx, d_text, generator=g) * 0.5,
        "meta_net.linear1.weight": torch.randn(hidden, embed_dim, generator=g),
        # a positive bias keeps the tiny meta-net's hidden unit active, so that every tensor gets a gradient
        "meta_net.linear1.bias": torch.rand(hidden, generator=g) + 1.0,
        "meta_net.linear2.weight": torch.randn(d_text, hidden, generator=g) * 0.5,
        "meta_net.linear2.bias": torch.randn(d_text, generator=g) * 0.1,
    }
    state = {key: value.to(dtype) for key, value in learner.items()}
    state["token_prefix"] = torch.randn(len(CLASSES), 1, d_text).to(dtype)
    state["token_suffix"] = torch.randn(len(CLASSES), 76 - n_ctx, d_text).to(dtype)
    state.update(extra or {})
    save_like_dassl(path, state, 10, entries.pop("scheduler_object", False), entries)
    return _read_back(learner, dtype)


def write_kgcoop_checkpoint(
    path, n_ctx=4, d_text=D_TEXT, dtype=torch.float16, unused=("bias_vectors", "meta_net"), extra=None, **entries
):
    """KgCoOp's `prompt_learner/model.pth.tar-N`: `ctx`, its unused `bias_vectors` and square `meta_net.linear1`, the
    token buffers; saved by its Dassl fork (no `val_result`) after 100 epochs of SGD with a warm-up epoch."""
    g = torch.Generator().manual_seed(12)
    ctx = torch.randn(n_ctx, d_text, generator=g) * 0.5
    state = {"ctx": ctx.to(dtype)}
    if "bias_vectors" in unused:
        state["bias_vectors"] = (torch.randn(1, d_text, generator=g) * 0.02).to(dtype)
    if "meta_net" in unused:
        state["meta_net.linear1.weight"] = torch.randn(EMBED, EMBED, generator=g).to(dtype)
        state["meta_net.linear1.bias"] = torch.randn(EMBED, generator=g).to(dtype)
    state["token_prefix"] = torch.randn(len(CLASSES), 1, d_text).to(dtype)
    state["token_suffix"] = torch.randn(len(CLASSES), 76 - n_ctx, d_text).to(dtype)
    state.update(extra or {})
    save_like_dassl(path, state, 100, entries.pop("scheduler_object", False), entries, without=("val_result",))
    return {"ctx": ctx.to(dtype).float()}


def write_mmrl_checkpoint(path, layers=3, n_rep=3, rep_dim=24, dtype=torch.float32, extra=None, drop=(), **entries):
    """MMRL's `MultiModalRepresentationLearner/model.pth.tar-N`: the whole model's state dict (representation
    learner, `proj_rep`, `prompt_embeddings`, frozen CLIP weights), saved by Dassl after 10 epochs of AdamW with a
    warm-up epoch; the optimizer holds every tensor of the model. fp32 (MMRL's amp) or fp16 (its code's default
    precision: `proj_rep` stays fp32)."""
    g = torch.Generator().manual_seed(13)
    learner = {"representation_learner.compound_rep_tokens": torch.randn(n_rep, rep_dim, generator=g)}
    for k in range(layers):
        for tower, width in (("t", D_TEXT), ("v", D_VISION)):
            prefix = f"representation_learner.compound_rep_tokens_r2{tower}proj.{k}"
            learner[f"{prefix}.weight"] = torch.randn(width, rep_dim, generator=g) * 0.3
            learner[f"{prefix}.bias"] = torch.randn(width, generator=g) * 0.1
    learner["image_encoder.proj_rep"] = torch.randn(D_VISION, EMBED, generator=g) * D_VISION**-0.5
    state = {
        key: value.to(torch.float32 if key == "image_encoder.proj_rep" else dtype) for key, value in learner.items()
    }
    state["prompt_embeddings"] = torch.randn(len(CLASSES), 77, D_TEXT).to(dtype)
    # the frozen CLIP (no token embedding, no logit_scale)
    state["image_encoder.conv1.weight"] = torch.randn(D_VISION, 3, 8, 8).to(dtype)
    state["image_encoder.proj"] = torch.randn(D_VISION, EMBED).to(dtype)
    state["text_encoder.transformer.resblocks.0.attn.in_proj_weight"] = torch.randn(3 * D_TEXT, D_TEXT).to(dtype)
    state["text_encoder.positional_embedding"] = torch.randn(77, D_TEXT)
    for key in drop:
        del state[key]
    state.update(extra or {})
    save_like_dassl(path, state, 10, entries.pop("scheduler_object", False), entries, optimizer="adamw", shared=True)
    return {
        key: value.to(torch.float32 if key == "image_encoder.proj_rep" else dtype).float()
        for key, value in learner.items()
    }


def _leaves(tensors):
    return {key: value.clone().requires_grad_(True) for key, value in tensors.items()}


def _assert_grads(params, leaves):
    """Every adapter gradient equals the reference's, relative to the largest gradient: a small one (the meta-net's
    first layer, fed by the sum over every class and context token) carries the rounding of the large terms it sums."""
    assert set(params) == set(leaves)
    scale = max(leaf.grad.abs().max().item() for leaf in leaves.values())
    for key, param in params.items():
        ref = leaves[key].grad
        assert ref.abs().sum() > 0, key
        torch.testing.assert_close(param.grad, ref, atol=1e-5 * scale, rtol=1e-4, msg=key)


# ---- the files import as users have them, with the original's logits and gradients --------------------------------


@pytest.mark.parametrize("writer", ["cocoop", "kgcoop", "mmrl"])
def test_the_files_are_written_as_dassl_writes_them_and_plain_weights_only_refuses_them(tmp_path, writer):
    path = tmp_path / "model.pth.tar-10"
    {"cocoop": write_cocoop_checkpoint, "kgcoop": write_kgcoop_checkpoint, "mmrl": write_mmrl_checkpoint}[writer](path)
    optimizer = "torch.optim.adamw.AdamW" if writer == "mmrl" else "torch.optim.sgd.SGD"
    assert {"torch.optim.lr_scheduler.CosineAnnealingLR", optimizer} <= set(
        torch.serialization.get_unsafe_globals_in_checkpoint(path)
    )
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    assert read_official_checkpoint(path).source == {"cocoop": "CoCoOp", "kgcoop": "KgCoOp", "mmrl": "MMRL"}[writer]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cocoop_checkpoint_gives_the_original_logits_and_gradients(tmp_path, tokenizer, pixel_values, dtype):
    learner = write_cocoop_checkpoint(tmp_path / "model.pth.tar-10", dtype=dtype)
    clip = tiny_clip()
    untouched = copy.deepcopy(clip)
    model = from_official_checkpoint(clip, tmp_path / "model.pth.tar-10", tokenizer_name_or_path=TOKENIZER_DIR)
    config = model.peft_config["default"]
    assert (config.variant, config.n_ctx, config.depth, config.prompt_init) == ("cocoop", 4, 1, "a photo of a")
    # the file's values, exactly, as float32 adapter weights
    params = cocoop_learner(model)
    assert all(p.dtype == torch.float32 and torch.equal(p, learner[k]) for k, p in params.items())
    model.train()
    labels = torch.tensor([0, 2, 3])
    logits = PromptClassifier(model, tokenizer, CLASSES)(pixel_values)
    F.cross_entropy(logits, labels).backward()
    leaves = _leaves(learner)
    expected = cocoop_logits(untouched, padded77(tokenizer, config, CLASSES), pixel_values, leaves)
    F.cross_entropy(expected, labels).backward()
    torch.testing.assert_close(logits, expected, atol=1e-5 * expected.abs().max().item(), rtol=0)
    _assert_grads(params, leaves)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kgcoop_checkpoint_imports_as_coop_with_the_original_loss_and_gradients(
    tmp_path, tokenizer, pixel_values, dtype
):
    from maple_peft import KnowledgeGuidedLoss

    learner = write_kgcoop_checkpoint(tmp_path / "model.pth.tar-100", dtype=dtype)
    clip = tiny_clip()
    untouched = copy.deepcopy(clip)
    model = from_official_checkpoint(clip, tmp_path / "model.pth.tar-100", tokenizer_name_or_path=TOKENIZER_DIR)
    config = model.peft_config["default"]
    assert (config.variant, config.n_ctx, config.depth, config.prompt_init) == ("language", 4, 1, "a photo of a")
    ctx = model.get_base_model().text_model.embeddings.token_embedding.maple_ctx["default"]
    assert ctx.dtype == torch.float32 and torch.equal(ctx, learner["ctx"])
    assert [name for name, p in model.named_parameters() if p.requires_grad] == [
        "base_model.model.text_model.embeddings.token_embedding.maple_ctx.default"
    ]  # KgCoOp's unused bias_vectors and meta_net.linear1 are not imported
    model.train()
    labels = torch.tensor([1, 0, 3])
    clf = PromptClassifier(model, tokenizer, CLASSES)
    out = KnowledgeGuidedLoss(clf, weight=8.0, template=PET_TEMPLATE)(pixel_values, labels)
    out.loss.backward()
    leaves = _leaves(learner)
    template_ids = tokenizer(
        format_prompts(None, CLASSES, template=PET_TEMPLATE), padding="max_length", max_length=77, return_tensors="pt"
    )["input_ids"]
    ids = padded77(tokenizer, config, CLASSES)
    loss, logits, _ = kgcoop_loss(untouched, ids, pixel_values, leaves, template_ids, labels, weight=8.0)
    loss.backward()
    torch.testing.assert_close(out.logits, logits, atol=1e-5 * logits.abs().max().item(), rtol=0)
    torch.testing.assert_close(out.loss, loss, atol=1e-5 * loss.abs().item(), rtol=0)
    _assert_grads({"ctx": ctx}, leaves)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_mmrl_checkpoint_gives_the_original_logits_and_gradients(tmp_path, tokenizer, pixel_values, dtype):
    learner = write_mmrl_checkpoint(tmp_path / "model.pth.tar-10", dtype=dtype)
    clip = tiny_clip()
    untouched = copy.deepcopy(clip)
    model = from_official_checkpoint(
        clip, tmp_path / "model.pth.tar-10", class_names=CLASSES, template=PET_TEMPLATE, alpha=0.6
    )
    config = model.peft_config["default"]
    assert (config.variant, config.n_rep, config.rep_dim, config.alpha) == ("mmrl", 3, 24, 0.6)
    assert config.template == PET_TEMPLATE and config.class_names == CLASSES
    # the engine's default rep_layers (the last 7 text layers; all 3 here), as for an adapter made from scratch
    default = get_peft_model(tiny_clip(), MaPLeConfig(variant="mmrl", n_rep=3, rep_dim=24))
    assert config.rep_layers == default.peft_config["default"].rep_layers == [1, 2, 3]
    params = mmrl_learner(model)
    assert all(p.dtype == torch.float32 and torch.equal(p, learner[k]) for k, p in params.items())
    model.train()
    labels = torch.tensor([2, 0, 1])
    out = PromptClassifier(model, tokenizer, CLASSES).outputs(pixel_values)  # "auto": the training classes fuse
    (0.6 * F.cross_entropy(out.logits_class, labels) + 0.4 * F.cross_entropy(out.logits_rep, labels)).backward()
    leaves = _leaves(learner)
    ids = padded77(tokenizer, config, CLASSES)
    logits, logits_rep, fusion, _, _ = mmrl_logits(untouched, ids, pixel_values, leaves, [1, 2, 3], alpha=0.6)
    (0.6 * F.cross_entropy(logits, labels) + 0.4 * F.cross_entropy(logits_rep, labels)).backward()
    for got, ref in ((out.logits_class, logits), (out.logits_rep, logits_rep), (out.logits, fusion)):
        torch.testing.assert_close(got, ref, atol=1e-5 * ref.abs().max().item(), rtol=0)
    _assert_grads(params, leaves)


@pytest.mark.parametrize("rep_layers", [[2, 3], None], ids=["given", "not-given-the-last-2-text-layers"])
def test_mmrl_checkpoint_goes_into_the_rep_layers_given_or_the_last_text_layers(
    tmp_path, tokenizer, pixel_values, rep_layers
):
    # a file with 2 projections per tower: without rep_layers, the last 2 of the 3 text layers, as MMRL's configs
    # place one projection per layer up to the last
    learner = write_mmrl_checkpoint(tmp_path / "ckpt", layers=2)
    clip = tiny_clip()
    untouched = copy.deepcopy(clip)
    model = from_official_checkpoint(clip, tmp_path / "ckpt", rep_layers=rep_layers)
    config = model.peft_config["default"]
    assert (config.rep_layers, config.alpha, config.template) == ([2, 3], 0.7, "a photo of a {}.")
    text = model.get_base_model().text_model.encoder.layers
    assert torch.equal(
        text[2].maple_rep_proj["default"].weight,
        learner["representation_learner.compound_rep_tokens_r2tproj.1.weight"],
    )
    with torch.no_grad():
        out = PromptClassifier(model, tokenizer, CLASSES).outputs(pixel_values)
        ids = padded77(tokenizer, config, CLASSES)
        logits, logits_rep, fusion, _, _ = mmrl_logits(untouched, ids, pixel_values, learner, [2, 3], alpha=0.7)
    # no class names given: the class path everywhere, as the original on classes it was not trained on
    torch.testing.assert_close(out.logits, logits, atol=1e-5 * logits.abs().max().item(), rtol=0)
    torch.testing.assert_close(out.logits_rep, logits_rep, atol=1e-5 * logits_rep.abs().max().item(), rtol=0)


@pytest.mark.parametrize("writer,dtype", [("cocoop", torch.bfloat16), ("mmrl", torch.float16)])
def test_fp16_files_on_a_half_precision_base_compute_in_the_base_dtype(
    tmp_path, tokenizer, pixel_values, writer, dtype
):
    clip = tiny_clip()
    untouched = copy.deepcopy(clip)
    if writer == "cocoop":
        learner = write_cocoop_checkpoint(tmp_path / "ckpt", dtype=torch.float16)
        model = from_official_checkpoint(clip.to(dtype), tmp_path / "ckpt", tokenizer_name_or_path=TOKENIZER_DIR)
        with torch.no_grad():
            expected = cocoop_logits(
                untouched, padded77(tokenizer, model.peft_config["default"], CLASSES), pixel_values, learner
            )
    else:
        learner = write_mmrl_checkpoint(tmp_path / "ckpt", dtype=torch.float16)
        model = from_official_checkpoint(clip.to(dtype), tmp_path / "ckpt", class_names=CLASSES)
        with torch.no_grad():
            ids = padded77(tokenizer, model.peft_config["default"], CLASSES)
            expected = mmrl_logits(untouched, ids, pixel_values, learner, [1, 2, 3])[2]
    with torch.no_grad():
        got = PromptClassifier(model, tokenizer, CLASSES)(pixel_values.to(dtype))
    assert got.dtype == dtype
    tolerance = 3e-2 if dtype == torch.bfloat16 else 4e-3
    torch.testing.assert_close(got.float(), expected, atol=tolerance * expected.abs().max().item(), rtol=0)


def test_cocoop_prompts_follow_the_original_context_init(tmp_path, tokenizer):
    # 2 context tokens: not "a photo of a" (4 words): the original's placeholder prompt
    write_cocoop_checkpoint(tmp_path / "ckpt", n_ctx=2)
    model = from_official_checkpoint(tiny_clip(), tmp_path / "ckpt", tokenizer_name_or_path=TOKENIZER_DIR)
    assert model.peft_config["default"].prompt_init is None
    assert PromptClassifier(model, tokenizer, ["cat"]).prompts == ["X X cat."]
    # the ctx_init it was trained with, when its word count is the file's n_ctx
    model = from_official_checkpoint(
        tiny_clip(), tmp_path / "ckpt", prompt_init="a_photo", tokenizer_name_or_path=TOKENIZER_DIR
    )
    assert PromptClassifier(model, tokenizer, ["cat"]).prompts == ["a photo cat."]


def test_cocoop_imports_under_another_adapter_name(tmp_path):
    learner = write_cocoop_checkpoint(tmp_path / "ckpt")
    model = from_official_checkpoint(tiny_clip(), tmp_path / "ckpt", adapter_name="pets", prompt_init=None)
    layer = model.get_base_model().text_model.embeddings.token_embedding
    assert torch.equal(layer.maple_meta_linear2["pets"].weight, learner["meta_net.linear2.weight"])


# ---- told apart by their keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "unused,source",
    [(("bias_vectors", "meta_net"), "KgCoOp"), (("meta_net",), "KgCoOp"), (("bias_vectors",), "KgCoOp"), ((), "CoOp")],
)
def test_a_kgcoop_file_is_not_taken_for_a_cocoop_one(tmp_path, unused, source):
    # KgCoOp's file holds a meta_net.linear1 as CoCoOp's does, but a square one and no linear2
    write_kgcoop_checkpoint(tmp_path / "ckpt", unused=unused)
    converted = read_official_checkpoint(tmp_path / "ckpt")
    assert (converted.source, converted.variant, converted.n_ctx, converted.depth) == (source, "language", 4, 1)
    assert list(converted.state_dict) == ["base_model.model.text_model.embeddings.token_embedding.maple_ctx"]
    write_cocoop_checkpoint(tmp_path / "cocoop")
    assert read_official_checkpoint(tmp_path / "cocoop").source == "CoCoOp"


# ---- malformed files, other bases, options that do not fit: one clear error ---------------------------------------


def _rewrite(path, change):
    checkpoint = torch.load(path, weights_only=False)
    change(checkpoint["state_dict"])
    torch.save({"state_dict": checkpoint["state_dict"], "epoch": checkpoint["epoch"]}, path)


MALFORMED = {
    "cocoop_no_linear2_bias": (
        "cocoop",
        lambda s: s.pop("meta_net.linear2.bias"),
        "has no 'meta_net.linear2.bias'",
    ),
    "cocoop_linear2_of_another_width": (
        "cocoop",
        lambda s: s.update({"meta_net.linear2.weight": torch.zeros(40, 1)}),
        r"its meta-net \(.*meta_net.linear2.weight \(40, 1\).*\) does not map image features to the 32-wide context",
    ),
    "cocoop_with_kgcoop_bias_vectors": (
        "cocoop",
        lambda s: s.update({"bias_vectors": torch.zeros(1, 32)}),
        "holds KgCoOp's 'bias_vectors' beside CoCoOp's 'meta_net.linear2'",
    ),
    "kgcoop_class_specific_context": (
        "kgcoop",
        lambda s: s.update({"ctx": torch.zeros(4, 4, 32)}),
        r"class-specific contexts \('ctx' of shape \(4, 4, 32\), trained with CSC=True\)",
    ),
    "kgcoop_no_ctx": ("kgcoop", lambda s: s.pop("ctx"), "has no 'ctx'"),
    "mmrl_no_proj_rep": ("mmrl", lambda s: s.pop("image_encoder.proj_rep"), "has no 'image_encoder.proj_rep'"),
    "mmrl_no_first_projection": (
        "mmrl",
        lambda s: [s.pop(f"representation_learner.compound_rep_tokens_r2tproj.0.{p}") for p in ("weight", "bias")],
        "has no 'representation_learner.compound_rep_tokens_r2tproj.0.weight'",
    ),
    "mmrl_fewer_vision_projections": (
        "mmrl",
        lambda s: [s.pop(f"representation_learner.compound_rep_tokens_r2vproj.2.{p}") for p in ("weight", "bias")],
        "text projections for 3 layers but vision projections for 2",
    ),
    "mmrl_projection_of_another_rep_dim": (
        "mmrl",
        lambda s: s.update({"representation_learner.compound_rep_tokens_r2tproj.1.weight": torch.zeros(32, 8)}),
        "the text projection weights have different shapes",
    ),
    "mmrl_unknown_learner_tensor": (
        "mmrl",
        lambda s: s.update({"representation_learner.compound_rep_tokens_r2tproj.0.scale": torch.ones(1)}),
        "representation-learner tensors that MMRL's code does not write",
    ),
    "mmrl_non_finite_tokens": (
        "mmrl",
        lambda s: s["representation_learner.compound_rep_tokens"].__setitem__((0, 0), float("nan")),
        r"NaN or inf values \(representation_learner.compound_rep_tokens\)",
    ),
}
WRITERS = {"cocoop": write_cocoop_checkpoint, "kgcoop": write_kgcoop_checkpoint, "mmrl": write_mmrl_checkpoint}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_files_get_one_clear_error(tmp_path, kind):
    writer, change, message = MALFORMED[kind]
    WRITERS[writer](tmp_path / "ckpt")
    _rewrite(tmp_path / "ckpt", change)
    with pytest.raises(ValueError, match=message):
        from_official_checkpoint(tiny_clip(), tmp_path / "ckpt")


@pytest.mark.parametrize(
    "writer,kwargs,message",
    [
        (
            "cocoop",
            {"d_text": 64, "embed_dim": 32},
            r"64-wide \(text\) and 32-wide \(image embedding\), but the base model has d_text=32, embed_dim=16",
        ),
        (
            "cocoop",
            {"hidden": 2},
            r"maple_meta_linear1.weight is \(2, 16\), but the adapter on this base model needs \(1, 16\)",
        ),
        ("kgcoop", {"d_text": 64}, r"64-wide \(text\), but the base model has d_text=32"),
        (
            "mmrl",
            {"layers": 4},
            r"projection per tower for 4 layers, but the base model's text tower has 3 layers and its vision tower 4; pass",
        ),
    ],
)
def test_a_file_of_another_base_model_is_refused_naming_both(tmp_path, writer, kwargs, message):
    WRITERS[writer](tmp_path / "ckpt", **kwargs)
    with pytest.raises(ValueError, match=message):
        from_official_checkpoint(tiny_clip(), tmp_path / "ckpt", tokenizer_name_or_path=TOKENIZER_DIR)


@pytest.mark.parametrize(
    "writer,kwargs,message",
    [
        (
            "mmrl",
            {"rep_layers": [2, 3]},
            r"rep_layers=\[2, 3\] has 2 layers, but the checkpoint has a projection per tower for 3",
        ),
        (
            "mmrl",
            {"rep_layers": [2, 3, 4]},
            r"rep_layers=\[2, 3, 4\] but the base model's towers have 3 \(text\) and 4 \(vision\) layers",
        ),
        ("mmrl", {"rep_layers": [3, 1, 2]}, "must be a non-empty increasing list of 1-based layer numbers"),
        ("mmrl", {"alpha": 1.5}, r"alpha=1.5 must be a number in \[0, 1\]"),
        ("mmrl", {"template": "a photo"}, "exactly one '{}'"),
        (
            "kgcoop",
            {"rep_layers": [1, 2]},
            rf"rep_layers=\[1, 2\] given, but these options belong to {owners_of('rep_layers')} checkpoints, and this is a "
            "KgCoOp checkpoint",
        ),
        (
            "cocoop",
            {"template": PET_TEMPLATE, "alpha": 0.5},
            f"alpha=0.5, template=.* given, but these options belong to {owners_of('alpha', 'template')} checkpoints, and "
            "this is a CoCoOp",
        ),
    ],
)
def test_options_that_do_not_fit_the_file_are_refused(tmp_path, writer, kwargs, message):
    WRITERS[writer](tmp_path / "ckpt")
    with pytest.raises(ValueError, match=message):
        from_official_checkpoint(tiny_clip(), tmp_path / "ckpt", tokenizer_name_or_path=TOKENIZER_DIR, **kwargs)


# ---- crafted payloads in the new formats run nothing --------------------------------------------------------------

# where a payload sits: an ignored tensor of the state dict, a trained tensor, the scheduler, the optimizer
PAYLOAD_PLACES = {
    "cocoop": ("token_suffix", "meta_net.linear1.weight"),
    "kgcoop": ("bias_vectors", "ctx"),
    "mmrl": ("prompt_embeddings", "representation_learner.compound_rep_tokens"),
}


@pytest.mark.parametrize("entry", ["ignored_tensor", "trained_tensor", "scheduler", "optimizer"])
@pytest.mark.parametrize("kind", ["builtins.exec", "subprocess.call", "setstate"])
@pytest.mark.parametrize("writer", sorted(PAYLOAD_PLACES))
def test_a_payload_in_a_file_of_the_new_formats_runs_nothing(tmp_path, writer, kind, entry):
    marker = tmp_path / "ran"
    payload = RunsOnSetstate(marker) if kind == "setstate" else Payload(kind, marker)
    ignored, trained = PAYLOAD_PLACES[writer]
    if entry == "ignored_tensor":
        kwargs = {"extra": {ignored: payload}}
    elif entry == "trained_tensor":
        kwargs = {"extra": {trained: payload}}
    elif entry == "scheduler":
        kwargs = {"scheduler": {"successor": payload, "warmup_epoch": 1}}
    else:
        kwargs = {"optimizer": payload}
    WRITERS[writer](tmp_path / "ckpt", **kwargs)
    if entry == "trained_tensor":
        shown = {"setstate": "test_convert.RunsOnSetstate", "subprocess.call": "(subprocess|commands).call"}.get(
            kind, kind
        )
        with pytest.raises(ValueError, match=rf"'{trained}' is an object of {shown} \(not loaded\)"):
            read_official_checkpoint(tmp_path / "ckpt")
    else:
        converted = read_official_checkpoint(tmp_path / "ckpt")
        assert converted.source == {"cocoop": "CoCoOp", "kgcoop": "KgCoOp", "mmrl": "MMRL"}[writer]
    assert not marker.exists()


# ---- the command ----------------------------------------------------------------------------------------------------


def _convert(capsys, *args):
    code = main(["convert-official", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_convert_official_command_converts_a_cocoop_and_a_kgcoop_file(
    tmp_path, capsys, saved_base, tokenizer, pixel_values
):
    write_cocoop_checkpoint(tmp_path / "cocoop.pth.tar-10")
    code, out, _ = _convert(
        capsys,
        tmp_path / "cocoop.pth.tar-10",
        "--base-model",
        saved_base,
        "--output-dir",
        tmp_path / "a",
        "--class-names",
        *CLASSES,
    )
    assert code == 0 and "CoCoOp checkpoint: variant=cocoop, n_ctx=4, depth=1" in out
    loaded = PeftModel.from_pretrained(CLIPModel.from_pretrained(saved_base), tmp_path / "a")
    assert loaded.peft_config["default"].class_names == CLASSES
    direct = from_official_checkpoint(CLIPModel.from_pretrained(saved_base), tmp_path / "cocoop.pth.tar-10")
    with torch.no_grad():
        got = PromptClassifier.from_pretrained(str(tmp_path / "a"), None, base_model_name_or_path=saved_base)(
            pixel_values
        )
        expected = PromptClassifier(direct, tokenizer, CLASSES)(pixel_values)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    write_kgcoop_checkpoint(tmp_path / "kgcoop.pth.tar-100")
    code, out, _ = _convert(
        capsys, tmp_path / "kgcoop.pth.tar-100", "--base-model", saved_base, "--output-dir", tmp_path / "b"
    )
    assert code == 0 and "KgCoOp checkpoint: variant=language, n_ctx=4, depth=1" in out


def test_convert_official_command_takes_mmrls_options(tmp_path, capsys, saved_base):
    write_mmrl_checkpoint(tmp_path / "model.pth.tar-10", layers=2)
    code, out, err = _convert(
        capsys,
        tmp_path / "model.pth.tar-10",
        "--base-model",
        saved_base,
        "--output-dir",
        tmp_path / "a",
        "--rep-layers",
        "2",
        "3",
        "--alpha",
        "0.6",
        "--template",
        PET_TEMPLATE,
        "--class-names",
        *CLASSES,
        "--dataset",
        "oxford_pets",
    )
    assert code == 0, err
    assert "MMRL checkpoint: variant=mmrl, n_rep=3, rep_dim=24, rep_layers=[2, 3], alpha=0.6" in out
    config = PeftModel.from_pretrained(CLIPModel.from_pretrained(saved_base), tmp_path / "a").peft_config["default"]
    assert (config.rep_layers, config.alpha, config.template) == ([2, 3], 0.6, PET_TEMPLATE)
    assert (config.class_names, config.dataset) == (CLASSES, "oxford_pets")


@pytest.mark.parametrize(
    "writer,args,message",
    [
        (
            "mmrl",
            ["--rep-layers", "3"],
            r"rep_layers=\[3\] has 1 layers, but the checkpoint has a projection per tower for 2",
        ),
        ("mmrl", ["--rep-layers", "3", "4"], r"rep_layers=\[3, 4\] but the base model's towers have 3 \(text\)"),
        (
            "kgcoop",
            ["--alpha", "0.5"],
            f"alpha=0.5 given, but these options belong to {owners_of('alpha')} checkpoints",
        ),
    ],
)
def test_convert_official_command_refuses_options_that_do_not_fit_before_loading_the_base(
    tmp_path, capsys, saved_base, writer, args, message
):
    if writer == "mmrl":
        write_mmrl_checkpoint(tmp_path / "ckpt", layers=2)
    else:
        write_kgcoop_checkpoint(tmp_path / "ckpt")
    # a base model whose config reads but whose weights are missing: the error comes before the weights are loaded
    base = tmp_path / "config-only"
    base.mkdir()
    shutil.copy(f"{saved_base}/config.json", base / "config.json")
    code, _, err = _convert(capsys, tmp_path / "ckpt", "--base-model", base, "--output-dir", tmp_path / "a", *args)
    assert code == 2 and err.startswith("maple-peft: error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert "Traceback" not in err and not (tmp_path / "a").exists()
