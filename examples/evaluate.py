#!/usr/bin/env python
"""Evaluate a MaPLe adapter (a folder or a Hub id) on any dataset and any class names.

    accelerate launch examples/evaluate.py --adapter outputs/eurosat-rgb/maple_base2novel/seed1 \
        --dataset eurosat --data_root DATA --subset novel
    python examples/evaluate.py --adapter outputs/smoke --dataset_name imagefolder --data_dir smoke_assets/data \
        --output outputs/smoke/eval_all.json

Without --adapter it evaluates zero-shot CLIP with the dataset's template. Prints the accuracy and macro-F1; with
--output FILE it writes the full metrics JSON there (an existing file only with --overwrite).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

# the data options, declared once for both scripts; this imports neither torch nor transformers
from options import PACKAGED_BUILDERS, CommandParser, add_data_arguments, command_line_error, script_parser

from maple_peft import methods


def build_parser() -> CommandParser:
    p = script_parser("evaluate.py", __doc__)
    p.add_argument("--adapter", default=None, help="adapter folder or Hub id; omit for zero-shot CLIP")
    p.add_argument(
        "--model_name_or_path",
        default=None,
        help="defaults to the adapter's base model (zero-shot: openai/clip-vit-base-patch16)",
    )
    p.add_argument("--tokenizer_name_or_path", default=None)
    add_data_arguments(p)
    p.add_argument("--subset", default="all", choices=["all", "base", "novel"])
    p.add_argument("--template", default=None, help="prompt template with {} (zero-shot default: the dataset's)")
    p.add_argument(
        "--rep_logits",
        default="auto",
        choices=["auto", "fusion", "class"],
        help="MMRL adapters: fused or class-path logits; auto: fused on the adapter's own classes and dataset only",
    )
    for name, (field, owners) in test_time_fields().items():  # MMRL++'s beta: the original's per-target values
        kind, _ = methods.flag_type(field)
        p.add_argument(
            f"--{name}",
            type=kind,
            default=None,
            help=f"{' / '.join(m.name for m in owners)} adapters: evaluate with this "
            f"{field.metadata.get('title', name).lower()} instead of the adapter's",
        )
    p.add_argument("--eval_batch_size", type=int, default=100)
    p.add_argument("--text_batch_size", type=int, default=256)
    p.add_argument("--mixed_precision", default="no", choices=["no", "bf16", "fp16"])
    p.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1), help="data loading processes")
    p.add_argument("--output", default=None, help="write the metrics JSON to this file (default: print only)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    return p


def test_time_fields() -> dict:
    """The adapter options that may take another value at test time (`metadata["test_time"]`), by name."""
    return {name: entry for name, entry in methods.option_fields().items() if entry[0].metadata.get("test_time")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    given = [name for name in test_time_fields() if getattr(args, name) is not None]
    if given and not args.adapter:
        p.error(f"--{given[0]} sets an adapter option at test time; it needs --adapter")
    if args.output is not None:
        output = Path(args.output)
        if output.is_dir() or (output.exists() and not args.overwrite):
            what = "is a folder" if output.is_dir() else "exists"
            p.error(
                f"--output {output} {what}; pass another file name" + ("" if output.is_dir() else " or --overwrite")
            )
    return args


if __name__ == "__main__":  # --help and option errors answer at once, before the slow imports below
    ARGS = parse_args()

from accelerate import Accelerator
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

import maple_peft
from maple_peft.console import disable_library_progress_bars, progress_bars_wanted, quiet_known_messages
from maple_peft.hub import check_sources, check_writable_cache
from maple_peft.loading import load_base_model, load_image_processor
from maple_peft.numerics import flush_denormal
from maple_peft.prompts import check_template
from maple_peft.training.data import ImageClassificationDataset, image_transforms
from maple_peft.training.experiment import evaluate_classifier, load_experiment_data_from_args
from maple_peft.training.run_dir import RunLockError, write_result_json

logger = logging.getLogger("maple_peft.evaluate")


@flush_denormal()  # subnormal floats are zero on CPU (they slow arithmetic down many times)
def main(args: argparse.Namespace | list[str] | None = None) -> dict:
    if not isinstance(args, argparse.Namespace):  # an argument list, as on the command line
        args = parse_args(args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO, stream=sys.stdout)
    quiet_known_messages()
    if not progress_bars_wanted():
        disable_library_progress_bars()
    # everything that can be checked is checked before any work: the template, the sources, the caches
    if args.template is not None:
        check_template(args.template)
    sources = {
        "--adapter": (args.adapter, "model"),
        "--model_name_or_path": (args.model_name_or_path, "model"),
        "--tokenizer_name_or_path": (args.tokenizer_name_or_path, "model"),
    }
    if args.dataset_name and args.dataset_name not in PACKAGED_BUILDERS:
        sources["--dataset_name"] = (args.dataset_name, "dataset")
    elif args.dataset_name:  # a local folder of images (for a Hub dataset, --data_dir is a folder inside it)
        sources["--data_dir"] = (args.data_dir, "folder")
    check_sources(sources)
    if args.dataset_name:
        import datasets

        if args.dataset_name in PACKAGED_BUILDERS:  # a local folder: no "Downloading data: 36/36 files" bars
            datasets.disable_progress_bars()
        check_writable_cache(datasets.config.HF_DATASETS_CACHE, "the datasets cache (HF_DATASETS_CACHE)")
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    args.train_split = args.test_split  # evaluation reads no training images
    data = load_experiment_data_from_args(args)
    records = data.test if args.subset == "all" else data.test.class_subset(args.subset)
    class_names = list(records.class_names)

    if args.adapter:  # base CLIP (the adapter's, unless --model_name_or_path), adapter, tokenizer, image processor
        classifier = maple_peft.PromptClassifier.from_pretrained(
            args.adapter, class_names, base_model_name_or_path=args.model_name_or_path
        )
        classifier.template = args.template
        base_path = classifier.clip.name_or_path
        classifier.rep_logits, classifier.dataset = args.rep_logits, data.name
    else:  # zero-shot CLIP with the dataset's template
        base_path = args.model_name_or_path or "openai/clip-vit-base-patch16"
        base = load_base_model(base_path)  # CLIP, MetaCLIP 2, SigLIP or SigLIP 2, from its config
        classifier = maple_peft.PromptClassifier(
            base, AutoTokenizer.from_pretrained(base_path), class_names, template=args.template or data.template
        )
        classifier.image_processor, why_default = load_image_processor(base_path, base.config)
        if why_default:
            logger.warning(why_default)
    if args.tokenizer_name_or_path:
        classifier.tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name_or_path)
    classifier.text_batch_size = args.text_batch_size
    classifier.set_class_names(class_names)  # tokenized again with the tokenizer, template and chunk size set above
    dataset = ImageClassificationDataset(records, image_transforms(classifier.image_processor).test())
    loader = DataLoader(dataset, batch_size=args.eval_batch_size, num_workers=args.num_workers)
    given = {name: getattr(args, name) for name in test_time_fields() if getattr(args, name) is not None}
    with maple_peft.test_time_options(classifier.model, **given):  # checked against the adapter's method first
        classifier = accelerator.prepare_model(classifier.eval(), evaluation_mode=True)
        loader = accelerator.prepare(loader)
        result = evaluate_classifier(accelerator, classifier, loader, class_names, desc=args.subset)
    if given:
        result["test_time_options"] = given
    result.update(
        adapter=args.adapter,
        base_model=base_path,
        dataset=data.name,
        subset=args.subset,
        prompts=classifier.prompts[:5],
        num_skipped_images=dataset.num_skipped,
    )
    logger.info(f"{data.name} ({args.subset}): accuracy {result['accuracy']:.2f}%, macro-F1 {result['macro_f1']:.2f}%")
    if accelerator.is_main_process:
        if args.output is not None:
            run_dir = write_result_json(args.output, result)  # in a run folder: removed with the run
            logger.info(f"Wrote {args.output}" + (f" (recorded in {run_dir}'s evaluations.json)" if run_dir else ""))
        print(json.dumps({k: result[k] for k in ("accuracy", "macro_f1", "num_images", "num_classes")}))
    return result


def run_command_line(args: argparse.Namespace | list[str] | None = None) -> int:
    """`main` as the command line runs it, giving its exit code: 0 done; 2 refused (missing files, bad options, an
    adapter of another backbone, a busy run folder), in one line on stderr.

    Args:
        args: The parsed options, or an argument list as on the command line.
    """
    try:
        main(args)
    except (OSError, ValueError, TypeError, RunLockError) as error:
        if os.environ.get("RANK", "0") == "0":  # once, not once per process under `accelerate launch`
            print(f"error: {command_line_error(error, build_parser())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(run_command_line(ARGS))
