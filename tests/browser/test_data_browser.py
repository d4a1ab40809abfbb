"""Browser tier, data workbench: the 02 notebook in a real JupyterLab. The sample browser is filtered from the
page and shows exactly the kernel's rows; three messages are labelled with the keyboard and the label store
holds exactly those three lines. A second notebook loads a hostile 100,000-row dataset (texts and labels with
<script>, <img onerror> and </script>): nothing runs, the text shows as text, and page turns and searches are
timed in the browser (reported, not asserted).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.browser.conftest import browser_missing, end_session, open_and_run_all, poll

_reason = browser_missing()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

from playwright.sync_api import expect  # noqa: E402

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
WORKBENCH = REPO / "notebooks" / "02_data_workbench.ipynb"
WAIT_MS = 240_000
BIG_ROWS = 100_000
TIMINGS: dict[str, float] = {}


def _rows_shown(page) -> list[int]:
    return page.evaluate("() => Array.from(document.querySelectorAll('.nbtune-data-rows tr[data-row]'))"
                         ".map(tr => Number(tr.dataset.row))")


def _timed_change(page, action, before: list[int], timeout_s: float = 60) -> float:
    """Run `action` and return the seconds until the rows shown differ from `before` (measured in the page)."""
    t0 = time.monotonic()
    action()
    while _rows_shown(page) == before:
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError("the sample browser did not update")
        time.sleep(0.02)
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def workbench(lab, page, artifacts):
    name = f"workbench_{int(time.time() * 1000)}.ipynb"
    nb = json.loads(WORKBENCH.read_text())
    (params,) = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    store_dir = lab.root / f"labels_{name}"
    params["source"] = f'DATASET = "sms-spam"\nMODEL = "minilm"\nMAX_LENGTH = 64\nLABEL_DIR = "{store_dir}"\n'
    (lab.root / name).write_text(json.dumps(nb))
    probe = open_and_run_all(lab, page, name, WAIT_MS)
    try:
        expect(page.locator(".nbtune-data-rows table")).to_be_visible(timeout=WAIT_MS)
        expect(page.locator(".nbtune-annotate-keys .nbtune-keys-area")).to_be_visible(timeout=WAIT_MS)
        yield page, probe, store_dir
    finally:
        end_session(lab, probe, name)


def test_filtering_the_sample_browser_shows_the_kernels_rows(workbench, artifacts):
    page, probe, _ = workbench
    first = _rows_shown(page)
    assert first == probe.value("[int(i) for i in data_panel.indices[:25]]")
    search = page.locator(".nbtune-data-search input")
    search.fill("free")
    TIMINGS["search_4.5k"] = _timed_change(page, lambda: search.press("Enter"), first)
    page.locator(".nbtune-data-label select").select_option("spam")
    # the kernel applies the label filter when the widget's change arrives: wait for it, then for the page
    poll(lambda: probe.value("(data_panel.query.text, data_panel.query.label)"), lambda v: v == ("free", "spam"),
         timeout_s=60)
    want = probe.value("[int(i) for i in data_panel.indices[:25]]")
    n = probe.value("len(data_panel.indices)")
    shown, _ = poll(lambda: _rows_shown(page), lambda v: v == want, timeout_s=60)
    expect(page.locator(".nbtune-data-count")).to_contain_text(f"of {n:,} matching", timeout=30_000)
    print(f"[data] search 'free' + label spam: {n} rows; page shows {shown[:5]}..., kernel {want[:5]}...")
    assert shown == want and 0 < n < 4522
    assert probe.value("all(data_panel.report.label_names[data_panel.report.labels[i]] == 'spam' and "
                       "'free' in data_panel.report.texts[i].casefold() for i in data_panel.indices)") is True
    marks = page.locator(".nbtune-data-rows mark")
    assert marks.count() >= len(shown) and marks.first.inner_text().casefold() == "free"
    page.locator(".nbtune-data-panel").screenshot(path=str(artifacts / "20_data_panel.png"))


def test_three_keyboard_labels_reach_the_store(workbench, artifacts):
    page, probe, store_dir = workbench
    area = page.locator(".nbtune-annotate-keys .nbtune-keys-area")
    area.click()
    progress = page.locator(".nbtune-annotate-progress")
    for n, key in enumerate(["2", "1", "1"], start=1):
        page.keyboard.press(key)
        expect(progress).to_contain_text(f"{n} / 10 labelled", timeout=30_000)
    lines = [json.loads(line) for line in (store_dir / "me.jsonl").read_text().splitlines()]
    print(f"[data] label store: {[(l['item_id'], l['label']) for l in lines]}")
    assert [(l["action"], l["label"]) for l in lines] == [("label", "spam"), ("label", "ham"), ("label", "ham")]
    assert probe.value("annotate.position") == 3
    page.locator(".nbtune-annotate").screenshot(path=str(artifacts / "21_annotate.png"))


@pytest.fixture(scope="module")
def hostile(lab, page, artifacts):
    name = f"hostile_{int(time.time() * 1000)}.ipynb"
    setup = (
        "import datasets\nimport nbtune as nt\n"
        "bad = ['<script>window.__nbtune_xss = 1</script>', '<img src=x onerror=\"window.__nbtune_xss = 2\">',\n"
        "       '</script><script>window.__nbtune_xss = 3</script>']\n"
        f"texts = [f'message {{i}} about order {{i % 977}}' for i in range({BIG_ROWS})]\n"
        "texts[:3] = bad\n"
        "names = ['ok', '<img src=x onerror=\"window.__nbtune_xss = 4\">', '</script><script>window.__nbtune_xss = 5</script>']\n"
        "features = datasets.Features({'text': datasets.Value('string'), 'label': datasets.ClassLabel(names=names)})\n"
        f"ds = datasets.DatasetDict({{'train': datasets.Dataset.from_dict({{'text': texts, 'label': [i % 3 for i in range({BIG_ROWS})]}}, features=features)}})\n"
        "panel = nt.DataPanel(ds)\npanel")
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "source": setup, "outputs": [], "execution_count": None}],
          "nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}
    (lab.root / name).write_text(json.dumps(nb))
    probe = open_and_run_all(lab, page, name, WAIT_MS)
    try:
        expect(page.locator(".nbtune-data-rows table")).to_be_visible(timeout=WAIT_MS)
        yield page, probe
    finally:
        end_session(lab, probe, name)


def test_hostile_rows_and_labels_render_as_text(hostile, artifacts):
    page, probe = hostile
    table = page.locator(".nbtune-data-rows")
    expect(table).to_contain_text("<script>window.__nbtune_xss = 1</script>")
    expect(table).to_contain_text('<img src=x onerror="window.__nbtune_xss = 2">')
    assert table.locator("script").count() == 0 and table.locator("img").count() == 0
    options = [o.replace('\xa0', ' ') for o in page.locator(".nbtune-data-label select option").all_inner_texts()]
    assert '<img src=x onerror="window.__nbtune_xss = 4">' in options
    assert page.evaluate("window.__nbtune_xss") is None
    assert page.locator(".nbtune-data-panel script").count() == 0
    page.locator(".nbtune-data-panel").screenshot(path=str(artifacts / "22_hostile.png"))


def test_paging_and_search_on_100k_rows_are_timed(hostile):
    page, probe = hostile
    assert probe.value("len(panel.report.texts)") == BIG_ROWS
    before = _rows_shown(page)
    TIMINGS["next_page_100k"] = _timed_change(page, lambda: page.locator(".nbtune-data-next").click(), before)
    before = _rows_shown(page)
    search = page.locator(".nbtune-data-search input")
    search.fill("order 976")
    TIMINGS["search_100k"] = _timed_change(page, lambda: search.press("Enter"), before)
    n = probe.value("len(panel.indices)")
    assert n == len([i for i in range(3, BIG_ROWS) if i % 977 == 976])
    print(f"[data] browser timings (s, click/Enter -> new rows in the page): "
          f"{ {k: round(v, 3) for k, v in TIMINGS.items()} }")
