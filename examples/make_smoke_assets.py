#!/usr/bin/env python
"""Create the offline smoke-run assets: a tiny random CLIP (with the real CLIP tokenizer) and a small image dataset.

    python examples/make_smoke_assets.py            # writes smoke_assets/tiny-clip and smoke_assets/data
    python examples/train.py --config examples/configs/smoke.yaml

    python examples/make_smoke_assets.py --family siglip2    # also smoke_assets/tiny-siglip2 (SigLIP 2, NaFlex)
    python examples/train.py --config examples/configs/smoke.yaml --model_name_or_path smoke_assets/tiny-siglip2

No network is needed: the model is built from its config (`CLIPConfig`, `MetaClip2Config`, `SiglipConfig`,
`Siglip2Config`), the tokenizer is the copy in tests/fixtures (the real CLIP tokenizer; toy tokenizers of the same
kinds as the other families'), and the images are generated (one colour pattern per class, so that the prompts have
something to learn).

Running it again replaces only what it wrote before: a `tiny-clip` or `data` folder that holds anything else (a
model or images of yours) is refused, never deleted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer, CLIPConfig, CLIPModel, CLIPTokenizer

from maple_peft.console import disable_library_progress_bars, progress_bars_wanted, quiet_known_messages
from maple_peft.training.data import make_synthetic_imagefolder
from maple_peft.training.data.synthetic import MARKER as SYNTHETIC_MARKER
from maple_peft.training.data.synthetic import SMOKE_MODEL_MARKER as CLIP_MARKER

REPO = Path(__file__).resolve().parents[1]
TOKENIZER_DIR = REPO / "tests" / "fixtures" / "clip-tokenizer"
#: family -> toy tokenizer of the same kind as the family's (tests/fixtures/make_tokenizers.py builds them)
TOKENIZER_DIRS = {
    "clip": TOKENIZER_DIR,
    "metaclip_2": REPO / "tests" / "fixtures" / "xlmr-tokenizer",
    "siglip": REPO / "tests" / "fixtures" / "siglip-tokenizer",
    "siglip2": REPO / "tests" / "fixtures" / "siglip2-tokenizer",
}
CLASSES = ["annual_crop", "forest", "herbaceous_vegetation", "highway", "industrial", "pasture"]


def _clip_image_processor(image_size: int):
    """CLIP's image processor for `image_size` pixels, without transformers' "requires torchvision ... falling back"
    notice (resolving the name `CLIPImageProcessor` prints it once when torchvision is missing)."""
    quiet_known_messages()
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )


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
    _clip_image_processor(image_size).save_pretrained(path)
    (path / CLIP_MARKER).write_text("written by examples/make_smoke_assets.py\n", encoding="utf-8")
    return path


def save_tiny_model(path: Path, family: str, *, image_size: int = 32, seed: int = 0) -> Path:
    """A 2-layer model of another CLIP family (64-wide text, 96-wide vision towers), saved with its toy tokenizer and
    the family's image processor. CLIP itself: `save_tiny_clip`.

    Args:
        path (`Path`): The folder to write (refused, as for `save_tiny_clip`, when it holds files of yours).
        family (`str`): `"metaclip_2"`, `"siglip"` or `"siglip2"`.
        image_size (`int`): The image side of the vision tower (SigLIP 2: at most 16 patches of 8 pixels).
        seed (`int`): The seed of the random weights.
    """
    from transformers import (
        MetaClip2Config,
        MetaClip2Model,
        Siglip2Config,
        Siglip2ImageProcessorPil,
        Siglip2Model,
        SiglipConfig,
        SiglipImageProcessorPil,
        SiglipModel,
    )

    if path.exists() and any(path.iterdir()) and not (path / CLIP_MARKER).is_file():
        raise FileExistsError(
            f"{path} is not empty and was not written by make_smoke_assets.py; its files are left alone: move them "
            "away or pass another --output_dir."
        )
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER_DIRS[family])
    torch.manual_seed(seed)
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    text.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    text["bos_token_id"] = tokenizer.bos_token_id
    vision = dict(hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4, patch_size=8)
    if family == "metaclip_2":
        config = MetaClip2Config(
            text_config=text, vision_config=dict(vision, image_size=image_size), projection_dim=32
        )
        model, processor = (
            MetaClip2Model(config),
            _clip_image_processor(image_size),
        )
    elif family == "siglip":
        config = SiglipConfig(
            text_config=dict(text, projection_size=96), vision_config=dict(vision, image_size=image_size)
        )
        model, processor = (
            SiglipModel(config),
            SiglipImageProcessorPil(size={"height": image_size, "width": image_size}),
        )
    elif family == "siglip2":
        patches = (image_size // 8) ** 2
        config = Siglip2Config(
            text_config=dict(text, projection_size=96), vision_config=dict(vision, num_patches=patches)
        )
        model, processor = Siglip2Model(config), Siglip2ImageProcessorPil(patch_size=8, max_num_patches=patches)
    else:
        raise ValueError(f"family={family!r} is not one of {list(TOKENIZER_DIRS)}")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    processor.save_pretrained(path)
    (path / CLIP_MARKER).write_text("written by examples/make_smoke_assets.py\n", encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="smoke_assets")
    parser.add_argument("--train_per_class", type=int, default=6)
    parser.add_argument("--test_per_class", type=int, default=5)
    parser.add_argument(
        "--family",
        nargs="+",
        default=["clip"],
        choices=list(TOKENIZER_DIRS),
        help="the backbones to build (tiny-<family> folders); the smoke recipe uses tiny-clip",
    )
    args = parser.parse_args(argv)
    if not progress_bars_wanted():
        disable_library_progress_bars()  # "Writing model shards" bars in a log file
    root = Path(args.output_dir)
    clip_dir, data_dir = root / "tiny-clip", root / "data"
    try:
        # the data folder is checked before anything is written: make_synthetic_imagefolder refuses foreign files
        if data_dir.exists() and any(data_dir.iterdir()) and not (data_dir / SYNTHETIC_MARKER).is_file():
            raise FileExistsError(
                f"{data_dir} is not empty and was not written by make_smoke_assets.py; its files are left alone: "
                "move them away or pass another --output_dir."
            )
        written = []
        for family in args.family:
            if family == "clip":
                written.append(save_tiny_clip(clip_dir))
            else:
                written.append(save_tiny_model(root / f"tiny-{family}", family))
        make_synthetic_imagefolder(
            data_dir, CLASSES, args.train_per_class, args.test_per_class, image_size=40, overwrite=True
        )
    except FileExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"Wrote {', '.join(str(path) for path in written)} and {data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
