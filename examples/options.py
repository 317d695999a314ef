"""The command-line options of the example scripts: declared once, read from the command line or a YAML file.

A YAML file's keys are the options' names, and its values are checked like command-line values (types, choices), so
a bad recipe fails before any work. Boolean options have a `--no_` form that turns a YAML `true` off. Options are
spelled like transformers' examples (`--output_dir`); `--output-dir` works too. An option error is one line.

This module imports no torch or transformers: the scripts parse their options before those slow imports, so that
`--help` and option errors come back at once.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any

import yaml

from maple_peft import methods
from maple_peft.command_line import CommandParser, command_line_message, did_you_mean, one_line

SETTINGS = ("base2novel", "all", "cross_dataset")
VARIANTS = tuple(methods.variants())
OBJECTIVES = methods.objective_names()

PACKAGED_BUILDERS = ("imagefolder", "audiofolder", "csv", "json", "parquet", "arrow", "text", "webdataset")
"""`--dataset_name` values that name a `datasets` builder for local files, not a Hub dataset."""

MAY_CHANGE_ON_RESUME = (
    "config", "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "stop_after_epoch", "report_to",
    "plots", "zero_shot_baseline", "push_to_hub", "hub_model_id", "hub_private", "num_workers", "eval_batch_size",
    "checkpointing_steps", "checkpoints_total_limit",
)  # fmt: skip
"""Output and logging options: a resumed run may change them; any other difference from the checkpoint is refused."""


FOREIGN_OPTIONS = {
    "--device": "Accelerate chooses the device. `python SCRIPT` runs on one GPU if there is one, else on the CPU; "
    "`accelerate launch --multi_gpu --num_processes N SCRIPT` on N GPUs; `accelerate launch --cpu SCRIPT` on the CPU; "
    "CUDA_VISIBLE_DEVICES=0,1 chooses which GPUs",
}
"""Options users try that the scripts do not have -> what to do instead (`CommandParser.foreign_options`)."""


def script_parser(script: str, description: str | None = None) -> CommandParser:
    """The parser of the example script `script` (`"train.py"`): its help text as written, no abbreviated options,
    advice for the options it does not have."""
    parser = CommandParser(
        prog=script, description=description, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.foreign_options = {
        name: advice.replace("SCRIPT", f"examples/{script}") for name, advice in FOREIGN_OPTIONS.items()
    }
    return parser


class BooleanFlag(argparse.BooleanOptionalAction):
    """`--name` / `--no_name`, so that a `true` from a YAML file can be turned off on the command line."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.option_strings = [s.replace("--no-", "--no_", 1) for s in self.option_strings]

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        setattr(namespace, self.dest, not option_string.startswith("--no_"))


def positive_int_or_epoch(value: str) -> str | int:
    if value == "epoch":
        return value
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is neither 'epoch' nor a positive number of steps")
    return int(value)


def is_float_text(value: Any) -> bool:
    try:
        return isinstance(value, str) and math.isfinite(float(value))
    except ValueError:
        return False


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `load_experiment_data`, shared with evaluate.py."""
    group = parser.add_argument_group("data")
    group.add_argument("--dataset", default=None, help="a CoOp benchmark (eurosat, imagenet, ...), with --data_root")
    group.add_argument(
        "--data_root",
        default=None,
        help="the folder holding the CoOp dataset folders, or hub (the same from the Hub: hub, hub@REVISION, "
        "hf://OWNER/REPO[@REVISION])",
    )
    group.add_argument(
        "--dataset_name",
        default=None,
        help="a 🤗 dataset id (e.g. timm/eurosat-rgb), or 'imagefolder' with --data_dir",
    )
    group.add_argument("--data_dir", default=None)
    group.add_argument("--image_column", default="image")
    group.add_argument("--label_column", default="label")
    group.add_argument("--train_split", default="train")
    group.add_argument("--test_split", default="test")
    group.add_argument("--class_name_map", default=None, help="JSON dict or 'old new' lines cleaning class names")
    group.add_argument(
        "--dataset_registry",
        default=None,
        help="YAML file of Hub datasets (names, template, split) beside the built-in",
    )


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The options of `examples/train.py` (`description`: the script's help text)."""
    p = script_parser("train.py", description)
    p.add_argument("--config", help="YAML file of defaults (keys are these options); the command line overrides it")
    g = p.add_argument_group("model")
    g.add_argument("--model_name_or_path", default="openai/clip-vit-base-patch16")
    g.add_argument("--tokenizer_name_or_path", default=None, help="defaults to --model_name_or_path")
    g.add_argument("--variant", default="maple", choices=VARIANTS)
    g.add_argument("--n_ctx", type=int, default=2)
    g.add_argument("--n_ctx_vision", type=int, default=None)
    g.add_argument(
        "--depth",
        type=int,
        default=None,
        help="prompt depth of the methods that learn prompts (default: the method's, 9 for most)",
    )
    g.add_argument("--prompt_init", default="a photo of a", help="'none' for a random context")
    g.add_argument(
        "--vision_pool_prompts",
        action=BooleanFlag,
        default=False,
        help="SigLIP / SigLIP 2: let the attention-pooling head see the vision prompts (default: removed before it)",
    )
    add_method_arguments(p, "options", "adapter options of the methods (unset: the method's default)")
    add_data_arguments(p)
    g = p.add_argument_group("protocol")
    g.add_argument("--setting", default="base2novel", choices=SETTINGS)
    g.add_argument("--eval_datasets", nargs="*", default=[], help="cross_dataset: benchmarks to evaluate on")
    g.add_argument("--num_shots", type=int, default=16)
    g.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1), help="data loading processes")
    g = p.add_argument_group("optimization")
    g.add_argument("--seed", type=int, default=1)
    g.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"], help="sgd (MaPLe, CoOp...) or adamw (MMRL)")
    g.add_argument("--lr", type=float, default=0.0035)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--weight_decay", type=float, default=5e-4)
    g.add_argument("--epochs", type=int, default=5)
    g.add_argument("--warmup_epochs", type=int, default=1)
    g.add_argument("--warmup_lr", type=float, default=1e-5)
    g.add_argument("--batch_size", type=int, default=4)
    g.add_argument("--eval_batch_size", type=int, default=100)
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--mixed_precision", default="no", choices=["no", "bf16", "fp16"])
    g.add_argument("--text_batch_size", type=int, default=256, help="class prompts encoded at once")
    g.add_argument("--gradient_checkpointing", action=BooleanFlag, default=False, help="bounded text memory")
    g.add_argument(
        "--crop_scale",
        type=float,
        nargs=2,
        default=[0.08, 1.0],
        help="area range of the random resized crop (MMRL: 0.5 1)",
    )
    g = p.add_argument_group("objective (default: the variant's own, else the one whose weights are given, else ce)")
    g.add_argument("--objective", default=None, choices=OBJECTIVES, help=", ".join(OBJECTIVES))
    add_method_arguments(p, "objective_options", "options of the objectives (unset: the objective's default)")
    g.add_argument("--gpa_mean", type=float, default=None, help="Gaussian prompt aggregation: mean epoch (1-based)")
    g.add_argument("--gpa_std", type=float, default=None, help="Gaussian prompt aggregation: std in epochs")
    g = p.add_argument_group("run")
    g.add_argument("--output_dir", default=None, help="defaults to outputs/<dataset>/<recipe>/seed<seed>")
    g.add_argument("--overwrite_output_dir", action=BooleanFlag, default=False, help="replace the run in it")
    g.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    g.add_argument("--checkpointing_steps", type=positive_int_or_epoch, default="epoch", help="'epoch' or N steps")
    g.add_argument("--checkpoints_total_limit", type=int, default=2, help="checkpoints kept (the newest)")
    g.add_argument("--stop_after_epoch", type=int, default=None, help="end early after this epoch (1-based)")
    g.add_argument("--zero_shot_baseline", action=BooleanFlag, default=True, help="also evaluate zero-shot CLIP")
    g.add_argument("--report_to", default=None, help="an Accelerate tracker: tensorboard, wandb, ...")
    g.add_argument("--plots", action=BooleanFlag, default=True, help="write PNG plots (needs matplotlib)")
    g.add_argument("--push_to_hub", action=BooleanFlag, default=False, help="uses the token of `hf auth login`")
    g.add_argument("--hub_model_id", default=None)
    g.add_argument("--hub_private", action=BooleanFlag, default=False)
    return p


def add_method_arguments(parser: argparse.ArgumentParser, kind: str, title: str) -> None:
    """One flag per option the methods declare (`kind`: `"options"` of adapters or `"objective_options"`), with the
    declaration's type and help; unset (`None`) gives the method's default.

    Args:
        parser (`argparse.ArgumentParser`): the script's parser.
        kind (`str`): which declarations.
        title (`str`): the title of their group in `--help`.
    """
    group = parser.add_argument_group(title)
    for name, (field, _) in methods.option_fields(kind).items():
        kind_type, nargs = methods.flag_type(field)
        shown = field.metadata.get("shown_default", methods.field_default(field))
        default_text = f" ({shown})" if shown is not None else ""
        group.add_argument(
            f"--{name}", type=kind_type, nargs=nargs, default=None, help=field.metadata.get("help", "") + default_text
        )


def yaml_defaults(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    """The YAML file's values, checked like command-line values: known keys, types and choices."""
    try:
        with open(path, encoding="utf-8") as handle:
            values = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as error:
        parser.error(f"--config {path}: cannot read it ({error})")
    values = {} if values is None else values
    if not isinstance(values, dict):
        parser.error(f"--config {path} holds a {type(values).__name__}; it must map option names to values")
    actions = {action.dest: action for action in parser._actions if action.dest not in ("help", "config")}
    overrides = values.pop(DATASET_OVERRIDES, None)
    if overrides is not None:
        if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
            parser.error(
                f"--config {path}: {DATASET_OVERRIDES} must map dataset names to options, e.g. "
                "{eurosat: {reg_weight: 0.01}}"
            )
        values[DATASET_OVERRIDES] = {
            str(name): _checked_values(parser, f"{path} ({DATASET_OVERRIDES}: {name})", dict(options), actions)
            for name, options in overrides.items()
        }
    targets = values.pop(EVAL_OVERRIDES, None)
    if targets is not None:
        test_time = sorted(
            name for name, (field, _) in methods.option_fields().items() if field.metadata.get("test_time")
        )
        if not isinstance(targets, dict) or not all(isinstance(v, dict) for v in targets.values()):
            parser.error(
                f"--config {path}: {EVAL_OVERRIDES} must map dataset names to test-time options, e.g. "
                "{eurosat: {beta: 0.3}}"
            )
        for name, options in targets.items():
            for key in options:
                if key not in test_time:
                    parser.error(
                        f"--config {path} ({EVAL_OVERRIDES}: {name}): {key} does not act at test time; the options "
                        f"that do are {test_time}"
                    )
        values[EVAL_OVERRIDES] = {
            str(name): _checked_values(parser, f"{path} ({EVAL_OVERRIDES}: {name})", dict(options), actions)
            for name, options in targets.items()
        }
    special = (DATASET_OVERRIDES, EVAL_OVERRIDES)
    checked = _checked_values(parser, path, {k: v for k, v in values.items() if k not in special}, actions)
    return {**values, **checked}


def _checked_values(
    parser: argparse.ArgumentParser, path: str, values: dict[str, Any], actions: dict[str, argparse.Action]
) -> dict[str, Any]:
    """YAML values checked like command-line values: known keys, types and choices."""
    for key, value in values.items():
        action = actions.get(key)
        if action is None:
            hint = did_you_mean(key, [name for name in actions if not name.startswith("no_")])
            parser.error(f"--config {path}: unknown key {key!r}{hint}; the keys are this script's options")
        if value is None and key == "prompt_init":  # null: a random context, like --prompt_init none
            values[key] = "none"
            continue
        if value is None and action.default is None:  # null: the option's own "not set"
            continue
        if isinstance(action, BooleanFlag):
            ok, wanted = isinstance(value, bool), "true or false"
        elif action.nargs == "*" and action.type is int:
            ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            wanted = "a list of whole numbers"
        elif action.nargs == 2 and action.type is float:
            ok = isinstance(value, list) and len(value) == 2
            ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
            wanted = "a list of two numbers"
        elif action.nargs == "*":
            ok, wanted = isinstance(value, list) and all(isinstance(v, str) for v in value), "a list of names"
        elif action.type is int:
            ok, wanted = isinstance(value, int) and not isinstance(value, bool), "a whole number"
        elif action.type is float:  # YAML 1.1 reads 1e-5 (no dot) as text: accept text that is a number
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) or is_float_text(value)
            value, wanted = float(value) if ok else value, "a number"
        elif action.type is positive_int_or_epoch:
            ok = value == "epoch" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
            wanted = "'epoch' or a positive number of steps"
        else:
            ok, wanted = isinstance(value, str), "text"
        if not ok:
            parser.error(f"--config {path}: {key}: {value!r} is a {type(value).__name__}; write {wanted}")
        if action.choices is not None and value not in action.choices:
            parser.error(f"--config {path}: {key}: {value!r} is not one of {list(action.choices)}")
        values[key] = value
    return values


DATASET_OVERRIDES = "dataset_overrides"
"""A recipe's key mapping dataset names to options of their own (as the original code bases' per-dataset configs):
they apply after the recipe and before the command line."""

EVAL_OVERRIDES = "eval_dataset_overrides"
"""A recipe's key mapping the datasets a run is evaluated on to values of the adapter's test-time options (MMRL++'s
`beta`), used while evaluating on that dataset (`maple_peft.test_time_options`), as the original code evaluates each
cross-dataset target with a value of its own; recorded as the run's option of that name."""


def option_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's name in Python (`output_dir`) -> its command-line flag (`--output_dir`), for error messages.

    Args:
        parser (`argparse.ArgumentParser`): the script's parser.
    """
    return {action.dest: action.option_strings[0] for action in parser._actions if action.option_strings}


def command_line_error(error: BaseException | str, parser: argparse.ArgumentParser) -> str:
    """An error of the Python API as the script's user should read it: one line (control characters of the paths and
    class names it quotes escaped), in terms of its options.

    Args:
        error (`BaseException` or `str`): the error.
        parser (`argparse.ArgumentParser`): the script's parser (its options name the Python arguments).
    """
    return command_line_message(one_line(error), option_flags(parser))


def _one_data_source(first: argparse.Namespace, values: dict[str, Any]) -> None:
    """The command line's data source replaces the recipe's: `--dataset_name` drops the YAML's `dataset`, and
    `--dataset` drops its `dataset_name` / `data_dir` (a recipe names one source; the user may point at another)."""
    if first.dataset_name is not None and first.dataset is None:
        values.pop("dataset", None)
    if first.dataset is not None and first.dataset_name is None:
        values.pop("dataset_name", None)
        values.pop("data_dir", None)


def objective_of(args: argparse.Namespace) -> str:
    """The objective a run trains with: `--objective`, else the variant's own objective (MMRL's for variant mmrl),
    else an objective one of whose options is given (PromptSRC's weights; all of them 0 is plain cross-entropy),
    `ce` otherwise."""
    if args.objective:
        return args.objective
    default = methods.get(args.variant).default_objective
    if default != "ce":
        return default
    for name, method in methods.objectives().items():
        weights = [f.name for f in methods.fields_of(method.objective_options) if "off" in f.metadata]
        if any(getattr(args, weight) is not None for weight in weights):
            return name
    return "ce"


def _check_method_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Options of another objective or variant are refused rather than silently ignored."""
    objective = objective_of(args)
    for name, (_, owners) in methods.option_fields("objective_options").items():
        if getattr(args, name) is not None and objective not in {m.objective for m in owners}:
            other = owners[0].objective
            parser.error(
                f"--{name} is an option of --objective {other}, but this run trains with --objective "
                f"{objective}; drop it or pass --objective {other}"
            )
    variant = methods.get(args.variant)
    owner = next((m for m in methods.variants().values() if m.objective == objective), None)
    needs = variant.default_objective if variant.default_objective != "ce" else None
    if (needs and objective != needs) or (owner is not None and objective != variant.default_objective):
        owner = owner or methods.objectives()[needs]
        parser.error(
            f"--objective {objective} with --variant {args.variant}: {owner.title}'s loss trains {owner.title}'s "
            f"adapter; use --variant {owner.name} with --objective {owner.objective} (its default), or another "
            "objective"
        )
    for name, (_, owners) in methods.option_fields("options").items():
        if getattr(args, name) is not None and args.variant not in {m.name for m in owners}:
            parser.error(f"--{name} is an option of --variant {owners[0].name}, not of --variant {args.variant}")
    low, high = args.crop_scale
    if not 0 < low <= high <= 1:
        parser.error(f"--crop_scale {low} {high} must be 0 < min <= max <= 1, e.g. 0.08 1.0")


def _benchmark_name(name: str) -> str:
    """The name a recipe's `dataset_overrides` give a CoOp benchmark named by an alias or in another case (`cars`,
    `EuroSAT`); `name` itself when it names none (the data loader refuses it later). It imports the data module (and
    torch), so it is asked only when a recipe's per-dataset values are at stake."""
    from maple_peft.training.data import get_benchmark

    try:
        return get_benchmark(name).name
    except ValueError:
        return name


def parse_args(argv: list[str] | None = None, *, description: str | None = None) -> argparse.Namespace:
    """The options of `examples/train.py`, from `argv` (default: the command line) and the `--config` YAML file."""
    parser = build_parser(description)
    first, _ = parser.parse_known_args(argv)
    targets = None  # the recipe's eval_dataset_overrides
    if first.config:
        values = yaml_defaults(parser, first.config)
        overrides = values.pop(DATASET_OVERRIDES, None) or {}
        targets = values.pop(EVAL_OVERRIDES, None)
        _one_data_source(first, values)
        parser.set_defaults(**values)
        dataset = first.dataset or first.dataset_name or values.get("dataset") or values.get("dataset_name")
        if overrides and dataset not in overrides and (first.dataset or values.get("dataset")) == dataset:
            dataset = _benchmark_name(dataset)  # a CoOp benchmark by an alias or in another case: cars, EuroSAT
        if dataset in overrides:  # the recipe's values for this dataset; the command line still wins
            parser.set_defaults(**overrides[dataset])
    args = parser.parse_args(argv)
    args.eval_dataset_overrides = targets
    for target, options in (args.eval_dataset_overrides or {}).items():
        for name in options:
            if args.variant not in {method.name for method in methods.owners(name)}:
                parser.error(
                    f"{EVAL_OVERRIDES}: {target}: {name} is an option of --variant "
                    f"{methods.owners(name)[0].name}, not of --variant {args.variant}"
                )
        # the values checked as the adapter's config will check them at evaluation, before any training
        method = methods.get(args.variant)
        values = {field.name: getattr(args, field.name) for field in methods.fields_of(method.options)}
        try:
            method.resolve(argparse.Namespace(depth=None, **{**values, **options}))
        except (TypeError, ValueError) as error:
            parser.error(f"{EVAL_OVERRIDES}: {target}: {error}")
    if args.dataset and args.dataset_name:
        parser.error(
            f"--dataset {args.dataset} (a CoOp benchmark) and --dataset_name {args.dataset_name} (a 🤗 dataset) are "
            "both set; pass one of them (given on the command line, it replaces the --config file's)"
        )
    if args.prompt_init is not None and str(args.prompt_init).lower() == "none":
        args.prompt_init = None
    for name in ("num_shots", "epochs", "batch_size", "eval_batch_size", "gradient_accumulation_steps", "seed"):
        if getattr(args, name) < (0 if name == "seed" else 1):
            parser.error(f"--{name} {getattr(args, name)} is too small; use a positive number")
    for name in ("num_workers", "warmup_epochs", "text_batch_size", "checkpoints_total_limit"):
        if getattr(args, name) < (1 if name in ("text_batch_size", "checkpoints_total_limit") else 0):
            parser.error(f"--{name} {getattr(args, name)} is out of range")
    if args.warmup_epochs >= args.epochs:
        parser.error(
            f"--warmup_epochs {args.warmup_epochs} leaves no epoch of the cosine schedule in --epochs {args.epochs}; "
            f"use --warmup_epochs {args.epochs - 1} or fewer"
        )
    if not (args.lr > 0 and math.isfinite(args.lr)):
        parser.error(f"--lr {args.lr} must be a positive number")
    if args.setting == "cross_dataset" and not args.eval_datasets:
        parser.error("--setting cross_dataset needs --eval_datasets (e.g. dtd eurosat ucf101)")
    _check_method_options(parser, args)
    args.objective = objective_of(args)  # recorded resolved, in checkpoints and metrics
    if (args.gpa_mean is None) != (args.gpa_std is None):
        parser.error("Gaussian prompt aggregation needs both --gpa_mean and --gpa_std (or neither)")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id user/name")
    if args.stop_after_epoch is not None and not 1 <= args.stop_after_epoch <= args.epochs:
        parser.error(f"--stop_after_epoch {args.stop_after_epoch} is not an epoch of 1..{args.epochs}")
    if args.report_to:
        from accelerate.tracking import get_available_trackers

        available = {str(tracker) for tracker in get_available_trackers()}
        for tracker in args.report_to.split(","):
            if tracker != "all" and tracker not in available:
                parser.error(
                    f"--report_to {tracker}: the {tracker} package is not installed; install it first "
                    f"(pip install {tracker}), or drop --report_to"
                )
    if args.output_dir is None:
        source = args.dataset or Path(str(args.dataset_name)).name
        recipe = Path(args.config).stem if args.config else args.variant
        args.output_dir = str(Path("outputs") / source / recipe / f"seed{args.seed}")
    return args
