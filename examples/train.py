#!/usr/bin/env python
"""Few-shot MaPLe training and evaluation with 🤗 Accelerate (CPU, one GPU, or many, unchanged).

    accelerate launch examples/train.py --config examples/configs/maple_base2novel.yaml \
        --dataset eurosat --data_root /path/to/coop_data --seed 1

Writes to --output_dir: the adapter (adapter_model.safetensors, adapter_config.json), a model card (README.md),
metrics.json, plots, training_log.txt, and checkpoints/ (adapter + optimizer state, for --resume_from_checkpoint).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from peft import get_peft_model
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

import maple_peft
from maple_peft.training.data import CLIPTransforms, ImageClassificationDataset, collate_fn
from maple_peft.training.experiment import (
    add_data_arguments,
    atomic_write_json,
    check_output_dir,
    evaluate_classifier,
    load_experiment_data,
    load_experiment_data_from_args,
    load_training_checkpoint,
    resolve_checkpoint,
    save_training_checkpoint,
    seed_epoch,
)
from maple_peft.training.metrics import build_run_metrics
from maple_peft.training.schedule import build_scheduler

logger = logging.getLogger("maple_peft.train")
SETTINGS = ("base2novel", "all", "cross_dataset")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    g.add_argument("--num_workers", type=int, default=0)
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
    g.add_argument("--gradient_checkpointing", action="store_true", help="bounded text memory for many classes")
    g = p.add_argument_group("run")
    g.add_argument("--output_dir", default=None, help="defaults to outputs/<dataset>/<recipe>/seed<seed>")
    g.add_argument("--overwrite_output_dir", action="store_true")
    g.add_argument("--resume_from_checkpoint", default=None, help="a checkpoint folder, or 'latest'")
    g.add_argument("--stop_after_epoch", type=int, default=None, help="end early after this epoch (a planned pause)")
    g.add_argument("--zero_shot", action="store_true", help="evaluate zero-shot CLIP only, with the dataset template")
    g.add_argument("--no_zero_shot_baseline", action="store_true", help="skip the zero-shot CLIP row in the results")
    g.add_argument("--report_to", default=None, help="an Accelerate tracker: tensorboard, wandb, ...")
    g.add_argument("--no_plots", action="store_true")
    g.add_argument("--push_to_hub", action="store_true")
    g.add_argument("--hub_model_id", default=None)
    g.add_argument("--hub_token", default=None)
    g.add_argument("--hub_private", action="store_true")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.config:
        with open(first.config, encoding="utf-8") as handle:
            values = yaml.safe_load(handle) or {}
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            parser.error(f"{first.config}: unknown keys {unknown}; the keys are this script's options")
        parser.set_defaults(**values)
    args = parser.parse_args(argv)
    if args.prompt_init is not None and str(args.prompt_init).lower() == "none":
        args.prompt_init = None
    if args.setting == "cross_dataset" and not args.eval_datasets:
        parser.error("--setting cross_dataset needs --eval_datasets (e.g. dtd eurosat ucf101)")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id user/name")
    if args.output_dir is None:
        source = args.dataset or Path(str(args.dataset_name)).name
        recipe = "zero_shot" if args.zero_shot else (Path(args.config).stem if args.config else args.variant)
        args.output_dir = str(Path("outputs") / source / recipe / f"seed{args.seed}")
    return args


def setup_logging(accelerator: Accelerator, output_dir: Path) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if accelerator.is_main_process:
        handlers.append(logging.FileHandler(output_dir / "training_log.txt", encoding="utf-8"))
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO, handlers=handlers, force=True
    )
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


def evaluate_all(accelerator, model, tokenizer, splits, transforms, args, zero_shot: bool) -> dict[str, dict]:
    results = {}
    for name, (records, class_names, template) in splits.items():
        dataset = ImageClassificationDataset(records, transforms.test())
        loader = accelerator.prepare(
            DataLoader(dataset, batch_size=args.eval_batch_size, collate_fn=collate_fn, num_workers=args.num_workers)
        )
        classifier = maple_peft.PromptClassifier(
            model,
            tokenizer,
            class_names,
            template=template if zero_shot else None,
            text_batch_size=args.text_batch_size,
        )
        results[name] = evaluate_classifier(accelerator, classifier, loader, class_names)
        results[name]["num_skipped_images"] = dataset.num_skipped
        logger.info(f"{'zero-shot ' if zero_shot else ''}{name}: accuracy {results[name]['accuracy']:.2f}%")
    return results


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    resuming = args.resume_from_checkpoint is not None
    check_output_dir(output_dir, args.overwrite_output_dir, resuming)
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=args.report_to,
        project_dir=str(output_dir),
    )
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    setup_logging(accelerator, output_dir)
    set_seed(args.seed)
    started = time.time()
    logger.info(
        f"{accelerator.num_processes} process(es) on {accelerator.device}, mixed precision {args.mixed_precision}"
    )

    # ---- data: few-shot training images (drawn before the base filter), test splits -------------------------------
    data = load_experiment_data_from_args(args)
    splits = eval_splits(args, data)
    logger.info(f"{data.name}: {len(data.class_names)} classes; evaluating on {list(splits)}")

    # ---- model ----------------------------------------------------------------------------------------------------
    tokenizer_path = args.tokenizer_name_or_path or args.model_name_or_path
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    try:
        image_processor = AutoImageProcessor.from_pretrained(args.model_name_or_path)
    except (OSError, ValueError):
        logger.warning(f"No image processor config in {args.model_name_or_path}; using CLIP's 224-px defaults")
        image_processor = None
    transforms = CLIPTransforms.from_processor(image_processor)
    clip = CLIPModel.from_pretrained(args.model_name_or_path)
    peft_config = maple_peft.MaPLeConfig(
        n_ctx=args.n_ctx,
        n_ctx_vision=args.n_ctx_vision,
        depth=args.depth,
        prompt_init=args.prompt_init,
        variant=args.variant,
        tokenizer_name_or_path=tokenizer_path,
    )
    model = get_peft_model(clip, peft_config)
    if accelerator.is_main_process:
        model.print_trainable_parameters()

    history: list[dict] = []
    if args.zero_shot:
        model = accelerator.prepare_model(model, evaluation_mode=True).eval()
        with model.disable_adapter():
            results = evaluate_all(accelerator, model, tokenizer, splits, transforms, args, True)
        return finish(args, accelerator, None, data, results, None, history, started)

    # ---- training -------------------------------------------------------------------------------------------------
    train_records = data.train.few_shot(args.num_shots, seed=args.seed)
    if args.setting == "base2novel":
        train_records = train_records.class_subset("base")
    train_names = list(train_records.class_names)
    train_set = ImageClassificationDataset(train_records, transforms.train(), cache_decoded=True)
    if len(train_set) < args.batch_size:
        raise ValueError(
            f"{len(train_set)} training images but --batch_size {args.batch_size}: the last incomplete batch is "
            "dropped, so no step would run; lower --batch_size."
        )
    loader_generator = torch.Generator()
    train_loader = DataLoader(
        train_set,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        collate_fn=collate_fn,
        num_workers=args.num_workers,
        generator=loader_generator,
    )
    classifier = maple_peft.PromptClassifier(
        model,
        tokenizer,
        train_names,
        text_batch_size=args.text_batch_size,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    classifier, optimizer, train_loader = accelerator.prepare(classifier, optimizer, train_loader)
    steps_per_epoch = math.ceil(len(train_loader) / args.gradient_accumulation_steps)
    # stepped by hand once per optimizer step (not prepared: the schedule is per epoch, whatever the process count)
    scheduler = build_scheduler(optimizer, args.epochs, args.warmup_epochs, args.warmup_lr, steps_per_epoch)

    start_epoch, global_step = 0, 0
    if resuming:
        checkpoint = resolve_checkpoint(args.resume_from_checkpoint, output_dir)
        state = load_training_checkpoint(checkpoint, accelerator.unwrap_model(classifier).model, optimizer, scheduler)
        start_epoch, global_step, history = state["epoch"] + 1, state["global_step"], state["history"]
        logger.info(f"Resumed from {checkpoint} (epoch {state['epoch']} done, step {global_step})")

    if args.report_to:
        accelerator.init_trackers(
            "maple_peft", config={k: v for k, v in vars(args).items() if v is not None and not isinstance(v, list)}
        )
    total = steps_per_epoch * args.epochs
    progress = tqdm(total=total, initial=global_step, disable=not accelerator.is_local_main_process, desc="train")
    for epoch in range(start_epoch, args.epochs):
        seed_epoch(args.seed, epoch)
        loader_generator.manual_seed(args.seed * 1000 + epoch)
        classifier.train()
        for batch in train_loader:
            with accelerator.accumulate(classifier):
                logits = classifier(batch["pixel_values"])
                loss = torch.nn.functional.cross_entropy(logits.float(), batch["labels"])
                all_losses = accelerator.gather(loss.detach()[None])
                if not torch.isfinite(all_losses).all():
                    last = f"checkpoints of {output_dir}" if epoch > 0 else "no checkpoint yet"
                    raise RuntimeError(
                        f"The loss became {all_losses.tolist()} at epoch {epoch}, step {global_step}; stopping. The "
                        f"last good state is in the {last} (written at the end of each epoch). Try a lower --lr, "
                        "--mixed_precision no, or check the data."
                    )
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                global_step += 1
                record = {"step": global_step, "epoch": epoch, "loss": all_losses.mean().item(), "lr": lr}
                history.append(record)
                accelerator.log({"train/loss": record["loss"], "train/lr": lr}, step=global_step)
                progress.update(1)
                progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}")
        logger.info(f"epoch {epoch + 1}/{args.epochs}: loss {history[-1]['loss']:.4f}, lr {history[-1]['lr']:.2e}")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            save_training_checkpoint(
                output_dir,
                accelerator.unwrap_model(classifier).model,
                optimizer,
                scheduler,
                {"epoch": epoch, "global_step": global_step, "history": history, "args": vars(args)},
            )
        if args.stop_after_epoch is not None and epoch >= args.stop_after_epoch and epoch + 1 < args.epochs:
            logger.info(f"Stopping after epoch {epoch} as asked; continue with --resume_from_checkpoint latest")
            accelerator.end_training()
            return {}
    progress.close()

    # ---- evaluation -----------------------------------------------------------------------------------------------
    model = accelerator.unwrap_model(classifier).model
    model.eval()
    results = evaluate_all(accelerator, model, tokenizer, splits, transforms, args, False)
    zero_shot = None
    if not args.no_zero_shot_baseline:
        with model.disable_adapter():
            zero_shot = evaluate_all(accelerator, model, tokenizer, splits, transforms, args, True)
    for name, result in results.items():
        accelerator.log({f"eval/{name}_accuracy": result["accuracy"]}, step=global_step)
    return finish(args, accelerator, model, data, results, zero_shot, history, started)


def finish(args, accelerator, model, data, results, zero_shot, history, started) -> dict:
    """Write adapter, metrics, plots and model card (main process), and push them if asked."""
    output_dir = Path(args.output_dir)
    metrics = build_run_metrics(
        base_model=args.model_name_or_path,
        dataset=data.name,
        setting="zero_shot" if args.zero_shot else args.setting,
        seed=args.seed,
        num_shots=None if args.zero_shot else args.num_shots,
        results=results,
        train_config={k: v for k, v in vars(args).items() if k not in ("hub_token",)},
        peft_config=None if model is None else model.peft_config["default"].to_dict(),
        time_seconds=round(time.time() - started, 2),
        zero_shot_results=zero_shot,
    )
    if "harmonic_mean" in metrics:
        logger.info(f"HM {metrics['harmonic_mean']:.2f}")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if model is not None:
            model.save_pretrained(output_dir)
            atomic_write_json(output_dir / "training_history.json", history)
        atomic_write_json(output_dir / "metrics.json", metrics)
        if not args.no_plots:
            write_plots(output_dir, metrics, history)
        if model is not None:
            from maple_peft.training.card import write_model_card

            write_model_card(output_dir, repo_id=args.hub_model_id)
        if args.push_to_hub:
            from maple_peft.training.hub import push_run_to_hub

            url = push_run_to_hub(output_dir, args.hub_model_id, token=args.hub_token, private=args.hub_private)
            logger.info(f"Pushed to {url}")
        logger.info(f"Wrote {output_dir}")
    accelerator.end_training()
    return metrics


def write_plots(output_dir: Path, metrics: dict, history: list[dict]) -> None:
    try:
        from maple_peft.training import plots
    except ImportError:
        return
    try:
        if history:
            plots.plot_training_curves(history, output_dir / "training_curves.png")
        plots.plot_per_class_accuracy(metrics["results"], output_dir / "per_class_accuracy.png")
        if "harmonic_mean" in metrics:
            plots.plot_base_novel_hm(metrics, output_dir / "base_novel_hm.png")
    except ImportError as error:
        logger.warning(f"No plots: {error}")


if __name__ == "__main__":
    main()
