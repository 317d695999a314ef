"""Loading a saved MaPLe adapter for classification: its base CLIP, the adapter, tokenizer and image processor.

`PromptClassifier.from_pretrained` builds on `load_for_classification`; `load_image` reads paths and URLs for
`PromptClassifier.predict`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from .config import MaPLeConfig
from .prompts import check_class_names

#: Keyword arguments of `from_pretrained` that every Hub download takes (adapter, base model, tokenizer, processor).
_HUB_KWARGS = ("token", "cache_dir", "force_download", "local_files_only", "proxies")


class LoadedAdapter(NamedTuple):
    """What a classifier needs from a saved adapter.

    Attributes:
        model (`PeftModel`): the base CLIP with the adapter, in eval mode.
        tokenizer: the base model's tokenizer.
        image_processor: the base model's image processor (CLIP's defaults when it has none).
        class_names (`list[str]`): the checked class names.
    """

    model: Any
    tokenizer: Any
    image_processor: Any
    class_names: list[str]


def load_for_classification(
    adapter_name_or_path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    *,
    base_model_name_or_path: str | os.PathLike | None = None,
    adapter_name: str = "default",
    **model_kwargs: Any,
) -> LoadedAdapter:
    """Load a saved MaPLe adapter with its base CLIP, tokenizer and image processor, checking everything first.

    The arguments, what is checked and the errors are those of `PromptClassifier.from_pretrained`, which wraps this.

    Args:
        adapter_name_or_path (`str` or `os.PathLike`): Hub id or local folder of the adapter.
        class_names (`Sequence[str]`, *optional*): the classes; defaults to the adapter's `class_names`.
        base_model_name_or_path (`str` or `os.PathLike`, *optional*): the CLIP to load the adapter on.
        adapter_name (`str`, defaults to `"default"`): the name the adapter gets in the `PeftModel`.
        model_kwargs: download and loading options (see `PromptClassifier.from_pretrained`).
    """
    from peft import PeftConfig, PeftModel
    from peft.utils.save_and_load import load_peft_weights
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, CLIPConfig, CLIPModel

    adapter = os.fspath(adapter_name_or_path)
    hub_kwargs = {key: model_kwargs.pop(key) for key in _HUB_KWARGS if key in model_kwargs}
    adapter_kwargs = dict(hub_kwargs)
    for key in ("revision", "subfolder"):
        if model_kwargs.get(key) is not None:
            adapter_kwargs[key] = model_kwargs[key]
        model_kwargs.pop(key, None)
    base_revision = model_kwargs.pop("base_model_revision", None)

    try:
        config = PeftConfig.from_pretrained(adapter, **adapter_kwargs)
    except (OSError, ValueError) as err:
        raise OSError(
            f"Cannot load the adapter adapter_name_or_path={adapter!r}: {err} Pass the Hub id or local folder of "
            "a saved MaPLe adapter (with adapter_config.json)."
        ) from err
    if not isinstance(config, MaPLeConfig):
        raise ValueError(
            f"adapter_name_or_path={adapter!r} is a {config.peft_type} adapter, not a MaPLe adapter; load it with "
            "peft.PeftModel.from_pretrained instead."
        )
    names = class_names if class_names is not None else config.class_names
    if names is None:
        raise ValueError(
            f"The adapter {adapter!r} has no class_names in its adapter_config.json; pass class_names=[...] "
            "(the classes to recognize)."
        )
    names = check_class_names(names)

    if base_model_name_or_path is not None:
        base, base_source = os.fspath(base_model_name_or_path), "base_model_name_or_path"
    else:
        base, base_source = config.base_model_name_or_path, "the adapter's config"
        if base_revision is None:
            base_revision = config.revision
    if not base:
        raise ValueError(
            f"The adapter config of {adapter!r} names no base model (base_model_name_or_path is empty); pass "
            "base_model_name_or_path= the CLIP it was trained on (a Hub id such as "
            "'openai/clip-vit-base-patch16' or a local folder)."
        )
    base_kwargs = dict(hub_kwargs)
    if base_revision is not None:
        base_kwargs["revision"] = base_revision
    try:
        base_config = AutoConfig.from_pretrained(base, **base_kwargs)
    except (OSError, ValueError) as err:
        raise OSError(
            f"Cannot load the base model {base!r} (named by {base_source}) of the adapter {adapter!r}: {err} Pass "
            "base_model_name_or_path= the Hub id or local folder of the CLIP model the adapter was trained on."
        ) from err
    if not isinstance(base_config, CLIPConfig):
        raise ValueError(
            f"The base model {base!r} (named by {base_source}) is a {type(base_config).__name__}, not a CLIP "
            "model; pass base_model_name_or_path= the CLIP model the adapter was trained on."
        )
    weights = load_peft_weights(adapter, device="cpu", **adapter_kwargs)
    _check_widths(weights, base_config, adapter, base, base_source)

    clip = CLIPModel.from_pretrained(base, **base_kwargs, **model_kwargs)
    model = PeftModel.from_pretrained(
        clip, adapter, adapter_name=adapter_name, is_trainable=False, config=config, **adapter_kwargs
    )
    model.eval()
    tokenizer = _load_tokenizer(AutoTokenizer, base, base_kwargs, config, hub_kwargs)
    try:
        image_processor = AutoImageProcessor.from_pretrained(base, **base_kwargs)
    except (OSError, ValueError) as err:
        from transformers import CLIPImageProcessor

        size = base_config.vision_config.image_size
        warnings.warn(
            f"The base model {base!r} has no image processor ({str(err).splitlines()[0] if str(err) else err!r}); "
            f"using CLIPImageProcessor's defaults (OpenAI CLIP normalization) at {size} px. Pass "
            "processor= to predict() if the model was trained with another preprocessing.",
            stacklevel=3,
        )
        image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return LoadedAdapter(model, tokenizer, image_processor, names)


def load_image(image: Any) -> Any:
    """Read an image given as a local path or an `http(s)://` URL into an RGB PIL image, naming it on failure.

    Paths and URLs are read with transformers' `load_image` (EXIF orientation applied); PIL images and other objects
    (numpy arrays, tensors) are returned as they are, for the image processor.

    Args:
        image (`PIL.Image.Image`, `str`, `os.PathLike` or array): the image or where to read it.

    Returns:
        The PIL image (or `image` itself when it is not a path or URL).

    Raises:
        `FileNotFoundError`: a path that does not exist.
        `ValueError`: a file or URL that is not a readable image.
    """
    from PIL import Image
    from transformers.image_utils import load_image as transformers_load_image

    if isinstance(image, Image.Image):
        return image
    if not isinstance(image, (str, os.PathLike)):
        return image
    source = os.fspath(image)
    is_url = source.startswith(("http://", "https://"))
    if not is_url and not os.path.isfile(source):
        if os.path.isdir(source):
            raise ValueError(f"Cannot read image {source!r}: it is a folder, not an image file.")
        raise FileNotFoundError(f"Cannot read image {source!r}: no such file.")
    try:
        return transformers_load_image(source)
    except Exception as err:  # PIL's UnidentifiedImageError, truncated files, HTTP errors...
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"Cannot read image {source!r}: {reason}") from err


def _check_widths(
    weights: dict[str, torch.Tensor], base_config: Any, adapter: str, base: str, base_source: str
) -> None:
    """Refuse a base model whose text or vision width differs from the widths of the adapter's tensors."""
    text_width = base_config.text_config.hidden_size
    vision_width = base_config.vision_config.hidden_size
    adapter_text = adapter_vision = None
    for key, tensor in weights.items():
        if "maple_ctx" in key or ("maple_coupling" in key and key.endswith("weight")):
            adapter_text = tensor.shape[-1]
        if "maple_vision_ctx" in key:
            adapter_vision = tensor.shape[-1]
        elif "maple_coupling" in key:
            adapter_vision = tensor.shape[0]
    if (adapter_text is not None and adapter_text != text_width) or (
        adapter_vision is not None and adapter_vision != vision_width
    ):
        raise ValueError(
            f"The adapter {adapter!r} was trained on a CLIP with text width {adapter_text} and vision width "
            f"{adapter_vision}, but the base model {base!r} (named by {base_source}) has text width {text_width} and "
            f"vision width {vision_width}; pass base_model_name_or_path= the CLIP model the adapter was trained on."
        )


def _load_tokenizer(auto_tokenizer: Any, base: str, base_kwargs: dict, config: MaPLeConfig, hub_kwargs: dict) -> Any:
    """The base model's tokenizer, or the one the adapter was created with when the base folder has none."""
    try:
        return auto_tokenizer.from_pretrained(base, **base_kwargs)
    except (OSError, ValueError) as err:
        fallback = config.tokenizer_name_or_path
        if fallback and fallback != base:
            try:
                return auto_tokenizer.from_pretrained(fallback, **hub_kwargs)
            except (OSError, ValueError):
                pass
        raise OSError(
            f"Cannot load a tokenizer from the base model {base!r}: {err} Build the classifier yourself: "
            "PromptClassifier(PeftModel.from_pretrained(base, adapter), tokenizer, class_names)."
        ) from err
