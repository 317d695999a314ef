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
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"  # the sample standard deviation


def test_aggregate_writes_the_paper_style_base_to_novel_table(aggregate, runs_root, tmp_path, capsys):
    output, json_path = tmp_path / "table.md", tmp_path / "summary.json"

    assert aggregate.main([str(runs_root), "--output", str(output), "--json", str(json_path)]) == 0

    markdown = output.read_text()
    assert "| Dataset | Base | Novel | HM | Seeds |" in markdown
    assert "sample standard deviation over seeds (n − 1" in markdown
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
    assert _row(markdown, "dtd", after="Zero-shot CLIP")[1:4] == [
        "53.00 ± 0.00",
        "60.00 ± 0.00",
        f"{harmonic_mean(53, 60):.2f}",
    ]
    assert "wrote" in capsys.readouterr().out

    summary = json.loads(json_path.read_text())
    assert [len(table["rows"]) for table in summary["tables"]] == [2, 1]  # base-to-novel, cross-dataset
    assert len(summary["files"]) == 8


def test_aggregate_writes_one_column_per_target_for_cross_dataset(aggregate, runs_root, tmp_path):
    output = tmp_path / "table.md"
    assert aggregate.main([str(runs_root / "xd"), "-o", str(output)]) == 0

    markdown = output.read_text()
    assert "| Dataset | imagenet | dtd | eurosat | Average (targets) | Seeds |" in markdown
    assert _row(markdown, "imagenet") == [
        "imagenet",
        _mean_std([70, 71]),
        _mean_std([45, 47]),
        _mean_std([44, 46]),
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
    assert _row(markdown, flowers)[1:3] == ["train/test", _mean_std([91, 92])]  # the split, then the accuracy
    assert _row(markdown, cars)[1:3] == ["train/test", _mean_std([51, 52])]


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
    datasets = sorted(row["dataset"] for table in json.loads(json_path.read_text())["tables"] for row in table["rows"])
    assert datasets == sorted(
        dataset_identity("imagefolder", f"/data/{folder}", [f"{folder}-a"]) for folder in ("flowers", "cars")
    )


def test_aggregate_refuses_a_metrics_file_whose_harmonic_mean_disagrees(aggregate, tmp_path, capsys):
    _write_run(tmp_path, "a", "eurosat", "base2novel", 1, {"base": 90.0, "novel": 70.0}, harmonic_mean=12.0)
    assert aggregate.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is not a maple_peft metrics.json" in err and "metrics['harmonic_mean']=12.0" in err


MAPLE = {"variant": "maple", "n_ctx": 2, "depth": 9, "prompt_init": "a photo of a", "class_names": ["x"]}
IVLP = {"variant": "ivlp", "n_ctx": 2, "n_ctx_vision": 2, "depth": 12, "prompt_init": "a photo of a"}
RECIPE = {"lr": 0.0035, "epochs": 5, "text_weight": 0.0, "image_weight": 0.0, "logits_weight": 0.0}


def _method_run(root, name, seed, base, novel, peft, train=RECIPE, dataset="eurosat", **extra):
    options = {**train, "dataset": dataset, "seed": seed, "output_dir": str(root / name)}
    _write_run(
        root, name, dataset, "base2novel", seed, {"base": base, "novel": novel}, peft_config=peft, train_config=options
    )
    if extra:
        path = root / name / "metrics.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **extra}))


def _titles(markdown):
    return [line[3:] for line in markdown.splitlines() if line.startswith("## ")]


def test_aggregate_never_averages_two_methods_each_gets_its_own_table(aggregate, tmp_path):
    # an IVLP run (seed 1) and a MaPLe run (seed 2) in one folder, and a second recipe with the same seed
    _method_run(tmp_path, "ivlp", 1, 90.0, 60.0, IVLP)
    _method_run(tmp_path, "maple", 2, 80.0, 70.0, MAPLE)
    _method_run(tmp_path, "maple-depth3", 2, 70.0, 75.0, {**MAPLE, "depth": 3})
    output = tmp_path / "table.md"

    assert aggregate.main([str(tmp_path), "-o", str(output), "--published"]) == 0

    markdown = output.read_text()
    titles = _titles(markdown)
    assert len(titles) == 3 and not any("MaPLe results" in t for t in titles)
    assert [t.split(" · ")[0] for t in titles] == [
        "IVLP (2 tokens, depth 12)",
        "MaPLe (2 tokens, depth 3)",
        "MaPLe (2 tokens, depth 9)",
    ]
    # each table holds its own run only: nothing averaged across methods
    rows = [_row(markdown, "eurosat", after=f"## {title}") for title in titles]
    assert [row[1] for row in rows] == ["90.00", "70.00", "80.00"]


def test_aggregate_refuses_seeds_that_differ_in_an_option_and_lists_it(aggregate, tmp_path, capsys):
    _method_run(tmp_path, "a", 1, 90.0, 60.0, MAPLE)
    _method_run(tmp_path, "b", 2, 92.0, 62.0, MAPLE, train={**RECIPE, "lr": 0.01})

    assert aggregate.main([str(tmp_path)]) == 2

    err = capsys.readouterr().err
    assert "not averaged" in err and "lr: 0.0035 (seed 1), 0.01 (seed 2)" in err
    assert str(tmp_path / "a") in err and str(tmp_path / "b") in err
    assert "output_dir" not in err  # a folder is not a difference between two runs


def test_aggregate_standard_deviation_is_the_sample_one_and_says_so(aggregate, tmp_path):
    _write_run(tmp_path, "a", "eurosat", "all", 1, {"test": 100.0})
    _write_run(tmp_path, "b", "eurosat", "all", 2, {"test": 66.67})
    output = tmp_path / "table.md"
    assert aggregate.main([str(tmp_path), "-o", str(output)]) == 0
    markdown = output.read_text()
    assert _row(markdown, "eurosat")[1] == "83.34 ± 23.57"  # population std would say ± 16.67
    assert "sample standard deviation" in markdown


def test_aggregate_keeps_a_hub_split_apart_from_the_papers_split(aggregate, tmp_path):
    for seed in (1, 2):
        _method_run(tmp_path, f"coop{seed}", seed, 94.0, 70.0 + seed, MAPLE)
        _method_run(
            tmp_path,
            f"hub{seed}",
            seed,
            99.0,
            50.0 + seed,
            MAPLE,
            dataset="timm/eurosat-rgb",
            split_source="hub:timm/eurosat-rgb:train/test",
            benchmark="eurosat",
        )
    output = tmp_path / "table.md"
    assert aggregate.main([str(tmp_path), "-o", str(output)]) == 0
    markdown = output.read_text()
    titles = _titles(markdown)
    assert [t.rsplit(" · ", 1)[-1] for t in titles] == ["CoOp splits", "Hub splits"]
    assert _row(markdown, "eurosat", after="CoOp splits")[2] == _mean_std([71, 72])
    hub_row = _row(markdown, "timm/eurosat-rgb", after="Hub splits")
    assert hub_row[1] == "timm/eurosat-rgb:train/test" and hub_row[3] == _mean_std([51, 52])
    assert "timm/eurosat-rgb" not in markdown.split("Hub splits")[0]  # the CoOp table has no Hub run


def test_aggregate_shows_the_published_figures_of_the_same_method(aggregate, tmp_path):
    for seed in (1, 2):
        _method_run(tmp_path, f"r{seed}", seed, 94.0, 70.0 + seed, {**MAPLE, "depth": 9})
        _method_run(tmp_path, f"s{seed}", seed, 94.0, 70.0 + seed, {**MAPLE, "depth": 2})
    output = tmp_path / "table.md"
    assert aggregate.main([str(tmp_path), "-o", str(output)]) == 0
    markdown = output.read_text()
    recipe, other = (
        markdown.split("## MaPLe (2 tokens, depth 9)")[1],
        markdown.split("## MaPLe (2 tokens, depth 2)")[1],
    )
    assert "| Dataset | Base | Novel | HM | HM (paper) | Seeds |" in recipe
    assert _row(recipe, "eurosat")[4] == "82.35"  # the MaPLe paper's EuroSAT HM
    assert "Khattak et al., MaPLe" in recipe
    assert "HM (paper)" not in other.split("## ")[0]  # depth 2 is not the paper's recipe


def test_aggregate_names_a_binary_metrics_file(aggregate, tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00binary")
    assert aggregate.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "run" / "metrics.json") in err and "not a UTF-8 text file" in err


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [
        ("maple_base2novel.yaml", ["MaPLe"]),
        ("maple_cross_dataset.yaml", ["MaPLe", "MaPLe"]),  # cross-dataset and domain generalization
        ("promptsrc_base2novel.yaml", ["PromptSRC"]),
        ("promptsrc_cross_dataset.yaml", ["PromptSRC", "PromptSRC"]),
        ("ivlp_base2novel.yaml", ["IVLP"]),
        ("language_base2novel.yaml", ["Deep language prompting"]),
        ("vpt_base2novel.yaml", ["VPT-deep"]),
        ("maple_src_base2novel.yaml", []),  # not published
    ],
)
def test_the_shipped_recipes_meet_their_published_figures(recipe, expected):
    import sys

    import maple_peft
    from maple_peft.training.metrics import RunMetrics
    from maple_peft.training.tables import load_published, method_key

    sys.path.insert(0, str(AGGREGATE.parent))
    try:
        from options import parse_args
    finally:
        sys.path.remove(str(AGGREGATE.parent))
    options = vars(parse_args(["--config", str(AGGREGATE.parent / "configs" / recipe), "--dataset", "eurosat"]))
    names = ("n_ctx", "n_ctx_vision", "depth", "prompt_init", "variant")
    peft = maple_peft.MaPLeConfig(**{name: options[name] for name in names}).to_dict()
    run = RunMetrics(
        base_model=options["model_name_or_path"],
        dataset="eurosat",
        setting=options["setting"],
        seed=1,
        results={"eurosat": {"accuracy": 50.0}},
        num_shots=options["num_shots"],
        train_config=options,
        peft_config=peft,
    )
    published = load_published([AGGREGATE.parent / "published"])
    assert [p.name for p in published if p.matches(method_key(run))] == expected
    hub = RunMetrics(**{**run.__dict__, "split_source": "hub:timm/eurosat-rgb:train/test"})
    assert not [p for p in published if p.matches(method_key(hub))]  # another split: no paper figure beside it


def test_aggregate_leaves_out_smoke_runs_unless_asked_and_says_so(aggregate, runs_root, tmp_path, capsys):
    _write_run(
        runs_root, "smoke/seed4", "eurosat", "base2novel", 4, {"base": 10.0, "novel": 10.0}, smoke_assets=["data"]
    )
    assert aggregate.main([str(runs_root)]) == 0
    captured = capsys.readouterr()
    assert "left out 1 offline smoke run(s)" in captured.err and "smoke/seed4" in captured.err
    assert _row(captured.out, "eurosat")[1:3] == [_mean_std([96.0, 98.0, 97.0]), _mean_std([70.0, 80.0, 75.0])]
    assert aggregate.main([str(runs_root), "--include_smoke"]) == 0
    captured = capsys.readouterr()
    assert "left out" not in captured.err
    assert _row(captured.out, "eurosat")[1] == _mean_std([96.0, 98.0, 97.0, 10.0])
    only_smoke = tmp_path / "only-smoke"
    _write_run(only_smoke, "run", "eurosat", "base2novel", 1, {"base": 10.0, "novel": 10.0}, smoke_assets=["data"])
    assert aggregate.main([str(only_smoke)]) == 2
    assert "Every run found is an offline smoke run" in capsys.readouterr().err
