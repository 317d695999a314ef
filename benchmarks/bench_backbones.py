"""The cost of each CLIP-family backbone (issue 14): text encoding per class and a MaPLe training step, against CLIP
of the same widths, and the memory of SigLIP training with chunking and checkpointing.

SigLIP's text encoder is bidirectional and pools the last of 64 positions, so its prompts cannot be trimmed at their
end-of-text token nor share an encoded prefix: every class costs 64 positions, against CLIP's ~10 (trimmed, half of
them encoded once as the shared prefix). This measures what that costs, on ViT-B/16-shaped models with random weights:

* `clip`: CLIP ViT-B/16 (text 512 wide, vision 768 wide);
* `metaclip_2`: MetaCLIP 2 with the same shapes (causal: the fast paths apply);
* `clip_768`: CLIP with SigLIP-B/16's text width (768, 12 heads): the same widths as `siglip`, for a fair ratio;
* `siglip`: SigLIP B/16 (224 px, 196 patches, no class token, attention-pooling head);
* `siglip2`: SigLIP 2 B/16 NaFlex (256 patches of 16 px).

All use MaPLe (n_ctx 2, depth 9, "a photo of a") and the real CLIP tokenizer (the class prompts have CLIP's token
lengths; SigLIP pads them to 64 positions anyway). Timings are interleaved medians (see common.py).

    python benchmarks/bench_backbones.py                 # about 10 min on 2 busy cores
    python benchmarks/bench_backbones.py --reps 5 --classes 100 --memory-classes 300
    python benchmarks/bench_backbones.py --sections memory   # the memory table only (about 5 min)

Writes benchmarks/results/cpu-backbones.json and .md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    DEPTH,
    N_CTX,
    PROMPT_INIT,
    TOKENIZER_DIR,
    PeakMemory,
    class_names,
    environment,
    load_tokenizer,
    median,
    peft_model,
    time_interleaved,
    trainable,
)

import maple_peft  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
MODELS = ("clip", "metaclip_2", "clip_768", "siglip", "siglip2")


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """The ViT-B/16-shaped base model `name` (random weights; the cost does not depend on the values)."""
    import transformers as tf

    torch.manual_seed(seed)
    text_512 = dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12)
    text_768 = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12)
    vision = dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12, patch_size=16)
    clip_tokens = dict(vocab_size=49408, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    if name in ("clip", "clip_768"):
        text = text_512 if name == "clip" else text_768
        config = tf.CLIPConfig(
            text_config=dict(text, **clip_tokens), vision_config=dict(vision, image_size=224), projection_dim=512
        )
        model = tf.CLIPModel(config)
    elif name == "metaclip_2":
        config = tf.MetaClip2Config(
            text_config=dict(text_512, **clip_tokens), vision_config=dict(vision, image_size=224), projection_dim=512
        )
        model = tf.MetaClip2Model(config)
    elif name == "siglip":
        text = dict(text_768, **clip_tokens, max_position_embeddings=64, projection_size=768)
        model = tf.SiglipModel(tf.SiglipConfig(text_config=text, vision_config=dict(vision, image_size=224)))
    elif name == "siglip2":
        text = dict(text_768, **clip_tokens, max_position_embeddings=64, projection_size=768)
        model = tf.Siglip2Model(tf.Siglip2Config(text_config=text, vision_config=dict(vision, num_patches=256)))
    else:
        raise ValueError(name)
    return model


def images(name: str, batch: int) -> Any:
    generator = torch.Generator().manual_seed(0)
    if name != "siglip2":
        return torch.randn(batch, 3, 224, 224, generator=generator)
    return {
        "pixel_values": torch.randn(batch, 256, 3 * 16 * 16, generator=generator),
        "pixel_attention_mask": torch.ones(batch, 256, dtype=torch.long),
        "spatial_shapes": torch.tensor([[16, 16]] * batch),
    }


def classifier(name: str, n_classes: int, **kwargs: Any) -> maple_peft.PromptClassifier:
    config = maple_peft.MaPLeConfig(
        n_ctx=N_CTX, depth=DEPTH, prompt_init=PROMPT_INIT, tokenizer_name_or_path=str(TOKENIZER_DIR)
    )
    model = peft_model(build(name), config)
    return maple_peft.PromptClassifier(model, load_tokenizer(), class_names(n_classes), **kwargs)


def train_step(clf: maple_peft.PromptClassifier, inputs: Any, labels: torch.Tensor, optimizer) -> None:
    loss = F.cross_entropy(clf(inputs), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def measure_speed(n_classes: int, text_classes: int, reps: int) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    clfs = {name: classifier(name, n_classes) for name in MODELS}
    # text encoding first: no optimizer step has run yet (see benchmarks/README.md on subnormal floats after a step)
    text_fns = {}
    for name, clf in clfs.items():
        encoder = maple_peft.ClassTextEncoder(clf.model, clf.tokenizer, class_names(text_classes))

        def encode(encoder=encoder) -> None:
            with torch.no_grad():
                encoder.encode()

        encode()  # warm-up
        text_fns[name] = encode
        rows[name] = {
            "shared_prefix_reason": clf.shared_prefix_reason(),
            "text_positions_per_class": float(clf.input_ids().shape[1]),
        }
    text_times = time_interleaved(text_fns, reps, "cpu")
    step_fns = {}
    for name, clf in clfs.items():
        inputs, labels = images(name, 4), torch.arange(4) % n_classes
        optimizer = torch.optim.SGD(trainable(clf.model), lr=0.0, momentum=0.9)
        clf.model.train()
        train_step(clf, inputs, labels, optimizer)  # warm-up
        step_fns[name] = lambda clf=clf, inputs=inputs, labels=labels, optimizer=optimizer: train_step(
            clf, inputs, labels, optimizer
        )
    step_times = time_interleaved(step_fns, reps, "cpu")
    for name in MODELS:
        rows[name]["text_ms_per_class"] = 1000 * median(text_times[name]) / text_classes
        rows[name]["train_step_s"] = median(step_times[name])
        rows[name]["text_times_s"] = text_times[name]
        rows[name]["step_times_s"] = step_times[name]
    return rows


def memory_child(name: str, n_classes: int, text_batch_size: int, checkpointing: bool) -> float:
    clf = classifier(name, n_classes, text_batch_size=text_batch_size, gradient_checkpointing=checkpointing)
    clf.model.train()
    optimizer = torch.optim.SGD(trainable(clf.model), lr=0.0)
    inputs, labels = images(name, 4), torch.arange(4)
    with PeakMemory("cpu") as peak:
        train_step(clf, inputs, labels, optimizer)
    return peak.increase_mb


def measure_memory(n_classes: int) -> list[dict[str, Any]]:
    rows = []
    for name, batch, checkpointing in (
        ("clip", 256, False),
        ("siglip", 256, False),
        ("siglip", 64, True),
        ("siglip", 16, True),
    ):
        code = (
            f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import bench_backbones as b; "
            f"print(b.memory_child({name!r}, {n_classes}, {batch}, {checkpointing}))"
        )
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(result.stderr[-2000:])
        rows.append(
            dict(
                model=name,
                classes=n_classes,
                text_batch_size=batch,
                gradient_checkpointing=checkpointing,
                peak_mb=float(result.stdout.strip().splitlines()[-1]),
            )
        )
    return rows


def report(results: dict[str, Any]) -> str:
    speed = results["speed"]
    lines = [
        "# Backbones: text encoding and a MaPLe training step (CPU)",
        "",
        f"ViT-B/16 shapes, random weights, MaPLe n_ctx {N_CTX} depth {DEPTH}; {results['settings']}.",
        f"Machine: {results['environment'].get('cpu', '?')}, torch {results['environment'].get('torch', '?')}.",
        "",
        "| model | text positions / class | shared prefix | text encoding, ms / class | ratio | training step (100 classes), s | ratio |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    same_width = {
        "clip": "clip",
        "metaclip_2": "clip",
        "clip_768": "clip_768",
        "siglip": "clip_768",
        "siglip2": "clip_768",
    }
    for name, row in speed.items():
        ref = speed[same_width[name]]
        lines.append(
            f"| {name} | {row['text_positions_per_class']:.0f} | {'yes' if row['shared_prefix_reason'] is None else 'no'} "
            f"| {row['text_ms_per_class']:.2f} | {row['text_ms_per_class'] / ref['text_ms_per_class']:.2f}× "
            f"| {row['train_step_s']:.2f} | {row['train_step_s'] / ref['train_step_s']:.2f}× |"
        )
    lines += [
        "",
        "Ratios are against CLIP of the same widths: `clip` for `metaclip_2`, `clip_768` (CLIP with SigLIP-B's 768-wide "
        "text tower) for `siglip` and `siglip2`. Text positions per class: the longest prompt for the causal models "
        "(trimmed at the end-of-text token, and the shared prefix is encoded once), 64 for SigLIP.",
        "",
        "## Peak memory of a training step (batch 4)",
        "",
        "| model | classes | text_batch_size | gradient checkpointing | peak MiB above start |",
        "|---|---:|---:|---|---:|",
    ]
    for row in results["memory"]:
        lines.append(
            f"| {row['model']} | {row['classes']} | {row['text_batch_size']} | {row['gradient_checkpointing']} "
            f"| {row['peak_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--classes", type=int, default=100, help="classes of the training step")
    parser.add_argument("--text-classes", type=int, default=300, help="classes of the text-encoding timing")
    parser.add_argument("--memory-classes", type=int, default=300)
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=("speed", "memory"),
        default=["speed", "memory"],
        help="measure these only and keep the other section of an existing results/cpu-backbones.json",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    path = RESULTS / "cpu-backbones.json"
    sections = set(args.sections)
    results = json.loads(path.read_text()) if path.exists() and sections != {"speed", "memory"} else {}
    missing = {"speed", "memory"} - sections - set(results)
    if missing:
        parser.error(f"--sections {' '.join(args.sections)}: no earlier {path.name} holds {sorted(missing)}; run both")
    results["environment"] = environment("cpu")
    if "speed" in sections:
        results["settings"] = (
            f"{args.classes} classes per step, batch 4, {args.text_classes} classes encoded, {args.reps} reps"
        )
        results["speed"] = measure_speed(args.classes, args.text_classes, args.reps)
    if "memory" in sections:
        results["memory"] = measure_memory(args.memory_classes)
    RESULTS.mkdir(exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    text = report(results)
    (RESULTS / "cpu-backbones.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
