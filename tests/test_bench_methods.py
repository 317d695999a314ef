"""benchmarks/bench_methods.py on a tiny CLIP and 3 classes: every section's code runs, and CoCoOp's per-image loop
(the original code's way) gives the logits and gradients of `PromptClassifier`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_methods  # noqa: E402

TINY = ["--size", "tiny", "--classes", "3", "--reps", "1", "--cocoop-reps", "1"]


@pytest.fixture(scope="module")
def result(tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bench-methods")
    bench_methods.main([*TINY, "--sections", "steps", "cocoop", "--out", str(out), "--tag", "smoke"])
    return json.loads((out / "smoke.json").read_text()), out


def test_every_method_steps_and_is_compared_with_maple(result):
    data, out = result
    rows = data["steps"]["rows"]
    assert list(rows) == [method.name for method in bench_methods.METHODS]
    assert rows["maple"]["ratio_to_maple"] == pytest.approx(1.0)
    for name, row in rows.items():
        assert row["step_s"] > 0 and row["ratio_to_maple"] > 0 and row["trainable_parameters"] > 0, name
    assert rows["cocoop_b1"]["batch_size"] == 1 and rows["cocoop"]["batch_size"] == 4
    assert rows["promptsrc"]["frozen_text_target_prompts"] == 3 * 60
    assert rows["coop"]["config"] == rows["kgcoop"]["config"]
    assert rows["mmrl"]["config"]["rep_layers"] == [1, 2, 3]
    text = (out / "smoke.md").read_text()
    assert "| KgCoOp |" in text and "| CoCoOp, batch 1 |" in text and "| MMRL |" in text


def test_cocoop_loop_matches_the_classifier(result):
    data, _ = result
    rows = {(row["impl"], row["batch_size"]): row for row in data["cocoop"]["rows"]}
    assert set(rows) == {(impl, batch) for impl in bench_methods.COCOOP_IMPLS for batch in (1, 4)}
    assert rows[("loop", 4)]["text_positions_per_image"] == 3 * 77  # every class prompt padded to 77, per image
    assert rows[("classifier", 4)]["text_positions_per_image"] < rows[("loop_trimmed", 4)]["text_positions_per_image"]
    for (impl, _), row in rows.items():
        if impl == "classifier":
            continue
        assert row["logits_max_abs_diff"] <= 1e-5 * row["logits_max_abs"], row
        assert row["grad_max_abs_diff"] <= 1e-4 * row["grad_max_abs"], row
        assert row["speedup_of_classifier"] > 0


def test_memory_worker_measures_one_step(capsys):
    spec = dict(device="cpu", size="tiny", layers=3, attn="sdpa", classes=3, impl="loop", batch_size=2)
    bench_methods.main(["--memory-worker", json.dumps(spec)])
    measured = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert measured["increase_mb"] >= 0 and measured["peak_mb"] >= measured["start_mb"]
    assert "peak" in measured["method"] or "max_memory" in measured["method"]


def test_bad_settings_are_refused():
    with pytest.raises(SystemExit):
        bench_methods.parse_args(["--reps", "0"])
    with pytest.raises(ValueError, match="impl='nope'"):
        bench_methods.cocoop_forward("nope", None, None, ["a"])
