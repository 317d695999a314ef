"""The wrapper layers that carry the prompts, one class per place they enter a CLIP-family dual encoder.

Each wrapper sits on one module of the model at one prompt depth `i` (the module paths come from the backbone's
description, `maple_peft.backbones`):

* `MaPLeTextPromptLayer` wraps `token_embedding` (depth 0: its output gets the context at positions
  `start .. start + n_ctx - 1`, right after the tokenizer's leading special tokens, before the position embeddings are
  added) or text encoder layer `i > 0` (its input gets `P_i` at those positions).
* `MaPLeVisionPromptLayer` wraps the vision embeddings (depth 0: `n_ctx` prompt tokens are appended after the
  embedded image tokens, i.e. after `[CLS, patches]` + position embeddings and before `pre_layrnorm` for CLIP, after
  the patches for SigLIP) or vision encoder layer `i > 0` (the last `n_ctx` tokens of its input are replaced). Its
  prompts are either its own parameters (IVLP, VPT) or the projection of the text prompt of the same depth by a
  coupling `Linear(d_text, d_vision)` (MaPLe).
* `MaPLeVisionHeadLayer` wraps SigLIP's attention-pooling head when the head must not see the prompts
  (`MaPLeConfig.vision_pool_prompts=False`): it removes them (and their mask entries) before the head.

`extend_pixel_attention_mask` is the forward pre-hook that SigLIP 2's vision tower needs: its attention mask covers
the patches, so the appended prompt tokens get mask entries of 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

MERGE_ERROR = (
    "MaPLe adds prompt tokens to the sequences that CLIP's encoders process; there is no weight update that could be "
    "merged into the base model. Keep the PeftModel for inference, or call `unload()` to get the untouched CLIP back."
)


def replace_text_prompt(hidden_states: torch.Tensor, prompt: torch.Tensor, start: int = 1) -> torch.Tensor:
    """`hidden_states` with positions `start .. start + n_ctx - 1` (right after the leading special tokens) set to
    `prompt`.

    Args:
        hidden_states (`torch.Tensor`): `(batch, seq, d)` text token embeddings or hidden states.
        prompt (`torch.Tensor`): `(n_ctx, d)` the prompt of one depth, or `(batch, n_ctx, d)` one prompt per row;
            cast to the dtype of `hidden_states`.
        start (`int`): the first prompt position (1 after CLIP's start token, 0 for SigLIP's tokenizer).
    """
    n_ctx = prompt.shape[-2]
    prompt = prompt.to(hidden_states.dtype)
    if prompt.ndim == 2:
        prompt = prompt.unsqueeze(0)
    prompt = prompt.expand(hidden_states.shape[0], -1, -1)
    return torch.cat([hidden_states[:, :start], prompt, hidden_states[:, start + n_ctx :]], dim=1)


def append_prompt(hidden_states: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """`hidden_states` `(batch, seq, d)` followed by the `(n_ctx, d)` prompt (the same for every row)."""
    prompt = prompt.to(hidden_states.dtype).unsqueeze(0).expand(hidden_states.shape[0], -1, -1)
    return torch.cat([hidden_states, prompt], dim=1)


def unwrap(module: nn.Module | None) -> nn.Module | None:
    """The CLIP module under a MaPLe wrapper, or `module` itself when it is not wrapped.

    Args:
        module (`nn.Module`, *optional*): a CLIP module, wrapped by a `MaPLeLayer` or not.
    """
    return module.get_base_layer() if isinstance(module, MaPLeLayer) else module


class MaPLeLayer(nn.Module, BaseTunerLayer):
    """Common part of the MaPLe wrappers: adapter bookkeeping and the refusal to merge.

    Args:
        base_layer (`nn.Module`): the wrapped CLIP module.
        adapter_name (`str`): the first adapter.
        depth (`int`): the prompt depth of the wrapped module (0 for the embeddings).
    """

    adapter_layer_names: tuple[str, ...] = ()
    # plain dicts keyed by adapter name: number of prompt tokens, and (vision) where the prompt comes from
    other_param_names: tuple[str, ...] = ("maple_n_ctx",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, depth: int) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.depth = depth
        self.maple_n_ctx: dict[str, int] = {}
        self._active_adapter = adapter_name
        self.merged_adapters: list[str] = []

    def _base_device_dtype(self) -> tuple[torch.device, torch.dtype]:
        param = next(self.get_base_layer().parameters())
        return param.device, param.dtype

    def prompt_adapter(self) -> str | None:
        """The adapter whose prompts this layer inserts now, or None (adapters disabled or none active here)."""
        if self.disable_adapters:
            return None
        names = [name for name in self.active_adapters if name in self.maple_n_ctx]
        if len(names) > 1:
            raise ValueError(
                f"{len(names)} MaPLe adapters are active ({names}), but prompts of several adapters cannot be used "
                "at once; activate one with `model.set_adapter(name)`."
            )
        return names[0] if names else None

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        raise ValueError(MERGE_ERROR)

    def unmerge(self) -> None:
        # nothing can be merged, so there is nothing to unmerge
        return None

    def extra_repr(self) -> str:
        return f"depth={self.depth}, n_ctx={self.maple_n_ctx}"


class MaPLeTextPromptLayer(MaPLeLayer):
    """Text prompts of one depth: `maple_ctx[adapter]` has shape `(n_ctx, d_text)`.

    Args:
        base_layer (`nn.Module`): `token_embedding` (depth 0) or a text encoder layer (depth > 0).
        adapter_name (`str`): the first adapter.
        depth (`int`): prompt depth.
        init (`torch.Tensor`): initial value of the prompt, shape `(n_ctx, d_text)`.
    """

    adapter_layer_names = ("maple_ctx", "maple_meta_linear1", "maple_meta_linear2")
    other_param_names = ("maple_n_ctx", "maple_prompt_start")

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        depth: int,
        init: torch.Tensor,
        start: int = 1,
        meta_net: tuple[nn.Linear, nn.Linear] | None = None,
    ) -> None:
        super().__init__(base_layer, adapter_name, depth)
        self.maple_ctx = nn.ParameterDict()
        # CoCoOp's meta-net, `linear2(relu(linear1(f)))`: one ModuleDict per Linear, so that the saved keys carry no
        # adapter name (an adapter loads under any name)
        self.maple_meta_linear1 = nn.ModuleDict()
        self.maple_meta_linear2 = nn.ModuleDict()
        self.maple_prompt_start: dict[str, int] = {}
        # CoCoOp: the per-image shift of the context while the class-text encoder encodes for a batch of images
        self.maple_condition: torch.Tensor | None = None
        self.update_layer(adapter_name, init, start, meta_net)

    def update_layer(
        self,
        adapter_name: str,
        init: torch.Tensor,
        start: int = 1,
        meta_net: tuple[nn.Linear, nn.Linear] | None = None,
    ) -> None:
        """Add (or replace) the prompt of `adapter_name`.

        Args:
            adapter_name (`str`): the adapter.
            init (`torch.Tensor`): `(n_ctx, d_text)` its initial value, stored on the base layer's device and dtype.
            start (`int`): the position of its first token (`MaPLeConfig.text_prompt_start`).
            meta_net (`tuple[nn.Linear, nn.Linear]`, *optional*): CoCoOp's meta-net `(linear1, linear2)`, image
                features → context shift (depth 0).
        """
        device, dtype = self._base_device_dtype()
        self.maple_ctx[adapter_name] = nn.Parameter(init.detach().clone().to(device=device, dtype=dtype))
        if meta_net is not None:
            for container, linear in zip((self.maple_meta_linear1, self.maple_meta_linear2), meta_net):
                if linear.weight.device.type != "meta":  # meta when loading with low_cpu_mem_usage=True
                    linear = linear.to(device=device, dtype=dtype)
                container[adapter_name] = linear
        self.maple_n_ctx[adapter_name] = init.shape[0]
        self.maple_prompt_start[adapter_name] = start
        self.set_adapter(self.active_adapters)

    def prompt(self, adapter_name: str) -> torch.Tensor:
        """The `(n_ctx, d_text)` prompt of `adapter_name` at this depth."""
        return self.maple_ctx[adapter_name]

    def has_meta_net(self, adapter_name: str) -> bool:
        """Whether `adapter_name` shifts its context per image (CoCoOp)."""
        return adapter_name in self.maple_meta_linear1

    def meta_shift(self, adapter_name: str, image_features: torch.Tensor) -> torch.Tensor:
        """CoCoOp's shift of the context for each image, `linear2(relu(linear1(f)))`, `(n_images, d_text)`.

        Args:
            adapter_name (`str`): the adapter.
            image_features (`torch.Tensor`): `(n_images, embed_dim)` normalized image features.
        """
        linear1, linear2 = self.maple_meta_linear1[adapter_name], self.maple_meta_linear2[adapter_name]
        return linear2(torch.relu(linear1(image_features.to(linear1.weight.dtype))))

    def rows_prompt(self, adapter_name: str, rows: int) -> torch.Tensor:
        """The prompt written into `rows` sequences: `(n_ctx, d_text)`, or with a CoCoOp condition `(rows, n_ctx,
        d_text)`: `ctx + shift_i` for the rows of image `i` (the rows are image-major, `rows // n_images` each)."""
        prompt = self.maple_ctx[adapter_name]
        shift = self.maple_condition
        if shift is None:
            return prompt
        if rows % shift.shape[0]:
            raise RuntimeError(
                f"{rows} text sequences cannot be split among the {shift.shape[0]} images of the condition; encode "
                "the class prompts through maple_peft.ClassTextEncoder."
            )
        shifted = prompt.unsqueeze(0) + shift.to(prompt.dtype).unsqueeze(1)
        return shifted.repeat_interleave(rows // shift.shape[0], dim=0)

    def _insert(self, hidden_states: torch.Tensor, adapter_name: str) -> torch.Tensor:
        prompt = self.rows_prompt(adapter_name, hidden_states.shape[0])
        start = self.maple_prompt_start[adapter_name]
        n_ctx = prompt.shape[-2]
        if hidden_states.shape[1] < start + n_ctx + 1:
            raise ValueError(
                f"The text sequence has {hidden_states.shape[1]} tokens, too short for {n_ctx} prompt tokens at "
                f"positions {start}..{start + n_ctx - 1} and the class name; tokenize the prompts made by "
                "maple_peft.format_prompts."
            )
        return replace_text_prompt(hidden_states, prompt, start)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter_name = self.prompt_adapter()
        if adapter_name is None:
            return self.base_layer(x, *args, **kwargs)
        if self.depth == 0:
            # token embeddings come out of the wrapped embedding; position embeddings are added after this
            return self._insert(self.base_layer(x, *args, **kwargs), adapter_name)
        return self.base_layer(self._insert(x, adapter_name), *args, **kwargs)

    def __repr__(self) -> str:
        return "maple." + super().__repr__()


class MaPLeVisionPromptLayer(MaPLeLayer):
    """Vision prompts of one depth.

    The prompt of an adapter is `maple_vision_ctx[adapter]` (free parameters, shape `(n_ctx, d_vision)`) or
    `coupling(text_prompt)`, where the coupling `Linear(d_text, d_vision)` lives in `maple_coupling[adapter]` of this
    layer (or of the depth-0 vision layer when the coupling is shared) and the text prompt in the text layer of the
    same depth. The links are set by `MaPLeModel` after injection with `link`.

    Args:
        base_layer (`nn.Module`): the vision embeddings (depth 0) or a vision encoder layer (depth > 0).
        adapter_name (`str`): the first adapter.
        depth (`int`): prompt depth.
        n_ctx (`int`): number of vision prompt tokens.
        init (`torch.Tensor`, *optional*): initial value of a free prompt, shape `(n_ctx, d_vision)`.
        coupling (`nn.Linear`, *optional*): the coupling owned by this layer.
    """

    adapter_layer_names = ("maple_vision_ctx", "maple_coupling")
    other_param_names = ("maple_n_ctx", "maple_source")

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        depth: int,
        n_ctx: int,
        init: torch.Tensor | None = None,
        coupling: nn.Linear | None = None,
    ) -> None:
        super().__init__(base_layer, adapter_name, depth)
        self.maple_vision_ctx = nn.ParameterDict()
        self.maple_coupling = nn.ModuleDict()
        # adapter -> (text layer of the same depth, vision layer owning the coupling); plain dict, not submodules,
        # so that nothing is registered (or saved) twice
        self.maple_source: dict[str, tuple[MaPLeTextPromptLayer, MaPLeVisionPromptLayer]] = {}
        self.update_layer(adapter_name, n_ctx, init=init, coupling=coupling)

    def update_layer(
        self,
        adapter_name: str,
        n_ctx: int,
        init: torch.Tensor | None = None,
        coupling: nn.Linear | None = None,
    ) -> None:
        """Add (or replace) the vision prompt of `adapter_name`: free (`init`) or coupled (`coupling`, then `link`).

        Args:
            adapter_name (`str`): the adapter.
            n_ctx (`int`): its number of vision prompt tokens.
            init (`torch.Tensor`, *optional*): `(n_ctx, d_vision)` the initial value of a free prompt.
            coupling (`nn.Linear`, *optional*): the coupling this layer owns for the adapter.
        """
        device, dtype = self._base_device_dtype()
        if init is not None:
            self.maple_vision_ctx[adapter_name] = nn.Parameter(init.detach().clone().to(device=device, dtype=dtype))
        if coupling is not None:
            if coupling.weight.device.type != "meta":  # meta when loading with low_cpu_mem_usage=True
                coupling = coupling.to(device=device, dtype=dtype)
            self.maple_coupling[adapter_name] = coupling
        self.maple_n_ctx[adapter_name] = n_ctx
        self.set_adapter(self.active_adapters)

    def link(
        self, adapter_name: str, text_layer: MaPLeTextPromptLayer, coupling_owner: MaPLeVisionPromptLayer
    ) -> None:
        """Compute this layer's prompt for `adapter_name` as `coupling_owner`'s coupling of `text_layer`'s prompt.

        Args:
            adapter_name (`str`): the adapter.
            text_layer (`MaPLeTextPromptLayer`): the text layer of the same depth.
            coupling_owner (`MaPLeVisionPromptLayer`): the vision layer that holds the coupling (this layer, or the
                depth-0 vision layer when the coupling is shared).
        """
        self.maple_source[adapter_name] = (text_layer, coupling_owner)

    def prompt(self, adapter_name: str) -> torch.Tensor:
        """The `(n_ctx, d_vision)` prompt of `adapter_name` at this depth (free, or coupled from the text prompt)."""
        if adapter_name in self.maple_vision_ctx:
            return self.maple_vision_ctx[adapter_name]
        if adapter_name not in self.maple_source:
            raise RuntimeError(
                f"The vision prompt of adapter {adapter_name!r} at depth {self.depth} is not linked to its text "
                "prompt; create the adapter with get_peft_model / PeftModel.from_pretrained."
            )
        text_layer, owner = self.maple_source[adapter_name]
        text_prompt = text_layer.maple_ctx[adapter_name]
        coupling = owner.maple_coupling[adapter_name]
        return coupling(text_prompt.to(coupling.weight.dtype))

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter_name = self.prompt_adapter()
        if adapter_name is None:
            return self.base_layer(x, *args, **kwargs)
        prompt = self.prompt(adapter_name)
        if self.depth == 0:
            # x are pixel values; the embeddings are [CLS, patches] + position embeddings (CLIP) or patches + position
            # embeddings (SigLIP)
            return append_prompt(self.base_layer(x, *args, **kwargs), prompt)
        n_ctx = prompt.shape[0]
        return self.base_layer(append_prompt(x[:, :-n_ctx], prompt), *args, **kwargs)

    def active_n_ctx(self) -> int:
        """The number of vision prompt tokens the active adapter appends (0 with adapters disabled)."""
        adapter_name = self.prompt_adapter()
        return 0 if adapter_name is None else self.maple_n_ctx[adapter_name]

    def __repr__(self) -> str:
        return "maple." + super().__repr__()


class MaPLeVisionHeadLayer(MaPLeLayer):
    """SigLIP's attention-pooling head, fed without the vision prompt tokens (`vision_pool_prompts=False`).

    The prompts are the last `n_ctx` tokens of the vision tower's output; they (and their entries of SigLIP 2's
    attention mask) are removed before the head, so that it pools the image's own tokens only. The layer holds no
    weights: `maple_n_ctx[adapter]` is the number of tokens removed for the adapter.

    Args:
        base_layer (`nn.Module`): the vision tower's `head`.
        adapter_name (`str`): the first adapter.
        n_ctx (`int`): the number of vision prompt tokens to remove for it.
    """

    adapter_layer_names = ()

    def __init__(self, base_layer: nn.Module, adapter_name: str, n_ctx: int) -> None:
        super().__init__(base_layer, adapter_name, depth=-1)
        self.update_layer(adapter_name, n_ctx)

    def update_layer(self, adapter_name: str, n_ctx: int) -> None:
        """Remove `n_ctx` trailing tokens before the head when `adapter_name` is active."""
        self.maple_n_ctx[adapter_name] = n_ctx
        self.set_adapter(self.active_adapters)

    def forward(self, hidden_state: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        adapter_name = self.prompt_adapter()
        if adapter_name is not None:
            n_ctx = self.maple_n_ctx[adapter_name]
            hidden_state = hidden_state[:, :-n_ctx]
            if attention_mask is not None:
                attention_mask = attention_mask[:, :-n_ctx]
        if attention_mask is None:
            return self.base_layer(hidden_state)
        return self.base_layer(hidden_state, attention_mask)

    def extra_repr(self) -> str:
        return f"removes the vision prompts before the head: {self.maple_n_ctx}"

    def __repr__(self) -> str:
        return "maple." + super().__repr__()


def extend_pixel_attention_mask(
    vision_model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Forward pre-hook of SigLIP 2's vision tower: give the appended vision prompt tokens mask entries of 1.

    `Siglip2VisionModel.forward(pixel_values, pixel_attention_mask, spatial_shapes)` builds its attention mask (and the
    pooling head's) from `pixel_attention_mask`, one entry per patch; the depth-0 vision wrapper appends `n_ctx` tokens
    after the patches, so the mask gets `n_ctx` ones at its end. Registered by `MaPLeModel` with
    `register_forward_pre_hook(..., with_kwargs=True)`; a no-op while no adapter with vision prompts is active.
    """
    embeddings = getattr(vision_model, "embeddings", None)
    n_ctx = embeddings.active_n_ctx() if isinstance(embeddings, MaPLeVisionPromptLayer) else 0
    if not n_ctx:
        return args, kwargs

    def extended(mask: torch.Tensor | None) -> torch.Tensor | None:
        if mask is None:
            return None
        return torch.cat([mask, mask.new_ones(mask.shape[0], n_ctx)], dim=1)

    if "pixel_attention_mask" in kwargs:
        kwargs = {**kwargs, "pixel_attention_mask": extended(kwargs["pixel_attention_mask"])}
    elif len(args) > 1:
        args = (args[0], extended(args[1]), *args[2:])
    return args, kwargs


@contextmanager
def conditioned(model: nn.Module, shift: torch.Tensor | None) -> Iterator[None]:
    """CoCoOp: inside the block, the active context of `model`'s depth-0 text layer is shifted per image, `ctx +
    shift_i` (`shift`: `(n_images, d_text)`), for text batches laid out image-major. None: no shift.

    Args:
        model (`nn.Module`): the dual encoder with prompt layers injected.
        shift (`torch.Tensor`, *optional*): the meta-net's output for a batch of images.
    """
    layers = [m for m in model.modules() if isinstance(m, MaPLeTextPromptLayer) and m.depth == 0]
    previous = [layer.maple_condition for layer in layers]
    for layer in layers:
        layer.maple_condition = shift
    try:
        yield
    finally:
        for layer, value in zip(layers, previous):
            layer.maple_condition = value
