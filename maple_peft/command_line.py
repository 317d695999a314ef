"""The arguments of the `maple-peft` command (`build_parser`) and the conventions every maple_peft command line follows.

This module imports only the standard library (and the methods' declarations, `maple_peft.methods`, which import
nothing else), so that `--help` and option errors come back at once: the commands
(`maple_peft.cli`) import torch, transformers and PEFT only once the arguments are valid.

The conventions, shared with `examples/train.py` and `examples/evaluate.py` (`CommandParser`):

- each entry point has one spelling of its options, its ecosystem's: `maple-peft` subcommands follow
  huggingface_hub's CLI (`--base-model`), the scripts follow transformers' examples (`--output_dir`); the other
  spelling (`--base_model`, `--output-dir`) is accepted as an alias;
- an option error is one line and a pointer to `--help`, not the usage text, with exit code 2;
- errors speak the command line (`--output_dir`), not Python (`output_dir=`): `command_line_message`.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NoReturn

from . import methods

__all__ = [
    "CommandParser",
    "build_parser",
    "check_predict_arguments",
    "command_line_message",
    "did_you_mean",
    "one_line",
    "printable",
    "single_class_message",
]


class CommandParser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` with the conventions of every maple_peft command line.

    - An option error prints one line, `PROG: error: MESSAGE`, and a pointer to `PROG --help`, with exit code 2 (for
      an option of a subcommand, to `PROG SUBCOMMAND --help`).
    - `--an_option` and `--an-option` are the same option: the spelling the parser was built with is canonical (and
      the only one shown by `--help`); the other one is rewritten to it before parsing.
    - A misspelled option names the closest one (`did you mean`), even when argparse would first complain that a
      required option is missing (`--adaptor` for `--adapter`).
    - `foreign_options` maps options that users try but this command does not have (`--device`) to what to do
      instead; an unrecognized one is answered with it.

    Subparsers created with `add_subparsers` are `CommandParser`s too.

    Example:
        ```python
        >>> parser = CommandParser(prog="train.py")
        >>> _ = parser.add_argument("--output_dir")
        >>> parser.parse_args(["--output-dir", "out"]).output_dir
        'out'
        ```
    """

    #: option -> what to do instead, for options users try that this command does not have
    foreign_options: Mapping[str, str] = {}

    def error(self, message: str) -> NoReturn:
        misspelled = getattr(self, "_misspelled", None)
        if misspelled and message.startswith("the following arguments are required"):
            message = f"unrecognized arguments: {misspelled}"  # the cause; the missing option follows from it
        self.exit(2, f"{self.prog}: error: {printable(message)}\nRun `{self.prog} --help` for the options.\n")

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        args = self.canonical_spelling(sys.argv[1:] if args is None else list(args))
        self._misspelled = self._first_misspelled(args)
        return super().parse_known_args(args, namespace)

    def parse_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            chosen = self._chosen_subcommand(parsed)
            parser = chosen or self
            options = [o for o in parser._option_string_actions if o.startswith("--")]
            if chosen is not None:
                options += [o for o in self._option_string_actions if o.startswith("--")]
            hints = [self._hint(arg, options, parser) for arg in unknown if arg.startswith("--")]
            parser.error(f"unrecognized arguments: {' '.join(unknown)}{''.join([h for h in hints if h][:1])}")
        return parsed

    def _chosen_subcommand(self, parsed: argparse.Namespace) -> CommandParser | None:
        """The subcommand's parser that `parsed` chose, if this parser has subcommands."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return action.choices.get(getattr(parsed, action.dest, None) or "")
        return None

    @staticmethod
    def _hint(arg: str, options: Sequence[str], parser: CommandParser) -> str:
        """What to say about the unknown argument `arg`: what to do instead of a foreign option, or the closest."""
        name = arg.partition("=")[0]
        foreign = getattr(parser, "foreign_options", {})
        if name in foreign:
            return f" ({name} is not an option of {parser.prog}: {foreign[name]})"
        return did_you_mean(name, options)

    def _first_misspelled(self, args: Sequence[str]) -> str | None:
        """`--adaptor (did you mean `--adapter`?)` for the first option of `args` that is not one of this parser's
        but is close to one (`None` if there is none), so that it is named even when argparse stops at a missing
        required option. A parser with subcommands leaves the subcommand's arguments to it."""
        if any(isinstance(action, argparse._SubParsersAction) for action in self._actions):
            return None
        known = [o for o in self._option_string_actions if o.startswith("--")]
        expects_value = False
        for arg in args:
            if arg == "--":
                break
            if expects_value or not arg.startswith("--"):
                expects_value = False
                continue
            name, sep, _ = arg.partition("=")
            action = self._option_string_actions.get(name)
            expects_value = not sep and action is not None and action.nargs is None
            if action is None and not (self.allow_abbrev and any(o.startswith(name) for o in known)):
                hint = self._hint(name, known, self)
                if hint:
                    return f"{name}{hint}"
        return None

    def canonical_spelling(self, args: Sequence[str]) -> list[str]:
        """`args` with every option written in the other spelling (`-` for `_` or `_` for `-`) rewritten to this
        parser's; values, positional arguments and everything after a bare `--` are left as they are.

        Args:
            args (`Sequence[str]`): the command-line arguments.
        """
        known = self._option_string_actions
        rewritten, options_ended, expects_value = [], False, False
        for arg in args:
            if arg == "--":
                options_ended = True
            if options_ended or expects_value or not arg.startswith("--") or len(arg) <= 2:
                rewritten.append(arg)
                expects_value = False
                continue
            name, sep, value = arg.partition("=")
            if name not in known:
                for other in ("--" + name[2:].replace("-", "_"), "--" + name[2:].replace("_", "-")):
                    if other in known:
                        name = other
                        break
            rewritten.append(name + sep + value)
            action = known.get(name)
            # an option that takes exactly one value: the next argument is that value, even if it starts with --
            expects_value = not sep and action is not None and action.nargs is None
        return rewritten


def did_you_mean(name: str, known: Sequence[str]) -> str:
    """` (did you mean `--num_shots`?)` naming the known names closest to a misspelled `name`, or `""`.

    `-` and `_` count as the same character, so `--num-shot` finds `--num_shots`.

    Args:
        name (`str`): the misspelled option or key, e.g. `"--num_shot"` or `"num_shot"`.
        known (`Sequence[str]`): the names it may have meant.

    Example:
        ```python
        >>> did_you_mean("--num_shot", ["--num_shots", "--seed"])
        ' (did you mean `--num_shots`?)'
        ```
    """
    import difflib

    by_normal = {}
    for option in known:
        by_normal.setdefault(option.replace("-", "_"), option)
    matches = difflib.get_close_matches(name.replace("-", "_"), list(by_normal), n=2, cutoff=0.75)
    if not matches:
        return ""
    return " (did you mean " + " or ".join(f"`{by_normal[match]}`" for match in matches) + "?)"


_PYTHON_VALUE = r"(True|False|None|'[^']*'|\"[^\"]*\"|\[[^\]]*\]|[-+\w./:~]+)?"


def command_line_message(message: str, flags: Mapping[str, str]) -> str:
    """An error message of the Python API rewritten in command-line terms: `name=value` becomes `--flag value`.

    `output_dir='outputs/smoke'` becomes `--output_dir outputs/smoke`, `overwrite_output_dir=True` becomes
    `--overwrite_output_dir`, and `base_model_name_or_path=` (followed by words) becomes `--base-model`. Names
    that are not in `flags` are left as they are.

    Args:
        message (`str`): the error message.
        flags (`Mapping[str, str]`): Python parameter name -> command-line flag, e.g.
            `{"base_model_name_or_path": "--base-model"}`.

    Example:
        ```python
        >>> command_line_message("pass overwrite_output_dir=True", {"overwrite_output_dir": "--overwrite_output_dir"})
        'pass --overwrite_output_dir'
        ```
    """

    def rewrite(flag: str, value: str | None) -> str:
        if value is None or value == "True":
            return flag
        if value in ("False", "None"):
            return f"no {flag}"
        if value[0] in "'\"":
            value = value[1:-1]
        elif value[0] == "[":
            value = " ".join(part.strip().strip("'\"") for part in value[1:-1].split(",")) or "..."
        return f"{flag} {value}"

    for name in sorted(flags, key=len, reverse=True):
        pattern = re.compile(rf"(?<![\w.]){re.escape(name)}={_PYTHON_VALUE}")
        message = pattern.sub(lambda match, flag=flags[name]: rewrite(flag, match.group(1)), message)
    return message


def one_line(message: Any) -> str:
    """`message` (an exception or text) on one line, whitespace collapsed and control characters escaped
    (`printable`)."""
    text = printable(" ".join(str(message).split()))
    return text or type(message).__name__


_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_NAMED_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def printable(text: str) -> str:
    """`text` with the characters that act on a terminal or on a line-based reader written as escapes: control
    characters (`\\x1b`, tab `\\t`, newline `\\n`, ...), line and paragraph separators and bidirectional controls
    (`\\u202e`). Everything else, non-ASCII letters included, is kept.

    Text from untrusted sources (an adapter's class names, paths read from a file) goes through it before it is
    printed, so that it cannot move the cursor, retitle the terminal or forge an extra output line.

    Args:
        text (`str`): the text to print.

    Example:
        ```python
        >>> printable("cat\\tforged.png\\x1b[2J")
        'cat\\\\tforged.png\\\\x1b[2J'
        ```
    """
    if text.isprintable():  # (fast path: no control, separator or bidirectional character, and no tab)
        return text
    return "".join(_escaped(char) for char in text)


def _escaped(char: str) -> str:
    import unicodedata

    if char not in _BIDI_CONTROLS and unicodedata.category(char) not in ("Cc", "Zl", "Zp"):
        return char
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number")
    return value


def build_parser() -> CommandParser:
    """The parser of `maple-peft` and its subcommands (options spelled like huggingface_hub's CLI: `--base-model`)."""
    parser = CommandParser(
        prog="maple-peft",
        description="Tools for MaPLe adapters. Options may also be written with underscores (--base_model).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    convert = commands.add_parser(
        "convert-official",
        help=f"Convert a checkpoint of the original {', '.join(name for name, _ in methods.checkpoint_sources())} "
        "code into a PEFT adapter folder.",
    )
    convert.add_argument("checkpoint", help="the model.pth.tar-N file written by the original code")
    convert.add_argument("--base-model", required=True, help="the CLIP it was trained on (Hub id or directory)")
    convert.add_argument("--output-dir", required=True, help="where to write the adapter")
    convert.add_argument("--prompt-init", default="a photo of a", help="the ctx_init it was trained with")
    convert.add_argument("--tokenizer", default=None, help="tokenizer for --prompt-init (defaults to --base-model)")
    convert.add_argument("--overwrite", action="store_true", help="write into a non-empty --output-dir")
    convert.add_argument("--class-names", nargs="+", help="the class names it was trained on (saved with the adapter)")
    convert.add_argument("--dataset", help="the dataset it was trained on (saved with the adapter)")
    convert.add_argument(
        "--template", help="a method without a learned context (MMRL): its class prompt template ('a photo of a {}.')"
    )
    for name, (field, owners) in methods.checkpoint_options().items():  # what the files do not hold
        kind, nargs = methods.flag_type(field)
        titles = ", ".join(method.title for method in owners)
        convert.add_argument(
            f"--{name.replace('_', '-')}",
            type=kind,
            nargs="+" if nargs else None,
            help=f"{titles}: {field.metadata['checkpoint_help']}",
        )

    predict = commands.add_parser(
        "predict",
        help="Classify images with a saved adapter (Hub id or folder).",
        description="Prints one line per image: the path, then the top-k labels and scores, tab-separated (or JSON "
        "lines with --json). Control characters in paths and class names (tab, newline, escape) are printed as "
        "\\t, \\n, \\x1b, so each image is one line; --json is exact. An unreadable image, or an image URL whose "
        "server does not answer within --timeout, gives one error line on stderr and the others are still classified; "
        "the exit code is 1 if any image failed, 2 if nothing could be classified, 0 otherwise.",
    )
    predict.add_argument("images", nargs="*", metavar="IMAGE", help="image files or http(s) URLs")
    predict.add_argument("--adapter", required=True, help="the adapter (Hub id or directory)")
    classes = predict.add_mutually_exclusive_group()
    classes.add_argument(
        "--classes",
        nargs="+",
        help="class names (default: those saved with the adapter); end the list with -- when IMAGE follows",
    )
    classes.add_argument(
        "--classes-file", help="a text file with one class name per line (UTF-8, or UTF-16 with its byte-order mark)"
    )
    predict.add_argument(
        "--allow-single-class",
        action="store_true",
        help="classify among one class (every image then gets it with score 1.0)",
    )
    predict.add_argument("--top-k", type=_positive_int, default=1, help="number of labels per image (default 1)")
    predict.add_argument("--json", action="store_true", help="print JSON lines: {'image', 'predictions'}")
    predict.add_argument("--base-model", default=None, help="the base CLIP (default: the one the adapter names)")
    predict.add_argument("--batch-size", type=_positive_int, default=32, help="images per batch (default 32)")
    predict.add_argument("--device", default=None, help="e.g. cuda, cuda:1, mps; default: CPU")
    predict.add_argument(
        "--timeout",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="the longest wait on an image URL's server, to connect and for each read (default: 10 s to connect, "
        "30 s to read); a server that does not answer in time is one error line for that image",
    )

    push = commands.add_parser("push", help="Upload a finished training run folder to the Hugging Face Hub.")
    push.add_argument("run_dir", help="the run folder written by examples/train.py")
    push.add_argument("--hub-model-id", required=True, help="the model repository, user/name")
    push.add_argument("--private", action="store_true", help="create the repository as private")

    listing = commands.add_parser(
        "methods",
        help="List the methods: their papers, how to train them and their recipes (examples/configs/*.yaml).",
        description="Prints each registered method (maple_peft/methods/): its title, paper, the train.py option that "
        "selects it, and its recipes, each with the original configuration its header says it reproduces.",
    )
    listing.add_argument(
        "--configs",
        default=None,
        metavar="DIR",
        help="the recipes' folder (default: examples/configs of the source checkout maple_peft runs from, else of "
        "the current folder)",
    )
    return parser


def check_predict_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses, with exit code 2, the `predict` mistakes argparse cannot see: images swallowed by --classes, a single
    class.

    Args:
        parser (`argparse.ArgumentParser`): the `maple-peft` parser (its `prog` starts the error line).
        args (`argparse.Namespace`): the parsed `predict` arguments.
    """
    prog = f"{parser.prog} predict"
    if not args.images:
        if args.classes:
            shown = " ".join(args.classes[:4]) + (" ..." if len(args.classes) > 4 else "")
            message = (
                f"no IMAGE given: --classes took every argument after it ({shown}); put --classes after the "
                "images, or end its list with --, e.g. --classes cat dog -- image.jpg"
            )
        else:
            message = "no IMAGE given; pass one or more image files or URLs"
        print(f"{prog}: error: {message}\nRun `{prog} --help` for the options.", file=sys.stderr)
        raise SystemExit(2)
    if args.classes is not None and len(args.classes) == 1 and not args.allow_single_class:
        print(f"{prog}: error: {single_class_message('--classes', args.classes[0])}", file=sys.stderr)
        raise SystemExit(2)


def single_class_message(source: str, name: str) -> str:
    """The refusal of a single class name (every image would get it with score 1.0).

    Args:
        source (`str`): where the name came from, e.g. `"--classes"` or `"--classes-file names.txt"`.
        name (`str`): the class name.
    """
    return (
        f"{source} gives one class name ({name!r}): every image would get it with score 1.0. Pass two or more "
        "class names; to read them from a file (one per line) use --classes-file FILE; to classify among one class "
        "anyway, add --allow-single-class."
    )
