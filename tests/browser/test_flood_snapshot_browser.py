"""Browser tier, part 2: a fake engine floods a TrainPanel with 5,000 steps/s for 10 s in a real JupyterLab;
the kernel renders at most 10 times a second and the page ends in exactly the kernel's state. Then the notebook
is saved, reopened without a kernel, and the static PNG snapshot is what shows the curves.

Tests run in file order on one notebook (module-scoped fixture), like the quickstart tests.
"""
from __future__ import annotations

import json
import re
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
RATE, SECONDS = 5000, 10
WAIT_MS = 180_000
TRACES = ("train loss", "train loss (EMA)", "validation loss", "edits", "grad norm", "samples/s")

# Every trace of every plotly chart on the page, by name: x and y as plain arrays.
PAGE_JS = """() => {
  const out = {};
  for (const el of document.querySelectorAll('.js-plotly-plot')) {
    for (const t of (el.data || [])) {
      out[t.name] = {x: Array.from(t.x || []), y: Array.from(t.y || [])};
    }
  }
  return out;
}"""

# JSON, because IPython's text repr cuts lists after 1,000 items.
KERNEL_EXPR = ("__import__('json').dumps({t.name: {'x': [float(v) for v in (t.x if t.x is not None else ())], "
               "'y': [float(v) for v in (t.y if t.y is not None else ())]} "
               "for f in panel.figures.values() for t in f.data if t.name in %r})" % (TRACES,))

SNAPSHOT_IMG = ".jp-OutputArea-output img[src^='data:image/png']"


def _write_notebook(path: Path) -> None:
    setup = (f"import sys, tempfile\nsys.path.insert(0, {str(REPO)!r})\nimport nbtune as nt\n"
             "from tests.support.flood import Flood, fake_run\n"
             "run = fake_run(tempfile.mkdtemp(prefix='nbtune-flood-'))\npanel = nt.TrainPanel(run)\npanel")
    flood = f"flood = Flood(run, rate={RATE}, seconds={SECONDS}).start()"
    cells = [{"cell_type": "code", "metadata": {}, "source": src, "outputs": [], "execution_count": None}
             for src in (setup, flood)]
    nb = {"cells": cells, "nbformat": 4, "nbformat_minor": 5,
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}}
    path.write_text(json.dumps(nb, indent=1))


def _differences(page: dict, kernel: dict) -> dict:
    """Per trace: point counts on both sides and the first index where they differ (empty when equal)."""
    out = {}
    for name in TRACES:
        shown, held = page.get(name) or {"x": [], "y": []}, kernel[name]
        for axis in ("x", "y"):
            a, b = shown[axis], held[axis]
            if a != b:
                first = next((i for i, (u, v) in enumerate(zip(a, b)) if u != v), min(len(a), len(b)))
                out[f"{name}.{axis}"] = {"page": len(a), "kernel": len(b), "first_diff": first,
                                         "values": (a[first:first + 2], b[first:first + 2])}
    return out


def _max_per_second(times: list[float]) -> int:
    """The most events in any one-second window."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


@pytest.fixture(scope="module")
def flooded(lab, page, artifacts):
    """Open the flood notebook, Run All, wait until the fake engine and the final
    flush are done; yield (page, probe, name)."""
    name = f"flood_{int(time.time() * 1000)}.ipynb"
    _write_notebook(lab.root / name)
    probe = open_and_run_all(lab, page, name, WAIT_MS)
    try:
        expect(page.locator(".nbtune-train-panel")).to_be_visible(timeout=WAIT_MS)
        poll(lambda: probe.value("'flood' in globals() and flood.written > 0"), lambda v: v is True, WAIT_MS / 1000)
        poll(lambda: probe.value("flood.thread.is_alive() or panel.pump._thread.is_alive()"),
              lambda v: v is False, timeout_s=SECONDS * 8)
        yield page, probe, name
    finally:
        end_session(lab, probe, name)


def test_flood_renders_at_most_10_times_a_second(flooded, artifacts):
    page, probe, _ = flooded
    written, elapsed, renders, times = json.loads(probe.value(
        "__import__('json').dumps((flood.written, flood.elapsed_s, panel.pump.renders, "
        "[t - panel.pump.render_times[0] for t in panel.pump.render_times]))"))
    per_second = _max_per_second(times)
    print(f"[flood] {written} step records in {elapsed:.1f}s; {renders} renders, at most {per_second} in any "
          f"second (render starts, s: {[round(t, 2) for t in times]})")
    assert written == RATE * SECONDS and elapsed <= SECONDS * 1.5
    assert probe.value("len(panel.history.steps)") == written  # the kernel kept every record
    assert per_second <= 10, times


def test_page_ends_in_exactly_the_kernel_state(flooded, artifacts):
    page, probe, _ = flooded
    kernel = json.loads(probe.value(KERNEL_EXPR))
    assert set(kernel) == set(TRACES)
    diff, waited = poll(lambda: _differences(page.evaluate(PAGE_JS), kernel), lambda v: not v, timeout_s=60)
    raw = kernel["train loss"]["x"]
    print(f"[flood] page == kernel for {len(TRACES)} traces after {waited:.1f}s; train loss shows {len(raw)} "
          f"points (decimated from {RATE * SECONDS}), last step {raw[-1]:.0f}")
    assert len(raw) <= 5000 and raw[-1] == RATE * SECONDS
    assert max(kernel["grad norm"]["y"]) > 20  # the injected spikes survive decimation
    expect(page.locator(".nbtune-start button, button.nbtune-start")).to_be_disabled()
    page.locator(".nbtune-chart-loss").scroll_into_view_if_needed()
    page.screenshot(path=str(artifacts / "10_flood_end.png"))


def test_snapshot_is_left_when_the_run_ends_and_survives_reopening_without_kernel(flooded, lab, artifacts):
    page, probe, name = flooded
    img = page.locator(SNAPSHOT_IMG)
    expect(img).to_have_count(1, timeout=60_000)
    page.locator(".jp-Notebook").first.click()
    page.keyboard.press("Control+s")

    def saved_png():
        nb = json.loads((lab.root / name).read_text())
        return [o for o in nb["cells"][0]["outputs"] if "image/png" in o.get("data", {})]

    outputs, _ = poll(saved_png, lambda v: len(v) == 1, timeout_s=60)
    assert "step 50000 of 50000" in "".join(outputs[0]["data"]["text/plain"])
    # reopen the saved file (a copy, so the first session stays apart) and switch it to "No Kernel", as a user
    # would: JupyterLab starts the default kernel on open, the status-bar kernel picker offers "No Kernel"
    copy = lab.root / f"reopened_{name}"
    copy.write_text((lab.root / name).read_text())
    page.goto(lab.url(copy.name))
    page.wait_for_selector(".jp-Notebook", timeout=WAIT_MS)
    status = page.locator("span.jp-StatusBar-TextItem[title^='Change kernel']")

    def kernels():
        return [s.get("kernel") for s in lab.api("/api/sessions") or []
                if s.get("path", "").endswith(copy.name) and s.get("kernel")]

    # The status bar may read "No Kernel" for a moment before the kernel JupyterLab starts on open shows up (a
    # CI run caught it "Connecting" after the check): switch to No Kernel until the server holds no kernel.
    for _ in range(3):
        expect(status).to_have_text(re.compile(r"Idle|No Kernel"), timeout=WAIT_MS)
        time.sleep(2)
        if "No Kernel" not in status.inner_text():
            status.click()
            dialog = page.locator(".jp-Dialog")
            dialog.locator("select").select_option(label="No Kernel")
            dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
        expect(status).to_have_text(re.compile(r"No Kernel"), timeout=60_000)
        try:
            poll(kernels, lambda v: not v, timeout_s=10)
            break
        except AssertionError:
            continue
    reopened = page.locator(SNAPSHOT_IMG)
    expect(reopened).to_have_count(1, timeout=60_000)
    reopened.scroll_into_view_if_needed()
    width = reopened.evaluate("el => el.naturalWidth")
    sessions = [s for s in lab.api("/api/sessions") or [] if s.get("path", "").endswith(copy.name)]
    print(f"[snapshot] reopened {copy.name}: status {status.inner_text()!r}, sessions with a kernel "
          f"{[s.get('kernel') for s in sessions]}, snapshot {width}px wide")
    assert width >= 800 and not any(s.get("kernel") for s in sessions)
    assert page.locator(".nbtune-train-panel").count() == 0  # the live widgets need a kernel; the PNG does not
    page.screenshot(path=str(artifacts / "11_reopened_snapshot.png"))
