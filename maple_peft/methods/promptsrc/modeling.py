"""Self-regulating prompt losses (PromptSRC) for every MaPLe variant.

PromptSRC (Khattak et al., "Self-regulating Prompts: Foundational Model Adaptation without Forgetting", ICCV 2023,
https://huggingface.co/papers/2307.06948) adds three terms to the cross-entropy of a prompted CLIP that keep it close
to the frozen CLIP it started from. `SelfRegularizedLoss` computes them exactly as the original trainer does, for
any variant, with the frozen CLIP obtained by disabling the adapter of the same model (no second copy of the
weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ...classifier import PromptClassifier
from ...objectives import ObjectiveOutput, PromptObjective, check_templates, check_weight
from ...templates import IMAGENET_TEMPLATES


class SelfRegularizedLossOutput(ObjectiveOutput):
    """What `SelfRegularizedLoss` returns: `loss`, `logits` and the unweighted `terms` `"ce"`, `"text"`, `"image"`,
    `"logits"` (the KL divergence), as every objective (`maple_peft.objectives.ObjectiveOutput`)."""


class SelfRegularizedLoss(PromptObjective):
    """PromptSRC's self-regulating loss for a `PromptClassifier` of any MaPLe variant.

    With `f_t`, `f_i` the classifier's L2-normalized text and image features and `logits = logit_scale.exp() * f_i @
    f_t.T` its logits, and with the frozen CLIP (the same model with its adapter disabled, under `no_grad`):

    - `g_t`: for every class, the un-normalized frozen text features of `template.format(name)` averaged over
      `templates`, then L2-normalized; computed once per set of class names (recomputed when
      `classifier.class_names` changes), with the classifier's exact trimmed / shared-prefix encoding;
    - `g_i`: the L2-normalized frozen image features of the same batch; `zs_logits = logit_scale.exp() * g_i @ g_t.T`;

    the loss is `CE(logits, labels) + text_weight * mean|f_t - g_t| + image_weight * mean|f_i - g_i| + logits_weight
    * KL`, with `KL = sum(softmax(zs_logits) * (log_softmax(zs_logits) - log_softmax(logits))) / logits.numel()`
    (for CoCoOp, whose text features are per image, `g_t` is compared with each image's).
    The terms are computed in float32 whatever the autocast dtype. Every variant works: without text prompts the
    text term is a constant (no gradient), without vision prompts `f_i = g_i` and the image term is 0.

    The frozen pass costs one forward of the image tower per step (and the text features once per class set); no
    second copy of CLIP is kept. `classifier.model` must be a `PeftModel` (its `disable_adapter()` gives the frozen
    CLIP) or a plain dual encoder (then the frozen and the adapted model are the same). Every backbone works (CLIP,
    MetaCLIP 2, SigLIP, SigLIP 2), with its own logits (SigLIP's `logit_bias` included).

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

    name = "src"
    title = "PromptSRC self-regulating losses"

    def __init__(
        self,
        classifier: PromptClassifier,
        text_weight: float = 25.0,
        image_weight: float = 10.0,
        logits_weight: float = 1.0,
        templates: Sequence[str] | None = None,
    ) -> None:
        super().__init__(classifier)
        self.text_weight = check_weight("text_weight", text_weight)
        self.image_weight = check_weight("image_weight", image_weight)
        self.logits_weight = check_weight("logits_weight", logits_weight)
        if templates is not None:
            templates = check_templates(templates, classifier=classifier)
        self.templates = IMAGENET_TEMPLATES if templates is None else templates

    def describe(self) -> str:
        return (
            f"{self.title}: text {self.text_weight:g}, image {self.image_weight:g}, logits {self.logits_weight:g} "
            f"({len(self.templates)} templates)"
        )

    def extra_repr(self) -> str:
        return (
            f"text_weight={self.text_weight}, image_weight={self.image_weight}, logits_weight={self.logits_weight}, "
            f"templates={len(self.templates)}"
        )

    def target_text_features(self) -> torch.Tensor:
        """`g_t`: the frozen, template-ensembled, L2-normalized text features of the classifier's classes (float32,
        cached per set of class names)."""
        return self.frozen_text_features(self.templates)

    def forward(
        self, pixel_values: Any, labels: torch.Tensor, *, interpolate_pos_encoding: bool = False
    ) -> SelfRegularizedLossOutput:
        """The loss, the classifier's logits and the unweighted terms for a batch.

        A term whose weight is 0 is not computed (and is absent from `terms`); with every weight 0 the loss is the
        plain cross-entropy of the classifier's logits and no frozen pass runs.

        Args:
            pixel_values (`torch.FloatTensor` or mapping): the image batch, as the classifier takes it (SigLIP 2: the
                processor's whole output).
            labels (`torch.LongTensor`): `(batch,)` class indices into `classifier.class_names`.
            interpolate_pos_encoding (`bool`): passed to the image tower (other resolutions).
        """
        classifier = self.classifier
        extra = {"interpolate_pos_encoding": interpolate_pos_encoding}
        need_g_t = self.text_weight > 0 or self.logits_weight > 0
        need_g_i = self.image_weight > 0 or self.logits_weight > 0
        g_t = self.target_text_features() if need_g_t else None
        # the frozen pass runs before the adapted one, so the requires_grad flags are final when the graph is built
        g_i = self.frozen_image_features(pixel_values, **extra) if need_g_i else None
        out = classifier.outputs(pixel_values, **extra)
        f_i, f_t, logits = out.image_features, out.text_features, out.logits
        with torch.autocast(logits.device.type, enabled=False):
            logits32 = logits.float()
            terms = {"ce": F.cross_entropy(logits32, labels)}
            loss = terms["ce"]
            if self.text_weight > 0:
                terms["text"] = F.l1_loss(f_t.float(), g_t.expand_as(f_t))
                loss = loss + self.text_weight * terms["text"]
            if self.image_weight > 0:
                terms["image"] = F.l1_loss(f_i.float(), g_i)
                loss = loss + self.image_weight * terms["image"]
            if self.logits_weight > 0:
                with torch.no_grad():
                    zs_logits = classifier.logits(g_i, g_t)
                kl = (zs_logits.softmax(-1) * (zs_logits.log_softmax(-1) - logits32.log_softmax(-1))).sum()
                terms["logits"] = kl / logits32.numel()
                loss = loss + self.logits_weight * terms["logits"]
        terms = {name: value.detach() for name, value in terms.items()}
        return SelfRegularizedLossOutput(loss=loss, logits=logits, terms=terms)
