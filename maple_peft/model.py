"""`MaPLeModel`: the PEFT tuner that injects the prompt wrappers into a CLIP-family dual encoder of transformers."""

from __future__ import annotations

import copy
import os
import re
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from .adapter_name import check_adapter_name
from .backbones import Backbone, backbone_of, check_same_family
from .config import COUPLED_VARIANTS, PROMPT_EXTRA_TOKENS, MaPLeConfig
from .layer import (
    MERGE_ERROR,
    MaPLeLayer,
    MaPLeRepresentationLayer,
    MaPLeTextPromptLayer,
    MaPLeVisionHeadLayer,
    MaPLeVisionPromptLayer,
    extend_pixel_attention_mask,
    unwrap,
)
from .prompts import special_token_ids


def model_towers(model: nn.Module) -> tuple[Backbone, nn.Module, nn.Module]:
    """The backbone description and the text and vision towers of `model`, after checking that it is a supported
    dual encoder built like its family (`embeddings`, then `encoder.layers`, in each tower).

    A subclass of a supported class is accepted when its towers are built like the family's, since the prompt
    positions, the pooling and the shared-prefix encoding are the family's. Other models are refused, naming their
    class and the supported families, before anything is injected.

    Args:
        model (`nn.Module`): the dual encoder (`CLIPModel`, `MetaClip2Model`, `SiglipModel`, `Siglip2Model`).
    """
    backbone = backbone_of(model)
    text_model, vision_model = model.text_model, model.vision_model
    for tower in (text_model, vision_model):
        embeddings = unwrap(getattr(tower, "embeddings", None))
        layers = getattr(getattr(tower, "encoder", None), "layers", None)
        if embeddings is None or not isinstance(layers, nn.ModuleList):
            raise ValueError(
                f"The {type(tower).__name__} of this {type(model).__name__} is not built like {backbone.display_name}'s "
                f"(`embeddings`, then `encoder.layers`); load the base model with "
                f"{backbone.model_class_name}.from_pretrained(...)."
            )
    return backbone, text_model, vision_model


def _drops_vision_prompts(backbone: Backbone, config: MaPLeConfig) -> bool:
    """The adapter removes its vision prompts before the backbone's attention-pooling head."""
    return backbone.vision_head is not None and bool(config.num_vision_tokens) and not config.vision_pool_prompts


def resolve_rep_layers(model: nn.Module, config: MaPLeConfig) -> list[int]:
    """MMRL's layers (1-based): the config's, or the last 7 text layers (6..12 for ViT-B/16), checked against both
    towers and the backbone (MMRL's tokens follow CLIP's class token: no such token in SigLIP)."""
    backbone, text_model, vision_model = model_towers(model)
    if not backbone.has_class_token():
        raise ValueError(
            f"variant='mmrl' does not carry over to {backbone.display_name}: MMRL places its representation tokens "
            "right after the class token and classifies with the class token's features, and this backbone pools its "
            "images with an attention head and has no class token. Use CLIP or MetaCLIP 2 (or another variant)."
        )
    n_text, n_vision = len(text_model.encoder.layers), len(vision_model.encoder.layers)
    layers = config.rep_layers or list(range(max(1, n_text - 6), n_text + 1))
    limit = min(n_text, n_vision)
    if layers[-1] > limit:
        raise ValueError(
            f"rep_layers={layers} but the towers have {n_text} (text) and {n_vision} (vision) layers; use 1-based layer "
            f"numbers up to {limit}."
        )
    return layers


def target_module_names(model: nn.Module, config: MaPLeConfig) -> list[str]:
    """The names of the modules that `config` wraps in `model`, after validating `depth` against both towers.

    Args:
        model (`nn.Module`): the base dual encoder.
        config (`MaPLeConfig`): the adapter configuration.
    """
    backbone, text_model, vision_model = model_towers(model)
    n_text = len(text_model.encoder.layers)
    n_vision = len(vision_model.encoder.layers)
    names: list[str] = []
    if config.num_rep_tokens:
        layers = resolve_rep_layers(model, config)
        # text: every layer from the first one on (the later ones carry the tokens and need the longer causal mask)
        names += [backbone.text_layer.format(i - 1) for i in range(layers[0], n_text + 1)]
        return names + [backbone.vision_layer.format(i - 1) for i in layers]
    if config.num_text_tokens:
        if config.depth > n_text:
            raise ValueError(f"depth={config.depth} but the text encoder has {n_text} layers; use depth <= {n_text}.")
        names += [backbone.token_embedding] + [backbone.text_layer.format(i) for i in range(1, config.depth)]
    if config.num_vision_tokens:
        if config.depth > n_vision:
            raise ValueError(
                f"depth={config.depth} but the vision encoder has {n_vision} layers; use depth <= {n_vision}."
            )
        names += [backbone.vision_embeddings] + [backbone.vision_layer.format(i) for i in range(1, config.depth)]
        if _drops_vision_prompts(backbone, config):
            if getattr(vision_model, "head", None) is None:
                raise ValueError(
                    f"This {backbone.display_name} vision tower has no pooling head (vision_use_head=False), so its "
                    "image features are not the dual encoder's; use a checkpoint with the head."
                )
            names.append(backbone.vision_head)
    return names


def _target_regex(names: list[str]) -> str:
    return "(" + "|".join(re.escape(name) for name in names) + ")"


def _depth_of(key: str) -> int:
    last = key.rsplit(".", 1)[1]
    return int(last) if last.isdigit() else 0


def _load_tokenizer(config: MaPLeConfig, model: nn.Module, why: str) -> Any:
    source = config.tokenizer_name_or_path or getattr(model, "name_or_path", None) or None
    if not source:
        raise ValueError(
            f"{why}, but the base model has no `name_or_path` to load its tokenizer from; pass "
            "MaPLeConfig(tokenizer_name_or_path=...) (a Hub id or a directory with the base model's tokenizer), or "
            "prompt_init=None for a random initialization."
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"Could not load a tokenizer from {source!r} ({why}): {error}. Pass MaPLeConfig(tokenizer_name_or_path=...) "
            "pointing to the base model's tokenizer."
        ) from error


def leading_special_tokens(tokenizer: Any, text: str = "a") -> int:
    """The number of special tokens `tokenizer` puts before a text: where the text prompts start (1 for CLIP's and
    MetaCLIP 2's start token, 0 for SigLIP's tokenizer).

    Args:
        tokenizer: a transformers tokenizer.
        text (`str`): any text without special tokens.
    """
    ids = tokenizer(text)["input_ids"]
    special = special_token_ids(tokenizer)
    count = 0
    while count < len(ids) and ids[count] in special:
        count += 1
    return count


def resolve_text_tokens(config: MaPLeConfig, model: nn.Module) -> tuple[list[int] | None, int | None]:
    """Tokenize `config.prompt_init` (once): its first `n_ctx` token ids without special tokens, and the position
    where text prompts start (the number of special tokens the tokenizer puts first).

    Saved values in the config are returned as they are. Without `prompt_init` the tokenizer is loaded only when
    `tokenizer_name_or_path` names one; otherwise the family's released tokenizer decides the start.

    Args:
        config (`MaPLeConfig`): the adapter configuration.
        model (`nn.Module`): the base model, whose `name_or_path` locates the tokenizer when
            `config.tokenizer_name_or_path` is unset.

    Returns:
        `(prompt_init_token_ids, text_prompt_start)`; both None for adapters without text prompts.
    """
    if not config.num_text_tokens:
        return None, None
    backbone = backbone_of(model)
    token_ids, start = config.prompt_init_token_ids, config.text_prompt_start
    needs_ids = config.prompt_init is not None and token_ids is None
    if not needs_ids and start is not None:
        return token_ids, start
    if not needs_ids and not config.tokenizer_name_or_path:
        return token_ids, backbone.text_prompt_start
    why = (
        f"prompt_init={config.prompt_init!r} must be tokenized to initialize the context"
        if needs_ids
        else "the tokenizer decides where the text prompts start"
    )
    tokenizer = _load_tokenizer(config, model, why)
    if start is None:
        start = leading_special_tokens(tokenizer)
    if needs_ids:
        special = special_token_ids(tokenizer)
        body = [i for i in tokenizer(config.prompt_init)["input_ids"] if i not in special]
        if len(body) < config.n_ctx:
            raise ValueError(
                f"prompt_init={config.prompt_init!r} has {len(body)} tokens but n_ctx={config.n_ctx}; use a longer "
                f"prompt_init, n_ctx <= {len(body)}, or prompt_init=None."
            )
        # besides prompt_init, a class prompt holds the leading special tokens, a class-name token, '.' and the end
        limit = backbone.max_text_length(model.config) - start - (PROMPT_EXTRA_TOKENS - 1)
        if len(body) > limit:
            raise ValueError(
                f"prompt_init={config.prompt_init!r} has {len(body)} tokens, too many for the text encoder's "
                f"{backbone.max_text_length(model.config)}-token context: a class prompt also needs the special "
                f"tokens, at least one class-name token and '.'; use a prompt_init of at most {limit} tokens."
            )
        token_ids = body[: config.n_ctx]
    return token_ids, start


def _check_text_fits(
    config: MaPLeConfig, backbone: Backbone, model: nn.Module, *, token_ids: list[int] | None = None
) -> None:
    """Refuse an `n_ctx` and prompt token ids (`token_ids`, else the config's) that the text encoder cannot take."""
    if not config.num_text_tokens:
        return
    max_length = backbone.max_text_length(model.config)
    if config.n_ctx + PROMPT_EXTRA_TOKENS > max_length:
        raise ValueError(
            f"n_ctx={config.n_ctx} does not fit in the text encoder's {max_length}-token context: a class prompt also "
            f"needs the special tokens, at least one class-name token and '.'; use n_ctx <= "
            f"{max_length - PROMPT_EXTRA_TOKENS}."
        )
    vocab_size = unwrap(model.get_submodule(backbone.token_embedding)).num_embeddings
    ids = token_ids if token_ids is not None else config.prompt_init_token_ids or []
    if any(i >= vocab_size for i in ids):
        raise ValueError(
            f"prompt_init_token_ids={ids} holds ids outside the base model's text vocabulary of {vocab_size} tokens; "
            "leave it unset so that it is computed from prompt_init, with the base model's own tokenizer "
            "(tokenizer_name_or_path)."
        )


def _absolute_if_local(name_or_path: str | None) -> str | None:
    """`name_or_path` as an absolute path when it is an existing local folder; Hub ids and `None` unchanged."""
    if name_or_path and os.path.isdir(name_or_path):
        return os.path.abspath(name_or_path)
    return name_or_path


def _format_keys(keys: list[str], adapter_name: str, limit: int = 10) -> str:
    names = [
        BaseTuner._remove_adapter_name_from_key(key, adapter_name).removeprefix("base_model.model.")
        for key in sorted(keys)
    ]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _adapter_keys(model: nn.Module, adapter_name: str) -> set[str]:
    """The state-dict keys of the tensors of `adapter_name` in `model`, as `load_state_dict` expects them."""
    keys: set[str] = set()
    for module_name, module in model.named_modules():
        if not isinstance(module, MaPLeLayer):
            continue
        for attribute in module.adapter_layer_names:
            container = getattr(module, attribute)
            if adapter_name not in container:
                continue
            prefix = f"{module_name}.{attribute}.{adapter_name}"
            entry = container[adapter_name]
            if isinstance(entry, nn.Parameter):
                keys.add(prefix)
            else:
                keys.update(f"{prefix}.{name}" for name, _ in entry.named_parameters())
    return keys


def non_finite_keys(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """The keys of the floating-point tensors of `state_dict` that hold NaN or inf (meta tensors are skipped).

    Args:
        state_dict (`dict[str, torch.Tensor]`): adapter weights.
    """
    return [
        key
        for key, value in state_dict.items()
        if isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and value.device.type != "meta"
        and not torch.isfinite(value).all()
    ]


def check_adapter_state_dict(
    model: nn.Module, config: MaPLeConfig, adapter_name: str, state_dict: dict[str, torch.Tensor]
) -> None:
    """Refuse adapter weights that are not finite or do not fit the adapter's config, before they are loaded.

    Args:
        model (`nn.Module`): the model (usually a `PeftModel`) whose adapter `adapter_name` receives the weights.
        config (`MaPLeConfig`): the adapter's configuration.
        adapter_name (`str`): the adapter being loaded.
        state_dict (`dict[str, torch.Tensor]`): the weights, keyed like the model's state dict (adapter name
            included), as `set_peft_model_state_dict` passes them to `load_state_dict`.

    Raises:
        `ValueError`: when a tensor holds NaN or inf, or when tensors the config needs are missing or tensors it does
        not use are present (another variant, depth or adapter).
    """
    non_finite = non_finite_keys(state_dict)
    if non_finite:
        raise ValueError(
            f"The weights of adapter {adapter_name!r} hold NaN or inf values in "
            f"{_format_keys(non_finite, adapter_name)}; the run that wrote them probably diverged. Use the weights "
            "of an earlier checkpoint, or train again (e.g. with a lower learning rate)."
        )
    expected = _adapter_keys(model, adapter_name)
    given = {key for key in state_dict if ".maple_" in key}
    missing = sorted(expected - given)
    unexpected = sorted(given - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_format_keys(missing, adapter_name)}")
        if unexpected:
            parts.append(f"unexpected {_format_keys(unexpected, adapter_name)}")
        raise ValueError(
            f"The weights of adapter {adapter_name!r} do not match its config (variant={config.variant!r}, "
            f"depth={config.depth}, n_ctx={config.n_ctx}): {'; '.join(parts)}. Load the weights together with the "
            "adapter_config.json they were saved with."
        )


class MaPLeModel(BaseTuner):
    """MaPLe: Multi-modal Prompt Learning (Khattak et al., CVPR 2023, https://huggingface.co/papers/2210.03117).

    Wraps a CLIP-family dual encoder of transformers (`CLIPModel`, `MetaClip2Model`, `SiglipModel`, `Siglip2Model`;
    see `maple_peft.backbones`) so that the first `depth` layers of both towers receive learnable prompts; the vision
    prompts are linear couplings of the text prompts. The base model itself stays frozen. Created by `get_peft_model`
    once `maple_peft` is imported.

    Models of other families are refused before anything is injected, naming the supported ones; an adapter saved on
    one family is refused on a base model of another, even when the widths match. Saved weights are checked whenever they are loaded (`PeftModel.from_pretrained`, `load_adapter`,
    `set_peft_model_state_dict`): NaN/inf values, and tensors that the config's variant and depth do not expect or
    that it misses, raise a `ValueError` naming them.

    Args:
        model (`nn.Module`): the dual encoder to adapt.
        config (`MaPLeConfig`): the adapter configuration.
        adapter_name (`str`): the name of the adapter, `"default"` by default.
        low_cpu_mem_usage (`bool`): create the adapter weights on the meta device (used when loading).

    Example:

        ```py
        >>> import maple_peft
        >>> from peft import get_peft_model
        >>> from transformers import CLIPModel

        >>> clip = CLIPModel.from_pretrained("openai/clip-vit-base-patch16")
        >>> model = get_peft_model(clip, maple_peft.MaPLeConfig(n_ctx=2, depth=9, prompt_init="a photo of a"))
        >>> model.print_trainable_parameters()
        trainable params: 3,555,072 || all params: 153,175,873 || trainable%: 2.3209
        ```
    """

    prefix: str = "maple_"
    tuner_layer_cls = MaPLeLayer
    target_module_mapping: dict[str, list[str]] = {}

    def _prepare_adapter_config(self, peft_config: MaPLeConfig, model_config: dict) -> MaPLeConfig:
        backbone = backbone_of(self.model)
        check_same_family(peft_config.backbone, backbone, f"({type(self.model).__name__})")
        backbone.embed_dim(self.model.config)  # a model whose text and image embeddings differ is refused
        names = target_module_names(self.model, peft_config)
        regex = _target_regex(names)
        if peft_config.target_modules is not None and peft_config.target_modules != regex:
            raise ValueError(
                f"target_modules={peft_config.target_modules!r} was set, but MaPLe chooses its modules from depth and "
                f"variant (here depth={peft_config.depth}, variant={peft_config.variant!r} give {names}); leave "
                "target_modules unset (a saved adapter_config.json must keep the values it was saved with)."
            )
        if peft_config.num_rep_tokens:
            peft_config.rep_layers = resolve_rep_layers(self.model, peft_config)
        _check_text_fits(peft_config, backbone, self.model)
        token_ids, start = resolve_text_tokens(peft_config, self.model)
        _check_text_fits(peft_config, backbone, self.model, token_ids=token_ids)
        # every check passed: only now is the user's config filled in
        peft_config.target_modules = regex
        peft_config.prompt_init_token_ids = token_ids
        peft_config.text_prompt_start = start
        peft_config.backbone = backbone.family
        # the adapter names its base model (as PEFT's get_peft_model / save_pretrained would); a relative local path
        # would point elsewhere when the adapter is loaded from another folder, so local folders are made absolute
        base_name = peft_config.base_model_name_or_path or self.model.__dict__.get("name_or_path") or None
        peft_config.base_model_name_or_path = _absolute_if_local(base_name)
        return peft_config

    @classmethod
    def _remap_adapter_state_dict_for_load(
        cls, model: nn.Module, config: MaPLeConfig, adapter_name: str, state_dict: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        # every load of saved weights passes here (PeftModel.from_pretrained / load_adapter and
        # set_peft_model_state_dict, hence from_official_checkpoint and training checkpoints): check them first
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        check_adapter_state_dict(model, config, adapter_name, remapped)
        return remapped

    def _check_new_adapter_config(self, config: MaPLeConfig) -> None:
        super()._check_new_adapter_config(config)
        if not isinstance(config, MaPLeConfig):
            raise TypeError(f"Expected a MaPLeConfig, got {type(config).__name__}.")

    # ---- creation -------------------------------------------------------------------------------------------------

    def _text_init(self, config: MaPLeConfig, depth: int, backbone: Backbone) -> torch.Tensor:
        embedding = unwrap(self.model.get_submodule(backbone.token_embedding))
        width = embedding.weight.shape[1]
        if depth == 0 and config.prompt_init_token_ids is not None:
            ids = torch.tensor(config.prompt_init_token_ids, device=embedding.weight.device)
            return embedding.weight[ids].detach().float()
        return torch.empty(config.n_ctx, width).normal_(std=config.prompt_init_std)

    def _coupling(self, config: MaPLeConfig, adapter_name: str, depth: int, d_text: int, d_vision: int):
        if config.variant not in COUPLED_VARIANTS:
            return None
        if depth == 0:
            return nn.Linear(d_text, d_vision)
        if config.variant == "maple_shared":
            return None
        # the deeper couplings start as copies of one freshly initialized Linear, as in the original code
        templates = self.__dict__.setdefault("_maple_coupling_templates", {})
        if adapter_name not in templates:
            templates[adapter_name] = nn.Linear(d_text, d_vision)
        return copy.deepcopy(templates[adapter_name])

    def _create_and_replace(
        self,
        peft_config: MaPLeConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **kwargs: Any,
    ) -> None:
        depth = _depth_of(current_key)
        backbone = backbone_of(self.model)
        base = unwrap(target)
        n_ctx = peft_config.num_vision_tokens
        wanted = MaPLeRepresentationLayer if peft_config.num_rep_tokens else None
        if isinstance(target, MaPLeLayer) and (wanted is not None) != isinstance(target, MaPLeRepresentationLayer):
            raise ValueError(
                f"{current_key} already carries an adapter of another kind ({type(target).__name__}); MMRL's "
                "representation tokens and the prompts of the other variants cannot share a model. Add the adapter "
                "to a fresh base model."
            )
        if wanted is not None:
            self._create_representation_layer(peft_config, adapter_name, target, target_name, parent, current_key)
            return
        if current_key == backbone.vision_head:
            if isinstance(target, MaPLeVisionHeadLayer):
                target.update_layer(adapter_name, n_ctx)
                return
            new_module = MaPLeVisionHeadLayer(base, adapter_name, n_ctx)
        elif current_key == backbone.token_embedding or current_key.startswith(backbone.text_layer.format("")):
            init = self._text_init(peft_config, depth, backbone)
            start = peft_config.text_prompt_start
            meta_net = self._meta_net(peft_config, backbone) if depth == 0 else None
            if isinstance(target, MaPLeTextPromptLayer):
                target.update_layer(adapter_name, init, start, meta_net)
                return
            new_module = MaPLeTextPromptLayer(base, adapter_name, depth, init, start, meta_net)
        else:
            d_text, d_vision = backbone.widths(self.model.config)
            coupling = self._coupling(peft_config, adapter_name, depth, d_text, d_vision)
            init = None
            if peft_config.variant not in COUPLED_VARIANTS:
                init = torch.empty(n_ctx, d_vision).normal_(std=peft_config.prompt_init_std)
            if isinstance(target, MaPLeVisionPromptLayer):
                target.update_layer(adapter_name, n_ctx, init=init, coupling=coupling)
                return
            new_module = MaPLeVisionPromptLayer(base, adapter_name, depth, n_ctx, init=init, coupling=coupling)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _meta_net(self, config: MaPLeConfig, backbone: Backbone) -> tuple[nn.Linear, nn.Linear] | None:
        """CoCoOp's meta-net: `Linear(embed_dim, embed_dim // 16) -> ReLU -> Linear(embed_dim // 16, d_text)`, fed with
        the normalized image features (PyTorch's default initialization, as the original)."""
        if not config.conditional:
            return None
        embed_dim = backbone.embed_dim(self.model.config)
        hidden = max(embed_dim // 16, 1)
        d_text, _ = backbone.widths(self.model.config)
        return nn.Linear(embed_dim, hidden), nn.Linear(hidden, d_text)

    def _create_representation_layer(
        self,
        config: MaPLeConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
    ) -> None:
        """MMRL: a text or vision layer that inserts, replaces or carries the representation tokens."""
        backbone = backbone_of(self.model)
        index = _depth_of(current_key)
        layer_number = index + 1
        tower = "vision" if current_key.startswith(backbone.vision_layer.format("")) else "text"
        first = layer_number == config.rep_layers[0]
        d_text, d_vision = backbone.widths(self.model.config)
        proj = None
        if layer_number in config.rep_layers:
            # each tower's projections start as copies of one freshly initialized Linear, as in the original code
            templates = self.__dict__.setdefault("_maple_rep_templates", {})
            key = (adapter_name, tower)
            if key not in templates:
                templates[key] = nn.Linear(config.rep_dim, d_vision if tower == "vision" else d_text)
            proj = copy.deepcopy(templates[key])
        tokens = proj_rep = None
        if first and tower == "text":
            tokens = torch.empty(config.n_rep, config.rep_dim).normal_(std=config.prompt_init_std)
        if first and tower == "vision":
            proj_rep = d_vision**-0.5 * torch.randn(d_vision, backbone.embed_dim(self.model.config))
        args = (config.n_rep, first, proj, tokens, proj_rep)
        if isinstance(target, MaPLeRepresentationLayer):
            target.update_layer(adapter_name, *args)
            return
        new_module = MaPLeRepresentationLayer(unwrap(target), adapter_name, index, tower, *args)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _replace_module(self, parent: nn.Module, child_name: str, new_module: nn.Module, child: nn.Module) -> None:
        setattr(parent, child_name, new_module)
        # keep the wrapper in training/eval mode like the module it replaces
        new_module.train(child.training)

    def inject_adapter(
        self,
        model: nn.Module,
        adapter_name: str,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        **kwargs: Any,
    ) -> None:
        check_adapter_name(adapter_name)  # before any layer is changed
        super().inject_adapter(
            model,
            adapter_name,
            autocast_adapter_dtype=autocast_adapter_dtype,
            low_cpu_mem_usage=low_cpu_mem_usage,
            **kwargs,
        )
        self.__dict__.get("_maple_coupling_templates", {}).pop(adapter_name, None)
        for key in [key for key in self.__dict__.get("_maple_rep_templates", {}) if key[0] == adapter_name]:
            del self.__dict__["_maple_rep_templates"][key]
        self._link(adapter_name)
        self._register_hooks()

    def _register_hooks(self) -> None:
        """SigLIP 2: extend the vision tower's `pixel_attention_mask` over the appended prompts (once per model)."""
        backbone = backbone_of(self.model)
        if "pixel_attention_mask" not in backbone.vision_inputs or "_maple_hooks" in self.__dict__:
            return
        handle = self.model.vision_model.register_forward_pre_hook(extend_pixel_attention_mask, with_kwargs=True)
        self.__dict__["_maple_hooks"] = [handle]

    def _link(self, adapter_name: str) -> None:
        """Connect each coupled vision layer of `adapter_name` to the text layer of the same depth, and each MMRL
        layer to the layer holding the representation tokens."""
        config = self.peft_config[adapter_name]
        if config.num_rep_tokens:
            layers = [m for m in self.model.modules() if isinstance(m, MaPLeRepresentationLayer)]
            owner = next(m for m in layers if adapter_name in m.maple_rep_tokens)
            for layer in layers:
                if adapter_name in layer.maple_n_ctx:
                    layer.link(adapter_name, owner)
            return
        if config.variant not in COUPLED_VARIANTS:
            return
        backbone = backbone_of(self.model)
        text_layers = [self.model.get_submodule(backbone.token_embedding)]
        text_layers += list(backbone.text_layers(self.model)[1 : config.depth])
        vision_layers = [self.model.get_submodule(backbone.vision_embeddings)]
        vision_layers += list(backbone.vision_layers(self.model)[1 : config.depth])
        for text_layer, vision_layer in zip(text_layers, vision_layers):
            owner = vision_layer if config.variant == "maple" else vision_layers[0]
            vision_layer.link(adapter_name, text_layer, owner)

    # ---- things a prompt method cannot do ---------------------------------------------------------------------------

    def _check_merge_allowed(self) -> None:
        raise ValueError(MERGE_ERROR)

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        raise ValueError(MERGE_ERROR)

    def _unload_and_optionally_merge(
        self,
        merge: bool = True,
        progressbar: bool = False,
        safe_merge: bool = False,
        adapter_names: list[str] | None = None,
    ) -> nn.Module:
        if merge:
            raise ValueError(MERGE_ERROR)
        for handle in self.__dict__.pop("_maple_hooks", []):
            handle.remove()
        for name, module in list(self.model.named_modules()):
            if isinstance(module, MaPLeLayer):
                parent_name, _, child_name = name.rpartition(".")
                parent = self.model.get_submodule(parent_name) if parent_name else self.model
                setattr(parent, child_name, module.get_base_layer())
        if hasattr(self.model, "peft_config"):
            del self.model.peft_config
        return self.model
