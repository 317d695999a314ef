"""Cost of PromptSRC's self-regulating loss: a training step with and without `maple_peft.SelfRegularizedLoss`.

On the ViT-B/16-shaped CLIP of `bench.py` (random weights), for MaPLe (n_ctx=2, depth 9) and PromptSRC's IVLP
(4 + 4 tokens, depth 9), at 100 classes by default, batch 4:

* `cross_entropy`: `PromptClassifier` logits + cross-entropy + backward + SGD step (what `train.py` runs today);
* `self_regularized`: the same step with `SelfRegularizedLoss` (one extra forward of the frozen image tower under
  `no_grad`, the three terms; the frozen text targets are computed once per class set, before timing);

timed interleaved in one process (`common.time_interleaved`), median of the repetitions; the ratio is taken within
each repetition (the two steps run next to each other) and its median reported. The one-time cost of the frozen text
targets (60 templates x classes prompts) is timed separately.

    python benchmarks/bench_regularization.py              # CPU: ~3 min on 2 shared cores
    python benchmarks/bench_regularization.py --device cuda --reps 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    PROMPT_INIT,
    TOKENIZER_DIR,
    build_clip,
    build_maple,
    class_names,
    environment,
    load_tokenizer,
    median,
    peft_model,
    synchronize,
    time_interleaved,
    trainable,
)

import maple_peft  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def build_promptsrc(layers: int, device: str):
    """PromptSRC's prompts: `variant="ivlp"`, 4 text + 4 vision tokens, depth 9, on the random ViT-B/16 CLIP."""
    config = maple_peft.MaPLeConfig(
        variant="ivlp",
        n_ctx=4,
        n_ctx_vision=4,
        depth=9,
        prompt_init=PROMPT_INIT,
        tokenizer_name_or_path=str(TOKENIZER_DIR),
    )
    torch.manual_seed(1)
    return peft_model(build_clip(layers), config).to(device)


def measure(model, tokenizer, n_classes: int, reps: int, device: str, batch_size: int) -> dict:
    model.train()
    names = class_names(n_classes)
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(batch_size, 3, 224, 224, generator=generator).to(device)
    labels = torch.arange(batch_size, device=device) % n_classes
    classifier = maple_peft.PromptClassifier(model, tokenizer, names)
    loss_fn = maple_peft.SelfRegularizedLoss(classifier)
    optimizer = torch.optim.SGD(trainable(model), lr=0.0, momentum=0.9)  # lr 0: same parameters at every step

    def step(compute) -> None:
        compute().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    fns = {
        "cross_entropy": lambda: step(lambda: F.cross_entropy(classifier(pixel_values).float(), labels)),
        "self_regularized": lambda: step(lambda: loss_fn(pixel_values, labels).loss),
    }
    synchronize(device)
    start = time.perf_counter()
    loss_fn.target_text_features()
    synchronize(device)
    targets_s = time.perf_counter() - start
    for fn in fns.values():  # untimed warm-up
        fn()
    times = time_interleaved(fns, reps, device)
    ratios = [r / c for r, c in zip(times["self_regularized"], times["cross_entropy"])]
    return {
        "classes": n_classes,
        "cross_entropy_s": median(times["cross_entropy"]),
        "self_regularized_s": median(times["self_regularized"]),
        "ratio_median": statistics.median(ratios),
        "targets_once_s": targets_s,
        "target_prompts": n_classes * len(maple_peft.IMAGENET_TEMPLATES),
        "times": times,
    }


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        "# Self-regulating loss (PromptSRC): training step with and without it",
        "",
        f"- command: `{result['command']}` (total {result['total_s'] / 60:.1f} min)",
        f"- date: {result['date']}; machine: {result['environment'].get('cpu', result['environment'].get('device'))}",
        f"- model: ViT-B/16-shaped CLIP, random weights, {s['layers']} layers per tower, float32, batch "
        f"{s['batch_size']}; median of {s['reps']} interleaved repetitions; ratio = median of the per-repetition "
        "ratios",
        "",
        "| adapter | classes | cross-entropy step (s) | self-regularized step (s) | ratio | frozen text targets, once (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['adapter']} | {row['classes']} | {row['cross_entropy_s']:.3f} | {row['self_regularized_s']:.3f} "
            f"| {row['ratio_median']:.2f}x | {row['targets_once_s']:.1f} ({row['target_prompts']} prompts) |"
        )
    lines += [
        "",
        "The self-regularized step adds one forward of the frozen image tower (no backward) and the three terms; the "
        "frozen text targets (60 templates per class) are computed once per class set and cached, so they are not "
        "part of the step.",
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--classes", type=int, nargs="+", default=[100])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--layers", type=int, default=12, help="layers per tower (depth 9 needs >= 9)")
    parser.add_argument("--adapters", nargs="+", choices=("maple", "promptsrc"), default=["maple", "promptsrc"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tag", help="result file name (default: <device>-regularization)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    tokenizer = load_tokenizer()
    rows = []
    for adapter in args.adapters:
        if adapter == "maple":
            model = build_maple(args.layers, device=args.device)
        else:
            model = build_promptsrc(args.layers, args.device)
        for n_classes in args.classes:
            print(f"[{time.strftime('%H:%M:%S')}] {adapter}: {n_classes} classes", flush=True)
            row = measure(model, tokenizer, n_classes, args.reps, args.device, args.batch_size)
            rows.append({"adapter": adapter, **row})
            print(
                f"  cross-entropy {row['cross_entropy_s']:.3f} s, self-regularized {row['self_regularized_s']:.3f} s, "
                f"ratio {row['ratio_median']:.2f}x, targets once {row['targets_once_s']:.1f} s",
                flush=True,
            )
        del model
    result = {
        "command": "python benchmarks/bench_regularization.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "tag")},
        "environment": environment(args.device),
        "rows": rows,
        "total_s": time.perf_counter() - start,
    }
    tag = args.tag or f"{args.device.split(':')[0]}-regularization"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{tag}.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    (args.out / f"{tag}.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))


if __name__ == "__main__":
    main()
