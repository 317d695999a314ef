"""Import of checkpoints written by the original MaPLe code."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TOKENIZER_DIR, tiny_clip
from reference import reference_logits
from test_model import CLASSES, padded77

import maple_peft
from maple_peft import PromptClassifier, from_official_checkpoint
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
    with pytest.raises(ValueError, match="not a checkpoint of the original MaPLe code"):
        from_official_checkpoint(tiny_clip(), tmp_path / "other.pt", tokenizer_name_or_path=TOKENIZER_DIR)
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="could not be read"):
        from_official_checkpoint(tiny_clip(), tmp_path / "text.pt", tokenizer_name_or_path=TOKENIZER_DIR)
    with pytest.raises(FileNotFoundError):
        from_official_checkpoint(tiny_clip(), tmp_path / "missing.pt")


def test_checkpoint_for_another_backbone_is_refused(tmp_path):
    write_official_checkpoint(tmp_path / "ckpt", d_text=64, d_vision=40)
    with pytest.raises(ValueError, match="d_text=32, d_vision=48"):
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
