"""MaPLe as a PEFT method: registration, saving/loading, several adapters, disabling, unloading, gradients, dtypes."""

from __future__ import annotations

import copy
import importlib
import json
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import TOKENIZER_DIR, tiny_clip
from peft import PeftModel, get_peft_model
from peft.utils import PeftType
from safetensors.torch import load_file
from test_model import CLASSES, make_adapted, padded77
from transformers import CLIPModel

import maple_peft
from maple_peft import MaPLeConfig, PromptClassifier
from maple_peft.layer import MaPLeLayer


def test_import_registers_maple_and_is_idempotent():
    assert PeftType.MAPLE == "MAPLE" and PeftType("MAPLE") is PeftType.MAPLE
    importlib.reload(maple_peft)
    importlib.import_module("maple_peft")
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.MAPLE].__name__ == "MaPLeConfig"
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.MAPLE].__name__ == "MaPLeModel"
    model = get_peft_model(tiny_clip(), maple_peft.MaPLeConfig(depth=2, tokenizer_name_or_path=TOKENIZER_DIR))
    assert model.peft_type == PeftType.MAPLE


def save_adapted(saved_base, folder, tokenizer, pixel_values):
    """A MaPLe adapter with random prompts on the saved tiny CLIP, saved in `folder`/adapter; its logits."""
    base = CLIPModel.from_pretrained(saved_base).eval()
    model = get_peft_model(base, MaPLeConfig(depth=3))  # tokenizer found beside the base model
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.5)
        logits = PromptClassifier(model, tokenizer, CLASSES)(pixel_values)
    model.save_pretrained(folder / "adapter")
    return model, folder / "adapter", logits


@pytest.fixture
def adapted_on_disk(saved_base, tmp_path, tokenizer, pixel_values):
    return save_adapted(saved_base, tmp_path, tokenizer, pixel_values)


@pytest.fixture(scope="module")
def fresh_processes(saved_base, tmp_path_factory, tokenizer):
    """A saved adapter loaded by two new processes, started together (their imports, most of their time, run side by
    side): "load" imports maple_peft and saves the logits of the adapter loaded two ways; "no_import" does not."""
    folder = tmp_path_factory.mktemp("fresh-processes")
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))  # as conftest's
    _, path, logits = save_adapted(saved_base, folder, tokenizer, pixel_values)
    torch.save(pixel_values, folder / "pixels.pt")
    scripts = {
        "load": textwrap.dedent(
            f"""
            import torch, maple_peft
            from peft import PeftModel, AutoPeftModel, PeftConfig
            from transformers import CLIPModel, CLIPTokenizer
            tok = CLIPTokenizer.from_pretrained({TOKENIZER_DIR!r})
            px = torch.load({str(folder / "pixels.pt")!r})
            model = PeftModel.from_pretrained(CLIPModel.from_pretrained({saved_base!r}).eval(), {str(path)!r})
            auto = AutoPeftModel.from_pretrained({str(path)!r}).eval()
            assert type(PeftConfig.from_pretrained({str(path)!r})).__name__ == "MaPLeConfig"
            with torch.no_grad():
                out = [maple_peft.PromptClassifier(m, tok, {CLASSES!r})(px) for m in (model, auto)]
            torch.save(out, {str(folder / "out.pt")!r})
            """
        ),
        "no_import": (
            "from peft import PeftModel\nfrom transformers import CLIPModel\n"
            f"PeftModel.from_pretrained(CLIPModel.from_pretrained({saved_base!r}), {str(path)!r})"
        ),
    }
    processes = {}
    for name, script in scripts.items():
        with open(folder / f"{name}.err", "w") as err:
            processes[name] = subprocess.Popen([sys.executable, "-c", script], stderr=err, cwd=folder)
    yield folder, logits, processes
    for process in processes.values():
        if process.poll() is None:
            process.kill()
        process.wait()


def finished(fresh_processes, name: str) -> tuple[int, str]:
    """The exit code and stderr of the fresh process `name`, once it has ended."""
    folder, _, processes = fresh_processes
    return processes[name].wait(timeout=600), (folder / f"{name}.err").read_text()


def test_saved_folder_holds_only_adapter_tensors_and_the_full_config(adapted_on_disk):
    model, path, _ = adapted_on_disk
    tensors = load_file(path / "adapter_model.safetensors")
    adapter_params = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(tensors) == len(adapter_params) == 9
    assert all(".maple_" in key for key in tensors)
    assert all(t.dtype == torch.float32 for t in tensors.values())
    saved = json.loads((path / "adapter_config.json").read_text())
    for field in (
        "n_ctx",
        "n_ctx_vision",
        "depth",
        "prompt_init",
        "variant",
        "prompt_init_std",
        "prompt_init_token_ids",
    ):
        assert field in saved
    assert saved["peft_type"] == "MAPLE" and saved["maple_peft_version"] == maple_peft.__version__
    assert saved["task_type"] is None
    card = (path / "README.md").read_text()
    assert "import maple_peft" in card and "library_name: peft" in card


def test_load_in_a_fresh_process_gives_bitwise_equal_logits(fresh_processes):
    code, stderr = finished(fresh_processes, "load")
    assert code == 0, stderr[-3000:]
    folder, logits, _ = fresh_processes
    loaded, auto = torch.load(folder / "out.pt")
    assert torch.equal(loaded, logits)
    assert torch.equal(auto, logits)


def test_loading_without_import_fails_inside_peft(fresh_processes):
    code, stderr = finished(fresh_processes, "no_import")
    assert code != 0 and "MAPLE" in stderr


def test_disable_adapter_is_bitwise_the_untouched_clip(tokenizer, pixel_values):
    model, untouched = make_adapted(depth=3)
    input_ids = padded77(tokenizer, model.peft_config["default"], CLASSES)
    with torch.no_grad():
        expected = untouched(input_ids=input_ids, pixel_values=pixel_values)
        with model.disable_adapter():
            out = model(input_ids=input_ids, pixel_values=pixel_values)
            clf = PromptClassifier(model, tokenizer, CLASSES)(pixel_values)
        adapted = model(input_ids=input_ids, pixel_values=pixel_values)
    assert torch.equal(out.logits_per_image, expected.logits_per_image)
    assert torch.equal(out.vision_model_output.last_hidden_state, expected.vision_model_output.last_hidden_state)
    assert not torch.equal(adapted.logits_per_image, expected.logits_per_image)
    assert clf.shape == (3, len(CLASSES))


def test_unload_returns_the_untouched_clip(tokenizer, pixel_values):
    model, untouched = make_adapted(depth=3)
    clip = model.unload()
    assert not any(isinstance(m, MaPLeLayer) for m in clip.modules())
    input_ids = padded77(tokenizer, None, CLASSES)
    with torch.no_grad():
        assert torch.equal(
            clip(input_ids=input_ids, pixel_values=pixel_values).logits_per_image,
            untouched(input_ids=input_ids, pixel_values=pixel_values).logits_per_image,
        )


def test_merge_and_unload_refuses_with_a_clear_error():
    model, _ = make_adapted(depth=2)
    with pytest.raises(ValueError, match="no weight update that could be merged"):
        model.merge_and_unload()
    with pytest.raises(ValueError, match="prompt tokens"):
        model.merge_adapter()


def test_several_adapters_switch_delete_and_reload(tokenizer, pixel_values, tmp_path):
    model, untouched = make_adapted(depth=3)
    model.add_adapter(
        "ivlp", MaPLeConfig(variant="ivlp", depth=2, n_ctx_vision=4, tokenizer_name_or_path=TOKENIZER_DIR)
    )
    clf = PromptClassifier(model, tokenizer, CLASSES)
    with torch.no_grad():
        default_logits = clf(pixel_values)
        model.set_adapter("ivlp")
        ivlp_logits = clf(pixel_values)
        model.set_adapter("default")
        again = clf(pixel_values)
    assert torch.equal(default_logits, again) and not torch.allclose(default_logits, ivlp_logits)
    status = model.get_model_status()
    assert status.available_adapters == ["default", "ivlp"] and status.active_adapters == ["default"]

    model.save_pretrained(tmp_path / "both")
    assert (tmp_path / "both" / "ivlp" / "adapter_model.safetensors").exists()
    model.delete_adapter("ivlp")
    assert list(model.peft_config) == ["default"]
    assert not any("ivlp" in n for n, _ in model.named_parameters())

    model.load_adapter(str(tmp_path / "both" / "ivlp"), adapter_name="ivlp")
    model.set_adapter("ivlp")
    with torch.no_grad():
        assert torch.equal(clf(pixel_values), ivlp_logits)


def test_two_active_adapters_are_refused(tokenizer, pixel_values):
    model, _ = make_adapted(depth=2)
    model.add_adapter("other", MaPLeConfig(depth=2, tokenizer_name_or_path=TOKENIZER_DIR))
    model.base_model.set_adapter(["default", "other"])
    with pytest.raises(ValueError, match="cannot be used at once"):
        PromptClassifier(model, tokenizer, CLASSES)(pixel_values)


def test_gradient_reaches_exactly_the_adapter_parameters(tokenizer, pixel_values):
    model, _ = make_adapted(depth=3)
    model.train()
    loss = PromptClassifier(model, tokenizer, CLASSES)(pixel_values).logsumexp(-1).sum()
    loss.backward()
    for name, param in model.named_parameters():
        if ".maple_" in name:
            assert param.requires_grad and param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert not param.requires_grad and param.grad is None, name


def test_bf16_base_keeps_float32_adapter_and_trains(tokenizer, pixel_values):
    clip = tiny_clip().to(torch.bfloat16)
    model = get_peft_model(clip, MaPLeConfig(depth=3, tokenizer_name_or_path=TOKENIZER_DIR))
    adapter = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert adapter and all(p.dtype == torch.float32 for p in adapter.values())
    model.train()
    logits = PromptClassifier(model, tokenizer, CLASSES)(pixel_values.bfloat16())
    assert logits.dtype == torch.bfloat16
    torch.nn.functional.cross_entropy(logits.float(), torch.tensor([0, 1, 2])).backward()
    assert all(
        p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in adapter.values()
    )


def test_bf16_logits_are_close_to_float32(tokenizer, pixel_values):
    model, _ = make_adapted(depth=3)
    clf = PromptClassifier(model, tokenizer, CLASSES)
    with torch.no_grad():
        full = clf(pixel_values)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = PromptClassifier(model, tokenizer, CLASSES)(pixel_values)
    torch.testing.assert_close(half.float(), full, atol=0.1 * full.abs().max().item(), rtol=0)


def test_push_to_hub_uploads_the_adapter_folder(adapted_on_disk, monkeypatch):
    from types import SimpleNamespace

    from huggingface_hub import HfApi

    model, _, _ = adapted_on_disk
    uploaded = {}

    def fake_create_commit(self, repo_id, operations, **kwargs):
        uploaded["repo_id"] = repo_id
        uploaded["files"] = sorted(op.path_in_repo for op in operations)

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **k: SimpleNamespace(repo_id=repo_id))
    monkeypatch.setattr(HfApi, "create_commit", fake_create_commit)
    monkeypatch.setattr(HfApi, "list_repo_files", lambda self, *a, **k: [], raising=False)
    model.push_to_hub("user/maple-test")
    assert uploaded["repo_id"] == "user/maple-test"
    assert {"adapter_model.safetensors", "adapter_config.json"} <= set(uploaded["files"])


def test_deepcopy_keeps_the_links_inside_the_copy(tokenizer, pixel_values):
    model, _ = make_adapted(depth=3)
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for p in clone.parameters():
            if p.requires_grad:
                p.mul_(2)
        assert not torch.equal(
            PromptClassifier(clone, tokenizer, CLASSES)(pixel_values),
            PromptClassifier(model, tokenizer, CLASSES)(pixel_values),
        )
        assert torch.equal(
            PromptClassifier(model, tokenizer, CLASSES)(pixel_values),
            PromptClassifier(model, tokenizer, CLASSES)(pixel_values),
        )


def test_low_cpu_mem_usage_loading(adapted_on_disk, saved_base, tokenizer, pixel_values):
    _, path, logits = adapted_on_disk
    model = PeftModel.from_pretrained(CLIPModel.from_pretrained(saved_base).eval(), path, low_cpu_mem_usage=True)
    assert not any(p.device.type == "meta" for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(
            PromptClassifier(model, tokenizer, CLASSES)(pixel_values), logits, atol=1e-5, rtol=0
        )
