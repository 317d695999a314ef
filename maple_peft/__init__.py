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


def _patch_peft_model_card() -> None:
    """Make the card of every saved MaPLe adapter say to `import maple_peft` first (idempotent)."""
    import os

    from peft import PeftModel

    original = PeftModel.create_or_update_model_card
    if getattr(original, "_maple_peft", False):
        return

    def create_or_update_model_card(self, output_dir: str) -> None:
        original(self, output_dir)
        if any(getattr(c, "peft_type", None) == PeftType.MAPLE for c in self.peft_config.values()):
            from .card import add_loading_section

            base = getattr(self.get_base_model(), "name_or_path", None)
            add_loading_section(os.path.join(output_dir, "README.md"), base_model=base if base else None)

    create_or_update_model_card._maple_peft = True
    PeftModel.create_or_update_model_card = create_or_update_model_card


_patch_peft_model_card()

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
