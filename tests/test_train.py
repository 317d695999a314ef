"""The training and evaluation scripts, end to end on the offline smoke recipe (tiny CLIP, generated images)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "examples" / "configs" / "smoke.yaml"
FAST = ["--no_plots", "--no_zero_shot_baseline"]


def run_script(script, *args, check=True, env=None):
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / script), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


@pytest.fixture(scope="session")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke_assets")
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import make_smoke_assets

        make_smoke_assets.main(["--output_dir", str(root)])
    finally:
        sys.path.remove(str(REPO / "examples"))
    return root


def smoke_args(assets, output_dir, *extra):
    return [
        "--config", SMOKE,
        "--model_name_or_path", assets / "tiny-clip",
        "--data_dir", assets / "data",
        "--output_dir", output_dir,
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="session")
def smoke_run(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "smoke"
    run_script("train.py", *smoke_args(assets, out, "--report_to", "tensorboard"))
    return out


def test_smoke_run_writes_adapter_card_metrics_plots_and_log(smoke_run):
    names = {p.name for p in smoke_run.iterdir()}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "README.md",
        "metrics.json",
        "training_log.txt",
        "training_curves.png",
        "per_class_accuracy.png",
        "base_novel_hm.png",
        "checkpoints",
    } <= names
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    base, novel = metrics["results"]["base"]["accuracy"], metrics["results"]["novel"]["accuracy"]
    assert metrics["results"]["base"]["num_classes"] == 3 and metrics["results"]["novel"]["num_classes"] == 3
    assert metrics["harmonic_mean"] == pytest.approx(2 * base * novel / (base + novel) if base + novel else 0.0)
    assert "zero_shot" in metrics and metrics["seed"] == 1 and metrics["num_shots"] == 4
    assert metrics["peft_config"]["depth"] == 2
    card = (smoke_run / "README.md").read_text()
    assert "import maple_peft" in card and "library_name: peft" in card
    assert "epoch 3/3" in (smoke_run / "training_log.txt").read_text()
    assert list(smoke_run.rglob("events.out.tfevents.*"))  # --report_to tensorboard


def test_two_process_ddp_run_counts_every_test_image_once(assets, smoke_run, tmp_path):
    out = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(REPO / "examples" / "train.py"),
         *map(str, smoke_args(assets, out, "--no_plots"))],
        capture_output=True, text=True, cwd=REPO,
        env={**os.environ, "ACCELERATE_USE_CPU": "true", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in (out / "training_log.txt").read_text()
    ddp = json.loads((out / "metrics.json").read_text())
    single = json.loads((smoke_run / "metrics.json").read_text())
    for split in ("base", "novel"):
        assert ddp["results"][split]["num_images"] == single["results"][split]["num_images"] == 15
        assert ddp["zero_shot"]["results"][split] == single["zero_shot"]["results"][split]


def test_trained_adapter_beats_chance_and_loads_with_peft(smoke_run, assets):
    from peft import PeftModel
    from transformers import CLIPModel

    import maple_peft  # noqa: F401

    metrics = json.loads((smoke_run / "metrics.json").read_text())
    history = json.loads((smoke_run / "training_history.json").read_text())
    assert history[0]["lr"] == pytest.approx(1e-5) and history[-1]["lr"] < history[3]["lr"]
    assert metrics["results"]["base"]["accuracy"] > 100 / 3
    model = PeftModel.from_pretrained(CLIPModel.from_pretrained(assets / "tiny-clip"), smoke_run)
    assert model.peft_config["default"].n_ctx == 2


def test_interrupted_and_resumed_run_ends_with_the_same_adapter(assets, tmp_path):
    run_script("train.py", *smoke_args(assets, tmp_path / "straight", *FAST))
    run_script("train.py", *smoke_args(assets, tmp_path / "paused", *FAST, "--stop_after_epoch", "0"))
    assert not (tmp_path / "paused" / "adapter_model.safetensors").exists()
    assert (tmp_path / "paused" / "checkpoints" / "epoch_0").is_dir()
    run_script("train.py", *smoke_args(assets, tmp_path / "paused", *FAST, "--resume_from_checkpoint", "latest"))
    straight = load_file(tmp_path / "straight" / "adapter_model.safetensors")
    resumed = load_file(tmp_path / "paused" / "adapter_model.safetensors")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    history = json.loads((tmp_path / "paused" / "training_history.json").read_text())
    assert history == json.loads((tmp_path / "straight" / "training_history.json").read_text())


def test_existing_output_dir_is_not_overwritten(assets, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    result = run_script("train.py", "--config", SMOKE, "--model_name_or_path", assets / "tiny-clip",
                        "--data_dir", assets / "data", "--output_dir", out, "--overwrite_output_dir", "false",
                        check=False)  # fmt: skip
    assert result.returncode != 0
    config = SMOKE.read_text().replace("overwrite_output_dir: true", "overwrite_output_dir: false")
    (tmp_path / "smoke.yaml").write_text(config)
    result = run_script("train.py", "--config", tmp_path / "smoke.yaml", "--model_name_or_path", assets / "tiny-clip",
                        "--data_dir", assets / "data", "--output_dir", out, check=False)  # fmt: skip
    assert result.returncode != 0 and "exists and is not empty" in result.stderr
    assert (out / "precious.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(assets, tmp_path):
    out = tmp_path / "nan"
    result = run_script("train.py", *smoke_args(assets, out, *FAST, "--lr", "1e30"), check=False)
    assert result.returncode != 0
    assert "The loss became" in result.stderr and "lower --lr" in result.stderr
    assert (out / "checkpoints" / "epoch_0" / "adapter" / "adapter_model.safetensors").is_file()
    weights = load_file(out / "checkpoints" / "epoch_0" / "adapter" / "adapter_model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_zero_shot_mode_evaluates_plain_clip(assets, tmp_path):
    out = tmp_path / "zs"
    run_script("train.py", *smoke_args(assets, out, "--zero_shot", "--no_plots"))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["setting"] == "zero_shot" and set(metrics["results"]) == {"base", "novel"}
    assert not (out / "adapter_model.safetensors").exists()


def test_evaluate_script_on_other_class_names_and_wrong_backbone(smoke_run, assets, tmp_path):
    out = tmp_path / "eval.json"
    run_script("evaluate.py", "--adapter", smoke_run, "--dataset_name", "imagefolder", "--data_dir", assets / "data",
               "--subset", "novel", "--output_file", out)  # fmt: skip
    result = json.loads(out.read_text())
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    assert result["num_classes"] == 3 and result["accuracy"] == pytest.approx(metrics["results"]["novel"]["accuracy"])

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import tiny_clip

    other = tmp_path / "other-clip"
    tiny_clip("wide_text").save_pretrained(other)
    (assets / "tiny-clip" / "tokenizer_config.json")  # the tokenizer comes from --tokenizer_name_or_path
    bad = run_script("evaluate.py", "--adapter", smoke_run, "--model_name_or_path", other,
                     "--tokenizer_name_or_path", assets / "tiny-clip", "--dataset_name", "imagefolder",
                     "--data_dir", assets / "data", "--output_file", tmp_path / "bad.json", check=False)  # fmt: skip
    assert bad.returncode != 0 and "trained on another backbone" in bad.stderr
    assert not (tmp_path / "bad.json").exists()


def test_bad_dataset_columns_and_long_class_names_are_clear_errors(assets, tmp_path):
    result = run_script("train.py", *smoke_args(assets, tmp_path / "a", *FAST, "--image_column", "img"), check=False)
    assert result.returncode != 0 and "'img'" in result.stderr
    mapping = tmp_path / "names.json"
    mapping.write_text(json.dumps({"forest": "forest " + "very " * 80 + "dense"}))
    result = run_script(
        "train.py", *smoke_args(assets, tmp_path / "b", *FAST, "--class_name_map", mapping), check=False
    )
    assert result.returncode != 0 and "more than CLIP's 77" in result.stderr and "forest very" in result.stderr


def test_push_to_hub_uploads_the_run_with_the_hub_mocked(assets, tmp_path):
    record = tmp_path / "pushed.json"
    wrapper = tmp_path / "run_with_fake_hub.py"
    wrapper.write_text(
        textwrap.dedent(
            f"""
            import json, os, runpy, sys
            import maple_peft.training.hub as hub

            class FakeApi:
                def __init__(self, token=None):
                    pass
                def create_repo(self, repo_id, **kwargs):
                    return type("Url", (), {{"repo_id": repo_id}})()
                def upload_folder(self, *, folder_path, repo_id, allow_patterns=None, ignore_patterns=None, **kwargs):
                    json.dump({{"repo_id": repo_id, "files": sorted(os.listdir(folder_path)),
                               "allow": allow_patterns, "ignore": ignore_patterns}}, open({str(record)!r}, "w"))
                    return "https://huggingface.co/" + repo_id + "/commit/0"

            hub.HfApi = FakeApi
            sys.argv = ["train.py"] + sys.argv[1:]
            runpy.run_path({str(REPO / "examples" / "train.py")!r}, run_name="__main__")
            """
        )
    )
    args = smoke_args(
        assets, tmp_path / "run", "--no_zero_shot_baseline", "--push_to_hub", "--hub_model_id", "me/maple-smoke"
    )
    subprocess.run([sys.executable, str(wrapper), *map(str, args)], check=True, cwd=REPO, capture_output=True)
    pushed = json.loads(record.read_text())
    assert pushed["repo_id"] == "me/maple-smoke"
    assert {"adapter_model.safetensors", "README.md", "metrics.json"} <= set(pushed["files"])
    assert any("checkpoints" in pattern for pattern in pushed["ignore"])
    assert "me/maple-smoke" in (tmp_path / "run" / "README.md").read_text()
