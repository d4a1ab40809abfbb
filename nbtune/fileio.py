"""Atomic text files: written next to the target, then renamed over it, so a reader (or a crash) never sees
half a file. Shared by the training report (nbtune.ui.report) and the review report (nbtune.explain.report).

    >>> atomic_write_text(Path("report.html"), ["<html>", "...", "</html>"])   # doctest: +SKIP
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable


def atomic_write_text(path: Path, text: str | Iterable[str]) -> Path:
    """Write `text` (a string, or parts streamed one by one so a big file is never held twice) to `path`."""
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for part in ([text] if isinstance(text, str) else text):
                handle.write(part)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)  # mkstemp makes it private; reports are meant to be shared
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path
