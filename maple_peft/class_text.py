"""Class names → prompts → text features: the class-text encoder that the classifier and the losses share.

`ClassTextEncoder` tokenizes the class prompts once, plans their encoding and computes their text features exactly as
the dual encoder's own `get_text_features` does, with as little work as stays exact:

* causal text encoders (CLIP, MetaCLIP 2): the prompts are grouped by length and each group is trimmed at its pooled
  end-of-text token (no padding is encoded), and the prefix that all prompts share is encoded once
  (`maple_peft.shared_prefix`);
* bidirectional text encoders (SigLIP, SigLIP 2): every position of a prompt padded to the model's maximum length
  reaches the pooled last position, so the prompts are encoded whole, in chunks;
* in eval mode the features are cached until anything that changes them changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .backbones import Backbone, backbone_of
from .config import MaPLeConfig
from .layer import MaPLeLayer, MaPLeTextPromptLayer, conditioned
from .methods import fields_of
from .prompts import (
    check_class_names,
    check_template,
    check_template_tokens,
    format_prompts,
    prompt_template,
    tokenize_prompts,
)
from .shared_prefix import (
    active_text_prompt,
    common_prefix_length,
    encode_prefix,
    encode_suffixes,
    shared_prefix_unsupported,
)


def base_model_of(model: nn.Module) -> nn.Module:
    """The dual encoder inside a `PeftModel` (with the adapter layers injected), or `model` itself."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    if not hasattr(model, "text_model") or not hasattr(model, "vision_model"):
        raise TypeError(
            f"Expected a CLIP-family dual encoder (CLIPModel, MetaClip2Model, SiglipModel, Siglip2Model), optionally "
            f"wrapped by PEFT; got {type(model).__name__}."
        )
    return model


def active_maple_config(model: nn.Module) -> MaPLeConfig | None:
    """The config of the adapter whose prompts `model` uses now, or None (no adapter, or adapters disabled)."""
    base = base_model_of(model)
    configs = getattr(base, "peft_config", None) or {}
    for module in base.modules():
        if isinstance(module, MaPLeLayer):
            name = module.prompt_adapter()
            if name is not None:
                return configs.get(name)
    return None


class TokenizedPrompts(NamedTuple):
    """The class prompts, tokenized and planned for encoding.

    Attributes:
        input_ids (`torch.LongTensor`): `(n_classes, length)` token ids, right-padded (to the longest prompt, or to
            the model's maximum length for the bidirectional families).
        chunks (`list[tuple[torch.Tensor, torch.Tensor]]`): the encoding plan: `(rows, ids)` groups of at most
            `text_batch_size` prompts; for the causal families the prompts of a group have the same length up to their
            pooled token and are trimmed there (no padding).
        inverse (`torch.LongTensor`): puts the features of the concatenated chunks back in class order.
        prefix_length (`int`): the number of leading tokens all prompts share (0 where no prefix can be shared).
    """

    input_ids: torch.Tensor
    chunks: list[tuple[torch.Tensor, torch.Tensor]]
    inverse: torch.Tensor
    prefix_length: int


def _plan(
    input_ids: torch.Tensor, lengths: list[int], batch_size: int
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """Groups of prompts of equal length, each trimmed to that length and of at most `batch_size` prompts."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    chunks, start = [], 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and lengths[order[stop]] == lengths[order[start]] and stop - start < batch_size:
            stop += 1
        rows = torch.tensor(order[start:stop])
        chunks.append((rows, input_ids[rows, : lengths[order[start]]]))
        start = stop
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.tensor(order)] = torch.arange(len(order))
    return chunks, inverse


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


class ClassTextEncoder:
    """The text features of class prompts, computed exactly as the model does and as fast as stays exact.

    Class names become prompts (`template.format(name)` with `_` replaced by a space; the template is the adapter's,
    `"{prompt_init} {}."`, unless one is given), tokenized once with the base model's tokenizer and planned for
    encoding (see the module docstring). `encode()` computes the features now (with gradients when enabled);
    `features()` returns L2-normalized features, recomputed at every call in train mode and cached in eval mode.

    Cache: the features are reused while all of these stay the same: the tokenizer, template, class names and chunk
    size (they decide the tokens and their grouping), the backbone family, which adapter the text layers use (another
    active adapter, adapters disabled) and that adapter's options (MMRL++'s `beta` changed by `test_time_options`),
    `shared_prefix`, the identity, storage and in-place version counter of every text-tower parameter, and a checksum
    (sum and position-weighted sum) of the values of the active text prompts and of every trainable text-tower
    parameter. The checksum catches values replaced without an in-place operation
    (`param.data = ...`, `torch.nn.utils.vector_to_parameters`). Frozen base weights replaced through `.data` are
    caught by their storage address only; call `set_class_names(encoder.class_names)` to force a recomputation.

    The attributes `tokenizer`, `template`, `text_batch_size`, `gradient_checkpointing` and `shared_prefix` may be
    changed at any time; the next call uses them.

    Args:
        model (`nn.Module`): the adapted model (`PeftModel`) or a plain dual encoder.
        tokenizer: the base model's tokenizer.
        class_names (`Sequence[str]`): the class names.
        template (`str`, *optional*): a prompt template with one `{}`, overriding the adapter's.
        text_batch_size (`int`, defaults to 256): number of prompts encoded at once.
        gradient_checkpointing (`bool`, *keyword-only*): recompute the chunks' activations in the backward pass.
        shared_prefix (`bool`, *keyword-only*, defaults to `True`): encode the prompts' common prefix once, where the
            model allows it (`shared_prefix_reason()` says why not otherwise).

    Example:

        ```py
        >>> encoder = ClassTextEncoder(model, tokenizer, ["cat", "dog"], template="a photo of a {}.")
        >>> encoder.features().shape  # (n_classes, embed_dim), L2-normalized
        torch.Size([2, 512])
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
    ) -> None:
        if isinstance(text_batch_size, bool) or not isinstance(text_batch_size, int) or text_batch_size < 1:
            raise ValueError(f"text_batch_size={text_batch_size!r} must be an integer >= 1.")
        self.model = model
        self.tokenizer = tokenizer
        self.template = template
        self.text_batch_size = text_batch_size
        self.gradient_checkpointing = gradient_checkpointing
        self.shared_prefix = shared_prefix
        self._tokenized: tuple[tuple, TokenizedPrompts] | None = None
        self._cache: tuple[tuple, torch.Tensor] | None = None
        self.class_names: list[str] = []
        self.set_class_names(class_names)

    # ---- what is encoded -------------------------------------------------------------------------------------------

    @property
    def base_model(self) -> nn.Module:
        """The dual encoder (inside the `PeftModel`)."""
        return base_model_of(self.model)

    @property
    def backbone(self) -> Backbone:
        """The description of the model's family."""
        return backbone_of(self.model)

    def current_template(self) -> str:
        """The template the prompts are made with now (the adapter's, unless one was given)."""
        return self.template if self.template is not None else prompt_template(active_maple_config(self.model))

    @property
    def prompts(self) -> list[str]:
        """The prompt texts of the classes."""
        return format_prompts(None, self.class_names, template=self.current_template())

    def set_class_names(self, class_names: Sequence[str]) -> None:
        """Encode other classes from now on. The names are checked and tokenized at once; on any error the previous
        class names stay.

        Raises:
            `TypeError`: a name is not a string.
            `ValueError`: the list is empty, a name is blank or holds a special token of the tokenizer, two names give
                the same prompt, or a prompt is longer than the text encoder's context.
        """
        names = check_class_names(class_names)
        key = self._plan_key(names)
        tokenized = self._tokenize(names, key)
        self.class_names = names
        self._tokenized = (key, tokenized)
        self._cache = None

    def _plan_key(self, names: Sequence[str]) -> tuple:
        config = active_maple_config(self.model)
        start = config.text_prompt_start if config is not None and config.num_text_tokens else None
        return (
            id(self.tokenizer),
            self.current_template(),
            tuple(names),
            self.text_batch_size,
            self.backbone.family,
            start,
        )

    def _tokenize(self, names: list[str], key: tuple) -> TokenizedPrompts:
        _, template, _, batch_size, _, start = key
        backbone, config = self.backbone, self.base_model.config
        if self.template is not None:  # a template given is checked as such, before the class names are blamed
            check_template_tokens(self.tokenizer, check_template(template), backbone.max_text_length(config))
        prompts = format_prompts(None, names, template=template)
        input_ids = tokenize_prompts(
            self.tokenizer,
            prompts,
            names,
            backbone.max_text_length(config),
            pad_to_max_length=backbone.pads_to_max_length,
            leading_special_tokens=start,
        )
        if backbone.pads_to_max_length:
            rows = torch.arange(len(names))
            chunks = [(part, input_ids[part]) for part in rows.split(batch_size)]
            return TokenizedPrompts(input_ids, chunks, rows, 0)
        token = backbone.pooled_token_id(config)
        if token is not None:
            missing = [prompts[i] for i in range(len(names)) if not (input_ids[i] == token).any()]
            if missing:
                raise ValueError(
                    f"The prompt {missing[0]!r} holds no end-of-text token {token} (the text config's eos_token_id, "
                    f"where {backbone.display_name} pools); use the tokenizer of the base model."
                )
        lengths = (backbone.pooled_positions(input_ids, config) + 1).tolist()
        chunks, inverse = _plan(input_ids, lengths, batch_size)
        return TokenizedPrompts(input_ids, chunks, inverse, common_prefix_length(input_ids, lengths))

    def tokenized(self) -> TokenizedPrompts:
        """The tokenized prompts and their encoding plan, re-made only when what decides them changes."""
        key = self._plan_key(self.class_names)
        if self._tokenized is None or self._tokenized[0] != key:
            self._tokenized = (key, self._tokenize(self.class_names, key))
        return self._tokenized[1]

    def input_ids(self) -> torch.Tensor:
        """The tokenized prompts, `(n_classes, length)`, right-padded."""
        return self.tokenized().input_ids

    def shared_prefix_reason(self) -> str | None:
        """Why the text features are not computed with the shared-prefix encoding now, or None when they are."""
        if not self.shared_prefix:
            return "shared_prefix=False"
        config = active_maple_config(self.model)
        if config is not None and config.text_offset:
            return (
                f"{config.method.title} inserts tokens after the start token at a middle layer, which moves every "
                "later token; prompts are trimmed at their end-of-text token but encoded whole"
            )
        base = self.base_model
        n_ctx, start = active_text_prompt(base)
        return shared_prefix_unsupported(base, self.tokenized().prefix_length, n_ctx, start)

    # ---- encoding --------------------------------------------------------------------------------------------------

    def encode(self, *, normalize: bool = True, condition: torch.Tensor | None = None) -> torch.Tensor:
        """The text features of the classes computed now, with the model as it is (no cache), `(n_classes,
        embed_dim)`; differentiable when gradients are enabled.

        Args:
            normalize (`bool`): L2-normalize them; `False` gives the projected features before normalization, e.g.
                to average them over several templates.
            condition (`torch.Tensor`, *optional*): CoCoOp's per-image shift of the context `(n_images, d_text)`
                (the meta-net's output): every class prompt is encoded for every image, and the result is
                `(n_images, n_classes, embed_dim)`. Each image's prefix is encoded once and shared by its classes.
        """
        base, backbone = self.base_model, self.backbone
        device = next(base.text_model.parameters()).device
        input_ids, chunks, inverse, prefix_length = self.tokenized()
        config = active_maple_config(self.model)
        if condition is not None and self.shared_prefix_reason() == "shared_prefix=False":
            raise ValueError(
                "shared_prefix=False with a CoCoOp adapter: CoCoOp encodes every class prompt for every image, and the "
                "shared-prefix encoding (exact) is what makes that affordable, encoding each image's prefix once; "
                "keep shared_prefix=True (backbones without a shared prefix, such as SigLIP, encode whole prompts)."
            )
        offset = config.text_offset if config is not None else 0
        images = 1 if condition is None else condition.shape[0]
        if self.shared_prefix_reason() is None:
            with conditioned(base, condition):
                cache = encode_prefix(base, input_ids[:1, :prefix_length].to(device))

            def encode(ids: torch.Tensor) -> torch.Tensor:
                return encode_suffixes(base, cache, ids[:, prefix_length:])
        else:

            def encode(ids: torch.Tensor) -> torch.Tensor:
                with conditioned(base, condition):  # inside: a checkpointed chunk re-runs it in the backward pass
                    return backbone.text_features(base, ids.repeat(images, 1), offset)

        use_checkpoint = self.gradient_checkpointing and torch.is_grad_enabled()
        features = []
        for _, ids in chunks:
            ids = ids.to(device)
            chunk = checkpoint(encode, ids, use_reentrant=False) if use_checkpoint else encode(ids)
            features.append(chunk.view(images, ids.shape[0], -1))
        features = torch.cat(features, dim=1)[:, inverse.to(device)]
        features = features if condition is not None else features[0]
        return features / features.norm(dim=-1, keepdim=True) if normalize else features

    def _fingerprint(self) -> tuple:
        base = self.base_model
        text_params = list(base.text_model.parameters())
        projection = getattr(base, "text_projection", None)
        if projection is not None:
            text_params += list(projection.parameters())
        versions = tuple((id(p), p._version, p.data_ptr()) for p in text_params)
        layers = [m for m in base.text_model.modules() if isinstance(m, MaPLeLayer)]
        adapters = tuple(m.prompt_adapter() for m in layers)
        watched = {id(p): p for p in text_params if p.requires_grad}
        for module in layers:
            name = module.prompt_adapter()
            if name is not None and isinstance(module, MaPLeTextPromptLayer):
                watched.setdefault(id(module.maple_ctx[name]), module.maple_ctx[name])
        # the options of the adapter the text layers use (one set between passes, as test_time_options sets beta)
        name = next((adapter for adapter in adapters if adapter is not None), None)
        config = (getattr(base, "peft_config", None) or {}).get(name) if name is not None else None
        options = (
            () if config is None else tuple(repr(getattr(config, f.name)) for f in fields_of(config.method.options))
        )
        return versions, adapters, _checksum(list(watched.values())), self.shared_prefix, options

    def features(self) -> torch.Tensor:
        """L2-normalized text features of the classes, `(n_classes, embed_dim)`: recomputed (with gradients) in train
        mode, cached in eval mode (see the class docstring)."""
        config = active_maple_config(self.model)
        if config is not None and config.conditional:
            raise ValueError(
                "The active adapter is a CoCoOp adapter: its text features depend on the image, so there are no class "
                "features without images; use clf(images) or clf.outputs(images) (text features per image)."
            )
        if self.base_model.training:
            self._cache = None
            return self.encode()
        key = (self._plan_key(self.class_names), id(self.tokenized()), self._fingerprint())
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self.encode())
        return self._cache[1]
