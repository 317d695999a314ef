import sys

import numpy as np
import pytest
from PIL import Image

from maple_peft.training.metrics import build_run_metrics
from maple_peft.training.plots import (
    MAX_CLASSES_SHOWN,
    _draw_base_novel_hm,
    _draw_per_class_accuracy,
    _draw_training_curves,
    plot_base_novel_hm,
    plot_per_class_accuracy,
    plot_training_curves,
    write_run_plots,
)

pytest.importorskip("matplotlib")

MAPLE_RGB = (0x1F, 0x77, 0xB4)
ZERO_SHOT_RGB = (0xB0, 0xB0, 0xB0)


def _result(num_classes: int, accuracy: float = 70.0) -> dict:
    per_class = {f"class number {i}": float((i * 37) % 101) for i in range(num_classes)}
    return {"accuracy": accuracy, "macro_f1": accuracy - 2, "per_class_accuracy": per_class, "num_images": 10}


def _metrics(*, zero_shot: bool = True, setting: str = "base2novel", results: dict | None = None) -> dict:
    results = results or {"base": _result(5, 92.0), "novel": _result(5, 70.0)}
    zero_shot_results = {split: _result(5, 60.0 + i) for i, split in enumerate(results)} if zero_shot else None
    return build_run_metrics(
        base_model="m",
        dataset="eurosat",
        setting=setting,
        seed=1,
        num_shots=16,
        results=results,
        zero_shot_results=zero_shot_results,
    )


def _pixels(path, expected) -> np.ndarray:
    assert path == expected
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("RGB"))
    assert (pixels < 200).any(), "the image is blank"
    return pixels


def _count_color(pixels: np.ndarray, rgb: tuple[int, int, int]) -> int:
    return int((np.abs(pixels.astype(int) - np.array(rgb)).sum(axis=-1) <= 6).sum())


def _bars(axes) -> list:
    return [patch for patch in axes.patches if patch.get_width() > 0 or patch.get_height() > 0]


def test_training_curves_show_loss_and_lr_panels_with_epoch_marks(tmp_path):
    history = [
        {"step": s, "epoch": s // 10, "loss": 2.0 / (1 + s), "lr": 1e-5 if s < 10 else 0.0035} for s in range(50)
    ]
    history.append({"step": 50, "epoch": 5, "lr": 0.001})  # an entry without a loss is skipped in the loss panel

    figure = _draw_training_curves(history)
    loss_axes, lr_axes = figure.axes
    assert loss_axes.get_title() == "Training curves"
    assert (loss_axes.get_ylabel(), lr_axes.get_ylabel()) == ("training loss", "learning rate")
    raw_loss = loss_axes.lines[0]
    assert len(raw_loss.get_xdata()) == 50  # the lr-only entry is not a loss point
    epoch_marks = [line for line in lr_axes.lines if line.get_linestyle() == ":"]
    assert len(epoch_marks) == 5  # epochs 0 -> 1 -> ... -> 5

    path = plot_training_curves(history, tmp_path / "sub" / "training_curves.png")
    pixels = _pixels(path, tmp_path / "sub" / "training_curves.png")
    assert pixels.shape[:2] == (720, 960)  # 8 x 6 inches at 120 dpi
    assert _count_color(pixels, (0xD6, 0x27, 0x28)) > 100  # the red learning-rate curve is drawn


def test_per_class_accuracy_shows_one_bar_per_class_sorted_best_on_top(tmp_path):
    results = {"base": _result(5), "novel": _result(7)}
    figure = _draw_per_class_accuracy({"results": results})  # the whole metrics.json works too

    base_axes, novel_axes = figure.axes
    assert len(_bars(base_axes)) == 5 and len(_bars(novel_axes)) == 7
    widths = [bar.get_width() for bar in _bars(novel_axes)]
    assert widths == sorted(widths)  # bottom (worst) to top (best)
    assert base_axes.get_title() == "base: accuracy 70.0% over 5 classes"
    labels = [label.get_text() for label in novel_axes.get_yticklabels()]
    assert sorted(labels) == sorted(results["novel"]["per_class_accuracy"])

    small = _pixels(plot_per_class_accuracy(results, tmp_path / "small.png"), tmp_path / "small.png")
    large = _pixels(
        plot_per_class_accuracy({"base": _result(45), "novel": _result(40)}, tmp_path / "large.png"),
        tmp_path / "large.png",
    )
    assert large.shape[0] > 12 * 85  # ~85 class labels need room: at least ~12 px per bar
    assert large.shape[0] > 4 * small.shape[0]
    assert _count_color(large, MAPLE_RGB) > _count_color(small, MAPLE_RGB)


def test_per_class_accuracy_of_1000_classes_shows_the_best_and_worst_in_a_bounded_image(tmp_path):
    per_class = {f"class {i}": i / 10 for i in range(1000)}  # accuracy 0.0 .. 99.9
    results = {"test": {"accuracy": 50.0, "per_class_accuracy": per_class}}

    figure = _draw_per_class_accuracy(results)
    (axes,) = figure.axes
    half = MAX_CLASSES_SHOWN // 2
    assert len(_bars(axes)) == 2 * half
    labels = [label.get_text() for label in axes.get_yticklabels()]
    assert labels[:half] == [f"class {i}" for i in range(half)]  # the worst at the bottom
    assert labels[-half:] == [f"class {i}" for i in range(1000 - half, 1000)]  # the best at the top
    assert labels[half] == f"… {1000 - 2 * half} classes not shown …"
    assert axes.get_title() == f"test: accuracy 50.0% over 1000 classes (the {half} best and {half} worst shown)"

    path = plot_per_class_accuracy(results, tmp_path / "imagenet.png")
    pixels = _pixels(path, tmp_path / "imagenet.png")
    assert pixels.shape[0] < 1500 and pixels.shape[1] < 1500  # not 20,000 px
    assert path.stat().st_size < 500_000


@pytest.mark.parametrize("zero_shot", [True, False])
def test_base_novel_hm_shows_base_novel_and_hm_bars_beside_zero_shot(tmp_path, zero_shot):
    metrics = _metrics(zero_shot=zero_shot)
    figure = _draw_base_novel_hm(metrics)
    (axes,) = figure.axes
    assert axes.get_title() == "eurosat (base2novel)"
    assert [label.get_text() for label in axes.get_xticklabels()] == ["Base", "Novel", "HM"]
    heights = [bar.get_height() for bar in _bars(axes)]
    assert len(heights) == 3 * (2 if zero_shot else 1)
    assert heights[-3:] == pytest.approx([92.0, 70.0, metrics["harmonic_mean"]])  # MaPLe's bars come last

    path = plot_base_novel_hm(metrics, str(tmp_path / "base_novel_hm.png"))
    pixels = _pixels(path, tmp_path / "base_novel_hm.png")
    assert _count_color(pixels, MAPLE_RGB) > 500
    assert (_count_color(pixels, ZERO_SHOT_RGB) > 500) == zero_shot


def test_base_novel_hm_of_cross_dataset_shows_one_bar_per_target_and_no_hm(tmp_path):
    results = {"imagenet": _result(3, 70.0), "dtd": _result(3, 45.0), "eurosat": _result(3, 48.0)}
    figure = _draw_base_novel_hm(_metrics(zero_shot=False, setting="cross_dataset", results=results))
    (axes,) = figure.axes
    assert [label.get_text() for label in axes.get_xticklabels()] == ["imagenet", "dtd", "eurosat"]
    assert [bar.get_height() for bar in _bars(axes)] == pytest.approx([70.0, 45.0, 48.0])


def test_write_run_plots_writes_and_names_the_plots_of_the_run(tmp_path):
    history = [{"step": s, "epoch": 0, "loss": 1.0, "lr": 0.1} for s in range(3)]
    written = write_run_plots(tmp_path, _metrics(), history=history)
    assert written == ["training_curves.png", "per_class_accuracy.png", "base_novel_hm.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(written)

    other = tmp_path / "all"
    assert write_run_plots(other, _metrics(setting="all", results={"test": _result(3)})) == ["per_class_accuracy.png"]


def test_plots_reject_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="history is empty"):
        plot_training_curves([], tmp_path / "a.png")
    with pytest.raises(ValueError, match="has no 'step'"):
        plot_training_curves([{"loss": 1.0}], tmp_path / "a.png")
    with pytest.raises(ValueError, match="per_class_accuracy"):
        plot_per_class_accuracy({"base": {"accuracy": 50.0}}, tmp_path / "a.png")
    with pytest.raises(ValueError, match="lack the required field"):
        plot_base_novel_hm({}, tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"must end in \.png"):
        plot_base_novel_hm(_metrics(), tmp_path / "a.jpg")
    assert not list(tmp_path.iterdir())


def test_missing_matplotlib_gives_an_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match=r"pip install maple-peft\[plots\]"):
        plot_base_novel_hm(_metrics(), tmp_path / "a.png")
