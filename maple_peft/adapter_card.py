"""The model card of a saved adapter, and the names of the methods every card and log line uses.

`save_pretrained` of a MaPLe adapter (`PeftModel.save_pretrained`, `PromptClassifier.save_pretrained`) writes this
card, rendered from `model_cards/saved_adapter_card.md`, instead of PEFT's generic template: the method, the base
model as the user gave it, the class names, and how to use the adapter. The training script's card, with the recipe
and the results, is `maple_peft.training.card`; both name the method with `method_name`.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

from . import methods

__all__ = ["GENERATED_MARKER", "method_citations", "method_link", "method_name", "render_adapter_card"]

GENERATED_MARKER = "<!-- maple_peft: card written by save_pretrained; remove this line to keep your edits -->"
"""The line that marks a card written by `save_pretrained`: the next save replaces such a card (and only such)."""


def _objective(train_config: Mapping[str, Any] | None, variant: str) -> str:
    from .objectives import objective_name

    if not train_config:
        return "ce"
    name = objective_name(train_config, variant)
    if name == "ce" and train_config.get("gpa_mean") is not None:  # PromptSRC's aggregation without its losses
        return "src"
    return name


def _papers() -> dict[str, tuple[str, str]]:
    """Every name a method goes by -> (markdown description linking its paper, BibTeX entry)."""
    found: dict[str, tuple[str, str]] = {}
    for method in methods.registry().values():
        found.update(method.papers())
    return found


def _objective_method(suffix: str) -> methods.Method | None:
    return next((m for m in methods.objectives().values() if getattr(m, "suffix", None) == suffix), None)


def method_name(peft_config: Mapping[str, Any], train_config: Mapping[str, Any] | None = None) -> str:
    """The name of the method an adapter implements, as papers and tables name it.

    `variant` and `depth` of the adapter config name the prompts (MaPLe, MaPLe†, IVLP, CoOp, deep language
    prompting, VPT-deep / VPT-shallow, CoCoOp, MMRL); the training objective names the rest: PromptSRC's
    self-regulating losses (or its Gaussian prompt aggregation) make IVLP "PromptSRC" and any other variant
    "<name> + SRC"; KgCoOp's loss makes CoOp "KgCoOp" and any other variant "<name> + KgCoOp".

    Args:
        peft_config (`Mapping[str, Any]`): the adapter config (`MaPLeConfig.to_dict()` or `adapter_config.json`).
        train_config (`Mapping[str, Any]`, *optional*): the training options (`text_weight`, `gpa_mean`, ...).

    Example:
        ```python
        >>> method_name({"variant": "ivlp"}, {"text_weight": 25.0})
        'PromptSRC'
        ```
    """
    variant = peft_config.get("variant") or "maple"
    method = methods.variants().get(variant)
    name = method.display_title(peft_config) if method is not None else str(variant)
    loss = methods.objectives().get(_objective(train_config, variant))
    if loss is not None and not loss.is_variant:  # a loss that is a method of its own on its paper's adapter
        return loss.title if name == loss.own_model else f"{name} + {loss.suffix}"
    return name


def method_link(name: str) -> str:
    """A markdown description of the method `name` (from `method_name`) with a link to its paper.

    Args:
        name (`str`): the method's name.
    """
    base, _, extra = name.partition(" + ")
    text = _papers().get(base, (base, ""))[0]
    loss = _objective_method(extra) if extra else None
    if loss is not None:
        text += ", " + loss.trained_with.format(paper=loss.paper)
    return text


def method_citations(name: str) -> list[str]:
    """The BibTeX entries to cite for the method `name`: its paper(s), and MaPLe's (this package's implementation).

    Args:
        name (`str`): the method's name.
    """
    base, _, extra = name.partition(" + ")
    entries = [_papers().get(base, ("", ""))[1]]
    loss = _objective_method(extra) if extra else None
    if loss is not None:
        entries.append(loss.citation)
    entries.append(methods.get("maple").citation)  # this package's implementation
    return [entry for entry in dict.fromkeys(entries) if entry]


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def is_hub_id(name: str | None) -> bool:
    """Whether `name` reads as a Hub model id and is not a local path."""
    return bool(name) and bool(_HUB_ID.match(name)) and not os.path.exists(name)


def hub_model_id(name: str | None) -> str | None:
    """The Hub model id that `name` stands for, or `None` for another local path (only ids go into a card's metadata).

    A Hub id is kept as given; a snapshot folder of the Hugging Face cache (`.../models--org--name/snapshots/<commit>`,
    what `snapshot_download` returns and an offline run often loads) is its repository `org/name`, so an adapter
    trained from a cached copy still links to its base model on the Hub.

    Args:
        name (`str`, *optional*): the base model as the user gave it (Hub id or path).
    """
    if is_hub_id(name):
        return name
    parts = PurePath(name).parts if name else ()
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        repo_id = parts[-3].removeprefix("models--").replace("--", "/")
        if _HUB_ID.match(repo_id):
            return repo_id
    return None


def render_adapter_card(
    peft_config: Mapping[str, Any],
    base_model: str | None,
    class_names: Sequence[str] | None,
    *,
    versions: Mapping[str, str | None] = (),
) -> str:
    """The README.md of a saved MaPLe adapter: method, base model, class names, how to use it.

    Args:
        peft_config (`Mapping[str, Any]`): the adapter config (`MaPLeConfig.to_dict()`).
        base_model (`str`, *optional*): the base model as the user gave it (Hub id or path).
        class_names (`Sequence[str]`, *optional*): the class names saved with the adapter.
        versions (`Mapping[str, str | None]`): package -> version, listed under "Framework versions".

    Returns:
        `str`: the card, with YAML metadata (`library_name: peft`, `base_model` when it names a Hub model, see
        `hub_model_id`).
    """
    from huggingface_hub import ModelCard, ModelCardData

    from .backbones import BACKBONES

    name = method_name(peft_config)
    backbone = BACKBONES.get(peft_config.get("backbone") or "clip", BACKBONES["clip"])
    hub_id = hub_model_id(base_model)
    base = hub_id or base_model or backbone.example_checkpoint
    adapter_id = "path/or/hub-id/of/this/adapter"
    names = list(class_names or [])
    n_ctx, depth, variant = peft_config.get("n_ctx"), peft_config.get("depth"), peft_config.get("variant") or "maple"
    method = methods.variants().get(variant)
    prompts = method is None or method.text_prompts or method.vision_prompts
    shape = [("Method", name), ("Variant", f"`{variant}`"), ("Context tokens (n_ctx)", n_ctx), ("Prompt depth", depth)]
    if peft_config.get("n_ctx_vision") is not None:
        shape.append(("Vision context tokens (n_ctx_vision)", peft_config["n_ctx_vision"]))
    if peft_config.get("prompt_init") is not None and prompts:
        shape.append(("Prompt initialization", f"`{peft_config['prompt_init']}`"))
    own = [field.name for field in methods.fields_of(method.options if method is not None else None)]
    for key in (*own, "template"):
        if peft_config.get(key) is not None:
            shape.append((f"`{key}`", f"`{peft_config[key]}`"))
    shape.append(("Backbone", f"{backbone.display_name} (`{backbone.model_class_name}`)"))
    shown = names[:20]
    card_data = ModelCardData(
        base_model=hub_id,
        library_name="peft",
        pipeline_tag="zero-shot-image-classification",
        tags=["maple", "prompt-learning", backbone.family, "peft", "zero-shot-image-classification"],
    )
    template = importlib.resources.files("maple_peft.model_cards").joinpath("saved_adapter_card.md")
    card = ModelCard.from_template(
        card_data,
        template_str=template.read_text(encoding="utf-8"),
        marker=GENERATED_MARKER,
        title=f"{name} adapter for {base.rstrip('/').split('/')[-1]}",
        method=method_link(name),
        base_model=base,
        family=backbone.display_name,
        base_link=f"[`{base}`](https://huggingface.co/{base})" if hub_id else f"`{base}`",
        num_classes=len(names),
        class_names=", ".join(f"`{n}`" for n in shown)
        + (f", ... ({len(names) - len(shown)} more)" if len(names) > len(shown) else ""),
        class_names_json=json.dumps(names, ensure_ascii=False) if len(names) <= 10 else None,
        adapter_id=adapter_id,
        shape=[(key, value) for key, value in shape if value is not None],
        versions=[(package, version) for package, version in dict(versions).items() if version],
        citations=method_citations(name),
    )
    return str(card)
