"""The scripts and the one-line classifier on the other backbones: a SigLIP 2 run of train.py (NaFlex inputs,
sigmoid scores) end to end, and saved adapters of MetaCLIP 2 and SigLIP loaded in one line and used from the command
line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import TOKENIZER_DIRS
from peft import get_peft_model
from PIL import Image
from test_train import REPO, run_in_process

import maple_peft
from maple_peft.training.data import ImageClassificationDataset, PatchTransforms, image_transforms
from maple_peft.training.data.records import ImageRecord, ImageRecords
from maple_peft.training.experiment import image_batch


@pytest.fixture(scope="module")
def family_assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("family_assets")
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import make_smoke_assets

        assert make_smoke_assets.main(["--output_dir", str(root), "--family", "metaclip_2", "siglip", "siglip2"]) == 0
    finally:
        sys.path.remove(str(REPO / "examples"))
    return root


def test_siglip2_smoke_run_trains_evaluates_and_writes_a_loadable_adapter(family_assets, tmp_path):
    out = tmp_path / "run"
    run_in_process(
        "train.py",
        "--config", REPO / "examples" / "configs" / "smoke.yaml",
        "--model_name_or_path", family_assets / "tiny-siglip2",
        "--data_dir", family_assets / "data",
        "--output_dir", out,
        "--epochs", "2", "--no_plots",
    )  # fmt: skip
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["backbone"] == "siglip2" and config["text_prompt_start"] == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"base", "novel"} <= set(metrics["results"]) and "harmonic_mean" in metrics
    assert set(metrics["zero_shot"]["results"]) == {"base", "novel"}
    clf = maple_peft.PromptClassifier.from_pretrained(out)
    images = sorted((family_assets / "data" / "test").glob("*/*.png"))[:3]
    scores = clf.predict_proba([str(p) for p in images])
    assert len(scores) == 3 and all(0 < row[0]["score"] < 1 for row in scores)
    assert sum(r["score"] for r in scores[0]) != pytest.approx(1.0, abs=1e-3)  # sigmoid scores, not a softmax
    result = run_in_process(
        "evaluate.py", "--adapter", out, "--dataset_name", "imagefolder", "--data_dir", family_assets / "data",
        "--subset", "novel", "--num_workers", "0",
    )  # fmt: skip
    assert json.loads(result.stdout.strip().splitlines()[-1])["num_classes"] == 3


@pytest.mark.parametrize("family", ["metaclip_2", "siglip"])
def test_saved_adapter_loads_in_one_line_and_predicts_from_the_command_line(family, family_assets, tmp_path, capsys):
    base_dir = family_assets / f"tiny-{family}"
    base = maple_peft.loading.load_base_model(base_dir)
    config = maple_peft.MaPLeConfig(depth=2, tokenizer_name_or_path=str(base_dir), class_names=["forest", "highway"])
    get_peft_model(base, config).save_pretrained(tmp_path / "adapter")
    clf = maple_peft.PromptClassifier.from_pretrained(tmp_path / "adapter")
    assert clf.backbone.family == family and clf.class_names == ["forest", "highway"]
    image = sorted((family_assets / "data" / "test").glob("*/*.png"))[0]
    expected = clf.predict_proba(str(image))
    from maple_peft.cli import main

    assert main(["predict", "--adapter", str(tmp_path / "adapter"), str(image), "--top-k", "2"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1].split("\t")
    assert line[1] == expected[0]["label"] and float(line[2]) == pytest.approx(expected[0]["score"], abs=1e-4)


def test_patch_transforms_give_the_processors_inputs_and_collate_into_its_batch(family_assets):
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(family_assets / "tiny-siglip2")
    transforms = image_transforms(processor)
    assert isinstance(transforms, PatchTransforms) and transforms.image_size == (32, 32)
    paths = sorted((family_assets / "data" / "test").glob("*/*.png"))[:2]
    images = [Image.open(p).convert("RGB").resize(size) for p, size in zip(paths, [(40, 40), (20, 50)])]
    expected = processor(images=images, return_tensors="pt")
    test = transforms.test()
    items = [test(image) for image in images]
    batch = torch.utils.data.default_collate([{**item, "labels": 0} for item in items])
    for key in ("pixel_values", "pixel_attention_mask", "spatial_shapes"):
        assert torch.equal(batch[key], expected[key]), key
    assert set(image_batch(batch)) == {"pixel_values", "pixel_attention_mask", "spatial_shapes"}
    # training items: augmented, same layout, and reproducible under a seeded RNG
    records = ImageRecords([ImageRecord(str(p), i, "ab"[i]) for i, p in enumerate(paths)], ["a", "b"])
    dataset = ImageClassificationDataset(records, transforms.train())
    torch.manual_seed(0)
    first = dataset[0]
    torch.manual_seed(0)
    assert torch.equal(first["pixel_values"], dataset[0]["pixel_values"])
    assert first["pixel_values"].shape == expected["pixel_values"][0].shape and first["labels"] == 0


def test_clip_family_processors_keep_the_plain_transforms(family_assets):
    from transformers import AutoImageProcessor

    for family in ("metaclip_2", "siglip"):
        processor = AutoImageProcessor.from_pretrained(family_assets / f"tiny-{family}")
        transforms = image_transforms(processor)
        image = Image.new("RGB", (50, 40), "red")
        expected = processor(images=[image], return_tensors="pt")["pixel_values"][0]
        torch.testing.assert_close(transforms.test()(image), expected, atol=1e-5, rtol=0)
    assert Path(TOKENIZER_DIRS["siglip"]).is_dir()


def test_from_pretrained_refuses_a_base_model_of_another_family_before_loading_it(family_assets, tmp_path):
    base_dir = family_assets / "tiny-metaclip_2"
    config = maple_peft.MaPLeConfig(depth=2, tokenizer_name_or_path=str(base_dir), class_names=["forest", "highway"])
    get_peft_model(maple_peft.loading.load_base_model(base_dir), config).save_pretrained(tmp_path / "adapter")
    with pytest.raises(
        ValueError, match=r"trained on a MetaCLIP 2 model \(backbone='metaclip_2'\).*is a SigLIP model"
    ):
        maple_peft.PromptClassifier.from_pretrained(
            tmp_path / "adapter", base_model_name_or_path=family_assets / "tiny-siglip"
        )
