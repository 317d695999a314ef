#!/usr/bin/env python
"""Create the offline smoke-run assets: a tiny random CLIP (with the real CLIP tokenizer) and a small image dataset.

    python examples/make_smoke_assets.py            # writes smoke_assets/tiny-clip and smoke_assets/data
    accelerate launch examples/train.py --config examples/configs/smoke.yaml

No network is needed: the CLIP is built from a `CLIPConfig`, the tokenizer is the copy in tests/fixtures, and the
images are generated (one colour pattern per class, so that the prompts have something to learn).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

from maple_peft.training.data import make_synthetic_imagefolder

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = REPO / "tests" / "fixtures" / "clip-tokenizer"
CLASSES = ["annual_crop", "forest", "herbaceous_vegetation", "highway", "industrial", "pasture"]


def save_tiny_clip(path: Path, image_size: int = 32, seed: int = 0) -> Path:
    """A 2-layer CLIP with 64-wide text and 96-wide vision towers, saved with tokenizer and image processor."""
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
        vision_config=dict(
            hidden_size=96,
            intermediate_size=192,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=image_size,
            patch_size=8,
        ),
        projection_dim=32,
    )
    CLIPModel(config).save_pretrained(path)
    CLIPTokenizer.from_pretrained(TOKENIZER_DIR).save_pretrained(path)
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="smoke_assets")
    parser.add_argument("--train_per_class", type=int, default=6)
    parser.add_argument("--test_per_class", type=int, default=5)
    args = parser.parse_args(argv)
    root = Path(args.output_dir)
    if root.exists():
        shutil.rmtree(root / "tiny-clip", ignore_errors=True)
        shutil.rmtree(root / "data", ignore_errors=True)
    save_tiny_clip(root / "tiny-clip")
    make_synthetic_imagefolder(root / "data", CLASSES, args.train_per_class, args.test_per_class, image_size=40)
    print(f"Wrote {root / 'tiny-clip'} and {root / 'data'}")


if __name__ == "__main__":
    main()
