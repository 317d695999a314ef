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


PUSH_ALLOW_PATTERNS = [
    "adapter_model.safetensors",
    "adapter_config.json",
    "README.md",
    "metrics.json",
    "training_history.json",
    "*.png",
    "training_log.txt",
]
"""The files of a run folder that `push_run` uploads; checkpoints (optimizer and RNG states) never are."""


def push_run(output_dir: str | os.PathLike, repo_id: str, *, private: bool = False) -> str:
    """Uploads a finished run folder (adapter, model card, metrics, plots, log) to a Hub model repository.

    The repository is created if needed. The token is the one `huggingface_hub` stores (`hf auth login`) or
    `HF_TOKEN`; no token is passed or written by this package.

    Args:
        output_dir (`str` or `os.PathLike`): The run folder; must hold `adapter_model.safetensors`.
        repo_id (`str`): The model repository, `"user/name"`.
        private (`bool`): Create the repository as private (ignored when it exists).

    Returns:
        The URL of the upload commit.

    Example:
        ```python
        >>> push_run("outputs/eurosat/maple/seed1", "me/maple-eurosat")
        'https://huggingface.co/me/maple-eurosat/commit/...'
        ```
    """
    from huggingface_hub import HfApi

    folder = os.fspath(output_dir)
    if not os.path.isfile(os.path.join(folder, "adapter_model.safetensors")):
        raise FileNotFoundError(
            f"output_dir={folder!r} holds no adapter_model.safetensors; pass the folder of a finished training run."
        )
    for marker in ("RUNNING", "FAILED"):
        if os.path.exists(os.path.join(folder, marker)):
            raise ValueError(f"output_dir={folder!r} holds a {marker} marker: its run did not finish; not pushing it.")
    api = HfApi()
    repo = api.create_repo(repo_id=repo_id, exist_ok=True, private=private, repo_type="model")
    commit = api.upload_folder(
        folder_path=folder,
        repo_id=repo.repo_id,
        repo_type="model",
        allow_patterns=PUSH_ALLOW_PATTERNS,
        commit_message=f"Upload MaPLe adapter from {os.path.basename(os.path.abspath(folder))}",
    )
    return commit.commit_url


def _push(args: argparse.Namespace) -> int:
    try:
        url = push_run(args.run_dir, args.hub_model_id, private=args.private)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # network, authentication, permissions: one line, no traceback
        print(
            f"error: could not push {args.run_dir} to {args.hub_model_id}: {type(error).__name__}: {error}",
            file=sys.stderr,
        )
        return 1
    print(f"Pushed {args.run_dir} to {url}")
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
    push = commands.add_parser("push", help="Upload a finished training run folder to the Hugging Face Hub.")
    push.add_argument("run_dir", help="the run folder written by examples/train.py")
    push.add_argument("--hub_model_id", required=True, help="the model repository, user/name")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    args = parser.parse_args(argv)
    if args.command == "push":
        return _push(args)
    return _convert_official(args)


if __name__ == "__main__":
    raise SystemExit(main())
