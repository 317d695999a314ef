"""The README and the pages under docs/: every Python block runs as written on a tiny offline model, with only the
model ids, adapters and image paths it names swapped for local stand-ins."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import TOKENIZER_DIR, tiny_clip_config
from PIL import Image
from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

from maple_peft import methods

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: what a block may name, and the stand-in it runs with: "model" a tiny CLIP (deep enough for depth=9), "adapter" a
#: MaPLe adapter on it with the smoke run's classes, "image" a generated image
STAND_INS = {
    "openai/clip-vit-base-patch16": "model",
    "outputs/smoke": "adapter",
    "smoke_assets/data/test/forest/test_001_0000.png": "image",
    "smoke_assets/data/test/pasture/test_005_0000.png": "image",
    "cat.jpg": "image",
    "dog.jpg": "image",
}
SMOKE_CLASSES = ["annual_crop", "forest", "herbaceous_vegetation", "highway", "industrial", "pasture"]


def python_blocks() -> list[tuple[str, int, str]]:
    """(page, line, code) of every ```python block of the README and of docs/*.md."""
    blocks = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in re.finditer(r"(?ms)^```python\n(.*?)^```", text):
            blocks.append((page.relative_to(REPO).as_posix(), text.count("\n", 0, match.start()) + 2, match.group(1)))
    return blocks


BLOCKS = python_blocks()


def named_resources(code: str) -> set[str]:
    """The string constants of `code` that name a model, an adapter or a file to read: a Hub id or a path (they hold a
    `/`) or an image file name."""
    return {
        node.value
        for node in ast.walk(ast.parse(code))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and ("/" in node.value or node.value.lower().endswith(IMAGE_SUFFIXES))
        and " " not in node.value
    }


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> dict[str, str]:
    import torch
    from peft import get_peft_model

    import maple_peft

    root = tmp_path_factory.mktemp("docs")
    model_dir = root / "tiny-clip"
    torch.manual_seed(0)
    CLIPModel(tiny_clip_config(text_layers=9, vision_layers=9)).save_pretrained(model_dir)
    CLIPTokenizer.from_pretrained(TOKENIZER_DIR).save_pretrained(model_dir)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(model_dir)
    adapter_dir = root / "adapter"
    config = maple_peft.MaPLeConfig(depth=2, class_names=SMOKE_CLASSES)
    get_peft_model(CLIPModel.from_pretrained(model_dir), config).save_pretrained(adapter_dir)
    image = root / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(image)
    made = {"model": str(model_dir), "adapter": str(adapter_dir), "image": str(image)}
    return {name: made[kind] for name, kind in STAND_INS.items()}


def test_the_readme_has_python_blocks_and_every_stand_in_is_still_named_by_one():
    assert {page for page, _, _ in BLOCKS} >= {"README.md"}
    named = set().union(*(named_resources(code) for _, _, code in BLOCKS))
    assert set(STAND_INS) <= named, f"stand-ins no block names any more: {sorted(set(STAND_INS) - named)}"


@pytest.fixture(scope="module")
def run_block(stand_ins, tmp_path_factory):
    """Runs a block once, in a folder of its own (where what it writes lands), and returns its namespace and folder."""
    done: dict[tuple[str, int], tuple[dict, Path]] = {}

    def run(page: str, line: int, code: str) -> tuple[dict, Path]:
        if (page, line) not in done:
            unknown = sorted(named_resources(code) - set(STAND_INS))
            assert not unknown, (
                f"{page}, the block at line {line} names {unknown}: use a name of tests/test_docs.py's STAND_INS, or "
                "add a stand-in for it there"
            )
            for name in sorted(STAND_INS, key=len, reverse=True):
                code = code.replace(f'"{name}"', f'"{stand_ins[name]}"')
            folder = tmp_path_factory.mktemp("block")
            namespace = {"__name__": "__main__"}
            with pytest.MonkeyPatch.context() as patch:
                patch.chdir(folder)
                exec(compile(code, f"{page}:{line}", "exec"), namespace)
            done[page, line] = namespace, folder
        return done[page, line]

    return run


@pytest.mark.parametrize("page, line, code", BLOCKS, ids=[f"{page}:{line}" for page, line, _ in BLOCKS])
def test_every_python_block_of_the_docs_runs_as_written(page, line, code, run_block):
    run_block(page, line, code)


def test_the_readme_training_block_trains_saves_and_reloads_an_adapter(run_block):
    ((page, line, code),) = [block for block in BLOCKS if block[0] == "README.md" and "loss.backward()" in block[2]]
    namespace, folder = run_block(page, line, code)
    assert namespace["pixel_values"].shape == (2, 3, 32, 32)  # built by the processor from the images
    assert namespace["loss"].ndim == 0 and namespace["loss"].requires_grad
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {
        p.name for p in (folder / "my-maple-adapter").iterdir()
    }
    assert namespace["clf"].class_names == ["cat", "golden_retriever"]  # reloaded with the classes it was trained on


def _section(text: str, title: str) -> str:
    start = text.index(f"\n{title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_the_two_commands_are_two_and_the_test_command_is_what_ci_runs():
    section = _section((REPO / "README.md").read_text(encoding="utf-8"), "## The two commands")
    commands = re.findall(r"(?ms)^```bash\n(.*?)^```", section)
    assert len(commands) == 2 and all(len(command.strip().splitlines()) == 1 for command in commands)
    main_job, tests = (command.strip() for command in commands)
    assert main_job.startswith("python3 -m venv") and "examples/train.py" in main_job  # sets up, then runs
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert tests.startswith("python3 -m venv") and tests.endswith(ci)  # sets up, then lints and tests as CI does


def test_the_readme_smoke_run_is_the_one_smoke_yaml_names_and_the_recipes_no_method_owns_are_documented():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    smoke = (REPO / "examples" / "configs" / "smoke.yaml").read_text(encoding="utf-8")
    commented = [line.lstrip("# ").strip() for line in smoke.splitlines() if "examples/train.py" in line]
    assert commented and all(command.split(" && ")[-1] in readme for command in commented)
    # the methods' recipes are listed by `maple-peft methods` (tests/test_method_registry.py); the page points to it
    # and names the others
    training = (REPO / "docs" / "training.md").read_text(encoding="utf-8")
    owned = {f"{recipe}.yaml" for method in methods.registry().values() for recipe in method.recipes}
    others = [p.name for p in sorted((REPO / "examples" / "configs").glob("*.yaml")) if p.name not in owned]
    assert "smoke.yaml" in others and all(name in training for name in others)
    assert "`maple-peft methods`" in training
