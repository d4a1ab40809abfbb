"""Browser tier: the AnnotatePanel in a real JupyterLab 4 + headless chromium, labelled from the keyboard.

A small notebook builds the panel over 10 bundled sms-spam texts, one replaced by an <img onerror> payload and
one label name carrying a <script>. The test clicks the key strip, presses 2, 1, 2, and checks the store file
on disk, the progress the page shows, the kernel's position (read by a second kernel client), that no
injected script ran, and that JupyterLab's own shortcuts ("1"/"2" = heading cells) did not fire.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.browser.conftest import browser_missing, end_session, open_and_run_all

_reason = browser_missing()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

import nbformat  # noqa: E402
from playwright.sync_api import expect  # noqa: E402

pytestmark = pytest.mark.browser

WAIT_MS = 180_000  # a busy 2-core machine: kernel start, imports, the dataset load
HOSTILE_TEXT = '<img src=x onerror="window.__nbtune_xss=1">'
HOSTILE_LABEL = "<script>window.__nbtune_xss=2</script>spam"
LABELS = ["ham", HOSTILE_LABEL]
BENIGN_CONSOLE = [re.compile(r"favicon", re.I),
                  re.compile(r"Failed to load resource: the server responded with a status of 404"),
                  # another browser module's session teardown cancelling JupyterLab's debugger-state request
                  re.compile(r"Could not restore the debugger state: Canceled future for debug_request message")]

SETUP = """
from nbtune import assets
from nbtune.ui.panels.annotate import AnnotatePanel

texts = list(assets.load_dataset("sms-spam")["train"]["text"][:10])
texts[1] = {hostile_text!r}
LABELS = {labels!r}
panel = AnnotatePanel(texts, LABELS, {store!r}, annotator="browser",
                      guideline="1 = ham, 2 = spam.\\n<script>window.__nbtune_xss=3</script>")
panel
"""


def _write_notebook(path: Path, store: Path) -> None:
    src = SETUP.format(hostile_text=HOSTILE_TEXT, labels=LABELS, store=str(store)).strip()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def nb(lab, page, artifacts):
    """Open the notebook, Run All, wait for the panel; yield (page, probe, store path, first console line)."""
    stamp = int(time.time() * 1000)
    name = f"annotate_browser_{stamp}.ipynb"             # unique => fresh kernel session
    store = lab.root / f"labels_{stamp}.jsonl"
    _write_notebook(lab.root / name, store)
    console_start = len(page.console_lines)
    t0 = time.monotonic()
    probe = open_and_run_all(lab, page, name, WAIT_MS)
    try:
        expect(page.locator(".nbtune-annotate-keys .nbtune-keys-area")).to_be_visible(timeout=WAIT_MS)
        expect(page.locator(".nbtune-annotate-progress")).to_contain_text("0 / 10 labelled", timeout=WAIT_MS)
        print(f"[browser] annotate panel up in {time.monotonic() - t0:.1f}s")
        assert page.get_by_text("Error displaying widget").count() == 0
        yield page, probe, store, console_start
    finally:
        end_session(lab, probe, name)


def test_keyboard_labels_reach_the_store_and_the_page(nb, artifacts):
    page, probe, store, _ = nb
    progress = page.locator(".nbtune-annotate-progress")
    text = page.locator(".nbtune-annotate-text")
    area = page.locator(".nbtune-annotate-keys .nbtune-keys-area")
    area.click()
    expect(area).to_be_focused()
    for n, key in enumerate(["2", "1", "2"], start=1):
        page.keyboard.press(key)
        expect(progress).to_contain_text(f"{n} / 10 labelled", timeout=30_000)
        if n == 1:  # the hostile text is item 2: shown as text, not as an element
            expect(text).to_contain_text(HOSTILE_TEXT, timeout=30_000)
            assert text.locator("img").count() == 0
    expect(progress).to_contain_text("3 / 10")
    lines = [json.loads(line) for line in store.read_text().splitlines()]
    print(f"[browser] store lines: {[(l['item_id'], l['action'], l['label']) for l in lines]}")
    assert [l["action"] for l in lines] == ["label"] * 3
    assert [(l["item_id"], l["label"]) for l in lines] == [("0", HOSTILE_LABEL), ("1", "ham"), ("2", HOSTILE_LABEL)]
    assert {l["annotator"] for l in lines} == {"browser"}
    assert probe.value("panel.position") == 3
    assert probe.value("panel.store.current_labels()") == {"0": HOSTILE_LABEL, "1": "ham", "2": HOSTILE_LABEL}
    page.locator(".nbtune-annotate").screenshot(path=str(artifacts / "annotate_panel.png"))
    page.screenshot(path=str(artifacts / "annotate_page.png"))


def test_arrow_skips_and_backspace_undoes(nb):
    page, probe, store, _ = nb
    progress = page.locator(".nbtune-annotate-progress")
    area = page.locator(".nbtune-annotate-keys .nbtune-keys-area")
    area.click()
    page.keyboard.press("ArrowRight")
    expect(progress).to_contain_text("1 skipped · item 5 of 10", timeout=30_000)
    page.keyboard.press("Backspace")
    expect(progress).to_contain_text("0 skipped · item 4 of 10", timeout=30_000)
    actions = [json.loads(line)["action"] for line in store.read_text().splitlines()]
    assert actions == ["label", "label", "label", "skip", "undo"]
    assert probe.value("panel.position") == 3


def test_no_injected_script_ran_and_shortcuts_stayed_quiet(nb):
    page, _, _, _ = nb
    assert page.evaluate("window.__nbtune_xss") is None      # undefined in the page
    button = page.locator(".nbtune-label-1")
    expect(button).to_contain_text(HOSTILE_LABEL)              # the label name is shown as text
    assert button.locator("script").count() == 0
    expect(page.locator(".nbtune-annotate-guideline pre")).to_contain_text("<script>window.__nbtune_xss=3</script>")
    # "1"/"2" in command mode would have turned the cell into a Markdown heading
    assert page.locator(".jp-Notebook .jp-MarkdownCell").count() == 0
    assert page.locator(".jp-Notebook .jp-CodeCell").count() == 1


def test_no_javascript_errors(nb):
    page, _, _, console_start = nb
    errors = [(t, text, url) for t, text, url in page.console_lines[console_start:] if t in ("error", "pageerror")]
    real = [e for e in errors if not any(p.search(e[1]) or p.search(e[2]) for p in BENIGN_CONSOLE)]
    print(f"[browser] console errors: {len(real)} real, {len(errors) - len(real)} benign")
    assert not real, real
