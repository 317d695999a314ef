"""Markdown table and plot of a benchmark result: `python benchmarks/report.py benchmarks/results/cpu-quick.json`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _f(value: float | None, fmt: str = ".3f", suffix: str = "") -> str:
    if value is None:
        return "–"
    return f"{value:{fmt}}{suffix}"


def _e(value: float | None) -> str:
    return "–" if value is None else f"{value:.1e}"


def markdown(result: dict[str, Any], tag: str) -> str:
    env, s = result["environment"], result["settings"]
    lines = [
        f"# MaPLe benchmark: `{tag}`",
        "",
        f"- command: `{result['command']}` (total {result.get('total_seconds', 0) / 60:.1f} min)",
        f"- date: {env['date_utc']}; git commit: {env.get('git_commit') or 'none yet'}",
        f"- machine: {env.get('gpu') or env['cpu']}, {env['cpu_count']} CPU cores ({env['torch_threads']} torch "
        f"threads), {env['ram_gb']} GB RAM; load average at start {env.get('load_average_at_start')}",
        f"- versions: Python {env['python']}, torch {env['torch']}, transformers {env['transformers']}, "
        f"peft {env['peft']}, maple_peft {env['maple_peft']}",
        f"- model: {result['model']}; {s['layers']} layers per tower; attention `{s['attn']}`; maple_peft in "
        f"{s['dtype']}, baseline in float32; training batch {s['batch_size']}; median of up to {s['reps']} "
        "interleaved repetitions (the reps column gives the count; expensive baseline runs stop earlier)",
        "",
    ]
    if result.get("targets"):
        lines += ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
        for t in result["targets"]:
            value = t["value"]
            shown = "–" if value is None else (f"{value:.2e}" if abs(value) < 1e-2 else f"{value:.2f}")
            met = "yes" if t["met"] else ("not measured" if value is None else "**no**")
            lines.append(f"| {t['target']} | {shown} | {met} |")
        lines.append("")
    if result.get("train"):
        lines += [
            "## Training step (forward + backward + SGD step)",
            "",
            "| classes | prompt tokens (mean / longest; baseline 77) | maple_peft (s) | baseline (s) | speedup | "
            "image tower only (s) | speedup bound | max abs Δ logits (fp32) | max abs Δ grad (fp32) | reps (lib / base) |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in result["train"]:
            reps = f"{len(r['times_s']['maple_peft'])} / {len(r['times_s'].get('baseline', []))}"
            base = _f(r["baseline_s"]) if r["baseline_s"] else "not run"
            lines.append(
                f"| {r['classes']} | {r['prompt_tokens_mean']:.1f} / {r['prompt_tokens_trimmed']} | "
                f"{_f(r['maple_peft_s'])} | {base} | {_f(r['speedup'], '.2f', '×')} | "
                f"{_f(r.get('image_tower_only_s'))} | {_f(r.get('speedup_bound'), '.2f', '×')} | "
                f"{_e(r['logits_max_abs_diff_fp32'])} | {_e(r['grad_max_abs_diff_fp32'])} | {reps} |"
            )
        lines += [
            "",
            "*Image tower only*: the same step with the text features held constant (forward + backward through the "
            "prompted image tower only): no text-side optimization can make a step faster than this, so "
            "*speedup bound* = baseline / image tower only is the most any library could reach at that class count.",
        ]
        notes = {r["baseline_note"] for r in result["train"] if r.get("baseline_note")}
        lines += [""] + [f"- baseline: {note}" for note in sorted(notes)] + [""]
    ev = result.get("eval")
    if ev:
        lines += [
            f"## Evaluation ({ev['test_images']} test images, batch {ev['batch_size']}, text features included)",
            "",
            "| classes | text features (s) | plain CLIP (img/s) | maple_peft (img/s) | maple_peft / plain (paired) | "
            "maple_peft, text amortized (img/s) | baseline (img/s) | speedup vs baseline | max abs Δ logits |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in ev["rows"]:
            lines.append(
                f"| {r['classes']} | {_f(r['text_features_s'])} | {_f(r['plain_images_per_s'], '.2f')} | "
                f"{_f(r['maple_peft_images_per_s'], '.2f')} | {_f(r['maple_peft_vs_plain'], '.3f')} | "
                f"{_f(r['maple_peft_steady_images_per_s'], '.2f')} | "
                f"{_f(r['baseline_images_per_s'], '.2f') if r['baseline_images_per_s'] else 'not run'} | "
                f"{_f(r['speedup_vs_baseline'], '.1f', '×')} | {_e(r['logits_max_abs_diff_vs_baseline'])} |"
            )
        paired = ev.get("maple_peft_over_plain_batch_time_paired_median")
        lines += [
            "",
            f"Method: {ev['method']}"
            + (
                f" Per batch, maple_peft / plain CLIP time = {paired:.3f} (median of the ratios of adjacent runs)."
                if paired
                else ""
            ),
            "",
        ]
        if ev.get("end_to_end"):
            e = ev["end_to_end"]
            lines += [
                f"End-to-end check (a real loop over the test set, {e['classes']} classes, one run): plain "
                f"{e['plain_images_per_s']:.2f} img/s, maple_peft {e['maple_peft_images_per_s']:.2f} img/s "
                f"({e['maple_peft_vs_plain']:.3f} of plain).",
                "",
            ]
    mem = result.get("memory")
    if mem and mem.get("rows"):
        rows = mem["rows"]
        by = {(r["kind"], r["classes"]): r for r in rows}
        classes = sorted({r["classes"] for r in rows if r["kind"].startswith("train")})
        ckpt_tbs = next((r["text_batch_size"] for r in rows if r["kind"].endswith("checkpointing")), None)
        lines += [
            "## Peak training-step memory above the model (MiB)",
            "",
            f"| classes | maple_peft | maple_peft + checkpointing (text_batch_size={ckpt_tbs}) | baseline | "
            "maple_peft / baseline | checkpointing / baseline |",
            "|---:|---:|---:|---:|---:|---:|",
        ]

        def cell(kind: str, c: int) -> tuple[str, float | None]:
            r = by.get((kind, c))
            if r is None:
                return "–", None
            if "increase_mb" not in r:
                return r.get("error", "error"), None
            text = f"{r['increase_mb']:.0f}" + ("" if r.get("measured", True) else " (extrapolated)")
            return text, r["increase_mb"]

        for c in classes:
            lib, lib_v = cell("train-maple_peft", c)
            ck, ck_v = cell("train-maple_peft-checkpointing", c)
            base, base_v = cell("train-baseline", c)
            lines.append(
                f"| {c} | {lib} | {ck} | {base} | {_f(lib_v / base_v if lib_v and base_v else None, '.3f')} | "
                f"{_f(ck_v / base_v if ck_v and base_v else None, '.3f')} |"
            )
        others = [r for r in rows if r["kind"] == "train-maple_peft-no-shared-prefix"]
        if others:
            lines += [
                "",
                "maple_peft with `shared_prefix=False` (the text tower's own forward), no checkpointing:",
                "",
            ]
            for r in others:
                base_r = by.get(("train-baseline", r["classes"]))
                ratio = (
                    f" ({r['increase_mb'] / base_r['increase_mb']:.3f} of the baseline)"
                    if base_r and "increase_mb" in r and "increase_mb" in base_r
                    else ""
                )
                value = f"{r['increase_mb']:.0f} MiB{ratio}" if "increase_mb" in r else r.get("error")
                lines.append(f"- {r['classes']} classes: {value}")
        evals = [r for r in rows if r["kind"] == "eval-maple_peft"]
        if evals:
            lines += ["", "Evaluation (text features of all classes + one image batch, no grad):", ""]
            for r in evals:
                value = f"{r['increase_mb']:.0f} MiB" if "increase_mb" in r else r.get("error")
                lines.append(f"- {r['classes']} classes: {value} ({r.get('seconds', 0):.0f} s)")
        fit = mem.get("baseline_fit_mb")
        lines += [
            "",
            f"Method: each configuration in a fresh process; {mem.get('method')}; increase over the memory in use "
            "after the model, classifier and inputs were created, during one training step."
            + (
                f" Baseline extrapolation: linear fit {fit['intercept']:.0f} + {fit['per_class']:.1f} × classes MiB "
                "over the measured points (its activations are proportional to classes × 77 tokens)."
                if fit
                else ""
            ),
            "",
        ]
    opt = result.get("options")
    if opt:
        for block in opt["train"]:
            lines += [
                f"## Options: training step at {block['classes']} classes",
                "",
                "| variant | time (s) | relative to maple_peft fp32 | max abs Δ logits vs it | max abs Δ grad | reps |",
                "|---|---:|---:|---:|---:|---:|",
            ]
            for r in block["rows"]:
                lines.append(
                    f"| {r['variant']} | {_f(r['seconds'])} | {_f(r['relative_to_default'], '.2f', '×')} | "
                    f"{_e(r['logits_max_abs_diff_vs_default'])} | {_e(r.get('grad_max_abs_diff_vs_default'))} | "
                    f"{len(r['times_s'])} |"
                )
            if block.get("compile"):
                lines += ["", f"torch.compile: {block['compile']}"]
            lines.append("")
        if opt.get("text_features"):
            t = opt["text_features"]
            lines += [
                f"## Options: evaluation text features of {t['classes']} classes (tokenization + encoding, no grad)",
                "",
                "| variant | time (s) | relative to maple_peft | max abs Δ features |",
                "|---|---:|---:|---:|",
            ]
            for r in t["rows"]:
                lines.append(
                    f"| {r['variant']} | {_f(r['seconds'])} | {_f(r['relative_to_maple_peft'], '.2f', '×')} | "
                    f"{_e(r['max_abs_diff_vs_maple_peft'])} |"
                )
            lines.append("")
        if opt.get("eval"):
            e = opt["eval"]
            lines += [
                f"## Options: evaluation batch of {e['batch_size']} images ({e['classes']} classes, text cached)",
                "",
                "| variant | images/s | time relative to plain CLIP fp32 | max abs Δ vs fp32 | runs |",
                "|---|---:|---:|---:|---:|",
            ]
            for r in e["rows"]:
                lines.append(
                    f"| {r['variant']} | {_f(r['images_per_s'], '.2f')} | {_f(r['relative_to_plain_fp32'], '.2f', '×')} | "
                    f"{_e(r['max_abs_diff_vs_fp32'])} | {r.get('runs', '–')} |"
                )
            lines.append("")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path, tag: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    train = result.get("train") or []
    ax = axes[0]
    if train:
        ax.plot([r["classes"] for r in train], [r["maple_peft_s"] for r in train], "o-", label="maple_peft")
        base = [r for r in train if r["baseline_s"]]
        ax.plot([r["classes"] for r in base], [r["baseline_s"] for r in base], "s-", label="baseline (77 tokens)")
        for r in base:
            ax.annotate(
                f"{r['speedup']:.1f}×", (r["classes"], r["baseline_s"]), textcoords="offset points", xytext=(4, 4)
            )
    ax.set(xscale="log", yscale="log", xlabel="classes", ylabel="seconds per training step", title="Training step")
    ax.legend()
    ax = axes[1]
    ev = (result.get("eval") or {}).get("rows") or []
    if ev:
        cs = [r["classes"] for r in ev]
        ax.plot(cs, [r["plain_images_per_s"] for r in ev], "k--", label="plain CLIP image encoding")
        ax.plot(cs, [r["maple_peft_images_per_s"] for r in ev], "o-", label="maple_peft")
        base = [r for r in ev if r["baseline_images_per_s"]]
        ax.plot([r["classes"] for r in base], [r["baseline_images_per_s"] for r in base], "s-", label="baseline")
        ax.set_ylim(bottom=0)
    ax.set(xscale="log", xlabel="classes", ylabel="images / s", title="Evaluation throughput")
    ax.legend()
    ax = axes[2]
    mem = (result.get("memory") or {}).get("rows") or []
    for kind, style, label in (
        ("train-maple_peft", "o-", "maple_peft"),
        ("train-maple_peft-checkpointing", "^-", "maple_peft + checkpointing"),
        ("train-baseline", "s-", "baseline"),
    ):
        rows = sorted((r for r in mem if r["kind"] == kind and "increase_mb" in r), key=lambda r: r["classes"])
        measured = [r for r in rows if r.get("measured", True)]
        if measured:
            line = ax.plot(
                [r["classes"] for r in measured], [r["increase_mb"] / 1024 for r in measured], style, label=label
            )[0]
            extra = [r for r in rows if not r.get("measured", True)]
            if extra:
                last = measured[-1:]
                ax.plot(
                    [r["classes"] for r in last + extra],
                    [r["increase_mb"] / 1024 for r in last + extra],
                    ":",
                    color=line.get_color(),
                    label=f"{label} (extrapolated)",
                )
    ax.set(xscale="log", yscale="log", xlabel="classes", ylabel="GiB above the model", title="Peak training memory")
    ax.legend()
    env = result["environment"]
    from matplotlib.ticker import FuncFormatter

    plain_numbers = FuncFormatter(lambda value, _: f"{value:g}")
    for ax in axes:
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_formatter(plain_numbers)
            axis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
    fig.suptitle(f"{tag}: {env.get('gpu') or env['cpu']}, torch {env['torch']}, {env['date_utc']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(json_path: Path, out_dir: Path | None = None) -> list[Path]:
    json_path = Path(json_path)
    out_dir = Path(out_dir) if out_dir else json_path.parent
    result = json.loads(json_path.read_text())
    tag = json_path.stem
    md = markdown(result, tag)
    md += f"\n![{tag}]({tag}.png)\n\nRaw figures: [`{json_path.name}`]({json_path.name}).\n"
    written = [out_dir / f"{tag}.md", out_dir / "latest.md", out_dir / f"{tag}.png"]
    written[0].write_text(md)
    written[1].write_text(md)
    plot(result, written[2], tag)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("results", type=Path, help="a results JSON written by bench.py")
    parser.add_argument("--out", type=Path, help="output folder (default: the JSON's folder)")
    args = parser.parse_args()
    for path in write_report(args.results, args.out):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
