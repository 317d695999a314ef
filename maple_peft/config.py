"""`MaPLeConfig`: the configuration of a MaPLe adapter (and of the variants that share its machinery)."""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, field

from peft.config import PeftConfig
from peft.utils import PeftType

from .version import __version__

VARIANTS = ("maple", "maple_shared", "ivlp", "language", "vision")

#: Variants whose vision prompts are computed from the text prompts by a coupling function.
COUPLED_VARIANTS = ("maple", "maple_shared")
#: Variants with learnable text prompts.
TEXT_VARIANTS = ("maple", "maple_shared", "ivlp", "language")
#: Variants with vision prompts (coupled or free).
VISION_VARIANTS = ("maple", "maple_shared", "ivlp", "vision")

#: CLIP's text context length.
MAX_TEXT_LENGTH = 77
#: Tokens of a class prompt besides its context: start token, at least one class-name token, "." and end token.
PROMPT_EXTRA_TOKENS = 4


def _check_positive_int(name: str, value: object, *, or_none: bool = False) -> None:
    hint = " (or None)" if or_none else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}={value!r} must be an integer >= 1{hint}.")
    if value < 1:
        raise ValueError(f"{name}={value!r} must be an integer >= 1{hint}.")


def _warn_if_newer(saved_version: object) -> None:
    """Warn when an adapter was written by a newer maple_peft than the installed one (it may use unknown options)."""
    from packaging.version import InvalidVersion, Version

    try:
        newer = Version(str(saved_version)) > Version(__version__)
    except InvalidVersion:
        warnings.warn(
            f"maple_peft_version={saved_version!r} of this adapter is not a version number; the installed maple_peft "
            f"is {__version__}.",
            stacklevel=3,
        )
        return
    if newer:
        warnings.warn(
            f"This adapter was written by maple_peft {saved_version}, newer than the installed maple_peft "
            f"{__version__}; it may use options this version does not know. Upgrade with "
            "`pip install -U maple-peft`.",
            stacklevel=3,
        )


@dataclass
class MaPLeConfig(PeftConfig):
    """Configuration of a MaPLe adapter for a transformers `CLIPModel`.

    MaPLe (Khattak et al., "MaPLe: Multi-modal Prompt Learning", CVPR 2023, https://huggingface.co/papers/2210.03117)
    learns `n_ctx` prompt tokens in the first `depth` layers of both CLIP towers; the vision prompts are linear
    projections ("couplings") of the text prompts. The same machinery gives the paper's ablations, chosen by
    `variant`.

    Args:
        n_ctx (`int`, defaults to 2):
            Number of learnable context tokens of the text branch (and of the vision branch for the coupled variants).
        n_ctx_vision (`int`, *optional*):
            Number of vision prompt tokens for `variant="ivlp"` or `"vision"`; defaults to `n_ctx`. The coupled
            variants map each text token to one vision token, so there it must equal `n_ctx`.
        depth (`int`, defaults to 9):
            Prompt depth J: prompts are inserted at the input of layers `0 .. depth-1` of the towers.
        prompt_init (`str`, *optional*, defaults to `"a photo of a"`):
            Text whose first `n_ctx` token embeddings initialize the first-layer text context. It also forms the class
            prompts `f"{prompt_init} {class_name}."`. `None` initializes the context from N(0, 0.02²) and uses the
            placeholder text `"X " * n_ctx`.
        variant (`str`, defaults to `"maple"`):
            `"maple"` (one coupling Linear per depth), `"maple_shared"` (one coupling shared by all depths: the paper's
            lighter MaPLe† ablation), `"ivlp"` (independent vision-language prompts, no coupling), `"language"`
            (deep text prompts only; with `depth=1` this is CoOp) or `"vision"` (VPT-deep: vision prompts only, frozen
            text).
        prompt_init_std (`float`, defaults to 0.02):
            Standard deviation of the normal initialization of the prompts that are not initialized from text.
        tokenizer_name_or_path (`str`, *optional*):
            Tokenizer used once, at creation, to turn `prompt_init` into token ids. Defaults to the base model's
            `name_or_path`.
        prompt_init_token_ids (`list[int]`, *optional*):
            The token ids of the first `n_ctx` tokens of `prompt_init`. Filled automatically when the adapter is
            created, so that loading a saved adapter never needs the tokenizer.
        target_modules (`list[str]`, *optional*):
            Filled automatically from `depth` and `variant`; do not set it.
        class_names (`list[str]`, *optional*):
            The class names the adapter was trained on (or that its classifier was saved with), so that
            `PromptClassifier.from_pretrained(adapter)` classifies without being told the classes. Saved in
            `adapter_config.json`; any other names can still be used at prediction time.
        maple_peft_version (`str`, *optional*):
            The version of maple_peft that created the adapter; filled automatically. Loading an adapter written by a
            newer version warns, naming both versions.

    Every value is validated when the config is created (a `TypeError` or `ValueError` naming the value); the checks
    that need the base model (depth against the towers, `prompt_init` tokens against CLIP's 77-token context and
    `prompt_init_token_ids` against its vocabulary) run when the adapter is created.

    Example:

        ```py
        >>> from maple_peft import MaPLeConfig

        >>> config = MaPLeConfig(n_ctx=2, depth=9, prompt_init="a photo of a")  # the paper's MaPLe
        >>> coop = MaPLeConfig(variant="language", n_ctx=4, depth=1)  # CoOp
        ```
    """

    n_ctx: int = field(default=2, metadata={"help": "Number of learnable context tokens of the text branch."})
    n_ctx_vision: int | None = field(
        default=None,
        metadata={"help": "Number of vision prompt tokens for the 'ivlp' and 'vision' variants; defaults to n_ctx."},
    )
    depth: int = field(
        default=9, metadata={"help": "Prompt depth J: prompts enter layers 0 .. depth-1 of the towers."}
    )
    prompt_init: str | None = field(
        default="a photo of a",
        metadata={
            "help": "Text initializing the first-layer text context (its first n_ctx tokens) and forming the class "
            "prompts '{prompt_init} {class_name}.'; None for a random context and the placeholder 'X X ...'."
        },
    )
    variant: str = field(
        default="maple",
        metadata={"help": f"One of {VARIANTS}: MaPLe, shared coupling (MaPLe†), IVLP, language-only, vision-only."},
    )
    prompt_init_std: float = field(
        default=0.02, metadata={"help": "Std of the normal initialization of prompts not initialized from text."}
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Tokenizer for prompt_init, used once at creation; defaults to the base model's path."},
    )
    prompt_init_token_ids: list[int] | None = field(
        default=None,
        metadata={"help": "Token ids of the first n_ctx tokens of prompt_init; filled automatically at creation."},
    )
    target_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Filled automatically from depth and variant; do not set."}
    )
    class_names: list[str] | None = field(
        default=None,
        metadata={
            "help": "The class names the adapter classifies by default (those it was trained on); saved with it and "
            "used by PromptClassifier.from_pretrained when no class names are given."
        },
    )
    maple_peft_version: str | None = field(
        default=None, metadata={"help": "Version of maple_peft that created this config; filled automatically."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType.MAPLE
        if self.maple_peft_version is None:
            self.maple_peft_version = __version__
        else:
            _warn_if_newer(self.maple_peft_version)
        if self.task_type is not None:
            raise ValueError(
                f"task_type={self.task_type!r} is not supported by MaPLe: leave it as None. PEFT's task classes pass "
                "`inputs_embeds`, which CLIP's encoders reject; use maple_peft.PromptClassifier for classification."
            )
        if self.variant not in VARIANTS:
            raise ValueError(f"variant={self.variant!r} is not known; use one of {VARIANTS}.")
        for name in ("n_ctx", "depth"):
            _check_positive_int(name, getattr(self, name))
        if self.n_ctx_vision is not None:
            _check_positive_int("n_ctx_vision", self.n_ctx_vision, or_none=True)
            if self.variant not in VISION_VARIANTS:
                raise ValueError(
                    f"n_ctx_vision={self.n_ctx_vision} was given, but variant={self.variant!r} has no vision prompts; "
                    "leave n_ctx_vision unset, or use variant='ivlp' or 'vision'."
                )
            if self.variant in COUPLED_VARIANTS and self.n_ctx_vision != self.n_ctx:
                raise ValueError(
                    f"n_ctx_vision={self.n_ctx_vision} differs from n_ctx={self.n_ctx}, but variant={self.variant!r} "
                    "couples each text token to one vision token; leave n_ctx_vision unset, or use variant='ivlp'."
                )
        if self.variant in TEXT_VARIANTS and self.n_ctx + PROMPT_EXTRA_TOKENS > MAX_TEXT_LENGTH:
            raise ValueError(
                f"n_ctx={self.n_ctx} does not fit in CLIP's {MAX_TEXT_LENGTH}-token text context: a class prompt "
                f"holds the start token, the n_ctx context tokens, at least one class-name token, '.' and the end "
                f"token; use n_ctx <= {MAX_TEXT_LENGTH - PROMPT_EXTRA_TOKENS}."
            )
        if self.prompt_init is not None:
            if not isinstance(self.prompt_init, str):
                raise TypeError(
                    f"prompt_init={self.prompt_init!r} must be a string (got {type(self.prompt_init).__name__}); pass "
                    "a text such as 'a photo of a', or None."
                )
            if not self.prompt_init.strip():
                raise ValueError(
                    f"prompt_init={self.prompt_init!r} is empty; pass a text such as 'a photo of a', or None."
                )
        if isinstance(self.prompt_init_std, bool) or not isinstance(self.prompt_init_std, numbers.Real):
            raise TypeError(f"prompt_init_std={self.prompt_init_std!r} must be a number, such as 0.02.")
        if not math.isfinite(self.prompt_init_std) or self.prompt_init_std <= 0:
            raise ValueError(f"prompt_init_std={self.prompt_init_std!r} must be a finite number > 0, such as 0.02.")
        if self.prompt_init_token_ids is not None:
            ids = self.prompt_init_token_ids
            if not isinstance(ids, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in ids
            ):
                raise TypeError(
                    f"prompt_init_token_ids={ids!r} must be a list of integer token ids; leave it unset so that it "
                    "is computed from prompt_init."
                )
            if any(i < 0 for i in ids):
                raise ValueError(
                    f"prompt_init_token_ids={list(ids)} holds negative token ids; leave it unset so that it is "
                    "computed from prompt_init."
                )
            if len(ids) != self.n_ctx:
                raise ValueError(
                    f"prompt_init_token_ids={list(ids)} has {len(ids)} ids but n_ctx={self.n_ctx}; leave it unset so "
                    "that it is computed from prompt_init."
                )
            self.prompt_init_token_ids = list(ids)

        if self.class_names is not None:
            if isinstance(self.class_names, str) or not isinstance(self.class_names, (list, tuple)):
                raise ValueError(f"class_names={self.class_names!r} must be a list of class names (strings), or None.")
            for name in self.class_names:
                if not isinstance(name, str) or not name.strip():
                    raise ValueError(f"class_names contains {name!r}; every class name must be a non-empty string.")
            self.class_names = list(self.class_names)

    @property
    def num_vision_tokens(self) -> int:
        """Number of vision prompt tokens (0 for the language-only variant)."""
        if self.variant not in VISION_VARIANTS:
            return 0
        return self.n_ctx_vision if self.n_ctx_vision is not None else self.n_ctx

    @property
    def num_text_tokens(self) -> int:
        """Number of learnable text tokens (0 for the vision-only variant)."""
        return self.n_ctx if self.variant in TEXT_VARIANTS else 0
