"""Flushing subnormal floats on CPU: the setting applies in the block only, and results stay the same."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_clip
from peft import get_peft_model, get_peft_model_state_dict

import maple_peft
from maple_peft.numerics import flush_denormal, is_flushing_denormal

SUPPORTED = torch.set_flush_denormal(False)  # False where the CPU has no such setting
pytestmark = pytest.mark.skipif(not SUPPORTED, reason="this CPU cannot flush subnormal floats")

SUBNORMAL = torch.ones(4, dtype=torch.int32).view(torch.float32) * 1000  # 1.4e-42, built from its bits


def test_flush_denormal_flushes_in_the_block_and_restores_the_previous_setting():
    assert not is_flushing_denormal() and (SUBNORMAL * 1.0).ne(0).all()
    with flush_denormal() as supported:
        assert supported and is_flushing_denormal()
        assert (SUBNORMAL * 1.0).eq(0).all()
        with flush_denormal(False):  # nested: exact inside, flushing again after
            assert not is_flushing_denormal()
        assert is_flushing_denormal()
    assert not is_flushing_denormal()
    torch.set_flush_denormal(True)  # a caller that flushes already keeps flushing after the block
    try:
        with pytest.raises(RuntimeError, match="boom"), flush_denormal(False):
            raise RuntimeError("boom")
        assert is_flushing_denormal()
    finally:
        torch.set_flush_denormal(False)


def train_a_few_steps(tokenizer, pixel_values, *, flush: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Three SGD steps of MaPLe on a tiny CLIP in which every forward and backward computes with subnormal floats
    (a hidden unit of each tower's first MLP with subnormal weights and bias); the logits after them and the adapter."""
    clip = tiny_clip()
    with torch.no_grad():
        for tower in (clip.text_model, clip.vision_model):
            fc1 = tower.encoder.layers[0].mlp.fc1
            fc1.weight[0] = SUBNORMAL[0]
            fc1.bias[0] = SUBNORMAL[0]
    model = get_peft_model(clip, maple_peft.MaPLeConfig(n_ctx=2, depth=2, prompt_init=None))
    classifier = maple_peft.PromptClassifier(model, tokenizer, ["cat", "dog", "golden retriever"])
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    labels = torch.tensor([0, 1, 2])
    with flush_denormal(flush):
        model.train()
        for _ in range(3):
            F.cross_entropy(classifier(pixel_values), labels).backward()
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
        with torch.no_grad():
            logits = classifier(pixel_values)
    return logits, get_peft_model_state_dict(model)


def test_training_with_and_without_flushing_gives_the_same_logits_and_adapter(tokenizer, pixel_values):
    exact_logits, exact_adapter = train_a_few_steps(tokenizer, pixel_values, flush=False)
    flushed_logits, flushed_adapter = train_a_few_steps(tokenizer, pixel_values, flush=True)
    scale = exact_logits.abs().max()
    assert (flushed_logits - exact_logits).abs().max() <= 1e-5 * scale
    assert exact_adapter.keys() == flushed_adapter.keys()
    for name, exact in exact_adapter.items():
        assert (flushed_adapter[name] - exact).abs().max() <= 1e-5 * exact.abs().max(), name
    assert not is_flushing_denormal()


def test_predict_flushes_subnormals_while_it_runs_and_restores_the_setting(tokenizer):
    from PIL import Image
    from test_model import CLASSES, make_adapted
    from transformers import CLIPImageProcessor

    from maple_peft import PromptClassifier

    model, _ = make_adapted(depth=2)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    clf = PromptClassifier(model, tokenizer, CLASSES, image_processor=processor)
    seen = []
    model.get_base_model().vision_model.register_forward_pre_hook(lambda *args: seen.append(is_flushing_denormal()))
    assert not is_flushing_denormal()
    clf.predict([Image.new("RGB", (40, 40), "red")])
    assert seen == [True] and not is_flushing_denormal()
