"""CoCoOp, KgCoOp and MMRL in the training loop: the objective each recipe names, its declared options, per-dataset
values of a recipe, and runs resumed from a checkpoint that end bitwise identical to uninterrupted ones."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file
from test_benchmark_grid import in_process
from test_train import REPO, SMOKE, assets  # noqa: F401 (the smoke assets fixture)

sys.path.insert(0, str(REPO / "examples"))
import options  # noqa: E402

METHODS = {
    "cocoop": ["--variant", "cocoop", "--depth", "1", "--batch_size", "2"],
    "kgcoop": ["--variant", "language", "--depth", "1", "--n_ctx", "4", "--objective", "kgcoop"],
    "mmrl": ["--variant", "mmrl", "--n_rep", "2", "--rep_dim", "16", "--optimizer", "adamw", "--lr", "0.01"],
}


def test_recipe_values_per_dataset_apply_before_the_command_line(tmp_path):
    recipe = REPO / "examples" / "configs" / "mmrl_base2novel.yaml"
    args = options.parse_args(["--config", str(recipe), "--dataset", "eurosat", "--data_root", "x"])
    assert (args.reg_weight, args.rep_dim, args.objective, args.optimizer) == (0.01, 2048, "mmrl", "adamw")
    args = options.parse_args(
        ["--config", str(recipe), "--dataset", "eurosat", "--data_root", "x", "--reg_weight", "2"]
    )
    assert args.reg_weight == 2.0
    args = options.parse_args(["--config", str(recipe), "--dataset", "oxford_pets", "--data_root", "x"])
    assert (args.reg_weight, args.rep_dim) == (0.2, 512)
    bad = tmp_path / "bad.yaml"
    bad.write_text("variant: mmrl\ndataset_overrides:\n  dtd: {reg_wieght: 2}\n")
    with pytest.raises(SystemExit):
        options.parse_args(["--config", str(bad)])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--objective", "kgcoop", "--text_weight", "25"], "--text_weight is an option of --objective src"),
        (["--variant", "maple", "--objective", "mmrl"], "MMRL's loss trains MMRL's adapter"),
        (["--variant", "ivlp", "--rep_dim", "64"], "--rep_dim is an option of --variant mmrl"),
        (["--crop_scale", "0.9", "0.5"], "--crop_scale 0.9 0.5 must be 0 < min <= max <= 1"),
    ],
)
def test_options_of_another_method_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit):
        options.parse_args(["--dataset", "eurosat", "--data_root", "x", *argv])
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("method", list(METHODS))
def test_a_resumed_run_of_each_method_ends_bitwise_identical(method, assets, tmp_path):  # noqa: F811
    base = [
        "python",
        "examples/train.py",
        "--config", SMOKE,
        "--model_name_or_path", assets / "tiny-clip",
        "--data_dir", assets / "data",
        "--epochs", "2", "--no_plots", "--no_zero_shot_baseline",
        *METHODS[method],
    ]  # fmt: skip
    whole, paused = tmp_path / "whole", tmp_path / "paused"
    assert in_process([*map(str, base), "--output_dir", str(whole)], {}, tmp_path / "whole.log") == 0, (
        tmp_path / "whole.log"
    ).read_text()
    assert (
        in_process([*map(str, base), "--output_dir", str(paused), "--stop_after_epoch", "1"], {}, tmp_path / "p.log")
        == 0
    )
    resume = [*map(str, base), "--output_dir", str(paused), "--resume_from_checkpoint", "latest"]
    assert in_process(resume, {}, tmp_path / "resume.log") == 0, (tmp_path / "resume.log").read_text()
    first, second = load_file(whole / "adapter_model.safetensors"), load_file(paused / "adapter_model.safetensors")
    assert first.keys() == second.keys() and all((first[k] == second[k]).all() for k in first)
    history = [json.loads((path / "training_history.json").read_text()) for path in (whole, paused)]
    assert history[0] == history[1]
    metrics = json.loads((whole / "metrics.json").read_text())
    assert metrics["train_config"]["objective"] == {"cocoop": "ce", "kgcoop": "kgcoop", "mmrl": "mmrl"}[method]
    card = (whole / "README.md").read_text()
    assert {"cocoop": "# CoCoOp adapter", "kgcoop": "# KgCoOp adapter", "mmrl": "# MMRL adapter"}[method] in card
    if method != "cocoop":
        assert any(key.startswith("loss_") and key != "loss_ce" for key in history[0][-1])  # the objective's terms
    assert Path(whole / "adapter_config.json").is_file()
