"""The papers' tables from many runs: the grouping of runs (`method_key`, `group_runs`: the one grouping of the project,
used by `examples/aggregate.py` and `examples/benchmark.py`), the average over seeds (`summarize_runs`, which refuses
runs that differ in an option that changes a result), and the tables in Markdown, CSV and a figure beside the
published figures (`build_tables`, `load_published`). What a table holds: docs/formats.md#the-tables.
"""

from __future__ import annotations

import csv
import io
import numbers
import os
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .metrics import RunMetrics, base_novel_harmonic_mean, run_benchmark, run_split_source

__all__ = [
    "PAPER_ORDER",
    "PublishedTable",
    "RESULT_NEUTRAL_OPTIONS",
    "ResultTable",
    "RunGroup",
    "TableRow",
    "build_tables",
    "differing_run_options",
    "group_runs",
    "load_published",
    "method_key",
    "method_name",
    "method_title",
    "plot_comparison",
    "render_csv",
    "render_markdown",
    "split_kind",
    "summarize_runs",
]


# ---- grouping runs: what defines a method and a protocol ------------------------------------------------------------

RESULT_NEUTRAL_OPTIONS: frozenset[str] = frozenset(
    {
        "seed",  # what a table averages over
        # where things are, where they go, what is logged: not what is computed
        "config", "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "stop_after_epoch", "report_to",
        "plots", "zero_shot_baseline", "push_to_hub", "hub_model_id", "hub_private", "num_workers",
        "eval_batch_size", "checkpointing_steps", "checkpoints_total_limit", "text_batch_size",
        "gradient_checkpointing", "data_root", "data_dir", "dataset_registry",
        # told apart by the table (backbone) and its rows and columns (dataset, split, targets)
        "model_name_or_path", "tokenizer_name_or_path", "dataset", "dataset_name", "eval_datasets", "train_split",
        "test_split",
    }
)  # fmt: skip
"""Training options that do not change a run's result (or that tables tell apart otherwise): runs may differ in
these and still be averaged. Runs that differ in any other option are never averaged."""

_PEFT_NEUTRAL = frozenset(
    {
        "task_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision", "inference_mode",
        "tokenizer_name_or_path", "prompt_init_token_ids", "target_modules", "class_names", "maple_peft_version",
        "dataset",
    }
)  # fmt: skip
"""Adapter-config fields that record where the model came from, not what it is."""

_OBJECTIVE_DEFAULTS: dict[str, float | str | None] = {
    "text_weight": 0.0,
    "image_weight": 0.0,
    "logits_weight": 0.0,
    "kg_weight": None,
    "kg_template": None,
    "reg_weight": None,
    "gpa_mean": None,
    "gpa_std": None,
}
"""The training objective's options and their values when absent (plain cross-entropy, no prompt aggregation)."""

_SETTING_TITLES = {
    "base2novel": "base-to-novel",
    "all": "few-shot (all classes)",
    "cross_dataset": "cross-dataset",
    "zero_shot": "zero-shot",
}


def _canonical(value: Any) -> Any:
    """A hashable, type-stable form of an option's value (`15` and `15.0` are the same number)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _canonical(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_canonical(v) for v in value)
    return repr(value)


def split_kind(split_source: str) -> str:
    """`"coop"`, `"hub"`, `"local"` or `"unrecorded"`: the kind of split a table holds (never two kinds in one).

    Args:
        split_source (`str`): A `run_split_source` value.
    """
    return split_source.split(":", 1)[0] if split_source != "coop" else "coop"


def method_key(run: RunMetrics) -> dict[str, Any]:
    """Everything that defines a run's method and protocol, the key of its table: the backbone (the base model as
    recorded), the adapter's architecture (every field of its config but where it came from and its class names),
    the objective and its weights, the setting, the shots and the kind of split.

    Args:
        run (`RunMetrics`): The run.

    Returns:
        `dict[str, Any]`: Option name -> value, in a stable order.
    """
    key: dict[str, Any] = {
        "base_model": run.base_model,
        "setting": run.setting,
        "num_shots": run.num_shots,
        "splits": split_kind(run_split_source(run)),
    }
    for name in sorted(run.peft_config):
        if name not in _PEFT_NEUTRAL:
            key[name] = run.peft_config[name]
    from ..objectives import objective_name

    for name, default in _OBJECTIVE_DEFAULTS.items():
        value = run.train_config.get(name)
        key[name] = default if value is None else value
    key["objective"] = objective_name(run.train_config, run.peft_config.get("variant"))
    return key


def _key_id(key: Mapping[str, Any]) -> tuple:
    return tuple((name, _canonical(value)) for name, value in sorted(key.items()))


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def method_name(key: Mapping[str, Any]) -> str:
    """The method's short name (`"MaPLe"`, `"IVLP"`, `"CoOp"`, `"PromptSRC"`, `"MaPLe + SRC"`, `"CoCoOp"`, `"KgCoOp"`,
    `"MMRL"`...), as the cards name it (`maple_peft.adapter_card.method_name`).

    Args:
        key (`Mapping[str, Any]`): A `method_key` (the adapter's fields and the objective's options).
    """
    from ..adapter_card import method_name as card_method_name

    if key.get("variant") is None:
        return "Prompt learning (method not recorded)"
    return card_method_name(key, key)


def method_title(key: Mapping[str, Any], others: Sequence[Mapping[str, Any]] = ()) -> str:
    """A table's title: the method, its prompt shape and objective, the protocol, the backbone and the splits; when
    another table of `others` would get the same title, the options that tell them apart are added.

    Args:
        key (`Mapping[str, Any]`): A `method_key`.
        others (`Sequence[Mapping[str, Any]]`): The keys of the other tables shown beside it.

    Example:
        ```python
        >>> method_title({"variant": "maple", "n_ctx": 2, "depth": 9, "setting": "base2novel", "num_shots": 16,
        ...               "base_model": "openai/clip-vit-base-patch16", "splits": "coop"})
        'MaPLe (2 tokens, depth 9) · base-to-novel · 16 shots · `openai/clip-vit-base-patch16` · CoOp splits'
        ```
    """

    def base_title(k: Mapping[str, Any]) -> str:
        details = []
        if k.get("n_ctx") is not None:
            vision = k.get("n_ctx_vision")
            tokens = f"{k['n_ctx']}+{vision}" if vision not in (None, k["n_ctx"]) else f"{k['n_ctx']}"
            details.append(f"{tokens} tokens")
        if k.get("depth") is not None:
            details.append(f"depth {k['depth']}")
        weights = [k.get(w) or 0 for w in ("text_weight", "image_weight", "logits_weight")]
        if any(weights):
            details.append("losses " + "/".join(_number(w) for w in weights))
        if k.get("gpa_mean") is not None:
            details.append(f"GPA {_number(k['gpa_mean'])}±{_number(k.get('gpa_std'))}")
        name = method_name(k) + (f" ({', '.join(details)})" if details else "")
        splits = {"coop": "CoOp splits", "hub": "Hub splits", "local": "local folders"}
        parts = [
            name,
            _SETTING_TITLES.get(str(k.get("setting")), str(k.get("setting"))),
            f"{k['num_shots']} shots" if k.get("num_shots") else None,
            f"`{k.get('base_model')}`",
            splits.get(str(k.get("splits")), f"{k.get('splits')} splits"),
        ]
        return " · ".join(part for part in parts if part)

    title = base_title(key)
    clashing = [o for o in others if _key_id(o) != _key_id(key) and base_title(o) == title]
    if clashing:
        differing = sorted(
            name
            for name in set(key).union(*clashing)
            if any(_canonical(o.get(name)) != _canonical(key.get(name)) for o in clashing)
        )
        title += " · " + ", ".join(f"{name}={key.get(name)!r}" for name in differing)
    return title


def _comparable_options(run: RunMetrics) -> dict[str, Any]:
    """Every recorded option that changes a result (the training options but `RESULT_NEUTRAL_OPTIONS`, the adapter
    config but where it came from), with the backbone, setting, shots, dataset and split."""
    options: dict[str, Any] = {
        "base_model": run.base_model,
        "setting": run.setting,
        "num_shots": run.num_shots,
        "dataset": run.dataset,
        "split_source": run_split_source(run),
    }
    options.update({k: v for k, v in run.train_config.items() if k not in RESULT_NEUTRAL_OPTIONS})
    options.update({f"adapter {k}": v for k, v in run.peft_config.items() if k not in _PEFT_NEUTRAL})
    for name, default in _OBJECTIVE_DEFAULTS.items():
        if options.get(name) is None:
            options[name] = default
    return options


def differing_run_options(runs: Sequence[tuple[str, RunMetrics]]) -> list[str]:
    """The options that differ between runs that would be averaged, each as `"name: value (label), value (label)"`.

    Args:
        runs (`Sequence[tuple[str, RunMetrics]]`): Each run with a label naming it in messages (a seed, a folder).

    Returns:
        `list[str]`: One line per differing option (empty when the runs differ in the seed only).
    """
    if len(runs) < 2:
        return []
    options = [(label, _comparable_options(run)) for label, run in runs]
    names = sorted(set().union(*(o for _, o in options)))
    lines = []
    for name in names:
        values = [(label, o.get(name)) for label, o in options]
        if len({_canonical(value) for _, value in values}) > 1:
            lines.append(f"{name}: " + ", ".join(f"{value!r} ({label})" for label, value in values))
    return lines


@dataclass
class RunGroup:
    """The runs of one table row: one method and protocol (`method`), one dataset, one split.

    Args:
        method (`dict[str, Any]`): The `method_key` shared by the runs.
        dataset (`str`): The dataset's identity.
        split_source (`str`): The split the runs used.
        runs (`list[tuple[str, RunMetrics]]`): Each run with its label (e.g. the folder it was read from).
    """

    method: dict[str, Any]
    dataset: str
    split_source: str
    runs: list[tuple[str, RunMetrics]]


def group_runs(runs: Sequence[tuple[str, RunMetrics]]) -> list[RunGroup]:
    """Groups runs by method and protocol (`method_key`), then by dataset and split: the rows of the tables.

    Args:
        runs (`Sequence[tuple[str, RunMetrics]]`): Each run with a label naming it in messages (e.g. its folder).

    Returns:
        `list[RunGroup]`: In the order first seen.
    """
    groups: dict[tuple, RunGroup] = {}
    for label, run in runs:
        key, source = method_key(run), run_split_source(run)
        group_id = (_key_id(key), run.dataset, source)
        if group_id not in groups:
            groups[group_id] = RunGroup(key, run.dataset, source, [])
        groups[group_id].runs.append((label, run))
    return list(groups.values())


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1); `None` for a single value, which has none."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), (float(array.std(ddof=1)) if array.size > 1 else None)


def _summarize_results(all_results: Sequence[Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """Mean and std over runs of each split's accuracy and macro-F1, plus the HM of the averaged base and novel."""
    splits: list[str] = []
    for results in all_results:
        splits.extend(split for split in results if split not in splits)
    summary: dict[str, Any] = {"results": {}}
    for split in splits:
        present = [results[split] for results in all_results if split in results]
        accuracy_mean, accuracy_std = _mean_std([r["accuracy"] for r in present])
        entry = {"accuracy_mean": accuracy_mean, "accuracy_std": accuracy_std, "num_runs": len(present)}
        f1_values = [r["macro_f1"] for r in present if r.get("macro_f1") is not None]
        if len(f1_values) == len(present):
            entry["macro_f1_mean"], entry["macro_f1_std"] = _mean_std(f1_values)
        summary["results"][split] = entry
    # The paper's convention: the HM of the seed-averaged base and novel accuracy, not the mean of per-seed HMs.
    hm = base_novel_harmonic_mean({split: entry["accuracy_mean"] for split, entry in summary["results"].items()})
    if hm is not None:
        summary["harmonic_mean"] = hm
    return summary


def summarize_runs(runs: Sequence[Mapping[str, Any] | RunMetrics]) -> dict[str, Any]:
    """Aggregates the `metrics.json` of several seeds of one experiment, the way the MaPLe paper reports them.

    Each split's (or target dataset's) accuracy and macro-F1 are averaged over the runs, with their sample standard
    deviation (n - 1; `None` for a single run). When both `"base"` and `"novel"` are present the harmonic mean is
    computed from the averaged base and novel accuracies, not averaged over per-seed HMs. Runs that differ in anything
    but the seed (and the options of `RESULT_NEUTRAL_OPTIONS`) are refused, naming the options that differ.

    Args:
        runs (`Sequence[Mapping | RunMetrics]`): Loaded `metrics.json` dicts (or `RunMetrics`) of one method,
            protocol, dataset and split, one per seed.

    Returns:
        `{"dataset", "setting", "base_model", "split_source", "split_note", "benchmark", "method", "num_runs",
        "seeds", "std": "sample", "results": {split: {"accuracy_mean", "accuracy_std", "macro_f1_mean",
        "macro_f1_std", "num_runs"}}}`, plus `"harmonic_mean"` when base and novel are present and `"zero_shot"`
        (same layout) when every run has zero-shot results.

    Example:
        ```python
        >>> runs = [{"dataset": "eurosat", "setting": "base2novel", "seed": s, "base_model": "m",
        ...          "results": {"base": {"accuracy": b, "macro_f1": b}, "novel": {"accuracy": n, "macro_f1": n}}}
        ...         for s, b, n in [(1, 90.0, 60.0), (2, 94.0, 80.0)]]
        >>> summary = summarize_runs(runs)
        >>> summary["results"]["base"]["accuracy_mean"], summary["results"]["base"]["accuracy_std"]
        (92.0, 2.8284271247461903)
        ```
    """
    runs = list(runs)
    if not runs:
        raise ValueError("The list of runs is empty; pass at least one loaded metrics.json.")
    parsed = []
    for index, run in enumerate(runs):
        try:
            parsed.append(run if isinstance(run, RunMetrics) else RunMetrics.from_dict(run))
        except ValueError as error:
            raise ValueError(f"runs[{index}]: {error}") from error
    runs = parsed
    seeds = [run.seed for run in runs]
    duplicated = sorted({seed for seed in seeds if seed is not None and seeds.count(seed) > 1})
    if duplicated:
        raise ValueError(
            f"seed(s) {duplicated} appear in more than one run of {runs[0].dataset}/{runs[0].setting} with the same "
            "options; each seed must be counted once: remove the duplicate run directory."
        )
    labels = [f"seed {seed}" if seed is not None else f"run {i + 1}" for i, (seed, _) in enumerate(zip(seeds, runs))]
    differing = differing_run_options(list(zip(labels, runs)))
    if differing:
        raise ValueError(
            f"Runs of {runs[0].dataset} differ in more than the seed, so they are not averaged: {'; '.join(differing)}. "
            "Summarize each set of options separately (examples/aggregate.py makes one table per method)."
        )

    first = runs[0]
    summary: dict[str, Any] = {
        "dataset": first.dataset,
        "setting": first.setting,
        "base_model": first.base_model,
        "split_source": run_split_source(first),
        "split_note": first.split_note,
        "benchmark": run_benchmark(first),
        "method": method_key(first),
        "num_runs": len(runs),
        "seeds": seeds,
        "std": "sample",
    }
    summary.update(_summarize_results([run.results for run in runs]))
    if all(run.zero_shot_results for run in runs):
        summary["zero_shot"] = _summarize_results([run.zero_shot_results for run in runs])
    return summary


# ---- the tables ----------------------------------------------------------------------------------------------------

PAPER_ORDER: tuple[str, ...] = (
    "imagenet",
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
    "imagenetv2",
    "imagenet_sketch",
    "imagenet_a",
    "imagenet_r",
)
"""The datasets in the order of the papers' tables (CoOp's canonical names); other datasets follow alphabetically."""

MISSING = "missing"


def _benchmark_name(name: str) -> str | None:
    from .data.coop import get_benchmark

    try:
        return get_benchmark(name).name
    except (KeyError, ValueError):
        return None


def _order_key(name: str, benchmark: str | None = None) -> tuple[int, str]:
    canonical = benchmark or _benchmark_name(name)
    if canonical in PAPER_ORDER:
        return PAPER_ORDER.index(canonical), name.lower()
    return len(PAPER_ORDER), name.lower()


# ---- published figures ----------------------------------------------------------------------------------------------


@dataclass
class PublishedTable:
    """A paper's figures for one method and protocol, with where they come from.

    Args:
        name (`str`): The method as the paper names it (`"MaPLe"`).
        source (`str`): The paper and table (`"Khattak et al., CVPR 2023, Table 1"`).
        url (`str`): Where to read it.
        backbone (`str`): The backbone the paper used (`"ViT-B/16"`).
        match (`dict[str, Any]`): The `method_key` values a table must have for these figures to apply.
        columns (`list[str]`): What each value is: `["base", "novel", "hm"]` or `["accuracy"]`.
        rows (`dict[str, list[float]]`): Dataset (CoOp name) -> values.
        average (`list[float] | None`): The paper's average row, if it has one.
        note (`str`): How the figures were checked.
    """

    name: str
    source: str
    url: str
    backbone: str
    match: dict[str, Any]
    columns: list[str]
    rows: dict[str, list[float]] = field(default_factory=dict)
    average: list[float] | None = None
    note: str = ""

    def matches(self, key: Mapping[str, Any]) -> bool:
        """Whether a table with this `method_key` is the method and protocol these figures are for.

        Args:
            key (`Mapping[str, Any]`): A `method_key`.
        """
        return all(_canonical(key.get(name)) == _canonical(value) for name, value in self.match.items())

    def value(self, dataset: str, column: str) -> float | None:
        """The published value of `column` (e.g. `"hm"`) for a dataset (any CoOp name or alias), if any.

        Args:
            dataset (`str`): The dataset.
            column (`str`): One of `columns`.
        """
        name = _benchmark_name(dataset) or dataset
        values = self.rows.get(name)
        return None if values is None or column not in self.columns else values[self.columns.index(column)]


def load_published(paths: Sequence[str | os.PathLike]) -> list[PublishedTable]:
    """Reads published figures from YAML files (or every `*.yaml` of a folder).

    Each file has a `source` and a list of `tables`, each with `name`, `table`, `backbone`, `match` (the method key
    values), `columns`, `rows` (dataset -> values) and optionally `average` and `note`; see `examples/published/`.

    Args:
        paths (`Sequence[str | os.PathLike]`): Files or folders.

    Returns:
        `list[PublishedTable]`: Every table of every file.

    Raises:
        FileNotFoundError: A path does not exist.
        ValueError: A file is malformed (naming the file and the entry).
    """
    import yaml

    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(sorted(path.glob("*.yaml")))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"Published figures {str(path)!r} do not exist; pass a YAML file or a folder.")
    tables = []
    for file in files:
        try:
            data = yaml.safe_load(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, yaml.YAMLError) as error:
            raise ValueError(f"Published figures {file} are not a YAML text file: {error}") from None
        if not isinstance(data, Mapping) or not isinstance(data.get("tables"), list):
            raise ValueError(f"Published figures {file} need a 'source' and a list of 'tables'.")
        for index, entry in enumerate(data["tables"]):
            where = f"{file}, tables[{index}]"
            try:
                columns = list(entry["columns"])
                rows = {
                    str(k): [float(v) for v in (vs if isinstance(vs, list) else [vs])]
                    for k, vs in entry["rows"].items()
                }
                average = entry.get("average")
                average = (
                    None
                    if average is None
                    else [float(v) for v in (average if isinstance(average, list) else [average])]
                )
                table = PublishedTable(
                    name=str(entry["name"]),
                    source=f"{data.get('source', file.stem)}, {entry.get('table', '')}".rstrip(", "),
                    url=str(data.get("url", "")),
                    backbone=str(entry.get("backbone", "")),
                    match=dict(entry["match"]),
                    columns=columns,
                    rows=rows,
                    average=average,
                    note=str(entry.get("note") or data.get("note") or ""),
                )
            except (KeyError, TypeError, ValueError, AttributeError) as error:
                raise ValueError(f"{where} is malformed ({type(error).__name__}: {error}).") from None
            bad = [name for name, values in rows.items() if len(values) != len(columns)]
            if average is not None and len(average) != len(columns):
                bad.append("average")
            if bad:
                raise ValueError(f"{where}: {bad} do not have one value per column {columns}.")
            tables.append(table)
    return tables


# ---- tables ---------------------------------------------------------------------------------------------------------


@dataclass
class TableRow:
    """One dataset (and split) of a table.

    Args:
        dataset (`str`): The dataset's identity (the row's label).
        split_source (`str`): The split its runs used.
        benchmark (`str | None`): The benchmark it stands for, for published figures and the papers' order.
        summary (`dict | None`): `summarize_runs` of its seeds; `None` when no run finished (a missing row).
        missing_seeds (`list[int]`): Seeds the caller expected that have no result.
        split_note (`str | None`): Which split, in a sentence.
        shots (`dict[int, dict]`): Few-shot tables: number of shots -> summary.
    """

    dataset: str
    split_source: str
    benchmark: str | None = None
    summary: dict[str, Any] | None = None
    missing_seeds: list[int] = field(default_factory=list)
    split_note: str | None = None
    shots: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass
class ResultTable:
    """One method and protocol: a title, its rows, and the published figures that apply.

    Args:
        title (`str`): The table's title (`method_title`).
        method (`dict[str, Any]`): The `method_key` of its runs.
        setting (`str`): `"base2novel"`, `"cross_dataset"`, `"all"` or `"zero_shot"`.
        rows (`list[TableRow]`): In the papers' order.
        columns (`list[str]`): The value columns (`"base"`, `"novel"`, targets, or numbers of shots as text).
        published (`list[PublishedTable]`): The published figures of the same method and protocol.
        notes (`list[str]`): Lines shown under the table (splits, options that differ between rows).
    """

    title: str
    method: dict[str, Any]
    setting: str
    rows: list[TableRow]
    columns: list[str]
    published: list[PublishedTable] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def slug(self) -> str:
        """A file-name form of the method part of the title (`"maple-2-tokens-depth-9"`)."""
        method = self.title.split(" · ", 1)[0].lower().replace("†", "-shared")
        return re.sub(r"[^a-z0-9]+", "-", method).strip("-")[:60] or "table"


def _published_value(table: ResultTable, dataset: str, column: str) -> float | None:
    for published in table.published:
        value = published.value(dataset, column)
        if value is not None:
            return value
    return None


def build_tables(
    runs: Sequence[tuple[str, RunMetrics]],
    *,
    expected_datasets: Sequence[str] = (),
    expected_seeds: Sequence[int] = (),
    published: Sequence[PublishedTable] = (),
) -> list[ResultTable]:
    """One table per method and protocol, with one row per dataset and split.

    Args:
        runs (`Sequence[tuple[str, RunMetrics]]`): Each run with a label naming it in messages (its folder).
        expected_datasets (`Sequence[str]`): Datasets every table should have a row for (a missing one is shown as
            missing), e.g. a benchmark's grid.
        expected_seeds (`Sequence[int]`): Seeds every row should have (the missing ones are listed).
        published (`Sequence[PublishedTable]`): Published figures; those matching a table's method are shown.

    Returns:
        `list[ResultTable]`: Base-to-novel tables first.

    Raises:
        ValueError: Runs of one row differ in more than the seed (naming the options and the runs).
    """
    groups = group_runs(runs)
    methods: dict[tuple, dict[str, Any]] = {}
    for group in groups:  # few-shot tables hold every number of shots as columns
        key = dict(group.method)
        if key["setting"] == "all":
            key.pop("num_shots", None)
        methods.setdefault(_key_id(key), key)
    all_keys = list(methods.values())
    tables = []
    for table_id, key in methods.items():
        members = [g for g in groups if _key_id(_table_key(g.method)) == table_id]
        setting = key["setting"]
        rows: dict[tuple[str, str], TableRow] = {}
        for group in members:
            labels = [label for label, _ in group.runs]
            try:
                summary = summarize_runs([run for _, run in group.runs])
            except ValueError as error:
                raise ValueError(f"Cannot average {group.dataset} ({', '.join(labels)}): {error}") from None
            row = rows.setdefault(
                (group.dataset, group.split_source),
                TableRow(group.dataset, group.split_source, summary["benchmark"], split_note=summary["split_note"]),
            )
            if setting == "all":
                row.shots[int(group.method.get("num_shots") or 0)] = summary
            else:
                row.summary = summary
        for row in rows.values():
            seeds = _row_seeds(row)
            row.missing_seeds = [seed for seed in expected_seeds if seed not in seeds]
        present = {(_benchmark_name(r.dataset) or r.dataset) for r in rows.values()}
        for name in expected_datasets:
            if (_benchmark_name(name) or name) not in present:
                rows[(name, "")] = TableRow(name, "", _benchmark_name(name), missing_seeds=list(expected_seeds))
        ordered = sorted(rows.values(), key=lambda r: _order_key(r.dataset, r.benchmark))
        table = ResultTable(
            title=method_title(key if setting != "all" else {**key, "num_shots": None}, all_keys),
            method=key,
            setting=setting,
            rows=ordered,
            columns=_columns(setting, ordered),
            published=[p for p in published if p.matches(key)],
        )
        table.notes = _notes(table, members)
        tables.append(table)
    order = {"base2novel": 0, "cross_dataset": 1, "all": 2}
    return sorted(tables, key=lambda t: (order.get(t.setting, 3), t.title))


def _table_key(key: Mapping[str, Any]) -> dict[str, Any]:
    key = dict(key)
    if key["setting"] == "all":
        key.pop("num_shots", None)
    return key


def _row_seeds(row: TableRow) -> set[int]:
    summaries = [row.summary] if row.summary else list(row.shots.values())
    if not summaries:
        return set()
    # a seed counts as present when every number of shots has it
    return set.intersection(*({s for s in summary["seeds"] if s is not None} for summary in summaries))


def _columns(setting: str, rows: Sequence[TableRow]) -> list[str]:
    if setting == "all":
        shots = sorted({n for row in rows for n in row.shots})
        return [str(n) for n in shots]
    columns: list[str] = []
    for row in rows:
        if row.summary:
            columns.extend(split for split in row.summary["results"] if split not in columns)
    if setting == "cross_dataset":  # the source(s) first, then the targets in the papers' order
        sources = {row.dataset for row in rows}
        return sorted(columns, key=lambda c: (c not in sources, _order_key(c)))
    first = [c for c in ("base", "novel") if c in columns]
    return first + [c for c in columns if c not in first]


def _notes(table: ResultTable, members: Sequence[Any]) -> list[str]:
    notes = []
    splits = {(row.dataset, row.split_note) for row in table.rows if row.split_note and row.split_source != "coop"}
    for dataset, note in sorted(splits):
        notes.append(f"Split of {dataset}: {note}.")
    if len(members) > 1:  # options that differ between datasets (each row's seeds agree: summarize_runs checked)
        firsts = [(group.dataset, group.runs[0][1]) for group in members]
        differing = differing_run_options(firsts)
        differing = [line for line in differing if not line.startswith(("dataset:", "split_source:", "num_shots:"))]
        if differing:
            notes.append("Options that differ between datasets: " + "; ".join(differing) + ".")
    for published in table.published:
        text = f"Paper: {published.name}, {published.backbone} ({published.source}"
        text += f"; {published.url})." if published.url else ")."
        if published.average is not None and published.rows and "hm" in published.columns:
            text += f" Its average over its {len(published.rows)} datasets: HM {published.average[-1]:.2f}."
        elif published.average is not None and not published.rows:
            values = " / ".join(f"{v:.2f}" for v in published.average)
            text += f" Its average ({' / '.join(published.columns)}): {values}."
        if published.note:
            text += f" {published.note}"
        notes.append(text)
    return notes


# ---- rendering ------------------------------------------------------------------------------------------------------


def _fmt(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "–"
    return f"{value:.2f}" if std is None else f"{value:.2f} ± {std:.2f}"


def _cell(summary: Mapping[str, Any] | None, column: str) -> tuple[float | None, float | None]:
    if not summary:
        return None, None
    entry = summary["results"].get(column)
    return (None, None) if entry is None else (entry["accuracy_mean"], entry["accuracy_std"])


def _few_shot_value(summary: Mapping[str, Any]) -> tuple[float | None, float | None]:
    results = summary["results"]
    entry = results.get(summary["dataset"]) or (next(iter(results.values())) if len(results) == 1 else None)
    return (None, None) if entry is None else (entry["accuracy_mean"], entry["accuracy_std"])


def _seeds_text(row: TableRow) -> str:
    seeds = sorted(_row_seeds(row))
    text = ", ".join(map(str, seeds)) if seeds else ""
    if row.missing_seeds:
        text += ("; " if text else "") + "missing: " + ", ".join(map(str, row.missing_seeds))
    return text


@dataclass
class _Grid:
    """A table as text cells: the header, the value rows (with means for averaging), the average row."""

    header: list[str]
    rows: list[list[str]]
    average: list[str] | None
    published: list[str] | None
    csv_header: list[str]
    csv_rows: list[list[Any]]


def _grid(table: ResultTable, part: str | None) -> _Grid:
    """The cells of `table` (`part="zero_shot"`: zero-shot CLIP's results on the same splits)."""
    setting, columns = table.setting, table.columns
    hub = any(row.split_source not in ("coop", "") for row in table.rows)
    b2n = setting == "base2novel" or ("base" in columns and "novel" in columns)
    paper_hm = b2n and part is None and any(p.rows for p in table.published)
    targets = (
        [c for c in columns if c not in {row.dataset for row in table.rows}] if setting == "cross_dataset" else []
    )
    header = ["Dataset"] + ["Split"] * hub
    header += [f"{c} shots" if setting == "all" else {"base": "Base", "novel": "Novel"}.get(c, c) for c in columns]
    header += ["HM"] * b2n + ["HM (paper)"] * paper_hm + ["Average (targets)"] * bool(targets) + ["Seeds"]
    csv_header = ["dataset"] + ["split"] * hub
    for c in columns:
        name = f"{c} shots" if setting == "all" else c
        csv_header += [name, f"{name} std"]
    csv_header += ["HM"] * b2n + ["HM (paper)"] * paper_hm + ["average (targets)"] * bool(targets)
    csv_header += ["seeds", "missing seeds"]

    rows, csv_rows = [], []
    means: dict[str, list[float]] = {c: [] for c in columns}
    present_benchmarks, target_means = [], []
    for row in table.rows:
        summary = row.summary if part is None else (row.summary or {}).get(part)
        if setting == "all" and part is None:
            values = {str(n): _few_shot_value(s) for n, s in row.shots.items()}
            has_values = bool(row.shots)
        else:
            values = {c: _cell(summary, c) for c in columns}
            has_values = bool(summary)
        if part is not None and not has_values:
            continue  # the zero-shot table lists the rows that have zero-shot results
        cells = [row.dataset] + [row.split_source.split(":", 1)[-1] if row.split_source else ""] * hub
        csv_cells: list[Any] = [row.dataset] + [row.split_source] * hub
        for c in columns:
            mean, std = values.get(c, (None, None))
            cells.append(_fmt(mean, std) if has_values else MISSING)
            csv_cells += [mean, std]
            if mean is not None:
                means[c].append(mean)
        if b2n:
            hm = (summary or {}).get("harmonic_mean") if has_values else None
            cells.append(_fmt(hm) if has_values else MISSING)
            csv_cells.append(hm)
            if has_values and row.benchmark:
                present_benchmarks.append(row.benchmark)
        if paper_hm:
            published = _published_value(table, row.benchmark or row.dataset, "hm")
            cells.append(_fmt(published))
            csv_cells.append(published)
        if targets:
            found = [values[c][0] for c in targets if values.get(c, (None, None))[0] is not None]
            mean = sum(found) / len(found) if found else None
            if mean is not None:
                target_means.append(mean)
            cells.append(_fmt(mean) if has_values else MISSING)
            csv_cells.append(mean)
        cells.append(_seeds_text(row) if part is None else ", ".join(map(str, sorted(_row_seeds(row)))))
        csv_cells += [" ".join(map(str, sorted(_row_seeds(row)))), " ".join(map(str, row.missing_seeds))]
        rows.append(cells)
        csv_rows.append(csv_cells)

    average = None
    measured = [r for r in rows if MISSING not in r]
    if len(rows) > 1:
        complete = len(measured) == len(rows)
        label = "**Average**" if complete else f"**Average** ({len(measured)} of {len(rows)} datasets)"
        avg = {c: (sum(v) / len(v) if v and len(v) == len(measured) else None) for c, v in means.items()}
        average = [label] + [""] * hub + [_fmt(avg[c]) for c in columns]
        if b2n:
            average.append(_fmt(base_novel_harmonic_mean({k: v for k, v in avg.items() if v is not None})))
        if paper_hm:
            average.append(_fmt(_published_average_hm(table, present_benchmarks)))
        if targets:
            average.append(_fmt(sum(target_means) / len(target_means) if target_means else None))
        average.append(f"{len(measured)} datasets")
        if not measured:
            average = None

    published_row = None
    if part is None and table.published and not paper_hm and setting == "cross_dataset":
        values = [_published_value(table, c, "accuracy") for c in columns]
        found = [v for c, v in zip(columns, values) if c in targets and v is not None]
        published_row = [f"*paper: {table.published[0].name}*"] + [""] * hub + [_fmt(v) for v in values]
        published_row += [_fmt(sum(found) / len(found) if found else None)] * bool(targets) + [""]
    return _Grid(header, rows, average, published_row, csv_header, csv_rows)


def _published_average_hm(table: ResultTable, benchmarks: Sequence[str]) -> float | None:
    """The paper's average HM over the datasets shown: its own average row when they are all of its datasets,
    otherwise recomputed from its per-dataset base and novel (never over datasets the table lacks)."""
    for published in table.published:
        if not published.rows:
            continue
        names = {_benchmark_name(b) or b for b in benchmarks}
        if names == set(published.rows) and published.average is not None and "hm" in published.columns:
            return published.average[published.columns.index("hm")]
        values = [published.rows.get(name) for name in names]
        if not values or any(v is None for v in values) or not {"base", "novel"} <= set(published.columns):
            return None
        base = sum(v[published.columns.index("base")] for v in values) / len(values)
        novel = sum(v[published.columns.index("novel")] for v in values) / len(values)
        return base_novel_harmonic_mean({"base": base, "novel": novel})
    return None


def _markdown_table(grid: _Grid) -> list[str]:
    lines = ["| " + " | ".join(grid.header) + " |", "|---|" + "---:|" * (len(grid.header) - 2) + "---|"]
    for cells in [
        *grid.rows,
        *([grid.average] if grid.average else []),
        *([grid.published] if grid.published else []),
    ]:
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_markdown(tables: Sequence[ResultTable], *, title: str = "Results") -> str:
    """The tables as one Markdown document (zero-shot CLIP's rows in a table of their own, after each table).

    Args:
        tables (`Sequence[ResultTable]`): The output of `build_tables`.
        title (`str`): The document's heading.
    """
    lines = [
        f"# {title}",
        "",
        "Accuracy (%) as mean ± sample standard deviation over seeds (n − 1; a single seed has none). HM is the "
        "harmonic mean of the mean base and novel accuracies; an average row averages the datasets it names. Missing "
        "results are shown as missing and never averaged in.",
    ]
    for table in tables:
        lines += ["", f"## {table.title}", "", *_markdown_table(_grid(table, None))]
        if table.notes:
            lines += [""] + [f"- {note}" for note in table.notes]
        if any(row.summary and row.summary.get("zero_shot") for row in table.rows):
            lines += ["", f"### Zero-shot CLIP on the same splits ({table.title.split(' · ', 1)[-1]})", ""]
            lines += _markdown_table(_grid(table, "zero_shot"))
    return "\n".join(lines) + "\n"


def render_csv(table: ResultTable) -> str:
    """One table as CSV: one row per dataset, each value column followed by its standard deviation.

    Args:
        table (`ResultTable`): A table of `build_tables`.
    """
    grid = _grid(table, None)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(grid.csv_header)
    for cells in grid.csv_rows:
        writer.writerow(
            ["" if value is None else (f"{value:.4f}" if isinstance(value, float) else value) for value in cells]
        )
    return buffer.getvalue()


def plot_comparison(table: ResultTable) -> Any:
    """A bar chart of each dataset's headline number (HM for base-to-novel, accuracy per target for cross-dataset,
    accuracy per number of shots for few-shot) beside the published figure of the same method, when there is one.
    A missing dataset has no bar and is labelled "missing".

    Args:
        table (`ResultTable`): A table of `build_tables`.

    Returns:
        `matplotlib.figure.Figure`: The figure (save it with `savefig`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = _grid(table, None)
    labels, measured, errors, published = [], [], [], []
    if table.setting == "all":
        for row in table.rows:
            for column in table.columns:
                summary = row.shots.get(int(column))
                mean, std = _few_shot_value(summary) if summary else (None, None)
                labels.append(f"{row.dataset}\n{column} shots")
                measured.append(mean)
                errors.append(std or 0.0)
                published.append(None)
    elif table.setting == "cross_dataset":
        for row in table.rows:
            for column in table.columns:
                mean, std = _cell(row.summary, column)
                labels.append(column if len(table.rows) == 1 else f"{row.dataset}→{column}")
                measured.append(mean)
                errors.append(std or 0.0)
                published.append(_published_value(table, column, "accuracy"))
    else:
        hm_index = grid.header.index("HM") if "HM" in grid.header else None
        for row, cells in zip(table.rows, grid.rows):
            labels.append(row.dataset)
            value = cells[hm_index] if hm_index is not None else MISSING
            measured.append(None if value in (MISSING, "–") else float(value))
            errors.append(0.0)
            published.append(_published_value(table, row.benchmark or row.dataset, "hm"))
        if grid.average and hm_index is not None and grid.average[hm_index] != "–":
            labels.append("Average")
            measured.append(float(grid.average[hm_index]))
            errors.append(0.0)
            paper = grid.average[grid.header.index("HM (paper)")] if "HM (paper)" in grid.header else "–"
            published.append(None if paper == "–" else float(paper))

    has_published = any(v is not None for v in published)
    width = 0.4 if has_published else 0.7
    figure, axes = plt.subplots(figsize=(max(6.0, 0.9 * len(labels) + 2), 4.5))
    positions = list(range(len(labels)))
    offset = width / 2 if has_published else 0.0
    ours = [(p - offset, v, e) for p, v, e in zip(positions, measured, errors) if v is not None]
    if ours:
        axes.bar(
            [p for p, _, _ in ours],
            [v for _, v, _ in ours],
            width,
            yerr=[e for _, _, e in ours] if any(e for _, _, e in ours) else None,
            label="measured (mean over seeds)",
            color="#3b75af",
            capsize=3,
        )
    if has_published:
        theirs = [(p + offset, v) for p, v in zip(positions, published) if v is not None]
        names = ", ".join(sorted({p.name + " " + p.backbone for p in table.published}))
        axes.bar([p for p, _ in theirs], [v for _, v in theirs], width, label=f"published ({names})", color="#bbbbbb")
    for position, value in zip(positions, measured):
        if value is None:
            axes.text(position, 1.0, MISSING, ha="center", va="bottom", rotation=90, color="#aa3333")
    metric = {"base2novel": "HM (%)", "cross_dataset": "accuracy (%)", "all": "accuracy (%)"}
    axes.set_ylabel(metric.get(table.setting, "accuracy (%)"))
    axes.set_xticks(positions)
    axes.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    axes.set_ylim(0, 100)
    axes.set_title(textwrap.fill(table.title.replace("`", ""), 90), fontsize=9)
    axes.legend(fontsize=8, loc="lower left")
    figure.tight_layout()
    return figure
