"""The label store: an append-only JSONL file of annotation actions, one complete line per action.

Each line is ``{"item_id", "text_sha1", "label", "annotator", "time", "action"}`` with ``action`` one of
``label``, ``skip`` or ``undo``. A line is written with one ``write`` on a file opened with ``O_APPEND``, then
fsynced, so a crash loses at most the item being labelled. Reading skips a torn last line (the remains of a
crashed write) and says so. An ``undo`` reverts the annotator's latest action that is not yet undone.

Example:
    >>> import tempfile, os
    >>> store = LabelStore(os.path.join(tempfile.mkdtemp(), "labels.jsonl"), annotator="ana")
    >>> _ = store.label("0", "free prize!!", "spam"); _ = store.skip("1", "see you")
    >>> _ = store.undo(); store.current_labels()
    {'0': 'spam'}
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

ACTIONS = ("label", "skip", "undo")
FIELDS = ("item_id", "text_sha1", "label", "annotator", "time", "action")


class LabelStoreError(ValueError):
    """A label file holds a line that is not a valid label record."""


class TornLineWarning(UserWarning):
    """A label file ends in an incomplete line (a write interrupted by a crash); it was skipped."""


def text_sha1(text: str) -> str:
    """The SHA-1 of the UTF-8 text, stored with each action to notice texts that changed under an item id.

    >>> text_sha1("hi")[:8]
    'c22b5f91'
    """
    return hashlib.sha1(text.encode("utf-8"), usedforsecurity=False).hexdigest()


@dataclass(frozen=True)
class LabelRecord:
    """One line of a label file."""
    item_id: str
    text_sha1: str
    label: str | None
    annotator: str
    time: str
    action: str

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class LabelLog:
    """The records read from one or more label files, and notes about lines that were skipped."""
    records: tuple[LabelRecord, ...]
    notes: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[LabelRecord]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def annotators(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.annotator for r in self.records))

    def resolve(self) -> dict[str, "Resolution"]:
        """Each annotator's current state after applying undos, in order of first appearance."""
        return resolve(self.records)

    def current_labels(self) -> dict[str, dict[str, str]]:
        """{annotator: {item_id: label}} after undos; skipped items are left out."""
        return {a: r.labels() for a, r in self.resolve().items()}


@dataclass
class Resolution:
    """One annotator's state, updated record by record: an undo pops the latest action still in force."""
    annotator: str
    stack: list[LabelRecord] = field(default_factory=list)          # actions in force, oldest first
    notes: list[str] = field(default_factory=list)
    _per_item: dict[str, list[LabelRecord]] = field(default_factory=dict, repr=False)

    def apply(self, record: LabelRecord) -> LabelRecord | None:
        """Apply one record; for an undo, return the action it reverted (None when there was none)."""
        if record.action != "undo":
            self.stack.append(record)
            self._per_item.setdefault(record.item_id, []).append(record)
            return None
        if not self.stack:
            self.notes.append(f"{self.annotator}: an undo of item {record.item_id!r} found nothing to undo")
            return None
        undone = self.stack.pop()
        actions = self._per_item[undone.item_id]
        actions.pop()
        if not actions:
            del self._per_item[undone.item_id]
        if undone.item_id != record.item_id:
            self.notes.append(f"{self.annotator}: an undo names item {record.item_id!r} but the latest action "
                              f"was on item {undone.item_id!r}; that action was undone")
        return undone

    def state(self, item_id: str) -> LabelRecord | None:
        """The action in force for an item (a label or a skip), or None when it has none."""
        actions = self._per_item.get(item_id)
        return actions[-1] if actions else None

    def labels(self) -> dict[str, str]:
        """{item_id: label} for items whose action in force is a label, in first-labelled order."""
        return {i: a[-1].label for i, a in self._per_item.items() if a[-1].action == "label"}

    def skipped(self) -> list[str]:
        return [i for i, a in self._per_item.items() if a[-1].action == "skip"]

    def last(self) -> LabelRecord | None:
        """The latest action in force: what an undo would revert."""
        return self.stack[-1] if self.stack else None


def resolve(records: Iterable[LabelRecord]) -> dict[str, Resolution]:
    """Fold records, in order, into one `Resolution` per annotator."""
    out: dict[str, Resolution] = {}
    for rec in records:
        out.setdefault(rec.annotator, Resolution(rec.annotator)).apply(rec)
    return out


def _parse_line(raw: bytes, path: Path, line_no: int) -> LabelRecord:
    where = f"{path}, line {line_no}"
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        found = raw[:60].decode("utf-8", "replace")
        raise LabelStoreError(f"{where}: found {found!r}, which is not a JSON object ({exc}); expected one "
                              f"label record per line with fields {', '.join(FIELDS)}") from None
    if not isinstance(obj, dict):
        raise LabelStoreError(f"{where}: found a JSON {type(obj).__name__}; expected an object with fields "
                              f"{', '.join(FIELDS)}")
    missing = [f for f in FIELDS if f not in obj]
    if missing:
        raise LabelStoreError(f"{where}: missing field(s) {', '.join(missing)}; expected {', '.join(FIELDS)}")
    for name in ("item_id", "text_sha1", "annotator", "time", "action"):
        if not isinstance(obj[name], str):
            raise LabelStoreError(f"{where}, field {name!r}: found {obj[name]!r}; expected a string")
    if obj["action"] not in ACTIONS:
        raise LabelStoreError(f"{where}, field 'action': found {obj['action']!r}; expected one of "
                              f"{', '.join(ACTIONS)}")
    if obj["action"] == "label" and not isinstance(obj["label"], str):
        raise LabelStoreError(f"{where}, field 'label': found {obj['label']!r}; a 'label' action needs a "
                              f"string label")
    if obj["label"] is not None and not isinstance(obj["label"], str):
        raise LabelStoreError(f"{where}, field 'label': found {obj['label']!r}; expected a string or null")
    return LabelRecord(**{f: obj[f] for f in FIELDS})


def read_records(path: str | os.PathLike) -> LabelLog:
    """Read one label file. A missing file reads as empty; a torn last line is skipped with a
    `TornLineWarning` (and a note in the log); any other bad line raises `LabelStoreError`."""
    path = Path(path)
    if not path.exists():
        return LabelLog((), (), (str(path),))
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline, else an incomplete line
    notes = []
    records = [_parse_line(raw, path, n) for n, raw in enumerate(lines, start=1) if raw.strip()]
    if tail.strip():
        note = (f"{path}, line {len(lines) + 1}: incomplete last line ({len(tail)} bytes, no newline), "
                f"probably a write cut short by a crash; skipped it")
        notes.append(note)
        warnings.warn(note, TornLineWarning, stacklevel=2)
    return LabelLog(tuple(records), tuple(notes), (str(path),))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class LabelStore:
    """One annotator's append-only view of a label file (other annotators may share the file).

    Args:
        path: the JSONL file; created (with its folder) on the first action.
        annotator: the name written on every line this store appends.
    """

    def __init__(self, path: str | os.PathLike, annotator: str = "me") -> None:
        if not isinstance(annotator, str) or not annotator.strip():
            raise ValueError(f"annotator must be a non-empty string; found {annotator!r}")
        self.path = Path(path)
        self.annotator = annotator
        log = read_records(self.path)
        self.notes: list[str] = list(log.notes)
        self.state = resolve(log.records).get(annotator) or Resolution(annotator)
        self.notes += self.state.notes
        self._tail_checked = False

    # ---- writing ----
    def append(self, item_id: str, text: str, action: str, label: str | None = None) -> LabelRecord:
        """Append one action as one complete line (O_APPEND, one write, fsync) and return its record."""
        if action not in ACTIONS:
            raise ValueError(f"action must be one of {', '.join(ACTIONS)}; found {action!r}")
        if action == "label" and (not isinstance(label, str) or not label):
            raise ValueError(f"a 'label' action needs a non-empty string label; found {label!r}")
        rec = LabelRecord(str(item_id), text_sha1(text), label if action == "label" else None,
                          self.annotator, _now(), action)
        self._write_line((rec.to_json() + "\n").encode("utf-8"))
        self.state.apply(rec)
        return rec

    def label(self, item_id: str, text: str, label: str) -> LabelRecord:
        return self.append(item_id, text, "label", label)

    def skip(self, item_id: str, text: str) -> LabelRecord:
        return self.append(item_id, text, "skip")

    def undo(self) -> LabelRecord | None:
        """Revert this annotator's latest action in force; returns the reverted record (None: nothing to undo)."""
        last = self.state.last()
        if last is None:
            return None
        rec = LabelRecord(last.item_id, last.text_sha1, None, self.annotator, _now(), "undo")
        self._write_line((rec.to_json() + "\n").encode("utf-8"))
        return self.state.apply(rec)

    def _write_line(self, data: bytes) -> None:
        if not self._tail_checked:
            self._drop_torn_tail()
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            view = memoryview(data)
            while view:  # a regular file takes the whole line in one write; loop only on a short write
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:  # make the new directory entry durable too
            _fsync_dir(self.path.parent)

    def _drop_torn_tail(self) -> None:
        """Cut an incomplete last line before appending, so the next line does not glue onto it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tail_checked = True
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            if data.endswith(b"\n"):
                return
            keep = data.rfind(b"\n") + 1
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        self.notes.append(f"{self.path}: removed an incomplete last line ({len(data) - keep} bytes) before "
                          f"appending")

    # ---- reading ----
    def read(self) -> LabelLog:
        """Every record in the file (all annotators), read afresh."""
        return read_records(self.path)

    def current_labels(self, annotator: str | None = None) -> dict[str, str]:
        """{item_id: label} for one annotator (default: this store's), undos applied, read afresh."""
        who = self.annotator if annotator is None else annotator
        state = self.read().resolve().get(who)
        return state.labels() if state else {}

    @staticmethod
    def merge(paths: Iterable[str | os.PathLike]) -> LabelLog:
        """Read several label files (e.g. one per annotator) into one log, file by file.

        An annotator found in more than one file is noted: undos are resolved in file order.
        """
        records: list[LabelRecord] = []
        notes: list[str] = []
        seen: dict[str, str] = {}
        names = []
        for p in paths:
            log = read_records(p)
            names.append(str(p))
            notes += log.notes
            for who in log.annotators:
                if who in seen and seen[who] != str(p):
                    notes.append(f"annotator {who!r} appears in {seen[who]} and {p}; their actions are "
                                 f"resolved in file order")
                seen.setdefault(who, str(p))
            records += log.records
        if not names:
            raise ValueError("merge needs at least one label file path")
        return LabelLog(tuple(records), tuple(notes), tuple(names))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
