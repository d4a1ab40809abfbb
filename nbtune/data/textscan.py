"""Text problems and writing systems per row: `text_flags` and `script_mix`, numpy arrays aligned with the rows.

Used by `nbtune.data.inspect` (which re-exports every public name here); the flag bits live in
`nbtune.data.dedup`.
"""
from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from html.entities import html5
from html.parser import HTMLParser
from typing import Sequence

import numpy as np

from nbtune.data.dedup import CONTROL, EMAIL, EMPTY, HTML, NUMBER, RARE_CHAR, URL


# ---------------------------------------------------------------------------------------- text problems
_URL = re.compile(r"(?i)\b(?:https?://|ftp://|www\.)[^\s<>\"']+")
_EMAIL = re.compile(r"[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_DIGIT = re.compile(r"\d")
# Chinese numerals: a run that starts with a digit or 十 and has a unit (三百二十, 十一, 一万) or is three
# digits or more (二〇二四). Single characters (一个, 十分) and unit-first runs (万一) are words, not numbers.
_ZH_NUM = re.compile(r"[一二两三四五六七八九十][零〇一二两三四五六七八九十百千万亿]+")
_ZH_UNIT, _ZH_DIGITS = set("十百千万亿"), set("〇零一二三四五六七八九")
_ENTITY = re.compile(r"&(#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_TAGS = frozenset("""a abbr address area article aside audio b base bdi bdo big blockquote body br button canvas
caption center cite code col colgroup dd del details dfn div dl dt em embed fieldset figcaption figure font footer
form frame h1 h2 h3 h4 h5 h6 head header hr html i iframe img input ins kbd label legend li link main map mark meta
nav noscript object ol optgroup option p param picture pre q s samp script section select small source span strike
strong style sub summary sup svg table tbody td template textarea tfoot th thead time title tr track tt u ul var
video wbr""".split())
_CONTROL_BIT, _RARE_BIT = 1, 2
_RARE_SHARE = 1e-5
_CHUNK_ROWS = 1 << 16


class _TagSniffer(HTMLParser):
    """Sets `found` on a known HTML element, a comment or a declaration; "a < b" and "x<y" are text."""

    def reset(self) -> None:
        super().reset()
        self.found = False

    def handle_starttag(self, tag, attrs) -> None:
        self.found = self.found or tag in _TAGS

    handle_startendtag = handle_starttag

    def handle_endtag(self, tag) -> None:
        self.found = self.found or tag in _TAGS

    def handle_comment(self, data) -> None:
        self.found = True

    handle_decl = handle_comment


def _html_at(text: str, sniffer: _TagSniffer) -> int:
    """Position of the first HTML remnant (tag, comment or entity such as &amp;), or -1."""
    for m in _ENTITY.finditer(text):
        if m.group(1)[0] == "#" or m.group(1) + ";" in html5:
            return m.start()
    if "<" not in text:
        return -1
    sniffer.reset()
    sniffer.feed(text)
    sniffer.close()
    return text.index("<") if sniffer.found else -1


def _zh_number_at(text: str) -> int:
    for m in _ZH_NUM.finditer(text):
        run = m.group()
        if _ZH_UNIT.intersection(run) or (len(run) >= 3 and set(run) <= _ZH_DIGITS):
            return m.start()
    return -1


def _char_chunks(texts: Sequence[str]):
    """(first row, rows' lengths, code points of the rows concatenated) per chunk: numpy instead of a char loop."""
    for start in range(0, len(texts), _CHUNK_ROWS):
        batch = texts[start:start + _CHUNK_ROWS]
        lens = np.fromiter(map(len, batch), dtype=np.int64, count=len(batch))
        cps = np.frombuffer("".join(batch).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        yield start, lens, cps


def _visible(s: str) -> str:
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in s)


def _excerpt(text: str, at: int, width: int = 30) -> str:
    lo = max(0, at - width)
    return ("…" if lo else "") + _visible(text[lo:at + width]) + ("…" if at + width < len(text) else "")


@dataclass(frozen=True)
class TextFlags:
    """Rows with HTML remnants, URLs, e-mail addresses, numbers, control or rare characters, or no text."""
    counts: dict[str, int]                       # flag name -> rows
    examples: dict[str, list[tuple[int, str]]]   # flag name -> up to 5 (row, excerpt with odd characters escaped)
    mask: np.ndarray                             # int32 flags per row
    rare_char_max_count: int = 0                 # a character seen at most this often in the corpus is rare
    rare_chars: str = ""                         # the rare characters found (at most 200)


def _char_table(texts: Sequence[str], rare_char_max_count: int | None) -> tuple[np.ndarray, int]:
    """uint8 per code point: _CONTROL_BIT (Cc/Cf but tab, newline, CR), _RARE_BIT (private use, unassigned,
    surrogate, U+FFFD, or non-ASCII and at most rare_char_max_count times in the corpus)."""
    counts = np.zeros(0x110000, dtype=np.int64)
    for _, _, cps in _char_chunks(texts):
        counts += np.bincount(cps, minlength=0x110000)
    if rare_char_max_count is None:  # strictly under 1e-5 of all characters
        rare_char_max_count = max(0, math.ceil(int(counts.sum()) * _RARE_SHARE) - 1)
    table = np.zeros(0x110000, dtype=np.uint8)
    for cp in np.flatnonzero(counts).tolist():
        category = unicodedata.category(chr(cp))
        if category in ("Cc", "Cf") and cp not in (9, 10, 13):
            table[cp] |= _CONTROL_BIT
        if category in ("Co", "Cn", "Cs") or cp == 0xFFFD or (cp > 0x7E and counts[cp] <= rare_char_max_count):
            table[cp] |= _RARE_BIT
    return table, rare_char_max_count


def text_flags(texts: Sequence[str], rare_char_max_count: int | None = None) -> TextFlags:
    """Flag rows with problems worth a look before training (bits in `mask`, names in FLAG_NAMES).

    html: real tags of known elements, comments, doctypes, entities (not "a < b"); url, email; number: digits
    or Chinese numerals (三百二十); control: Unicode Cc/Cf except tab/newline/CR; rare-char: private-use,
    unassigned, U+FFFD, or (non-ASCII) seen at most `rare_char_max_count` times, by default under 1e-5 of the
    corpus; empty: nothing but whitespace.

    >>> f = text_flags(["a < b", "<b>bold</b>", "三百二十个", "mail a@b.org", ""])
    >>> f.counts["html"], f.counts["number"], f.counts["email"], f.counts["empty"], f.mask.tolist()[1] == HTML
    (1, 1, 1, 1, True)
    """
    texts = texts if isinstance(texts, list) else list(texts)
    table, max_count = _char_table(texts, rare_char_max_count)
    mask = np.zeros(len(texts), dtype=np.int32)
    for start, lens, cps in _char_chunks(texts):
        row_of = np.repeat(np.arange(len(lens)), lens)
        hit = table[cps]
        for bit, flag in ((_CONTROL_BIT, CONTROL), (_RARE_BIT, RARE_CHAR)):
            mask[start + np.unique(row_of[(hit & bit) != 0])] |= flag
    names = {"html": HTML, "url": URL, "email": EMAIL, "number": NUMBER, "control": CONTROL,
             "rare-char": RARE_CHAR, "empty": EMPTY}
    examples: dict[str, list[tuple[int, str]]] = {n: [] for n in names}
    sniffer = _TagSniffer(convert_charrefs=True)
    for i, t in enumerate(texts):
        if not t or t.isspace():
            mask[i] |= EMPTY
            if len(examples["empty"]) < 5:
                examples["empty"].append((i, _visible(t)))
            continue
        found = {}
        if "<" in t or "&" in t:
            found["html"] = _html_at(t, sniffer)
        if "://" in t or "www." in t or "WWW." in t:
            m = _URL.search(t)
            found["url"] = m.start() if m else -1
        if "@" in t:
            m = _EMAIL.search(t)
            found["email"] = m.start() if m else -1
        m = _DIGIT.search(t)
        found["number"] = m.start() if m else _zh_number_at(t)
        for name, at in found.items():
            if at >= 0:
                mask[i] |= names[name]
                if len(examples[name]) < 5:
                    examples[name].append((i, _excerpt(t, at)))
        for name, bit in (("control", _CONTROL_BIT), ("rare-char", _RARE_BIT)):
            if mask[i] & names[name] and len(examples[name]) < 5:
                at = next(k for k, c in enumerate(t) if table[ord(c)] & bit)
                examples[name].append((i, _excerpt(t, at)))
    counts = {n: int(np.count_nonzero(mask & bit)) for n, bit in names.items()}
    rare = "".join(chr(c) for c in np.flatnonzero(table & _RARE_BIT)[:200].tolist())
    return TextFlags(counts, examples, mask, max_count, rare)


# ------------------------------------------------------------------------------------------------ scripts
SCRIPT_NAMES = ["Latin", "Han", "Cyrillic", "Arabic", "Hangul", "Kana", "Other", "Mixed", "None"]
_DOMINANT_SHARE = 0.7


def _script_code(ch: str) -> int:
    """1 + index in SCRIPT_NAMES for a letter, from its Unicode name; 0 for anything that is not a letter."""
    if not unicodedata.category(ch).startswith("L"):
        return 0
    name = unicodedata.name(ch, "")
    for code, keys in enumerate((("LATIN",), ("CJK", "IDEOGRAPH"), ("CYRILLIC",), ("ARABIC",), ("HANGUL",),
                                 ("HIRAGANA", "KATAKANA")), start=1):
        if any(k in name for k in keys):
            return code
    return 7  # Other


@dataclass(frozen=True)
class ScriptMix:
    """Dominant writing system per row: a script with more than 70% of the row's letters, else Mixed."""
    counts: dict[str, int]
    per_row: np.ndarray     # uint8 index into names
    names: list[str]


def script_mix(texts: Sequence[str]) -> ScriptMix:
    """Count rows by dominant script; rows without letters are "None".

    >>> m = script_mix(["hello 你好", "hi 你好", "你好", "123"])
    >>> [m.names[c] for c in m.per_row]
    ['Latin', 'Mixed', 'Han', 'None']
    """
    texts = texts if isinstance(texts, list) else list(texts)
    table = np.zeros(0x110000, dtype=np.uint8)
    known = np.zeros(0x110000, dtype=bool)
    per_row = np.zeros(len(texts), dtype=np.uint8)
    width = 8  # code 0 (not a letter) + 7 scripts
    for start, lens, cps in _char_chunks(texts):
        new = np.unique(cps[~known[cps]])
        table[new] = [_script_code(chr(c)) for c in new.tolist()]
        known[new] = True
        code = table[cps]
        row_of = np.repeat(np.arange(len(lens)), lens)
        letters = code > 0
        per = np.bincount(row_of[letters] * width + code[letters], minlength=len(lens) * width)
        per = per.reshape(len(lens), width)[:, 1:]           # (rows, 7 scripts)
        total, best = per.sum(axis=1), per.argmax(axis=1)
        share = per.max(axis=1) / np.maximum(total, 1)
        out = np.where(share > _DOMINANT_SHARE, best, SCRIPT_NAMES.index("Mixed"))
        per_row[start:start + len(lens)] = np.where(total == 0, SCRIPT_NAMES.index("None"), out)
    counts = np.bincount(per_row, minlength=len(SCRIPT_NAMES))
    return ScriptMix({n: int(c) for n, c in zip(SCRIPT_NAMES, counts)}, per_row, list(SCRIPT_NAMES))
