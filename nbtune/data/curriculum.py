"""Difficulty scores for curriculum learning, and the easy-to-hard order built from them.

The fine-tuning guide's curriculum is short first, then long, then hard: :func:`difficulty` scores rows by
length (tokens with a tokenizer, else characters) or by the loss of a classification model, and
:func:`curriculum_order` turns length (and optionally loss) scores into stages.

    >>> plan = curriculum_order([5, 1, 9, 3, 7, 2], stages=3)
    >>> plan.indices.tolist(), plan.stage_sizes
    ([1, 5, 3, 0, 4, 2], (2, 2, 2))
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np


class DifficultyError(ValueError):
    """Scores cannot be computed as asked (wrong input, missing model or tokenizer, bad labels)."""


@dataclass
class DifficultyScores:
    """One score per row (higher is harder), aligned with the rows of the split it was computed on."""
    scores: np.ndarray
    by: str  # "length" | "loss"
    unit: str  # "tokens" | "characters" | "nats"

    def order(self) -> np.ndarray:
        """Row indices from easiest to hardest (stable: ties keep row order)."""
        return np.argsort(self.scores, kind="stable")

    def _repr_html_(self) -> str:
        q = np.percentile(self.scores, [0, 50, 90, 100]) if len(self.scores) else [float("nan")] * 4
        return (f"<p>difficulty by {html.escape(self.by)} ({html.escape(self.unit)}), {len(self.scores)} rows: "
                f"min {q[0]:.3g}, median {q[1]:.3g}, p90 {q[2]:.3g}, max {q[3]:.3g}</p>")


def _texts(ds_split, column: str) -> list[str]:
    if isinstance(ds_split, datasets.DatasetDict):
        raise DifficultyError(f"difficulty scores one split; pass e.g. ds['train'] (splits: {list(ds_split)})")
    if column not in ds_split.column_names:
        raise DifficultyError(f"no column '{column}'; the columns are {ds_split.column_names}")
    texts = list(ds_split[column])
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise DifficultyError(f"row {i}, column '{column}': expected a string, found {type(t).__name__} {t!r}")
    return texts


def _labels(ds_split, label_column: str, num_labels: int) -> np.ndarray:
    if label_column not in ds_split.column_names:
        raise DifficultyError(f"loss scores need labels; no column '{label_column}' in {ds_split.column_names}")
    labels = list(ds_split[label_column])
    for i, y in enumerate(labels):
        if isinstance(y, bool) or not isinstance(y, (int, np.integer)) or not 0 <= y < num_labels:
            raise DifficultyError(f"row {i}, column '{label_column}': expected a class id in "
                                  f"0..{num_labels - 1}, found {y!r}")
    return np.asarray(labels, dtype=np.int64)


def _example_losses(texts: list[str], labels: np.ndarray, model, tokenizer, batch_size: int,
                    max_length: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    from nbtune.data.batched import eval_batches

    out = []
    for start, batch in eval_batches(model, tokenizer, texts, batch_size, max_length):
        logits = model(**batch).logits.float()  # (B, num_labels)
        target = torch.as_tensor(labels[start:start + batch_size], device=logits.device)
        out.append(F.cross_entropy(logits, target, reduction="none").cpu().numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def difficulty(ds_split, by: str = "length", tokenizer=None, model=None, batch_size: int = 32,
               column: str = "text", label_column: str = "label", max_length: int = 512) -> DifficultyScores:
    """Score each row of one split: ``by="length"`` (tokens with a tokenizer, else characters) or
    ``by="loss"`` (per-example cross-entropy of ``model``, an AutoModelForSequenceClassification, in eval
    mode without gradients; its training mode is restored afterwards).

    >>> difficulty(datasets.Dataset.from_dict({"text": ["a longer one", "short"]})).scores.tolist()
    [12.0, 5.0]
    """
    texts = _texts(ds_split, column)
    if by == "length":
        if tokenizer is None:
            return DifficultyScores(np.array([len(t) for t in texts], dtype=np.float64), "length", "characters")
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        return DifficultyScores(np.array([len(x) for x in ids], dtype=np.float64), "length", "tokens")
    if by == "loss":
        if model is None or tokenizer is None:
            raise DifficultyError("by='loss' needs a classification model and its tokenizer")
        labels = _labels(ds_split, label_column, model.config.num_labels)
        # never past the position table: a tiny model with 128 positions would fail on a long row
        max_length = min(max_length, getattr(model.config, "max_position_embeddings", None) or max_length)
        return DifficultyScores(_example_losses(texts, labels, model, tokenizer, batch_size, max_length),
                                "loss", "nats")
    raise DifficultyError(f"unknown difficulty '{by}'; use 'length' or 'loss'")


@dataclass
class CurriculumOrder:
    """Rows from easy to hard, cut into consecutive stages (``stage_sizes`` rows each)."""
    indices: np.ndarray
    stage_sizes: tuple[int, ...]

    def stage(self, k: int) -> np.ndarray:
        """Row indices of stage ``k`` (0 = easiest)."""
        start = sum(self.stage_sizes[:k])
        return self.indices[start:start + self.stage_sizes[k]]


def _scores(x: Any) -> np.ndarray:
    return np.asarray(x.scores if isinstance(x, DifficultyScores) else x, dtype=np.float64)


def curriculum_order(length_scores: Any, loss_scores: Any = None, stages: int = 3) -> CurriculumOrder:
    """Short first, then long, then hard.

    Without loss scores: rows sorted by length, cut into ``stages`` equal stages. With loss scores: the
    hardest 1/``stages`` of rows by loss form the last stage; the rest are cut by length into
    ``stages - 1`` stages (shortest first), each sorted by loss (easiest first); the last stage is sorted
    by loss too. Ties keep row order.

    >>> curriculum_order([1, 2, 3, 4, 5, 6], loss_scores=[0.1, 0.9, 0.2, 0.3, 0.8, 0.4]).indices.tolist()
    [0, 2, 3, 5, 4, 1]
    """
    lengths = _scores(length_scores)
    if stages < 1:
        raise DifficultyError(f"stages must be at least 1; found {stages}")
    if loss_scores is None:
        parts = np.array_split(np.argsort(lengths, kind="stable"), stages)
        return CurriculumOrder(np.concatenate(parts), tuple(len(p) for p in parts))
    losses = _scores(loss_scores)
    if losses.shape != lengths.shape:
        raise DifficultyError(f"loss scores ({len(losses)}) and length scores ({len(lengths)}) must align row by row")
    by_loss = np.lexsort((lengths, losses))  # loss ascending, length breaks ties
    n_hard = len(lengths) // stages if stages > 1 else len(lengths)
    hard = by_loss[len(lengths) - n_hard:]
    rest = np.sort(by_loss[:len(lengths) - n_hard])  # back in row order, so equal lengths keep it
    rest = rest[np.argsort(lengths[rest], kind="stable")]
    parts = [p[np.lexsort((lengths[p], losses[p]))] for p in np.array_split(rest, max(stages - 1, 1))]
    parts = [p for p in parts if stages > 1] + [hard]
    return CurriculumOrder(np.concatenate(parts), tuple(len(p) for p in parts))
