#!/usr/bin/env python
"""Create the offline smoke-run assets: a tiny random CLIP (with the real CLIP tokenizer) and a small image dataset.

    python examples/make_smoke_assets.py            # writes smoke_assets/tiny-clip and smoke_assets/data
    accelerate launch examples/train.py --config examples/configs/smoke.yaml

No network is needed: the CLIP is built from a `CLIPConfig`, the tokenizer is the copy in tests/fixtures, and the
images are generated (one colour pattern per class, so that the prompts have something to learn).

Running it again replaces only what it wrote before: a `tiny-clip` or `data` folder that holds anything else (a
model or images of yours) is refused, never deleted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

from maple_peft.training.data import make_synthetic_imagefolder
from maple_peft.training.data.synthetic import MARKER as SYNTHETIC_MARKER

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = REPO / "tests" / "fixtures" / "clip-tokenizer"
CLASSES = ["annual_crop", "forest", "herbaceous_vegetation", "highway", "industrial", "pasture"]
CLIP_MARKER = ".maple_peft_smoke_asset"  # written into tiny-clip: the folder is this script's to replace


def save_tiny_clip(path: Path, *, image_size: int = 32, seed: int = 0) -> Path:
    """A 2-layer CLIP with 64-wide text and 96-wide vision towers, saved with tokenizer and image processor.

    Args:
        path (`Path`): The folder to write; refused (FileExistsError) if it holds anything and is not one this
            function wrote before (its files are overwritten in place, nothing else is deleted).
        image_size (`int`): The image side of the vision tower.
        seed (`int`): The seed of the random weights.

    Returns:
        `Path`: `path`.
    """
    if path.exists() and any(path.iterdir()) and not (path / CLIP_MARKER).is_file():
        raise FileExistsError(
            f"{path} is not empty and was not written by make_smoke_assets.py; its files are left alone: move them "
            "away or pass another --output_dir."
        )
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
    (path / CLIP_MARKER).write_text("written by examples/make_smoke_assets.py\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="smoke_assets")
    parser.add_argument("--train_per_class", type=int, default=6)
    parser.add_argument("--test_per_class", type=int, default=5)
    args = parser.parse_args(argv)
    root = Path(args.output_dir)
    clip_dir, data_dir = root / "tiny-clip", root / "data"
    try:
        # the data folder is checked before anything is written: make_synthetic_imagefolder refuses foreign files
        if data_dir.exists() and any(data_dir.iterdir()) and not (data_dir / SYNTHETIC_MARKER).is_file():
            raise FileExistsError(
                f"{data_dir} is not empty and was not written by make_smoke_assets.py; its files are left alone: "
                "move them away or pass another --output_dir."
            )
        save_tiny_clip(clip_dir)
        make_synthetic_imagefolder(
            data_dir, CLASSES, args.train_per_class, args.test_per_class, image_size=40, overwrite=True
        )
    except FileExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Wrote {clip_dir} and {data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
