"""`PromptClassifier`: class names in, logits out, with the text features computed once where they can be."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import MaPLeConfig
from .layer import MaPLeLayer, MaPLeTextPromptLayer
from .loading import load_image
from .prompts import check_class_names, format_prompts, prompt_template, tokenize_prompts
from .shared_prefix import (
    PrefixCache,
    active_text_n_ctx,
    common_prefix_length,
    encode_prefix,
    encode_suffixes,
    shared_prefix_unsupported,
)


def _pooled(output: Any) -> torch.Tensor:
    # transformers >= 5 returns a ModelOutput whose pooler_output is projected; older versions return the tensor
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def unwrap_clip(model: nn.Module) -> nn.Module:
    """The `CLIPModel` inside a `PeftModel` (with the adapter layers injected), or `model` itself."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    if not hasattr(model, "text_model") or not hasattr(model, "vision_model"):
        raise TypeError(
            f"PromptClassifier needs a transformers CLIPModel (optionally wrapped by PEFT), got {type(model).__name__}."
        )
    return model


def active_maple_config(model: nn.Module) -> MaPLeConfig | None:
    """The config of the MaPLe adapter whose prompts `model` uses now, or None (no adapter, or adapters disabled)."""
    clip = unwrap_clip(model)
    configs = getattr(clip, "peft_config", None) or {}
    for module in clip.modules():
        if isinstance(module, MaPLeLayer):
            name = module.prompt_adapter()
            if name is not None:
                return configs.get(name)
    return None


class TokenizedPrompts(NamedTuple):
    """The class prompts, tokenized and planned for encoding.

    Attributes:
        input_ids (`torch.LongTensor`): `(n_classes, longest)` token ids, right-padded.
        chunks (`list[tuple[torch.Tensor, torch.Tensor]]`): the encoding plan: `(rows, ids)` groups of prompts of
            equal length, each trimmed to that length (no padding) and at most `text_batch_size` prompts.
        inverse (`torch.LongTensor`): puts the features of the concatenated chunks back in class order.
        prefix_length (`int`): the number of leading tokens all prompts share.
    """

    input_ids: torch.Tensor
    chunks: list[tuple[torch.Tensor, torch.Tensor]]
    inverse: torch.Tensor
    prefix_length: int


def _checksum(tensors: Sequence[torch.Tensor]) -> tuple[float, ...]:
    """Two cheap sums per tensor (plain and position-weighted): any change of values shows in one of them."""
    if not tensors:
        return ()
    with torch.no_grad():
        sums = []
        for tensor in tensors:
            flat = tensor.detach().flatten().double()
            weights = torch.arange(1, flat.numel() + 1, device=flat.device, dtype=torch.float64)
            sums.append(torch.stack([flat.sum(), (flat * weights).sum()]))
        return tuple(torch.cat(sums).tolist())


def _check_pixel_values(pixel_values: Any) -> None:
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(
            f"pixel_values must be a torch.Tensor of shape (batch, 3, height, width), got {type(pixel_values).__name__}"
            "; use clf.predict(images) for PIL images or paths."
        )
    if not pixel_values.is_floating_point():
        raise TypeError(
            f"pixel_values has dtype {pixel_values.dtype}, but CLIP needs normalized floating-point pixel values; "
            "preprocess the images with the model's image processor (e.g. "
            "CLIPImageProcessor(...)(images=images, return_tensors='pt').pixel_values), or use clf.predict(images)."
        )
    if pixel_values.ndim != 4:
        raise ValueError(
            f"pixel_values has shape {tuple(pixel_values.shape)}; it must be (batch, channels, height, width)."
        )
    if pixel_values.shape[0] == 0:
        raise ValueError(
            f"pixel_values is an empty batch (shape {tuple(pixel_values.shape)}); pass at least one image."
        )


def _is_single_image(images: Any) -> bool:
    from PIL import Image

    return isinstance(images, (str, os.PathLike, Image.Image))


class PromptClassifier(nn.Module):
    """Classifies images among class names with a (MaPLe-adapted) CLIP.

    Class names become prompts (`"a photo of a {name}."` for the default adapter, see `maple_peft.format_prompts`),
    tokenized once and encoded in groups of prompts of equal length, each trimmed to that length, so that no padding
    is encoded (exact: CLIP's causal text encoder pools at the end-of-text token). The token prefix that all prompts
    share (`<start> ctx_1 .. ctx_n of a`) is encoded once and reused by every class (`shared_prefix`, see
    `maple_peft.shared_prefix`), which about halves the text cost. Text is encoded in chunks of at most
    `text_batch_size` prompts; with `gradient_checkpointing=True` the chunks' activations are recomputed in the
    backward pass, so training memory stays bounded for thousands of classes.

    Text-feature cache: in train mode the text features are recomputed at every call, with gradients. In eval mode
    they are computed once and reused while all of these stay the same: the class names and template, which adapter
    the text layers use (other active adapter, adapters disabled), `shared_prefix`, the identity, storage and in-place
    version counter of every text-tower parameter, and a checksum (sum and position-weighted sum) of the values of the
    active text prompts and of every trainable text-tower parameter. The checksum catches values replaced without an
    in-place operation (`param.data = ...`, `torch.nn.utils.vector_to_parameters`); it costs two reductions over the
    prompt tensors per call, nothing next to encoding the prompts. Frozen base weights replaced through `.data` are
    caught by their storage address only; call `set_class_names(clf.class_names)` to force a recomputation.

    `PromptClassifier.from_pretrained(adapter)` builds a classifier from a saved adapter in one call (base model,
    tokenizer, image processor and the class names saved with the adapter); `predict` and `predict_proba` then take
    PIL images, paths or URLs.

    Args:
        model (`PeftModel` or `CLIPModel`): the adapted model (or a plain CLIP for zero-shot classification).
        tokenizer: the CLIP tokenizer.
        class_names (`Sequence[str]`): the class names (`_` becomes a space). Names must be strings, give distinct
            prompts, contain none of CLIP's special tokens and fit CLIP's 77 tokens in their prompt.
        template (`str`, *optional*): a prompt template with one `{}`, overriding the adapter's (e.g. a dataset's
            zero-shot template for plain CLIP).
        text_batch_size (`int`, defaults to 256): number of prompts encoded at once.
        gradient_checkpointing (`bool`, *keyword-only*, defaults to `False`): recompute the text activations in the
            backward pass (training only).
        shared_prefix (`bool`, *keyword-only*, defaults to `True`): encode the prompts' common prefix once. It is used
            whenever the model allows it (a transformers CLIP text tower without forward hooks, no attention dropout
            or transformers gradient checkpointing in training; `shared_prefix_reason()` says why not otherwise) and
            gives the same features up to float rounding. `False` always runs the text tower's own forward.
        image_processor (*keyword-only*, *optional*): the image processor `predict` and `predict_proba` use when
            they are not given one (kept as `clf.image_processor`; `from_pretrained` sets it to the base model's).

    Example:

        ```py
        >>> clf = maple_peft.PromptClassifier.from_pretrained("user/maple-eurosat")  # base, tokenizer, classes
        >>> clf.predict(["forest.jpg", "river.png"])
        ['Forest', 'River']
        >>> clf = maple_peft.PromptClassifier(model, tokenizer, ["cat", "golden_retriever"])  # or build it yourself
        >>> logits = clf(pixel_values)  # (batch, 2)
        >>> clf.set_class_names(["zebra", "okapi", "giraffe"])  # new classes at test time
        ```
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        class_names: Sequence[str],
        template: str | None = None,
        text_batch_size: int = 256,
        *,
        gradient_checkpointing: bool = False,
        shared_prefix: bool = True,
        image_processor: Any = None,
    ) -> None:
        super().__init__()
        if isinstance(text_batch_size, bool) or not isinstance(text_batch_size, int) or text_batch_size < 1:
            raise ValueError(f"text_batch_size={text_batch_size!r} must be an integer >= 1.")
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.text_batch_size = text_batch_size
        self.gradient_checkpointing = gradient_checkpointing
        self.shared_prefix = shared_prefix
        self.image_processor = image_processor
        self._cache: tuple[Any, torch.Tensor] | None = None
        self._tokenized: tuple[str, TokenizedPrompts] | None = None
        self.class_names: list[str] = []
        self.set_class_names(class_names)

    @classmethod
    def from_pretrained(
        cls,
        adapter_name_or_path: str | os.PathLike,
        class_names: Sequence[str] | None = None,
        *,
        base_model_name_or_path: str | os.PathLike | None = None,
        adapter_name: str = "default",
        **model_kwargs: Any,
    ) -> PromptClassifier:
        """A ready classifier from a saved MaPLe adapter (a Hub id or a folder), in eval mode.

        Reads the adapter's `adapter_config.json`, loads the base `CLIPModel` it names (or `base_model_name_or_path`),
        the adapter (`PeftModel.from_pretrained`), the base model's tokenizer (`AutoTokenizer`) and image processor
        (`AutoImageProcessor`; CLIP's default preprocessing at the model's image size, with a warning, when the base
        has none), and classifies among the class names saved with the adapter unless `class_names` is given.

        Everything is checked before the base model's weights are loaded: the adapter is a MaPLe adapter, a base model
        is named and can be found, its text and vision widths match the adapter's tensors, and there are class names.

        Args:
            adapter_name_or_path (`str` or `os.PathLike`): Hub id or local folder of the adapter.
            class_names (`Sequence[str]`, *optional*): the classes to recognize; defaults to the adapter's
                `class_names` (those it was trained on).
            base_model_name_or_path (`str` or `os.PathLike`, *optional*): the CLIP to load the adapter on; defaults
                to the one the adapter's config names (`base_model_name_or_path`).
            adapter_name (`str`, defaults to `"default"`): the name the adapter gets in the `PeftModel`.
            model_kwargs: `revision`, `subfolder`: where the adapter is in its repository. `base_model_revision`:
                the base model's revision; defaults to the `revision` recorded in the adapter's config when the base
                model is the one it names (as `AutoPeftModel` does). `token`, `cache_dir`, `force_download`,
                `local_files_only`, `proxies`: used for every download (adapter, base model, tokenizer, image
                processor). Everything else (`dtype`/`torch_dtype`, `device_map`, `attn_implementation`, ...) goes to
                `CLIPModel.from_pretrained`.

        Returns:
            `PromptClassifier` with `image_processor` set, in eval mode.

        Raises:
            `OSError`: the adapter or the base model cannot be found or loaded.
            `ValueError`: the adapter is not a MaPLe adapter, names no base model, does not fit the base model's
                widths, or there are no class names.

        Example:

            ```py
            >>> clf = maple_peft.PromptClassifier.from_pretrained("user/maple-eurosat", dtype=torch.bfloat16)
            >>> clf.predict_proba("field.jpg", top_k=2)
            [{'label': 'AnnualCrop', 'score': 0.91}, {'label': 'PermanentCrop', 'score': 0.06}]
            ```
        """
        from .loading import load_for_classification

        loaded = load_for_classification(
            adapter_name_or_path,
            class_names,
            base_model_name_or_path=base_model_name_or_path,
            adapter_name=adapter_name,
            **model_kwargs,
        )
        classifier = cls(loaded.model, loaded.tokenizer, loaded.class_names, image_processor=loaded.image_processor)
        return classifier.eval()

    @property
    def clip(self) -> nn.Module:
        return unwrap_clip(self.model)

    def set_class_names(self, class_names: Sequence[str]) -> None:
        """Classify among other classes from now on (e.g. novel classes at test time).

        The names are checked and their prompts tokenized at once; on any error the previous class names stay.

        Args:
            class_names (`Sequence[str]`): the new class names.

        Raises:
            `TypeError`: a name is not a string.
            `ValueError`: the list is empty, a name is blank or contains one of CLIP's special tokens, two names give
                the same prompt, or a prompt is longer than CLIP's 77 tokens.
        """
        names = check_class_names(class_names)
        template = self.current_template()
        tokenized = self._tokenize_names(names, template)
        self.class_names = names
        self._tokenized = (template, tokenized)
        self._cache = None

    def current_template(self) -> str:
        """The template the prompts are made with now (the adapter's, unless one was passed)."""
        return self.template if self.template is not None else prompt_template(active_maple_config(self.model))

    @property
    def prompts(self) -> list[str]:
        return format_prompts(None, self.class_names, template=self.current_template())

    def input_ids(self) -> torch.Tensor:
        """The tokenized prompts, `(n_classes, longest)`, re-tokenized only when the template changes."""
        return self._tokenize().input_ids

    def _tokenize_names(self, class_names: list[str], template: str) -> TokenizedPrompts:
        prompts = format_prompts(None, class_names, template=template)
        input_ids = tokenize_prompts(self.tokenizer, prompts, class_names)
        lengths = ((input_ids == self.tokenizer.eos_token_id).int().argmax(dim=-1) + 1).tolist()
        chunks, inverse = self._plan(input_ids, lengths)
        return TokenizedPrompts(input_ids, chunks, inverse, common_prefix_length(input_ids, lengths))

    def _tokenize(self) -> TokenizedPrompts:
        """The tokenized prompts and their encoding plan, re-made only when the template changes."""
        template = self.current_template()
        if self._tokenized is None or self._tokenized[0] != template:
            self._tokenized = (template, self._tokenize_names(self.class_names, template))
        return self._tokenized[1]

    def _plan(
        self, input_ids: torch.Tensor, lengths: list[int]
    ) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        # Prompts are grouped by length (up to the end-of-text token) and each group is trimmed to that length, so no
        # padding token is encoded at all. Exact: the text encoder is causal and pools at the end-of-text token.
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        chunks, start = [], 0
        while start < len(order):
            stop = start + 1
            while (
                stop < len(order)
                and lengths[order[stop]] == lengths[order[start]]
                and stop - start < self.text_batch_size
            ):
                stop += 1
            rows = torch.tensor(order[start:stop])
            chunks.append((rows, input_ids[rows, : lengths[order[start]]]))
            start = stop
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order)] = torch.arange(len(order))
        return chunks, inverse

    def _fingerprint(self, clip: nn.Module) -> tuple:
        text_params = [p for part in (clip.text_model, clip.text_projection) for p in part.parameters()]
        versions = tuple((id(p), p._version, p.data_ptr()) for p in text_params)
        layers = [m for m in clip.text_model.modules() if isinstance(m, MaPLeLayer)]
        adapters = tuple(m.prompt_adapter() for m in layers)
        watched = {id(p): p for p in text_params if p.requires_grad}
        for module in layers:
            name = module.prompt_adapter()
            if name is not None and isinstance(module, MaPLeTextPromptLayer):
                watched.setdefault(id(module.maple_ctx[name]), module.maple_ctx[name])
        tokenized = self._tokenize()
        return versions, adapters, _checksum(list(watched.values())), id(tokenized), self.shared_prefix

    def _encode(self, input_ids: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        features = _pooled(self.clip.get_text_features(input_ids=input_ids))
        return features / features.norm(dim=-1, keepdim=True) if normalize else features

    def shared_prefix_reason(self) -> str | None:
        """Why the text features are not computed with the shared-prefix encoding now, or None when they are."""
        if not self.shared_prefix:
            return "shared_prefix=False"
        clip = self.clip
        return shared_prefix_unsupported(clip, self._tokenize().prefix_length, active_text_n_ctx(clip))

    def _encode_suffixes(self, cache: PrefixCache, ids: torch.Tensor, *, normalize: bool = True) -> torch.Tensor:
        features = encode_suffixes(self.clip, cache, ids)
        return features / features.norm(dim=-1, keepdim=True) if normalize else features

    def encode_class_prompts(self, *, normalize: bool = True) -> torch.Tensor:
        """The text features of the classes computed now, with the model as it is (no cache), `(n_classes,
        projection_dim)`: the same exact trimmed / shared-prefix encoding as `text_features()`.

        Args:
            normalize (`bool`): L2-normalize them (as `text_features()` does); `False` gives the projected features
                before normalization, e.g. to average them over several templates.
        """
        return self._compute_text_features(self.clip, normalize=normalize)

    def _compute_text_features(self, clip: nn.Module, *, normalize: bool = True) -> torch.Tensor:
        device = clip.text_projection.weight.device
        input_ids, chunks, inverse, prefix_length = self._tokenize()
        use_checkpoint = self.gradient_checkpointing and torch.is_grad_enabled()
        if self.shared_prefix_reason() is None:
            cache = encode_prefix(clip, input_ids[:1, :prefix_length].to(device))
            encode = lambda ids: self._encode_suffixes(cache, ids[:, prefix_length:], normalize=normalize)  # noqa: E731
        else:
            encode = lambda ids: self._encode(ids, normalize=normalize)  # noqa: E731
        features = []
        for _, ids in chunks:
            ids = ids.to(device)
            features.append(checkpoint(encode, ids, use_reentrant=False) if use_checkpoint else encode(ids))
        return torch.cat(features)[inverse.to(device)]

    def text_features(self) -> torch.Tensor:
        """L2-normalized text features of the classes, `(n_classes, projection_dim)`."""
        clip = self.clip
        if clip.training:
            self._cache = None
            return self._compute_text_features(clip)
        key = self._fingerprint(clip)
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self._compute_text_features(clip))
        return self._cache[1]

    def image_features(self, pixel_values: torch.Tensor, *, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """L2-normalized image features, `(batch, projection_dim)`.

        Args:
            pixel_values (`torch.FloatTensor`): `(batch, 3, height, width)` images preprocessed by the image
                processor (floating point, normalized).
            interpolate_pos_encoding (`bool`, *keyword-only*): interpolate the position embeddings for images of
                another size than the model's.
        """
        _check_pixel_values(pixel_values)
        features = _pooled(
            self.clip.get_image_features(pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        )
        return features / features.norm(dim=-1, keepdim=True)

    def forward(self, pixel_values: torch.Tensor, *, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Logits `logit_scale.exp() * cos(image, class prompt)`, shape `(batch, n_classes)`.

        Args:
            pixel_values (`torch.FloatTensor`): `(batch, 3, height, width)` preprocessed images.
            interpolate_pos_encoding (`bool`, *keyword-only*): see `image_features`.
        """
        image = self.image_features(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        text = self.text_features()
        scale = self.clip.logit_scale.exp()
        return scale.to(image.dtype) * image @ text.to(image.dtype).t()

    @contextmanager
    def _evaluating(self) -> Iterator[None]:
        """Eval mode inside the block; every module's previous mode is restored after it."""
        modes = [(module, module.training) for module in self.modules()]
        self.eval()
        try:
            yield
        finally:
            for module, training in modes:
                module.training = training

    def _probabilities(self, images: Sequence[Any], processor: Any, batch_size: int) -> Iterator[torch.Tensor]:
        """Class probabilities `(batch, n_classes)` of successive batches of `images`, in eval mode."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r} must be an integer >= 1.")
        processor = processor if processor is not None else self.image_processor
        if processor is None:
            raise ValueError(
                "No image processor: pass processor= (e.g. CLIPImageProcessor.from_pretrained(base_model)), build the "
                "classifier with image_processor=, or load it with PromptClassifier.from_pretrained(adapter)."
            )
        if len(images) == 0:
            raise ValueError("images is empty; pass at least one image (a PIL image, a path or a URL).")
        clip = self.clip
        weight = clip.visual_projection.weight
        with self._evaluating(), torch.no_grad():
            for start in range(0, len(images), batch_size):
                batch = [load_image(image) for image in images[start : start + batch_size]]
                pixel_values = processor(images=batch, return_tensors="pt")["pixel_values"]
                yield self(pixel_values.to(weight.device, weight.dtype)).float().softmax(dim=-1)

    def predict(self, images: Any | Sequence[Any], processor: Any = None, *, batch_size: int = 64) -> list[str] | str:
        """The predicted class name of each image.

        Runs in eval mode (text features computed once) and restores the previous mode of every module afterwards.

        Args:
            images: a list of images, each a PIL image, a local path or an `http(s)://` URL (or a numpy array the
                processor accepts); a single image gives a single name.
            processor (*optional*): the image processor (a CLIP processor or image processor); defaults to
                `clf.image_processor`.
            batch_size (`int`, *keyword-only*, defaults to 64): images processed at once.

        Returns:
            `list[str]` (or `str` for a single image): the class names.

        Raises:
            `FileNotFoundError` / `ValueError`: an image cannot be read (naming it); no image processor.
        """
        single = _is_single_image(images)
        names = []
        for probabilities in self._probabilities([images] if single else images, processor, batch_size):
            names += [self.class_names[index] for index in probabilities.argmax(dim=-1).tolist()]
        return names[0] if single else names

    def predict_proba(
        self,
        images: Any | Sequence[Any],
        processor: Any = None,
        *,
        top_k: int | None = None,
        batch_size: int = 64,
    ) -> list[list[dict[str, Any]]] | list[dict[str, Any]]:
        """The class probabilities of each image, as transformers' image-classification pipelines return them.

        Each image gets a list `[{"label": class_name, "score": probability}, ...]` sorted by decreasing score (the
        softmax of the logits over all classes).

        Args:
            images: as for `predict`; a single image gives a single list.
            processor (*optional*): the image processor; defaults to `clf.image_processor`.
            top_k (`int`, *keyword-only*, *optional*): keep the `top_k` most probable classes; `None` keeps all.
            batch_size (`int`, *keyword-only*, defaults to 64): images processed at once.

        Example:

            ```py
            >>> clf.predict_proba(["cat.jpg"], top_k=2)
            [[{'label': 'cat', 'score': 0.97}, {'label': 'dog', 'score': 0.02}]]
            ```
        """
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise ValueError(f"top_k={top_k!r} must be an integer >= 1 (or None for all classes).")
        single = _is_single_image(images)
        k = len(self.class_names) if top_k is None else min(top_k, len(self.class_names))
        results = []
        for probabilities in self._probabilities([images] if single else images, processor, batch_size):
            scores, indices = probabilities.topk(k, dim=-1)
            for row_scores, row_indices in zip(scores.tolist(), indices.tolist()):
                results.append(
                    [{"label": self.class_names[i], "score": score} for score, i in zip(row_scores, row_indices)]
                )
        return results[0] if single else results

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save the adapter with the classifier's current class names in its `adapter_config.json`.

        `PromptClassifier.from_pretrained(save_directory)` then classifies among these classes, so a classifier
        switched to other classes with `set_class_names` can be shared as it is. The names are written into the config
        of the active adapter only for the save: the live model's config keeps its previous `class_names` afterwards
        (so a later `model.save_pretrained` writes those).

        Args:
            save_directory (`str` or `os.PathLike`): where to write the adapter.
            kwargs: passed on to `PeftModel.save_pretrained` (e.g. `safe_serialization`, `selected_adapters`).

        Raises:
            `TypeError`: the classifier's model is not a `PeftModel` with a MaPLe adapter.
        """
        model = self.model
        if not hasattr(model, "peft_config") or not hasattr(model, "save_pretrained"):
            raise TypeError(
                f"save_pretrained needs a classifier whose model is a PeftModel, got {type(model).__name__}; a plain "
                "CLIP has no adapter to save."
            )
        config = model.peft_config.get(model.active_adapter)
        if not isinstance(config, MaPLeConfig):
            raise TypeError(
                f"The active adapter {model.active_adapter!r} is not a MaPLe adapter; there is no MaPLe config to "
                "write the class names into."
            )
        if self.template is not None:
            warnings.warn(
                f"This classifier uses template={self.template!r}, which is not saved with the adapter; the loaded "
                f"classifier uses the adapter's template {prompt_template(config)!r} unless given template= again.",
                stacklevel=2,
            )
        previous = config.class_names
        config.class_names = list(self.class_names)
        try:
            model.save_pretrained(save_directory, **kwargs)
        finally:
            config.class_names = previous
