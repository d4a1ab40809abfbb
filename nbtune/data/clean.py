"""Composable text cleaning with counts and before/after previews; the step list is stored in the run config.

Each step is a small dataclass with ``apply(text) -> str`` and a plain spec form (``to_spec``/``from_spec``),
so a pipeline round-trips through YAML as ``["strip_html", {"normalize": "nfkc"}, "numbers"]`` and the same
steps run again at inference time through :func:`apply_steps`. Every step is idempotent, and so is the
default order that :func:`clean` uses (cleaning twice equals cleaning once).

    >>> apply_steps(["<p>Paid&nbsp;1,234.5 on March 3, 2024</p>"], ["strip_html", "normalize", "dates", "numbers",
    ...                                                              "whitespace"])
    ['Paid <num> on <date>']
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import difflib
import html
import re
import unicodedata
from dataclasses import dataclass, field, fields
from html.parser import HTMLParser
from typing import Any, ClassVar, Sequence

import datasets


class CleanSpecError(ValueError):
    """A cleaning spec names an unknown step or gives it parameters it does not take."""


class CleanInputError(ValueError):
    """A row cannot be cleaned (the text column is missing or holds something other than a string)."""


class _Step:
    """Shared spec handling: the spec is the name alone, ``{name: primary_value}`` or ``{name: {params}}``."""
    name: ClassVar[str]
    primary: ClassVar[str | None] = None  # the parameter a scalar spec value sets, e.g. {"normalize": "nfc"}
    dataset_level: ClassVar[bool] = False

    def apply(self, text: str) -> str:
        raise NotImplementedError

    def to_spec(self) -> str | dict:
        changed = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}
        changed = {k: list(v) if isinstance(v, tuple) else v for k, v in changed.items()}  # YAML-safe
        if not changed:
            return self.name
        if list(changed) == [self.primary]:
            return {self.name: changed[self.primary]}
        return {self.name: changed}

    @classmethod
    def from_spec(cls, value: Any = None) -> "_Step":
        if value is None or value is True:
            return cls()
        if isinstance(value, dict):
            known = [f.name for f in fields(cls)]
            unknown = sorted(set(value) - set(known))
            if unknown:
                raise CleanSpecError(f"step '{cls.name}' has no parameter {', '.join(map(repr, unknown))}; "
                                     f"it takes: {', '.join(known) or 'no parameters'}")
            return cls(**value)
        if cls.primary is None:
            raise CleanSpecError(f"step '{cls.name}' takes no single value (found {value!r}); write "
                                 f"'{cls.name}' or {{'{cls.name}': {{param: value}}}}")
        return cls(**{cls.primary: value})


def _choice(step: str, param: str, value: str, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value.lower() not in allowed:
        raise CleanSpecError(f"step '{step}': {param} must be one of {', '.join(allowed)}; found {value!r}")
    return value.lower()


# ------------------------------------------------------------------------------------------------ HTML
_BLOCK_TAGS = frozenset(
    "address article aside blockquote body br caption dd details dialog div dl dt fieldset figcaption figure "
    "footer form h1 h2 h3 h4 h5 h6 head header hr html li main nav ol option p pre section summary table tbody "
    "td tfoot th thead title tr ul".split())
_SKIP_TAGS = frozenset({"script", "style"})


class _TextExtractor(HTMLParser):
    def __init__(self, keep: frozenset[str]):
        super().__init__(convert_charrefs=True)  # entities arrive unescaped in handle_data
        self.keep, self.parts, self.gap, self.skip_depth = keep, [], None, 0

    def handle_starttag(self, tag, attrs):
        if self.get_starttag_text() in self.keep:  # our own placeholders such as <num> are text, not markup
            self.handle_data(self.get_starttag_text())
            return
        if tag in _SKIP_TAGS:
            self.skip_depth += 1
        self._boundary(tag)

    def handle_startendtag(self, tag, attrs):
        self._boundary(tag)

    def handle_endtag(self, tag):
        if tag in _SKIP_TAGS:
            self.skip_depth = max(0, self.skip_depth - 1)
        self._boundary(tag)

    def _boundary(self, tag: str) -> None:
        self.gap = "block" if tag in _BLOCK_TAGS or self.gap == "block" else "inline"

    def handle_data(self, data):
        if self.skip_depth or not data:
            return
        if self.gap and self.parts:
            # An inline tag inside a word (un<i>believ</i>able, H<sub>2</sub>O) joins; any other boundary spaces.
            prev = self.parts[-1][-1:]
            joins = self.gap == "inline" and prev.isalnum() and data[0].isalnum()
            if not joins and not prev.isspace() and not data[0].isspace():
                self.parts.append(" ")
        self.gap = None
        self.parts.append(data)


@dataclass(frozen=True)
class StripHtml(_Step):
    """Markup to text with the stdlib HTML parser: script/style dropped, entities unescaped, block tags spaced.

    Runs until nothing changes, so double-escaped markup (``&amp;lt;b&amp;gt;``) goes too and the step is
    idempotent. The placeholders that Numbers and Dates write (``<num>``, ``<date>``) are kept as text.

    >>> StripHtml().apply("<p>Hi&amp;<b>you</b></p><script>x</script>")
    'Hi& you'
    """
    keep: tuple[str, ...] = ("<num>", "<date>")
    name: ClassVar[str] = "strip_html"

    def __post_init__(self):
        object.__setattr__(self, "keep", tuple(self.keep))  # a YAML list comes back as a list

    def apply(self, text: str) -> str:
        for _ in range(5):  # each pass removes one level of escaping; real text settles in one or two
            if "<" not in text and "&" not in text:
                return text
            parser = _TextExtractor(frozenset(self.keep))
            parser.feed(text)
            parser.close()
            out = "".join(parser.parts)
            if out == text:
                break
            text = out
        return text


@dataclass(frozen=True)
class Normalize(_Step):
    """Unicode normalisation, NFKC by default (full-width letters and digits, ligatures, compatibility forms).

    >>> Normalize().apply("ｆｕｌｌ　ｗｉｄｔｈ １２３")
    'full width 123'
    """
    form: str = "nfkc"
    name: ClassVar[str] = "normalize"
    primary: ClassVar[str] = "form"

    def __post_init__(self):
        object.__setattr__(self, "form", _choice(self.name, "form", self.form, ("nfc", "nfd", "nfkc", "nfkd")))

    def apply(self, text: str) -> str:
        return unicodedata.normalize(self.form.upper(), text)


@dataclass(frozen=True)
class RemoveControlChars(_Step):
    r"""Drop control and format characters (Unicode Cc, Cf) except tab and newline; optionally private-use
    characters (Co) and U+FFFD, the mark a failed decode leaves. Note Cf includes zero-width joiners.

    >>> RemoveControlChars(replacement_char=True).apply("a\x00b\u200bc\td\ufffd")
    'abc\td'
    """
    private_use: bool = False
    replacement_char: bool = False
    name: ClassVar[str] = "control"

    def apply(self, text: str) -> str:
        drop = {"Cc", "Cf"} | ({"Co"} if self.private_use else set())
        return "".join(c for c in text if c in "\t\n" or (unicodedata.category(c) not in drop
                                                             and not (self.replacement_char and c == "\ufffd")))


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


@dataclass(frozen=True)
class Whitespace(_Step):
    """Collapse runs of whitespace to one space (or keep single newlines) and strip the ends.

    >>> Whitespace().apply("  a \\t b\\n\\n c ")
    'a b c'
    """
    keep_newlines: bool = False
    name: ClassVar[str] = "whitespace"

    def apply(self, text: str) -> str:
        if not self.keep_newlines:
            return " ".join(text.split())
        lines = (" ".join(line.split()) for line in text.splitlines())
        return "\n".join(line for line in lines if line)


@dataclass(frozen=True)
class Deduplicate(_Step):
    """Dataset-level: drop later rows whose cleaned text repeats an earlier row of the same split."""
    name: ClassVar[str] = "dedupe"
    dataset_level: ClassVar[bool] = True

    def apply(self, text: str) -> str:
        return text


STEPS: dict[str, type[_Step]] = {s.name: s for s in (StripHtml, Normalize, RemoveControlChars, Dates, Numbers,
                                                     Whitespace, Deduplicate)}


def step_from_spec(entry: Any) -> _Step:
    """One spec entry ("numbers", {"numbers": "canonical"}, {"dates": {"mode": "iso"}} or a step) -> a step."""
    if isinstance(entry, _Step):
        return entry
    if isinstance(entry, str):
        name, value = entry, None
    elif isinstance(entry, dict) and len(entry) == 1:
        name, value = next(iter(entry.items()))
    else:
        raise CleanSpecError(f"a cleaning step is a name or a one-key mapping {{name: value}}; found {entry!r}")
    if name not in STEPS:
        close = difflib.get_close_matches(str(name), STEPS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise CleanSpecError(f"unknown cleaning step '{name}'.{hint} Known steps: {', '.join(STEPS)}")
    try:
        return STEPS[name].from_spec(value)
    except TypeError as e:  # a wrong value type inside a dataclass constructor
        raise CleanSpecError(f"step '{name}': {e}") from None


def pipeline_from_spec(spec: Sequence[Any]) -> list[_Step]:
    """A stored spec list -> step objects; unknown names are refused with the list of known ones."""
    if isinstance(spec, (str, dict)):
        spec = [spec]
    return [step_from_spec(entry) for entry in spec]


def apply_steps(texts: Sequence[str], spec: Sequence[Any]) -> list[str]:
    """Run the text steps of a spec on raw texts, e.g. at inference time (dataset-level steps are skipped).

    >>> apply_steps(["  Hi&amp;you "], ["strip_html", "whitespace"])
    ['Hi&you']
    """
    if isinstance(texts, str):
        raise TypeError("apply_steps takes a list of texts; wrap a single text as [text]")
    steps = [s for s in pipeline_from_spec(spec) if not s.dataset_level]
    out = []
    for text in texts:
        for step in steps:
            text = step.apply(text)
        out.append(text)
    return out


# ----------------------------------------------------------------------------------------------- clean
@dataclass
class StepReport:
    """What one step did: rows changed (text steps) or removed (dedupe) per split, and a few previews."""
    spec: Any
    changed: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    previews: list[tuple[str, int, str, str]] = field(default_factory=list)  # (split, row, before, after)

    @property
    def name(self) -> str:
        return self.spec if isinstance(self.spec, str) else next(iter(self.spec))

    @property
    def rows_changed(self) -> int:
        return sum(self.changed.values())

    @property
    def rows_removed(self) -> int:
        return sum(self.removed.values())


def _diff_html(before: str, after: str) -> tuple[str, str]:
    """Escaped before/after with deleted spans struck out and inserted spans marked."""
    a, b = [], []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, before, after, autojunk=False).get_opcodes():
        x, y = html.escape(before[i1:i2]), html.escape(after[j1:j2])
        if op == "equal":
            a.append(x), b.append(y)
            continue
        if x:
            a.append(f"<del style='background:#fdd'>{x}</del>")
        if y:
            b.append(f"<ins style='background:#dfd;text-decoration:none'>{y}</ins>")
    return "".join(a), "".join(b)


@dataclass
class CleanResult:
    """The cleaned data, the spec to store as ``data.cleaning``, and what each step did."""
    dataset: Any
    steps: list
    report: list[StepReport]

    def _repr_html_(self) -> str:
        rows = []
        for r in self.report:
            what = (f"{r.rows_removed} removed" if r.removed else f"{r.rows_changed} changed")
            per_split = ", ".join(f"{html.escape(s)}: {n}" for s, n in (r.removed or r.changed).items())
            rows.append(f"<tr><td><code>{html.escape(str(r.spec))}</code></td><td>{what}</td>"
                        f"<td>{per_split}</td></tr>")
            for split, row, before, after in r.previews:
                b, a = _diff_html(before, after)
                rows.append(f"<tr><td style='color:#888'>{html.escape(split)} #{row}</td><td>{b}</td>"
                            f"<td>{a}</td></tr>")
        return ("<table><thead><tr><th>step</th><th>before / rows</th><th>after / per split</th></tr></thead>"
                f"<tbody>{''.join(rows)}</tbody></table>")


def _flag_steps(strip_html, normalize, control, dates, numbers, whitespace, dedupe) -> list[_Step]:
    steps: list[_Step] = []
    if strip_html:
        steps.append(StripHtml())
    if normalize:
        steps.append(Normalize() if normalize is True else Normalize(normalize))
    if control:
        steps.append(RemoveControlChars(**control) if isinstance(control, dict) else RemoveControlChars())
    if dates:  # before numbers, so the digits of a date are not replaced one by one
        steps.append(Dates() if dates is True else Dates(dates))
    if numbers:
        steps.append(Numbers() if numbers is True else Numbers(numbers))
    if whitespace:
        steps.append(Whitespace())
    if dedupe:
        steps.append(Deduplicate())
    return steps


def _texts(ds: datasets.Dataset, split: str, column: str) -> list[str]:
    if column not in ds.column_names:
        raise CleanInputError(f"split '{split}' has no column '{column}'; its columns are {ds.column_names}")
    texts = ds[column]
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise CleanInputError(f"split '{split}', row {i}, column '{column}': expected a string, found "
                                  f"{type(t).__name__} {t!r}")
    return list(texts)


@contextlib.contextmanager
def quiet_progress():
    """Silence datasets' progress bars (e.g. 'Flattening the indices') for a moment, then restore them."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def replace_column(ds: datasets.Dataset, column: str, values: list) -> datasets.Dataset:
    """A copy of ``ds`` with one column's values replaced; column order and feature type are kept."""
    order = ds.column_names
    if order == [column]:  # removing the only column would leave a table of zero rows
        return datasets.Dataset.from_dict({column: values}, features=ds.features)
    with quiet_progress():  # add_column flattens a selected dataset's indices first
        out = ds.remove_columns([column]).add_column(column, values, feature=ds.features[column])
    return out.select_columns(order)


def clean(ds, *steps, column: str = "text", strip_html: bool = False, normalize: str | bool | None = None,
          control: bool | dict = False, numbers: bool | str = False, dates: bool | str = False,
          whitespace: bool = True, dedupe: bool = False, preview_rows: int = 5) -> CleanResult:
    """Clean the text column of every split; returns the new data, the step spec and a per-step report.

    Either pass steps (objects or spec entries, run in the order given) or use the keyword flags, which run
    in a fixed order: strip_html, normalize, control, dates, numbers, whitespace, dedupe. The input is never
    modified. ``numbers``/``dates`` take True (placeholders) or a mode ("canonical"; "iso").

    >>> ds = datasets.Dataset.from_dict({"text": ["<b>Hi</b>  there", "Hi there"]})
    >>> r = clean(ds, strip_html=True, dedupe=True)
    >>> list(r.dataset["text"]), r.steps, [s.rows_changed or s.rows_removed for s in r.report]
    (['Hi there'], ['strip_html', 'whitespace', 'dedupe'], [1, 1, 1])
    """
    if len(steps) == 1 and isinstance(steps[0], (list, tuple)):  # clean(ds, cfg.data.cleaning)
        steps = tuple(steps[0])
    if steps:
        defaults = dict(strip_html=False, normalize=None, control=False, numbers=False, dates=False,
                        whitespace=True, dedupe=False)
        given = dict(strip_html=strip_html, normalize=normalize, control=control, numbers=numbers, dates=dates,
                     whitespace=whitespace, dedupe=dedupe)
        clash = [k for k in defaults if given[k] != defaults[k]]
        if clash:
            raise CleanSpecError(f"pass either steps or keyword flags, not both (got steps and {clash})")
        pipeline = pipeline_from_spec(list(steps))
    else:
        pipeline = _flag_steps(strip_html, normalize, control, dates, numbers, whitespace, dedupe)
    is_dict = isinstance(ds, datasets.DatasetDict)
    splits = dict(ds) if is_dict else {"data": ds}
    report = [StepReport(step.to_spec()) for step in pipeline]
    out = {}
    for split, part in splits.items():
        texts = _texts(part, split, column)
        keep = list(range(len(texts)))
        for step, rep in zip(pipeline, report):
            if step.dataset_level:
                seen, kept = set(), []
                for i in keep:
                    if texts[i] not in seen:
                        seen.add(texts[i])
                        kept.append(i)
                rep.removed[split] = len(keep) - len(kept)
                keep = kept
                continue
            n = 0
            for i in keep:
                new = step.apply(texts[i])
                if new != texts[i]:
                    n += 1
                    if len(rep.previews) < preview_rows:
                        rep.previews.append((split, i, texts[i], new))
                    texts[i] = new
            rep.changed[split] = n
        cleaned = replace_column(part, column, texts)
        out[split] = cleaned.select(keep) if len(keep) < len(texts) else cleaned
    result = datasets.DatasetDict(out) if is_dict else out["data"]
    return CleanResult(result, [step.to_spec() for step in pipeline], report)


from nbtune.data import make_callable  # noqa: E402 - `nbtune.data.clean(...)` calls clean()

make_callable(__name__)
