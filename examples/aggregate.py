"""Aggregate the `metrics.json` of many runs into paper-style markdown tables (mean ± std over seeds).

Usage:

    python examples/aggregate.py outputs/ --output results.md --json results.json

Every `metrics.json` below the given directories is read with `maple_peft.training.metrics.RunMetrics` and grouped by
(base model, setting, dataset identity); each group is summarized with `maple_peft.training.metrics.summarize_runs`.
A local dataset is identified by its folder name and a hash of its class names (`dataset_identity`), so two different
imagefolders never share a row. The base-to-novel table has one row per dataset with
`Base | Novel | HM | Seeds` and an "Average" row, following the MaPLe paper: base and novel accuracies are averaged
over seeds (then over datasets) and the harmonic mean is computed from those averages. Other settings get one column
per evaluated split or target dataset (and, for cross-dataset transfer, the average over the target datasets).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from maple_peft.training.data import dataset_identity
from maple_peft.training.metrics import RunMetrics, base_novel_harmonic_mean, summarize_runs

SETTING_TITLES = {
    "base2novel": "Base-to-novel generalization",
    "all": "Few-shot classification (all classes)",
    "cross_dataset": "Cross-dataset transfer",
    "zero_shot": "Zero-shot CLIP",
}
# The datasets in the order of the paper's tables; other names follow alphabetically.
PAPER_ORDER = (
    "imagenet",
    "caltech101",
    "oxfordpets",
    "stanfordcars",
    "oxfordflowers",
    "flowers102",
    "food101",
    "fgvcaircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
    "imagenetv2",
    "imagenetsketch",
    "imageneta",
    "imagenetr",
)


def _order_key(name: str) -> tuple[int, str]:
    normalized = re.sub(r"[^a-z0-9]", "", name.lower())
    return (PAPER_ORDER.index(normalized), "") if normalized in PAPER_ORDER else (len(PAPER_ORDER), name.lower())


def find_metrics_files(paths: Sequence[str | Path]) -> list[Path]:
    """Every `metrics.json` at or below the given paths (files are taken as is), each once, sorted.

    Args:
        paths (`Sequence[str | Path]`): Run directories, directories of runs, or `metrics.json` files.

    Returns:
        The resolved paths of the found files.
    """
    found: set[Path] = set()
    for path in map(Path, paths):
        if path.is_file():
            found.add(path.resolve())
        elif path.is_dir():
            found.update(file.resolve() for file in path.rglob("metrics.json") if file.is_file())
        else:
            raise FileNotFoundError(f"{str(path)!r} does not exist; pass run directories that contain metrics.json.")
    return sorted(found)


def load_runs(files: Sequence[Path]) -> list[tuple[Path, RunMetrics]]:
    """Loads and validates metrics.json files.

    Args:
        files (`Sequence[Path]`): Paths of `metrics.json` files.

    Returns:
        `list[tuple[Path, RunMetrics]]`: Each file with its metrics.
    """
    runs = []
    for file in files:
        try:
            data = json.loads(Path(file).read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{file} is not valid JSON ({error}); fix or remove it.") from error
        try:
            runs.append((Path(file), RunMetrics.from_dict(data)))
        except ValueError as error:
            raise ValueError(f"{file} is not a maple_peft metrics.json: {error}") from error
    return runs


def run_dataset_identity(run: RunMetrics) -> str:
    """The dataset a run is grouped by: its recorded identity, or, for a run that recorded a bare `"imagefolder"`
    (written before datasets had identities), one derived from its `data_dir` and the evaluated class names.

    Args:
        run (`RunMetrics`): The run.

    Returns:
        `str`: The dataset's identity.
    """
    data_dir = run.train_config.get("data_dir")
    if run.dataset != "imagefolder" or not data_dir:
        return run.dataset
    names = {name for result in run.results.values() for name in result.get("per_class_accuracy") or {}}
    return dataset_identity(run.dataset, data_dir, sorted(names))


def summarize_groups(runs: Sequence[tuple[Path, RunMetrics]]) -> list[dict[str, Any]]:
    """Groups runs by (base model, setting, dataset identity) and summarizes each group over its seeds.

    Args:
        runs (`Sequence[tuple[Path, RunMetrics]]`): The output of `load_runs`.

    Returns:
        `list[dict]`: One `summarize_runs` dict per group, sorted by setting, base model and dataset (paper order).
    """
    groups: dict[tuple[str, str, str], list[tuple[Path, RunMetrics]]] = {}
    for path, run in runs:
        identity = run_dataset_identity(run)
        if identity != run.dataset:
            run = dataclasses.replace(run, dataset=identity)
        groups.setdefault((run.base_model, run.setting, identity), []).append((path, run))
    summaries = []
    for (_, setting, dataset), group in groups.items():
        try:
            summaries.append(summarize_runs([run for _, run in group]))
        except ValueError as error:
            paths = ", ".join(str(path) for path, _ in group)
            raise ValueError(f"Cannot summarize {dataset}/{setting} from {paths}: {error}") from error
    return sorted(summaries, key=lambda s: (str(s["setting"]), str(s["base_model"]), _order_key(str(s["dataset"]))))


def _format(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _column_title(column: str) -> str:
    return {"base": "Base", "novel": "Novel"}.get(column, column)


def _table(summaries: Sequence[dict[str, Any]], setting: str, part: str | None = None) -> tuple[list[str], dict]:
    """Markdown lines of one table and its average row's numbers. `part="zero_shot"` tabulates zero-shot CLIP."""
    rows = [(s, s[part] if part else s) for s in summaries if part is None or part in s]
    columns: list[str] = []
    for _, block in rows:
        columns.extend(split for split in block["results"] if split not in columns)
    sources = {summary["dataset"] for summary, _ in rows}
    if setting == "cross_dataset":  # the source dataset(s) first, then the targets in paper order
        columns.sort(key=lambda c: (c not in sources, _order_key(c)))
    else:  # base, novel, then the other splits as found
        columns = [c for c in ("base", "novel") if c in columns] + [c for c in columns if c not in ("base", "novel")]
    has_hm = "base" in columns and "novel" in columns
    target_average = setting == "cross_dataset" and any(c not in sources for c in columns)

    header = ["Dataset", *map(_column_title, columns)]
    header += ["HM"] * has_hm + ["Average (targets)"] * target_average + ["Seeds"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 2) + "---|"]
    per_column: dict[str, list[float]] = {column: [] for column in columns}
    target_means: list[float] = []
    for summary, block in rows:
        cells = [str(summary["dataset"])]
        for column in columns:
            entry = block["results"].get(column)
            if entry is None:
                cells.append("–")
                continue
            per_column[column].append(entry["accuracy_mean"])
            cells.append(_format(entry["accuracy_mean"], entry["accuracy_std"]))
        if has_hm:
            cells.append(_format(block.get("harmonic_mean")))
        if target_average:
            targets = [
                block["results"][c]["accuracy_mean"]
                for c in columns
                if c in block["results"] and c != summary["dataset"]
            ]
            mean = sum(targets) / len(targets) if targets else None
            if mean is not None:
                target_means.append(mean)
            cells.append(_format(mean))
        seeds = [seed for seed in summary.get("seeds", []) if seed is not None]
        cells.append(", ".join(str(seed) for seed in sorted(seeds)) if seeds else str(summary["num_runs"]))
        lines.append("| " + " | ".join(cells) + " |")

    average = {column: sum(values) / len(values) for column, values in per_column.items() if values}
    hm = base_novel_harmonic_mean(average) if has_hm else None
    if hm is not None:
        average["HM"] = hm
    if target_means:
        average["Average (targets)"] = sum(target_means) / len(target_means)
    if len(rows) > 1:
        cells = ["**Average**", *(_format(average.get(column)) for column in columns)]
        cells += [_format(average.get("HM"))] * has_hm + [_format(average.get("Average (targets)"))] * target_average
        cells.append(f"{len(rows)} datasets")
        lines.append("| " + " | ".join(cells) + " |")
    return lines, average


def render_markdown(summaries: Sequence[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Renders the tables of all settings and base models.

    Args:
        summaries (`Sequence[dict[str, Any]]`): The output of `summarize_groups`.

    Returns:
        The markdown text and, per table, its average row (`{"setting", "base_model", "part", "average"}`).
    """
    sections = [
        "# MaPLe results",
        "",
        "Accuracy (%) as mean ± std over seeds; HM is computed from the mean accuracies.",
    ]
    averages = []
    keys = sorted({(s["setting"], str(s["base_model"])) for s in summaries}, key=lambda k: (k[0] != "base2novel", k))
    for setting, base_model in keys:
        group = [s for s in summaries if s["setting"] == setting and str(s["base_model"]) == base_model]
        for part in (None, "zero_shot"):
            if part and not any(part in s for s in group):
                continue
            title = SETTING_TITLES.get(setting, setting)
            if part:
                title += ": zero-shot CLIP on the same splits"
            lines, average = _table(group, setting, part)
            sections += ["", f"## {title} (`{base_model}`)", "", *lines]
            averages.append(
                {"setting": setting, "base_model": base_model, "part": part or "maple", "average": average}
            )
    return "\n".join(sections) + "\n", averages


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code.

    Args:
        argv (`Sequence[str] | None`): The command-line arguments (without the program name); `None` reads `sys.argv`.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="run directories (searched recursively for metrics.json)")
    parser.add_argument("--output", "-o", help="markdown file to write (default: print to stdout)")
    parser.add_argument("--json", dest="json_path", help="also write the per-group summaries to this JSON file")
    args = parser.parse_args(argv)

    try:
        files = find_metrics_files(args.run_dirs)
        if not files:
            raise FileNotFoundError(
                f"No metrics.json found below {args.run_dirs}; pass the output directories of training runs."
            )
        summaries = summarize_groups(load_runs(files))
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    markdown, averages = render_markdown(summaries)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(markdown, encoding="utf-8")
        print(f"wrote {args.output} ({len(files)} runs, {len(summaries)} groups)")
    else:
        print(markdown, end="")
    if args.json_path:
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        payload = {"summaries": summaries, "averages": averages, "files": [str(f) for f in files]}
        Path(args.json_path).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
