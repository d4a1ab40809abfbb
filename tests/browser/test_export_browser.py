"""Browser tier: an ExportPanel opened from a report.json in a real JupyterLab + headless chromium.

The test writes a report (the unit tests' hand-made one, with an `<img onerror>` model name and script payloads
in a file path, a note and a failure), a notebook opens it with `ExportPanel(path)`, and the page must show the
parity and latency tables with the numbers the kernel's `panel.report` holds (rounded as documented), both bar
charts with the kernel's values, the hostile text as text, and no injected element, handler or run payload.
Screenshot in the artifacts dir: export_panel.png.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.browser.conftest import browser_missing, end_session, open_and_run_all

_reason = browser_missing()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

import nbformat  # noqa: E402
from playwright.sync_api import expect  # noqa: E402

from tests.browser.test_train_panel_browser import BENIGN_CONSOLE  # noqa: E402
from tests.test_ui_export_panel import _report  # noqa: E402

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
WAIT_MS = 120_000
HOSTILE = ['<img src=x onerror="window.__xss=1">', "<script>window.__xss=2</script>"]

CELL = """
import sys
sys.path.insert(0, {repo!r})
from nbtune.ui.panels.export import ExportPanel
panel = ExportPanel({path!r})
panel
"""
# {variant or backend: {data-col: text}} of one of the panel's tables.
TABLE_JS = """(table) => Object.fromEntries(Array.from(table.querySelectorAll('tbody tr')).map(r =>
  [r.dataset.variant || r.dataset.backend,
   Object.fromEntries(Array.from(r.cells).map(c => [c.dataset.col, c.textContent]))]))"""
# Both bar charts, keyed by their y axis title: bar names and values as plotly holds them.
BARS_JS = """() => Object.fromEntries(Array.from(document.querySelectorAll('.nbtune-export-panel .js-plotly-plot'))
  .map(el => [((el.layout || {}).yaxis || {}).title ? el.layout.yaxis.title.text : '',
              {x: Array.from(el.data[0].x || []), y: Array.from(el.data[0].y || [])}]))"""
# What an injection would leave behind: elements that run or load things, on* attributes, the flag.
SAFE_JS = """(root) => {
  const bad = Array.from(root.querySelectorAll('script, img, iframe, object, embed'))
    .map(e => e.outerHTML.slice(0, 160));
  const handlers = [];
  for (const el of root.querySelectorAll('*')) for (const a of Array.from(el.attributes))
    if (/^on/i.test(a.name)) handlers.push(`${el.tagName}[${a.name}]`);
  return {xss: typeof window.__xss, bad, handlers}; }"""


def _write(root: Path, name: str) -> Path:
    report = _report(model_name=HOSTILE[0], output_dir=str(root / "export"),
                     files={"onnx-fp32": f"{root}/export/{HOSTILE[1]}.onnx", "report": str(root / "report.json")},
                     notes=[f"triton skipped: {HOSTILE[1]}"], failures=[f"made up for the test {HOSTILE[0]}"])
    path = report.write(root / f"{Path(name).stem}-report.json")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(CELL.format(repo=str(REPO), path=str(path))
                                                                   .strip())])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, root / name)
    return path


def test_report_tables_and_charts_equal_the_kernels_and_run_nothing(lab, page, artifacts):
    name = f"export_browser_{int(time.time() * 1000)}.ipynb"
    _write(lab.root, name)
    console_start = len(page.console_lines)
    probe = open_and_run_all(lab, page, name, WAIT_MS)
    try:
        panel = page.locator(".nbtune-export-panel")
        expect(panel).to_be_visible(timeout=WAIT_MS)
        expect(panel.locator(".nbtune-export-latency-table")).to_be_visible(timeout=WAIT_MS)
        kernel = probe.value("panel.report.to_dict()")
        # the hostile model name, path, note and failure show as text
        expect(panel.locator(".nbtune-export-model")).to_have_text(HOSTILE[0])
        assert kernel["model_name"] == HOSTILE[0]
        expect(panel.locator(".nbtune-export-files li[data-file='onnx-fp32'] code")).to_have_text(
            kernel["files"]["onnx-fp32"])
        expect(panel.locator(".nbtune-export-failure")).to_have_text(kernel["failures"][0])
        expect(panel.locator(".nbtune-export-note")).to_have_text(kernel["notes"][0])
        expect(panel.locator(".nbtune-export-verdict")).to_have_text("PARITY FAILED")

        parity = panel.locator(".nbtune-export-parity-table").evaluate(TABLE_JS)
        assert list(parity) == [p["variant"] for p in kernel["parity"]] == ["onnx-fp32", "onnx-int8"]
        for p in kernel["parity"]:
            row = parity[p["variant"]]
            assert row["rows"] == str(p["rows"])
            assert row["max_diff"] == f"{p['max_abs_logit_diff']:.2e}"
            assert float(row["max_diff"]) == pytest.approx(p["max_abs_logit_diff"], rel=5e-3)
            assert row["mean_diff"] == f"{p['mean_abs_logit_diff']:.2e}"
            assert row["agreement"] == f"{p['label_agreement']:.2%}"
            assert (row["reference_metric"], row["metric"]) == (f"{p['reference_metric']:.4f}", f"{p['metric']:.4f}")
            assert row["drop_pt"] == f"{(p['reference_metric'] - p['metric']) * 100:+.2f}"
        latency = panel.locator(".nbtune-export-latency-table").evaluate(TABLE_JS)
        assert list(latency) == [t["backend"] for t in kernel["latency"]]
        for t in kernel["latency"]:
            row = latency[t["backend"]]
            assert (row["p50_ms"], row["p95_ms"]) == (f"{t['batch1_p50_ms']:.2f}", f"{t['batch1_p95_ms']:.2f}")
            assert float(row["p50_ms"]) == pytest.approx(t["batch1_p50_ms"], abs=0.005)
            assert row["samples_per_second"] == f"{t['batch32_samples_per_second']:.1f}"
        for backend, s in kernel["speedups"].items():
            assert latency[backend]["speedup_batch1"] == f"x{s['batch1']:.2f}"
            assert latency[backend]["speedup_batch32"] == f"x{s['batch32']:.2f}"

        bars = page.evaluate(BARS_JS)
        lat, thr = bars["p50 latency at batch 1 (ms)"], bars["throughput at batch 32 (samples/s)"]
        assert lat["x"] == thr["x"] == [t["backend"] for t in kernel["latency"]]
        assert lat["y"] == pytest.approx([t["batch1_p50_ms"] for t in kernel["latency"]])
        assert thr["y"] == pytest.approx([t["batch32_samples_per_second"] for t in kernel["latency"]])

        found = panel.evaluate(SAFE_JS)
        assert found == {"xss": "undefined", "bad": [], "handlers": []}, found
        panel.evaluate("el => el.scrollIntoView({block: 'start'})")
        page.wait_for_timeout(300)
        page.screenshot(path=str(artifacts / "export_panel.png"))
        assert page.get_by_text("Error displaying widget").count() == 0
        errors = [(t, text) for t, text, url in page.console_lines[console_start:]
                  if t in ("error", "pageerror") and not any(p.search(text) or p.search(url) for p in BENIGN_CONSOLE)]
        assert not errors, errors
    finally:
        end_session(lab, probe, name)
