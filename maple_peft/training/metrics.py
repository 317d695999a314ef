"""Evaluation metrics (accuracy, macro-F1, per-class accuracy, harmonic means; percentages, 0-100) and the record of a
run, `metrics.json` (`RunMetrics`, `build_run_metrics`), shared by the training and evaluation scripts.

The file's fields: docs/formats.md#metricsjson-the-record-of-a-run. Grouping runs into tables:
`maple_peft.training.tables`.
"""

from __future__ import annotations

import collections
import importlib.metadata
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "SETTINGS",
    "RunMetrics",
    "base_novel_harmonic_mean",
    "build_run_metrics",
    "classification_metrics",
    "collect_versions",
    "harmonic_mean",
    "run_benchmark",
    "run_split_source",
]

SETTINGS: tuple[str, ...] = ("base2novel", "all", "cross_dataset", "zero_shot")
"""The values `metrics["setting"]` may take."""

_VERSION_PACKAGES = ("torch", "transformers", "peft", "accelerate")


def _to_numpy(values: Any, name: str) -> np.ndarray:
    """Converts a list, numpy array or (possibly CUDA) torch tensor to a numpy array."""
    if hasattr(values, "detach"):  # torch.Tensor, without importing torch
        values = values.detach().cpu()
        values = (values.float() if values.is_floating_point() else values).numpy()  # numpy has no bfloat16
    array = np.asarray(values)
    if array.dtype == object:
        raise ValueError(
            f"{name} must be a sequence of integers, got {type(values).__name__} with ragged or mixed items"
        )
    return array


def _as_class_indices(array: np.ndarray, name: str, num_classes: int) -> np.ndarray:
    """Checks that `array` holds integer class indices in `[0, num_classes)` and returns it as int64."""
    if not np.issubdtype(array.dtype, np.integer):
        if not (np.issubdtype(array.dtype, np.floating) and np.all(np.mod(array, 1) == 0)):
            raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}.")
    array = array.astype(np.int64)
    bad = array[(array < 0) | (array >= num_classes)]
    if bad.size:
        raise ValueError(
            f"{name} contains class index {int(bad[0])}, outside [0, {num_classes}) for {num_classes} class names; "
            "check that labels and class_names come from the same split."
        )
    return array


def classification_metrics(predictions: Any, labels: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """Computes the accuracy, macro-F1 and per-class accuracy of a classifier's predictions.

    Classes without any test image are left out of the macro-F1 and of `per_class_accuracy` (their recall is
    undefined), so a split that evaluates only some classes gives no division by zero. Predictions of such a class
    still count as false positives of the predicted class and as errors of the true one.

    Args:
        predictions (`Any`): Predicted class indices, shape `(N,)`, as a list, numpy array or torch tensor. Logits of
            shape `(N, num_classes)` are also accepted and reduced with `argmax`.
        labels (`Any`): True class indices, shape `(N,)`, in `[0, len(class_names))`.
        class_names (`Sequence[str]`): The name of each class index; keys of `per_class_accuracy`. Must be unique.

    Returns:
        A dict with `accuracy` (%), `macro_f1` (%), `per_class_accuracy` (% keyed by class name, classes with test
        images only, in class-index order), `num_images` and `num_classes` (`len(class_names)`).

    Example:
        ```python
        >>> m = classification_metrics([0, 1, 1], [0, 1, 0], ["cat", "dog"])
        >>> round(m["accuracy"], 2), m["per_class_accuracy"]
        (66.67, {'cat': 50.0, 'dog': 100.0})
        ```
    """
    class_names = list(class_names)
    num_classes = len(class_names)
    if num_classes == 0:
        raise ValueError("class_names is empty; pass the name of every class index the classifier can predict.")
    if len(set(class_names)) != num_classes:
        duplicates = sorted(name for name, count in collections.Counter(class_names).items() if count > 1)
        raise ValueError(f"class_names must be unique, but {duplicates} appear more than once.")

    preds = _to_numpy(predictions, "predictions")
    targets = _to_numpy(labels, "labels")
    if preds.ndim == 2:
        if preds.shape[1] != num_classes:
            raise ValueError(
                f"Predictions look like logits of shape {tuple(preds.shape)} but there are {num_classes} class names; "
                "pass logits of shape (N, len(class_names)) or predicted class indices of shape (N,)."
            )
        preds = preds.argmax(axis=1)
    preds = preds.reshape(-1) if preds.ndim == 0 else preds
    targets = targets.reshape(-1) if targets.ndim == 0 else targets
    if preds.ndim != 1 or targets.ndim != 1:
        raise ValueError(
            f"Predictions and labels must be 1-D, got shapes {tuple(preds.shape)} and {tuple(targets.shape)}."
        )
    if preds.shape[0] != targets.shape[0]:
        raise ValueError(
            f"Got {preds.shape[0]} predictions but {targets.shape[0]} labels; pass one prediction per labelled image "
            "(with accelerate, gather both with `gather_for_metrics`)."
        )
    if preds.shape[0] == 0:
        raise ValueError("Predictions and labels are empty; evaluate at least one image.")
    preds = _as_class_indices(preds, "predictions", num_classes)
    targets = _as_class_indices(targets, "labels", num_classes)

    true_positives = np.bincount(targets[preds == targets], minlength=num_classes).astype(np.float64)
    support = np.bincount(targets, minlength=num_classes).astype(np.float64)  # test images per true class
    predicted = np.bincount(preds, minlength=num_classes).astype(np.float64)  # images predicted as each class
    present = support > 0

    recall = np.divide(true_positives, support, out=np.zeros(num_classes), where=support > 0)
    precision = np.divide(true_positives, predicted, out=np.zeros(num_classes), where=predicted > 0)
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros(num_classes), where=denominator > 0)

    return {
        "accuracy": float(true_positives.sum() / targets.shape[0] * 100.0),
        "macro_f1": float(f1[present].mean() * 100.0),
        "per_class_accuracy": {class_names[i]: float(recall[i] * 100.0) for i in np.flatnonzero(present)},
        "num_images": int(targets.shape[0]),
        "num_classes": num_classes,
    }


def harmonic_mean(base: float, novel: float) -> float:
    """The harmonic mean `2BN / (B + N)` of base and novel accuracy, the headline number of base-to-novel tables.

    Args:
        base (`float`): Accuracy on the base classes (%), >= 0.
        novel (`float`): Accuracy on the novel classes (%), >= 0.

    Returns:
        `float`: The harmonic mean, or 0.0 when both accuracies are 0.
    """
    for name, value in (("base", base), ("novel", novel)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or math.isnan(value) or value < 0:
            raise ValueError(f"{name}={value!r} is not an accuracy; pass a non-negative number (a percentage).")
    if base + novel == 0:
        return 0.0
    return float(2.0 * base * novel / (base + novel))


def base_novel_harmonic_mean(accuracies: Mapping[str, float]) -> float | None:
    """The one harmonic-mean rule of the project: the HM of the `"base"` and `"novel"` accuracies, if both are present.

    Used for a run's `metrics.json`, its zero-shot results, the seed averages of `summarize_runs` and the average row
    of `examples/aggregate.py` (always the HM of the averaged accuracies, never an average of HMs).

    Args:
        accuracies (`Mapping[str, float]`): Split (or target dataset) name -> accuracy (%).

    Returns:
        `float | None`: `harmonic_mean(base, novel)`, or `None` when `"base"` or `"novel"` is missing.
    """
    if "base" in accuracies and "novel" in accuracies:
        return harmonic_mean(accuracies["base"], accuracies["novel"])
    return None


def collect_versions() -> dict[str, str | None]:
    """The installed versions of torch, transformers, peft and accelerate (`None` for a missing package)."""
    versions: dict[str, str | None] = {}
    for package in _VERSION_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _percentage(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and 0 <= value <= 100


def _checked_results(results: Any, where: str) -> dict[str, dict[str, Any]]:
    """A copy of `{split: result}` after checking that every result has a percentage `accuracy`."""
    if not isinstance(results, Mapping) or not results:
        raise ValueError(f"{where} must be a non-empty dict of split name -> metrics, got {results!r}.")
    checked = {}
    for split, result in results.items():
        if not isinstance(result, Mapping) or "accuracy" not in result:
            raise ValueError(
                f"{where}[{split!r}] has no 'accuracy'; build each result with "
                "maple_peft.training.metrics.classification_metrics."
            )
        for key in ("accuracy", "macro_f1"):
            if key in result and result[key] is not None and not _percentage(result[key]):
                raise ValueError(f"{where}[{split!r}][{key!r}]={result[key]!r} is not a percentage in [0, 100].")
        checked[str(split)] = dict(result)
    return checked


def _accuracies(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    return {split: result["accuracy"] for split, result in results.items()}


@dataclass
class RunMetrics:
    """The schema of a run's `metrics.json` (see the module docstring), validated when built.

    The card, the plots and `examples/aggregate.py` read a `metrics.json` through `RunMetrics.from_dict`, and every
    harmonic mean comes from `base_novel_harmonic_mean`: `harmonic_mean` is derived from `results`, never stored
    separately in memory (the stored value in a file must agree with it).

    Args:
        base_model (`str`): Hub id or (absolute) path of the CLIP checkpoint.
        dataset (`str`): The (source) dataset's identity, e.g. `"eurosat"` or `"imagefolder:flowers-3f2a9c1d"`
            (see `maple_peft.training.data.dataset_identity`).
        setting (`str`): One of `SETTINGS`.
        seed (`int | None`): The run's random seed.
        results (`dict[str, dict]`): `{split_or_target: classification_metrics(...)}`; each needs an `accuracy` (%).
        num_shots (`int | None`): Training images per class asked for (`None` for zero-shot runs).
        train_config (`dict`): The training hyper-parameters (JSON-serializable).
        peft_config (`dict`): The adapter configuration, e.g. `MaPLeConfig.to_dict()`.
        time_seconds (`float | None`): Wall-clock time of the run.
        zero_shot_results (`dict[str, dict] | None`): Zero-shot CLIP results on the same splits, if evaluated.
        shots_used (`dict | None`): `{"min": m, "max": M}`, the training images per class actually used.
        maple_peft_version (`str | None`): The package version that wrote the run.
        versions (`dict[str, str | None]`): Versions of torch, transformers, peft and accelerate.
        split_source (`str | None`): Which split the images came from (`"coop"`, `"hub:<id>:<train>/<test>"`,
            `"local:<train>/<test>"`); `None` in files written before it was recorded (see `run_split_source`).
        split_note (`str | None`): The same in a sentence.
        benchmark (`str | None`): The benchmark the dataset stands for (`"eurosat"`), if any.
        data_source (`str | None`): Where CoOp-layout data was downloaded from (`hf://<repo>@<revision>`), if it was.
        smoke_assets (`list[str]`): The inputs that are the offline smoke run's stand-ins (`"base_model"`, `"data"`;
            see `maple_peft.training.data.smoke_assets`); empty for a real run.

    Example:
        ```python
        >>> run = RunMetrics(base_model="m", dataset="eurosat", setting="base2novel", seed=1,
        ...                  results={"base": {"accuracy": 90.0}, "novel": {"accuracy": 60.0}})
        >>> run.harmonic_mean
        72.0
        ```
    """

    base_model: str
    dataset: str
    setting: str
    seed: int | None
    results: dict[str, dict[str, Any]]
    num_shots: int | None = None
    train_config: dict[str, Any] = field(default_factory=dict)
    peft_config: dict[str, Any] = field(default_factory=dict)
    time_seconds: float | None = None
    zero_shot_results: dict[str, dict[str, Any]] | None = None
    shots_used: dict[str, int] | None = None
    maple_peft_version: str | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
    split_source: str | None = None
    split_note: str | None = None
    benchmark: str | None = None
    data_source: str | None = None
    smoke_assets: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.setting not in SETTINGS:
            raise ValueError(f"setting={self.setting!r} is not one of {list(SETTINGS)}.")
        for name in ("base_model", "dataset"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name}={getattr(self, name)!r} must be a non-empty string.")
        self.results = _checked_results(self.results, "results")
        if self.zero_shot_results is not None:
            self.zero_shot_results = _checked_results(self.zero_shot_results, "zero_shot_results")
        if self.shots_used is not None:
            used = self.shots_used
            if not (
                isinstance(used, Mapping)
                and all(isinstance(used.get(k), int) and used[k] >= 0 for k in ("min", "max"))
            ):
                raise ValueError(f"shots_used={used!r} must be {{'min': int, 'max': int}}, the images per class used.")
            self.shots_used = {"min": used["min"], "max": used["max"]}
        self.train_config = dict(self.train_config or {})
        self.peft_config = dict(self.peft_config or {})
        self.versions = dict(self.versions or {})
        for name in ("split_source", "split_note", "benchmark", "data_source"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{name}={value!r} must be text (or absent).")
        smoke = self.smoke_assets
        if not isinstance(smoke, Sequence) or isinstance(smoke, str) or not set(smoke) <= {"base_model", "data"}:
            raise ValueError(f"smoke_assets={smoke!r} must be a list of 'base_model' and 'data' (or empty).")
        self.smoke_assets = sorted(set(smoke))

    @property
    def harmonic_mean(self) -> float | None:
        """The HM of base and novel accuracy (`None` unless both were evaluated)."""
        return base_novel_harmonic_mean(_accuracies(self.results))

    @property
    def zero_shot_harmonic_mean(self) -> float | None:
        """The HM of zero-shot CLIP's base and novel accuracy (`None` unless both were evaluated)."""
        return (
            None if self.zero_shot_results is None else base_novel_harmonic_mean(_accuracies(self.zero_shot_results))
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able `metrics.json` dict, with `harmonic_mean` (and the zero-shot one) filled in."""
        metrics: dict[str, Any] = {
            "maple_peft_version": self.maple_peft_version,
            "versions": dict(self.versions),
            "base_model": self.base_model,
            "dataset": self.dataset,
            "setting": self.setting,
            "seed": self.seed,
            "num_shots": self.num_shots,
            **({"shots_used": dict(self.shots_used)} if self.shots_used is not None else {}),
            "train_config": dict(self.train_config),
            "peft_config": dict(self.peft_config),
            "time_seconds": self.time_seconds,
            "results": {name: dict(result) for name, result in self.results.items()},
        }
        for name in ("split_source", "split_note", "benchmark", "data_source"):
            if getattr(self, name) is not None:
                metrics[name] = getattr(self, name)
        if self.smoke_assets:
            metrics["smoke_assets"] = list(self.smoke_assets)
        if self.harmonic_mean is not None:
            metrics["harmonic_mean"] = self.harmonic_mean
        if self.zero_shot_results is not None:
            zero_shot: dict[str, Any] = {"results": {k: dict(v) for k, v in self.zero_shot_results.items()}}
            if self.zero_shot_harmonic_mean is not None:
                zero_shot["harmonic_mean"] = self.zero_shot_harmonic_mean
            metrics["zero_shot"] = zero_shot
        return metrics

    @classmethod
    def from_dict(cls, metrics: Any) -> RunMetrics:
        """Reads (and validates) a loaded `metrics.json`.

        Args:
            metrics (`Mapping[str, Any]`): The loaded file.

        Returns:
            `RunMetrics`: The run's metrics.

        Raises:
            ValueError: Naming the first missing or malformed field, or a stored harmonic mean that disagrees with
                the results.
        """
        if not isinstance(metrics, Mapping):
            raise ValueError(f"The metrics must be a dict (a loaded metrics.json), got {type(metrics).__name__}.")
        missing = [key for key in ("base_model", "dataset", "setting", "seed", "results") if key not in metrics]
        if missing:
            raise ValueError(f"The metrics lack the required field(s) {missing}; build it with build_run_metrics().")
        zero_shot = metrics.get("zero_shot")
        if zero_shot is not None and (not isinstance(zero_shot, Mapping) or "results" not in zero_shot):
            raise ValueError("metrics['zero_shot'] must be a dict with a 'results' entry.")
        try:
            run = cls(
                base_model=metrics["base_model"],
                dataset=metrics["dataset"],
                setting=metrics["setting"],
                seed=metrics["seed"],
                results=metrics["results"],
                num_shots=metrics.get("num_shots"),
                train_config=metrics.get("train_config") or {},
                peft_config=metrics.get("peft_config") or {},
                time_seconds=metrics.get("time_seconds"),
                zero_shot_results=None if zero_shot is None else zero_shot["results"],
                shots_used=metrics.get("shots_used"),
                maple_peft_version=metrics.get("maple_peft_version"),
                versions=metrics.get("versions") or {},
                split_source=metrics.get("split_source"),
                split_note=metrics.get("split_note"),
                benchmark=metrics.get("benchmark"),
                data_source=metrics.get("data_source"),
                smoke_assets=metrics.get("smoke_assets") or [],
            )
        except ValueError as error:
            raise ValueError(f"Invalid metrics: {error}") from error
        for where, stored, expected in (
            ("metrics['harmonic_mean']", metrics.get("harmonic_mean"), run.harmonic_mean),
            (
                "metrics['zero_shot']['harmonic_mean']",
                (zero_shot or {}).get("harmonic_mean"),
                run.zero_shot_harmonic_mean,
            ),
        ):
            if stored is None:
                continue
            if expected is None:
                raise ValueError(f"{where}={stored!r} is given but the results lack a 'base' or a 'novel' split.")
            if not _percentage(stored) or not math.isclose(stored, expected, rel_tol=1e-6, abs_tol=1e-6):
                raise ValueError(f"{where}={stored!r} but 2BN/(B+N) of the results is {expected!r}.")
        return run


def build_run_metrics(
    *,
    base_model: str,
    dataset: str,
    setting: str,
    seed: int,
    num_shots: int | None,
    results: Mapping[str, Mapping[str, Any]],
    train_config: Mapping[str, Any] | None = None,
    peft_config: Mapping[str, Any] | None = None,
    time_seconds: float | None = None,
    zero_shot_results: Mapping[str, Mapping[str, Any]] | None = None,
    split_source: str | None = None,
    split_note: str | None = None,
    benchmark: str | None = None,
    shots_used: Mapping[str, int] | None = None,
    data_source: str | None = None,
    smoke_assets: Sequence[str] = (),
) -> dict[str, Any]:
    """Assembles (and validates) the `metrics.json` dict of one run: `RunMetrics(...).to_dict()` with the versions.

    Args:
        base_model (`str`): Hub id or path of the CLIP checkpoint, e.g. `"openai/clip-vit-base-patch16"`.
        dataset (`str`): The (source) dataset's identity, e.g. `"eurosat"`.
        setting (`str`): One of `SETTINGS`.
        seed (`int`): The run's random seed.
        num_shots (`int | None`): Training images per class (`None` for zero-shot runs).
        results (`Mapping[str, Mapping]`): `{split_or_target: classification_metrics(...)}`.
        train_config (`Mapping | None`): The training hyper-parameters (JSON-serializable).
        peft_config (`Mapping | None`): The adapter configuration, e.g. `MaPLeConfig.to_dict()`.
        time_seconds (`float | None`): Wall-clock time of the run.
        zero_shot_results (`Mapping[str, Mapping] | None`): Zero-shot CLIP results on the same splits, if evaluated.
        split_source (`str | None`): Which split the images came from (`ExperimentData.split_source`).
        split_note (`str | None`): The same in a sentence.
        benchmark (`str | None`): The benchmark the dataset stands for, if any.
        shots_used (`Mapping[str, int] | None`): `{"min": m, "max": M}`, the training images per class actually
            used (fewer than `num_shots` where a class has fewer images).
        data_source (`str | None`): Where CoOp-layout data was downloaded from (`ExperimentData.data_source`).
        smoke_assets (`Sequence[str]`): The inputs that are the offline smoke run's stand-ins (`"base_model"`,
            `"data"`; `maple_peft.training.data.smoke_assets`).

    Returns:
        `dict[str, Any]`: The `metrics.json` dict (`harmonic_mean` present when base and novel were evaluated).
    """
    from maple_peft import __version__

    return RunMetrics(
        base_model=base_model,
        dataset=dataset,
        setting=setting,
        seed=seed,
        num_shots=num_shots,
        results=dict(results),
        train_config=dict(train_config or {}),
        peft_config=dict(peft_config or {}),
        time_seconds=time_seconds,
        zero_shot_results=None if zero_shot_results is None else dict(zero_shot_results),
        shots_used=None if shots_used is None else dict(shots_used),
        maple_peft_version=__version__,
        versions=collect_versions(),
        split_source=split_source,
        split_note=split_note,
        benchmark=benchmark,
        data_source=data_source,
        smoke_assets=list(smoke_assets),
    ).to_dict()


def run_split_source(run: RunMetrics) -> str:
    """Which split a run's images came from: its recorded `split_source`, or, for files written before it was
    recorded, the one its options imply (`"coop"` for `--dataset`, `"hub:<id>:<train>/<test>"` or
    `"local:<train>/<test>"` for `--dataset_name`).

    Args:
        run (`RunMetrics`): The run.
    """
    if run.split_source:
        return run.split_source
    options = run.train_config
    if options.get("dataset"):
        return "coop"
    if options.get("dataset_name"):
        from .data.registry import split_source_of

        return split_source_of(
            str(options["dataset_name"]),
            options.get("data_dir"),
            str(options.get("train_split") or "train"),
            str(options.get("test_split") or "test"),
        )
    if run.dataset.startswith("imagefolder:"):
        return "local:train/test"
    from .data.coop import BENCHMARKS, get_benchmark

    try:
        return "coop" if get_benchmark(run.dataset).name in BENCHMARKS else f"unrecorded:{run.dataset}"
    except (KeyError, ValueError):
        return f"unrecorded:{run.dataset}"


def run_benchmark(run: RunMetrics) -> str | None:
    """The benchmark a run's dataset stands for (`"eurosat"`): recorded, or its CoOp name; `None` for other data.

    Args:
        run (`RunMetrics`): The run.
    """
    if run.benchmark:
        return run.benchmark
    if run_split_source(run) != "coop":
        return None
    from .data.coop import get_benchmark

    try:
        return get_benchmark(run.dataset).name
    except (KeyError, ValueError):
        return None
