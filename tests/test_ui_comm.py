"""Headless tier with a recording comm: every widget message the panel would send to a browser is captured,
then replayed into a mirror of plotly's front-end state. A fake engine floods the panel with 5,000 steps/s
for 10 s; the test checks the update rate (at most 10 a second) and that the mirror ends in exactly the
kernel's state, with every record accounted for and spikes kept through decimation."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import comm
import numpy as np
import plotly.graph_objects as go
import pytest
from comm.base_comm import BaseComm

from nbtune.history import decimate_minmax
from nbtune.ui.panels.train import TrainPanel
from tests.support.flood import Flood, fake_run

RATE, SECONDS = 5000, 10.0


@dataclass
class Message:
    t: float
    comm_id: str
    msg_type: str
    data: dict[str, Any]
    buffers: list[Any] = field(default_factory=list)


@pytest.fixture
def recorded(monkeypatch) -> list[Message]:
    """Route every widget comm created during the test to a recorder (no kernel needed)."""
    messages: list[Message] = []

    class RecordingComm(BaseComm):
        def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
            messages.append(Message(time.monotonic(), self.comm_id, msg_type, data or {}, list(buffers or [])))

    monkeypatch.setattr(comm, "create_comm", lambda *a, **k: RecordingComm(*a, **k))
    return messages


def _state(msg: Message) -> dict[str, Any]:
    """The message's widget state with binary buffers put back where `buffer_paths` says, as numpy arrays."""
    state = msg.data.get("state", {})
    for path, buf in zip(msg.data.get("buffer_paths", []), msg.buffers):
        node = state
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = buf
    return _decode(state)


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if {"dtype", "shape", "buffer"} <= value.keys():
            return np.frombuffer(bytes(value["buffer"]), dtype=value["dtype"]).reshape(value["shape"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_decode(v) for v in value]
    return value


class PlotlyMirror:
    """What plotly.js would hold after applying the messages of one FigureWidget, in order."""

    def __init__(self) -> None:
        self.traces: list[dict[str, Any]] = []
        self.layout: dict[str, Any] = {}
        self.updates: list[float] = []  # times of data-carrying messages

    def apply(self, msg: Message) -> None:
        for key, val in _state(msg).items():
            if val is None or (isinstance(val, dict) and not val):  # a reset, or the empty initial payload
                continue
            if key == "_widget_data":
                self.traces = [dict(t) for t in val]
            elif key == "_py2js_addTraces":
                self.traces += [dict(t) for t in val["trace_data"]]
                self.updates.append(msg.t)
            elif key in ("_py2js_update", "_py2js_restyle"):
                style = val.get("style_data", val.get("restyle_data")) or {}
                indices = val.get("style_traces", val.get("restyle_traces")) or []
                for prop, per_trace in style.items():
                    for i, trace_index in enumerate(indices):
                        self.traces[trace_index][prop] = per_trace[i]
                self.layout.update(val.get("layout_data") or {})
                self.updates.append(msg.t)
            elif key == "_py2js_relayout":
                self.layout.update(val["relayout_data"])
                self.updates.append(msg.t)

    def trace(self, name: str) -> dict[str, Any]:
        return next(t for t in self.traces if t.get("name") == name)


def _mirrors(messages: list[Message], panel: TrainPanel) -> dict[str, PlotlyMirror]:
    ids = {fig.comm.comm_id: key for key, fig in panel.figures.items()}
    mirrors = {key: PlotlyMirror() for key in panel.figures}
    for msg in messages:
        if msg.comm_id in ids:
            mirrors[ids[msg.comm_id]].apply(msg)
    return mirrors


def _arr(values: Any) -> np.ndarray:
    return np.asarray([] if values is None else values, dtype=float)


def test_flood_is_throttled_and_the_front_end_ends_in_the_kernel_state(tmp_path, recorded):
    run = fake_run(tmp_path)
    panel = TrainPanel(run)
    assert all(isinstance(f, go.FigureWidget) and f.comm is not None for f in panel.figures.values())
    flood = Flood(run, rate=RATE, seconds=SECONDS).start()
    flood.join(SECONDS * 6)
    assert not flood.thread.is_alive(), "the fake engine did not finish"
    panel.close()  # wait for the final flush

    total = int(RATE * SECONDS)
    print(f"\nflood: {flood.written} records in {flood.elapsed_s:.1f}s; pump renders {panel.pump.renders}, "
          f"{len(recorded)} comm messages")
    # nothing dropped on the kernel side, and the rate really was a flood
    assert flood.written == total and flood.elapsed_s <= SECONDS * 1.5
    assert len(panel.history.steps) == total and panel.history.end is not None
    assert panel.pump.delivered == 1 + total + 1 + total // 1000 + 1  # start, steps, edit, evals, end

    mirrors = _mirrors(recorded, panel)
    # ---- throttling: at most 10 data updates in any one-second window, per chart and overall ----
    for key, mirror in mirrors.items():
        t = mirror.updates
        assert t, f"{key}: no update reached the front end"
        windows = [t[i + 10] - t[i] for i in range(len(t) - 10)]
        assert not windows or min(windows) >= 0.999, f"{key}: more than 10 updates within {min(windows):.3f}s"
    span = recorded[-1].t - recorded[0].t
    assert len(recorded) / span < 500, f"{len(recorded)} messages in {span:.1f}s (the server drops ~1000/s)"

    # ---- the front end ends in exactly the kernel's state ----
    for key, fig in panel.figures.items():
        mirror = mirrors[key]
        assert [t.get("name") for t in mirror.traces] == [t.name for t in fig.data], key
        for kernel_trace in fig.data:
            shown = mirror.trace(kernel_trace.name)
            assert np.array_equal(_arr(shown.get("x")), _arr(kernel_trace.x), equal_nan=True), kernel_trace.name
            assert np.array_equal(_arr(shown.get("y")), _arr(kernel_trace.y), equal_nan=True), kernel_trace.name
    # ... which is the decimated history: <= 5,000 points, min/max kept (the grad-norm spikes survive)
    h = panel.history
    want_x, want_y = decimate_minmax(h.steps, h.loss, panel.max_points)
    raw = mirrors["loss"].trace("train loss")
    # the panel sends int32 steps and float32 values (train.py `_sync`)
    assert np.array_equal(_arr(raw["x"]), _arr(want_x)) and np.array_equal(
        _arr(raw["y"]), np.asarray(want_y, dtype=np.float32).astype(float))
    assert len(raw["x"]) <= panel.max_points and _arr(raw["x"])[-1] == total
    grad = _arr(mirrors["grad_norm"].trace("grad norm")["y"])
    spikes = [s for s in range(1, total + 1) if s % 7919 == 0]
    assert int((grad > 20).sum()) == len(spikes), "every gradient spike survives decimation"
    # the halfway LR edit is drawn: a marker and a vertical line at its step
    assert list(_arr(mirrors["loss"].trace("edits")["x"])) == [total // 2]
    assert [s["x0"] for s in mirrors["loss"].layout["shapes"]] == [total // 2]
    # validation points: one per 1,000 steps, none decimated away
    assert len(mirrors["loss"].trace("validation loss")["x"]) == total // 1000


def test_idle_panel_sends_nothing(tmp_path, recorded):
    """No records, no traffic: the pump never renders an empty batch."""
    run = fake_run(tmp_path)
    panel = TrainPanel(run)
    opened = len(recorded)
    time.sleep(0.5)
    assert len(recorded) == opened and panel.pump.renders == 0
