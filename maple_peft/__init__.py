"""maple_peft: MaPLe (Multi-modal Prompt Learning) and its family of prompt methods as a native PEFT method for the
CLIP-family dual encoders of transformers (CLIP, MetaCLIP 2, SigLIP, SigLIP 2).

`import maple_peft` registers the method with PEFT under the name "MAPLE"; after that `get_peft_model`,
`PeftModel.from_pretrained`, `PeftConfig.from_pretrained` and friends work with `MaPLeConfig`. The import itself is
light (the names below are imported on first use, and the registration happens once PEFT is imported), so that the
`maple-peft` command answers `--help` at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import _registration
from .version import __version__

#: Public name -> the module that defines it; imported on first use (PEP 562).
_PUBLIC_NAMES = {
    "BACKBONES": "backbones",
    "Backbone": "backbones",
    "backbone_of": "backbones",
    "ClassTextEncoder": "class_text",
    "ClassifierOutput": "classifier",
    "PromptClassifier": "classifier",
    "test_time_options": "classifier",
    "MaPLeConfig": "config",
    "from_official_checkpoint": "convert",
    "MaPLeModel": "model",
    "CrossEntropyObjective": "objectives",
    "KnowledgeGuidedLoss": "methods.kgcoop.modeling",
    "ObjectiveOutput": "objectives",
    "PromptObjective": "objectives",
    "RepresentationLoss": "methods.mmrl.modeling",
    "clean_class_name": "prompts",
    "format_prompts": "prompts",
    "tokenize_prompts": "prompts",
    "SelfRegularizedLoss": "methods.promptsrc.modeling",
    "SelfRegularizedLossOutput": "methods.promptsrc.modeling",
    "IMAGENET_TEMPLATES": "templates",
}

if TYPE_CHECKING:  # what type checkers and IDEs see
    from .backbones import BACKBONES, Backbone, backbone_of
    from .class_text import ClassTextEncoder
    from .classifier import ClassifierOutput, PromptClassifier, test_time_options
    from .config import MaPLeConfig
    from .convert import from_official_checkpoint
    from .methods.kgcoop.modeling import KnowledgeGuidedLoss
    from .methods.mmrl.modeling import RepresentationLoss
    from .methods.promptsrc.modeling import SelfRegularizedLoss, SelfRegularizedLossOutput
    from .model import MaPLeModel
    from .objectives import CrossEntropyObjective, ObjectiveOutput, PromptObjective
    from .prompts import clean_class_name, format_prompts, tokenize_prompts
    from .templates import IMAGENET_TEMPLATES

    #: The training objectives by name (`examples/train.py --objective NAME`): each declares its options.
    OBJECTIVES: dict[str, type[PromptObjective]]


def __getattr__(name: str) -> Any:
    if name == "OBJECTIVES":
        from .objectives import objective_classes

        value = objective_classes()
    elif name in _PUBLIC_NAMES:
        value = getattr(importlib.import_module(f".{_PUBLIC_NAMES[name]}", __name__), name)
    elif name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    else:  # a submodule, e.g. `maple_peft.loading`, as an attribute
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


_registration.register_when_peft_is_imported()

__all__ = [
    "BACKBONES",
    "IMAGENET_TEMPLATES",
    "Backbone",
    "ClassTextEncoder",
    "ClassifierOutput",
    "CrossEntropyObjective",
    "KnowledgeGuidedLoss",
    "MaPLeConfig",
    "MaPLeModel",
    "OBJECTIVES",
    "ObjectiveOutput",
    "PromptClassifier",
    "PromptObjective",
    "RepresentationLoss",
    "SelfRegularizedLoss",
    "SelfRegularizedLossOutput",
    "__version__",
    "backbone_of",
    "clean_class_name",
    "format_prompts",
    "from_official_checkpoint",
    "test_time_options",
    "tokenize_prompts",
]
