"""Cleaning steps that recognise patterns: numbers (English digits, Chinese numerals) and calendar dates.

Part of `nbtune.data.clean`, which re-exports `Numbers`, `Dates` and `zh_numeral_value`.
"""
from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from typing import ClassVar

from nbtune.data.clean_steps_base import _choice, _Step


# --------------------------------------------------------------------------------------------- numbers
_ZH_DIGITS = {c: i for i, c in enumerate("零一二三四五六七八九")} | {"〇": 0, "两": 2}
_ZH_UNITS = "十百千万亿"
_ZH_NUMERAL = re.compile(f"(百分之)?([{''.join(_ZH_DIGITS)}{_ZH_UNITS}]+)(点[{''.join(_ZH_DIGITS)}]+)?")
# A lone numeral only counts before a measure word: 三个 -> 3个, but 统一 and 一些 stay words.
_ZH_COUNTERS = frozenset("个只位次件条张年月日天号元块岁名人届倍斤米")
_EN_NUMBER = re.compile(
    r"(?P<iso>(?<![0-9])[0-9]{4}-[0-9]{2}-[0-9]{2}(?![0-9]))"  # an ISO date is left for Dates, never split
    r"|(?<![A-Za-z0-9_.,])(?P<num>[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?P<frac>\.[0-9]+)?(?![A-Za-z0-9_]|[.,][0-9])"
    r"(?P<pct>\s?(?:%|percent\b))?", re.IGNORECASE)


def zh_numeral_value(run: str, frac: str = "", next_char: str = "") -> str | None:
    """Arabic form of a Chinese numeral run, or None where the run is probably a word, not a number.

    Rules: runs with units (十百千万亿) are parsed strictly by cn2an; unit-less runs of three or more digits
    are read digit by digit (二〇二四 -> 2024); a lone numeral needs a measure word after it (三个).

    >>> zh_numeral_value("三百二十"), zh_numeral_value("两千"), zh_numeral_value("一", next_char="些")
    ('320', '2000', None)
    """
    if run[0] not in _ZH_DIGITS and run[0] != "十":
        return None  # 万一, 千万: words, not numbers
    if len(run) == 1 and not frac and next_char not in _ZH_COUNTERS:
        return None
    if any(c in _ZH_UNITS for c in run):
        try:
            import cn2an
        except ImportError:
            raise ImportError("Chinese numerals need the cn2an package: pip install cn2an") from None

        try:
            value = cn2an.cn2an(run.replace("两", "二") + frac.replace("两", "二"), "strict")
        except (ValueError, KeyError):  # 三四百 (300-400), 一五一十: not one number
            return None
        return str(value)
    if len(run) == 2:
        return None  # 七八 (seven or eight), 一一 (one by one)
    digits = "".join(str(_ZH_DIGITS[c]) for c in run)
    return digits + ("." + "".join(str(_ZH_DIGITS[c]) for c in frac[1:]) if frac else "")


@dataclass(frozen=True)
class Numbers(_Step):
    """Replace numbers with a placeholder, or write them canonically.

    English digits with separators and decimals (1,234.5), percentages (50 %, 50 percent) and Chinese
    numerals (三百二十, 两千, 百分之五十) are recognised; ISO dates and tokens glued to letters (mp3, 5pm)
    are left alone. ``mode="canonical"`` drops thousands separators and turns Chinese numerals into digits.

    >>> Numbers().apply("Pay 1,234.5 (50 %) or 两千"), Numbers("canonical").apply("Pay 1,234.5 or 三百二十元")
    ('Pay <num> (<num>%) or <num>', 'Pay 1234.5 or 320元')
    """
    mode: str = "placeholder"
    placeholder: str = "<num>"
    chinese: bool = True
    name: ClassVar[str] = "numbers"
    primary: ClassVar[str] = "mode"

    def __post_init__(self):
        object.__setattr__(self, "mode", _choice(self.name, "mode", self.mode, ("placeholder", "canonical")))

    def _english(self, m: re.Match) -> str:
        if m["iso"]:
            return m["iso"]
        pct = "%" if m["pct"] else ""
        if self.mode == "placeholder":
            return self.placeholder + pct
        return m["num"].replace(",", "") + (m["frac"] or "") + pct

    def _chinese(self, m: re.Match) -> str:
        pct, run, frac = m.group(1) or "", m.group(2), m.group(3) or ""
        if pct and run[0] in _ZH_UNITS:  # 百分之 matched but no numeral follows
            return m.group(0)
        value = zh_numeral_value(run, frac, m.string[m.end():m.end() + 1])
        if value is None:
            return m.group(0)
        return (self.placeholder if self.mode == "placeholder" else value) + ("%" if pct else "")

    def apply(self, text: str) -> str:
        if self.chinese:  # first, so digits it writes next to 20,30 are read with them (idempotence)
            text = _ZH_NUMERAL.sub(self._chinese, text)
        return _EN_NUMBER.sub(self._english, text)


# ----------------------------------------------------------------------------------------------- dates
_MONTHS = dict(january=1, february=2, march=3, april=4, may=5, june=6, july=7, august=8, september=9,
               october=10, november=11, december=12, jan=1, feb=2, mar=3, apr=4, jun=6, jul=7, aug=8, sep=9,
               sept=9, oct=10, nov=11, dec=12)
_MONTH = "(?P<mon>" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_ORD = r"(?:st|nd|rd|th)?"
_ZH_N = "〇零一二三四五六七八九十"
_DATE_PATTERNS = [re.compile(p, re.IGNORECASE) for p in (
    rf"(?P<y>[0-9]{{4}}|[{_ZH_N}]{{4}})\s*年\s*(?P<m>[0-9]{{1,2}}|[{_ZH_N}]{{1,2}})\s*月"
    rf"\s*(?P<d>[0-9]{{1,2}}|[{_ZH_N}]{{1,3}})\s*[日号]",
    rf"\b{_MONTH}\s+(?P<d>[0-9]{{1,2}}){_ORD},?\s+(?P<y>[0-9]{{4}})\b",
    rf"\b(?P<d>[0-9]{{1,2}}){_ORD}\s+(?:of\s+)?{_MONTH},?\s+(?P<y>[0-9]{{4}})\b",
    r"(?<![0-9/-])(?P<y>[0-9]{4})(?P<sep>[-/])(?P<m>[0-9]{1,2})(?P=sep)(?P<d>[0-9]{1,2})(?![0-9/-])",
    r"(?<![0-9/.-])(?P<a>[0-9]{1,2})(?P<sep>[-/])(?P<b>[0-9]{1,2})(?P=sep)(?P<y>[0-9]{4})(?![0-9/-])",
)]


def _zh_int(s: str) -> int:
    """'2024' | '二〇二四' | '十二' | '二十三' -> int, for the parts of a Chinese date."""
    if s.isdigit() and s.isascii():
        return int(s)
    if "十" not in s:
        return int("".join(str(_ZH_DIGITS[c]) for c in s))
    tens, _, ones = s.partition("十")
    return (_ZH_DIGITS[tens] if tens else 1) * 10 + (_ZH_DIGITS[ones] if ones else 0)


@dataclass(frozen=True)
class Dates(_Step):
    """Replace calendar dates (with a year) by a placeholder or write them as ISO ``YYYY-MM-DD``.

    Recognised: "March 3, 2024", "3rd of March 2024", "3/4/2024" (month first unless ``dayfirst``),
    "2024-03-04", "2024/3/4", "2024年3月4日" and "二〇二四年三月四日". Impossible dates stay as written.

    >>> Dates("iso").apply("March 3, 2024 | 3/4/2024 | 2024年3月4日")
    '2024-03-03 | 2024-03-04 | 2024-03-04'
    """
    mode: str = "placeholder"
    placeholder: str = "<date>"
    dayfirst: bool = False
    name: ClassVar[str] = "dates"
    primary: ClassVar[str] = "mode"

    def __post_init__(self):
        object.__setattr__(self, "mode", _choice(self.name, "mode", self.mode, ("placeholder", "iso")))

    def _replace(self, m: re.Match) -> str:
        g = m.groupdict()
        if g.get("a"):
            g["m"], g["d"] = (g["b"], g["a"]) if self.dayfirst else (g["a"], g["b"])
        month = _MONTHS[g["mon"].lower()] if g.get("mon") else _zh_int(g["m"])
        try:
            date = _dt.date(_zh_int(g["y"]), month, _zh_int(g["d"]))
        except (ValueError, KeyError):
            return m.group(0)
        return self.placeholder if self.mode == "placeholder" else date.isoformat()

    def apply(self, text: str) -> str:
        for pattern in _DATE_PATTERNS:
            text = pattern.sub(self._replace, text)
        return text
