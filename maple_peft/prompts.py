"""Class prompts: templates, class-name cleaning and tokenization (right padding, within the model's text length)."""

from __future__ import annotations

from collections.abc import Sequence
from string import Formatter
from typing import Any

import torch

from .config import MAX_TEXT_LENGTH, MaPLeConfig


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
            Variants without a learned text context use the config's `template` when it has one.
    """
    if config is None:
        return "a photo of a {}."
    if config.template is not None and not config.num_text_tokens:
        return config.template
    if config.prompt_init is not None:
        prefix = config.prompt_init.replace("_", " ")
    elif config.num_text_tokens:
        prefix = " ".join(["X"] * config.n_ctx)
    else:
        prefix = ""
    prefix = prefix.replace("{", "{{").replace("}", "}}")
    return f"{prefix} {{}}." if prefix else "{}."


def check_template(template: str) -> str:
    """Check that `template` is a prompt template: exactly one `{}` (the class name) and no other braces.

    Literal braces are written `{{` and `}}`, as in `str.format`.

    Args:
        template (`str`): e.g. `"a photo of a {}."`.

    Raises:
        `TypeError`: `template` is not a string.
        `ValueError`: no `{}`, several, a named or numbered field (`{x}`, `{0}`), a format spec, or a lone brace.
    """
    if not isinstance(template, str):
        raise TypeError(
            f"template={template!r} must be a string with one {{}} for the class name, e.g. 'a photo of a {{}}.'"
        )
    expected = (
        "a template holds exactly one {} where the class name goes, and writes any other brace doubled ({{ or }}), "
        "e.g. 'a photo of a {}.'"
    )
    try:
        fields = [
            (name, spec, conversion) for _, name, spec, conversion in Formatter().parse(template) if name is not None
        ]
    except ValueError as error:  # a lone { or }
        raise ValueError(f"template={template!r} is not a valid template ({error}); {expected}") from None
    bad = [
        f"{{{name}{'!' + conversion if conversion else ''}{':' + spec if spec else ''}}}"
        for name, spec, conversion in fields
        if name or spec or conversion
    ]
    if bad:
        raise ValueError(f"template={template!r} has the field {bad[0]}; {expected}")
    if len(fields) != 1:
        count = "no {} field" if not fields else f"{len(fields)} {{}} fields"
        raise ValueError(f"template={template!r} has {count}; {expected}")
    return template


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
    template = check_template(template if template is not None else prompt_template(config))
    prompts = [template.format(clean_class_name(name)) for name in names]
    _refuse_duplicates(prompts, names, prompts)
    return prompts


def _special_runs(ids: Sequence[int], special: set[int]) -> tuple[int, int, bool]:
    """The numbers of leading and trailing special tokens of `ids`, and whether another one stands inside the text."""
    lead = 0
    while lead < len(ids) and ids[lead] in special:
        lead += 1
    end = len(ids)
    while end > lead and ids[end - 1] in special:
        end -= 1
    return lead, len(ids) - end, any(token in special for token in ids[lead:end])


def _holds_special_tokens(tokenizer: Any, encoded: Sequence[Sequence[int]]) -> list[bool]:
    """For each tokenized text, whether its own text holds a special token of the tokenizer: one inside it, or more
    at its start or end than the tokenizer puts around a plain word."""
    special = special_token_ids(tokenizer)
    plain_lead, plain_trail, _ = _special_runs(tokenizer("a", padding=False, truncation=False)["input_ids"], special)
    runs = [_special_runs(ids, special) for ids in encoded]
    return [inside or lead > plain_lead or trail > plain_trail for lead, trail, inside in runs]


def check_template_tokens(tokenizer: Any, template: str, max_length: int, what: str = "template") -> str:
    """Check a prompt template against the tokenizer, as class names are checked: it holds none of the tokenizer's
    special tokens (`<|endoftext|>` would end every prompt made from it early, `<|startoftext|>` restart it), and a
    prompt made from it with a one-word class name fits the text encoder's context.

    Args:
        tokenizer: the base model's tokenizer.
        template (`str`): the template, already checked by `check_template` (one `{}`).
        max_length (`int`): the text encoder's context length.
        what (`str`): how the template is named in errors.

    Raises:
        `ValueError`: naming the template.
    """
    ids = tokenizer(template.format("a"), padding=False, truncation=False)["input_ids"]
    if _holds_special_tokens(tokenizer, [ids])[0]:
        found = [token for token in getattr(tokenizer, "all_special_tokens", []) if token and token in template]
        raise ValueError(
            f"{what}={template!r} holds a special token of the tokenizer{f' ({found[0]})' if found else ''}, which "
            "would cut short or restart every prompt made from it; remove it from the template."
        )
    if len(ids) > max_length:
        raise ValueError(
            f"{what}={template!r} gives prompts of {len(ids)} tokens even with a one-word class name, more than the "
            f"text encoder's {max_length}; shorten the template."
        )
    return template


def special_token_ids(tokenizer: Any) -> set[int]:
    """The ids of the tokenizer's special tokens that begin, end or pad a text (its unknown-piece token is not one of
    them, unless it doubles as one, as in CLIP's tokenizer where it is the end-of-text token).

    Args:
        tokenizer: a transformers tokenizer.
    """
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    named = {getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad", "sep", "cls")}
    unk = getattr(tokenizer, "unk_token_id", None)
    return special if unk in named else special - {unk}


def tokenize_prompts(
    tokenizer: Any,
    prompts: Sequence[str],
    class_names: Sequence[str] | None = None,
    max_length: int = MAX_TEXT_LENGTH,
    *,
    pad_to_max_length: bool = False,
    leading_special_tokens: int | None = None,
) -> torch.Tensor:
    """Tokenize prompts with right padding, to the longest prompt or to `max_length`.

    Trimming to the longest prompt is exact for the causal text encoders (CLIP, MetaCLIP 2): they pool at the
    end-of-text token, so the padding after it never reaches the pooled feature. SigLIP pools the last position of a
    sequence padded to its maximum length (`pad_to_max_length=True`). Padding is always on the right, whatever the
    tokenizer's `padding_side` says, so that every prompt has its context at the same positions.

    Args:
        tokenizer: the base model's tokenizer.
        prompts (`Sequence[str]`): the prompt texts (from `format_prompts`).
        class_names (`Sequence[str]`, *optional*): the class names behind the prompts, named in errors.
        max_length (`int`): the text encoder's context length.
        pad_to_max_length (`bool`, *keyword-only*): pad every prompt to `max_length`.
        leading_special_tokens (`int`, *keyword-only*, *optional*): the number of special tokens every prompt must
            start with (where an adapter's text prompts start); checked when given.

    Returns:
        `torch.LongTensor` of shape `(len(prompts), longest)` (or `max_length`).

    Raises:
        `ValueError`: a prompt is longer than `max_length` tokens, contains a special token of the tokenizer inside
            it, does not start with the expected special tokens, or two prompts give the same tokens (e.g. names
            differing only in case), so that their classes cannot be told apart.
    """
    names = list(class_names) if class_names is not None else list(prompts)
    encoded = tokenizer(list(prompts), padding=False, truncation=False)["input_ids"]
    special = special_token_ids(tokenizer)
    holds_special = _holds_special_tokens(tokenizer, encoded)
    for index, ids in enumerate(encoded):
        if len(ids) > max_length:
            raise ValueError(
                f"The prompt of class {names[index]!r} ({prompts[index]!r}) has {len(ids)} tokens, more than the text "
                f"encoder's {max_length}; shorten the class name (e.g. with a class-name mapping file)."
            )
        lead, _, _ = _special_runs(ids, special)
        if holds_special[index]:
            raise ValueError(
                f"The prompt of class {names[index]!r} ({prompts[index]!r}) contains a special token of the "
                "tokenizer, which would cut the prompt short or restart it; remove it from the class name."
            )
        if leading_special_tokens is not None and lead != leading_special_tokens:
            raise ValueError(
                f"The tokenizer puts {lead} special token(s) before the text of {prompts[index]!r}, but the adapter's "
                f"text prompts start at position {leading_special_tokens} (it was created with another tokenizer); "
                "use the tokenizer of the base model the adapter was trained on."
            )
    _refuse_duplicates([tuple(ids) for ids in encoded], names, list(prompts))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    longest = max_length if pad_to_max_length else max(len(ids) for ids in encoded)
    input_ids = torch.full((len(encoded), longest), pad_id, dtype=torch.long)
    for index, ids in enumerate(encoded):
        input_ids[index, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return input_ids
