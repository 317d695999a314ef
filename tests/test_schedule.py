import math

import pytest
import torch

from maple_peft.training.schedule import build_scheduler

L = 0.0035  # MaPLe's learning rate


def c(t: float) -> float:
    return (1 + math.cos(math.pi * t)) / 2


def _optimizer(*lrs: float) -> torch.optim.SGD:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0], momentum=0.9)


def _run(optimizer, scheduler, steps: int) -> list[list[float]]:
    """The learning rates used by `steps` optimizer steps (one list per step, one value per param group)."""
    used = []
    for _ in range(steps):
        used.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return used


def _per_epoch(base_lr: float, max_epochs: int, warmup_epochs: int = 1, warmup_lr: float = 1e-5) -> list[float]:
    """The learning rate of each epoch, from a scheduler stepped once per epoch."""
    optimizer = _optimizer(base_lr)
    scheduler = build_scheduler(optimizer, max_epochs, warmup_epochs, warmup_lr, steps_per_epoch=1)
    return [lrs[0] for lrs in _run(optimizer, scheduler, max_epochs)]


def test_maple_base_to_novel_recipe_matches_the_original_schedule():
    # 5 epochs, 1 constant warmup epoch at 1e-5: the cosine starts after the warmup but runs over max_epochs.
    expected = [1e-5, L, L * c(1 / 5), L * c(2 / 5), L * c(3 / 5)]
    lrs = _per_epoch(L, max_epochs=5, warmup_epochs=1, warmup_lr=1e-5)
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[-1] > 0


def test_cross_dataset_recipe_matches_the_original_schedule():
    lrs = _per_epoch(0.0026, max_epochs=2, warmup_epochs=1, warmup_lr=1e-5)
    assert lrs == pytest.approx([1e-5, 0.0026], rel=1e-12)


def test_schedule_matches_torch_cosine_annealing_stepped_per_epoch():
    # The original: CosineAnnealingLR(T_max=max_epochs) starts stepping once the warmup is over.
    max_epochs, warmup = 10, 3
    optimizer = _optimizer(0.01)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)
    reference = []
    for _ in range(max_epochs - warmup):
        reference.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        cosine.step()

    ours = _per_epoch(0.01, max_epochs, warmup, warmup_lr=2e-4)

    assert ours[:warmup] == [2e-4] * warmup
    assert ours[warmup:] == pytest.approx(reference, rel=1e-9)


def test_scheduler_holds_the_lr_within_an_epoch():
    optimizer = _optimizer(L)
    scheduler = build_scheduler(optimizer, max_epochs=5, warmup_epochs=1, warmup_lr=1e-5, steps_per_epoch=3)

    used = [lrs[0] for lrs in _run(optimizer, scheduler, 15)]

    expected = [1e-5, L, L * c(1 / 5), L * c(2 / 5), L * c(3 / 5)]
    assert used == pytest.approx([lr for lr in expected for _ in range(3)], rel=1e-12)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)


def test_scheduler_stepped_once_per_epoch_by_default():
    optimizer = _optimizer(0.0026)
    scheduler = build_scheduler(optimizer, 2, 1, 1e-5)
    assert [lrs[0] for lrs in _run(optimizer, scheduler, 2)] == pytest.approx([1e-5, 0.0026], rel=1e-12)


@pytest.mark.parametrize("with_optimizer_state", [True, False])
def test_scheduler_resumed_from_its_state_dict_continues_with_identical_lrs(with_optimizer_state):
    def make():
        optimizer = _optimizer(L, 2 * L)
        return optimizer, build_scheduler(optimizer, max_epochs=5, warmup_epochs=1, warmup_lr=1e-5, steps_per_epoch=4)

    optimizer, scheduler = make()
    uninterrupted = _run(optimizer, scheduler, 20)

    optimizer, scheduler = make()
    first_part = _run(optimizer, scheduler, 7)  # stop mid-epoch, right after the warmup
    state, optimizer_state = scheduler.state_dict(), optimizer.state_dict()
    resumed_optimizer, resumed_scheduler = make()
    if with_optimizer_state:  # what accelerator.load_state does
        resumed_optimizer.load_state_dict(optimizer_state)
    resumed_scheduler.load_state_dict(state)  # alone, it also puts the right lr back into the optimizer
    second_part = _run(resumed_optimizer, resumed_scheduler, 13)

    assert first_part + second_part == uninterrupted


def test_constant_warmup_lr_is_absolute_and_the_cosine_scales_each_group():
    optimizer = _optimizer(L, 10 * L)
    scheduler = build_scheduler(optimizer, max_epochs=5, warmup_epochs=1, warmup_lr=1e-5)

    used = _run(optimizer, scheduler, 3)

    assert used[0] == pytest.approx([1e-5, 1e-5])
    assert used[1] == pytest.approx([L, 10 * L])
    assert used[2] == pytest.approx([L * c(1 / 5), 10 * L * c(1 / 5)])


def test_without_warmup_the_cosine_starts_at_the_base_lr():
    assert _per_epoch(0.002, max_epochs=4, warmup_epochs=0) == pytest.approx([0.002 * c(e / 4) for e in range(4)])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_epochs": 0}, "max_epochs=0"),
        ({"max_epochs": 5, "warmup_epochs": 5}, "warmup_epochs=5 leaves no cosine phase in max_epochs=5"),
        ({"warmup_epochs": -1}, "warmup_epochs=-1"),
        ({"warmup_lr": -1e-5}, "warmup_lr=-1e-05"),
        ({"max_epochs": 2.5}, "max_epochs=2.5"),
        ({"steps_per_epoch": 0}, "steps_per_epoch=0"),
        ({"warmup_epochs": True}, "warmup_epochs=True"),
    ],
)
def test_build_scheduler_rejects_bad_arguments_naming_them(kwargs, message):
    arguments = {"max_epochs": 5, "warmup_epochs": 1, "warmup_lr": 1e-5, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_scheduler(_optimizer(L), **arguments)


def test_build_scheduler_rejects_an_optimizer_without_a_positive_lr():
    with pytest.raises(ValueError, match=r"param_groups\[0\] has lr=0"):
        build_scheduler(_optimizer(0.0), 5, 1, 1e-5)
