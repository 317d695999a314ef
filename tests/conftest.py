"""Shared fixtures: tiny random CLIPs built from a config and the real CLIP tokenizer (no network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

# One torch thread in the tests and in the processes they start: the tiny models gain nothing from a second intra-op
# thread, whose hand-offs cost more than the work (on 2 shared cores, test_model.py and test_regularization.py took
# 144 s of CPU with 2 threads and 17 s with one); every result is then computed the same way in and out of the process.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

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


# ---- the other CLIP-family backbones: tiny models from their configs, toy tokenizers (tests/fixtures/) -------------

FIXTURES = Path(__file__).parent / "fixtures"
FAMILIES = ("clip", "metaclip_2", "siglip", "siglip2")
TOKENIZER_DIRS = {
    "clip": TOKENIZER_DIR,
    "metaclip_2": str(FIXTURES / "xlmr-tokenizer"),
    "siglip": str(FIXTURES / "siglip-tokenizer"),
    "siglip2": str(FIXTURES / "siglip2-tokenizer"),
}
#: SigLIP 2's tiny vision tower: 4-pixel patches, at most 16 of them per image
SIGLIP2_PATCH, SIGLIP2_PATCHES = 4, 16


def tiny_model(
    family: str = "clip", seed: int = 0, d_text=32, text_layers=3, d_vision=48, vision_layers=4, projection_size=None
):
    """A tiny random dual encoder of `family` (unequal tower widths and depths), in eval mode, with a non-trivial
    logit scale (and bias); SigLIP's text head projects to `projection_size` (default: the vision width)."""
    from transformers import MetaClip2Config, MetaClip2Model, Siglip2Config, Siglip2Model, SiglipConfig, SiglipModel

    if family == "clip":
        return tiny_clip(seed=seed)
    torch.manual_seed(seed)
    text = dict(hidden_size=d_text, intermediate_size=2 * d_text, num_hidden_layers=text_layers, num_attention_heads=4)
    vision = dict(hidden_size=d_vision, intermediate_size=2 * d_vision, num_hidden_layers=vision_layers)
    vision["num_attention_heads"] = 4
    if family == "metaclip_2":
        text.update(vocab_size=124, bos_token_id=0, pad_token_id=1, eos_token_id=2, projection_dim=16)
        config = MetaClip2Config(
            text_config=text, vision_config=dict(vision, image_size=32, patch_size=8), projection_dim=16
        )
        model = MetaClip2Model(config)
    elif family == "siglip":
        text.update(
            vocab_size=120,
            pad_token_id=1,
            eos_token_id=1,
            bos_token_id=None,
            projection_size=projection_size or d_vision,
        )
        model = SiglipModel(SiglipConfig(text_config=text, vision_config=dict(vision, image_size=32, patch_size=8)))
    elif family == "siglip2":
        text.update(
            vocab_size=300, pad_token_id=0, eos_token_id=1, bos_token_id=2, projection_size=projection_size or d_vision
        )
        vision.update(patch_size=SIGLIP2_PATCH, num_patches=SIGLIP2_PATCHES)
        model = Siglip2Model(Siglip2Config(text_config=text, vision_config=vision))
    else:
        raise ValueError(family)
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
        if hasattr(model, "logit_bias"):
            model.logit_bias.fill_(-1.5)
    return model.eval()


def family_tokenizer(family: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER_DIRS[family])


def family_images(family: str, batch: int = 3, seed: int = 1, padded: bool = True):
    """An image batch as the family's image processor gives it: `pixel_values` (CLIP, MetaCLIP 2, SigLIP), or SigLIP 2's
    dict of patches, `pixel_attention_mask` and `spatial_shapes` (with `padded`, images of several aspect ratios:
    the later ones use fewer patches, the rest is padding)."""
    generator = torch.Generator().manual_seed(seed)
    if family != "siglip2":
        return torch.randn(batch, 3, 32, 32, generator=generator)
    shapes = [(4, 4), (2, 4), (3, 3), (4, 2)] if padded else [(4, 4)] * 4
    shapes = [shapes[i % len(shapes)] for i in range(batch)]
    pixel_values = torch.randn(batch, SIGLIP2_PATCHES, 3 * SIGLIP2_PATCH**2, generator=generator)
    mask = torch.zeros(batch, SIGLIP2_PATCHES, dtype=torch.long)
    for row, (h, w) in enumerate(shapes):
        mask[row, : h * w] = 1
    return {"pixel_values": pixel_values, "pixel_attention_mask": mask, "spatial_shapes": torch.tensor(shapes)}
