"""maple_peft: MaPLe (Multi-modal Prompt Learning) as a native PEFT method for transformers' CLIPModel.

`import maple_peft` registers the method with PEFT under the name "MAPLE"; after that `get_peft_model`,
`PeftModel.from_pretrained`, `PeftConfig.from_pretrained` and friends work with `MaPLeConfig`.
"""

from __future__ import annotations

from peft.utils import PeftType

from .version import __version__


def _add_peft_type(name: str) -> None:
    """Add `name` to PEFT's `PeftType` (a `str` Enum), which `register_peft_method` requires; idempotent."""
    if name in PeftType.__members__:
        return
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member.__objclass__ = PeftType
    setattr(PeftType, name, member)  # before the member map, which forbids (re)assigning members
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)


_add_peft_type("MAPLE")

from .config import MaPLeConfig  # noqa: E402
from .model import MaPLeModel  # noqa: E402


def _register() -> None:
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import register_peft_method

    if PeftType.MAPLE in PEFT_TYPE_TO_TUNER_MAPPING:
        # importing again after a reload: point PEFT at the current classes
        PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.MAPLE] = MaPLeConfig
        PEFT_TYPE_TO_TUNER_MAPPING[PeftType.MAPLE] = MaPLeModel
        PEFT_TYPE_TO_PREFIX_MAPPING[PeftType.MAPLE] = MaPLeModel.prefix
        return
    register_peft_method(name="maple", config_cls=MaPLeConfig, model_cls=MaPLeModel, prefix=MaPLeModel.prefix)


_register()

from .classifier import PromptClassifier  # noqa: E402
from .convert import from_official_checkpoint  # noqa: E402
from .prompts import clean_class_name, format_prompts, tokenize_prompts  # noqa: E402

__all__ = [
    "MaPLeConfig",
    "MaPLeModel",
    "PromptClassifier",
    "__version__",
    "clean_class_name",
    "format_prompts",
    "from_official_checkpoint",
    "tokenize_prompts",
]
