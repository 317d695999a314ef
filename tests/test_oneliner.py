"""`PromptClassifier.from_pretrained`: a saved adapter classifies images in one line (local folders and a Hub cache)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TOKENIZER_DIR, tiny_clip
from peft import PeftModel, get_peft_model
from PIL import Image
from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

from maple_peft import MaPLeConfig, PromptClassifier

CLASSES = ["AnnualCrop", "Forest", "sea_lake", "River"]


def images(n=3, size=40, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def save_adapter(base_path, path, class_names=CLASSES, seed=1):
    """An adapter with random, large prompts on the CLIP saved at `base_path`, saved to `path`."""
    model = get_peft_model(
        CLIPModel.from_pretrained(base_path),
        MaPLeConfig(depth=2, tokenizer_name_or_path=TOKENIZER_DIR, class_names=class_names),
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def adapter(saved_base, tmp_path_factory):
    return save_adapter(saved_base, tmp_path_factory.mktemp("adapter"))


def edit_config(path, **changes):
    config_file = path / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config.update(changes)
    config_file.write_text(json.dumps(config))


def copy_adapter(adapter, tmp_path, **changes):
    path = tmp_path / "adapter-copy"
    shutil.copytree(adapter, path)
    edit_config(path, **changes)
    return path


def test_class_names_are_saved_in_adapter_config(adapter):
    config = json.loads(open(f"{adapter}/adapter_config.json").read())
    assert config["class_names"] == CLASSES


@pytest.mark.parametrize("bad", ["cat", ["cat", ""], ["cat", 3]])
def test_config_refuses_class_names_that_are_not_a_list_of_names(bad):
    with pytest.raises(ValueError, match="class_names"):
        MaPLeConfig(class_names=bad)


def test_one_liner_predicts_like_the_long_form(adapter, saved_base):
    clf = PromptClassifier.from_pretrained(adapter)
    assert not clf.training and clf.class_names == CLASSES

    base = CLIPModel.from_pretrained(saved_base)
    model = PeftModel.from_pretrained(base, adapter).eval()
    processor = CLIPImageProcessor.from_pretrained(saved_base)
    long_form = PromptClassifier(model, CLIPTokenizer.from_pretrained(saved_base), CLASSES)

    batch = images()
    pixel_values = processor(images=batch, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = long_form(pixel_values)
        torch.testing.assert_close(clf(pixel_values), expected, atol=1e-5, rtol=1e-5)
    assert clf.predict(batch) == long_form.predict(batch, processor)
    assert clf.predict(batch) == [CLASSES[i] for i in expected.argmax(-1).tolist()]
    top = clf.predict_proba(batch, top_k=2)
    probabilities = expected.softmax(-1)
    for row, probs in zip(top, probabilities):
        assert [r["label"] for r in row] == [CLASSES[i] for i in probs.topk(2).indices.tolist()]
        assert [r["score"] for r in row] == pytest.approx(probs.topk(2).values.tolist(), abs=1e-5)


def test_one_liner_with_other_class_names_and_dtype(adapter):
    clf = PromptClassifier.from_pretrained(adapter, ["zebra", "okapi"], dtype=torch.bfloat16)
    assert clf.class_names == ["zebra", "okapi"]
    assert clf.clip.visual_projection.weight.dtype == torch.bfloat16
    assert set(clf.predict(images(2))) <= {"zebra", "okapi"}


def test_save_pretrained_after_set_class_names_round_trips_the_new_names(adapter, tmp_path):
    clf = PromptClassifier.from_pretrained(adapter)
    clf.set_class_names(["zebra", "okapi", "giraffe"])
    clf.save_pretrained(tmp_path / "mine")
    saved = json.loads((tmp_path / "mine" / "adapter_config.json").read_text())
    assert saved["class_names"] == ["zebra", "okapi", "giraffe"]
    # the live model's config is left as it was
    assert clf.model.peft_config["default"].class_names == CLASSES
    again = PromptClassifier.from_pretrained(tmp_path / "mine")
    assert again.class_names == ["zebra", "okapi", "giraffe"]
    batch = images(2)
    for loaded, live in zip(again.predict_proba(batch), clf.predict_proba(batch)):
        assert [r["label"] for r in loaded] == [r["label"] for r in live]
        assert [r["score"] for r in loaded] == pytest.approx([r["score"] for r in live], abs=1e-6)


def test_adapter_without_class_names_needs_them(saved_base, tmp_path):
    path = save_adapter(saved_base, tmp_path / "no-classes", class_names=None)
    with pytest.raises(ValueError, match="has no class_names in its adapter_config.json; pass class_names="):
        PromptClassifier.from_pretrained(path)
    assert PromptClassifier.from_pretrained(path, ["cat", "dog"]).class_names == ["cat", "dog"]


def test_adapter_naming_no_base_model_says_what_to_pass(adapter, tmp_path):
    path = copy_adapter(adapter, tmp_path, base_model_name_or_path=None)
    with pytest.raises(ValueError, match="names no base model.*pass base_model_name_or_path="):
        PromptClassifier.from_pretrained(path)


def test_missing_base_model_path_is_named(adapter, tmp_path, saved_base):
    missing = str(tmp_path / "gone" / "tiny-clip")
    path = copy_adapter(adapter, tmp_path, base_model_name_or_path=missing)
    with pytest.raises(OSError, match="Cannot load the base model .*gone.*adapter's config.*base_model_name_or_path="):
        PromptClassifier.from_pretrained(path)
    # the base can be given instead
    clf = PromptClassifier.from_pretrained(path, base_model_name_or_path=saved_base)
    assert clf.predict(images(1)) == PromptClassifier.from_pretrained(adapter).predict(images(1))


def test_missing_adapter_is_named(tmp_path):
    with pytest.raises(OSError, match="adapter_name_or_path=.*nowhere"):
        PromptClassifier.from_pretrained(tmp_path / "nowhere")


def test_base_model_of_other_widths_is_refused_naming_both(adapter, tmp_path):
    other = tmp_path / "wide-clip"
    tiny_clip("wide_text").save_pretrained(other)
    with pytest.raises(
        ValueError, match="text width 32 and vision width 48.*wide-clip.*text width 64 and vision width 40"
    ):
        PromptClassifier.from_pretrained(adapter, base_model_name_or_path=other)


def test_base_without_image_processor_falls_back_to_clip_defaults_with_a_warning(adapter, saved_base, tmp_path):
    base = tmp_path / "no-processor"
    shutil.copytree(saved_base, base)
    (base / "preprocessor_config.json").unlink()
    with pytest.warns(UserWarning, match="has no image processor.*32 px"):
        clf = PromptClassifier.from_pretrained(adapter, base_model_name_or_path=base)
    assert clf.image_processor.crop_size == {"height": 32, "width": 32}
    assert clf.predict(images(2)) == PromptClassifier.from_pretrained(adapter).predict(images(2))


def _python_block(text):
    start = text.index("```python\n") + len("```python\n")
    return text[start : text.index("```", start)]


def test_saved_adapter_card_shows_a_one_liner_that_runs(adapter, tmp_path):
    card = (Path(adapter) / "README.md").read_text(encoding="utf-8")
    code = _python_block(card[card.index("## How to use") :])
    assert 'PromptClassifier.from_pretrained("path/or/hub-id/of/this/adapter")' in code
    image = tmp_path / "image.jpg"
    images(1)[0].save(image)
    code = code.replace("path/or/hub-id/of/this/adapter", adapter).replace("image.jpg", str(image))
    exec(compile(code, "card", "exec"), {})
    assert "maple-peft predict --adapter" in card


def test_card_of_an_adapter_without_class_names_passes_some(saved_base, tmp_path):
    path = save_adapter(saved_base, tmp_path / "no-classes", class_names=None)
    code = _python_block((Path(path) / "README.md").read_text(encoding="utf-8"))
    assert 'from_pretrained("path/or/hub-id/of/this/adapter", ["cat", "dog"])' in code


def test_card_template_how_to_use_is_the_one_liner_then_predict():
    from jinja2 import Template

    template = (Path(__file__).parents[1] / "model_cards" / "adapter_card.md").read_text(encoding="utf-8")
    section = template[template.index("## How to use") : template.index("## Training recipe")]
    text = Template(section).render(adapter_id="me/maple-eurosat", base_model_id="b", class_names_line="")
    code = _python_block(text)
    assert code.splitlines()[0].startswith("import maple_peft")
    assert 'clf = maple_peft.PromptClassifier.from_pretrained("me/maple-eurosat")' in code
    assert code.index("from_pretrained") < code.index("clf.predict(") < code.index("clf.predict_proba(")
    assert "maple-peft predict --adapter me/maple-eurosat image.jpg" in text


def _cache_repo(cache, repo_id, files_from, revision="0" * 40):
    """Lay out a model repository in a Hugging Face cache as the Hub client leaves it after a download."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(files_from, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


def test_one_liner_from_hub_ids_in_offline_mode(adapter, saved_base, tmp_path, monkeypatch):
    import huggingface_hub

    cache = tmp_path / "hub"
    _cache_repo(cache, "user/tiny-clip", saved_base)
    _cache_repo(cache, "user/maple-tiny", adapter, revision="1" * 40)
    edit_config(
        cache / "models--user--maple-tiny" / "snapshots" / ("1" * 40), base_model_name_or_path="user/tiny-clip"
    )
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))

    clf = PromptClassifier.from_pretrained("user/maple-tiny")
    assert clf.class_names == CLASSES
    local = PromptClassifier.from_pretrained(adapter)
    batch = images(2)
    with torch.no_grad():
        pixel_values = local.image_processor(images=batch, return_tensors="pt")["pixel_values"]
        torch.testing.assert_close(clf(pixel_values), local(pixel_values), atol=1e-6, rtol=1e-6)
    assert clf.predict(batch) == local.predict(batch)
    # the same through an explicit cache_dir, used for every download
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    assert PromptClassifier.from_pretrained("user/maple-tiny", cache_dir=str(cache)).predict(batch) == clf.predict(
        batch
    )


def test_revision_selects_the_adapter_and_the_config_revision_the_base(adapter, saved_base, tmp_path, monkeypatch):
    import huggingface_hub

    cache = tmp_path / "hub"
    base_revision, first, second = "a" * 40, "b" * 40, "c" * 40
    # the base exists only at the revision the adapter's config records (no refs/main for it)
    shutil.copytree(saved_base, cache / "models--user--tiny-clip" / "snapshots" / base_revision)
    _cache_repo(cache, "user/maple-tiny", adapter, revision=first)
    shutil.copytree(adapter, cache / "models--user--maple-tiny" / "snapshots" / second)
    for revision, names in ((first, CLASSES), (second, ["zebra", "okapi"])):
        snapshot = cache / "models--user--maple-tiny" / "snapshots" / revision
        edit_config(snapshot, base_model_name_or_path="user/tiny-clip", revision=base_revision, class_names=names)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    assert PromptClassifier.from_pretrained("user/maple-tiny", cache_dir=str(cache)).class_names == CLASSES
    clf = PromptClassifier.from_pretrained("user/maple-tiny", revision=second, cache_dir=str(cache))
    assert clf.class_names == ["zebra", "okapi"]
    with pytest.raises(OSError, match="Cannot load the base model 'user/tiny-clip'"):
        PromptClassifier.from_pretrained("user/maple-tiny", base_model_revision="d" * 40, cache_dir=str(cache))
