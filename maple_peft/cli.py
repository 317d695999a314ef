"""The `maple-peft` console command."""

from __future__ import annotations

import argparse
import os
import sys


def _error(message: str) -> None:
    print(f"maple-peft: error: {message}", file=sys.stderr)


def _convert_official(args: argparse.Namespace) -> int:
    from .convert import check_official_checkpoint_fits, peft_model_from_official, read_official_checkpoint

    output = args.output_dir
    if os.path.exists(output) and not os.path.isdir(output):
        _error(f"--output-dir {output} is a file; pass a folder for the adapter.")
        return 2
    if os.path.isdir(output) and os.listdir(output) and not args.overwrite:
        _error(f"--output-dir {output} exists and is not empty; pass --overwrite or another --output-dir.")
        return 2
    # the checkpoint is read and converted before the (large) base model is loaded
    try:
        converted = read_official_checkpoint(args.checkpoint)
    except (OSError, ValueError) as error:
        _error(str(error))
        return 2
    from transformers import CLIPConfig, CLIPModel

    try:
        check_official_checkpoint_fits(converted, CLIPConfig.from_pretrained(args.base_model))
        base = CLIPModel.from_pretrained(args.base_model)
    except (OSError, ValueError) as error:
        _error(f"--base-model {args.base_model}: {str(error).strip().splitlines()[0]}")
        return 2
    try:
        model = peft_model_from_official(
            base, converted, prompt_init=args.prompt_init, tokenizer_name_or_path=args.tokenizer
        )
        model.save_pretrained(output)
    except (OSError, ValueError) as error:
        _error(str(error).strip().splitlines()[0])
        return 1
    config = model.peft_config["default"]
    shape = f"variant={config.variant}, n_ctx={config.n_ctx}, depth={config.depth}"
    if config.variant == "ivlp":
        shape += f", n_ctx_vision={config.num_vision_tokens}"
    print(f"Converted {args.checkpoint} ({converted.source} checkpoint: {shape}) to {output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    import maple_peft  # noqa: F401 - registers the method with PEFT

    parser = argparse.ArgumentParser(prog="maple-peft", description="Tools for MaPLe adapters.")
    commands = parser.add_subparsers(dest="command", required=True)
    convert = commands.add_parser(
        "convert-official",
        help="Convert a checkpoint of the original MaPLe, PromptSRC or IVLP code into a PEFT adapter folder.",
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
