"""Training objectives: cross-entropy, and the losses of the prompt methods that add terms to it, on one interface.

Every objective is an `nn.Module` built on a `PromptClassifier` and called as `out = objective(images, labels)`,
returning `ObjectiveOutput(loss, logits, terms)`; its only parameters are the classifier's, so prepare the objective
(`accelerator.prepare(objective)`) instead of the classifier. The frozen model that several of them compare against is
the same model with its adapter disabled: no second copy of the weights is kept. Each objective declares the options
it takes (`options`, read by `examples/train.py`) and says what it is (`describe()`, written into model cards).

| objective | class | loss |
|---|---|---|
| `ce` | `CrossEntropyObjective` | `CE(logits, labels)` |
| `src` | `SelfRegularizedLoss` (`maple_peft.regularization`) | PromptSRC: CE + L1 to frozen text / image features + KL |
| `kgcoop` | `KnowledgeGuidedLoss` | KgCoOp: CE + `weight * (1 - mean_c cos(t_c, g_c))` |
| `mmrl` | `RepresentationLoss` | MMRL: both paths' CE + cosine regularization to frozen features |
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.utils import ModelOutput

from .class_text import ClassTextEncoder, active_maple_config
from .classifier import PromptClassifier
from .prompts import check_template_tokens


@dataclass
class ObjectiveOutput(ModelOutput):
    """What an objective returns (a transformers `ModelOutput`: attributes, keys, and DDP/accelerate friendly).

    Args:
        loss (`torch.Tensor`): the scalar float32 loss to back-propagate.
        logits (`torch.Tensor`): the classifier's logits `(batch, n_classes)` (with gradients, in the autocast dtype),
            exactly what `classifier(images)` returns.
        terms (`dict[str, torch.Tensor]`): the unweighted terms of the loss, each a detached float32 0-dim tensor
            (call `.item()` when logging; no device sync otherwise); `{"ce": ...}` for plain cross-entropy.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    terms: dict[str, torch.Tensor] | None = None


@dataclass(frozen=True)
class ObjectiveOption:
    """One option of an objective, as the training script exposes it (`--{name}`).

    Args:
        name (`str`): the option's name (the keyword argument of `from_options`, and the script's option).
        type (`type`): `float` or `str`.
        default (`Any`): the default value (the original recipe's).
        help (`str`): what it is.
        title (`str`): its name in model cards.
    """

    name: str
    type: type
    default: Any
    help: str
    title: str = ""


def check_weight(name: str, value: float) -> float:
    """`value` as a float, after checking that it is a finite number >= 0 (0 turns the term off)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}={value!r} must be a finite number >= 0 (0 turns the term off).")
    return float(value)


def check_templates(
    templates: Sequence[str], what: str = "templates", classifier: PromptClassifier | None = None
) -> tuple[str, ...]:
    """`templates` as a tuple, after checking each is a string with exactly one `{}` that `str.format` fills, and,
    with the classifier whose frozen text they make, that it holds none of its tokenizer's special tokens and fits its
    text encoder (`maple_peft.prompts.check_template_tokens`)."""
    if isinstance(templates, str) or len(templates) == 0:
        raise ValueError(
            f"{what}={templates!r} must be a non-empty sequence of templates such as 'a photo of a {{}}.'."
        )
    for index, template in enumerate(templates):
        if not isinstance(template, str) or template.count("{}") != 1:
            raise ValueError(f"The template {template!r} must be a string with exactly one '{{}}' for the class name.")
        try:
            template.format("x")
        except (IndexError, KeyError, ValueError) as error:
            raise ValueError(
                f"The template {template!r} cannot be filled with str.format ({error}); write other braces as "
                "'{{' and '}}'."
            ) from error
        if classifier is not None:
            max_length = classifier.backbone.max_text_length(classifier.base_model.config)
            name = what if what == "template" else f"{what}[{index}]"
            check_template_tokens(classifier.tokenizer, template, max_length, name)
    return tuple(templates)


def cosine_distance(a: torch.Tensor, b: torch.Tensor, eps: float) -> torch.Tensor:
    """`1 - mean cos(a_i, b_i)` over the last dimension (`b` broadcast to `a`), as `F.cosine_similarity(eps=eps)`."""
    return 1 - F.cosine_similarity(a, b.expand_as(a), dim=-1, eps=eps).mean()


class PromptObjective(nn.Module):
    """The common part of the objectives: the classifier, the frozen model, its cached text targets.

    Subclasses set `name`, `title` and `options`, and implement `forward(images, labels) -> ObjectiveOutput` and
    `describe()`.

    Args:
        classifier (`PromptClassifier`): the classifier being trained (not wrapped by DDP).
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    options: ClassVar[tuple[ObjectiveOption, ...]] = ()

    def __init__(self, classifier: PromptClassifier) -> None:
        super().__init__()
        if not isinstance(classifier, PromptClassifier):
            inner = getattr(classifier, "module", None)
            if isinstance(inner, PromptClassifier):
                raise TypeError(
                    f"classifier is wrapped by {type(classifier).__name__}; build the loss from the unwrapped "
                    f"PromptClassifier and prepare the loss instead: "
                    f"`loss_fn = accelerator.prepare({type(self).__name__}(classifier))`."
                )
            raise TypeError(f"classifier must be a maple_peft.PromptClassifier, got {type(classifier).__name__}.")
        model = classifier.model
        if not hasattr(model, "disable_adapter") and any(isinstance(m, BaseTunerLayer) for m in model.modules()):
            raise TypeError(
                f"The classifier's model ({type(model).__name__}) carries adapter layers but has no "
                "`disable_adapter()`, so the frozen model cannot be run without a second copy; use the PeftModel "
                "returned by get_peft_model / PeftModel.from_pretrained."
            )
        self.classifier = classifier
        self._frozen_text: tuple[tuple, torch.Tensor] | None = None

    def describe(self) -> str:
        """One line for model cards: the objective and its settings."""
        return self.title

    @classmethod
    def from_options(cls, classifier: PromptClassifier, **options: Any) -> PromptObjective:
        """The objective from the training script's options (`options`: the declared ones, unset ones left out)."""
        return cls(classifier, **options)

    @classmethod
    def card_rows(cls, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        """The rows this objective reports in a model card's recipe table, from a run's options (the declared ones;
        unset ones show their default).

        Args:
            options (`Mapping[str, Any]`): the training options of the run.
        """
        rows = [("Objective", cls.title)]
        for option in cls.options:
            value = options.get(option.name)
            rows.append((option.title or option.name, str(option.default if value is None else value)))
        return rows

    @contextmanager
    def frozen_model(self) -> Iterator[nn.Module]:
        """Context in which `self.classifier.base_model` is the frozen model: the adapter is disabled (`PeftModel.
        disable_adapter`), and the parameters' `requires_grad` flags are restored on exit."""
        model = self.classifier.model
        if not hasattr(model, "disable_adapter"):
            yield self.classifier.base_model
            return
        flags = [(param, param.requires_grad) for param in model.parameters()]
        try:
            with model.disable_adapter():
                yield self.classifier.base_model
        finally:
            for param, flag in flags:
                param.requires_grad_(flag)

    def frozen_text_features(self, templates: Sequence[str]) -> torch.Tensor:
        """The frozen model's template-ensembled text features of the classifier's classes: the L2-normalized mean over
        `templates` of the un-normalized features of `template.format(name)`, float32 `(n_classes, embed_dim)`, encoded
        exactly as the classifier encodes its own prompts, and cached per set of class names and templates."""
        classifier = self.classifier
        device = next(classifier.base_model.text_model.parameters()).device
        key = (tuple(classifier.class_names), tuple(templates), device, id(classifier.tokenizer))
        if self._frozen_text is None or self._frozen_text[0] != key:
            with torch.no_grad(), torch.autocast(device.type, enabled=False), self.frozen_model() as frozen:
                total = None
                for template in templates:
                    try:
                        encoder = ClassTextEncoder(
                            frozen,
                            classifier.tokenizer,
                            classifier.class_names,
                            template,
                            classifier.text_batch_size,
                            shared_prefix=classifier.shared_prefix,
                        )
                    except ValueError as error:  # a class name that does not fit this template: name both
                        raise ValueError(f"With the frozen text's template {template!r}: {error}") from None
                    features = encoder.encode(normalize=False).float()
                    total = features if total is None else total + features
                mean = total / len(templates)
            self._frozen_text = (key, mean / mean.norm(dim=-1, keepdim=True))
        return self._frozen_text[1]

    def frozen_image_features(self, images: Any, **extra: Any) -> torch.Tensor:
        """The frozen model's L2-normalized float32 image features of a batch (no gradients)."""
        with torch.no_grad(), self.frozen_model():
            features = self.classifier.image_features(images, normalize=False, **extra).float()
        return features / features.norm(dim=-1, keepdim=True)

    @staticmethod
    def _output(loss: torch.Tensor, logits: torch.Tensor, terms: dict[str, torch.Tensor]) -> ObjectiveOutput:
        return ObjectiveOutput(loss=loss, logits=logits, terms={name: value.detach() for name, value in terms.items()})


class CrossEntropyObjective(PromptObjective):
    """Plain cross-entropy of the classifier's logits (MaPLe, its ablations, CoOp, CoCoOp).

    Args:
        classifier (`PromptClassifier`): the classifier being trained.

    Example:

        ```py
        >>> out = maple_peft.CrossEntropyObjective(classifier)(pixel_values, labels)
        >>> out.loss.backward()
        ```
    """

    name = "ce"
    title = "cross-entropy"

    def forward(self, images: Any, labels: torch.Tensor, **extra: Any) -> ObjectiveOutput:
        logits = self.classifier(images, **extra)
        with torch.autocast(logits.device.type, enabled=False):
            loss = F.cross_entropy(logits.float(), labels)
        return self._output(loss, logits, {"ce": loss})


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
    options = (
        ObjectiveOption(
            "kg_weight", float, 8.0, "KgCoOp: weight of 1 - mean cos(text, frozen text) (8.0)", "Knowledge weight"
        ),
        ObjectiveOption(
            "kg_template",
            str,
            "a photo of a {}.",
            "KgCoOp: template of the frozen text (default: the dataset's)",
            "Knowledge template",
        ),
    )
    #: the eps of KgCoOp's `torch.nn.CosineSimilarity`
    EPS = 1e-7

    def __init__(self, classifier: PromptClassifier, weight: float = 8.0, template: str = "a photo of a {}.") -> None:
        super().__init__(classifier)
        self.weight = check_weight("weight", weight)
        self.template = check_templates([template], "template", classifier)[0]

    @classmethod
    def from_options(cls, classifier: PromptClassifier, kg_weight: float = 8.0, kg_template: str | None = None):
        return cls(classifier, weight=kg_weight, template=kg_template or "a photo of a {}.")

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
    options = (
        ObjectiveOption(
            "reg_weight", float, 1.0, "MMRL: weight of each cosine regularization term", "Regularization weight"
        ),
    )
    EPS = 1e-8

    def __init__(self, classifier: PromptClassifier, reg_weight: float = 1.0, alpha: float | None = None) -> None:
        super().__init__(classifier)
        config = active_maple_config(classifier.model)
        if config is None or not config.num_rep_tokens:
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

    @classmethod
    def from_options(cls, classifier: PromptClassifier, reg_weight: float = 1.0):
        return cls(classifier, reg_weight=reg_weight)

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


def objective_classes() -> dict[str, type[PromptObjective]]:
    """The training objectives by name: `ce`, `src` (PromptSRC), `kgcoop`, `mmrl`."""
    from .regularization import SelfRegularizedLoss

    return {
        cls.name: cls for cls in (CrossEntropyObjective, SelfRegularizedLoss, KnowledgeGuidedLoss, RepresentationLoss)
    }


#: PromptSRC's weights: a run that sets any of them > 0 without naming its objective trains with `src`.
SRC_WEIGHTS = ("text_weight", "image_weight", "logits_weight")


def objective_name(options: Mapping[str, Any], variant: str | None = None) -> str:
    """The objective of a run: its `objective` option, else `mmrl` for an MMRL adapter, `src` when a PromptSRC weight
    is > 0, `ce` otherwise (runs recorded before the option existed included).

    Args:
        options (`Mapping[str, Any]`): the run's training options.
        variant (`str`, *optional*): the adapter's variant.
    """
    if options.get("objective"):
        return str(options["objective"])
    if variant == "mmrl":
        return "mmrl"
    if any(float(options.get(name) or 0) > 0 for name in SRC_WEIGHTS):
        return "src"
    return "ce"
