"""Import of checkpoints written by the original MaPLe code."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TOKENIZER_DIR, tiny_clip
from reference import reference_logits
from test_model import CLASSES, padded77

import maple_peft
from maple_peft import MaPLeConfig, PromptClassifier, from_official_checkpoint
from maple_peft.cli import main


def write_official_checkpoint(
    path, d_text=32, d_vision=48, n_ctx=2, depth=3, dtype=torch.float16, prefix="prompt_learner."
):
    """A file laid out like the original code's `model.pth.tar-N`, with random prompt-learner tensors."""
    g = torch.Generator().manual_seed(3)
    learner = {
        "ctx": torch.randn(n_ctx, d_text, generator=g),
        "proj.weight": torch.randn(d_vision, d_text, generator=g) * 0.2,
        "proj.bias": torch.randn(d_vision, generator=g) * 0.2,
        "token_prefix": torch.randn(4, 1, d_text, generator=g),
        "token_suffix": torch.randn(4, 74, d_text, generator=g),
    }
    for k in range(depth - 1):
        learner[f"compound_prompts_text.{k}"] = torch.randn(n_ctx, d_text, generator=g)
        learner[f"compound_prompt_projections.{k}.weight"] = torch.randn(d_vision, d_text, generator=g) * 0.2
        learner[f"compound_prompt_projections.{k}.bias"] = torch.randn(d_vision, generator=g) * 0.2
    state = {prefix + k: v.to(dtype) for k, v in learner.items()}
    state["image_encoder.conv1.weight"] = torch.randn(8, 3, 4, 4).to(dtype)  # frozen CLIP weights are ignored
    torch.save({"state_dict": state, "epoch": 5, "optimizer": {"state": {}, "param_groups": []}}, path)
    return {k: v.to(dtype).float() for k, v in learner.items()}


@pytest.mark.parametrize("prefix,dtype", [("prompt_learner.", torch.float16), ("", torch.float32)])
def test_official_checkpoint_gives_the_original_models_logits(tmp_path, tokenizer, pixel_values, prefix, dtype):
    learner = write_official_checkpoint(tmp_path / "model.pth.tar-5", prefix=prefix, dtype=dtype)
    clip = tiny_clip()
    untouched = copy.deepcopy(clip)
    model = from_official_checkpoint(clip, tmp_path / "model.pth.tar-5", tokenizer_name_or_path=TOKENIZER_DIR)
    config = model.peft_config["default"]
    assert (config.n_ctx, config.depth, config.variant) == (2, 3, "maple")
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    text = [learner["ctx"]] + [learner[f"compound_prompts_text.{k}"] for k in range(2)]
    couplings = [("proj.weight", "proj.bias")] + [
        (f"compound_prompt_projections.{k}.weight", f"compound_prompt_projections.{k}.bias") for k in range(2)
    ]
    vision = [t @ learner[w].t() + learner[b] for t, (w, b) in zip(text, couplings)]
    with torch.no_grad():
        expected = reference_logits(untouched, padded77(tokenizer, config, CLASSES), pixel_values, text, vision)
        got = PromptClassifier(model, tokenizer, CLASSES)(pixel_values)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_a_file_that_is_not_a_maple_checkpoint_is_refused(tmp_path):
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a checkpoint of the original MaPLe, PromptSRC or IVLP code"):
        from_official_checkpoint(tiny_clip(), tmp_path / "other.pt", tokenizer_name_or_path=TOKENIZER_DIR)
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="could not be read"):
        from_official_checkpoint(tiny_clip(), tmp_path / "text.pt", tokenizer_name_or_path=TOKENIZER_DIR)
    with pytest.raises(FileNotFoundError):
        from_official_checkpoint(tiny_clip(), tmp_path / "missing.pt")


def test_checkpoint_for_another_backbone_is_refused(tmp_path):
    write_official_checkpoint(tmp_path / "ckpt", d_text=64, d_vision=40)
    with pytest.raises(
        ValueError, match="64-wide .text. and 40-wide .vision., but the base model has d_text=32, d_vision=48"
    ):
        from_official_checkpoint(tiny_clip(), tmp_path / "ckpt", tokenizer_name_or_path=TOKENIZER_DIR)


def test_convert_official_command_writes_a_loadable_adapter(tmp_path, saved_base, tokenizer, pixel_values):
    write_official_checkpoint(tmp_path / "model.pth.tar-5")
    out = tmp_path / "adapter"
    assert (
        main(
            [
                "convert-official",
                str(tmp_path / "model.pth.tar-5"),
                "--base-model",
                saved_base,
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    assert (out / "adapter_model.safetensors").exists()
    from peft import PeftModel
    from transformers import CLIPModel

    model = PeftModel.from_pretrained(CLIPModel.from_pretrained(saved_base), out)
    assert model.peft_config["default"].depth == 3
    assert (
        main(
            [
                "convert-official",
                str(tmp_path / "model.pth.tar-5"),
                "--base-model",
                saved_base,
                "--output-dir",
                str(out),
            ]
        )
        == 2
    )
    assert maple_peft.__version__


def write_promptsrc_checkpoint(
    path, d_text=32, d_vision=48, n_ctx=4, n_ctx_vision=3, depth=3, dtype=torch.float16, module_prefix=""
):
    """A file laid out like PromptSRC's / IVLP's `VLPromptLearner/model.pth.tar-N` (the whole model's state dict)."""
    g = torch.Generator().manual_seed(5)
    prompts = {
        "prompt_learner.ctx": torch.randn(n_ctx, d_text, generator=g),
        "image_encoder.VPT": torch.randn(n_ctx_vision, d_vision, generator=g),
    }
    for i in range(1, depth):
        prompts[f"text_encoder.transformer.resblocks.{i}.VPT_shallow"] = torch.randn(n_ctx, d_text, generator=g)
        prompts[f"image_encoder.transformer.resblocks.{i}.VPT_shallow"] = torch.randn(
            n_ctx_vision, d_vision, generator=g
        )
    state = {k: v.to(dtype) for k, v in prompts.items()}
    state["prompt_learner.token_prefix"] = torch.randn(4, 1, d_text).to(dtype)
    state["prompt_learner.token_suffix"] = torch.randn(4, 72, d_text).to(dtype)
    # frozen CLIP weights and the frozen zero-shot image encoder are ignored
    state["image_encoder.conv1.weight"] = torch.randn(8, 3, 4, 4).to(dtype)
    state["text_encoder.transformer.resblocks.0.attn.in_proj_weight"] = torch.randn(3 * d_text, d_text).to(dtype)
    state["prompt_learner.ZS_image_encoder.conv1.weight"] = torch.randn(8, 3, 4, 4).to(dtype)
    state["prompt_learner.ZS_image_encoder.transformer.resblocks.1.attn.out_proj.weight"] = torch.randn(4, 4).to(dtype)
    state = {module_prefix + k: v for k, v in state.items()}
    torch.save({"state_dict": state, "epoch": 20, "optimizer": {"state": {}, "param_groups": []}}, path)
    return {k: v.to(dtype).float() for k, v in prompts.items()}


@pytest.mark.parametrize("module_prefix,dtype", [("", torch.float16), ("module.", torch.float32)])
def test_promptsrc_checkpoint_gives_the_original_models_logits(
    tmp_path, tokenizer, pixel_values, module_prefix, dtype
):
    prompts = write_promptsrc_checkpoint(tmp_path / "model.pth.tar-20", module_prefix=module_prefix, dtype=dtype)
    clip = tiny_clip()
    untouched = copy.deepcopy(clip)
    model = from_official_checkpoint(clip, tmp_path / "model.pth.tar-20", tokenizer_name_or_path=TOKENIZER_DIR)
    config = model.peft_config["default"]
    assert (config.variant, config.n_ctx, config.num_vision_tokens, config.depth) == ("ivlp", 4, 3, 3)
    assert config.prompt_init == "a photo of a"
    text = [prompts["prompt_learner.ctx"]] + [
        prompts[f"text_encoder.transformer.resblocks.{i}.VPT_shallow"] for i in (1, 2)
    ]
    # the original vision tower inserts VPT.half() (a no-op for fp16 checkpoints)
    vision = [prompts["image_encoder.VPT"].half().float()] + [
        prompts[f"image_encoder.transformer.resblocks.{i}.VPT_shallow"] for i in (1, 2)
    ]
    # each prompt sits in the layer the original code puts it in
    clip_in = model.get_base_model()
    assert torch.equal(clip_in.text_model.embeddings.token_embedding.maple_ctx["default"], text[0])
    assert torch.equal(clip_in.vision_model.embeddings.maple_vision_ctx["default"], vision[0])
    for i in (1, 2):
        assert torch.equal(clip_in.text_model.encoder.layers[i].maple_ctx["default"], text[i])
        assert torch.equal(clip_in.vision_model.encoder.layers[i].maple_vision_ctx["default"], vision[i])
    with torch.no_grad():
        expected = reference_logits(untouched, padded77(tokenizer, config, CLASSES), pixel_values, text, vision)
        got = PromptClassifier(model, tokenizer, CLASSES)(pixel_values)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_more_than_4_context_tokens_use_the_placeholder_prompt_like_the_original(tmp_path, tokenizer):
    write_promptsrc_checkpoint(tmp_path / "ckpt", n_ctx=6, n_ctx_vision=6, depth=2)
    model = from_official_checkpoint(tiny_clip(), tmp_path / "ckpt", tokenizer_name_or_path=TOKENIZER_DIR)
    assert model.peft_config["default"].prompt_init is None
    assert PromptClassifier(model, tokenizer, ["cat"]).prompts == ["X X X X X X cat."]


@pytest.mark.skipif(
    "class_names" not in MaPLeConfig.__dataclass_fields__, reason="MaPLeConfig.class_names is not in this branch"
)
def test_class_names_are_stored_in_the_adapter_config(tmp_path):
    write_promptsrc_checkpoint(tmp_path / "ckpt", depth=2)
    model = from_official_checkpoint(
        tiny_clip(), tmp_path / "ckpt", tokenizer_name_or_path=TOKENIZER_DIR, class_names=["cat", "dog"]
    )
    assert model.peft_config["default"].class_names == ["cat", "dog"]


def test_promptsrc_checkpoint_with_unequal_text_and_vision_depth_is_refused(tmp_path):
    write_promptsrc_checkpoint(tmp_path / "ckpt", depth=3)
    state = torch.load(tmp_path / "ckpt", weights_only=True)
    del state["state_dict"]["image_encoder.transformer.resblocks.2.VPT_shallow"]
    torch.save(state, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="text prompts in 3 layers but vision prompts in 2"):
        from_official_checkpoint(tiny_clip(), tmp_path / "ckpt", tokenizer_name_or_path=TOKENIZER_DIR)


def _malformed(path, kind):
    if kind == "no_proj_bias":
        write_official_checkpoint(path)
        state = torch.load(path, weights_only=True)
        del state["state_dict"]["prompt_learner.proj.bias"]
    elif kind == "ctx_is_1d":
        write_official_checkpoint(path)
        state = torch.load(path, weights_only=True)
        state["state_dict"]["prompt_learner.ctx"] = torch.zeros(32)
    elif kind == "deep_prompt_of_another_shape":
        write_promptsrc_checkpoint(path)
        state = torch.load(path, weights_only=True)
        state["state_dict"]["text_encoder.transformer.resblocks.2.VPT_shallow"] = torch.zeros(3, 32)
    elif kind == "gap_in_compound_prompts":
        write_official_checkpoint(path)
        state = torch.load(path, weights_only=True)
        del state["state_dict"]["prompt_learner.compound_prompts_text.0"]
    elif kind == "non_finite_vpt":
        write_promptsrc_checkpoint(path)
        state = torch.load(path, weights_only=True)
        state["state_dict"]["image_encoder.VPT"][0, 0] = float("inf")
    torch.save(state, path)


@pytest.mark.parametrize(
    "kind,message",
    [
        ("no_proj_bias", "has no 'prompt_learner.proj.bias'"),
        ("ctx_is_1d", "'prompt_learner.ctx' is a 1-d torch.float32 tensor, expected a 2-d float tensor"),
        ("deep_prompt_of_another_shape", "the text prompts have different shapes"),
        ("gap_in_compound_prompts", r"numbered \[1\]; expected 0 .. 0"),
        ("non_finite_vpt", r"NaN or inf values \(vision_model\.embeddings\.maple_vision_ctx\)"),
    ],
)
def test_malformed_checkpoints_get_a_clear_error(tmp_path, kind, message):
    _malformed(tmp_path / "ckpt", kind)
    with pytest.raises(ValueError, match=message):
        from_official_checkpoint(tiny_clip(), tmp_path / "ckpt", tokenizer_name_or_path=TOKENIZER_DIR)


def _cli(capsys, *args):
    code = main(["convert-official", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize(
    "kind", ["missing", "folder", "not_a_checkpoint", "no_proj_bias", "ctx_is_1d", "text", "non_finite_vpt"]
)
def test_convert_official_command_reports_a_bad_checkpoint_in_one_line_before_loading_the_base(tmp_path, capsys, kind):
    path = tmp_path / "run" / "model.pth.tar-5"
    path.parent.mkdir()
    if kind == "folder":
        write_official_checkpoint(path)
        path = tmp_path
    elif kind == "not_a_checkpoint":
        torch.save({"state_dict": {"weight": torch.zeros(2)}}, path)
    elif kind == "text":
        path.write_text("hello")
    elif kind != "missing":
        _malformed(path, kind)
    # the base model does not exist: the checkpoint's error comes first, so it was checked before loading the base
    code, err = _cli(capsys, path, "--base-model", tmp_path / "no-such-clip", "--output-dir", tmp_path / "out")
    assert code == 2
    assert err.startswith("maple-peft: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "no-such-clip" not in err
    assert str(path) in err
    assert not (tmp_path / "out").exists()


def test_convert_official_command_refuses_bad_outputs_and_bases_in_one_line(tmp_path, capsys, saved_base):
    write_official_checkpoint(tmp_path / "ckpt")
    (tmp_path / "file.txt").write_text("mine")
    code, err = _cli(capsys, tmp_path / "ckpt", "--base-model", saved_base, "--output-dir", tmp_path / "file.txt")
    assert code == 2 and "is a file" in err and err.count("\n") == 1
    assert (tmp_path / "file.txt").read_text() == "mine"
    code, err = _cli(
        capsys, tmp_path / "ckpt", "--base-model", tmp_path / "no-such-clip", "--output-dir", tmp_path / "o"
    )
    assert code == 2 and "no-such-clip" in err and err.count("\n") == 1 and "Traceback" not in err
    write_official_checkpoint(tmp_path / "wide", d_text=64, d_vision=40)
    code, err = _cli(capsys, tmp_path / "wide", "--base-model", saved_base, "--output-dir", tmp_path / "o")
    assert code == 2 and "d_text=32, d_vision=48" in err and err.count("\n") == 1


def test_convert_official_command_converts_a_promptsrc_checkpoint(tmp_path, capsys, saved_base, tokenizer):
    write_promptsrc_checkpoint(tmp_path / "model.pth.tar-20")
    code = main(
        [
            "convert-official",
            str(tmp_path / "model.pth.tar-20"),
            "--base-model",
            saved_base,
            "--output-dir",
            str(tmp_path / "a"),
        ]
    )
    assert code == 0
    assert "PromptSRC/IVLP checkpoint: variant=ivlp, n_ctx=4, depth=3, n_ctx_vision=3" in capsys.readouterr().out
    from peft import PeftModel
    from transformers import CLIPModel

    model = PeftModel.from_pretrained(CLIPModel.from_pretrained(saved_base), tmp_path / "a")
    assert model.peft_config["default"].variant == "ivlp"
