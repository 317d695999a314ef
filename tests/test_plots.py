import sys

import pytest
from PIL import Image

from maple_peft.training.plots import plot_base_novel_hm, plot_per_class_accuracy, plot_training_curves

pytest.importorskip("matplotlib")


def _result(num_classes: int, accuracy: float = 70.0) -> dict:
    per_class = {f"class number {i}": float((i * 37) % 101) for i in range(num_classes)}
    return {"accuracy": accuracy, "macro_f1": accuracy - 2, "per_class_accuracy": per_class, "num_images": 10}


def _metrics(zero_shot: bool = True) -> dict:
    metrics = {
        "dataset": "eurosat",
        "setting": "base2novel",
        "results": {"base": _result(5, 92.0), "novel": _result(5, 70.0)},
        "harmonic_mean": 2 * 92 * 70 / 162,
    }
    if zero_shot:
        metrics["zero_shot"] = {"results": {"base": _result(5, 60.0), "novel": _result(5, 65.0)}}
    return metrics


def _assert_png(path, expected):
    assert path == expected
    assert path.stat().st_size > 0
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
        return image.size


def test_plot_training_curves_writes_a_png(tmp_path):
    history = [
        {"step": s, "epoch": s // 10, "loss": 2.0 / (1 + s), "lr": 1e-5 if s < 10 else 0.0035} for s in range(50)
    ]
    history.append({"step": 50, "epoch": 5, "lr": 0.001})  # an entry without a loss is skipped in the loss panel

    path = plot_training_curves(history, tmp_path / "sub" / "training_curves.png")

    _assert_png(path, tmp_path / "sub" / "training_curves.png")


def test_plot_per_class_accuracy_grows_with_the_number_of_classes(tmp_path):
    small = plot_per_class_accuracy({"base": _result(5), "novel": _result(5)}, tmp_path / "small.png")
    large = plot_per_class_accuracy(
        {"results": {"base": _result(100), "novel": _result(50)}}, tmp_path / "large.png"
    )  # the whole metrics.json works too

    _, small_height = _assert_png(small, tmp_path / "small.png")
    _, large_height = _assert_png(large, tmp_path / "large.png")
    # ~100 class labels need room: at least ~12 px per bar
    assert large_height > 12 * 150
    assert large_height > 4 * small_height


@pytest.mark.parametrize("zero_shot", [True, False])
def test_plot_base_novel_hm_writes_a_png(tmp_path, zero_shot):
    path = plot_base_novel_hm(_metrics(zero_shot), str(tmp_path / "base_novel_hm.png"))
    _assert_png(path, tmp_path / "base_novel_hm.png")


def test_plot_base_novel_hm_handles_other_settings(tmp_path):
    metrics = {
        "setting": "cross_dataset",
        "results": {"imagenet": _result(3), "dtd": _result(3), "eurosat": _result(3)},
    }
    _assert_png(plot_base_novel_hm(metrics, tmp_path / "targets.png"), tmp_path / "targets.png")


def test_plots_reject_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="history is empty"):
        plot_training_curves([], tmp_path / "a.png")
    with pytest.raises(ValueError, match="has no 'step'"):
        plot_training_curves([{"loss": 1.0}], tmp_path / "a.png")
    with pytest.raises(ValueError, match="per_class_accuracy"):
        plot_per_class_accuracy({"base": {"accuracy": 50.0}}, tmp_path / "a.png")
    with pytest.raises(ValueError, match="no 'results'"):
        plot_base_novel_hm({}, tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"must end in \.png"):
        plot_base_novel_hm(_metrics(), tmp_path / "a.jpg")


def test_missing_matplotlib_gives_an_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match=r"pip install maple-peft\[plots\]"):
        plot_base_novel_hm(_metrics(), tmp_path / "a.png")
