"""`PromptClassifier`: class names in, logits out, with the text features computed once where they can be."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import MaPLeConfig
from .layer import MaPLeLayer
from .prompts import format_prompts, prompt_template, tokenize_prompts
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


class PromptClassifier(nn.Module):
    """Classifies images among class names with a (MaPLe-adapted) CLIP.

    Class names become prompts (`"a photo of a {name}."` for the default adapter, see `maple_peft.format_prompts`),
    tokenized once and encoded in groups of prompts of equal length, each trimmed to that length, so that no padding
    is encoded (exact: CLIP's causal text encoder pools at the end-of-text token). The token prefix that all prompts
    share (`<start> ctx_1 .. ctx_n of a`) is encoded once and reused by every class (`shared_prefix`, see
    `maple_peft.shared_prefix`), which about halves the text cost. In eval mode the text features are computed once
    and cached until the adapter changes (other active adapter, adapters disabled, parameters updated); in train mode
    they are recomputed at every call with gradients. Text is encoded in chunks of at most `text_batch_size` prompts;
    with `gradient_checkpointing=True` the chunks' activations are recomputed in the backward pass, so training memory
    stays bounded for thousands of classes.

    Args:
        model (`PeftModel` or `CLIPModel`): the adapted model (or a plain CLIP for zero-shot classification).
        tokenizer: the CLIP tokenizer.
        class_names (`Sequence[str]`): the class names (`_` becomes a space).
        template (`str`, *optional*): a prompt template with one `{}`, overriding the adapter's (e.g. a dataset's
            zero-shot template for plain CLIP).
        text_batch_size (`int`): number of prompts encoded at once.
        gradient_checkpointing (`bool`): recompute the text activations in the backward pass (training only).
        shared_prefix (`bool`): encode the prompts' common prefix once. It is used whenever the model allows it (a
            transformers CLIP text tower without forward hooks, no attention dropout or transformers gradient
            checkpointing in training; `shared_prefix_reason()` says why not otherwise) and gives the same features
            up to float rounding. `False` always runs the text tower's own forward.

    Example:

        ```py
        >>> clf = maple_peft.PromptClassifier(model, tokenizer, ["cat", "golden_retriever"])
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
        gradient_checkpointing: bool = False,
        shared_prefix: bool = True,
    ) -> None:
        super().__init__()
        if text_batch_size < 1:
            raise ValueError(f"text_batch_size={text_batch_size} must be >= 1.")
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.text_batch_size = text_batch_size
        self.gradient_checkpointing = gradient_checkpointing
        self.shared_prefix = shared_prefix
        self._cache: tuple[Any, torch.Tensor] | None = None
        self._tokenized: tuple[str, torch.Tensor] | None = None
        self.set_class_names(class_names)

    @property
    def clip(self) -> nn.Module:
        return unwrap_clip(self.model)

    def set_class_names(self, class_names: Sequence[str]) -> None:
        """Classify among other classes from now on (e.g. novel classes at test time)."""
        if isinstance(class_names, str) or len(class_names) == 0:
            raise ValueError(f"class_names={class_names!r} must be a non-empty sequence of names.")
        self.class_names = list(class_names)
        self._tokenized = None
        self._cache = None

    def current_template(self) -> str:
        """The template the prompts are made with now (the adapter's, unless one was passed)."""
        return self.template if self.template is not None else prompt_template(active_maple_config(self.model))

    @property
    def prompts(self) -> list[str]:
        return format_prompts(None, self.class_names, template=self.current_template())

    def input_ids(self) -> torch.Tensor:
        """The tokenized prompts, `(n_classes, longest)`, re-tokenized only when the template changes."""
        return self._tokenize()[0]

    def _tokenize(self) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor, int]:
        """Token ids, the encoding plan (groups of equal-length prompts, each trimmed to its length), its inverse, and
        the number of leading tokens all prompts share."""
        template = self.current_template()
        if self._tokenized is None or self._tokenized[0] != template:
            prompts = format_prompts(None, self.class_names, template=template)
            input_ids = tokenize_prompts(self.tokenizer, prompts, self.class_names)
            lengths = ((input_ids == self.tokenizer.eos_token_id).int().argmax(dim=-1) + 1).tolist()
            self._tokenized = (
                template,
                input_ids,
                *self._plan(input_ids, lengths),
                common_prefix_length(input_ids, lengths),
            )
        return self._tokenized[1:]

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
        text_side = [clip.text_model, clip.text_projection]
        versions = tuple((id(p), p._version) for part in text_side for p in part.parameters())
        adapters = tuple(m.prompt_adapter() for m in clip.text_model.modules() if isinstance(m, MaPLeLayer))
        return versions, adapters, self._tokenize()[0].data_ptr(), self.shared_prefix

    def _encode(self, input_ids: torch.Tensor) -> torch.Tensor:
        features = _pooled(self.clip.get_text_features(input_ids=input_ids))
        return features / features.norm(dim=-1, keepdim=True)

    def shared_prefix_reason(self) -> str | None:
        """Why the text features are not computed with the shared-prefix encoding now, or None when they are."""
        if not self.shared_prefix:
            return "shared_prefix=False"
        clip = self.clip
        return shared_prefix_unsupported(clip, self._tokenize()[3], active_text_n_ctx(clip))

    def _encode_suffixes(self, cache: PrefixCache, ids: torch.Tensor) -> torch.Tensor:
        features = encode_suffixes(self.clip, cache, ids)
        return features / features.norm(dim=-1, keepdim=True)

    def _compute_text_features(self, clip: nn.Module) -> torch.Tensor:
        device = clip.text_projection.weight.device
        input_ids, chunks, inverse, prefix_length = self._tokenize()
        use_checkpoint = self.gradient_checkpointing and torch.is_grad_enabled()
        if self.shared_prefix_reason() is None:
            cache = encode_prefix(clip, input_ids[:1, :prefix_length].to(device))
            encode = lambda ids: self._encode_suffixes(cache, ids[:, prefix_length:])  # noqa: E731
        else:
            encode = self._encode
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

    def image_features(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """L2-normalized image features, `(batch, projection_dim)`."""
        features = _pooled(
            self.clip.get_image_features(pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        )
        return features / features.norm(dim=-1, keepdim=True)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        """Logits `logit_scale.exp() * cos(image, class prompt)`, shape `(batch, n_classes)`."""
        image = self.image_features(pixel_values, interpolate_pos_encoding)
        text = self.text_features()
        scale = self.clip.logit_scale.exp()
        return scale.to(image.dtype) * image @ text.to(image.dtype).t()

    @torch.no_grad()
    def predict(self, images: Sequence[Any], processor: Any, batch_size: int = 64) -> list[str]:
        """Predicted class names of PIL images, preprocessed by `processor` (a CLIP processor or image processor)."""
        clip = self.clip
        device = clip.logit_scale.device
        dtype = clip.visual_projection.weight.dtype
        names = []
        for start in range(0, len(images), batch_size):
            batch = list(images[start : start + batch_size])
            pixel_values = processor(images=batch, return_tensors="pt")["pixel_values"].to(device, dtype)
            names += [self.class_names[i] for i in self(pixel_values).argmax(dim=-1).tolist()]
        return names
