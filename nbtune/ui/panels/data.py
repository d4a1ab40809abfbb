"""The data panel: what the model will be trained on, before it is.

Compute -> info -> render: `nbtune.data.inspect.inspect` returns a `DataReport` (pure numbers and per-row
arrays), `nbtune.ui.data_figures` turns its parts into figures, and the sample browser
(`data_browser`) filters and pages the rows. Only one page of rows (escaped) is ever sent to the browser.

Example:
    >>> import nbtune as nt
    >>> ds = nt.data.load("tickets.csv", text="body", label="queue")      # doctest: +SKIP
    >>> nt.DataPanel(ds, model="minilm", max_length=128)                   # doctest: +SKIP
"""
from __future__ import annotations

import html
import time
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from nbtune.ui import data_figures
from nbtune.ui.panels.data_browser import Query, count_text, filter_rows, page_html
from nbtune.ui.chart_grid import chart_grid

ANY = "(any)"


def _tokenizer(model: Any) -> Any:
    """A tokenizer from a bundled model name, a local path or hub id, or the tokenizer itself."""
    if model is None or hasattr(model, "__call__") and hasattr(model, "convert_ids_to_tokens"):
        return model
    from transformers import AutoTokenizer

    from nbtune import assets
    path = assets.resolve_model(model).path if model in assets.MODELS else model
    return AutoTokenizer.from_pretrained(path)


class DataPanel:
    """Labels, lengths under the real tokenizer, duplicates, leakage, text flags, script mix, and a sample
    browser with search and filters. Display it as the last expression of a cell.

    Args:
        ds: a DatasetDict, Dataset, or anything `nbtune.data.inspect.inspect` accepts.
        model: a tokenizer, or a model name/path whose tokenizer measures lengths (None: characters).
        max_length: the run's max_length: rows longer than it are flagged "truncated".
        page_size: rows per page in the sample browser.
        report: an existing DataReport, to skip recomputing it.
    """

    def __init__(self, ds: Any = None, *, model: Any = None, max_length: int | None = None, page_size: int = 25,
                 text: str = "text", label: str = "label", report: Any = None) -> None:
        from nbtune.data.inspect import FLAG_NAMES, inspect

        t0 = time.perf_counter()
        self.report = report if report is not None else inspect(ds, tokenizer=_tokenizer(model),
                                                                max_length=max_length, text=text, label=label)
        self.inspect_seconds = time.perf_counter() - t0
        self.page_size = page_size
        self.page = 0
        self.query = Query()
        self._folded: list[str] | None = None
        r = self.report
        self.indices = filter_rows(r, self.query)

        self.figures = {key: go.FigureWidget(fig) for key, fig in self._build_figures().items()}
        self.summary_html = widgets.HTML(summary_html(r))
        self.search_box = widgets.Text(placeholder="search text (Enter)", description="search",
                                       continuous_update=False)
        self.label_filter = widgets.Dropdown(options=[ANY, *r.label_names], description="label")
        self.split_filter = widgets.Dropdown(options=[ANY, *r.splits], description="split")
        self.flag_filter = widgets.Dropdown(options=[ANY, "clean", *FLAG_NAMES], description="flag")
        lengths = r.lengths.lengths
        hi = int(lengths.max()) if len(lengths) else 0
        self.length_filter = widgets.IntRangeSlider(value=(0, hi), min=0, max=max(hi, 1), description="length",
                                                    continuous_update=False)
        self.prev_button = widgets.Button(description="Prev", icon="chevron-left")
        self.next_button = widgets.Button(description="Next", icon="chevron-right")
        self.count_html = widgets.HTML()
        self.table_html = widgets.HTML()
        self.error_html = widgets.HTML()
        for w in (self.search_box, self.label_filter, self.split_filter, self.flag_filter, self.length_filter):
            w.observe(lambda _: self._guard(self.apply_filters), names="value")
        self.prev_button.on_click(lambda _: self._guard(self.show_page, self.page - 1))
        self.next_button.on_click(lambda _: self._guard(self.show_page, self.page + 1))

        charts = chart_grid(self.figures.values())
        filters = widgets.HBox([self.search_box, self.label_filter, self.split_filter, self.flag_filter])
        nav = widgets.HBox([self.length_filter, self.prev_button, self.next_button, self.count_html])
        browser = widgets.VBox([filters, nav, self.error_html, self.table_html])
        self.widget = widgets.VBox([self.summary_html, charts, widgets.HTML("<b>Samples</b>"), browser])
        for w, name in ((self.widget, "data-panel"), (self.summary_html, "data-summary"), (charts, "data-charts"),
                        (browser, "data-browser"), (self.search_box, "data-search"),
                        (self.label_filter, "data-label"), (self.split_filter, "data-split"),
                        (self.flag_filter, "data-flag"), (self.length_filter, "data-length"),
                        (self.prev_button, "data-prev"), (self.next_button, "data-next"),
                        (self.count_html, "data-count"), (self.table_html, "data-rows"),
                        (self.error_html, "data-error")):
            w.add_class(f"nbtune-{name}")
        self.show_page(0)

    def _build_figures(self) -> dict[str, go.Figure]:
        r = self.report
        return {"labels": data_figures.label_figure(r.label_distribution),
                "lengths": data_figures.length_figure(r.lengths),
                "flags": data_figures.flags_figure(flag_counts(r), len(r.texts)),
                "scripts": data_figures.script_figure(r.script_mix)}

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    # ---- the sample browser ----
    def set_query(self, **fields: Any) -> None:
        """Set filters from code (same effect as the widgets): text, label, split, flag, min_length, max_length."""
        if "text" in fields:
            self.search_box.value = fields["text"]
        if "label" in fields:
            self.label_filter.value = ANY if fields["label"] is None else fields["label"]
        if "split" in fields:
            self.split_filter.value = ANY if fields["split"] is None else fields["split"]
        if "flag" in fields:
            self.flag_filter.value = ANY if fields["flag"] is None else fields["flag"]
        if "min_length" in fields or "max_length" in fields:
            lo, hi = self.length_filter.value
            self.length_filter.value = (fields.get("min_length", lo) or 0, fields.get("max_length", hi) or hi)

    def apply_filters(self) -> None:
        lo, hi = self.length_filter.value
        full = (lo, hi) == (0, self.length_filter.max)
        self.query = Query(text=self.search_box.value,
                           label=None if self.label_filter.value == ANY else self.label_filter.value,
                           split=None if self.split_filter.value == ANY else self.split_filter.value,
                           min_length=None if full else lo, max_length=None if full else hi,
                           flag=None if self.flag_filter.value == ANY else self.flag_filter.value)
        if self.query.text.strip() and self._folded is None:
            self._folded = [t.casefold() for t in self.report.texts]  # once; every later search reuses it
        self.indices = filter_rows(self.report, self.query, self._folded)
        self.show_page(0)

    def show_page(self, page: int) -> None:
        pages = max(1, -(-len(self.indices) // self.page_size))
        self.page = min(max(page, 0), pages - 1)
        self.table_html.value = page_html(self.report, self.indices, self.page, self.page_size, self.query)
        self.count_html.value = html.escape(count_text(len(self.indices), self.page, self.page_size,
                                                       len(self.report.texts)))
        self.prev_button.disabled = self.page == 0
        self.next_button.disabled = self.page >= pages - 1

    def _guard(self, fn: Any, *args: Any) -> None:
        try:
            self.error_html.value = ""
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - shown in the panel, not lost in the widget callback
            self.error_html.value = (f'<div style="color:#b00020"><b>Error:</b> '
                                     f"{html.escape(f'{type(exc).__name__}: {exc}')}</div>")


def flag_counts(report: Any) -> dict[str, int]:
    """Rows carrying each flag, in FLAG_NAMES order."""
    from nbtune.data.inspect import FLAG_NAMES
    return {name: int(((report.flags & bit) != 0).sum()) for name, bit in FLAG_NAMES.items()}


def summary_html(report: Any) -> str:
    """The headline numbers and a few escaped examples per flag."""
    r = report
    d, dup, leak = r.label_distribution, r.duplicates, r.leakage
    per_split = ", ".join(f"{html.escape(s)} {int((r.split_codes == i).sum()):,}" for i, s in enumerate(r.splits))
    lines = [f"<b>{len(r.texts):,} rows</b> ({per_split}) · {len(r.label_names)} labels"]
    if d.imbalance_ratio == d.imbalance_ratio:  # not NaN
        lines.append(f"imbalance {d.imbalance_ratio:.1f}× (majority {html.escape(str(d.majority))}, "
                     f"minority {html.escape(str(d.minority))})")
    near_note = ("" if dup.near_checked_rows >= len(r.texts)
                 else f" (near-duplicates checked on the first {dup.near_checked_rows:,} rows)")
    lines.append(f"{len(dup.exact_groups):,} groups of exact duplicates, {len(dup.near_pairs):,} near-duplicate "
                 f"pairs, {len(dup.conflicting_labels):,} duplicate groups with conflicting labels{near_note}")
    leaks = ", ".join(f"{html.escape(k)} {v:,}" for k, v in leak.counts.items() if v) or "none"
    lines.append(f"leakage between splits: {leaks}")
    if r.lengths.max_length:
        lines.append(f"{r.lengths.truncation_rate:.1%} of rows exceed max_length {r.lengths.max_length} "
                     f"{html.escape(r.lengths.unit)}")
    examples = "".join(
        f"<details><summary>{html.escape(flag)}: {r.text_flags.counts.get(flag, 0):,}</summary><ul>"
        + "".join(f"<li>row {row}: {html.escape(excerpt)}</li>" for row, excerpt in items) + "</ul></details>"
        for flag, items in r.text_flags.examples.items() if items)
    return "<br>".join(lines) + examples
