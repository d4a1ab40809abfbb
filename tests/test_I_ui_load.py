"""Catalogue group I (load on the UI), in-process: the pump's byte budget (I1), loss-plot decimation over a million
steps (I2), the data browser over 100,000 rows of 1 kB text (I3, integration tier) and LR edits coalesced while a
real run trains (I4). Widget traffic is measured with the recording comm of tests/test_ui_comm.py: every message
a front end would receive, with its binary buffers. I1 through a real kernel is tests/test_I_kernel_flood.py."""
from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest

from nbtune.history import HistoryBuilder, RunHistory
from nbtune.ui.runner import Pump
from tests.support.flood import fake_run
from tests.test_ui_comm import Message, recorded  # noqa: F401 - `recorded` is a fixture used below

# ---------------------------------------------------------------------------------------------------------------
# I1 (unit half): renders that report their bytes are spaced so the average stays under the budget.


def test_I1_pump_keeps_reported_bytes_under_the_budget():
    stamps: list[float] = []

    def render(batch: list[dict[str, Any]]) -> int:
        stamps.append(time.monotonic())
        return 40_000  # what a 2,500-point chart update weighs (x and y as float64)

    pump = Pump(render, max_hz=10, max_bytes_per_s=100_000)
    began, n = time.monotonic(), 0
    while time.monotonic() < began + 2.0:
        n += 1
        pump.write({"kind": "step", "step": n})
        time.sleep(0.0005)
    pump.close()
    pump.join()
    elapsed = time.monotonic() - began
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    print(f"\nI1 pump: {pump.renders} renders, {pump.sent_bytes:,} B in {elapsed:.2f}s, gaps {min(gaps):.3f}s+")
    assert pump.delivered == n and pump.sent_bytes == 40_000 * pump.renders
    # 40 kB at 100 kB/s: 0.4 s between renders instead of the 0.1 s of 10 Hz (the final flush is exempt)
    assert min(gaps[:-1]) >= 0.4 - 0.01
    assert (pump.sent_bytes - 40_000) / elapsed <= 100_000


def test_I1_close_during_a_long_spacing_flushes_at_once():
    """The trailing flush comes within half a second of the end, even when the byte budget asked for a 10 s pause."""
    stamps: list[float] = []
    pump = Pump(lambda batch: stamps.append(time.monotonic()) or 1_000_000, max_hz=10, max_bytes_per_s=100_000)
    pump.write({"kind": "step", "step": 1})
    deadline = time.monotonic() + 5
    while not stamps and time.monotonic() < deadline:
        time.sleep(0.01)
    pump.write({"kind": "end", "step": 2})
    time.sleep(0.3)
    closed_at = time.monotonic()
    pump.close()
    pump.join(5)
    assert pump.delivered == 2 and len(stamps) == 2
    # FINAL_FLUSH_WAIT_S (0.5 s) after the close, not the 10 s the budget asked for; 0.2 s of scheduling slack
    assert 0.5 - 0.01 <= stamps[1] - closed_at <= 0.5 + 0.2, f"final flush {stamps[1] - closed_at:.2f}s after close"


@pytest.mark.parametrize("budget", [0, -1.0])
def test_I1_pump_refuses_a_byte_budget_that_is_not_positive(budget):
    with pytest.raises(ValueError, match="max_bytes_per_s must be > 0"):
        Pump(lambda batch: None, max_bytes_per_s=budget)


# ---------------------------------------------------------------------------------------------------------------
# I2: 1,000,000 logged steps, one 50x loss spike at step 654,321.
STEPS_I2, SPIKE_STEP = 1_000_000, 654_321


def _history(n: int, loss: np.ndarray) -> RunHistory:
    """What a panel holds after n step records (built directly: feeding a million dicts costs ~10 s)."""
    steps = np.arange(1, n + 1)
    nan = [float("nan")] * n
    return RunHistory(steps=steps.tolist(), epoch=(steps / 10_000).tolist(), time=list(nan), loss=loss[:n].tolist(),
                      grad_norm=(1.0 + 0.1 * np.cos(steps * 0.37)).tolist(), samples_per_second=[5000.0] * n,
                      tokens_per_second=[160_000.0] * n, clipped=[False] * n, lr={"all": [1e-4] * n})


def _payload_bytes(msg: Message) -> int:
    """JSON text of the message plus its binary buffers (numpy arrays travel as buffers, not JSON numbers)."""
    return len(json.dumps(msg.data, default=lambda _: None)) + sum(len(memoryview(b).cast("B")) for b in msg.buffers)


@pytest.fixture(scope="module")
def million_step_updates(tmp_path_factory):
    """Refresh one panel at 200,000 and at 1,000,000 steps; the comm traffic of each refresh, per chart."""
    import comm
    from comm.base_comm import BaseComm

    from nbtune.ui.panels.train import TrainPanel

    messages: list[tuple[str, Message]] = []

    class RecordingComm(BaseComm):
        def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
            messages.append((msg_type, Message(time.monotonic(), self.comm_id, msg_type, data or {},
                                               list(buffers or []))))

    mp = pytest.MonkeyPatch()
    mp.setattr(comm, "create_comm", lambda *a, **k: RecordingComm(*a, **k))
    steps = np.arange(1, STEPS_I2 + 1)
    loss = 2.0 / np.sqrt(steps) + 0.05 * np.sin(steps * 12.9898)
    loss[SPIKE_STEP - 1] *= 50.0
    try:
        panel = TrainPanel(fake_run(tmp_path_factory.mktemp("i2")))
        ids = {fig.comm.comm_id: key for key, fig in panel.figures.items()}
        updates: dict[int, dict[str, int]] = {}
        for n in (200_000, STEPS_I2):
            before = len(messages)
            panel._builder = HistoryBuilder(_history(n, loss))  # the records a run of n steps would have sent
            panel.refresh()
            per_chart = dict.fromkeys(panel.figures, 0)
            for _, msg in messages[before:]:
                if msg.comm_id in ids:
                    per_chart[ids[msg.comm_id]] += _payload_bytes(msg)
            updates[n] = per_chart
        yield panel, loss, updates
    finally:
        mp.undo()


def test_I2_million_steps_plot_at_most_5000_points_and_keep_the_spike_exactly(million_step_updates):
    panel, loss, updates = million_step_updates
    for key, fig in panel.figures.items():
        for trace in fig.data:
            assert trace.x is None or len(trace.x) <= 5000, (key, trace.name, len(trace.x))
    raw = next(t for t in panel.loss_fig.data if t.name == "train loss")
    x, y = np.asarray(raw.x), np.asarray(raw.y)
    print(f"\nI2: {len(x):,} points plotted of {STEPS_I2:,}; update bytes per chart at 200k / 1M steps: "
          + ", ".join(f"{k} {updates[200_000][k]:,} / {updates[STEPS_I2][k]:,}" for k in panel.figures))
    hit = np.flatnonzero(x == SPIKE_STEP)
    # exact at float32, the precision the chart data is sent in (train.py `_sync`)
    spike = np.float32(loss[SPIKE_STEP - 1])
    assert len(hit) == 1 and y[hit[0]] == spike, "the spike's exact value is plotted at its step"
    assert y.max() == spike and x[-1] == STEPS_I2


def test_I2_update_payload_does_not_grow_with_the_step_count(million_step_updates):
    panel, _, updates = million_step_updates
    small, large = updates[200_000], updates[STEPS_I2]
    for key in panel.figures:
        assert small[key] > 0 and abs(large[key] / small[key] - 1) <= 0.10, (key, small[key], large[key])
    # Bounded by max_points whatever the step count: a 5,000-point raw trace and a 500-point EMA, int32 x, float32 y.
    assert large["loss"] <= (5000 + 500) * 8 + 10_000


def test_I2_update_payload_is_at_most_50_kB(million_step_updates):
    _, _, updates = million_step_updates
    assert updates[STEPS_I2]["loss"] <= 50_000


# ---------------------------------------------------------------------------------------------------------------
# I4: 20 LR changes within 1 s from the controls while a real run trains in its thread.
LONG_RUN = ["model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=64", "data.max_eval_samples=8",
            "train.batch_size=8", "train.max_steps=100000", "train.progress_bar=false", "train.tensorboard=false",
            "train.precision=fp32", "train.scheduler=constant", "train.warmup_ratio=0",
            "train.eval_every_n_steps=1000000"]


def test_I4_twenty_lr_moves_in_a_second_apply_at_most_two_edits_ending_on_the_last(tmp_path):
    from nbtune.config import RunConfig
    from nbtune.engine.run import Run
    from nbtune.ui.panels.train_controls import ControlBar

    run = Run(RunConfig().with_overrides(LONG_RUN + [f"output_dir={tmp_path}"]))
    sends: list[tuple[str, int, float]] = []  # (command text, step when sent, time)
    errors: list[BaseException] = []
    bar = ControlBar(run, on_sent=lambda text: sends.append((text, run.state.step, time.monotonic())),
                     on_error=errors.append)
    run.start(background=True)
    try:
        deadline = time.monotonic() + 60
        while run.state.step < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        values = [float(v) for v in np.geomspace(1e-5, 1e-3, 20)]
        step_before, burst_began = run.state.step, time.monotonic()
        for i, v in enumerate(values):  # 20 moves, 45 ms apart on the clock (not sleeps, which drift): 0.86 s
            time.sleep(max(0.0, burst_began + 0.045 * i - time.monotonic()))
            bar.lr_slider.value = v
        last_move = time.monotonic()
        while not any(e["name"] == "lr" and e["new"] == pytest.approx(values[-1], rel=1e-9)
                      for e in run.control.edits) and time.monotonic() < last_move + 10:
            time.sleep(0.005)
        applied_at = time.monotonic()
    finally:
        run.control.stop()
        run.wait(60)
    lr_edits = [e for e in run.control.edits if e["name"] == "lr"]
    steps_in_burst = run.state.step - step_before
    print(f"\nI4: {len(values)} moves in {last_move - burst_began:.2f}s, {bar.coalescer.sent} sent, "
          f"{len(lr_edits)} applied at steps {[e['step'] for e in lr_edits]} (sent at steps "
          f"{[s for _, s, _ in sends]}); last value applied {applied_at - last_move:.2f}s after the last move; "
          f"{steps_in_burst} steps while it lasted")
    assert not errors and run.error is None
    assert bar.coalescer.submitted == 20 and bar.coalescer.sent == len(sends) == len(lr_edits) <= 2
    assert lr_edits[0]["new"] == pytest.approx(values[0], rel=1e-9)      # the first move went at once
    assert lr_edits[-1]["new"] == pytest.approx(values[-1], rel=1e-9)    # the last value wins
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(values[-1], rel=1e-9)
    for edit, (_, sent_step, _) in zip(lr_edits, sends):
        assert edit["step"] - sent_step <= 1, "applied at the first step boundary after it was sent"
    assert applied_at - last_move <= 1.0 + 0.5  # 1 s coalescing interval + one step on a loaded machine


def test_I4_a_refused_value_is_reported_at_once_and_does_not_block_later_edits(tmp_path):
    from nbtune.ui.panels.train_controls import ControlBar

    run = fake_run(tmp_path)
    errors: list[BaseException] = []
    bar = ControlBar(run, on_sent=lambda text: None, on_error=errors.append, edit_interval_s=0.0)
    bar.weight_decay_box.max = 10.0
    bar._guard(bar.set, "lr", -1.0)
    assert len(errors) == 1 and "lr must be > 0" in str(errors[0])
    bar.set("lr", 2e-4)
    bar.set("lr", 3e-4)  # the first is in flight (no loop applies it here): this one waits
    assert [(c.name, c.value) for c in run.control._pending] == [("lr", 2e-4)]
    assert bar.coalescer.pending == {"lr": 3e-4}
    bar.coalescer.write({"kind": "edit", "name": "lr", "step": 5, "old": 1e-4, "new": 2e-4})  # the loop applied it
    assert [(c.name, c.value) for c in run.control._pending] == [("lr", 2e-4), ("lr", 3e-4)]
    assert bar.coalescer.pending == {} and errors[1:] == []


# ---------------------------------------------------------------------------------------------------------------
# I3: the data browser on 100,000 rows x 10 columns, one of them 1 kB of text (100 MB of text). Scaled down from
# the catalogue's 1,000,000 rows (1 GB): inspecting the rows takes ~30 s here, ~10x that at full size; every
# figure below is per page or a ratio to the frame's own memory, so it keeps its meaning.
ROWS_I3, PAGE = 100_000, 25
JUMP_ROW = ROWS_I3 - 10   # the catalogue's row 999,990, scaled


def _rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) * 1024


def _frame(n: int) -> Any:
    """10 columns: 1 kB of text (word soup, each row different), a label and 8 numeric columns."""
    import pandas as pd
    rng = np.random.default_rng(0)
    words = np.array(["refund", "card", "declined", "parcel", "late", "screen", "login", "error", "<b>", "&amp;"])
    soup = " ".join(words[rng.integers(0, len(words), size=400_000)])
    starts = rng.integers(0, len(soup) - 1100, size=n)
    texts = [(f"row {i} " + soup[o:o + 1000])[:1000] for i, o in enumerate(starts)]
    frame = pd.DataFrame({"text": texts, "label": rng.integers(0, 5, size=n)})
    for c in range(8):
        frame[f"x{c}"] = rng.random(n)
    return frame


@pytest.mark.integration
def test_I3_data_browser_on_100k_rows_sends_one_page_and_jumps_sorts_filters_in_the_kernel(recorded):
    import gc

    from nbtune.data.inspect import inspect
    from nbtune.ui.panels.data import DataPanel
    from nbtune.ui.panels.data_browser import page_rows, sort_rows

    frame = _frame(ROWS_I3)
    frame_bytes = int(frame.memory_usage(deep=True).sum())
    gc.collect()
    rss_before = _rss_bytes()
    # The column lists hold the frame's own str objects (no copy). Near-duplicate search is capped at 2,000 rows
    # (default 200,000): it is the inspection's cost, not the browser's, and bench/data_panel_scale.py times it.
    began = time.perf_counter()
    report = inspect({"text": frame["text"].tolist(), "label": frame["label"].tolist()}, max_near_rows=2_000)
    inspect_s = time.perf_counter() - began
    began = time.perf_counter()
    panel = DataPanel(report=report, page_size=PAGE)
    build_s = time.perf_counter() - began
    initial = sum(_payload_bytes(m) for m in recorded)
    # Each plotly FigureWidget (an anywidget) opens its comm with plotly.js itself as `_esm`: ~5 MB a chart,
    # whatever the data. Counted apart: it is library code, the same for 10 rows or 10 million (see the gap below).
    library = sum(len(json.dumps(m.data.get("state", {}).get("_esm", ""))) for m in recorded
                  if m.msg_type == "comm_open" and "_esm" in m.data.get("state", {}))

    # ---- jump to row JUMP_ROW: the page that holds it, and nothing else, is sent ----
    sent_before, began = len(recorded), time.perf_counter()
    panel.show_page(JUMP_ROW // PAGE)
    jump_s = time.perf_counter() - began
    jump_bytes = sum(_payload_bytes(m) for m in recorded[sent_before:])
    first = JUMP_ROW // PAGE * PAGE
    assert [r["index"] for r in page_rows(report, panel.indices, panel.page, PAGE)] == list(range(first, first + PAGE))
    assert f'data-row="{JUMP_ROW}"' in panel.table_html.value
    assert frame["text"][JUMP_ROW][:60].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") \
        in panel.table_html.value
    assert f"rows {first + 1:,}–{first + PAGE:,} of {ROWS_I3:,}" in panel.count_html.value

    # ---- filter and sort run on the kernel's arrays; only a page goes out ----
    label = report.label_names[3]
    panel.set_query(label=label)
    want = np.flatnonzero(frame["label"].to_numpy() == int(label))
    assert np.array_equal(panel.indices, want)
    by_length = sort_rows(report, panel.indices, "length", descending=True)
    lengths = report.lengths.lengths[by_length]
    assert sorted(by_length.tolist()) == want.tolist() and np.all(np.diff(lengths) <= 0)
    by_text = sort_rows(report, want[:5000], "text")
    assert [report.texts[i] for i in by_text] == sorted(frame["text"][want[:5000]])
    gc.collect()
    growth = _rss_bytes() - rss_before
    print(f"\nI3: {ROWS_I3:,} rows, frame {frame_bytes / 2**20:,.0f} MiB; inspect {inspect_s:.1f}s, panel built in "
          f"{build_s:.2f}s; initial payload {(initial - library) / 1e3:,.1f} kB of data and widgets + "
          f"{library / 1e6:,.1f} MB of plotly.js (_esm of {len(panel.figures)} charts); jump to row {JUMP_ROW:,} in "
          f"{jump_s * 1000:.0f} ms, {jump_bytes / 1e3:,.1f} kB; RSS growth {growth / 2**20:,.0f} MiB = "
          f"{growth / frame_bytes:.2f}x the frame")
    assert initial - library <= 2_000_000 and jump_bytes <= 100_000
    assert growth <= 1.5 * frame_bytes
