"""CLIP image transforms of the CoOp / MaPLe protocol, in PIL + numpy + torch (no torchvision).

* train: random resized crop (scale 0.08–1.0, ratio 3/4–4/3, bicubic) → random horizontal flip (p=0.5) → tensor in
  [0, 1] → normalize with CLIP's mean/std. This is Dassl's `["random_resized_crop", "random_flip", "normalize"]`
  pipeline used by the MaPLe configs, with torchvision's crop-sampling algorithm re-implemented.
* test: resize the shorter side to `size` (bicubic, aspect kept) → center crop → tensor → normalize, i.e. CLIP's own
  preprocessing and Dassl's test transform.

Every image first goes through `to_rgb`, which turns any PIL mode into 8-bit RGB.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = [
    "CLIP_MEAN",
    "PatchTransform",
    "PatchTransforms",
    "image_transforms",
    "CLIP_STD",
    "CLIPTestTransform",
    "CLIPTrainTransform",
    "CLIPTransforms",
    "center_crop",
    "normalize",
    "random_resized_crop_params",
    "resize_shorter_side",
    "to_rgb",
    "to_tensor",
]

CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I;16S")


# ----------------------------------------------------------------------------------------------------------------
# Mode conversion
# ----------------------------------------------------------------------------------------------------------------


def _scale_to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """Map a high-bit-depth single-channel array onto 0..255 without clipping bright values to white."""
    a = np.asarray(array, dtype=np.float64)
    if mode in _SIXTEEN_BIT_MODES:
        a = a / 257.0  # 65535 -> 255 exactly
    else:
        finite = np.isfinite(a)
        a = np.where(finite, a, 0.0)
        lo, hi = (float(a[finite].min()), float(a[finite].max())) if finite.any() else (0.0, 0.0)
        if mode == "F" and lo >= 0.0 and hi <= 1.0:
            a = a * 255.0  # float images in [0, 1]
        elif lo >= 0.0 and hi <= 255.0:
            pass  # already 8-bit range
        elif lo >= 0.0 and hi <= 65535.0:
            a = a / 257.0  # 16-bit data stored in a 32-bit mode (e.g. 16-bit PNGs opened as "I")
        else:  # arbitrary range (negative or > 16 bit): stretch min..max
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert a PIL image of any mode to 8-bit RGB.

    * `RGB` is returned unchanged (same object).
    * Modes with transparency (`RGBA`, `LA`, `PA`, `RGBa`, `La`, `P` with a `transparency` entry) are
      alpha-composited onto `background` (white, like 🤗 transformers' `convert_to_rgb`) instead of dropping the
      alpha channel, which would expose arbitrary colours under fully transparent pixels.
    * 16-bit (`I;16*`) images are scaled by `1/257` (65535 → 255); 32-bit `I` and `F` images are scaled by
      their value range (0..255 kept, 0..65535 scaled as 16-bit, floats in [0, 1] times 255, anything else
      stretched min..max), never clipped to white.
    * `L`, `1`, `P`, `CMYK`, `YCbCr`, ... use PIL's conversion.

    Multi-frame images (GIF, TIFF) use their current (first) frame.

    Args:
        image (`Image.Image`): The image.
        background (`tuple[int, int, int]`): RGB colour that transparent pixels are composited onto.

    Returns:
        An `RGB` image.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"Expected a PIL.Image.Image, got {type(image).__name__}; open files with PIL.Image.open")
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES or mode in ("I", "I;32", "F"):
        return Image.fromarray(_scale_to_uint8(np.asarray(image), mode)).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as err:
        raise ValueError(f"Cannot convert a {mode!r} image to RGB ({err}); convert it to RGB before loading") from err


# ----------------------------------------------------------------------------------------------------------------
# Geometry and tensor conversion
# ----------------------------------------------------------------------------------------------------------------


def resize_shorter_side(image: Image.Image, size: int, resample: int = Image.Resampling.BICUBIC) -> Image.Image:
    """Resize so that the shorter side is `size`, keeping the aspect ratio (torchvision's `Resize(int)`).

    The longer side becomes `int(size * long / short)` (truncated, as in torchvision and CLIP).

    Args:
        image (`Image.Image`): The image.
        size (`int`): Target length of the shorter side.
        resample (`int`): PIL resampling filter (bicubic by default).
    """
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return image
    return image.resize((new_w, new_h), resample)


def center_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Crop the center `(height, width)` region (torchvision's `CenterCrop`; zero-pads a too-small image).

    The top-left corner is `round((H - h) / 2), round((W - w) / 2)` with Python's round-half-to-even, exactly as
    torchvision computes it.

    Args:
        image (`Image.Image`): The image.
        size (`tuple[int, int]`): `(height, width)` of the crop.
    """
    crop_h, crop_w = size
    w, h = image.size

    def offset(full: int, crop: int) -> int:
        if full >= crop:
            return int(round((full - crop) / 2.0))
        return -((crop - full) // 2)  # torchvision pads (crop - full) // 2 on the left/top

    if (w, h) == (crop_w, crop_h):
        return image
    top, left = offset(h, crop_h), offset(w, crop_w)
    return image.crop((left, top, left + crop_w, top + crop_h))  # PIL fills outside the image with zeros


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image → `float32` tensor of shape `(3, H, W)` with values in `[0, 1]`.

    Args:
        image (`Image.Image`): The image; converted with `to_rgb` if it is not RGB.
    """
    array = np.array(to_rgb(image), dtype=np.uint8, copy=True)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous().to(torch.float32).div_(255.0)


def normalize(tensor: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """`(tensor - mean) / std` per channel, computed in the tensor's dtype.

    Args:
        tensor (`torch.Tensor`): A `(C, H, W)` float tensor.
        mean (`Sequence[float]`): Per-channel mean.
        std (`Sequence[float]`): Per-channel standard deviation.
    """
    m = torch.as_tensor(mean, dtype=tensor.dtype).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=tensor.dtype).view(-1, 1, 1)
    return (tensor - m) / s


def random_resized_crop_params(
    width: int,
    height: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """Sample a crop box for a random resized crop (the Inception / torchvision algorithm).

    Up to 10 tries: area fraction `~ U(scale)`, log aspect ratio `~ U(log ratio)`; the first box that fits is
    placed uniformly. Otherwise the largest central box whose aspect ratio is clamped to `ratio`.

    Args:
        width (`int`): Image width.
        height (`int`): Image height.
        scale (`tuple[float, float]`): Range of the crop area as a fraction of the image area.
        ratio (`tuple[float, float]`): Range of the crop aspect ratio (width / height).
        generator (`torch.Generator | None`): Source of randomness; the global torch RNG when `None`.

    Returns:
        `(top, left, crop_height, crop_width)`.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_lo, log_hi, generator=generator).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


# ----------------------------------------------------------------------------------------------------------------
# Transform objects
# ----------------------------------------------------------------------------------------------------------------


def _pil_image(image: Any) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise TypeError(f"The transform expects a PIL.Image.Image, got {type(image).__name__}")
    return image


class CLIPTestTransform:
    """Evaluation transform: resize shorter side → center crop → tensor → normalize.

    Args:
        resize (`int | tuple[int, int]`): Shorter-side length (int), or an exact `(height, width)` to resize to.
        crop_size (`tuple[int, int]`): `(height, width)` of the center crop.
        mean (`Sequence[float]`): Normalization mean.
        std (`Sequence[float]`): Normalization std.
        resample (`int`): PIL resampling filter (bicubic).
    """

    def __init__(
        self,
        resize: int | tuple[int, int] = 224,
        crop_size: tuple[int, int] = (224, 224),
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        resample: int = Image.Resampling.BICUBIC,
    ) -> None:
        self.resize = resize
        self.crop_size = tuple(crop_size)
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.resample = resample

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """Transform one image into a normalized `float32` tensor of shape `(3, crop_h, crop_w)`."""
        image = to_rgb(_pil_image(image))
        if isinstance(self.resize, int):
            image = resize_shorter_side(image, self.resize, self.resample)
        elif image.size != (self.resize[1], self.resize[0]):
            image = image.resize((self.resize[1], self.resize[0]), self.resample)
        image = center_crop(image, self.crop_size)
        return normalize(to_tensor(image), self.mean, self.std)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(resize={self.resize}, crop_size={self.crop_size}, mean={self.mean}, "
            f"std={self.std}, resample={Image.Resampling(self.resample).name})"
        )


class CLIPTrainTransform:
    """Training transform: random resized crop → random horizontal flip → tensor → normalize.

    Randomness: with `seed=None` the global torch RNG is used (seed it with `torch.manual_seed` /
    `transformers.set_seed`; `DataLoader` workers get distinct, reproducible seeds from it). With an integer
    `seed` the transform owns a `torch.Generator`; inside a `DataLoader` worker that generator is re-seeded
    from `seed` and the worker's seed so that workers do not repeat each other's augmentations. A generator passed
    to `__call__` overrides both.

    Args:
        crop_size (`tuple[int, int]`): `(height, width)` of the output.
        mean (`Sequence[float]`): Normalization mean.
        std (`Sequence[float]`): Normalization std.
        scale (`tuple[float, float]`): Area fraction range of the random crop.
        ratio (`tuple[float, float]`): Aspect-ratio range of the random crop.
        hflip_p (`float`): Probability of a horizontal flip.
        resample (`int`): PIL resampling filter (bicubic).
        seed (`int | None`): Optional seed for a private `torch.Generator`.
    """

    def __init__(
        self,
        crop_size: tuple[int, int] = (224, 224),
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
        hflip_p: float = 0.5,
        resample: int = Image.Resampling.BICUBIC,
        seed: int | None = None,
    ) -> None:
        if not (0.0 < scale[0] <= scale[1]):
            raise ValueError(f"scale={scale} is invalid; use 0 < min <= max, e.g. (0.08, 1.0)")
        if not (0.0 < ratio[0] <= ratio[1]):
            raise ValueError(f"ratio={ratio} is invalid; use 0 < min <= max, e.g. (3/4, 4/3)")
        if not 0.0 <= hflip_p <= 1.0:
            raise ValueError(f"hflip_p={hflip_p} is not a probability; use a value in [0, 1]")
        self.crop_size = tuple(crop_size)
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.hflip_p = hflip_p
        self.resample = resample
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self._worker_seed: int | None = None

    def _own_generator(self) -> torch.Generator | None:
        if self.generator is None:
            return None
        info = torch.utils.data.get_worker_info()
        if info is not None and info.seed != self._worker_seed:
            # Each worker holds a copy of the same generator state: decorrelate them (reproducibly).
            self._worker_seed = info.seed
            self.generator.manual_seed((self.seed * 1_000_003 + info.seed) % (2**63))
        return self.generator

    def augment(self, image: Image.Image, generator: torch.Generator | None = None) -> Image.Image:
        """The random resized crop and flip of one image, as an RGB PIL image of `crop_size` (before normalization).

        Args:
            image (`Image.Image`): A PIL image of any mode.
            generator (`torch.Generator | None`): Optional generator overriding the transform's own randomness for this
                call.
        """
        gen = generator if generator is not None else self._own_generator()
        image = to_rgb(_pil_image(image))
        top, left, h, w = random_resized_crop_params(image.width, image.height, self.scale, self.ratio, gen)
        crop_h, crop_w = self.crop_size
        image = image.crop((left, top, left + w, top + h)).resize((crop_w, crop_h), self.resample)
        if self.hflip_p > 0 and torch.rand(1, generator=gen).item() < self.hflip_p:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return image

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        """Transform one image into a normalized `float32` tensor of shape `(3, crop_h, crop_w)`.

        Args:
            image (`Image.Image`): A PIL image of any mode.
            generator (`torch.Generator | None`): Optional generator overriding the transform's own randomness for this
                call.
        """
        return normalize(to_tensor(self.augment(image, generator)), self.mean, self.std)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(crop_size={self.crop_size}, scale={self.scale}, ratio={self.ratio}, "
            f"hflip_p={self.hflip_p}, mean={self.mean}, std={self.std}, "
            f"resample={Image.Resampling(self.resample).name}, seed={self.seed})"
        )


def _hw(value: Any, what: str) -> tuple[int, int]:
    """Parse `224` / `{"height": 224, "width": 224}` / `{"shortest_edge": 224}` / `(224, 224)`."""
    if isinstance(value, bool):
        raise ValueError(f"{what}={value!r} is not a size; use an int or {{'height': H, 'width': W}}")
    if isinstance(value, int):
        return value, value
    if isinstance(value, Mapping):
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
        if "shortest_edge" in value:
            return int(value["shortest_edge"]), int(value["shortest_edge"])
    if isinstance(value, Sequence) and len(value) == 2:
        return int(value[0]), int(value[1])
    raise ValueError(f"{what}={value!r} is not a size; use an int or {{'height': H, 'width': W}}")


@dataclass
class CLIPTransforms:
    """The train and test transforms for one CLIP checkpoint's input resolution and normalization.

    Build it from the checkpoint's image processor with `from_processor`, then call `train` /
    `test`.

    Args:
        crop_size (`tuple[int, int]`): `(height, width)` of the model input (224 for ViT-B/16, 336 for ViT-L/14@336px).
        resize (`int | tuple[int, int]`): Test-time shorter-side length (an int), or an exact `(height, width)`.
        image_mean (`tuple[float, ...]`): Normalization mean (CLIP's by default).
        image_std (`tuple[float, ...]`): Normalization std (CLIP's by default).
        resample (`int`): PIL resampling filter (bicubic).
        scale (`tuple[float, float]`): Area fraction range of the training random resized crop.
        ratio (`tuple[float, float]`): Aspect-ratio range of the training random resized crop.
        hflip_p (`float`): Training horizontal-flip probability.
    """

    crop_size: tuple[int, int] = (224, 224)
    resize: int | tuple[int, int] = 224
    image_mean: tuple[float, ...] = CLIP_MEAN
    image_std: tuple[float, ...] = CLIP_STD
    resample: int = Image.Resampling.BICUBIC
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    hflip_p: float = 0.5

    def __post_init__(self) -> None:
        self.crop_size = _hw(self.crop_size, "crop_size")
        if not isinstance(self.resize, int):
            self.resize = _hw(self.resize, "resize")
        for what, value in (("crop_size", self.crop_size), ("resize", self.resize)):
            if min(value if isinstance(value, tuple) else (value,)) < 1:
                raise ValueError(f"{what}={value} must be positive")
        self.image_mean = tuple(float(v) for v in self.image_mean)
        self.image_std = tuple(float(v) for v in self.image_std)
        if any(v <= 0 for v in self.image_std):
            raise ValueError(f"image_std={self.image_std} must be positive")

    @classmethod
    def from_processor(cls, processor: Any = None, **overrides: Any) -> CLIPTransforms:
        """Read `crop_size`, `size`, `image_mean`, `image_std` (and `resample`) from an image processor.

        Args:
            processor (`Any`): A `transformers.CLIPImageProcessor` (or any image processor), a `CLIPProcessor` (its
                `image_processor` is used), the processor's `to_dict()` / `preprocessor_config.json` dict,
                or `None` for CLIP's defaults (224, CLIP mean/std).
            **overrides (`Any`): Fields of `CLIPTransforms` to set explicitly (e.g. `scale=(0.5, 1.0)`).
        """
        if processor is None:
            config: Mapping[str, Any] = {}
        elif isinstance(processor, Mapping):
            config = processor
        else:
            inner = getattr(processor, "image_processor", None)
            source = inner if inner is not None else processor
            if hasattr(source, "to_dict"):
                config = source.to_dict()
            else:
                config = {
                    k: getattr(source, k)
                    for k in ("crop_size", "size", "image_mean", "image_std")
                    if hasattr(source, k)
                }
            if not config:
                raise TypeError(
                    f"Cannot read crop_size/size/image_mean/image_std from a {type(processor).__name__}; pass a "
                    "transformers CLIPImageProcessor, CLIPProcessor or its config dict"
                )

        kwargs: dict[str, Any] = {}
        size = config.get("size")
        crop = config.get("crop_size")
        if size is not None:
            if isinstance(size, Mapping) and "shortest_edge" in size:
                kwargs["resize"] = int(size["shortest_edge"])
            elif isinstance(size, int) and not isinstance(size, bool):
                kwargs["resize"] = size
            else:
                kwargs["resize"] = _hw(size, "size")
        if crop is not None and config.get("do_center_crop", True):
            kwargs["crop_size"] = _hw(crop, "crop_size")
        elif size is not None:
            kwargs["crop_size"] = _hw(size, "size")
        if "resize" not in kwargs and "crop_size" in kwargs:
            kwargs["resize"] = min(kwargs["crop_size"])
        for key in ("image_mean", "image_std"):
            value = config.get(key)
            if value is not None:
                values = (float(value),) * 3 if isinstance(value, (int, float)) else tuple(float(v) for v in value)
                if len(values) != 3:
                    raise ValueError(f"{key}={value!r} must have 3 values (one per RGB channel)")
                kwargs[key] = values
        resample = config.get("resample")
        if resample is not None:
            kwargs["resample"] = int(resample)
        kwargs.update(overrides)
        return cls(**kwargs)

    @property
    def image_size(self) -> tuple[int, int]:
        """`(height, width)` of the tensors both transforms produce."""
        return self.crop_size

    def train(self, seed: int | None = None) -> CLIPTrainTransform:
        """The training transform (random resized crop + flip).

        Args:
            seed (`int | None`): Optional seed for the transform's private generator; `None` uses the global torch RNG.
        """
        return CLIPTrainTransform(
            crop_size=self.crop_size,
            mean=self.image_mean,
            std=self.image_std,
            scale=self.scale,
            ratio=self.ratio,
            hflip_p=self.hflip_p,
            resample=self.resample,
            seed=seed,
        )

    def test(self) -> CLIPTestTransform:
        """The evaluation transform (resize shorter side + center crop)."""
        return CLIPTestTransform(
            resize=self.resize,
            crop_size=self.crop_size,
            mean=self.image_mean,
            std=self.image_std,
            resample=self.resample,
        )


class PatchTransform:
    """An image (optionally augmented first) through a patch-based image processor (SigLIP 2's NaFlex), one image at a
    time: a dict of `pixel_values` `(patches, 3 * patch_size**2)`, `pixel_attention_mask` `(patches,)` and
    `spatial_shapes` `(2,)`, which `default_collate` stacks into the processor's batch layout.

    Args:
        processor: the image processor (e.g. `Siglip2ImageProcessor`), which pads every image to its
            `max_num_patches`.
        augment (`CLIPTrainTransform`, *optional*): the random resized crop + flip applied to the PIL image first.
    """

    def __init__(self, processor: Any, augment: CLIPTrainTransform | None = None) -> None:
        self.processor = processor
        self.augment = augment

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        image = to_rgb(_pil_image(image))
        if self.augment is not None:
            image = self.augment.augment(image, generator)
        processed = self.processor(images=[image], return_tensors="pt")
        return {key: value[0] for key, value in processed.items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(processor={type(self.processor).__name__}, augment={self.augment!r})"


@dataclass
class PatchTransforms:
    """The train and test transforms of a patch-based image processor (SigLIP 2's NaFlex): the test images go to the
    processor as they are (it keeps their aspect ratio), the training images are first randomly cropped (to a square
    of `side` pixels, the largest the processor keeps at full resolution) and flipped, as in the CoOp protocol.

    Args:
        processor: the image processor, with `patch_size` and `max_num_patches`.
        scale (`tuple[float, float]`): Area fraction range of the training random resized crop.
        ratio (`tuple[float, float]`): Aspect-ratio range of the training random resized crop.
        hflip_p (`float`): Training horizontal-flip probability.
    """

    processor: Any
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    hflip_p: float = 0.5

    @property
    def image_size(self) -> tuple[int, int]:
        """`(height, width)` of the training crops."""
        side = int(self.processor.patch_size * math.isqrt(int(self.processor.max_num_patches)))
        return side, side

    def train(self, seed: int | None = None) -> PatchTransform:
        augment = CLIPTrainTransform(
            crop_size=self.image_size, scale=self.scale, ratio=self.ratio, hflip_p=self.hflip_p, seed=seed
        )
        return PatchTransform(self.processor, augment)

    def test(self) -> PatchTransform:
        return PatchTransform(self.processor)


def image_transforms(processor: Any = None, **overrides: Any) -> CLIPTransforms | PatchTransforms:
    """The train / test transforms that match a model's image processor: `PatchTransforms` for a patch-based
    processor (SigLIP 2's NaFlex: it has `max_num_patches`), `CLIPTransforms.from_processor` otherwise (CLIP,
    MetaCLIP 2, SigLIP: resize, crop, normalize read from the processor).

    Args:
        processor: the image processor (or `None` for CLIP's defaults).
        **overrides: fields of the transforms to set (e.g. `scale=(0.5, 1.0)`).
    """
    inner = getattr(processor, "image_processor", None) or processor
    if inner is not None and not isinstance(inner, Mapping) and getattr(inner, "max_num_patches", None):
        return PatchTransforms(inner, **overrides)
    return CLIPTransforms.from_processor(processor, **overrides)
