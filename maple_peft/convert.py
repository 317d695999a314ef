"""Import of the `model.pth.tar-N` checkpoints written by the original code of MaPLe, PromptSRC / IVLP, CoCoOp, KgCoOp
(and CoOp) and MMRL.

Which tensors each original code base saves, and where they go in an adapter, is its method's knowledge: the module of
each method in `maple_peft.methods` recognizes its files by their keys (`Method.read_checkpoint`) and builds the
adapter's config and weights from them. This module reads the files safely and asks the methods, in their
`checkpoint_priority` order.

The files also hold the frozen CLIP weights (PromptSRC a frozen zero-shot image encoder under
`prompt_learner.ZS_image_encoder.*`, MMRL its `prompt_embeddings`) and the prompt learners' `token_prefix` /
`token_suffix` buffers, which are ignored.

The files are written by Dassl's trainer: `{"state_dict", "epoch", "optimizer", "scheduler", "val_result"}`, where
`scheduler` is the state of a Dassl warm-up scheduler that holds pickled `torch.optim` objects (the cosine scheduler,
with the optimizer inside). They are read with PyTorch's restricted `weights_only` unpickler: tensors and plain
containers are materialised; every other object named in the file (Dassl's and `torch.optim`'s classes, or anything
else) is replaced by an inert stand-in that keeps what the file says and runs nothing, so neither `dassl` nor any code
of the file is needed or run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import methods
from .backbones import TEXT_EMBEDDING, backbone_for_config
from .config import MaPLeConfig
from .console import peft_deprecation_quieted
from .model import non_finite_keys

#: buffers of the original prompt learners, rebuilt from the class names: never imported
IGNORED_KEYS = ("token_prefix", "token_suffix")

#: modules whose functions PyTorch's restricted unpickler refuses outright: a checkpoint never needs them
_BLOCKED_MODULES = ("os", "posix", "nt", "sys")


class _InertObject:
    """Stands for an object of a checkpoint that is neither a tensor nor a plain container; nothing of it runs.

    `read_official_checkpoint` maps every class or function that a file names (beyond tensors and plain containers)
    to a subclass of this one, named after it: building or "calling" it only records the pickled arguments
    (`args`) and state (`state`).

    Args:
        *args: the arguments the file gives the object (kept as they are, never called).
    """

    pickled_name = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> _InertObject:
        obj = object.__new__(cls)
        obj.args = args
        obj.state = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.pickled_name}>"


def _plain_dict(*args: Any) -> dict:
    """`collections.defaultdict` (the optimizers' `state`) as a plain dict: its default factory is dropped."""
    return {}


def _stand_in(name: str) -> Any:
    if name == "collections.defaultdict":
        return _plain_dict
    return type(name.rpartition(".")[2] or name, (_InertObject,), {"pickled_name": name, "__module__": __name__})


def _stand_ins(path: str) -> list[tuple[Any, str]]:
    """An inert stand-in for every global the file names beyond PyTorch's own (read without unpickling anything).

    Raises:
        `ValueError` when the file names functions of `os`, `posix`, `nt` or `sys`.
    """
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - not a zip checkpoint: `torch.load` reports it
        return []
    blocked = sorted(name for name in names if name.split(".")[0] in _BLOCKED_MODULES)
    if blocked:
        raise ValueError(
            f"{path} refers to {', '.join(blocked)}, which a checkpoint never needs (such a file is usually crafted "
            "to run commands when it is loaded); nothing of it was run or loaded. Get the file again from a source "
            "you trust."
        )
    if names and torch.__version__ < "2.6":
        raise ValueError(
            f"{path} holds pickled objects ({', '.join(sorted(names))}) that PyTorch {torch.__version__} cannot "
            "replace by inert stand-ins; upgrade to torch>=2.6 to read it."
        )
    return [(_stand_in(name), name) for name in names]


@dataclass
class OfficialCheckpoint:
    """The adapter inside a checkpoint of the original code, converted to this library's tensors.

    Args:
        source (`str`): the code that wrote the file: `"MaPLe"`, `"PromptSRC/IVLP"`, `"CoCoOp"`, `"KgCoOp"`, `"CoOp"`
            or `"MMRL"`.
        variant (`str`): the `MaPLeConfig.variant` that computes the same model (`"maple"`, `"ivlp"`, `"cocoop"`,
            `"language"` for KgCoOp's and CoOp's model, `"mmrl"`).
        n_ctx (`int`): number of text context tokens (0 for a method that learns none).
        n_ctx_vision (`int`, *optional*): number of vision prompt tokens (IVLP; `None` otherwise).
        depth (`int`, *optional*): prompt depth (`None` for a method that places its tokens otherwise, as MMRL).
        state_dict (`dict[str, torch.Tensor]`): float32 tensors (the file's fp16 or fp32 values, exactly) keyed like
            a saved `adapter_model.safetensors`, or, for a method whose layers are not all in the file (MMRL's
            `rep_layers`), as the file keys them: `adapter_state_dict(config)` keys them for the adapter.
        options (`dict[str, Any]`): the method's options the file tells (MMRL: `n_rep`, `rep_dim`).
    """

    source: str
    variant: str
    n_ctx: int
    n_ctx_vision: int | None
    depth: int | None
    state_dict: dict[str, torch.Tensor]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> methods.Method:
        """The method of the adapter (`maple_peft.methods`)."""
        return methods.get(self.variant)

    def dims(self) -> dict[str, int]:
        """The widths of the CLIP the checkpoint was trained on, as far as its tensors tell: `d_text`, and `d_vision`
        and `embed_dim` (the width of the image embedding) when its tensors depend on them."""
        dims = self.method.checkpoint_dims(self)
        return dims if dims is not None else {"d_text": text_width(self)}

    def adapter_state_dict(self, config: MaPLeConfig, adapter_name: str = "default") -> dict[str, torch.Tensor]:
        """The tensors keyed like a saved `adapter_model.safetensors` of adapter `adapter_name` with `config`.

        Args:
            config (`MaPLeConfig`): the adapter's config (MMRL: its `rep_layers` place the file's projections).
            adapter_name (`str`): the adapter's name (the saved keys do not carry it).
        """
        return self.method.checkpoint_state_dict(self, config)


def text_width(converted: OfficialCheckpoint) -> int:
    """The width of the text context an imported checkpoint holds (that of the CLIP it was trained on)."""
    return converted.state_dict[f"base_model.model.{TEXT_EMBEDDING}.maple_ctx"].shape[1]


def checkpoint_tensor(learner: dict[str, Any], key: str, ndim: int, shown: str) -> torch.Tensor:
    """`learner[key]`, after checking it is a non-empty `ndim`-d float tensor (`shown`: its name in the file)."""
    if key not in learner:
        raise ValueError(f"The checkpoint is malformed: it has no {shown!r}.")
    value = learner[key]
    if not isinstance(value, torch.Tensor) or value.ndim != ndim or not value.is_floating_point():
        if isinstance(value, torch.Tensor):
            described = f"a {value.ndim}-d {value.dtype} tensor"
        elif isinstance(value, _InertObject):
            described = f"an object of {value.pickled_name} (not loaded)"
        else:
            described = type(value).__name__
        raise ValueError(f"The checkpoint is malformed: {shown!r} is {described}, expected a {ndim}-d float tensor.")
    if 0 in value.shape:
        raise ValueError(f"The checkpoint is malformed: {shown!r} is empty (shape {tuple(value.shape)}).")
    return value


def check_same_shape(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Refuse `tensors` (the file's `what`) of different shapes."""
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"The checkpoint is malformed: the {what} have different shapes: {shapes}.")


def check_numbered(keys: list[int], what: str, start: int) -> None:
    """Refuse numbered tensors (the file's `what`) that are not numbered `start, start + 1, ...`."""
    if keys != list(range(start, start + len(keys))):
        raise ValueError(
            f"The checkpoint is malformed: its {what} are numbered {keys}; expected {start} .. {start + len(keys) - 1}."
        )


def adapter_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors keyed by module path keyed like a saved `adapter_model.safetensors`, as contiguous float32."""
    return {f"base_model.model.{key}": value.float().contiguous() for key, value in state.items()}


def prompt_learner_tensors(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The prompt learner's tensors of a whole-model state dict, without their `prompt_learner.` prefix (MaPLe's file
    also holds them unprefixed); its `token_prefix` / `token_suffix` buffers left out."""
    learner: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key.removeprefix("prompt_learner.")
        if key.startswith("prompt_learner.") or "." not in key or key.startswith(("proj.", "compound_prompt")):
            if name not in IGNORED_KEYS:
                learner[name] = value
    return learner


def _by_priority() -> list[methods.Method]:
    return sorted(methods.registry().values(), key=lambda method: method.checkpoint_priority)


def prompt_learner_alone(state: dict[str, Any]) -> dict[str, Any] | None:
    """The prompt learner of a file that holds a prompt learner alone (CoOp, CoCoOp, KgCoOp save
    `prompt_learner/model.pth.tar-N`), keys without their `prompt_learner.` prefix: every key is one that such a
    method declares (`Method.learner_keys`) and one is not a buffer; `None` otherwise."""
    learner = {key.removeprefix("prompt_learner."): value for key, value in state.items()}
    known = set(IGNORED_KEYS).union(*(method.learner_keys for method in methods.registry().values()))
    if not set(learner) <= known or not set(learner) - set(IGNORED_KEYS):
        return None
    return learner


def read_official_checkpoint(checkpoint_path: str | os.PathLike) -> OfficialCheckpoint:
    """Read a `model.pth.tar-N` of the original MaPLe, PromptSRC / IVLP, CoCoOp, KgCoOp (or CoOp) or MMRL code and
    convert its trainable tensors.

    The file is read with `torch.load(..., weights_only=True)`, the objects that Dassl saves beside the weights
    (optimizer, scheduler) replaced by inert stand-ins: no pickled code runs, and `dassl` is not needed. A file that
    names `os`, `posix`, `nt` or `sys` functions is refused. The code that wrote it is recognized from its keys;
    nothing of the base model is needed (the widths are checked against it later).

    Args:
        checkpoint_path: path of the checkpoint file.

    Raises:
        `FileNotFoundError` (no such file), `IsADirectoryError` (a folder), `ValueError` (unreadable, not a checkpoint
        of the original code, or malformed), each with a one-line message.
    """
    path = os.fspath(checkpoint_path)
    if os.path.isdir(path):
        found = sorted(str(p) for p in Path(path).glob("**/model.pth.tar-*"))[:3]
        hint = f"; it contains {found}" if found else ""
        raise IsADirectoryError(
            f"{path} is a folder; pass the model.pth.tar-N file written by the original code{hint}."
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint file at {path!r}.")
    stand_ins = _stand_ins(path)
    try:
        with torch.serialization.safe_globals(stand_ins):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is reported the same way
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"{path} could not be read as a PyTorch checkpoint with weights_only=True: {first_line}"
        ) from error
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f"{path} holds a {type(checkpoint).__name__}, not a checkpoint of the original code (a dict with "
            "'state_dict')."
        )
    state = checkpoint.get("state_dict", checkpoint)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: 'state_dict' is a {type(state).__name__}, not a dict of tensors.")
    state = {str(key).removeprefix("module."): value for key, value in state.items()}
    try:
        found = next(
            (found for method in _by_priority() if (found := method.read_checkpoint(state)) is not None), None
        )
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    if found is None:
        sources = methods.checkpoint_sources()
        layouts = "; ".join(f"{name}: {keys}" for name, keys in sources)
        raise ValueError(
            f"{path} is not a checkpoint of the original {_list([name for name, _ in sources], 'or')} code: its "
            f"state_dict has none of their layouts ({layouts}); found keys such as {sorted(state)[:5]}."
        )
    non_finite = non_finite_keys(found.state_dict)
    if non_finite:
        raise ValueError(
            f"{path}: the trained tensors hold NaN or inf values ({', '.join(k.removeprefix('base_model.model.') for k in non_finite)}); "
            "the run that wrote them probably diverged. Use an earlier checkpoint of that run."
        )
    return found


def _list(parts: list[str], conjunction: str = "and") -> str:
    return ", ".join(parts[:-1]) + f" {conjunction} {parts[-1]}" if len(parts) > 1 else parts[0]


def _refuse_options_of_others(converted: OfficialCheckpoint, template: str | None, options: dict[str, Any]) -> None:
    """Options that the file's method does not take (those of other methods, `template` for a method with a learned
    context) are refused, naming the methods they belong to."""
    method = converted.method
    own = {field.name for field in methods.fields_of(method.options)}
    given = {name: value for name, value in options.items() if value is not None and name not in own}
    owners = {owner.title for name in given for owner in methods.owners(name)}
    if template is not None and (method.text_prompts or method.vision_prompts):
        given = {**given, "template": template}
        owners |= {m.title for m in methods.variants().values() if not (m.text_prompts or m.vision_prompts)}
    if given:
        shown = ", ".join(f"{name}={value!r}" for name, value in given.items())
        raise ValueError(
            f"{shown} given, but these options belong to {' and '.join(sorted(owners)) or 'other'} checkpoints, and "
            f"this is a {converted.source} checkpoint (variant={converted.variant!r}); leave them unset."
        )


def _config(converted: OfficialCheckpoint, clip_config: Any, **arguments: Any) -> MaPLeConfig:
    """The adapter config of an imported checkpoint: its method's, or one with the file's prompt shape."""
    config = converted.method.checkpoint_config(converted, clip_config, **arguments)
    if config is not None:
        return config
    options = {name: value for name, value in (arguments.get("options") or {}).items() if value is not None}
    extra = {name: value for name, value in arguments.items() if name in ("class_names", "dataset")}
    return MaPLeConfig(
        n_ctx=converted.n_ctx,
        n_ctx_vision=converted.n_ctx_vision,
        depth=converted.depth,
        variant=converted.variant,
        prompt_init=converted.method.checkpoint_prompt_init(converted, arguments.get("prompt_init")),
        tokenizer_name_or_path=arguments.get("tokenizer_name_or_path"),
        **options,
        **extra,
    )


def check_official_checkpoint_fits(
    converted: OfficialCheckpoint, clip_config: Any, template: str | None = None, **options: Any
) -> None:
    """Refuse a checkpoint trained on another CLIP (widths or depth), naming both, or options that do not fit it.

    Args:
        converted (`OfficialCheckpoint`): from `read_official_checkpoint`.
        clip_config (`CLIPConfig`): the base model's config (`CLIPConfig.from_pretrained(...)` is enough).
        template (`str`, *optional*): the class prompt template, for methods without a learned context (MMRL).
        **options: options of the file's method that the file does not hold (MMRL's `rep_layers`, `alpha`; see
            `from_official_checkpoint`); options of other methods are refused.
    """
    _refuse_options_of_others(converted, template, options)
    backbone = backbone_for_config(clip_config)
    d_text, d_vision = backbone.widths(clip_config)
    base = {"d_text": d_text, "d_vision": d_vision, "embed_dim": backbone.embed_dim(clip_config)}
    dims = converted.dims()
    if any(base[name] != value for name, value in dims.items()):
        labels = {"d_text": "text", "d_vision": "vision", "embed_dim": "image embedding"}
        got = _list([f"{value}-wide ({labels[name]})" for name, value in dims.items()])
        has = ", ".join(f"{name}={base[name]}" for name in dims)
        raise ValueError(
            f"The checkpoint's tensors are {got}, but the base model has {has}; pass the CLIP the checkpoint was "
            "trained on."
        )
    layers = min(clip_config.text_config.num_hidden_layers, clip_config.vision_config.num_hidden_layers)
    if converted.depth is not None and converted.depth > layers:
        raise ValueError(
            f"The checkpoint has prompts in {converted.depth} layers, but the base model's towers have {layers}; "
            "pass the CLIP the checkpoint was trained on."
        )
    _config(converted, clip_config, template=template, options=options)


def _check_shapes(model: nn.Module, state: dict[str, torch.Tensor], adapter_name: str) -> None:
    """Refuse tensors whose shapes differ from the new adapter's (e.g. a CoCoOp meta-net of another hidden width)."""
    from peft import get_peft_model_state_dict

    expected = get_peft_model_state_dict(model, adapter_name=adapter_name)
    for key, value in state.items():
        if key in expected and expected[key].shape != value.shape:
            raise ValueError(
                f"The checkpoint's {key.removeprefix('base_model.model.')} is {tuple(value.shape)}, but the adapter "
                f"on this base model needs {tuple(expected[key].shape)}; pass the CLIP the checkpoint was trained on."
            )


def peft_model_from_official(
    base_model: nn.Module,
    converted: OfficialCheckpoint,
    prompt_init: str | None = "a photo of a",
    tokenizer_name_or_path: str | None = None,
    adapter_name: str = "default",
    class_names: list[str] | None = None,
    template: str | None = None,
    dataset: str | None = None,
    **options: Any,
):
    """The `PeftModel` of an `OfficialCheckpoint` (see `from_official_checkpoint` for the arguments)."""
    from peft import get_peft_model, set_peft_model_state_dict

    check_official_checkpoint_fits(converted, base_model.config, template, **options)
    extra: dict[str, Any] = {"class_names": list(class_names)} if class_names is not None else {}
    if dataset is not None:
        extra["dataset"] = dataset
    config = _config(
        converted,
        base_model.config,
        prompt_init=prompt_init,
        tokenizer_name_or_path=tokenizer_name_or_path,
        template=template,
        options=options,
        **extra,
    )
    with peft_deprecation_quieted():
        model = get_peft_model(base_model, config, adapter_name=adapter_name)
    state = converted.adapter_state_dict(config, adapter_name)
    _check_shapes(model, state, adapter_name)
    result = set_peft_model_state_dict(model, state, adapter_name=adapter_name)
    missing = [k for k in result.missing_keys if ".maple_" in k]
    if missing:
        raise ValueError(f"The checkpoint did not fill these adapter tensors: {missing}.")
    return model


def from_official_checkpoint(
    base_model: nn.Module,
    checkpoint_path: str | os.PathLike,
    prompt_init: str | None = "a photo of a",
    tokenizer_name_or_path: str | None = None,
    adapter_name: str = "default",
    class_names: list[str] | None = None,
    template: str | None = None,
    dataset: str | None = None,
    **options: Any,
):
    """Load a checkpoint saved by the original MaPLe, PromptSRC / IVLP, CoCoOp, KgCoOp (or CoOp) or MMRL code as a
    `PeftModel` with the same logits.

    The file (`MultiModalPromptLearner/model.pth.tar-N` for MaPLe, `VLPromptLearner/model.pth.tar-N` for PromptSRC
    and IVLP, `prompt_learner/model.pth.tar-N` for CoCoOp, KgCoOp and CoOp, `MultiModalRepresentationLearner/
    model.pth.tar-N` for MMRL) is read with `torch.load(..., weights_only=True)`, so no arbitrary pickle runs, and
    checked before the adapter is built. The code that wrote it is recognized from its keys: MaPLe gives
    `variant="maple"`, PromptSRC / IVLP `variant="ivlp"`, CoCoOp `variant="cocoop"`, KgCoOp and CoOp
    `variant="language"` with `depth=1` (CoOp, KgCoOp's model; KgCoOp's unused `bias_vectors` and `meta_net.linear1`
    are ignored), MMRL `variant="mmrl"`. `n_ctx`, `n_ctx_vision`, `depth`, `n_rep` and `rep_dim` are inferred from the
    tensors. The tensors (fp16 or fp32 in the file) are kept exactly, as float32 adapter weights, and cast to the base
    model's dtype where they enter it, like those of any adapter: the model computes in the base model's dtype and
    adds no rounding, so with a float32 base the logits and gradients equal the original's math in float32. The
    optimizer and scheduler state that Dassl saves beside the weights are never run (see `read_official_checkpoint`).
    The frozen CLIP weights, PromptSRC's zero-shot image encoder, MMRL's `prompt_embeddings` and the
    `token_prefix`/`token_suffix` buffers in the file are ignored.

    Args:
        base_model (`CLIPModel`): the CLIP the checkpoint was trained on (e.g. `openai/clip-vit-base-patch16`).
        checkpoint_path: path of the checkpoint.
        prompt_init (`str`, *optional*): the `ctx_init` the model was trained with (the prompts are
            `f"{prompt_init} {class_name}."`); `"a photo of a"` in all of the papers' configs (KgCoOp's code uses it
            whatever its config says). Like the original code, it is not used when the checkpoint's number of context
            tokens does not match it: beyond 4 tokens for MaPLe and PromptSRC / IVLP, another word count for CoCoOp,
            KgCoOp and CoOp (the prompts are then `"X X ... X {class_name}."`). Not used by MMRL (see `template`).
        tokenizer_name_or_path (`str`, *optional*): the tokenizer for `prompt_init` (defaults to the base model's).
        adapter_name (`str`): the name of the adapter.
        class_names (`list[str]`, *optional*): the class names the checkpoint was trained on, stored in the adapter
            config (`MaPLeConfig.class_names`). For MMRL they decide its test-time rule: the fused logits on these
            classes, the class-token logits on others (`PromptClassifier(rep_logits="auto")`).
        template (`str`, *optional*): MMRL: the class prompt template it was trained with (its per-dataset
            `CUSTOM_TEMPLATES`, e.g. `"{} texture."` for DTD); defaults to `"a photo of a {}."`.
        **options: the options of the file's method that the file does not hold (refused for other methods):
        rep_layers (`list[int]`, *optional*): MMRL: its `REP_LAYERS` (1-based), which the file does not hold; defaults
            to the last k text layers, k the number of projections per tower in the file (6 .. 12 on ViT-B/16 for a
            file of 7, as all of MMRL's configs). A given list must have k layers.
        alpha (`float`, *optional*): MMRL: its `ALPHA`, the weight of the class-token logits in the fused logits,
            which the file does not hold; defaults to 0.7 (all of MMRL's configs).
        dataset (`str`, *optional*): the dataset the checkpoint was trained on, stored in the adapter config (MMRL's
            test-time rule then also fuses only on that dataset, e.g. not on ImageNet's shifted variants).

    Example:

        ```py
        >>> clip = CLIPModel.from_pretrained("openai/clip-vit-base-patch16")
        >>> model = maple_peft.from_official_checkpoint(clip, "output/imagenet/MaPLe/seed1/MultiModalPromptLearner/model.pth.tar-2")
        >>> model.save_pretrained("maple-imagenet")
        >>> mmrl = maple_peft.from_official_checkpoint(
        ...     clip, "output/dtd/MMRL/seed1/MultiModalRepresentationLearner/model.pth.tar-10",
        ...     class_names=dtd_base_classes, template="{} texture.", dataset="dtd",
        ... )
        ```
    """
    converted = read_official_checkpoint(checkpoint_path)
    return peft_model_from_official(
        base_model,
        converted,
        prompt_init=prompt_init,
        tokenizer_name_or_path=tokenizer_name_or_path,
        adapter_name=adapter_name,
        class_names=class_names,
        template=template,
        dataset=dataset,
        **options,
    )
