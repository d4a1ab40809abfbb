"""Browser tier: the hyperparameter-search notebook in a real JupyterLab + headless chromium. Four tiny trials
run from Run All; the optimisation-history chart gains a point per complete trial; Promote on the best trial
shows a live training panel carrying that trial's hyperparameters (checked against the kernel's own state).
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

from tests.browser.test_train_panel_browser import BENIGN_CONSOLE  # noqa: E402

pytestmark = pytest.mark.browser

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "04_hyperparameter_search.ipynb"
PARAMETERS = ('MODEL = "minilm"\nDATASET = "intents-en"\nTRIALS = 4\nSTEPS = 6\nEVAL_EVERY = 3\n'
              'TRAIN_SAMPLES = 128\nEVAL_SAMPLES = 32\nLR_FIND_STEPS = 20\nFULL_SIZE = False\n')
WAIT_MS = 300_000

# The history chart's traces, read from plotly's graph div.
HISTORY_JS = """() => {
  for (const el of document.querySelectorAll('.nbtune-tune-history .js-plotly-plot, .js-plotly-plot')) {
    const data = el.data || [];
    const value = data.find(t => t.name === 'value');
    const best = data.find(t => t.name === 'best so far');
    if (value && best) return {x: Array.from(value.x || []), y: Array.from(value.y || [])};
  }
  return null;
}"""


def _write_notebook(dst: Path) -> None:
    nb = json.loads(NOTEBOOK.read_text())
    (params,) = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    params["source"] = PARAMETERS
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            c["outputs"], c["execution_count"] = [], None
    dst.write_text(json.dumps(nb, indent=1))


def test_four_trials_fill_the_history_and_promote_shows_a_train_panel(lab, page, artifacts):
    name = f"tune_browser_{int(time.time() * 1000)}.ipynb"
    _write_notebook(lab.root / name)
    console_start = len(page.console_lines)
    probe = open_and_run_all(lab, page, name, WAIT_MS)
    try:
        expect(page.locator(".nbtune-tune-panel")).to_be_visible(timeout=WAIT_MS)
        seen = []
        history, waited = poll(lambda: page.evaluate(HISTORY_JS),
                               lambda v: v is not None and (seen.append(len(v["x"])) or len(v["x"]) >= 4),
                               timeout_s=WAIT_MS / 1000, interval_s=1)
        print(f"[tune] history points seen while polling: {sorted(set(seen))}; 4 after {waited:.0f}s")
        kernel = probe.value("[t.number for t in panel.study.trials if t.state.name == 'COMPLETE']")
        assert history["x"] == kernel and len(kernel) == 4       # median pruner: 5 startup trials, none pruned
        assert history["y"] == pytest.approx(probe.value("[t.value for t in panel.study.trials]"))
        # the notebook's last cells ran (the kernel is free to handle the button's message)
        expect(page.locator("span.jp-StatusBar-TextItem[title^='Change kernel']")).to_have_text(
            re.compile(r"\| Idle$"), timeout=WAIT_MS)
        expect(page.locator(".nbtune-tune-status")).to_contain_text("4/4 trials")
        page.locator(".nbtune-tune-panel").scroll_into_view_if_needed()
        page.screenshot(path=str(artifacts / "tune_panel.png"))
        _assert_charts_fit(page)

        best = probe.value("panel.study.best_trial.number")
        assert probe.value("panel.trial_picker.value") == best
        page.locator(".nbtune-tune-promote button, button.nbtune-tune-promote").first.click()
        expect(page.locator(".nbtune-tune-panel .nbtune-train-panel")).to_be_visible(timeout=WAIT_MS)
        promoted = page.locator(".nbtune-promoted-params").inner_text()
        params = probe.value("panel.study.best_trial.params")
        lr = probe.value("panel.promoted_run.cfg.train.learning_rate")
        assert lr == pytest.approx(params["learning_rate"])
        assert probe.value("panel.promoted_run.cfg.train.batch_size") == params["batch_size"]
        assert f"learning_rate={params['learning_rate']:.3g}" in promoted and f"batch_size={params['batch_size']}" in promoted
        expect(page.locator(".nbtune-tune-promoted")).to_contain_text(f"Promoted trial {best}")
        page.locator(".nbtune-tune-panel .nbtune-train-panel").scroll_into_view_if_needed()
        page.screenshot(path=str(artifacts / "tune_promoted.png"))
        _assert_charts_fit(page)   # the promoted run's training charts too
        assert page.get_by_text("Error displaying widget").count() == 0
        errors = [(t, text) for t, text, _ in page.console_lines[console_start:]
                  if t in ("error", "pageerror") and not any(p.search(text) for p in BENIGN_CONSOLE)]
        assert not errors, errors
    finally:
        end_session(lab, probe, name)


FIT_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(el => ({
    title: ((el.layout || {}).title || {}).text || '', drawn: (el._fullLayout || {}).width || 0,
    box: el.getBoundingClientRect().width}))"""


def _assert_charts_fit(page) -> None:
    """No chart is drawn wider than the box that holds it (a clipped chart hides its newest points)."""
    charts = page.evaluate(FIT_JS)
    print(f"[tune] chart widths (drawn, box): {[(c['drawn'], round(c['box'])) for c in charts]}")
    clipped = [c for c in charts if c["drawn"] > c["box"] + 1]
    assert charts and not clipped, clipped
