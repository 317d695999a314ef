#!/usr/bin/env python
"""Evaluate a MaPLe adapter (a folder or a Hub id) on any dataset and any class names.

    accelerate launch examples/evaluate.py --adapter user/maple-eurosat --dataset eurosat --data_root DATA --subset novel
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

from accelerate import Accelerator
from options import add_data_arguments  # the data options, declared once for both scripts
from torch.utils.data import DataLoader
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

import maple_peft
from maple_peft.training.data import CLIPTransforms, ImageClassificationDataset
from maple_peft.training.experiment import evaluate_classifier, load_experiment_data_from_args
from maple_peft.training.run_dir import atomic_write_json

logger = logging.getLogger("maple_peft.evaluate")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--eval_batch_size", type=int, default=100)
    p.add_argument("--text_batch_size", type=int, default=256)
    p.add_argument("--mixed_precision", default="no", choices=["no", "bf16", "fp16"])
    p.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1), help="data loading processes")
    p.add_argument("--output", default=None, help="write the metrics JSON to this file (default: print only)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    args = p.parse_args(argv)
    if args.output is not None:
        output = Path(args.output)
        if output.is_dir() or (output.exists() and not args.overwrite):
            what = "is a folder" if output.is_dir() else "exists"
            p.error(
                f"--output {output} {what}; pass another file name" + ("" if output.is_dir() else " or --overwrite")
            )
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO, stream=sys.stdout)
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
    else:  # zero-shot CLIP with the dataset's template
        base_path = args.model_name_or_path or "openai/clip-vit-base-patch16"
        clip = CLIPModel.from_pretrained(base_path)
        classifier = maple_peft.PromptClassifier(
            clip, AutoTokenizer.from_pretrained(base_path), class_names, template=args.template or data.template
        )
        try:
            classifier.image_processor = AutoImageProcessor.from_pretrained(base_path)
        except (OSError, ValueError):
            logger.warning(f"No image processor config in {base_path}; using CLIP's 224-px defaults")
    if args.tokenizer_name_or_path:
        classifier.tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name_or_path)
    classifier.text_batch_size = args.text_batch_size
    classifier.set_class_names(class_names)  # tokenized again with the tokenizer, template and chunk size set above
    dataset = ImageClassificationDataset(records, CLIPTransforms.from_processor(classifier.image_processor).test())
    loader = DataLoader(dataset, batch_size=args.eval_batch_size, num_workers=args.num_workers)
    classifier = accelerator.prepare_model(classifier.eval(), evaluation_mode=True)
    result = evaluate_classifier(accelerator, classifier, accelerator.prepare(loader), class_names, desc=args.subset)
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
            atomic_write_json(args.output, result)
            logger.info(f"Wrote {args.output}")
        print(json.dumps({k: result[k] for k in ("accuracy", "macro_f1", "num_images", "num_classes")}))
    return result


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError) as error:  # missing files, bad options, an adapter of another backbone
        sys.exit(f"error: {error}")
