"""benchmarks/bench_trees.py refuses what is not two source trees, and bad counts, before starting any process."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import bench_trees  # noqa: E402


def test_a_folder_that_is_not_a_source_tree_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_trees, "run_tree", lambda *a: pytest.fail("no process may start"))
    with pytest.raises(SystemExit) as exit_info:
        bench_trees.main([str(tmp_path), str(REPO)])
    assert exit_info.value.code == 2
    assert f"before {tmp_path}: not a maple_peft source tree" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--pairs", "--steps", "--classes"])
def test_counts_below_one_are_refused(flag, monkeypatch, capsys):
    monkeypatch.setattr(bench_trees, "run_tree", lambda *a: pytest.fail("no process may start"))
    with pytest.raises(SystemExit):
        bench_trees.main([str(REPO), str(REPO), flag, "0"])
    assert f"{flag} 0: give at least 1" in capsys.readouterr().err


def test_the_pairs_alternate_and_the_ratio_is_the_median_of_the_pairs(tmp_path, monkeypatch):
    calls = []
    times = iter([[2.0, 2.2, 2.1], [1.0, 1.0], [2.0], [3.0], [2.0], [2.0]])  # before, after, before, after, ...

    def fake_run(tree, classes, steps):
        calls.append(tree.name)
        return next(times)

    before = tmp_path / "before"
    for name in ("maple_peft/__init__.py", "benchmarks/common.py"):
        (before / name).parent.mkdir(parents=True, exist_ok=True)
        (before / name).write_text("")
    monkeypatch.setattr(bench_trees, "run_tree", fake_run)
    out = tmp_path / "r" / "trees.json"
    results = bench_trees.main([str(before), str(REPO), "--out", str(out)])
    assert calls == ["before", REPO.name] * 3
    assert [round(p["ratio"], 3) for p in results["pairs"]] == [round(1 / 2.1, 3), 1.5, 1.0]
    assert results["median_ratio"] == pytest.approx(1.0)
    assert "Median ratio after / before: 1.00" in out.with_suffix(".md").read_text()


@pytest.mark.parametrize("users_file", ["trees.json", "trees.md"])
def test_a_users_file_at_out_or_beside_it_is_refused_and_kept(users_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_trees, "run_tree", lambda *a: pytest.fail("no process may start"))
    (tmp_path / users_file).write_text("my notes\n")
    with pytest.raises(SystemExit):
        bench_trees.main([str(REPO), str(REPO), "--out", str(tmp_path / "trees.json")])
    assert "is not an earlier result of bench_trees.py" in capsys.readouterr().err
    assert (tmp_path / users_file).read_text() == "my notes\n"


def test_an_earlier_result_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_trees, "run_tree", lambda *a: [1.0])
    out = tmp_path / "trees.json"
    bench_trees.main([str(REPO), str(REPO), "--pairs", "1", "--out", str(out)])
    first = out.read_text()
    monkeypatch.setattr(bench_trees, "run_tree", lambda tree, *a: [2.0])
    bench_trees.main([str(REPO), str(REPO), "--pairs", "2", "--out", str(out)])
    assert out.read_text() != first and len(json.loads(out.read_text())["pairs"]) == 2


def test_out_must_be_a_json_path(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench_trees.main([str(REPO), str(REPO), "--out", str(tmp_path / "trees.txt")])
    assert "give a .json path" in capsys.readouterr().err
