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

__all__ = ["GENERATED_MARKER", "METHODS", "method_citations", "method_link", "method_name", "render_adapter_card"]

GENERATED_MARKER = "<!-- maple_peft: card written by save_pretrained; remove this line to keep your edits -->"
"""The line that marks a card written by `save_pretrained`: the next save replaces such a card (and only such)."""

PAPERS: dict[str, tuple[str, str, str]] = {
    "maple": (
        "https://arxiv.org/abs/2210.03117",
        "Multi-modal Prompt Learning, Khattak et al., CVPR 2023",
        """@inproceedings{khattak2023maple,
  title={MaPLe: Multi-modal Prompt Learning},
  author={Khattak, Muhammad Uzair and Rasheed, Hanoona and Maaz, Muhammad and Khan, Salman and Khan, Fahad Shahbaz},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages={19113--19122},
  year={2023}
}""",
    ),
    "promptsrc": (
        "https://arxiv.org/abs/2307.06948",
        "Self-regulating Prompts, Khattak et al., ICCV 2023",
        """@inproceedings{khattak2023promptsrc,
  title={Self-regulating Prompts: Foundational Model Adaptation without Forgetting},
  author={Khattak, Muhammad Uzair and Wasim, Syed Talal and Naseer, Muzammal and Khan, Salman and Yang, Ming-Hsuan and Khan, Fahad Shahbaz},
  booktitle={Proceedings of the IEEE/CVF International Conference on Computer Vision (ICCV)},
  year={2023}
}""",
    ),
    "coop": (
        "https://arxiv.org/abs/2109.01134",
        "Context Optimization, Zhou et al., IJCV 2022",
        """@article{zhou2022coop,
  title={Learning to Prompt for Vision-Language Models},
  author={Zhou, Kaiyang and Yang, Jingkang and Loy, Chen Change and Liu, Ziwei},
  journal={International Journal of Computer Vision (IJCV)},
  year={2022}
}""",
    ),
    "cocoop": (
        "https://arxiv.org/abs/2203.05557",
        "Conditional Prompt Learning, Zhou et al., CVPR 2022",
        """@inproceedings{zhou2022cocoop,
  title={Conditional Prompt Learning for Vision-Language Models},
  author={Zhou, Kaiyang and Yang, Jingkang and Loy, Chen Change and Liu, Ziwei},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2022}
}""",
    ),
    "kgcoop": (
        "https://arxiv.org/abs/2303.13283",
        "Knowledge-guided Context Optimization, Yao et al., CVPR 2023",
        """@inproceedings{yao2023kgcoop,
  title={Visual-Language Prompt Tuning with Knowledge-guided Context Optimization},
  author={Yao, Hantao and Zhang, Rui and Xu, Changsheng},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2023}
}""",
    ),
    "mmrl": (
        "https://arxiv.org/abs/2503.08497",
        "Multi-Modal Representation Learning, Guo et al., CVPR 2025",
        """@inproceedings{guo2025mmrl,
  title={MMRL: Multi-Modal Representation Learning for Vision-Language Models},
  author={Guo, Yuncheng and Gu, Xiaodong},
  booktitle={Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2025}
}""",
    ),
    "vpt": (
        "https://arxiv.org/abs/2203.12119",
        "Visual Prompt Tuning, Jia et al., ECCV 2022",
        """@inproceedings{jia2022vpt,
  title={Visual Prompt Tuning},
  author={Jia, Menglin and Tang, Luming and Chen, Bor-Chiang and Cardie, Claire and Belongie, Serge and Hariharan, Bharath and Lim, Ser-Nam},
  booktitle={European Conference on Computer Vision (ECCV)},
  year={2022}
}""",
    ),
}
"""Paper key -> (link, short reference, BibTeX)."""

METHODS: dict[str, tuple[str, str]] = {
    "MaPLe": ("maple", "[MaPLe]({link}) ({reference})"),
    "MaPLe†": ("maple", "MaPLe† (one coupling function shared by all layers; an ablation of [MaPLe]({link}))"),
    "IVLP": ("maple", "IVLP (independent vision-language prompting, a baseline of [MaPLe]({link}))"),
    "Deep language prompting": ("maple", "deep language prompting (a baseline of [MaPLe]({link}))"),
    "CoOp": ("coop", "[CoOp]({link}) ({reference})"),
    "VPT-deep": ("vpt", "VPT-deep ([Visual Prompt Tuning]({link}), {reference})"),
    "VPT-shallow": ("vpt", "VPT-shallow ([Visual Prompt Tuning]({link}), {reference})"),
    "PromptSRC": ("promptsrc", "[PromptSRC]({link}) ({reference})"),
    "CoCoOp": ("cocoop", "[CoCoOp]({link}) ({reference})"),
    "KgCoOp": ("kgcoop", "[KgCoOp]({link}) ({reference})"),
    "MMRL": ("mmrl", "[MMRL]({link}) ({reference})"),
}
"""Method name -> (paper key, markdown description with `{link}` and `{reference}`)."""

#: the objectives that name a method combined with the adapter's prompts: (name alone, suffix, paper)
_OBJECTIVE_NAMES = {"src": ("PromptSRC", "SRC", "promptsrc"), "kgcoop": ("KgCoOp", "KgCoOp", "kgcoop")}


def _objective(train_config: Mapping[str, Any] | None, variant: str) -> str:
    from .objectives import objective_name

    if not train_config:
        return "ce"
    name = objective_name(train_config, variant)
    if name == "ce" and train_config.get("gpa_mean") is not None:  # PromptSRC's aggregation without its losses
        return "src"
    return name


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
    depth = peft_config.get("depth")
    names = {
        "maple": "MaPLe",
        "maple_shared": "MaPLe†",
        "ivlp": "IVLP",
        "language": "CoOp" if depth == 1 else "Deep language prompting",
        "vision": "VPT-shallow" if depth == 1 else "VPT-deep",
        "cocoop": "CoCoOp",
        "mmrl": "MMRL",
    }
    name = names.get(variant, str(variant))
    objective = _objective(train_config, variant)
    if objective in _OBJECTIVE_NAMES:
        alone, suffix, _ = _OBJECTIVE_NAMES[objective]
        own_model = {"src": "IVLP", "kgcoop": "CoOp"}[objective]
        return alone if name == own_model else f"{name} + {suffix}"
    return name


def method_link(name: str) -> str:
    """A markdown description of the method `name` (from `method_name`) with a link to its paper.

    Args:
        name (`str`): the method's name.
    """
    base, _, extra = name.partition(" + ")
    paper, text = METHODS.get(base, ("maple", base))
    link, reference, _ = PAPERS[paper]
    text = text.format(link=link, reference=reference)
    if extra == "SRC":
        link, reference, _ = PAPERS["promptsrc"]
        text += (
            f", trained with the self-regulating losses and prompt aggregation of [PromptSRC]({link}) ({reference})"
        )
    elif extra == "KgCoOp":
        link, reference, _ = PAPERS["kgcoop"]
        text += f", trained with the knowledge-guided loss of [KgCoOp]({link}) ({reference})"
    return text


def method_citations(name: str) -> list[str]:
    """The BibTeX entries to cite for the method `name`: its paper(s), and MaPLe's (this package's implementation).

    Args:
        name (`str`): the method's name.
    """
    base, _, extra = name.partition(" + ")
    papers = [METHODS.get(base, ("maple", ""))[0]] + (
        [{"SRC": "promptsrc", "KgCoOp": "kgcoop"}[extra]] if extra else []
    )
    papers += [] if "maple" in papers else ["maple"]
    return [PAPERS[paper][2] for paper in dict.fromkeys(papers)]


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
    shape = [("Method", name), ("Variant", f"`{variant}`"), ("Context tokens (n_ctx)", n_ctx), ("Prompt depth", depth)]
    if peft_config.get("n_ctx_vision") is not None:
        shape.append(("Vision context tokens (n_ctx_vision)", peft_config["n_ctx_vision"]))
    if peft_config.get("prompt_init") is not None and variant != "mmrl":
        shape.append(("Prompt initialization", f"`{peft_config['prompt_init']}`"))
    for key in ("n_rep", "rep_dim", "rep_layers", "alpha", "template"):
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
