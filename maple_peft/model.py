"""`MaPLeModel`: the PEFT tuner that injects MaPLe's prompt wrappers into a transformers `CLIPModel`."""

from __future__ import annotations

import copy
import os
import re
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTuner
from torch import nn

from .config import COUPLED_VARIANTS, PROMPT_EXTRA_TOKENS, MaPLeConfig
from .layer import MERGE_ERROR, MaPLeLayer, MaPLeTextPromptLayer, MaPLeVisionPromptLayer, unwrap

TEXT_EMBEDDING = "text_model.embeddings.token_embedding"
TEXT_LAYER = "text_model.encoder.layers.{}"
VISION_EMBEDDING = "vision_model.embeddings"
VISION_LAYER = "vision_model.encoder.layers.{}"


def _clip_parts(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The text and vision towers of `model`, after checking that it is a transformers `CLIPModel`.

    A subclass of `CLIPModel` is accepted when its towers are built from transformers' CLIP modules
    (`CLIPTextEmbeddings` and `CLIPVisionEmbeddings` followed by an encoder with `layers`): the prompt positions, the
    end-of-text pooling and the shared-prefix encoding are those of CLIP. Other dual encoders (SigLIP, AltCLIP, ...)
    are refused, even where their module names match, because they embed, pool or normalize differently.
    """
    from transformers.models.clip.modeling_clip import CLIPModel, CLIPTextEmbeddings, CLIPVisionEmbeddings

    if not isinstance(model, CLIPModel):
        raise ValueError(
            f"MaPLe adapts a transformers CLIPModel (with CLIP's `text_model` and `vision_model`), got "
            f"{type(model).__name__}; load the base model with CLIPModel.from_pretrained(...)."
        )
    text_model, vision_model = model.text_model, model.vision_model
    for tower, expected in ((text_model, CLIPTextEmbeddings), (vision_model, CLIPVisionEmbeddings)):
        embeddings = unwrap(getattr(tower, "embeddings", None))
        layers = getattr(getattr(tower, "encoder", None), "layers", None)
        if not isinstance(embeddings, expected) or not isinstance(layers, nn.ModuleList):
            raise ValueError(
                f"MaPLe adapts a transformers CLIPModel, but the {type(tower).__name__} of this "
                f"{type(model).__name__} is not built like CLIP's (`embeddings` of type {expected.__name__}, then "
                "`encoder.layers`); load the base model with CLIPModel.from_pretrained(...)."
            )
    return text_model, vision_model


def target_module_names(model: nn.Module, config: MaPLeConfig) -> list[str]:
    """The names of the modules that `config` wraps in `model`, after validating `depth` against both towers.

    Args:
        model (`transformers.CLIPModel`): the base model.
        config (`MaPLeConfig`): the adapter configuration.
    """
    text_model, vision_model = _clip_parts(model)
    n_text = len(text_model.encoder.layers)
    n_vision = len(vision_model.encoder.layers)
    names: list[str] = []
    if config.num_text_tokens:
        if config.depth > n_text:
            raise ValueError(f"depth={config.depth} but the text encoder has {n_text} layers; use depth <= {n_text}.")
        names += [TEXT_EMBEDDING] + [TEXT_LAYER.format(i) for i in range(1, config.depth)]
    if config.num_vision_tokens:
        if config.depth > n_vision:
            raise ValueError(
                f"depth={config.depth} but the vision encoder has {n_vision} layers; use depth <= {n_vision}."
            )
        names += [VISION_EMBEDDING] + [VISION_LAYER.format(i) for i in range(1, config.depth)]
    return names


def _target_regex(names: list[str]) -> str:
    return "(" + "|".join(re.escape(name) for name in names) + ")"


def _depth_of(key: str) -> int:
    return 0 if key in (TEXT_EMBEDDING, VISION_EMBEDDING) else int(key.rsplit(".", 1)[1])


def resolve_prompt_init_token_ids(config: MaPLeConfig, model: nn.Module) -> list[int] | None:
    """Tokenize `config.prompt_init` (once) and return its first `n_ctx` token ids, without start/end tokens.

    Args:
        config (`MaPLeConfig`): the adapter configuration; its `prompt_init_token_ids` are returned when set.
        model (`transformers.CLIPModel`): the base model, whose `name_or_path` locates the tokenizer when
            `config.tokenizer_name_or_path` is unset.
    """
    if config.prompt_init is None or not config.num_text_tokens:
        return None
    if config.prompt_init_token_ids is not None:
        return list(config.prompt_init_token_ids)
    source = config.tokenizer_name_or_path or getattr(model, "name_or_path", None) or None
    if not source:
        raise ValueError(
            f"prompt_init={config.prompt_init!r} must be tokenized to initialize the context, but the base model has "
            "no `name_or_path` to load its tokenizer from; pass MaPLeConfig(tokenizer_name_or_path=...) (a Hub id or "
            "a directory with the CLIP tokenizer), or prompt_init=None for a random initialization."
        )
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"Could not load a tokenizer from {source!r} to tokenize prompt_init={config.prompt_init!r}: {error}. "
            "Pass MaPLeConfig(tokenizer_name_or_path=...) pointing to the CLIP tokenizer."
        ) from error
    ids = tokenizer(config.prompt_init)["input_ids"]
    body = [i for i in ids if i not in (tokenizer.bos_token_id, tokenizer.eos_token_id)]
    if len(body) < config.n_ctx:
        raise ValueError(
            f"prompt_init={config.prompt_init!r} has {len(body)} tokens but n_ctx={config.n_ctx}; use a longer "
            f"prompt_init, n_ctx <= {len(body)}, or prompt_init=None."
        )
    max_length = model.text_model.config.max_position_embeddings
    if len(body) + PROMPT_EXTRA_TOKENS > max_length:
        raise ValueError(
            f"prompt_init={config.prompt_init!r} has {len(body)} tokens, too many for the text encoder's "
            f"{max_length}-token context: a class prompt also needs the start token, at least one class-name token, "
            f"'.' and the end token; use a prompt_init of at most {max_length - PROMPT_EXTRA_TOKENS} tokens."
        )
    return body[: config.n_ctx]


def _check_text_fits(config: MaPLeConfig, text_model: nn.Module, *, token_ids: list[int] | None = None) -> None:
    """Refuse an `n_ctx` and prompt token ids (`token_ids`, else the config's) that the text encoder cannot take."""
    if not config.num_text_tokens:
        return
    max_length = text_model.config.max_position_embeddings
    if config.n_ctx + PROMPT_EXTRA_TOKENS > max_length:
        raise ValueError(
            f"n_ctx={config.n_ctx} does not fit in the text encoder's {max_length}-token context: a class prompt also "
            f"needs the start token, at least one class-name token, '.' and the end token; use n_ctx <= "
            f"{max_length - PROMPT_EXTRA_TOKENS}."
        )
    vocab_size = unwrap(text_model.embeddings.token_embedding).num_embeddings
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

    Wraps a transformers `CLIPModel` so that the first `depth` layers of both towers receive learnable prompts; the
    vision prompts are linear couplings of the text prompts. CLIP itself stays frozen. Created by `get_peft_model`
    once `maple_peft` is imported.

    Models other than transformers' `CLIPModel` (and its subclasses with CLIP's towers) are refused before anything is
    injected. Saved weights are checked whenever they are loaded (`PeftModel.from_pretrained`, `load_adapter`,
    `set_peft_model_state_dict`): NaN/inf values, and tensors that the config's variant and depth do not expect or
    that it misses, raise a `ValueError` naming them.

    Args:
        model (`transformers.CLIPModel`): the model to adapt.
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
        names = target_module_names(self.model, peft_config)
        regex = _target_regex(names)
        if peft_config.target_modules is not None and peft_config.target_modules != regex:
            raise ValueError(
                f"target_modules={peft_config.target_modules!r} was set, but MaPLe chooses its modules from depth and "
                f"variant (here depth={peft_config.depth}, variant={peft_config.variant!r} give {names}); leave "
                "target_modules unset (a saved adapter_config.json must keep the values it was saved with)."
            )
        text_model, _ = _clip_parts(self.model)
        _check_text_fits(peft_config, text_model)
        token_ids = resolve_prompt_init_token_ids(peft_config, self.model)
        _check_text_fits(peft_config, text_model, token_ids=token_ids)
        # every check passed: only now is the user's config filled in
        peft_config.target_modules = regex
        peft_config.prompt_init_token_ids = token_ids
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

    def _text_init(self, config: MaPLeConfig, depth: int, text_model: nn.Module) -> torch.Tensor:
        embedding = unwrap(text_model.embeddings.token_embedding)
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
        text_model, vision_model = _clip_parts(self.model)
        base = unwrap(target)
        if current_key.startswith("text_model."):
            init = self._text_init(peft_config, depth, text_model)
            if isinstance(target, MaPLeTextPromptLayer):
                target.update_layer(adapter_name, init)
                return
            new_module = MaPLeTextPromptLayer(base, adapter_name, depth, init)
        else:
            d_text = text_model.config.hidden_size
            d_vision = vision_model.config.hidden_size
            n_ctx = peft_config.num_vision_tokens
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
        super().inject_adapter(
            model,
            adapter_name,
            autocast_adapter_dtype=autocast_adapter_dtype,
            low_cpu_mem_usage=low_cpu_mem_usage,
            **kwargs,
        )
        self.__dict__.get("_maple_coupling_templates", {}).pop(adapter_name, None)
        self._link(adapter_name)

    def _link(self, adapter_name: str) -> None:
        """Connect each coupled vision layer of `adapter_name` to the text layer of the same depth."""
        config = self.peft_config[adapter_name]
        if config.variant not in COUPLED_VARIANTS:
            return
        text_model, vision_model = _clip_parts(self.model)
        text_layers = [text_model.embeddings.token_embedding, *text_model.encoder.layers[1 : config.depth]]
        vision_layers = [vision_model.embeddings, *vision_model.encoder.layers[1 : config.depth]]
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
        for name, module in list(self.model.named_modules()):
            if isinstance(module, MaPLeLayer):
                parent_name, _, child_name = name.rpartition(".")
                parent = self.model.get_submodule(parent_name) if parent_name else self.model
                setattr(parent, child_name, module.get_base_layer())
        if hasattr(self.model, "peft_config"):
            del self.model.peft_config
        return self.model
