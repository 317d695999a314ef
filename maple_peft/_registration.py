"""Registration of MaPLe with PEFT: the tuner mapping and the card of a saved adapter (the `PeftType` member is added
by `maple_peft.config`, which uses it).

`import maple_peft` imports neither PEFT nor torch (so that the command line answers at once), yet registers the
method as soon as PEFT is there: at once if PEFT is imported already, otherwise right after PEFT's own import
(`register_when_peft_is_imported`). `register()` is idempotent (a re-import points PEFT at the current classes).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any


def add_loading_section(
    readme: str | os.PathLike, base_model: str | None, class_names: list[str] | None = None
) -> None:
    """Add a "How to use" section (the one-line loading with `import maple_peft`) to a card PEFT wrote, unless the
    card mentions `import maple_peft` already.

    `import maple_peft` patches `PeftModel.create_or_update_model_card` to call this, so that even the generic card
    of a plain `model.save_pretrained(...)` shows how to load and use the adapter.

    Args:
        readme (`str` or `os.PathLike`): the card (`README.md`) that PEFT wrote.
        base_model (`str`, *optional*): the base model's name or path, shown in the step-by-step example.
        class_names (`list[str]`, *optional*): the class names saved with the adapter; without them the example passes
            placeholder class names.
    """
    path = Path(readme)
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    if "import maple_peft" in text:
        return
    base = base_model or "openai/clip-vit-base-patch16"
    adapter = "path/or/hub-id/of/this/adapter"
    if class_names:
        load = (
            f'clf = maple_peft.PromptClassifier.from_pretrained("{adapter}")  # with its {len(class_names)} classes\n'
        )
    else:
        load = (
            f'clf = maple_peft.PromptClassifier.from_pretrained("{adapter}", ["cat", "dog"])  # the classes to '
            "recognize\n"
        )
    section = (
        "\n## How to use\n\n"
        "This is a MaPLe (multi-modal prompt learning) adapter for a CLIP-family model. Import `maple_peft` before "
        "loading it: the "
        "import registers the method with PEFT.\n\n"
        "```python\n"
        "import maple_peft  # registers MaPLe with PEFT: import it before loading\n\n"
        f"{load}"
        'print(clf.predict(["image.jpg"]))  # class names; PIL images, paths and URLs work\n'
        'print(clf.predict_proba("image.jpg", top_k=3))  # [{"label": ..., "score": ...}, ...], best first\n'
        "```\n\n"
        f"From the command line: `maple-peft predict --adapter {adapter} image.jpg`. Step by step: "
        f'`model = PeftModel.from_pretrained(AutoModel.from_pretrained("{base}"), "{adapter}")`, then '
        "`maple_peft.PromptClassifier(model, tokenizer, class_names)`.\n"
    )
    match = re.match(r"^---\n.*?\n---\n", text, flags=re.DOTALL)
    cut = match.end() if match else 0
    path.write_text(text[:cut] + section + text[cut:], encoding="utf-8")


def _versions() -> dict[str, str | None]:
    import peft
    import torch
    import transformers

    from .version import __version__

    return {"maple_peft": __version__, "peft": peft.__version__, "transformers": transformers.__version__,
            "torch": torch.__version__}  # fmt: skip


def write_adapter_card(readme: str | os.PathLike, config: object, base_model: str | None) -> bool:
    """Write the card of a saved MaPLe adapter (`maple_peft.adapter_card`) unless `readme` is someone else's.

    A missing card, or one written by this function earlier (it carries `GENERATED_MARKER`), is (re)written; any
    other README.md (a training run's card, the user's own) is left to PEFT's update.

    Args:
        readme (`str` or `os.PathLike`): the card's path.
        config (`MaPLeConfig`): the adapter's config (its variant, shape and class names are described).
        base_model (`str`, *optional*): the base model's name or path, as the user gave it.

    Returns:
        `bool`: whether the card was written.
    """
    from .adapter_card import GENERATED_MARKER, render_adapter_card

    path = Path(readme)
    if path.exists() and GENERATED_MARKER not in path.read_text(encoding="utf-8", errors="replace"):
        return False
    text = render_adapter_card(config.to_dict(), base_model, config.class_names, versions=_versions())
    path.write_text(text, encoding="utf-8")
    return True


def _patch_peft_model_card() -> None:
    """Make `save_pretrained` of a MaPLe adapter write a real card (method, base model, classes, how to use) instead of
    PEFT's generic template; a card that is not ours gets PEFT's update and a "How to use" section (idempotent)."""
    from peft import PeftModel
    from peft.utils import PeftType

    original = PeftModel.create_or_update_model_card
    if getattr(original, "_maple_peft", False):
        return

    def create_or_update_model_card(self, output_dir: str) -> None:
        configs = [c for c in self.peft_config.values() if getattr(c, "peft_type", None) == PeftType.MAPLE]
        if not configs:
            return original(self, output_dir)
        active = self.peft_config.get(self.active_adapter)
        config = active if getattr(active, "peft_type", None) == PeftType.MAPLE else configs[0]
        base = getattr(self.get_base_model(), "name_or_path", None) or None
        readme = os.path.join(output_dir, "README.md")
        if write_adapter_card(readme, config, base):
            return
        original(self, output_dir)
        class_names = active.class_names if getattr(active, "peft_type", None) == PeftType.MAPLE else None
        add_loading_section(readme, base_model=base, class_names=class_names)

    create_or_update_model_card._maple_peft = True
    PeftModel.create_or_update_model_card = create_or_update_model_card


def register() -> None:
    """Register "MAPLE" with PEFT (config, tuner, prefix) and the card hook; safe to call again."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import PeftType, register_peft_method

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


class _RegisterAfterPeftImport:
    """Calls `register()` at the first moment it can: once `peft` is imported and no module of maple_peft is halfway
    through its own import (registering imports `maple_peft.config` and `maple_peft.model`). It finds nothing itself:
    it lets the other finders find `peft` and maple_peft's modules and watches their loaders finish (a meta path
    finder, duck-typed: `importlib.abc` would cost the command line's start-up more than this whole module)."""

    def __init__(self, peft_imported: bool) -> None:
        self.peft_imported = peft_imported
        self.importing = 0  # modules of maple_peft being executed

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname != "peft" and not fullname.startswith(f"{__package__}."):
            return None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        else:
            return None
        if hasattr(spec.loader, "exec_module"):
            spec.loader = _WatchedLoader(spec.loader, self)
        return spec

    def executed(self, module: ModuleType, finished: bool) -> None:
        if module.__name__ == "peft":
            self.peft_imported = self.peft_imported or finished
        else:
            self.importing += -1 if finished else 1
        if finished and self.peft_imported and not self.importing and self in sys.meta_path:
            sys.meta_path.remove(self)
            register()


class _WatchedLoader:
    """A module's own loader, telling `_RegisterAfterPeftImport` when the module starts and finishes executing."""

    def __init__(self, loader: Any, watcher: _RegisterAfterPeftImport) -> None:
        self.loader, self.watcher = loader, watcher

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = module.__spec__.loader = self.loader  # the module sees its own loader only
        self.watcher.executed(module, finished=False)
        try:
            self.loader.exec_module(module)
        finally:
            self.watcher.executed(module, finished=True)

    def __getattr__(self, name: str):
        return getattr(self.loader, name)


def register_when_peft_is_imported() -> None:
    """Registers MaPLe with PEFT now if PEFT is imported, else right after PEFT's import (whoever imports it)."""
    if any(isinstance(finder, _RegisterAfterPeftImport) for finder in sys.meta_path):
        return
    if "peft" in sys.modules:
        register()
    else:
        sys.meta_path.insert(0, _RegisterAfterPeftImport(peft_imported=False))
