"""Browser tier: the quickstart notebook in a real JupyterLab 4 + headless chromium, steered through the
live TrainPanel (Pause/Resume, LR readout, Stop) and checked against the kernel's own state.

The tests run in file order on one notebook/kernel (module-scoped fixtures): each step builds on the one
before, like a user working through the panel. Kernel truth is read by a second kernel client
(`KernelProbe`), never from the page.
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

QUICKSTART = Path(__file__).resolve().parents[2] / "notebooks" / "01_quickstart.ipynb"
STEPS, EVAL_EVERY = 400, 50
NEW_LR = 1e-4
WAIT_MS = 180_000  # a busy 2-core machine: imports, model load and the 5 MB plotly ESM per figure

# Console messages that are not failures of the page under test:
BENIGN_CONSOLE = [
    re.compile(r"favicon", re.I),  # missing favicon request
    # Chromium reports every non-2xx fetch; JupyterLab probes optional endpoints (e.g. /lab/api/translations,
    # workspaces, news) and handles the 404s itself.
    re.compile(r"Failed to load resource: the server responded with a status of 404"),
    # The page is shared by the browser modules; a module that ends deletes its kernel session while
    # JupyterLab's debugger sidebar may still be asking that kernel for its state.
    re.compile(r"Could not restore the debugger state: Canceled future for debug_request message"),
]

# Loss-chart state read straight from plotly's graph div (`el.data`, `el.layout`): the raw "train loss"
# trace and the "edits" marker trace / vertical edit lines (layout.shapes).
LOSS_JS = """() => {
  for (const el of document.querySelectorAll('.js-plotly-plot')) {
    const data = el.data || [];
    const raw = data.find(t => t.name === 'train loss');
    if (!raw) continue;
    const edits = data.find(t => t.name === 'edits');
    return {n: Array.from(raw.x || []).length, last_x: Array.from(raw.x || []).slice(-1)[0] ?? null,
            names: data.map(t => t.name), edits_x: edits ? Array.from(edits.x || []) : [],
            shapes: ((el.layout || {}).shapes || []).map(s => s.x0)};
  }
  return null;
}"""


def _loss(page) -> dict | None:
    return page.evaluate(LOSS_JS)


def _shot(page, path: Path) -> None:
    """Screenshot with the charts scrolled into view (the notebook scrolls inside its own panel)."""
    page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
    page.screenshot(path=str(path))
    print(f"[browser] screenshot {path}")


def _button(page, label: str):
    return page.locator("button.jupyter-button").filter(has_text=re.compile(rf"^\s*{label}\s*$"))


def _write_notebook(dst: Path) -> None:
    """The quickstart with a longer run, cut after `run.start(background=True)`: the panel drives the rest."""
    nb = json.loads(QUICKSTART.read_text())
    cells = nb["cells"]
    params = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "the quickstart must have exactly one cell tagged 'parameters'"
    params[0]["source"] = f"STEPS = {STEPS}\nEVAL_EVERY = {EVAL_EVERY}\n"
    start = [i for i, c in enumerate(cells)
             if c["cell_type"] == "code" and "run.start(background=True)" in "".join(c["source"])]
    assert start, "the quickstart must start the run with run.start(background=True)"
    nb["cells"] = cells[: start[0] + 1]
    for c in nb["cells"]:
        if c["cell_type"] == "code":
            c["outputs"], c["execution_count"] = [], None
    nb.get("metadata", {}).pop("widgets", None)
    dst.write_text(json.dumps(nb, indent=1))


CONSOLE_START = {"n": 0}


@pytest.fixture(scope="module")
def nb(lab, page, artifacts):
    """Open the notebook, Run All, wait for the panel and the first loss points; yield (page, probe)."""
    name = f"quickstart_browser_{int(time.time() * 1000)}.ipynb"  # unique => fresh kernel session
    _write_notebook(lab.root / name)
    CONSOLE_START["n"] = len(page.console_lines)  # the page is shared: judge only what this notebook logs
    t0 = time.monotonic()
    probe = open_and_run_all(lab, page, name, WAIT_MS)
    print(f"[browser] notebook open, kernel idle, Run All clicked in {time.monotonic() - t0:.1f}s")
    t1 = time.monotonic()
    try:
        expect(_button(page, "Pause")).to_be_visible(timeout=WAIT_MS)
        expect(page.locator(".js-plotly-plot .main-svg").first).to_be_visible(timeout=WAIT_MS)
        poll(lambda: _loss(page), lambda v: v is not None and v["n"] >= 1, timeout_s=WAIT_MS / 1000, interval_s=1)
        print(f"[browser] Run All -> panel and first loss point in {time.monotonic() - t1:.1f}s")
        assert page.get_by_text("Error displaying widget").count() == 0
        _shot(page, artifacts / "01_running.png")
        yield page, probe
    finally:
        if _safe(probe, "run.is_running"):  # an earlier step failed: don't leave the thread training
            _safe(probe, "run.control.stop()")
        end_session(lab, probe, name)


def _safe(probe, expr):
    try:
        return probe.value(expr, timeout_s=30)
    except Exception:  # noqa: BLE001 - teardown only
        return None


def test_loss_points_appear_and_grow(nb):
    page, probe = nb
    first = _loss(page)
    grown, waited = poll(lambda: _loss(page), lambda v: v["n"] > first["n"], timeout_s=120, interval_s=1)
    print(f"[check 1] raw loss points {first['n']} -> {grown['n']} in {waited:.1f}s; traces {grown['names']}")
    assert probe.value("run.is_running") is True


def test_pause_freezes_the_step_and_resume_continues(nb, artifacts):
    page, probe = nb
    _button(page, "Pause").click()
    expect(_button(page, "Resume")).to_be_visible(timeout=30_000)
    _, waited = poll(lambda: probe.value("run.control.paused"), lambda v: v is True, timeout_s=60)
    time.sleep(0.5)  # a step already past its boundary may still finish
    s1 = probe.value("run.state.step")
    time.sleep(1.5)
    s2 = probe.value("run.state.step")
    _shot(page, artifacts / "02_paused.png")
    print(f"[check 2] paused after {waited:.1f}s; step {s1} then {s2} 1.5 s later")
    assert s1 == s2, (s1, s2)
    _button(page, "Resume").click()
    expect(_button(page, "Pause")).to_be_visible(timeout=30_000)
    s3, waited = poll(lambda: probe.value("run.state.step"), lambda v: v > s2, timeout_s=120)
    print(f"[check 2] resumed: step {s2} -> {s3} within {waited:.1f}s")


def test_lr_typed_in_the_readout_reaches_the_optimizer(nb, artifacts):
    page, probe = nb
    n_edits = probe.value("len(run.control.edits)")
    slider = page.locator(".widget-slider").filter(has=page.locator("label", has_text=re.compile(r"^\s*LR\s*$")))
    expect(slider).to_have_count(1)
    readout = slider.locator(".widget-readout")
    before = readout.inner_text()
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(f"{NEW_LR}")
    page.keyboard.press("Enter")
    edits, waited = poll(lambda: probe.value("[dict(e) for e in run.control.edits]"),
                          lambda v: len(v) > n_edits and v[-1]["name"] == "lr", timeout_s=120)
    edit = edits[-1]
    step_at_edit = edit["step"]
    # a few steps later the optimizer runs with the new LR (the schedule continues from it)
    poll(lambda: probe.value("run.state.step"), lambda v: v >= step_at_edit + 3, timeout_s=120)
    lr = probe.value("run.optimizer.param_groups[0]['lr']")
    # the LR the loop logged for the first step after the edit: an edit at step N (N steps done) applies
    # to step N+1 (step records: {group: lr} per step)
    # (records reach the panel in batches of sync_every_n_steps, so wait for that one)
    used, _ = poll(lambda: probe.value(
        f"next((panel.history.lr[run.optimizer.param_groups[0]['name']][i] "
        f"for i, s in enumerate(panel.history.steps) if s > {step_at_edit}), None)"),
        lambda v: v is not None, timeout_s=120, interval_s=0.5)
    print(f"[check 3] readout {before!r} -> {readout.inner_text()!r}; edit after {waited:.1f}s: {edit}; "
          f"LR used at the first step after it {used:.3g}; optimizer lr now {lr:.3g}")
    new = edit["new"]
    new = max(new.values()) if isinstance(new, dict) else new
    assert new == pytest.approx(NEW_LR, rel=0.15), edit
    assert used == pytest.approx(new, rel=0.15), (used, new)
    # the schedule (warmup or decay) continues from the new value: a few steps move it only a little
    assert NEW_LR / 1.5 <= lr <= NEW_LR * 1.5, lr
    # the edit is drawn on the loss chart: an "edits" marker and a vertical line at its step
    loss, _ = poll(lambda: _loss(page), lambda v: step_at_edit in v["edits_x"], timeout_s=60, interval_s=0.5)
    print(f"[check 3] loss chart edits trace x={loss['edits_x']}, shapes at {loss['shapes']}")
    assert any(abs(float(x) - step_at_edit) < 1e-9 for x in loss["shapes"] if x is not None), loss["shapes"]
    _shot(page, artifacts / "03_lr_edit.png")


STOP_TIMING: dict[str, float] = {}


def test_stop_ends_the_thread_and_checkpoints(nb, artifacts):
    """Click Stop: the thread ends (status 'stopped') and a complete checkpoint is written.

    Stop is applied at the next step boundary (by design of Control), then the checkpoint is written and
    the sinks closed. The latency breakdown is recorded here and checked against 2 s in the next test.
    """
    page, probe = nb
    t_rt = time.monotonic()
    probe.value("1")
    roundtrip = time.monotonic() - t_rt
    # step records carry the wall time of their host flush (every sync_every_n_steps), so take the pace
    # over the recent records rather than neighbouring deltas
    steps, times = probe.value("(list(panel.history.steps[-30:]), list(panel.history.time[-30:]))")
    step_s = (times[-1] - times[0]) / (steps[-1] - steps[0]) if steps[-1] > steps[0] else 0.0
    _button(page, "Stop").click()
    t_click, t_click_wall = time.monotonic(), time.time()
    received = None

    def running():
        nonlocal received
        is_running, got = probe.value("(run.is_running, 'stop' in panel.sent)")
        if got and received is None:
            received = time.monotonic() - t_click
        return is_running

    poll(running, lambda v: v is False, timeout_s=120, interval_s=0.05)
    elapsed = time.monotonic() - t_click
    ckpt = probe.value("str(__import__('nbtune.engine.checkpoint', fromlist=['latest']).latest(run.run_dir))")
    status = probe.value("run.state.status")
    poll(lambda: probe.value("panel.history.end is not None"), lambda v: v is True, timeout_s=30)
    end_at = probe.value("panel.history.end['time']") - t_click_wall
    ckpt_at = [round(t - t_click_wall, 2) for t in probe.value("[c.get('time') for c in panel.history.checkpoints]")]
    STOP_TIMING.update(elapsed=elapsed, roundtrip=roundtrip, step_s=step_s)
    print(f"[check 4] after the click: kernel got 'stop' at <= {received}s, checkpoint record at {ckpt_at}s, "
          f"end record at {end_at:.2f}s, is_running False at {elapsed:.2f}s (probe round trip {roundtrip:.3f}s, "
          f"pace {step_s:.2f}s/step); status {status!r}; checkpoint {ckpt}")
    assert status == "stopped", status
    assert ckpt not in (None, "None"), ckpt


def test_stop_latency_within_2s(nb):
    """Stop ends the thread within 2 s of the click, plus the probe's round trip and the step in flight.

    The step in flight is allowed twice the average pace measured before the click: on a loaded 2-core
    machine single steps vary that much (seen: 1.8 s/step average, 4.1 s from click to end)."""
    if not STOP_TIMING:
        pytest.skip("the stop test did not run")
    t = STOP_TIMING
    assert t["elapsed"] <= 2.0 + t["roundtrip"] + 2 * t["step_s"], t


def test_page_shows_every_step_record_the_kernel_holds(nb, artifacts):
    page, probe = nb
    kernel_n = probe.value("len(panel.history.steps)")
    shown, waited = poll(lambda: _loss(page), lambda v: v["n"] == kernel_n, timeout_s=60, interval_s=0.5)
    last_step = probe.value("run.state.step")
    print(f"[check 5] page {shown['n']} raw loss points == kernel {kernel_n} step records "
          f"(waited {waited:.1f}s; last step {last_step})")
    expect(_button(page, "Stop")).to_be_disabled(timeout=30_000)  # the panel saw the end record
    _shot(page, artifacts / "04_stopped.png")


def test_no_javascript_errors(nb):
    page, _ = nb
    errors = [(t, text, url) for t, text, url in page.console_lines[CONSOLE_START["n"]:]
              if t in ("error", "pageerror")]
    benign = [e for e in errors if any(p.search(e[1]) or p.search(e[2]) for p in BENIGN_CONSOLE)]
    real = [e for e in errors if e not in benign]
    print(f"[check 6] console errors: {len(real)} real, {len(benign)} ignored as benign: {benign}")
    assert not real, real
