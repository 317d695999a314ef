"""Loading adapter weights: non-finite or mismatching tensors are refused, newer adapters warn, base paths travel."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from conftest import TOKENIZER_DIR, tiny_clip
from peft import AutoPeftModel, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from test_convert import write_official_checkpoint
from test_model import CLASSES, make_adapted
from transformers import CLIPModel

import maple_peft
from maple_peft import MaPLeConfig, PromptClassifier, from_official_checkpoint
from maple_peft.layer import MaPLeLayer

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"


def save_adapted(path: Path, **config_kwargs) -> Path:
    model, _ = make_adapted(**config_kwargs)
    model.save_pretrained(path)
    return path


def edit_tensors(path: Path, edit) -> None:
    tensors = load_file(path / WEIGHTS)
    edit(tensors)
    save_file(tensors, path / WEIGHTS, metadata={"format": "pt"})


def edit_config(path: Path, **changes) -> None:
    config = json.loads((path / CONFIG).read_text())
    config.update(changes)
    (path / CONFIG).write_text(json.dumps(config))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("low_cpu_mem_usage", [False, True])
def test_adapter_with_non_finite_weights_is_refused_at_load(tmp_path, bad, low_cpu_mem_usage):
    path = save_adapted(tmp_path / "adapter", depth=2)

    def poison(tensors):
        key = next(k for k in tensors if k.endswith("encoder.layers.1.maple_ctx"))
        tensors[key][0, 3] = bad

    edit_tensors(path, poison)
    with pytest.raises(ValueError, match=r"hold NaN or inf values in text_model\.encoder\.layers\.1\.maple_ctx;"):
        PeftModel.from_pretrained(tiny_clip(), path, low_cpu_mem_usage=low_cpu_mem_usage)


def test_official_checkpoint_with_non_finite_weights_is_refused(tmp_path):
    write_official_checkpoint(tmp_path / "model.pth.tar-5")
    checkpoint = torch.load(tmp_path / "model.pth.tar-5", weights_only=True)
    checkpoint["state_dict"]["prompt_learner.ctx"][1, 0] = float("nan")
    torch.save(checkpoint, tmp_path / "model.pth.tar-5")
    with pytest.raises(ValueError, match=r"NaN or inf values \(text_model\.embeddings\.token_embedding\.maple_ctx\)"):
        from_official_checkpoint(tiny_clip(), tmp_path / "model.pth.tar-5", tokenizer_name_or_path=TOKENIZER_DIR)


@pytest.mark.parametrize(
    "config_changes,expected",
    [
        # per-depth couplings saved, one shared coupling configured
        (
            {"variant": "maple_shared"},
            r"unexpected vision_model\.encoder\.layers\.1\.maple_coupling\.bias, "
            r"vision_model\.encoder\.layers\.1\.maple_coupling\.weight\.",
        ),
        # coupled prompts saved, free vision prompts configured
        ({"variant": "ivlp"}, r"missing vision_model\.embeddings\.maple_vision_ctx, .*; unexpected .*maple_coupling"),
        # two depths saved, three configured (target_modules, which also names the depth, removed by hand)
        (
            {"depth": 3, "target_modules": None},
            r"missing text_model\.encoder\.layers\.2\.maple_ctx, vision_model\.encoder\.layers\.2\.",
        ),
    ],
)
def test_adapter_whose_tensors_do_not_match_its_config_is_refused(tmp_path, config_changes, expected):
    path = save_adapted(tmp_path / "adapter", depth=2)
    edit_config(path, **config_changes)
    with pytest.raises(ValueError, match="do not match its config .*" + expected):
        PeftModel.from_pretrained(tiny_clip(), path)


def test_set_peft_model_state_dict_accepts_the_full_adapter_and_refuses_a_partial_one(tokenizer, pixel_values):
    model, _ = make_adapted(depth=3)
    state = get_peft_model_state_dict(model)
    with torch.no_grad():
        expected = PromptClassifier(model, tokenizer, CLASSES)(pixel_values)
    other = get_peft_model(tiny_clip(), MaPLeConfig(depth=3, tokenizer_name_or_path=TOKENIZER_DIR))
    set_peft_model_state_dict(other, state)  # as a training checkpoint is restored
    with torch.no_grad():
        assert torch.equal(PromptClassifier(other, tokenizer, CLASSES)(pixel_values), expected)
    partial = {k: v for k, v in state.items() if "encoder.layers.2" not in k}
    with pytest.raises(ValueError, match=r"missing text_model\.encoder\.layers\.2\.maple_ctx"):
        set_peft_model_state_dict(other, partial)


def test_adapter_from_a_newer_maple_peft_warns_naming_both_versions(tmp_path):
    path = save_adapted(tmp_path / "adapter", depth=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the current version loads without a warning of ours
        PeftModel.from_pretrained(tiny_clip(), path)
    edit_config(path, maple_peft_version="99.0.0")
    message = (
        rf"written by maple_peft 99\.0\.0, newer than the installed maple_peft {re.escape(maple_peft.__version__)}"
    )
    with pytest.warns(UserWarning, match=message):
        model = PeftModel.from_pretrained(tiny_clip(), path)
    assert any(isinstance(m, MaPLeLayer) for m in model.modules())


def test_local_base_model_is_recorded_by_absolute_path_and_loads_from_another_folder(
    saved_base, tmp_path, monkeypatch
):
    base = Path(saved_base)
    monkeypatch.chdir(base.parent)
    model = get_peft_model(CLIPModel.from_pretrained(base.name), MaPLeConfig(depth=2))  # a relative local path
    model.save_pretrained(tmp_path / "adapter")
    recorded = json.loads((tmp_path / "adapter" / CONFIG).read_text())["base_model_name_or_path"]
    assert recorded == str(base.resolve())
    model.add_adapter("coop", MaPLeConfig(depth=1, variant="language"))
    assert model.peft_config["coop"].base_model_name_or_path == str(base.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # where the relative path names nothing
    loaded = AutoPeftModel.from_pretrained(str(tmp_path / "adapter"))
    assert type(loaded.get_base_model()).__name__ == "CLIPModel" and loaded.peft_config["default"].depth == 2
    assert Path(loaded.get_base_model().name_or_path) == base.resolve()


def test_hub_id_of_the_base_model_is_recorded_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no folder of that name here
    clip = tiny_clip()
    clip.name_or_path = "openai/clip-vit-base-patch16"
    model = get_peft_model(clip, MaPLeConfig(depth=2, tokenizer_name_or_path=TOKENIZER_DIR))
    assert model.peft_config["default"].base_model_name_or_path == "openai/clip-vit-base-patch16"


@pytest.mark.parametrize(
    "variant,extra",
    [("maple", {}), ("maple_shared", {}), ("ivlp", {"n_ctx_vision": 3}), ("language", {}), ("vision", {})],
)
def test_every_variant_saves_and_loads_back_to_the_same_logits(tmp_path, tokenizer, pixel_values, variant, extra):
    model, _ = make_adapted(variant=variant, depth=3, **extra)
    model.save_pretrained(tmp_path / "adapter")
    loaded = PeftModel.from_pretrained(tiny_clip(), tmp_path / "adapter", adapter_name="other")
    with torch.no_grad():
        expected = PromptClassifier(model, tokenizer, CLASSES)(pixel_values)
        assert torch.equal(PromptClassifier(loaded, tokenizer, CLASSES)(pixel_values), expected)


def test_config_from_a_newer_or_unknown_version_warns_and_the_current_one_does_not():
    with pytest.warns(UserWarning, match=r"maple_peft 1\.0\.0, newer than the installed"):
        MaPLeConfig(maple_peft_version="1.0.0")
    with pytest.warns(UserWarning, match=r"maple_peft_version='dev-build' of this adapter is not a version number"):
        MaPLeConfig(maple_peft_version="dev-build")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert MaPLeConfig(maple_peft_version="0.0.1").maple_peft_version == "0.0.1"  # older: no warning
        assert MaPLeConfig().maple_peft_version == maple_peft.__version__
