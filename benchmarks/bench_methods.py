"""A training step of every method on the engine, and CoCoOp against the original code's per-image loop (issue 15).

On a ViT-B/16-shaped CLIP with random weights (the cost does not depend on the values), 100 classes by default:

* `steps`: a training step (forward + loss + backward + `SGD(lr=0, momentum=0.9).step()` + `zero_grad`, batch 4) of
  MaPLe, IVLP, CoOp, VPT-deep, PromptSRC (IVLP 4 + 4, depth 9, `SelfRegularizedLoss`; its frozen text targets computed
  once before timing), KgCoOp (CoOp + `KnowledgeGuidedLoss`), CoCoOp (batch 4, and batch 1 as its recipe trains) and
  MMRL (`RepresentationLoss`), each through `PromptClassifier` and its objective as `examples/train.py` runs them,
  timed interleaved in one process; each is reported as the median of its per-repetition ratios to MaPLe's step.
* `cocoop`: CoCoOp's step through `PromptClassifier` (the per-image prompts of the whole batch encoded together,
  trimmed at their end-of-text tokens, each image's prefix encoded once) against `PerImageCoCoOpLoop`, the original
  code's way (for each image, its shifted context in every class prompt padded to 77 tokens, through the text tower's
  own forward), on the same adapter; also the loop on prompts trimmed to the longest one, which separates the gain of
  trimming from that of batching and prefix sharing. Step time (interleaved), peak memory (each configuration in a
  fresh process), and the largest differences of the logits and of every adapter gradient (float32).

The SGD learning rate is 0: the update runs at full cost but the parameters never change, so every repetition (and
both ways of computing CoCoOp) sees the same parameters.

    python benchmarks/bench_methods.py                          # CPU: about 20-30 min on 2 busy cores
    python benchmarks/bench_methods.py --sections steps --reps 5
    python benchmarks/bench_methods.py --device cuda --reps 10

Writes benchmarks/results/<device>-methods.json (every single timing, settings, environment, load) and .md.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    DEPTH,
    N_CTX,
    PROMPT_INIT,
    TOKENIZER_DIR,
    PeakMemory,
    build_clip,
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
from maple_peft.layer import MaPLeTextPromptLayer, conditioned  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("steps", "cocoop")
SIZES = ("vit-b16", "tiny")
CONTEXT_LENGTH = 77  # CLIP's context: the original code pads every prompt to it


# ---- models -------------------------------------------------------------------------------------------------------


def build_base(size: str, layers: int, attn: str = "sdpa") -> nn.Module:
    """The frozen CLIP every method adapts: ViT-B/16-shaped (`layers` per tower), or a tiny one for smoke tests."""
    if size == "vit-b16":
        return build_clip(layers, attn)
    if size != "tiny":
        raise ValueError(f"size={size!r} is not one of {SIZES}.")
    from transformers import CLIPConfig, CLIPModel

    def tower(width: int, **extra: Any) -> dict[str, Any]:
        return dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers, num_attention_heads=4)

    config = CLIPConfig(
        text_config=tower(32),
        vision_config=dict(tower(48), image_size=32, patch_size=8),
        projection_dim=16,
    )
    config._attn_implementation = attn
    torch.manual_seed(0)
    return CLIPModel(config)


def image_size(size: str) -> int:
    return 224 if size == "vit-b16" else 32


@dataclass(frozen=True)
class Method:
    """One row of the `steps` section: an adapter (`MaPLeConfig` keyword arguments), its objective and batch size.

    Args:
        name: the row's key.
        title: the method, as the README names it.
        config: `MaPLeConfig` keyword arguments (the depth is capped at the model's layers for tiny models).
        objective: a name of `maple_peft.OBJECTIVES` (`ce`, `src`, `kgcoop`, `mmrl`).
        batch_size: images per step.
    """

    name: str
    title: str
    config: dict[str, Any] = field(hash=False)
    objective: str = "ce"
    batch_size: int = 4


COOP = dict(variant="language", n_ctx=4, depth=1, prompt_init=PROMPT_INIT)
COCOOP = dict(variant="cocoop", prompt_init=PROMPT_INIT)  # n_ctx 4 from the words of "a photo of a", depth 1

# The settings of the recipes in examples/configs (IVLP and VPT-deep: the base-to-novel recipes of the MaPLe paper's
# ablations); MaPLe's is common.py's (n_ctx 2, depth 9).
METHODS = (
    Method("maple", "MaPLe", dict(variant="maple", n_ctx=N_CTX, depth=DEPTH, prompt_init=PROMPT_INIT)),
    Method("ivlp", "IVLP", dict(variant="ivlp", n_ctx=2, n_ctx_vision=2, depth=12, prompt_init=PROMPT_INIT)),
    Method("coop", "CoOp", COOP),
    Method("vpt_deep", "VPT-deep", dict(variant="vision", n_ctx=8, depth=12)),
    Method(
        "promptsrc",
        "PromptSRC",
        dict(variant="ivlp", n_ctx=4, n_ctx_vision=4, depth=9, prompt_init=PROMPT_INIT),
        objective="src",
    ),
    Method("kgcoop", "KgCoOp", COOP, objective="kgcoop"),
    Method("cocoop", "CoCoOp", COCOOP),
    Method("cocoop_b1", "CoCoOp, batch 1", COCOOP, batch_size=1),
    Method("mmrl", "MMRL", dict(variant="mmrl", n_rep=5, rep_dim=512, template="a photo of a {}."), objective="mmrl"),
    Method(
        "mmrlpp", "MMRL++", dict(variant="mmrlpp", n_rep=5, rep_dim=512, template="a photo of a {}."), objective="mmrl"
    ),
)


def adapter_config(config: dict[str, Any], layers: int) -> maple_peft.MaPLeConfig:
    config = dict(config)
    if "depth" in config:
        config["depth"] = min(config["depth"], layers)
    return maple_peft.MaPLeConfig(tokenizer_name_or_path=str(TOKENIZER_DIR), **config)


def adapt(base: nn.Module, config: dict[str, Any], layers: int, seed: int = 1) -> nn.Module:
    """`get_peft_model` on a copy of `base` that shares its (frozen) weights: one copy of CLIP in memory for all."""
    shared = {id(p): p for p in base.parameters()}
    torch.manual_seed(seed)
    return peft_model(copy.deepcopy(base, memo=shared), adapter_config(config, layers))


def make_objective(name: str, classifier: maple_peft.PromptClassifier) -> maple_peft.PromptObjective:
    """The objective `name` of `maple_peft.OBJECTIVES` with its declared defaults, which are its recipes' weights
    (KgCoOp 8.0, PromptSRC 25/10/1, MMRL 1.0)."""
    if name not in maple_peft.OBJECTIVES:
        raise ValueError(f"objective={name!r} is not one of {sorted(maple_peft.OBJECTIVES)}.")
    return maple_peft.OBJECTIVES[name].from_options(classifier)


def images(batch: int, size: int, device: str, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)).to(device)


@contextlib.contextmanager
def flush_denormal(enabled: bool) -> Iterator[None]:
    """`torch.set_flush_denormal(True)` inside the block when `enabled` (CPU), the previous setting restored after.

    Subnormal floats can slow a CPU training step several-fold after the first optimizer step (issue 17, section 6).
    """
    if not enabled:
        yield
        return
    previous = denormals_flushed()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(previous)


def denormals_flushed() -> bool:
    """Whether the CPU flushes subnormal floats to zero now (torch has a setter for the mode, but no getter)."""
    return bool((torch.tensor([1e-39]) * 2.0 == 0).item())


# ---- the per-image loop (the original CoCoOp code's way) -----------------------------------------------------------


class PerImageCoCoOpLoop(nn.Module):
    """CoCoOp's logits computed the way the original code computes them: one image at a time.

    Written from the description of CoOp's `trainers/cocoop.py` (Zhou et al., CVPR 2022), not copied from it: the
    class prompts `"{prompt_init} {name}."` are tokenized once, padded to CLIP's 77 tokens; at every call the image
    features of the batch are computed and normalized, the meta-net gives each image its shift `pi_i`, and for each
    image in turn the prompts of all classes, with the context `ctx + pi_i`, go through the text tower's own forward
    (`get_text_features`); `logits_i = exp(logit_scale) * f_i . t_{i,c}` (normalized), float32, nothing cached.

    It runs the SAME model as `PromptClassifier` (the same `PeftModel`: context, meta-net, attention implementation),
    so any difference in logits or gradients comes from how the computation is organized.

    Args:
        model: the CoCoOp-adapted CLIP (a `PeftModel` with `variant="cocoop"`).
        tokenizer: the CLIP tokenizer.
        class_names: the class names (`_` becomes a space, as in the original code).
        prompt_init: the adapter's initialization text, which forms the prompts.
        context_length: pad every prompt to this many tokens (77, as the original); `None` pads to the longest
            prompt only (the same loop on trimmed prompts).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        class_names: Sequence[str],
        prompt_init: str,
        context_length: int | None = CONTEXT_LENGTH,
    ) -> None:
        super().__init__()
        self.model = model
        prompts = [f"{prompt_init} {name.replace('_', ' ')}." for name in class_names]
        if context_length is None:
            encoded = tokenizer(prompts, padding="longest", return_tensors="pt")
        else:
            encoded = tokenizer(
                prompts, padding="max_length", max_length=context_length, truncation=True, return_tensors="pt"
            )
        device = next(model.parameters()).device
        self.input_ids = encoded["input_ids"].to(device)  # (C, 77) or (C, longest)
        base = model.get_base_model()
        layer = next(m for m in base.modules() if isinstance(m, MaPLeTextPromptLayer) and len(m.maple_meta_linear1))
        self.meta_shift = functools.partial(layer.meta_shift, layer.prompt_adapter())
        self.base = base

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        image = _pooled(self.model.get_image_features(pixel_values=pixel_values))
        image = image / image.norm(dim=-1, keepdim=True)
        shift = self.meta_shift(image)
        scale = self.model.logit_scale.exp()
        rows = []
        for i in range(image.shape[0]):  # each image has its own context, for every class
            with conditioned(self.base, shift[i : i + 1]):
                text = _pooled(self.model.get_text_features(input_ids=self.input_ids))
            text = text / text.norm(dim=-1, keepdim=True)
            rows.append(scale * image[i] @ text.t())
        return torch.stack(rows)


def _pooled(output: Any) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.pooler_output


# ---- training steps ---------------------------------------------------------------------------------------------------


class Stepper:
    """Training steps of one way of computing the loss; keeps the logits and gradients of its first step.

    Args:
        compute: `compute(pixel_values, labels) -> (loss, logits)`.
        model: the adapted model (its trainable parameters are optimized and their gradients kept).
        pixel_values, labels: the batch of every step.
    """

    def __init__(self, compute: Callable, model: nn.Module, pixel_values: torch.Tensor, labels: torch.Tensor) -> None:
        self.compute, self.pixel_values, self.labels = compute, pixel_values, labels
        self.params = trainable(model)
        self.optimizer = torch.optim.SGD(self.params, lr=0.0, momentum=0.9)
        self.logits: torch.Tensor | None = None
        self.grads: torch.Tensor | None = None

    def __call__(self) -> None:
        loss, logits = self.compute(self.pixel_values, self.labels)
        loss.backward()
        if self.logits is None:
            self.logits = logits.detach().float().cpu()
            self.grads = torch.cat([p.grad.detach().flatten().float() for p in self.params]).cpu()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def objective_compute(objective: maple_peft.PromptObjective) -> Callable:
    def compute(pixel_values: torch.Tensor, labels: torch.Tensor):
        out = objective(pixel_values, labels)
        return out.loss, out.logits

    return compute


def cross_entropy_compute(forward: Callable) -> Callable:
    def compute(pixel_values: torch.Tensor, labels: torch.Tensor):
        logits = forward(pixel_values)
        return F.cross_entropy(logits.float(), labels), logits

    return compute


def timed_cpu(fns: dict[str, Callable[[], Any]]) -> tuple[dict[str, Callable[[], Any]], dict[str, list[float]]]:
    """`fns` wrapped to also record the process's CPU time (all threads) of each call, in the returned lists.

    On a shared machine the wall-clock time of a step depends on what else runs; its CPU time much less so (it still
    grows a little under contention: threads that wait for each other spin), so both are reported.
    """
    cpu: dict[str, list[float]] = {name: [] for name in fns}

    def wrap(name: str, fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> None:
            start = time.process_time()
            fn()
            cpu[name].append(time.process_time() - start)

        return run

    return {name: wrap(name, fn) for name, fn in fns.items()}, cpu


def _config_summary(config: maple_peft.MaPLeConfig) -> dict[str, Any]:
    """The adapter's settings as created (MMRL's `rep_layers` resolved against the model)."""
    keys = ("variant", "n_ctx", "n_ctx_vision", "depth", "prompt_init", "n_rep", "rep_dim", "rep_layers", "alpha")
    summary = {key: getattr(config, key, None) for key in keys}
    return {key: value for key, value in summary.items() if value is not None}


def ratio_medians(times: dict[str, list[float]], reference: str) -> dict[str, float | None]:
    """Per method, the median over repetitions of its time divided by `reference`'s in the same repetition."""
    out: dict[str, float | None] = {}
    for name, values in times.items():
        ratios = [t / r for t, r in zip(values, times[reference])]
        out[name] = statistics.median(ratios) if ratios else None
    return out


def steps_section(
    base: nn.Module,
    tokenizer: Any,
    n_classes: int,
    reps: int,
    *,
    layers: int,
    size: str,
    device: str,
    methods: Sequence[Method] = METHODS,
    budget_s: float = float("inf"),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The training step of every method, interleaved, with its median ratio to MaPLe's step."""
    names = class_names(n_classes)
    models: dict[str, nn.Module] = {}
    steppers: dict[str, Stepper] = {}
    rows: dict[str, dict[str, Any]] = {}
    for method in methods:
        key = json.dumps(method.config, sort_keys=True)
        if key not in models:  # CoOp and KgCoOp, CoCoOp at both batch sizes: the same adapter
            models[key] = adapt(base, method.config, layers).to(device).train()
        model = models[key]
        classifier = maple_peft.PromptClassifier(model, tokenizer, names)
        objective = make_objective(method.objective, classifier)
        pixel_values = images(method.batch_size, image_size(size), device)
        labels = torch.arange(method.batch_size, device=device) % n_classes
        row: dict[str, Any] = {
            "title": method.title,
            "objective": method.objective,
            "batch_size": method.batch_size,
            "config": _config_summary(model.peft_config["default"]),
            "trainable_parameters": sum(p.numel() for p in trainable(model)),
            "shared_prefix_reason": classifier.shared_prefix_reason(),
        }
        if method.objective == "src":  # the frozen text targets (60 templates x classes): once, before timing
            synchronize(device)
            start = time.perf_counter()
            objective.target_text_features()
            synchronize(device)
            row["frozen_text_targets_once_s"] = time.perf_counter() - start
            row["frozen_text_target_prompts"] = n_classes * len(objective.templates)
            log(f"  {method.name}: frozen text targets in {row['frozen_text_targets_once_s']:.1f} s")
        steppers[method.name] = Stepper(objective_compute(objective), model, pixel_values, labels)
        rows[method.name] = row
    for stepper in steppers.values():  # untimed warm-up (the objectives' frozen text features are cached here)
        stepper()
    log(f"steps: {len(steppers)} methods at {n_classes} classes, {reps} interleaved repetitions")
    fns, cpu = timed_cpu(dict(steppers))
    times = time_interleaved(fns, reps, device, None, budget_s)
    ratios, cpu_ratios = ratio_medians(times, "maple"), ratio_medians(cpu, "maple")
    for name, row in rows.items():
        row["step_s"] = median(times[name])
        row["per_image_s"] = row["step_s"] / row["batch_size"]
        row["ratio_to_maple"] = ratios[name]
        row["cpu_step_s"] = median(cpu[name])
        row["cpu_ratio_to_maple"] = cpu_ratios[name]
        row["times_s"] = times[name]
        row["cpu_times_s"] = cpu[name]
        log(
            f"  {name}: {row['step_s']:.3f} s, {row['ratio_to_maple']:.2f}x MaPLe's step "
            f"(CPU time {row['cpu_step_s']:.2f} s, {row['cpu_ratio_to_maple']:.2f}x)"
        )
    return {"classes": n_classes, "reps": reps, "rows": rows}


# ---- CoCoOp against the per-image loop ----------------------------------------------------------------------------

COCOOP_IMPLS = ("classifier", "loop", "loop_trimmed")


def cocoop_forward(impl: str, model: nn.Module, tokenizer: Any, names: list[str]) -> Callable:
    """The logits of CoCoOp's batch: `PromptClassifier`, or the per-image loop (prompts of 77 tokens or trimmed)."""
    if impl == "classifier":
        classifier = maple_peft.PromptClassifier(model, tokenizer, names)
        classifier.input_ids()
        return classifier
    if impl == "loop":
        return PerImageCoCoOpLoop(model, tokenizer, names, PROMPT_INIT)
    if impl == "loop_trimmed":
        return PerImageCoCoOpLoop(model, tokenizer, names, PROMPT_INIT, context_length=None)
    raise ValueError(f"impl={impl!r} is not one of {COCOOP_IMPLS}.")


def max_abs_diff(a: torch.Tensor | None, b: torch.Tensor | None) -> float | None:
    if a is None or b is None:
        return None
    return (a - b).abs().max().item()


def cocoop_section(
    base: nn.Module,
    tokenizer: Any,
    n_classes: int,
    reps: int,
    *,
    layers: int,
    size: str,
    device: str,
    batch_sizes: Sequence[int] = (1, 4),
    impls: Sequence[str] = COCOOP_IMPLS,
    loop_budget_s: float = float("inf"),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """CoCoOp's training step through `PromptClassifier` and through the per-image loop, on one adapter, interleaved;
    with the largest differences of their logits and gradients (first step, float32)."""
    names = class_names(n_classes)
    model = adapt(base, COCOOP, layers).to(device).train()
    forwards = {impl: cocoop_forward(impl, model, tokenizer, names) for impl in impls}
    steppers: dict[str, Stepper] = {}
    for batch in batch_sizes:
        pixel_values = images(batch, image_size(size), device)
        labels = torch.arange(batch, device=device) % n_classes
        for impl, forward in forwards.items():
            steppers[f"{impl}_b{batch}"] = Stepper(cross_entropy_compute(forward), model, pixel_values, labels)
    for name, stepper in steppers.items():  # untimed warm-up; it also keeps the logits and gradients to compare
        if not name.startswith("loop_b") or size == "tiny" or device.startswith("cuda") or n_classes <= 10:
            stepper()
    log(f"cocoop: {'/'.join(impls)} at batch {'/'.join(map(str, batch_sizes))}, {n_classes} classes, {reps} reps")
    budgets = {name: loop_budget_s for name in steppers if name.startswith("loop_b")}
    fns, cpu = timed_cpu(dict(steppers))
    times = time_interleaved(fns, reps, device, budgets)
    rows = []
    for batch in batch_sizes:
        lib = steppers[f"classifier_b{batch}"] if "classifier" in impls else None
        lib_times = times.get(f"classifier_b{batch}", [])
        lib_cpu = cpu.get(f"classifier_b{batch}", [])
        for impl in impls:
            name = f"{impl}_b{batch}"
            stepper = steppers[name]
            row = {
                "impl": impl,
                "batch_size": batch,
                "step_s": median(times[name]),
                "times_s": times[name],
                "cpu_step_s": median(cpu[name]),
                "cpu_times_s": cpu[name],
                "text_positions_per_image": _text_positions(forwards[impl], n_classes),
            }
            if lib is not None and impl != "classifier":
                row["speedup_of_classifier"] = statistics.median([t / c for t, c in zip(times[name], lib_times)])
                row["cpu_speedup_of_classifier"] = statistics.median([t / c for t, c in zip(cpu[name], lib_cpu)])
                row["logits_max_abs_diff"] = max_abs_diff(stepper.logits, lib.logits)
                row["logits_max_abs"] = stepper.logits.abs().max().item()
                row["grad_max_abs_diff"] = max_abs_diff(stepper.grads, lib.grads)
                row["grad_max_abs"] = stepper.grads.abs().max().item()
            rows.append(row)
            log(
                f"  {name}: {row['step_s']:.3f} s"
                + (
                    f", classifier {row['speedup_of_classifier']:.2f}x faster"
                    if "speedup_of_classifier" in row
                    else ""
                )
                + (f", max|dlogits| {row['logits_max_abs_diff']:.2e}" if "logits_max_abs_diff" in row else "")
                + (f", max|dgrad| {row['grad_max_abs_diff']:.2e}" if "grad_max_abs_diff" in row else "")
            )
    return {"classes": n_classes, "reps": reps, "rows": rows}


def _text_positions(forward: Any, n_classes: int) -> int:
    """Text positions encoded per image: all classes x prompt length for the loop; for the classifier, the shared
    prefix once plus each class's own tokens up to its end-of-text token."""
    if isinstance(forward, PerImageCoCoOpLoop):
        return int(forward.input_ids.numel())
    tokenized = forward.text_encoder.tokenized()
    return tokenized.prefix_length + sum(
        int(ids.shape[0]) * (int(ids.shape[1]) - tokenized.prefix_length) for _, ids in tokenized.chunks
    )


# ---- peak memory, each configuration in a fresh process ------------------------------------------------------------

# As bench.py's memory section: a fixed glibc mmap threshold returns every freed block of 64 KiB or more to the OS at
# once, so the peak RSS follows the live tensors (see benchmarks/README.md).
FIXED_MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def memory_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One CoCoOp configuration, in this (fresh) process: the peak memory of one training step above the memory in
    use once the model, the forward and the inputs exist."""
    device, layers = spec["device"], spec["layers"]
    with flush_denormal(spec.get("flush_denormal", False) and device == "cpu"):
        model = adapt(build_base(spec["size"], layers, spec["attn"]), COCOOP, layers).to(device).train()
        forward = cocoop_forward(spec["impl"], model, load_tokenizer(), class_names(spec["classes"]))
        batch = spec["batch_size"]
        pixel_values = images(batch, image_size(spec["size"]), device)
        labels = torch.arange(batch, device=device) % spec["classes"]
        optimizer = torch.optim.SGD(trainable(model), lr=0.0, momentum=0.9)
        start = time.perf_counter()
        try:
            with PeakMemory(device) as peak:
                F.cross_entropy(forward(pixel_values).float(), labels).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        except torch.OutOfMemoryError as oom:
            return {"error": f"out of memory: {str(oom).splitlines()[0]}"}
    method = peak.method
    if device == "cpu":
        threshold = os.environ.get("MALLOC_MMAP_THRESHOLD_")
        method += f"; glibc MALLOC_MMAP_THRESHOLD_={threshold}" if threshold else "; glibc malloc defaults"
    return {
        "increase_mb": peak.increase_mb,
        "start_mb": peak.start_mb,
        "peak_mb": peak.peak_mb,
        "method": method,
        "seconds": time.perf_counter() - start,
    }


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """`memory_worker(spec)` in a fresh Python process (`--memory-worker`)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-worker", json.dumps(spec)]
    env = dict(os.environ)
    if spec["device"] == "cpu":
        env.update(FIXED_MMAP_THRESHOLD)
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": f"worker exited with {done.returncode}: {' | '.join(tail)}"}
    return json.loads(lines[-1])


def memory_section(
    spec: dict[str, Any], batch_sizes: Sequence[int], impls: Sequence[str], log: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    rows = []
    for batch in batch_sizes:
        for impl in impls:
            log(f"memory: cocoop {impl} at batch {batch}, {spec['classes']} classes (fresh process)")
            result = run_worker({**spec, "impl": impl, "batch_size": batch})
            rows.append({"impl": impl, "batch_size": batch, **result})
            if "error" in result:
                log(f"  {result['error']}")
            else:
                log(f"  {result['increase_mb']:.0f} MiB above the model and inputs")
    return rows


# ---- report ---------------------------------------------------------------------------------------------------------


IMPL_TITLES = {
    "classifier": "`PromptClassifier` (batched, trimmed, shared prefix)",
    "loop": "per-image loop, prompts padded to 77 (original)",
    "loop_trimmed": "per-image loop, prompts trimmed to the longest",
}


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown(result: dict[str, Any]) -> str:
    s, env = result["settings"], result["environment"]
    load = env.get("load_average_at_start")
    lines = [
        "# Methods: a training step of each, and CoCoOp against a per-image loop",
        "",
        f"- command: `{result['command']}` (total {result['total_s'] / 60:.1f} min)",
        f"- date: {env.get('date_utc')}; machine: {env.get('cpu', '?')}, {env.get('cpu_count')} cores, "
        f"{env.get('torch_threads')} torch threads, {env.get('ram_gb')} GB; torch {env.get('torch')}, transformers "
        f"{env.get('transformers')}, peft {env.get('peft')}; commit {env.get('git_commit')}",
        f"- load (`uptime`) at start: {result.get('uptime_start', load)}; at end: {result.get('uptime_end', '?')}. "
        "The machine is shared with other jobs: compare ratios within this run.",
        f"- model: {s['size']} CLIP with random weights, {s['layers']} layers per tower, {s['attn']} attention, "
        f"float32, {s['classes']} classes; SGD lr 0 (momentum 0.9); flush denormals: {s['flush_denormal']}",
    ]
    if "steps" in result:
        steps = result["steps"]
        lines += [
            "",
            f"## Training step of each method ({steps['classes']} classes; median of {steps['reps']} interleaved "
            "repetitions; ratio = median of the per-repetition ratios to MaPLe's step)",
            "",
            "| method | adapter | objective | batch | trainable params | step (s) | per image (s) | / MaPLe "
            "| CPU time (s) | / MaPLe (CPU time) |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in steps["rows"].values():
            lines.append(
                f"| {row['title']} | {_describe(row['config'])} | {row['objective']} | {row['batch_size']} "
                f"| {row['trainable_parameters']:,} | {row['step_s']:.2f} | {row['per_image_s']:.2f} "
                f"| **{row['ratio_to_maple']:.2f}×** | {row['cpu_step_s']:.2f} | {row['cpu_ratio_to_maple']:.2f}× |"
            )
        targets = [r for r in steps["rows"].values() if "frozen_text_targets_once_s" in r]
        for row in targets:
            lines.append(
                f"\n{row['title']}'s frozen text targets ({row['frozen_text_target_prompts']:,} prompts), once per "
                f"class set before timing: {row['frozen_text_targets_once_s']:.1f} s."
            )
    if "cocoop" in result:
        cocoop = result["cocoop"]
        lines += [
            "",
            f"## CoCoOp: `PromptClassifier` against the per-image loop ({cocoop['classes']} classes; median of up to "
            f"{cocoop['reps']} interleaved repetitions)",
            "",
            "| batch | computation | text positions / image | step (s) | runs | classifier faster by "
            "| (CPU time) | peak memory (MiB) | max abs diff logits (of max) | max abs diff grads (of max) |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---|---|",
        ]
        memory = {(r["impl"], r["batch_size"]): r for r in result.get("memory", [])}
        for row in cocoop["rows"]:
            mem = memory.get((row["impl"], row["batch_size"]), {})
            mem_text = mem.get("error", _fmt(mem.get("increase_mb"), ",.0f")) if mem else "–"
            logits = (
                f"{row['logits_max_abs_diff']:.1e} ({row['logits_max_abs']:.1f})"
                if "logits_max_abs_diff" in row
                else "–"
            )
            grads = (
                f"{row['grad_max_abs_diff']:.1e} ({row['grad_max_abs']:.1e})" if "grad_max_abs_diff" in row else "–"
            )
            lines.append(
                f"| {row['batch_size']} | {IMPL_TITLES[row['impl']]} | {row['text_positions_per_image']:,} "
                f"| {row['step_s']:.2f} | {len(row['times_s'])} "
                f"| {_times(row.get('speedup_of_classifier'))} | {_times(row.get('cpu_speedup_of_classifier'))} "
                f"| {mem_text} | {logits} | {grads} |"
            )
        if result.get("memory"):
            method = next((r["method"] for r in result["memory"] if "method" in r), "")
            lines += [
                "",
                f"Peak memory: one training step in a fresh process, above the memory in use before it ({method}).",
            ]
    return "\n".join(lines) + "\n"


def _times(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _describe(config: dict[str, Any]) -> str:
    variant = config["variant"]
    if "n_rep" in config:  # representation tokens (MMRL, MMRL++)
        layers = config.get("rep_layers")
        span = f"{layers[0]}..{layers[-1]}" if layers else "default"
        return f"{variant}, {config['n_rep']} × {config['rep_dim']}, layers {span}"
    if variant == "vision":
        return f"vision, {config.get('n_ctx_vision') or config['n_ctx']} tokens, depth {config['depth']}"
    if variant == "ivlp":
        return f"ivlp, {config['n_ctx']} + {config.get('n_ctx_vision') or config['n_ctx']} tokens, depth {config['depth']}"
    return f"{variant}, {config['n_ctx']} tokens, depth {config['depth']}"


# ---- main -------------------------------------------------------------------------------------------------------------


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS + ("memory",), default=list(SECTIONS) + ["memory"])
    parser.add_argument(
        "--methods", nargs="+", choices=[m.name for m in METHODS], default=None, help="rows of the steps section"
    )
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--reps", type=int, default=5, help="repetitions of the steps section")
    parser.add_argument("--cocoop-reps", type=int, default=3, help="repetitions of the CoCoOp section")
    parser.add_argument(
        "--loop-budget", type=float, default=240.0, help="seconds after which a per-image loop is not repeated"
    )
    parser.add_argument("--cocoop-batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--memory-batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--size", choices=SIZES, default="vit-b16", help="tiny: a few-layer CLIP for smoke tests")
    parser.add_argument("--layers", type=int, default=None, help="layers per tower (default 12; tiny: 3)")
    parser.add_argument("--attn", default="sdpa", choices=("sdpa", "eager"))
    parser.add_argument(
        "--flush-denormal",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="torch.set_flush_denormal(True) around the measurements (CPU; see issue 17, section 6)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tag", help="result file name (default: <device>-methods)")
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.layers is None:
        args.layers = 12 if args.size == "vit-b16" else 3
    for name in ("classes", "reps", "cocoop_reps", "layers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.memory_worker:
        print(json.dumps(memory_worker(json.loads(args.memory_worker))))
        return {}
    start = time.perf_counter()
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "tag", "memory_worker")}
    result: dict[str, Any] = {
        "command": "python benchmarks/bench_methods.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": settings,
        "environment": environment(args.device),
        "uptime_start": uptime(),
    }
    common = dict(layers=args.layers, size=args.size, device=args.device, log=log)
    flush = args.flush_denormal and args.device == "cpu"
    tokenizer = load_tokenizer()
    if "steps" in args.sections or "cocoop" in args.sections:
        base = build_base(args.size, args.layers, args.attn).to(args.device)
        with flush_denormal(flush):
            if "steps" in args.sections:
                methods = [m for m in METHODS if args.methods is None or m.name in args.methods or m.name == "maple"]
                result["steps"] = steps_section(base, tokenizer, args.classes, args.reps, methods=methods, **common)
            if "cocoop" in args.sections:
                result["cocoop"] = cocoop_section(
                    base,
                    tokenizer,
                    args.classes,
                    args.cocoop_reps,
                    batch_sizes=args.cocoop_batch_sizes,
                    loop_budget_s=args.loop_budget,
                    **common,
                )
        del base
    if "memory" in args.sections:
        spec = dict(
            device=args.device,
            size=args.size,
            layers=args.layers,
            attn=args.attn,
            classes=args.classes,
            flush_denormal=flush,
        )
        result["memory"] = memory_section(spec, args.memory_batch_sizes, COCOOP_IMPLS, log)
    result["uptime_end"] = uptime()
    result["total_s"] = time.perf_counter() - start
    tag = args.tag or f"{args.device.split(':')[0]}-methods"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{tag}.json").write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    text = markdown(result)
    (args.out / f"{tag}.md").write_text(text, encoding="utf-8")
    print(text)
    return result


if __name__ == "__main__":
    torch.set_num_threads(min(2, torch.get_num_threads()))  # as the other benchmarks: 2 threads on CPU
    main()
