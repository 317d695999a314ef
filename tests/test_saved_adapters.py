"""Adapters saved by maple_peft 0.1 (`tests/fixtures/adapters_v0_1`, one per method) load with today's code and give
the logits they gave when they were saved."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_clip
from peft import PeftModel
from safetensors.torch import load_file

import maple_peft

SAVED = Path(__file__).parent / "fixtures" / "adapters_v0_1"
CLASS_NAMES = ["cat", "dog", "sea turtle"]
NAMES = sorted(path.name for path in SAVED.iterdir() if path.is_dir())


def _classifier(path: Path, tokenizer) -> maple_peft.PromptClassifier:
    model = PeftModel.from_pretrained(tiny_clip(), str(path))
    return maple_peft.PromptClassifier(model, tokenizer, CLASS_NAMES, dataset="pets").eval()


def test_every_method_has_a_saved_adapter():
    assert {"maple", "ivlp", "cocoop", "mmrl", "promptsrc"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_adapter_saved_by_version_0_1_gives_its_saved_logits(name, tokenizer, pixel_values):
    classifier = _classifier(SAVED / name, tokenizer)
    with torch.no_grad():
        logits = classifier(pixel_values)
    expected = load_file(str(SAVED / name / "expected_logits.safetensors"))["logits"]
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
