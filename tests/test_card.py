import importlib.resources
import json
import re

import pytest
from huggingface_hub import ModelCard

from maple_peft.training.card import CARD_TAGS, build_model_card, render_model_card, write_model_card
from maple_peft.training.metrics import build_run_metrics, classification_metrics

BASE_MODEL = "openai/clip-vit-base-patch16"
PEFT_CONFIG = {"peft_type": "MAPLE", "n_ctx": 2, "depth": 9, "prompt_init": "a photo of a"}
TRAIN_CONFIG = {"lr": 0.0035, "epochs": 5, "batch_size": 4, "warmup_epochs": 1, "warmup_lr": 1e-5}


def _metrics(setting="base2novel", zero_shot=True, base_model=BASE_MODEL):
    base = classification_metrics([0, 1, 1, 2, 2, 0], [0, 1, 0, 2, 2, 1], ["AnnualCrop", "Forest", "River"])
    novel = classification_metrics([0, 1, 1, 0], [0, 1, 0, 1], ["Sea Lake", "Highway"])
    zs_base = classification_metrics([0, 1, 2, 2, 2, 0], [0, 1, 0, 2, 2, 1], ["AnnualCrop", "Forest", "River"])
    if setting == "base2novel":
        results, zs_results = {"base": base, "novel": novel}, {"base": zs_base, "novel": novel}
    else:
        results, zs_results = {"imagenet": base, "dtd": novel}, {"imagenet": zs_base, "dtd": novel}
    return build_run_metrics(
        base_model=base_model,
        dataset="eurosat" if setting == "base2novel" else "imagenet",
        setting=setting,
        seed=1,
        num_shots=16,
        results=results,
        train_config=TRAIN_CONFIG,
        peft_config=PEFT_CONFIG,
        time_seconds=600.0,
        zero_shot_results=zs_results if zero_shot else None,
    )


def test_card_metadata_parses_back_with_the_hub_fields():
    metrics = _metrics()
    text = render_model_card(metrics, PEFT_CONFIG, TRAIN_CONFIG, repo_id="me/maple-eurosat")

    data = ModelCard(text).data
    assert data.library_name == "peft"
    assert data.base_model == BASE_MODEL
    assert data.pipeline_tag == "zero-shot-image-classification"
    assert set(CARD_TAGS) <= set(data.tags)
    assert {"maple", "prompt-learning", "clip", "peft", "zero-shot-image-classification"} <= set(data.tags)
    assert data.datasets == ["eurosat"]
    assert data.metrics == ["accuracy"]
    assert data.license == "apache-2.0"
    assert data.model_name == "maple-eurosat"
    accuracies = {
        (r.dataset_type, r.dataset_split): r.metric_value for r in data.eval_results if r.metric_type == "accuracy"
    }
    assert accuracies == {
        ("eurosat", "base"): round(metrics["results"]["base"]["accuracy"], 2),
        ("eurosat", "novel"): round(metrics["results"]["novel"]["accuracy"], 2),
    }
    (hm,) = [r for r in data.eval_results if r.metric_type == "harmonic_mean"]
    assert hm.metric_value == round(metrics["harmonic_mean"], 2)
    assert {r.task_type for r in data.eval_results} == {"zero-shot-image-classification"}


def test_card_shows_how_to_load_the_adapter_with_maple_imported_first():
    text = render_model_card(_metrics(), PEFT_CONFIG, TRAIN_CONFIG, repo_id="me/maple-eurosat")

    assert "import maple_peft" in text
    assert text.index("import maple_peft") < text.index("PeftModel.from_pretrained")
    assert f'AutoModel.from_pretrained("{BASE_MODEL}")' in text
    assert 'PeftModel.from_pretrained(base, "me/maple-eurosat")' in text
    assert "maple_peft.PromptClassifier(model, tokenizer, class_names)" in text
    assert 'class_names = ["AnnualCrop", "Forest", "River", "Sea Lake", "Highway"]' in text


def test_card_shows_recipe_results_with_zero_shot_versions_and_citation():
    metrics = _metrics()
    text = render_model_card(metrics, PEFT_CONFIG, TRAIN_CONFIG, repo_id="me/maple-eurosat")

    for row in (
        "| Context tokens (n_ctx) | 2 |",
        "| Prompt depth | 9 |",
        "| Prompt initialization | `a photo of a` |",
        "| Learning rate | 0.0035 |",
        "| Epochs | 5 |",
        "| Batch size | 4 |",
        "| Shots per class | 16 |",
        "| Seed | 1 |",
    ):
        assert row in text
    assert "Zero-shot accuracy (%)" in text
    zs = metrics["zero_shot"]["results"]["base"]
    assert f"| Base | 66.67 | 66.67 | {zs['accuracy']:.2f} | {zs['macro_f1']:.2f} | 6 | 3 |" in text
    assert "| Novel | 50.00 | 50.00 | 50.00 | 50.00 | 4 | 2 |" in text
    assert (
        f"| **Harmonic mean (base, novel)** | **{metrics['harmonic_mean']:.2f}** | | "
        f"{metrics['zero_shot']['harmonic_mean']:.2f} |"
    ) in text
    assert "| Sea Lake | 50.00 |" in text  # per-class accuracy
    assert f"- torch: {metrics['versions']['torch']}" in text
    assert "@inproceedings{khattak2023maple," in text
    assert "pages={19113--19122}," in text


def test_card_without_zero_shot_has_no_zero_shot_column():
    text = render_model_card(_metrics(zero_shot=False))

    assert "Zero-shot accuracy" not in text
    assert "| Split | Accuracy (%) | Macro-F1 (%) | Images | Classes |" in text
    assert '"path/to/this/adapter"' in text  # no repo id: a placeholder
    assert "| Prompt depth | 9 |" in text  # the configs default to the ones in metrics.json


def test_cross_dataset_card_lists_every_target_dataset():
    card = build_model_card(_metrics(setting="cross_dataset"))

    assert card.data.datasets == ["imagenet", "dtd"]
    assert {(r.dataset_type, r.dataset_split) for r in card.data.eval_results} == {
        ("imagenet", "test"),
        ("dtd", "test"),
    }
    assert "| Target dataset |" in card.text
    assert "Harmonic mean" not in card.text


def test_local_base_model_is_kept_out_of_the_hub_metadata(tmp_path):
    text = render_model_card(_metrics(base_model=str(tmp_path)))

    assert ModelCard(text).data.base_model is None
    assert f'AutoModel.from_pretrained("{tmp_path}")' in text


@pytest.mark.parametrize("trailing", ["", "/"])
def test_base_model_in_the_hugging_face_cache_is_written_as_its_hub_id(tmp_path, trailing):
    from maple_peft.adapter_card import render_adapter_card

    snapshot = (
        tmp_path
        / "hub"
        / "models--openai--clip-vit-base-patch16"
        / "snapshots"
        / "3d74acf9a28c67741b2f4f2ea7635f0aaf6f0268"
    )
    snapshot.mkdir(parents=True)
    run_card = render_model_card(_metrics(base_model=f"{snapshot}{trailing}"))
    saved_card = render_adapter_card({"n_ctx": 2, "depth": 9}, f"{snapshot}{trailing}", ["a", "b"])
    for text in (run_card, saved_card):
        assert ModelCard(text).data.base_model == BASE_MODEL
        assert f'AutoModel.from_pretrained("{BASE_MODEL}")' in text and str(tmp_path) not in text
    # a model without an organization, and other local folders: no base_model in the metadata, the path kept as given
    plain = tmp_path / "models--gpt2" / "snapshots" / "abc"
    other = tmp_path / "models--openai--clip" / "refs" / "main"
    for path, expected in ((plain, "gpt2"), (other, None), (tmp_path / "snapshots" / "abc", None)):
        path.mkdir(parents=True)
        assert ModelCard(render_model_card(_metrics(base_model=str(path)))).data.base_model == expected
        assert ModelCard(render_adapter_card({}, str(path), None)).data.base_model == expected


def test_write_model_card_renders_the_run_directory_with_its_plots(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(_metrics()))
    (tmp_path / "per_class_accuracy.png").write_bytes(b"")

    path = write_model_card(tmp_path, repo_id="me/maple-eurosat", images=["per_class_accuracy.png"])

    assert path == tmp_path / "README.md"
    text = path.read_text()
    assert ModelCard(text).data.library_name == "peft"
    assert "![per_class_accuracy.png](per_class_accuracy.png)" in text


def test_write_model_card_embeds_only_the_listed_plots_not_stale_pngs(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(_metrics()))
    for name in ("training_curves.png", "old_run_per_class_accuracy.png", "user_photo.png"):
        (tmp_path / name).write_bytes(b"")

    listed = write_model_card(tmp_path, images=["training_curves.png"]).read_text()
    assert "![training_curves.png](training_curves.png)" in listed
    assert "old_run_per_class_accuracy.png" not in listed and "user_photo.png" not in listed

    unlisted = write_model_card(tmp_path).read_text()  # e.g. a run with --no_plots
    assert not re.search(r"!\[[^\]]*\]\([^)]*\.png\)", unlisted)  # no image embedded


def test_write_model_card_refuses_an_image_that_is_not_in_the_run_folder(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(_metrics()))
    with pytest.raises(ValueError, match=r"images=\['missing.png'\] lists 'missing.png', which is not a file inside"):
        write_model_card(tmp_path, images=["missing.png"])
    with pytest.raises(ValueError, match="must be a list of file names"):
        write_model_card(tmp_path, images="plot.png")
    assert not (tmp_path / "README.md").exists()


def test_card_names_its_base_model_in_the_description_and_recipe(tmp_path):
    local = tmp_path / "my-clip"
    local.mkdir()
    card = build_model_card(_metrics(base_model=str(local)))
    description = card.text.split("## How to use")[0]
    assert f"adapter for `{local}`" in description
    assert f"| Base model | {local} |" in card.text
    hub = build_model_card(_metrics()).text.split("## How to use")[0]
    assert f"[`{BASE_MODEL}`](https://huggingface.co/{BASE_MODEL})" in hub


def test_card_recipe_reads_the_names_the_project_writes_only():
    # an old alias (num_ctx, max_epochs) is not a second name for a recipe row
    card = render_model_card(_metrics(), {"num_ctx": 7, "depth": 9}, {"max_epochs": 50, "lr": 0.1})
    assert "| Prompt depth | 9 |" in card and "| Learning rate | 0.1 |" in card
    assert "Context tokens" not in card and "| Epochs |" not in card


def test_card_of_a_local_dataset_keeps_its_identity_out_of_the_hub_datasets():
    metrics = {**_metrics(), "dataset": "imagefolder:flowers-3f2a9c1d"}
    card = build_model_card(metrics)
    assert card.data.datasets in (None, [])
    assert "| Dataset | imagefolder:flowers-3f2a9c1d |" in card.text


def test_template_ships_in_the_package():
    template = importlib.resources.files("maple_peft.model_cards") / "adapter_card.md"
    assert "{{ card_data }}" in template.read_text(encoding="utf-8")


def test_card_rejects_metrics_without_results(tmp_path):
    with pytest.raises(ValueError, match=r"lack the required field\(s\) \[.*'results'\]"):
        render_model_card({"base_model": BASE_MODEL, "dataset": "eurosat", "setting": "all"})
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        write_model_card(tmp_path)


def test_card_describes_a_non_default_variant():
    text = render_model_card(_metrics(zero_shot=False), {**PEFT_CONFIG, "variant": "ivlp"})

    assert "| Variant | ivlp |" in text
    assert "IVLP baseline" in text
    assert "coupling functions that project" not in text


def test_cards_name_the_new_methods_and_the_backbone_family():
    from maple_peft.adapter_card import method_name, render_adapter_card

    assert method_name({"variant": "cocoop", "depth": 1}) == "CoCoOp"
    assert method_name({"variant": "mmrl"}) == "MMRL"
    assert method_name({"variant": "language", "depth": 1}, {"objective": "kgcoop"}) == "KgCoOp"
    assert method_name({"variant": "maple", "depth": 9}, {"objective": "kgcoop"}) == "MaPLe + KgCoOp"
    assert method_name({"variant": "ivlp", "depth": 9}, {"text_weight": 25.0}) == "PromptSRC"
    siglip = {**PEFT_CONFIG, "backbone": "siglip2"}
    text = render_model_card(_metrics(), siglip, {**TRAIN_CONFIG, "objective": "kgcoop", "kg_weight": 8.0})
    assert "siglip2" in ModelCard(text).data.tags and "The SigLIP 2 base model stays frozen" in text
    assert "| Objective | `KgCoOp knowledge-guided loss` |" in text and "| Knowledge weight | 8.0 |" in text
    assert "KgCoOp" in text.split("\n# ")[1].splitlines()[0]  # the title names the method
    saved = render_adapter_card({"variant": "mmrl", "backbone": "metaclip_2", "n_rep": 5}, "facebook/x", ["a", "b"])
    assert "for the MetaCLIP 2 model" in saved and "metaclip_2" in ModelCard(saved).data.tags
    assert "AutoModel.from_pretrained" in saved and "CLIPModel" not in saved


def test_a_smoke_run_card_says_so_first_and_has_no_model_index():
    metrics = {**_metrics(), "smoke_assets": ["base_model", "data"]}
    text = render_model_card(metrics, repo_id="me/smoke")
    metadata, body = text.split("\n---\n", 1)
    assert "model-index" not in metadata and ModelCard(text).data.eval_results is None
    note = body[body.index("# ") :].split("\n\n")[1]  # right under the title
    assert note.startswith("> **A smoke run, not a result**") and "tiny random CLIP" in note and "generated" in note
    assert ModelCard(render_model_card(_metrics(), repo_id="me/real")).data.eval_results  # a real run keeps them


def test_smoke_assets_are_told_by_their_writers_markers_not_by_names(tmp_path):
    from maple_peft.training.data import SMOKE_MODEL_MARKER, make_synthetic_imagefolder, smoke_assets

    model, data = tmp_path / "smoke_assets" / "tiny-clip", tmp_path / "smoke_assets" / "data"
    model.mkdir(parents=True)
    data.mkdir()
    assert smoke_assets(model, data) == []  # named like the smoke assets, but not written by their makers
    (model / SMOKE_MODEL_MARKER).write_text("written by examples/make_smoke_assets.py\n")
    make_synthetic_imagefolder(data, ["a", "b"], 1, 1, image_size=8)
    assert smoke_assets(model, data) == ["base_model", "data"]
    assert smoke_assets("openai/clip-vit-base-patch16", None) == []
