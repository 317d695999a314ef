"""CLIP image transforms without torchvision (maple_peft.training.data.transforms)."""

from __future__ import annotations

import copy
import pickle
import types
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from maple_peft.training.data import (
    CLIP_MEAN,
    CLIP_STD,
    CLIPTransforms,
    center_crop,
    random_resized_crop_params,
    resize_shorter_side,
    to_rgb,
)


def _clip_processor(size: int = 224):
    with warnings.catch_warnings():  # "CLIPImageProcessor requires torchvision ... falling back to the PIL backend"
        warnings.simplefilter("ignore")
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor(do_resize=True, size={"shortest_edge": size}, do_center_crop=True, crop_size=size)


def _noise(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# ----------------------------------------------------------------------------------------------------------------
# from_processor
# ----------------------------------------------------------------------------------------------------------------


def test_defaults_are_clip_224():
    t = CLIPTransforms.from_processor(None)
    assert t.crop_size == (224, 224) and t.resize == 224
    assert t.image_mean == CLIP_MEAN and t.image_std == CLIP_STD
    assert t.resample == Image.Resampling.BICUBIC


@pytest.mark.parametrize("size", [224, 336])
def test_from_clip_image_processor_and_output_shapes(size):
    proc = _clip_processor(size)
    for source in (proc, proc.to_dict(), types.SimpleNamespace(image_processor=proc)):
        t = CLIPTransforms.from_processor(source)
        assert t.crop_size == (size, size) and t.resize == size
    img = _noise(300, 200)
    for out in (t.test()(img), t.train(seed=0)(img)):
        assert out.shape == (3, size, size)
        assert out.dtype == torch.float32


def test_from_legacy_dict_and_overrides():
    t = CLIPTransforms.from_processor(
        {"size": 256, "crop_size": 224, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}, hflip_p=0.0
    )
    assert (t.resize, t.crop_size, t.image_mean, t.hflip_p) == (256, (224, 224), (0.5, 0.5, 0.5), 0.0)
    t = CLIPTransforms.from_processor({"crop_size": {"height": 32, "width": 48}})
    assert t.crop_size == (32, 48) and t.resize == 32
    assert t.test()(_noise(100, 60)).shape == (3, 32, 48)


def test_from_processor_errors():
    with pytest.raises(TypeError, match="Cannot read crop_size"):
        CLIPTransforms.from_processor(object())
    with pytest.raises(ValueError, match="image_mean"):
        CLIPTransforms.from_processor({"image_mean": [0.5, 0.5]})


# ----------------------------------------------------------------------------------------------------------------
# Test transform
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [224, 336])
def test_constant_image_gives_exactly_the_normalized_constant(size):
    color = (10, 128, 250)
    out = CLIPTransforms(crop_size=(size, size), resize=size).test()(Image.new("RGB", (401, 257), color))
    expected = (torch.tensor(color, dtype=torch.float32) / 255.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    assert torch.equal(out, expected.view(3, 1, 1).expand(3, size, size))


def test_test_transform_matches_transformers_clip_image_processor():
    """Agreement with transformers' CLIPImageProcessor (PIL backend, the one available without torchvision).

    Both resize with PIL bicubic to int(224 * long / short) and normalize in float32, so they agree exactly
    (measured max |diff| = 0.0) whenever the center-crop offset is the same. The only difference is that offset:
    we follow torchvision / CLIP / Dassl (round((L - 224) / 2), round-half-to-even) while transformers floors
    ((L - 224) // 2); when L - 224 = 3 (mod 4) ours is one pixel further right/down.
    """
    proc = _clip_processor()
    ours = CLIPTransforms.from_processor(proc).test()

    def theirs(img: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(proc(img)["pixel_values"][0]))

    for i, (w, h) in enumerate([(320, 240), (301, 257), (257, 301), (500, 333), (224, 224), (230, 224)]):
        img = _noise(w, h, seed=i)
        torch.testing.assert_close(ours(img), theirs(img), rtol=0, atol=1e-6)

    img = _noise(259, 224, seed=9)  # margin 35: round(17.5) = 18 (ours) vs 17 (transformers)
    a, b = ours(img), theirs(img)
    assert (a - b).abs().max() > 0.5
    torch.testing.assert_close(a[:, :, :-1], b[:, :, 1:], rtol=0, atol=1e-6)


def test_resize_and_center_crop_geometry():
    assert resize_shorter_side(Image.new("RGB", (640, 480)), 224).size == (298, 224)
    assert resize_shorter_side(Image.new("RGB", (480, 640)), 224).size == (224, 298)
    img = Image.new("RGB", (10, 10))
    assert resize_shorter_side(img, 10) is img
    # torchvision offsets: round(3 / 2) = 2, and zero padding when the crop is larger than the image.
    arr = np.arange(8 * 7, dtype=np.uint8).reshape(7, 8)
    crop = np.asarray(center_crop(Image.fromarray(arr), (4, 4)))
    np.testing.assert_array_equal(crop, arr[2:6, 2:6])
    padded = np.asarray(center_crop(Image.new("L", (2, 2), 255), (4, 4)))
    np.testing.assert_array_equal(padded, np.pad(np.full((2, 2), 255, np.uint8), 1))


# ----------------------------------------------------------------------------------------------------------------
# Modes
# ----------------------------------------------------------------------------------------------------------------


def _mode_images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    p_transparent = Image.new("P", (30, 20), 0)
    p_transparent.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p_transparent.info["transparency"] = 0
    return {
        "L": Image.fromarray(gray),
        "1": Image.fromarray(gray).convert("1"),
        "LA": Image.fromarray(gray).convert("LA"),
        "P": _noise(30, 20).convert("P"),
        "P+transparency": p_transparent,
        "RGBA": _noise(30, 20).convert("RGBA"),
        "CMYK": _noise(30, 20).convert("CMYK"),
        "I;16": Image.fromarray(gray.astype(np.uint16) * 257),
        "I": Image.fromarray(gray.astype(np.int32) * 257),
        "F": Image.fromarray(gray.astype(np.float32) / 255.0),
    }


@pytest.mark.parametrize("mode", list(_mode_images()))
def test_any_mode_becomes_rgb_and_transforms(mode):
    img = _mode_images()[mode]
    rgb = to_rgb(img)
    assert rgb.mode == "RGB" and rgb.size == img.size
    t = CLIPTransforms(crop_size=(16, 16), resize=16)
    assert t.test()(img).shape == (3, 16, 16)
    assert t.train(seed=0)(img).shape == (3, 16, 16)


def test_high_bit_depth_is_scaled_not_clipped():
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (12, 12), dtype=np.uint8)
    images = _mode_images()
    for mode in ("I;16", "I", "F"):
        out = np.asarray(to_rgb(images[mode]))[..., 0]
        np.testing.assert_array_equal(out, np.asarray(images["L"]), err_msg=mode)
    mid_gray = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    assert mid_gray.mode == "I;16"
    assert np.asarray(to_rgb(mid_gray)).max() == 128  # PIL's own convert would give 255 (white)
    assert np.asarray(to_rgb(Image.fromarray(gray.astype(np.float32) * 3.0))).max() <= 255  # floats > 1: 0..255 range


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (10, 20, 30, 255))
    np.testing.assert_array_equal(np.asarray(to_rgb(rgba)), [[[255, 255, 255], [10, 20, 30]]])
    p = _mode_images()["P+transparency"]
    assert np.asarray(to_rgb(p)).reshape(-1, 3).tolist()[0] == [255, 255, 255]
    rgb = Image.new("RGB", (2, 2))
    assert to_rgb(rgb) is rgb


def test_to_rgb_rejects_non_images():
    with pytest.raises(TypeError, match="ndarray"):
        to_rgb(np.zeros((2, 2)))


# ----------------------------------------------------------------------------------------------------------------
# Train transform
# ----------------------------------------------------------------------------------------------------------------


def test_train_transform_is_deterministic_under_a_seed():
    img = _noise(64, 48)
    t = CLIPTransforms(crop_size=(32, 32), resize=32)
    assert torch.equal(t.train(seed=7)(img), t.train(seed=7)(img))
    same = t.train(seed=7)
    seq1 = [same(img) for _ in range(3)]
    again = t.train(seed=7)
    seq2 = [again(img) for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(seq1, seq2, strict=True))
    assert not torch.equal(seq1[0], seq1[1])  # successive calls draw new crops
    assert not torch.equal(t.train(seed=8)(img), seq1[0])
    # an explicit generator overrides the transform's own
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(t.train(seed=1)(img, generator=g1), t.train(seed=2)(img, generator=g2))
    # without a seed, the global torch RNG drives it
    torch.manual_seed(5)
    x = t.train()(img)
    torch.manual_seed(5)
    assert torch.equal(x, t.train()(img))
    # pickles (DataLoader workers) with its state
    assert torch.equal(pickle.loads(pickle.dumps(same))(img), same(img))


def test_train_transform_decorrelates_dataloader_workers(monkeypatch):
    img = _noise(64, 48)
    base = CLIPTransforms(crop_size=(16, 16), resize=16).train(seed=0)
    outs = {}
    for worker_seed in (100, 101, 100):
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda s=worker_seed: types.SimpleNamespace(seed=s))
        worker_copy = copy.deepcopy(base)  # what each forked worker holds
        outs.setdefault(worker_seed, []).append(worker_copy(img))
    assert torch.equal(outs[100][0], outs[100][1])
    assert not torch.equal(outs[100][0], outs[101][0])


def test_flip_probability_and_full_crop():
    arr = np.zeros((16, 16, 3), dtype=np.uint8)
    arr[:, 8:] = 255  # dark left half, bright right half
    img = Image.fromarray(arr)
    t = CLIPTransforms(crop_size=(16, 16), resize=16, scale=(1.0, 1.0), ratio=(1.0, 1.0)).train(seed=0)
    flips = 0
    for _ in range(200):
        out = t(img)
        flips += bool(out[0, :, :8].mean() > out[0, :, 8:].mean())
    assert 70 < flips < 130
    never = CLIPTransforms(crop_size=(16, 16), resize=16, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip_p=0.0).train(
        seed=0
    )
    assert all(never(img)[0, :, :8].mean() < 0 for _ in range(10))


def test_random_resized_crop_params_bounds_and_fallback():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_params(120, 80, generator=g)
        assert 0 <= top and top + h <= 80 and 0 <= left and left + w <= 120 and h > 0 and w > 0
        assert 0.08 * 0.9 <= (h * w) / (120 * 80) <= 1.0
        assert 3 / 4 * 0.85 <= w / h <= 4 / 3 * 1.15
    # A 1000x10 strip: no try fits, so the central box with the aspect clamped to 4/3.
    assert random_resized_crop_params(1000, 10, generator=g) == (0, 493, 10, 13)
    assert random_resized_crop_params(10, 1000, generator=g) == (493, 0, 13, 10)


def test_train_transform_rejects_bad_parameters():
    with pytest.raises(ValueError, match="scale"):
        CLIPTransforms(scale=(0.0, 1.0)).train()
    with pytest.raises(ValueError, match="hflip_p"):
        CLIPTransforms(hflip_p=1.5).train()
