"""`maple-peft predict`: one line per image, one error line per unreadable image, the others still classified."""

from __future__ import annotations

import json

import pytest
from test_oneliner import images, save_adapter

from maple_peft import PromptClassifier
from maple_peft.cli import main


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
