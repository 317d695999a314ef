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


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _predict(args: argparse.Namespace) -> int:
    """Classify images with a saved adapter: one output line per image, one error line per unreadable image.

    Exit code 0 when every image was classified, 1 when some could not be read (the others are still classified),
    2 when nothing could be classified (the adapter, base model or class names are missing or invalid).
    """
    from transformers.utils import logging as transformers_logging

    progress_bars = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()  # stderr holds one line per error, nothing else
    try:
        return _classify_images(args)
    finally:
        if progress_bars:
            transformers_logging.enable_progress_bar()


def _classify_images(args: argparse.Namespace) -> int:
    import json

    from .classifier import PromptClassifier
    from .loading import load_image

    class_names = args.classes
    if args.classes_file is not None:
        try:
            with open(args.classes_file, encoding="utf-8") as handle:
                class_names = [line.strip() for line in handle if line.strip()]
        except OSError as err:
            print(f"error: cannot read --classes-file {args.classes_file}: {_one_line(err)}", file=sys.stderr)
            return 2
        if not class_names:
            print(f"error: --classes-file {args.classes_file} holds no class names (one per line).", file=sys.stderr)
            return 2
    try:
        if class_names is None:
            from peft import PeftConfig

            config = PeftConfig.from_pretrained(args.adapter)
            if getattr(config, "class_names", None) is None:
                print(
                    f"error: the adapter {args.adapter} has no class names saved with it; pass --classes a b c or "
                    "--classes-file FILE.",
                    file=sys.stderr,
                )
                return 2
        classifier = PromptClassifier.from_pretrained(
            args.adapter, class_names, base_model_name_or_path=args.base_model
        )
        if args.device is not None:
            classifier.to(args.device)
    except (OSError, ValueError, TypeError, RuntimeError) as err:
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2

    failed = 0
    pending: list[tuple[str, object]] = []

    def flush() -> None:
        if not pending:
            return
        results = classifier.predict_proba([image for _, image in pending], top_k=args.top_k)
        for (path, _), predictions in zip(pending, results):
            if args.json:
                print(json.dumps({"image": path, "predictions": predictions}, ensure_ascii=False))
            else:
                print("\t".join([path, *(f"{p['label']}\t{p['score']:.4f}" for p in predictions)]))
        pending.clear()

    for path in args.images:
        try:
            pending.append((path, load_image(path)))
        except (OSError, ValueError) as err:
            print(f"error: {_one_line(err)}", file=sys.stderr)
            failed += 1
            continue
        if len(pending) == args.batch_size:
            flush()
    flush()
    return 1 if failed else 0


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
        "convert-official",
        help="Convert a checkpoint of the original MaPLe, PromptSRC or IVLP code into a PEFT adapter folder.",
    )
    convert.add_argument("checkpoint", help="the model.pth.tar-N file written by the original code")
    convert.add_argument("--base-model", required=True, help="the CLIP it was trained on (Hub id or directory)")
    convert.add_argument("--output-dir", required=True, help="where to write the adapter")
    convert.add_argument("--prompt-init", default="a photo of a", help="the ctx_init it was trained with")
    convert.add_argument("--tokenizer", default=None, help="tokenizer for --prompt-init (defaults to --base-model)")
    convert.add_argument("--overwrite", action="store_true", help="write into a non-empty --output-dir")
    predict = commands.add_parser(
        "predict",
        help="Classify images with a saved adapter (Hub id or folder).",
        description="Prints one line per image: the path, then the top-k labels and scores, tab-separated (or JSON "
        "lines with --json). An unreadable image gives one error line on stderr and the others are still classified; "
        "the exit code is 1 if any image failed, 2 if nothing could be classified, 0 otherwise.",
    )
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files or http(s) URLs")
    predict.add_argument("--adapter", required=True, help="the adapter (Hub id or directory)")
    classes = predict.add_mutually_exclusive_group()
    classes.add_argument(
        "--classes",
        nargs="+",
        help="class names (default: those saved with the adapter); end the list with -- when IMAGE follows",
    )
    classes.add_argument("--classes-file", help="a text file with one class name per line")
    predict.add_argument("--top-k", type=_positive_int, default=1, help="number of labels per image (default 1)")
    predict.add_argument("--json", action="store_true", help="print JSON lines: {'image', 'predictions'}")
    predict.add_argument("--base-model", default=None, help="the base CLIP (default: the one the adapter names)")
    predict.add_argument("--batch-size", type=_positive_int, default=32, help="images per batch (default 32)")
    predict.add_argument("--device", default=None, help="e.g. cuda; default: CPU")
    push = commands.add_parser("push", help="Upload a finished training run folder to the Hugging Face Hub.")
    push.add_argument("run_dir", help="the run folder written by examples/train.py")
    push.add_argument("--hub_model_id", required=True, help="the model repository, user/name")
    push.add_argument("--private", action="store_true", help="create the repository as private")
    args = parser.parse_args(argv)
    if args.command == "predict":
        return _predict(args)
    if args.command == "push":
        return _push(args)
    return _convert_official(args)


if __name__ == "__main__":
    raise SystemExit(main())
