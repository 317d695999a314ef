"""benchmarks/bench.py end to end at tiny settings: every section runs, maple_peft and the baseline agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


def test_bench_runs_every_section_and_the_baseline_agrees(tmp_path):
    # a ViT-B/16-shaped CLIP cut to 9 layers per tower (the least MaPLe's depth 9 needs), 2-3 classes, 1 repetition;
    # each memory configuration is a fresh process, so only one per kind of worker code
    command = [sys.executable, str(BENCH), "--quick", "--layers", "9", "--train-classes", "2", "3"]
    command += ["--eval-classes", "3", "--reps", "1", "--eval-images", "4", "--eval-batch-size", "2"]
    command += ["--memory-classes", "3", "--out", str(tmp_path), "--tag", "smoke", "--override", json.dumps(TINY)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
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

    options = result["options"]["train"][0]["rows"]
    names = [r["variant"] for r in options]
    assert any("shared_prefix=False" in name for name in names) and any("eager" in name for name in names)
    assert all(r["logits_max_abs_diff_vs_default"] <= 1e-4 for r in options)
    text = {r["variant"]: r for r in result["options"]["text_features"]["rows"]}
    assert text["maple_peft shared_prefix=False"]["max_abs_diff_vs_maple_peft"] <= 1e-5

    memory = {(r["kind"], r["classes"]): r for r in result["memory"]["rows"]}
    for kind in ("train-baseline", "train-maple_peft-checkpointing", "train-maple_peft-no-shared-prefix"):
        assert memory[(kind, 3)]["increase_mb"] > 0, memory[(kind, 3)]
    assert memory[("eval-maple_peft", 3)]["increase_mb"] > 0

    report = (tmp_path / "smoke.md").read_text()
    assert "## Targets" in report and "## Training step" in report and (tmp_path / "smoke.png").stat().st_size > 0
