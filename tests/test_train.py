"""The training and evaluation scripts, end to end on the offline smoke recipe (tiny CLIP, generated images)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import options  # noqa: E402
from script_runs import run_example  # noqa: E402

from maple_peft.training.run_dir import clear_previous_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "examples" / "configs" / "smoke.yaml"
FAST = ["--no_plots", "--no_zero_shot_baseline"]
# checkpoints every 2 steps (3 steps per epoch): step 4 is mid-epoch 2, step 6 ends epoch 2
CHECKPOINTED = ["--checkpointing_steps", "2", "--checkpoints_total_limit", "10"]


def run_script(script, *args, check=True, env=None):
    """`python examples/<script> *args` in a process of its own: for what only a process shows (its console, its
    exit code, several processes); `run_in_process` is the same command in this process."""
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / script), *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(REPO), **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def run_in_process(script, *args, check=True):
    """`python examples/<script> *args` in this process (the same exit code, stdout and stderr), without the seconds
    of imports a process costs."""
    result = run_example(script, *args)
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
    result = run_script("train.py", *smoke_args(assets, out, "--report_to", "tensorboard", *CHECKPOINTED))
    (out.parent / "console.txt").write_text(result.stdout + result.stderr)  # what the user saw
    return out


def test_smoke_run_writes_adapter_card_metrics_plots_and_log(smoke_run):
    names = {p.name for p in smoke_run.iterdir()}
    plots = {"training_curves.png", "per_class_accuracy.png", "base_novel_hm.png"}
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "metrics.json", "training_log.txt",
            "training_history.json", "checkpoints", *plots} <= names  # fmt: skip
    assert not {"RUNNING", "FAILED", "run.lock"} & names  # a finished, unlocked run
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    base, novel = metrics["results"]["base"]["accuracy"], metrics["results"]["novel"]["accuracy"]
    assert metrics["results"]["base"]["num_classes"] == 3 and metrics["results"]["novel"]["num_classes"] == 3
    assert metrics["harmonic_mean"] == pytest.approx(2 * base * novel / (base + novel) if base + novel else 0.0)
    assert set(metrics["zero_shot"]["results"]) == {"base", "novel"}  # the zero-shot CLIP baseline row
    assert metrics["seed"] == 1 and metrics["num_shots"] == 4 and metrics["peft_config"]["depth"] == 2
    assert "hub_token" not in metrics["train_config"]
    card = (smoke_run / "README.md").read_text()
    assert "import maple_peft" in card and "library_name: peft" in card
    assert metrics["smoke_assets"] == ["base_model", "data"]  # recorded from the assets' markers
    assert "A smoke run, not a result" in card and "tiny random CLIP" in card and "model-index" not in card
    assert {name for name in plots if name in card} == plots  # the card embeds the plots this run wrote
    log = (smoke_run / "training_log.txt").read_text()
    assert "trainable params: " in log and "epoch 1/3" in log and "epoch 3/3" in log and "epoch 0/" not in log
    assert "MaPLe novel: accuracy" in log and "zero-shot CLIP novel: accuracy" in log
    assert list(smoke_run.rglob("events.out.tfevents.*"))  # --report_to tensorboard
    for name in ("adapter_model.safetensors", "metrics.json", "training_history.json"):
        assert (smoke_run / name).stat().st_mode & 0o777 == 0o666 & ~_umask()  # the user's umask, not 0600


def test_console_shows_our_lines_each_labelled_with_its_model_and_no_known_noise(smoke_run):
    console = (smoke_run.parent / "console.txt").read_text()
    lines = [line.split(" INFO ", 1)[-1] for line in console.splitlines()]
    assert [line.split(":")[0] for line in lines if ": accuracy" in line] == [
        "MaPLe base", "MaPLe novel", "zero-shot CLIP base", "zero-shot CLIP novel"
    ]  # fmt: skip
    assert any(
        re.fullmatch(r"MaPLe: HM of base and novel \d+\.\d\d \(zero-shot CLIP: HM \d+\.\d\d\)", x) for x in lines
    )
    for noise in ("torchvision", "Downloading data", "Generating train split", "is_gradient_checkpointing",
                  "to make room", "Loading weights", "\r", "%|"):  # fmt: skip
        assert noise not in console, noise
    assert "WARNING" not in console and "Traceback" not in console


def test_the_console_loss_of_an_epoch_is_the_mean_of_its_steps(smoke_run):
    history = json.loads((smoke_run / "training_history.json").read_text())
    log = (smoke_run / "training_log.txt").read_text()
    for epoch in (1, 2, 3):
        losses = [record["loss"] for record in history if record["epoch"] == epoch]
        shown = re.search(rf"epoch {epoch}/3: mean loss (\d+\.\d+) over its (\d+) steps", log)
        assert shown and int(shown.group(2)) == len(losses) == 3
        assert float(shown.group(1)) == pytest.approx(sum(losses) / len(losses), abs=1e-4)
        assert float(shown.group(1)) != pytest.approx(losses[-1], abs=1e-4)  # not the last step's


def test_the_docs_run_folder_table_lists_everything_a_run_writes(smoke_run):
    page = (REPO / "docs" / "training.md").read_text(encoding="utf-8")
    table = page[page.index("## What a run folder holds") : page.index("- **Locking**")]
    first_cells = [row.split("|")[1] for row in table.splitlines() if row.startswith("| `")]
    listed = {name.split("/")[0] for cell in first_cells for name in re.findall(r"`([^`]+)`", cell)}
    assert {p.name for p in smoke_run.iterdir()} <= listed  # with --report_to tensorboard: maple_peft/ too


def test_fewer_images_than_the_shots_asked_for_are_reported_in_log_metrics_and_card(assets, tmp_path):
    out = tmp_path / "few"
    result = run_in_process("train.py", *smoke_args(assets, out, *FAST, "--num_shots", "16", "--epochs", "1",
                                                 "--warmup_epochs", "0"))  # fmt: skip
    assert "fewer than num_shots=16 items and keep all they have" in result.stderr  # the data's own warning
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["num_shots"], metrics["shots_used"]) == (16, {"min": 6, "max": 6})
    card = (out / "README.md").read_text()
    assert "on 6-shot `imagefolder:" in card and "16-shot" not in card
    assert "16 shots per class were asked for, but no class has that many training images" in card


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_checkpoints_are_numbered_from_one_and_hold_the_adapter_only(smoke_run):
    checkpoints = sorted(p.name for p in (smoke_run / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint_1", "checkpoint_2", "checkpoint_3", "checkpoint_4"]  # steps 2, 4, 6, 8
    state = json.loads((smoke_run / "checkpoints" / "checkpoint_2" / "trainer_state.json").read_text())
    assert (state["epoch"], state["batches_in_epoch"], state["step"]) == (2, 1, 4)
    assert [record["epoch"] for record in state["history"]] == [1, 1, 1, 2]
    files = {p.name for p in (smoke_run / "checkpoints" / "checkpoint_2").iterdir()}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    for path in (smoke_run / "checkpoints" / "checkpoint_2").iterdir():
        assert path.stat().st_size < 200_000  # no frozen CLIP in it
        assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()


@pytest.fixture(scope="session")
def ddp_run(assets, tmp_path_factory):
    """The smoke recipe trained by two processes (`torch.distributed.run`), with its checkpoints (one per epoch)."""
    out = tmp_path_factory.mktemp("runs") / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(REPO / "examples" / "train.py"),
         *map(str, smoke_args(assets, out, "--no_plots"))],
        capture_output=True, text=True, cwd=REPO,
        env={**os.environ, "ACCELERATE_USE_CPU": "true", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
             "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_two_process_ddp_run_counts_every_test_image_once(ddp_run, smoke_run):
    out = ddp_run
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
    assert [record["epoch"] for record in history] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert metrics["results"]["base"]["accuracy"] > 100 / 3
    model = PeftModel.from_pretrained(CLIPModel.from_pretrained(assets / "tiny-clip"), smoke_run)
    assert model.peft_config["default"].n_ctx == 2


def assert_same_result(run, other):
    expected, got = load_file(run / "adapter_model.safetensors"), load_file(other / "adapter_model.safetensors")
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    history = json.loads((other / "training_history.json").read_text())
    assert history == json.loads((run / "training_history.json").read_text())


def test_paused_after_an_epoch_and_resumed_run_ends_with_the_same_adapter_and_history(assets, smoke_run, tmp_path):
    out = tmp_path / "paused"
    run_in_process("train.py", *smoke_args(assets, out, *FAST, *CHECKPOINTED, "--stop_after_epoch", "2"))
    assert not (out / "adapter_model.safetensors").exists() and (out / "RUNNING").is_file()  # not a result yet
    state = json.loads((out / "checkpoints" / "checkpoint_3" / "trainer_state.json").read_text())
    assert (state["epoch"], state["batches_in_epoch"], state["step"]) == (2, 3, 6)  # the end of epoch 2
    run_in_process("train.py", *smoke_args(assets, out, *FAST, *CHECKPOINTED, "--resume_from_checkpoint", "latest"))
    assert_same_result(smoke_run, out)
    assert not {"RUNNING", "run.lock"} & {p.name for p in out.iterdir()}


def test_killed_mid_epoch_and_resumed_run_ends_with_the_same_adapter_and_history(assets, smoke_run, tmp_path):
    """A run killed after its checkpoint at step 4 (mid-epoch 2): later checkpoints and results never written."""
    out = tmp_path / "killed"
    shutil.copytree(smoke_run / "checkpoints" / "checkpoint_2", out / "checkpoints" / "checkpoint_2")
    (out / "checkpoints" / "checkpoint_3").mkdir()  # the checkpoint write interrupted by the kill
    (out / "run.lock").write_text("999999999\n")  # the killed run's lock
    (out / "RUNNING").write_text("")
    workers = ["--num_workers", "2"]  # another worker count than the straight run: same augmentations
    run_in_process(
        "train.py", *smoke_args(assets, out, *FAST, *CHECKPOINTED, *workers, "--resume_from_checkpoint", "latest")
    )
    assert_same_result(smoke_run, out)
    assert "Resumed from" in (out / "training_log.txt").read_text()
    assert not {"RUNNING", "run.lock"} & {p.name for p in out.iterdir()}


def test_resuming_with_other_options_is_refused_naming_them(assets, smoke_run, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(smoke_run / "checkpoints", out / "checkpoints")
    result = run_in_process(
        "train.py", *smoke_args(assets, out, *FAST, "--lr", "0.5", "--seed", "2", "--resume_from_checkpoint", "latest"),
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "lr: 0.05 -> 0.5" in result.stderr and "seed: 1 -> 2" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints"]  # nothing written


def test_resuming_in_a_folder_with_results_does_not_overwrite_them(assets, smoke_run, tmp_path):
    out = tmp_path / "finished"
    shutil.copytree(smoke_run, out)
    before = {name: (out / name).read_bytes() for name in ("README.md", "metrics.json")}
    result = run_in_process("train.py", *smoke_args(assets, out, "--resume_from_checkpoint", "latest"), check=False)
    assert result.returncode != 0 and "resuming would overwrite them" in result.stderr
    assert {name: (out / name).read_bytes() for name in before} == before


def test_existing_output_dir_is_not_overwritten_even_when_the_yaml_says_so(assets, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    config = tmp_path / "overwriting.yaml"
    config.write_text(SMOKE.read_text() + "overwrite_output_dir: true\n")
    args = smoke_args(assets, out, "--no_overwrite_output_dir")
    args[1] = config
    assert options.parse_args(list(map(str, args))).overwrite_output_dir is False
    result = run_in_process("train.py", *args, check=False)
    assert result.returncode != 0 and "exists and is not empty" in result.stderr
    assert (out / "precious.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1


def test_smoke_recipe_does_not_overwrite_by_default():
    assert options.parse_args(["--config", str(SMOKE)]).overwrite_output_dir is False


def test_overwriting_a_finished_run_leaves_only_the_new_run_and_a_failed_push_says_how_to_retry(
    assets, smoke_run, tmp_path, monkeypatch
):
    from huggingface_hub import constants

    out = tmp_path / "again"
    shutil.copytree(smoke_run, out)
    (out / "precious.txt").write_text("keep me")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # HF_HUB_OFFLINE=1: the push fails
    result = run_in_process(
        "train.py",
        *smoke_args(assets, out, *FAST, "--overwrite_output_dir", "--push_to_hub", "--hub_model_id", "me/maple-smoke"),
        check=False,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout
    assert f"The run is saved in {out}" in result.stderr  # an error line: on stderr
    assert f"maple-peft push {out} --hub-model-id me/maple-smoke" in result.stderr
    names = {p.name for p in out.iterdir()}
    assert not {n for n in names if n.endswith(".png")}  # --no_plots: the old plots are gone, not kept
    assert "precious.txt" in names and "adapter_model.safetensors" in names
    card = (out / "README.md").read_text()
    assert not any(name in card for name in ("training_curves.png", "per_class_accuracy.png", "base_novel_hm.png"))
    assert "me/maple-smoke" in card
    # the old run's checkpoints were cleared: only this run's (one per epoch) remain, and it was the only log
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint_2", "checkpoint_3"]
    state = json.loads((out / "checkpoints" / "checkpoint_3" / "trainer_state.json").read_text())
    assert state["options"]["checkpointing_steps"] == "epoch"
    assert (out / "training_log.txt").read_text().count("epoch 1/3") == 1


def test_non_finite_loss_stops_marks_the_run_failed_and_names_the_last_good_checkpoint(assets, tmp_path):
    out = tmp_path / "nan"
    result = run_in_process("train.py", *smoke_args(assets, out, *FAST, "--lr", "1e30"), check=False)
    assert result.returncode != 0 and "lower --lr" in result.stderr
    assert f"the last good state is {out / 'checkpoints' / 'checkpoint_1'}" in result.stderr
    weights = load_file(out / "checkpoints" / "checkpoint_1" / "adapter_model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())
    names = {p.name for p in out.iterdir()}
    assert "FAILED" in names and not {"RUNNING", "run.lock", "adapter_model.safetensors", "metrics.json"} & names
    assert "Stopping" in (out / "FAILED").read_text() and "Stopping" in (out / "training_log.txt").read_text()


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("setting: foo\n", "setting: 'foo' is not one of"),
        ("batch_size: '4'\n", "batch_size: '4' is a str; write a whole number"),
        ("plots: 'no'\n", "plots: 'no' is a str; write true or false"),
        ("eval_datasets: dtd\n", "eval_datasets: 'dtd' is a str; write a list of names"),
        ("- lr\n- 0.1\n", "holds a list; it must map option names to values"),
        ("3\n", "holds a int"),
        ("learning_rate: 0.1\n", "unknown key 'learning_rate'"),
        ("epochs: null\n", "epochs: None is a NoneType; write a whole number"),
    ],
)
def test_bad_yaml_values_are_refused_before_any_work(tmp_path, capsys, yaml_text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml_text)
    with pytest.raises(SystemExit) as error:
        options.parse_args(
            ["--config", str(config), "--dataset_name", "imagefolder", "--output_dir", str(tmp_path / "o")]
        )
    assert error.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_yaml_numbers_in_exponent_notation_are_accepted(tmp_path):
    config = tmp_path / "lr.yaml"
    config.write_text("lr: 1e-5\n")  # YAML 1.1 reads this as text
    assert options.parse_args(["--config", str(config)]).lr == 1e-5


def test_report_to_a_missing_tracker_fails_at_the_start_with_the_install_command(monkeypatch, capsys):
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "_available_trackers", [])
    with pytest.raises(SystemExit):
        options.parse_args(["--report_to", "tensorboard"])
    assert "pip install tensorboard" in capsys.readouterr().err


def test_there_is_no_hub_token_option_and_no_zero_shot_mode(capsys):
    for option in (["--hub_token", "hf_secret"], ["--zero_shot"]):
        with pytest.raises(SystemExit):
            options.parse_args(option)
        assert "unrecognized arguments" in capsys.readouterr().err


def test_num_workers_defaults_to_the_machine_and_augmentations_do_not_depend_on_it(assets):
    from maple_peft.training.data import CLIPTransforms, ImageClassificationDataset, load_image_classification
    from maple_peft.training.experiment import EpochSeededDataset

    assert options.parse_args([]).num_workers == min(8, os.cpu_count())
    records = load_image_classification("imagefolder", data_dir=str(assets / "data")).train
    dataset = EpochSeededDataset(
        ImageClassificationDataset(records, CLIPTransforms(crop_size=(16, 16)).train()), seed=3
    )

    def first_batches(num_workers, epoch):
        dataset.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=num_workers)
        return [batch["pixel_values"] for batch, _ in zip(loader, range(3))]

    serial, parallel = first_batches(0, epoch=1), first_batches(2, epoch=1)
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True))
    assert not torch.equal(first_batches(0, epoch=2)[0], serial[0])  # a new epoch draws new augmentations


def test_evaluate_script_writes_where_asked_and_never_over_an_existing_file(smoke_run, assets, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    out = run / "eval.json"  # inside a run folder: recorded, so that overwriting the run removes it
    result = run_in_process("evaluate.py", "--adapter", smoke_run, "--dataset_name", "imagefolder", "--data_dir",
                        assets / "data", "--subset", "novel", "--output", out, "--num_workers", "0")  # fmt: skip
    evaluated = json.loads(out.read_text())
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    assert evaluated["num_classes"] == 3
    assert evaluated["accuracy"] == pytest.approx(metrics["results"]["novel"]["accuracy"])
    assert not list(REPO.glob("eval_*.json"))  # nothing in the current folder
    assert "%|" not in result.stderr  # progress bars are drawn on a terminal only, not into a pipe or a file
    assert json.loads(result.stdout.strip().splitlines()[-1])["accuracy"] == evaluated["accuracy"]
    again = run_in_process("evaluate.py", "--adapter", smoke_run, "--dataset_name", "imagefolder", "--data_dir",
                       assets / "data", "--output", out, check=False)  # fmt: skip
    assert again.returncode == 2 and "exists" in again.stderr and "--overwrite" in again.stderr
    assert json.loads(out.read_text()) == evaluated
    assert [r["path"] for r in json.loads((run / "evaluations.json").read_text())["files"]] == ["eval.json"]
    assert "eval.json" in clear_previous_run(run, keep_checkpoints=False) and not out.exists()


def test_evaluate_refuses_an_adapter_of_another_backbone(smoke_run, assets, tmp_path):
    from conftest import tiny_clip

    other = tmp_path / "other-clip"
    tiny_clip("wide_text").save_pretrained(other)
    bad = run_in_process("evaluate.py", "--adapter", smoke_run, "--model_name_or_path", other,
                     "--tokenizer_name_or_path", assets / "tiny-clip", "--dataset_name", "imagefolder",
                     "--data_dir", assets / "data", "--output", tmp_path / "bad.json", check=False)  # fmt: skip
    assert bad.returncode != 0 and "was trained on a model with text width" in bad.stderr
    assert not (tmp_path / "bad.json").exists()


def test_bad_dataset_columns_and_long_class_names_are_clear_errors(assets, tmp_path):
    result = run_in_process(
        "train.py", *smoke_args(assets, tmp_path / "a", *FAST, "--image_column", "img"), check=False
    )
    assert result.returncode != 0 and "'img'" in result.stderr
    assert not (tmp_path / "a").exists()  # validated before anything was created
    mapping = tmp_path / "names.json"
    mapping.write_text(json.dumps({"forest": "forest " + "very " * 80 + "dense"}))
    result = run_in_process(
        "train.py", *smoke_args(assets, tmp_path / "b", *FAST, "--class_name_map", mapping), check=False
    )
    assert (
        result.returncode != 0
        and "more than the text encoder's 77" in result.stderr
        and "forest very" in result.stderr
    )
    assert not (tmp_path / "b").exists()


def test_a_second_run_on_a_folder_in_use_is_refused_and_leaves_it_alone(assets, tmp_path):
    from test_run_folder import hold_lock

    out = tmp_path / "busy"
    out.mkdir()
    holder = hold_lock(out)  # another process (light: the lock's module alone) stands for a run still writing
    try:
        result = run_in_process("train.py", *smoke_args(assets, out, *FAST), check=False)
        assert result.returncode == 2 and f"in use by another run (process {holder.pid}" in result.stderr
        assert sorted(p.name for p in out.iterdir()) == ["run.lock"]
        assert (out / "run.lock").read_text() == f"{holder.pid}\n"  # still the holder's
    finally:
        holder.kill()
        holder.wait()


# PromptSRC's self-regulating terms and Gaussian prompt aggregation on the smoke recipe (GPA mean at epoch 2 of 3)
SRC = ["--text_weight", "25", "--image_weight", "10", "--logits_weight", "1", "--gpa_mean", "2", "--gpa_std", "1"]


@pytest.fixture(scope="session")
def src_run(assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "src"
    run_in_process("train.py", *smoke_args(assets, out, *FAST, *CHECKPOINTED, *SRC))
    return out


def test_self_regulated_run_with_gpa_logs_its_terms_and_saves_the_weighted_average(src_run, smoke_run):
    from maple_peft.training.gpa import GaussianPromptAggregator

    history = json.loads((src_run / "training_history.json").read_text())
    assert all({"loss_ce", "loss_text", "loss_image", "loss_logits"} <= set(record) for record in history)
    assert all(record["loss"] > record["loss_ce"] for record in history)  # the weighted terms are added
    contributed = [(record["epoch"], record["gpa_weight"]) for record in history if "gpa_weight" in record]
    expected = GaussianPromptAggregator(mean=2, std=1, num_epochs=3).weights()
    assert [epoch for epoch, _ in contributed] == [1, 2, 3]
    assert [weight for _, weight in contributed] == pytest.approx(expected)
    config = json.loads((src_run / "metrics.json").read_text())["train_config"]
    assert (config["text_weight"], config["gpa_mean"]) == (25.0, 2.0)
    saved, plain = load_file(src_run / "adapter_model.safetensors"), load_file(smoke_run / "adapter_model.safetensors")
    assert not all(torch.equal(saved[k], plain[k]) for k in saved)
    card = (src_run / "README.md").read_text()
    assert card.count("# MaPLe + SRC adapter: ") == 1 and "MaPLe adapter" not in card  # titled by its method
    assert "| Objective | `PromptSRC self-regulating losses` |" in card  # the objective's declared options:
    assert "| Self-regulating text weight | 25.0 |" in card and "| Self-regulating logits weight | 1.0 |" in card
    assert "| Gaussian prompt aggregation (mean / std, in epochs) | 2 / 1 |" in card


def test_self_regulated_run_logs_the_gpa_weights_readably(src_run):
    from maple_peft.training.gpa import GaussianPromptAggregator

    log = (src_run / "training_log.txt").read_text()
    weights = GaussianPromptAggregator(mean=2, std=1, num_epochs=3).weights()
    shown = ", ".join(f"{epoch}: {weight:.3g}" for epoch, weight in enumerate(weights, start=1))
    assert "Gaussian prompt aggregation (mean 2, std 1): the adapter is the weighted average of the 3 epochs' " in log
    assert f"epochs {shown} carry 100.0% of the weight" in log
    assert "'weight':" not in log and "e-" not in log.split("Gaussian prompt aggregation")[1].splitlines()[0]


@pytest.mark.parametrize("checkpoint", ["checkpoint_2", "checkpoint_3"])  # mid-epoch 2; the end of epoch 2
def test_self_regulated_run_with_gpa_resumed_ends_with_the_same_adapter_and_history(
    assets, src_run, tmp_path, checkpoint
):
    out = tmp_path / "resumed"
    shutil.copytree(src_run / "checkpoints" / checkpoint, out / "checkpoints" / checkpoint)
    run_in_process(
        "train.py", *smoke_args(assets, out, *FAST, *CHECKPOINTED, *SRC, "--resume_from_checkpoint", "latest")
    )
    assert_same_result(src_run, out)


def test_bad_regularization_options_are_refused_before_any_work(assets, tmp_path):
    for extra, message in [
        (["--text_weight", "-1"], "error: --text_weight -1.0 must be"),  # in terms of the options
        (["--gpa_mean", "3"], "needs both --gpa_mean and --gpa_std"),
        (["--gpa_mean", "3", "--gpa_std", "0"], "error: --gpa_std 0.0 must be > 0"),
    ]:
        out = tmp_path / "bad"
        result = run_in_process("train.py", *smoke_args(assets, out, *FAST, *extra), check=False)
        assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
        assert not out.exists()


@pytest.mark.parametrize("recipe", sorted(p.name for p in (REPO / "examples" / "configs").glob("*.yaml")))
def test_every_recipe_is_a_valid_set_of_options(recipe):
    args = options.parse_args(["--config", str(REPO / "examples" / "configs" / recipe), "--dataset", "eurosat"])
    assert args.epochs >= 1 and args.lr > 0
    if recipe.startswith("promptsrc"):  # PromptSRC: IVLP, 4 + 4 tokens, weights 25/10/1, GPA
        assert (args.variant, args.n_ctx, args.n_ctx_vision) == ("ivlp", 4, 4)
        assert (args.text_weight, args.image_weight, args.logits_weight) == (25, 10, 1)
        assert args.gpa_mean is not None and args.gpa_std is not None


def test_a_run_stopped_between_step_checkpoints_saves_one_and_resumes_to_the_same_result(assets, smoke_run, tmp_path):
    out = tmp_path / "stopped"
    stop = ["--checkpointing_steps", "100", "--stop_after_epoch", "1"]  # no step checkpoint falls in epoch 1
    run_in_process("train.py", *smoke_args(assets, out, *FAST, *stop))
    state = json.loads((out / "checkpoints" / "checkpoint_1" / "trainer_state.json").read_text())
    assert (state["epoch"], state["step"], state["num_processes"]) == (1, 3, 1)
    run_in_process("train.py", *smoke_args(assets, out, *FAST, "--resume_from_checkpoint", "latest"))
    assert_same_result(smoke_run, out)


def test_resuming_on_another_number_of_processes_is_refused(assets, ddp_run, tmp_path):
    out = tmp_path / "one"
    shutil.copytree(ddp_run / "checkpoints", out / "checkpoints")  # the two-process run's, resumed by one process
    result = run_in_process(
        "train.py", *smoke_args(assets, out, *FAST, "--resume_from_checkpoint", "latest"), check=False
    )
    assert result.returncode != 0 and "written by a run on 2 process(es), but this run has 1" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints"]  # nothing else was created
