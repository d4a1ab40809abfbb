"""Load a file, folder, DataFrame, dataset or bundled name as a canonical `datasets.DatasetDict`.

Canonical columns: `text` (+ `text_pair`) and `label` (a ClassLabel) for classification; `tokens` and `tags`
(a list of ClassLabel) for tagging. Bad input raises `DataLoadError`, naming the file, line or row, column, what
was found and what was expected; with `strict=False` bad rows are skipped instead, and every skip is listed in
the `LoadReport` attached to the result as `.load_report`.
"""
from __future__ import annotations

import difflib
import html
import math
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field

from .readers import MISSING, DataLoadError, Problems, SkippedRow, Table, kind_of
from .sources import FORMATS, SUFFIXES, _pick_split, _read, _Source

__all__ = ["load", "DataLoadError", "DataLoadWarning", "LoadReport", "SkippedRow", "SUFFIXES", "FORMATS"]

_INT = re.compile(r"[+-]?\d+")


class DataLoadWarning(UserWarning):
    """Rows were skipped under strict=False (the message is the LoadReport's summary and where), or labels were
    converted (whole-number floats read as class names)."""


@dataclass
class LoadReport:
    """What `load` read, kept and skipped (and why), and which source columns became the canonical ones."""
    source: str
    format: str
    encoding: str | None
    bom: bool
    rows_read: int
    rows_kept: int
    skipped: list[SkippedRow]
    columns: dict[str, str]
    splits: dict[str, int] = field(default_factory=dict)
    delimiter: str | None = None    # a CSV delimiter detected from the header (None: the format's own)
    blank_lines: int = 0            # blank lines skipped (not rows, so not in rows_read)
    notes: list[str] = field(default_factory=list)  # what else the reader decided: delimiter, format, conversions

    def summary(self) -> str:
        """One line, e.g. 'read 120 rows, kept 117, skipped 3 (2 empty label, 1 bad JSON) from tickets.jsonl'."""
        text = f"read {self.rows_read} rows, kept {self.rows_kept}"
        if self.skipped:
            reasons = Counter(s.reason for s in self.skipped).most_common()
            text += f", skipped {len(self.skipped)} ({', '.join(f'{n} {r}' for r, n in reasons)})"
        return f"{text} from {self.source}"

    def skipped_rows(self) -> str:
        """Where rows were left out, e.g. 'skipped 1 of 1000 rows (line 4)' (the first 5 places); '' if none."""
        if not self.skipped:
            return ""
        by_line = all(s.line is not None for s in self.skipped)  # files: physical lines; in-memory data: rows
        places = sorted(p for p in (s.line if by_line else s.row for s in self.skipped) if p is not None)
        kind = ("line" if by_line else "row") + ("s" if len(places) > 1 else "")
        where = f" ({kind} {', '.join(map(str, places[:5]))}{', ...' if len(places) > 5 else ''})" if places else ""
        return f"skipped {len(self.skipped)} of {self.rows_read} rows{where}"

    def _repr_html_(self) -> str:
        e = html.escape
        cells = ["line", "row", "reason", "detail"]
        rows = "".join("<tr>" + "".join(f"<td>{e(str(getattr(s, c) if getattr(s, c) is not None else ''))}</td>"
                                        for c in cells) + "</tr>" for s in self.skipped[:50])
        table = f"<table><tr>{''.join(f'<th>{c}</th>' for c in cells)}</tr>{rows}</table>" if rows else ""
        more = f"<p>... and {len(self.skipped) - 50} more skipped rows</p>" if len(self.skipped) > 50 else ""
        lines = [x for x in (self.skipped_rows(), *self.notes) if x]
        notes = "".join(f"<br>{e(x)}" for x in lines)
        return (f"<div class='nbtune-load-report'><b>{e(self.summary())}</b>{notes}<br>format: {e(self.format)}; "
                f"encoding: "
                f"{e(str(self.encoding))}{' (BOM)' * self.bom}; columns: "
                f"{e(', '.join(f'{k} <- {v}' for k, v in self.columns.items()))}; splits: "
                f"{e(', '.join(f'{k}: {n}' for k, n in self.splits.items()))}{table}{more}</div>")


def load(source, *, text: str = "text", label: str | None = "label", text_pair: str | None = None,
         tokens: str | None = None, tags: str | None = None, format: str | None = None, encoding: str | None = None,
         strict: bool = True, split: str | None = None, max_chars: int | None = None):
    """Load `source` as a DatasetDict with canonical columns; bad input raises a `DataLoadError` naming where.

    `source`: a .csv/.tsv/.jsonl/.json/.parquet/.conll path, a folder `root/<label>/*.txt` (optionally
    `root/<split>/<label>/`), a pandas DataFrame, a datasets.Dataset or DatasetDict, or a bundled dataset name.
    `text`/`label`/`text_pair` (or `tokens`/`tags` for tagging) name the source columns; `label=None` loads
    unlabelled text. Splits the source has are kept; otherwise there is one, named `split` (default 'train');
    with splits, `split` picks one. `strict=False` skips bad rows (listed in `.load_report`, and warned about).

    >>> ds = load("tickets.csv", text="utterance", label="intent")           # doctest: +SKIP
    >>> ds["train"].features["label"].names, ds.load_report.summary()       # doctest: +SKIP
    (['billing', 'login'], 'read 120 rows, kept 120 from tickets.csv')
    """
    problems = Problems(strict)
    tables, src = _read(source, format, encoding, problems)
    tables = _pick_split(tables, split, src)
    if src.format in ("conll", "folder"):  # these readers name their columns canonically
        cols = {"tokens": "tokens", "tags": "tags"} if src.format == "conll" else {"text": "text", "label": "label"}
    elif _is_tagging(tables, text, tokens, tags):
        cols = {"tokens": tokens or "tokens", "tags": tags or "tags"}
    else:
        cols = {k: v for k, v in (("text", text), ("text_pair", text_pair), ("label", label)) if v is not None}
    return _attach(_build(tables, cols, problems, max_chars), src, problems, cols)


def _attach(out, src: _Source, problems: Problems, cols: dict[str, str]):
    kept = sum(len(d) for d in out.values())
    delimiter, blank = src.notes.get("delimiter"), src.notes.get("blank_lines", 0)
    notes = [f"detected the delimiter {delimiter!r}: the header line has no comma"] * bool(delimiter)
    notes += [f"skipped {blank} blank line{'s' * (blank > 1)}"] * bool(blank)
    notes += ["read as JSON: the file holds a top-level array, not one object per line"] * (
        src.notes.get("format") == "json")
    report = LoadReport(src.name, src.format, src.encoding, src.bom, kept + len(problems.skipped), kept,
                        problems.skipped, dict(cols), {k: len(d) for k, d in out.items()}, delimiter, blank,
                        notes + problems.notes)
    if kept == 0:
        reasons = Counter(s.reason for s in report.skipped).most_common()
        why = reasons[0][0] if len(reasons) == 1 else ", ".join(f"{n} {r}" for r, n in reasons)
        found = (f"no usable rows ({report.summary()}): 0 examples after filtering (removed {len(report.skipped)} "
                 f"rows: {why})") if report.rows_read else "no rows"
        raise DataLoadError(src.name, found, "at least one valid row")
    if report.skipped:
        warnings.warn(f"{report.summary()}; {report.skipped_rows()}", DataLoadWarning, stacklevel=3)
    out.load_report = report
    return out


def _values(table: Table, column: str) -> list:
    values = table.values[column]
    return values if isinstance(values, list) else values[:]  # a datasets Column: slicing is ~20x faster than iterating


# --- checks and building --------------------------------------------------------------------------------------
def _resolve(table: Table, cols: dict[str, str]) -> None:
    """Raise for a requested column the table lacks, suggesting the closest name."""
    for arg, col in cols.items():
        if col in table.columns:
            continue
        lower = {c.lower(): c for c in table.columns}
        close = [lower[col.lower()]] if col.lower() in lower else \
            difflib.get_close_matches(col, table.columns, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? pass {arg}={close[0]!r}" if close else \
            f"pass {arg}= naming one of the columns"
        raise DataLoadError(table.path, f"no such column (the columns are: {', '.join(table.columns)})",
                            f"a column {col!r} for {arg}=; {hint}", line=table.header_line, column=col,
                            source=table.name)


def _is_empty(value) -> bool:
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, float):
        return math.isnan(value)
    return value is None or value is MISSING or type(value).__name__ in ("NAType", "NaTType")


# Each _*_problem returns None for a good value, else (reason to count, what was found, what was expected).
def _empty_problem(what: str, value, col: str):
    if value is MISSING:
        return f"missing {what}", f"no key {col!r} in this object", f"a {what}"
    return f"empty {what}", "an empty value", f"a {what}"


def _text_problem(value, col: str, max_chars: int | None):
    if _is_empty(value):
        return _empty_problem("text", value, col)
    if not isinstance(value, str):
        return "text not a string", f"{kind_of(value)} ({value!r:.40})", f"a string; is {col!r} the text column?"
    if max_chars is not None and len(value) > max_chars:
        return "text too long", f"a text of {len(value):,} characters", f"at most max_chars={max_chars:,}"
    return None


def _label_kind(value) -> str | None:
    if isinstance(value, (bool, str)):
        return kind_of(value)
    return "a number" if isinstance(value, int) or (isinstance(value, float) and value.is_integer()) else None


def _label_problem(value, col: str, n_classes: int | None):
    """`n_classes`: the source's ClassLabel size (values are class ids; -1 is datasets' "no label"), else None."""
    if _is_empty(value) or (n_classes is not None and value == -1):
        return _empty_problem("label", value, col)
    if n_classes is None and _label_kind(value) is None:
        return "bad label", f"{kind_of(value)} ({value!r:.40})", "a class label: a string or a whole number"
    if n_classes is not None and not 0 <= value < n_classes:
        return ("label id out of range", f"the class id {value}",
                f"a class id from 0 to {n_classes - 1} (the column's ClassLabel has {n_classes} names)")
    return None


def _raise_many_bad_labels(t: Table, labels: list, col: str, n_classes: int | None) -> None:
    """Strict: when several rows share the first label problem, one error counts them and names the first 5."""
    first, rows = None, []
    for i, value in enumerate(labels):
        problem = _label_problem(value, col, n_classes)
        if problem and (first is None or problem[0] == first[0]):
            first = first or problem
            rows.append(i)
    if len(rows) < 2:
        return  # none, or one: the row-by-row check names it
    places = ", ".join(_where(t, i) for i in rows[:5]) + (", ..." if len(rows) > 5 else "")
    raise t.error(rows[0], col, f"{first[1]} in {len(rows)} rows ({places})", first[2]).with_skip_hint()


def _tokens_problem(value):
    if isinstance(value, list) and value and all(isinstance(x, str) for x in value):
        return None
    found = "an empty list" if value == [] else "a non-string token" if isinstance(value, list) else kind_of(value)
    return "bad tokens", found, "a non-empty list of strings"


def _tags_problem(value, tokens: list):
    if not isinstance(value, list) or len(value) != len(tokens):
        found = f"{len(tokens)} tokens and {len(value)} tags" if isinstance(value, list) else kind_of(value)
        return "tags don't match tokens", found, "one tag per token"
    return ("empty tag", "an empty tag", "one tag per token") if any(_is_empty(x) for x in value) else None


def _row_ok(t: Table, i: int, cols: dict[str, str], values: dict, problems: Problems, max_chars, n_classes) -> bool:
    for key, col in cols.items():
        value = values[key][i]
        problem = (_text_problem(value, col, max_chars) if key in ("text", "text_pair") else
                   _label_problem(value, col, n_classes) if key == "label" else
                   _tokens_problem(value) if key == "tokens" else _tags_problem(value, values["tokens"][i]))
        if problem:
            problems.row_error(problem[0], t.error(i, col, *problem[1:]))
            return False
    return True


def _where(t: Table, i: int) -> str:
    return t.files[i] if t.files else f"line {t.lines[i]}" if t.lines[i] is not None else f"row {t.rows[i]}"


def _drop_mixed(tables: dict[str, Table], kept: dict, labels: dict, col: str, problems: Problems) -> None:
    """Labels of more than one type (ints and strings): raise naming one of each, or skip the minority rows."""
    kinds = {(s, i): _label_kind(labels[s][i]) for s, rows in kept.items() for i in rows}
    counts = Counter(kinds.values())
    if len(counts) < 2:
        return
    first, major = {}, counts.most_common(1)[0][0]
    for (s, i), kind in kinds.items():
        first.setdefault(kind, (s, i))
    examples = " and ".join(f"{labels[s][i]!r} ({kind}, {_where(tables[s], i)})" for kind, (s, i) in first.items())
    # Strict: the error names the first row whose type differs from the first row's (where the file changes);
    # lenient: the minority type's rows are skipped.
    keep = next(iter(first)) if problems.strict else major
    for (s, i), kind in kinds.items():
        if kind != keep:
            problems.row_error("mixed label types", tables[s].error(i, col, f"labels of mixed types: {examples}",
                                                                    "one type per label column: all strings or all "
                                                                    "whole numbers"))
    for s in kept:
        kept[s] = [i for i in kept[s] if kinds[s, i] == major]


def _class_label(feature, values: list):
    """The output ClassLabel and value -> id: the source's own ClassLabel, else names sorted from the values
    (whole numbers, also as CSV strings, keep their numeric order)."""
    import datasets
    if isinstance(feature, datasets.ClassLabel):
        return feature, int
    if values and all(isinstance(v, str) for v in values):
        names, name_of = {v.strip() for v in values}, str.strip
        names = sorted(names, key=(lambda n: (int(n), n)) if all(_INT.fullmatch(n) for n in names) else None)
    elif values and all(_label_kind(v) == "a number" for v in values):
        names, name_of = [str(n) for n in sorted({int(v) for v in values})], lambda v: str(int(v))
    else:
        names, name_of = sorted({str(v) for v in values}), str
    index = {n: k for k, n in enumerate(names)}
    return datasets.ClassLabel(names=names), lambda v: index[name_of(v)]


def _note_float_labels(labels: list, col: str, names: list[str], problems: Problems) -> None:
    """Whole-number floats (1.0, e.g. an int column pandas widened for a NaN) become class names '1': say so."""
    floats = sorted({v for v in labels if isinstance(v, float)})
    if not floats:
        return
    note = (f"column {col!r} holds whole-number floats ({', '.join(map(str, floats[:5]))}"
            f"{', ...' * (len(floats) > 5)}): read as the classes {', '.join(map(repr, names[:5]))}"
            f"{', ...' * (len(names) > 5)}; store labels as integers or strings to silence this")
    problems.notes.append(note)
    warnings.warn(note, DataLoadWarning, stacklevel=4)


def _as_list(value):
    return value.tolist() if hasattr(value, "tolist") else list(value) if isinstance(value, tuple) else value


def _build(tables: dict[str, Table], cols: dict[str, str], problems: Problems, max_chars):
    """Check every row, then build the canonical splits; labels (or tags) become one ClassLabel across splits."""
    import datasets
    target = next((k for k in ("label", "tags") if k in cols), None)
    feature = next(iter(tables.values())).features.get(cols.get(target))
    feature = getattr(feature, "feature", None) if target == "tags" else feature
    values, kept = {}, {}
    for s, t in tables.items():
        _resolve(t, cols)
        values[s] = {k: [_as_list(v) for v in _values(t, c)] if k in ("tokens", "tags") else _values(t, c)
                     for k, c in cols.items()}
        n_classes = feature.num_classes if isinstance(feature, datasets.ClassLabel) else None
        if problems.strict and target == "label":
            _raise_many_bad_labels(t, values[s]["label"], cols["label"], n_classes)
        kept[s] = [i for i in range(len(t)) if _row_ok(t, i, cols, values[s], problems, max_chars, n_classes)]
    features = {k: datasets.Value("string") for k in cols}
    if "tokens" in cols:
        features["tokens"] = datasets.List(datasets.Value("string"))
    convert = {}
    if target == "label" and not isinstance(feature, datasets.ClassLabel):
        _drop_mixed(tables, kept, {s: values[s]["label"] for s in kept}, cols["label"], problems)
    if target:
        flat = [v for s in kept for i in kept[s] for v in (values[s][target][i] if target == "tags" else
                                                               [values[s][target][i]])]
        class_label, to_id = _class_label(feature, flat)
        if target == "label" and not isinstance(feature, datasets.ClassLabel):
            _note_float_labels(flat, cols["label"], class_label.names, problems)
        features[target] = datasets.List(class_label) if target == "tags" else class_label
        convert[target] = (lambda tags: [to_id(v) for v in tags]) if target == "tags" else to_id
    return datasets.DatasetDict({s: datasets.Dataset.from_dict(
        {k: [convert.get(k, _same)(values[s][k][i]) for i in rows] for k in cols},
        features=datasets.Features(features)) for s, rows in kept.items()})


def _same(value):
    return value


def _is_tagging(tables: dict[str, Table], text: str, tokens, tags) -> bool:
    if tokens is not None or tags is not None:
        return True
    return all(text not in t.columns and {"tokens", "tags"} <= set(t.columns) for t in tables.values())


from nbtune.data import make_callable  # noqa: E402 - `nbtune.data.load(...)` calls load()

make_callable(__name__)
