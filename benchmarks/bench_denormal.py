"""A CPU training step with and without flushing subnormal floats to zero (`maple_peft.numerics.flush_denormal`).

On the ViT-B/16-shaped CLIP of `bench.py` (random weights), MaPLe (n_ctx=2, depth 9), 100 classes, batch 4: the
training step of `examples/train.py` (forward, cross-entropy, backward, `SGD(lr=0.0035, momentum=0.9,
weight_decay=5e-4).step()`), the first step and the steps after an optimizer step timed separately.

The flush flags belong to each thread, and torch's intra-op threads copy them when they start; toggling them later
changes the calling thread only. So each setting runs in a fresh process that sets it before any torch work (as the
training script does), and the two kinds of process alternate (A B, B A, ...), so that they share the machine's load;
the ratio is taken per pair of neighbouring processes and its median reported. The logits of the first step of both
settings are compared, and the number of subnormal floats in the parameters, gradients and momentum buffers after
the steps is recorded.

    python benchmarks/bench_denormal.py                    # CPU, 2 threads, 3 pairs: ~6-10 min on 2 shared cores
    python benchmarks/bench_denormal.py --pairs 5 --steps 6 --attn eager
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

RESULTS = Path(__file__).resolve().parent / "results"


def subnormal_count(tensors) -> int:
    import torch

    total = 0
    for t in tensors:
        if t is not None and t.is_floating_point():
            a = t.detach().abs()
            total += int(((a > 0) & (a < torch.finfo(t.dtype).tiny)).sum())
    return total


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One process: set the flush flags first, then build the model and time the steps."""
    import torch

    supported = torch.set_flush_denormal(spec["flush"])  # before any parallel op: the intra-op threads copy it
    torch.set_num_threads(spec["threads"])
    import torch.nn.functional as F
    from common import build_maple, class_names, load_tokenizer, trainable

    import maple_peft

    model = build_maple(12, spec["attn"])
    model.train()
    classifier = maple_peft.PromptClassifier(model, load_tokenizer(), class_names(spec["classes"]))
    pixel_values = torch.randn(spec["batch_size"], 3, 224, 224, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(spec["batch_size"]) % spec["classes"]
    params = trainable(model)
    optimizer = torch.optim.SGD(params, lr=0.0035, momentum=0.9, weight_decay=5e-4)
    times, first_logits = [], None
    for _ in range(spec["steps"]):
        start = time.perf_counter()
        logits = classifier(pixel_values)
        F.cross_entropy(logits, labels).backward()
        grads = [p.grad for p in params]
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        if first_logits is None:
            first_logits = logits.detach().flatten().tolist()
    momentum = [state["momentum_buffer"] for state in optimizer.state.values()]
    return {
        "flush": spec["flush"],
        "flush_supported": supported,
        "step_s": times,
        "first_logits": first_logits,
        "subnormals_after_steps": {
            "parameters": subnormal_count(model.parameters()),
            "last_gradients": subnormal_count(grads),
            "momentum_buffers": subnormal_count(momentum),
        },
    }


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3, help="pairs of processes (one of each setting)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per process (the first is separate)")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tag", default="cpu-denormal")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.pairs < 1 or args.steps < 2:
        parser.error("--pairs must be >= 1 and --steps >= 2 (the first step, then steps after an optimizer step)")
    from common import environment, median

    spec = {"classes": args.classes, "batch_size": args.batch_size, "threads": args.threads, "attn": args.attn}
    spec["steps"] = args.steps
    runs: list[dict[str, Any]] = []
    started = time.time()
    for pair in range(args.pairs):
        order = (False, True) if pair % 2 == 0 else (True, False)
        for flush in order:
            run = run_worker({**spec, "flush": flush})
            run["pair"] = pair
            runs.append(run)
            print(f"pair {pair} flush={flush}: steps {[round(t, 2) for t in run['step_s']]}", flush=True)

    def later(run):  # the steps after an optimizer step
        return median(run["step_s"][1:])

    ratios = []
    for pair in range(args.pairs):
        exact, flushed = (next(r for r in runs if r["pair"] == pair and r["flush"] is f) for f in (False, True))
        ratios.append(later(exact) / later(flushed))
    exact_logits = next(r for r in runs if not r["flush"])["first_logits"]
    flushed_logits = next(r for r in runs if r["flush"])["first_logits"]
    row = {}
    for flush in (False, True):
        mine = [r for r in runs if r["flush"] is flush]
        row[f"flush={flush}"] = {
            "first_step_s": median([r["step_s"][0] for r in mine]),
            "later_steps_s": median([later(r) for r in mine]),
            "later_steps_min_s": min(min(r["step_s"][1:]) for r in mine),
            "subnormals_after_steps": mine[-1]["subnormals_after_steps"],
        }
    result = {
        "settings": {**spec, "pairs": args.pairs},
        "environment": environment("cpu"),
        "runs": runs,
        "rows": row,
        "ratio_no_flush_over_flush_per_pair": ratios,
        "ratio_median": statistics.median(ratios),
        "first_logits_max_abs_diff": max(abs(a - b) for a, b in zip(exact_logits, flushed_logits)),
        "first_logits_max_abs": max(abs(a) for a in exact_logits),
        "seconds": round(time.time() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"# Training step with and without flushing subnormal floats ({args.attn}, {args.threads} threads)",
        "",
        f"ViT-B/16-shaped CLIP (random weights), MaPLe n_ctx=2 depth 9, {args.classes} classes, batch "
        f"{args.batch_size}; {args.pairs} pairs of fresh processes, {args.steps} steps each; "
        f"{result['environment']['date_utc']}, load average at start {result['environment'].get('load_average_at_start')}.",
        "",
        "| setting | first step (s) | steps after an optimizer step, median (s) | fastest (s) | subnormals after the steps (parameters / gradients / momentum) |",
        "|---|---:|---:|---:|---|",
    ]  # fmt: skip
    for name, r in row.items():
        s = r["subnormals_after_steps"]
        lines.append(
            f"| {name} | {r['first_step_s']:.2f} | {r['later_steps_s']:.2f} | {r['later_steps_min_s']:.2f} | "
            f"{s['parameters']} / {s['last_gradients']} / {s['momentum_buffers']} |"
        )
    lines += [
        "",
        f"Ratio no flush / flush of the steps after an optimizer step, per pair: {[round(x, 2) for x in ratios]} "
        f"(median {result['ratio_median']:.2f}). Logits of the first step: max abs difference "
        f"{result['first_logits_max_abs_diff']:.3g} (largest |logit| {result['first_logits_max_abs']:.3g}).",
        "",
    ]
    (args.out / f"{args.tag}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
