"""examples/benchmark.py: a 2-dataset x 2-seed base-to-novel grid on generated CoOp-layout data and a tiny CLIP.

One grid is shared by the tests (module fixture): one cell is stopped by hand after its first epoch (the benchmark
resumes it), one cell's folder holds a foreign file (its train.py refuses it: the cell fails, the others finish),
then the benchmark runs again once the file is gone (the finished cells are skipped). train.py and evaluate.py run
in this process through the benchmark's `run_command` hook (each would otherwise pay a torch import); the commands
are the exact ones the benchmark builds, and the subprocess runner is tested on its own.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import pytest
from matplotlib.container import BarContainer
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
import benchmark  # noqa: E402
import evaluate  # noqa: E402
import train  # noqa: E402
from make_smoke_assets import save_tiny_clip  # noqa: E402
from script_runs import as_a_process  # noqa: E402

from maple_peft.training.data import get_benchmark  # noqa: E402
from maple_peft.training.metrics import RunMetrics, harmonic_mean  # noqa: E402
from maple_peft.training.tables import build_tables, load_published, plot_comparison  # noqa: E402

CLASSES = {
    "eurosat": ["AnnualCrop", "Forest", "Highway", "SeaLake"],
    "dtd": ["banded", "blotchy", "braided", "bubbly"],
}


def write_coop_dataset(root: Path, name: str, class_names: list[str]) -> None:
    """A CoOp split_zhou_*.json dataset: 2 train, 1 val and 2 test images per class, one colour per class."""
    spec = get_benchmark(name)
    image_dir = root / spec.dataset_dir / spec.image_dir
    split: dict[str, list] = {}
    for part, count in (("train", 2), ("val", 1), ("test", 2)):
        split[part] = []
        for label, class_name in enumerate(class_names):
            for i in range(count):
                path = image_dir / class_name / f"{part}_{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (12, 12), (60 * label, 255 - 60 * label, 30 * i)).save(path)
                split[part].append([f"{class_name}/{part}_{i}.png", label, class_name])
    (root / spec.dataset_dir / spec.split_file).write_text(json.dumps(split))


def in_process(command: list[str], env: dict, log: Path) -> int:
    """Runs `python examples/train.py ...` / `evaluate.py ...` in this process, its output in the cell's log."""
    module = {"train.py": train, "evaluate.py": evaluate}[Path(command[1]).name]
    with open(log, "a", encoding="utf-8") as handle, contextlib.redirect_stdout(handle):
        with contextlib.redirect_stderr(handle), as_a_process():
            try:
                module.main(command[2:])
            except SystemExit as error:
                return error.code if isinstance(error.code, int) else 1
            except Exception:
                traceback.print_exc()
                return 1
    return 0


def run(argv: list, run_command=in_process) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = benchmark.main(list(map(str, argv)), run_command=run_command)
    return code, out.getvalue(), err.getvalue()


def never(command, env, log):
    raise AssertionError(f"nothing should run, but {command} did")


def mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmark")
    for name, classes in CLASSES.items():
        write_coop_dataset(root / "data", name, classes)
    save_tiny_clip(root / "tiny-clip")
    recipe = root / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {root / 'tiny-clip'}\nvariant: maple\nn_ctx: 2\ndepth: 2\nprompt_init: a photo of a\n"
        "setting: base2novel\nnum_shots: 2\nlr: 0.05\nepochs: 2\nwarmup_epochs: 1\nbatch_size: 2\n"
        "eval_batch_size: 16\nnum_workers: 0\nplots: false\n"
    )
    published = root / "published.yaml"
    published.write_text(
        "source: A paper\nurl: https://example.org/paper\ntables:\n"
        "  - name: MaPLe\n    table: Table 1\n    backbone: tiny\n"
        "    match: {variant: maple, n_ctx: 2, depth: 2, setting: base2novel, num_shots: 2}\n"
        "    columns: [base, novel, hm]\n"
        "    rows: {eurosat: [90.0, 70.0, 78.75], dtd: [80.0, 60.0, 68.57]}\n"
    )
    out = root / "out"
    base = [
        "--recipe", recipe, "--data_root", root / "data", "--datasets", "eurosat", "dtd", "--seeds", 1, 2,
        "--output_dir", out, "--published", published, "--set", "zero_shot_baseline=false",
    ]  # fmt: skip
    found: dict = {"root": root, "out": out, "base": base, "published": published}

    # dtd/seed2 stopped by hand after epoch 1, with the benchmark's own command: a run to resume
    code, dry, _ = run([*base, "--dry_run"], never)
    assert code == 0
    found["dry_run"] = dry
    lines = dry.splitlines()
    command = shlex.split(lines[lines.index("# dtd/seed2: run") + 1])
    assert in_process([*command, "--stop_after_epoch", "1"], {}, root / "stop.log") == 0, (
        root / "stop.log"
    ).read_text()
    found["stopped_checkpoint"] = out / "dtd" / "seed2" / "checkpoints" / "checkpoint_1" / "trainer_state.json"
    found["stopped_mtime"] = found["stopped_checkpoint"].stat().st_mtime_ns
    code, found["dry_run_resume"], _ = run([*base, "--dry_run"], never)

    # eurosat/seed2's folder holds a file of the user's: train.py refuses the folder, the cell fails
    (out / "eurosat" / "seed2").mkdir(parents=True)
    (out / "eurosat" / "seed2" / "notes.txt").write_text("my notes")
    found["first"] = run(base)
    found["first_table"] = (out / "results-base2novel.md").read_text()
    found["after_first"] = mtimes(out)
    found["notes_after_first"] = (out / "eurosat" / "seed2" / "notes.txt").read_text()

    # the file moved away: the second run runs that cell only
    (out / "eurosat" / "seed2" / "notes.txt").unlink()
    found["second"] = run(base)
    found["after_second"] = mtimes(out)
    return found


def test_dry_run_prints_each_cells_exact_command(grid):
    out, data, recipe = grid["out"], grid["root"] / "data", grid["root"] / "recipe.yaml"
    lines = grid["dry_run"].splitlines()
    assert lines[0].startswith("# 4 cells")
    assert [line for line in lines if line.startswith("# ") and "/seed" in line] == [
        "# eurosat/seed1: run",
        "# eurosat/seed2: run",
        "# dtd/seed1: run",
        "# dtd/seed2: run",
    ]
    command = shlex.split(lines[lines.index("# eurosat/seed1: run") + 1])
    assert command[:2] == [sys.executable, str(REPO / "examples" / "train.py")]
    assert command[2:] == [
        "--config", str(recipe), "--dataset", "eurosat", "--data_root", str(data), "--setting", "base2novel",
        "--seed", "1", "--output_dir", str(out / "eurosat" / "seed1"), "--no_zero_shot_baseline",
    ]  # fmt: skip
    # once dtd/seed2 is stopped, its command resumes it
    resumed = grid["dry_run_resume"].splitlines()
    assert "# dtd/seed2: resume (resume from checkpoint_1)" in resumed
    command = resumed[resumed.index("# dtd/seed2: resume (resume from checkpoint_1)") + 1]
    assert (
        command.endswith("--resume_from_checkpoint latest") and "--output_dir " + str(out / "dtd" / "seed2") in command
    )


def test_a_failing_cell_is_reported_with_its_log_while_the_others_finish(grid):
    code, stdout, _ = grid["first"]
    out = grid["out"]
    assert code == 1
    assert "4 cells: 3 run, 0 already finished (skipped), 1 failed, 0 refused" in stdout
    log = out / "logs" / "eurosat-seed2.log"
    assert f"failed eurosat/seed2: exit code 1; log: {log}" in stdout
    assert f"recipe: {grid['root'] / 'recipe.yaml'}" in stdout.splitlines()  # the recipe the cells run, then each
    assert re.search(r"done dtd/seed1 \([0-9.]+ min, recipe.yaml\)", stdout), stdout  # cell's line names it
    assert "notes.txt" in log.read_text()  # train.py's refusal names the file in the way
    for cell in ("eurosat/seed1", "dtd/seed1", "dtd/seed2"):
        assert (out / cell / "metrics.json").is_file()
    assert grid["notes_after_first"] == "my notes"  # the user's file is left alone


def test_a_stopped_cell_is_resumed_from_its_checkpoint_not_restarted(grid):
    run_dir = grid["out"] / "dtd" / "seed2"
    # the epoch-1 checkpoint written before the benchmark ran is the one it continued from: never rewritten
    assert grid["stopped_checkpoint"].stat().st_mtime_ns == grid["stopped_mtime"]
    history = json.loads((run_dir / "training_history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 1, 2, 2]
    assert json.loads((run_dir / "metrics.json").read_text())["train_config"]["resume_from_checkpoint"] == "latest"


def test_a_table_with_a_missing_cell_shows_it_and_averages_only_finished_results(grid):
    table = grid["first_table"]
    out = grid["out"]
    (eurosat,) = [line for line in table.splitlines() if line.startswith("| eurosat |")]
    cells = [cell.strip() for cell in eurosat.strip("|").split("|")]
    seed1 = json.loads((out / "eurosat" / "seed1" / "metrics.json").read_text())
    assert cells[1] == f"{seed1['results']['base']['accuracy']:.2f}"  # one seed: its value, no ±
    assert cells[-1] == "1; missing: 2"
    assert "| **Average** |" in table  # both datasets have a finished seed


def test_finished_cells_are_skipped_by_the_second_run(grid):
    code, stdout, _ = grid["second"]
    before, after = grid["after_first"], grid["after_second"]
    assert code == 0
    assert "4 cells: 1 run, 3 already finished (skipped), 0 failed, 0 refused" in stdout
    for cell in ("eurosat/seed1", "dtd/seed1", "dtd/seed2"):
        for name in ("metrics.json", "adapter_model.safetensors", "training_history.json"):
            assert after[f"{cell}/{name}"] == before[f"{cell}/{name}"], f"{cell}/{name} was rewritten"
    assert "eurosat/seed2/metrics.json" not in before and "eurosat/seed2/metrics.json" in after


def test_the_grid_writes_the_papers_table_csv_and_comparison_figure(grid):
    out = grid["out"]
    runs = {
        (d, s): RunMetrics.from_dict(json.loads((out / d / f"seed{s}" / "metrics.json").read_text()))
        for d in CLASSES
        for s in (1, 2)
    }
    markdown = (out / "results-base2novel.md").read_text()
    assert "## MaPLe (2 tokens, depth 2) · base-to-novel · 2 shots" in markdown
    assert "| Dataset | Base | Novel | HM | HM (paper) | Seeds |" in markdown
    (dtd_line,) = [line for line in markdown.splitlines() if line.startswith("| dtd |")]
    dtd = [cell.strip() for cell in dtd_line.strip("|").split("|")]
    base = [runs["dtd", s].results["base"]["accuracy"] for s in (1, 2)]
    novel = [runs["dtd", s].results["novel"]["accuracy"] for s in (1, 2)]
    std = abs(base[0] - base[1]) / 2**0.5  # the sample standard deviation of two values
    assert dtd[1] == f"{sum(base) / 2:.2f} ± {std:.2f}"
    assert dtd[3] == f"{harmonic_mean(sum(base) / 2, sum(novel) / 2):.2f}"
    assert dtd[4:] == ["68.57", "1, 2"]  # the published HM of the same method
    assert markdown.index("| dtd |") < markdown.index("| eurosat |")  # the papers' order

    (csv_file,) = out.glob("results-base2novel-*.csv")
    header, *rows = [line.split(",") for line in csv_file.read_text().splitlines()]
    assert header[:5] == ["dataset", "base", "base std", "novel", "novel std"]
    assert [row[0] for row in rows] == ["dtd", "eurosat"]
    assert float(rows[0][1]) == pytest.approx(sum(base) / 2, abs=1e-4)

    (png,) = out.glob("comparison-base2novel-*.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the figure's content: each dataset's HM beside the published one, and the average
    tables = build_tables(
        [(str(d), r) for d, r in runs.items()], expected_seeds=[1, 2], published=load_published([grid["published"]])
    )
    figure = plot_comparison(tables[0])
    axes = figure.axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()] == ["dtd", "eurosat", "Average"]
    measured, published = [c for c in axes.containers if isinstance(c, BarContainer)]
    summary_hm = [float(line.split("|")[4]) for line in markdown.splitlines() if line.startswith(("| dtd", "| eur"))]
    assert [round(bar.get_height(), 2) for bar in measured][:2] == summary_hm
    assert [bar.get_height() for bar in published][:2] == [68.57, 78.75]
    assert "published (MaPLe tiny)" in [t.get_text() for t in axes.get_legend().get_texts()]


def test_a_cell_with_changed_options_is_refused_and_left_alone(grid):
    before = mtimes(grid["out"])
    code, stdout, _ = run([*grid["base"], "--set", "lr=0.01"], never)
    assert code == 1
    assert "4 cells: 0 run, 0 already finished (skipped), 0 failed, 4 refused" in stdout
    assert f"refused dtd/seed1: {grid['out'] / 'dtd' / 'seed1'} holds a finished run with other options" in stdout
    assert "lr: 0.05 -> 0.01" in stdout
    assert {k: v for k, v in mtimes(grid["out"]).items() if "/seed" in k} == {
        k: v for k, v in before.items() if "/seed" in k
    }


def test_table_only_rewrites_the_tables_and_runs_nothing(grid):
    table = grid["out"] / "results-base2novel.md"
    table.unlink()
    code, stdout, _ = run([*grid["base"], "--table_only"], never)
    assert code == 0 and table.is_file() and "| eurosat |" in table.read_text()


def test_slurm_writes_a_job_array_of_one_task_per_cell(grid, tmp_path):
    script = tmp_path / "grid.sbatch"
    code, stdout, _ = run([*grid["base"], "--slurm", script], never)
    assert code == 0 and f"sbatch {script}" in stdout
    text = script.read_text()
    assert "#SBATCH --array=0-3" in text and "#SBATCH --gres=gpu:1" in text
    assert "#   0: eurosat/seed1" in text and "#   3: dtd/seed2" in text
    last = shlex.split(text.strip().splitlines()[-1])
    assert last[:2] == [sys.executable, str(REPO / "examples" / "benchmark.py")]
    assert last[-2:] == ["--cell", "$SLURM_ARRAY_TASK_ID"] and "--slurm" not in last
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    # a task runs its cell: here a finished one, skipped
    code, stdout, _ = run([*grid["base"], "--cell", 3], never)
    assert code == 0 and "1 cells: 0 run, 1 already finished (skipped)" in stdout
    # a file that is not ours is never overwritten
    script.write_text("my own script\n")
    code, _, err = run([*grid["base"], "--slurm", script], never)
    assert code == 2 and "was not written by benchmark.py" in err and script.read_text() == "my own script\n"


def test_cells_run_one_per_gpu_at_a_time(tmp_path):
    cells = [benchmark.Cell(f"d/seed{i}", "d", i, tmp_path / f"seed{i}", [], output_dir=tmp_path) for i in range(5)]
    plans = [benchmark.Plan("run", "", [["cmd", str(i)]]) for i in range(5)]
    busy: dict[str, int] = {}
    seen: list[tuple[str, int]] = []
    lock = threading.Lock()

    def fake(command, env, log):
        device = env["CUDA_VISIBLE_DEVICES"]
        with lock:
            busy[device] = busy.get(device, 0) + 1
            seen.append((device, sum(busy.values())))
            assert busy[device] == 1, "two cells on one GPU"
        time.sleep(0.05)
        with lock:
            busy[device] -= 1
        return 0 if command[1] != "3" else 7

    outcome = benchmark.run_grid(cells, plans, ["0", "1"], fake, write=lambda line: None)
    assert {device for device, _ in seen} == {"0", "1"}
    assert max(n for _, n in seen) == 2  # two cells at once, never more
    assert outcome["d/seed3"][0] == "failed" and "exit code 7" in outcome["d/seed3"][1]
    assert sum(state == "done" for state, _ in outcome.values()) == 4


def test_the_subprocess_runner_gives_the_cell_its_gpu_and_logs_its_output(tmp_path):
    command = [sys.executable, "-c", "import os, sys; print(os.environ['CUDA_VISIBLE_DEVICES']); sys.exit(3)"]
    cell = benchmark.Cell("x/seed1", "x", 1, tmp_path / "x" / "seed1", [], output_dir=tmp_path)
    state, detail = benchmark.run_cell(cell, benchmark.Plan("run", "", [command]), "5", benchmark.run_subprocess)
    assert (state, detail) == ("failed", f"exit code 3; log: {tmp_path / 'logs' / 'x-seed1.log'}")
    lines = (tmp_path / "logs" / "x-seed1.log").read_text().splitlines()
    assert lines[-2].endswith(f"CUDA_VISIBLE_DEVICES=5 {shlex.join(command)}") and lines[-1] == "5"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "seed=3"], "the benchmark sets seed for every cell; use --seeds"),
        (["--set", "lr"], "--set 'lr': write key=value"),
        (["--set", "gpa_mean=null"], "train.py cannot unset gpa_mean on its command line"),
        (["--set", "lr=-1"], "cell eurosat/seed1: --lr -1.0"),  # train.py's own check, before any work
        (["--set", "no_such_option=1"], "cell eurosat/seed1: unrecognized arguments: --no_such_option"),
        (["--datasets", "eurosat", "cars"], "1 dataset(s) of the grid are not under --data_root"),
        (["--datasets", "nowhere"], "Unknown benchmark 'nowhere'"),
    ],
)
def test_bad_options_are_refused_before_anything_runs(grid, extra, message):
    argv = [a for a in grid["base"] if a not in ("eurosat", "dtd")]
    argv = argv[: argv.index("--datasets") + 1] + ["eurosat"] + argv[argv.index("--datasets") + 1 :]
    code, _, err = run([*argv, *extra], never)
    assert code == 2 and message in err, err


def test_cross_dataset_and_domain_generalization_cells(tmp_path):
    data = tmp_path / "data"
    for name in ("imagenet", *benchmark.CROSS_DATASET_TARGETS, *benchmark.DG_TARGETS):
        (data / get_benchmark(name).dataset_dir).mkdir(parents=True)
    recipe = REPO / "examples" / "configs" / "maple_cross_dataset.yaml"
    argv = ["--recipe", recipe, "--data_root", data, "--seeds", 1, 2, "--output_dir", tmp_path / "out", "--dry_run"]
    code, text, _ = run(argv, never)
    lines = text.splitlines()
    assert code == 0 and [line for line in lines if line.startswith("# imagenet")] == [
        "# imagenet/seed1: run",
        "# imagenet/seed2: run",
    ]
    command = shlex.split(lines[lines.index("# imagenet/seed1: run") + 1])
    targets = command[command.index("--eval_datasets") + 1 : command.index("--seed")]
    assert targets == list(benchmark.CROSS_DATASET_TARGETS)  # one training per seed, every target evaluated by it

    code, text, _ = run([*argv, "--protocol", "domain_generalization"], never)
    lines = text.splitlines()
    seed1 = lines[lines.index("# imagenet/seed1: run") + 1 : lines.index("# imagenet/seed2: run")]
    assert len(seed1) == 5 and "--eval_datasets" in seed1[0]  # the same training cell as cross_dataset, then
    evaluations = [shlex.split(line) for line in seed1[1:]]  # its adapter evaluated on the 4 ImageNet variants
    assert [c[c.index("--dataset") + 1] for c in evaluations] == list(benchmark.DG_TARGETS)
    assert all(c[c.index("--adapter") + 1] == str(tmp_path / "out" / "imagenet" / "seed1") for c in evaluations)
    assert evaluations[0][-2:] == ["--output", str(tmp_path / "out" / "imagenetv2" / "seed1" / "eval.json")]

    few = ["--recipe", REPO / "examples" / "configs" / "maple_base2novel.yaml", "--protocol", "few_shot"]
    few += ["--data_root", data, "--datasets", "dtd", "--shots", 1, 4, "--seeds", 1, "--output_dir", tmp_path / "f"]
    code, text, _ = run([*few, "--dry_run"], never)
    assert code == 0 and [line for line in text.splitlines() if line.startswith("# dtd")] == [
        "# dtd/1shots/seed1: run",
        "# dtd/4shots/seed1: run",
    ]
    assert (
        "--setting all --num_shots 4 --seed 1 --output_dir " + str(tmp_path / "f" / "dtd" / "4shots" / "seed1") in text
    )


@pytest.mark.parametrize(
    "given,used",
    [
        ("promptsrc_base2novel.yaml", "promptsrc_few_shot.yaml"),
        ("mmrl_cross_dataset.yaml", "mmrl_few_shot.yaml"),
        ("mmrl_few_shot.yaml", "mmrl_few_shot.yaml"),
        ("maple_base2novel.yaml", "maple_base2novel.yaml"),  # no few-shot recipe of its own
    ],
)
def test_few_shot_cells_use_the_methods_few_shot_recipe_and_say_which(tmp_path, given, used):
    data = tmp_path / "data"
    for name in ("dtd", "caltech101"):
        (data / get_benchmark(name).dataset_dir).mkdir(parents=True)
    configs = REPO / "examples" / "configs"
    argv = ["--recipe", configs / given, "--protocol", "few_shot", "--data_root", data, "--datasets", "dtd"]
    argv += ["caltech101", "--shots", 2, "--seeds", 1, "--output_dir", tmp_path / "out", "--dry_run"]
    code, text, err = run(argv, never)
    assert code == 0, err
    commands = [shlex.split(line) for line in text.splitlines() if not line.startswith("#")]
    assert len(commands) == 2 and all(c[c.index("--config") + 1] == str(configs / used) for c in commands)
    instead = f" (the method's few-shot recipe, in place of {given})" if used != given else ""
    assert f"# recipe: {configs / used}{instead}" in text.splitlines()
    if used == "mmrl_few_shot.yaml":  # MMRL's per-dataset weights replace the config's 0.5, as in the original
        assert "#   dtd cells: its dtd values reg_weight=6.0" in text and "caltech101 values reg_weight=0.5" in text


def test_domain_generalization_evaluates_the_cross_dataset_adapter_and_tabulates_it(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    for name in ("imagenet", *benchmark.CROSS_DATASET_TARGETS, *benchmark.DG_TARGETS):
        (data / get_benchmark(name).dataset_dir).mkdir(parents=True)
    recipe = REPO / "examples" / "configs" / "maple_cross_dataset.yaml"
    argv = ["--recipe", recipe, "--data_root", data, "--seeds", 1, "--output_dir", out]
    argv += ["--protocol", "domain_generalization"]
    args = benchmark.build_parser().parse_args(list(map(str, argv)))
    (cell,) = benchmark.build_cells(args)
    # the cross-dataset cell finished (its adapter and metrics), two of the four variants already evaluated
    cell.run_dir.mkdir(parents=True)
    (cell.run_dir / "adapter_model.safetensors").write_bytes(b"adapter")
    results = {"imagenet": {"accuracy": 70.0}, "caltech101": {"accuracy": 90.0}}
    peft = {"variant": "maple", "n_ctx": 2, "depth": 3, "prompt_init": "a photo of a"}
    metrics = {"base_model": "openai/clip-vit-base-patch16", "dataset": "imagenet", "setting": "cross_dataset"}
    metrics.update(seed=1, num_shots=16, results=results, train_config=cell.options, peft_config=peft)
    (cell.run_dir / "metrics.json").write_text(json.dumps({**metrics, "split_source": "coop"}))
    for target, accuracy in (("imagenetv2", 63.0), ("imagenet_sketch", 48.0)):
        (out / target / "seed1").mkdir(parents=True)
        evaluation = {"accuracy": accuracy, "adapter": str(cell.run_dir), "dataset": target}
        (out / target / "seed1" / "eval.json").write_text(json.dumps(evaluation))

    code, text, _ = run([*argv, "--dry_run"], never)
    lines = text.splitlines()
    assert code == 0 and "# imagenet/seed1: run (evaluate the finished adapter)" in lines
    commands = [
        shlex.split(line) for line in lines[lines.index("# imagenet/seed1: run (evaluate the finished adapter)") + 1 :]
    ]
    assert [Path(c[1]).name for c in commands] == ["evaluate.py", "evaluate.py"]  # no training again
    assert [c[c.index("--dataset") + 1] for c in commands] == ["imagenet_a", "imagenet_r"]

    code, _, _ = run([*argv, "--table_only"], never)
    markdown = (out / "results-domain_generalization.md").read_text()
    assert code == 0 and "## MaPLe (2 tokens, depth 3) · domain generalization · 16 shots" in markdown
    assert "| Dataset | imagenet | imagenetv2 | imagenet_sketch | Average (targets) | Seeds |" in markdown
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")[1:]]
        for line in markdown.splitlines()
        if line.startswith("| ")
    }
    assert rows["imagenet"] == ["70.00", "63.00", "48.00", "55.50", "1"]
    assert rows["*paper: MaPLe*"][:4] == ["70.72", "64.07", "49.15", "56.61"]  # the MaPLe paper, the same columns

    # an evaluation of another adapter in a cell's place is refused, not overwritten
    (out / "imagenet_a" / "seed1").mkdir(parents=True)
    (out / "imagenet_a" / "seed1" / "eval.json").write_text(json.dumps({"accuracy": 1.0, "adapter": "elsewhere"}))
    code, stdout, _ = run(argv, never)
    assert code == 1 and "is not an evaluation of" in stdout


@pytest.mark.parametrize("script", ["benchmark.py", "aggregate.py"])
def test_help_answers_without_importing_torch(script):
    code = (
        "import runpy, sys; sys.argv = [sys.argv[0], '--help']\n"
        f"try:\n    runpy.run_path({str(REPO / 'examples' / script)!r}, run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('torch' in sys.modules, 'maple_peft' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "usage:" in result.stdout and result.stdout.strip().splitlines()[-1] == "False False"


def test_hub_cells_train_on_the_registrys_datasets(tmp_path):
    recipe = REPO / "examples" / "configs" / "maple_base2novel.yaml"
    argv = ["--recipe", recipe, "--hub", "--seeds", 1, "--output_dir", tmp_path / "out", "--dry_run"]
    code, text, _ = run(argv, never)
    lines = text.splitlines()
    assert code == 0 and [line for line in lines if line.startswith("# eurosat")] == ["# eurosat/seed1: run"]
    command = shlex.split(lines[lines.index("# eurosat/seed1: run") + 1])
    assert command[command.index("--dataset_name") + 1] == "timm/eurosat-rgb" and "--dataset" not in command
    assert command[command.index("--output_dir") + 1] == str(tmp_path / "out" / "eurosat" / "seed1")
    # the cross-dataset targets are CoOp datasets: the Hub does not hold them
    xd = REPO / "examples" / "configs" / "maple_cross_dataset.yaml"
    code, _, err = run(["--recipe", xd, "--hub", "--output_dir", tmp_path / "x", "--dry_run"], never)
    assert code == 2 and "pass --data_root instead of --hub" in err


def test_a_dry_run_prints_every_command_and_names_every_missing_dataset_at_once(tmp_path):
    data = tmp_path / "data"
    for name in ("eurosat", "dtd"):
        (data / get_benchmark(name).dataset_dir).mkdir(parents=True)
    recipe = REPO / "examples" / "configs" / "maple_base2novel.yaml"
    argv = ["--recipe", recipe, "--data_root", data, "--datasets", "eurosat", "caltech101", "dtd", "ucf101"]
    argv += ["--seeds", 1, 2, "--output_dir", tmp_path / "out"]
    code, text, err = run([*argv, "--dry_run"], never)
    assert code == 2
    assert [line for line in text.splitlines() if line.startswith("# ") and ": run" in line] == [
        f"# {name}/seed{seed}: run" for name in ("eurosat", "caltech101", "dtd", "ucf101") for seed in (1, 2)
    ]  # every cell's command, the missing datasets' too
    (line,) = err.splitlines()
    assert line.startswith(f"error: 2 dataset(s) of the grid are not under --data_root {data}: caltech101 (")
    assert "ucf101 (" in line and "eurosat" not in line
    code, text, err = run(argv, never)  # a real run is refused before anything runs, naming both too
    assert code == 2 and text == "" and "caltech101 (" in err and "ucf101 (" in err
