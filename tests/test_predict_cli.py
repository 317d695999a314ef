"""`maple-peft predict`: one line per image, one error line per unreadable image, the others still classified."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_oneliner import images, save_adapter

from maple_peft import PromptClassifier
from maple_peft.cli import main, read_classes_file


@pytest.fixture(scope="module")
def adapter(saved_base, tmp_path_factory):
    return save_adapter(saved_base, tmp_path_factory.mktemp("adapter"))


@pytest.fixture
def image_files(tmp_path):
    paths = []
    for index, image in enumerate(images(3)):
        path = tmp_path / f"image_{index}.png"
        image.save(path)
        paths.append(str(path))
    return paths


def test_predict_prints_label_and_score_per_image(adapter, image_files, capsys):
    assert main(["predict", "--adapter", adapter, *image_files]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = PromptClassifier.from_pretrained(adapter).predict_proba(image_files, top_k=1)
    assert len(lines) == 3
    for line, path, (best,) in zip(lines, image_files, expected):
        got_path, label, score = line.split("\t")
        assert (got_path, label) == (path, best["label"])
        assert float(score) == pytest.approx(best["score"], abs=1e-4)


def test_predict_json_lines_with_top_k_and_own_classes(adapter, image_files, capsys):
    classes = ["zebra", "okapi", "giraffe"]
    assert main(["predict", "--adapter", adapter, "--classes", *classes, "--top-k", "2", "--json", *image_files]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    expected = PromptClassifier.from_pretrained(adapter, classes).predict_proba(image_files, top_k=2)
    assert [r["image"] for r in records] == image_files
    for record, predictions in zip(records, expected):
        assert [p["label"] for p in record["predictions"]] == [p["label"] for p in predictions]
        assert [p["score"] for p in record["predictions"]] == pytest.approx([p["score"] for p in predictions])


def test_predict_reads_classes_from_a_file(adapter, image_files, tmp_path, capsys):
    classes_file = tmp_path / "classes.txt"
    classes_file.write_text("zebra\n\nokapi\n", encoding="utf-8")
    assert main(["predict", "--adapter", adapter, "--classes-file", str(classes_file), *image_files]) == 0
    labels = [line.split("\t")[1] for line in capsys.readouterr().out.splitlines()]
    assert len(labels) == 3 and set(labels) <= {"zebra", "okapi"}


def test_an_unreadable_image_is_one_error_line_and_the_others_are_classified(adapter, image_files, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a png")
    missing = str(tmp_path / "missing.jpg")
    files = [image_files[0], str(broken), missing, image_files[1]]
    assert main(["predict", "--adapter", adapter, "--batch-size", "1", *files]) == 1
    captured = capsys.readouterr()
    assert [line.split("\t")[0] for line in captured.out.splitlines()] == [image_files[0], image_files[1]]
    errors = captured.err.splitlines()
    assert len(errors) == 2
    assert errors[0].startswith("error: Cannot read image") and "broken.png" in errors[0]
    assert "missing.jpg" in errors[1] and "no such file" in errors[1]
    assert "Traceback" not in captured.err


def test_adapter_without_classes_is_one_clear_error(saved_base, image_files, tmp_path, capsys):
    path = save_adapter(saved_base, tmp_path / "no-classes", class_names=None)
    capsys.readouterr()
    assert main(["predict", "--adapter", path, *image_files]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"error: the adapter {path} has no class names saved with it; pass --classes a b c or --classes-file FILE."
    ]


def test_missing_adapter_and_missing_classes_file_are_one_line_each(adapter, image_files, tmp_path, capsys):
    assert main(["predict", "--adapter", str(tmp_path / "nowhere"), *image_files]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "nowhere" in err[0]
    assert main(["predict", "--adapter", adapter, "--classes-file", str(tmp_path / "none.txt"), *image_files]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "cannot read --classes-file" in err[0]


def test_bad_classes_are_one_clear_error(adapter, image_files, capsys):
    assert main(["predict", "--adapter", adapter, "--classes", "sea_lake", "sea lake", "--", *image_files]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "error: Classes 'sea_lake' and 'sea lake' give the same prompt ('a photo of a sea lake.'), so they cannot be "
        "told apart; rename or merge one of them."
    ]


# ---- untrusted adapters, files and servers --------------------------------------------------------------------------

ESCAPE_CLASS = "cat\x1b]0;owned\x07\x1b[2J"
FORGING_CLASS = "dog\tforged.png\tdog\t0.11\nx"


@pytest.fixture(scope="module")
def hostile_adapter(saved_base, tmp_path_factory):
    """An adapter from an untrusted source: its class names hold terminal escapes, a tab and a newline."""
    return save_adapter(saved_base, tmp_path_factory.mktemp("hostile"), class_names=[ESCAPE_CLASS, FORGING_CLASS])


def test_control_characters_of_class_names_and_paths_are_escaped_so_each_image_is_one_line(
    hostile_adapter, image_files, tmp_path, capsys
):
    odd = tmp_path / "odd\tname\x1b[1m.png"
    odd.write_bytes(open(image_files[0], "rb").read())
    files = [str(odd), image_files[1]]
    assert main(["predict", "--adapter", hostile_adapter, "--top-k", "2", *files]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    lines = out.splitlines()
    assert len(lines) == 2
    assert [line.split("\t") for line in lines][0][0] == str(tmp_path / "odd\\tname\\x1b[1m.png")
    for line in lines:
        fields = line.split("\t")
        assert len(fields) == 5  # path, then (label, score) twice
        assert set(fields[1::2]) == {"cat\\x1b]0;owned\\x07\\x1b[2J", "dog\\tforged.png\\tdog\\t0.11\\nx"}
    # --json stays exact
    assert main(["predict", "--adapter", hostile_adapter, "--json", *files]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in records] == files
    assert {r["predictions"][0]["label"] for r in records} <= {ESCAPE_CLASS, FORGING_CLASS}


def test_an_error_line_escapes_the_control_characters_of_the_path_it_names(adapter, image_files, tmp_path, capsys):
    missing = str(tmp_path / "gone\x1b]0;owned\x07.png")
    assert main(["predict", "--adapter", adapter, missing]) == 1
    assert main(["predict", "--adapter", adapter, "--classes-file", missing, *image_files]) == 2
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err
    assert len(err.splitlines()) == 2
    assert all("gone\\x1b]0;owned\\x07.png" in line for line in err.splitlines())


@pytest.mark.parametrize(
    "encoding, content",
    [("utf-8-sig", "zebra\r\nokapi\r\n"), ("utf-16", "zebra\r\nokapi\r\n"), ("utf-8", " zebra\rokapi\n\n")],
    ids=["notepad-utf8-bom-crlf", "utf16-bom", "cr"],
)
def test_a_classes_file_with_a_byte_order_mark_or_crlf_reads_clean_names(tmp_path, encoding, content):
    classes_file = tmp_path / "classes.txt"
    classes_file.write_bytes(content.encode(encoding))
    assert read_classes_file(classes_file) == ["zebra", "okapi"]


def test_predict_with_a_notepad_classes_file_classifies_as_with_the_same_classes_given(
    adapter, image_files, tmp_path, capsys
):
    classes_file = tmp_path / "classes.txt"
    classes_file.write_bytes("zebra\r\nokapi\r\n".encode("utf-8-sig"))
    assert main(["predict", "--adapter", adapter, "--classes-file", str(classes_file), "--json", *image_files]) == 0
    from_file = capsys.readouterr().out
    assert main(["predict", "--adapter", adapter, "--classes", "zebra", "okapi", "--json", "--", *image_files]) == 0
    assert from_file == capsys.readouterr().out  # the same classes, so the same scores


@pytest.mark.parametrize(
    "content, expected",
    [
        ("zebra\nokapi\n".encode("utf-16-le"), "holds NUL characters: it looks like UTF-16 or UTF-32 without a byte"),
        ("zébra\nokapi\n".encode("latin-1"), "is not UTF-8 text (byte 0xe9 at position 1); save it as UTF-8"),
    ],
    ids=["utf16-without-bom", "latin-1"],
)
def test_a_classes_file_in_another_encoding_is_refused_in_one_line_naming_it(
    adapter, image_files, tmp_path, capsys, content, expected
):
    classes_file = tmp_path / "classes.txt"
    classes_file.write_bytes(content)
    assert main(["predict", "--adapter", adapter, "--classes-file", str(classes_file), *image_files]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and expected in err[0]


def test_an_image_url_whose_server_never_answers_is_one_error_line_and_the_others_are_classified(
    adapter, image_files, capsys
):
    import socket

    with socket.socket() as server:  # accepts connections (the kernel's backlog) and never answers
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        url = f"http://127.0.0.1:{server.getsockname()[1]}/image.png"
        code = main(["predict", "--adapter", adapter, "--timeout", "0.5", image_files[0], url, image_files[1]])
    assert code == 1
    captured = capsys.readouterr()
    assert [line.split("\t")[0] for line in captured.out.splitlines()] == [image_files[0], image_files[1]]
    assert captured.err.splitlines() == [f"error: Cannot read image '{url}': the server did not answer within 0.5 s"]


def test_image_urls_are_waited_on_10_s_to_connect_and_30_s_per_read_by_default(monkeypatch):
    from huggingface_hub.utils import httpx

    from maple_peft.loading import load_image

    seen = {}

    def stream(method, url, timeout, **kwargs):
        seen["timeout"] = timeout
        raise httpx.ReadTimeout("timed out")

    monkeypatch.setattr(httpx, "stream", stream)
    with pytest.raises(ValueError, match="did not answer within 30 s"):
        load_image("https://example.com/image.png")
    assert (seen["timeout"].connect, seen["timeout"].read) == (10.0, 30.0)


@pytest.fixture
def odd_server():
    """A local server whose paths misbehave: /trickle sends a byte every 0.05 s for 10 s, /announced announces 5000
    bytes, /endless sends 5000 bytes without announcing them, /image.png is a real PNG."""
    import io
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (4, 3), (200, 10, 10)).save(png, format="PNG")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(200)
            if self.path == "/image.png":
                self.send_header("Content-Length", str(len(png.getvalue())))
                self.end_headers()
                self.wfile.write(png.getvalue())
                return
            if self.path == "/announced":
                self.send_header("Content-Length", "5000")
            self.end_headers()
            try:
                if self.path == "/trickle":
                    for _ in range(200):
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        time.sleep(0.05)
                else:
                    self.wfile.write(b"x" * 5000)
            except OSError:  # the client hung up, as it should
                pass

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_image_download_is_cut_off_past_its_deadline_or_size(odd_server):
    from maple_peft.loading import load_image

    assert load_image(f"{odd_server}/image.png", max_bytes=1000).size == (4, 3)
    with pytest.raises(ValueError, match=r"/trickle': the download took longer than 0.3 s \(\d+ bytes received\)"):
        load_image(f"{odd_server}/trickle", timeout=5, deadline=0.3)
    with pytest.raises(ValueError, match="the server announces 5000 bytes, more than the 1000 an image may have"):
        load_image(f"{odd_server}/announced", max_bytes=1000)
    with pytest.raises(ValueError, match="the server sent more than the 1000 bytes an image may have"):
        load_image(f"{odd_server}/endless", max_bytes=1000)


def test_a_pickle_only_adapter_or_base_model_is_refused_in_one_line_without_unpickling(
    adapter, saved_base, image_files, tmp_path, capsys, monkeypatch
):
    import shutil

    import torch
    from safetensors.torch import load_file

    pickle_adapter = tmp_path / "pickle-adapter"
    shutil.copytree(adapter, pickle_adapter)
    torch.save(load_file(str(pickle_adapter / "adapter_model.safetensors")), pickle_adapter / "adapter_model.bin")
    (pickle_adapter / "adapter_model.safetensors").unlink()
    pickle_base = tmp_path / "pickle-base"
    shutil.copytree(saved_base, pickle_base)
    torch.save(load_file(str(pickle_base / "model.safetensors")), pickle_base / "pytorch_model.bin")
    (pickle_base / "model.safetensors").unlink()

    def unpickled(*args, **kwargs):
        raise AssertionError("a pickle was opened")

    monkeypatch.setattr(torch, "load", unpickled)
    for argv, name in [
        (["--adapter", str(pickle_adapter)], "adapter_model.bin"),
        (["--adapter", adapter, "--base-model", str(pickle_base)], "pytorch_model.bin"),
    ]:
        assert main(["predict", *argv, *image_files]) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        err = captured.err.splitlines()
        assert len(err) == 1 and f"only as the pickle {name}; only safetensors weights are read" in err[0]
        assert "convert it once: python -c" in err[0]


@pytest.mark.parametrize(
    "peft_type, shown",
    [("MAPLE_V9", '"MAPLE_V9"'), ("maple", '"maple"'), (None, "null"), (["MAPLE"], '["MAPLE"]')],
    ids=["unknown", "lower-case", "null", "list"],
)
def test_an_unknown_peft_type_is_one_line_naming_the_field_and_the_value(
    adapter, image_files, tmp_path, capsys, peft_type, shown
):
    import shutil

    crafted = tmp_path / "crafted"
    shutil.copytree(adapter, crafted)
    config = json.loads((crafted / "adapter_config.json").read_text())
    config["peft_type"] = peft_type
    (crafted / "adapter_config.json").write_text(json.dumps(config))
    for classes in ([], ["--classes", "zebra", "okapi", "--"]):  # the adapter's class names, or given ones
        assert main(["predict", "--adapter", str(crafted), *classes, *image_files]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1
        assert f'has peft_type {shown}, which is not a PEFT method; a MaPLe adapter has "peft_type": "MAPLE"' in err[0]


def test_a_pickle_only_adapter_from_the_hub_cache_is_refused_without_unpickling(adapter, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file

    snapshot = tmp_path / "cache" / "models--someone--pickled" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (tmp_path / "cache" / "models--someone--pickled" / "refs").mkdir()
    (tmp_path / "cache" / "models--someone--pickled" / "refs" / "main").write_text("0" * 40)
    shutil.copy(Path(adapter) / "adapter_config.json", snapshot)
    torch.save(load_file(str(Path(adapter) / "adapter_model.safetensors")), snapshot / "adapter_model.bin")
    with pytest.raises(ValueError, match="'someone/pickled' holds its weights only as the pickle adapter_model.bin"):
        PromptClassifier.from_pretrained("someone/pickled", cache_dir=str(tmp_path / "cache"), local_files_only=True)
