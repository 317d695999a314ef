"""maple_peft: MaPLe (Multi-modal Prompt Learning) as a native PEFT method for transformers' CLIPModel.

`import maple_peft` registers the method with PEFT under the name "MAPLE"; after that `get_peft_model`,
`PeftModel.from_pretrained`, `PeftConfig.from_pretrained` and friends work with `MaPLeConfig`.
"""

from . import _registration
from .classifier import PromptClassifier
from .config import MaPLeConfig
from .convert import from_official_checkpoint
from .model import MaPLeModel
from .prompts import clean_class_name, format_prompts, tokenize_prompts
from .regularization import SelfRegularizedLoss, SelfRegularizedLossOutput
from .templates import IMAGENET_TEMPLATES
from .version import __version__

_registration.register()

__all__ = [
    "IMAGENET_TEMPLATES",
    "MaPLeConfig",
    "MaPLeModel",
    "PromptClassifier",
    "SelfRegularizedLoss",
    "SelfRegularizedLossOutput",
    "__version__",
    "clean_class_name",
    "format_prompts",
    "from_official_checkpoint",
    "tokenize_prompts",
]
