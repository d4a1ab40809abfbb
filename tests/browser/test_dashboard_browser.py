"""Browser tier: `nt.Dashboard(run)` in a real JupyterLab + headless chromium. A tiny-bert run trains a few
steps while the test clicks through all five tabs; each tab must render its panel's main element (checked
against the kernel's own objects), a page turned in the Data tab must still be turned after visiting another
tab, no tab may show a build error, and the console must stay free of errors.
Screenshots in the artifacts dir: dashboard_<tab>.png, one per tab.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.browser.conftest import browser_missing, end_session, open_and_run_all, poll

_reason = browser_missing()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

import nbformat  # noqa: E402
from playwright.sync_api import expect  # noqa: E402

from tests.browser.test_train_panel_browser import BENIGN_CONSOLE  # noqa: E402

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
WAIT_MS = 180_000  # a busy 2-core machine: imports, model load, plotly's ES module per chart
STEPS = 8
TEXT = "what is the capital of peru ?"

# A first short cell, as in a user's notebook: JupyterLab asks the kernel for its existing widgets when it
# connects, and that request waits behind a running cell; answered while a long first cell is still creating
# widgets, it can race their comm_open messages (the earliest charts then draw an empty figure).
IMPORTS = """
import sys
sys.path.insert(0, {repo!r})
import nbtune as nt
"""
SETUP = """
cfg = nt.RunConfig().with_overrides([
    "model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=64", "data.max_eval_samples=8",
    "train.batch_size=4", "train.max_steps={steps}", "train.eval_every_n_steps=4", "train.progress_bar=false",
    "train.tensorboard=false", "output_dir={out}"])
run = nt.Run(cfg)
dash = nt.Dashboard(run, texts=[{text!r}], tune_options={{"trials": 2}}, export_options={{"latency": False}})
dash
"""
START = "run.start(background=True)"

# Raw train-loss points drawn in the Train tab's loss chart (plotly's graph div).
LOSS_JS = """() => {
  const el = document.querySelector('.nbtune-dashboard .js-plotly-plot.nbtune-chart-loss');
  const raw = el ? (el.data || []).find(t => t.name === 'train loss') : null;
  return raw ? Array.from(raw.x || []) : null;
}"""
# Shown charts in the visible tab: none may be drawn wider than its box. (A panel may hide charts that have
# nothing to show yet, e.g. the Export tab's before an export: those have no box.)
FIT_JS = """(root) => Array.from(root.querySelectorAll('.js-plotly-plot'))
  .map(el => ({drawn: (el._fullLayout || {}).width || 0, box: el.getBoundingClientRect().width}))
  .filter(c => c.box > 0)"""


def _write(root: Path, name: str) -> None:
    setup = SETUP.format(steps=STEPS, out=str(root / "runs"), text=TEXT).strip()
    cells = [IMPORTS.format(repo=str(REPO)).strip(), setup, START]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, root / name)


def _tab(page, name: str):
    return page.locator(".nbtune-dashboard .lm-TabBar-tab").filter(has_text=re.compile(rf"^\s*{name}\s*$"))


def _open(page, probe, name: str, main: str):
    """Click tab `name`; its panel's `main` element shows and the kernel agrees which tab is selected."""
    _tab(page, name).click()
    element = page.locator(f".nbtune-dashboard .nbtune-dashboard-{name.lower()} {main}")
    expect(element).to_be_visible(timeout=WAIT_MS)
    poll(lambda: probe.value("dash.selected"), lambda v: v == name, timeout_s=60)
    assert probe.value(f"type(dash.panel({name!r})).__name__") == f"{name}Panel"
    return element


def _shot(page, artifacts: Path, name: str) -> None:
    page.locator(".nbtune-dashboard").evaluate("el => el.scrollIntoView({block: 'start'})")  # the tab bar on top
    page.wait_for_timeout(300)
    page.screenshot(path=str(artifacts / f"dashboard_{name.lower()}.png"))
    charts = page.locator(f".nbtune-dashboard-{name.lower()}").evaluate(FIT_JS)
    assert not [c for c in charts if c["drawn"] > c["box"] + 1], (name, charts)


def test_dashboard_tabs_render_and_keep_their_state(lab, page, artifacts):
    name = f"dashboard_browser_{int(time.time() * 1000)}.ipynb"
    _write(lab.root, name)
    console_start = len(page.console_lines)
    t0 = time.monotonic()
    probe = open_and_run_all(lab, page, name, WAIT_MS)
    try:
        # Train: shown first; its loss chart ends with every step the kernel's panel received
        train = page.locator(".nbtune-dashboard .nbtune-dashboard-train .nbtune-train-panel")
        expect(train).to_be_visible(timeout=WAIT_MS)
        for chart in ("loss", "grad-norm", "lr", "throughput"):
            expect(train.locator(f".js-plotly-plot.nbtune-chart-{chart}")).to_be_visible(timeout=WAIT_MS)
        assert probe.value("dash.selected") == "Train" and probe.value("sorted(dash.panels)") == ["Train"]
        poll(lambda: probe.value("run.is_running or dash.panel('Train').history.end is None"),
             lambda v: v is False, timeout_s=WAIT_MS / 1000, interval_s=1)
        kernel_steps = probe.value("list(dash.panel('Train').history.steps)")
        assert kernel_steps == list(range(1, STEPS + 1))
        drawn, _ = poll(lambda: page.evaluate(LOSS_JS), lambda v: v == kernel_steps, timeout_s=60)
        expect(train.locator(".nbtune-status")).to_contain_text(f"step {STEPS}/{STEPS}")
        _shot(page, artifacts, "Train")

        # Data: the run's rows; turn a page, which must survive a visit to another tab
        data = _open(page, probe, "Data", ".nbtune-data-panel")
        total = probe.value("len(dash.panel('Data').report.texts)")
        assert total == 64 + 8 + 8
        expect(data.locator(".nbtune-data-count")).to_have_text(f"rows 1–25 of {total} matching ({total} in all)")
        data.locator(".nbtune-data-next").click()
        expect(data.locator(".nbtune-data-count")).to_have_text(f"rows 26–50 of {total} matching ({total} in all)")
        poll(lambda: probe.value("dash.panel('Data').page"), lambda v: v == 1, timeout_s=30)
        assert data.locator(".nbtune-data-rows tbody tr").count() == 25
        _shot(page, artifacts, "Data")

        # Tune: the study exists and waits for its Start button
        tune = _open(page, probe, "Tune", ".nbtune-tune-panel")
        expect(tune.locator(".nbtune-tune-status")).to_contain_text("0/2 trials")
        assert probe.value("len(dash.panel('Tune').study.study.get_trials())") == 0
        expect(tune.locator("button.nbtune-tune-start")).to_be_enabled()
        _shot(page, artifacts, "Tune")

        # Explain: the given text in the text box, the cost estimate measured on the run's model
        explain = _open(page, probe, "Explain", ".nbtune-explain-panel")
        expect(explain.locator(".nbtune-explain-text textarea")).to_have_value(TEXT)
        expect(explain.locator(".nbtune-explain-cost")).to_contain_text("Estimated cost")
        _shot(page, artifacts, "Explain")

        # Export: the run's model in the header, the Export button ready
        export = _open(page, probe, "Export", ".nbtune-export-panel")
        expect(export.locator(".nbtune-export-model")).to_have_text("tiny-bert")
        expect(export.locator("button.nbtune-export-run")).to_be_enabled()
        _shot(page, artifacts, "Export")

        # back to Data and Train: the same panels, the turned page and the drawn curve kept
        data = _open(page, probe, "Data", ".nbtune-data-panel")
        expect(data.locator(".nbtune-data-count")).to_have_text(f"rows 26–50 of {total} matching ({total} in all)")
        _open(page, probe, "Train", ".nbtune-train-panel")
        assert page.evaluate(LOSS_JS) == drawn
        assert probe.value("sorted(dash.panels)") == ["Data", "Explain", "Export", "Train", "Tune"]
        assert probe.value("dash.errors") == {}
        assert page.locator(".nbtune-dashboard-error").count() == 0
        assert page.get_by_text("Error displaying widget").count() == 0
        errors = [(t, text) for t, text, url in page.console_lines[console_start:]
                  if t in ("error", "pageerror") and not any(p.search(text) or p.search(url) for p in BENIGN_CONSOLE)]
        assert not errors, errors
        print(f"[dashboard] five tabs checked in {time.monotonic() - t0:.0f}s")
    finally:
        end_session(lab, probe, name)
