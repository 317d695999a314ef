"""Few-shot sampling and the base-to-novel class split of the CoOp / CoCoOp / MaPLe protocol: the original code's
draw (`sample_few_shot_dassl`), an order-independent one (`sample_few_shot`) and `subsample_classes`.

The protocol: docs/formats.md#the-few-shot-draw-and-train_imagesjson.
"""

from __future__ import annotations

import math
import operator
import random
import warnings
from collections.abc import Sequence
from typing import Literal

__all__ = ["sample_few_shot", "sample_few_shot_dassl", "split_base_novel", "subsample_classes"]

_MAX_LISTED = 20


def _check_labels(labels: Sequence[int]) -> list[int]:
    out = []
    for i, label in enumerate(labels):
        try:
            if isinstance(label, bool):
                raise TypeError
            label = operator.index(label)
        except TypeError:
            raise TypeError(f"labels[{i}] = {label!r} is not an integer class id; labels must be ints >= 0") from None
        if label < 0:
            raise ValueError(
                f"labels[{i}] = {label} is negative; labels must be class ids >= 0 (drop unlabeled items)"
            )
        out.append(label)
    return out


def _warn_short_classes(
    short: list[tuple[int, int]], num_shots: int | None, class_names: Sequence[str] | None
) -> None:
    """One warning naming each class (label, count) that has fewer than `num_shots` items and keeps them all."""
    if not short:
        return

    def name(label: int) -> str:
        if class_names is not None and label < len(class_names):
            return f"{label} ({class_names[label]!r})"
        return str(label)

    listed = ", ".join(f"class {name(label)} has {count}" for label, count in short[:_MAX_LISTED])
    more = f", and {len(short) - _MAX_LISTED} more" if len(short) > _MAX_LISTED else ""
    warnings.warn(
        f"{len(short)} class(es) have fewer than num_shots={num_shots} items and keep all they have: {listed}{more}",
        UserWarning,
        stacklevel=3,
    )


def sample_few_shot(
    labels: Sequence[int],
    num_shots: int | None,
    seed: int,
    keys: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
) -> list[int]:
    """Draw `num_shots` items per class, without replacement, reproducibly.

    For every class (ascending label order) the items of that class are sorted by `keys` (ties and the default:
    by index) and `random.Random(seed).sample` draws `num_shots` of them; one RNG is shared across classes, as
    in CoOp. A class with fewer than `num_shots` items keeps all of them (CoOp's behaviour without
    `repeat`), and a warning names each such class with its count.

    Args:
        labels (`Sequence[int]`): The label of each item of the dataset.
        num_shots (`int | None`): Items per class; `-1` or `None` keeps every item.
        seed (`int`): Seed for `random.Random`.
        keys (`Sequence[str] | None`): A stable identity per item (e.g. image paths relative to the dataset root). With
            keys, the result does not depend on the order in which the items are listed. Defaults to the item's index.
        class_names (`Sequence[str] | None`): Optional names by label, used in the warning.

    Returns:
        Indices into `labels`, sorted by `(label, key)`.
    """
    labels = _check_labels(labels)
    if keys is not None and len(keys) != len(labels):
        raise ValueError(f"Got {len(keys)} keys for {len(labels)} labels; pass one key per item (or keys=None)")
    if num_shots is not None and (isinstance(num_shots, bool) or not isinstance(num_shots, int)):
        raise TypeError(f"num_shots={num_shots!r} must be a positive int, or -1 / None for all items")
    take_all = num_shots is None or num_shots == -1
    if not take_all and num_shots < 1:
        raise ValueError(f"num_shots={num_shots} is invalid; use a positive number of shots, or -1 / None for all")

    def sort_key(i: int) -> tuple:
        return (keys[i], i) if keys is not None else (i,)

    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)

    rng = random.Random(seed)
    selected: list[int] = []
    short: list[tuple[int, int]] = []
    for label in sorted(by_class):
        items = sorted(by_class[label], key=sort_key)
        if take_all:
            chosen = items
        elif len(items) < num_shots:
            short.append((label, len(items)))
            chosen = items
        else:
            chosen = rng.sample(items, num_shots)
        selected.extend(sorted(chosen, key=sort_key))

    _warn_short_classes(short, num_shots, class_names)
    return selected


def sample_few_shot_dassl(
    labels: Sequence[int],
    num_shots: int | None,
    rng: random.Random,
    class_names: Sequence[str] | None = None,
) -> list[int]:
    """The original code's few-shot draw (Dassl's `generate_fewshot_dataset`), exactly, on items in a fixed order.

    The items are grouped by label in order of first appearance (each group in item order), and for each group in
    that order `rng.sample(group, num_shots)` draws the shots (a group with fewer items keeps all of them, in item
    order). Dassl draws from Python's global `random` seeded with the run's seed and nothing before it: pass
    `random.Random(seed)`, whose stream is the same. The validation pool is drawn next from the same `rng`.

    Args:
        labels (`Sequence[int]`): The label of each item, in the order of the split file.
        num_shots (`int | None`): Items per label; `None` or a number below 1 keeps every item in its order (as
            Dassl, which then returns the data unchanged).
        rng (`random.Random`): The random stream, consumed by the draw.
        class_names (`Sequence[str] | None`): Optional names by label, for the warning about labels with fewer items.

    Returns:
        `list[int]`: Indices into `labels`, in draw order (label by label, each label's shots in sampled order).

    Example:
        ```python
        >>> sample_few_shot_dassl([1, 0, 1, 0, 1], 1, random.Random(1))  # label 1 first: items 0, 2, 4
        [0, 1]
        ```
    """
    labels = _check_labels(labels)
    if num_shots is None or num_shots < 1:
        return list(range(len(labels)))
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    selected: list[int] = []
    short: list[tuple[int, int]] = []
    for label, items in by_label.items():
        if len(items) < num_shots:
            short.append((label, len(items)))
        selected.extend(rng.sample(items, num_shots) if len(items) >= num_shots else items)
    _warn_short_classes(short, num_shots, class_names)
    return selected


def split_base_novel(class_ids: Sequence[int]) -> tuple[list[int], list[int]]:
    """Split class ids into the base and novel halves of the base-to-novel protocol.

    The ids are sorted; the first `ceil(n / 2)` are base, the rest novel (10 → 5/5, 11 → 6/5, 101 → 51/50).

    Args:
        class_ids (`Sequence[int]`): The class ids (duplicates are ignored).

    Returns:
        `(base_ids, novel_ids)`, each sorted.
    """
    ids = sorted(set(_check_labels(class_ids)))
    m = math.ceil(len(ids) / 2)
    return ids[:m], ids[m:]


def subsample_classes(
    labels: Sequence[int],
    class_names: Sequence[str],
    subset: Literal["all", "base", "novel"],
) -> tuple[list[int], list[int], list[str]]:
    """Keep the items of the base or novel classes and relabel them from 0.

    The label space is `range(len(class_names))` (so train and test splits always agree on which classes are base,
    even if a split lacks a class), split with `split_base_novel`. In the protocol the few-shot items are
    drawn *before* this filter: call `sample_few_shot` on the full dataset first, then this function.

    Args:
        labels (`Sequence[int]`): The label of each item.
        class_names (`Sequence[str]`): Names of the full label space, ordered by label.
        subset (`Literal["all", "base", "novel"]`): `"all"` keeps everything (labels unchanged), `"base"` the first
            `ceil(n/2)` classes, `"novel"` the rest.

    Returns:
        `(indices, new_labels, new_class_names)`: the kept item indices (in input order), their labels in the new
        label space (`0..` in ascending old-label order), and the class names of the new label space.
    """
    labels = _check_labels(labels)
    n = len(class_names)
    if subset not in ("all", "base", "novel"):
        raise ValueError(f"subset={subset!r} is invalid; use 'all', 'base' or 'novel'")
    for i, label in enumerate(labels):
        if label >= n:
            raise ValueError(f"labels[{i}] = {label} is outside the label space of {n} class names")
    if subset == "all":
        return list(range(len(labels))), list(labels), list(class_names)
    base, novel = split_base_novel(range(n))
    chosen = base if subset == "base" else novel
    relabel = {old: new for new, old in enumerate(chosen)}
    indices = [i for i, label in enumerate(labels) if label in relabel]
    return indices, [relabel[labels[i]] for i in indices], [class_names[old] for old in chosen]
