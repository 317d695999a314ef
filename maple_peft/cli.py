"""The `maple-peft` console command."""

from __future__ import annotations

import argparse
import os
import sys


def _convert_official(args: argparse.Namespace) -> int:
    from transformers import CLIPModel

    from .convert import from_official_checkpoint

    if os.path.exists(args.output_dir) and os.listdir(args.output_dir) and not args.overwrite:
        print(
            f"error: {args.output_dir} exists and is not empty; pass --overwrite or another --output-dir.",
            file=sys.stderr,
        )
        return 2
    base = CLIPModel.from_pretrained(args.base_model)
    model = from_official_checkpoint(
        base, args.checkpoint, prompt_init=args.prompt_init, tokenizer_name_or_path=args.tokenizer
    )
    model.save_pretrained(args.output_dir)
    config = model.peft_config["default"]
    print(f"Converted {args.checkpoint} (n_ctx={config.n_ctx}, depth={config.depth}) to {args.output_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    import maple_peft  # noqa: F401 - registers the method with PEFT

    parser = argparse.ArgumentParser(prog="maple-peft", description="Tools for MaPLe adapters.")
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser(
        "convert-official", help="Convert a checkpoint of the original MaPLe code into a PEFT adapter folder."
    )
    convert.add_argument("checkpoint", help="the model.pth.tar-N file written by the original code")
    convert.add_argument("--base-model", required=True, help="the CLIP it was trained on (Hub id or directory)")
    convert.add_argument("--output-dir", required=True, help="where to write the adapter")
    convert.add_argument("--prompt-init", default="a photo of a", help="the ctx_init it was trained with")
    convert.add_argument("--tokenizer", default=None, help="tokenizer for --prompt-init (defaults to --base-model)")
    convert.add_argument("--overwrite", action="store_true", help="write into a non-empty --output-dir")
    args = parser.parse_args(argv)
    return _convert_official(args)


if __name__ == "__main__":
    raise SystemExit(main())
