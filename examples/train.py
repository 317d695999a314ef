#!/usr/bin/env python
"""Few-shot MaPLe training and evaluation with 🤗 Accelerate (CPU, one GPU, or many, unchanged).

    accelerate launch examples/train.py --config examples/configs/maple_base2novel.yaml \
        --dataset eurosat --data_root /path/to/coop_data --seed 1

Writes to --output_dir, at the end of the run: the adapter (adapter_model.safetensors, adapter_config.json), a model
card (README.md), metrics.json, training_history.json and plots; during the run: training_log.txt, checkpoints/
(adapter + optimizer state, for --resume_from_checkpoint), a RUNNING marker (FAILED if the run fails) and run.lock.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from peft import get_peft_model
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

import maple_peft
from maple_peft.training.checkpointing import (
    differing_options,
    last_good_checkpoint,
    next_checkpoint_number,
    read_trainer_state,
    register_adapter_checkpointing,
    remove_incomplete_checkpoints,
    resolve_checkpoint,
    write_trainer_state,
)
from maple_peft.training.data import CLIPTransforms, ImageClassificationDataset
from maple_peft.training.experiment import (
    EpochSeededDataset,
    evaluate_classifier,
    load_experiment_data,
    load_experiment_data_from_args,
)
from maple_peft.training.gpa import GaussianPromptAggregator
from maple_peft.training.metrics import build_run_metrics
from maple_peft.training.run_dir import (
    LOG_FILE,
    TRACKER_DIR,
    RunLock,
    apply_umask,
    atomic_write_json,
    check_output_dir,
    clear_previous_run,
    mark_failed,
    mark_finished,
    mark_running,
)
from maple_peft.training.schedule import build_scheduler

logger = logging.getLogger("maple_peft.train")
SETTINGS = ("base2novel", "all", "cross_dataset")
MAY_CHANGE_ON_RESUME = (
    "config", "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "stop_after_epoch", "report_to",
    "plots", "zero_shot_baseline", "push_to_hub", "hub_model_id", "hub_private", "num_workers", "eval_batch_size",
    "checkpointing_steps", "checkpoints_total_limit",
)  # fmt: skip
"""Output and logging options: a resumed run may change them; any other difference from the checkpoint is refused."""


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
    group.add_argument("--data_root", default=None, help="the folder holding the CoOp dataset folders")
    group.add_argument("--dataset_name", default=None, help="a 🤗 dataset id, or 'imagefolder' with --data_dir")
    group.add_argument("--data_dir", default=None)
    group.add_argument("--image_column", default="image")
    group.add_argument("--label_column", default="label")
    group.add_argument("--train_split", default="train")
    group.add_argument("--test_split", default="test")
    group.add_argument("--class_name_map", default=None, help="JSON dict or 'old new' lines cleaning class names")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    p.add_argument("--config", help="YAML file of defaults (keys are these options); the command line overrides it")
    g = p.add_argument_group("model")
    g.add_argument("--model_name_or_path", default="openai/clip-vit-base-patch16")
    g.add_argument("--tokenizer_name_or_path", default=None, help="defaults to --model_name_or_path")
    g.add_argument("--variant", default="maple", choices=["maple", "maple_shared", "ivlp", "language", "vision"])
    g.add_argument("--n_ctx", type=int, default=2)
    g.add_argument("--n_ctx_vision", type=int, default=None)
    g.add_argument("--depth", type=int, default=9)
    g.add_argument("--prompt_init", default="a photo of a", help="'none' for a random context")
    add_data_arguments(p)
    g = p.add_argument_group("protocol")
    g.add_argument("--setting", default="base2novel", choices=SETTINGS)
    g.add_argument("--eval_datasets", nargs="*", default=[], help="cross_dataset: benchmarks to evaluate on")
    g.add_argument("--num_shots", type=int, default=16)
    g.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1), help="data loading processes")
    g = p.add_argument_group("optimization")
    g.add_argument("--seed", type=int, default=1)
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
    g = p.add_argument_group("self-regulating prompts (PromptSRC; 0 / unset: off)")
    g.add_argument("--text_weight", type=float, default=0.0, help="L1 to frozen CLIP's text features (PromptSRC: 25)")
    g.add_argument("--image_weight", type=float, default=0.0, help="L1 to frozen CLIP's image features (10)")
    g.add_argument("--logits_weight", type=float, default=0.0, help="KL to frozen CLIP's logits (1)")
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
    for key, value in values.items():
        action = actions.get(key)
        if action is None:
            parser.error(f"--config {path}: unknown key {key!r}; the keys are this script's options")
        if value is None:
            continue
        if isinstance(action, BooleanFlag):
            ok, wanted = isinstance(value, bool), "true or false"
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.config:
        parser.set_defaults(**yaml_defaults(parser, first.config))
    args = parser.parse_args(argv)
    if args.prompt_init is not None and str(args.prompt_init).lower() == "none":
        args.prompt_init = None
    for name in ("num_shots", "epochs", "batch_size", "eval_batch_size", "gradient_accumulation_steps", "seed"):
        if getattr(args, name) < (0 if name == "seed" else 1):
            parser.error(f"--{name} {getattr(args, name)} is too small; use a positive number")
    for name in ("num_workers", "warmup_epochs", "text_batch_size", "checkpoints_total_limit"):
        if getattr(args, name) < (1 if name in ("text_batch_size", "checkpoints_total_limit") else 0):
            parser.error(f"--{name} {getattr(args, name)} is out of range")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        parser.error(f"--lr {args.lr} must be a positive number")
    if args.setting == "cross_dataset" and not args.eval_datasets:
        parser.error("--setting cross_dataset needs --eval_datasets (e.g. dtd eurosat ucf101)")
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


class TqdmHandler(logging.StreamHandler):
    """Console log lines written above the progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stdout)


def setup_logging(accelerator: Accelerator, output_dir: Path) -> None:
    handlers: list[logging.Handler] = [TqdmHandler()]
    if accelerator.is_main_process:
        handlers.append(logging.FileHandler(output_dir / LOG_FILE, encoding="utf-8"))
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO, handlers=handlers, force=True
    )
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # its per-file checkpoint lines
    if not accelerator.is_main_process:
        logger.setLevel(logging.ERROR)


def eval_splits(args: argparse.Namespace, data: Any) -> dict[str, tuple[Any, list[str], str]]:
    """name -> (test records, class names, zero-shot template) for every evaluated split or target dataset."""
    if args.setting == "base2novel":
        splits = {subset: data.test.class_subset(subset) for subset in ("base", "novel")}
        return {name: (records, list(records.class_names), data.template) for name, records in splits.items()}
    splits = {data.name: (data.test, data.class_names, data.template)}
    for target in args.eval_datasets:
        other = load_experiment_data(dataset=target, data_root=args.data_root)
        splits[other.name] = (other.test, other.class_names, other.template)
    return splits


def evaluate_all(accelerator, model, tokenizer, splits, transforms, args, *, zero_shot: bool) -> dict[str, dict]:
    """Accuracy on every split: the adapter's prompts, or zero-shot CLIP with the dataset's template."""
    results = {}
    for name, (records, class_names, template) in splits.items():
        dataset = ImageClassificationDataset(records, transforms.test())
        loader = DataLoader(dataset, batch_size=args.eval_batch_size, num_workers=args.num_workers)
        classifier = maple_peft.PromptClassifier(
            model,
            tokenizer,
            class_names,
            template=template if zero_shot else None,
            text_batch_size=args.text_batch_size,
        )
        label = f"{'zero-shot ' if zero_shot else ''}{name}"
        results[name] = evaluate_classifier(
            accelerator, classifier, accelerator.prepare(loader), class_names, desc=label
        )
        results[name]["num_skipped_images"] = dataset.num_skipped
        logger.info(f"{label}: accuracy {results[name]['accuracy']:.2f}%")
    return results


def write_plots(output_dir: Path, metrics: dict, history: list[dict]) -> list[str]:
    """The PNG plots of the run; returns the names written (none when matplotlib is missing or plotting fails)."""
    try:
        from maple_peft.training.plots import write_run_plots

        return write_run_plots(output_dir, metrics, history=history)
    except Exception as error:  # plots are a convenience: the run's results are written anyway
        logger.warning(f"Plots skipped: {type(error).__name__}: {error}")
        return []


def non_finite_error(what: str, output_dir: Path) -> RuntimeError:
    """The error that stops a diverged run, naming its newest checkpoint whose weights are all finite."""
    good = last_good_checkpoint(output_dir)
    where = f"the last good state is {good}" if good else "no checkpoint with finite weights was written yet"
    return RuntimeError(f"Stopping: {what}; {where}. Try a lower --lr, --mixed_precision no, or check the data.")


def save_checkpoint(accelerator: Accelerator, params: list, output_dir: Path, trainer_state: dict) -> None:
    """`accelerator.save_state()` (adapter, optimizer, scheduler, RNG), then `trainer_state.json`, which marks the
    checkpoint complete. A diverged adapter is never saved as a checkpoint."""
    if not all(torch.isfinite(p).all() for p in params):
        raise non_finite_error(f"the adapter weights became non-finite by step {trainer_state['step']}", output_dir)
    path = accelerator.save_state()
    if accelerator.is_main_process:
        write_trainer_state(path, trainer_state)
        logger.info(f"Saved {path} (epoch {trainer_state['epoch']}, step {trainer_state['step']})")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    started = time.time()
    # Options as recorded in checkpoints and metrics (a JSON round trip, so they compare equal after resuming).
    options = json.loads(json.dumps(vars(args)))

    # ---- everything is checked before anything is created: folder, checkpoint, data, model -------------------------
    checkpoint, resume_state = None, None
    if args.resume_from_checkpoint is not None:
        checkpoint = resolve_checkpoint(args.resume_from_checkpoint, output_dir)
    # a run resumed from another folder's checkpoint starts this folder afresh (its checkpoints are not kept)
    resume_here = checkpoint is not None and checkpoint.resolve().parent == (output_dir / "checkpoints").resolve()
    check_output_dir(output_dir, overwrite=args.overwrite_output_dir, resume=resume_here)
    if checkpoint is not None:
        resume_state = read_trainer_state(checkpoint)
        changed = differing_options(resume_state["options"], options, MAY_CHANGE_ON_RESUME)
        if changed:
            raise ValueError(
                f"The checkpoint {checkpoint} was written by a run with other options; resuming would mix two "
                f"runs: {'; '.join(changed)}. Resume with the same options, or start a new run."
            )
    data = load_experiment_data_from_args(args)
    splits = eval_splits(args, data)
    train_records = data.train.few_shot(args.num_shots, seed=args.seed)
    if args.setting == "base2novel":
        train_records = train_records.class_subset("base")
    if len(train_records) < args.batch_size:
        raise ValueError(
            f"{len(train_records)} training images but batch_size={args.batch_size}: the last incomplete batch is "
            "dropped, so no step would run; lower batch_size."
        )
    tokenizer_path = args.tokenizer_name_or_path or args.model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    set_seed(args.seed)  # the prompts' random initialization
    try:
        image_processor = AutoImageProcessor.from_pretrained(args.model_name_or_path)
    except (OSError, ValueError):
        image_processor = None
    transforms = CLIPTransforms.from_processor(image_processor)
    train_names = list(train_records.class_names)
    peft_config = maple_peft.MaPLeConfig(
        n_ctx=args.n_ctx,
        n_ctx_vision=args.n_ctx_vision,
        depth=args.depth,
        prompt_init=args.prompt_init,
        variant=args.variant,
        tokenizer_name_or_path=tokenizer_path,
        class_names=train_names,  # saved with the adapter: PromptClassifier.from_pretrained classifies among them
    )
    model = get_peft_model(CLIPModel.from_pretrained(args.model_name_or_path), peft_config)
    for _, class_names, template in splits.values():  # the evaluated class names fit CLIP's context too
        for zero_shot_template in (None, template):
            maple_peft.PromptClassifier(model, tokenizer, class_names, template=zero_shot_template).input_ids()
    classifier = maple_peft.PromptClassifier(
        model,
        tokenizer,
        train_names,
        text_batch_size=args.text_batch_size,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    # the training loss: cross-entropy, plus PromptSRC's self-regulating terms when their weights are > 0
    loss_fn = maple_peft.SelfRegularizedLoss(
        classifier, text_weight=args.text_weight, image_weight=args.image_weight, logits_weight=args.logits_weight
    )
    aggregator = None
    if args.gpa_mean is not None:
        aggregator = GaussianPromptAggregator(mean=args.gpa_mean, std=args.gpa_std, num_epochs=args.epochs)

    # ---- the run folder: locked, previous run cleared, marked RUNNING until the results are written -----------------
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=args.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir),
            automatic_checkpoint_naming=True,
            total_limit=args.checkpoints_total_limit,
        ),
    )
    lock = RunLock(output_dir)
    if accelerator.is_main_process:
        lock.acquire()
        try:  # again under the lock: another run may have finished in the folder since the first check
            check_output_dir(output_dir, overwrite=args.overwrite_output_dir, resume=resume_here)
        except ValueError:
            lock.release()
            raise
        clear_previous_run(output_dir, keep_checkpoints=resume_here)
        remove_incomplete_checkpoints(output_dir)
        mark_running(output_dir)
    accelerator.wait_for_everyone()
    setup_logging(accelerator, output_dir)
    try:
        logger.info(
            f"{accelerator.num_processes} process(es) on {accelerator.device}, mixed precision {args.mixed_precision}"
        )
        logger.info(f"{data.name}: {len(data.class_names)} classes; evaluating on {list(splits)}")
        trainable, total = model.get_nb_trainable_parameters()
        logger.info(
            f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
        )

        # ---- training data, optimizer, schedule ------------------------------------------------------------------
        train_set = EpochSeededDataset(
            ImageClassificationDataset(train_records, transforms.train(), cache_decoded=True), seed=args.seed
        )
        loader_generator = torch.Generator()
        train_loader = DataLoader(
            train_set,
            batch_size=args.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=args.num_workers,
            generator=loader_generator,
        )
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
        # the loss module holds the classifier: preparing it puts the whole step under DDP and autocast
        loss_fn, optimizer, train_loader = accelerator.prepare(loss_fn, optimizer, train_loader)
        steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
        # stepped once per optimizer step, not prepared (the schedule is per epoch, whatever the process count)
        scheduler = build_scheduler(optimizer, args.epochs, args.warmup_epochs, args.warmup_lr, steps_per_epoch)
        accelerator.register_for_checkpointing(scheduler)
        if aggregator is not None:  # the running sum of Gaussian prompt aggregation
            accelerator.register_for_checkpointing(aggregator)
        register_adapter_checkpointing(accelerator, model)

        # ---- resume ------------------------------------------------------------------------------------------------
        start_epoch, skip_batches, global_step, history = 0, 0, 0, []
        if resume_state is not None:
            accelerator.load_state(str(checkpoint))
            global_step, history = resume_state["step"], resume_state["history"]
            start_epoch, skip_batches = resume_state["epoch"] - 1, resume_state["batches_in_epoch"]
            if skip_batches >= len(train_loader):
                start_epoch, skip_batches = start_epoch + 1, 0
            logger.info(f"Resumed from {checkpoint} (epoch {resume_state['epoch']}, step {global_step})")
        accelerator.project_configuration.iteration = next_checkpoint_number(output_dir)

        # ---- the training loop ---------------------------------------------------------------------------------------
        if args.report_to:
            accelerator.init_trackers(
                TRACKER_DIR, config={k: v for k, v in options.items() if not isinstance(v, list)}
            )
        progress = tqdm(
            total=steps_per_epoch * args.epochs, initial=global_step, disable=not accelerator.is_local_main_process
        )
        for epoch in range(start_epoch, args.epochs):
            set_seed(args.seed + epoch)  # the epoch's shuffling and augmentations do not depend on resuming
            loader_generator.manual_seed(args.seed + epoch)
            loss_fn.train()
            batches = train_loader
            if epoch == start_epoch and skip_batches:
                batches = accelerator.skip_first_batches(train_loader, skip_batches)
            batches.set_epoch(epoch)  # also the epoch of the per-image augmentation seeds (EpochSeededDataset)
            for batch_index, batch in enumerate(batches, start=skip_batches if epoch == start_epoch else 0):
                with accelerator.accumulate(loss_fn):
                    out = loss_fn(batch["pixel_values"], batch["labels"])
                    loss = out.loss
                    all_losses = accelerator.gather(loss.detach()[None])
                    if not torch.isfinite(all_losses).all():
                        where = f"epoch {epoch + 1}, step {global_step + 1}"
                        raise non_finite_error(f"the loss became {all_losses.tolist()} at {where}", output_dir)
                    accelerator.backward(loss)
                    optimizer.step()
                    optimizer.zero_grad()
                if not accelerator.sync_gradients:
                    continue
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                global_step += 1
                record = {"step": global_step, "epoch": epoch + 1, "loss": all_losses.mean().item(), "lr": lr}
                if len(out.terms) > 1:  # the self-regulating terms, unweighted (this process's batch)
                    record.update({f"loss_{name}": value.item() for name, value in out.terms.items()})
                history.append(record)
                accelerator.log(
                    {f"train/{k}": v for k, v in record.items() if k.startswith(("loss", "lr"))}, step=global_step
                )
                progress.update(1)
                progress.set_postfix(loss=f"{history[-1]['loss']:.4f}", lr=f"{lr:.2e}")
                state = {"epoch": epoch + 1, "batches_in_epoch": batch_index + 1, "step": global_step}
                step_checkpoint = args.checkpointing_steps != "epoch" and global_step % args.checkpointing_steps == 0
                if step_checkpoint and batch_index + 1 < len(train_loader):  # an epoch's last step: saved below
                    save_checkpoint(accelerator, params, output_dir, {**state, "history": history, "options": options})
            logger.info(f"epoch {epoch + 1}/{args.epochs}: loss {history[-1]['loss']:.4f}, lr {history[-1]['lr']:.2e}")
            if aggregator is not None:
                aggregator.update(model, epoch + 1)
                history[-1]["gpa_weight"] = aggregator.history()[-1]["weight"]
            if args.checkpointing_steps == "epoch" or step_checkpoint:  # after the epoch's aggregation step
                save_checkpoint(accelerator, params, output_dir, {**state, "history": history, "options": options})
            if args.stop_after_epoch == epoch + 1 and epoch + 1 < args.epochs:
                logger.info(
                    f"Stopping after epoch {epoch + 1} as asked; continue with --resume_from_checkpoint latest"
                )
                accelerator.end_training()
                return {}
        progress.close()

        if aggregator is not None:  # the adapter evaluated, saved and described is the Gaussian-weighted average
            aggregator.apply(model)
            logger.info(f"Gaussian prompt aggregation: {aggregator.history()}")

        # ---- evaluation: the adapter, and zero-shot CLIP as the baseline row ----------------------------------------
        model.eval()
        results = evaluate_all(accelerator, model, tokenizer, splits, transforms, args, zero_shot=False)
        zero_shot = None
        if args.zero_shot_baseline:
            with model.disable_adapter():
                zero_shot = evaluate_all(accelerator, model, tokenizer, splits, transforms, args, zero_shot=True)
        accelerator.log({f"eval/{name}_accuracy": r["accuracy"] for name, r in results.items()}, step=global_step)
        metrics = build_run_metrics(
            base_model=args.model_name_or_path,
            dataset=data.name,
            setting=args.setting,
            seed=args.seed,
            num_shots=args.num_shots,
            results=results,
            train_config=options,
            peft_config=model.peft_config["default"].to_dict(),
            time_seconds=round(time.time() - started, 2),
            zero_shot_results=zero_shot,
        )
        if "harmonic_mean" in metrics:
            logger.info(f"HM {metrics['harmonic_mean']:.2f}")

        # ---- the results, written last -----------------------------------------------------------------------------
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            from maple_peft.training.card import write_model_card

            model.save_pretrained(output_dir)
            apply_umask(output_dir / "adapter_model.safetensors")
            atomic_write_json(output_dir / "training_history.json", history)
            atomic_write_json(output_dir / "metrics.json", metrics)
            images = write_plots(output_dir, metrics, history) if args.plots else []
            write_model_card(output_dir, repo_id=args.hub_model_id, images=images)
            mark_finished(output_dir)
            logger.info(f"Wrote {output_dir}")
        accelerator.end_training()
    except BaseException as error:
        logger.error(
            f"The run failed: {type(error).__name__}: {error}", exc_info=not isinstance(error, KeyboardInterrupt)
        )
        if accelerator.is_main_process:
            mark_failed(output_dir, error)
        raise
    finally:
        lock.release()

    if args.push_to_hub and accelerator.is_main_process:
        from maple_peft.cli import push_run

        try:
            logger.info(f"Pushed to {push_run(output_dir, args.hub_model_id, private=args.hub_private)}")
        except Exception as error:
            logger.error(
                f"Pushing to the Hub failed ({type(error).__name__}: {error}). The run is saved in {output_dir}; push "
                f"it later with: maple-peft push {output_dir} --hub_model_id {args.hub_model_id}"
            )
            sys.exit(1)
    return metrics


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, RuntimeError) as error:  # the log file (if any) holds the traceback
        sys.exit(f"error: {error}")
