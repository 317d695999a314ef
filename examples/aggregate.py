"""Aggregate the `metrics.json` of many runs into the papers' tables (mean ± sample std over seeds).

Usage:

    python examples/aggregate.py outputs/ --output results.md --json results.json

Every `metrics.json` below the given folders is read, and runs are grouped as `examples/benchmark.py` groups them
(`maple_peft.training.tables.build_tables`): one table per method and protocol (backbone, variant, prompt shape,
objective and its weights, setting, shots, kind of split), each with its own title, and within it one row per dataset
and split. The seeds of a row are averaged only when their runs agree in every option that changes a result; runs
that differ in anything else are refused, with the options that differ. A Hub dataset's split is never averaged with
CoOp's (the papers') split of the same benchmark. Published figures (`examples/published/*.yaml`) are shown beside
the tables of the same method.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PUBLISHED = Path(__file__).resolve().parent / "published"


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


def load_runs(files: Sequence[Path]) -> list[tuple[str, Any]]:
    """Loads and validates metrics.json files; a run that recorded a bare `"imagefolder"` gets its identity.

    Args:
        files (`Sequence[Path]`): Paths of `metrics.json` files.

    Returns:
        `list[tuple[str, RunMetrics]]`: Each run with its folder (the label that names it in messages).

    Raises:
        ValueError: A file is unreadable, not UTF-8 JSON, or not a maple_peft metrics.json (naming the file).
    """
    import dataclasses

    from maple_peft.training.data import dataset_identity
    from maple_peft.training.metrics import RunMetrics

    runs = []
    for file in files:
        try:
            data = json.loads(Path(file).read_text(encoding="utf-8"))
        except UnicodeDecodeError as error:
            raise ValueError(
                f"{file} is not a UTF-8 text file (byte {error.start}: {error.reason}); it is not a metrics.json "
                "written by maple_peft: remove it or restore it from the run."
            ) from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{file} is not valid JSON ({error}); fix or remove it.") from None
        except OSError as error:
            raise ValueError(f"{file} cannot be read ({error.strerror or error}).") from None
        try:
            run = RunMetrics.from_dict(data)
        except ValueError as error:
            raise ValueError(f"{file} is not a maple_peft metrics.json: {error}") from None
        data_dir = run.train_config.get("data_dir")
        if run.dataset == "imagefolder" and data_dir:  # written before local datasets had identities
            names = {name for result in run.results.values() for name in result.get("per_class_accuracy") or {}}
            run = dataclasses.replace(run, dataset=dataset_identity(run.dataset, data_dir, sorted(names)))
        runs.append((str(Path(file).parent), run))
    return runs


def _without_smoke_runs(runs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The runs that are not offline smoke runs (their `smoke_assets` name a tiny random model or generated images:
    their numbers measure nothing); the ones left out are named on stderr. `ValueError` when no other run is left."""
    smoke = [label for label, run in runs if run.smoke_assets]
    if not smoke:
        return runs
    kept = [(label, run) for label, run in runs if not run.smoke_assets]
    shown = ", ".join(smoke[:3]) + (f" and {len(smoke) - 3} more" if len(smoke) > 3 else "")
    if not kept:
        raise ValueError(
            f"Every run found is an offline smoke run ({shown}): a tiny random model or generated images, whose "
            "numbers measure nothing; pass --include_smoke to table them anyway."
        )
    print(
        f"note: left out {len(smoke)} offline smoke run(s) ({shown}): their numbers measure nothing; pass "
        "--include_smoke to table them",
        file=sys.stderr,
    )
    return kept


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit code.

    Args:
        argv (`Sequence[str] | None`): The command-line arguments (without the program name); `None` reads `sys.argv`.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="run directories (searched recursively for metrics.json)")
    parser.add_argument("--output", "-o", help="markdown file to write (default: print to stdout)")
    parser.add_argument("--json", dest="json_path", help="also write the tables' summaries to this JSON file")
    parser.add_argument(
        "--published", nargs="*", default=None, help="YAML files of published figures (default: examples/published/)"
    )
    parser.add_argument(
        "--include_smoke",
        action="store_true",
        help="table the offline smoke runs too (left out by default: a tiny random model or generated images)",
    )
    args = parser.parse_args(argv)

    # imported after the arguments are parsed: --help and argument errors do not wait for torch
    from maple_peft.training.tables import build_tables, load_published, render_markdown

    try:
        files = find_metrics_files(args.run_dirs)
        if not files:
            raise FileNotFoundError(
                f"No metrics.json found below {args.run_dirs}; pass the output directories of training runs."
            )
        published = load_published(args.published if args.published is not None else [PUBLISHED])
        runs = load_runs(files)
        if not args.include_smoke:
            runs = _without_smoke_runs(runs)
        tables = build_tables(runs, published=published)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    markdown = render_markdown(tables)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(markdown, encoding="utf-8")
        print(f"wrote {args.output} ({len(files)} runs, {len(tables)} tables)")
    else:
        print(markdown, end="")
    if args.json_path:
        payload = {
            "tables": [
                {
                    "title": table.title,
                    "method": table.method,
                    "setting": table.setting,
                    "rows": [
                        {
                            "dataset": row.dataset,
                            "split_source": row.split_source,
                            "summary": row.summary,
                            "shots": {str(k): v for k, v in row.shots.items()},
                        }
                        for row in table.rows
                    ],
                    "notes": table.notes,
                }
                for table in tables
            ],
            "files": [str(f) for f in files],
        }
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
