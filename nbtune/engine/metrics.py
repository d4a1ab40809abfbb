"""Evaluation metrics, pure Python over label ids: accuracy, macro-F1, token- and entity-level F1.

Example:
    >>> round(macro_f1([0, 1, 1], [0, 1, 0]), 3)
    0.667
    >>> entities(["B-PER", "I-PER", "O", "B-LOC"])
    {('PER', 0, 2), ('LOC', 3, 4)}
"""
from __future__ import annotations

from typing import Sequence


def accuracy(gold: Sequence[int], pred: Sequence[int]) -> float:
    return sum(g == p for g, p in zip(gold, pred)) / max(len(gold), 1)


def macro_f1(gold: Sequence[int], pred: Sequence[int]) -> float:
    """Unweighted mean of per-class F1 over the classes present in gold or pred."""
    classes = sorted(set(gold) | set(pred))
    if not classes:
        return 0.0
    scores = []
    for c in classes:
        tp = sum(g == c and p == c for g, p in zip(gold, pred))
        fp = sum(g != c and p == c for g, p in zip(gold, pred))
        fn = sum(g == c and p != c for g, p in zip(gold, pred))
        scores.append(_f1(tp, fp, fn))
    return sum(scores) / len(scores)


def _f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def entities(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """BIO tags -> {(type, start, end_exclusive)}. A stray I-X starts a new entity (as conlleval does)."""
    found, kind, start = set(), None, 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, label = tag.partition("-")
        continues = prefix == "I" and label == kind
        if kind is not None and not continues:
            found.add((kind, start, i))
            kind = None
        if prefix in ("B", "I") and not continues:
            kind, start = label, i
    return found


def tagging_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Token-level accuracy and F1 (over non-O tokens) and entity-level (exact span) precision/recall/F1."""
    tok_tp = tok_fp = tok_fn = correct = total = 0
    ent_tp = ent_fp = ent_fn = 0
    for g_seq, p_seq in zip(gold, pred):
        for g, p in zip(g_seq, p_seq):
            total += 1
            correct += g == p
            tok_tp += g == p and g != "O"
            tok_fp += p != "O" and g != p
            tok_fn += g != "O" and g != p
        g_ent, p_ent = entities(g_seq), entities(p_seq)
        ent_tp += len(g_ent & p_ent)
        ent_fp += len(p_ent - g_ent)
        ent_fn += len(g_ent - p_ent)
    precision = ent_tp / (ent_tp + ent_fp) if ent_tp + ent_fp else 0.0
    recall = ent_tp / (ent_tp + ent_fn) if ent_tp + ent_fn else 0.0
    return {"token_accuracy": correct / max(total, 1), "token_f1": _f1(tok_tp, tok_fp, tok_fn),
            "entity_precision": precision, "entity_recall": recall, "entity_f1": _f1(ent_tp, ent_fp, ent_fn)}
