"""The wrapper layers that carry MaPLe's prompts, one class per tower.

Each wrapper sits on one CLIP module at one prompt depth `i`:

* `MaPLeTextPromptLayer` wraps `token_embedding` (depth 0: its output gets the context at positions `1 .. n_ctx`,
  before the position embeddings are added) or text encoder layer `i > 0` (its input gets `P_i` at those positions).
* `MaPLeVisionPromptLayer` wraps the vision embeddings (depth 0: `n_ctx` prompt tokens are appended after
  `[CLS, patches]` + position embeddings, before `pre_layrnorm`) or vision encoder layer `i > 0` (the last `n_ctx`
  tokens of its input are replaced). Its prompts are either its own parameters (IVLP, VPT) or the projection of the
  text prompt of the same depth by a coupling `Linear(d_text, d_vision)` (MaPLe).
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

MERGE_ERROR = (
    "MaPLe adds prompt tokens to the sequences that CLIP's encoders process; there is no weight update that could be "
    "merged into the base model. Keep the PeftModel for inference, or call `unload()` to get the untouched CLIP back."
)


def replace_text_prompt(hidden_states: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """`hidden_states` with positions `1 .. n_ctx` (right after the start token) set to `prompt`.

    Args:
        hidden_states (`torch.Tensor`): `(batch, seq, d)` text token embeddings or hidden states.
        prompt (`torch.Tensor`): `(n_ctx, d)` the prompt of one depth; cast to the dtype of `hidden_states`.
    """
    n_ctx = prompt.shape[0]
    prompt = prompt.to(hidden_states.dtype).unsqueeze(0).expand(hidden_states.shape[0], -1, -1)
    return torch.cat([hidden_states[:, :1], prompt, hidden_states[:, 1 + n_ctx :]], dim=1)


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

    adapter_layer_names = ("maple_ctx",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, depth: int, init: torch.Tensor) -> None:
        super().__init__(base_layer, adapter_name, depth)
        self.maple_ctx = nn.ParameterDict()
        self.update_layer(adapter_name, init)

    def update_layer(self, adapter_name: str, init: torch.Tensor) -> None:
        """Add (or replace) the prompt of `adapter_name`.

        Args:
            adapter_name (`str`): the adapter.
            init (`torch.Tensor`): `(n_ctx, d_text)` its initial value, stored on the base layer's device and dtype.
        """
        device, dtype = self._base_device_dtype()
        self.maple_ctx[adapter_name] = nn.Parameter(init.detach().clone().to(device=device, dtype=dtype))
        self.maple_n_ctx[adapter_name] = init.shape[0]
        self.set_adapter(self.active_adapters)

    def prompt(self, adapter_name: str) -> torch.Tensor:
        """The `(n_ctx, d_text)` prompt of `adapter_name` at this depth."""
        return self.maple_ctx[adapter_name]

    @staticmethod
    def _insert(hidden_states: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        n_ctx = prompt.shape[0]
        if hidden_states.shape[1] < n_ctx + 2:
            raise ValueError(
                f"The text sequence has {hidden_states.shape[1]} tokens, too short for {n_ctx} prompt tokens after "
                "the start token; tokenize the prompts made by maple_peft.format_prompts."
            )
        return replace_text_prompt(hidden_states, prompt)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter_name = self.prompt_adapter()
        if adapter_name is None:
            return self.base_layer(x, *args, **kwargs)
        prompt = self.maple_ctx[adapter_name]
        if self.depth == 0:
            # token embeddings come out of the wrapped embedding; position embeddings are added after this
            return self._insert(self.base_layer(x, *args, **kwargs), prompt)
        return self.base_layer(self._insert(x, prompt), *args, **kwargs)

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
            # x are pixel values; the embeddings are [CLS, patches] + position embeddings
            hidden_states = self.base_layer(x, *args, **kwargs)
            prompt = prompt.to(hidden_states.dtype).unsqueeze(0).expand(hidden_states.shape[0], -1, -1)
            return torch.cat([hidden_states, prompt], dim=1)
        n_ctx = prompt.shape[0]
        prompt = prompt.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        return self.base_layer(torch.cat([x[:, :-n_ctx], prompt], dim=1), *args, **kwargs)

    def __repr__(self) -> str:
        return "maple." + super().__repr__()
