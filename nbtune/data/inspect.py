"""Data inspection as pure functions: labels, lengths, duplicates, leakage, text problems, scripts.

Each function returns a small frozen dataclass; the DataPanel renders them. Per-row results are numpy arrays
aligned with the rows given, so a million rows stay cheap. `inspect` runs everything over all splits:

>>> from nbtune import assets                                    # doctest: +SKIP
>>> report = inspect(assets.load_dataset("sms-spam"))            # doctest: +SKIP
>>> report.label_distribution.imbalance_ratio, report.leakage.counts   # doctest: +SKIP
"""
from __future__ import annotations

import difflib
import html
import math
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from nbtune.data.dedup import (CJK_CHAR, CONTROL, DUPLICATE, EMAIL, EMPTY, HTML, LEAKED,  # noqa: F401
                               NEAR_DUPLICATE, NUMBER, RARE_CHAR, TRUNCATED, URL, DuplicateReport, LeakageReport,
                               duplicates, leakage_report, near_pairs_in_splits, split_duplicates, text_hashes)
from nbtune.data.textscan import SCRIPT_NAMES, ScriptMix, TextFlags, script_mix, text_flags  # noqa: F401

FLAG_NAMES: dict[str, int] = {
    "duplicate": DUPLICATE, "near-duplicate": NEAR_DUPLICATE, "html": HTML, "url": URL, "email": EMAIL,
    "number": NUMBER, "control": CONTROL, "rare-char": RARE_CHAR, "truncated": TRUNCATED, "leaked": LEAKED,
    "empty": EMPTY}


class InspectError(ValueError):
    """The data cannot be inspected as asked: a missing column, a row that is not text."""


# ------------------------------------------------------------------------------------------- reading data
def _tables(ds) -> dict[str, Any]:
    """Split name -> table (a datasets.Dataset or a dict of column lists)."""
    import datasets
    if isinstance(ds, datasets.DatasetDict) and len(ds):
        return dict(ds)
    if isinstance(ds, datasets.Dataset):
        return {"train": ds}
    if isinstance(ds, dict) and ds:
        if all(isinstance(v, (datasets.Dataset, dict)) for v in ds.values()):
            return dict(ds)  # split -> table
        return {"train": ds}  # column -> values
    empty = "an empty " if isinstance(ds, dict) and not ds else ""
    raise InspectError(f"expected a datasets.DatasetDict, a datasets.Dataset or a dict of column lists, "
                       f"got {empty}{type(ds).__name__}")


def _columns(table) -> list[str]:
    return list(table.column_names) if hasattr(table, "column_names") else list(table)


def _missing(split: str, column: str, have: list[str]) -> InspectError:
    close = difflib.get_close_matches(column, have, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return InspectError(f"split '{split}': column '{column}' not found; the columns are {have}.{hint}")


def _is_cjk_edge(a: str, b: str) -> bool:
    return bool(a and b and (CJK_CHAR.match(a[-1]) or CJK_CHAR.match(b[0])))


def join_tokens(tokens: Sequence[str]) -> str:
    """Words of a tagging row as one text: spaces between words, none next to CJK characters.

    >>> join_tokens(["EU", "rejects", "German"]), join_tokens(["本报", "北京", "讯"]), join_tokens(["iPhone", "手机"])
    ('EU rejects German', '本报北京讯', 'iPhone手机')
    """
    out = []
    for k, tok in enumerate(tokens):
        if k and not _is_cjk_edge(tokens[k - 1], tok):
            out.append(" ")
        out.append(tok)
    return "".join(out)


def _texts(table, split: str, text: str) -> list[str]:
    """The row texts of one split: the text column, else joined `tokens`, else joined chat `messages`."""
    have = _columns(table)
    if text in have:
        values = table[text] if isinstance(table, dict) else table[text][:]  # one column, read at once
        values = values if isinstance(values, list) else list(values)
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise InspectError(f"split '{split}' row {i} column '{text}': found {type(v).__name__} "
                                   f"{v!r:.40}, expected text (str)")
        return values
    if "tokens" in have:
        return [join_tokens(t) for t in table["tokens"]]
    if "messages" in have:
        return ["\n".join(str(m.get("content", "")) for m in msgs) for msgs in table["messages"]]
    raise _missing(split, text, have)


@dataclass
class _Labels:
    names: list[str]
    ids: dict[str, np.ndarray]   # split -> int32 label per row (-1 none) or, for tags, per tag flattened
    per_token: bool              # tags (one label per word) rather than one per row


def _feature_names(table, column: str) -> list[str] | None:
    feature = getattr(table, "features", {}).get(column) if hasattr(table, "features") else None
    return getattr(feature, "names", None) or getattr(getattr(feature, "feature", None), "names", None)


def _read_labels(tables: dict[str, Any], column: str) -> _Labels:
    raw = {s: (t[column] if isinstance(t, dict) else t[column][:]) for s, t in tables.items() if column in _columns(t)}
    if not raw:
        raise _missing(next(iter(tables)), column, _columns(next(iter(tables.values()))))
    first = next((v for vals in raw.values() for v in vals if v is not None), None)
    per_token = isinstance(first, (list, tuple))
    flat = {s: ([x for row in vals for x in row] if per_token else list(vals)) for s, vals in raw.items()}
    names = next((n for s, t in tables.items() if s in raw for n in [_feature_names(t, column)] if n), None)
    if names:  # ClassLabel: values already are ids
        return _Labels(list(names), {s: np.asarray([-1 if v is None else v for v in vals], dtype=np.int32)
                                     for s, vals in flat.items()}, per_token)
    values = {v for vals in flat.values() for v in vals if v is not None}
    numeric = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values)
    names = [str(v) for v in sorted(values)] if numeric else sorted(str(v) for v in values)
    index = {n: i for i, n in enumerate(names)}
    return _Labels(names, {s: np.asarray([-1 if v is None else index[str(v)] for v in vals], dtype=np.int32)
                           for s, vals in flat.items()}, per_token)


# ------------------------------------------------------------------------------------------------- labels
@dataclass(frozen=True)
class LabelDistribution:
    """Label counts per split. For tagging data the counts are of tags (one per word)."""
    label_names: list[str]
    counts: dict[str, dict[str, int]]     # split -> label name -> count (every label, zeros kept)
    imbalance_ratio: float                # train: largest count / smallest non-zero count (nan without labels)
    majority: str
    minority: str
    per_token: bool = False


def _distribution(labels: _Labels | None, splits: list[str]) -> LabelDistribution:
    if labels is None or not labels.names:
        return LabelDistribution([], {s: {} for s in splits}, math.nan, "", "")
    counts = {}
    for s in splits:
        ids = labels.ids.get(s, np.zeros(0, np.int32))
        c = np.bincount(ids[ids >= 0], minlength=len(labels.names))
        counts[s] = {n: int(c[i]) for i, n in enumerate(labels.names)}
    ref = counts["train"] if "train" in counts else counts[splits[0]]
    nonzero = {n: c for n, c in ref.items() if c > 0}
    if not nonzero:
        return LabelDistribution(labels.names, counts, math.nan, "", "", labels.per_token)
    majority, minority = max(nonzero, key=nonzero.get), min(nonzero, key=nonzero.get)
    return LabelDistribution(labels.names, counts, nonzero[majority] / nonzero[minority], majority, minority,
                             labels.per_token)


def label_distribution(ds, label: str = "label") -> LabelDistribution:
    """Counts per split and label; imbalance of the train split (the first split when there is no 'train').

    >>> d = label_distribution({"text": list("abcdefg"), "label": ["a"] * 5 + ["b", "c"]})
    >>> d.imbalance_ratio, d.majority, d.minority, d.counts["train"]
    (5.0, 'a', 'b', {'a': 5, 'b': 1, 'c': 1})
    """
    tables = _tables(ds)
    return _distribution(_read_labels(tables, label), list(tables))


# ------------------------------------------------------------------------------------------------ lengths
@dataclass(frozen=True)
class LengthStats:
    """Length of every row (no truncation applied) and how many rows `max_length` would cut."""
    lengths: np.ndarray                       # int32 per row
    max_length: int | None
    truncation_rate: float                    # share of rows longer than max_length
    percentiles: dict[int, float]             # 50, 90, 95, 99, 100
    histogram: tuple[np.ndarray, np.ndarray]  # (bin edges, counts), at most 50 bins
    unit: str                                 # "tokens" or "characters"


def length_stats(lengths: np.ndarray, max_length: int | None, unit: str) -> LengthStats:
    """Summaries of given per-row lengths (also used by token_lengths)."""
    lengths = np.asarray(lengths, dtype=np.int32)
    if len(lengths) == 0:
        edges = np.array([0.0, 1.0])
        return LengthStats(lengths, max_length, 0.0, {p: math.nan for p in (50, 90, 95, 99, 100)},
                           (edges, np.zeros(1, np.int64)), unit)
    lo, hi = int(lengths.min()), int(lengths.max())
    # One bin per integer length when they fit in 50 bins, so a bin never mixes two lengths.
    edges = np.arange(lo, hi + 2, dtype=np.float64) if hi - lo < 50 else np.histogram_bin_edges(lengths, bins=50)
    counts, edges = np.histogram(lengths, bins=edges)
    values = np.percentile(lengths, [50, 90, 95, 99, 100])
    rate = float(np.mean(lengths > max_length)) if max_length is not None else 0.0
    return LengthStats(lengths, max_length, rate, dict(zip((50, 90, 95, 99, 100), map(float, values))),
                       (edges, counts), unit)


def token_lengths(texts: Sequence, tokenizer=None, max_length: int | None = None,
                  batch_size: int = 2048) -> LengthStats:
    """Tokens per row under `tokenizer` (special tokens included, nothing truncated), else characters.

    Rows may be strings or word lists (tagging data, tokenized as the engine does with is_split_into_words).
    Only the lengths are kept, one batch of encodings at a time.

    >>> s = token_lengths(["ab", "", "你好吗"], max_length=2)
    >>> s.lengths.tolist(), s.truncation_rate, s.unit
    ([2, 0, 3], 0.3333333333333333, 'characters')
    """
    n = len(texts)
    if tokenizer is None:
        lengths = np.fromiter((len(t) if isinstance(t, str) else len(join_tokens(t)) for t in texts),
                              dtype=np.int32, count=n)
        return length_stats(lengths, max_length, "characters")
    lengths = np.zeros(n, dtype=np.int32)
    for start in range(0, n, batch_size):
        batch = list(texts[start:start + batch_size])
        words = bool(batch) and isinstance(batch[0], (list, tuple))
        # verbose=False: no "longer than the maximum" warning, measuring long rows is the point here.
        ids = tokenizer(batch, add_special_tokens=True, truncation=False, padding=False, is_split_into_words=words,
                        return_attention_mask=False, return_token_type_ids=False, verbose=False)["input_ids"]
        lengths[start:start + len(batch)] = [len(x) for x in ids]
    return length_stats(lengths, max_length, "tokens")


# ------------------------------------------------------------------------------------------------ leakage
def leakage(ds, text: str = "text", near_threshold: float = 0.9, max_near_rows: int = 200_000,
            num_perm: int = 64, seed: int = 1) -> LeakageReport:
    """Rows of one split that reappear in another: exactly after normalisation, or nearly (MinHash LSH).

    Near search covers at most `max_near_rows` rows in all, shared out over the splits (`near_checked_rows`).

    >>> r = leakage({"train": {"text": ["Hi there", "bye"]}, "test": {"text": ["hi  THERE"]}})
    >>> r.overlaps[("train", "test")], r.counts
    ([(0, 0)], {'train/test': 1})
    """
    tables = _tables(ds)
    names = list(tables)
    return leakage_report(names, {s: _texts(tables[s], s, text) for s in names}, near_threshold, max_near_rows,
                          num_perm, seed)


# ------------------------------------------------------------------------------------------- supervision
@dataclass(frozen=True)
class SupervisionView:
    """The tokens of one causal-LM row and which of them the loss learns (labels != -100)."""
    tokens: list[str]
    supervised: list[bool]
    n_supervised: int
    n_masked: int
    token_ids: list[int] = field(default_factory=list)
    max_length: int = 256

    def _repr_html_(self) -> str:
        spans = []
        for tok, sup, tid in zip(self.tokens, self.supervised, self.token_ids or [None] * len(self.tokens)):
            shown = html.escape(tok).replace("\n", "&#8629;<br>") or "&#9251;"
            style = "background:#c7e9c0" if sup else "background:#eeeeee;color:#888"
            spans.append(f'<span class="nbtune-tok {"sup" if sup else "masked"}" style="{style}" '
                         f'title="id {tid}, {"supervised" if sup else "masked"}">{shown}</span>')
        head = (f"<div><b>{self.n_supervised}</b> supervised tokens (green), <b>{self.n_masked}</b> masked "
                f"(grey), max_length {self.max_length}</div>")
        return (f'<div class="nbtune-supervision" style="font-family:monospace;white-space:pre-wrap;'
                f'line-height:1.9">{head}{"".join(spans)}</div>')


def supervision_view(example: dict, tokenizer, max_length: int = 256, model_name: str = "") -> SupervisionView:
    """What the engine trains on for one SFT row: the row goes through the engine's own tokenize_causal.

    >>> row = assets.load_dataset("chatterbot-sft")["train"][0]                # doctest: +SKIP
    >>> v = supervision_view(row, AutoTokenizer.from_pretrained(resolve_model("smollm2").path))  # doctest: +SKIP
    >>> v.n_masked, v.n_supervised                                              # doctest: +SKIP
    """
    import datasets

    from nbtune.engine.tasks import IGNORE, tokenize_causal
    one = datasets.DatasetDict({"train": datasets.Dataset.from_list([dict(example)])})
    name = model_name or getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    row = tokenize_causal(one, tokenizer, max_length, "supervision_view", name).rows["train"][0]
    ids, labels = list(row["input_ids"]), list(row["labels"])
    supervised = [y != IGNORE for y in labels]
    tokens = [tokenizer.decode([i]) for i in ids]
    n_sup = sum(supervised)
    return SupervisionView(tokens, supervised, n_sup, len(ids) - n_sup, ids, max_length)


# --------------------------------------------------------------------------------------------- everything
@dataclass(frozen=True)
class DataReport:
    """Every inspection over all rows of all splits; rows are splits[0]'s, then splits[1]'s, ..."""
    splits: list[str]
    split_codes: np.ndarray        # int8 per row, index into splits
    row_in_split: np.ndarray       # int32 per row
    labels: np.ndarray             # int32 label id per row (-1 when none, and for tagging data)
    label_names: list[str]
    lengths: LengthStats
    flags: np.ndarray              # int32 bit flags per row (FLAG_NAMES)
    label_distribution: LabelDistribution
    duplicates: DuplicateReport    # within each split; row indices are global rows of this report
    leakage: LeakageReport         # between splits; row indices are rows inside each split
    text_flags: TextFlags
    script_mix: ScriptMix
    texts: list[str]
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def rows_with(self, flag: str | int) -> np.ndarray:
        """Global rows carrying a flag, by name ("duplicate", ...) or bit."""
        bit = FLAG_NAMES[flag] if isinstance(flag, str) else flag
        return np.flatnonzero(self.flags & bit)


def inspect(ds, tokenizer=None, max_length: int | None = None, text: str = "text", label: str = "label",
            max_near_rows: int = 200_000, dup_threshold: float = 0.85, near_threshold: float = 0.9,
            num_perm: int = 64, seed: int = 1) -> DataReport:
    """Run every inspection over every split (see DataReport). Tagging data (`tokens`, no text column) is
    inspected as words joined by spaces (none next to CJK); chat data (`messages`) as its turns joined.

    >>> r = inspect({"text": ["Win a prize!", "win a  PRIZE!", "<b>hi</b>"], "label": [1, 1, 0]})
    >>> r.rows_with("duplicate").tolist(), r.rows_with("html").tolist(), r.label_distribution.imbalance_ratio
    ([1], [2], 2.0)
    """
    clock, seconds = time.perf_counter(), {}

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage], clock = now - clock, now

    tables = _tables(ds)
    names = list(tables)
    per_split = {s: _texts(tables[s], s, text) for s in names}
    sizes = [len(per_split[s]) for s in names]
    texts = per_split[names[0]] if len(names) == 1 else [t for s in names for t in per_split[s]]
    split_codes = np.repeat(np.arange(len(names), dtype=np.int8), sizes)
    row_in_split = np.concatenate([np.arange(n, dtype=np.int32) for n in sizes]) if names else np.zeros(0, np.int32)
    columns = set(_columns(next(iter(tables.values()))))
    label_col = label if label in columns else ("tags" if "tags" in columns and text not in columns else None)
    labels = _read_labels(tables, label_col) if label_col else None
    row_labels = np.full(len(texts), -1, dtype=np.int32)
    if labels is not None and not labels.per_token:
        row_labels = np.concatenate([labels.ids.get(s, np.full(n, -1, np.int32)) for s, n in zip(names, sizes)])
    distribution = _distribution(labels, names)
    lap("read")

    words = tokenizer is not None and text not in columns and "tokens" in columns
    inputs = [w for s in names for w in tables[s]["tokens"]] if words else texts
    lengths = token_lengths(inputs, tokenizer, max_length)
    lap("lengths")
    split_hashes = {s: text_hashes(per_split[s]) for s in names}
    hashes = np.concatenate([split_hashes[s] for s in names]) if names else np.zeros(0, np.uint64)
    lap("exact")
    # One MinHash pass at the lower threshold finds both near duplicates and near leaks.
    pairs, checked = near_pairs_in_splits(texts, hashes, sizes, min(dup_threshold, near_threshold), max_near_rows,
                                          num_perm, seed)
    dups = split_duplicates(hashes, sizes, row_labels, pairs, dup_threshold, checked)
    lap("near")
    leaks = leakage_report(names, per_split, near_threshold, max_near_rows, num_perm, seed, split_hashes, pairs)
    lap("leakage")
    flags_info = text_flags(texts)
    lap("text_flags")
    scripts = script_mix(texts)
    lap("script_mix")

    flags = dups.mask | flags_info.mask
    if max_length is not None:
        flags[lengths.lengths > max_length] |= TRUNCATED
    if names:
        flags[np.concatenate([leaks.leaked_rows[s] for s in names])] |= LEAKED
    return DataReport(names, split_codes, row_in_split, row_labels, distribution.label_names, lengths, flags,
                      distribution, dups, leaks, flags_info, scripts, texts, seconds)


from nbtune.data import make_callable  # noqa: E402 - `nbtune.data.inspect(...)` calls inspect()

make_callable(__name__)
