"""The data panel without a kernel: charts built from the DataReport, the sample browser's filters and pages
checked against hand-computed rows, and every piece of user text escaped."""
from __future__ import annotations

import datasets
import ipywidgets as widgets
import numpy as np
import pytest

from nbtune.data.inspect import inspect
from nbtune.ui.panels.data import DataPanel, flag_counts
from nbtune.ui.panels.data_browser import Query, count_text, filter_rows, page_html

HOSTILE = "<img src=x onerror=alert(1)>"
SCRIPT = "<script>alert(2)</script>"


def _ds() -> datasets.DatasetDict:
    names = ["billing", "tech", HOSTILE]
    train = ["refund my card please", "refund my card please", "the app crashes on start",
             "<p>my <b>invoice</b> is wrong</p>", "visit https://example.com now", SCRIPT,
             "Refund was FAST, thanks", "wifi drops every hour"]
    labels = [0, 0, 1, 0, 1, 2, 0, 1]
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    return datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"text": train, "label": labels}, features=features),
        "validation": datasets.Dataset.from_dict({"text": ["the app crashes on start", "new phone bill"],
                                                  "label": [1, 0]}, features=features)})


def _html_values(widget) -> list[str]:
    found = [widget.value] if isinstance(widget, widgets.HTML) else []
    for child in getattr(widget, "children", ()):
        found += _html_values(child)
    return found


@pytest.fixture(scope="module")
def report():
    return inspect(_ds())


def test_filters_match_hand_computed_rows(report):
    texts = report.texts
    assert len(texts) == 10 and report.splits[:2] == ["train", "validation"]
    refund = [i for i, t in enumerate(texts) if "refund" in t.casefold()]
    assert list(filter_rows(report, Query(text="REFUND"))) == refund == [0, 1, 6]
    assert list(filter_rows(report, Query(label="tech"))) == [2, 4, 7, 8]
    assert list(filter_rows(report, Query(split="validation"))) == [8, 9]
    assert list(filter_rows(report, Query(text="refund", label="billing", split="train"))) == [0, 1, 6]
    short = [i for i, n in enumerate(report.lengths.lengths) if n <= 20]
    assert list(filter_rows(report, Query(max_length=20))) == short
    assert list(filter_rows(report, Query(flag="duplicate"))) == [1]          # the second copy of row 0
    assert 8 in filter_rows(report, Query(flag="leaked"))                     # validation row seen in train
    assert 3 in filter_rows(report, Query(flag="html")) and 4 in filter_rows(report, Query(flag="url"))
    with pytest.raises(ValueError, match="unknown flag 'nope'; known: clean, duplicate"):
        filter_rows(report, Query(flag="nope"))


def test_page_html_escapes_and_highlights(report):
    idx = filter_rows(report, Query())
    page = page_html(report, idx, 0, 25, Query(text="refund"))
    assert page.count("<tr data-row=") == 10
    assert "<mark>refund</mark> my card" in page and "<mark>Refund</mark> was FAST" in page
    assert SCRIPT not in page and "&lt;script&gt;alert(2)&lt;/script&gt;" in page
    assert HOSTILE not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<b>invoice</b>" not in page                                      # row text is shown, not rendered
    assert count_text(10, 0, 4, 10) == "rows 1–4 of 10 matching (10 in all)"


def test_panel_widgets_drive_the_browser(report):
    panel = DataPanel(report=report, page_size=4)
    assert set(panel.figures) == {"labels", "lengths", "flags", "scripts"}
    assert [t.name for t in panel.figures["labels"].data] == ["train", "validation"]
    assert panel.count_html.value == "rows 1–4 of 10 matching (10 in all)"
    assert panel.prev_button.disabled and not panel.next_button.disabled
    panel.next_button.click()
    assert panel.page == 1 and "rows 5–8" in panel.count_html.value
    panel.label_filter.value = "billing"
    assert panel.page == 0 and panel.count_html.value.startswith("rows 1–4 of 5 matching")
    panel.search_box.value = "refund"
    assert list(panel.indices) == [0, 1, 6] and panel.next_button.disabled
    panel.set_query(text="", label=None, flag="clean")
    assert all(report.flags[i] == 0 for i in panel.indices)
    assert flag_counts(report)["duplicate"] == 1


def test_every_html_value_is_escaped(report):
    panel = DataPanel(report=report, page_size=25)
    values = _html_values(panel.widget)
    joined = "\n".join(values)
    assert HOSTILE not in joined and SCRIPT not in joined
    assert "&lt;img src=x onerror=alert(1)&gt;" in joined
    names = [str(x) for f in panel.figures.values() for t in f.data for x in np.atleast_1d(t.x) if x is not None]
    assert all("<img" not in n and "<script" not in n for n in names)
