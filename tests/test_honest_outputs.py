"""What users read is true: cards name the method and the shots used, a saved adapter's card is a real card, the
README's pipeline statement holds, plots show the loss terms, known third-party noise is filtered at its source."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
from conftest import TOKENIZER_DIR, tiny_clip
from huggingface_hub import ModelCard
from peft import get_peft_model
from PIL import Image
from transformers import CLIPImageProcessor, CLIPModel, pipeline

import maple_peft
from maple_peft import MaPLeConfig, PromptClassifier
from maple_peft.adapter_card import method_name
from maple_peft.console import peft_deprecation_quieted, quiet_known_messages
from maple_peft.training.card import render_model_card
from maple_peft.training.metrics import build_run_metrics, classification_metrics


def _metrics(peft_config, train_config=None, num_shots=16, shots_used=None):
    base = classification_metrics([0, 1, 1], [0, 1, 0], ["AnnualCrop", "Forest"])
    novel = classification_metrics([0, 1], [0, 1], ["River", "Sea Lake"])
    return build_run_metrics(
        base_model="openai/clip-vit-base-patch16",
        dataset="eurosat",
        setting="base2novel",
        seed=1,
        num_shots=num_shots,
        shots_used=shots_used,
        results={"base": base, "novel": novel},
        train_config=train_config or {},
        peft_config=peft_config,
        zero_shot_results={"base": base, "novel": novel},
    )


SRC = {"text_weight": 25.0, "image_weight": 10.0, "logits_weight": 1.0, "gpa_mean": 15.0, "gpa_std": 1.0}


@pytest.mark.parametrize(
    "peft_config, train_config, title",
    [
        ({"variant": "maple", "depth": 9}, {}, "MaPLe"),
        ({"variant": "ivlp", "depth": 9}, {}, "IVLP"),
        ({"variant": "ivlp", "depth": 9}, SRC, "PromptSRC"),
        ({"variant": "maple", "depth": 9}, SRC, "MaPLe + SRC"),
        ({"variant": "vision", "depth": 12}, {}, "VPT-deep"),
        ({"variant": "language", "depth": 1}, {}, "CoOp"),
        ({"variant": "language", "depth": 12}, {}, "Deep language prompting"),
    ],
)
def test_a_run_card_is_titled_and_labelled_by_its_method(peft_config, train_config, title):
    text = render_model_card(_metrics(peft_config, train_config))
    assert f"# {title} adapter: clip-vit-base-patch16 on eurosat" in text
    assert f"| Split | {title} accuracy (%) | {title} macro-F1 (%) |" in text
    assert f"| Method | {title} |" in text
    if title != "MaPLe":
        assert "MaPLe adapter" not in text and "MaPLe accuracy" not in text
    if "SRC" in title:
        assert "title={Self-regulating Prompts: Foundational Model Adaptation without Forgetting}" in text


def test_a_run_card_reports_the_shots_used_when_fewer_images_existed_than_asked():
    text = render_model_card(_metrics({"variant": "maple"}, num_shots=16, shots_used={"min": 6, "max": 6}))
    assert "trained with `maple_peft` on 6-shot `eurosat`" in text
    assert "16 shots per class were asked for, but no class has that many training images" in text
    assert "| Shots per class | 6 (16 asked for; fewer training images available) |" in text
    assert "16-shot" not in text
    full = render_model_card(_metrics({"variant": "maple"}, num_shots=16, shots_used={"min": 16, "max": 16}))
    assert "on 16-shot `eurosat`" in full and "asked for" not in full


def test_saving_a_classifier_writes_a_real_card_not_peft_boilerplate(saved_base, tokenizer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    CLIPModel.from_pretrained(saved_base).save_pretrained("my-clip")
    model = get_peft_model(
        CLIPModel.from_pretrained("my-clip"),
        MaPLeConfig(
            variant="ivlp", n_ctx=2, depth=2, prompt_init="a photo of a", tokenizer_name_or_path=TOKENIZER_DIR
        ),
    )
    clf = PromptClassifier(model, tokenizer, ["golden_retriever", "tabby cat"])
    clf.save_pretrained("saved")
    text = (tmp_path / "saved" / "README.md").read_text(encoding="utf-8")
    assert "More Information Needed" not in text and "Model Card for Model ID" not in text
    assert "# IVLP adapter for my-clip" in text
    assert "for the CLIP model `my-clip`" in text and str(tmp_path) not in text  # as the user gave it
    assert "It classifies among the 2 classes saved with it" in text and "`golden_retriever`, `tabby cat`" in text
    assert 'PromptClassifier.from_pretrained("path/or/hub-id/of/this/adapter")' in text
    card = ModelCard(text)
    assert card.data.library_name == "peft" and card.data.base_model is None  # a local path is no Hub id


def test_saving_again_rewrites_our_card_but_never_a_users_readme(tokenizer, tmp_path):
    model = get_peft_model(tiny_clip(), MaPLeConfig(n_ctx=2, depth=2, prompt_init=None))
    PromptClassifier(model, tokenizer, ["cat", "dog"]).save_pretrained(tmp_path)
    PromptClassifier(model, tokenizer, ["cat", "dog", "okapi"]).save_pretrained(tmp_path)
    assert "It classifies among the 3 classes" in (tmp_path / "README.md").read_text()
    (tmp_path / "README.md").write_text("# My notes\n\nKeep me.\n")
    model.save_pretrained(tmp_path)
    text = (tmp_path / "README.md").read_text()
    assert "Keep me." in text and "It classifies among" not in text


def test_the_zero_shot_pipeline_gives_the_classifiers_probabilities_with_cleaned_class_names(tokenizer):
    config = MaPLeConfig(n_ctx=2, depth=2, prompt_init="a photo of a", tokenizer_name_or_path=TOKENIZER_DIR)
    model = get_peft_model(tiny_clip(), config).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    classifier = pipeline(
        "zero-shot-image-classification", model=model.get_base_model(), tokenizer=tokenizer, image_processor=processor
    )
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8))
    names = ["annual_crop", "herbaceous_vegetation", "sea lake"]  # the smoke run's style of names
    with torch.no_grad():
        probs = PromptClassifier(model, tokenizer, names)(processor(images=image, return_tensors="pt").pixel_values)
    probs = probs.softmax(-1)[0].tolist()
    labels = [maple_peft.clean_class_name(name) for name in names]
    result = classifier(image, candidate_labels=labels, hypothesis_template="a photo of a {}.")
    got = {r["label"]: r["score"] for r in result}
    assert [got[label] for label in labels] == pytest.approx(probs, abs=1e-5)
    raw = {
        r["label"]: r["score"]
        for r in classifier(image, candidate_labels=names, hypothesis_template="a photo of a {}.")
    }
    assert [raw[name] for name in names] != pytest.approx(probs, abs=1e-5)  # why the README names clean_class_name


def test_promptsrc_training_curves_plot_the_loss_terms_and_the_gpa_weights():
    from maple_peft.training.plots import _draw_training_curves

    history = [
        {"step": s, "epoch": (s - 1) // 3 + 1, "loss": 3.0 / s, "lr": 0.01, "loss_ce": 1.0 / s, "loss_text": 0.1,
         "loss_image": 0.2, "loss_logits": 0.01, **({"gpa_weight": 0.3} if s % 3 == 0 else {})}
        for s in range(1, 10)
    ]  # fmt: skip
    figure = _draw_training_curves(history)
    labels = [axes.get_ylabel() for axes in figure.axes]
    assert labels == ["training loss", "loss terms\n(unweighted)", "GPA weight\nof the epoch", "learning rate"]
    legend = [text.get_text() for text in figure.axes[1].get_legend().get_texts()]
    assert legend == ["ce", "image", "logits", "text"]
    plain = _draw_training_curves(
        [{k: v for k, v in h.items() if k in ("step", "epoch", "loss", "lr")} for h in history]
    )
    assert len(plain.axes) == 2


def test_base_novel_plot_names_the_method():
    from maple_peft.training.plots import _draw_base_novel_hm

    figure = _draw_base_novel_hm(_metrics({"variant": "ivlp"}, SRC))
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["zero-shot CLIP", "PromptSRC"]
    assert method_name({"variant": "ivlp"}, SRC) == "PromptSRC"


def test_known_harmless_messages_are_dropped_at_their_source_and_real_ones_kept(caplog):
    quiet_known_messages()
    with caplog.at_level(logging.INFO):
        logging.getLogger("transformers.utils.import_utils").warning(
            "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil` ..."
        )
        logging.getLogger("accelerate.accelerator").warning("Deleting 1 checkpoints to make room for new checkpoint.")
        logging.getLogger("accelerate.accelerator").warning("Gradient accumulation steps mismatch")
        logging.getLogger("transformers.utils.import_utils").warning("A real problem")
    assert [r.getMessage() for r in caplog.records] == ["Gradient accumulation steps mismatch", "A real problem"]


def _future_warnings(call):
    """The FutureWarning messages `call()` raises, whatever the filters around it (pyproject's hides one)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]


def test_our_calls_into_peft_raise_no_gradient_checkpointing_deprecation(saved_base, tmp_path):
    from test_convert import write_official_checkpoint

    def peft_alone():
        config = MaPLeConfig(depth=2, class_names=["cat", "dog"])
        get_peft_model(CLIPModel.from_pretrained(saved_base), config).save_pretrained(tmp_path / "adapter")

    # PEFT's PeftModel.__init__ reads transformers' deprecated `is_gradient_checkpointing` (if this stops, PEFT has
    # fixed it and console.peft_deprecation_quieted can go)
    assert any("is_gradient_checkpointing" in message for message in _future_warnings(peft_alone))
    write_official_checkpoint(tmp_path / "model.pth.tar-5")
    ours = [
        lambda: PromptClassifier.from_pretrained(tmp_path / "adapter"),
        lambda: maple_peft.from_official_checkpoint(
            tiny_clip(), tmp_path / "model.pth.tar-5", tokenizer_name_or_path=TOKENIZER_DIR
        ),
    ]
    for call in ours:
        assert _future_warnings(call) == []


def test_the_peft_deprecation_is_dropped_only_inside_the_wrapper_and_other_warnings_still_show():
    def warn_both():
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed", FutureWarning, stacklevel=1)
        warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)

    def wrapped():
        with peft_deprecation_quieted():
            warn_both()

    assert _future_warnings(wrapped) == ["something else is deprecated"]
    assert len(_future_warnings(warn_both)) == 2  # outside it, and after it, nothing is hidden
