"""MMRL (Guo & Gu, "MMRL: Multi-Modal Representation Learning for Vision-Language Models", CVPR 2025,
https://huggingface.co/papers/2503.08497): representation tokens shared by both towers.

`n_rep` tokens `R` of width `rep_dim` are projected, per layer of `rep_layers`, into each tower by a `Linear(rep_dim,
d)` and enter right after the first token (text: the start token, vision: the class token); the class prompts are the
hand-written `template`, with no learned context. Images are classified by the class token (class path) and by the
mean of the representation tokens through `post_layernorm` and `proj_rep` (representation path); on the classes the
adapter was trained on the logits are `alpha * class + (1 - alpha) * representation`, elsewhere the class path's.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .. import Method, fields_of, register


@dataclass
class MMRLOptions:
    """The adapter options of MMRL (its configs' values as defaults)."""

    n_rep: int = field(
        default=5, metadata={"help": "mmrl: number of representation tokens", "title": "Representation tokens (n_rep)"}
    )
    rep_dim: int = field(
        default=512,
        metadata={"help": "mmrl: width of the representation tokens", "title": "Representation width (rep_dim)"},
    )
    rep_layers: list[int] | None = field(
        default=None,
        metadata={
            "help": "mmrl: 1-based layers the representation tokens enter (default: the last 7 text layers)",
            "title": "Representation layers",
            "checkpoint_help": "its REP_LAYERS (default: the last k text layers, k = projections in the file)",
        },
    )
    alpha: float = field(
        default=0.7,
        metadata={
            "help": "mmrl: weight of the class path in the fused logits",
            "title": "Fusion weight (alpha)",
            "checkpoint_help": "its ALPHA (default 0.7)",
            "test_time": True,  # read at each pass: `maple_peft.test_time_options(model, alpha=...)`
        },
    )


@dataclass
class MMRLObjectiveOptions:
    """The options of MMRL's loss."""

    reg_weight: float = field(
        default=1.0,
        metadata={"help": "mmrl: weight of each cosine regularization term", "title": "Regularization weight"},
    )


def default_rep_layers(n_text: int) -> list[int]:
    """MMRL's default layers: the last 7 of a text tower of `n_text` layers (6..12 for ViT-B/16)."""
    return list(range(max(1, n_text - 6), n_text + 1))


class MMRL(Method):
    name = "mmrl"
    title = "MMRL"
    paper = "[MMRL](https://arxiv.org/abs/2503.08497) (Multi-Modal Representation Learning, Guo et al., CVPR 2025)"
    citation = """@inproceedings{guo2025mmrl,
  title={MMRL: Multi-Modal Representation Learning for Vision-Language Models},
  author={Guo, Yuncheng and Gu, Xiaodong},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2025}
}"""
    description = (
        "learns representation tokens shared by both encoders, projected into their later layers, and a projection "
        "of the image's representation features (MMRL); the class prompts are the hand-written template."
    )
    recipes = ("mmrl_base2novel", "mmrl_cross_dataset", "mmrl_few_shot")
    options = MMRLOptions
    objective = "mmrl"
    objective_options = MMRLObjectiveOptions
    default_objective = "mmrl"
    default_depth = None

    # ---- configuration ----------------------------------------------------------------------------------------------

    #: Options that are counts (integers >= 1) and weights (numbers in [0, 1]).
    counts: ClassVar[tuple[str, ...]] = ("n_rep", "rep_dim")
    weights: ClassVar[tuple[str, ...]] = ("alpha",)

    def resolve(self, config: Any) -> None:
        if config.depth is not None:
            raise ValueError(
                f"depth={config.depth} was given, but variant={self.name!r} places its representation tokens by "
                "rep_layers; leave depth unset."
            )
        defaults = self.options()
        for name in (option.name for option in fields_of(self.options)):
            if getattr(config, name) is None:
                setattr(config, name, getattr(defaults, name))
        for name in self.counts:
            value = getattr(config, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"{name}={value!r} must be an integer >= 1, such as {self.title}'s {getattr(defaults, name)}."
                )
        for name in self.weights:
            value = getattr(config, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= 1:
                raise ValueError(
                    f"{name}={value!r} must be a number in [0, 1], such as {getattr(defaults, name)} "
                    f"({self.title}'s default)."
                )
            setattr(config, name, float(value))
        if config.rep_layers is not None:
            layers = config.rep_layers
            if (
                isinstance(layers, (str, bytes))
                or not isinstance(layers, (list, tuple))
                or not layers
                or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in layers)
                or list(layers) != sorted(set(layers))
            ):
                raise ValueError(
                    f"rep_layers={layers!r} must be a non-empty increasing list of 1-based layer numbers, such as "
                    "[6, 7, 8, 9, 10, 11, 12]; leave it unset for the last 7 layers."
                )
            config.rep_layers = list(layers)

    def rep_layers(self, model: Any, config: Any) -> list[int]:
        """The adapter's layers (1-based): the config's, or the last 7 text layers, checked against both towers and
        the backbone (the tokens follow CLIP's class token: no such token in SigLIP)."""
        from ...model import model_towers

        backbone, text_model, vision_model = model_towers(model)
        if not backbone.has_class_token():
            raise ValueError(
                f"variant={self.name!r} does not carry over to {backbone.display_name}: {self.title} places its "
                "representation tokens right after the class token and classifies with the class token's features, "
                "and this backbone pools its images with an attention head and has no class token. Use CLIP or "
                "MetaCLIP 2 (or another variant)."
            )
        n_text, n_vision = len(text_model.encoder.layers), len(vision_model.encoder.layers)
        layers = config.rep_layers or default_rep_layers(n_text)
        limit = min(n_text, n_vision)
        if layers[-1] > limit:
            raise ValueError(
                f"rep_layers={layers} but the towers have {n_text} (text) and {n_vision} (vision) layers; use 1-based "
                f"layer numbers up to {limit}."
            )
        return layers

    def prepare(self, model: Any, config: Any) -> None:
        config.rep_layers = self.rep_layers(model, config)

    def text_offset(self, config: Any) -> int:
        return config.n_rep

    # ---- layers ----------------------------------------------------------------------------------------------------

    def target_modules(self, model: Any, config: Any) -> list[str]:
        from ...model import model_towers

        backbone, text_model, _ = model_towers(model)
        n_text = len(text_model.encoder.layers)
        layers = self.rep_layers(model, config)
        # text: every layer from the first one on (the later ones carry the tokens and need the longer causal mask)
        names = [backbone.text_layer.format(i - 1) for i in range(layers[0], n_text + 1)]
        return names + [backbone.vision_layer.format(i - 1) for i in layers]

    def create_layer(
        self, tuner: Any, config: Any, adapter_name: str, target: Any, target_name: str, parent: Any, key: str
    ) -> bool:
        from .modeling import create_layer

        create_layer(self.submodule("modeling").LAYER, tuner, config, adapter_name, target, target_name, parent, key)
        return True

    def link(self, tuner: Any, adapter_name: str) -> bool:
        from .modeling import link_layers

        link_layers(tuner, adapter_name)
        return True

    # ---- logits and loss -------------------------------------------------------------------------------------------

    def outputs(self, classifier: Any, inputs: Any, config: Any, **extra: Any) -> Any:
        from .modeling import representation_outputs

        return representation_outputs(classifier, inputs, config, **extra)

    # ---- the original code's checkpoints (each method of this family reads them in its package's `convert`) --------

    checkpoint_priority = 30
    checkpoint_files = ("MMRL", "'representation_learner.compound_rep_tokens' with 'image_encoder.proj_rep'")

    def read_checkpoint(self, state: dict[str, Any]) -> Any:
        return self.submodule("convert").read_checkpoint(state)

    def checkpoint_dims(self, converted: Any) -> dict[str, int]:
        return self.submodule("convert").dims(converted)

    def checkpoint_config(
        self,
        converted: Any,
        clip_config: Any,
        *,
        prompt_init: str | None = None,
        tokenizer_name_or_path: str | None = None,
        template: str | None = None,
        options: Any = None,
        **extra: Any,
    ) -> Any:
        convert = self.submodule("convert")
        return convert.checkpoint_config(converted, clip_config, template=template, **(options or {}), **extra)

    def checkpoint_state_dict(self, converted: Any, config: Any) -> dict[str, Any]:
        return self.submodule("convert").adapter_state_dict(converted, config)

    def objective_class(self) -> type:
        from .modeling import RepresentationLoss

        return RepresentationLoss


register(MMRL())
