"""Self-regulating prompt losses (PromptSRC) for every MaPLe variant.

PromptSRC (Khattak et al., "Self-regulating Prompts: Foundational Model Adaptation without Forgetting", ICCV 2023,
https://huggingface.co/papers/2307.06948) adds three terms to the cross-entropy of a prompted CLIP that keep it close
to the frozen CLIP it started from. `SelfRegularizedLoss` computes them exactly as the original trainer does, for
any variant, with the frozen CLIP obtained by disabling the adapter of the same model (no second copy of the
weights).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.utils import ModelOutput

from .classifier import PromptClassifier, _pooled
from .templates import IMAGENET_TEMPLATES

#: the keys of `SelfRegularizedLossOutput.terms`


@dataclass
class SelfRegularizedLossOutput(ModelOutput):
    """What `SelfRegularizedLoss` returns (a transformers `ModelOutput`: attributes, keys, and DDP/accelerate
    friendly).

    Args:
        loss (`torch.Tensor`): the scalar float32 loss to back-propagate,
            `ce + text_weight * text + image_weight * image + logits_weight * logits`.
        logits (`torch.Tensor`): the classifier's logits `(batch, n_classes)` (with gradients, in the autocast dtype),
            exactly what `classifier(pixel_values)` returns.
        terms (`dict[str, torch.Tensor]`): the unweighted terms `"ce"`, `"text"`, `"image"`, `"logits"` (the KL
            divergence), each a detached float32 0-dim tensor (call `.item()` when logging; no device sync otherwise).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    terms: dict[str, torch.Tensor] | None = None


def _check_weight(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}={value!r} must be a finite number >= 0 (0 turns the term off).")
    return float(value)


def _check_templates(templates: Sequence[str] | None) -> tuple[str, ...]:
    if templates is None:
        return IMAGENET_TEMPLATES
    if isinstance(templates, str) or len(templates) == 0:
        raise ValueError(
            f"templates={templates!r} must be a non-empty sequence of templates such as 'a photo of a {{}}.', or "
            "None for the 60 CLIP ImageNet templates."
        )
    for template in templates:
        if not isinstance(template, str) or template.count("{}") != 1:
            raise ValueError(f"The template {template!r} must be a string with exactly one '{{}}' for the class name.")
        try:
            template.format("x")
        except (IndexError, KeyError, ValueError) as error:
            raise ValueError(
                f"The template {template!r} cannot be filled with str.format ({error}); write other braces as "
                "'{{' and '}}'."
            ) from error
    return tuple(templates)


def frozen_text_features(
    clip: nn.Module,
    tokenizer,
    class_names: Sequence[str],
    templates: Sequence[str],
    text_batch_size: int = 256,
    shared_prefix: bool = True,
) -> torch.Tensor:
    """Template-ensembled text features of `clip` as it is now: L2-normalized mean over `templates` of the
    un-normalized projected text features of `template.format(class_name)`, float32 `(n_classes, projection_dim)`.

    Call it with the adapter disabled and gradients off to get frozen CLIP's features. Each template's prompts are
    encoded like `PromptClassifier` encodes its prompts: grouped by token length and trimmed (no padding is encoded),
    with the prefix all prompts of the template share encoded once (`maple_peft.shared_prefix`) where the model allows
    it.

    Args:
        clip (`CLIPModel`): the (unwrapped) CLIP.
        tokenizer: the CLIP tokenizer.
        class_names (`Sequence[str]`): the class names (`_` becomes a space).
        templates (`Sequence[str]`): `str.format` templates with one `{}`.
        text_batch_size (`int`): number of prompts encoded at once.
        shared_prefix (`bool`): encode each template's shared prefix once.
    """

    total = None
    for template in templates:
        encoder = PromptClassifier(
            clip,
            tokenizer,
            class_names,
            template=template,
            text_batch_size=text_batch_size,
            shared_prefix=shared_prefix,
        )
        features = encoder.encode_class_prompts(normalize=False).float()
        total = features if total is None else total + features
    mean = total / len(templates)
    return mean / mean.norm(dim=-1, keepdim=True)


class SelfRegularizedLoss(nn.Module):
    """PromptSRC's self-regulating loss for a `PromptClassifier` of any MaPLe variant.

    With `f_t`, `f_i` the classifier's L2-normalized text and image features and `logits = logit_scale.exp() * f_i @
    f_t.T` its logits, and with the frozen CLIP (the same model with its adapter disabled, under `no_grad`):

    - `g_t`: for every class, the un-normalized frozen text features of `template.format(name)` averaged over
      `templates`, then L2-normalized; computed once per set of class names (recomputed when
      `classifier.class_names` changes), with the classifier's exact trimmed / shared-prefix encoding;
    - `g_i`: the L2-normalized frozen image features of the same batch; `zs_logits = logit_scale.exp() * g_i @ g_t.T`;

    the loss is `CE(logits, labels) + text_weight * mean|f_t - g_t| + image_weight * mean|f_i - g_i| + logits_weight
    * KL`, with `KL = sum(softmax(zs_logits) * (log_softmax(zs_logits) - log_softmax(logits))) / logits.numel()`.
    The terms are computed in float32 whatever the autocast dtype. Every variant works: without text prompts the
    text term is a constant (no gradient), without vision prompts `f_i = g_i` and the image term is 0.

    The frozen pass costs one forward of the image tower per step (and the text features once per class set); no
    second copy of CLIP is kept. `classifier.model` must be a `PeftModel` (its `disable_adapter()` gives the frozen
    CLIP) or a plain `CLIPModel` (then the frozen and the adapted model are the same).

    Distributed training and mixed precision: this is an `nn.Module` whose only parameters are the classifier's, so
    prepare *it* instead of the classifier (`loss_fn = accelerator.prepare(loss_fn)`): DDP then sees the whole
    computation in its forward, and accelerate's autocast covers it. Build it from the unwrapped classifier;
    `accelerator.unwrap_model(loss_fn).classifier` gives the classifier back (for evaluation and saving).

    Args:
        classifier (`PromptClassifier`): the classifier being trained (not wrapped by DDP).
        text_weight (`float`, defaults to 25.0): weight of the text term (PromptSRC's `TEXT_LOSS_WEIGHT`).
        image_weight (`float`, defaults to 10.0): weight of the image term (`IMAGE_LOSS_WEIGHT`).
        logits_weight (`float`, defaults to 1.0): weight of the KL term.
        templates (`Sequence[str]`, *optional*): the templates of `g_t`; `None` for `maple_peft.IMAGENET_TEMPLATES`
            (the 60 CLIP ImageNet templates of the original code).

    Example:

        ```py
        >>> classifier = maple_peft.PromptClassifier(model, tokenizer, class_names)
        >>> loss_fn = maple_peft.SelfRegularizedLoss(classifier, text_weight=25.0, image_weight=10.0)
        >>> out = loss_fn(pixel_values, labels)
        >>> out.loss.backward()
        >>> {name: value.item() for name, value in out.terms.items()}
        {'ce': 1.61, 'text': 0.012, 'image': 0.009, 'logits': 0.004}
        ```
    """

    def __init__(
        self,
        classifier: PromptClassifier,
        text_weight: float = 25.0,
        image_weight: float = 10.0,
        logits_weight: float = 1.0,
        templates: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(classifier, PromptClassifier):
            inner = getattr(classifier, "module", None)
            if isinstance(inner, PromptClassifier):
                raise TypeError(
                    f"classifier is wrapped by {type(classifier).__name__}; build the loss from the unwrapped "
                    "PromptClassifier and prepare the loss instead: "
                    "`loss_fn = accelerator.prepare(SelfRegularizedLoss(classifier))`."
                )
            raise TypeError(f"classifier must be a maple_peft.PromptClassifier, got {type(classifier).__name__}.")
        self.text_weight = _check_weight("text_weight", text_weight)
        self.image_weight = _check_weight("image_weight", image_weight)
        self.logits_weight = _check_weight("logits_weight", logits_weight)
        self.templates = _check_templates(templates)
        model = classifier.model
        if not hasattr(model, "disable_adapter") and any(isinstance(m, BaseTunerLayer) for m in model.modules()):
            raise TypeError(
                f"The classifier's model ({type(model).__name__}) carries adapter layers but has no "
                "`disable_adapter()`, so the frozen CLIP cannot be run without a second copy; use the PeftModel "
                "returned by get_peft_model / PeftModel.from_pretrained."
            )
        self.classifier = classifier
        self._frozen_text: tuple[tuple, torch.Tensor] | None = None

    def extra_repr(self) -> str:
        return (
            f"text_weight={self.text_weight}, image_weight={self.image_weight}, logits_weight={self.logits_weight}, "
            f"templates={len(self.templates)}"
        )

    @contextmanager
    def frozen_model(self) -> Iterator[nn.Module]:
        """Context in which `self.classifier.clip` is the frozen CLIP: the adapter is disabled (`PeftModel.
        disable_adapter`), and the parameters' `requires_grad` flags are restored on exit."""
        model = self.classifier.model
        if not hasattr(model, "disable_adapter"):
            yield self.classifier.clip
            return
        flags = [(param, param.requires_grad) for param in model.parameters()]
        try:
            with model.disable_adapter():
                yield self.classifier.clip
        finally:
            for param, flag in flags:
                param.requires_grad_(flag)

    def target_text_features(self) -> torch.Tensor:
        """`g_t`: the frozen, template-ensembled, L2-normalized text features of the classifier's classes (float32,
        cached per set of class names)."""
        classifier = self.classifier
        clip = classifier.clip
        key = (tuple(classifier.class_names), self.templates, clip.text_projection.weight.device)
        if self._frozen_text is None or self._frozen_text[0] != key:
            device_type = clip.text_projection.weight.device.type
            with torch.no_grad(), torch.autocast(device_type, enabled=False), self.frozen_model() as frozen:
                features = frozen_text_features(
                    frozen,
                    classifier.tokenizer,
                    classifier.class_names,
                    self.templates,
                    classifier.text_batch_size,
                    classifier.shared_prefix,
                )
            self._frozen_text = (key, features)
        return self._frozen_text[1]

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor, *, interpolate_pos_encoding: bool = False
    ) -> SelfRegularizedLossOutput:
        """The loss, the classifier's logits and the unweighted terms for a batch.

        A term whose weight is 0 is not computed (and is absent from `terms`); with every weight 0 the loss is the
        plain cross-entropy of the classifier's logits and no frozen pass runs.

        Args:
            pixel_values (`torch.FloatTensor`): `(batch, 3, H, W)` images, as for the classifier.
            labels (`torch.LongTensor`): `(batch,)` class indices into `classifier.class_names`.
            interpolate_pos_encoding (`bool`): passed to the image tower (other resolutions).
        """
        classifier = self.classifier
        need_g_t = self.text_weight > 0 or self.logits_weight > 0
        need_g_i = self.image_weight > 0 or self.logits_weight > 0
        g_t = self.target_text_features() if need_g_t else None
        g_i = None
        if need_g_i:
            # the frozen pass runs before the adapted one, so the requires_grad flags are final when the graph is built
            with torch.no_grad(), self.frozen_model() as frozen:
                frozen_image = _pooled(
                    frozen.get_image_features(
                        pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding
                    )
                )
            g_i = frozen_image.float()
            g_i = g_i / g_i.norm(dim=-1, keepdim=True)
        f_i = classifier.image_features(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding)
        f_t = classifier.text_features()
        scale = classifier.clip.logit_scale.exp()
        logits = scale.to(f_i.dtype) * f_i @ f_t.to(f_i.dtype).t()  # exactly PromptClassifier.forward
        with torch.autocast(logits.device.type, enabled=False):
            logits32 = logits.float()
            terms = {"ce": F.cross_entropy(logits32, labels)}
            loss = terms["ce"]
            if self.text_weight > 0:
                terms["text"] = F.l1_loss(f_t.float(), g_t)
                loss = loss + self.text_weight * terms["text"]
            if self.image_weight > 0:
                terms["image"] = F.l1_loss(f_i.float(), g_i)
                loss = loss + self.image_weight * terms["image"]
            if self.logits_weight > 0:
                zs_logits = scale.detach().float() * g_i @ g_t.t()
                kl = (zs_logits.softmax(-1) * (zs_logits.log_softmax(-1) - logits32.log_softmax(-1))).sum()
                terms["logits"] = kl / logits32.numel()
                loss = loss + self.logits_weight * terms["logits"]
        terms = {name: value.detach() for name, value in terms.items()}
        return SelfRegularizedLossOutput(loss=loss, logits=logits, terms=terms)
