"""PNG plots of a training run: loss and learning-rate curves, per-class accuracy, base/novel/HM bars.

A PromptSRC-style run (history entries with `loss_ce`, `loss_text`, ... and `gpa_weight`) also gets a panel of its
unweighted loss terms and one of the Gaussian prompt aggregation weight of each epoch. The bars are labelled with the
method's name (MaPLe, PromptSRC, ...), beside zero-shot CLIP.

Matplotlib is an optional dependency (`pip install maple-peft[plots]`). The figures are drawn on matplotlib's Agg
canvas directly, without `pyplot`, so plotting neither needs a display nor changes the backend of the caller's session.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..adapter_card import method_name
from .metrics import RunMetrics
from .run_dir import atomic_write

__all__ = [
    "MAX_CLASSES_SHOWN",
    "plot_base_novel_hm",
    "plot_per_class_accuracy",
    "plot_training_curves",
    "write_run_plots",
]

MAX_CLASSES_SHOWN = 50
"""Beyond this many classes in a split, the per-class plot shows the best and the worst `MAX_CLASSES_SHOWN // 2`."""

_MAPLE_COLOR = "#1f77b4"
_ZERO_SHOT_COLOR = "#b0b0b0"
_TERM_COLORS = ("#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def _new_figure(width: float, height: float, *, constrained: bool = True) -> Any:
    """A matplotlib Figure on an Agg canvas; raises a helpful ImportError when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "maple_peft.training.plots needs matplotlib, which is not installed; install it with "
            "`pip install maple-peft[plots]`."
        ) from error
    figure = Figure(figsize=(width, height), layout="constrained" if constrained else None)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"path={str(path)!r} must end in .png; the plots are written as PNG images.")
    atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=dpi, format="png"))
    return path


def _moving_average(values: Sequence[float], window: int) -> list[float]:
    averaged, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        averaged.append(total / min(index + 1, window))
    return averaged


def _draw_training_curves(history: Sequence[Mapping[str, Any]]) -> Any:
    history = list(history)
    if not history:
        raise ValueError("The history is empty; log at least one step (a dict with step, epoch, loss and lr).")
    for index, entry in enumerate(history):
        if not isinstance(entry, Mapping) or "step" not in entry:
            raise ValueError(f"history[{index}]={entry!r} has no 'step'; log dicts with step, epoch, loss and lr.")
    losses = [(entry["step"], float(entry["loss"])) for entry in history if entry.get("loss") is not None]
    lrs = [(entry["step"], float(entry["lr"])) for entry in history if entry.get("lr") is not None]
    if not losses and not lrs:
        raise ValueError("The history has neither 'loss' nor 'lr' values; nothing to plot.")

    term_names = sorted({key for entry in history for key in entry if key.startswith("loss_")})
    gpa = [(entry["step"], float(entry["gpa_weight"])) for entry in history if entry.get("gpa_weight") is not None]
    ratios = [2] + ([1.5] if term_names else []) + ([1] if gpa else []) + [1]
    figure = _new_figure(8.0, 6.0 + 2.0 * (len(ratios) - 2))
    all_axes = list(figure.subplots(len(ratios), 1, sharex=True, height_ratios=ratios))
    loss_axes, lr_axes = all_axes[0], all_axes[-1]
    if term_names:
        _draw_loss_terms(all_axes[1], history, term_names)
    if gpa:
        _draw_gpa_weights(all_axes[-2], gpa)
    if losses:
        steps, values = zip(*losses, strict=True)
        window = max(1, len(values) // 20)
        loss_axes.plot(steps, values, color=_MAPLE_COLOR, alpha=0.35 if window > 1 else 1.0, linewidth=1, label="loss")
        if window > 1:
            smooth = _moving_average(values, window)
            loss_axes.plot(steps, smooth, color=_MAPLE_COLOR, linewidth=2, label=f"moving average ({window} steps)")
        loss_axes.legend(loc="upper right")
    else:
        loss_axes.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=loss_axes.transAxes)
    loss_axes.set_ylabel("training loss")
    loss_axes.set_title("Training curves")
    loss_axes.grid(alpha=0.3)
    if lrs:
        steps, values = zip(*lrs, strict=True)
        lr_axes.step(steps, values, where="post", color="#d62728", linewidth=1.5)
        lr_axes.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    lr_axes.set_ylabel("learning rate")
    lr_axes.set_xlabel("optimizer step")
    lr_axes.grid(alpha=0.3)

    previous_epoch = history[0].get("epoch")
    for entry in history[1:]:
        epoch = entry.get("epoch")
        if epoch is not None and previous_epoch is not None and int(epoch) != int(previous_epoch):
            for axes in all_axes:
                axes.axvline(entry["step"], color="black", linestyle=":", linewidth=0.8, alpha=0.5)
        previous_epoch = epoch
    return figure


def _draw_loss_terms(axes: Any, history: Sequence[Mapping[str, Any]], term_names: Sequence[str]) -> None:
    """The unweighted terms of the loss (`loss_ce`, `loss_text`, ...), one line each, smoothed like the loss."""
    positive = True
    for color, name in zip(_TERM_COLORS * 3, term_names):
        points = [(entry["step"], float(entry[name])) for entry in history if entry.get(name) is not None]
        steps, values = zip(*points, strict=True)
        positive = positive and all(value > 0 for value in values)
        window = max(1, len(values) // 20)
        axes.plot(steps, _moving_average(values, window), color=color, linewidth=1.5, label=name.removeprefix("loss_"))
    if positive:
        axes.set_yscale("log")
    axes.set_ylabel("loss terms\n(unweighted)")
    axes.legend(loc="upper right", ncols=min(4, len(term_names)), fontsize=8)
    axes.grid(alpha=0.3)


def _draw_gpa_weights(axes: Any, gpa: Sequence[tuple[int, float]]) -> None:
    """The Gaussian prompt aggregation weight of each epoch's adapter, at the epoch's last step."""
    steps, weights = zip(*gpa, strict=True)
    axes.plot(steps, weights, color="#d62728", marker="o", linewidth=1, markersize=4)
    axes.set_ylim(0, max(weights) * 1.15 if max(weights) > 0 else 1)
    axes.set_ylabel("GPA weight\nof the epoch")
    axes.grid(alpha=0.3)


def plot_training_curves(history: Sequence[Mapping[str, Any]], path: str | Path, *, dpi: int = 120) -> Path:
    """Plots the training loss and the learning rate against the optimizer step.

    Args:
        history (`Sequence[Mapping[str, Any]]`): One dict per logged step with keys `step`, `epoch`, `loss` and `lr`
            (entries without a `loss` or an `lr` are skipped in that panel). Epoch boundaries are marked with dotted
            lines. Keys `loss_<term>` (PromptSRC's unweighted loss terms) get a panel of their own, and `gpa_weight`
            (in the last entry of each epoch) one of the Gaussian prompt aggregation weights.
        path (`str | Path`): The PNG file to write (parent directories are created).
        dpi (`int`): Resolution of the PNG.

    Returns:
        `Path`: The path of the written PNG.

    Example:
        ```python
        >>> history = [{"step": s, "epoch": s // 10, "loss": 1 / (s + 1), "lr": 0.0035} for s in range(50)]
        >>> plot_training_curves(history, "outputs/run/training_curves.png")
        PosixPath('outputs/run/training_curves.png')
        ```
    """
    return _save(_draw_training_curves(history), path, dpi)


def _label(name: Any, *, max_chars: int = 40) -> str:
    """A class name shortened to `max_chars` characters for a tick label."""
    text = str(name)
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def _shown_classes(per_class_accuracy: Mapping[str, Any]) -> tuple[list[tuple[str, float]], int]:
    """The (name, accuracy) bars of one split, worst first, and how many classes were left out in the middle."""
    items = sorted(((str(k), float(v)) for k, v in per_class_accuracy.items()), key=lambda item: item[1])
    if len(items) <= MAX_CLASSES_SHOWN:
        return items, 0
    half = MAX_CLASSES_SHOWN // 2
    return items[:half] + items[-half:], len(items) - 2 * half


def _gap_label(hidden: int) -> str:
    return f"… {hidden} classes not shown …"


def _draw_per_class_accuracy(metrics_results: Mapping[str, Any]) -> Any:
    if isinstance(metrics_results, Mapping) and isinstance(metrics_results.get("results"), Mapping):
        metrics_results = metrics_results["results"]
    if not isinstance(metrics_results, Mapping):
        raise ValueError(f"metrics_results must be a dict of split -> metrics, got {type(metrics_results).__name__}.")
    splits = {
        split: result
        for split, result in metrics_results.items()
        if isinstance(result, Mapping) and result.get("per_class_accuracy")
    }
    if not splits:
        raise ValueError(
            "metrics_results has no split with a non-empty 'per_class_accuracy'; pass metrics['results'] built with "
            "maple_peft.training.metrics.classification_metrics."
        )
    shown = {split: _shown_classes(result["per_class_accuracy"]) for split, result in splits.items()}
    # Placed by hand in inches (no layout engine: with ~50 tick labels it doubles the drawing time). A split with more
    # than MAX_CLASSES_SHOWN classes keeps a bounded height: its best and worst classes, with one gap row between.
    bar_in, title_in, xlabel_in, plot_width_in = 0.2, 0.4, 0.6, 5.5
    fontsize = 8
    longest = max(len(_label(name)) for items, _ in shown.values() for name, _ in items)
    longest = max([longest] + [len(_gap_label(hidden)) for _, hidden in shown.values() if hidden])
    labels_in = 0.25 + longest * 0.062
    rows = [len(items) + (1 if hidden else 0) for items, hidden in shown.values()]
    heights_in = [max(count, 2) * bar_in for count in rows]
    width, height = labels_in + plot_width_in + 0.4, sum(h + title_in + xlabel_in for h in heights_in) + 0.1
    figure = _new_figure(width, height, constrained=False)
    top = height - 0.05
    for (split, result), (items, hidden), axes_in in zip(splits.items(), shown.values(), heights_in, strict=True):
        top -= title_in + axes_in
        axes = figure.add_axes((labels_in / width, top / height, plot_width_in / width, axes_in / height))
        top -= xlabel_in
        half = len(items) // 2
        # worst classes at the bottom, then (for a large split) a gap row, then the best classes at the top
        positions = [i + (1 if hidden and i >= half else 0) for i in range(len(items))]
        names = [_label(name) for name, _ in items]
        values = [value for _, value in items]
        axes.barh(positions, values, color=_MAPLE_COLOR, height=0.75)
        ticks, labels = list(positions), list(names)
        if hidden:
            ticks.insert(half, half)
            labels.insert(half, _gap_label(hidden))
        axes.set_yticks(ticks, labels=labels, fontsize=fontsize)
        axes.set_ylim(-0.6, len(ticks) - 0.4)
        axes.set_xlim(0, 100)
        total = len(result["per_class_accuracy"])
        shown_text = f" (the {len(items) // 2} best and {len(items) // 2} worst shown)" if hidden else ""
        if result.get("accuracy") is not None:
            axes.axvline(float(result["accuracy"]), color="black", linestyle="--", linewidth=1)
            title = f"{split}: accuracy {float(result['accuracy']):.1f}% over {total} classes{shown_text}"
        else:
            title = f"{split}: {total} classes{shown_text}"
        axes.set_title(title, fontsize=10)
        axes.set_xlabel("per-class accuracy (%)")
        axes.grid(axis="x", alpha=0.3)
        if len(items) <= 40:
            for position, value in zip(positions, values, strict=True):
                inside = value > 88  # no room right of the bar: write the value inside it
                axes.text(
                    value - 1 if inside else value + 1,
                    position,
                    f"{value:.1f}",
                    va="center",
                    ha="right" if inside else "left",
                    color="white" if inside else "black",
                    fontsize=7,
                )
    return figure


def plot_per_class_accuracy(metrics_results: Mapping[str, Any], path: str | Path, *, dpi: int = 100) -> Path:
    """Plots one horizontal bar chart of per-class accuracy per split, stacked in one figure.

    Bars are sorted from the best class (top) to the worst and the split's overall accuracy is drawn as a dashed
    line. Up to `MAX_CLASSES_SHOWN` classes every class gets a bar; a larger split (ImageNet's 1,000 classes) shows
    its `MAX_CLASSES_SHOWN // 2` best and worst classes, so the figure's size stays bounded.

    Args:
        metrics_results (`Mapping[str, Any]`): `metrics["results"]` (split -> `classification_metrics(...)`), or the
            whole `metrics.json` dict.
        path (`str | Path`): The PNG file to write.
        dpi (`int`): Resolution of the PNG.

    Returns:
        `Path`: The path of the written PNG.
    """
    return _save(_draw_per_class_accuracy(metrics_results), path, dpi)


def _bar_groups(results: Mapping[str, Mapping[str, Any]], hm: float | None) -> dict[str, float]:
    ordered = [split for split in ("base", "novel") if split in results]
    ordered += [split for split in results if split not in ordered]
    groups = {split: float(results[split]["accuracy"]) for split in ordered}
    if hm is not None:
        groups["HM"] = float(hm)
    return groups


def _draw_base_novel_hm(metrics: Mapping[str, Any] | RunMetrics) -> Any:
    run = metrics if isinstance(metrics, RunMetrics) else RunMetrics.from_dict(metrics)
    groups = _bar_groups(run.results, run.harmonic_mean)
    series = [(method_name(run.peft_config, run.train_config), groups, _MAPLE_COLOR)]
    if run.zero_shot_results:
        zero_shot = _bar_groups(run.zero_shot_results, run.zero_shot_harmonic_mean)
        series.insert(0, ("zero-shot CLIP", zero_shot, _ZERO_SHOT_COLOR))

    labels = list(groups)
    figure = _new_figure(max(5.0, 1.3 * len(labels) + 2.0), 4.5)
    axes = figure.subplots()
    width = 0.8 / len(series)
    for index, (name, values, color) in enumerate(series):
        offsets = [position - 0.4 + width * (index + 0.5) for position in range(len(labels))]
        heights = [values.get(label, float("nan")) for label in labels]
        bars = axes.bar(offsets, heights, width=width * 0.95, label=name, color=color)
        axes.bar_label(bars, labels=[f"{h:.1f}" if h == h else "" for h in heights], fontsize=8, padding=2)
    axes.set_xticks(
        range(len(labels)), labels=[{"base": "Base", "novel": "Novel"}.get(label, label) for label in labels]
    )
    axes.set_ylim(0, 105)
    axes.set_ylabel("accuracy (%)")
    axes.set_title(f"{run.dataset} ({run.setting})")
    figure.legend(loc="outside lower center", ncols=len(series), frameon=False)
    axes.grid(axis="y", alpha=0.3)
    return figure


def plot_base_novel_hm(metrics: Mapping[str, Any] | RunMetrics, path: str | Path, *, dpi: int = 120) -> Path:
    """Plots grouped accuracy bars (base, novel, HM; or each split / target), the method beside zero-shot CLIP.

    Args:
        metrics (`Mapping[str, Any] | RunMetrics`): The run's `metrics.json` dict (validated with
            `RunMetrics.from_dict`), or its `RunMetrics`.
        path (`str | Path`): The PNG file to write.
        dpi (`int`): Resolution of the PNG.

    Returns:
        `Path`: The path of the written PNG.
    """
    return _save(_draw_base_novel_hm(metrics), path, dpi)


def write_run_plots(
    output_dir: str | Path,
    metrics: Mapping[str, Any] | RunMetrics,
    *,
    history: Sequence[Mapping[str, Any]] | None = None,
) -> list[str]:
    """Writes the plots of a finished run into its folder and returns their file names (for the model card).

    Writes `training_curves.png` (when `history` has entries), `per_class_accuracy.png` (when the results hold
    per-class accuracies) and `base_novel_hm.png` (when base and novel were evaluated).

    Args:
        output_dir (`str | Path`): The run directory.
        metrics (`Mapping[str, Any] | RunMetrics`): The run's `metrics.json` dict or `RunMetrics`.
        history (`Sequence[Mapping] | None`): The logged training steps (see `plot_training_curves`).

    Returns:
        `list[str]`: The names (relative to `output_dir`) of the PNGs written, for
        `write_model_card(..., images=...)`.

    Raises:
        ImportError: When matplotlib is not installed (nothing is written).
    """
    run = metrics if isinstance(metrics, RunMetrics) else RunMetrics.from_dict(metrics)
    output_dir = Path(output_dir)
    written = []
    if history:
        written.append(plot_training_curves(history, output_dir / "training_curves.png").name)
    if any(result.get("per_class_accuracy") for result in run.results.values()):
        written.append(plot_per_class_accuracy(run.results, output_dir / "per_class_accuracy.png").name)
    if run.harmonic_mean is not None:
        written.append(plot_base_novel_hm(run, output_dir / "base_novel_hm.png").name)
    return written
