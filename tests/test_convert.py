"""Import of checkpoints written by the original MaPLe, PromptSRC and IVLP code (saved by Dassl's trainer)."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import types
from collections import OrderedDict
from contextlib import contextmanager

import pytest
import torch
from conftest import TOKENIZER_DIR, tiny_clip
from reference import reference_logits
from test_model import CLASSES, padded77

import maple_peft
from maple_peft import MaPLeConfig, PromptClassifier, from_official_checkpoint
from maple_peft.cli import main


class ConstantWarmupScheduler(torch.optim.lr_scheduler.LRScheduler):
    """Stands for Dassl's `dassl.optim.lr_scheduler.ConstantWarmupScheduler`: a constant learning rate for
    `warmup_epoch` epochs, then its `successor` (a `CosineAnnealingLR` in the recipes), which it keeps as an object."""

    def __init__(self, optimizer, successor, warmup_epoch, cons_lr):
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        self.cons_lr = cons_lr
        super().__init__(optimizer)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step()
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step()


ConstantWarmupScheduler.__module__ = "dassl.optim.lr_scheduler"
_DASSL_MODULES = ("dassl", "dassl.optim", "dassl.optim.lr_scheduler")


@contextmanager
def dassl_importable():
    """`dassl.optim.lr_scheduler.ConstantWarmupScheduler` importable, only while a file is being written."""
    for name in _DASSL_MODULES:
        sys.modules[name] = types.ModuleType(name)
    sys.modules["dassl.optim.lr_scheduler"].ConstantWarmupScheduler = ConstantWarmupScheduler
    try:
        yield
    finally:
        for name in _DASSL_MODULES:
            sys.modules.pop(name)


def save_like_dassl(
    path, state_dict, epoch, scheduler_object=False, entries=None, optimizer="sgd", shared=False, without=()
):
    """Write `state_dict` as Dassl's trainer does after `epoch` epochs of SGD with a constant warm-up epoch and a
    cosine schedule: `{"state_dict", "epoch", "optimizer", "scheduler", "val_result"}`, where `scheduler` is the
    warm-up scheduler's state, holding the cosine scheduler object with the SGD optimizer (and its parameters)
    inside. `scheduler_object` saves the warm-up scheduler object itself; `entries` replace entries of the file;
    `optimizer="adamw"` uses AdamW (MMRL); `shared` makes the optimizer's parameters the state dict's own tensors
    (MMRL's optimizer holds the whole model: the file stores each storage once); `without` drops entries (KgCoOp's
    Dassl fork writes no `val_result`)."""
    tensors = [t for t in state_dict.values() if isinstance(t, torch.Tensor)]
    if shared:
        params = [torch.nn.Parameter(t) for t in tensors if t.is_floating_point()]
    else:
        params = [torch.nn.Parameter(t.detach().float().clone()) for t in tensors[:3]]
    values = [p.detach().clone() for p in params]
    if optimizer == "adamw":
        optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=5e-4)
    else:
        optimizer = torch.optim.SGD(params, lr=0.0035, momentum=0.9, weight_decay=5e-4)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(epoch))
    scheduler = ConstantWarmupScheduler(optimizer, cosine, warmup_epoch=1, cons_lr=1e-5)
    for _ in range(2):  # momentum buffers in the optimizer's state, the cosine schedule under way
        for p in params:
            p.grad = torch.ones_like(p)
        optimizer.step()
        scheduler.step()
    with torch.no_grad():  # the weights keep the values the caller gave (the optimizer's state stays)
        for p, value in zip(params, values):
            p.copy_(value)
    checkpoint = {
        "state_dict": OrderedDict(state_dict),
        "epoch": epoch,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler if scheduler_object else scheduler.state_dict(),
        "val_result": None,
    }
    checkpoint.update(entries or {})
    for name in without:
        del checkpoint[name]
    with dassl_importable():
        torch.save(checkpoint, path)
    assert not any(name in sys.modules for name in _DASSL_MODULES)


def write_official_checkpoint(
    path,
    d_text=32,
    d_vision=48,
    n_ctx=2,
    depth=3,
    dtype=torch.float16,
    prefix="prompt_learner.",
    dassl=False,
    extra_state=None,
    **entries,
):
    """A file laid out like the original code's `model.pth.tar-N`, with random prompt-learner tensors (saved as
    Dassl does, with the optimizer and warm-up scheduler, when `dassl=True`)."""
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
    state.update(extra_state or {})
    if dassl:
        save_like_dassl(path, state, 5, entries.pop("scheduler_object", False), entries)
    else:
        torch.save({"state_dict": state, "epoch": 5, "optimizer": {"state": {}, "param_groups": []}}, path)
    return {k: v.to(dtype).float() for k, v in learner.items()}


@pytest.mark.parametrize("prefix,dtype", [("prompt_learner.", torch.float16), ("", torch.float32)])
def test_official_checkpoint_gives_the_original_models_logits(tmp_path, tokenizer, pixel_values, prefix, dtype):
    learner = write_official_checkpoint(tmp_path / "model.pth.tar-5", prefix=prefix, dtype=dtype, dassl=True)
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
    with pytest.raises(ValueError, match="not a checkpoint of the original") as refused:
        from_official_checkpoint(tiny_clip(), tmp_path / "other.pt", tokenizer_name_or_path=TOKENIZER_DIR)
    # every original code whose files the methods import is named, with the keys that tell its files
    sources = maple_peft.methods.checkpoint_sources()
    assert {"MaPLe", "PromptSRC / IVLP", "CoCoOp", "KgCoOp", "CoOp", "MMRL", "MMRL++"} <= {name for name, _ in sources}
    assert all(f"{name}: {keys}" in str(refused.value) for name, keys in sources)
    names = [name for name, _ in sources]
    assert f"the original {', '.join(names[:-1])} or {names[-1]} code" in str(refused.value)
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="could not be read"):
        from_official_checkpoint(tiny_clip(), tmp_path / "text.pt", tokenizer_name_or_path=TOKENIZER_DIR)
    with pytest.raises(FileNotFoundError):
        from_official_checkpoint(tiny_clip(), tmp_path / "missing.pt")


def test_checkpoint_for_another_backbone_is_refused(tmp_path):
    write_official_checkpoint(tmp_path / "ckpt", d_text=64, d_vision=40, dassl=True)
    with pytest.raises(
        ValueError, match="64-wide .text. and 40-wide .vision., but the base model has d_text=32, d_vision=48"
    ):
        from_official_checkpoint(tiny_clip(), tmp_path / "ckpt", tokenizer_name_or_path=TOKENIZER_DIR)


def test_convert_official_command_writes_a_loadable_adapter(tmp_path, saved_base, tokenizer, pixel_values):
    write_official_checkpoint(tmp_path / "model.pth.tar-5", dassl=True)
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
    path,
    d_text=32,
    d_vision=48,
    n_ctx=4,
    n_ctx_vision=3,
    depth=3,
    dtype=torch.float16,
    module_prefix="",
    dassl=False,
    **entries,
):
    """A file laid out like PromptSRC's / IVLP's `VLPromptLearner/model.pth.tar-N` (the whole model's state dict),
    saved as Dassl does (with the optimizer and warm-up scheduler) when `dassl=True`."""
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
    if dassl:
        save_like_dassl(path, state, 20, entries.pop("scheduler_object", False), entries)
    else:
        torch.save({"state_dict": state, "epoch": 20, "optimizer": {"state": {}, "param_groups": []}}, path)
    return {k: v.to(dtype).float() for k, v in prompts.items()}


@pytest.mark.parametrize("module_prefix,dtype", [("", torch.float16), ("module.", torch.float32)])
def test_promptsrc_checkpoint_gives_the_original_models_logits(
    tmp_path, tokenizer, pixel_values, module_prefix, dtype
):
    prompts = write_promptsrc_checkpoint(
        tmp_path / "model.pth.tar-20", module_prefix=module_prefix, dtype=dtype, dassl=True
    )
    clip = tiny_clip()
    untouched = copy.deepcopy(clip)
    model = from_official_checkpoint(clip, tmp_path / "model.pth.tar-20", tokenizer_name_or_path=TOKENIZER_DIR)
    config = model.peft_config["default"]
    assert (config.variant, config.n_ctx, config.num_vision_tokens, config.depth) == ("ivlp", 4, 3, 3)
    assert config.prompt_init == "a photo of a"
    text = [prompts["prompt_learner.ctx"]] + [
        prompts[f"text_encoder.transformer.resblocks.{i}.VPT_shallow"] for i in (1, 2)
    ]
    vision = [prompts["image_encoder.VPT"]] + [
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
    write_promptsrc_checkpoint(tmp_path / "ckpt", n_ctx=6, n_ctx_vision=6, depth=2, dassl=True)
    model = from_official_checkpoint(tiny_clip(), tmp_path / "ckpt", tokenizer_name_or_path=TOKENIZER_DIR)
    assert model.peft_config["default"].prompt_init is None
    assert PromptClassifier(model, tokenizer, ["cat"]).prompts == ["X X X X X X cat."]


@pytest.mark.skipif(
    "class_names" not in MaPLeConfig.__dataclass_fields__, reason="MaPLeConfig.class_names is not in this branch"
)
def test_class_names_are_stored_in_the_adapter_config(tmp_path):
    write_promptsrc_checkpoint(tmp_path / "ckpt", depth=2, dassl=True)
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
        write_official_checkpoint(path, dassl=True)
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
    write_official_checkpoint(tmp_path / "ckpt", dassl=True)
    (tmp_path / "file.txt").write_text("mine")
    code, err = _cli(capsys, tmp_path / "ckpt", "--base-model", saved_base, "--output-dir", tmp_path / "file.txt")
    assert code == 2 and "is a file" in err and err.count("\n") == 1
    assert (tmp_path / "file.txt").read_text() == "mine"
    code, err = _cli(
        capsys, tmp_path / "ckpt", "--base-model", tmp_path / "no-such-clip", "--output-dir", tmp_path / "o"
    )
    assert code == 2 and "no-such-clip" in err and err.count("\n") == 1 and "Traceback" not in err
    write_official_checkpoint(tmp_path / "wide", d_text=64, d_vision=40, dassl=True)
    code, err = _cli(capsys, tmp_path / "wide", "--base-model", saved_base, "--output-dir", tmp_path / "o")
    assert code == 2 and "d_text=32, d_vision=48" in err and err.count("\n") == 1


def test_convert_official_command_converts_a_promptsrc_checkpoint(tmp_path, capsys, saved_base, tokenizer):
    write_promptsrc_checkpoint(tmp_path / "model.pth.tar-20", dassl=True)
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


# ---- files as Dassl's trainer writes them: optimizer and warm-up scheduler objects, fp16, crafted payloads ----------


@pytest.mark.parametrize("scheduler_object", [False, True], ids=["scheduler_state", "scheduler_object"])
@pytest.mark.parametrize("source", ["MaPLe", "PromptSRC/IVLP"])
def test_dassl_saved_checkpoint_with_warmup_scheduler_imports_without_dassl(tmp_path, source, scheduler_object):
    path = tmp_path / "model.pth.tar-5"
    if source == "MaPLe":
        learner = write_official_checkpoint(path, scheduler_object=scheduler_object, dassl=True)
        expected = {"text_model.embeddings.token_embedding.maple_ctx": learner["ctx"]}
    else:
        prompts = write_promptsrc_checkpoint(path, scheduler_object=scheduler_object, dassl=True)
        expected = {"vision_model.embeddings.maple_vision_ctx": prompts["image_encoder.VPT"]}
    # the file is as users have it: PyTorch's weights_only load alone refuses its optimizer and scheduler objects
    unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    assert {"torch.optim.lr_scheduler.CosineAnnealingLR", "torch.optim.sgd.SGD"} <= unsafe
    assert ("dassl.optim.lr_scheduler.ConstantWarmupScheduler" in unsafe) == scheduler_object
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    assert "dassl" not in sys.modules
    converted = maple_peft.convert.read_official_checkpoint(path)
    assert converted.source == source
    for key, value in expected.items():
        assert torch.equal(converted.state_dict[f"base_model.model.{key}"], value)
    assert "dassl" not in sys.modules
    # the objects were only stand-ins while reading: nothing stays allowlisted afterwards
    assert not any(isinstance(g, tuple) and "optim" in g[1] for g in torch.serialization.get_safe_globals())


class RunsOnSetstate:
    """An object whose unpickling (its `__setstate__`) writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __setstate__(self, state):
        open(state["marker"], "w").close()


class Payload:
    """Pickles as a call that writes a marker file when unpickled."""

    def __init__(self, kind, marker):
        self.kind, self.marker = kind, str(marker)

    def __reduce__(self):
        if self.kind == "os.system":
            return os.system, (f"touch {self.marker}",)
        if self.kind == "subprocess.call":
            return subprocess.call, (["touch", self.marker],)
        return exec, (f"open({self.marker!r}, 'w').close()",)


def _payload(kind, marker):
    return RunsOnSetstate(marker) if kind == "setstate" else Payload(kind, marker)


PAYLOADS = ["os.system", "subprocess.call", "builtins.exec", "setstate"]
ENTRIES = ["state_dict", "prompt", "epoch", "optimizer", "scheduler", "val_result"]


@pytest.mark.parametrize("kind", PAYLOADS)
def test_the_crafted_payloads_run_when_loaded_without_weights_only(tmp_path, kind):
    # the control for the test below: each payload is live
    marker = tmp_path / "ran"
    write_official_checkpoint(tmp_path / "ckpt", val_result=_payload(kind, marker), dassl=True)
    torch.load(tmp_path / "ckpt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("kind", PAYLOADS)
def test_a_payload_in_any_entry_of_the_file_runs_nothing(tmp_path, kind, entry):
    marker = tmp_path / "ran"
    payload = _payload(kind, marker)
    path = tmp_path / "model.pth.tar-5"
    if entry == "state_dict":
        learner = write_official_checkpoint(path, extra_state={"prompt_learner.token_prefix": payload}, dassl=True)
    elif entry == "prompt":
        learner = write_official_checkpoint(path, extra_state={"prompt_learner.ctx": payload}, dassl=True)
    elif entry == "scheduler":
        learner = write_official_checkpoint(path, scheduler={"successor": payload, "warmup_epoch": 1}, dassl=True)
    else:
        learner = write_official_checkpoint(path, **{entry: payload}, dassl=True)
    if kind == "os.system":  # PyTorch refuses the os and sys modules outright: the file is refused
        with pytest.raises(ValueError, match=r"refers to (posix|nt)\.system, which a checkpoint never needs"):
            maple_peft.convert.read_official_checkpoint(path)
    elif entry == "prompt":
        # (PyTorch reads `subprocess` under its Python 2 name, `commands`)
        shown = {"setstate": "test_convert.RunsOnSetstate", "subprocess.call": "(subprocess|commands).call"}.get(
            kind, kind
        )
        with pytest.raises(ValueError, match=rf"'prompt_learner.ctx' is an object of {shown} \(not loaded\)"):
            maple_peft.convert.read_official_checkpoint(path)
    else:
        converted = maple_peft.convert.read_official_checkpoint(path)
        ctx = converted.state_dict["base_model.model.text_model.embeddings.token_embedding.maple_ctx"]
        assert torch.equal(ctx, learner["ctx"])
    assert not marker.exists()


def test_convert_official_command_converts_a_dassl_file_without_running_its_payload(tmp_path, saved_base):
    marker = tmp_path / "ran"
    write_promptsrc_checkpoint(tmp_path / "ckpt", optimizer=Payload("builtins.exec", marker), dassl=True)
    code = main(
        ["convert-official", str(tmp_path / "ckpt"), "--base-model", saved_base, "--output-dir", str(tmp_path / "a")]
    )
    assert code == 0 and (tmp_path / "a" / "adapter_model.safetensors").exists()
    assert not marker.exists()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fp16_checkpoint_on_a_half_precision_base_computes_in_the_base_dtype(tmp_path, tokenizer, pixel_values, dtype):
    learner = write_official_checkpoint(tmp_path / "ckpt", dtype=torch.float16, dassl=True)
    clip = tiny_clip()
    untouched = copy.deepcopy(clip)
    model = from_official_checkpoint(clip.to(dtype), tmp_path / "ckpt", tokenizer_name_or_path=TOKENIZER_DIR)
    # the file's fp16 values are kept exactly (float32 adapter weights, as PEFT keeps them)
    ctx = model.get_base_model().text_model.embeddings.token_embedding.maple_ctx["default"]
    assert ctx.dtype == torch.float32 and torch.equal(ctx, learner["ctx"])
    config = model.peft_config["default"]
    text = [learner["ctx"]] + [learner[f"compound_prompts_text.{k}"] for k in range(2)]
    couplings = [("proj.weight", "proj.bias")] + [
        (f"compound_prompt_projections.{k}.weight", f"compound_prompt_projections.{k}.bias") for k in range(2)
    ]
    vision = [t @ learner[w].t() + learner[b] for t, (w, b) in zip(text, couplings)]
    with torch.no_grad():
        expected = reference_logits(untouched, padded77(tokenizer, config, CLASSES), pixel_values, text, vision)
        got = PromptClassifier(model, tokenizer, CLASSES)(pixel_values.to(dtype))
    assert got.dtype == dtype
    # computed in the base model's dtype: equal to the float32 math at that dtype's precision
    tolerance = 2e-2 if dtype == torch.bfloat16 else 4e-3
    torch.testing.assert_close(got.float(), expected, atol=tolerance * expected.abs().max().item(), rtol=0)


def _adapter_grads(model):
    return {
        name.removeprefix("base_model.model.").replace(".default", ""): p.grad
        for name, p in model.named_parameters()
        if p.requires_grad
    }


@pytest.mark.parametrize("source", ["MaPLe", "PromptSRC/IVLP"])
def test_imported_prompts_give_the_original_float32_logits_and_gradients_without_rounding(
    tmp_path, tokenizer, pixel_values, source
):
    path = tmp_path / "ckpt"
    if source == "MaPLe":
        file = write_official_checkpoint(path, dtype=torch.float32, dassl=True)
        leaves = {
            "text_model.embeddings.token_embedding.maple_ctx": file["ctx"],
            "vision_model.embeddings.maple_coupling.weight": file["proj.weight"],
            "vision_model.embeddings.maple_coupling.bias": file["proj.bias"],
        }
        for k in range(2):
            leaves[f"text_model.encoder.layers.{k + 1}.maple_ctx"] = file[f"compound_prompts_text.{k}"]
            for part in ("weight", "bias"):
                leaves[f"vision_model.encoder.layers.{k + 1}.maple_coupling.{part}"] = file[
                    f"compound_prompt_projections.{k}.{part}"
                ]
    else:
        file = write_promptsrc_checkpoint(path, dtype=torch.float32, dassl=True)
        leaves = {
            "text_model.embeddings.token_embedding.maple_ctx": file["prompt_learner.ctx"],
            "vision_model.embeddings.maple_vision_ctx": file["image_encoder.VPT"],
        }
        for i in (1, 2):
            leaves[f"text_model.encoder.layers.{i}.maple_ctx"] = file[
                f"text_encoder.transformer.resblocks.{i}.VPT_shallow"
            ]
            leaves[f"vision_model.encoder.layers.{i}.maple_vision_ctx"] = file[
                f"image_encoder.transformer.resblocks.{i}.VPT_shallow"
            ]
    # float32 values that fp16 cannot hold: any rounding on the way shows
    assert any(not torch.equal(v.half().float(), v) for v in leaves.values())
    leaves = {k: v.clone().requires_grad_(True) for k, v in leaves.items()}
    clip = tiny_clip()
    untouched = copy.deepcopy(clip)
    model = from_official_checkpoint(clip, path, tokenizer_name_or_path=TOKENIZER_DIR)
    model.train()
    config = model.peft_config["default"]
    labels = torch.tensor([0, 2, 3])
    logits = PromptClassifier(model, tokenizer, CLASSES)(pixel_values)
    torch.nn.functional.cross_entropy(logits, labels).backward()

    text_keys = ["text_model.embeddings.token_embedding.maple_ctx"] + [
        f"text_model.encoder.layers.{i}.maple_ctx" for i in (1, 2)
    ]
    text = [leaves[k] for k in text_keys]
    if source == "MaPLe":
        owners = ["vision_model.embeddings"] + [f"vision_model.encoder.layers.{i}" for i in (1, 2)]
        vision = [
            t @ leaves[f"{o}.maple_coupling.weight"].t() + leaves[f"{o}.maple_coupling.bias"]
            for t, o in zip(text, owners)
        ]
    else:
        vision = [leaves["vision_model.embeddings.maple_vision_ctx"]] + [
            leaves[f"vision_model.encoder.layers.{i}.maple_vision_ctx"] for i in (1, 2)
        ]
    expected = reference_logits(untouched, padded77(tokenizer, config, CLASSES), pixel_values, text, vision)
    torch.nn.functional.cross_entropy(expected, labels).backward()
    torch.testing.assert_close(logits, expected, atol=1e-5 * expected.abs().max().item(), rtol=0)
    grads = _adapter_grads(model)
    assert set(grads) == set(leaves)
    for key, leaf in leaves.items():
        scale = leaf.grad.abs().max().item()
        torch.testing.assert_close(grads[key], leaf.grad, atol=1e-5 * scale, rtol=0, msg=key)
