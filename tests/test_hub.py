from unittest import mock

import pytest
from huggingface_hub.utils import filter_repo_objects

from maple_peft.training.hub import push_run_to_hub

RUN_FILES = {
    "adapter_model.safetensors": True,
    "adapter_config.json": True,
    "README.md": True,
    "metrics.json": True,
    "training_curves.png": True,
    "per_class_accuracy.png": True,
    "training_log.txt": True,
    "train.log": True,
    "checkpoints/epoch_2/optimizer.bin": False,
    "checkpoints/epoch_2/model.safetensors": False,
    "checkpoints/epoch_2/random_states_0.pkl": False,
    "checkpoints/notes.txt": False,
    "config.yaml.bak": False,
}


@pytest.fixture
def run_dir(tmp_path):
    for name in RUN_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def test_push_creates_the_repo_and_uploads_the_run_without_checkpoints(run_dir):
    with mock.patch("maple_peft.training.hub.HfApi") as hf_api:
        api = hf_api.return_value
        api.create_repo.return_value.repo_id = "me/maple-eurosat"
        api.upload_folder.return_value.commit_url = "https://huggingface.co/me/maple-eurosat/commit/abc"

        url = push_run_to_hub(run_dir, "me/maple-eurosat", token="hf_x", private=True, commit_message="seed 1")

    assert url == "https://huggingface.co/me/maple-eurosat/commit/abc"
    hf_api.assert_called_once_with(token="hf_x")
    api.create_repo.assert_called_once()
    assert api.create_repo.call_args.kwargs["repo_id"] == "me/maple-eurosat"
    assert api.create_repo.call_args.kwargs["exist_ok"] is True
    assert api.create_repo.call_args.kwargs["private"] is True
    api.upload_folder.assert_called_once()
    kwargs = api.upload_folder.call_args.kwargs
    assert kwargs["folder_path"] == run_dir
    assert kwargs["repo_id"] == "me/maple-eurosat"
    assert kwargs["commit_message"] == "seed 1"
    for pattern in ("adapter_model.safetensors", "adapter_config.json", "README.md", "metrics.json", "*.png"):
        assert pattern in kwargs["allow_patterns"]
    assert "checkpoints/**" in kwargs["ignore_patterns"]

    # What huggingface_hub would upload with these patterns: the run's files, never the optimizer checkpoints.
    files = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())
    uploaded = set(
        filter_repo_objects(files, allow_patterns=kwargs["allow_patterns"], ignore_patterns=kwargs["ignore_patterns"])
    )
    assert uploaded == {name for name, pushed in RUN_FILES.items() if pushed}


def test_push_defaults_to_a_public_repo_and_a_descriptive_commit_message(run_dir):
    with mock.patch("maple_peft.training.hub.HfApi") as hf_api:
        push_run_to_hub(run_dir, "me/maple-eurosat")

    hf_api.assert_called_once_with(token=None)
    assert hf_api.return_value.create_repo.call_args.kwargs["private"] is False
    assert run_dir.name in hf_api.return_value.upload_folder.call_args.kwargs["commit_message"]


def test_push_refuses_a_directory_without_an_adapter(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    with (
        mock.patch("maple_peft.training.hub.HfApi") as hf_api,
        pytest.raises(FileNotFoundError, match="adapter_model"),
    ):
        push_run_to_hub(tmp_path, "me/maple-eurosat")
    hf_api.assert_not_called()


def test_push_rejects_a_bad_repo_id_and_warns_without_a_model_card(run_dir):
    with mock.patch("maple_peft.training.hub.HfApi"), pytest.raises(ValueError, match="repo_id='a/b/c'"):
        push_run_to_hub(run_dir, "a/b/c")
    (run_dir / "README.md").unlink()
    with mock.patch("maple_peft.training.hub.HfApi"), pytest.warns(UserWarning, match="no README.md"):
        push_run_to_hub(run_dir, "me/maple-eurosat")
