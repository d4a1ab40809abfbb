"""Annotation: the label store (re-exported from label_store), inter-annotator agreement, and a queue of
examples that are likely mislabelled.

Agreement uses scikit-learn's `cohen_kappa_score` for each pair of annotators and statsmodels'
`fleiss_kappa` for three or more, each on the items labelled by all the raters in question. The queue ranks
examples with cleanlab's label-quality scores when predicted probabilities are given, else by loss.

Example:
    >>> a = {"ana": {"1": "x", "2": "y", "3": "x"}, "ben": {"1": "x", "2": "y", "3": "y"}}
    >>> agreement(a, ["x", "y"]).pairs[0].n_items
    3
    >>> q = likely_mislabelled(["a", "b", "c"], [0, 0, 1], losses=[0.1, 2.5, 0.3], k=1)
    >>> q.indices
    (1,)
"""
from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from nbtune.data.label_store import (LabelLog, LabelRecord, LabelStore, LabelStoreError, Resolution,
                                     TornLineWarning, read_records, resolve, text_sha1)

__all__ = ["LabelStore", "LabelRecord", "LabelLog", "LabelStoreError", "TornLineWarning", "Resolution",
           "read_records", "resolve", "text_sha1", "agreement", "Agreement", "PairAgreement", "kappa_band",
           "likely_mislabelled", "MislabelQueue"]

# Landis & Koch (1977): upper bound of each band, inclusive.
_BANDS = ((0.0, "poor"), (0.20, "slight"), (0.40, "fair"), (0.60, "moderate"), (0.80, "substantial"),
          (1.0, "almost perfect"))


def kappa_band(kappa: float | None) -> str:
    """Landis & Koch's words for a kappa value.

    >>> kappa_band(0.55), kappa_band(-0.1), kappa_band(None)
    ('moderate', 'poor', 'undefined')
    """
    if kappa is None or math.isnan(kappa):
        return "undefined"
    if kappa < 0:
        return "poor"
    for upper, name in _BANDS[1:]:
        if kappa <= upper + 1e-12:
            return name
    return "almost perfect"


@dataclass(frozen=True)
class PairAgreement:
    """Cohen's kappa for two annotators on the items both labelled."""
    a: str
    b: str
    n_items: int
    observed_agreement: float | None   # share of shared items given the same label
    kappa: float | None                # None when undefined (no shared items, or one category only)
    band: str


@dataclass(frozen=True)
class Agreement:
    """Agreement between annotators: pairwise Cohen's kappa, Fleiss' kappa for 3+ raters, counts, notes."""
    annotators: tuple[str, ...]
    labels: tuple[str, ...]
    items_per_annotator: dict[str, int]
    pairs: tuple[PairAgreement, ...]
    fleiss_kappa: float | None
    fleiss_n_items: int
    fleiss_band: str
    notes: tuple[str, ...]

    def pair(self, a: str, b: str) -> PairAgreement:
        for p in self.pairs:
            if {p.a, p.b} == {a, b}:
                return p
        raise KeyError(f"no pair {a!r}/{b!r}; annotators are {', '.join(self.annotators)}")

    def summary(self) -> str:
        """A few lines of plain text: one per pair, then Fleiss' kappa, then notes."""
        out = [f"{p.a} vs {p.b}: kappa {_fmt(p.kappa)} ({p.band}) on {p.n_items} shared items"
               for p in self.pairs]
        if len(self.annotators) >= 3:
            out.append(f"Fleiss' kappa, all {len(self.annotators)} annotators: {_fmt(self.fleiss_kappa)} "
                       f"({self.fleiss_band}) on {self.fleiss_n_items} items labelled by all")
        return "\n".join(out + list(self.notes))


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _labels_by_annotator(source: Any) -> tuple[dict[str, dict[str, str]], list[str]]:
    """{annotator: {item_id: label}} from a store, a log, records, or such a mapping already."""
    notes: list[str] = []
    if isinstance(source, LabelStore):
        source = source.read()
    if isinstance(source, LabelLog):
        notes += source.notes
        source = source.records
    if isinstance(source, Mapping):
        return {str(a): {str(i): str(l) for i, l in items.items()} for a, items in source.items()}, notes
    records = list(source)
    bad = [r for r in records if not isinstance(r, LabelRecord)]
    if bad:
        raise TypeError(f"agreement takes a LabelStore, a LabelLog, LabelRecords or {{annotator: {{item: label}}}}; "
                        f"found a {type(bad[0]).__name__}")
    resolved = resolve(records)
    for r in resolved.values():
        notes += r.notes
    return {a: r.labels() for a, r in resolved.items()}, notes


def agreement(store_or_records: Any, labels: Sequence[str]) -> Agreement:
    """Cohen's kappa per annotator pair and Fleiss' kappa for 3+ annotators, on items all raters labelled.

    Args:
        store_or_records: a LabelStore, a LabelLog (e.g. `LabelStore.merge(paths)`), LabelRecords, or
            ``{annotator: {item_id: label}}``.
        labels: the label names (the categories); a label outside them is an error.
    """
    from sklearn.metrics import cohen_kappa_score

    labels = tuple(str(x) for x in labels)
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be at least two distinct names; found {list(labels)}")
    by_annotator, notes = _labels_by_annotator(store_or_records)
    for who, items in by_annotator.items():
        unknown = sorted({l for l in items.values() if l not in labels})
        if unknown:
            raise ValueError(f"annotator {who!r} used label(s) {unknown} that are not in labels {list(labels)}")
    annotators = tuple(by_annotator)
    if len(annotators) < 2:
        notes.append(f"agreement needs at least two annotators; found {len(annotators)}")
    pairs = []
    for a, b in itertools.combinations(annotators, 2):
        shared = [i for i in by_annotator[a] if i in by_annotator[b]]
        ya = [by_annotator[a][i] for i in shared]
        yb = [by_annotator[b][i] for i in shared]
        observed = sum(x == y for x, y in zip(ya, yb)) / len(shared) if shared else None
        kappa = None
        if shared:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # undefined kappa is reported as None with a note below
                value = float(cohen_kappa_score(ya, yb, labels=list(labels)))
            kappa = None if math.isnan(value) else value
        if kappa is None:
            why = "no items labelled by both" if not shared else "both used a single, identical category"
            notes.append(f"{a} vs {b}: kappa undefined ({why})")
        pairs.append(PairAgreement(a, b, len(shared), observed, kappa, kappa_band(kappa)))
    fleiss, n_all = _fleiss(by_annotator, annotators, labels, notes)
    return Agreement(annotators, labels, {a: len(v) for a, v in by_annotator.items()}, tuple(pairs), fleiss,
                     n_all, kappa_band(fleiss), tuple(notes))


def _fleiss(by_annotator: dict[str, dict[str, str]], annotators: tuple[str, ...], labels: tuple[str, ...],
            notes: list[str]) -> tuple[float | None, int]:
    if len(annotators) < 3:
        return None, 0
    try:
        from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa
    except ImportError:
        notes.append("Fleiss' kappa needs statsmodels: pip install statsmodels")
        return None, 0
    common = [i for i in by_annotator[annotators[0]] if all(i in by_annotator[a] for a in annotators[1:])]
    if not common:
        notes.append("Fleiss' kappa undefined: no item was labelled by every annotator")
        return None, 0
    code = {l: k for k, l in enumerate(labels)}
    data = np.array([[code[by_annotator[a][i]] for a in annotators] for i in common])  # (items, raters)
    table, _ = aggregate_raters(data, n_cat=len(labels))                                 # (items, categories)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = float(fleiss_kappa(table, method="fleiss"))
    if math.isnan(value):
        notes.append("Fleiss' kappa undefined: every rating used the same category")
        return None, len(common)
    return value, len(common)


@dataclass(frozen=True)
class MislabelQueue:
    """Examples most likely mislabelled, most suspicious first.

    `scores` are suspicion (higher = more likely wrong): 1 - cleanlab's label quality, or the loss.
    `suggested` is the most probable other label when probabilities were given, else None.
    `flagged` says whether cleanlab's `find_label_issues` also flags the example (None without probabilities).
    """
    indices: tuple[int, ...]
    scores: tuple[float, ...]
    given: tuple[Any, ...]
    suggested: tuple[Any, ...]
    texts: tuple[str, ...]
    flagged: tuple[bool | None, ...]
    method: str

    def __len__(self) -> int:
        return len(self.indices)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per example, e.g. for a DataFrame."""
        return [dict(index=i, score=s, given=g, suggested=su, flagged=f, text=t) for i, s, g, su, f, t in
                zip(self.indices, self.scores, self.given, self.suggested, self.flagged, self.texts)]


def _as_label_codes(labels: Sequence[Any], label_names: Sequence[str] | None, n: int) -> np.ndarray:
    if len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries but texts has {n}; expected one label per text")
    if label_names is not None:
        code = {str(name): k for k, name in enumerate(label_names)}
        out = []
        for row, l in enumerate(labels):
            is_index = isinstance(l, (int, np.integer)) and not isinstance(l, bool)
            key = str(label_names[l]) if is_index and 0 <= l < len(label_names) else str(l)
            if key not in code:
                raise ValueError(f"labels, row {row}: found {l!r}; expected one of {list(label_names)}")
            out.append(code[key])
        return np.asarray(out, dtype=int)
    arr = np.asarray(labels)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"labels are {arr.dtype} (e.g. {labels[0]!r}); expected class indices 0..K-1, or "
                         f"pass label_names to map names to indices")
    return arr.astype(int)


def _check_probs(pred_probs: Any, n: int, codes: np.ndarray) -> np.ndarray:
    probs = np.asarray(pred_probs, dtype=float)  # (n, K)
    if probs.ndim != 2 or probs.shape[0] != n:
        raise ValueError(f"pred_probs has shape {probs.shape}; expected ({n}, K): one row per text")
    bad_rows = ~np.isfinite(probs).all(1) | (probs < 0).any(1) | ~np.isclose(probs.sum(1), 1, atol=1e-3)
    if bad_rows.any():
        row = int(np.argmax(bad_rows))
        raise ValueError(f"pred_probs, row {row}: found {probs[row].tolist()}; expected probabilities "
                         f"(finite, >= 0, summing to 1)")
    out_of_range = (codes < 0) | (codes >= probs.shape[1])
    if out_of_range.any():
        row = int(np.argmax(out_of_range))
        raise ValueError(f"labels, row {row}: found class {codes[row]}; pred_probs has {probs.shape[1]} "
                         f"columns, so expected 0..{probs.shape[1] - 1}")
    return probs


def _cleanlab_scores(codes: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, list[bool | None], np.ndarray]:
    """(suspicion, flagged, suggested class) from cleanlab's label quality and label-issue filter."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    n = len(codes)
    suspicion = 1.0 - get_label_quality_scores(codes, probs, method="self_confidence")
    flagged: list[bool | None]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tiny data sets make cleanlab warn about class counts
            issues = find_label_issues(codes, probs, filter_by="prune_by_noise_rate", n_jobs=1)
        flagged = [bool(x) for x in issues]
    except Exception as exc:  # noqa: BLE001 - the ranking stands; only the flag column is lost
        warnings.warn(f"cleanlab find_label_issues failed ({type(exc).__name__}: {exc}); ranking by label "
                      f"quality only", RuntimeWarning, stacklevel=3)
        flagged = [None] * n
    others = probs.copy()
    others[np.arange(n), codes] = -1.0  # the most probable label other than the given one
    return suspicion, flagged, others.argmax(1)


def likely_mislabelled(texts: Sequence[str], labels: Sequence[Any], pred_probs: Any = None,
                       losses: Any = None, k: int = 50, label_names: Sequence[str] | None = None) -> MislabelQueue:
    """Rank examples by how likely their label is wrong; return the top `k`.

    With `pred_probs` (n, K), ideally out-of-sample (cross-validated), cleanlab's self-confidence label
    quality decides; otherwise the per-example `losses` (n,). `labels` are class indices, or names with
    `label_names` (the columns of `pred_probs`, in order).

    >>> probs = [[0.9, 0.1], [0.2, 0.8], [0.95, 0.05]]
    >>> likely_mislabelled(["a", "b", "c"], [0, 1, 1], pred_probs=probs, k=1).suggested
    (0,)
    """
    n = len(texts)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer; found {k!r}")
    codes = _as_label_codes(labels, label_names, n)
    if pred_probs is not None:
        suspicion, flagged, suggested_codes = _cleanlab_scores(codes, _check_probs(pred_probs, n, codes))
        method = "cleanlab self-confidence"
    elif losses is not None:
        suspicion = np.asarray(losses, dtype=float).reshape(-1)
        if suspicion.shape[0] != n:
            raise ValueError(f"losses has {suspicion.shape[0]} entries but texts has {n}; expected one per text")
        if not np.all(np.isfinite(suspicion)):
            row = int(np.argmax(~np.isfinite(suspicion)))
            raise ValueError(f"losses, row {row}: found {suspicion[row]}; expected a finite number")
        flagged, suggested_codes, method = [None] * n, None, "loss"
    else:
        raise ValueError("likely_mislabelled needs pred_probs (n, K) or losses (n,)")
    order = np.argsort(-suspicion, kind="stable")[:k]
    name = (lambda c: label_names[c]) if label_names is not None else (lambda c: int(c))
    return MislabelQueue(
        indices=tuple(int(i) for i in order), scores=tuple(float(suspicion[i]) for i in order),
        given=tuple(name(codes[i]) for i in order),
        suggested=tuple(None if suggested_codes is None else name(suggested_codes[i]) for i in order),
        texts=tuple(str(texts[i]) for i in order), flagged=tuple(flagged[i] for i in order), method=method)
