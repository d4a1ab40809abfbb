"""`DataLoadError`, the error of `nbtune.data.load` and its readers; its own module so that `readers` and
`encoding` share it without importing each other. Re-exported by `nbtune.data.readers` and `nbtune.data.load`.
"""
from __future__ import annotations

SKIP_HINT = " (or pass strict=False to skip such rows)"


class DataLoadError(ValueError):
    """Data that can't be loaded as given: says where (file, line or row, column), what was found, what was expected.

    Attributes: `path` (str, None for in-memory data), `line` (1-based physical line, or None), `row` (0-based data
    row, or None), `column` (or None), `found`, `expected`.

    >>> str(DataLoadError("tickets.csv", "an empty value", "a label", line=14, column="label"))
    "tickets.csv, line 14, column 'label': found an empty value, expected a label"
    """

    def __init__(self, path, found: str, expected: str, *, line: int | None = None, row: int | None = None,
                 column: str | None = None, source: str | None = None):
        self.path = None if path is None else str(path)
        self.line, self.row, self.column = line, row, column
        self.found, self.expected = found, expected
        self.source = source or self.path or "the data"
        super().__init__(self._message())

    def _message(self) -> str:
        place = f"line {self.line}" if self.line is not None else "" if self.row is None else f"row {self.row}"
        where = [self.source, place, "" if self.column is None else f"column {self.column!r}"]
        return f"{', '.join(w for w in where if w)}: found {self.found}, expected {self.expected}"

    def __reduce__(self):  # picklable (e.g. raised in a worker process), attributes and message intact
        return type(self), (self.path, self.found, self.expected), dict(self.__dict__, args=self.args)

    def with_skip_hint(self) -> "DataLoadError":
        self.expected += SKIP_HINT
        self.args = (self._message(),)
        return self
