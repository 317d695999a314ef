"""The `maple-peft` console command: `main` parses the arguments, then runs the subcommand.

`--help` and option errors answer before anything slow is imported: the parser (`maple_peft.command_line`) and this
module import only the standard library at the top; torch, transformers and PEFT are imported inside the
subcommands, as huggingface_hub's `hf` command does.
"""

from __future__ import annotations

import argparse
import codecs
import os
import sys
from pathlib import Path

from . import methods
from .command_line import (
    build_parser,
    check_predict_arguments,
    command_line_message,
    one_line,
    printable,
    single_class_message,
)

#: Parameters of the Python API named in error messages -> the `maple-peft predict` flags that set them.
PREDICT_FLAGS = {
    "adapter_name_or_path": "--adapter",
    "base_model_name_or_path": "--base-model",
    "class_names": "--classes",
}


def _error(message: str) -> None:
    print(f"maple-peft: error: {printable(message)}", file=sys.stderr)


def _predict_error(message: str) -> None:
    """One error line of `maple-peft predict` (control characters of paths and class names escaped)."""
    print(f"error: {printable(message)}", file=sys.stderr)


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

    from .hub import check_sources

    try:
        check_sources({"--base-model": (args.base_model, "model"), "--tokenizer": (args.tokenizer, "model")})
    except OSError as error:
        _error(one_line(error))
        return 2
    # the options a file does not hold (its methods declare them); refused for files of other methods
    file_options = {name: getattr(args, name) for name in methods.checkpoint_options()}
    file_options["template"] = args.template
    try:
        clip_config = CLIPConfig.from_pretrained(args.base_model)
    except (OSError, ValueError) as error:
        _error(f"--base-model {args.base_model}: {str(error).strip().splitlines()[0]}")
        return 2
    try:  # widths, depth and the method's options, still before the base model is loaded
        check_official_checkpoint_fits(converted, clip_config, **file_options)
    except ValueError as error:
        _error(" ".join(str(error).split()))
        return 2
    try:
        base = CLIPModel.from_pretrained(args.base_model)
    except (OSError, ValueError) as error:
        _error(f"--base-model {args.base_model}: {str(error).strip().splitlines()[0]}")
        return 2
    try:
        model = peft_model_from_official(
            base,
            converted,
            prompt_init=args.prompt_init,
            tokenizer_name_or_path=args.tokenizer,
            class_names=args.class_names,
            dataset=args.dataset,
            **file_options,
        )
        model.save_pretrained(output)
    except (OSError, ValueError) as error:
        _error(str(error).strip().splitlines()[0])
        return 1
    config = model.peft_config["default"]
    method = config.method
    shape = f"variant={config.variant}"
    if method.text_prompts or method.vision_prompts:
        shape += f", n_ctx={config.n_ctx}, depth={config.depth}"
        if config.n_ctx_vision is not None:
            shape += f", n_ctx_vision={config.num_vision_tokens}"
    shape += "".join(f", {f.name}={getattr(config, f.name)}" for f in methods.fields_of(method.options))
    if not (method.text_prompts or method.vision_prompts):
        shape += f", template={config.template!r}"
    print(f"Converted {args.checkpoint} ({converted.source} checkpoint: {shape}) to {output}")
    return 0


def _one_line(error: BaseException) -> str:
    return command_line_message(one_line(error), PREDICT_FLAGS)


def check_device(device: str) -> str:
    """Checks that torch knows `device` and that this machine and torch build have it, before any model is loaded.

    Args:
        device (`str`): e.g. `"cpu"`, `"cuda"`, `"cuda:1"`, `"mps"`.

    Returns:
        `str`: the device, as given.

    Raises:
        `ValueError`: naming the device, why it cannot be used, and the devices that can.
    """
    import torch

    def backend(kind: str):
        return getattr(torch.backends, "mps", None) if kind == "mps" else getattr(torch, kind, None)

    def count(module) -> int:
        return module.device_count() if hasattr(module, "device_count") else 1

    available = ["cpu"]
    for kind in ("cuda", "mps", "xpu"):
        module = backend(kind)
        if module is not None and module.is_available():
            available += [kind] + [f"{kind}:{index}" for index in range(1, count(module))]
    hint = f"use one of: {', '.join(available)}"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"--device {device}: torch knows no such device; {hint}.") from None
    if parsed.type == "cpu":
        return device
    if parsed.type == "meta":
        raise ValueError(f"--device {device} holds no data and cannot classify images; {hint}.")
    module = backend(parsed.type)
    if module is None or not hasattr(module, "is_available") or not module.is_available():
        no_cuda = parsed.type == "cuda" and torch.version.cuda is None and torch.version.hip is None
        why = f"this torch build ({torch.__version__}) has no CUDA support" if no_cuda else "no such device here"
        raise ValueError(f"--device {device}: {why}; {hint}.")
    if parsed.index is not None and parsed.index >= count(module):
        raise ValueError(f"--device {device}: this machine has {count(module)} {parsed.type} device(s); {hint}.")
    return device


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


_BYTE_ORDER_MARKS = (  # (the UTF-32 marks first: UTF-32 LE's begins with UTF-16 LE's)
    (codecs.BOM_UTF32_LE, "utf-32", "UTF-32"),
    (codecs.BOM_UTF32_BE, "utf-32", "UTF-32"),
    (codecs.BOM_UTF8, "utf-8-sig", "UTF-8"),
    (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"),
    (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"),
)


def read_classes_file(path: str | os.PathLike) -> list[str]:
    """The class names of a text file, one per line (blank lines skipped, spaces around a name removed).

    The file is UTF-8, with or without a byte-order mark (as Notepad saves it), or UTF-16 / UTF-32 with their
    byte-order mark; lines end in LF, CRLF or CR.

    Args:
        path (`str` or `os.PathLike`): the file.

    Raises:
        `OSError`: the file cannot be read.
        `ValueError`: it is not text in one of these encodings, naming the encoding and what to do.
    """
    import io
    from pathlib import Path

    raw = Path(path).read_bytes()
    encoding, name = "utf-8", "UTF-8"
    for mark, codec, label in _BYTE_ORDER_MARKS:
        if raw.startswith(mark):
            encoding, name = codec, label
            break
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as err:
        raise ValueError(
            f"--classes-file {os.fspath(path)} is not {name} text (byte {raw[err.start]:#04x} at position "
            f"{err.start}); save it as UTF-8 (or UTF-16 with its byte-order mark)."
        ) from None
    if "\x00" in text:
        raise ValueError(
            f"--classes-file {os.fspath(path)} holds NUL characters: it looks like UTF-16 or UTF-32 without a "
            "byte-order mark; save it as UTF-8."
        )
    return [line.strip() for line in io.StringIO(text, newline=None) if line.strip()]


def _classify_images(args: argparse.Namespace) -> int:
    import json

    from .classifier import PromptClassifier
    from .loading import load_image

    class_names = args.classes
    if args.classes_file is not None:
        try:
            class_names = read_classes_file(args.classes_file)
        except OSError as err:
            _predict_error(f"cannot read --classes-file {args.classes_file}: {_one_line(err)}")
            return 2
        except ValueError as err:
            _predict_error(str(err))
            return 2
        if not class_names:
            _predict_error(f"--classes-file {args.classes_file} holds no class names (one per line).")
            return 2
        if len(class_names) == 1 and not args.allow_single_class:
            _predict_error(single_class_message(f"--classes-file {args.classes_file}", class_names[0]))
            return 2
    try:  # everything that can be checked before the model is loaded, then the model
        if args.device is not None:
            check_device(args.device)
        if class_names is None:
            from .hub import check_sources
            from .loading import load_adapter_config

            check_sources({"--adapter": (args.adapter, "model")})

            config = load_adapter_config(args.adapter)
            if getattr(config, "class_names", None) is None:
                _predict_error(
                    f"the adapter {args.adapter} has no class names saved with it; pass --classes a b c or "
                    "--classes-file FILE."
                )
                return 2
        classifier = PromptClassifier.from_pretrained(
            args.adapter, class_names, base_model_name_or_path=args.base_model
        )
        if args.device is not None:
            classifier.to(args.device)
    except (OSError, ValueError, TypeError, RuntimeError) as err:  # nothing can be classified: one line, code 2
        _predict_error(_one_line(err))
        return 2

    failed = 0
    pending: list[tuple[str, object]] = []

    def flush() -> None:
        if not pending:
            return
        results = classifier.predict_proba([image for _, image in pending], top_k=args.top_k)
        for (path, _), predictions in zip(pending, results):
            if args.json:  # exact: JSON escapes what it must
                print(json.dumps({"image": path, "predictions": predictions}, ensure_ascii=False))
            else:  # one line per image, whatever the path and the (untrusted) class names hold
                fields = [printable(path)]
                for p in predictions:
                    fields += [printable(p["label"]), f"{p['score']:.4f}"]
                print("\t".join(fields))
        pending.clear()

    for path in args.images:
        try:
            pending.append((path, load_image(path, timeout=args.timeout)))
        except (OSError, ValueError) as err:
            _predict_error(_one_line(err))
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
    "train_images.json",
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
        print(f"error: {command_line_message(str(error), {'output_dir': 'RUN_DIR'})}", file=sys.stderr)
        return 2
    except Exception as error:  # network, authentication, permissions: one line, no traceback
        print(
            f"error: could not push {args.run_dir} to {args.hub_model_id}: {type(error).__name__}: {error}",
            file=sys.stderr,
        )
        return 1
    print(f"Pushed {args.run_dir} to {url}")
    return 0


def recipe_folder(configs: str | os.PathLike | None = None) -> Path:
    """The folder of the recipes: `configs` if given, else `examples/configs` of the source checkout this package
    runs from (an editable install), else of the current folder.

    Args:
        configs (`str` or `os.PathLike`, *optional*): the folder the user named (`--configs`).
    """
    if configs is not None:
        return Path(configs)
    beside = Path(__file__).resolve().parents[1] / "examples" / "configs"
    return beside if beside.is_dir() else Path("examples") / "configs"


def recipe_summary(path: str | os.PathLike) -> str:
    """What a recipe says it is: the first sentence of its header comment (up to its first `:` or `.` outside
    parentheses), which names the original configuration it reproduces.

    Args:
        path (`str` or `os.PathLike`): the recipe (a YAML file of `train.py` options).
    """
    lines = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            text = line.strip()
            if not text.startswith("#"):
                break
            text = text.lstrip("#").strip()
            if text.startswith(("python ", "accelerate ")):  # the command that runs it
                break
            lines.append(text)
    text = " ".join(lines)
    depth = 0
    for index, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0 and char in ":." and text[index + 1 : index + 2] in (" ", ""):
            return text[:index]
    return text


def _shown_path(path: Path) -> str:
    """`path` relative to the current folder where it is inside it (what `--config` then takes), else as it is."""
    try:
        return path.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def _wrapped(text: str, indent: int) -> str:
    """`text` in lines of at most 119 characters, the first indented by 2 spaces and the others by `indent` (paths
    and words are kept whole)."""
    import textwrap

    return textwrap.fill(
        text, 119, initial_indent="  ", subsequent_indent=" " * indent, break_on_hyphens=False, break_long_words=False
    )


def _methods(args: argparse.Namespace) -> int:
    """Print every registered method with its paper, the option that selects it and its recipes."""
    import re

    folder = recipe_folder(args.configs)
    if args.configs is not None and not folder.is_dir():
        _error(f"--configs {args.configs} is not a folder; name the folder of the recipes (examples/configs).")
        return 2
    missing = []
    for method in methods.registry().values():
        selects = [f"--variant {method.name}"] if method.is_variant else []
        if method.objective:
            selects.append(f"--objective {method.objective}")
        print(f"{method.title} ({' '.join(selects)})")
        print(_wrapped(re.sub(r"\[([^\]]*)\]\(([^)]*)\)", r"\1 <\2>", method.paper), 4))  # markdown links as text
        for recipe in method.recipes:
            path = folder / f"{recipe}.yaml"
            if path.is_file():
                print(_wrapped(printable(f"{_shown_path(path)}: {recipe_summary(path)}"), 6))
            else:
                print(_wrapped(f"{recipe}.yaml (not in {folder})", 6))
                missing.append(recipe)
    if missing:
        print(
            f"\n{len(missing)} recipe(s) not found in {folder}: the recipes are examples/configs/ of the source "
            "repository (not installed with the package); name that folder with --configs DIR.",
            file=sys.stderr,
        )
    return 0


def run(args: argparse.Namespace) -> int:
    """Runs the subcommand of parsed `maple-peft` arguments (see `command_line.build_parser`); returns the exit code.

    Args:
        args (`argparse.Namespace`): the parsed arguments.
    """
    from .console import quiet_known_messages

    quiet_known_messages()
    if args.command == "predict":
        return _predict(args)
    if args.command == "push":
        return _push(args)
    if args.command == "methods":
        return _methods(args)
    return _convert_official(args)


def main(argv: list[str] | None = None) -> int:
    """Runs `maple-peft` with `argv` (default: the command line) and returns the exit code.

    Args:
        argv (`list[str]`, *optional*): the arguments after `maple-peft`.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "predict":
        check_predict_arguments(parser, args)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
