"""The command lines answer fast, speak in their own options, and refuse mistakes in one line with exit code 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from maple_peft import command_line, hub
from maple_peft.cli import main

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
import options  # noqa: E402

HEAVY = ("torch", "transformers", "peft", "accelerate", "datasets")


def run(*args, env=None, cwd=REPO):
    return subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


def imported_modules(importtime_stderr: str) -> set[str]:
    """The modules `python -X importtime` reports as imported."""
    return {
        line.rsplit("|", 1)[-1].strip() for line in importtime_stderr.splitlines() if line.startswith("import time:")
    }


@pytest.mark.parametrize(
    "command, code",
    [
        (["-c", "import maple_peft"], 0),
        (["-m", "maple_peft.cli", "--help"], 0),
        (["-m", "maple_peft.cli", "predict", "--help"], 0),
        (["-m", "maple_peft.cli", "methods"], 0),
        (["-m", "maple_peft.cli", "predict", "--adapter", "a", "--top-k", "0", "x.jpg"], 2),
        (["examples/train.py", "--help"], 0),
        (["examples/train.py", "--lr", "abc"], 2),
        (["examples/evaluate.py", "--help"], 0),
    ],
)
def test_help_and_option_errors_answer_before_torch_is_imported(command, code):
    result = run("-X", "importtime", *command)
    assert result.returncode == code, result.stderr[-2000:]
    heavy = {name for name in imported_modules(result.stderr) if name.split(".")[0] in HEAVY}
    assert heavy == set()


def test_an_option_error_is_one_line_and_a_pointer_to_help():
    result = run("examples/train.py", "--lr", "abc")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "train.py: error: argument --lr: invalid float value: 'abc'",
        "Run `train.py --help` for the options.",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(["push", "run"])
    assert exit_info.value.code == 2


def test_each_entry_point_accepts_the_other_spelling_of_its_options(tmp_path):
    args = options.parse_args(["--output-dir", str(tmp_path), "--no-plots", "--num-shots=4", "--dataset", "eurosat"])
    assert (args.output_dir, args.plots, args.num_shots) == (str(tmp_path), False, 4)
    parser = command_line.build_parser()
    predict = parser.parse_args(["predict", "--adapter", "a", "--top_k", "2", "--base_model", "b", "x.jpg"])
    assert (predict.top_k, predict.base_model, predict.images) == (2, "b", ["x.jpg"])
    push = parser.parse_args(["push", "run", "--hub_model_id", "me/x"])
    assert push.hub_model_id == "me/x"
    # the canonical spelling is the one --help shows
    assert (
        "--hub-model-id"
        in subprocess.run(
            [sys.executable, "-m", "maple_peft.cli", "push", "--help"], capture_output=True, text=True, cwd=REPO
        ).stdout
    )


def test_python_argument_names_in_errors_become_the_command_line_flags():
    flags = {"output_dir": "--output_dir", "overwrite_output_dir": "--overwrite_output_dir"}
    message = "output_dir='outputs/smoke' exists; pass overwrite_output_dir=True or another output_dir."
    assert command_line.command_line_message(message, flags) == (
        "--output_dir outputs/smoke exists; pass --overwrite_output_dir or another output_dir."
    )
    flags = {"base_model_name_or_path": "--base-model", "class_names": "--classes"}
    message = "pass base_model_name_or_path= the Hub id, or class_names=['a', 'b']; config.base_model_name_or_path=x"
    assert command_line.command_line_message(message, flags) == (
        "pass --base-model the Hub id, or --classes a b; config.base_model_name_or_path=x"
    )


def test_a_refused_run_is_one_line_in_terms_of_the_options_with_exit_code_2(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = run("examples/train.py", "--dataset", "eurosat", "--data_root", tmp_path, "--output_dir", tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()] and result.stderr.startswith("error: ")
    assert f"--output_dir {tmp_path} exists" in result.stderr and "pass --overwrite_output_dir" in result.stderr
    assert "output_dir=" not in result.stderr and "Traceback" not in result.stderr


def test_a_recipe_dataset_is_replaced_by_a_dataset_name_on_the_command_line():
    recipe = str(REPO / "examples" / "configs" / "maple_cross_dataset.yaml")
    args = options.parse_args(["--config", recipe, "--dataset_name", "imagefolder", "--data_dir", "d"])
    assert (args.dataset, args.dataset_name, args.data_dir) == (None, "imagefolder", "d")
    smoke = str(REPO / "examples" / "configs" / "smoke.yaml")
    args = options.parse_args(["--config", smoke, "--dataset", "eurosat", "--data_root", "DATA"])
    assert (args.dataset, args.dataset_name, args.data_dir) == ("eurosat", None, None)


def test_a_warmup_as_long_as_the_run_is_refused_before_any_work(capsys):
    with pytest.raises(SystemExit) as exit_info:
        options.parse_args(["--dataset", "eurosat", "--epochs", "1"])
    assert exit_info.value.code == 2
    assert "--warmup_epochs 1 leaves no epoch of the cosine schedule in --epochs 1" in capsys.readouterr().err


def test_both_data_sources_on_the_command_line_is_one_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        options.parse_args(["--dataset", "eurosat", "--dataset_name", "user/ds"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--dataset eurosat (a CoOp benchmark) and --dataset_name user/ds" in err and "usage:" not in err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--num_shot", "4"], "unrecognized arguments: --num_shot 4 (did you mean `--num_shots`?)"),
        (["--num-shot=4"], "unrecognized arguments: --num-shot=4 (did you mean `--num_shots`?)"),
        (["--zzzz"], "unrecognized arguments: --zzzz\n"),
    ],
)
def test_a_misspelled_option_names_the_closest_one(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        options.parse_args(["--dataset", "eurosat", *argv])
    assert exit_info.value.code == 2
    assert expected in capsys.readouterr().err


def test_a_scripts_error_line_escapes_the_control_characters_of_what_it_quotes():
    error = FileNotFoundError("no class folder 'cat\x1b]0;owned\x07' in data_dir='d\tir'")
    assert options.command_line_error(error, options.build_parser()) == (
        "no class folder 'cat\\x1b]0;owned\\x07' in --data_dir d ir"
    )


def test_a_misspelled_key_of_a_recipe_names_the_closest_option(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("num_shot: 4\n")
    with pytest.raises(SystemExit):
        options.parse_args(["--config", str(recipe), "--dataset", "eurosat"])
    assert "unknown key 'num_shot' (did you mean `num_shots`?)" in capsys.readouterr().err


def test_a_misspelled_option_of_a_subcommand_names_the_closest_one_and_that_subcommands_help(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--adapter", "a", "--topk", "3", "x.jpg"])
    err = capsys.readouterr().err
    assert err.startswith("maple-peft predict: error: unrecognized arguments: --topk (did you mean `--top-k`?)")
    assert err.endswith("Run `maple-peft predict --help` for the options.\n")


def test_a_misspelled_required_option_names_the_closest_one_not_the_missing_one(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--adaptor", "outputs/smoke", "x.jpg"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.splitlines()) == 2
    assert err.startswith("maple-peft predict: error: unrecognized arguments: --adaptor (did you mean `--adapter`?)")
    assert "are required" not in err
    with pytest.raises(SystemExit):  # without a misspelling, the missing option is still what is said
        main(["predict", "x.jpg"])
    assert "the following arguments are required: --adapter" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["train", "evaluate"])
def test_a_device_option_says_how_the_scripts_choose_their_device(script, capsys):
    import evaluate  # examples/evaluate.py (heavy imports, already loaded by the other tests)

    parser = options.build_parser() if script == "train" else evaluate.build_parser()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--device", "cuda"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith(f"{script}.py: error: unrecognized arguments: --device cuda (")
    for way in (
        f"`accelerate launch --multi_gpu --num_processes N examples/{script}.py`",
        "--cpu",
        "CUDA_VISIBLE_DEVICES",
    ):
        assert way in err


# ---- maple-peft predict: mistakes caught before any model is loaded ---------------------------------------------


def test_classes_that_swallowed_the_images_say_how_to_end_the_list(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--adapter", "a", "--classes", "cat", "dog", "x.jpg"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "no IMAGE given: --classes took every argument after it (cat dog x.jpg)" in err
    assert "end its list with --" in err and "required" not in err


def test_a_single_class_is_refused_unless_asked(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "--adapter", "a", "--classes", "classes.txt", "--", "x.jpg"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--classes gives one class name ('classes.txt'): every image would get it with score 1.0" in err
    assert "--classes-file FILE" in err and "--allow-single-class" in err
    names = tmp_path / "names.txt"
    names.write_text("zebra\n")
    assert main(["predict", "--adapter", "a", "--classes-file", str(names), "x.jpg"]) == 2
    assert f"--classes-file {names} gives one class name ('zebra')" in capsys.readouterr().err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a torch without CUDA")
@pytest.mark.parametrize(
    "device, message",
    [
        ("cuda", "error: --device cuda: this torch build ({}) has no CUDA support; use one of: cpu"),
        ("gpu", "error: --device gpu: torch knows no such device; use one of: cpu"),
        ("meta", "error: --device meta holds no data and cannot classify images; use one of: cpu"),
    ],
)
def test_a_device_this_machine_lacks_is_one_line_and_exit_code_2(device, message, capsys):
    import torch

    assert main(["predict", "--adapter", "some/adapter", "--device", device, "x.jpg"]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [message.format(torch.__version__) + "."]


def test_a_misspelled_local_adapter_fails_at_once_naming_the_folder_and_the_hub_id(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs" / "smoke").mkdir(parents=True)
    monkeypatch.setattr(hub, "_probe", lambda *args: pytest.fail("the Hub must not be asked"))
    assert main(["predict", "--adapter", "outputs/smok", "--classes", "a", "b", "--", "x.jpg"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: --adapter outputs/smok: no such folder (the folder 'outputs' exists here, so it")
    assert "not tried as the Hub repository 'outputs/smok'" in err[0] and "Did you mean outputs/smoke?" in err[0]


# ---- evaluate.py and PromptClassifier: templates ----------------------------------------------------------------


@pytest.mark.parametrize(
    "template, problem",
    [("a {} of {x}", "has the field {x}"), ("a {} }", "Single '}'"), ("a {{}} photo", "has no {} field")],
)
def test_a_malformed_template_says_what_a_template_looks_like(tokenizer, template, problem):
    from conftest import tiny_clip

    from maple_peft import PromptClassifier, format_prompts

    with pytest.raises(ValueError, match="exactly one {} where the class name goes") as error:
        format_prompts(None, ["cat", "dog"], template=template)
    assert problem in str(error.value)
    with pytest.raises(ValueError, match=r"a template holds exactly one \{\}"):
        PromptClassifier(tiny_clip(), tokenizer, ["cat", "dog"], template=template)


def test_evaluate_refuses_a_malformed_template_in_one_line_before_loading_anything(tmp_path):
    from script_runs import run_example  # in this process, as its command line runs it

    result = run_example("evaluate.py", "--dataset", "eurosat", "--data_root", tmp_path, "--template", "a {} of {x}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: --template a {} of {x} has the field {x}; a template holds exactly one {} where the class name "
        "goes, and writes any other brace doubled ({{ or }}), e.g. 'a photo of a {}.'"
    ]


# ---- adapter names ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["copy", "keys", "training", "a.b"])
def test_an_adapter_name_maple_cannot_store_is_refused_before_anything_changes(name):
    from conftest import tiny_clip
    from peft import get_peft_model

    from maple_peft import MaPLeConfig

    with pytest.raises(ValueError, match=f"adapter_name={name!r}"):
        get_peft_model(tiny_clip(), MaPLeConfig(n_ctx=2, depth=2, prompt_init=None), adapter_name=name)
    model = get_peft_model(tiny_clip(), MaPLeConfig(n_ctx=2, depth=2, prompt_init=None))
    with pytest.raises(ValueError, match="use another name|use e.g."):
        model.add_adapter(name, MaPLeConfig(n_ctx=2, depth=2, prompt_init=None))
    assert list(model.peft_config) == ["default"]
    model.add_adapter("copy_adapter", MaPLeConfig(n_ctx=2, depth=2, prompt_init=None))  # the suggested name works
