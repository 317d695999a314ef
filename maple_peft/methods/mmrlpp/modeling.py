"""MMRL++'s tensors and computations: the aligner, the layer that composes the representation tokens and the
representation path's projection (its loss is MMRL's)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..mmrl.modeling import MaPLeRepresentationLayer


class ResidualAligner(nn.Module):
    """One layer's part of a tower's Shared-Residual Representation Aligner: the residual `A` `(d, r)` and `B` `(r,
    rep_dim)` and the layer's bias `(d,)`; it maps the representation tokens with `W + A B`, `W` the tower's shared
    weight `(d, rep_dim)`.

    Args:
        lora_a (`torch.Tensor`): the initial `A`.
        lora_b (`torch.Tensor`): the initial `B`.
        bias (`torch.Tensor`): the initial bias.
    """

    def __init__(self, lora_a: torch.Tensor, lora_b: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.A = nn.Parameter(lora_a.detach().clone())
        self.B = nn.Parameter(lora_b.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone())

    def forward(self, tokens: torch.Tensor, shared: torch.Tensor) -> torch.Tensor:
        return F.linear(tokens, shared + self.A @ self.B, self.bias)


class MMRLppLayer(MaPLeRepresentationLayer):
    """MMRL++'s representation tokens at the input of one encoder layer of one tower: MMRL's layer with the aligner and
    the composition.

    Beside MMRL's tokens `R` (`maple_rep_tokens`, first text layer), each layer of `rep_layers` holds its
    `ResidualAligner` (`maple_rep_proj`), the first one of each tower the tower's shared weight `W`
    (`maple_rep_shared`), the first vision layer `A` and `B` of the representation path's projection
    (`maple_proj_lora_A`, `maple_proj_lora_B`). The first layer inserts the aligned tokens after the first token; the
    later ones of `rep_layers` set positions `1 .. n_rep` to `beta * aligned + (1 - beta) * (what comes in)`, `beta`
    read from the adapter's config at each pass (`model.peft_config[name].beta`, e.g. the original's beta of a
    cross-dataset target); the others carry them.

    Args:
        base_layer (`nn.Module`): the encoder layer.
        adapter_name (`str`): the first adapter.
        depth (`int`): the 0-based index of the layer.
        tower (`str`): `"text"` or `"vision"`.
        n_rep (`int`): the number of representation tokens.
        first (`bool`): the tokens are inserted here (the adapter's first layer of `rep_layers`).
        **parts: the adapter's `config` and the initial tensors this layer holds (see `update_layer`).
    """

    adapter_layer_names = (
        "maple_rep_tokens", "maple_rep_proj", "maple_proj_rep", "maple_rep_shared", "maple_proj_lora_A",
        "maple_proj_lora_B",
    )  # fmt: skip
    other_param_names = (
        "maple_n_ctx", "maple_rep_first", "maple_rep_source", "maple_rep_config", "maple_rep_shared_source",
    )  # fmt: skip

    def create_holders(self) -> None:
        super().create_holders()
        self.maple_rep_shared = nn.ParameterDict()
        self.maple_proj_lora_A = nn.ParameterDict()
        self.maple_proj_lora_B = nn.ParameterDict()
        self.maple_rep_config: dict[str, Any] = {}
        # adapter -> the layer of this tower that holds W (a plain dict, so that nothing is registered twice)
        self.maple_rep_shared_source: dict[str, MMRLppLayer] = {}

    @classmethod
    def initial_parts(
        cls, config: Any, tower: str, first: bool, template: nn.Linear | None, embed_dim: int
    ) -> dict[str, Any]:
        """What a new layer of an adapter with `config` holds, initialized as the original: the tower's aligner starts
        from one `Linear(rep_dim, d)` (`template`: its weight shared, a copy of its bias in every layer), each residual
        `A` kaiming-uniform and `B` zero, the projection's `A` kaiming-uniform and `B` zero (so `W + A B = W` and the
        projection is CLIP's at the start), `R` normal with std `prompt_init_std` (0.02)."""
        parts: dict[str, Any] = {"config": config}
        if template is not None:
            parts["aligner"] = ResidualAligner(
                _kaiming_uniform(template.out_features, config.res_lora_dim),
                torch.zeros(config.res_lora_dim, config.rep_dim),
                template.bias,
            )
            if first:
                parts["shared"] = template.weight
        if first and tower == "text":
            parts["tokens"] = torch.empty(config.n_rep, config.rep_dim).normal_(std=config.prompt_init_std)
        if first and tower == "vision":
            parts["proj_lora"] = (
                _kaiming_uniform(template.out_features, config.proj_lora_dim),
                torch.zeros(config.proj_lora_dim, embed_dim),
            )
        return parts

    def update_layer(
        self,
        adapter_name: str,
        n_rep: int,
        first: bool,
        tokens: torch.Tensor | None = None,
        *,
        config: Any = None,
        aligner: ResidualAligner | None = None,
        shared: torch.Tensor | None = None,
        proj_lora: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Add (or replace) what `adapter_name` holds at this layer: the tokens `R` `(n_rep, rep_dim)`, the layer's
        `aligner`, the tower's `shared` weight `(d, rep_dim)`, `proj_lora` `(A, B)` of the projection, and the
        adapter's `config` (its `beta`)."""
        device, dtype = self._base_device_dtype()

        def parameter(tensor: torch.Tensor) -> nn.Parameter:
            return nn.Parameter(tensor.detach().clone().to(device=device, dtype=dtype))

        if shared is not None:
            self.maple_rep_shared[adapter_name] = parameter(shared)
            self.maple_rep_shared_source[adapter_name] = self
        if proj_lora is not None:
            self.maple_proj_lora_A[adapter_name] = parameter(proj_lora[0])
            self.maple_proj_lora_B[adapter_name] = parameter(proj_lora[1])
        if config is not None:
            self.maple_rep_config[adapter_name] = config
        if aligner is not None and aligner.A.device.type != "meta":
            aligner = aligner.to(device=device, dtype=dtype)
        if aligner is not None:
            self.maple_rep_proj[adapter_name] = aligner
        super().update_layer(adapter_name, n_rep, first, tokens=tokens)

    def link(self, adapter_name: str, layers: list[MaPLeRepresentationLayer]) -> None:
        """Take `R` from the first text layer and `W` from the first layer of this tower."""
        super().link(adapter_name, layers)
        self.maple_rep_shared_source[adapter_name] = next(
            m for m in layers if m.tower == self.tower and adapter_name in m.maple_rep_shared
        )

    def projection(self, adapter_name: str, base_model: nn.Module) -> torch.Tensor:
        """The representation path's projection `(d_vision, embed_dim)`: CLIP's frozen visual projection plus `A B`."""
        lora = self.maple_proj_lora_A[adapter_name] @ self.maple_proj_lora_B[adapter_name]
        return base_model.visual_projection.weight.t() + lora

    def aligned_tokens(self, adapter_name: str) -> torch.Tensor:
        """`R (W + A B)^T + b` `(n_rep, d)`: the tokens this layer's aligner maps into its tower."""
        source = self.maple_rep_source.get(adapter_name)
        owner = self.maple_rep_shared_source.get(adapter_name)
        if source is None or owner is None:
            raise RuntimeError(
                f"The representation tokens of adapter {adapter_name!r} at layer {self.depth} are not linked; create "
                "the adapter with get_peft_model / PeftModel.from_pretrained."
            )
        shared = owner.maple_rep_shared[adapter_name]
        return self.maple_rep_proj[adapter_name](source.maple_rep_tokens[adapter_name].to(shared.dtype), shared)

    def tokens(self, adapter_name: str) -> torch.Tensor | None:
        """The tokens inserted here: the aligned ones at the first layer; None elsewhere (the later layers of
        `rep_layers` compose them in `forward`, the others carry them)."""
        if adapter_name not in self.maple_rep_proj or not self.maple_rep_first[adapter_name]:
            return None
        return self.aligned_tokens(adapter_name)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        adapter_name = self.prompt_adapter()
        if adapter_name in self.maple_rep_proj and not self.maple_rep_first[adapter_name]:
            n_rep, beta = self.maple_n_ctx[adapter_name], self.maple_rep_config[adapter_name].beta
            aligned = self.aligned_tokens(adapter_name).to(hidden_states.dtype)
            mixed = beta * aligned + (1 - beta) * hidden_states[:, 1 : 1 + n_rep]
            hidden_states = torch.cat([hidden_states[:, :1], mixed, hidden_states[:, 1 + n_rep :]], dim=1)
        return super().forward(hidden_states, *args, **kwargs)


#: MMRL++'s layer class (the `MMRL` method's hooks build it; see `maple_peft.methods.mmrl.modeling.create_layer`).
LAYER = MMRLppLayer


def _kaiming_uniform(rows: int, columns: int) -> torch.Tensor:
    """`nn.init.kaiming_uniform_(a=sqrt(5))` of a `(rows, columns)` tensor, as the original initializes its `A`s."""
    tensor = torch.empty(rows, columns)
    nn.init.kaiming_uniform_(tensor, a=math.sqrt(5))
    return tensor
