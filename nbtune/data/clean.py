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
import difflib
import html
import unicodedata
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any, ClassVar, Sequence

import datasets

from nbtune.data.clean_patterns import Dates, Numbers, zh_numeral_value  # noqa: F401
from nbtune.data.clean_steps_base import CleanSpecError, _choice, _Step


class CleanInputError(ValueError):
    """A row cannot be cleaned (the text column is missing or holds something other than a string)."""


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
