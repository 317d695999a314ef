"""Registration of MaPLe with PEFT: the `PeftType` member, the tuner mapping and the "How to load" card section.

`register()` is called once by `import maple_peft`; it is idempotent (a re-import points PEFT at the current classes).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from peft.utils import PeftType


def add_peft_type(name: str) -> None:
    """Add `name` to PEFT's `PeftType` (a `str` Enum), which `register_peft_method` requires; idempotent.

    Args:
        name (`str`): the member's name and value, e.g. `"MAPLE"`.
    """
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


def add_loading_section(readme: str | os.PathLike, base_model: str | None) -> None:
    """Add a "How to load" section (with `import maple_peft`) to a card PEFT wrote, unless it has one already.

    `import maple_peft` patches `PeftModel.create_or_update_model_card` to call this, so that even the generic card
    of a plain `model.save_pretrained(...)` tells readers to import the package before loading.

    Args:
        readme (`str` or `os.PathLike`): the card (`README.md`) that PEFT wrote.
        base_model (`str`, *optional*): the base model's name or path, shown in the example.
    """
    path = Path(readme)
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    if "import maple_peft" in text:
        return
    base = base_model or "openai/clip-vit-base-patch16"
    section = (
        "\n## How to load\n\n"
        "This is a MaPLe (multi-modal prompt learning) adapter for CLIP. Import `maple_peft` before loading it: the "
        "import registers the method with PEFT.\n\n"
        "```python\n"
        "import maple_peft  # registers MaPLe with PEFT: import it before loading\n"
        "from peft import PeftModel\n"
        "from transformers import CLIPModel, CLIPTokenizer\n\n"
        f'base = CLIPModel.from_pretrained("{base}")\n'
        'model = PeftModel.from_pretrained(base, "path/or/hub-id/of/this/adapter").eval()\n'
        f'clf = maple_peft.PromptClassifier(model, CLIPTokenizer.from_pretrained("{base}"), ["cat", "dog"])\n'
        "logits = clf(pixel_values)\n"
        "```\n"
    )
    match = re.match(r"^---\n.*?\n---\n", text, flags=re.DOTALL)
    cut = match.end() if match else 0
    path.write_text(text[:cut] + section + text[cut:], encoding="utf-8")


def _patch_peft_model_card() -> None:
    """Make the card of every saved MaPLe adapter say to `import maple_peft` first (idempotent)."""
    from peft import PeftModel

    original = PeftModel.create_or_update_model_card
    if getattr(original, "_maple_peft", False):
        return

    def create_or_update_model_card(self, output_dir: str) -> None:
        original(self, output_dir)
        if any(getattr(c, "peft_type", None) == PeftType.MAPLE for c in self.peft_config.values()):
            base = getattr(self.get_base_model(), "name_or_path", None)
            add_loading_section(os.path.join(output_dir, "README.md"), base_model=base if base else None)

    create_or_update_model_card._maple_peft = True
    PeftModel.create_or_update_model_card = create_or_update_model_card


def register() -> None:
    """Register "MAPLE" with PEFT (config, tuner, prefix) and the card hook; safe to call again."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import register_peft_method

    from .config import MaPLeConfig
    from .model import MaPLeModel

    if PeftType.MAPLE in PEFT_TYPE_TO_TUNER_MAPPING:
        # importing again after a reload: point PEFT at the current classes
        PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.MAPLE] = MaPLeConfig
        PEFT_TYPE_TO_TUNER_MAPPING[PeftType.MAPLE] = MaPLeModel
        PEFT_TYPE_TO_PREFIX_MAPPING[PeftType.MAPLE] = MaPLeModel.prefix
    else:
        register_peft_method(name="maple", config_cls=MaPLeConfig, model_cls=MaPLeModel, prefix=MaPLeModel.prefix)
    _patch_peft_model_card()


add_peft_type("MAPLE")  # before config.py is imported: MaPLeConfig sets peft_type = PeftType.MAPLE
