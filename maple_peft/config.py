"""`MaPLeConfig`: the configuration of a MaPLe adapter (and of the variants that share its machinery)."""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass, field

from peft.config import PeftConfig
from peft.utils import PeftType

from .version import __version__


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


add_peft_type("MAPLE")  # MaPLeConfig sets peft_type = PeftType.MAPLE

VARIANTS = ("maple", "maple_shared", "ivlp", "language", "vision", "cocoop", "mmrl")

#: Variants whose vision prompts are computed from the text prompts by a coupling function.
COUPLED_VARIANTS = ("maple", "maple_shared")
#: Variants with learnable text prompts.
TEXT_VARIANTS = ("maple", "maple_shared", "ivlp", "language", "cocoop")
#: Variants whose text context depends on the image (CoCoOp's meta-net): no text feature is shared across images.
CONDITIONAL_VARIANTS = ("cocoop",)
#: Variants with shared representation tokens in both towers (MMRL).
REPRESENTATION_VARIANTS = ("mmrl",)
#: MMRL's defaults (its configs): representation tokens, their width, the fusion weight.
MMRL_DEFAULTS = {"n_rep": 5, "rep_dim": 512, "alpha": 0.7}
#: Variants with vision prompts (coupled or free).
VISION_VARIANTS = ("maple", "maple_shared", "ivlp", "vision")

#: The longest text context of the supported backbones (CLIP's 77 tokens; SigLIP's is 64, checked against the model).
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
    """Configuration of a MaPLe adapter (or of one of the prompt methods that share its machinery) for a CLIP-family
    dual encoder of transformers: `CLIPModel`, `MetaClip2Model`, `SiglipModel` or `Siglip2Model`.

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
        depth (`int`, defaults to 9; 1 for `"cocoop"`):
            Prompt depth J: prompts are inserted at the input of layers `0 .. depth-1` of the towers. Not used by
            `"mmrl"` (see `rep_layers`).
        prompt_init (`str`, *optional*, defaults to `"a photo of a"`):
            Text whose first `n_ctx` token embeddings initialize the first-layer text context. It also forms the class
            prompts `f"{prompt_init} {class_name}."`. `None` initializes the context from N(0, 0.02²) and uses the
            placeholder text `"X " * n_ctx`.
        variant (`str`, defaults to `"maple"`):
            `"maple"` (one coupling Linear per depth), `"maple_shared"` (one coupling shared by all depths: the paper's
            lighter MaPLe† ablation), `"ivlp"` (independent vision-language prompts, no coupling), `"language"`
            (deep text prompts only; with `depth=1` this is CoOp), `"vision"` (VPT-deep: vision prompts only, frozen
            text), `"cocoop"` (CoCoOp, Zhou et al., CVPR 2022: a depth-1 text context shifted per image by a meta-net
            of the image features; `prompt_init` sets `n_ctx` to its word count, as the original code does) or
            `"mmrl"` (MMRL, Guo et al., CVPR 2025: shared representation tokens projected into the layers
            `rep_layers` of both towers; the class prompts are `template`, with no learned context).
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
        vision_pool_prompts (`bool`, defaults to `False`):
            For backbones pooled by an attention head over every token (SigLIP, SigLIP 2): `True` lets the head see the
            vision prompt tokens after the last layer; `False` removes them before the head, so that the head pools
            the image's own tokens only, which the prompts have shaped through attention in every layer: the
            analogue of CLIP, whose pooled class token is an image token and whose prompt outputs are discarded.
            Backbones pooled at a class token (CLIP, MetaCLIP 2) always pool that token, whatever this says.
        backbone (`str`, *optional*):
            The family of the base model (`"clip"`, `"metaclip_2"`, `"siglip"`, `"siglip2"`); filled automatically
            when the adapter is created. An adapter is refused on a base model of another family.
        text_prompt_start (`int`, *optional*):
            The position of the first text prompt token: the number of special tokens the tokenizer puts before the
            text (1 for CLIP's and MetaCLIP 2's start token, 0 for SigLIP's tokenizer). Worked out from the tokenizer
            when the adapter is created.
        n_rep (`int`, *optional*): `"mmrl"`: number of representation tokens (5).
        rep_dim (`int`, *optional*): `"mmrl"`: width of the representation tokens (512; 2048 in MMRL's EuroSAT recipe).
        rep_layers (`list[int]`, *optional*):
            `"mmrl"`: the 1-based layers at whose input the representation tokens enter (inserted right after the start
            token / class token at the first, replacing them at the others). Defaults to the last 7 layers of the text
            encoder (6..12 for ViT-B/16), worked out when the adapter is created and saved.
        alpha (`float`, *optional*): `"mmrl"`: weight of the class-token logits in the fused logits, `alpha * logits
            + (1 - alpha) * logits_rep` (0.7).
        template (`str`, *optional*):
            The class prompt template (one `{}`) of the variants without a learned text context (`"mmrl"`, e.g. a
            dataset's `"a centered satellite photo of {}."`); defaults to `f"{prompt_init} {{}}."`.
        dataset (`str`, *optional*):
            The dataset the adapter was trained on (its name as the scripts record it). With `class_names` it decides
            MMRL's test-time rule (`PromptClassifier(rep_logits="auto")`).
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
        >>> cocoop = MaPLeConfig(variant="cocoop", prompt_init="a photo of a")  # CoCoOp: n_ctx 4, depth 1
        >>> mmrl = MaPLeConfig(variant="mmrl", template="a photo of a {}.")  # MMRL: 5 tokens of width 512
        ```
    """

    n_ctx: int = field(default=2, metadata={"help": "Number of learnable context tokens of the text branch."})
    n_ctx_vision: int | None = field(
        default=None,
        metadata={"help": "Number of vision prompt tokens for the 'ivlp' and 'vision' variants; defaults to n_ctx."},
    )
    depth: int | None = field(
        default=None,
        metadata={"help": "Prompt depth J: prompts enter layers 0 .. depth-1 of the towers (default 9; cocoop: 1)."},
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
    vision_pool_prompts: bool = field(
        default=False,
        metadata={
            "help": "Attention-pooled backbones (SigLIP): True lets the pooling head see the vision prompts, False "
            "removes them before the head (the analogue of CLIP's class-token pooling)."
        },
    )
    backbone: str | None = field(
        default=None, metadata={"help": "Family of the base model; filled automatically at creation."}
    )
    text_prompt_start: int | None = field(
        default=None,
        metadata={"help": "Position of the first text prompt token (after the tokenizer's leading special tokens)."},
    )
    n_rep: int | None = field(default=None, metadata={"help": "mmrl: number of representation tokens (5)."})
    rep_dim: int | None = field(default=None, metadata={"help": "mmrl: width of the representation tokens (512)."})
    rep_layers: list[int] | None = field(
        default=None,
        metadata={"help": "mmrl: 1-based layers the representation tokens enter; default the last 7 text layers."},
    )
    alpha: float | None = field(
        default=None, metadata={"help": "mmrl: weight of the class-token logits in the fused logits (0.7)."}
    )
    template: str | None = field(
        default=None,
        metadata={"help": "Class prompt template (one {}) of the variants without a learned context (mmrl)."},
    )
    dataset: str | None = field(
        default=None, metadata={"help": "The dataset the adapter was trained on; filled by the training script."}
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
        self._resolve_variant_defaults()
        for name in ("n_ctx", "depth"):
            if getattr(self, name) is not None:
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
                f"n_ctx={self.n_ctx} does not fit in a {MAX_TEXT_LENGTH}-token text context: a class prompt "
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

        if not isinstance(self.vision_pool_prompts, bool):
            raise TypeError(f"vision_pool_prompts={self.vision_pool_prompts!r} must be True or False.")
        if self.backbone is not None:
            from .backbones import get_backbone

            get_backbone(self.backbone)
        if self.text_prompt_start is not None:
            start = self.text_prompt_start
            if isinstance(start, bool) or not isinstance(start, int) or start < 0:
                raise ValueError(
                    f"text_prompt_start={start!r} must be an integer >= 0; leave it unset so that it is worked out "
                    "from the tokenizer."
                )

        if self.template is not None:
            if self.num_text_tokens:
                raise ValueError(
                    f"template={self.template!r} was given, but variant={self.variant!r} learns a text context whose "
                    "prompts are '{prompt_init} {class}.'; set prompt_init instead, or leave template unset."
                )
            if not isinstance(self.template, str) or self.template.count("{}") != 1:
                raise ValueError(
                    f"template={self.template!r} must be a text with exactly one '{{}}' for the class name, such as "
                    "'a photo of a {}.'."
                )
        if self.dataset is not None and not isinstance(self.dataset, str):
            raise TypeError(f"dataset={self.dataset!r} must be the dataset's name (a string) or None.")

        if self.class_names is not None:
            if isinstance(self.class_names, str) or not isinstance(self.class_names, (list, tuple)):
                raise ValueError(f"class_names={self.class_names!r} must be a list of class names (strings), or None.")
            for name in self.class_names:
                if not isinstance(name, str) or not name.strip():
                    raise ValueError(f"class_names contains {name!r}; every class name must be a non-empty string.")
            self.class_names = list(self.class_names)

    def _resolve_variant_defaults(self) -> None:
        """Fill the defaults that depend on the variant and refuse options another variant owns."""
        mmrl_fields = {name: getattr(self, name) for name in ("n_rep", "rep_dim", "rep_layers", "alpha")}
        if self.variant in REPRESENTATION_VARIANTS:
            if self.depth is not None:
                raise ValueError(
                    f"depth={self.depth} was given, but variant={self.variant!r} places its representation tokens by "
                    "rep_layers; leave depth unset."
                )
            for name, default in MMRL_DEFAULTS.items():
                if getattr(self, name) is None:
                    setattr(self, name, default)
            for name in ("n_rep", "rep_dim"):
                _check_positive_int(name, getattr(self, name))
            alpha = self.alpha
            if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0 <= alpha <= 1:
                raise ValueError(f"alpha={alpha!r} must be a number in [0, 1], such as 0.7 (MMRL's).")
            self.alpha = float(alpha)
            if self.rep_layers is not None:
                layers = self.rep_layers
                if (
                    isinstance(layers, (str, bytes))
                    or not isinstance(layers, (list, tuple))
                    or not layers
                    or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 1 for i in layers)
                    or list(layers) != sorted(set(layers))
                ):
                    raise ValueError(
                        f"rep_layers={layers!r} must be a non-empty increasing list of 1-based layer numbers, such as "
                        "[6, 7, 8, 9, 10, 11, 12]; leave it unset for the last 7 layers."
                    )
                self.rep_layers = list(layers)
            return
        given = [name for name, value in mmrl_fields.items() if value is not None]
        if given:
            raise ValueError(
                f"{', '.join(f'{name}={mmrl_fields[name]!r}' for name in given)} given, but these are options of "
                f"variant='mmrl', not of variant={self.variant!r}; leave them unset."
            )
        if self.variant in CONDITIONAL_VARIANTS:
            if self.depth not in (None, 1):
                raise ValueError(
                    f"depth={self.depth} was given, but CoCoOp (variant='cocoop') learns its context at the input "
                    "only; leave depth unset (1)."
                )
            self.depth = 1
            if isinstance(self.prompt_init, str) and self.prompt_init.strip():
                words = len(self.prompt_init.replace("_", " ").split())
                if self.n_ctx not in (2, words):  # 2: the field's default, overridden by the word count
                    raise ValueError(
                        f"n_ctx={self.n_ctx} was given with prompt_init={self.prompt_init!r}, but CoCoOp takes n_ctx "
                        f"from prompt_init's word count ({words}); leave n_ctx unset, or pass prompt_init=None for a "
                        f"random context of n_ctx tokens."
                    )
                self.n_ctx = words
        elif self.depth is None:
            self.depth = 9

    @property
    def conditional(self) -> bool:
        """The text context depends on the image (CoCoOp): text features are computed per image."""
        return self.variant in CONDITIONAL_VARIANTS

    @property
    def num_rep_tokens(self) -> int:
        """Number of shared representation tokens (MMRL; 0 otherwise)."""
        return self.n_rep if self.variant in REPRESENTATION_VARIANTS else 0

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
