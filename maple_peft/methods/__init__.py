"""The prompt methods, one module each, and the registry that the engine asks instead of naming a method.

A method module (`maple_peft/methods/<name>.py`) holds what is that method's and registers it when imported; every
module of this package is imported by `registry()`, so adding a method is adding a module. A method module imports no
torch when imported (the command line reads the options before torch is loaded); its hooks import what they need.
A method with tensors and computations of its own (layers, logits, a loss) is a package, as transformers keeps a
model's configuration apart from its modeling code: `<name>/__init__.py` declares and registers the method (no
torch), `<name>/modeling.py` holds its `nn.Module`s and functions (e.g. `maple_peft/methods/mmrl/`), and hooks reach
them through `Method.submodule("modeling")`, so that a method that subclasses another (MMRL++ of MMRL) inherits its
hooks and brings its own modules.

What a method module declares, as class attributes of a `Method` subclass passed to `register`:

- `name`: the registry key; for a method that shapes the adapter, the `MaPLeConfig.variant` saved in
  `adapter_config.json` (`"mmrl"`); for a method that is a training objective only, its `--objective` (`"kgcoop"`).
- `title`, `paper`, `citation`, `description`: how cards and tables name and describe it.
- `recipes`: the stems of its recipes in `examples/configs/`.
- `options`: a dataclass of the adapter options it owns, one field each, with its default, type and
  `metadata={"help": ...}` (and `"title"` for cards; `"checkpoint_help"` for an option that the original code's
  files do not hold, which `maple-peft convert-official` then takes as a flag; `"test_time": True` for an option
  the method reads at each forward pass, which `maple_peft.test_time_options` may change for an evaluation;
  `"dataset_template": True` for a template option that the training script sets to the dataset's template when it
  is not given). `MaPLeConfig` gets one field per
  option (unset: `None`), the training script one flag, and `adapter_config.json` holds the options of the adapter's
  own method only. A name two methods declare (MMRL++ and MMRL's `n_rep`) is one field and one flag.
- `objective` and `objective_options`: the `--objective` it defines (a training loss) and that loss's options,
  declared like `options` (the training script's flags and the card rows read them).
- `default_objective`: the objective a run of this variant trains with when none is named (`"ce"`); a variant whose
  default is another method's objective may train with it (MMRL++ with MMRL's loss), other variants may not.
- The prompt structure the shared deep-prompt engine builds for it: `text_prompts`, `vision_prompts`, `coupling`
  (`None`, `"per_depth"` or `"shared"`), `conditional`, `default_depth`.

and these hooks; where a hook returns `None` (or `False`), the engine does its default, deep prompts (a method that
builds something else overrides them). This module imports nothing of the engine, so that the engine can ask it:

- `resolve(config)`: fill the defaults that depend on the method and check its options (no model, no torch);
- `prepare(model, config)`: fill what needs the base model (e.g. MMRL's `rep_layers`);
- `target_modules(model, config)`, `create_layer(tuner, config, adapter_name, target, target_name, parent,
  key)`, `link(tuner, adapter_name)`: the layers it wraps, how, and how they share tensors;
- `text_offset(config)`: tokens it inserts into the text sequences besides the prompts (the pooled token moves);
- `outputs(classifier, inputs, config, **extra)`: its logits and features, or `None` for the classifier's own;
- `objective_class()`: its training loss (an `maple_peft.objectives.PromptObjective` subclass);
- `read_checkpoint(state)`, `checkpoint_dims`, `checkpoint_config`, `checkpoint_state_dict`: the import of the
  original code's checkpoints (`maple_peft.convert` reads the file and asks the methods in `checkpoint_priority`
  order);
- `card_rows(peft_config)`: the rows of its options in a card's table; `display_title(peft_config)` and `papers()`:
  its names (CoOp is deep language prompting at depth 1) and their papers.

A method that is a training objective only (KgCoOp, PromptSRC: `is_variant = False`) also sets `own_model` (the
name of the adapter it trains in its paper: `"CoOp"`, `"IVLP"`), `suffix` (`"<model> + SRC"` for another adapter) and
`trained_with` (the card's words for it, with `{paper}`).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = [
    "Method",
    "field_default",
    "fields_of",
    "flag_type",
    "get",
    "objective_names",
    "objectives",
    "option_fields",
    "register",
    "registry",
    "variants",
]

_REGISTRY: dict[str, Method] = {}
_LOADED = False


class Method:
    """A prompt method: what the engine needs to know about it (see the module docstring). Subclass it in a module of
    `maple_peft.methods` and `register` an instance."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    description: ClassVar[str] = ""
    recipes: ClassVar[tuple[str, ...]] = ()
    #: Is `name` a value of `MaPLeConfig.variant` (the method shapes the adapter)?
    is_variant: ClassVar[bool] = True
    options: ClassVar[type | None] = None
    objective: ClassVar[str | None] = None
    objective_options: ClassVar[type | None] = None
    default_objective: ClassVar[str] = "ce"
    text_prompts: ClassVar[bool] = False
    vision_prompts: ClassVar[bool] = False
    coupling: ClassVar[str | None] = None
    conditional: ClassVar[bool] = False
    default_depth: ClassVar[int | None] = 9
    #: The order in which `maple_peft.convert` asks the methods whether a file is theirs (lower first).
    checkpoint_priority: ClassVar[int] = 100
    #: For a method that imports the original code's files: (that code's name, the keys that tell its files), which
    #: the command line's help and the refusal of an unknown file list.
    checkpoint_files: ClassVar[tuple[str, str] | None] = None
    #: The keys a file holding the method's prompt learner alone may hold (CoOp, CoCoOp, KgCoOp).
    learner_keys: ClassVar[frozenset[str]] = frozenset()
    #: The original code uses its `ctx_init` only up to this many context tokens (MaPLe, PromptSRC); None: any.
    ctx_init_max_tokens: ClassVar[int | None] = None

    # ---- the adapter's configuration ------------------------------------------------------------------------------

    def resolve(self, config: Any) -> None:
        """Fill the method's defaults in `config` (a `MaPLeConfig`) and check its options; raise `ValueError` or
        `TypeError` naming a bad value. The default: the depth of deep prompts."""
        if self.default_depth is not None and config.depth is None:
            config.depth = self.default_depth

    def prepare(self, model: Any, config: Any) -> None:
        """Fill the options of `config` that need the base model `model`, when the adapter is created."""

    def num_text_tokens(self, config: Any) -> int:
        """Learnable text context tokens of an adapter."""
        return config.n_ctx if self.text_prompts else 0

    def num_vision_tokens(self, config: Any) -> int:
        """Vision prompt tokens of an adapter."""
        if not self.vision_prompts:
            return 0
        return config.n_ctx_vision if config.n_ctx_vision is not None else config.n_ctx

    def text_offset(self, config: Any) -> int:
        """Tokens the method inserts into the text sequences besides its prompts (they move the pooled token, and
        the shared-prefix encoding does not apply)."""
        return 0

    # ---- the layers -----------------------------------------------------------------------------------------------

    def target_modules(self, model: Any, config: Any) -> list[str] | None:
        """The names of the modules of `model` the adapter wraps; `None`: the engine's deep prompts (the embeddings
        and the first `depth` layers of the towers with prompts)."""
        return None

    def create_layer(
        self, tuner: Any, config: Any, adapter_name: str, target: Any, target_name: str, parent: Any, key: str
    ) -> bool:
        """Wrap (or update) `target`, the module `key` of the model, for adapter `adapter_name`; `True` when done,
        `False` to let the engine wrap it with its deep-prompt layers."""
        return False

    def link(self, tuner: Any, adapter_name: str) -> bool:
        """After injection: connect the layers of `adapter_name` that share tensors; `True` when done, `False` to let
        the engine link deep prompts (MaPLe's couplings)."""
        return False

    # ---- logits and loss ------------------------------------------------------------------------------------------

    def outputs(self, classifier: Any, inputs: Any, config: Any, **extra: Any) -> Any:
        """The classifier's `ClassifierOutput` for image `inputs`, or `None` to let the classifier compute it."""
        return None

    def objective_class(self) -> type:
        """The training loss this method defines (`objective`)."""
        raise NotImplementedError(f"{self.title} defines no training objective.")

    # ---- the original code's checkpoints (`maple_peft.convert`) ----------------------------------------------------

    def read_checkpoint(self, state: dict[str, Any]) -> Any:
        """The `OfficialCheckpoint` in the state dict of a file of the method's original code (recognized by its
        keys; `ValueError` when it is malformed), or `None` when the file is not one of its."""
        return None

    def checkpoint_dims(self, converted: Any) -> dict[str, int] | None:
        """The widths of the CLIP an imported checkpoint was trained on, as its tensors tell (`d_text`, `d_vision`,
        `embed_dim`); `None`: the width of its text context."""
        return None

    def checkpoint_prompt_init(self, converted: Any, prompt_init: str | None) -> str | None:
        """The `prompt_init` that gives the original's class prompts, or `None` for its placeholder `"X X ... X"`: by
        default (CoOp, CoCoOp, KgCoOp) the original takes `n_ctx` from `ctx_init`'s word count when it is set;
        `ctx_init_max_tokens` (MaPLe, PromptSRC) uses `ctx_init` only up to that many context tokens."""
        if prompt_init is None:
            return None
        if self.ctx_init_max_tokens is not None:
            return prompt_init if converted.n_ctx <= self.ctx_init_max_tokens else None
        return prompt_init if len(prompt_init.replace("_", " ").split()) == converted.n_ctx else None

    def checkpoint_config(
        self,
        converted: Any,
        clip_config: Any,
        *,
        prompt_init: str | None = None,
        tokenizer_name_or_path: str | None = None,
        template: str | None = None,
        options: Mapping[str, Any] | None = None,
        **extra: Any,
    ) -> Any:
        """The `MaPLeConfig` of an imported checkpoint on a base model of config `clip_config` (`options`: the
        method's options the file does not hold; `extra`: `class_names`, `dataset`), checked against both; `None`:
        the engine's, from the file's prompt shape and `checkpoint_prompt_init`."""
        return None

    def checkpoint_state_dict(self, converted: Any, config: Any) -> dict[str, Any]:
        """The imported tensors keyed like a saved `adapter_model.safetensors` of an adapter with `config`."""
        return dict(converted.state_dict)

    # ---- cards ----------------------------------------------------------------------------------------------------

    def card_rows(self, peft_config: Mapping[str, Any]) -> list[tuple[str, Any]]:
        """Rows `(title, value)` of its adapter options for a card's table (unset options left out)."""
        return [
            (field.metadata.get("title", field.name), peft_config[field.name])
            for field in fields_of(self.options)
            if peft_config.get(field.name) is not None
        ]

    def display_title(self, peft_config: Mapping[str, Any]) -> str:
        """The name an adapter of this method goes by (CoOp is deep language prompting at depth 1)."""
        return self.title

    def papers(self) -> dict[str, tuple[str, str]]:
        """Each name of `display_title` -> (markdown description linking its paper, BibTeX entry)."""
        return {self.title: (self.paper, self.citation)}

    # ---- the method's own modules ----------------------------------------------------------------------------------

    def submodule(self, name: str) -> Any:
        """The module `name` (`"modeling"`, `"convert"`) of the package that defines this method's class, imported on
        first use: hooks that ask for it serve a subclass defined in another package (MMRL++ from MMRL's) too."""
        return importlib.import_module(f"{type(self).__module__}.{name}")

    def __repr__(self) -> str:
        return f"<method {self.name!r}: {self.title}>"


def register(method: Method) -> Method:
    """Add `method` to the registry (a module of this package calls it when imported)."""
    if method.name in _REGISTRY and type(_REGISTRY[method.name]) is not type(method):
        raise ValueError(f"Two methods are named {method.name!r}: {_REGISTRY[method.name]!r} and {method!r}.")
    _REGISTRY[method.name] = method
    return method


def registry() -> dict[str, Method]:
    """Every registered method by name, after importing every module of this package."""
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for module in pkgutil.iter_modules(__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{__name__}.{module.name}")
    return _REGISTRY


def variants() -> dict[str, Method]:
    """The methods that shape an adapter, by `MaPLeConfig.variant`."""
    return {name: method for name, method in registry().items() if method.is_variant}


def get(variant: str) -> Method:
    """The method of `MaPLeConfig.variant` `variant`; `ValueError` naming the known ones otherwise."""
    method = _REGISTRY.get(variant) if _LOADED else None
    if method is not None and method.is_variant:
        return method
    known = variants()
    if variant not in known:
        raise ValueError(f"variant={variant!r} is not known; use one of {tuple(known)}.")
    return known[variant]


def objectives() -> dict[str, Method]:
    """The methods that define a training objective, by objective name (`--objective`)."""
    return {method.objective: method for method in registry().values() if method.objective}


def objective_names() -> tuple[str, ...]:
    """Every objective: plain cross-entropy (`"ce"`) and the methods' ones."""
    return ("ce", *objectives())


def fields_of(options: type | None) -> tuple[dataclasses.Field, ...]:
    """The fields of an options dataclass (none for `None`)."""
    return dataclasses.fields(options) if options is not None else ()


def option_fields(kind: str = "options") -> dict[str, tuple[dataclasses.Field, list[Method]]]:
    """Every option the methods declare (`kind`: `"options"` of adapters or `"objective_options"`), by name: its
    first declaration and the methods that declare it (a name declared twice must mean the same)."""
    found: dict[str, tuple[dataclasses.Field, list[Method]]] = {}
    for method in registry().values():
        for field in fields_of(getattr(method, kind)):
            if field.name in found:
                found[field.name][1].append(method)
            else:
                found[field.name] = (field, [method])
    return found


def field_default(field: dataclasses.Field) -> Any:
    """The default a dataclass field declares (`None` when it has none)."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def flag_type(field: dataclasses.Field) -> tuple[type, str | None]:
    """The command-line form of an option: `(type of one value, nargs)`; `list[int]` gives `(int, "*")`."""
    annotation = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    parts = [part.strip() for part in str(annotation).split("|") if part.strip() != "None"]
    text = parts[0] if parts else "str"
    if text.startswith("list[") and text.endswith("]"):
        return _TYPES.get(text[5:-1], str), "*"
    return _TYPES.get(text, str), None


def checkpoint_options() -> dict[str, tuple[dataclasses.Field, list[Method]]]:
    """The adapter options that the original code's checkpoints do not hold (`metadata["checkpoint_help"]`): the
    import takes them from its caller."""
    return {name: entry for name, entry in option_fields().items() if "checkpoint_help" in entry[0].metadata}


def checkpoint_sources() -> list[tuple[str, str]]:
    """(code name, the keys that tell its files) of every original code whose checkpoints `maple_peft.convert`
    imports, in the order it asks the methods."""
    ordered = sorted(registry().values(), key=lambda method: method.checkpoint_priority)
    return list(dict.fromkeys(method.checkpoint_files for method in ordered if method.checkpoint_files))


def owners(name: str, kind: str = "options") -> list[Method]:
    """The methods that declare option `name`."""
    entry = option_fields(kind).get(name)
    return list(entry[1]) if entry else []
