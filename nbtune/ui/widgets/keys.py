"""KeyCapture: a small anywidget that, once clicked (focused), sends chosen key presses to Python.

The browser sends ``{"event": "key", "key": <KeyboardEvent.key>}`` for keys listed in `capture_keys` only; Python
calls the `on_key` callbacks in order. `press(key)` runs the same path without a browser (tests, scripts).

Example:
    >>> seen = []
    >>> w = KeyCapture(keys=["1", "s"], hint="1 label, s skip", on_key=seen.append)
    >>> w.press("1"); w.press("x"); seen
    ['1']
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import anywidget
import traitlets

STATIC = Path(__file__).parent / "static"


class KeyCapture(anywidget.AnyWidget):
    """A focusable strip that forwards the listed keys (``KeyboardEvent.key`` names) to Python."""

    _esm = STATIC / "keys.js"
    _css = STATIC / "keys.css"
    # not `keys`: ipywidgets' Widget.keys already lists the synced trait names
    capture_keys = traitlets.List(traitlets.Unicode(), help="KeyboardEvent.key values to capture").tag(sync=True)
    hint = traitlets.Unicode("", help="plain text shown in the strip (never parsed as HTML)").tag(sync=True)

    def __init__(self, keys: Iterable[str] = (), hint: str = "", on_key: Callable[[str], Any] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(capture_keys=list(keys), hint=hint, **kwargs)
        self._callbacks: list[Callable[[str], Any]] = []
        if on_key is not None:
            self._callbacks.append(on_key)
        self.on_msg(self._on_frontend_msg)

    def on_key(self, callback: Callable[[str], Any]) -> None:
        """Call `callback(key)` for every captured key."""
        self._callbacks.append(callback)

    def press(self, key: str) -> None:
        """Handle a key as if it was pressed in the browser; keys not in `capture_keys` are ignored."""
        if key not in self.capture_keys:
            return
        for callback in list(self._callbacks):
            callback(key)

    def _on_frontend_msg(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("event") == "key" and isinstance(content.get("key"), str):
            self.press(content["key"])
