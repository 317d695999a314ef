"""MaPLe's training and evaluation cost: maple_peft against the original code's way of computing (issue 4).

Measures, on a ViT-B/16-shaped CLIP with random weights (MaPLe n_ctx=2, depth=9), for several class counts:

* training step time (forward + backward + SGD step, batch 4) of `maple_peft.PromptClassifier` and of the baseline
  (`baseline.OriginalMaPLeBaseline`: prompts padded to 77 tokens, all prompts re-encoded at every call, float32),
  interleaved in one process, median of several repetitions, with the logits and gradients of both compared;
* evaluation throughput over a test set (text features included) against plain CLIP image encoding (the lower bound);
* peak memory of one training step against the class count, each configuration in a fresh subprocess;
* options: SDPA vs eager attention, bf16 autocast, gradient checkpointing, torch.compile, channels-last (GPU) and
  the shared-prefix text encoding against the text tower's own forward (`PromptClassifier(shared_prefix=False)`).

Results go to `benchmarks/results/<device>-<quick|full>.json`, `<device>-<quick|full>.md`, `latest.md` and a plot;
see benchmarks/README.md.

    python benchmarks/bench.py --quick                 # CPU, reduced settings
    python benchmarks/bench.py                         # CPU, fuller settings (about 25-30 min on 2 cores)
    python benchmarks/bench.py --device cuda           # GPU: the library in bf16 autocast, the baseline in float32
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baseline import OriginalMaPLeBaseline  # noqa: E402
from common import (  # noqa: E402
    PROMPT_INIT,
    PeakMemory,
    build_clip,
    build_maple,
    class_names,
    environment,
    image_size,
    load_tokenizer,
    median,
    time_interleaved,
    trainable,
)

import maple_peft  # noqa: E402
from maple_peft.shared_prefix import common_prefix_length  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("train", "eval", "options", "memory")

# Measurement profiles. Budgets: a method whose timed runs already total more than its budget (seconds) is not
# repeated further, so that a slow baseline step gets fewer repetitions than a fast one (the counts are recorded).
PROFILES: dict[str, dict[str, Any]] = {
    "cpu-quick": dict(
        train_classes=[10, 100],
        baseline_train_max=100,
        reps=3,
        lib_budget_s=30.0,
        baseline_budget_s=20.0,
        eval_classes=[10, 100, 1000],
        baseline_eval_max=100,
        eval_reps=3,
        eval_images=256,
        eval_batch_size=16,
        baseline_eval_budget_s=10.0,
        e2e=False,
        options_classes=[100],
        options_variants="quick",
        options_reps=2,
        options_text_classes=None,
        options_eval_batch_size=None,
        compile=False,
        memory_checkpointing_classes=[1000],
        memory_lib_classes=[1000],
        memory_baseline_classes=[10, 50],
        memory_eval_classes=[],
        memory_no_shared_prefix_classes=[],
    ),
    "cpu-full": dict(
        train_classes=[10, 100, 500, 1000],
        baseline_train_max=500,  # 1000 classes x 77 tokens: ~28 GB of activations for the baseline's backward
        reps=4,
        lib_budget_s=45.0,
        baseline_budget_s=100.0,
        eval_classes=[10, 100, 500, 1000],
        baseline_eval_max=1000,
        eval_reps=7,
        eval_images=256,
        eval_batch_size=32,
        baseline_eval_budget_s=40.0,
        e2e=False,
        options_classes=[100],
        options_variants="all",
        options_reps=2,
        options_text_classes=1000,
        options_eval_batch_size=8,
        compile=False,  # no gain on this CPU in two runs (1.12x, 1.16x slower) for 1-4 min of compilation: --compile
        memory_checkpointing_classes=[10, 100, 500, 1000],
        memory_lib_classes=[1000],
        memory_baseline_classes=[10, 100, 250],
        memory_eval_classes=[1000, 5000, 21000],
        memory_no_shared_prefix_classes=[1000],
    ),
    "cuda-quick": dict(
        train_classes=[10, 100, 500, 1000],
        baseline_train_max=1000,
        reps=5,
        lib_budget_s=20.0,
        baseline_budget_s=30.0,
        eval_classes=[10, 100, 500, 1000],
        baseline_eval_max=1000,
        eval_reps=5,
        eval_images=512,
        eval_batch_size=64,
        baseline_eval_budget_s=20.0,
        e2e=True,
        options_classes=[100],
        options_variants="all",
        options_reps=5,
        options_text_classes=1000,
        options_eval_batch_size=64,
        compile=False,
        memory_checkpointing_classes=[100, 1000],
        memory_lib_classes=[1000],
        memory_baseline_classes=[10, 100, 1000],
        memory_eval_classes=[21000],
        memory_no_shared_prefix_classes=[],
    ),
    "cuda-full": dict(
        train_classes=[10, 100, 500, 1000],
        baseline_train_max=1000,
        reps=10,
        lib_budget_s=30.0,
        baseline_budget_s=60.0,
        eval_classes=[10, 100, 500, 1000],
        baseline_eval_max=1000,
        eval_reps=10,
        eval_images=512,
        eval_batch_size=64,
        baseline_eval_budget_s=30.0,
        e2e=True,
        options_classes=[100, 500],
        options_variants="all",
        options_reps=10,
        options_text_classes=21000,
        options_eval_batch_size=64,
        compile=True,
        memory_checkpointing_classes=[10, 100, 500, 1000, 2000, 5000],
        memory_lib_classes=[10, 100, 500, 1000],
        memory_baseline_classes=[10, 100, 500, 1000],
        memory_eval_classes=[1000, 21000],
        memory_no_shared_prefix_classes=[1000],
    ),
}


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The measurement settings: the profile's defaults, overridden by explicit arguments."""
    cuda = args.device.startswith("cuda")
    profile = f"{'cuda' if cuda else 'cpu'}-{'quick' if args.quick else 'full'}"
    s = dict(PROFILES[profile])
    s.update(
        profile=profile,
        device=args.device,
        dtype=args.dtype or ("bf16" if cuda else "float32"),
        batch_size=args.batch_size,
        layers=args.layers,
        shape=args.shape,
        attn=args.attn,
        text_batch_size=args.text_batch_size,
        checkpoint_text_batch_size=args.checkpoint_text_batch_size,
        malloc=args.malloc,
        quick=args.quick,
    )
    for key in ("train_classes", "eval_classes", "reps", "eval_images", "eval_batch_size"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    for key in ("baseline_train_max", "baseline_eval_max"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    if args.memory_classes is not None:
        s["memory_checkpointing_classes"] = args.memory_classes
        s["memory_lib_classes"] = [c for c in s["memory_lib_classes"] if c in args.memory_classes]
    if args.compile is not None:
        s["compile"] = args.compile
    if args.override:
        unknown = set(args.override) - set(s)
        if unknown:
            raise SystemExit(f"--override: unknown settings {sorted(unknown)}; known: {sorted(s)}")
        s.update(args.override)
    return s


# ---- helpers -----------------------------------------------------------------------------------------------------------


def bf16_autocast(device: str):
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16)


def autocast(s: dict[str, Any], enabled: bool = True):
    """bf16 autocast where the profile runs the library in bf16, else nothing."""
    return bf16_autocast(s["device"]) if s["dtype"] == "bf16" and enabled else contextlib.nullcontext()


BF16_ENV = "MAPLE_PEFT_BENCH_BF16"


def bf16_native_cpu() -> bool:
    """Whether the CPU has native bf16 matrix instructions (AVX512-BF16 or AMX).

    The environment variable `MAPLE_PEFT_BENCH_BF16` (`1` or `0`) overrides the detection, so that the bf16 training
    rows of the options section can be measured (or skipped) on any CPU.
    """
    forced = os.environ.get(BF16_ENV)
    if forced is not None:
        if forced not in ("0", "1"):
            raise SystemExit(f"{BF16_ENV}={forced!r} is not a valid value; use 1 (measure bf16) or 0 (skip it)")
        return forced == "1"
    try:
        with open("/proc/cpuinfo") as info:
            flags = info.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def flat_grad(params: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([p.grad.detach().flatten().float() for p in params]).cpu()


def diff(a: torch.Tensor | None, b: torch.Tensor | None) -> float | None:
    if a is None or b is None:
        return None
    return (a.float().cpu() - b.float().cpu()).abs().max().item()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def prompt_lengths(input_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    return (input_ids == eos_token_id).int().argmax(dim=-1) + 1


def nan(value: float | None) -> float:
    return float("nan") if value is None else value


class Stepper:
    """Training steps of one way of computing the logits; keeps the logits and gradients of its first step.

    The SGD optimizer has lr=0: the update still runs (momentum buffers included), but the parameters never change,
    so every method sees the same parameters at every step and their logits can be compared after timing.
    """

    def __init__(self, forward: Callable, model: torch.nn.Module, labels: torch.Tensor, ctx: Callable) -> None:
        self.forward, self.labels, self.ctx = forward, labels, ctx
        self.params = trainable(model)
        self.optimizer = torch.optim.SGD(self.params, lr=0.0, momentum=0.9)
        self.logits: torch.Tensor | None = None
        self.grad: torch.Tensor | None = None

    def __call__(self, pixel_values: torch.Tensor) -> None:
        with self.ctx():
            logits = self.forward(pixel_values)
        loss = F.cross_entropy(logits.float(), self.labels)
        loss.backward()
        if self.logits is None:
            self.logits = logits.detach().float().cpu()
            self.grad = flat_grad(self.params)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


# ---- training ------------------------------------------------------------------------------------------------------------


def train_section(s, model, tokenizer, names, pixel_values, labels) -> list[dict[str, Any]]:
    device = s["device"]
    cuda = device.startswith("cuda")
    eos = model.get_base_model().config.text_config.eos_token_id
    model.train()
    rows = []
    for n_classes in s["train_classes"]:
        log(f"train: {n_classes} classes")
        y = labels % n_classes
        clf = maple_peft.PromptClassifier(model, tokenizer, names[n_classes], text_batch_size=s["text_batch_size"])
        ids = clf.input_ids()
        lengths = prompt_lengths(ids, eos)
        # tokens the classifier runs: each prompt up to its end token, the shared prefix once when it is used
        prefix = common_prefix_length(ids, lengths.tolist()) if clf.shared_prefix_reason() is None else 0
        encoded_tokens = prefix + int((lengths - prefix).sum())
        steppers = {"maple_peft": Stepper(clf, model, y, lambda: autocast(s))}
        if s["dtype"] == "bf16":
            steppers["maple_peft_fp32"] = Stepper(clf, model, y, contextlib.nullcontext)
        # the part of a step no text-side optimization can remove: the same step with constant text features
        text_constant = torch.nn.functional.normalize(clf.text_features().detach().float(), dim=-1)
        steppers["image_tower_only"] = Stepper(
            lambda x, t=text_constant, c=clf: model.logit_scale.exp() * c.image_features(x) @ t.to(x.dtype).t(),
            model,
            y,
            lambda: autocast(s),
        )
        run_baseline = n_classes <= s["baseline_train_max"]
        if run_baseline:
            baseline = OriginalMaPLeBaseline(model, tokenizer, names[n_classes], PROMPT_INIT)
            steppers["baseline"] = Stepper(baseline, model, y, contextlib.nullcontext)
        error = None
        try:
            # untimed warm-up; on CPU the baseline only where its step is cheap (its first timed step then includes
            # one-time costs, a negligible part of a long step)
            for name, stepper in steppers.items():
                if name != "baseline" or n_classes <= 10 or cuda:
                    stepper(pixel_values)
            fns = {name: (lambda st=stepper: st(pixel_values)) for name, stepper in steppers.items()}
            times = time_interleaved(
                fns, s["reps"], device, {"baseline": s["baseline_budget_s"]}, default_budget_s=s["lib_budget_s"]
            )
        except torch.OutOfMemoryError as oom:  # the baseline at many classes on a small GPU
            error = f"out of memory: {str(oom).splitlines()[0]}"
            steppers.pop("baseline", None)
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            fns = {name: (lambda st=stepper: st(pixel_values)) for name, stepper in steppers.items()}
            times = time_interleaved(fns, s["reps"], device, default_budget_s=s["lib_budget_s"])
        lib, base = steppers["maple_peft"], steppers.get("baseline")
        ref = steppers.get("maple_peft_fp32", lib)
        row: dict[str, Any] = {
            "classes": n_classes,
            "prompt_tokens_mean": lengths.float().mean().item(),
            "prompt_tokens_trimmed": ids.shape[1],
            "text_tokens_per_step": {"maple_peft": encoded_tokens, "baseline": n_classes * 77},
            "times_s": times,
            "maple_peft_s": median(times["maple_peft"]),
            "baseline_s": median(times.get("baseline", [])),
            "image_tower_only_s": median(times["image_tower_only"]),
            "logits_max_abs_diff_fp32": diff(ref.logits, base.logits) if base else None,
            "logits_max_abs": base.logits.abs().max().item() if base else None,
            "grad_max_abs_diff_fp32": diff(ref.grad, base.grad) if base else None,
            "grad_max_abs": base.grad.abs().max().item() if base else None,
        }
        if "maple_peft_fp32" in steppers:
            row["maple_peft_fp32_s"] = median(times["maple_peft_fp32"])
            row["logits_max_abs_diff_bf16_vs_fp32"] = diff(lib.logits, ref.logits)
            if row["baseline_s"]:
                row["speedup_fp32"] = row["baseline_s"] / row["maple_peft_fp32_s"]
        if not run_baseline:
            row["baseline_note"] = (
                f"not run above {s['baseline_train_max']} classes in this profile (on CPU: a step takes minutes, and "
                "at 1000 classes its activations need ~28 GB, more than this machine has)"
            )
        if error:
            row["baseline_note"] = error
        row["speedup"] = row["baseline_s"] / row["maple_peft_s"] if row["baseline_s"] else None
        # the largest speedup any text-side optimization could give: baseline / (step without the text tower)
        row["speedup_bound"] = row["baseline_s"] / row["image_tower_only_s"] if row["baseline_s"] else None
        rows.append(row)
        log(
            f"  maple_peft {row['maple_peft_s']:.3f}s  baseline {nan(row['baseline_s']):.3f}s  "
            f"speedup {nan(row['speedup']):.2f}x  max|dlogits| {row['logits_max_abs_diff_fp32']}"
        )
    return rows


# ---- evaluation ----------------------------------------------------------------------------------------------------------


def eval_section(s, model, plain, tokenizer, names) -> dict[str, Any]:
    device, batch = s["device"], s["eval_batch_size"]
    model.eval()
    plain.eval()
    px = image_size(s["shape"])
    pixel_values = torch.randn(batch, 3, px, px, generator=torch.Generator().manual_seed(1)).to(device)
    largest = max(s["eval_classes"])
    tbs = s["text_batch_size"]
    clf = maple_peft.PromptClassifier(model, tokenizer, names[largest], text_batch_size=tbs)
    baselines = {
        c: OriginalMaPLeBaseline(model, tokenizer, names[c], PROMPT_INIT)
        for c in s["eval_classes"]
        if c <= s["baseline_eval_max"]
    }
    outputs: dict[int, torch.Tensor] = {}

    def plain_batch():
        with autocast(s):
            features = plain.get_image_features(pixel_values=pixel_values).pooler_output
            return features / features.norm(dim=-1, keepdim=True)

    def text(c):
        # a fresh classifier: tokenization + encoding of the prompts, once per test set
        with autocast(s):
            maple_peft.PromptClassifier(model, tokenizer, names[c], text_batch_size=tbs).text_features()

    def lib_batch():
        with autocast(s):
            return clf(pixel_values)

    def base_batch(c):
        outputs[c] = baselines[c](pixel_values)

    fns: dict[str, Callable] = {"plain": plain_batch, "maple_peft_batch": lib_batch}
    fns.update({f"text_{c}": (lambda c=c: text(c)) for c in s["eval_classes"]})
    fns.update({f"baseline_{c}": (lambda c=c: base_batch(c)) for c in baselines})
    with torch.no_grad():
        log("eval: warm-up")
        for name, fn in fns.items():
            if not name.startswith("baseline_") or int(name.split("_")[1]) <= 10 or device.startswith("cuda"):
                fn()
        log(f"eval: timing {list(fns)}")
        budget = {name: s["baseline_eval_budget_s"] for name in fns if name.startswith("baseline_")}
        times = time_interleaved(fns, s["eval_reps"], device, budget)
        diffs = {}
        for c in baselines:
            lib_c = maple_peft.PromptClassifier(model, tokenizer, names[c], text_batch_size=tbs)
            diffs[c] = diff(lib_c(pixel_values), outputs.get(c))  # float32 here when dtype is float32

    n_images = s["eval_images"]
    n_batches = math.ceil(n_images / batch)
    t_plain, t_lib = median(times["plain"]), median(times["maple_peft_batch"])
    paired = sorted(a / b for a, b in zip(times["maple_peft_batch"], times["plain"]))
    rows = []
    for c in s["eval_classes"]:
        t_text = median(times[f"text_{c}"])
        t_base = median(times.get(f"baseline_{c}", []))
        lib_ips = n_images / (t_text + n_batches * t_lib)
        plain_ips = n_images / (n_batches * t_plain)
        base_ips = batch / t_base if t_base else None
        # the ratio to plain CLIP from the runs of the same repetition (run next to each other, so under the same
        # load), median over the repetitions: robust to the machine's load drifting during the section
        per_rep = [
            (n_batches * plain_t) / (text_t + n_batches * lib_t)
            for plain_t, lib_t, text_t in zip(times["plain"], times["maple_peft_batch"], times[f"text_{c}"])
        ]
        rows.append(
            {
                "classes": c,
                "text_features_s": t_text,
                "plain_images_per_s": plain_ips,
                "maple_peft_images_per_s": lib_ips,
                "maple_peft_steady_images_per_s": batch / t_lib,
                "baseline_images_per_s": base_ips,
                "maple_peft_vs_plain": median(per_rep),
                "maple_peft_vs_plain_per_repetition": per_rep,
                "maple_peft_vs_plain_of_medians": lib_ips / plain_ips,
                "speedup_vs_baseline": lib_ips / base_ips if base_ips else None,
                "logits_max_abs_diff_vs_baseline": diffs.get(c),
                "baseline_runs": len(times.get(f"baseline_{c}", [])),
                "baseline_note": None if t_base else f"not run above {s['baseline_eval_max']} classes in this profile",
            }
        )
        log(
            f"  {c} classes: plain {plain_ips:.2f} img/s, maple_peft {lib_ips:.2f} img/s "
            f"({lib_ips / plain_ips:.3f} of plain), baseline {nan(base_ips):.2f} img/s"
        )
    result: dict[str, Any] = {
        "test_images": n_images,
        "batch_size": batch,
        "batches": n_batches,
        "plain_batch_s": t_plain,
        "maple_peft_batch_s": t_lib,
        "maple_peft_over_plain_batch_time_paired_median": median(paired),
        "times_s": times,
        "rows": rows,
        "method": (
            "timed interleaved: the per-batch time of plain CLIP image encoding and of maple_peft (text features "
            "cached), the one-time text features of a fresh PromptClassifier (tokenization + encoding of all prompts), "
            "and the baseline's per-batch time (all prompts at 77 tokens + the images; the same for every batch). "
            "Throughput over the test set = images / (text features + batches × batch time). maple_peft / plain: "
            "that ratio computed within each repetition (the runs of one repetition are adjacent in time), median "
            "over the repetitions."
        ),
    }
    if s["e2e"]:
        log(f"eval: end-to-end check over {n_images} images at {largest} classes")

        def loop_lib():
            fresh = maple_peft.PromptClassifier(model, tokenizer, names[largest], text_batch_size=tbs)
            with autocast(s):
                for _ in range(n_batches):
                    fresh(pixel_values)

        def loop_plain():
            for _ in range(n_batches):
                plain_batch()

        with torch.no_grad():
            e2e = time_interleaved({"plain": loop_plain, "maple_peft": loop_lib}, 3, device)
        t_plain_e2e, t_lib_e2e = median(e2e["plain"]), median(e2e["maple_peft"])
        result["end_to_end"] = {
            "classes": largest,
            "runs": len(e2e["plain"]),
            "plain_images_per_s": n_images / t_plain_e2e,
            "maple_peft_images_per_s": n_images / t_lib_e2e,
            "maple_peft_vs_plain": t_plain_e2e / t_lib_e2e,
        }
        log(f"  end-to-end: {result['end_to_end']}")
    return result


# ---- options ---------------------------------------------------------------------------------------------------------------


def options_section(s, model, plain, tokenizer, names, pixel_values, labels) -> dict[str, Any]:
    device = s["device"]
    cuda = device.startswith("cuda")
    attn = s["attn"]
    other = "eager" if attn == "sdpa" else "sdpa"
    everything = s["options_variants"] == "all"
    tbs, ckpt_tbs = s["text_batch_size"], s["checkpoint_text_batch_size"]
    fp32 = contextlib.nullcontext
    bf16 = lambda: bf16_autocast(device)  # noqa: E731
    # bf16 autocast is native on recent GPUs; on CPUs without AVX512-BF16/AMX it is emulated and many times slower,
    # so there it is measured on the evaluation batch only
    bf16_fast = cuda or bf16_native_cpu()
    model_other = plain_other = model_cl = compiled = None
    if everything:
        log(f"options: building {other} copies of the models")
        model_other = build_maple(s["layers"], other, device=device, shape=s["shape"])
        model_other.load_state_dict(model.state_dict())
        plain_other = build_clip(s["layers"], other, device=device, shape=s["shape"])
        plain_other.load_state_dict(plain.state_dict())
    if everything and cuda:  # channels-last changes the patch-embedding convolution only (the one 4-D op)
        model_cl = build_maple(s["layers"], attn, device=device, shape=s["shape"])
        model_cl.load_state_dict(model.state_dict())
        model_cl.to(memory_format=torch.channels_last)
    results: dict[str, Any] = {"attn_other": other, "train": [], "bf16_train_measured": bf16_fast}
    reference = f"maple_peft fp32 {attn}"
    for n_classes in s["options_classes"]:
        log(f"options: training step at {n_classes} classes")
        y = labels % n_classes
        nc = names[n_classes]
        for m in (model, model_other, model_cl):
            if m is not None:
                m.train()
        variants: dict[str, Stepper] = {
            reference: Stepper(maple_peft.PromptClassifier(model, tokenizer, nc, text_batch_size=tbs), model, y, fp32),
            f"maple_peft fp32 {attn} shared_prefix=False (text tower's own forward)": Stepper(
                maple_peft.PromptClassifier(model, tokenizer, nc, text_batch_size=tbs, shared_prefix=False),
                model,
                y,
                fp32,
            ),
        }
        if everything:
            variants[f"maple_peft fp32 {other}"] = Stepper(
                maple_peft.PromptClassifier(model_other, tokenizer, nc, text_batch_size=tbs), model_other, y, fp32
            )
            variants[f"maple_peft fp32 {attn} checkpointing text_batch_size={ckpt_tbs}"] = Stepper(
                maple_peft.PromptClassifier(
                    model, tokenizer, nc, text_batch_size=ckpt_tbs, gradient_checkpointing=True
                ),
                model,
                y,
                fp32,
            )
        if bf16_fast:
            variants[f"maple_peft bf16-autocast {attn}"] = Stepper(
                maple_peft.PromptClassifier(model, tokenizer, nc, text_batch_size=tbs), model, y, bf16
            )
        if model_cl is not None:
            model_cl.train()
            variants[f"maple_peft bf16-autocast {attn} channels-last"] = Stepper(
                maple_peft.PromptClassifier(model_cl, tokenizer, nc, text_batch_size=tbs), model_cl, y, bf16
            )
        if everything:
            variants[f"baseline fp32 {attn}"] = Stepper(
                OriginalMaPLeBaseline(model, tokenizer, nc, PROMPT_INIT), model, y, fp32
            )
            variants[f"baseline fp32 {other}"] = Stepper(
                OriginalMaPLeBaseline(model_other, tokenizer, nc, PROMPT_INIT), model_other, y, fp32
            )
        compile_note = None
        if s["compile"]:
            try:
                if compiled is None:
                    log("options: torch.compile of both towers")
                    compiled = build_maple(s["layers"], attn, device=device, shape=s["shape"])
                    compiled.load_state_dict(model.state_dict())
                    inner = compiled.get_base_model()
                    inner.vision_model.compile(dynamic=False)
                    inner.text_model.compile(dynamic=False)
                compiled.train()
                for dtype_name, ctx in (("fp32", fp32),) + ((("bf16-autocast", bf16),) if bf16_fast else ()):
                    stepper = Stepper(
                        maple_peft.PromptClassifier(compiled, tokenizer, nc, text_batch_size=tbs), compiled, y, ctx
                    )
                    start = time.perf_counter()
                    stepper(pixel_values)
                    note = f"first {dtype_name} step (compilation) {time.perf_counter() - start:.1f}s"
                    compile_note = f"{compile_note}; {note}" if compile_note else note
                    variants[f"maple_peft {dtype_name} {attn} torch.compile"] = stepper
            except Exception as error:  # noqa: BLE001 - a compiler missing or failing is a result to report
                compile_note = f"torch.compile failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
        inputs = {name: pixel_values for name in variants}
        for name in variants:
            if "channels-last" in name:
                inputs[name] = pixel_values.contiguous(memory_format=torch.channels_last)
        for name, stepper in variants.items():
            if stepper.logits is None and (not name.startswith("baseline") or n_classes <= 10 or cuda):
                stepper(inputs[name])  # warm-up; also the logits for the comparison
        fns = {name: (lambda st=stepper, x=inputs[name]: st(x)) for name, stepper in variants.items()}
        budget = {name: s["baseline_budget_s"] / 3 for name in fns if name.startswith("baseline")}
        times = time_interleaved(fns, s["options_reps"], device, budget, default_budget_s=s["lib_budget_s"])
        rows = []
        for name, stepper in variants.items():
            rows.append(
                {
                    "variant": name,
                    "seconds": median(times[name]),
                    "times_s": times[name],
                    "relative_to_default": median(times[name]) / median(times[reference]),
                    "logits_max_abs_diff_vs_default": diff(stepper.logits, variants[reference].logits),
                    "grad_max_abs_diff_vs_default": diff(stepper.grad, variants[reference].grad),
                }
            )
            log(f"  {name}: {rows[-1]['seconds']:.3f}s ({rows[-1]['relative_to_default']:.2f}x)")
        results["train"].append(
            {
                "classes": n_classes,
                "rows": rows,
                "compile": compile_note,
                # the scale to compare the logits differences to (logits are logit_scale x cosine)
                "default_logits_max_abs": variants[reference].logits.abs().max().item(),
            }
        )

    if s["options_text_classes"]:
        results["text_features"] = text_features_options(s, model, tokenizer)
    if s["options_eval_batch_size"]:
        results["eval"] = eval_options(s, model, plain, model_other, plain_other, tokenizer, names, bf16_fast)
    return results


def text_features_options(s, model, tokenizer) -> dict[str, Any]:
    """Evaluation text features of many classes: a fresh classifier each time (tokenization + encoding, no grad)."""
    many = s["options_text_classes"]
    log(f"options: evaluation text features of {many} classes")
    many_names = class_names(many)
    variants = {
        "maple_peft": {},
        "maple_peft shared_prefix=False": {"shared_prefix": False},
    }
    model.eval()
    out: dict[str, torch.Tensor] = {}

    def text_fn(name, kwargs):
        def run():
            with autocast(s):
                clf = maple_peft.PromptClassifier(
                    model, tokenizer, many_names, text_batch_size=s["text_batch_size"], **kwargs
                )
                out[name] = clf.text_features()

        return run

    fns = {name: text_fn(name, kwargs) for name, kwargs in variants.items()}
    with torch.no_grad():
        times = time_interleaved(fns, s["eval_reps"], s["device"])
    rows = [
        {
            "variant": name,
            "seconds": median(times[name]),
            "times_s": times[name],
            "relative_to_maple_peft": median(times[name]) / median(times["maple_peft"]),
            "max_abs_diff_vs_maple_peft": diff(out[name], out["maple_peft"]),
        }
        for name in fns
    ]
    for row in rows:
        log(f"  {row['variant']}: {row['seconds']:.3f}s ({row['relative_to_maple_peft']:.2f}x)")
    return {"classes": many, "rows": rows}


def eval_options(s, model, plain, model_other, plain_other, tokenizer, names, bf16_fast) -> dict[str, Any]:
    """Evaluation image batch: attention implementations and bf16 autocast, for plain CLIP and maple_peft."""
    device, attn, other = s["device"], s["attn"], "eager" if s["attn"] == "sdpa" else "sdpa"
    size = s["options_eval_batch_size"]
    log(f"options: evaluation batch of {size} images")
    model.eval()
    px = image_size(s["shape"])
    batch = torch.randn(size, 3, px, px, generator=torch.Generator().manual_seed(2)).to(device)
    classes = max(s["options_classes"])
    bf16 = lambda: bf16_autocast(device)  # noqa: E731
    fp32 = contextlib.nullcontext

    def image(m, ctx):
        def run():
            with ctx():
                return m.get_image_features(pixel_values=batch).pooler_output

        return run

    def classify(c, ctx):
        def run():
            with ctx():
                return c(batch)

        return run

    clf = maple_peft.PromptClassifier(model, tokenizer, names[classes], text_batch_size=s["text_batch_size"])
    fns = {f"plain CLIP fp32 {attn}": image(plain, fp32), f"maple_peft fp32 {attn}": classify(clf, fp32)}
    if model_other is not None:
        model_other.eval()
        plain_other.eval()
        clf_other = maple_peft.PromptClassifier(
            model_other, tokenizer, names[classes], text_batch_size=s["text_batch_size"]
        )
        fns[f"plain CLIP fp32 {other}"] = image(plain_other, fp32)
        fns[f"maple_peft fp32 {other}"] = classify(clf_other, fp32)
    fns[f"plain CLIP bf16-autocast {attn}"] = image(plain, bf16)
    fns[f"maple_peft bf16-autocast {attn}"] = classify(
        maple_peft.PromptClassifier(model, tokenizer, names[classes], text_batch_size=s["text_batch_size"]), bf16
    )
    # emulated bf16 on CPU: one timed run after the untimed one that gives the outputs
    budget = {name: 0.0 for name in fns if "bf16" in name and not bf16_fast}
    with torch.no_grad():
        outs = {name: fn() for name, fn in fns.items()}
        times = time_interleaved(fns, s["options_reps"], device, budget)
    ref = f"plain CLIP fp32 {attn}"
    rows = [
        {
            "variant": name,
            "seconds": median(times[name]),
            "runs": len(times[name]),
            "images_per_s": size / median(times[name]),
            "relative_to_plain_fp32": median(times[name]) / median(times[ref]),
            "max_abs_diff_vs_fp32": diff(outs[name], outs[name.replace("bf16-autocast", "fp32")])
            if "bf16" in name
            else None,
        }
        for name in fns
    ]
    for row in rows:
        log(f"  {row['variant']}: {row['images_per_s']:.2f} img/s ({row['relative_to_plain_fp32']:.2f}x time)")
    return {"batch_size": size, "classes": classes, "rows": rows}


# ---- memory ----------------------------------------------------------------------------------------------------------------

MEMORY_KINDS = (
    "train-baseline",
    "train-maple_peft",
    "train-maple_peft-checkpointing",
    "train-maple_peft-no-shared-prefix",
    "eval-maple_peft",
)


def memory_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in this (fresh) process: peak memory of one training step, or of the evaluation text
    features + one image batch, above the memory in use once the model, classifier and inputs exist."""
    device, kind = spec["device"], spec["kind"]
    if kind not in MEMORY_KINDS:
        raise ValueError(f"unknown memory configuration {kind!r}; one of {MEMORY_KINDS}")
    model = build_maple(spec["layers"], spec["attn"], device=device, shape=spec["shape"])
    tokenizer = load_tokenizer()
    names = class_names(spec["classes"])
    batch = spec["batch_size"] if kind.startswith("train") else spec["eval_batch_size"]
    px = image_size(spec["shape"])
    pixel_values = torch.randn(batch, 3, px, px).to(device)
    labels = (torch.arange(batch) % spec["classes"]).to(device)
    if kind == "train-baseline":
        forward = OriginalMaPLeBaseline(model, tokenizer, names, PROMPT_INIT)
    else:
        forward = maple_peft.PromptClassifier(
            model,
            tokenizer,
            names,
            text_batch_size=spec["text_batch_size"],
            gradient_checkpointing=kind == "train-maple_peft-checkpointing",
            shared_prefix=kind != "train-maple_peft-no-shared-prefix",
        )
        forward.input_ids()
    use_autocast = kind != "train-baseline"
    start = time.perf_counter()
    try:
        if kind.startswith("train"):
            model.train()
            params = trainable(model)
            optimizer = torch.optim.SGD(params, lr=0.0, momentum=0.9)
            with PeakMemory(device) as peak:
                with autocast(spec, use_autocast):
                    logits = forward(pixel_values)
                F.cross_entropy(logits.float(), labels).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        else:
            model.eval()
            with torch.no_grad(), PeakMemory(device) as peak, autocast(spec):
                forward(pixel_values)
    except torch.OutOfMemoryError as oom:
        return {"error": f"out of memory: {str(oom).splitlines()[0]}"}
    method = peak.method
    if not device.startswith("cuda"):
        threshold = os.environ.get("MALLOC_MMAP_THRESHOLD_")
        method += f"; glibc MALLOC_MMAP_THRESHOLD_={threshold}" if threshold else "; glibc malloc defaults"
    return {
        "increase_mb": peak.increase_mb,
        "start_mb": peak.start_mb,
        "peak_mb": peak.peak_mb,
        "method": method,
        "seconds": time.perf_counter() - start,
    }


# glibc keeps freed heap memory and raises its mmap threshold as large blocks are freed, so the peak RSS of a process
# that allocates and frees activations chunk after chunk measures glibc's retained heap more than live tensors. A fixed
# mmap threshold (which also disables the dynamic one) returns every freed block of 64 KiB or more to the OS at once:
# then the peak RSS follows the live tensors, like CUDA's max_memory_allocated. `--malloc default` measures the
# process as glibc runs it by default (what an out-of-memory killer sees).
FIXED_MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", json.dumps(spec)]
    env = dict(os.environ)
    if spec["device"] == "cpu" and spec.get("malloc") == "fixed-mmap-threshold":
        env.update(FIXED_MMAP_THRESHOLD)
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": f"worker exited with {done.returncode}: {' | '.join(tail)}"}
    return json.loads(lines[-1])


def memory_section(s) -> dict[str, Any]:
    keys = ("device", "layers", "shape", "attn", "batch_size", "eval_batch_size", "dtype", "text_batch_size", "malloc")
    common = {k: s[k] for k in keys}
    configs = [("train-maple_peft-checkpointing", c) for c in s["memory_checkpointing_classes"]]
    configs += [("train-maple_peft", c) for c in s["memory_lib_classes"]]
    configs += [("train-baseline", c) for c in s["memory_baseline_classes"]]
    for c in s["memory_no_shared_prefix_classes"]:
        configs += [("train-maple_peft-no-shared-prefix", c)]
    configs += [("eval-maple_peft", c) for c in s["memory_eval_classes"]]
    rows = []
    for kind, c in configs:
        spec = {**common, "kind": kind, "classes": c}
        if kind.endswith("checkpointing"):
            spec["text_batch_size"] = s["checkpoint_text_batch_size"]
        log(f"memory: {kind} at {c} classes (fresh process)")
        result = run_worker(spec)
        rows.append(
            {"kind": kind, "classes": c, "text_batch_size": spec["text_batch_size"], "measured": True, **result}
        )
        log(f"  {result}")
    # the baseline's activations grow linearly with the class count (C x 77 tokens): extrapolate where not measured
    points = [(r["classes"], r["increase_mb"]) for r in rows if r["kind"] == "train-baseline" and "increase_mb" in r]
    fit = None
    if len({c for c, _ in points}) >= 2:  # a least-squares line: (intercept, slope)
        per_class, intercept = np.polyfit([c for c, _ in points], [mb for _, mb in points], deg=1)
        fit = (float(intercept), float(per_class))
    if fit:
        measured = {c for c, _ in points}
        train_classes = {r["classes"] for r in rows if r["kind"].startswith("train")}
        for c in sorted(train_classes - measured):
            rows.append(
                {"kind": "train-baseline", "classes": c, "measured": False, "increase_mb": fit[0] + fit[1] * c}
            )
    return {
        "rows": rows,
        "baseline_fit_mb": {"intercept": fit[0], "per_class": fit[1]} if fit else None,
        "method": next((r["method"] for r in rows if r.get("method")), None),
    }


# ---- targets -----------------------------------------------------------------------------------------------------------------


def targets(result: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    train = {r["classes"]: r for r in result.get("train", [])}
    for c in (100, 500):
        r = train.get(c)
        value = r["speedup"] if r else None
        out.append(
            {
                "target": f"training step >= 4x faster than the baseline at {c} classes",
                "value": value,
                "met": value is not None and value >= 4.0,
                "note": None if value is not None else "not measured in this profile",
            }
        )
    diffs = [r["logits_max_abs_diff_fp32"] for r in train.values() if r.get("logits_max_abs_diff_fp32") is not None]
    out.append(
        {
            "target": "same logits as the baseline in training: max abs difference <= 1e-4 in float32",
            "value": max(diffs) if diffs else None,
            "met": bool(diffs) and max(diffs) <= 1e-4,
        }
    )
    evals = result.get("eval", {}).get("rows", [])
    if evals:
        worst = min(evals, key=lambda r: r["maple_peft_vs_plain"])
        out.append(
            {
                "target": "evaluation throughput within 10% of plain CLIP image encoding "
                f"(worst: {worst['classes']} classes, {result['eval']['test_images']} images)",
                "value": worst["maple_peft_vs_plain"],
                "met": worst["maple_peft_vs_plain"] >= 0.9,
            }
        )
    memory = result.get("memory", {}).get("rows", [])
    base = {r["classes"]: r for r in memory if r["kind"] == "train-baseline" and "increase_mb" in r}
    for kind in ("train-maple_peft-checkpointing", "train-maple_peft"):
        lib = {r["classes"]: r for r in memory if r["kind"] == kind and "increase_mb" in r}
        c = max(set(lib) & set(base), default=None)
        if c is None:
            continue
        ratio = lib[c]["increase_mb"] / base[c]["increase_mb"]
        setting = "gradient_checkpointing=True" if kind.endswith("checkpointing") else "default settings"
        out.append(
            {
                "target": f"peak training memory at {c} classes <= 1/4 of the baseline's (maple_peft {setting}"
                + ("" if base[c]["measured"] else "; baseline extrapolated")
                + ")",
                "value": ratio,
                "met": ratio <= 0.25,
            }
        )
    return out


# ---- main --------------------------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced settings (CPU: a few minutes)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "bf16"), help="the library's precision (cuda default: bf16)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--train-classes", type=int, nargs="+")
    parser.add_argument("--eval-classes", type=int, nargs="+")
    parser.add_argument("--memory-classes", type=int, nargs="+", help="class counts of the memory curve")
    parser.add_argument("--baseline-train-max", type=int, help="largest class count at which the baseline trains")
    parser.add_argument("--baseline-eval-max", type=int, help="largest class count at which the baseline evaluates")
    parser.add_argument("--reps", type=int, help="training repetitions (median reported)")
    parser.add_argument("--batch-size", type=int, default=4, help="training batch size")
    parser.add_argument("--eval-images", type=int, help="test-set size for the evaluation throughput")
    parser.add_argument("--eval-batch-size", type=int)
    parser.add_argument("--layers", type=int, default=12, help="layers per tower (ViT-B/16: 12; depth 9 needs >= 9)")
    parser.add_argument(
        "--shape",
        choices=("vit-b16", "tiny"),
        default="vit-b16",
        help="the CLIP's widths and resolution: ViT-B/16's (the figures), or tiny (correctness checks only)",
    )
    parser.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa", help="attention of the headline runs")
    parser.add_argument("--text-batch-size", type=int, default=256)
    parser.add_argument("--checkpoint-text-batch-size", type=int, default=64)
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        help="measure torch.compile of both towers in the options (default: on for cuda-full only)",
    )
    parser.add_argument(
        "--malloc",
        choices=("fixed-mmap-threshold", "default"),
        default="fixed-mmap-threshold",
        help="CPU memory workers: glibc with a fixed 64 KiB mmap threshold (peak RSS follows live tensors; default) "
        "or glibc's defaults (peak RSS includes freed memory glibc keeps)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tag", help="result file name (default: <device>-<quick|full>)")
    parser.add_argument(
        "--override", type=json.loads, help="JSON object of settings to override, e.g. '{\"options_classes\": [10]}'"
    )
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.memory_worker:
        print(json.dumps(memory_worker(json.loads(args.memory_worker))), flush=True)
        return
    bf16_native_cpu()  # a bad MAPLE_PEFT_BENCH_BF16 stops here, before any work
    s = settings(args)
    started = time.perf_counter()
    command = "python benchmarks/bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    result: dict[str, Any] = {
        "command": command.strip(),
        "environment": environment(s["device"]),
        "settings": s,
        "model": f"{'ViT-B/16' if s['shape'] == 'vit-b16' else s['shape']}-shaped CLIP, random weights; MaPLe n_ctx=2, "
        "depth=9, prompt_init='a photo of a'",
    }
    log(f"settings: {s}")
    tokenizer = load_tokenizer()
    all_classes = set(s["train_classes"]) | set(s["eval_classes"]) | set(s["options_classes"])
    names = {c: class_names(c) for c in all_classes}
    needs_model = {"train", "eval", "options"} & set(args.sections)
    if needs_model:
        log("building the models")
        model = build_maple(s["layers"], s["attn"], device=s["device"], shape=s["shape"])
        plain = build_clip(
            s["layers"], s["attn"], seed=0, device=s["device"], shape=s["shape"]
        )  # the same weights as the base
        generator = torch.Generator().manual_seed(0)
        px = image_size(s["shape"])
        pixel_values = torch.randn(s["batch_size"], 3, px, px, generator=generator).to(s["device"])
        labels = torch.randint(0, 10**6, (s["batch_size"],), generator=generator).to(s["device"])
    for section in [name for name in SECTIONS if name in args.sections]:
        section_start = time.perf_counter()
        if section == "memory" and needs_model:
            del model, plain  # the memory workers are separate processes: leave them the RAM
            gc.collect()
        if section == "train":
            result["train"] = train_section(s, model, tokenizer, names, pixel_values, labels)
        elif section == "eval":
            result["eval"] = eval_section(s, model, plain, tokenizer, names)
        elif section == "options":
            result["options"] = options_section(s, model, plain, tokenizer, names, pixel_values, labels)
        elif section == "memory":
            result["memory"] = memory_section(s)
        result.setdefault("section_seconds", {})[section] = time.perf_counter() - section_start
    result["targets"] = targets(result)
    result["total_seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    tag = args.tag or s["profile"]
    path = args.out / f"{tag}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    log(f"wrote {path} ({result['total_seconds']:.0f}s)")
    from report import write_report

    for written in write_report(path, args.out):
        log(f"wrote {written}")
    for t in result["targets"]:
        verdict = "not measured" if t["value"] is None else "MET" if t["met"] else "NOT MET"
        log(f"target {verdict}: {t['target']}: {t['value']}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
