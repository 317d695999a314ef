"""Class prompts: templates, class-name cleaning and tokenization (right padding, trimmed, at most 77 tokens)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .config import MaPLeConfig

#: CLIP's text context length.
MAX_TEXT_LENGTH = 77


def clean_class_name(name: str) -> str:
    """The class name as it appears in a prompt: underscores become spaces (`golden_retriever` → `golden retriever`)."""
    return name.replace("_", " ")


def prompt_template(config: MaPLeConfig | None) -> str:
    """The `str.format` template of the class prompts of an adapter, e.g. `"a photo of a {}."`.

    Args:
        config (`MaPLeConfig`, *optional*): the adapter's config; `None` gives CLIP's plain `"a photo of a {}."`.
    """
    if config is None:
        return "a photo of a {}."
    if config.prompt_init is not None:
        prefix = config.prompt_init.replace("_", " ")
    elif config.num_text_tokens:
        prefix = " ".join(["X"] * config.n_ctx)
    else:
        prefix = ""
    prefix = prefix.replace("{", "{{").replace("}", "}}")
    return f"{prefix} {{}}." if prefix else "{}."


def format_prompts(config: MaPLeConfig | None, class_names: Sequence[str], template: str | None = None) -> list[str]:
    """The prompt texts of the classes, exactly as the original MaPLe code builds them.

    Args:
        config (`MaPLeConfig`, *optional*): the adapter's config (`f"{prompt_init} {name}."`).
        class_names (`Sequence[str]`): the class names; `_` is replaced by a space.
        template (`str`, *optional*): a `str.format` template with one `{}` that overrides the config's, e.g. a
            dataset's zero-shot template `"a centered satellite photo of {}."`.

    Example:

        ```py
        >>> format_prompts(MaPLeConfig(), ["golden_retriever"])
        ['a photo of a golden retriever.']
        ```
    """
    if isinstance(class_names, str):
        raise TypeError(f"class_names must be a sequence of names, got the string {class_names!r}.")
    if len(class_names) == 0:
        raise ValueError("class_names is empty; pass at least one class name.")
    template = template if template is not None else prompt_template(config)
    if template.count("{}") != 1:
        raise ValueError(f"template={template!r} must contain exactly one '{{}}' for the class name.")
    return [template.format(clean_class_name(name)) for name in class_names]


def tokenize_prompts(
    tokenizer: Any,
    prompts: Sequence[str],
    class_names: Sequence[str] | None = None,
    max_length: int = MAX_TEXT_LENGTH,
) -> torch.Tensor:
    """Tokenize prompts with right padding to the longest prompt (never more than `max_length` tokens).

    Trimming to the longest prompt is exact for CLIP: its text encoder is causal and pools at the end-of-text
    token, so the padding after it never reaches the pooled feature.

    Args:
        tokenizer: a CLIP tokenizer.
        prompts (`Sequence[str]`): the prompt texts (from `format_prompts`).
        class_names (`Sequence[str]`, *optional*): the class names behind the prompts, named in errors.
        max_length (`int`): the text encoder's context length.

    Returns:
        `torch.LongTensor` of shape `(len(prompts), longest)`.
    """
    encoded = tokenizer(list(prompts), padding=False, truncation=False)["input_ids"]
    for index, ids in enumerate(encoded):
        if len(ids) > max_length:
            name = class_names[index] if class_names is not None else prompts[index]
            raise ValueError(
                f"The prompt of class {name!r} ({prompts[index]!r}) has {len(ids)} tokens, more than CLIP's "
                f"{max_length}; shorten the class name (e.g. with a class-name mapping file)."
            )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    longest = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), longest), pad_id, dtype=torch.long)
    for index, ids in enumerate(encoded):
        input_ids[index, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return input_ids
