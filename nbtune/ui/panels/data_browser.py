"""The data panel's sample browser, as pure functions over a ``DataReport``: filter, page, render.

Only one page of rows ever reaches the browser, so it stays responsive on 1,000,000 rows: the filter runs on
numpy arrays (split, label, length, flag bits) and the text search only scans rows the other filters kept.

    >>> q = Query(text="refund", label="billing", flag="duplicate")
    >>> idx = filter_rows(report, q)                       # doctest: +SKIP
    >>> page_html(report, idx, page=0, page_size=25, query=q)   # doctest: +SKIP
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import numpy as np

EXCERPT_CHARS = 400


@dataclass(frozen=True)
class Query:
    """What the sample browser shows: every field narrows the rows; empty/None means "any"."""

    text: str = ""                  # case-insensitive substring
    label: str | None = None
    split: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    flag: str | None = None         # a name from nbtune.data.inspect.FLAG_NAMES, or "clean" for no flag at all


def filter_rows(report: Any, query: Query, folded: list[str] | None = None) -> np.ndarray:
    """Global row indices (into ``report.texts``) matching every part of the query, in row order.

    ``folded``: the case-folded texts, when the caller keeps them between queries (a panel does)."""
    from nbtune.data.inspect import FLAG_NAMES

    mask = np.ones(len(report.texts), dtype=bool)
    if query.split is not None:
        mask &= report.split_codes == report.splits.index(query.split)
    if query.label is not None:
        mask &= report.labels == report.label_names.index(query.label)
    lengths = report.lengths.lengths
    if query.min_length is not None:
        mask &= lengths >= query.min_length
    if query.max_length is not None:
        mask &= lengths <= query.max_length
    if query.flag == "clean":
        mask &= report.flags == 0
    elif query.flag is not None:
        if query.flag not in FLAG_NAMES:
            raise ValueError(f"unknown flag {query.flag!r}; known: clean, {', '.join(FLAG_NAMES)}")
        mask &= (report.flags & FLAG_NAMES[query.flag]) != 0
    idx = np.flatnonzero(mask)
    needle = query.text.strip().casefold()
    if needle:
        texts = report.texts
        hit = (lambda i: needle in folded[i]) if folded is not None else (lambda i: needle in texts[i].casefold())
        idx = np.fromiter((i for i in idx if hit(i)), dtype=np.int64)
    return idx


SORT_KEYS = ("row", "split", "label", "length", "flags", "text")


def sort_rows(report: Any, indices: np.ndarray, by: str, descending: bool = False) -> np.ndarray:
    """`indices` reordered by one column, in the kernel. The sort is stable both ways (equal keys keep their row
    order), so sorting by a second column and then a first orders by both. Only the page shown is ever sent.

        >>> sort_rows(report, filter_rows(report, Query()), "length", descending=True)[:3]   # doctest: +SKIP
        array([812, 14, 90377])
    """
    indices = np.asarray(indices, dtype=np.int64)
    if by not in SORT_KEYS:
        raise ValueError(f"cannot sort by {by!r}; expected one of {', '.join(SORT_KEYS)}")
    if by == "text":
        texts = report.texts  # compared in place: no sorted copy of a million texts
        order = sorted(range(len(indices)), key=lambda k: texts[indices[k]], reverse=descending)
        return indices[np.asarray(order, dtype=np.int64)]
    columns = {"row": lambda: np.arange(len(report.texts)), "split": lambda: report.split_codes,
               "label": lambda: report.labels, "length": lambda: report.lengths.lengths, "flags": lambda: report.flags}
    key = np.asarray(columns[by]())[indices].astype(np.int64)
    return indices[np.argsort(-key if descending else key, kind="stable")]


def flag_names(bits: int) -> list[str]:
    from nbtune.data.inspect import FLAG_NAMES
    return [name for name, bit in FLAG_NAMES.items() if bits & bit]


def page_rows(report: Any, indices: np.ndarray, page: int, page_size: int) -> list[dict[str, Any]]:
    """The rows of one page as plain dicts (split, row, label, length, flags, text)."""
    start = page * page_size
    out = []
    for i in indices[start:start + page_size]:
        i = int(i)
        code = int(report.labels[i])
        out.append({"index": i, "split": report.splits[int(report.split_codes[i])],
                    "row": int(report.row_in_split[i]),
                    "label": report.label_names[code] if 0 <= code < len(report.label_names) else "",
                    "length": int(report.lengths.lengths[i]), "flags": flag_names(int(report.flags[i])),
                    "text": report.texts[i]})
    return out


def _highlight(text: str, needle: str) -> str:
    """Escape `text` and wrap case-insensitive matches of `needle` in <mark>; pieces are escaped separately."""
    if len(text) > EXCERPT_CHARS:
        text = text[:EXCERPT_CHARS] + "…"
    if not needle:
        return html.escape(text)
    folded, n = text.casefold(), len(needle)
    if len(folded) != len(text):  # casefold changed the length (e.g. ß): no offsets to trust, no marks
        return html.escape(text)
    parts, pos = [], 0
    while (hit := folded.find(needle, pos)) >= 0:
        parts += [html.escape(text[pos:hit]), f"<mark>{html.escape(text[hit:hit + n])}</mark>"]
        pos = hit + n
    parts.append(html.escape(text[pos:]))
    return "".join(parts)


def page_html(report: Any, indices: np.ndarray, page: int, page_size: int, query: Query = Query()) -> str:
    """One page as an escaped HTML table (every piece of user text goes through html.escape)."""
    rows = page_rows(report, indices, page, page_size)
    if not rows:
        return '<p class="nbtune-data-empty">No rows match.</p>'
    needle = query.text.strip().casefold()
    body = "".join(
        f'<tr data-row="{r["index"]}"><td>{html.escape(r["split"])}</td><td>{r["row"]}</td>'
        f"<td>{html.escape(str(r['label']))}</td><td>{r['length']}</td>"
        f"<td>{html.escape(', '.join(r['flags']))}</td><td>{_highlight(r['text'], needle)}</td></tr>"
        for r in rows)
    return ('<table class="nbtune-data-table"><thead><tr><th>split</th><th>row</th><th>label</th>'
            f"<th>{html.escape(report.lengths.unit)}</th><th>flags</th><th>text</th></tr></thead>"
            f"<tbody>{body}</tbody></table>")


def count_text(n: int, page: int, page_size: int, total: int) -> str:
    """'rows 26–50 of 1,234 matching (1,000,000 in all)'.

        >>> count_text(1234, 1, 25, 1_000_000)
        'rows 26–50 of 1,234 matching (1,000,000 in all)'
    """
    if n == 0:
        return f"0 of {total:,} rows match"
    first = page * page_size + 1
    return f"rows {first:,}–{min(first + page_size - 1, n):,} of {n:,} matching ({total:,} in all)"
