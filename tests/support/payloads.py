"""The 12 hostile payloads of reliability case G1 (shared by the G1 browser test, the G2 HTML audit and the G3
untrusted-notebook test), and the slots they can fill.

Each payload would set ``window.__x`` (or run a JupyterLab command, or break out of an inline JSON block) if it
ever became markup instead of text. Ids are short and stable so a failure names the payload.

    >>> [p.id for p in PAYLOADS][:3]
    ['img-onerror', 'svg-onload-breakout', 'script-close']
    >>> len(PAYLOADS), len(TEN_K)
    (12, 10000)
"""
from __future__ import annotations

import os
from dataclasses import dataclass

# Repeated to exactly 10,000 characters: a long payload that is hostile along its whole length.
_UNIT = "<img src=x onerror=window.__x=1>"
TEN_K = (_UNIT * (10_000 // len(_UNIT) + 1))[:10_000]


@dataclass(frozen=True)
class Payload:
    id: str
    text: str

    def as_filename(self) -> str | None:
        """The payload as a file name, or None where the OS cannot hold it (a "/" or over 255 bytes)."""
        if "/" in self.text or "\0" in self.text or len(os.fsencode(self.text + ".csv")) > 255:
            return None
        return self.text + ".csv"


PAYLOADS: tuple[Payload, ...] = (
    Payload("img-onerror", "<img src=x onerror=window.__x=1>"),
    Payload("svg-onload-breakout", '"><svg onload=window.__x=1>'),
    Payload("script-close", "</script><script>window.__x=1</script>"),
    Payload("script-close-mixed-case", "</ScRiPt ><script>window.__x=1</script>"),
    Payload("a-href-javascript", '<a href="javascript:window.__x=1">c</a>'),
    Payload("javascript-url", "javascript:window.__x=1"),
    Payload("commandlinker-button", '<button data-commandlinker-command="notebook:run-all-cells">'),
    Payload("template-injection", "{{constructor.constructor('window.__x=1')()}}"),
    Payload("mathjax-href", "$\\href{javascript:window.__x=1}{m}$"),
    Payload("entity-round-trip", "&lt;img src=x onerror=window.__x=1&gt;"),
    Payload("json-line-separators", "a\u2028b\u2029c"),
    Payload("ten-k", TEN_K),
)
IDS = [p.id for p in PAYLOADS]
TEXTS = [p.text for p in PAYLOADS]
