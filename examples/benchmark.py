#!/usr/bin/env python
"""Run a paper's protocol grid (datasets x seeds) with train.py and evaluate.py, then write the paper's table.

    python examples/benchmark.py --recipe examples/configs/maple_base2novel.yaml --datasets all --seeds 1 2 3 \\
        --data_root DATA --output_dir outputs/maple_b2n

Protocols (the recipe's `setting` picks the default): base2novel (the 11 datasets), cross_dataset (train on
ImageNet once per seed, the adapter evaluated on the targets), domain_generalization (the same ImageNet adapter
evaluated on ImageNetV2, -Sketch, -A and -R with evaluate.py), few_shot (--shots 1 2 4 8 16, all classes). The
few-shot protocol trains with the method's own few-shot recipe when one lies beside --recipe
(`promptsrc_base2novel.yaml` -> `promptsrc_few_shot.yaml`, as PromptSRC's and MMRL's repositories ship separate
few-shot configs); the recipe each cell uses, with its per-dataset values, is printed before the cells run.

Each cell is one run folder, OUTPUT_DIR/<dataset>/seed<k>/ (few-shot: <dataset>/<k>shots/seed<s>), written by
train.py exactly as by hand; its console output goes to OUTPUT_DIR/logs/<cell>.log. A finished cell with the same
options is skipped, a stopped or killed one resumes from its latest checkpoint, and a folder holding a run with other
options is refused (never mixed). A failing cell does not stop the others; the summary names it with its log, and
the exit code is 1. With N visible GPUs, N cells run at once (one GPU each, CUDA_VISIBLE_DEVICES); on a CPU, one at
a time. At the end (or with --table_only at any time): the tables in Markdown (OUTPUT_DIR/results-<protocol>.md)
and CSV, and a figure per table comparing each dataset with the published figure of the same method
(examples/published/).

--dry_run prints the commands; --slurm FILE writes a job-array script (one task per cell) for clusters.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TRAIN = HERE / "train.py"
EVALUATE = HERE / "evaluate.py"
PUBLISHED = HERE / "published"
PROTOCOLS = ("base2novel", "cross_dataset", "domain_generalization", "few_shot")
BASE2NOVEL_DATASETS = (
    "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft", "sun397",
    "dtd", "eurosat", "ucf101",
)  # fmt: skip
CROSS_DATASET_TARGETS = BASE2NOVEL_DATASETS[1:]
DG_TARGETS = ("imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
SET_BY_THE_BENCHMARK = {
    "seed": "--seeds",
    "output_dir": "--output_dir",
    "dataset": "--datasets",
    "dataset_name": "--datasets with --hub",
    "data_root": "--data_root",
    "data_dir": "--dataset_registry",
    "dataset_registry": "--dataset_registry",
    "resume_from_checkpoint": "nothing (killed cells are resumed)",
    "overwrite_output_dir": "nothing (move a folder away instead)",
    "config": "--recipe",
    "setting": "--protocol",
}
"""Options a cell's command gets from the benchmark, so `--set` may not change them (value: what to use instead)."""
SLURM_MARKER = "# written by examples/benchmark.py"

RunCommand = Callable[[list[str], dict[str, str], Path], int]
"""Runs one command with an environment, its output appended to a log file; returns its exit code."""


# ---- the grid -------------------------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One cell of the grid: a train.py run folder (and, for domain generalization, evaluations of its adapter).

    Args:
        name (`str`): `"eurosat/seed1"`, `"eurosat/4shots/seed1"`.
        dataset (`str`): The dataset trained on (the source for cross-dataset protocols).
        seed (`int`): The seed.
        run_dir (`Path`): The train.py output folder.
        train_args (`list[str]`): train.py's arguments (without resuming).
        evaluations (`list[tuple[str, Path]]`): Domain generalization: (target, evaluate.py output file).
        shots (`int | None`): Few-shot: the number of shots.
    """

    name: str
    dataset: str
    seed: int
    run_dir: Path
    train_args: list[str]
    evaluations: list[tuple[str, Path]] = field(default_factory=list)
    shots: int | None = None
    options: dict[str, Any] = field(default_factory=dict)  # train.py's parsed options, as it records them
    recipe: str = ""  # the train.py recipe (--config) it runs
    output_dir: Path = Path(".")
    row: str | None = None  # the table row it fills (the dataset's identity), when known before it runs

    @property
    def log(self) -> Path:
        """The cell's console log: OUTPUT_DIR/logs/<name with / as ->.log."""
        return self.output_dir / "logs" / (self.name.replace("/", "-") + ".log")


@dataclass
class Plan:
    """What a cell needs: its state (`"done"`, `"run"`, `"resume"`, `"refused"`) and the commands to run."""

    state: str
    detail: str = ""
    commands: list[list[str]] = field(default_factory=list)


def _cli_value(key: str, value: Any) -> list[str]:
    """A `--set key=value` as train.py arguments (booleans as `--key` / `--no_key`, lists as several values)."""
    if isinstance(value, bool):
        return [f"--{key}" if value else f"--no_{key}"]
    if isinstance(value, list):
        return [f"--{key}", *map(str, value)]
    if value is None:
        if key != "prompt_init":
            raise ValueError(
                f"--set {key}=null: train.py cannot unset {key} on its command line; use a recipe without it."
            )
        return [f"--{key}", "none"]
    return [f"--{key}", str(value)]


def parse_sets(values: Sequence[str], protocol: str) -> list[str]:
    """`--set key=value` pairs as train.py arguments; values are read as YAML (`lr=0.01`, `plots=false`).

    Args:
        values (`Sequence[str]`): The pairs.
        protocol (`str`): The protocol (few-shot sets the shots itself).

    Raises:
        ValueError: A pair without `=`, or an option the benchmark sets itself.
    """
    import yaml

    args: list[str] = []
    for pair in values:
        key, sep, text = pair.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ValueError(f"--set {pair!r}: write key=value, e.g. --set lr=0.002")
        instead = SET_BY_THE_BENCHMARK.get(key)
        if key == "num_shots" and protocol == "few_shot":
            instead = "--shots"
        if key == "eval_datasets" and protocol in ("cross_dataset", "domain_generalization"):
            instead = "--datasets"
        if instead:
            raise ValueError(f"--set {key}=...: the benchmark sets {key} for every cell; use {instead}.")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        args += _cli_value(key, value)
    return args


def _parse_train_options(args: list[str]) -> dict[str, Any]:
    """train.py's options for these arguments, as it records them (a JSON round trip); argparse's error as a
    ValueError (its one line, without the usage)."""
    sys.path.insert(0, str(HERE))
    try:
        from options import parse_args
    finally:
        sys.path.remove(str(HERE))
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            namespace = parse_args(args)
    except SystemExit:
        lines = [line for line in stderr.getvalue().splitlines() if line.strip()]
        errors = [line.split("error: ", 1)[1] for line in lines if "error: " in line]
        raise ValueError(errors[-1] if errors else (lines[-1] if lines else "invalid options")) from None
    return json.loads(json.dumps(vars(namespace)))


def few_shot_recipe(path: str) -> str:
    """The recipe the few-shot protocol trains a method with: its own few-shot recipe beside `path`
    (`<method>_few_shot.yaml` for `<method>_base2novel.yaml` or `<method>_cross_dataset.yaml`) when there is one,
    else `path` itself.

    Args:
        path (`str`): The `--recipe` given.
    """
    recipe = Path(path)
    for suffix in ("_base2novel", "_cross_dataset"):
        if recipe.stem.endswith(suffix):
            sibling = recipe.with_name(recipe.stem.removesuffix(suffix) + "_few_shot" + recipe.suffix)
            if sibling.is_file():
                return str(sibling)
    return path


def recipe_lines(cells: Sequence[Cell], given: str) -> list[str]:
    """Which recipe the cells use, and the per-dataset values (`dataset_overrides`) it gives each dataset's cells.

    Args:
        cells (`Sequence[Cell]`): The cells.
        given (`str`): The `--recipe` given.
    """
    lines: list[str] = []
    for recipe in dict.fromkeys(cell.recipe for cell in cells):
        instead = f" (the method's few-shot recipe, in place of {Path(given).name})" if recipe != given else ""
        lines.append(f"recipe: {recipe}{instead}")
        overrides = _recipe(recipe).get("dataset_overrides") or {}
        for cell in cells:
            key = cell.options.get("dataset") or cell.options.get("dataset_name")
            values = overrides.get(key) if cell.recipe == recipe else None
            if values:
                line = f"  {cell.dataset} cells: its {key} values " + ", ".join(f"{k}={v}" for k, v in values.items())
                if line not in lines:
                    lines.append(line)
    return lines


class MissingDataError(ValueError):
    """Datasets of the grid that are not under `--data_root`: all of them named at once, with the grid's cells (a dry
    run still prints every command)."""

    def __init__(self, data_root: str, missing: Sequence[tuple[str, Path]], cells: list[Cell]) -> None:
        listed = ", ".join(f"{name} ({path})" for name, path in missing)
        super().__init__(
            f"{len(missing)} dataset(s) of the grid are not under --data_root {data_root}: {listed}; prepare them as "
            "CoOp's DATASETS.md says, or leave them out of --datasets."
        )
        self.cells = cells


def build_cells(args: argparse.Namespace) -> list[Cell]:
    """The grid's cells, with each cell's train.py arguments checked like train.py checks them.

    Args:
        args (`argparse.Namespace`): The benchmark's options.

    Raises:
        MissingDataError: Datasets missing under `--data_root`, every one of them named (the cells are built anyway).
        ValueError: A bad dataset name, a bad `--set`, or options train.py refuses (naming the cell).
    """
    from maple_peft.training.data import (
        get_benchmark,
        hub_dataset_for_benchmark,
        load_dataset_registry,
        parse_hub_root,
    )

    out = Path(args.output_dir)
    protocol = args.protocol
    recipe_path = few_shot_recipe(args.recipe) if protocol == "few_shot" else args.recipe
    recipe = _recipe(recipe_path)
    sets = parse_sets(args.set, protocol)
    for key in ("dataset_name", "data_dir"):
        if recipe.get(key):
            raise ValueError(
                f"The recipe {recipe_path} names its data ({key}: {recipe[key]}); a benchmark recipe must not (the "
                "benchmark passes each cell's dataset): remove that line."
            )
    registry = load_dataset_registry(args.dataset_registry) if args.hub else None
    if args.hub and protocol in ("cross_dataset", "domain_generalization"):
        raise ValueError(f"--protocol {protocol} evaluates the CoOp targets: pass --data_root instead of --hub.")
    if not args.hub and not args.data_root:
        raise ValueError(
            "Pass --data_root DIR (the CoOp layout, the papers' splits), --data_root hub (the same, downloaded from "
            "the Hub) or --hub (the registry's datasets)."
        )

    rows: dict[str, str | None] = {}
    hub_root = None if args.hub else parse_hub_root(args.data_root)  # --data_root hub: CoOp's layout from the Hub
    missing: dict[str, Path] = {}  # every dataset missing under --data_root, named together at the end

    def data_args(name: str) -> tuple[str, list[str]]:
        """A dataset's canonical name and its data arguments."""
        if args.hub:
            spec = hub_dataset_for_benchmark(name, registry)
            extra = ["--dataset_name", spec.dataset_id] + (["--data_dir", spec.data_dir] if spec.data_dir else [])
            extra += ["--dataset_registry", args.dataset_registry] if args.dataset_registry else []
            rows[spec.name] = None if spec.data_dir else spec.dataset_id  # a local folder's identity has a hash
            return spec.name, extra
        spec = get_benchmark(name)
        if hub_root is not None:  # downloaded by the cell that needs it; ImageNet comes from ILSVRC/imagenet-1k
            if spec.name != "imagenet":
                hub_root.archive(spec.name)  # a dataset the repository has (else the list of those it has)
        elif not (Path(args.data_root) / spec.dataset_dir).is_dir():
            missing[spec.name] = Path(args.data_root) / spec.dataset_dir
        rows[spec.name] = spec.name
        return spec.name, ["--dataset", spec.name, "--data_root", args.data_root]

    common = ["--config", recipe_path]
    cells: list[Cell] = []
    if protocol in ("base2novel", "few_shot"):
        if args.datasets == ["all"]:
            names = list(registry) if args.hub else list(BASE2NOVEL_DATASETS)
        else:
            names = args.datasets
        shots_list = args.shots if protocol == "few_shot" else [None]
        for name in names:
            dataset, data = data_args(name)
            for shots in shots_list:
                for seed in args.seeds:
                    parts = [dataset] + ([f"{shots}shots"] if shots else []) + [f"seed{seed}"]
                    run_dir = out.joinpath(*parts)
                    extra = ["--setting", "all", "--num_shots", str(shots)] if shots else ["--setting", "base2novel"]
                    cell_args = [*common, *data, *extra, "--seed", str(seed), "--output_dir", str(run_dir), *sets]
                    cells.append(Cell("/".join(parts), dataset, seed, run_dir, cell_args, shots=shots))
    else:
        source = recipe.get("dataset") or "imagenet"
        dataset, data = data_args(source)
        if protocol == "cross_dataset":
            targets = list(recipe.get("eval_datasets") or CROSS_DATASET_TARGETS)
            if args.datasets != ["all"]:
                targets = [get_benchmark(name).name for name in args.datasets]
            evaluations: list[str] = []
        else:
            targets = list(recipe.get("eval_datasets") or CROSS_DATASET_TARGETS)  # the same cell as cross_dataset
            evaluations = list(DG_TARGETS) if args.datasets == ["all"] else args.datasets
            evaluations = [get_benchmark(name).name for name in evaluations]
        for name in targets + evaluations:
            data_args(name)  # the data exists
        for seed in args.seeds:
            run_dir = out / dataset / f"seed{seed}"
            cell_args = [*common, *data, "--setting", "cross_dataset", "--eval_datasets", *targets]
            cell_args += ["--seed", str(seed), "--output_dir", str(run_dir), *sets]
            dg = [(target, out / target / f"seed{seed}" / "eval.json") for target in evaluations]
            cells.append(Cell(f"{dataset}/seed{seed}", dataset, seed, run_dir, cell_args, dg))
    for cell in cells:
        cell.output_dir, cell.row, cell.recipe = out, rows.get(cell.dataset), recipe_path
        try:
            cell.options = _parse_train_options(cell.train_args)
        except ValueError as error:
            raise ValueError(f"cell {cell.name}: {error}") from None
    if missing:
        raise MissingDataError(args.data_root, list(missing.items()), cells)
    return cells


def _recipe(path: str) -> dict[str, Any]:
    import yaml

    try:
        recipe = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"--recipe {path}: cannot read it ({error}).") from None
    if not isinstance(recipe, dict):
        raise ValueError(f"--recipe {path} holds a {type(recipe).__name__}; it must map option names to values.")
    return recipe


# ---- what each cell needs ---------------------------------------------------------------------------------------------


def plan_cell(cell: Cell) -> Plan:
    """The cell's state from its folder: finished with the same options (done), stopped or killed (resume), empty
    (run), or holding a run with other options (refused, never mixed).

    Args:
        cell (`Cell`): The cell.
    """
    sys.path.insert(0, str(HERE))
    try:
        from options import MAY_CHANGE_ON_RESUME
    finally:
        sys.path.remove(str(HERE))
    from maple_peft.training.checkpointing import differing_options, list_checkpoints, read_trainer_state
    from maple_peft.training.run_dir import RUNNING_MARKER

    train = [sys.executable, str(TRAIN), *cell.train_args]
    metrics = cell.run_dir / "metrics.json"
    if metrics.is_file() and not (cell.run_dir / RUNNING_MARKER).exists():
        try:
            recorded = json.loads(metrics.read_text(encoding="utf-8")).get("train_config") or {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
            return Plan("refused", f"{metrics} is unreadable ({type(error).__name__}); move the folder away")
        changed = differing_options(recorded, cell.options, MAY_CHANGE_ON_RESUME)
        if changed:
            return Plan(
                "refused",
                f"{cell.run_dir} holds a finished run with other options ({'; '.join(changed)}); move it away or run "
                "with its options",
            )
        plan = Plan("done", "finished")
    else:
        checkpoints = list_checkpoints(cell.run_dir)
        if checkpoints:
            saved = read_trainer_state(checkpoints[-1]).get("options") or {}
            changed = differing_options(saved, cell.options, MAY_CHANGE_ON_RESUME)
            if changed:
                return Plan(
                    "refused",
                    f"{cell.run_dir} holds a stopped run with other options ({'; '.join(changed)}); move it away or "
                    "run with its options",
                )
            plan = Plan(
                "resume", f"resume from {checkpoints[-1].name}", [[*train, "--resume_from_checkpoint", "latest"]]
            )
        else:
            plan = Plan("run", "", [train])
    for target, output in cell.evaluations:
        command = [sys.executable, str(EVALUATE), "--adapter", str(cell.run_dir), "--dataset", target]
        command += ["--data_root", str(cell.options.get("data_root")), "--output", str(output)]
        if output.is_file():
            try:
                recorded = json.loads(output.read_text(encoding="utf-8"))
                ours = Path(str(recorded.get("adapter"))).resolve() == cell.run_dir.resolve()
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
                ours = False
            if not ours:
                return Plan("refused", f"{output} is not an evaluation of {cell.run_dir}; move it away")
            adapter = cell.run_dir / "adapter_model.safetensors"
            if plan.state == "done" and adapter.is_file() and output.stat().st_mtime >= adapter.stat().st_mtime:
                continue  # evaluated since the adapter was written
            command.append("--overwrite")
        plan.commands.append(command)
        if plan.state == "done":
            plan.state, plan.detail = "run", "evaluate the finished adapter"
    return plan


# ---- running --------------------------------------------------------------------------------------------------------


def run_subprocess(command: list[str], env: dict[str, str], log: Path) -> int:
    """Runs `command`, its output appended to `log`; the default `RunCommand`.

    Args:
        command (`list[str]`): The command.
        env (`dict[str, str]`): Its environment.
        log (`Path`): The log file.
    """
    with open(log, "a", encoding="utf-8") as handle:
        return subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False).returncode


def run_cell(cell: Cell, plan: Plan, device: str | None, run_command: RunCommand) -> tuple[str, str]:
    """Runs a cell's commands one after the other on one device; returns `("done", "")` or `("failed", why)`.

    Args:
        cell (`Cell`): The cell.
        plan (`Plan`): Its commands.
        device (`str | None`): The GPU it gets (`CUDA_VISIBLE_DEVICES`), `None` on a CPU.
        run_command (`RunCommand`): How a command is run.
    """
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    cell.log.parent.mkdir(parents=True, exist_ok=True)
    for command in plan.commands:
        with open(cell.log, "a", encoding="utf-8") as handle:
            where = f"CUDA_VISIBLE_DEVICES={device} " if device is not None else ""
            handle.write(f"\n[{time.strftime('%Y-%m-%d %H:%M:%S')}] {where}{shlex.join(command)}\n")
        try:
            code = run_command(command, env, cell.log)
        except Exception as error:  # a runner that raises counts as a failed command
            code, why = 1, f"{type(error).__name__}: {error}"
        else:
            why = f"exit code {code}"
        if code != 0:
            return "failed", f"{why}; log: {cell.log}"
    return "done", ""


def run_grid(
    cells: Sequence[Cell],
    plans: Sequence[Plan],
    devices: Sequence[str | None],
    run_command: RunCommand = run_subprocess,
    write: Callable[[str], None] = print,
) -> dict[str, tuple[str, str]]:
    """Runs the cells that need it, one per device at a time, with one progress bar for the whole grid.

    Args:
        cells (`Sequence[Cell]`): The cells.
        plans (`Sequence[Plan]`): Their plans (`plan_cell`).
        devices (`Sequence[str | None]`): One entry per cell that may run at once: GPU ids, or `[None]` on a CPU.
        run_command (`RunCommand`): How a command is run.
        write (`Callable[[str], None]`): Where a finished cell's line goes (above the bar).

    Returns:
        `dict[str, tuple[str, str]]`: Cell name -> (`"done"`, `"skipped"`, `"failed"` or `"refused"`, detail).
    """
    from tqdm.auto import tqdm

    outcome: dict[str, tuple[str, str]] = {}
    todo = []
    for cell, plan in zip(cells, plans):
        if plan.state == "done":
            outcome[cell.name] = ("skipped", plan.detail)
        elif plan.state == "refused":
            outcome[cell.name] = ("refused", plan.detail)
        else:
            todo.append((cell, plan))
    failed = sum(state == "refused" for state, _ in outcome.values())
    stdout = sys.stdout  # the lines go where stdout is now, whatever a cell's command does to sys.stdout meanwhile
    bar = tqdm(total=len(cells), initial=len(outcome), unit="cell", desc="benchmark", dynamic_ncols=True)
    # one worker thread per device, each keeping its device for the whole grid
    unassigned, assigned = list(devices), threading.local()

    def take_device() -> None:
        assigned.device = unassigned.pop(0)

    def work(cell: Cell, plan: Plan) -> tuple[str, str, float]:
        started = time.time()
        state, detail = run_cell(cell, plan, assigned.device, run_command)
        return state, detail, (time.time() - started) / 60

    executor = ThreadPoolExecutor(max_workers=len(devices), initializer=take_device)
    try:
        futures = {executor.submit(work, cell, plan): cell for cell, plan in todo}
        bar.set_postfix_str(f"running {min(len(devices), len(todo))}, failed {failed}", refresh=True)
        for done in as_completed(futures):
            cell = futures[done]
            state, detail, minutes = done.result()
            failed += state == "failed"
            outcome[cell.name] = (state, detail)
            line = f"{state:>7} {cell.name} ({minutes:.1f} min, {Path(cell.recipe).name})"
            line += f": {detail}" if detail else ""
            if write is print:
                bar.write(line, file=stdout)
            else:
                write(line)
            bar.update(1)
            running = sum(future.running() for future in futures)
            bar.set_postfix_str(f"running {running}, failed {failed}", refresh=True)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)  # on Ctrl-C: no new cell starts
        bar.close()
    return outcome


def visible_devices(requested: Sequence[str] | None) -> list[str | None]:
    """The GPUs cells run on, one cell each: `--gpus`, else `CUDA_VISIBLE_DEVICES`, else every GPU torch sees;
    `[None]` (one cell at a time) without a GPU.

    Args:
        requested (`Sequence[str] | None`): The `--gpus` values.
    """
    if requested:
        return list(requested)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
        return ids or [None]
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [str(i) for i in range(count)] or [None]


# ---- the tables -----------------------------------------------------------------------------------------------------


def finished_runs(cells: Sequence[Cell], plans: Sequence[Plan]) -> list[tuple[str, Any]]:
    """The finished cells' runs (domain generalization: the source accuracy and the evaluations of its adapter).

    Args:
        cells (`Sequence[Cell]`): The cells.
        plans (`Sequence[Plan]`): Their plans (refused cells are left out).
    """
    import dataclasses

    from maple_peft.training.metrics import RunMetrics

    runs = []
    for cell, plan in zip(cells, plans):
        metrics = cell.run_dir / "metrics.json"
        if plan.state == "refused" or not metrics.is_file() or (cell.run_dir / "RUNNING").exists():
            continue
        run = RunMetrics.from_dict(json.loads(metrics.read_text(encoding="utf-8")))
        if cell.evaluations:
            results = {run.dataset: run.results[run.dataset]} if run.dataset in run.results else {}
            for target, output in cell.evaluations:
                if output.is_file():
                    results[target] = json.loads(output.read_text(encoding="utf-8"))
            run = dataclasses.replace(run, results=results, zero_shot_results=None)
        runs.append((str(cell.run_dir), run))
    return runs


def write_tables(cells: Sequence[Cell], plans: Sequence[Plan], args: argparse.Namespace) -> list[Path]:
    """Writes OUTPUT_DIR/results-<protocol>.md, and per table a CSV and a comparison figure; returns the files.

    Args:
        cells (`Sequence[Cell]`): The cells.
        plans (`Sequence[Plan]`): Their plans.
        args (`argparse.Namespace`): The benchmark's options.
    """
    from maple_peft.training.tables import build_tables, load_published, plot_comparison, render_csv, render_markdown

    runs = finished_runs(cells, plans)
    if not runs:
        return []
    rows = sorted({cell.row for cell in cells if cell.row}) if args.protocol in ("base2novel", "few_shot") else []
    published = load_published(args.published if args.published is not None else [PUBLISHED])
    tables = build_tables(runs, expected_datasets=rows, expected_seeds=args.seeds, published=published)
    protocol = args.protocol
    for table in tables:
        if protocol == "domain_generalization":  # the cross-dataset setting, evaluated on the ImageNet variants
            table.title = table.title.replace("cross-dataset", "domain generalization", 1)
    out = Path(args.output_dir)
    title = f"Benchmark: {protocol} ({Path(cells[0].recipe or args.recipe).name})"
    markdown = out / f"results-{protocol}.md"
    markdown.write_text(render_markdown(tables, title=title), encoding="utf-8")
    written = [markdown]
    slugs: list[str] = []
    for table in tables:
        slug = table.slug if table.slug not in slugs else f"{table.slug}-{len(slugs) + 1}"
        slugs.append(slug)
        csv_path = out / f"results-{protocol}-{slug}.csv"
        csv_path.write_text(render_csv(table), encoding="utf-8")
        written.append(csv_path)
        try:
            figure = plot_comparison(table)
        except ImportError:  # matplotlib is the plots extra
            continue
        figure_path = out / f"comparison-{protocol}-{slug}.png"
        figure.savefig(figure_path, dpi=120)
        import matplotlib.pyplot as plt

        plt.close(figure)
        written.append(figure_path)
    return written


# ---- outputs of --dry_run and --slurm ------------------------------------------------------------------------------


def dry_run_text(cells: Sequence[Cell], plans: Sequence[Plan], devices_note: str, recipes: Sequence[str] = ()) -> str:
    """The exact commands each cell would run, each after a comment with the cell's state.

    Args:
        cells (`Sequence[Cell]`): The cells.
        plans (`Sequence[Plan]`): Their plans.
        devices_note (`str`): How the cells share the devices.
        recipes (`Sequence[str]`): The recipe lines (`recipe_lines`), shown as comments after the first line.
    """
    lines = [f"# {len(cells)} cells; {devices_note}", *(f"# {line}" for line in recipes)]
    for cell, plan in zip(cells, plans):
        state = {"done": "finished with the same options: skipped", "run": "run", "resume": "resume"}.get(plan.state)
        lines.append(f"# {cell.name}: {state or plan.state}" + (f" ({plan.detail})" if plan.detail else ""))
        lines.extend(shlex.join(command) for command in plan.commands)
    return "\n".join(lines) + "\n"


def slurm_script(cells: Sequence[Cell], argv: Sequence[str], args: argparse.Namespace) -> str:
    """A Slurm job-array script: task K runs `benchmark.py ... --cell K` on one GPU (which skips a finished cell and
    resumes a stopped one, as a local run does).

    Args:
        cells (`Sequence[Cell]`): The cells.
        argv (`Sequence[str]`): The benchmark's arguments, without `--slurm`.
        args (`argparse.Namespace`): The benchmark's options.
    """
    logs = Path(args.output_dir).resolve() / "logs"
    command = shlex.join([sys.executable, str(Path(__file__).resolve()), *argv])
    lines = [
        "#!/bin/bash",
        f"{SLURM_MARKER}: one array task per cell. Submit it with `sbatch <this file>`; when every task is done, write",
        f"# the tables with: {shlex.join([sys.executable, str(Path(__file__).resolve()), *argv, '--table_only'])}",
        "#SBATCH --job-name=maple-peft-benchmark",
        f"#SBATCH --array=0-{len(cells) - 1}",
        "#SBATCH --ntasks=1",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --cpus-per-task=8",
        f"#SBATCH --output={logs}/slurm-%A_%a.out",
        "# task -> cell:",
        *[f"#   {index}: {cell.name}" for index, cell in enumerate(cells)],
        "set -euo pipefail",
        f"cd {shlex.quote(str(Path.cwd()))}",
        f'{command} --cell "$SLURM_ARRAY_TASK_ID"',
    ]
    return "\n".join(lines) + "\n"


# ---- main -----------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--recipe", required=True, help="a train.py YAML recipe (examples/configs/...): it decides the method"
    )
    p.add_argument("--protocol", choices=PROTOCOLS, default=None, help="default: from the recipe's setting")
    p.add_argument("--datasets", nargs="+", default=["all"], help="'all' (the protocol's), or names (targets for DG)")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--shots", nargs="+", type=int, default=[1, 2, 4, 8, 16], help="few_shot: shots per class")
    p.add_argument(
        "--data_root", default=None, help="the CoOp data folder (the papers' splits), or 'hub' to download them"
    )
    p.add_argument("--hub", action="store_true", help="use the registry's Hub datasets instead of --data_root")
    p.add_argument("--dataset_registry", default=None, help="a YAML file of Hub datasets beside the built-in")
    p.add_argument("--output_dir", required=True, help="one run folder per cell: OUTPUT_DIR/<dataset>/seed<k>/")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe option")
    p.add_argument("--gpus", nargs="+", default=None, help="GPU ids to use, one cell each (default: all visible)")
    p.add_argument("--published", nargs="*", default=None, help="YAML files of published figures")
    p.add_argument("--dry_run", action="store_true", help="print the commands each cell would run, run nothing")
    p.add_argument("--slurm", default=None, metavar="FILE", help="write a Slurm job-array script, run nothing")
    p.add_argument("--table_only", action="store_true", help="write the tables from the finished cells, run nothing")
    p.add_argument("--cell", type=int, default=None, help="run only this cell (the Slurm tasks use it)")
    return p


def main(argv: Sequence[str] | None = None, *, run_command: RunCommand = run_subprocess) -> int:
    """Command-line entry point; returns the exit code (0: every cell finished, 1: a cell failed or was refused,
    2: bad options).

    Args:
        argv (`Sequence[str] | None`): The arguments (default: the command line).
        run_command (`RunCommand`): How a cell's command is run (default: a subprocess).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("seeds", "shots"):
        bad = [v for v in getattr(args, name) if v < (0 if name == "seeds" else 1)]
        if bad:
            parser.error(f"--{name} {bad[0]} is out of range")
    modes = [flag for flag in ("dry_run", "slurm", "table_only") if getattr(args, flag)]
    if len(modes) > 1 or (modes and args.cell is not None):
        parser.error(f"--{modes[0]} and --{modes[1] if len(modes) > 1 else 'cell'} cannot be combined")
    try:
        if args.protocol is None:
            setting = _recipe(args.recipe).get("setting", "base2novel")
            args.protocol = {"all": "few_shot", "cross_dataset": "cross_dataset"}.get(setting, "base2novel")
        missing_data = None
        try:
            cells = build_cells(args)
        except MissingDataError as error:
            if not args.dry_run:
                raise
            cells, missing_data = error.cells, error  # a dry run prints every command, then every missing dataset
        if args.cell is not None and not 0 <= args.cell < len(cells):
            raise ValueError(f"--cell {args.cell} is not a cell of this grid (0..{len(cells) - 1})")
        plans = [plan_cell(cell) for cell in cells]
    except (ValueError, KeyError, FileNotFoundError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return 2

    if args.slurm:
        path = Path(args.slurm)
        if path.exists() and not (
            path.is_file() and SLURM_MARKER in path.read_text(encoding="utf-8", errors="replace")
        ):
            print(
                f"error: --slurm {path} exists and was not written by benchmark.py; pass another file", file=sys.stderr
            )
            return 2
        slurm_argv = [a for i, a in enumerate(argv) if a != "--slurm" and (i == 0 or argv[i - 1] != "--slurm")]
        slurm_argv = [a for a in slurm_argv if not a.startswith("--slurm=")]
        path.write_text(slurm_script(cells, slurm_argv, args), encoding="utf-8")
        print(f"wrote {path}: {len(cells)} array tasks; submit it with: sbatch {path}")
        return 0
    if args.dry_run:
        note = "on GPUs each runs with CUDA_VISIBLE_DEVICES set to one free GPU; on a CPU one at a time"
        print(dry_run_text(cells, plans, note, recipe_lines(cells, args.recipe)), end="")
        if missing_data is not None:
            print(f"error: {missing_data}", file=sys.stderr)
            return 2
        return 0
    if args.table_only:
        written = write_tables(cells, plans, args)
        print(f"wrote {', '.join(map(str, written))}" if written else "no finished cell yet: no table")
        return 0

    if args.cell is not None:
        cells, plans = [cells[args.cell]], [plans[args.cell]]
        devices: list[str | None] = [None]  # the GPU the scheduler gave this task
    else:
        devices = visible_devices(args.gpus)
    print("\n".join(recipe_lines(cells, args.recipe)))
    try:
        outcome = run_grid(cells, plans, devices, run_command)
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume the stopped cells", file=sys.stderr)
        return 130
    counts = {
        state: sum(s == state for s, _ in outcome.values()) for state in ("done", "skipped", "failed", "refused")
    }
    print(
        f"{len(cells)} cells: {counts['done']} run, {counts['skipped']} already finished (skipped), "
        f"{counts['failed']} failed, {counts['refused']} refused"
    )
    for name, (state, detail) in outcome.items():
        if state in ("failed", "refused"):
            print(f"  {state} {name}: {detail}")
    if args.cell is None:
        written = write_tables(cells, plans, args)
        if written:
            print(f"wrote {', '.join(map(str, written))}")
    return 1 if counts["failed"] or counts["refused"] else 0


if __name__ == "__main__":
    sys.exit(main())
