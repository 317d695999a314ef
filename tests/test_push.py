"""`maple-peft push RUN_DIR --hub_model_id ...`, offline: HfApi replaced in-process."""

from __future__ import annotations

from unittest import mock

from huggingface_hub.utils import filter_repo_objects

from maple_peft import cli

RUN_FILES = {
    "adapter_model.safetensors": True,
    "adapter_config.json": True,
    "README.md": True,
    "metrics.json": True,
    "training_history.json": True,
    "train_images.json": True,
    "training_curves.png": True,
    "training_log.txt": True,
    "run.lock": False,
    "checkpoints/checkpoint_2/optimizer.bin": False,
    "checkpoints/checkpoint_2/adapter_model.safetensors": False,
    "checkpoints/checkpoint_2/random_states_0.pkl": False,
    "notes/private.txt": False,
}


def make_run(tmp_path):
    for name in RUN_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def test_push_uploads_the_run_without_checkpoints_using_the_stored_token(tmp_path, capsys):
    run = make_run(tmp_path)
    with mock.patch("huggingface_hub.HfApi") as hf_api:
        api = hf_api.return_value
        api.create_repo.return_value.repo_id = "me/maple-eurosat"
        api.upload_folder.return_value.commit_url = "https://huggingface.co/me/maple-eurosat/commit/abc"
        code = cli.main(["push", str(run), "--hub_model_id", "me/maple-eurosat", "--private"])
    assert code == 0 and "https://huggingface.co/me/maple-eurosat/commit/abc" in capsys.readouterr().out
    hf_api.assert_called_once_with()  # no token passed: huggingface_hub's stored token or HF_TOKEN
    assert api.create_repo.call_args.kwargs["private"] is True
    kwargs = api.upload_folder.call_args.kwargs
    files = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())
    uploaded = set(filter_repo_objects(files, allow_patterns=kwargs["allow_patterns"]))
    assert uploaded == {name for name, pushed in RUN_FILES.items() if pushed}


def test_push_refuses_an_unfinished_run_and_a_folder_without_adapter(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    (run / "FAILED").write_text("ValueError: bad data")
    with mock.patch("huggingface_hub.HfApi") as hf_api:
        assert cli.main(["push", str(run), "--hub_model_id", "me/x"]) == 2
        assert cli.main(["push", str(tmp_path), "--hub_model_id", "me/x"]) == 2
    hf_api.assert_not_called()
    err = capsys.readouterr().err
    assert "FAILED marker" in err and "no adapter_model.safetensors" in err


def test_a_failed_upload_is_one_line_without_traceback(tmp_path, capsys):
    run = make_run(tmp_path)
    with mock.patch("huggingface_hub.HfApi") as hf_api:
        hf_api.return_value.create_repo.side_effect = ConnectionError("no route to host")
        assert cli.main(["push", str(run), "--hub_model_id", "me/x"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no route to host" in err and "Traceback" not in err
