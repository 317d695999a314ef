"""benchmarks/bench_backbones.py without its ViT-B/16 measurements (they take minutes): the `--sections` bookkeeping
and the report's same-width ratios."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_backbones  # noqa: E402


def speed_row(text_ms: float, step_s: float, shared: bool = True) -> dict:
    return {
        "shared_prefix_reason": None if shared else "the text encoder is not causal",
        "text_positions_per_class": 13.0 if shared else 64.0,
        "text_ms_per_class": text_ms,
        "train_step_s": step_s,
    }


SPEED = {
    "clip": speed_row(2.0, 2.0),
    "metaclip_2": speed_row(3.0, 2.5),
    "clip_768": speed_row(5.0, 3.0),
    "siglip": speed_row(65.0, 18.0, shared=False),
    "siglip2": speed_row(60.0, 15.0, shared=False),
}
MEMORY = [dict(model="siglip", classes=300, text_batch_size=16, gradient_checkpointing=True, peak_mb=1400.0)]


def test_a_single_section_needs_an_earlier_result_for_the_other(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_backbones, "RESULTS", tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        bench_backbones.main(["--sections", "memory"])
    assert exit_info.value.code == 2
    assert "no earlier cpu-backbones.json holds ['speed']" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_single_section_keeps_the_other_from_the_earlier_result(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_backbones, "RESULTS", tmp_path)
    earlier = {"settings": "earlier settings", "speed": SPEED, "memory": []}
    (tmp_path / "cpu-backbones.json").write_text(json.dumps(earlier))
    monkeypatch.setattr(bench_backbones, "measure_memory", lambda n_classes: MEMORY)
    monkeypatch.setattr(bench_backbones, "measure_speed", lambda *args: pytest.fail("speed was not asked for"))
    bench_backbones.main(["--sections", "memory"])
    written = json.loads((tmp_path / "cpu-backbones.json").read_text())
    assert written["speed"] == SPEED and written["settings"] == "earlier settings"
    assert written["memory"] == MEMORY
    assert "| siglip | 300 | 16 | True | 1400 |" in (tmp_path / "cpu-backbones.md").read_text()


def test_the_report_compares_each_model_with_clip_of_the_same_widths():
    text = bench_backbones.report(
        {"settings": "s", "environment": {"cpu": "test", "torch": "x"}, "speed": SPEED, "memory": MEMORY}
    )
    speed_table = text.split("## Peak memory")[0]
    rows = {line.split(" | ")[0].strip("| "): line for line in speed_table.splitlines() if line.startswith("| ")}
    assert "| 1.50× | 2.50 | 1.25× |" in rows["metaclip_2"]  # against clip (text 512 wide)
    assert "| 13.00× | 18.00 | 6.00× |" in rows["siglip"]  # against clip_768 (text 768 wide)
    assert "| 12.00× | 15.00 | 5.00× |" in rows["siglip2"]
    assert "| no |" in rows["siglip"] and "| yes |" in rows["clip"]
