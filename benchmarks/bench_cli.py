#!/usr/bin/env python
"""How long `--help` and an option error take to answer, for each command line of the project.

Each command runs as a fresh process (what a user waits for), `--reps` times, interleaved with two baselines measured
in the same run: a bare interpreter (`python -c pass`, the floor) and an import of the library with torch,
transformers and PEFT (`from maple_peft import MaPLeModel`: what a command would pay if it imported them before parsing
its arguments). The table gives the median, the ratio to the bare interpreter and the ratio to the library import.

    python benchmarks/bench_cli.py                  # 7 runs of each; writes benchmarks/results/cpu-cli.{json,md}
    python benchmarks/bench_cli.py --reps 3 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

COMMANDS: dict[str, list[str]] = {
    "python -c pass (interpreter start)": ["-c", "pass"],
    "python -c 'from maple_peft import MaPLeModel' (torch, transformers, PEFT)": [
        "-c",
        "from maple_peft import MaPLeModel",
    ],
    "python -c 'import maple_peft'": ["-c", "import maple_peft"],
    "maple-peft --help": ["-m", "maple_peft.cli", "--help"],
    "maple-peft predict --help": ["-m", "maple_peft.cli", "predict", "--help"],
    "maple-peft predict --top-k 0 (option error)": [
        "-m",
        "maple_peft.cli",
        "predict",
        "--adapter",
        "a",
        "--top-k",
        "0",
        "x.jpg",
    ],
    "examples/train.py --help": ["examples/train.py", "--help"],
    "examples/train.py --lr abc (option error)": ["examples/train.py", "--lr", "abc"],
    "examples/evaluate.py --help": ["examples/evaluate.py", "--help"],
}
FLOOR, BEFORE = list(COMMANDS)[:2]


def time_once(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, check=False,
                   env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    return time.perf_counter() - start


def measure(reps: int) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for args in COMMANDS.values():  # warm the file cache once
        time_once(args)
    for _ in range(reps):  # interleaved, so that load changes hit every command alike
        for name, args in COMMANDS.items():
            timings[name].append(time_once(args))
    return timings


def render(timings: dict[str, list[float]], reps: int) -> str:
    floor, before = statistics.median(timings[FLOOR]), statistics.median(timings[BEFORE])
    lines = [
        f"# Command-line start-up: `--help` and option errors (median of {reps} runs, fresh processes)",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), Python "
        f"{platform.python_version()}; load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}.",
        "",
        "| command | median (s) | min–max (s) | × interpreter start | × library import |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in timings.items():
        median = statistics.median(values)
        lines.append(
            f"| {name} | {median:.3f} | {min(values):.3f}–{max(values):.3f} | {median / floor:.1f} | "
            f"{median / before:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7, help="runs of each command (default 7)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    timings = measure(args.reps)
    table = render(timings, args.reps)
    print(table)
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "cpu-cli.md").write_text(table, encoding="utf-8")
        data = {"reps": args.reps, "timings_s": timings, "cpu_count": os.cpu_count(), "python": sys.version}
        (RESULTS / "cpu-cli.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
