"""The CLIP-family backbones that the prompt methods adapt, each described as data.

Everything that differs between transformers' dual encoders lives here, in one `Backbone` per family: where the
modules are, whether the text encoder is causal, how text and images are pooled, the logits, the text length and the
image preprocessing. The tuner, the class-text encoder, the classifier, the losses and the loading code ask the
description instead of testing for a model class themselves.

| family | transformers class | text encoder | text pooled at | image pooled by | logits |
|---|---|---|---|---|---|
| `clip` | `CLIPModel` | causal, 77 tokens | end-of-text token | class token | `exp(s) * cos` |
| `metaclip_2` | `MetaClip2Model` | causal, 77 tokens | first `eos_token_id` of the config | class token | `exp(s) * cos` |
| `siglip` | `SiglipModel` | bidirectional, 64 | last position (padded to 64, no mask) | attention-pooling head | `exp(s) * cos + b` |
| `siglip2` | `Siglip2Model` | bidirectional, 64 | last position (padded to 64, no mask) | attention-pooling head (masked) | `exp(s) * cos + b` |

A family is recognized by the model's class (subclasses included), never by module names, which the four share.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

#: Module paths, the same in the four families (the description still names them, for the next family).
TEXT_EMBEDDING = "text_model.embeddings.token_embedding"
TEXT_LAYER = "text_model.encoder.layers.{}"
VISION_EMBEDDING = "vision_model.embeddings"
VISION_LAYER = "vision_model.encoder.layers.{}"
VISION_HEAD = "vision_model.head"


@dataclass(frozen=True)
class Backbone:
    """What the prompt methods need to know about one family of transformers dual encoders.

    Args:
        family (`str`): the name saved in adapter configs (`MaPLeConfig.backbone`), e.g. `"siglip2"`.
        display_name (`str`): the family's name for people, e.g. `"SigLIP 2"`.
        model_class_name (`str`): the transformers class of the dual encoder, e.g. `"Siglip2Model"`.
        model_type (`str`): its `config.model_type`.
        example_checkpoint (`str`): a released checkpoint of the family, shown in messages and the README.
        causal_text (`bool`): the text encoder is causal, so a prompt's pooled feature does not depend on anything
            after its end-of-text token: trimming prompts there and encoding their shared prefix once are exact.
        text_pooling (`str`): `"eos"` (the end-of-text token; see `pooled_positions`) or `"last"` (the last position
            of a sequence padded to the model's maximum length, encoded without an attention mask).
        eos_argmax_when_2 (`bool`): CLIP's legacy rule: a config whose `eos_token_id` is 2 pools at the highest
            token id instead of the first `eos_token_id`.
        image_pooling (`str`): `"class_token"` (prompts appended after the patches never reach the pooled token
            directly) or `"head"` (an attention-pooling head over every token; see `MaPLeConfig.vision_pool_prompts`).
        logit_bias (`bool`): the logits add the model's `logit_bias` (SigLIP's sigmoid loss).
        vision_inputs (`tuple[str, ...]`): the keyword arguments of `get_image_features` that carry an image batch.
        text_layer_class_name (`str`): the transformers class of a text encoder layer (the shared-prefix encoding
            re-expresses exactly that layer).
        text_embeddings_class_name (`str`): the transformers class of the text embeddings.
        image_processor_class_name (`str`): the transformers image processor used when a checkpoint has none.
        text_prompt_start (`int`): where text prompts start with the family's released tokenizer (the number of
            special tokens it puts first), used when no tokenizer is at hand to work it out.
    """

    family: str
    display_name: str
    model_class_name: str
    model_type: str
    example_checkpoint: str
    causal_text: bool
    text_pooling: str
    image_pooling: str
    logit_bias: bool
    vision_inputs: tuple[str, ...]
    text_layer_class_name: str
    text_embeddings_class_name: str
    image_processor_class_name: str
    text_prompt_start: int
    eos_argmax_when_2: bool = False
    token_embedding: str = TEXT_EMBEDDING
    text_layer: str = TEXT_LAYER
    vision_embeddings: str = VISION_EMBEDDING
    vision_layer: str = VISION_LAYER

    # ---- the model's parts -----------------------------------------------------------------------------------------

    @property
    def model_class(self) -> type[nn.Module]:
        """The transformers class of the family's dual encoder."""
        import transformers

        return getattr(transformers, self.model_class_name)

    @property
    def vision_head(self) -> str | None:
        """The path of the attention-pooling head, or None for class-token pooling."""
        return VISION_HEAD if self.image_pooling == "head" else None

    @property
    def pads_to_max_length(self) -> bool:
        """Prompts are encoded padded to the model's maximum text length (SigLIP), not trimmed."""
        return self.text_pooling == "last"

    def text_layers(self, model: nn.Module) -> nn.ModuleList:
        """The text encoder layers of `model` (the dual encoder, not a PeftModel)."""
        return model.get_submodule(self.text_layer.rsplit(".", 1)[0])

    def vision_layers(self, model: nn.Module) -> nn.ModuleList:
        """The vision encoder layers of `model`."""
        return model.get_submodule(self.vision_layer.rsplit(".", 1)[0])

    def text_config(self, config: Any) -> Any:
        """The text config of a dual encoder's config."""
        return config.text_config

    def max_text_length(self, config: Any) -> int:
        """The number of text positions of the model (its `max_position_embeddings`): 77 for CLIP, 64 for SigLIP."""
        return int(config.text_config.max_position_embeddings)

    def widths(self, config: Any) -> tuple[int, int]:
        """`(d_text, d_vision)`, the hidden sizes of the two towers."""
        return int(config.text_config.hidden_size), int(config.vision_config.hidden_size)

    def embed_dim(self, config: Any) -> int:
        """The width of the image and text embeddings that the logits compare (CLIP: `projection_dim`; SigLIP: the
        vision width, which its text head projects to).

        Raises:
            `ValueError`: a SigLIP-family config whose text head projects to another width than the image embeddings
                (`text_config.projection_size` != `vision_config.hidden_size`): such a model cannot compute logits.
        """
        if self.image_pooling == "class_token":
            return int(config.projection_dim)
        image = int(config.vision_config.hidden_size)
        text = int(getattr(config.text_config, "projection_size", None) or config.text_config.hidden_size)
        if text != image:
            raise ValueError(
                f"This {self.display_name} model's text embeddings are {text} wide (text_config.projection_size) and "
                f"its image embeddings {image} wide (vision_config.hidden_size): its logits compare the two, so it "
                "cannot classify (nor compute its own logits); use a checkpoint whose two widths are equal."
            )
        return image

    def has_class_token(self) -> bool:
        """The vision embeddings start with a class token (CLIP, MetaCLIP 2), pooled after the last layer."""
        return self.image_pooling == "class_token"

    # ---- text ------------------------------------------------------------------------------------------------------

    def pooled_positions(self, input_ids: torch.Tensor, config: Any) -> torch.Tensor:
        """The position whose hidden state is pooled, per row of `input_ids` `(n, length)`.

        For `"eos"` pooling it is the first `eos_token_id` of the text config (CLIP with `eos_token_id == 2`: the
        highest token id, as transformers does); for `"last"` pooling the last position.

        Args:
            input_ids (`torch.LongTensor`): `(n, length)` token ids, as the model receives them.
            config: the dual encoder's config.
        """
        if self.text_pooling == "last":
            return torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, dtype=torch.long)
        eos = config.text_config.eos_token_id
        if self.eos_argmax_when_2 and eos == 2:
            return input_ids.to(torch.int).argmax(dim=-1)
        return (input_ids == eos).int().argmax(dim=-1)

    def pooled_token_id(self, config: Any) -> int | None:
        """The token id every prompt must contain, at its pooled position, or None (`"last"` pooling)."""
        if self.text_pooling == "last":
            return None
        eos = config.text_config.eos_token_id
        return None if (self.eos_argmax_when_2 and eos == 2) else eos

    def text_features(self, model: nn.Module, input_ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Projected, not normalized text features `(n, embed_dim)` of `input_ids`, through the model's own
        `get_text_features` (no attention mask: the causal families pool before any padding, SigLIP was trained
        without one).

        Args:
            model: the dual encoder.
            input_ids (`torch.LongTensor`): `(n, length)`.
            offset (`int`): the number of tokens the adapter inserts before the pooled one (MMRL's representation
                tokens): the pooled position moves by as many.
        """
        if not offset:
            return _pooled(model.get_text_features(input_ids=input_ids))
        hidden = model.text_model(input_ids=input_ids).last_hidden_state  # final layer norm applied
        positions = self.pooled_positions(input_ids, model.config).to(hidden.device) + offset
        return model.text_projection(hidden[torch.arange(hidden.shape[0], device=hidden.device), positions])

    # ---- images ----------------------------------------------------------------------------------------------------

    def image_kwargs(self, inputs: Any, **extra: Any) -> dict[str, Any]:
        """The keyword arguments of `get_image_features` for an image batch, checked.

        Args:
            inputs: a `pixel_values` tensor, or a mapping (the image processor's `BatchFeature`) holding the family's
                `vision_inputs` (`pixel_values`, and for SigLIP 2 `pixel_attention_mask` and `spatial_shapes`).
            extra: more keyword arguments (`interpolate_pos_encoding`), passed on when the family takes them.

        Raises:
            `TypeError` / `ValueError`: a missing input, non-floating-point or badly shaped pixel values, an empty
                batch.
        """
        if isinstance(inputs, Mapping):
            missing = [key for key in self.vision_inputs if inputs.get(key) is None]
            if missing:
                raise ValueError(
                    f"The image inputs lack {missing}; {self.display_name} takes {list(self.vision_inputs)}: pass the "
                    "image processor's whole output (clf(**inputs) or clf(inputs))."
                )
            kwargs = {key: inputs[key] for key in self.vision_inputs}
        else:
            if len(self.vision_inputs) > 1:
                raise TypeError(
                    f"{self.display_name} takes its images as {list(self.vision_inputs)}, got a single "
                    f"{type(inputs).__name__}; pass the image processor's whole output (clf(**inputs) or clf(inputs))."
                )
            kwargs = {"pixel_values": inputs}
        _check_pixel_values(kwargs["pixel_values"], 3 if len(self.vision_inputs) > 1 else 4)
        if extra.get("interpolate_pos_encoding"):
            if len(self.vision_inputs) > 1:
                raise ValueError(
                    f"interpolate_pos_encoding=True is not an option of {self.display_name}, whose image processor "
                    "already resizes the position embeddings to each image (spatial_shapes)."
                )
            kwargs["interpolate_pos_encoding"] = True
        return kwargs

    def image_features(self, model: nn.Module, inputs: Any, **extra: Any) -> torch.Tensor:
        """Projected (CLIP) or head-pooled (SigLIP) image features `(batch, embed_dim)`, not normalized."""
        return _pooled(self.image_outputs(model, inputs, **extra))

    def image_outputs(self, model: nn.Module, inputs: Any, **extra: Any) -> Any:
        """The vision tower's output of `get_image_features`: `pooler_output` (the image features) and
        `last_hidden_state` (every token, before CLIP's `post_layernorm`)."""
        return model.get_image_features(**self.image_kwargs(inputs, **extra))

    def batch_size(self, inputs: Any) -> int:
        """The number of images in an image batch (a tensor or the processor's mapping)."""
        pixel_values = inputs["pixel_values"] if isinstance(inputs, Mapping) else inputs
        return int(pixel_values.shape[0])

    def default_image_processor(self, config: Any) -> Any:
        """The family's image preprocessing at the model's size, for checkpoints saved without an image processor:
        CLIP's (shorter side resize, center crop, OpenAI mean/std), SigLIP's (square resize, no crop, mean/std 0.5),
        SigLIP 2's (NaFlex patches, at most the model's number of patches)."""
        import transformers

        cls = getattr(transformers, self.image_processor_class_name)
        vision = config.vision_config
        if self.family == "siglip2":
            return cls(patch_size=vision.patch_size, max_num_patches=vision.num_patches)
        size = vision.image_size
        if self.family == "siglip":
            return cls(size={"height": size, "width": size})
        return cls(size={"shortest_edge": size}, crop_size={"height": size, "width": size})

    # ---- logits ----------------------------------------------------------------------------------------------------

    def logits(
        self,
        model: nn.Module,
        image_features: torch.Tensor,
        text_features: torch.Tensor,
        scale: float | None = None,
    ) -> torch.Tensor:
        """The family's logits `(batch, n_classes)` from L2-normalized features: `exp(logit_scale) * cos`, plus
        `logit_bias` for SigLIP, in the dtype of `image_features`.

        Args:
            model: the dual encoder (its `logit_scale` and `logit_bias`).
            image_features (`torch.Tensor`): `(batch, d)` normalized image features.
            text_features (`torch.Tensor`): `(n_classes, d)` (or `(batch, n_classes, d)`, one set per image)
                normalized text features.
            scale (`float`, *optional*): a fixed scale instead of the model's `exp(logit_scale)` (MMRL's 100).
        """
        dtype = image_features.dtype
        scale = model.logit_scale.exp().to(dtype) if scale is None else scale
        text = text_features.to(dtype)
        if text.ndim == 3:
            cos = (image_features.unsqueeze(1) * text).sum(-1)
        else:
            cos = image_features @ text.t()
        logits = scale * cos
        if self.logit_bias:
            logits = logits + model.logit_bias.to(dtype)
        return logits

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The family's usual scores: softmax over the classes (CLIP), an independent sigmoid per class (SigLIP, as
        transformers' zero-shot pipeline reports them)."""
        return logits.float().sigmoid() if self.logit_bias else logits.float().softmax(dim=-1)

    @property
    def score_name(self) -> str:
        """What `probabilities` gives, in words."""
        return "sigmoid" if self.logit_bias else "softmax"


def _pooled(output: Any) -> torch.Tensor:
    # transformers >= 5 returns a ModelOutput whose pooler_output is projected; older versions return the tensor
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _check_pixel_values(pixel_values: Any, ndim: int) -> None:
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(
            f"pixel_values must be a torch.Tensor from the model's image processor, got "
            f"{type(pixel_values).__name__}; use clf.predict(images) for PIL images or paths."
        )
    if not pixel_values.is_floating_point():
        raise TypeError(
            f"pixel_values has dtype {pixel_values.dtype}, but the model needs normalized floating-point pixel values; "
            "preprocess the images with the model's image processor (AutoImageProcessor.from_pretrained(base)"
            "(images=images, return_tensors='pt')), or use clf.predict(images)."
        )
    if pixel_values.ndim != ndim:
        shape = "(batch, channels, height, width)" if ndim == 4 else "(batch, patches, channels * patch_size**2)"
        raise ValueError(f"pixel_values has shape {tuple(pixel_values.shape)}; it must be {shape}.")
    if pixel_values.shape[0] == 0:
        raise ValueError(
            f"pixel_values is an empty batch (shape {tuple(pixel_values.shape)}); pass at least one image."
        )


BACKBONES: dict[str, Backbone] = {
    "clip": Backbone(
        family="clip",
        display_name="CLIP",
        model_class_name="CLIPModel",
        model_type="clip",
        example_checkpoint="openai/clip-vit-base-patch16",
        causal_text=True,
        text_pooling="eos",
        eos_argmax_when_2=True,
        image_pooling="class_token",
        logit_bias=False,
        vision_inputs=("pixel_values",),
        text_layer_class_name="CLIPEncoderLayer",
        text_embeddings_class_name="CLIPTextEmbeddings",
        image_processor_class_name="CLIPImageProcessorPil",
        text_prompt_start=1,
    ),
    "metaclip_2": Backbone(
        family="metaclip_2",
        display_name="MetaCLIP 2",
        model_class_name="MetaClip2Model",
        model_type="metaclip_2",
        example_checkpoint="facebook/metaclip-2-worldwide-huge-quickgelu",
        causal_text=True,
        text_pooling="eos",
        image_pooling="class_token",
        logit_bias=False,
        vision_inputs=("pixel_values",),
        text_layer_class_name="MetaClip2EncoderLayer",
        text_embeddings_class_name="MetaClip2TextEmbeddings",
        image_processor_class_name="CLIPImageProcessorPil",
        text_prompt_start=1,
    ),
    "siglip": Backbone(
        family="siglip",
        display_name="SigLIP",
        model_class_name="SiglipModel",
        model_type="siglip",
        example_checkpoint="google/siglip-base-patch16-224",
        causal_text=False,
        text_pooling="last",
        image_pooling="head",
        logit_bias=True,
        vision_inputs=("pixel_values",),
        text_layer_class_name="SiglipEncoderLayer",
        text_embeddings_class_name="SiglipTextEmbeddings",
        image_processor_class_name="SiglipImageProcessorPil",
        text_prompt_start=0,
    ),
    "siglip2": Backbone(
        family="siglip2",
        display_name="SigLIP 2",
        model_class_name="Siglip2Model",
        model_type="siglip2",
        example_checkpoint="google/siglip2-base-patch16-224",
        causal_text=False,
        text_pooling="last",
        image_pooling="head",
        logit_bias=True,
        vision_inputs=("pixel_values", "pixel_attention_mask", "spatial_shapes"),
        text_layer_class_name="Siglip2EncoderLayer",
        text_embeddings_class_name="Siglip2TextEmbeddings",
        image_processor_class_name="Siglip2ImageProcessorPil",
        text_prompt_start=0,
    ),
}


def _supported() -> str:
    return ", ".join(
        f"{b.display_name} ({b.model_class_name}, e.g. {b.example_checkpoint})" for b in BACKBONES.values()
    )


def get_backbone(family: str) -> Backbone:
    """The description of a family by its saved name (`"clip"`, `"metaclip_2"`, `"siglip"`, `"siglip2"`).

    Raises:
        `ValueError`: an unknown family, naming the supported ones.
    """
    if family not in BACKBONES:
        raise ValueError(f"backbone={family!r} is not a supported family; the supported ones are {list(BACKBONES)}.")
    return BACKBONES[family]


def check_same_family(saved: str | None, backbone: Backbone, base: str) -> None:
    """Refuse an adapter saved on one family (`MaPLeConfig.backbone`) for a base model of another, even when their
    widths happen to match.

    Args:
        saved (`str`, *optional*): the family the adapter was made for (None: not recorded, accepted).
        backbone (`Backbone`): the base model's family.
        base (`str`): the base model, as the message names it.

    Raises:
        `ValueError`: naming both families.
    """
    if saved is None or saved == backbone.family:
        return
    trained = get_backbone(saved)
    raise ValueError(
        f"The adapter was trained on a {trained.display_name} model (backbone={trained.family!r}), but the base model "
        f"{base} is a {backbone.display_name} model; load it on the {trained.display_name} model it was trained on "
        f"(e.g. {trained.example_checkpoint})."
    )


def backbone_of(model: nn.Module) -> Backbone:
    """The description of `model`'s family, by its class (a `PeftModel` is looked through).

    Args:
        model (`nn.Module`): a transformers dual encoder (`CLIPModel`, `MetaClip2Model`, `SiglipModel`,
            `Siglip2Model`, or a subclass), possibly wrapped by PEFT.

    Raises:
        `ValueError`: any other model, naming its class and the supported families.
    """
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    for backbone in BACKBONES.values():
        if isinstance(model, backbone.model_class):
            return backbone
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    kind = f"{type(model).__name__}" + (f" (model_type={model_type!r})" if model_type else "")
    raise ValueError(
        f"{kind} is not a supported backbone. The prompt methods adapt the dual encoders {_supported()}; load the "
        "base model with its class (or AutoModel.from_pretrained) from such a checkpoint."
    )


def backbone_for_config(config: Any) -> Backbone:
    """The description of the family of a model config (`AutoConfig.from_pretrained(...)`), by its `model_type`.

    Raises:
        `ValueError`: a config of another model type, naming it and the supported families.
    """
    model_type = getattr(config, "model_type", None)
    for backbone in BACKBONES.values():
        if backbone.model_type == model_type:
            return backbone
    raise ValueError(
        f"A {type(config).__name__} (model_type={model_type!r}) is not a supported backbone; the supported ones are "
        f"{_supported()}."
    )
