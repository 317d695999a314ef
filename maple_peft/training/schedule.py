"""The learning-rate schedule of the original MaPLe code, as a resumable `torch.optim.lr_scheduler.LambdaLR`.

The original code (built on Dassl) wraps `CosineAnnealingLR(T_max=max_epochs)` in a `ConstantWarmupScheduler` and
steps it once per **epoch**. During the first `warmup_epochs` epochs the learning rate is the constant `warmup_lr`;
epoch `e >= warmup_epochs` then uses

    lr(e) = base_lr * (1 + cos(pi * (e - warmup_epochs) / max_epochs)) / 2

The cosine starts after the warmup but still runs over `max_epochs` (not `max_epochs - warmup_epochs`), so the last
epoch's learning rate is not 0. For MaPLe's recipe (5 epochs, 1 warmup epoch at 1e-5, lr 0.0035) the five epochs use
`[1e-5, L, L*c(1/5), L*c(2/5), L*c(3/5)]` with `c(t) = (1 + cos(pi*t)) / 2`.

`build_scheduler` returns a scheduler stepped after every optimizer step that keeps the learning rate constant within
an epoch, so it also works with `accelerate` and resumes exactly from its `state_dict()`.
"""

from __future__ import annotations

import math
import numbers

import torch

__all__ = ["build_scheduler"]


def _check_int(name: str, value: object, minimum: int) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r} is invalid; pass an integer >= {minimum}.")


def _check_schedule(max_epochs: int, warmup_epochs: int, warmup_lr: float) -> None:
    _check_int("max_epochs", max_epochs, 1)
    _check_int("warmup_epochs", warmup_epochs, 0)
    if warmup_epochs >= max_epochs:
        raise ValueError(
            f"warmup_epochs={warmup_epochs} leaves no cosine phase in max_epochs={max_epochs}; "
            f"use warmup_epochs < max_epochs (e.g. warmup_epochs={max_epochs - 1})."
        )
    if not isinstance(warmup_lr, numbers.Real) or isinstance(warmup_lr, bool) or not warmup_lr >= 0:
        raise ValueError(f"warmup_lr={warmup_lr!r} is invalid; pass a learning rate >= 0 (MaPLe uses 1e-5).")


def _lr(epoch: int, base_lr: float, max_epochs: int, warmup_epochs: int, warmup_lr: float) -> float:
    """The learning rate of the original code during `epoch` (0-based): constant warmup, then the cosine."""
    if epoch < warmup_epochs:
        return float(warmup_lr)
    progress = (epoch - warmup_epochs) / max_epochs
    return float(base_lr * (1.0 + math.cos(math.pi * progress)) / 2.0)


class _EpochConstantLR(torch.optim.lr_scheduler.LambdaLR):
    """A `LambdaLR` whose `load_state_dict` also puts the restored learning rates back into the optimizer.

    Resuming then gives the right learning rate for the next step even when only the scheduler state is restored.
    """

    def load_state_dict(self, state_dict: dict) -> None:
        """Restores the scheduler state and the optimizer's current learning rates.

        Args:
            state_dict (`dict`): A dict returned by `state_dict()`.
        """
        super().load_state_dict(state_dict)
        for group, lr in zip(self.optimizer.param_groups, self.get_last_lr(), strict=True):
            group["lr"] = lr


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    max_epochs: int,
    warmup_epochs: int = 1,
    warmup_lr: float = 1e-5,
    steps_per_epoch: int = 1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR` that reproduces the original MaPLe schedule (see the module docstring), stepped per optimizer step.

    Call `scheduler.step()` after every `optimizer.step()`. Optimizer step `k` (0-based) belongs to epoch
    `e = k // steps_per_epoch` and uses `warmup_lr` while `e < warmup_epochs`, then
    `lr * (1 + cos(pi * (e - warmup_epochs) / max_epochs)) / 2`, so the learning rate stays constant within an epoch
    and changes at epoch boundaries, exactly as the original per-epoch scheduler. The factor depends only on the step count, so a scheduler restored
    with `load_state_dict()` (or `accelerator.load_state`) continues with the same learning rates. The warmup
    learning rate is absolute: every parameter group uses `warmup_lr` during a constant warmup, whatever its own lr.

    Args:
        optimizer (`torch.optim.Optimizer`): The optimizer; each parameter group's current `lr` is its base (peak)
            learning rate.
        max_epochs (`int`): The number of training epochs (`T_max` of the cosine), >= 1.
        warmup_epochs (`int`): Constant-warmup epochs, in `[0, max_epochs)`; 0 disables the warmup.
        warmup_lr (`float`): The warmup learning rate, >= 0 (absolute, the same for every parameter group).
        steps_per_epoch (`int`): Optimizer steps per epoch (`len(train_dataloader)` after `accelerator.prepare`,
            divided by the gradient accumulation steps), >= 1.

    Returns:
        `torch.optim.lr_scheduler.LambdaLR`: The scheduler, already set to the learning rate of the first step.

    Example:
        ```python
        >>> model = torch.nn.Linear(2, 2)
        >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.0035)
        >>> scheduler = build_scheduler(optimizer, max_epochs=5, warmup_epochs=1, warmup_lr=1e-5, steps_per_epoch=10)
        >>> optimizer.param_groups[0]["lr"]
        1e-05
        ```
    """
    _check_schedule(max_epochs, warmup_epochs, warmup_lr)
    _check_int("steps_per_epoch", steps_per_epoch, 1)

    def make_factor(base_lr: float):
        def factor(step: int) -> float:
            epoch = step // steps_per_epoch
            return _lr(epoch, base_lr, max_epochs, warmup_epochs, warmup_lr) / base_lr

        return factor

    factors = []
    for index, group in enumerate(optimizer.param_groups):
        base_lr = group.get("initial_lr", group["lr"])
        if isinstance(base_lr, torch.Tensor):
            base_lr = float(base_lr)
        if not isinstance(base_lr, numbers.Real) or not base_lr > 0:
            raise ValueError(
                f"optimizer.param_groups[{index}] has lr={base_lr!r}; the schedule scales a positive base learning "
                "rate, so create the optimizer with lr > 0 (MaPLe uses 0.0035)."
            )
        factors.append(make_factor(float(base_lr)))
    # Plain functions (not callable objects) keep the state dict to the step count: the schedule itself comes from
    # the arguments above, so resuming with `load_state_dict` only restores where the run was.
    return _EpochConstantLR(optimizer, lr_lambda=factors)
