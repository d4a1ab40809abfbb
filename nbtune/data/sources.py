"""Sources behind `nbtune.data.load`: a path (file or folder of text files), a bundled dataset name, a pandas
DataFrame, a datasets.Dataset or DatasetDict, each read into `Table`s per split plus a `_Source` describing it.
`SUFFIXES` and `FORMATS` are re-exported by `nbtune.data.load`.
"""
from __future__ import annotations

import difflib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .encoding import detect_encoding
from .readers import DataLoadError, Table, first_duplicate, read_conll, read_csv, read_json, read_jsonl, read_parquet

SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
            ".parquet": "parquet", ".pq": "parquet", ".conll": "conll"}
FORMATS = ("csv", "tsv", "jsonl", "json", "parquet", "conll", "folder")
_SPLIT_NAMES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
                "dev": "validation", "test": "test"}


# --- sources --------------------------------------------------------------------------------------------------
@dataclass
class _Source:
    name: str
    format: str
    encoding: str | None = None
    bom: bool = False
    has_splits: bool = False
    notes: dict = field(default_factory=dict)   # the reader's findings (Table.notes): delimiter, blank_lines, format


def _read(source, format, encoding, problems) -> tuple[dict[str, Table], _Source]:
    import datasets
    if isinstance(source, (str, os.PathLike)):
        return _read_path(source, format, encoding, problems)
    if isinstance(source, datasets.DatasetDict):
        return ({s: _from_dataset(d, f"the DatasetDict, split {s!r}") for s, d in source.items()},
                _Source("the DatasetDict", "DatasetDict", has_splits=True))
    if isinstance(source, datasets.Dataset):
        return {"train": _from_dataset(source, "the Dataset")}, _Source("the Dataset", "Dataset")
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(source, pandas.DataFrame):
        return {"train": _from_dataframe(source)}, _Source("the DataFrame", "DataFrame")
    raise TypeError(f"load() takes a path, a folder, a pandas DataFrame, a datasets.Dataset or DatasetDict, or a "
                    f"bundled dataset name; got {type(source).__name__}")


def _read_path(source, format, encoding, problems) -> tuple[dict[str, Table], _Source]:
    path = Path(source)
    if not path.exists():
        return _read_bundled(str(source), path)
    fmt = _format_of(path, format)
    if fmt == "folder":
        return _read_folder(path, encoding)
    if fmt == "parquet":
        return {"train": read_parquet(path)}, _Source(str(path), fmt)
    codec, enc_name, bom = detect_encoding(path, encoding)
    try:
        with open(path, encoding=codec, newline="") as stream:
            if fmt in ("csv", "tsv"):
                table = read_csv(path, stream, "\t" if fmt == "tsv" else ",", problems)
            elif fmt == "json":
                table = read_json(path, stream.read(), problems)
            else:
                table = (read_jsonl if fmt == "jsonl" else read_conll)(path, stream, problems)
    except UnicodeError as exc:  # only with an explicit encoding= (otherwise checked up front)
        _decode(path, path.read_bytes(), codec, enc_name)
        raise DataLoadError(path, f"text {enc_name} can't decode ({exc})", "text in that encoding") from None
    return {"train": table}, _Source(str(path), table.notes.get("format", fmt), enc_name, bom, notes=table.notes)


def _decode(path: Path, data: bytes, codec: str, enc_name: str) -> str:
    """Bytes -> text; with an explicit encoding that doesn't fit, say where (byte offset and line)."""
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        raise DataLoadError(path, f"byte 0x{data[exc.start]:02x} at byte offset {exc.start}, which {enc_name} can't "
                            "decode", "text in that encoding; leave encoding= out to have it guessed",
                            line=data.count(b"\n", 0, exc.start) + 1) from None


def _read_bundled(name: str, path: Path) -> tuple[dict[str, Table], _Source]:
    from nbtune import assets
    if name not in assets.DATASETS:
        if path.suffix or len(path.parts) > 1:
            raise DataLoadError(path, "no such file or folder", "an existing file or folder")
        close = difflib.get_close_matches(name, list(assets.DATASETS), n=1, cutoff=0.6)
        raise DataLoadError(path, "no such file or folder", "an existing path, or a bundled dataset name "
                            f"({', '.join(assets.DATASETS)})" + (f"; did you mean {close[0]!r}?" if close else ""))
    if assets.dataset_task(name) == "causal-lm":
        raise DataLoadError(None, "a chat dataset", "text classification or tagging data; use "
                            f"nbtune.assets.load_dataset({name!r}) for chat data", source=name)
    splits = assets.load_dataset(name).items()
    return {s: _from_dataset(d, f"{name!r}, split {s!r}") for s, d in splits}, _Source(name, "bundled", has_splits=True)


def _format_of(path: Path, format: str | None) -> str:
    if format is not None and format not in FORMATS:
        raise DataLoadError(path, f"format={format!r}", f"one of {', '.join(FORMATS)}")
    if path.is_dir():
        if format not in (None, "folder"):
            raise DataLoadError(path, "a folder", f"a file for format={format!r}")
        return "folder"
    if format == "folder":
        raise DataLoadError(path, "a file", "a folder of <label>/*.txt files for format='folder'")
    if format is not None:
        return format
    if path.suffix.lower() not in SUFFIXES:
        raise DataLoadError(path, f"the suffix {path.suffix or '(none)'!r}", f"one of {', '.join(SUFFIXES)}, or a "
                            f"folder of <label>/*.txt files; or pass format= (one of {', '.join(FORMATS)})")
    return SUFFIXES[path.suffix.lower()]


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def _raise_no_subfolders(folder: Path):
    names = sorted(p.name for p in folder.iterdir())
    found = f"no subfolders (only: {', '.join(names[:5])}{', ...' * (len(names) > 5)})" if names else "an empty folder"
    raise DataLoadError(folder, found, "one subfolder per label, each with one .txt file per example: "
                        "<folder>/<label>/*.txt (or <folder>/<split>/<label>/*.txt)")


def _read_folder(root: Path, encoding: str | None) -> tuple[dict[str, Table], _Source]:
    subdirs = _subdirs(root) or _raise_no_subfolders(root)
    has_splits = all(d.name.lower() in _SPLIT_NAMES for d in subdirs)
    splits = {_SPLIT_NAMES[d.name.lower()]: d for d in subdirs} if has_splits else {"train": root}
    tables, encodings = {}, []
    for split, folder in splits.items():
        texts, labels, files = [], [], []
        for label_dir in _subdirs(folder) or [_raise_no_subfolders(folder)]:
            paths = sorted(label_dir.glob("*.txt"))
            if not paths:
                names = sorted(p.name for p in label_dir.iterdir())
                raise DataLoadError(label_dir, f"no .txt files (it holds: {', '.join(names[:5]) or 'nothing'})",
                                    "one .txt file per example in each label folder")
            for p in paths:
                encodings.append(detect_encoding(p, encoding))
                texts.append(_decode(p, p.read_bytes(), *encodings[-1][:2]).strip())
                labels.append(label_dir.name), files.append(str(p))
        n = len(texts)
        tables[split] = Table(str(folder), str(folder), ["text", "label"], {"text": texts, "label": labels},
                              [None] * n, list(range(n)), files=files)
    return tables, _Source(str(root), "folder", ", ".join(sorted({e[1] for e in encodings})),
                           any(e[2] for e in encodings), has_splits)


def _from_dataframe(df) -> Table:
    names = [str(c) for c in df.columns]
    if (dup := first_duplicate(names)) is not None:
        raise DataLoadError(None, f"the column name {dup!r} twice", "unique column names", column=dup,
                            source="the DataFrame")
    values = {name: df.iloc[:, i].tolist() for i, name in enumerate(names)}
    return Table("the DataFrame", None, names, values, [None] * len(df), list(range(len(df))))


def _from_dataset(ds, name: str) -> Table:
    n, ds = len(ds), ds.with_format(None)  # columns stay lazy; _values reads the ones used in one go
    return Table(name, None, list(ds.column_names), {c: ds[c] for c in ds.column_names}, [None] * n,
                 list(range(n)), features=dict(ds.features))


def _pick_split(tables: dict[str, Table], split: str | None, src: _Source) -> dict[str, Table]:
    if split is None:
        return tables
    if not src.has_splits:
        return {split: tables["train"]}
    if split not in tables:
        raise DataLoadError(None, f"no split {split!r} (the splits are: {', '.join(tables)})", "one of those splits",
                            source=src.name)
    return {split: tables[split]}
