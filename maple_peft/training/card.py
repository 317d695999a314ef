"""The model card (`README.md`) of a training run: the method, the recipe, the results.

The card is titled by the method the run trained (`maple_peft.adapter_card.method_name`: MaPLe, IVLP, PromptSRC,
CoOp, VPT-deep, ...) and says how many training images per class were used when fewer existed than asked for. It is
rendered from the Jinja template `model_cards/adapter_card.md` (shipped as `maple_peft.model_cards`)
with YAML metadata built by `huggingface_hub.ModelCardData`, so the Hub indexes the adapter as a PEFT adapter of its
CLIP base model and shows the measured accuracies in its evaluation widget (`model-index`).
"""

from __future__ import annotations

import importlib.resources
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..adapter_card import hub_model_id, method_citations, method_link, method_name
from ..backbones import BACKBONES
from ..objectives import objective_classes, objective_name
from .metrics import RunMetrics
from .run_dir import atomic_write_text

__all__ = ["CARD_TAGS", "build_model_card", "render_model_card", "write_model_card"]

CARD_TAGS: tuple[str, ...] = ("maple", "prompt-learning", "peft", "zero-shot-image-classification")
"""Tags of every adapter card (besides the method's and the backbone family's)."""

TASK_TYPE = "zero-shot-image-classification"
TEMPLATE_NAME = "adapter_card.md"
MAX_INLINE_CLASS_NAMES = 10
MAX_PER_CLASS_ROWS = 200

_SETTING_DESCRIPTIONS = {
    "base2novel": "base-to-novel generalization: trained on the base half of the classes, evaluated on the base "
    "classes and on the unseen novel classes",
    "all": "few-shot classification: trained and evaluated on all classes",
    "cross_dataset": "cross-dataset transfer: trained on the source dataset, evaluated on other datasets as is",
    "zero_shot": "zero-shot evaluation",
}
_VARIANT_DESCRIPTIONS = {
    "maple": "learns {prompts} of the text encoder, and linear coupling functions that project each text prompt into "
    "a prompt of the image encoder, so that both modalities adapt together.",
    "maple_shared": "learns {prompts} of the text encoder, and one linear coupling function, shared by all layers, "
    "that projects each text prompt into a prompt of the image encoder.",
    "ivlp": "learns {prompts} of both the text and the image encoder, independently (the IVLP baseline, no coupling).",
    "language": "learns {prompts} of the text encoder only (language prompting baseline).",
    "vision": "learns {prompts} of the image encoder only (vision prompting baseline).",
    "cocoop": "learns {prompts} of the text encoder and a small meta-network that shifts them for each image, so "
    "that the class prompts depend on the image (CoCoOp).",
    "mmrl": "learns representation tokens shared by both encoders, projected into their later layers, and a "
    "projection of the image's representation features (MMRL); the class prompts are the hand-written template.",
}

# (row title, where to look, key), in table order: the names train.py and MaPLeConfig write.
_RECIPE_KEYS: tuple[tuple[str, str, str], ...] = (
    ("Context tokens (n_ctx)", "peft", "n_ctx"),
    ("Prompt depth", "peft", "depth"),
    ("Prompt initialization", "peft", "prompt_init"),
    ("Variant", "peft", "variant"),
    ("Backbone family", "peft", "backbone"),
    ("Representation tokens (n_rep)", "peft", "n_rep"),
    ("Representation width (rep_dim)", "peft", "rep_dim"),
    ("Representation layers", "peft", "rep_layers"),
    ("Fusion weight (alpha)", "peft", "alpha"),
    ("Class prompt template", "peft", "template"),
    ("Learning rate", "train", "lr"),
    ("Epochs", "train", "epochs"),
    ("Batch size", "train", "batch_size"),
    ("Warmup epochs", "train", "warmup_epochs"),
    ("Warmup learning rate", "train", "warmup_lr"),
    ("Optimizer", "train", "optimizer"),
    ("Momentum", "train", "momentum"),
    ("Weight decay", "train", "weight_decay"),
    ("Mixed precision", "train", "mixed_precision"),
)


def _cell(value: Any) -> str:
    """Formats a value for a markdown table cell."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, str):
        text = f"`{value}`" if value.strip() != value or " " in value else value
    elif isinstance(value, list | tuple | dict):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    return _escape(text)


def _escape(text: str) -> str:
    """Makes text safe inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _percent(value: Any) -> str:
    return "–" if value is None else f"{float(value):.2f}"


def _ordered_splits(results: Mapping[str, Any]) -> list[str]:
    first = [split for split in ("base", "novel") if split in results]
    return first + [split for split in results if split not in first]


def _split_title(split: str, setting: str) -> str:
    return split if setting == "cross_dataset" else split.replace("_", " ").capitalize()


def _shots(metrics: RunMetrics) -> tuple[str, str]:
    """(`"16-shot "` or `"6-shot "`, the note when fewer training images per class were used than asked for)."""
    asked, used = metrics.num_shots, metrics.shots_used
    if not asked or asked < 0:
        return "", ""
    if not used or used["min"] >= asked:
        return f"{asked}-shot ", ""
    low, high = used["min"], used["max"]
    shots = f"{low}-shot " if low == high else f"{low}- to {high}-shot "
    which = "no class has" if high < asked else "some classes have fewer than"
    return shots, f"{asked} shots per class were asked for, but {which} that many training images"


def _recipe_rows(
    metrics: RunMetrics, peft_config: Mapping[str, Any], train_config: Mapping[str, Any]
) -> list[tuple[str, str]]:
    shots = _cell(metrics.num_shots)
    if _shots(metrics)[1]:
        low, high = metrics.shots_used["min"], metrics.shots_used["max"]
        used = str(low) if low == high else f"{low} to {high}"
        shots = f"{used} ({metrics.num_shots} asked for; fewer training images available)"
    rows: list[tuple[str, str]] = [
        ("Method", _escape(method_name(peft_config, train_config))),
        ("Base model", _cell(hub_model_id(metrics.base_model) or metrics.base_model)),
        ("Dataset", _cell(metrics.dataset)),
        ("Setting", f"`{metrics.setting}` ({_SETTING_DESCRIPTIONS.get(metrics.setting, 'custom')})"),
        ("Shots per class", shots),
        ("Seed", _cell(metrics.seed)),
    ]
    for title, source, key in _RECIPE_KEYS:
        value = (peft_config if source == "peft" else train_config).get(key)
        if value is not None:
            rows.append((title, _cell(value)))
    objective = objective_classes()[objective_name(train_config, peft_config.get("variant"))]
    rows += [(title, _cell(value)) for title, value in objective.card_rows(train_config)]
    if train_config.get("gpa_mean") is not None:
        gpa = f"{_cell(train_config['gpa_mean'])} / {_cell(train_config.get('gpa_std'))}"
        rows.append(("Gaussian prompt aggregation (mean / std, in epochs)", gpa))
    if metrics.time_seconds is not None:
        rows.append(("Training time", f"{float(metrics.time_seconds) / 60:.1f} min"))
    return rows


def _class_names_line(metrics: RunMetrics) -> str:
    names: list[str] = []
    for result in metrics.results.values():
        names.extend(name for name in (result.get("per_class_accuracy") or {}) if name not in names)
    if not names:
        return 'class_names = ["cat", "dog"]  # the names of the classes to recognize'
    if len(names) <= MAX_INLINE_CLASS_NAMES:
        line = f"class_names = {json.dumps(names, ensure_ascii=False)}"
        if len(line) <= 110:
            return line
    shown = names[:3]
    return (
        f"class_names = {json.dumps(shown, ensure_ascii=False)}  # any names; e.g. {len(shown)} of the "
        f"{len(names)} classes evaluated here"
    )


def _smoke_note(assets: Sequence[str], family: str) -> str:
    """What a smoke run's card says first: which inputs were stand-ins, and that its numbers measure nothing."""
    if not assets:
        return ""
    parts = {
        "base_model": f"the base model is a tiny random {family} built from a config (never trained)",
        "data": "the images are generated (one colour pattern per class)",
    }
    what = " and ".join(parts[name] for name in ("base_model", "data") if name in assets)
    return (
        f"**A smoke run, not a result**: {what}, by `examples/make_smoke_assets.py`. Its numbers only show that "
        "training, evaluation and saving work, and the card's metadata leaves them out."
    )


def _eval_results(metrics: RunMetrics) -> list[EvalResult]:
    setting, dataset = metrics.setting, metrics.dataset
    evals = []
    for split in _ordered_splits(metrics.results):
        result = metrics.results[split]
        target, dataset_split = (split, "test") if setting == "cross_dataset" else (dataset, split)
        common = {
            "task_type": TASK_TYPE,
            "task_name": "Zero-shot image classification",
            "dataset_type": target,
            "dataset_name": target,
            "dataset_split": dataset_split,
        }
        evals.append(EvalResult(metric_type="accuracy", metric_value=round(float(result["accuracy"]), 2), **common))
        if result.get("macro_f1") is not None:
            evals.append(
                EvalResult(
                    metric_type="f1",
                    metric_name="Macro-F1",
                    metric_args={"average": "macro"},
                    metric_value=round(float(result["macro_f1"]), 2),
                    **common,
                )
            )
    hm = metrics.harmonic_mean
    if hm is not None:
        evals.append(
            EvalResult(
                task_type=TASK_TYPE,
                task_name="Zero-shot image classification",
                dataset_type=dataset,
                dataset_name=dataset,
                dataset_split="base+novel",
                metric_type="harmonic_mean",
                metric_name="Harmonic mean (base, novel)",
                metric_value=round(hm, 2),
            )
        )
    return evals


def build_model_card(
    metrics: Mapping[str, Any] | RunMetrics,
    peft_config: Mapping[str, Any] | None = None,
    train_config: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    *,
    license: str = "apache-2.0",
    images: Sequence[str] = (),
) -> ModelCard:
    """Builds the `huggingface_hub.ModelCard` of a trained MaPLe adapter.

    Args:
        metrics (`Mapping[str, Any] | RunMetrics`): The run's `metrics.json` dict (see `maple_peft.training.metrics`).
        peft_config (`Mapping[str, Any] | None`): The adapter configuration (e.g. `MaPLeConfig.to_dict()`); defaults to
            `metrics["peft_config"]`.
        train_config (`Mapping[str, Any] | None`): The training hyper-parameters; defaults to
            `metrics["train_config"]`.
        repo_id (`str | None`): The Hub repository the adapter is pushed to (`"user/name"`), used in the loading
            example and as the model-index name. `None` shows a local-path placeholder.
        license (`str`): The card's license identifier (a Hub license id such as `"apache-2.0"` or `"mit"`).
        images (`Sequence[str]`): Paths, relative to the card, of plots to embed (e.g. `["per_class_accuracy.png"]`).

    Returns:
        The model card; `str(card)` is the README.md text.
    """
    metrics = metrics if isinstance(metrics, RunMetrics) else RunMetrics.from_dict(metrics)
    peft_config = dict(metrics.peft_config) if peft_config is None else dict(peft_config)
    train_config = dict(metrics.train_config) if train_config is None else dict(train_config)
    dataset, setting = metrics.dataset, metrics.setting
    hub_base = hub_model_id(metrics.base_model)
    base_model = hub_base or metrics.base_model  # a Hugging Face cache snapshot is shown as its Hub id
    results = metrics.results
    zs_results = metrics.zero_shot_results or {}

    datasets = [dataset]
    if setting == "cross_dataset":
        datasets += [target for target in results if target not in datasets]
    datasets = [name for name in datasets if ":" not in name]  # a local dataset's identity is no Hub dataset id
    backbone = BACKBONES.get(peft_config.get("backbone") or "clip", BACKBONES["clip"])
    method = method_name(peft_config, train_config)
    slug = re.sub(r"[^a-z0-9]+", "-", method.lower()).strip("-")
    model_name = repo_id.split("/")[-1] if repo_id else f"{slug}-{base_model.rstrip('/').split('/')[-1]}-{dataset}"
    card_data = ModelCardData(
        base_model=hub_base,
        library_name="peft",
        pipeline_tag=TASK_TYPE,
        license=license,
        tags=list(CARD_TAGS) + [backbone.family] + ([slug] if slug not in CARD_TAGS else []),
        datasets=datasets,
        metrics=["accuracy"],
        model_name=model_name,
        eval_results=None if metrics.smoke_assets else _eval_results(metrics),  # a smoke run measures nothing
    )

    result_rows = []
    for split in _ordered_splits(results):
        result, zs = results[split], zs_results.get(split, {})
        result_rows.append(
            {
                "name": _split_title(split, setting),
                "accuracy": _percent(result.get("accuracy")),
                "macro_f1": _percent(result.get("macro_f1")),
                "zs_accuracy": _percent(zs.get("accuracy")),
                "zs_macro_f1": _percent(zs.get("macro_f1")),
                "num_images": _cell(result.get("num_images")),
                "num_classes": _cell(result.get("num_classes")),
            }
        )
    hm_row = None
    if metrics.harmonic_mean is not None:
        hm_row = {"value": _percent(metrics.harmonic_mean), "zs_value": _percent(metrics.zero_shot_harmonic_mean)}

    per_class = []
    for split in _ordered_splits(results):
        per_class_accuracy = results[split].get("per_class_accuracy") or {}
        if 0 < len(per_class_accuracy) <= MAX_PER_CLASS_ROWS:
            rows = [(_escape(str(name)), _percent(acc)) for name, acc in per_class_accuracy.items()]
            per_class.append({"name": _split_title(split, setting), "rows": rows})

    seed_text = f", seed {metrics.seed}" if metrics.seed is not None else ""
    shots_text, shots_note = _shots(metrics)
    n_ctx, depth = peft_config.get("n_ctx"), peft_config.get("depth")
    variant = peft_config.get("variant") or "maple"
    prompts_text = (
        f"{n_ctx} prompt tokens in each of the first {depth} layers"
        if n_ctx is not None and depth is not None
        else "prompt tokens in the first layers"
    )
    base_link = f"[`{base_model}`](https://huggingface.co/{base_model})" if hub_base else f"`{base_model}`"
    description = (
        f"A {method_link(method)} adapter for {base_link}, "
        f"trained with `maple_peft` on {shots_text}`{dataset}`{seed_text} "
        f"({_SETTING_DESCRIPTIONS.get(setting, setting)}{'; ' + shots_note if shots_note else ''}). The "
        f"{backbone.display_name} base model stays frozen; the adapter "
        + _VARIANT_DESCRIPTIONS.get(variant, f"(variant `{variant}`) learns {{prompts}}.").format(prompts=prompts_text)
        + " It holds only these parameters and is loaded on top of the base model with PEFT."
    )
    if setting == "base2novel":
        results_intro = (
            f"Accuracy on the test images of `{dataset}`: base classes (seen in training) and novel classes (never "
            "seen), each evaluated among its own classes."
        )
    elif setting == "cross_dataset":
        results_intro = f"Trained on `{dataset}`; each target dataset is evaluated on all its classes as is."
    else:
        results_intro = f"Accuracy on the test images of `{dataset}`."
    if zs_results:
        results_intro += " Zero-shot is the same base model with hand-written prompts and no adapter."
    smoke_note = _smoke_note(metrics.smoke_assets, backbone.display_name)

    full_config = {"peft_config": peft_config, "train_config": train_config}
    versions = [("maple_peft", metrics.maple_peft_version), *metrics.versions.items()]
    template = importlib.resources.files("maple_peft.model_cards").joinpath(TEMPLATE_NAME).read_text(encoding="utf-8")
    return ModelCard.from_template(
        card_data,
        template_str=template,
        title=f"{method} adapter: {base_model.rstrip('/').split('/')[-1]} on {dataset}",
        method=method,
        citations=method_citations(method),
        description=description,
        base_model_id=base_model,
        family=backbone.display_name,
        adapter_id=repo_id or "path/to/this/adapter",
        class_names_line=_class_names_line(metrics),
        recipe_rows=_recipe_rows(metrics, peft_config, train_config),
        full_config=json.dumps(full_config, indent=2, sort_keys=True, default=str)
        if any(full_config.values())
        else "",
        results_intro=results_intro,
        smoke_note=smoke_note,
        split_header="Target dataset" if setting == "cross_dataset" else "Split",
        has_zero_shot=bool(zs_results),
        result_rows=result_rows,
        hm_row=hm_row,
        per_class=per_class,
        images=list(images),
        framework_versions=[(name, version or "not installed") for name, version in versions if name],
    )


def render_model_card(
    metrics: Mapping[str, Any] | RunMetrics,
    peft_config: Mapping[str, Any] | None = None,
    train_config: Mapping[str, Any] | None = None,
    repo_id: str | None = None,
    *,
    license: str = "apache-2.0",
    images: Sequence[str] = (),
) -> str:
    """Renders the README.md text of a trained MaPLe adapter (see `build_model_card` for the arguments).

    Args:
        metrics (`Mapping[str, Any] | RunMetrics`): The run's `metrics.json` dict.
        peft_config (`Mapping[str, Any] | None`): The adapter configuration; defaults to `metrics["peft_config"]`.
        train_config (`Mapping[str, Any] | None`): The training hyper-parameters; defaults to
            `metrics["train_config"]`.
        repo_id (`str | None`): The Hub repository id used in the loading example, or `None`.
        license (`str`): The card's license identifier.
        images (`Sequence[str]`): Paths, relative to the card, of plots to embed.

    Returns:
        The model card as markdown with a YAML metadata header.

    Example:
        ```python
        >>> text = render_model_card(json.load(open("outputs/eurosat/metrics.json")), repo_id="me/maple-eurosat")
        >>> ModelCard(text).data.library_name
        'peft'
        ```
    """
    card = build_model_card(metrics, peft_config, train_config, repo_id, license=license, images=images)
    return str(card)


def write_model_card(
    output_dir: str | Path,
    repo_id: str | None = None,
    *,
    images: Sequence[str] | None = None,
    license: str = "apache-2.0",
    filename: str = "README.md",
) -> Path:
    """Writes the model card of a run directory from its `metrics.json`, embedding the plots the run wrote.

    Only the images listed in `images` are embedded: PNGs left in the folder by an earlier run (or put there by the
    user) never appear in the card unless listed.

    Args:
        output_dir (`str | Path`): The run directory, holding `metrics.json` (and usually the adapter and plots).
        repo_id (`str | None`): The Hub repository id used in the loading example, or `None`.
        images (`Sequence[str] | None`): File names (relative to `output_dir`) of the plots this run wrote, in the
            order to show them; each must exist. `None` or empty embeds no image.
        license (`str`): The card's license identifier.
        filename (`str`): The card's file name inside `output_dir`.

    Returns:
        `Path`: The path of the written card.
    """
    output_dir = Path(output_dir)
    metrics_path = output_dir / "metrics.json"
    if not metrics_path.is_file():
        raise FileNotFoundError(
            f"{metrics_path} does not exist; write the run's metrics "
            "(maple_peft.training.metrics.build_run_metrics) first."
        )
    if isinstance(images, str):
        raise ValueError(f"images={images!r} must be a list of file names, e.g. [{images!r}].")
    images = [str(image) for image in images or ()]
    for image in images:
        if Path(image).is_absolute() or ".." in Path(image).parts or not (output_dir / image).is_file():
            raise ValueError(
                f"images={images!r} lists {image!r}, which is not a file inside {str(output_dir)!r}; list the plots this run "
                "wrote, by their names relative to output_dir."
            )
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    path = output_dir / filename
    atomic_write_text(path, render_model_card(metrics, repo_id=repo_id, license=license, images=images))
    return path
