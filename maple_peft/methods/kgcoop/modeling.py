"""KgCoOp's knowledge-guided loss."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ...classifier import PromptClassifier
from ...objectives import ObjectiveOutput, PromptObjective, check_templates, check_weight, cosine_distance


class KnowledgeGuidedLoss(PromptObjective):
    """KgCoOp's knowledge-guided loss (Yao et al., "Visual-Language Prompt Tuning with Knowledge-guided Context
    Optimization", CVPR 2023, https://huggingface.co/papers/2303.13283), for any variant.

    `loss = CE(logits, labels) + weight * (1 - mean_c cos(t_c, g_c))`: `t_c` the classifier's normalized text features
    of class `c` (per image for CoCoOp, then averaged over images and classes), `g_c` the frozen model's (adapter
    disabled) on `template.format(name)`, normalized; cosine with eps 1e-7 as the original, no logit scale. The frozen
    text features are computed once per set of class names.

    Args:
        classifier (`PromptClassifier`): the classifier being trained.
        weight (`float`, defaults to 8.0): the weight of the knowledge term (KgCoOp's `W`, 8.0 in all its recipes).
        template (`str`, defaults to `"a photo of a {}."`): the hand-written template of the frozen features (KgCoOp
            uses the dataset's: `maple_peft.training` recipes ship them).

    Example:

        ```py
        >>> loss_fn = maple_peft.KnowledgeGuidedLoss(classifier, weight=8.0, template="a photo of a {}, a type of pet.")
        >>> out = loss_fn(pixel_values, labels)
        >>> {name: value.item() for name, value in out.terms.items()}
        {'ce': 1.38, 'knowledge': 0.041}
        ```
    """

    name = "kgcoop"
    title = "KgCoOp knowledge-guided loss"
    #: the eps of KgCoOp's `torch.nn.CosineSimilarity`
    EPS = 1e-7

    def __init__(self, classifier: PromptClassifier, weight: float = 8.0, template: str = "a photo of a {}.") -> None:
        super().__init__(classifier)
        self.weight = check_weight("weight", weight)
        self.template = check_templates([template], "template", classifier)[0]

    @classmethod
    def from_declared(cls, classifier: PromptClassifier, kg_weight: float, kg_template: str) -> KnowledgeGuidedLoss:
        return cls(classifier, weight=kg_weight, template=kg_template)

    def describe(self) -> str:
        return f"{self.title}: weight {self.weight:g}, frozen text on {self.template!r}"

    def extra_repr(self) -> str:
        return f"weight={self.weight}, template={self.template!r}"

    def forward(self, images: Any, labels: torch.Tensor, **extra: Any) -> ObjectiveOutput:
        out = self.classifier.outputs(images, **extra)
        with torch.autocast(out.logits.device.type, enabled=False):
            terms = {"ce": F.cross_entropy(out.logits.float(), labels)}
            loss = terms["ce"]
            if self.weight > 0:
                frozen = self.frozen_text_features([self.template])
                terms["knowledge"] = cosine_distance(out.text_features.float(), frozen, self.EPS)
                loss = loss + self.weight * terms["knowledge"]
        return self._output(loss, out.logits, terms)
