"""Exact and near duplicates within a split, and leakage between splits (pure functions, small reports).

Exact: rows whose normalised text (NFKC, casefold, whitespace collapsed) is identical, found through a 64-bit
hash of that text so that a million rows never need a dict of strings. Near: MinHash LSH from datasketch on
word 3-shingles (character 5-grams for CJK text), candidates kept when their estimated Jaccard similarity
reaches the threshold. Empty rows are neither duplicates nor leaks (the EMPTY flag reports them).
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import xxhash  # a dependency of datasets

# Row flag bits, shared by the whole data inspection. They live in this lower module so that inspect.py can
# re-export them without a circular import.
DUPLICATE, NEAR_DUPLICATE, HTML, URL, EMAIL, NUMBER, CONTROL, RARE_CHAR, TRUNCATED, LEAKED, EMPTY = (
    1 << i for i in range(11))

# Chinese and Japanese characters and their punctuation: text written without spaces between words (Korean has them).
CJK_CHAR = re.compile(r"[\u2e80-\u2fdf\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")


def normalise(text: str) -> str:
    """The text duplicates are compared on: NFKC, casefolded, whitespace collapsed.

    >>> normalise("  The\\tCAT  ｓａｔ ")
    'the cat sat'
    """
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def text_hashes(texts: Sequence[str]) -> np.ndarray:
    """uint64 hash of each normalised text; 0 marks an empty row (no real text hashes to 0 in practice)."""
    out = np.zeros(len(texts), dtype=np.uint64)
    for i, t in enumerate(texts):
        n = normalise(t)
        if n:
            out[i] = xxhash.xxh3_64_intdigest(n.encode("utf-8", "surrogatepass")) or 1
    return out


def shingles(norm: str) -> list[bytes]:
    """Word 3-shingles of a normalised text, or character 5-grams when most of it is CJK (no spaces there)."""
    chars = norm.replace(" ", "")
    if chars and 2 * len(CJK_CHAR.findall(chars)) >= len(chars):
        grams = [chars[i:i + 5] for i in range(max(1, len(chars) - 4))]
    else:
        words = norm.split(" ")
        grams = [" ".join(words[i:i + 3]) for i in range(max(1, len(words) - 2))]
    return [g.encode("utf-8", "surrogatepass") for g in grams if g]


def exact_groups(hashes: np.ndarray) -> list[list[int]]:
    """Groups (size >= 2, ascending rows) of equal non-zero hashes, ordered by their first row."""
    rows = np.flatnonzero(hashes)
    order = rows[np.argsort(hashes[rows], kind="stable")]  # stable: rows stay ascending inside a group
    sorted_h = hashes[order]
    starts = np.flatnonzero(np.r_[True, sorted_h[1:] != sorted_h[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    groups = [order[s:s + k].tolist() for s, k in zip(starts, sizes) if k >= 2]
    return sorted(groups, key=lambda g: g[0])


def first_occurrence(hashes: np.ndarray) -> np.ndarray:
    """Bool mask: the row is non-empty and no earlier row has the same normalised text."""
    _, first = np.unique(hashes, return_index=True)
    mask = np.zeros(len(hashes), dtype=bool)
    mask[first] = True
    return mask & (hashes != 0)


def near_pairs(texts: Sequence[str], rows: np.ndarray, threshold: float, num_perm: int,
               seed: int) -> list[tuple[int, int, float]]:
    """(i, j, estimated Jaccard) for rows i < j among `rows` (ascending) whose MinHash estimate >= threshold."""
    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise ImportError("near-duplicate detection needs datasketch: pip install 'datasketch>=2.0'") from err
    # The index keeps only band hashes (xxh64 of each band, smaller than its bytes) and row positions.
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, hashfunc=xxhash.xxh64_intdigest)
    sigs = np.empty((len(rows), num_perm), dtype=np.uint32)  # (rows, num_perm): keeps no MinHash objects
    m = MinHash(num_perm=num_perm, seed=seed, hashfunc=xxhash.xxh32_intdigest)
    out: list[tuple[int, int, float]] = []
    for k, r in enumerate(rows.tolist()):
        m.clear()  # one sketch reused: building a MinHash per row costs more than hashing its shingles
        m.update_batch(shingles(normalise(texts[r])))
        sigs[k] = m.hashvalues
        candidates = lsh.query(m)  # positions of earlier rows
        if candidates:
            cand = np.asarray(candidates, dtype=np.int64)
            est = (sigs[cand] == sigs[k]).mean(axis=1)
            for c, e in zip(cand.tolist(), est.tolist()):
                if e >= threshold:
                    out.append((int(rows[c]), r, float(e)))
        lsh.insert(k, m, check_duplication=False)
    return sorted(out)


@dataclass(frozen=True)
class DuplicateReport:
    """Exact groups, near pairs and label conflicts; `mask` carries DUPLICATE / NEAR_DUPLICATE per row."""
    exact_groups: list[list[int]]
    near_pairs: list[tuple[int, int, float]]
    conflicting_labels: list[list[int]]
    mask: np.ndarray
    near_checked_rows: int
    near_capped: bool = False          # True when rows past max_near_rows were not checked for near duplicates
    threshold: float = 0.85

    @property
    def n_exact_duplicates(self) -> int:
        """Rows that repeat an earlier row exactly (every member of a group but its first)."""
        return sum(len(g) - 1 for g in self.exact_groups)


def _mask(n: int, groups: list[list[int]], pairs: list[tuple[int, int, float]]) -> np.ndarray:
    mask = np.zeros(n, dtype=np.int32)
    for g in groups:
        mask[g[1:]] |= DUPLICATE
    for _, j, _ in pairs:
        mask[j] |= NEAR_DUPLICATE
    return mask


def _conflicts(groups: list[list[int]], labels: Sequence | None) -> list[list[int]]:
    if labels is None:
        return []
    return [g for g in groups if len({labels[i] for i in g}) > 1]


def duplicates(texts: Sequence[str], labels: Sequence | None = None, threshold: float = 0.85, num_perm: int = 64,
               max_near_rows: int = 200_000, seed: int = 1) -> DuplicateReport:
    """Exact duplicate groups, near-duplicate pairs (MinHash LSH) and exact groups with conflicting labels.

    Near-duplicate detection runs on the first `max_near_rows` rows only (`near_checked_rows` says how many);
    inside them each distinct text is checked once, so a pair is never also an exact duplicate.

    >>> r = duplicates(["Free prize now", "free  PRIZE now", "hello"], labels=[1, 0, 0])
    >>> r.exact_groups, r.conflicting_labels, r.mask.tolist()
    ([[0, 1]], [[0, 1]], [0, 1, 0])
    """
    texts = texts if isinstance(texts, list) else list(texts)
    hashes = text_hashes(texts)
    groups = exact_groups(hashes)
    checked = min(len(texts), max_near_rows)
    rows = np.flatnonzero(first_occurrence(hashes[:checked]))
    pairs = near_pairs(texts, rows, threshold, num_perm, seed)
    return DuplicateReport(groups, pairs, _conflicts(groups, labels), _mask(len(texts), groups, pairs), checked,
                           checked < len(texts), threshold)


@dataclass(frozen=True)
class LeakageReport:
    """Rows shared between splits. Keys are (earlier split, later split) in the dataset's split order."""
    overlaps: dict[tuple[str, str], list[tuple[int, int]]]
    near_overlaps: dict[tuple[str, str], list[tuple[int, int, float]]]
    counts: dict[str, int]                 # "train/validation": exact + near overlaps
    leaked_rows: dict[str, np.ndarray]     # split -> bool mask: the row has an exact or near twin in another split
    near_checked_rows: dict[str, int] | None = None   # split -> rows (its first ones) that went through near search
    near_threshold: float = 0.9


def near_quota(sizes: Sequence[int], cap: int) -> list[int]:
    """Split a budget of `cap` rows over splits: small splits are checked whole, big ones share the rest.

    >>> near_quota([800, 100, 100], 600), near_quota([800, 50, 50], 300)
    ([400, 100, 100], [200, 50, 50])
    """
    quota, left = [0] * len(sizes), cap
    order = sorted(range(len(sizes)), key=lambda i: sizes[i])
    for k, i in enumerate(order):
        quota[i] = min(sizes[i], left // (len(sizes) - k))
        left -= quota[i]
    return quota


def _concat(hashes: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    return np.concatenate([hashes[s] for s in names]) if names else np.zeros(0, np.uint64)


def near_pairs_in_splits(texts: Sequence[str], hashes: np.ndarray, sizes: Sequence[int], threshold: float,
                         max_near_rows: int, num_perm: int, seed: int) -> tuple[list[tuple[int, int, float]], int]:
    """One MinHash pass over splits laid end to end (global rows): within-split pairs are near duplicates,
    cross-split pairs near leaks. Each split's first rows up to its near_quota; returns (pairs, rows checked)."""
    quota = near_quota(sizes, max_near_rows)
    window = np.zeros(len(texts), dtype=bool)
    for start, q in zip(np.cumsum([0] + list(sizes[:-1])), quota):
        window[start:start + q] = True
    return near_pairs(texts, np.flatnonzero(first_occurrence(hashes) & window), threshold, num_perm, seed), sum(quota)


def split_duplicates(hashes: np.ndarray, sizes: Sequence[int], labels: np.ndarray,
                     pairs: list[tuple[int, int, float]], threshold: float, checked: int) -> DuplicateReport:
    """Duplicates inside each split of splits laid end to end; rows are global, `pairs` from near_pairs_in_splits."""
    offsets = np.cumsum([0] + list(sizes))
    groups = [[int(o) + i for i in g] for k, o in enumerate(offsets[:-1])
              for g in exact_groups(hashes[o:offsets[k + 1]])]
    split_of = np.searchsorted(offsets, np.arange(len(hashes)), side="right") - 1
    pairs = [p for p in pairs if split_of[p[0]] == split_of[p[1]] and p[2] >= threshold]
    return DuplicateReport(groups, pairs, _conflicts(groups, labels), _mask(len(hashes), groups, pairs), checked,
                           checked < len(hashes), threshold)


def exact_overlaps(names: list[str], hashes: dict[str, np.ndarray]) -> dict[tuple[str, str], list[tuple[int, int]]]:
    """(a, b) -> (first row in a with the text, row in b) for every non-empty row of b whose text is in a."""
    out = {}
    for ia, a in enumerate(names):
        values, first = np.unique(hashes[a], return_index=True)
        for b in names[ia + 1:]:
            hb = hashes[b]
            pos = np.clip(np.searchsorted(values, hb), 0, max(len(values) - 1, 0))
            hit = (hb != 0) & (values[pos] == hb) if len(values) else np.zeros(len(hb), bool)
            out[(a, b)] = list(zip(first[pos[hit]].tolist(), np.flatnonzero(hit).tolist()))
    return out


def leakage_report(names: list[str], texts: dict[str, list[str]], near_threshold: float = 0.9,
                   max_near_rows: int = 200_000, num_perm: int = 64, seed: int = 1,
                   hashes: dict[str, np.ndarray] | None = None,
                   near: list[tuple[int, int, float]] | None = None) -> LeakageReport:
    """Leakage between splits given as texts per split. `hashes` (text_hashes per split) and `near` (pairs
    already found over the concatenated splits in split order, threshold <= near_threshold) save recomputing."""
    hashes = hashes if hashes is not None else {s: text_hashes(texts[s]) for s in names}
    overlaps = exact_overlaps(names, hashes)
    sizes = [len(texts[s]) for s in names]
    offsets = np.cumsum([0] + sizes)
    quota = near_quota(sizes, max_near_rows)
    if near is None:
        flat = [t for s in names for t in texts[s]]
        near, _ = near_pairs_in_splits(flat, _concat(hashes, names), sizes, near_threshold, max_near_rows, num_perm,
                                       seed)
    near_overlaps: dict[tuple[str, str], list[tuple[int, int, float]]] = {k: [] for k in overlaps}
    for i, j, e in near:
        si, sj = (int(np.searchsorted(offsets, x, side="right")) - 1 for x in (i, j))
        if si != sj and e >= near_threshold:
            near_overlaps[(names[si], names[sj])].append((i - int(offsets[si]), j - int(offsets[sj]), e))
    leaked = {s: np.zeros(len(texts[s]), dtype=bool) for s in names}
    for (a, b), pairs in list(overlaps.items()) + list(near_overlaps.items()):
        for pair in pairs:
            leaked[a][pair[0]] = True
            leaked[b][pair[1]] = True
    for a, b in overlaps:  # every copy of a leaked text in a, not only the first one named in the pairs
        leaked[a] |= np.isin(hashes[a], hashes[b][hashes[b] != 0])
    counts = {f"{a}/{b}": len(overlaps[(a, b)]) + len(near_overlaps[(a, b)]) for a, b in overlaps}
    return LeakageReport(overlaps, near_overlaps, counts, leaked, dict(zip(names, quota)), near_threshold)
