"""examples/make_smoke_assets.py writes the offline smoke assets and never deletes a user's files."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "make_smoke_assets.py"


@pytest.fixture(scope="module")
def smoke():
    spec = importlib.util.spec_from_file_location("make_smoke_assets_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(root: Path) -> list[str]:
    return ["--output_dir", str(root), "--train_per_class", "1", "--test_per_class", "1"]


def test_rerunning_replaces_its_own_assets(smoke, tmp_path):
    assert smoke.main(_args(tmp_path)) == 0
    assert (tmp_path / "tiny-clip" / "config.json").is_file()
    first = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "data").rglob("*.png"))
    assert len(first) == 2 * len(smoke.CLASSES)

    assert smoke.main(["--output_dir", str(tmp_path), "--train_per_class", "2", "--test_per_class", "1"]) == 0
    assert len(list((tmp_path / "data" / "train").rglob("*.png"))) == 2 * len(smoke.CLASSES)


def test_a_users_file_in_the_data_folder_is_kept_and_the_run_refused(smoke, tmp_path, capsys):
    assert smoke.main(_args(tmp_path)) == 0
    mine = tmp_path / "data" / "train" / "forest" / "holiday.jpg"
    mine.write_bytes(b"my photo")

    assert smoke.main(_args(tmp_path)) == 1
    assert mine.read_bytes() == b"my photo"
    assert "holiday.jpg" in capsys.readouterr().err


@pytest.mark.parametrize("folder", ["tiny-clip", "data"])
def test_a_non_empty_folder_it_did_not_create_is_refused_untouched(smoke, tmp_path, capsys, folder):
    theirs = tmp_path / folder / "notes.txt"
    theirs.parent.mkdir()
    theirs.write_text("mine")

    assert smoke.main(_args(tmp_path)) == 1
    assert "was not written by make_smoke_assets.py" in capsys.readouterr().err
    assert theirs.read_text() == "mine"
    assert sorted(p.name for p in theirs.parent.iterdir()) == ["notes.txt"]


def test_the_command_prints_its_one_line_and_no_third_party_notice(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *_args(tmp_path / "assets")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("Wrote ")
    assert "torchvision" not in done.stderr, done.stderr
    assert done.stderr.strip() == ""
