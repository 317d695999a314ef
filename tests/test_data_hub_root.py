"""`--data_root hub`: CoOp-layout archives downloaded once from a Hub repository, extracted once, read as a CoOp root.

The Hub is a local stand-in: an HTTP server on 127.0.0.1 answering `/<repo>/resolve/<revision>/<file>` as the Hub
does (`X-Repo-Commit`, `ETag`, `Content-Length`), with `huggingface_hub`'s endpoint and caches pointed at it and at
tmp_path.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import multiprocessing
import re
import stat
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from huggingface_hub import constants
from test_data_draw import original_draw, write_shuffled_split

from maple_peft.training.data import (
    HUB_DATA_REPO,
    HUB_DATA_REVISION,
    TRAIN_IMAGES_FILE,
    imagenet_classnames,
    load_coop_split,
    parse_hub_root,
)
from maple_peft.training.data import hub_root as hub_root_module
from maple_peft.training.experiment import load_experiment_data

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
from make_smoke_assets import save_tiny_clip  # noqa: E402
from test_benchmark_grid import in_process, never, run  # noqa: E402

PINNED = f"hf://{HUB_DATA_REPO}@{HUB_DATA_REVISION}"


def zip_folder(folder: Path, entries: dict[str, bytes] | None = None) -> bytes:
    """The folder's files as a zip archive (paths relative to its parent), plus raw `entries`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder.parent).as_posix())
        for name, data in (entries or {}).items():
            zf.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def eurosat(tmp_path_factory):
    """A CoOp EuroSAT folder (split file in no class order), its split, and its archive."""
    root = tmp_path_factory.mktemp("coop")
    split = write_shuffled_split(root)
    return root, split, zip_folder(root / "eurosat")


class FakeHub(ThreadingHTTPServer):
    """Serves `files` (name -> bytes) at every revision of every repository, as the Hub's resolve endpoint."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.gets: list[str] = []
        self.commit = HUB_DATA_REVISION

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    def _answer(self, body: bool) -> None:
        match = re.fullmatch(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<file>.+)", self.path)
        data = self.server.files.get(match["file"]) if match else None
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", self.server.commit)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.server.gets.append(match["file"])
            self.wfile.write(data)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(body=True)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    hub = FakeHub()
    thread = threading.Thread(target=hub.serve_forever, daemon=True)
    thread.start()
    yield hub
    hub.shutdown()
    hub.server_close()


@pytest.fixture
def hub(server, eurosat, tmp_path, monkeypatch):
    """The stand-in Hub serving eurosat.zip; HF_HOME (and the Hub cache in it) in tmp_path; online."""
    server.files, server.gets, server.commit = {"eurosat.zip": eurosat[2]}, [], HUB_DATA_REVISION
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    return server


def extracted(tmp_path: Path) -> Path:
    return tmp_path / "hf" / "maple_peft" / "datasets" / HUB_DATA_REPO.replace("/", "--") / HUB_DATA_REVISION


def cached_archive(tmp_path: Path, name: str = "eurosat.zip") -> Path:
    folder = "models--" + HUB_DATA_REPO.replace("/", "--")
    return tmp_path / "hf" / "hub" / folder / "snapshots" / HUB_DATA_REVISION / name


def test_the_hub_root_downloads_once_and_reads_like_the_local_coop_root(hub, eurosat, tmp_path):
    root = parse_hub_root("hub").prepare("eurosat")
    again = parse_hub_root("hub").prepare("EuroSAT")

    assert root == again == extracted(tmp_path) and hub.gets == ["eurosat.zip"]  # downloaded once, extracted once
    local = load_coop_split("eurosat", eurosat[0], "train")
    assert [r.key for r in load_coop_split("eurosat", root, "train")] == [r.key for r in local]
    assert sorted(p.name for p in root.iterdir()) == [".eurosat.lock", "eurosat"]  # no partial folder left
    data = load_experiment_data(dataset="eurosat", data_root="hub")
    assert (data.split_source, data.data_source, data.few_shot_draw) == ("coop", PINNED, "dassl")
    assert PINNED in data.split_note and hub.gets == ["eurosat.zip"]


def test_a_cached_archive_is_extracted_and_reused_offline(hub, tmp_path, monkeypatch):
    parse_hub_root("hub").prepare("eurosat")
    hub.files = {}  # the Hub is gone
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert parse_hub_root("hub").prepare("eurosat") == extracted(tmp_path)  # the extracted folder, no request

    (extracted(tmp_path) / "eurosat").rename(tmp_path / "moved")  # only the archive is left, in the Hub cache
    assert (parse_hub_root("hub").prepare("eurosat") / "eurosat" / "split_zhou_EuroSAT.json").is_file()
    assert hub.gets == ["eurosat.zip"]


def test_a_branch_is_resolved_to_its_commit_online_and_offline_through_the_cache(hub, tmp_path, monkeypatch):
    root = parse_hub_root(f"hf://{HUB_DATA_REPO}@main").prepare("eurosat")
    assert root == extracted(tmp_path)  # the branch's commit names the folder
    hub.commit = "2" * 40  # the branch moves on: online, a run follows it
    moved = parse_hub_root(f"hf://{HUB_DATA_REPO}").prepare("eurosat")
    assert moved == extracted(tmp_path).parent / hub.commit and hub.gets == ["eurosat.zip"]  # same file: no new GET
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.files = {}
    assert parse_hub_root(f"hf://{HUB_DATA_REPO}").prepare("eurosat") == moved


def no_partial_left(tmp_path: Path) -> None:
    folder = extracted(tmp_path)
    assert not folder.exists() or [p.name for p in folder.iterdir() if not p.name.endswith(".lock")] == []


def test_a_truncated_archive_is_removed_and_downloaded_again(hub, eurosat, tmp_path):
    hub.files = {"eurosat.zip": eurosat[2][: len(eurosat[2]) // 2]}
    with pytest.raises(ValueError, match=r"eurosat.zip of hf://.* is corrupt or truncated .* run again to download"):
        parse_hub_root("hub").prepare("eurosat")
    assert not cached_archive(tmp_path).exists() and not list((tmp_path / "hf" / "hub").rglob("blobs/*"))
    no_partial_left(tmp_path)

    hub.files = {"eurosat.zip": eurosat[2]}
    assert (parse_hub_root("hub").prepare("eurosat") / "eurosat").is_dir()
    assert hub.gets == ["eurosat.zip", "eurosat.zip"]


def test_a_corrupt_entry_is_refused_and_nothing_is_kept(hub, eurosat, tmp_path):
    data = bytearray(eurosat[2])
    local = data.index(b"PK\x03\x04")  # the first entry's data, past its 30-byte header and name
    name_length = int.from_bytes(data[local + 26 : local + 28], "little")
    start = local + 30 + name_length + int.from_bytes(data[local + 28 : local + 30], "little")
    data[start : start + 8] = b"\xff" * 8
    hub.files = {"eurosat.zip": bytes(data)}
    with pytest.raises(ValueError, match="is corrupt or truncated"):
        parse_hub_root("hub").prepare("eurosat")
    no_partial_left(tmp_path)
    assert not cached_archive(tmp_path).exists()


def _symlink_entry(zf: zipfile.ZipFile, name: str, target: str) -> None:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    zf.writestr(info, target)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("eurosat/../../escaped.txt", "would be written outside its folder"),
        ("/tmp/escaped.txt", "would be written outside its folder"),
        ("link", "has a link 'eurosat/2750/link'"),
    ],
)
def test_entries_landing_outside_the_target_refuse_the_archive(hub, eurosat, tmp_path, entry, message):
    buffer = io.BytesIO(eurosat[2])
    with zipfile.ZipFile(buffer, "a") as zf:
        if entry == "link":
            _symlink_entry(zf, "eurosat/2750/link", "/etc/passwd")
        else:
            zf.writestr(entry, b"x")
    hub.files = {"eurosat.zip": buffer.getvalue()}
    with pytest.raises(ValueError, match=message):
        parse_hub_root("hub").prepare("eurosat")
    no_partial_left(tmp_path)
    assert not list(tmp_path.rglob("escaped.txt"))


def test_an_archive_without_the_expected_folder_or_split_file_names_what_was_expected(hub, eurosat, tmp_path):
    other = tmp_path / "EuroSAT_RGB"
    other.mkdir()
    (other / "a.png").write_bytes(b"x")
    hub.files = {"eurosat.zip": zip_folder(other)}
    with pytest.raises(ValueError, match=r"does not hold the folder eurosat/ alone .*\['EuroSAT_RGB'\].*"):
        parse_hub_root("hub").prepare("eurosat")
    no_split = tmp_path / "eurosat"
    (no_split / "2750").mkdir(parents=True)
    (no_split / "2750" / "a.png").write_bytes(b"x")
    hub.files, hub.commit = {"eurosat.zip": zip_folder(no_split)}, "1" * 40  # another commit: another archive
    with pytest.raises(ValueError, match=r"has no eurosat/split_zhou_EuroSAT.json; expected CoOp's layout"):
        parse_hub_root(f"hub@{hub.commit}").prepare("eurosat")
    no_partial_left(tmp_path)
    assert not (extracted(tmp_path).parent / hub.commit / "eurosat").exists()


def test_bad_names_unknown_datasets_and_missing_files_are_one_line(hub, tmp_path):
    with pytest.raises(ValueError, match=r"has no archive in the Hub data root .*'dtd', 'eurosat'"):
        parse_hub_root("hub").prepare("imagenet")
    with pytest.raises(ValueError, match="Unknown benchmark 'mnist'"):
        load_experiment_data(dataset="mnist", data_root="hub")
    for bad in ("hf://justaname", "hub@", "hf://a/b@"):
        with pytest.raises(ValueError, match="data_root="):
            parse_hub_root(bad)
    with pytest.raises(OSError, match=r"has no file dtd.zip"):
        parse_hub_root("hub").prepare("dtd")


def test_no_network_and_no_cache_is_one_line(hub, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match=r"eurosat.zip of hf://.* is not in the Hugging Face cache .* HF_HUB_OFFLINE=1"):
        parse_hub_root("hub").prepare("eurosat")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens
    monkeypatch.setattr(constants, "ENDPOINT", closed)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", closed + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 2)
    with pytest.raises(OSError, match=r"Cannot download eurosat.zip of hf://.*check the network"):
        parse_hub_root("hub").prepare("eurosat")
    assert hub.gets == []


def test_a_disk_without_room_is_refused_before_downloading_or_extracting(hub, tmp_path, monkeypatch):
    usage = type("Usage", (), {"free": 1000})
    monkeypatch.setattr(hub_root_module.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(OSError, match=r"Not enough free disk space for downloading eurosat.zip .* set HF_HOME"):
        parse_hub_root("hub").prepare("eurosat")
    assert hub.gets == []


def test_a_disk_filling_up_during_the_extraction_leaves_nothing_half_made(hub, tmp_path, monkeypatch):
    def full(self, path, members=None):
        (Path(path) / "eurosat").mkdir()
        (Path(path) / "eurosat" / "half.png").write_bytes(b"x")
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(zipfile.ZipFile, "extractall", full)
        with pytest.raises(OSError, match=r"The disk filled up while extracting eurosat.zip .*nothing was kept"):
            parse_hub_root("hub").prepare("eurosat")
    no_partial_left(tmp_path)
    assert (parse_hub_root("hub").prepare("eurosat") / "eurosat" / "split_zhou_EuroSAT.json").is_file()


def _prepare_in_child(queue) -> None:
    queue.put(str(parse_hub_root("hub").prepare("eurosat")))


def test_two_processes_extract_the_archive_once(hub, tmp_path, monkeypatch):
    parse_hub_root("hub")._download("eurosat.zip")  # in the Hub cache: the processes race on the extraction
    log = tmp_path / "extractions.txt"
    extract = hub_root_module._extract

    def slow_extract(*args):
        with open(log, "a") as handle:
            handle.write("extract\n")
        time.sleep(0.5)  # the other process arrives meanwhile, and waits on the lock
        extract(*args)

    monkeypatch.setattr(hub_root_module, "_extract", slow_extract)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [context.Process(target=_prepare_in_child, args=(queue,)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
    assert [child.exitcode for child in children] == [0, 0]
    assert {queue.get(timeout=5), queue.get(timeout=5)} == {str(extracted(tmp_path))}
    assert log.read_text() == "extract\n"
    assert load_coop_split("eurosat", extracted(tmp_path), "test")


def test_imagenet_class_names_are_coops_in_sorted_wordnet_id_order():
    names = imagenet_classnames()
    wnids = list(names)
    assert len(names) == 1000 and wnids == sorted(wnids)
    known = {0: ("n01440764", "tench"), 1: ("n01443537", "goldfish"), 7: ("n01514668", "rooster"),
             207: ("n02099601", "Golden Retriever"), 999: ("n15075141", "toilet paper")}  # fmt: skip
    assert {label: (wnids[label], names[wnids[label]]) for label in known} == known


def _fake_imagenet(split):
    import datasets
    from PIL import Image

    labels = [f"class {i}" for i in range(1000)]
    labels[0], labels[1], labels[999] = (
        "tench, Tinca tinca",
        "goldfish, Carassius auratus",
        "toilet tissue, toilet paper",
    )
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=labels)})
    rows = {"image": [Image.new("RGB", (4, 4)) for _ in range(4)], "label": [999, 0, 1, 0]}
    return datasets.Dataset.from_dict(rows, features=features)


def test_imagenet_from_the_hub_has_coops_names_and_a_gated_dataset_is_one_line(monkeypatch):
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    calls = []

    def load(path, split):
        calls.append((path, split))
        return _fake_imagenet(split)

    monkeypatch.setattr(datasets, "load_dataset", load)
    data = load_experiment_data(dataset="imagenet", data_root="hub")
    assert calls == [("ILSVRC/imagenet-1k", "validation"), ("ILSVRC/imagenet-1k", "train")]
    assert [r.class_name for r in data.train] == ["toilet paper", "tench", "goldfish", "tench"]
    assert data.class_names[:2] == ["tench", "goldfish"] and data.val is None and data.few_shot_draw == "dassl"
    assert data.split_source == "coop" and data.data_source == "hf://datasets/ILSVRC/imagenet-1k"

    def gated(path, split):
        raise DatasetNotFoundError(f"Dataset '{path}' is a gated dataset on the Hub. You must be authenticated.")

    monkeypatch.setattr(datasets, "load_dataset", gated)
    with pytest.raises(OSError, match=r"ILSVRC/imagenet-1k is gated: accept its terms .* \(hf auth login\)"):
        load_experiment_data(dataset="imagenet", data_root="hub")


def test_the_readme_main_command_trains_eurosat_base_to_novel_from_the_hub_root(hub, eurosat, tmp_path):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    command = "python examples/train.py --config examples/configs/maple_base2novel.yaml --dataset eurosat --data_root hub --seed 1"
    assert command in readme
    out = tmp_path / "run"
    argv = command.split()[2:] + [
        "--model_name_or_path", str(save_tiny_clip(tmp_path / "tiny-clip")), "--depth", "1", "--num_shots", "2",
        "--epochs", "2", "--num_workers", "0", "--no_plots", "--no_zero_shot_baseline", "--output_dir", str(out),
    ]  # fmt: skip
    argv[argv.index("examples/configs/maple_base2novel.yaml")] = str(REPO / "examples/configs/maple_base2novel.yaml")
    assert in_process([sys.executable, "train.py", *argv], {}, tmp_path / "log.txt") == 0

    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["split_source"], metrics["data_source"], metrics["benchmark"]) == ("coop", PINNED, "eurosat")
    images = json.loads((out / TRAIN_IMAGES_FILE).read_text())
    expected, _ = original_draw(eurosat[1], 2, 1, "base")
    assert [[i["path"], i["label"], i["class_name"]] for i in images["images"]] == expected
    assert images["data_source"] == PINNED and hub.gets == ["eurosat.zip"]


def test_benchmark_runs_a_grid_from_the_hub_root(hub, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"model_name_or_path: {save_tiny_clip(tmp_path / 'tiny-clip')}\nvariant: maple\ndepth: 1\nsetting: base2novel\n"
        "num_shots: 2\nepochs: 2\nbatch_size: 4\nnum_workers: 0\nplots: false\nzero_shot_baseline: false\n"
    )
    out = tmp_path / "grid"
    argv = ["--recipe", recipe, "--datasets", "eurosat", "--seeds", "1", "--data_root", "hub", "--output_dir", out]
    code, dry, _ = run([*argv, "--dry_run"], never)
    assert code == 0 and "--dataset eurosat --data_root hub" in dry and hub.gets == []  # nothing downloaded yet
    code, _, err = run([*argv, "--datasets", "imagenet_a", "mnist"], never)
    assert code == 2 and "Unknown benchmark 'mnist'" in err

    code, _, _ = run(argv, in_process)

    assert code == 0 and hub.gets == ["eurosat.zip"]
    metrics = json.loads((out / "eurosat" / "seed1" / "metrics.json").read_text())
    assert (metrics["split_source"], metrics["data_source"]) == ("coop", PINNED)
    assert "eurosat" in (out / "results-base2novel.md").read_text()
