"""The MaPLe training step of two source trees of maple_peft, in alternating fresh processes: did a change make the
step slower? (Used for issue 14: the backbone descriptions against the CLIP-only code before them.)

    git worktree add /tmp/before <revision>                       # the code before the change, beside this checkout
    python benchmarks/bench_trees.py /tmp/before .                # 3 pairs of processes, 5 steps each, 100 classes
    python benchmarks/bench_trees.py /tmp/before . --pairs 5 --steps 7 --classes 10

Each process imports maple_peft and benchmarks/common.py from its own tree (so the two trees' benchmarks must both
have `build_maple`, `load_tokenizer` and `class_names`), builds the ViT-B/16-shaped CLIP with random weights and MaPLe
(n_ctx 2, depth 9), and times training steps (forward, cross-entropy, backward, SGD step with lr 0) after one warm-up
step, on 2 threads. The processes alternate (before, after, before, after, ...) so that a change in the machine's load
affects both; the figure is the median of the per-pair ratios after / before. Prints a markdown table; nothing is
written unless --out is given (a new .json path, or an earlier result of this script: no other file is replaced).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = """
import json, statistics, sys, time
tree, classes, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sys.path[:0] = [tree, tree + "/benchmarks"]
import torch
import torch.nn.functional as F
torch.set_num_threads(2)
import common, maple_peft
if not maple_peft.__file__.startswith(tree):
    raise SystemExit(f"imported {maple_peft.__file__}, not the tree {tree}")
clf = maple_peft.PromptClassifier(common.build_maple(), common.load_tokenizer(), common.class_names(classes))
clf.train()
images, labels = torch.randn(4, 3, 224, 224), torch.arange(4) % classes
optimizer = torch.optim.SGD([p for p in clf.parameters() if p.requires_grad], lr=0.0, momentum=0.9)
times = []
for i in range(steps + 1):
    start = time.perf_counter()
    F.cross_entropy(clf(images), labels).backward()
    optimizer.step()
    optimizer.zero_grad()
    if i:
        times.append(time.perf_counter() - start)
print(json.dumps(times))
"""


def run_tree(tree: Path, classes: int, steps: int) -> list[float]:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(tree), str(classes), str(steps)], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"the step in {tree} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def check_output(parser: argparse.ArgumentParser, out: Path) -> None:
    """Before any process starts: --out and the markdown beside it are new files, or an earlier result of this script
    (a user's other file is never overwritten), in a folder that can be written."""
    if out.suffix != ".json":
        parser.error(f"--out {out}: give a .json path (the markdown table is written beside it, as .md)")
    for path in (out, out.with_suffix(".md")):
        if path.exists() and not is_earlier_result(path):
            parser.error(
                f"--out {out}: {path} exists and is not an earlier result of bench_trees.py; choose another path"
            )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.error(f"--out {out}: cannot create its folder ({error.strerror}); choose another path")
    if not os.access(out.parent, os.W_OK):
        parser.error(f"--out {out}: the folder {out.parent} is not writable; choose another path")


def is_earlier_result(path: Path) -> bool:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return False
    if path.suffix == ".md":
        return text.startswith("# Training step, two trees (")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return False
    return isinstance(data, dict) and {"pairs", "median_ratio"} <= set(data)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path, help="source tree of the code before the change")
    parser.add_argument("after", type=Path, help="source tree of the code after it")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per process (after one warm-up step)")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--out", type=Path, help="write the results as JSON here (and markdown beside it)")
    args = parser.parse_args(argv)
    for name in ("pairs", "steps", "classes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} {getattr(args, name)}: give at least 1")
    trees = {}
    for label in ("before", "after"):
        tree = getattr(args, label).resolve()
        if not (tree / "maple_peft" / "__init__.py").is_file() or not (tree / "benchmarks" / "common.py").is_file():
            parser.error(
                f"{label} {getattr(args, label)}: not a maple_peft source tree (no maple_peft/ or benchmarks/)"
            )
        trees[label] = tree
    if args.out is not None:
        check_output(parser, args.out)
    pairs = []
    for _ in range(args.pairs):
        medians = {label: statistics.median(run_tree(tree, args.classes, args.steps)) for label, tree in trees.items()}
        pairs.append(dict(medians, ratio=medians["after"] / medians["before"]))
    lines = [
        f"# Training step, two trees ({args.classes} classes, batch 4, {args.steps} steps per process)",
        "",
        f"before: `{trees['before'].name}`, after: `{trees['after'].name}`",
        "",
        "| pair | before, median (s) | after, median (s) | after / before |",
        "|---:|---:|---:|---:|",
    ]
    lines += [f"| {i} | {p['before']:.3f} | {p['after']:.3f} | {p['ratio']:.2f} |" for i, p in enumerate(pairs, 1)]
    ratio = statistics.median(p["ratio"] for p in pairs)
    lines += ["", f"Median ratio after / before: {ratio:.2f} (below 1: the change is faster)."]
    text = "\n".join(lines) + "\n"
    print(text)
    results = dict(classes=args.classes, steps=args.steps, pairs=pairs, median_ratio=ratio)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(text)
    return results


if __name__ == "__main__":
    main()
