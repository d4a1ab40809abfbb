"""Class imbalance: loss weights per class, and over/undersampling of the training split only.

Resampling touches the train split alone, so oversampled duplicates never reach validation or test. Resample
after splitting: duplicating rows before a split would put copies of one row on both sides.

    >>> class_weights(["a"] * 6 + ["b"] * 3 + ["c"])
    {'a': 0.5556, 'b': 1.1111, 'c': 3.3333}
"""
from __future__ import annotations

import html
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import datasets
import numpy as np


class BalanceError(ValueError):
    """The data or the arguments cannot be balanced as asked (unknown scheme, missing split, bad target)."""


def _train(ds, split: str) -> datasets.Dataset:
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise BalanceError(f"no '{split}' split to balance; the splits are {list(ds)}")
        return ds[split]
    if isinstance(ds, datasets.Dataset):
        return ds
    raise BalanceError(f"expected a datasets.DatasetDict or Dataset, found {type(ds).__name__}")


def _label_names(part: datasets.Dataset, label_column: str) -> list[str] | None:
    if label_column not in part.column_names:
        raise BalanceError(f"no label column '{label_column}'; the columns are {part.column_names}")
    feature = part.features[label_column]
    return list(feature.names) if isinstance(feature, datasets.ClassLabel) else None


def _counts(labels: Sequence, names: list[str] | None) -> dict[str, int]:
    """Counts keyed by label name, in label-id order (ClassLabel) or sorted order (plain values)."""
    seen = Counter(labels)
    if names is not None:
        return {name: seen.get(i, 0) for i, name in enumerate(names)}
    return {str(k): seen[k] for k in sorted(seen, key=lambda v: (str(type(v)), v))}


def label_counts(ds_or_labels: Any, split: str = "train", label_column: str = "label") -> dict[str, int]:
    """Rows per class of the train split (or of a Dataset, or of a plain list of labels)."""
    if isinstance(ds_or_labels, (datasets.Dataset, datasets.DatasetDict)):
        part = _train(ds_or_labels, split)
        return _counts(list(part[label_column]), _label_names(part, label_column))
    return _counts(list(ds_or_labels), None)


def class_weights(ds_or_labels: Any, scheme: str = "balanced", split: str = "train", label_column: str = "label",
                  decimals: int | None = 4) -> dict[str, float]:
    """Loss weight per class name, from the train split's counts.

    "balanced" is sklearn's n_samples / (n_classes * count); "inverse_sqrt" is 1 / sqrt(count), scaled like
    balanced so the weights sum to n_samples over the rows (sum of count * weight == n). A class with no
    training rows gets 0.0 (it never appears in the training loss). ``decimals=None`` keeps full precision.

    >>> class_weights([0] * 6 + [1] * 3 + [2], scheme="inverse_sqrt")
    {'0': 0.7879, '1': 1.1142, '2': 1.9299}
    """
    counts = label_counts(ds_or_labels, split, label_column)
    present = {k: c for k, c in counts.items() if c}
    if not present:
        raise BalanceError("no labelled rows to weigh")
    n = sum(present.values())
    if scheme == "balanced":
        raw = {k: n / (len(present) * c) for k, c in present.items()}
    elif scheme == "inverse_sqrt":
        scale = n / sum(math.sqrt(c) for c in present.values())
        raw = {k: scale / math.sqrt(c) for k, c in present.items()}
    else:
        raise BalanceError(f"unknown weighting scheme '{scheme}'; use 'balanced' or 'inverse_sqrt'")
    out = {k: raw.get(k, 0.0) for k in counts}
    return {k: round(v, decimals) for k, v in out.items()} if decimals is not None else out


def class_weight_tensor(weights: dict[str, float], label_names: Sequence[str]):
    """Weights in label-id order as a float32 tensor, for ``torch.nn.CrossEntropyLoss(weight=...)``.

    >>> class_weight_tensor({"spam": 3.0, "ham": 0.6}, ["ham", "spam"])
    tensor([0.6000, 3.0000])
    """
    import torch

    missing = [n for n in label_names if n not in weights]
    extra = [k for k in weights if k not in set(label_names)]
    if missing or extra:
        raise BalanceError(f"class weights do not match the labels {list(label_names)}: "
                           f"missing {missing}, unknown {extra}")
    return torch.tensor([float(weights[n]) for n in label_names], dtype=torch.float32)


@dataclass
class BalanceResult:
    """The resampled data plus class counts of the train split before and after."""
    dataset: Any
    method: str
    target: int
    before: dict[str, int]
    after: dict[str, int]
    split: str = "train"

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{self.before[k]}</td><td>{self.after[k]}</td>"
                       f"<td>{self.after[k] - self.before[k]:+d}</td></tr>" for k in self.before)
        return (f"<p>{html.escape(self.method)} '{html.escape(self.split)}' to {self.target} rows per class: "
                f"{sum(self.before.values())} &rarr; {sum(self.after.values())} rows</p>"
                f"<table><thead><tr><th>label</th><th>before</th><th>after</th><th>change</th></tr></thead>"
                f"<tbody>{rows}</tbody></table>")


def _target(target: int | str, counts: dict[str, int], named: str) -> int:
    present = [c for c in counts.values() if c]
    if not present:
        raise BalanceError("the split has no labelled rows to resample")
    if target == named:
        return max(present) if named == "max" else min(present)
    if isinstance(target, bool) or not isinstance(target, int) or target < 1:
        raise BalanceError(f"target must be '{named}' or a positive number of rows per class; found {target!r}")
    return target


def _key(value, names: list[str] | None):
    if value is None or (names is not None and value < 0):  # unlabelled rows (ClassLabel -1) are never resampled
        return None
    return names[value] if names is not None else str(value)


def _resample(ds, target, seed: int, split: str, label_column: str, method: str) -> BalanceResult:
    part = _train(ds, split)
    names = _label_names(part, label_column)
    values = list(part[label_column])
    keys = np.array([_key(v, names) for v in values], dtype=object)
    before = _counts(values, names)
    goal = _target(target, before, "max" if method == "oversample" else "min")
    rng = np.random.default_rng(seed)
    if method == "undersample":
        drop = []
        for key, count in before.items():
            if count > goal:
                rows = np.flatnonzero(keys == key)
                drop.append(np.setdiff1d(rows, rng.choice(rows, goal, replace=False)))
        dropped = np.concatenate(drop) if drop else np.empty(0, dtype=np.int64)
        indices = np.setdiff1d(np.arange(len(part)), dropped)  # sorted: kept rows stay in their order
    else:
        copies = []
        for key, count in before.items():
            if 0 < count < goal:
                rows = np.flatnonzero(keys == key)
                extra = goal - count
                # whole copies first, then a random remainder: every row is repeated as evenly as possible
                copies += [np.tile(rows, extra // count), rng.choice(rows, extra % count, replace=False)]
        added = rng.permutation(np.concatenate(copies)) if copies else np.empty(0, dtype=np.int64)
        indices = np.concatenate([np.arange(len(part)), added])
    resampled = part.select(indices.tolist())
    after = _counts(list(resampled[label_column]), names)
    if isinstance(ds, datasets.DatasetDict):
        out = datasets.DatasetDict({k: (resampled if k == split else v) for k, v in ds.items()})
    else:
        out = resampled
    return BalanceResult(out, method, goal, before, after, split)


def oversample(ds, target: int | str = "max", seed: int = 0, split: str = "train",
               label_column: str = "label") -> BalanceResult:
    """Repeat rows of smaller classes (train split only) until each has ``target`` rows ("max": the largest).

    Rows are repeated as evenly as possible (whole copies, then a seeded random remainder); the originals
    keep their order and the copies follow in a seeded shuffle. Classes already at or above target are kept.
    """
    return _resample(ds, target, seed, split, label_column, "oversample")


def undersample(ds, target: int | str = "min", seed: int = 0, split: str = "train",
                label_column: str = "label") -> BalanceResult:
    """Keep a seeded random ``target`` rows of each larger class (train split only; "min": the smallest).

    Kept rows stay in their original order; classes at or below target are kept whole.
    """
    return _resample(ds, target, seed, split, label_column, "undersample")
