"""Gaussian prompt aggregation (GPA, from PromptSRC): a Gaussian-weighted average of the adapter over the epochs."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def _check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a finite number.")
    return float(value)


class GaussianPromptAggregator:
    """Gaussian prompt aggregation: the adapter at the end of training is a weighted sum of the adapters at the end of
    each epoch.

    After epoch `e = 1 .. E` the trainable adapter tensors are added to a float32 running sum with weight
    `w_e = N(e; mean, std) / sum_{k=1..E} N(k; mean, std)` (`N` the Gaussian density, as in the original PromptSRC
    trainer: `sum = sum + w_e * tensor`, in that order); `apply` replaces the adapter by the sum. The running sum is
    part of `state_dict()` (tensors and plain numbers only: loadable with `torch.load(..., weights_only=True)`), so
    register the aggregator for checkpointing (`accelerator.register_for_checkpointing(aggregator)`) and a resumed run
    ends with a bitwise-identical adapter.

    Args:
        mean (`float`): the mean of the Gaussian over the 1-based epoch numbers (PromptSRC: 15 of 20 epochs).
        std (`float`): its standard deviation, > 0 (PromptSRC: 1).
        num_epochs (`int`): the number of epochs E of the run, >= 1.

    Example:

        ```py
        >>> aggregator = GaussianPromptAggregator(mean=15, std=1, num_epochs=20)
        >>> for epoch in range(1, 21):
        ...     train_one_epoch(model)
        ...     aggregator.update(model, epoch)
        >>> aggregator.apply(model)  # the adapter is now the Gaussian-weighted average
        ```
    """

    def __init__(self, mean: float, std: float, num_epochs: int) -> None:
        self.mean = _check_number("mean", mean)
        self.std = _check_number("std", std)
        if self.std <= 0:
            raise ValueError(f"std={std!r} must be > 0 (the standard deviation of the Gaussian over the epochs).")
        if isinstance(num_epochs, bool) or not isinstance(num_epochs, int) or num_epochs < 1:
            raise ValueError(f"num_epochs={num_epochs!r} must be an integer >= 1 for Gaussian prompt aggregation.")
        self.num_epochs = num_epochs
        densities = [
            math.exp(-0.5 * ((epoch - self.mean) / self.std) ** 2) / (self.std * math.sqrt(2 * math.pi))
            for epoch in range(1, num_epochs + 1)
        ]
        total = sum(densities)
        if not total > 0:
            raise ValueError(
                f"The Gaussian with mean={mean!r} and std={std!r} gives no weight to any epoch 1..{num_epochs} "
                "(all densities underflow to 0); choose a mean near the training epochs or a larger std."
            )
        self._weights = [density / total for density in densities]
        self._sum: dict[str, torch.Tensor] = {}
        self._history: list[dict[str, float | int]] = []

    def weights(self) -> list[float]:
        """The weights `w_1 .. w_E` (they sum to 1)."""
        return list(self._weights)

    def history(self) -> list[dict[str, float | int]]:
        """The epochs that have contributed so far: `[{"epoch": e, "weight": w_e}, ...]`."""
        return [dict(entry) for entry in self._history]

    @staticmethod
    def _trainable(model: nn.Module) -> dict[str, torch.Tensor]:
        tensors = {name: param for name, param in model.named_parameters() if param.requires_grad}
        if not tensors:
            raise ValueError(
                f"The {type(model).__name__} has no trainable parameters to aggregate; pass the model being trained "
                "(the PeftModel, unwrapped from DDP: accelerator.unwrap_model(...))."
            )
        return tensors

    @torch.no_grad()
    def update(self, model: nn.Module, epoch: int) -> None:
        """Add the model's trainable tensors at the end of `epoch` (1-based) to the running sum with weight `w_epoch`.

        Args:
            model (`nn.Module`): the model being trained (the `PeftModel`, not a DDP wrapper).
            epoch (`int`): the epoch that just ended, `1 .. num_epochs`, each exactly once and in order.
        """
        expected = len(self._history) + 1
        if epoch != expected:
            raise ValueError(
                f"epoch={epoch!r} but the aggregator expects epoch {expected} next (epochs are 1-based, "
                f"1..{self.num_epochs}, each added once in order; so far: {[h['epoch'] for h in self._history]})."
            )
        if epoch > self.num_epochs:
            raise ValueError(f"epoch={epoch} is beyond num_epochs={self.num_epochs}.")
        tensors = self._trainable(model)
        if self._sum and set(tensors) != set(self._sum):
            raise ValueError(
                "The model's trainable tensors differ from those aggregated so far "
                f"(new: {sorted(set(tensors) - set(self._sum))}, missing: {sorted(set(self._sum) - set(tensors))})."
            )
        weight = self._weights[epoch - 1]
        for name, param in tensors.items():
            weighted = param.detach().float() * weight
            self._sum[name] = weighted if name not in self._sum else self._sum[name].to(weighted.device) + weighted
        self._history.append({"epoch": epoch, "weight": weight})

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Replace the model's trainable tensors by the weighted sum (after all `num_epochs` epochs were added)."""
        if len(self._history) != self.num_epochs:
            raise ValueError(
                f"Gaussian prompt aggregation has {len(self._history)} of {self.num_epochs} epochs; call update() "
                "after every epoch before apply()."
            )
        tensors = self._trainable(model)
        if set(tensors) != set(self._sum):
            raise ValueError(
                "The model's trainable tensors differ from the aggregated ones "
                f"(new: {sorted(set(tensors) - set(self._sum))}, missing: {sorted(set(self._sum) - set(tensors))})."
            )
        for name, param in tensors.items():
            param.copy_(self._sum[name].to(device=param.device, dtype=param.dtype))

    def state_dict(self) -> dict[str, Any]:
        """The settings, the history and the running sum (plain data and tensors)."""
        return {
            "mean": self.mean,
            "std": self.std,
            "num_epochs": self.num_epochs,
            "history": self.history(),
            "sum": {name: tensor.detach().clone() for name, tensor in self._sum.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict()`; its settings must equal this aggregator's."""
        saved = (state.get("mean"), state.get("std"), state.get("num_epochs"))
        if saved != (self.mean, self.std, self.num_epochs):
            raise ValueError(
                f"The saved aggregation has (mean, std, num_epochs)={saved}, this run "
                f"{(self.mean, self.std, self.num_epochs)}; resume with the same settings."
            )
        history = [{"epoch": int(h["epoch"]), "weight": float(h["weight"])} for h in state["history"]]
        if [h["epoch"] for h in history] != list(range(1, len(history) + 1)):
            raise ValueError(f"The saved aggregation's epochs {[h['epoch'] for h in history]} are not 1..k.")
        self._history = history
        self._sum = {name: tensor.detach().clone() for name, tensor in state["sum"].items()}
