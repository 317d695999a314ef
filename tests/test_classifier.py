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
    encode = clf.text_encoder.encode

    def counted(**kwargs):
        calls["n"] += 1
        return encode(**kwargs)

    clf.text_encoder.encode = counted
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
        features = model.get_base_model().get_text_features(input_ids=clf.input_ids()).pooler_output
        one_batch = features / features.norm(dim=-1, keepdim=True)
    assert len(groups) >= 3 and all(ids.shape[0] <= 2 for ids in groups)
    # every encoded prompt ends with its end-of-text token: no padding is encoded
    assert all((ids == tokenizer.eos_token_id).int().argmax(-1).eq(ids.shape[1] - 1).all() for ids in groups)
    torch.testing.assert_close(grouped, one_batch, atol=1e-6, rtol=0)


@pytest.mark.parametrize("names", [["sea_lake", "sea lake"], ["Forest", "forest"]])
def test_classes_with_the_same_prompt_are_refused_naming_both(tokenizer, names):
    model, _ = make_adapted(depth=2)
    with pytest.raises(ValueError, match=f"Classes '{names[0]}' and '{names[1]}' give the same prompt"):
        PromptClassifier(model, tokenizer, ["cat", *names])


def test_class_names_that_are_not_strings_are_refused(tokenizer):
    model, _ = make_adapted(depth=2)
    with pytest.raises(TypeError, match=r"class_names\[1\]=3 is not a string"):
        PromptClassifier(model, tokenizer, ["cat", 3])


@pytest.mark.parametrize("token", ["<|endoftext|>", "<|startoftext|>"])
def test_class_names_with_clip_special_tokens_are_refused(tokenizer, token):
    model, _ = make_adapted(depth=2)
    with pytest.raises(ValueError, match="special token"):
        PromptClassifier(model, tokenizer, ["cat", f"dog{token}bird"])


def test_a_class_name_ending_in_a_special_token_is_refused_even_at_the_end_of_its_prompt(tokenizer):
    model, _ = make_adapted(depth=2)
    with pytest.raises(ValueError, match=r"The prompt of class 'dog<\|endoftext\|>' .* contains a special token"):
        PromptClassifier(model, tokenizer, ["cat", "dog<|endoftext|>"], template="{}")


@pytest.mark.parametrize(
    "bad, error",
    [
        (["cat", " ".join(["supercalifragilistic"] * 30)], "more than the text encoder's 77"),
        (["zebra", "zebra"], "same prompt"),
        (["zebra", None], "not a string"),
        ([], "non-empty"),
    ],
)
def test_set_class_names_refuses_bad_names_and_keeps_the_previous_ones(tokenizer, pixel_values, bad, error):
    model, _ = make_adapted(depth=2)
    model.eval()
    clf = PromptClassifier(model, tokenizer, CLASSES)
    with torch.no_grad():
        before = clf(pixel_values)
    with pytest.raises((ValueError, TypeError), match=error):
        clf.set_class_names(bad)
    assert clf.class_names == CLASSES
    with torch.no_grad():
        torch.testing.assert_close(clf(pixel_values), before)


def test_integer_pixel_values_are_refused_with_a_hint_to_the_image_processor(tokenizer):
    model, _ = make_adapted(depth=2)
    clf = PromptClassifier(model, tokenizer, CLASSES)
    images = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    with pytest.raises(TypeError, match="torch.uint8.*image processor"):
        clf(images)


def test_an_empty_batch_is_refused_clearly(tokenizer):
    model, _ = make_adapted(depth=2)
    clf = PromptClassifier(model, tokenizer, CLASSES)
    with pytest.raises(ValueError, match="empty batch"):
        clf(torch.zeros(0, 3, 32, 32))


def _text_ctx(model):
    return model.get_base_model().text_model.encoder.layers[1].maple_ctx["default"]


def _shift(ctx):
    # not a constant shift: a token's LayerNorm removes that, leaving the text features unchanged
    return torch.linspace(-1.0, 1.0, ctx.numel()).view_as(ctx)


def _add_in_place_through_data(ctx):
    ctx.data.add_(_shift(ctx))  # in place on .data: the parameter's version counter does not see it


def _assign_data(ctx):
    ctx.data = ctx.data + _shift(ctx)


@pytest.mark.parametrize("replace", [_add_in_place_through_data, _assign_data])
def test_cache_is_refreshed_when_a_prompt_is_replaced_through_data(tokenizer, pixel_values, replace):
    model, _ = make_adapted(depth=3)
    model.eval()
    clf = PromptClassifier(model, tokenizer, CLASSES)
    with torch.no_grad():
        before = clf.text_features().clone()
        replace(_text_ctx(model))
        after = clf.text_features()
        fresh = PromptClassifier(model, tokenizer, CLASSES).text_features()
    assert not torch.allclose(before, fresh, atol=1e-3)
    torch.testing.assert_close(after, fresh, atol=1e-5, rtol=0)


def test_cache_is_refreshed_after_vector_to_parameters(tokenizer, pixel_values):
    model, _ = make_adapted(depth=3)
    model.eval()
    clf = PromptClassifier(model, tokenizer, CLASSES)
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        before = clf.text_features().clone()
        vector = torch.nn.utils.parameters_to_vector(params)
        torch.nn.utils.vector_to_parameters(vector.flip(0), params)
        after = clf.text_features()
        fresh = PromptClassifier(model, tokenizer, CLASSES).text_features()
    assert not torch.allclose(before, fresh, atol=1e-3)
    torch.testing.assert_close(after, fresh, atol=1e-5, rtol=0)


def test_predict_runs_in_eval_mode_and_restores_train_mode(tokenizer):
    model, _ = make_adapted(depth=2)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    clf = PromptClassifier(model, tokenizer, CLASSES, image_processor=processor)
    clf.train()
    calls = count_text_encodings(clf)
    clf.predict(_images(4), batch_size=2)
    assert calls["n"] == 1  # one encoding for both batches: the eval-mode cache was used
    assert clf.training and model.training and all(m.training for m in model.modules())


def test_predict_proba_is_sorted_like_the_pipeline_and_top_k_keeps_the_best(tokenizer):
    model, _ = make_adapted(depth=2)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    clf = PromptClassifier(model, tokenizer, CLASSES, image_processor=processor)
    images = _images(2)
    full = clf.predict_proba(images)
    with torch.no_grad():
        expected = clf(processor(images=images, return_tensors="pt")["pixel_values"]).softmax(-1)
    for row, probs in zip(full, expected):
        assert [r["score"] for r in row] == sorted((r["score"] for r in row), reverse=True)
        assert {r["label"]: r["score"] for r in row} == pytest.approx(dict(zip(CLASSES, probs.tolist())), abs=1e-6)
    top2 = clf.predict_proba(images, top_k=2)
    assert top2 == [row[:2] for row in full]
    assert [row[0]["label"] for row in full] == clf.predict(images)
    single = clf.predict_proba(images[0], top_k=1)  # a single image gives a single list
    assert [r["label"] for r in single] == [full[0][0]["label"]]
    assert single[0]["score"] == pytest.approx(full[0][0]["score"], rel=1e-5)
    with pytest.raises(ValueError, match="top_k=0"):
        clf.predict_proba(images, top_k=0)


def test_predict_reads_paths_and_names_an_unreadable_one(tokenizer, tmp_path):
    model, _ = make_adapted(depth=2)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    clf = PromptClassifier(model, tokenizer, CLASSES, image_processor=processor)
    images = _images(2)
    paths = []
    for index, image in enumerate(images):
        image.save(tmp_path / f"{index}.png")
        paths.append(tmp_path / f"{index}.png")
    assert clf.predict([str(paths[0]), paths[1]]) == clf.predict(images)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="Cannot read image .*broken.png"):
        clf.predict([paths[0], tmp_path / "broken.png"])
    with pytest.raises(FileNotFoundError, match="missing.png.*no such file"):
        clf.predict([tmp_path / "missing.png"])


def test_predict_without_any_image_processor_says_what_to_pass(tokenizer):
    model, _ = make_adapted(depth=2)
    clf = PromptClassifier(model, tokenizer, CLASSES)
    with pytest.raises(ValueError, match="pass processor="):
        clf.predict(_images(1))


def test_boolean_options_are_keyword_only(tokenizer):
    model, _ = make_adapted(depth=2)
    with pytest.raises(TypeError):
        PromptClassifier(model, tokenizer, CLASSES, None, 256, True)


def test_predict_reads_an_image_url_as_it_reads_the_image(tokenizer, monkeypatch):
    import io
    from contextlib import contextmanager

    from huggingface_hub.utils import httpx

    model, _ = make_adapted(depth=2)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    clf = PromptClassifier(model, tokenizer, CLASSES, image_processor=processor)
    image = _images(1)[0]
    png = io.BytesIO()
    image.save(png, format="PNG")
    data, requested = png.getvalue(), []

    class Response:  # the body in two pieces, as a server may send it
        headers = {"content-length": str(len(data))}

        def raise_for_status(self):
            pass

        def iter_bytes(self):
            yield from (data[:10], data[10:])

    @contextmanager
    def stream(method, url, **kwargs):
        requested.append((method, url, kwargs["follow_redirects"]))
        yield Response()

    monkeypatch.setattr(httpx, "stream", stream)
    assert clf.predict(["https://example.com/cat.png"]) == clf.predict([image])
    assert requested == [("GET", "https://example.com/cat.png", True)]
