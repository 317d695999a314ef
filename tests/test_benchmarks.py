"""benchmarks/bench.py end to end: every section runs, maple_peft and the baseline agree.

The full run of every section, on the smallest CLIP that runs them all (`--shape tiny`: 9 layers per tower, as
MaPLe's depth 9 needs, widths 32/48, 32 px; one thread) and on the ViT-B/16-shaped CLIP the figures are measured on,
is opt-in (`pytest -m slow`: it would be half a minute of the default run); the bf16 options check runs by default.

The options section adds bf16-autocast training rows only where bf16 is native (CUDA, or a CPU with AVX512-BF16 / AMX);
`MAPLE_PEFT_BENCH_BF16=0|1` overrides the detection so that both paths run here on any machine.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"

TINY = {
    "memory_lib_classes": [],
    "memory_baseline_classes": [3],
    "memory_eval_classes": [3],
    "memory_no_shared_prefix_classes": [3],
    "options_classes": [3],
    "options_variants": "all",
    "options_text_classes": 3,
    "options_eval_batch_size": 2,
    "baseline_train_max": 3,
    "baseline_eval_max": 3,
    "eval_reps": 1,
    "options_reps": 1,
    "e2e": True,
}


# logits are logit_scale x cosine: differences are compared to the largest |logit| of the default row
FP32_RTOL = 2e-5  # ~170 float32 epsilons: other attention kernels, the baseline's padded prompts
BF16_RTOL = 5e-2  # ~6 bfloat16 epsilons (2**-7): bf16 autocast against float32


def bench_args(tmp_path: Path, *, sections: list[str] | None = None, shape: str = "tiny") -> list[str]:
    # 9 layers per tower (the least MaPLe's depth 9 needs), 2-3 classes, 1 repetition; each memory configuration is a
    # fresh process, so only one per kind of worker code
    args = ["--quick", "--shape", shape, "--layers", "9", "--train-classes", "2", "3"]
    args += ["--eval-classes", "3", "--reps", "1", "--eval-images", "4", "--eval-batch-size", "2"]
    args += ["--memory-classes", "3", "--out", str(tmp_path), "--tag", "smoke", "--override", json.dumps(TINY)]
    return args + (["--sections", *sections] if sections else [])


def run_bench(
    tmp_path: Path, *, bf16: str, sections: list[str] | None = None, shape: str = "tiny"
) -> subprocess.CompletedProcess:
    # The tiny shape runs on one thread: its timings mean nothing, and a busy machine slows many tiny multi-threaded
    # operations down by orders of magnitude.
    env = {**os.environ, "MAPLE_PEFT_BENCH_BF16": bf16}
    if shape == "tiny":
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = [sys.executable, str(BENCH), *bench_args(tmp_path, sections=sections, shape=shape)]
    return subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False, env=env)


@pytest.fixture(scope="module")
def bench():
    """benchmarks/bench.py, loaded in this process (its imports are those of the package and its tests)."""
    if str(BENCH.parent) not in sys.path:
        sys.path.insert(0, str(BENCH.parent))  # its own modules: baseline, common, report
    spec = importlib.util.spec_from_file_location("bench_under_test", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_bench_here(bench, tmp_path: Path, monkeypatch, *, bf16: str, sections: list[str], shape: str) -> None:
    """`run_bench` in this process (a section that starts no worker process), the tiny shape on one thread."""
    import torch

    monkeypatch.setenv("MAPLE_PEFT_BENCH_BF16", bf16)
    threads = torch.get_num_threads()
    if shape == "tiny":
        torch.set_num_threads(1)
    try:
        bench.main(bench_args(tmp_path, sections=sections, shape=shape))
    finally:
        torch.set_num_threads(threads)


def assert_options_agree(options: dict, *, bf16_rows: bool) -> None:
    (entry,) = options["train"]
    rows = entry["rows"]
    names = [r["variant"] for r in rows]
    assert any("shared_prefix=False" in name for name in names) and any("eager" in name for name in names)
    assert any("bf16-autocast" in name for name in names) == bf16_rows, names
    assert options["bf16_train_measured"] == bf16_rows
    scale = entry["default_logits_max_abs"]
    assert scale > 0
    for row in rows:
        rtol = BF16_RTOL if "bf16" in row["variant"] else FP32_RTOL
        assert row["logits_max_abs_diff_vs_default"] <= rtol * scale, (row["variant"], scale)
    text = {r["variant"]: r for r in options["text_features"]["rows"]}
    assert text["maple_peft shared_prefix=False"]["max_abs_diff_vs_maple_peft"] <= 1e-5
    evaluation = {r["variant"]: r for r in options["eval"]["rows"]}
    assert evaluation["maple_peft bf16-autocast sdpa"]["max_abs_diff_vs_fp32"] is not None


SHAPES = [pytest.param("tiny", id="tiny"), pytest.param("vit-b16", id="vit-b16", marks=pytest.mark.slow)]


# every section of bench.py takes about 30 s even on the tiny CLIP: opt-in (`-m slow`), as the ViT-B/16 shape is
@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES)
def test_bench_runs_every_section_and_the_baseline_agrees(tmp_path, shape):
    # the path of a CPU without native bf16: no bf16 training rows (the bf16 path is the next test)
    done = run_bench(tmp_path, bf16="0", shape=shape)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "smoke.json").read_text())

    train = {row["classes"]: row for row in result["train"]}
    assert set(train) == {2, 3}
    for row in train.values():
        assert row["logits_max_abs_diff_fp32"] <= 1e-4 and row["grad_max_abs_diff_fp32"] <= 1e-4
        assert row["maple_peft_s"] > 0 and row["baseline_s"] > 0

    (row,) = result["eval"]["rows"]
    assert row["logits_max_abs_diff_vs_baseline"] <= 1e-4
    assert len(row["maple_peft_vs_plain_per_repetition"]) == 1 and result["eval"]["end_to_end"]["runs"] >= 1

    assert_options_agree(result["options"], bf16_rows=False)

    memory = {(r["kind"], r["classes"]): r for r in result["memory"]["rows"]}
    for kind in ("train-baseline", "train-maple_peft-checkpointing", "train-maple_peft-no-shared-prefix"):
        assert memory[(kind, 3)]["increase_mb"] > 0, memory[(kind, 3)]
    assert memory[("eval-maple_peft", 3)]["increase_mb"] > 0

    report = (tmp_path / "smoke.md").read_text()
    assert "## Targets" in report and "## Training step" in report and (tmp_path / "smoke.png").stat().st_size > 0


# the report of the options section alone leaves the other sections' plots empty (matplotlib warns of their legends)
@pytest.mark.filterwarnings("ignore:No artists with labels found to put in legend")
@pytest.mark.parametrize("shape", SHAPES)
def test_bench_options_with_bf16_autocast_agree_at_bf16_tolerance(bench, tmp_path, monkeypatch, shape):
    # the path of a CPU with native bf16 (forced): the options section alone adds bf16-autocast training rows,
    # compared at a bf16 tolerance while the float32 rows keep a float32 one
    run_bench_here(bench, tmp_path, monkeypatch, bf16="1", sections=["options"], shape=shape)
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert set(result["section_seconds"]) == {"options"}
    assert_options_agree(result["options"], bf16_rows=True)


def test_bench_refuses_an_invalid_bf16_override_before_any_work(bench, tmp_path, monkeypatch, capsys):
    # in this process: the refusal comes before any model is built
    value = "yes"
    monkeypatch.setenv("MAPLE_PEFT_BENCH_BF16", value)
    with pytest.raises(SystemExit, match=f"MAPLE_PEFT_BENCH_BF16={value!r} is not a valid value; use 1"):
        bench.main(["--quick", "--shape", "tiny", "--sections", "options", "--out", str(tmp_path), "--tag", "smoke"])
    assert list(tmp_path.iterdir()) == [] and "building the models" not in capsys.readouterr().out
