"""Readers behind `nbtune.data.load`: sniff a file's encoding, then read its rows with their physical line numbers.

Every reader returns a `Table` (column-wise values plus each row's line and row number) and raises `DataLoadError`
for anything it can't read. Row-level problems go through `Problems`, which raises them (strict) or records them.
The encoding checks live in `nbtune.data.encoding` and `DataLoadError` in `nbtune.data.load_errors`; both are
re-exported here.
"""
from __future__ import annotations

import contextlib
import csv
import itertools
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from nbtune.data.encoding import check_utf8_text, detect_encoding, guess_encoding  # noqa: F401
from nbtune.data.load_errors import SKIP_HINT, DataLoadError  # noqa: F401

MISSING = type("Missing", (), {"__repr__": lambda self: "<missing>"})()  # a key a JSON object lacks (not null)


@dataclass
class SkippedRow:
    """One row left out under strict=False: where it was, a short reason (for counting) and the full message."""
    line: int | None
    row: int | None
    reason: str
    detail: str = ""


class Problems:
    """Row-level problems: raised at once when strict, else recorded as skipped rows."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.skipped: list[SkippedRow] = []
        self.notes: list[str] = []  # conversions the load made that a user should know about

    def row_error(self, reason: str, err: DataLoadError) -> None:
        if self.strict:
            raise err.with_skip_hint() from None  # never chain the parser error that led here
        self.skipped.append(SkippedRow(err.line, err.row, reason, str(err)))


@dataclass
class Table:
    """One split as read: values per column, and per row its physical line (None in memory) and 0-based row."""
    name: str                       # how messages name the source: a path, "the DataFrame", ...
    path: str | None
    columns: list[str]
    values: dict                    # column -> sequence of values (MISSING where a JSON object lacks the key)
    lines: list
    rows: list
    files: list | None = None       # per-row file, for a folder of text files
    features: dict = field(default_factory=dict)   # source features (a datasets.Dataset's ClassLabels)
    header_line: int | None = None
    notes: dict = field(default_factory=dict)      # what the reader found out: delimiter, blank_lines, format

    def __len__(self) -> int:
        return len(self.rows)

    def error(self, i: int, column: str | None, found: str, expected: str) -> DataLoadError:
        path = self.files[i] if self.files else self.path
        return DataLoadError(path, found, expected, line=self.lines[i], row=self.rows[i], column=column,
                             source=path if self.files else self.name)


def first_duplicate(names: list[str]) -> str | None:
    seen = set()
    return next((n for n in names if n in seen or seen.add(n)), None)


def table_from_records(name: str, path, records: list[dict], lines: list, rows: list, columns=None, **kw) -> Table:
    """A Table from dict rows; a key some rows lack is MISSING there."""
    columns = list(columns or dict.fromkeys(k for rec in records for k in rec))
    values = {c: [rec.get(c, MISSING) for rec in records] for c in columns}
    return Table(name, None if path is None else str(path), columns, values, lines, rows, **kw)


# --- CSV / TSV ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _large_fields():
    """Lift csv's 128 KiB field limit while reading; 2**31-1 fits a C long everywhere (Windows' is 32-bit)."""
    before = csv.field_size_limit()
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        yield
    finally:
        csv.field_size_limit(before)


def _kept_lines(stream, current: list):
    """The file's lines for csv.reader; `current` collects those of the record being parsed (to place a quote)."""
    for line in stream:
        current.append(line)
        yield line


def _open_quote(lines: list[str], delimiter: str) -> tuple[int, int]:
    """(line index, field index) where the quoted field still open at the end of `lines` began."""
    state, field_idx, opened = "start", 0, (0, 0)
    for n, line in enumerate(lines):
        for ch in line:
            if state == "quoted":
                state = "after_quote" if ch == '"' else "quoted"
            elif ch == delimiter:
                state, field_idx = "start", field_idx + 1
            elif ch == '"' and state in ("start", "after_quote"):
                opened = (n, field_idx) if state == "start" else opened
                state = "quoted"
            elif ch in "\r\n" and state != "quoted":
                state, field_idx = "start", 0
            else:
                state = "unquoted"
    return opened


def _header(path: Path, record: list[str], line: int, delimiter: str) -> list[str]:
    names = [name.strip() or f"unnamed: {i}" for i, name in enumerate(record)]
    if len(names) == 1 and delimiter == "\t" and "," in names[0]:  # a CSV saved as .tsv
        raise DataLoadError(path, f"one column {names[0]!r} holding commas",
                            'tab-separated columns; this file looks comma-separated: pass format="csv"', line=line)
    if (dup := first_duplicate(names)) is not None:
        first = names.index(dup)
        raise DataLoadError(path, f"the column name {dup!r} twice (fields {first + 1} and "
                            f"{names.index(dup, first + 1) + 1})", "unique column names", line=line, column=dup)
    return names


_OTHER_DELIMITERS = (";", "\t", "|")


def sniff_delimiter(stream, delimiter: str):
    """(delimiter, the stream's lines again): a CSV whose header line has no comma but holds ';', a tab or '|'
    is read with that one (the most frequent; ties in that order), as Excel writes ';' in many locales.

    >>> sniff_delimiter(iter(["text;label\\n", "hi;a\\n"]), ",")[0]
    ';'
    """
    head = []
    for line in stream:
        head.append(line)
        if line.strip():
            break
    lines = itertools.chain(head, stream)
    if delimiter != "," or not head or "," in head[-1]:
        return delimiter, lines
    counts = {d: head[-1].count(d) for d in _OTHER_DELIMITERS}
    best = max(_OTHER_DELIMITERS, key=lambda d: counts[d])  # max keeps the first of equal counts
    return (best if counts[best] else delimiter), lines


def read_csv(path: Path, stream, delimiter: str, problems: Problems) -> Table:
    """Rows of a CSV/TSV file; every row keeps the physical line it started on (quoted fields may span lines).
    A .csv whose header has no comma but ';', tabs or '|' is read with that delimiter (noted in `Table.notes`)."""
    header, header_line, n_rows, current, blank = None, None, 0, [], 0
    records, starts, rows = [], [], []
    given = delimiter
    delimiter, stream = sniff_delimiter(stream, delimiter)
    with _large_fields():
        reader = csv.reader(_kept_lines(stream, current), delimiter=delimiter, strict=True)
        while True:
            start = reader.line_num + 1
            current.clear()
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                err = _csv_error(path, str(exc), current, start, delimiter, header, reader.line_num)
                if header is None or "end of data" in str(exc):
                    raise err from None  # an unclosed quote swallowed the rest of the file: nothing to resume
                err.row, n_rows = n_rows, n_rows + 1
                problems.row_error("bad quoting", err)
                continue
            if not record:
                blank += 1  # a blank line: no data, but counted in the report
                continue
            if header is None:
                header, header_line = _header(path, record, start, delimiter), start
                continue
            if len(record) != len(header):
                problems.row_error("wrong field count", DataLoadError(
                    path, f"{len(record)} fields", f"{len(header)} fields like the header ({', '.join(header)}); "
                    f"a field containing {_delimiter_name(delimiter)} must be quoted", line=start, row=n_rows))
            else:
                records.append(dict(zip(header, record))), starts.append(start), rows.append(n_rows)
            n_rows += 1
    if header is None:
        raise DataLoadError(path, "an empty file", "a header line naming the columns, then one row per line")
    if n_rows == 0:
        raise DataLoadError(path, f"only the header line ({', '.join(header)}) and no data rows",
                            "at least one row under the header", line=header_line)
    notes = {"blank_lines": blank} if blank else {}
    if delimiter != given:
        notes["delimiter"] = delimiter
    return table_from_records(str(path), path, records, starts, rows, columns=header, header_line=header_line,
                              notes=notes)


def _delimiter_name(delimiter: str) -> str:
    return "a tab" if delimiter == "\t" else repr(delimiter)


def _csv_error(path, message: str, record_lines: list[str], start: int, delimiter: str, header, line_num: int):
    if "end of data" in message:
        n, field_idx = _open_quote(record_lines, delimiter)
        column = header[field_idx] if header and field_idx < len(header) else None
        return DataLoadError(path, "a quote (\") that is never closed: the rest of the file was read into this field",
                             'a closing quote; a quote inside a quoted field is written twice ("")',
                             line=start + n, column=column)
    if "expected after" in message:
        return DataLoadError(path, f"text after a closing quote ({message})",
                             f"{_delimiter_name(delimiter)} or the line's end after a closing quote; a quote inside "
                             'a quoted field is written twice ("")', line=line_num)
    return DataLoadError(path, f"a CSV syntax error ({message})", "well-formed CSV", line=line_num)


# --- JSON Lines / JSON ----------------------------------------------------------------------------------------
def kind_of(value) -> str:
    """How a message names a value's type: 'a string', 'a number', 'an object', 'a list', ..."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return "a number"
    return {bool: "a boolean", dict: "an object", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), f"a {type(value).__name__}")


_KEY = re.compile(r'"((?:[^"\\]|\\.)*)"\s*:')


def _json_problem(raw: str, exc: json.JSONDecodeError) -> tuple[str, str | None]:
    """(what is wrong with a JSON Lines line, the key it concerns: the last key before the error, or None)."""
    keys = _KEY.findall(raw, 0, exc.pos + 1)
    key = keys[-1] if keys else None
    found = f"invalid JSON: {exc.msg} (column {exc.colno})" + (f" after the key {key!r}" if key else "")
    if exc.msg.startswith("Expecting property name") and raw[:exc.pos].rstrip().endswith(","):
        found += "; a trailing comma before '}' is not allowed in JSON: remove it"
    elif not raw.endswith("\n") and (exc.msg.startswith("Unterminated") or exc.pos >= len(raw.rstrip()) - 1):
        found += "; the last line stops mid-object: is the file truncated, or still being written?"
    return found, key


def read_jsonl(path: Path, stream, problems: Problems) -> Table:
    """One JSON object per line; blank lines are skipped (and counted); a bad line is reported with the parser's
    column and the key before it. A file that holds one top-level array is read as JSON (noted as such)."""
    records, lines, rows, n_rows, blank = [], [], [], 0, 0
    stream = list(stream)  # the records are all kept anyway; a list lets the first line decide the format
    if _is_top_level_array(stream):
        return _array_in_jsonl(path, "".join(stream), problems)
    for n, raw in enumerate(stream, start=1):
        if not raw.strip():
            blank += 1
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            found, key = _json_problem(raw, exc)
            problems.row_error("bad JSON", DataLoadError(path, found, "one JSON object per line", line=n,
                                                         row=n_rows, column=key))
        else:
            if isinstance(obj, dict):
                records.append(obj), lines.append(n), rows.append(n_rows)
            else:
                problems.row_error("not an object", DataLoadError(path, f"{kind_of(obj)} ({raw.strip()[:40]})",
                                                                  'an object like {"text": ..., "label": ...}',
                                                                  line=n, row=n_rows))
        n_rows += 1
    if n_rows == 0:
        raise DataLoadError(path, "an empty file", 'one JSON object per line, like {"text": ..., "label": ...}')
    return table_from_records(str(path), path, records, lines, rows, notes={"blank_lines": blank} if blank else {})


def _is_top_level_array(lines: list[str]) -> bool:
    """Whether JSON Lines text is really one JSON array: it opens with '[' on a line that isn't a whole value by
    itself (a pretty-printed array), or it is a single array line (one list per line stays a per-line error)."""
    filled = [line for line in lines if line.strip()]
    if not filled or not filled[0].lstrip().startswith("["):
        return False
    try:
        json.loads(filled[0])
    except json.JSONDecodeError:
        return True
    return len(filled) == 1


def _array_in_jsonl(path: Path, text: str, problems: Problems) -> Table:
    """A JSON Lines file that is one top-level array: read as JSON, or say why not in JSON Lines' terms."""
    try:
        table = read_json(path, text, problems)
    except DataLoadError as err:
        raise DataLoadError(path, f"a top-level array that can't be read as JSON either: {err.found}",
                            "one JSON object per line, found a top-level array; or a valid JSON list of objects",
                            line=err.line) from None
    table.notes["format"] = "json"
    return table


def read_json(path: Path, text: str, problems: Problems) -> Table:
    """A .json file: a list of objects (each keeps the line it starts on), or JSON Lines saved as .json."""
    if not text.strip():
        raise DataLoadError(path, "an empty file", "a JSON list of objects")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if text.lstrip().startswith("{") and exc.msg == "Extra data":  # several objects: JSON Lines
            return read_jsonl(path, text.splitlines(keepends=True), problems)
        found = "the end of the file inside the list" if exc.pos >= len(text.rstrip()) else \
            f"invalid JSON: {exc.msg} (column {exc.colno})"
        raise DataLoadError(path, found, "a JSON list of objects, closed with ']'", line=exc.lineno) from None
    first_line = text[:len(text) - len(text.lstrip())].count("\n") + 1
    if not isinstance(data, list) or not data:
        found = f"a single JSON object (keys: {', '.join(list(data)[:8])})" if isinstance(data, dict) else \
            "an empty list []" if data == [] else kind_of(data)
        raise DataLoadError(path, found, "a list of objects [{...}, {...}] or one object per line (JSON Lines)",
                            line=first_line)
    records, lines, rows = [], [], []
    for row, (obj, line) in enumerate(zip(data, _item_lines(text))):
        if isinstance(obj, dict):
            records.append(obj), lines.append(line), rows.append(row)
        else:
            problems.row_error("not an object", DataLoadError(
                path, f"{kind_of(obj)} in the list", 'an object like {"text": ..., "label": ...}', line=line, row=row))
    return table_from_records(str(path), path, records, lines, rows)


def _item_lines(text: str):
    """The line each item of a valid top-level JSON list starts on."""
    decoder, i = json.JSONDecoder(), text.index("[") + 1
    line, counted = text.count("\n", 0, i) + 1, i
    while True:
        while text[i] in " \t\r\n,":
            i += 1
        if text[i] == "]":
            return
        line, counted = line + text.count("\n", counted, i), i
        yield line
        i = decoder.raw_decode(text, i)[1]


# --- Parquet, CoNLL -------------------------------------------------------------------------------------------
def read_parquet(path: Path) -> Table:
    """A Parquet file's rows; a truncated or corrupt file gets pyarrow's short message, not its traceback."""
    import pyarrow.parquet as pq
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... depending on where the file breaks
        message = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise DataLoadError(path, f"a file Parquet can't read ({message})",
                            "a complete Parquet file (is it truncated, or still being written?)") from None
    names = table.column_names
    if (dup := first_duplicate(names)) is not None:
        raise DataLoadError(path, f"the column name {dup!r} twice", "unique column names", column=dup)
    n = table.num_rows
    return Table(str(path), str(path), names, table.to_pydict(), [None] * n, list(range(n)))


def _sentences(stream):
    """Blocks of (line number, line) between blank lines; -DOCSTART- lines end a block too."""
    block = []
    for n, raw in enumerate(stream, start=1):
        line = raw.rstrip("\r\n")
        if line.strip() and not line.startswith("-DOCSTART-"):
            block.append((n, line))
        elif block:
            yield block
            block = []
    if block:
        yield block


def _conll_pair(path: Path, n: int, line: str, row: int):
    """(token, tag) from one line (first field, last field), or the DataLoadError saying what is wrong with it."""
    parts = [p.strip() for p in (line.split("\t") if "\t" in line else line.split(" "))]
    filled = [p for p in parts if p]
    if len(filled) >= 2:
        return filled[0], filled[-1]
    found = f"a tag {filled[0]!r} with no token before it" if not parts[0] else \
        f"only one field {filled[0]!r} (the tag is missing)"
    return DataLoadError(path, found, "'token<TAB>tag' on each line, e.g. 'Paris\\tB-LOC'", line=n, row=row)


def read_conll(path: Path, stream, problems: Problems) -> Table:
    """CoNLL: `token<TAB or space>tag` per line (the first field is the token, the last the tag), a blank line
    between sentences; -DOCSTART- lines are skipped. Each sentence keeps the line it starts on."""
    tokens, tags, lines, rows, row = [], [], [], [], -1
    for row, block in enumerate(_sentences(stream)):
        pairs = [_conll_pair(path, n, line, row) for n, line in block]
        bad = next((p for p in pairs if isinstance(p, DataLoadError)), None)
        if bad is not None:
            problems.row_error("bad CoNLL line", bad)
        else:
            tokens.append([p[0] for p in pairs]), tags.append([p[1] for p in pairs])
            lines.append(block[0][0]), rows.append(row)
    if row < 0:
        raise DataLoadError(path, "an empty file", "CoNLL lines 'token<TAB>tag', a blank line between sentences")
    return Table(str(path), str(path), ["tokens", "tags"], {"tokens": tokens, "tags": tags}, lines, rows)
