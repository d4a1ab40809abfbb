"""Examples worth explaining, picked from labelled data: the wrong predictions (most confident first) and the
most uncertain ones (smallest margin between the top two classes). Texts of a Run's split are decoded from its
token ids (the raw text is not kept), so an uncased model shows them lowercased.

Example:
    >>> picks = pick_examples(em, ["turn on the light", "what time is it"], ["HassTurnOn", "HassGetTime"])  # doctest: +SKIP
    >>> [(p.kind, p.text) for p in picks]                                                                    # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from nbtune.explain.types import ExplainError


@dataclass(frozen=True)
class Example:
    text: str
    label: str | None      # the gold label, when known
    predicted: str
    confidence: float      # probability of the predicted class
    margin: float          # top-1 minus top-2 probability
    kind: str              # "wrong" | "uncertain"

    def describe(self) -> str:
        gold = f", gold {self.label}" if self.label is not None and self.kind == "wrong" else ""
        return f"[{self.kind}] {self.text[:70]} (predicted {self.predicted} {self.confidence:.2f}{gold})"


def pick_examples(em: Any, texts: Sequence[str], labels: Sequence[str] | None = None, n: int = 10,
                  max_rows: int = 2000) -> list[Example]:
    """Up to n examples: wrong predictions first (most confident mistakes), then the most uncertain rows.
    Scores at most `max_rows` texts (in em's batches)."""
    if em.task != "classification":
        raise ExplainError(f"example picking needs a sequence classifier, not {em.task!r}; pass texts instead")
    texts = list(texts)[:max_rows]
    if not texts:
        raise ExplainError("no texts to pick examples from")
    probs = em.probabilities(texts)                     # (N, C)
    order = np.sort(probs, axis=1)
    margins = order[:, -1] - (order[:, -2] if probs.shape[1] > 1 else 0.0)
    predicted = probs.argmax(axis=1)
    names = em.label_names
    wrong: list[Example] = []
    uncertain: list[Example] = []
    for i, text in enumerate(texts):
        gold = None if labels is None else str(labels[i])
        ex = dict(text=text, label=gold, predicted=names[predicted[i]], confidence=float(probs[i].max()),
                  margin=float(margins[i]))
        if gold is not None and gold != names[predicted[i]]:
            wrong.append(Example(kind="wrong", **ex))
        else:
            uncertain.append(Example(kind="uncertain", **ex))
    wrong.sort(key=lambda e: -e.confidence)
    uncertain.sort(key=lambda e: e.margin)
    half = min(len(wrong), max(n // 2, n - len(uncertain)))
    return wrong[:half] + uncertain[:n - half]


def run_split_texts(run: Any, split: str = "validation", max_rows: int = 2000) -> tuple[list[str], list[str]]:
    """(texts, gold label names) of a Run's split, decoded from its token ids."""
    rows = run.data.rows.get(split) or []
    if not rows:
        raise ExplainError(f"the run has no {split!r} rows; splits: {', '.join(run.data.rows) or 'none'}")
    rows = rows[:max_rows]
    texts = run.tokenizer.batch_decode([r["input_ids"] for r in rows], skip_special_tokens=True)
    names = run.data.label_names
    return texts, [names[r["labels"]] for r in rows]
