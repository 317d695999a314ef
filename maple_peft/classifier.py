"""`PromptClassifier`: class names in, logits out, with the text features computed once where they can be."""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers.utils import ModelOutput

from .backbones import Backbone, backbone_of
from .class_text import ClassTextEncoder, TokenizedPrompts, active_maple_config, base_model_of
from .config import MaPLeConfig
from .layer import MaPLeTextPromptLayer
from .loading import load_image
from .methods import fields_of
from .numerics import flush_denormal
from .prompts import prompt_template

__all__ = [
    "ClassifierOutput",
    "PromptClassifier",
    "TokenizedPrompts",
    "active_maple_config",
    "base_model_of",
    "test_time_options",
]

REP_LOGITS = ("auto", "fusion", "class")


@dataclass
class ClassifierOutput(ModelOutput):
    """What `PromptClassifier.outputs` returns: the logits and the features they come from.

    Args:
        logits (`torch.Tensor`): `(batch, n_classes)`, exactly `classifier(images)`.
        image_features (`torch.Tensor`): `(batch, embed_dim)`, L2-normalized (MMRL: the class token's).
        text_features (`torch.Tensor`): `(n_classes, embed_dim)`, or `(batch, n_classes, embed_dim)` for CoCoOp
            (one set per image), L2-normalized.
        logits_class (`torch.Tensor`, *optional*): MMRL: the class path's logits, `100 * cos(image, text)`.
        logits_rep (`torch.Tensor`, *optional*): MMRL: the representation path's logits.
        image_rep_features (`torch.Tensor`, *optional*): MMRL: the normalized representation features of the images.
    """

    logits: torch.FloatTensor | None = None
    image_features: torch.FloatTensor | None = None
    text_features: torch.FloatTensor | None = None
    logits_class: torch.FloatTensor | None = None
    logits_rep: torch.FloatTensor | None = None
    image_rep_features: torch.FloatTensor | None = None


def _is_single_image(images: Any) -> bool:
    from PIL import Image

    return isinstance(images, (str, os.PathLike, Image.Image))


class PromptClassifier(nn.Module):
    """Classifies images among class names with an adapted (or plain) CLIP-family dual encoder.

    Class names become prompts (`"a photo of a {name}."` for the default adapter, see `maple_peft.format_prompts`),
    whose text features come from the class-text encoder (`clf.text_encoder`, a `maple_peft.ClassTextEncoder`):
    tokenized once and, for the causal text encoders (CLIP, MetaCLIP 2), encoded in groups of prompts of equal length,
    each trimmed at its end-of-text token, with the token prefix that all prompts share (`<start> ctx_1 .. ctx_n of a`)
    encoded once and reused by every class (`shared_prefix`, see `maple_peft.shared_prefix`), which about halves the
    text cost. SigLIP's bidirectional text encoder pools the last position of a prompt padded to 64 tokens, so its
    prompts are encoded whole. Text is encoded in chunks of at most `text_batch_size` prompts; with
    `gradient_checkpointing=True` the chunks' activations are recomputed in the backward pass, so training memory stays
    bounded for thousands of classes.

    Logits are the family's (`maple_peft.backbones`): `exp(logit_scale) * cos(image, text)`, plus `logit_bias` for
    SigLIP; `predict_proba` reports the family's usual scores (softmax over the classes for CLIP and MetaCLIP 2, an
    independent sigmoid per class for SigLIP and SigLIP 2, as transformers' zero-shot pipeline does).

    Text-feature cache: in train mode the text features are recomputed at every call, with gradients. In eval mode
    they are computed once and reused while nothing that changes them changes (the tokenizer, template, class names,
    chunk size, backbone, active adapter and its options, the values of the text tower's parameters and prompts: see
    `maple_peft.ClassTextEncoder`); call `set_class_names(clf.class_names)` to force a recomputation.

    Images: `clf(pixel_values)` with the image processor's `pixel_values`; SigLIP 2 (NaFlex) takes the processor's whole
    output, `clf(**inputs)` or `clf(inputs)` (`pixel_values`, `pixel_attention_mask`, `spatial_shapes`).

    `PromptClassifier.from_pretrained(adapter)` builds a classifier from a saved adapter in one call (base model,
    tokenizer, image processor and the class names saved with the adapter); `predict` and `predict_proba` then take
    PIL images, paths or URLs.

    Args:
        model (`PeftModel` or a dual encoder): the adapted model (or a plain `CLIPModel`, `MetaClip2Model`,
            `SiglipModel` or `Siglip2Model` for zero-shot classification).
        tokenizer: the base model's tokenizer.
        class_names (`Sequence[str]`): the class names (`_` becomes a space). Names must be strings, give distinct
            prompts, contain none of the tokenizer's special tokens and fit the text encoder's context (77 tokens for
            CLIP, 64 for SigLIP) in their prompt.
        template (`str`, *optional*): a prompt template with one `{}`, overriding the adapter's (e.g. a dataset's
            zero-shot template for plain CLIP).
        text_batch_size (`int`, defaults to 256): number of prompts encoded at once.
        gradient_checkpointing (`bool`, *keyword-only*, defaults to `False`): recompute the text activations in the
            backward pass (training only).
        shared_prefix (`bool`, *keyword-only*, defaults to `True`): encode the prompts' common prefix once. It is used
            whenever the model allows it (a causal text tower of transformers, CLIP or MetaCLIP 2, without forward
            hooks, no attention dropout or transformers gradient checkpointing in training; `shared_prefix_reason()`
            says why not otherwise) and gives the same features up to float rounding. `False` always runs the text tower's own forward.
        image_processor (*keyword-only*, *optional*): the image processor `predict` and `predict_proba` use when
            they are not given one (kept as `clf.image_processor`; `from_pretrained` sets it to the base model's).
        rep_logits (`str`, *keyword-only*, defaults to `"auto"`): MMRL adapters: `"fusion"` (`alpha * class logits +
            (1 - alpha) * representation logits`), `"class"` (the class path only) or `"auto"`: as the original
            evaluates, the fusion on the classes the adapter was trained on (its saved `class_names`, and its saved
            `dataset` when both it and `dataset` are known), the class path elsewhere (novel classes, other datasets,
            ImageNet's shifted variants).
        dataset (`str`, *keyword-only*, *optional*): the name of the dataset being classified, for `rep_logits="auto"`.

    Example:

        ```py
        >>> clf = maple_peft.PromptClassifier.from_pretrained("your-name/maple-eurosat")  # base, tokenizer, classes
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
        rep_logits: str = "auto",
        dataset: str | None = None,
    ) -> None:
        super().__init__()
        # an unsupported model is refused here, naming the supported families, and one that cannot compute logits
        backbone_of(model).embed_dim(base_model_of(model).config)
        if rep_logits not in REP_LOGITS:
            raise ValueError(f"rep_logits={rep_logits!r} is not one of {REP_LOGITS}.")
        self.rep_logits = rep_logits
        self.dataset = dataset
        self.model = model
        self.text_encoder = ClassTextEncoder(
            model,
            tokenizer,
            class_names,
            template,
            text_batch_size,
            gradient_checkpointing=gradient_checkpointing,
            shared_prefix=shared_prefix,
        )
        self.image_processor = image_processor

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

        Reads the adapter's `adapter_config.json`, loads the base model it names (or `base_model_name_or_path`),
        the adapter (`PeftModel.from_pretrained`), the base model's tokenizer (`AutoTokenizer`) and image processor
        (`AutoImageProcessor`; CLIP's default preprocessing at the model's image size, with a warning, when the base
        has none), and classifies among the class names saved with the adapter unless `class_names` is given.

        Everything is checked before the base model's weights are loaded: the adapter is a MaPLe adapter, a base model
        is named and can be found, its text and vision widths match the adapter's tensors, and there are class names.

        Args:
            adapter_name_or_path (`str` or `os.PathLike`): Hub id or local folder of the adapter.
            class_names (`Sequence[str]`, *optional*): the classes to recognize; defaults to the adapter's
                `class_names` (those it was trained on).
            base_model_name_or_path (`str` or `os.PathLike`, *optional*): the base model to load the adapter on; defaults
                to the one the adapter's config names (`base_model_name_or_path`).
            adapter_name (`str`, defaults to `"default"`): the name the adapter gets in the `PeftModel`.
            model_kwargs: `revision`, `subfolder`: where the adapter is in its repository. `base_model_revision`:
                the base model's revision; defaults to the `revision` recorded in the adapter's config when the base
                model is the one it names (as `AutoPeftModel` does). `token`, `cache_dir`, `force_download`,
                `local_files_only`, `proxies`: used for every download (adapter, base model, tokenizer, image
                processor). Everything else (`dtype`/`torch_dtype`, `device_map`, `attn_implementation`, ...) goes to the base model's
                `from_pretrained`.

        Returns:
            `PromptClassifier` with `image_processor` set, in eval mode.

        Raises:
            `OSError`: the adapter or the base model cannot be found or loaded.
            `ValueError`: the adapter is not a MaPLe adapter, names no base model, does not fit the base model's
                widths, or there are no class names.

        Example:

            ```py
            >>> clf = maple_peft.PromptClassifier.from_pretrained("your-name/maple-eurosat", dtype=torch.bfloat16)
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

    # ---- the model and the text side (delegated to the class-text encoder) ------------------------------------------

    @property
    def base_model(self) -> nn.Module:
        """The dual encoder (inside the `PeftModel`): a `CLIPModel`, `MetaClip2Model`, `SiglipModel` or
        `Siglip2Model`."""
        return base_model_of(self.model)

    @property
    def clip(self) -> nn.Module:
        """The dual encoder, as `base_model` (the name predates the other CLIP-family backbones)."""
        return self.base_model

    @property
    def backbone(self) -> Backbone:
        """The description of the base model's family (pooling, logits, scores, image inputs)."""
        return backbone_of(self.model)

    @property
    def class_names(self) -> list[str]:
        """The classes, in the order of the logits' columns."""
        return self.text_encoder.class_names

    @property
    def tokenizer(self) -> Any:
        return self.text_encoder.tokenizer

    @tokenizer.setter
    def tokenizer(self, value: Any) -> None:
        self.text_encoder.tokenizer = value

    @property
    def template(self) -> str | None:
        """The prompt template given to the classifier (`None`: the adapter's)."""
        return self.text_encoder.template

    @template.setter
    def template(self, value: str | None) -> None:
        self.text_encoder.template = value

    @property
    def text_batch_size(self) -> int:
        return self.text_encoder.text_batch_size

    @text_batch_size.setter
    def text_batch_size(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"text_batch_size={value!r} must be an integer >= 1.")
        self.text_encoder.text_batch_size = value

    @property
    def gradient_checkpointing(self) -> bool:
        return self.text_encoder.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        self.text_encoder.gradient_checkpointing = value

    @property
    def shared_prefix(self) -> bool:
        return self.text_encoder.shared_prefix

    @shared_prefix.setter
    def shared_prefix(self, value: bool) -> None:
        self.text_encoder.shared_prefix = value

    def set_class_names(self, class_names: Sequence[str]) -> None:
        """Classify among other classes from now on (e.g. novel classes at test time).

        The names are checked and their prompts tokenized at once; on any error the previous class names stay.

        Args:
            class_names (`Sequence[str]`): the new class names.

        Raises:
            `TypeError`: a name is not a string.
            `ValueError`: the list is empty, a name is blank or holds a special token of the tokenizer, two names give
                the same prompt, or a prompt is longer than the text encoder's context.
        """
        self.text_encoder.set_class_names(class_names)

    def current_template(self) -> str:
        """The template the prompts are made with now (the adapter's, unless one was passed)."""
        return self.text_encoder.current_template()

    @property
    def prompts(self) -> list[str]:
        return self.text_encoder.prompts

    def input_ids(self) -> torch.Tensor:
        """The tokenized prompts, `(n_classes, length)`, re-tokenized only when the template or tokenizer changes."""
        return self.text_encoder.input_ids()

    def shared_prefix_reason(self) -> str | None:
        """Why the text features are not computed with the shared-prefix encoding now, or None when they are."""
        return self.text_encoder.shared_prefix_reason()

    def encode_class_prompts(self, *, normalize: bool = True) -> torch.Tensor:
        """The text features of the classes computed now, with the model as it is (no cache), `(n_classes,
        embed_dim)`: the same exact encoding as `text_features()`.

        Args:
            normalize (`bool`): L2-normalize them (as `text_features()` does); `False` gives the projected features
                before normalization, e.g. to average them over several templates.
        """
        return self.text_encoder.encode(normalize=normalize)

    def text_features(self) -> torch.Tensor:
        """L2-normalized text features of the classes, `(n_classes, embed_dim)` (cached in eval mode)."""
        return self.text_encoder.features()

    # ---- the image side and the logits ------------------------------------------------------------------------------

    def image_inputs(
        self,
        pixel_values: torch.Tensor | Mapping[str, torch.Tensor] | None,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
    ) -> torch.Tensor | Mapping[str, torch.Tensor]:
        """One image batch from the classifier's arguments: the `pixel_values` tensor, or a mapping of the family's
        image inputs (the processor's output passed whole, or its parts passed as keywords)."""
        if isinstance(pixel_values, Mapping):
            if pixel_attention_mask is not None or spatial_shapes is not None:
                raise ValueError(
                    "Pass the image inputs once: either the processor's whole output (clf(inputs)) or its parts as "
                    "keywords (clf(**inputs)), not both."
                )
            return pixel_values
        if pixel_attention_mask is None and spatial_shapes is None:
            return pixel_values
        extra = {"pixel_attention_mask": pixel_attention_mask, "spatial_shapes": spatial_shapes}
        unexpected = [
            key for key, value in extra.items() if value is not None and key not in self.backbone.vision_inputs
        ]
        if unexpected:
            raise ValueError(
                f"{unexpected} were given, but {self.backbone.display_name} takes only "
                f"{list(self.backbone.vision_inputs)}."
            )
        return {"pixel_values": pixel_values, **{key: value for key, value in extra.items() if value is not None}}

    def image_features(
        self,
        pixel_values: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
        *,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
        normalize: bool = True,
    ) -> torch.Tensor:
        """L2-normalized image features, `(batch, embed_dim)`.

        Args:
            pixel_values (`torch.FloatTensor` or mapping): images preprocessed by the model's image processor
                (floating point, normalized): `(batch, 3, height, width)`, or for SigLIP 2 `(batch, patches,
                3 * patch_size**2)`; or the processor's whole output (a dict / `BatchFeature`).
            pixel_attention_mask (`torch.Tensor`, *keyword-only*, *optional*): SigLIP 2's patch mask.
            spatial_shapes (`torch.LongTensor`, *keyword-only*, *optional*): SigLIP 2's patch grid per image.
            interpolate_pos_encoding (`bool`, *keyword-only*): interpolate the position embeddings for images of
                another size than the model's (CLIP, MetaCLIP 2, SigLIP).
            normalize (`bool`, *keyword-only*, defaults to `True`): L2-normalize them; `False` gives the projected
                (CLIP) or head-pooled (SigLIP) features as the model returns them.
        """
        inputs = self.image_inputs(pixel_values, pixel_attention_mask, spatial_shapes)
        features = self.backbone.image_features(
            self.base_model, inputs, interpolate_pos_encoding=interpolate_pos_encoding
        )
        return features / features.norm(dim=-1, keepdim=True) if normalize else features

    def logits(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """The family's logits from normalized features (`maple_peft.backbones.Backbone.logits`)."""
        return self.backbone.logits(self.base_model, image_features, text_features)

    def conditioned_text_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """CoCoOp: the normalized text features of every class for every image, `(batch, n_classes, embed_dim)`: the
        context shifted by the meta-net's output for each image's normalized features.

        Args:
            image_features (`torch.Tensor`): `(batch, embed_dim)` normalized image features.
        """
        layer = self.base_model.get_submodule(self.backbone.token_embedding)
        name = layer.prompt_adapter() if isinstance(layer, MaPLeTextPromptLayer) else None
        if name is None or not layer.has_meta_net(name):
            raise ValueError("The active adapter has no meta-net: conditioned text features are CoCoOp's.")
        return self.text_encoder.encode(condition=layer.meta_shift(name, image_features))

    def uses_fusion(self, config: MaPLeConfig | None = None) -> bool:
        """Whether MMRL's fused logits are the classifier's logits now (see `rep_logits`)."""
        config = config if config is not None else active_maple_config(self.model)
        if self.rep_logits != "auto":
            return self.rep_logits == "fusion"
        same_classes = config is not None and config.class_names is not None
        same_classes = same_classes and list(config.class_names) == list(self.class_names)
        if self.dataset is not None and config is not None and config.dataset is not None:
            return same_classes and self.dataset == config.dataset
        return same_classes

    def outputs(
        self,
        pixel_values: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
        *,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> ClassifierOutput:
        """The logits and the features they come from (what the losses need), for every variant: the class features
        shared by all images, CoCoOp's per-image text features, MMRL's two paths.

        Args:
            pixel_values, pixel_attention_mask, spatial_shapes, interpolate_pos_encoding: see `image_features`.
        """
        inputs = self.image_inputs(pixel_values, pixel_attention_mask, spatial_shapes)
        extra = {"interpolate_pos_encoding": interpolate_pos_encoding}
        config = active_maple_config(self.model)
        if config is not None:
            outputs = config.method.outputs(self, inputs, config, **extra)
            if outputs is not None:
                return outputs
        image = self.image_features(inputs, **extra)
        if config is not None and config.conditional:
            text = self.conditioned_text_features(image)
        else:
            text = self.text_features()
        return ClassifierOutput(logits=self.logits(image, text), image_features=image, text_features=text)

    def forward(
        self,
        pixel_values: torch.Tensor | Mapping[str, torch.Tensor] | None = None,
        *,
        pixel_attention_mask: torch.Tensor | None = None,
        spatial_shapes: torch.Tensor | None = None,
        interpolate_pos_encoding: bool = False,
    ) -> torch.Tensor:
        """Logits `exp(logit_scale) * cos(image, class prompt)` (plus `logit_bias` for SigLIP; MMRL: see
        `rep_logits`), `(batch, n_classes)`.

        Args:
            pixel_values, pixel_attention_mask, spatial_shapes, interpolate_pos_encoding: see `image_features`.
        """
        return self.outputs(
            pixel_values,
            pixel_attention_mask=pixel_attention_mask,
            spatial_shapes=spatial_shapes,
            interpolate_pos_encoding=interpolate_pos_encoding,
        ).logits

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
        backbone = self.backbone
        weight = next(self.base_model.vision_model.parameters())
        # subnormal floats are flushed to zero on CPU while predicting (they slow arithmetic down many times)
        with self._evaluating(), torch.no_grad(), flush_denormal():
            for start in range(0, len(images), batch_size):
                batch = [load_image(image) for image in images[start : start + batch_size]]
                processed = processor(images=batch, return_tensors="pt")
                inputs = {key: processed[key].to(weight.device) for key in backbone.vision_inputs}
                inputs["pixel_values"] = inputs["pixel_values"].to(weight.dtype)
                yield backbone.probabilities(self(inputs))

    def predict(self, images: Any | Sequence[Any], processor: Any = None, *, batch_size: int = 64) -> list[str] | str:
        """The predicted class name of each image.

        Runs in eval mode (text features computed once), with subnormal floats flushed to zero on CPU, and restores
        the previous mode of every module and the previous floating-point setting afterwards.

        Args:
            images: a list of images, each a PIL image, a local path or an `http(s)://` URL (or a numpy array the
                processor accepts); a single image gives a single name.
            processor (*optional*): the image processor (the base model's processor or image processor); defaults to
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
        """The class scores of each image, as transformers' image-classification pipelines return them.

        Each image gets a list `[{"label": class_name, "score": score}, ...]` sorted by decreasing score: the family's
        usual scores, the softmax of the logits over all classes for CLIP and MetaCLIP 2, the sigmoid of each class's
        logit for SigLIP and SigLIP 2 (independent per class: they need not sum to 1), as transformers' zero-shot
        image-classification pipeline reports them.

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
                "base model has no adapter to save."
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


@contextmanager
def test_time_options(model: nn.Module, **values: Any) -> Iterator[MaPLeConfig | None]:
    """Within a `with` block, give the active adapter of `model` other values of the options that act at each forward
    pass (those its method declares with `metadata["test_time"]`: MMRL's `alpha`, MMRL++'s `alpha` and `beta`), as the
    original code evaluates each target dataset with a value of its own; the adapter's values come back at the end.

    Args:
        model (`nn.Module`): a model carrying a MaPLe adapter (`PeftModel`, or one wrapped for distributed runs).
        **values: the options and their values for the block; checked like `MaPLeConfig`'s before anything changes.

    Yields:
        `MaPLeConfig`: the active adapter's config, holding the block's values (`None` when no values are given and
            no adapter is active).

    Raises:
        `ValueError`: no adapter is active, an option is not one of its method's test-time options, or a value is out
            of range.

    Example:

        ```py
        >>> with maple_peft.test_time_options(model, beta=0.3):  # EuroSAT's in MMRL++'s cross-dataset scripts
        ...     logits = classifier(pixel_values)
        ```
    """
    config = active_maple_config(model)
    if not values:
        yield config
        return
    if config is None:
        raise ValueError(f"test_time_options({values}) needs an active MaPLe adapter, and the model has none active.")
    method = config.method
    allowed = [field.name for field in fields_of(method.options) if field.metadata.get("test_time")]
    for name in values:
        if name not in allowed:
            raise ValueError(
                f"{name}={values[name]!r} cannot change at test time for a {method.title} adapter; the options that "
                f"can are {allowed or 'none'}."
            )
    candidate = copy.copy(config)
    for name, value in values.items():
        setattr(candidate, name, value)
    method.resolve(candidate)  # the same checks as MaPLeConfig's (ValueError naming the bad value)
    saved = {name: getattr(config, name) for name in values}
    try:
        for name in values:
            setattr(config, name, getattr(candidate, name))
        yield config
    finally:
        for name, value in saved.items():
            setattr(config, name, value)
