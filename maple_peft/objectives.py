"""Training objectives: cross-entropy, and the losses of the prompt methods that add terms to it, on one interface.

Every objective is an `nn.Module` built on a `PromptClassifier` and called as `out = objective(images, labels)`,
returning `ObjectiveOutput(loss, logits, terms)`; its only parameters are the classifier's, so prepare the objective
(`accelerator.prepare(objective)`) instead of the classifier. The frozen model that several of them compare against is
the same model with its adapter disabled: no second copy of the weights is kept. The options of an objective are declared
by its method (`maple_peft.methods`, read by `examples/train.py`); the objective says what it is (`describe()`, written into model cards).

| objective | class | loss |
|---|---|---|
| `ce` | `CrossEntropyObjective` | `CE(logits, labels)` |
| `src` | `SelfRegularizedLoss` (`maple_peft.methods.promptsrc`) | PromptSRC: CE + L1 to frozen features + KL |
| `kgcoop` | `KnowledgeGuidedLoss` (`maple_peft.methods.kgcoop`) | KgCoOp: CE + `weight * (1 - mean_c cos(t_c, g_c))` |
| `mmrl` | `RepresentationLoss` (`maple_peft.methods.mmrl`) | MMRL: both paths' CE + cosine regularization |
"""

from __future__ import annotations

import dataclasses
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

from . import methods
from .class_text import ClassTextEncoder
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

    Subclasses set `name` (the objective's name in `maple_peft.methods`, whose method declares its options) and
    `title`, and implement `forward(images, labels) -> ObjectiveOutput` and `describe()`.

    Args:
        classifier (`PromptClassifier`): the classifier being trained (not wrapped by DDP).
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""

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
        """The objective from the training script's options (`options`: the declared ones; unset or `None` ones take
        the default their declaration gives)."""
        values = {option.name: methods.field_default(option) for option in cls.option_fields()}
        values.update({name: value for name, value in options.items() if value is not None})
        return cls.from_declared(classifier, **values)

    @classmethod
    def from_declared(cls, classifier: PromptClassifier, **values: Any) -> PromptObjective:
        """The objective from a value of every declared option; a subclass whose constructor names them otherwise maps
        them here."""
        return cls(classifier, **values)

    @classmethod
    def card_rows(cls, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        """The rows this objective reports in a model card's recipe table, from a run's options (the declared ones;
        unset ones show their default).

        Args:
            options (`Mapping[str, Any]`): the training options of the run.
        """
        rows = [("Objective", cls.title)]
        for option in cls.option_fields():
            value = options.get(option.name)
            title = option.metadata.get("title", option.name)
            rows.append((title, str(methods.field_default(option) if value is None else value)))
        return rows

    @classmethod
    def option_fields(cls) -> tuple[dataclasses.Field, ...]:
        """The options this objective takes, as its method declares them (`maple_peft.methods`)."""
        method = methods.objectives().get(cls.name)
        if method is None or method.objective_options is None:
            return ()
        return dataclasses.fields(method.objective_options)

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


def objective_classes() -> dict[str, type[PromptObjective]]:
    """The training objectives by name: `ce` and those the methods define (`maple_peft.methods`)."""
    found: dict[str, type[PromptObjective]] = {CrossEntropyObjective.name: CrossEntropyObjective}
    for name, method in methods.objectives().items():
        found[name] = method.objective_class()
    return found


def objective_name(options: Mapping[str, Any], variant: str | None = None) -> str:
    """The objective of a run: its `objective` option, else the variant's own objective (MMRL's loss for an MMRL
    adapter), else an objective one of whose weights is > 0 (PromptSRC's, for runs recorded before the option
    existed), else `ce`.

    Args:
        options (`Mapping[str, Any]`): the run's training options.
        variant (`str`, *optional*): the adapter's variant.
    """
    if options.get("objective"):
        return str(options["objective"])
    method = methods.variants().get(variant or "")
    if method is not None and method.default_objective != "ce":
        return method.default_objective
    for name, method in methods.objectives().items():
        weights = [f.name for f in methods.fields_of(method.objective_options) if "off" in f.metadata]
        if any(float(options.get(weight) or 0) > 0 for weight in weights):
            return name
    return "ce"
