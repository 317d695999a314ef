"""maple_peft: MaPLe (Multi-modal Prompt Learning) and its family of prompt methods as a native PEFT method for the
CLIP-family dual encoders of transformers (CLIP, MetaCLIP 2, SigLIP, SigLIP 2).

`import maple_peft` registers the method with PEFT under the name "MAPLE"; after that `get_peft_model`,
`PeftModel.from_pretrained`, `PeftConfig.from_pretrained` and friends work with `MaPLeConfig`.
"""

from . import _registration
from .backbones import BACKBONES, Backbone, backbone_of
from .class_text import ClassTextEncoder
from .classifier import ClassifierOutput, PromptClassifier
from .config import MaPLeConfig
from .convert import from_official_checkpoint
from .methods.kgcoop.modeling import KnowledgeGuidedLoss
from .methods.mmrl.modeling import RepresentationLoss
from .methods.promptsrc.modeling import SelfRegularizedLoss, SelfRegularizedLossOutput
from .model import MaPLeModel
from .objectives import CrossEntropyObjective, ObjectiveOutput, PromptObjective, objective_classes
from .prompts import clean_class_name, format_prompts, tokenize_prompts
from .templates import IMAGENET_TEMPLATES
from .version import __version__

#: The training objectives by name (`examples/train.py --objective NAME`): each declares its options.
OBJECTIVES = objective_classes()

_registration.register()

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
    "tokenize_prompts",
]
