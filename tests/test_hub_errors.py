"""An unreachable Hub and unwritable caches: one clear line at once, not minutes of retries or a traceback.

The Hub is replaced by local sockets: a port nobody listens on (connection refused) and a server that accepts
connections but never answers (with `HF_HUB_ETAG_TIMEOUT=1`).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

import pytest
from huggingface_hub import constants

from maple_peft import PromptClassifier, hub
from maple_peft.cli import main

REPO = Path(__file__).resolve().parents[1]
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


@pytest.fixture
def silent_server():
    """An endpoint that accepts TCP connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()


@pytest.fixture
def closed_port():
    """An endpoint where nothing listens (connection refused)."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def online(monkeypatch, tmp_path):
    """Offline mode off (CI turns it on), an empty Hub cache, and no remembered probe."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(hub, "_probed", {})
    for name in OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_from_pretrained_against_a_silent_hub_names_the_network_problem(online, silent_server, monkeypatch):
    monkeypatch.setattr(constants, "ENDPOINT", silent_server)
    with pytest.raises(hub.HubUnreachableError) as error:
        PromptClassifier.from_pretrained("user/maple-eurosat")
    message = str(error.value)
    assert message.startswith(f"Cannot reach the Hugging Face Hub at {silent_server} (no answer within 1 s")
    assert "adapter_name_or_path='user/maple-eurosat'" in message and "not in the cache" in message
    assert "HF_HUB_OFFLINE=1" in message and "local folder" in message


def test_predict_against_an_unreachable_hub_is_one_line_and_exit_code_2(online, closed_port, monkeypatch, capsys):
    monkeypatch.setattr(constants, "ENDPOINT", closed_port)
    assert main(["predict", "--adapter", "user/maple-eurosat", "x.jpg"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: Cannot reach the Hugging Face Hub at {closed_port} (")
    assert "--adapter user/maple-eurosat" in err[0] and "HF_HUB_OFFLINE=1" in err[0]


def test_a_cached_repository_is_used_offline_when_the_hub_is_unreachable(online, closed_port, monkeypatch, caplog):
    monkeypatch.setattr(constants, "ENDPOINT", closed_port)
    snapshot = Path(constants.HF_HUB_CACHE) / "models--user--maple-eurosat" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "adapter_config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # restored after the test; check_sources sets it
    with caplog.at_level(logging.WARNING, logger="maple_peft.hub"):
        hub.check_sources({"--adapter": ("user/maple-eurosat", "model")})
    assert constants.HF_HUB_OFFLINE is True and os.environ["HF_HUB_OFFLINE"] == "1"
    assert "using the cached user/maple-eurosat (offline mode" in caplog.text


def _cache_model(repo_id):
    snapshot = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")


def _prepare_dataset(datasets_cache, folder):
    """What `datasets` leaves in its cache after preparing a Hub dataset (`<namespace>___<name>/<config>/...`)."""
    (datasets_cache / folder / "default" / "0.0.0" / ("a" * 16)).mkdir(parents=True)


def test_offline_mode_and_local_folders_never_touch_the_network(online, monkeypatch, tmp_path):
    monkeypatch.setattr(hub, "_probe", lambda *args: pytest.fail("the Hub must not be asked"))
    hub.check_sources({"--adapter": (str(tmp_path), "model"), "--model_name_or_path": (None, "model")})
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _cache_model("user/maple-eurosat")
    hub.check_sources({"--adapter": ("user/maple-eurosat", "model")})


def test_offline_mode_names_everything_the_caches_lack_at_once(online, monkeypatch, tmp_path):
    import datasets

    monkeypatch.setattr(hub, "_probe", lambda *args: pytest.fail("the Hub must not be asked"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    sources = {
        "--model_name_or_path": ("openai/clip-vit-base-patch16", "model"),
        "--dataset_name": ("timm/eurosat-rgb", "dataset"),
    }
    with pytest.raises(hub.HubUnreachableError) as error:
        hub.check_sources(sources)
    message = str(error.value)
    assert message.startswith("HF_HUB_OFFLINE=1 (offline mode: nothing is downloaded) and the cache lacks")
    assert (
        f"--model_name_or_path openai/clip-vit-base-patch16 (no file of it in the Hub cache ({constants.HF_HUB_CACHE}))"
        in message
    )
    assert (
        f"--dataset_name timm/eurosat-rgb (no prepared copy in the datasets cache ({tmp_path / 'datasets-cache' / 'timm___eurosat-rgb'}))"
        in message
    )
    assert "Couldn't reach" not in message and "without HF_HUB_OFFLINE" in message

    _cache_model("openai/clip-vit-base-patch16")  # the model cached: only the dataset is named
    with pytest.raises(hub.HubUnreachableError) as error:
        hub.check_sources(sources)
    assert "--dataset_name timm/eurosat-rgb" in str(error.value) and "clip-vit" not in str(error.value)
    _prepare_dataset(tmp_path / "datasets-cache", "timm___eurosat-rgb")
    hub.check_sources(sources)  # both there: used from the caches


@pytest.mark.parametrize(
    "data, lacking",
    [
        (
            ["--dataset_name", "timm/eurosat-rgb"],
            "--dataset_name timm/eurosat-rgb (no prepared copy in the datasets cache",
        ),
        (["--dataset", "eurosat", "--data_root", "hub"], "--data_root hub (eurosat.zip of hf://zhengli97/"),
    ],
)
def test_train_in_offline_mode_names_the_missing_model_and_dataset_before_any_work(
    online, monkeypatch, tmp_path, data, lacking
):
    import datasets

    sys.path.insert(0, str(REPO / "examples"))
    try:
        import train
    finally:
        sys.path.remove(str(REPO / "examples"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf-home"))  # where a Hub data root is extracted
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    argv = [
        "--config", str(REPO / "examples" / "configs" / "maple_base2novel.yaml"), *data,
        "--seed", "1", "--output_dir", str(tmp_path / "run"),
    ]  # fmt: skip
    with pytest.raises(hub.HubUnreachableError) as error:  # the script prints it as one line, exit code 2
        train.main(argv)
    message = str(error.value)
    assert "--model_name_or_path openai/clip-vit-base-patch16 (no file of it" in message
    assert lacking in message
    assert not (tmp_path / "run").exists()


def _train(tmp_path, *args):
    """examples/train.py in this process, as its command line runs it (exit code, stdout, stderr)."""
    from script_runs import run_example

    return run_example("train.py", "--output_dir", tmp_path / "run", *args)


def test_train_with_an_unreachable_hub_is_one_line_naming_the_network_and_the_way_out(
    online, tmp_path, closed_port, monkeypatch
):
    monkeypatch.setattr(constants, "ENDPOINT", closed_port)  # HF_ENDPOINT
    result = _train(tmp_path, "--model_name_or_path", "user/model", "--dataset", "eurosat", "--data_root", tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: Cannot reach the Hugging Face Hub at {closed_port} (")
    assert "--model_name_or_path user/model" in lines[0] and "HF_HUB_OFFLINE=1" in lines[0]
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_train_with_an_unwritable_cache_is_one_line(tmp_path, saved_base, monkeypatch):
    import datasets

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    data = tmp_path / "data"
    data.mkdir()  # (empty: the cache is checked before the data is read)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", blocker / "hf" / "datasets")  # HF_HOME=a-file/hf
    result = _train(tmp_path, "--model_name_or_path", saved_base, "--dataset_name", "imagefolder", "--data_dir", data)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: Cannot write the datasets cache (HF_DATASETS_CACHE) at {blocker}"
    )
    assert f"{blocker} is a file, not a folder" in lines[0] and "HF_HOME" in lines[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_a_read_only_cache_folder_is_refused(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o555)
    try:
        with pytest.raises(hub.CacheNotWritableError, match="is not writable"):
            hub.check_writable_cache(home / ".cache" / "huggingface", "the Hugging Face cache")
    finally:
        home.chmod(0o755)


@pytest.fixture
def answering_server():
    """An endpoint that answers every request with 200."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_a_download_into_an_unwritable_hub_cache_is_refused_before_it_starts(
    online, answering_server, monkeypatch, tmp_path
):
    monkeypatch.setattr(constants, "ENDPOINT", answering_server)
    blocker = tmp_path / "read-only-home"
    blocker.write_text("")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(blocker / ".cache" / "huggingface" / "hub"))
    with pytest.raises(hub.CacheNotWritableError, match=r"Cannot write the Hugging Face cache \(HF_HUB_CACHE\)"):
        hub.check_sources({"--model_name_or_path": ("user/model", "model")})


def test_a_data_dir_that_does_not_exist_is_named_with_the_closest_folder(tmp_path, monkeypatch):
    (tmp_path / "smoke_assets" / "data").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as error:
        hub.check_sources({"--data_dir": ("smoke_asset/data", "folder")})
    assert str(error.value) == (
        "--data_dir smoke_asset/data: no such folder. Did you mean smoke_assets/data? Pass an existing folder."
    )
    hub.check_sources({"--data_dir": ("smoke_assets/data", "folder")})


def test_train_and_evaluate_refuse_a_missing_image_folder_before_loading_anything(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import evaluate
        import train
    finally:
        sys.path.remove(str(REPO / "examples"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # evaluate.py configures logging; undone after the test
    data = ["--dataset_name", "imagefolder", "--data_dir", "smoke_asset/data"]
    for call in (
        lambda: train.main([*data, "--model_name_or_path", str(tmp_path), "--output_dir", str(tmp_path / "run")]),
        lambda: evaluate.main(data),
    ):
        with pytest.raises(FileNotFoundError, match=r"^--data_dir smoke_asset/data: no such folder\."):
            call()
    assert not (tmp_path / "run").exists()


def test_a_hub_data_root_is_missing_offline_only_when_neither_extracted_nor_cached(online, monkeypatch, tmp_path):
    from maple_peft.training.data import parse_hub_root

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf-home"))
    root = parse_hub_root("hub")
    assert "eurosat.zip of hf://zhengli97/prompt_learning_dataset@" in root.missing_offline("eurosat")
    repo = Path(constants.HF_HUB_CACHE) / "models--zhengli97--prompt_learning_dataset"
    (repo / "snapshots" / root.revision).mkdir(parents=True)
    (repo / "snapshots" / root.revision / "eurosat.zip").write_bytes(b"PK")
    assert root.missing_offline("eurosat") is None  # in the Hub cache: prepare() extracts it without the network
    assert root.missing_offline("dtd") is not None
    (root.folder(root.revision) / "dtd").mkdir(parents=True)
    assert root.missing_offline("dtd") is None  # extracted already
