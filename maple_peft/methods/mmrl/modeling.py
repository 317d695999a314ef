"""MMRL's tensors and computations: the layer that carries the representation tokens, the two classification paths,
and the loss."""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...backbones import backbone_of
from ...class_text import active_maple_config
from ...classifier import ClassifierOutput, PromptClassifier
from ...layer import MaPLeLayer, unwrap
from ...objectives import ObjectiveOutput, PromptObjective, check_weight, cosine_distance

#: MMRL's logit scale: its code multiplies the cosines by 100, not by CLIP's learned scale.
LOGIT_SCALE = 100.0


def _causal_mask_like(mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """A causal attention mask of the kind of `mask` (boolean: True attends; additive: 0 / dtype min) over `length`
    tokens, for each row of the batch; None stays None (SDPA's causal flag covers any length)."""
    if mask is None:
        return None
    batch, heads = mask.shape[0], mask.shape[1]
    allowed = torch.ones(length, length, dtype=torch.bool, device=mask.device).tril()
    if mask.dtype == torch.bool:
        causal = allowed
    else:
        causal = torch.zeros(length, length, dtype=mask.dtype, device=mask.device)
        causal = causal.masked_fill(~allowed, torch.finfo(mask.dtype).min)
    return causal.expand(batch, heads, length, length)


class MaPLeRepresentationLayer(MaPLeLayer):
    """MMRL's shared representation tokens at the input of one encoder layer of one tower.

    The representation tokens `R` `(n_rep, rep_dim)` live in the first text layer of the adapter
    (`maple_rep_tokens`); each layer of `rep_layers` projects them with its own `Linear(rep_dim, d)`
    (`maple_rep_proj`). At the first layer the projected tokens are inserted right after the first token (text: the
    start token, vision: the class token), later layers replace them at positions `1 .. n_rep`. Text layers after the
    first one that are not in `rep_layers` carry the tokens along (no projection). The text tower's causal mask is
    rebuilt over the longer sequence. The first vision layer also holds `proj_rep` `(d_vision, embed_dim)`
    (`maple_proj_rep`), which projects the image's representation features.

    Args:
        base_layer (`nn.Module`): the encoder layer.
        adapter_name (`str`): the first adapter.
        depth (`int`): the 0-based index of the layer.
        tower (`str`): `"text"` or `"vision"`.
        n_rep (`int`): the number of representation tokens.
        first (`bool`): the tokens are inserted here (the adapter's first layer of `rep_layers`).
        **parts: the initial tensors the layer holds for the adapter (`initial_parts`; see `update_layer`).
    """

    adapter_layer_names = ("maple_rep_tokens", "maple_rep_proj", "maple_proj_rep")
    other_param_names = ("maple_n_ctx", "maple_rep_first", "maple_rep_source")

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, depth: int, tower: str, n_rep: int, first: bool, **parts: Any
    ) -> None:
        super().__init__(base_layer, adapter_name, depth)
        self.tower = tower
        self.create_holders()
        self.update_layer(adapter_name, n_rep, first, **parts)

    def create_holders(self) -> None:
        """The containers of the adapters' tensors at this layer (a subclass adds its own)."""
        self.maple_rep_tokens = nn.ParameterDict()
        self.maple_rep_proj = nn.ModuleDict()
        self.maple_proj_rep = nn.ParameterDict()
        self.maple_rep_first: dict[str, bool] = {}
        # adapter -> the layer holding R (a plain dict, so that nothing is registered twice)
        self.maple_rep_source: dict[str, MaPLeRepresentationLayer] = {}

    @classmethod
    def initial_parts(
        cls, config: Any, tower: str, first: bool, template: nn.Linear | None, embed_dim: int
    ) -> dict[str, Any]:
        """What a new layer of an adapter with `config` holds, initialized as the original: this layer's projection (a
        copy of its tower's freshly initialized `template`, None when the layer carries the tokens), `R` normal with
        std `prompt_init_std` (first text layer) and `proj_rep` `d_vision**-0.5 * randn` (first vision layer)."""
        parts: dict[str, Any] = {}
        if template is not None:
            parts["proj"] = copy.deepcopy(template)
        if first and tower == "text":
            parts["tokens"] = torch.empty(config.n_rep, config.rep_dim).normal_(std=config.prompt_init_std)
        if first and tower == "vision":
            d_vision = template.out_features
            parts["proj_rep"] = d_vision**-0.5 * torch.randn(d_vision, embed_dim)
        return parts

    def update_layer(
        self,
        adapter_name: str,
        n_rep: int,
        first: bool,
        proj: nn.Linear | None = None,
        tokens: torch.Tensor | None = None,
        proj_rep: torch.Tensor | None = None,
    ) -> None:
        """Add (or replace) the representation tokens of `adapter_name` at this layer (see the class docstring)."""
        device, dtype = self._base_device_dtype()
        if tokens is not None:
            self.maple_rep_tokens[adapter_name] = nn.Parameter(tokens.detach().clone().to(device=device, dtype=dtype))
            self.maple_rep_source[adapter_name] = self
        if proj is not None:
            if proj.weight.device.type != "meta":
                proj = proj.to(device=device, dtype=dtype)
            self.maple_rep_proj[adapter_name] = proj
        if proj_rep is not None:
            self.maple_proj_rep[adapter_name] = nn.Parameter(proj_rep.detach().clone().to(device=device, dtype=dtype))
        self.maple_n_ctx[adapter_name] = n_rep
        self.maple_rep_first[adapter_name] = first
        self.set_adapter(self.active_adapters)

    def link(self, adapter_name: str, layers: list[MaPLeRepresentationLayer]) -> None:
        """Take the representation tokens of `adapter_name` from the one of its `layers` that holds them."""
        self.maple_rep_source[adapter_name] = next(m for m in layers if adapter_name in m.maple_rep_tokens)

    def projection(self, adapter_name: str, base_model: nn.Module) -> torch.Tensor:
        """The representation path's projection `(d_vision, embed_dim)` of `adapter_name`: `proj_rep` (held by the
        adapter's first vision layer)."""
        return self.maple_proj_rep[adapter_name]

    def tokens(self, adapter_name: str) -> torch.Tensor | None:
        """The projected tokens `(n_rep, d)` this layer writes for `adapter_name`, or None (it carries them)."""
        if adapter_name not in self.maple_rep_proj:
            return None
        source = self.maple_rep_source.get(adapter_name)
        if source is None:
            raise RuntimeError(
                f"The representation tokens of adapter {adapter_name!r} at layer {self.depth} are not linked; create "
                "the adapter with get_peft_model / PeftModel.from_pretrained."
            )
        proj = self.maple_rep_proj[adapter_name]
        return proj(source.maple_rep_tokens[adapter_name].to(proj.weight.dtype))

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        adapter_name = self.prompt_adapter()
        if adapter_name is None:
            return self.base_layer(hidden_states, *args, **kwargs)
        n_rep = self.maple_n_ctx[adapter_name]
        tokens = self.tokens(adapter_name)
        if tokens is not None:
            tokens = tokens.to(hidden_states.dtype).unsqueeze(0).expand(hidden_states.shape[0], -1, -1)
            rest = 1 if self.maple_rep_first[adapter_name] else 1 + n_rep
            hidden_states = torch.cat([hidden_states[:, :1], tokens, hidden_states[:, rest:]], dim=1)
        if self.tower == "text":  # the causal mask over the longer sequence
            length = hidden_states.shape[1]
            if args and isinstance(args[0], torch.Tensor) and args[0].shape[-1] != length:
                args = (_causal_mask_like(args[0], length), *args[1:])
            mask = kwargs.get("attention_mask")
            if isinstance(mask, torch.Tensor) and mask.shape[-1] != length:
                kwargs = {**kwargs, "attention_mask": _causal_mask_like(mask, length)}
        return self.base_layer(hidden_states, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"tower={self.tower}, depth={self.depth}, n_rep={self.maple_n_ctx}, inserts={self.maple_rep_first}"

    def __repr__(self) -> str:
        return "maple." + super().__repr__()


#: MMRL's layer class: the `MMRL` method builds the `LAYER` of its package's modeling module (MMRL++ names its own).
LAYER = MaPLeRepresentationLayer


def create_layer(
    layer_class: type[MaPLeRepresentationLayer],
    tuner: Any,
    config: Any,
    adapter_name: str,
    target: Any,
    target_name: str,
    parent: Any,
    key: str,
) -> None:
    """The layer of class `layer_class` (MMRL's, MMRL++'s) at module `key`: a text or vision layer that inserts,
    replaces or carries the tokens, holding what `layer_class.initial_parts` gives it; each tower's projections start
    from one freshly initialized `Linear(rep_dim, d)`, as in the original code."""
    from ...model import depth_of_key

    if isinstance(target, MaPLeLayer) and type(target) is not layer_class:
        raise ValueError(
            f"{key} already carries an adapter of another kind ({type(target).__name__}); representation tokens "
            "cannot share a model with the prompts of other variants (nor MMRL's with MMRL++'s). Add the adapter "
            "to a fresh base model."
        )
    backbone = backbone_of(tuner.model)
    index = depth_of_key(key)
    tower = "vision" if key.startswith(backbone.vision_layer.format("")) else "text"
    first = index + 1 == config.rep_layers[0]
    template = None
    if index + 1 in config.rep_layers:
        templates = tuner.__dict__.setdefault("_maple_rep_templates", {})
        if (adapter_name, tower) not in templates:
            d_text, d_vision = backbone.widths(tuner.model.config)
            templates[adapter_name, tower] = nn.Linear(config.rep_dim, d_vision if tower == "vision" else d_text)
        template = templates[adapter_name, tower]
    parts = layer_class.initial_parts(config, tower, first, template, backbone.embed_dim(tuner.model.config))
    if isinstance(target, layer_class):
        target.update_layer(adapter_name, config.n_rep, first, **parts)
        return
    new_module = layer_class(unwrap(target), adapter_name, index, tower, config.n_rep, first, **parts)
    if adapter_name not in tuner.active_adapters:
        new_module.requires_grad_(False)
    tuner._replace_module(parent, target_name, new_module, target)


def link_layers(tuner: Any, adapter_name: str) -> None:
    """After injection: every representation layer of `adapter_name` takes the tensors it shares from the layer that
    holds them."""
    for key in [key for key in tuner.__dict__.get("_maple_rep_templates", {}) if key[0] == adapter_name]:
        del tuner.__dict__["_maple_rep_templates"][key]
    layers = [
        m for m in tuner.model.modules() if isinstance(m, MaPLeRepresentationLayer) and adapter_name in m.maple_n_ctx
    ]
    for layer in layers:
        layer.link(adapter_name, layers)


def representation_outputs(classifier: Any, inputs: Any, config: Any, **extra: Any) -> ClassifierOutput:
    """MMRL's classifier outputs: the class path (the class token) and the representation path (its tokens' mean
    through `post_layernorm` and the adapter's `projection`) from one pass of the vision tower, both against the same
    text features; the logits are the fused ones on the adapter's own classes (`PromptClassifier.uses_fusion`), else
    the class path's."""
    base, backbone = classifier.base_model, classifier.backbone
    vision = backbone.image_outputs(base, inputs, **extra)
    image = vision.pooler_output / vision.pooler_output.norm(dim=-1, keepdim=True)
    tokens = base.vision_model.post_layernorm(vision.last_hidden_state[:, 1 : 1 + config.n_rep])
    rep = tokens.mean(dim=1) @ active_projection(base).to(tokens.dtype)
    rep = rep / rep.norm(dim=-1, keepdim=True)
    text = classifier.text_features()
    logits_class = backbone.logits(base, image, text, scale=LOGIT_SCALE)
    logits_rep = backbone.logits(base, rep, text, scale=LOGIT_SCALE)
    fused = config.alpha * logits_class + (1 - config.alpha) * logits_rep
    return ClassifierOutput(
        logits=fused if classifier.uses_fusion(config) else logits_class,
        image_features=image,
        text_features=text,
        logits_class=logits_class,
        logits_rep=logits_rep,
        image_rep_features=rep,
    )


def active_projection(base_model: nn.Module) -> torch.Tensor:
    """The representation path's projection of the active adapter, from its first vision layer."""
    for module in base_model.vision_model.modules():
        if isinstance(module, MaPLeRepresentationLayer):
            adapter_name = module.prompt_adapter()
            if adapter_name is not None and module.maple_rep_first.get(adapter_name):
                return module.projection(adapter_name, base_model)
    raise RuntimeError("The model has no active adapter with representation tokens; activate one with set_adapter.")


class RepresentationLoss(PromptObjective):
    """MMRL's loss (Guo et al., "MMRL: Multi-Modal Representation Learning for Vision-Language Models", CVPR 2025,
    https://huggingface.co/papers/2503.08497) for an MMRL adapter (`variant="mmrl"`).

    `loss = alpha * CE(logits_class) + (1 - alpha) * CE(logits_rep) + reg_weight * (1 - mean cos(f, f_frozen)) +
    reg_weight * (1 - mean cos(t, t_frozen))`: `f` the class-token image features, `t` the class text features (on the
    adapter's template), the frozen ones from the same model with its adapter disabled (text on the same template),
    all normalized; cosine eps 1e-8. The logits returned are the fused ones, on which the original reports training
    accuracy.

    Args:
        classifier (`PromptClassifier`): the classifier being trained (its model carries an MMRL adapter).
        reg_weight (`float`, defaults to 1.0): the weight of each regularization term (MMRL's per-dataset
            `REG_WEIGHT`: Cars 7, Aircraft / SUN / DTD 6, Food 5, Flowers 4, UCF 3, ImageNet / Caltech 0.5, Pets 0.2,
            EuroSAT 0.01).
        alpha (`float`, *optional*): the weight of the class path; defaults to the adapter's `alpha` (0.7).

    Example:

        ```py
        >>> loss_fn = maple_peft.RepresentationLoss(classifier, reg_weight=0.5)
        >>> out = loss_fn(pixel_values, labels)
        >>> sorted(out.terms)
        ['ce', 'ce_rep', 'reg_image', 'reg_text']
        ```
    """

    name = "mmrl"
    title = "MMRL representation loss"
    EPS = 1e-8

    def __init__(self, classifier: PromptClassifier, reg_weight: float = 1.0, alpha: float | None = None) -> None:
        super().__init__(classifier)
        config = active_maple_config(classifier.model)
        if config is None or config.method.default_objective != "mmrl":
            raise ValueError(
                "RepresentationLoss trains MMRL's representation tokens, but the classifier's active adapter is not "
                "an MMRL adapter; create it with MaPLeConfig(variant='mmrl')."
            )
        self.reg_weight = check_weight("reg_weight", reg_weight)
        if alpha is not None and (
            isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1
        ):
            raise ValueError(f"alpha={alpha!r} must be a number in [0, 1], or None for the adapter's.")
        self.alpha = float(config.alpha if alpha is None else alpha)

    def describe(self) -> str:
        return f"{self.title}: alpha {self.alpha:g}, regularization weight {self.reg_weight:g}"

    def extra_repr(self) -> str:
        return f"reg_weight={self.reg_weight}, alpha={self.alpha}"

    def forward(self, images: Any, labels: torch.Tensor, **extra: Any) -> ObjectiveOutput:
        classifier = self.classifier
        frozen_image = self.frozen_image_features(images, **extra) if self.reg_weight > 0 else None
        out = classifier.outputs(images, **extra)
        logits = self.alpha * out.logits_class + (1 - self.alpha) * out.logits_rep
        with torch.autocast(logits.device.type, enabled=False):
            terms = {
                "ce": F.cross_entropy(out.logits_class.float(), labels),
                "ce_rep": F.cross_entropy(out.logits_rep.float(), labels),
            }
            loss = self.alpha * terms["ce"] + (1 - self.alpha) * terms["ce_rep"]
            if self.reg_weight > 0:
                frozen_text = self.frozen_text_features([classifier.current_template()])
                terms["reg_image"] = cosine_distance(out.image_features.float(), frozen_image, self.EPS)
                terms["reg_text"] = cosine_distance(out.text_features.float(), frozen_text, self.EPS)
                loss = loss + self.reg_weight * (terms["reg_image"] + terms["reg_text"])
        return self._output(loss, logits, terms)
