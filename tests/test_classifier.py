"""PromptClassifier: caching, chunking, checkpointing, new classes, PIL prediction, the transformers pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_model import CLASSES, make_adapted
from transformers import CLIPImageProcessor, pipeline

from maple_peft import PromptClassifier


def count_text_encodings(clf):
    """Counts how often the classifier encodes its whole list of class prompts."""
    calls = {"n": 0}
    encode = clf._compute_text_features

    def counted(clip):
        calls["n"] += 1
        return encode(clip)

    clf._compute_text_features = counted
    return calls


def test_eval_mode_encodes_the_class_prompts_once(tokenizer, pixel_values):
    model, _ = make_adapted(depth=3)
    model.eval()
    clf = PromptClassifier(model, tokenizer, CLASSES)
    calls = count_text_encodings(clf)
    with torch.no_grad():
        first = clf(pixel_values)
        second = clf(pixel_values[:1])
    assert calls["n"] == 1
    torch.testing.assert_close(first[:1], second, atol=1e-5, rtol=0)


def test_cache_is_refreshed_when_the_adapter_changes(tokenizer, pixel_values):
    model, _ = make_adapted(depth=3)
    model.eval()
    clf = PromptClassifier(model, tokenizer, CLASSES)
    calls = count_text_encodings(clf)
    before = clf(pixel_values).detach()
    # an optimizer step (in-place update) on a text prompt
    ctx = model.get_base_model().text_model.encoder.layers[1].maple_ctx["default"]
    torch.optim.SGD([ctx], lr=1.0).zero_grad()
    with torch.no_grad():
        ctx.add_(1.0)
    after = clf(pixel_values).detach()
    assert calls["n"] == 2 and not torch.allclose(before, after)
    with model.disable_adapter():
        clf(pixel_values)
    assert calls["n"] == 3
    clf(pixel_values)
    assert calls["n"] == 4


def test_train_mode_recomputes_text_features_with_gradients(tokenizer, pixel_values):
    model, _ = make_adapted(depth=3)
    model.train()
    clf = PromptClassifier(model, tokenizer, CLASSES)
    calls = count_text_encodings(clf)
    clf(pixel_values)
    features = clf.text_features()
    assert calls["n"] == 2 and features.requires_grad


def test_chunked_text_encoding_equals_one_batch(tokenizer, pixel_values):
    model, _ = make_adapted(depth=3)
    names = [f"class_{i}" for i in range(11)]
    with torch.no_grad():
        whole = PromptClassifier(model, tokenizer, names, text_batch_size=256)(pixel_values)
        chunked = PromptClassifier(model, tokenizer, names, text_batch_size=3)(pixel_values)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients(tokenizer, pixel_values):
    model, _ = make_adapted(depth=3)
    model.train()
    labels = torch.tensor([0, 1, 2])
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        clf = PromptClassifier(model, tokenizer, CLASSES, text_batch_size=2, gradient_checkpointing=checkpointing)
        torch.nn.functional.cross_entropy(clf(pixel_values), labels).backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain, atol=1e-6, rtol=1e-5)


def test_set_class_names_classifies_among_new_classes(tokenizer, pixel_values):
    model, _ = make_adapted(depth=2)
    clf = PromptClassifier(model, tokenizer, CLASSES)
    with torch.no_grad():
        assert clf(pixel_values).shape == (3, 4)
        clf.set_class_names(["zebra", "okapi"])
        new = clf(pixel_values)
        fresh = PromptClassifier(model, tokenizer, ["zebra", "okapi"])(pixel_values)
    assert torch.equal(new, fresh)


def test_template_override_for_zero_shot(tokenizer):
    model, _ = make_adapted(depth=2)
    clf = PromptClassifier(model, tokenizer, ["sea_lion"], template="a centered satellite photo of {}.")
    assert clf.prompts == ["a centered satellite photo of sea lion."]
    default = PromptClassifier(model, tokenizer, ["sea_lion"])
    assert default.prompts == ["a photo of a sea lion."]


def _images(n=3, size=40):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def test_predict_names_classes_of_pil_images(tokenizer):
    model, _ = make_adapted(depth=2)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    clf = PromptClassifier(model, tokenizer, CLASSES)
    images = _images()
    names = clf.predict(images, processor, batch_size=2)
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = [CLASSES[i] for i in clf(pixels).argmax(-1).tolist()]
    assert names == expected


def test_zero_shot_pipeline_accepts_the_adapted_model(tokenizer):
    model, _ = make_adapted(depth=2)
    model.eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    classifier = pipeline(
        "zero-shot-image-classification", model=model.get_base_model(), tokenizer=tokenizer, image_processor=processor
    )
    image = _images(1)[0]
    labels = ["cat", "golden retriever", "sea anemone"]
    result = classifier(image, candidate_labels=labels, hypothesis_template="a photo of a {}.")
    clf = PromptClassifier(model, tokenizer, labels)
    with torch.no_grad():
        probs = clf(processor(images=image, return_tensors="pt")["pixel_values"]).softmax(-1)[0]
    got = {r["label"]: r["score"] for r in result}
    for label, prob in zip(labels, probs.tolist()):
        assert got[label] == pytest.approx(prob, abs=1e-5)


def test_prompts_are_encoded_in_length_groups_without_padding(tokenizer, pixel_values):
    model, _ = make_adapted(depth=3)
    names = ["cat", "golden retriever", "sea anemone", "dog", "Boeing 737-800", "a very long winded class name"]
    clf = PromptClassifier(model, tokenizer, names, text_batch_size=2, shared_prefix=False)
    seen = []
    model.get_base_model().text_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"]), with_kwargs=True
    )
    with torch.no_grad():
        grouped = clf.text_features()
        groups = list(seen)
        one_batch = clf._encode(clf.input_ids())
    assert len(groups) >= 3 and all(ids.shape[0] <= 2 for ids in groups)
    # every encoded prompt ends with its end-of-text token: no padding is encoded
    assert all((ids == tokenizer.eos_token_id).int().argmax(-1).eq(ids.shape[1] - 1).all() for ids in groups)
    torch.testing.assert_close(grouped, one_batch, atol=1e-6, rtol=0)
