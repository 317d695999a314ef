import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from maple_peft.training.data import dataset_identity
from maple_peft.training.metrics import harmonic_mean

AGGREGATE = Path(__file__).resolve().parents[1] / "examples" / "aggregate.py"


@pytest.fixture(scope="module")
def aggregate():
    spec = importlib.util.spec_from_file_location("aggregate_example", AGGREGATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_run(
    root: Path, name: str, dataset: str, setting: str, seed: int, results: dict, zero_shot=None, **extra
) -> None:
    run = {
        "maple_peft_version": "0.1.0",
        "base_model": "openai/clip-vit-base-patch16",
        "dataset": dataset,
        "setting": setting,
        "seed": seed,
        "num_shots": 16,
        "results": {split: {"accuracy": acc, "macro_f1": acc - 1} for split, acc in results.items()},
    }
    if "base" in results and "novel" in results:
        run["harmonic_mean"] = harmonic_mean(results["base"], results["novel"])
    if zero_shot:
        run["zero_shot"] = {"results": {split: {"accuracy": acc} for split, acc in zero_shot.items()}}
    run.update(extra)
    (root / name).mkdir(parents=True)
    (root / name / "metrics.json").write_text(json.dumps(run))


EUROSAT = {1: (96.0, 70.0), 2: (98.0, 80.0), 3: (97.0, 75.0)}
DTD = {1: (80.0, 60.0), 2: (82.0, 58.0), 3: (81.0, 62.0)}


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "outputs"
    for seed, (b, n) in EUROSAT.items():
        _write_run(root, f"b2n/eurosat/seed{seed}", "eurosat", "base2novel", seed, {"base": b, "novel": n})
    for seed, (b, n) in DTD.items():
        zs = {"base": 53.0, "novel": 60.0}
        _write_run(root, f"b2n/dtd/seed{seed}", "dtd", "base2novel", seed, {"base": b, "novel": n}, zero_shot=zs)
    for seed, (source, target) in {1: (70.0, 45.0), 2: (71.0, 47.0)}.items():
        results = {"imagenet": source, "dtd": target, "eurosat": target - 1}
        _write_run(root, f"xd/seed{seed}", "imagenet", "cross_dataset", seed, results)
    return root


def _row(markdown: str, first_cell: str, after: str = "") -> list[str]:
    text = markdown[markdown.index(after) :] if after else markdown
    for line in text.splitlines():
        if line.startswith(f"| {first_cell} |"):
            return [cell.strip() for cell in line.strip("|").split("|")]
    raise AssertionError(f"no row {first_cell!r} in\n{markdown}")


def _mean_std(values):
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}"


def test_aggregate_writes_the_paper_style_base_to_novel_table(aggregate, runs_root, tmp_path, capsys):
    output, json_path = tmp_path / "table.md", tmp_path / "summary.json"

    assert aggregate.main([str(runs_root), "--output", str(output), "--json", str(json_path)]) == 0

    markdown = output.read_text()
    assert "| Dataset | Base | Novel | HM | Seeds |" in markdown
    eurosat_b, eurosat_n = zip(*EUROSAT.values(), strict=True)
    assert _row(markdown, "eurosat") == [
        "eurosat",
        _mean_std(eurosat_b),
        _mean_std(eurosat_n),
        f"{harmonic_mean(np.mean(eurosat_b), np.mean(eurosat_n)):.2f}",  # HM of the means
        "1, 2, 3",
    ]
    dtd_b, dtd_n = zip(*DTD.values(), strict=True)
    average_b = (np.mean(eurosat_b) + np.mean(dtd_b)) / 2
    average_n = (np.mean(eurosat_n) + np.mean(dtd_n)) / 2
    assert _row(markdown, "**Average**") == [
        "**Average**",
        f"{average_b:.2f}",
        f"{average_n:.2f}",
        f"{harmonic_mean(average_b, average_n):.2f}",
        "2 datasets",
    ]
    # paper order: DTD comes before EuroSAT
    assert markdown.index("| dtd |") < markdown.index("| eurosat |")
    # zero-shot CLIP gets its own table, for the datasets that have it
    assert _row(markdown, "dtd", after="zero-shot CLIP")[1:4] == [
        "53.00 ± 0.00",
        "60.00 ± 0.00",
        f"{harmonic_mean(53, 60):.2f}",
    ]
    assert "wrote" in capsys.readouterr().out

    summary = json.loads(json_path.read_text())
    assert len(summary["summaries"]) == 3
    assert len(summary["files"]) == 8
    (b2n,) = [a for a in summary["averages"] if a["setting"] == "base2novel" and a["part"] == "maple"]
    assert b2n["average"]["HM"] == pytest.approx(harmonic_mean(average_b, average_n))


def test_aggregate_writes_one_column_per_target_for_cross_dataset(aggregate, runs_root, tmp_path):
    output = tmp_path / "table.md"
    assert aggregate.main([str(runs_root / "xd"), "-o", str(output)]) == 0

    markdown = output.read_text()
    assert "| Dataset | imagenet | dtd | eurosat | Average (targets) | Seeds |" in markdown
    assert _row(markdown, "imagenet") == [
        "imagenet",
        "70.50 ± 0.50",
        "46.00 ± 1.00",
        "45.00 ± 1.00",
        "45.50",
        "1, 2",
    ]
    assert "Base-to-novel" not in markdown


def test_aggregate_counts_a_run_once_even_if_given_twice(aggregate, runs_root, tmp_path):
    json_path = tmp_path / "summary.json"
    dirs = [str(runs_root / "b2n"), str(runs_root / "b2n" / "eurosat"), str(runs_root / "b2n/dtd/seed1/metrics.json")]
    assert aggregate.main([*dirs, "--json", str(json_path)]) == 0
    assert len(json.loads(json_path.read_text())["files"]) == 6


def test_aggregate_reports_missing_runs_and_duplicate_seeds(aggregate, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert aggregate.main([str(tmp_path / "empty")]) == 2
    assert "No metrics.json found" in capsys.readouterr().err

    _write_run(tmp_path / "dup", "a", "eurosat", "base2novel", 1, {"base": 90.0, "novel": 70.0})
    _write_run(tmp_path / "dup", "b", "eurosat", "base2novel", 1, {"base": 91.0, "novel": 71.0})
    assert aggregate.main([str(tmp_path / "dup")]) == 2
    assert "seed(s) [1]" in capsys.readouterr().err


def test_aggregate_keeps_different_local_datasets_in_different_rows(aggregate, tmp_path):
    flowers = dataset_identity("imagefolder", "/data/flowers", ["rose", "tulip"])
    cars = dataset_identity("imagefolder", "/data/cars", ["sedan", "truck"])
    for seed in (1, 2):
        _write_run(tmp_path, f"flowers{seed}", flowers, "all", seed, {"test": 90.0 + seed})
        _write_run(tmp_path, f"cars{seed}", cars, "all", seed, {"test": 50.0 + seed})
    output = tmp_path / "table.md"
    assert aggregate.main([str(tmp_path), "-o", str(output)]) == 0
    markdown = output.read_text()
    assert _row(markdown, flowers)[1] == "91.50 ± 0.50"
    assert _row(markdown, cars)[1] == "51.50 ± 0.50"


def test_aggregate_tells_apart_older_runs_that_recorded_a_bare_imagefolder(aggregate, tmp_path):
    for seed in (1, 2):
        for folder, accuracy in (("flowers", 90.0), ("cars", 50.0)):
            _write_run(tmp_path, f"{folder}{seed}", "imagefolder", "all", seed, {"test": accuracy + seed})
            path = tmp_path / f"{folder}{seed}" / "metrics.json"
            metrics = json.loads(path.read_text())
            metrics["results"]["test"]["per_class_accuracy"] = {f"{folder}-a": 1.0}
            path.write_text(json.dumps({**metrics, "train_config": {"data_dir": f"/data/{folder}"}}))
    json_path = tmp_path / "summary.json"
    assert aggregate.main([str(tmp_path), "--json", str(json_path)]) == 0
    datasets = sorted(s["dataset"] for s in json.loads(json_path.read_text())["summaries"])
    assert datasets == sorted(
        dataset_identity("imagefolder", f"/data/{folder}", [f"{folder}-a"]) for folder in ("flowers", "cars")
    )


def test_aggregate_refuses_a_metrics_file_whose_harmonic_mean_disagrees(aggregate, tmp_path, capsys):
    _write_run(tmp_path, "a", "eurosat", "base2novel", 1, {"base": 90.0, "novel": 70.0}, harmonic_mean=12.0)
    assert aggregate.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not a maple_peft metrics.json" in err and "metrics['harmonic_mean']=12.0" in err
