"""Class prompts: templates, class-name cleaning and tokenization (right padding, trimmed, at most 77 tokens)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .config import MAX_TEXT_LENGTH, MaPLeConfig

#: CLIP's special tokens: a class name containing one would end (or restart) its prompt early.
CLIP_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def clean_class_name(name: str) -> str:
    """The class name as it appears in a prompt: underscores become spaces (`golden_retriever` → `golden retriever`)."""
    return name.replace("_", " ")


def check_class_names(class_names: Sequence[str]) -> list[str]:
    """Check that `class_names` is a non-empty sequence of usable class names and return it as a list.

    Args:
        class_names (`Sequence[str]`): the class names.

    Raises:
        `TypeError`: `class_names` is a single string, or a name is not a string.
        `ValueError`: the list is empty, or a name is blank or contains one of CLIP's special tokens.
    """
    if isinstance(class_names, str):
        raise TypeError(f"class_names must be a sequence of names, got the string {class_names!r}.")
    try:
        names = list(class_names)
    except TypeError:
        raise TypeError(
            f"class_names must be a sequence of names (strings), got {type(class_names).__name__}."
        ) from None
    if len(names) == 0:
        raise ValueError("class_names is empty; pass a non-empty list of class names.")
    for index, name in enumerate(names):
        if not isinstance(name, str):
            raise TypeError(
                f"class_names[{index}]={name!r} is not a string (it is of type {type(name).__name__}); pass class names as strings."
            )
        if not clean_class_name(name).strip():
            raise ValueError(f"class_names[{index}]={name!r} is blank; every class needs a name.")
        for token in CLIP_SPECIAL_TOKENS:
            if token in name:
                raise ValueError(
                    f"class_names[{index}]={name!r} contains CLIP's special token {token!r}, which would cut the "
                    "prompt short; remove it from the name."
                )
    return names


def _refuse_duplicates(keys: Sequence[Any], class_names: Sequence[str], prompts: Sequence[str]) -> None:
    """Raise if two classes have the same key (prompt text or token ids): they could not be told apart."""
    first: dict[Any, int] = {}
    for index, key in enumerate(keys):
        if key in first:
            other = first[key]
            raise ValueError(
                f"Classes {class_names[other]!r} and {class_names[index]!r} give the same prompt "
                f"({prompts[index]!r}), so they cannot be told apart; rename or merge one of them."
            )
        first[key] = index


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
    names = check_class_names(class_names)
    template = template if template is not None else prompt_template(config)
    if template.count("{}") != 1:
        raise ValueError(f"template={template!r} must contain exactly one '{{}}' for the class name.")
    prompts = [template.format(clean_class_name(name)) for name in names]
    _refuse_duplicates(prompts, names, prompts)
    return prompts


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

    Raises:
        `ValueError`: a prompt is longer than `max_length` tokens, contains a special token inside it, or two prompts
            give the same tokens (e.g. names differing only in case), so that their classes cannot be told apart.
    """
    names = list(class_names) if class_names is not None else list(prompts)
    encoded = tokenizer(list(prompts), padding=False, truncation=False)["input_ids"]
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    for index, ids in enumerate(encoded):
        if len(ids) > max_length:
            raise ValueError(
                f"The prompt of class {names[index]!r} ({prompts[index]!r}) has {len(ids)} tokens, more than CLIP's "
                f"{max_length}; shorten the class name (e.g. with a class-name mapping file)."
            )
        if any(token in special for token in ids[1:-1]):
            raise ValueError(
                f"The prompt of class {names[index]!r} ({prompts[index]!r}) contains a special token of the "
                "tokenizer inside it, which would cut the prompt short; remove it from the class name."
            )
    _refuse_duplicates([tuple(ids) for ids in encoded], names, list(prompts))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    longest = max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), longest), pad_id, dtype=torch.long)
    for index, ids in enumerate(encoded):
        input_ids[index, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return input_ids
