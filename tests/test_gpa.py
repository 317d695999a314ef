"""Gaussian prompt aggregation: weights, the aggregated adapter, and stop + resume."""

from __future__ import annotations

import math

import pytest
import torch
from test_model import make_adapted

from maple_peft.training.gpa import GaussianPromptAggregator


def density(x, mean, std):
    return math.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))


@pytest.mark.parametrize("mean,std,epochs", [(15, 1, 20), (6, 10, 2), (4, 1, 5), (2.5, 0.3, 3)])
def test_weights_are_the_normalized_gaussian_density(mean, std, epochs):
    weights = GaussianPromptAggregator(mean, std, epochs).weights()
    total = sum(density(k, mean, std) for k in range(1, epochs + 1))
    assert len(weights) == epochs
    for e, w in enumerate(weights, start=1):
        assert w == pytest.approx(density(e, mean, std) / total, rel=1e-12)
    assert sum(weights) == pytest.approx(1.0, rel=1e-12)


def fake_epochs(model, aggregator, epochs, start=1, seed=0):
    """Perturb the trainable tensors like an epoch of training would, update the aggregator, keep every snapshot."""
    generator = torch.Generator().manual_seed(seed)
    snapshots = []
    for epoch in range(start, start + epochs):
        with torch.no_grad():
            for param in model.parameters():
                if param.requires_grad:
                    param.add_(torch.randn(param.shape, generator=generator))
        snapshots.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
        aggregator.update(model, epoch)
    return snapshots


def test_final_adapter_is_the_weighted_sum_of_the_epoch_adapters():
    model, _ = make_adapted(variant="maple", n_ctx=2, depth=3)
    aggregator = GaussianPromptAggregator(mean=4, std=1, num_epochs=5)
    snapshots = fake_epochs(model, aggregator, 5)
    aggregator.apply(model)
    weights = aggregator.weights()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        expected = snapshots[0][name].float() * weights[0]
        for snapshot, weight in zip(snapshots[1:], weights[1:]):
            expected = expected + snapshot[name].float() * weight
        assert torch.equal(param, expected), name
        # and it is a real average, not the last epoch's tensors
        assert not torch.equal(param, snapshots[-1][name])
    assert aggregator.history() == [{"epoch": e, "weight": w} for e, w in zip(range(1, 6), weights)]


@pytest.mark.parametrize("std", [5e-324, 1e-310, 1e-300, 1e-30, 1e-3, 1e3, 1e150, 1e300, 1.7e308])
@pytest.mark.parametrize("mean", [1, 2, 2.5, 3, 1.3])
def test_any_positive_finite_std_gives_finite_weights_summing_to_one(mean, std):
    weights = GaussianPromptAggregator(mean, std, 3).weights()  # 1e-310 gave NaN weights, 1e-300 an OverflowError
    assert all(math.isfinite(w) and 0 <= w <= 1 for w in weights) and math.fsum(weights) == pytest.approx(1, abs=1e-15)


def test_a_vanishing_std_puts_the_weight_on_the_epochs_nearest_the_mean():
    assert GaussianPromptAggregator(2, 1e-310, 3).weights() == [0.0, 1.0, 0.0]
    assert GaussianPromptAggregator(2.5, 1e-300, 4).weights() == [0.0, 0.5, 0.5, 0.0]
    assert GaussianPromptAggregator(0.5, 1, 3).weights()[0] > 0.5  # a mean beyond the epochs, within reach
    with pytest.raises(ValueError, match="more than 38 standard deviations away"):
        GaussianPromptAggregator(0.5, 1e-300, 3)  # beyond the epochs and far from all: refused, as before
    assert GaussianPromptAggregator(2, 1e308, 3).weights() == pytest.approx([1 / 3] * 3, rel=1e-12)
    # the saved adapter is then the epoch at the mean, not a NaN-weighted sum
    model, _ = make_adapted(variant="maple", n_ctx=2, depth=3)
    aggregator = GaussianPromptAggregator(mean=2, std=1e-310, num_epochs=3)
    snapshots = fake_epochs(model, aggregator, 3)
    aggregator.apply(model)
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert torch.equal(param, snapshots[1][name]), name


def test_train_refuses_bad_gpa_options_before_any_work_naming_them(tmp_path):
    import sys
    from pathlib import Path

    examples = Path(__file__).resolve().parents[1] / "examples"
    sys.path.insert(0, str(examples))
    try:
        import train
    finally:
        sys.path.remove(str(examples))
    common = ["--config", str(examples / "configs" / "smoke.yaml"), "--output_dir", str(tmp_path / "run")]
    for gpa, message in [
        (
            ["--gpa_mean", "1e6", "--gpa_std", "0.1"],
            "--gpa_mean 1000000.0 and --gpa_std 0.1 gives no weight to any epoch",
        ),
        (["--gpa_mean", "2", "--gpa_std", "-1"], r"--gpa_std -1.0 must be > 0"),
        (["--gpa_mean", "nan", "--gpa_std", "1"], "--gpa_mean nan must be a finite number"),
    ]:
        with pytest.raises(ValueError, match=message):
            train.main([*common, *gpa])
    assert not (tmp_path / "run").exists()


def test_stop_and_resume_gives_a_bitwise_identical_adapter(tmp_path):
    model, _ = make_adapted(variant="ivlp", n_ctx=2, depth=3)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    uninterrupted = GaussianPromptAggregator(mean=3, std=1.5, num_epochs=5)
    fake_epochs(model, uninterrupted, 2, seed=0)
    fake_epochs(model, uninterrupted, 3, start=3, seed=1)
    uninterrupted.apply(model)
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}

    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(start[name])
    first = GaussianPromptAggregator(mean=3, std=1.5, num_epochs=5)
    fake_epochs(model, first, 2, seed=0)
    torch.save(first.state_dict(), tmp_path / "gpa.pt")
    del first
    resumed = GaussianPromptAggregator(mean=3, std=1.5, num_epochs=5)
    resumed.load_state_dict(torch.load(tmp_path / "gpa.pt", weights_only=True))
    assert [h["epoch"] for h in resumed.history()] == [1, 2]
    fake_epochs(model, resumed, 3, start=3, seed=1)
    resumed.apply(model)
    for name, param in model.named_parameters():
        assert torch.equal(param, expected[name]), name


def test_resuming_with_other_settings_is_refused():
    model, _ = make_adapted(variant="ivlp", n_ctx=2, depth=2)
    first = GaussianPromptAggregator(mean=3, std=1, num_epochs=5)
    fake_epochs(model, first, 1)
    with pytest.raises(ValueError, match=r"\(mean, std, num_epochs\)=\(3.0, 1.0, 5\)"):
        GaussianPromptAggregator(mean=3, std=2, num_epochs=5).load_state_dict(first.state_dict())


def test_epochs_out_of_order_and_early_apply_are_refused():
    model, _ = make_adapted(variant="ivlp", n_ctx=2, depth=2)
    aggregator = GaussianPromptAggregator(mean=2, std=1, num_epochs=3)
    with pytest.raises(ValueError, match="epoch=0 but the aggregator expects epoch 1"):
        aggregator.update(model, 0)
    aggregator.update(model, 1)
    with pytest.raises(ValueError, match="epoch=1 but the aggregator expects epoch 2"):
        aggregator.update(model, 1)
    with pytest.raises(ValueError, match="1 of 3 epochs"):
        aggregator.apply(model)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"mean": 15, "std": 0, "num_epochs": 20}, "std=0 must be > 0"),
        ({"mean": 15, "std": -1.0, "num_epochs": 20}, r"std=-1.0 must be > 0"),
        ({"mean": 15, "std": float("nan"), "num_epochs": 20}, "std=nan must be a finite number"),
        ({"mean": float("inf"), "std": 1, "num_epochs": 20}, "mean=inf must be a finite number"),
        ({"mean": 15, "std": 1, "num_epochs": 0}, "num_epochs=0 must be an integer >= 1"),
        ({"mean": 1e6, "std": 0.1, "num_epochs": 5}, "gives no weight to any epoch"),
    ],
)
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GaussianPromptAggregator(**kwargs)
