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
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

# the command-line / YAML options; this imports neither torch nor transformers
from options import (
    MAY_CHANGE_ON_RESUME,
    PACKAGED_BUILDERS,
    build_parser,
    command_line_error,
    command_line_message,
    parse_args,
)

if __name__ == "__main__":  # --help and option errors answer at once, before the slow imports below
    ARGS = parse_args(description=__doc__)

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from huggingface_hub import constants
from peft import get_peft_model
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoTokenizer

import maple_peft
from maple_peft.adapter_card import method_name
from maple_peft.console import (
    disable_library_progress_bars,
    peft_deprecation_quieted,
    progress_bars_wanted,
    quiet_known_messages,
)
from maple_peft.hub import check_sources, check_writable_cache
from maple_peft.loading import load_base_model, load_image_processor
from maple_peft.numerics import flush_denormal
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
from maple_peft.training.data import (
    ImageClassificationDataset,
    get_benchmark,
    image_transforms,
    parse_hub_root,
    smoke_assets,
)
from maple_peft.training.experiment import (
    EpochSeededDataset,
    draw_experiment_training_images,
    evaluate_classifier,
    image_batch,
    load_experiment_data,
    load_experiment_data_from_args,
)
from maple_peft.training.gpa import GaussianPromptAggregator
from maple_peft.training.metrics import build_run_metrics
from maple_peft.training.run_dir import (
    LOG_FILE,
    TRACKER_DIR,
    RunLock,
    atomic_write_json,
    check_output_dir,
    clear_previous_run,
    mark_failed,
    mark_finished,
    mark_running,
    save_into_atomically,
)
from maple_peft.training.schedule import build_scheduler

logger = logging.getLogger("maple_peft.train")
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class RunFailed(Exception):
    """The run failed after it started: the console and the log have said why (the log with the traceback)."""


class ConsoleHandler(logging.StreamHandler):
    """Console log lines, written above the progress bar instead of through it, without tracebacks (one line per
    record: the traceback of an error goes to training_log.txt only); errors go to stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        saved = record.exc_info, record.exc_text
        record.exc_info = record.exc_text = None
        try:
            tqdm.write(self.format(record), file=sys.stderr if record.levelno >= logging.ERROR else sys.stdout)
        finally:
            record.exc_info, record.exc_text = saved


def setup_logging(accelerator: Accelerator, output_dir: Path) -> None:
    handlers: list[logging.Handler] = [ConsoleHandler()]
    if accelerator.is_main_process:
        handlers.append(logging.FileHandler(output_dir / LOG_FILE, encoding="utf-8"))
    logging.basicConfig(format=LOG_FORMAT, level=logging.INFO, handlers=handlers, force=True)
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # its per-file checkpoint lines
    if not accelerator.is_main_process:
        logger.setLevel(logging.ERROR)


def quiet_console(args: argparse.Namespace) -> None:
    """Third-party messages known to be harmless filtered at their source; progress bars on a terminal only."""
    quiet_known_messages()
    if not progress_bars_wanted():
        disable_library_progress_bars()
    if args.dataset_name in PACKAGED_BUILDERS:  # a local folder: no "Downloading data: 36/36 files" bars
        import datasets

        datasets.disable_progress_bars()


def check_sources_and_caches(args: argparse.Namespace) -> None:
    """The model and dataset exist locally or can be fetched, and the caches they go to can be written: one line
    now instead of a traceback after minutes of retries."""
    sources = {
        "--model_name_or_path": (args.model_name_or_path, "model"),
        "--tokenizer_name_or_path": (args.tokenizer_name_or_path, "model"),
    }
    if args.dataset_name and args.dataset_name not in PACKAGED_BUILDERS:
        sources["--dataset_name"] = (args.dataset_name, "dataset")
    elif args.dataset_name:  # a local folder of images (for a Hub dataset, --data_dir is a folder inside it)
        sources["--data_dir"] = (args.data_dir, "folder")
    lacking = []  # offline: the archives of a Hub data root not in the cache, named with the model
    hub_root = parse_hub_root(args.data_root) if args.dataset else None
    if hub_root is not None and constants.HF_HUB_OFFLINE:
        for name in dict.fromkeys([args.dataset, *args.eval_datasets]):
            if get_benchmark(name).name != "imagenet" and (why := hub_root.missing_offline(name)):
                lacking.append(f"--data_root {args.data_root} ({why})")
    check_sources(sources, offline_lacking=lacking)
    if args.dataset_name:  # datasets writes its Arrow cache even for a local folder
        import datasets

        check_writable_cache(datasets.config.HF_DATASETS_CACHE, "the datasets cache (HF_DATASETS_CACHE)")


def gpa_summary(aggregator: GaussianPromptAggregator) -> str:
    """The aggregation in one readable line: the epochs that carry 99% of the weight, with their weights."""
    weights = {entry["epoch"]: entry["weight"] for entry in aggregator.history()}
    kept, total = [], 0.0
    for epoch, weight in sorted(weights.items(), key=lambda item: -item[1]):
        if total >= 0.99 or len(kept) == 10:
            break
        kept.append(epoch)
        total += weight
    kept.sort()
    shown = ", ".join(f"{epoch}: {weights[epoch]:.3g}" for epoch in kept)
    return (
        f"Gaussian prompt aggregation (mean {aggregator.mean:g}, std {aggregator.std:g}): the adapter is the weighted "
        f"average of the {len(weights)} epochs' adapters; epochs {shown} carry {100 * total:.1f}% of the weight"
    )


def eval_splits(args: argparse.Namespace, data: Any) -> dict[str, tuple[Any, list[str], str, str]]:
    """name -> (test records, class names, zero-shot template, dataset) for every evaluated split or target dataset."""
    if args.setting == "base2novel":
        splits = {subset: data.test.class_subset(subset) for subset in ("base", "novel")}
        return {
            name: (records, list(records.class_names), data.template, data.name) for name, records in splits.items()
        }
    splits = {data.name: (data.test, data.class_names, data.template, data.name)}
    for target in args.eval_datasets:
        other = load_experiment_data(dataset=target, data_root=args.data_root)
        splits[other.name] = (other.test, other.class_names, other.template, other.name)
    return splits


def method_config(args: argparse.Namespace, data: Any) -> dict[str, Any]:
    """The MaPLeConfig options of the variant: the prompts' shape for methods that learn prompt tokens, the options
    the method declares, and the dataset's template for methods whose class prompts are a template (MMRL)."""
    method = maple_peft.methods.get(args.variant)
    config: dict[str, Any] = {}
    if method.text_prompts or method.vision_prompts:
        config.update(n_ctx=args.n_ctx, n_ctx_vision=args.n_ctx_vision, depth=args.depth)
    for option in maple_peft.methods.fields_of(method.options):
        if getattr(args, option.name) is not None:
            config[option.name] = getattr(args, option.name)
    if not (method.text_prompts or method.vision_prompts):
        config["template"] = data.template
    return config


def build_objective(args: argparse.Namespace, classifier: Any, data: Any) -> Any:
    """The training objective the recipe names (`--objective`), from the options it declares."""
    objective = maple_peft.OBJECTIVES[args.objective]
    options = {option.name: getattr(args, option.name) for option in objective.option_fields()}
    options = {name: value for name, value in options.items() if value is not None}
    for option in objective.option_fields():  # e.g. KgCoOp's frozen text: on the dataset's hand-written template
        if option.metadata.get("dataset_template") and option.name not in options:
            options[option.name] = data.template
    return objective.from_options(classifier, **options)


def build_optimizer(args: argparse.Namespace, params: list) -> torch.optim.Optimizer:
    """SGD with momentum (MaPLe, CoOp, CoCoOp, PromptSRC, KgCoOp) or AdamW (MMRL), with weight decay."""
    if args.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    return torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)


def evaluate_all(
    accelerator, model, tokenizer, splits, transforms, args, *, zero_shot: bool, method: str
) -> dict[str, dict]:
    """Accuracy on every split: the adapter's prompts (`method`), or zero-shot CLIP with the dataset's template."""
    results = {}
    for name, (records, class_names, template, source) in splits.items():
        dataset = ImageClassificationDataset(records, transforms.test())
        loader = DataLoader(dataset, batch_size=args.eval_batch_size, num_workers=args.num_workers)
        classifier = maple_peft.PromptClassifier(
            model,
            tokenizer,
            class_names,
            template=template if zero_shot else None,
            text_batch_size=args.text_batch_size,
            dataset=source,  # MMRL's test-time rule: its fused logits on the classes of its training dataset only
        )
        label = f"{'zero-shot CLIP' if zero_shot else method} {name}"
        target_options = {} if zero_shot else (args.eval_dataset_overrides or {}).get(source, {})
        if target_options:  # the recipe's values for this target (the original's per-dataset test-time beta)
            label += " (" + ", ".join(f"{key} {value:g}" for key, value in target_options.items()) + ")"
        with maple_peft.test_time_options(model, **target_options):
            results[name] = evaluate_classifier(
                accelerator, classifier, accelerator.prepare(loader), class_names, desc=label
            )
        results[name]["num_skipped_images"] = dataset.num_skipped
        if target_options:
            results[name]["test_time_options"] = dict(target_options)
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


@dataclass
class Prepared:
    """What `prepare` checked and loaded before anything is created: the options, the resume point, the data."""

    args: argparse.Namespace
    options: dict[str, Any]  # as recorded in checkpoints and metrics (a JSON round trip: equal after resuming)
    output_dir: Path
    started: float
    aggregator: GaussianPromptAggregator | None  # PromptSRC's Gaussian prompt aggregation
    checkpoint: Path | None
    resume_state: dict[str, Any] | None
    resume_here: bool  # resuming in this folder (its checkpoints are kept)
    data: Any
    splits: dict[str, tuple[Any, list[str], str, str]]
    draw: Any  # the few-shot draw: the training images (`draw.train`)


@dataclass
class Built:
    """The model `build` made: CLIP with the adapter, its tokenizer and transforms, and the training objective."""

    tokenizer: Any
    transforms: Any
    model: Any
    loss_fn: Any  # a module holding the classifier


@dataclass
class Training:
    """The training state `start_training` sets up and `train_epoch` advances."""

    accelerator: Accelerator
    loss_fn: Any
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: Any
    loader_generator: torch.Generator
    progress: Any
    start_epoch: int = 0
    skip_batches: int = 0
    global_step: int = 0
    history: list[dict] = field(default_factory=list)


def prepare(args: argparse.Namespace) -> Prepared:
    """Every check before anything is created (the folder, the checkpoint and its options, the sources), then the data,
    the evaluated splits and the few-shot draw."""
    output_dir = Path(args.output_dir)
    started = time.time()
    options = json.loads(json.dumps(vars(args)))
    aggregator = None
    if args.gpa_mean is not None:  # its refusals in the options' names
        try:
            aggregator = GaussianPromptAggregator(mean=args.gpa_mean, std=args.gpa_std, num_epochs=args.epochs)
        except ValueError as error:
            gpa_flags = {"mean": "--gpa_mean", "std": "--gpa_std", "num_epochs": "--epochs"}
            raise ValueError(command_line_message(str(error), gpa_flags)) from None
    checkpoint, resume_state = None, None
    if args.resume_from_checkpoint is not None:
        checkpoint = resolve_checkpoint(args.resume_from_checkpoint, output_dir)
    # a run resumed from another folder's checkpoint starts this folder afresh (its checkpoints are not kept); 'latest'
    # before the first checkpoint (None: a job killed early and requeued) starts from the beginning in this folder
    resume_here = args.resume_from_checkpoint == "latest" or (
        checkpoint is not None and checkpoint.resolve().parent == (output_dir / "checkpoints").resolve()
    )
    check_output_dir(output_dir, overwrite=args.overwrite_output_dir, resume=resume_here)
    check_sources_and_caches(args)
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
    draw = draw_experiment_training_images(data, args.num_shots, args.seed, args.setting)  # the original's on CoOp
    return Prepared(
        args, options, output_dir, started, aggregator, checkpoint, resume_state, resume_here, data, splits, draw
    )


def build(run: Prepared) -> Built:
    """The tokenizer, the base model with the adapter (its prompts initialized from the seed), the transforms, and the
    training objective; every evaluated class name is checked to fit the text context."""
    args, data = run.args, run.data
    tokenizer_path = args.tokenizer_name_or_path or args.model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    set_seed(args.seed)  # the prompts' random initialization
    base_model = load_base_model(args.model_name_or_path)  # CLIP, MetaCLIP 2, SigLIP or SigLIP 2, from its config
    image_processor, why_default = load_image_processor(args.model_name_or_path, base_model.config)
    if why_default:
        logger.warning(why_default)
    transforms = image_transforms(image_processor, scale=tuple(args.crop_scale))
    train_names = list(run.draw.train.class_names)
    peft_config = maple_peft.MaPLeConfig(
        **method_config(args, data),
        prompt_init=args.prompt_init,
        variant=args.variant,
        vision_pool_prompts=args.vision_pool_prompts,
        tokenizer_name_or_path=tokenizer_path,
        class_names=train_names,  # saved with the adapter: PromptClassifier.from_pretrained classifies among them
        dataset=data.name,
    )
    with peft_deprecation_quieted():  # PEFT's own read of a property transformers deprecated
        model = get_peft_model(base_model, peft_config)
    for _, class_names, template, _ in run.splits.values():  # the evaluated class names fit the text context too
        for zero_shot_template in (None, template):
            maple_peft.PromptClassifier(model, tokenizer, class_names, template=zero_shot_template).input_ids()
    classifier = maple_peft.PromptClassifier(
        model,
        tokenizer,
        train_names,
        text_batch_size=args.text_batch_size,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    # the training objective: cross-entropy, PromptSRC's, KgCoOp's or MMRL's loss (a module holding the classifier)
    return Built(tokenizer, transforms, model, build_objective(args, classifier, data))


def create_accelerator(run: Prepared) -> Accelerator:
    """The Accelerator of the run; refuses to resume a checkpoint written by another number of processes."""
    args = run.args
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=args.report_to,
        project_config=ProjectConfiguration(
            project_dir=str(run.output_dir),
            automatic_checkpoint_naming=True,
            total_limit=args.checkpoints_total_limit,
        ),
    )
    processes = accelerator.num_processes  # a checkpoint's batch positions and schedule are per process
    if run.resume_state is not None and run.resume_state.get("num_processes", 1) != processes:
        raise ValueError(
            f"The checkpoint {run.checkpoint} was written by a run on {run.resume_state.get('num_processes', 1)} "
            f"process(es), but this run has {processes}: its position in the epoch and its schedule are counted "
            "per process. Resume with the same number of processes."
        )
    return accelerator


def open_run_folder(run: Prepared, accelerator: Accelerator) -> RunLock:
    """The run folder locked, the previous run cleared (only what a run wrote), and marked RUNNING until the results
    are written; then the console and training_log.txt set up."""
    lock = RunLock(run.output_dir)
    if accelerator.is_main_process:
        lock.acquire()
        try:  # again under the lock: another run may have finished in the folder since the first check
            check_output_dir(run.output_dir, overwrite=run.args.overwrite_output_dir, resume=run.resume_here)
            clear_previous_run(run.output_dir, keep_checkpoints=run.resume_here)
            remove_incomplete_checkpoints(run.output_dir)
        except BaseException:
            lock.release()
            raise
        mark_running(run.output_dir)
    accelerator.wait_for_everyone()
    setup_logging(accelerator, run.output_dir)
    return lock


def drops_last_batch(run: Prepared, accelerator: Accelerator) -> bool:
    """Dassl's rule, which every original recipe trains with: the last incomplete batch is dropped, unless the images
    do not fill one batch (KgCoOp's batch of 128 on EuroSAT's 80 base images): then that one batch is the epoch."""
    return len(run.draw.train) // accelerator.num_processes >= run.args.batch_size


def log_run_start(run: Prepared, built: Built, accelerator: Accelerator) -> None:
    """What the run is about to do, on the console and in training_log.txt."""
    args, data, train_records = run.args, run.data, run.draw.train
    if run.resume_here and run.checkpoint is None:
        logger.info(
            f"--resume_from_checkpoint latest: {run.output_dir} holds no checkpoint yet (the run stopped before its "
            "first); starting from the beginning"
        )
    logger.info(
        f"{accelerator.num_processes} process(es) on {accelerator.device}, mixed precision {args.mixed_precision}"
    )
    logger.info(f"{data.name}: {len(data.class_names)} classes; evaluating on {list(run.splits)}")
    logger.info(f"split: {data.split_note}")
    logger.info(f"{len(train_records)} training images, the {run.draw.draw!r} few-shot draw (train_images.json)")
    trainable, total = built.model.get_nb_trainable_parameters()
    logger.info(
        f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
    )
    logger.info(f"objective: {built.loss_fn.describe()}")
    if not drops_last_batch(run, accelerator):
        logger.warning(
            f"{len(train_records)} training images per epoch ({accelerator.num_processes} process(es)) do not fill "
            f"one batch of {args.batch_size}: each epoch is one step on all of them (Dassl's rule, as the original "
            "recipes)"
        )


def start_training(run: Prepared, built: Built, accelerator: Accelerator) -> Training:
    """The training data, optimizer and schedule, prepared and registered for checkpointing; the checkpoint loaded
    when resuming; the trackers and the progress bar started."""
    args = run.args
    train_set = EpochSeededDataset(
        ImageClassificationDataset(run.draw.train, built.transforms.train(), cache_decoded=True), seed=args.seed
    )
    loader_generator = torch.Generator()
    train_loader = DataLoader(
        train_set,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=drops_last_batch(run, accelerator),
        num_workers=args.num_workers,
        generator=loader_generator,
    )
    params = [p for p in built.model.parameters() if p.requires_grad]
    optimizer = build_optimizer(args, params)
    # the loss module holds the classifier: preparing it puts the whole step under DDP and autocast
    loss_fn, optimizer, train_loader = accelerator.prepare(built.loss_fn, optimizer, train_loader)
    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    # stepped once per optimizer step, not prepared (the schedule is per epoch, whatever the process count)
    scheduler = build_scheduler(optimizer, args.epochs, args.warmup_epochs, args.warmup_lr, steps_per_epoch)
    accelerator.register_for_checkpointing(scheduler)
    if run.aggregator is not None:  # the running sum of Gaussian prompt aggregation
        accelerator.register_for_checkpointing(run.aggregator)
    register_adapter_checkpointing(accelerator, built.model)
    training = Training(accelerator, loss_fn, params, optimizer, scheduler, train_loader, loader_generator, None)
    if run.resume_state is not None:
        accelerator.load_state(str(run.checkpoint))
        training.global_step, training.history = run.resume_state["step"], run.resume_state["history"]
        training.start_epoch = run.resume_state["epoch"] - 1
        training.skip_batches = run.resume_state["batches_in_epoch"]
        if training.skip_batches >= len(train_loader):
            training.start_epoch, training.skip_batches = training.start_epoch + 1, 0
        logger.info(f"Resumed from {run.checkpoint} (epoch {run.resume_state['epoch']}, step {training.global_step})")
    accelerator.project_configuration.iteration = next_checkpoint_number(run.output_dir)
    if args.report_to:
        accelerator.init_trackers(
            TRACKER_DIR, config={k: v for k, v in run.options.items() if not isinstance(v, list)}
        )
    training.progress = tqdm(
        total=steps_per_epoch * args.epochs,
        initial=training.global_step,
        disable=not (accelerator.is_local_main_process and progress_bars_wanted()),
    )
    return training


def train_epoch(run: Prepared, built: Built, training: Training, epoch: int) -> bool:
    """One epoch (from where a resumed run stopped): its steps, the step checkpoints, then the epoch's aggregation and
    checkpoint. Returns whether the run stops after it (`--stop_after_epoch`)."""
    args, accelerator, loss_fn, optimizer = run.args, training.accelerator, training.loss_fn, training.optimizer
    history, first_batch = training.history, training.skip_batches if epoch == training.start_epoch else 0
    set_seed(args.seed + epoch)  # the epoch's shuffling and augmentations do not depend on resuming
    training.loader_generator.manual_seed(args.seed + epoch)
    loss_fn.train()
    batches = training.train_loader
    if first_batch:
        batches = accelerator.skip_first_batches(training.train_loader, first_batch)
    batches.set_epoch(epoch)  # also the epoch of the per-image augmentation seeds (EpochSeededDataset)
    state, step_checkpoint = {}, False
    for batch_index, batch in enumerate(batches, start=first_batch):
        with accelerator.accumulate(loss_fn):
            out = loss_fn(image_batch(batch), batch["labels"])
            loss = out.loss
            all_losses = accelerator.gather(loss.detach()[None])
            if not torch.isfinite(all_losses).all():
                where = f"epoch {epoch + 1}, step {training.global_step + 1}"
                raise non_finite_error(f"the loss became {all_losses.tolist()} at {where}", run.output_dir)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
        if not accelerator.sync_gradients:
            continue
        lr = optimizer.param_groups[0]["lr"]
        training.scheduler.step()
        training.global_step += 1
        record = {"step": training.global_step, "epoch": epoch + 1, "loss": all_losses.mean().item(), "lr": lr}
        if len(out.terms) > 1:  # the self-regulating terms, unweighted (this process's batch)
            record.update({f"loss_{name}": value.item() for name, value in out.terms.items()})
        history.append(record)
        accelerator.log(
            {f"train/{k}": v for k, v in record.items() if k.startswith(("loss", "lr"))}, step=training.global_step
        )
        training.progress.update(1)
        training.progress.set_postfix(loss=f"{history[-1]['loss']:.4f}", lr=f"{lr:.2e}")
        state = {"epoch": epoch + 1, "batches_in_epoch": batch_index + 1, "step": training.global_step}
        state["num_processes"] = accelerator.num_processes
        step_checkpoint = args.checkpointing_steps != "epoch" and training.global_step % args.checkpointing_steps == 0
        if step_checkpoint and batch_index + 1 < len(training.train_loader):  # an epoch's last step: saved below
            state_to_save = {**state, "history": history, "options": run.options}
            save_checkpoint(accelerator, training.params, run.output_dir, state_to_save)
    epoch_losses = [record["loss"] for record in history if record["epoch"] == epoch + 1]  # resumed ones too
    logger.info(
        f"epoch {epoch + 1}/{args.epochs}: mean loss {sum(epoch_losses) / len(epoch_losses):.4f} over its "
        f"{len(epoch_losses)} steps, lr {history[-1]['lr']:.2e}"
    )
    if run.aggregator is not None:
        run.aggregator.update(built.model, epoch + 1)
        history[-1]["gpa_weight"] = run.aggregator.history()[-1]["weight"]
    stopping = args.stop_after_epoch == epoch + 1 and epoch + 1 < args.epochs
    if args.checkpointing_steps == "epoch" or step_checkpoint or stopping:  # after the epoch's aggregation
        save_checkpoint(
            accelerator, training.params, run.output_dir, {**state, "history": history, "options": run.options}
        )
    if stopping:
        logger.info(f"Stopping after epoch {epoch + 1} as asked; continue with --resume_from_checkpoint latest")
    return stopping


def evaluate_run(run: Prepared, built: Built, training: Training) -> dict:
    """The adapter (the Gaussian-weighted average with aggregation) and zero-shot CLIP on every split; the run's
    `metrics.json` dict."""
    args, accelerator, model = run.args, training.accelerator, built.model
    if run.aggregator is not None:  # the adapter evaluated, saved and described is the Gaussian-weighted average
        run.aggregator.apply(model)
        logger.info(gpa_summary(run.aggregator))
    model.eval()
    method = method_name(model.peft_config["default"].to_dict(), run.options)
    evaluate = partial(
        evaluate_all, accelerator, model, built.tokenizer, run.splits, built.transforms, args, method=method
    )
    results = evaluate(zero_shot=False)
    zero_shot = None
    if args.zero_shot_baseline:
        with model.disable_adapter():
            zero_shot = evaluate(zero_shot=True)
    accelerator.log({f"eval/{name}_accuracy": r["accuracy"] for name, r in results.items()}, step=training.global_step)
    counts = run.draw.train.class_counts()
    metrics = build_run_metrics(
        base_model=args.model_name_or_path,
        dataset=run.data.name,
        setting=args.setting,
        seed=args.seed,
        num_shots=args.num_shots,
        results=results,
        train_config=run.options,
        peft_config=model.peft_config["default"].to_dict(),
        time_seconds=round(time.time() - run.started, 2),
        zero_shot_results=zero_shot,
        split_source=run.data.split_source,  # tables never average two splits of one benchmark
        split_note=run.data.split_note,
        benchmark=run.data.benchmark,
        shots_used={"min": min(counts), "max": max(counts)},  # fewer than --num_shots where a class has fewer images
        data_source=run.data.data_source,  # hf://<repo>@<revision> for the Hub data root
        smoke_assets=smoke_assets(args.model_name_or_path, args.data_dir),  # the card says so; no model-index
    )
    if "harmonic_mean" in metrics:
        zero_shot_hm = (metrics.get("zero_shot") or {}).get("harmonic_mean")
        baseline = "" if zero_shot_hm is None else f" (zero-shot CLIP: HM {zero_shot_hm:.2f})"
        logger.info(f"{method}: HM of base and novel {metrics['harmonic_mean']:.2f}{baseline}")
    return metrics


def write_results(run: Prepared, built: Built, training: Training, metrics: dict) -> None:
    """The result files, written last, each complete or absent: adapter, history, metrics, training images, plots,
    card; then the RUNNING marker removed."""
    accelerator = training.accelerator
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        from maple_peft.training.card import write_model_card

        output_dir = run.output_dir
        save_into_atomically(output_dir, built.model.save_pretrained)
        atomic_write_json(output_dir / "training_history.json", training.history)
        atomic_write_json(output_dir / "metrics.json", metrics)
        run.draw.write(output_dir, dataset=run.data.name, data_source=run.data.data_source)  # train_images.json
        images = write_plots(output_dir, metrics, training.history) if run.args.plots else []
        write_model_card(output_dir, repo_id=run.args.hub_model_id, images=images)
        mark_finished(output_dir)
        logger.info(f"Wrote {output_dir}")


def report_failure(run: Prepared, accelerator: Accelerator, error: BaseException) -> None:
    """A run that failed after it started: one line on the console, the traceback in training_log.txt, FAILED."""
    where = f"; the traceback is in {run.output_dir / LOG_FILE}" if accelerator.is_main_process else ""
    reason = command_line_error(error, build_parser()).rstrip(".")
    logger.error(
        f"The run failed: {type(error).__name__}: {reason}{where}",
        exc_info=not isinstance(error, KeyboardInterrupt),
    )
    if accelerator.is_main_process:
        mark_failed(run.output_dir, error)


def push(args: argparse.Namespace, output_dir: Path) -> None:
    """The finished run pushed to the Hub; on failure, how to push it later (exit code 1)."""
    from maple_peft.cli import push_run

    try:
        logger.info(f"Pushed to {push_run(output_dir, args.hub_model_id, private=args.hub_private)}")
    except Exception as error:
        logger.error(
            f"Pushing to the Hub failed ({type(error).__name__}: {error}). The run is saved in {output_dir}; push "
            f"it later with: maple-peft push {output_dir} --hub-model-id {args.hub_model_id}"
        )
        sys.exit(1)


@flush_denormal()  # subnormal floats are zero on CPU (they slow arithmetic down many times)
def main(args: argparse.Namespace | list[str] | None = None) -> dict:
    if not isinstance(args, argparse.Namespace):  # an argument list, as on the command line
        args = parse_args(args, description=__doc__)
    quiet_console(args)
    run = prepare(args)  # everything is checked before anything is created: folder, checkpoint, data, model
    built = build(run)
    accelerator = create_accelerator(run)
    lock = open_run_folder(run, accelerator)
    try:
        log_run_start(run, built, accelerator)
        training = start_training(run, built, accelerator)
        for epoch in range(training.start_epoch, args.epochs):
            if train_epoch(run, built, training, epoch):
                accelerator.end_training()
                return {}
        training.progress.close()
        metrics = evaluate_run(run, built, training)
        write_results(run, built, training, metrics)
        accelerator.end_training()
    except BaseException as error:
        report_failure(run, accelerator, error)
        if isinstance(error, Exception):
            raise RunFailed(str(error)) from error
        raise
    finally:
        lock.release()
    if args.push_to_hub and accelerator.is_main_process:
        push(args, run.output_dir)
    return metrics


def run_command_line(args: argparse.Namespace | list[str] | None = None) -> int:
    """`main` as the command line runs it, giving its exit code: 0 done; 1 the run failed after it started (the
    console and training_log.txt have said why); 2 refused before any work, in one line on stderr. A failed push
    exits with 1 itself (`SystemExit`).

    Args:
        args: The parsed options, or an argument list as on the command line.
    """
    try:
        main(args)
    except RunFailed:
        return 1
    except (ValueError, OSError, RuntimeError) as error:
        if os.environ.get("RANK", "0") == "0":  # once, not once per process under `accelerate launch`
            print(f"error: {command_line_error(error, build_parser())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_command_line(ARGS))
