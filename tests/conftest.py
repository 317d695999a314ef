"""Shared fixtures: tiny random CLIPs built from a config and the real CLIP tokenizer (no network)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

TOKENIZER_DIR = str(Path(__file__).parent / "fixtures" / "clip-tokenizer")

# (d_text, text layers, d_vision, vision layers): unequal widths and layer counts
SHAPES = {
    "narrow_text": (32, 3, 48, 4),
    "wide_text": (64, 4, 40, 3),
}


def tiny_clip_config(d_text=32, text_layers=3, d_vision=48, vision_layers=4, image_size=32, patch_size=8, **kwargs):
    return CLIPConfig(
        text_config=dict(
            hidden_size=d_text,
            intermediate_size=2 * d_text,
            num_hidden_layers=text_layers,
            num_attention_heads=4,
            projection_dim=16,
        ),
        vision_config=dict(
            hidden_size=d_vision,
            intermediate_size=2 * d_vision,
            num_hidden_layers=vision_layers,
            num_attention_heads=4,
            image_size=image_size,
            patch_size=patch_size,
            projection_dim=16,
        ),
        projection_dim=16,
        **kwargs,
    )


def tiny_clip(shape: str = "narrow_text", seed: int = 0, **kwargs) -> CLIPModel:
    d_text, text_layers, d_vision, vision_layers = SHAPES[shape]
    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config(d_text, text_layers, d_vision, vision_layers, **kwargs))
    # a non-trivial logit scale, as in a trained CLIP
    model.logit_scale.data.fill_(2.0)
    return model.eval()


@pytest.fixture(scope="session")
def tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture
def pixel_values() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def saved_base(tmp_path_factory) -> str:
    """A tiny CLIP saved to disk (with the tokenizer and a 32-px image processor beside it), as a user's local base
    model."""
    path = tmp_path_factory.mktemp("tiny-clip")
    tiny_clip().save_pretrained(path)
    CLIPTokenizer.from_pretrained(TOKENIZER_DIR).save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)
