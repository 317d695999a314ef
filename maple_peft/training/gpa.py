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


_FAR = 38.0
"""Beyond this many standard deviations every epoch's density underflows to 0 in float64 (exp(-0.5 * 38.6**2) is the
smallest normal number): a mean outside the epochs that far from all of them is refused, as the original would divide
0 by 0."""


def gaussian_epoch_weights(mean: float, std: float, num_epochs: int) -> list[float]:
    """The weights of Gaussian prompt aggregation: `w_e = N(e; mean, std) / sum_{k=1..E} N(k; mean, std)`.

    They are computed in log space, relative to the epoch nearest the mean
    (`w_e ∝ exp(-((e - mean)^2 - (e* - mean)^2) / (2 std^2))`), so that any positive finite `std` gives finite weights
    that sum to 1: the original's (PromptSRC's) values wherever its densities are finite, and their limit where they
    overflow or underflow (e.g. `std=1e-310`: all the weight on the epoch at the mean, split evenly between two
    epochs equally near it).

    Args:
        mean (`float`): the mean of the Gaussian over the 1-based epoch numbers (PromptSRC: 15 of 20 epochs).
        std (`float`): its standard deviation, a finite number > 0 (PromptSRC: 1).
        num_epochs (`int`): the number of epochs E of the run, >= 1.

    Raises:
        ValueError: a bad value, or a mean outside `1..E` so far from every epoch (more than 38 standard deviations)
            that the Gaussian gives none of them any weight.
    """
    if _check_number("std", std) <= 0:
        raise ValueError(f"std={std!r} must be > 0 (the standard deviation of the Gaussian over the epochs).")
    mean, std = _check_number("mean", mean), float(std)
    if isinstance(num_epochs, bool) or not isinstance(num_epochs, int) or num_epochs < 1:
        raise ValueError(f"num_epochs={num_epochs!r} must be an integer >= 1 for Gaussian prompt aggregation.")
    distances = [abs(epoch - mean) for epoch in range(1, num_epochs + 1)]
    nearest = min(distances)
    if not 1 <= mean <= num_epochs and nearest / std > _FAR:
        raise ValueError(
            f"The Gaussian with mean={mean!r} and std={std!r} gives no weight to any epoch 1..{num_epochs} (every "
            f"epoch is more than {_FAR:g} standard deviations away); choose a mean near the training epochs or a "
            "larger std."
        )
    # the exponent relative to the nearest epoch's, as a product of two quotients: it may overflow to -inf (weight 0),
    # never to inf * 0
    logs = [0.0 if d == nearest else -0.5 * ((d - nearest) / std) * ((d + nearest) / std) for d in distances]
    unnormalized = [math.exp(log) for log in logs]
    total = math.fsum(unnormalized)  # >= 1: the nearest epoch contributes exp(0)
    return [weight / total for weight in unnormalized]


class GaussianPromptAggregator:
    """Gaussian prompt aggregation: the adapter at the end of training is a weighted sum of the adapters at the end of
    each epoch.

    After epoch `e = 1 .. E` the trainable adapter tensors are added to a float32 running sum with weight
    `w_e = N(e; mean, std) / sum_{k=1..E} N(k; mean, std)` (`N` the Gaussian density, as in the original PromptSRC
    trainer: `sum = sum + w_e * tensor`, in that order; see `gaussian_epoch_weights`); `apply` replaces the adapter by the sum. The running sum is
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
        self._weights = gaussian_epoch_weights(mean, std, num_epochs)
        self.mean, self.std, self.num_epochs = float(mean), float(std), num_epochs
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
