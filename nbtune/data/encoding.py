"""Encoding checks behind `nbtune.data.load`: a BOM, binary content, invalid UTF-8 (with byte offset and line),
and a guess at the encoding a non-UTF-8 file was written in. Re-exported by `nbtune.data.readers`.
"""
from __future__ import annotations

import codecs
import contextlib
from pathlib import Path

from nbtune.data.load_errors import DataLoadError

# (BOM, name to report, codec that strips the BOM); UTF-32 first since its LE BOM starts with UTF-16's.
_BOMS = [(codecs.BOM_UTF32_LE, "utf-32-le", "utf-32"), (codecs.BOM_UTF32_BE, "utf-32-be", "utf-32"),
         (codecs.BOM_UTF8, "utf-8-sig", "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16-le", "utf-16"),
         (codecs.BOM_UTF16_BE, "utf-16-be", "utf-16")]
_MAGIC = {b"PAR1": 'a Parquet file (pass format="parquet")', b"\x1f\x8b": "a gzip-compressed file",
          b"PK\x03\x04": "a ZIP archive, e.g. an .xlsx workbook (read it with pandas and pass the DataFrame)",
          b"%PDF": "a PDF document", b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image"}
_CHUNK_BYTES = 1 << 20
_LATIN_CODE_PAGES = ("cp1250", "cp1252", "cp1257", "cp775", "latin", "mac_latin2", "mac_iceland", "mac_roman",
                     "iso8859_1", "iso8859_2", "iso8859_3", "iso8859_4", "iso8859_9")  # _1 also covers _10, _13-_16


def detect_encoding(path: Path, encoding: str | None) -> tuple[str, str, bool]:
    """(codec to open with, encoding name to report, has a BOM). Checks a BOM-less file is text in valid UTF-8."""
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise DataLoadError(path, f"unknown encoding {encoding!r}",
                                "a Python codec name such as 'utf-8', 'cp1252' or 'latin-1'") from None
        return encoding, encoding, False
    with open(path, "rb") as f:
        head = f.read(4)
    for bom, name, codec in _BOMS:
        if head.startswith(bom):
            if codec == "utf-8-sig":
                check_utf8_text(path)
            return codec, name, True
    check_utf8_text(path)
    return "utf-8", "utf-8", False


def _binary_problem(path: Path, head: bytes) -> DataLoadError | None:
    what = next((what for magic, what in _MAGIC.items() if head.startswith(magic)), None)
    if what:
        return DataLoadError(path, f"{what}, not text", "a text file (CSV, TSV, JSONL, JSON or CoNLL)", line=1)
    if len(head) >= 8 and head[1::2].count(0) > 0.9 * len(head[1::2]):
        return DataLoadError(path, "UTF-16 little-endian text without a BOM (every second byte is 0x00)",
                             'text with a BOM or in UTF-8: pass encoding="utf-16-le"', line=1)
    controls = sum(b < 9 or 13 < b < 32 for b in head)
    if controls > 0.1 * len(head):
        return DataLoadError(path, f"binary data ({controls} of the first {len(head)} bytes are control bytes)",
                             "a text file (CSV, TSV, JSONL, JSON or CoNLL)", line=1)
    return None


def check_utf8_text(path: Path) -> None:
    """Stream the file once: raise at the first NUL byte or invalid UTF-8 byte, with its byte offset and line."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = newlines = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            if offset == 0 and (err := _binary_problem(path, chunk[:8192])):
                raise err
            nul = chunk.find(b"\x00")
            if nul >= 0:
                raise DataLoadError(path, f"a NUL byte (0x00) at byte offset {offset + nul}",
                                    "text; NUL bytes only occur in binary files (remove it, or check the export)",
                                    line=newlines + chunk.count(b"\n", 0, nul) + 1)
            pending = decoder.getstate()[0]
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                _raise_not_utf8(path, pending + chunk, exc.start, offset - len(pending), newlines)
            offset += len(chunk)
            newlines += chunk.count(b"\n")
        pending = decoder.getstate()[0]
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            _raise_not_utf8(path, pending, exc.start, offset - len(pending), newlines)


def _raise_not_utf8(path: Path, data: bytes, start: int, data_offset: int, newlines_before: int) -> None:
    line = newlines_before + data.count(b"\n", 0, start) + 1
    guess = guess_encoding(data)
    raise DataLoadError(path, f"byte 0x{data[start]:02x} at byte offset {data_offset + start}, which is not valid "
                        f"UTF-8", f'UTF-8 text; it looks like {guess}: pass encoding="{guess}"', line=line) from None


def guess_encoding(data: bytes) -> str:
    """The likely encoding of non-UTF-8 bytes: charset-normalizer's guess from the lines holding non-ASCII bytes,
    else cp1252 (Windows Western European, the most common by far). Its guesses from a few bytes are noise, and
    among the Latin code pages it can't tell; there cp1252 wins whenever it decodes the bytes."""
    sample = b"\n".join(line for line in data.split(b"\n") if max(line, default=0) >= 0x80)[:1 << 16]
    best = None
    if sum(b >= 0x80 for b in sample) >= 8:
        with contextlib.suppress(ImportError):
            import charset_normalizer
            best = charset_normalizer.from_bytes(sample).best()
    name = best.encoding if best is not None else "cp1252"
    if name.startswith(_LATIN_CODE_PAGES) or name in ("utf_8", "ascii"):
        with contextlib.suppress(UnicodeDecodeError):
            sample.decode("cp1252")
            return "cp1252"
    return name
