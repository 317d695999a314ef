"""Loading a saved adapter for classification: its base model (any supported backbone), the adapter, tokenizer and
image processor.

`PromptClassifier.from_pretrained` builds on `load_for_classification`; `load_image` reads paths and URLs for
`PromptClassifier.predict`.
"""

from __future__ import annotations

import io
import os
import time
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from .config import MaPLeConfig
from .console import peft_deprecation_quieted
from .hub import check_sources, local_path_reason
from .prompts import check_class_names

#: Keyword arguments of `from_pretrained` that every Hub download takes (adapter, base model, tokenizer, processor).
_HUB_KWARGS = ("token", "cache_dir", "force_download", "local_files_only", "proxies")


class LoadedAdapter(NamedTuple):
    """What a classifier needs from a saved adapter.

    Attributes:
        model (`PeftModel`): the base model with the adapter, in eval mode.
        tokenizer: the base model's tokenizer.
        image_processor: the base model's image processor (its family's defaults when it has none).
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
    """Load a saved adapter with its base model, tokenizer and image processor, checking everything first.

    The arguments, what is checked and the errors are those of `PromptClassifier.from_pretrained`, which wraps this.

    Args:
        adapter_name_or_path (`str` or `os.PathLike`): Hub id or local folder of the adapter.
        class_names (`Sequence[str]`, *optional*): the classes; defaults to the adapter's `class_names`.
        base_model_name_or_path (`str` or `os.PathLike`, *optional*): the base model to load the adapter on.
        adapter_name (`str`, defaults to `"default"`): the name the adapter gets in the `PeftModel`.
        model_kwargs: download and loading options (see `PromptClassifier.from_pretrained`).
    """
    from peft import PeftModel
    from peft.utils.save_and_load import load_peft_weights
    from transformers import AutoConfig, AutoTokenizer

    from .backbones import backbone_for_config, check_same_family

    adapter = os.fspath(adapter_name_or_path)
    hub_kwargs = {key: model_kwargs.pop(key) for key in _HUB_KWARGS if key in model_kwargs}
    adapter_kwargs = dict(hub_kwargs)
    for key in ("revision", "subfolder"):
        if model_kwargs.get(key) is not None:
            adapter_kwargs[key] = model_kwargs[key]
        model_kwargs.pop(key, None)
    base_revision = model_kwargs.pop("base_model_revision", None)

    # a misspelled local folder, an unreachable Hub, a read-only cache: one clear error now, not minutes of retries
    check_sources({"adapter_name_or_path": (adapter, "model")}, **_check_kwargs(hub_kwargs))
    config = load_adapter_config(adapter, **adapter_kwargs)
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
            "base_model_name_or_path= the model it was trained on (a Hub id such as "
            "'openai/clip-vit-base-patch16' or a local folder)."
        )
    reason = None if os.path.exists(base) else local_path_reason(base)
    if reason is not None:
        raise FileNotFoundError(
            f"Cannot load the base model {base!r} (named by {base_source}) of the adapter {adapter!r}: no such folder "
            f"({reason}). Pass base_model_name_or_path= the Hub id or local folder of the CLIP model the adapter was "
            "trained on."
        )
    check_sources({"the base model": (base, "model")}, **_check_kwargs(hub_kwargs))
    base_kwargs = dict(hub_kwargs)
    if base_revision is not None:
        base_kwargs["revision"] = base_revision
    try:
        base_config = AutoConfig.from_pretrained(base, **base_kwargs)
    except (OSError, ValueError) as err:
        raise OSError(
            f"Cannot load the base model {base!r} (named by {base_source}) of the adapter {adapter!r}: {err} Pass "
            "base_model_name_or_path= the Hub id or local folder of the model the adapter was trained on."
        ) from err
    try:
        backbone = backbone_for_config(base_config)
    except ValueError as err:
        raise ValueError(
            f"The base model {base!r} (named by {base_source}): {err} Pass base_model_name_or_path= the model the "
            "adapter was trained on."
        ) from None
    check_same_family(config.backbone, backbone, f"{base!r} (named by {base_source})")
    _check_adapter_safetensors(adapter, adapter_kwargs)
    weights = load_peft_weights(adapter, device="cpu", **adapter_kwargs)
    _check_widths(weights, base_config, adapter, base, base_source)

    model_kwargs.setdefault("use_safetensors", True)
    if model_kwargs["use_safetensors"]:
        _check_base_safetensors(base, f"{base!r} (named by {base_source})")
    clip = backbone.model_class.from_pretrained(base, config=base_config, **base_kwargs, **model_kwargs)
    with peft_deprecation_quieted():
        model = PeftModel.from_pretrained(
            clip, adapter, adapter_name=adapter_name, is_trainable=False, config=config, **adapter_kwargs
        )
    model.eval()
    tokenizer = _load_tokenizer(AutoTokenizer, base, base_kwargs, config, hub_kwargs)
    image_processor, why_default = load_image_processor(base, base_config, **base_kwargs)
    if why_default is not None:
        warnings.warn(
            f"{why_default} Pass processor= to predict() if the model was trained with another preprocessing.",
            stacklevel=3,
        )
    return LoadedAdapter(model, tokenizer, image_processor, names)


def load_adapter_config(adapter_name_or_path: str | os.PathLike, **kwargs: Any) -> MaPLeConfig:
    """The `MaPLeConfig` of a saved adapter, refusing in one line an `adapter_config.json` that is not a MaPLe
    adapter's (another PEFT method, or a `peft_type` PEFT does not know).

    Args:
        adapter_name_or_path (`str` or `os.PathLike`): Hub id or local folder of the adapter.
        kwargs: download options of `PeftConfig.from_pretrained` (`revision`, `subfolder`, `token`, ...).

    Raises:
        `OSError`: there is no readable `adapter_config.json`.
        `ValueError`: its `peft_type` is not `"MAPLE"`, naming the value.
    """
    from peft import PeftConfig
    from peft.utils import PeftType

    adapter = os.fspath(adapter_name_or_path)
    try:
        config = PeftConfig.from_pretrained(adapter, **kwargs)
    except (KeyError, TypeError) as err:  # a peft_type PEFT does not know (the mapping's KeyError), or not a name
        try:
            value = PeftConfig._get_peft_type(adapter, **kwargs)
        except Exception:
            raise ValueError(
                f"The adapter_config.json of adapter_name_or_path={adapter!r} cannot be read as a PEFT config "
                f"({type(err).__name__}: {err}); pass the Hub id or local folder of a saved MaPLe adapter."
            ) from None
        hint = (
            " (PEFT's names are upper case)"
            if isinstance(value, str) and value.upper() in PeftType.__members__
            else ""
        )
        raise ValueError(
            f"The adapter_config.json of adapter_name_or_path={adapter!r} has peft_type {json_value(value)}, which "
            f'is not a PEFT method; a MaPLe adapter has "peft_type": "MAPLE"{hint}. Pass the Hub id or local '
            "folder of a saved MaPLe adapter."
        ) from None
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
    return config


def json_value(value: Any) -> str:
    """`value` as it is written in a JSON file (`null`, `"maple"`, `["MAPLE"]`), shortened to 60 characters."""
    import json

    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_PICKLE_REFUSED = "only safetensors weights are read (a pickle file can run code when it is loaded, so none is opened)"


def _check_adapter_safetensors(adapter: str, adapter_kwargs: dict) -> None:
    """Refuses an adapter whose weights are only a pickle (`adapter_model.bin`), before anything opens it."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    from peft.utils.constants import SAFETENSORS_WEIGHTS_NAME, WEIGHTS_NAME

    subfolder = adapter_kwargs.get("subfolder")
    folder = os.path.join(adapter, subfolder) if subfolder else adapter
    if os.path.isdir(folder):
        pickle_only = not os.path.isfile(os.path.join(folder, SAFETENSORS_WEIGHTS_NAME)) and os.path.isfile(
            os.path.join(folder, WEIGHTS_NAME)
        )
    else:  # a Hub repository: its safetensors file is fetched now (PEFT then reads it from the cache)
        names = ("token", "cache_dir", "force_download", "local_files_only", "revision", "subfolder")
        kwargs = {k: v for k, v in adapter_kwargs.items() if k in names}
        try:
            hf_hub_download(adapter, SAFETENSORS_WEIGHTS_NAME, **kwargs)
            return
        except LocalEntryNotFoundError:  # offline and not cached: a pickle in the cache is refused, else PEFT says
            cached = try_to_load_from_cache(
                adapter,
                WEIGHTS_NAME,
                cache_dir=kwargs.get("cache_dir"),
                revision=kwargs.get("revision"),
            )
            pickle_only = isinstance(cached, str)
        except EntryNotFoundError:
            pickle_only = True
    if pickle_only:
        raise ValueError(
            f"The adapter {adapter!r} holds its weights only as the pickle {WEIGHTS_NAME}; {_PICKLE_REFUSED}. If you "
            f'trust its source, convert it once: python -c "import torch, safetensors.torch as s; '
            f"s.save_file(torch.load('{WEIGHTS_NAME}', weights_only=True), '{SAFETENSORS_WEIGHTS_NAME}')\" in its "
            "folder."
        )


def _check_base_safetensors(base: str, described: str) -> None:
    """Refuses a local base model folder whose weights are only pickles (`pytorch_model.bin`), before anything
    opens them. (A Hub repository is loaded with `use_safetensors=True`: transformers refuses it.)"""
    if not os.path.isdir(base):
        return
    names = set(os.listdir(base))
    if any(name.endswith(".safetensors") or name.endswith(".safetensors.index.json") for name in names):
        return
    pickles = sorted(name for name in names if name.endswith((".bin", ".bin.index.json")))
    if pickles:
        raise ValueError(
            f"The base model {described} holds its weights only as the pickle {pickles[0]}; {_PICKLE_REFUSED}. If "
            'you trust its source, convert it once: python -c "from transformers import AutoModel; '
            f"AutoModel.from_pretrained('{base}', use_safetensors=False).save_pretrained('{base}-safetensors')\", "
            f"then pass {base}-safetensors."
        )


def load_base_model(name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
    """The dual encoder of a checkpoint, of whichever supported family its config names (`CLIPModel`,
    `MetaClip2Model`, `SiglipModel`, `Siglip2Model`), loaded with that family's class, from safetensors weights.

    Args:
        name_or_path (`str` or `os.PathLike`): a Hub id or a local folder.
        kwargs: passed to `from_pretrained` (`revision`, `token`, `cache_dir`, `local_files_only`, `dtype`, ...).

    Raises:
        `ValueError`: the checkpoint is of another model type, naming it and the supported families; or its weights
            are only pickles (`pytorch_model.bin`), which are never opened.
    """
    from transformers import AutoConfig

    from .backbones import backbone_for_config

    config_kwargs = {key: kwargs[key] for key in (*_HUB_KWARGS, "revision") if key in kwargs}
    config = AutoConfig.from_pretrained(name_or_path, **config_kwargs)
    backbone = backbone_for_config(config)
    kwargs.setdefault("use_safetensors", True)
    if kwargs["use_safetensors"]:
        _check_base_safetensors(os.fspath(name_or_path), repr(os.fspath(name_or_path)))
    return backbone.model_class.from_pretrained(name_or_path, **kwargs)


def load_image_processor(name_or_path: str | os.PathLike, base_config: Any, **kwargs: Any) -> tuple[Any, str | None]:
    """The image processor saved with a base model, or its family's default preprocessing at the model's size.

    Args:
        name_or_path (`str` or `os.PathLike`): the base model's Hub id or folder.
        base_config: the base model's config (its family and image size).
        kwargs: download options for `AutoImageProcessor.from_pretrained`.

    Returns:
        `(image_processor, why_default)`: `why_default` is None when the checkpoint's own processor was loaded, else
        the reason the family's default is used (for a warning).
    """
    from transformers import AutoImageProcessor

    from .backbones import backbone_for_config

    try:
        return AutoImageProcessor.from_pretrained(name_or_path, **kwargs), None
    except (OSError, ValueError) as err:
        backbone = backbone_for_config(base_config)
        processor = backbone.default_image_processor(base_config)
        size = getattr(base_config.vision_config, "image_size", None)
        at = f"at {size} px" if size else "at the model's number of patches"
        reason = (
            f"The base model {os.fspath(name_or_path)!r} has no image processor "
            f"({str(err).splitlines()[0] if str(err) else err!r}); using {backbone.display_name}'s default "
            f"preprocessing ({type(processor).__name__}) {at}."
        )
        return processor, reason


def _check_kwargs(hub_kwargs: dict) -> dict:
    """The download options of `from_pretrained` that `check_sources` takes."""
    return {"cache_dir": hub_kwargs.get("cache_dir"), "local_files_only": bool(hub_kwargs.get("local_files_only"))}


IMAGE_URL_TIMEOUT = (10.0, 30.0)
"""The seconds `load_image` waits on an image URL's server by default: to connect, then for each read (between
bytes), so that a server that accepts the connection and never answers cannot hang a run."""

IMAGE_URL_DEADLINE = 120.0
"""The seconds an image download may take in all by default: a server that trickles its bytes (each within the read
timeout) is cut off after this (at most one read timeout later)."""

IMAGE_URL_MAX_BYTES = 64 * 1024 * 1024
"""The size an image download may reach by default (64 MiB, far above any photo): a server that announces or sends
more is cut off, so that an endless response cannot fill the memory."""


def load_image(
    image: Any,
    timeout: float | tuple[float, float] | None = None,
    *,
    deadline: float | None = None,
    max_bytes: int | None = None,
) -> Any:
    """Read an image given as a local path or an `http(s)://` URL into an RGB PIL image, naming it on failure.

    Paths and URLs are read as transformers' `load_image` reads them (EXIF orientation applied); a URL's server is
    waited on at most `timeout`. PIL images and other objects (numpy arrays, tensors) are returned as they are, for
    the image processor.

    Args:
        image (`PIL.Image.Image`, `str`, `os.PathLike` or array): the image or where to read it.
        timeout (`float` or `(float, float)`, *optional*): for a URL, the seconds to wait for the connection and then
            for each read, as `(connect, read)` or one number for both; default `IMAGE_URL_TIMEOUT` (10 s, 30 s).
        deadline (`float`, *optional*): for a URL, the seconds the whole download may take; default
            `IMAGE_URL_DEADLINE` (120 s).
        max_bytes (`int`, *optional*): for a URL, the most bytes it may send; default `IMAGE_URL_MAX_BYTES` (64 MiB).

    Returns:
        The PIL image (or `image` itself when it is not a path or URL).

    Raises:
        `FileNotFoundError`: a path that does not exist.
        `ValueError`: a file or URL that is not a readable image, or a server that does not answer in time.
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
        if is_url:
            data = _download(source, timeout, deadline, max_bytes)
            return transformers_load_image(Image.open(io.BytesIO(data)))  # its EXIF orientation and RGB, as for files
        return transformers_load_image(source)
    except Exception as err:  # PIL's UnidentifiedImageError, truncated files, HTTP errors, timeouts...
        reason = _timeout_reason(err, timeout) or (str(err).splitlines()[0] if str(err) else type(err).__name__)
        raise ValueError(f"Cannot read image {source!r}: {reason}") from err


def _timeouts(timeout: float | tuple[float, float] | None) -> tuple[float, float]:
    if timeout is None:
        return IMAGE_URL_TIMEOUT
    return tuple(timeout) if isinstance(timeout, (tuple, list)) else (timeout, timeout)


def _download(
    url: str, timeout: float | tuple[float, float] | None, deadline: float | None, max_bytes: int | None
) -> bytes:
    """The bytes of an image URL (redirects followed), within the timeouts, the `deadline` and `max_bytes`."""
    from huggingface_hub.utils import httpx

    connect, read = _timeouts(timeout)
    deadline = IMAGE_URL_DEADLINE if deadline is None else deadline
    max_bytes = IMAGE_URL_MAX_BYTES if max_bytes is None else max_bytes
    started = time.monotonic()
    with httpx.stream("GET", url, timeout=httpx.Timeout(read, connect=connect), follow_redirects=True) as response:
        response.raise_for_status()
        announced = response.headers.get("content-length", "")
        if announced.isdigit() and int(announced) > max_bytes:
            raise ValueError(
                f"the server announces {int(announced)} bytes, more than the {max_bytes} an image may have"
            )
        chunks, size = [], 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise ValueError(f"the server sent more than the {max_bytes} bytes an image may have")
            if time.monotonic() - started > deadline:
                raise ValueError(f"the download took longer than {deadline:g} s ({size} bytes received)")
            chunks.append(chunk)
    return b"".join(chunks)


def _timeout_reason(error: Exception, timeout: float | tuple[float, float] | None) -> str | None:
    """What a download's timeout means, or `None` when `error` is not one."""
    from huggingface_hub.utils import httpx

    connect, read = _timeouts(timeout)
    if isinstance(error, httpx.ConnectTimeout):
        return f"the server did not accept the connection within {connect:g} s"
    if isinstance(error, httpx.TimeoutException):
        return f"the server did not answer within {read:g} s"
    return None


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
            f"The adapter {adapter!r} was trained on a model with text width {adapter_text} and vision width "
            f"{adapter_vision}, but the base model {base!r} (named by {base_source}) has text width {text_width} and "
            f"vision width {vision_width}; pass base_model_name_or_path= the model the adapter was trained on."
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
