"""The live training panel: four charts updated in place, controls, status line, intervention log, advisor.

Compute -> info -> render: records from the run's sinks are folded into a `RunHistory` (nbtune.history), the
pure builders in nbtune.ui.figures turn it into figures, and their data is copied into FigureWidgets that
were built once. Updates come from a throttled `Pump` (at most 10 a second). Every change goes through
`run.control`. All user text is escaped; errors (training or rendering) are shown, never swallowed.

Example:
    >>> import nbtune as nt
    >>> run = nt.Run(nt.RunConfig(model="tiny-bert", data="trec"))   # doctest: +SKIP
    >>> panel = nt.TrainPanel(run); panel                             # doctest: +SKIP
    >>> panel.start_button.click()                                    # doctest: +SKIP
"""
from __future__ import annotations

import contextvars
import html
import math
import os
import sys
import threading
import time
import traceback
from typing import Any, Iterable

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go

from nbtune.advisor import advise
from nbtune.history import HistoryBuilder, RunHistory, decimate_minmax, summary
from nbtune.labels import edit_label, guard_label
from nbtune.ui import figures
from nbtune.ui.panels.train_controls import AdviceView, ControlBar
from nbtune.ui.runner import Pump
from nbtune.ui.snapshot import snapshot_bundle
from nbtune.ui.chart_grid import chart_grid

# Clip rate is measured over this many recent steps.
CLIP_RATE_WINDOW = 100
MAX_LOG_LINES = 50


class TrainPanel:
    """Live view and controls for one `Run`. Display it as the last expression of a cell.

    Args:
        run: the Run to watch and steer (started here with the Start button, or elsewhere).
        healthy_band: (low, high) gradient-norm band shaded on the grad-norm chart; None hides it.
        smoothing: EMA smoothing of the train loss, in [0, 1).
        max_points: at most this many points per trace (min/max-preserving decimation).
        max_hz: UI updates per second, at most 10.
    """

    def __init__(self, run: Any, *, healthy_band: tuple[float, float] | None = figures.DEFAULT_HEALTHY_BAND,
                 smoothing: float = 0.9, max_points: int = 5000, max_hz: float = 10.0) -> None:
        self.run = run
        self.healthy_band = healthy_band
        self.smoothing = smoothing
        self.max_points = max_points
        self.sent: list[str] = []          # commands sent from this panel, for the intervention log
        self.error: str | None = None      # the first error shown (message)
        self._builder = HistoryBuilder()
        self._snapshot: Any = None         # the display handle of the static snapshot, once displayed
        self._display_context = contextvars.copy_context()
        self._lock = threading.RLock()

        empty = RunHistory()
        self.loss_fig = go.FigureWidget(figures.loss_figure(empty, smoothing))
        self.grad_norm_fig = go.FigureWidget(figures.grad_norm_figure(empty, healthy_band))
        self.lr_fig = go.FigureWidget(figures.lr_figure(empty))
        self.throughput_fig = go.FigureWidget(figures.throughput_figure(empty))
        self.figures = {"loss": self.loss_fig, "grad_norm": self.grad_norm_fig, "lr": self.lr_fig,
                        "throughput": self.throughput_fig}

        self.header_html = widgets.HTML()
        self.status_html = widgets.HTML()
        self.log_html = widgets.HTML()
        self.error_html = widgets.HTML(layout={"display": "none"})
        self.traceback_html = widgets.HTML()
        self.error_details = widgets.Accordion(children=[self.traceback_html], selected_index=None,
                                               layout={"display": "none"})
        self.error_details.set_title(0, "Traceback")
        self.controls = ControlBar(run, on_sent=self._sent, on_error=self._command_error)
        self.advice = AdviceView(on_action=lambda a: self.controls._guard(self.controls.apply_action, a))
        self.advisor_box = self.advice.advisor_box
        c = self.controls
        self.start_button, self.pause_button, self.stop_button = c.start_button, c.pause_button, c.stop_button
        self.checkpoint_button, self.lr_slider, self.clip_slider = c.checkpoint_button, c.lr_slider, c.clip_slider
        self.weight_decay_box = c.weight_decay_box

        charts = chart_grid(self.figures.values())
        self.widget = widgets.VBox([self.header_html, self.status_html, self.controls.widget, self.error_html,
                                    self.error_details, charts, self.advice.widget, self.log_html])
        for w, name in ((self.widget, "train-panel"), (self.header_html, "header"), (self.status_html, "status"),
                        (self.error_html, "error"), (self.error_details, "traceback"), (charts, "charts"),
                        (self.advice.widget, "advisor"), (self.log_html, "log")):
            w.add_class(f"nbtune-{name}")
        for key, fig in self.figures.items():
            fig.add_class(f"nbtune-chart-{key.replace('_', '-')}")
        self._render_text()
        self.pump = run.add_sink(Pump(self._on_records, max_hz=max_hz))

    @classmethod
    def follow(cls, run_dir: Any, *, poll_s: float = 0.5, **options: Any) -> "TrainPanel":
        """A read-only live panel over a run that other processes train (torchrun, accelerate launch,
        `run.launch`): it tails `<run_dir>/metrics.jsonl` (waiting for it to appear) until the run's end record.
        The controls are hidden (a distributed run is steered from its launcher); charts, status and advice work
        as for a Run. `options` are TrainPanel's (smoothing, max_points, ...).

        Example:
            >>> TrainPanel.follow("runs/ddp")      # doctest: +SKIP
        """
        from nbtune.engine.follow import JsonlFollower
        follower = JsonlFollower(run_dir, poll_s=poll_s)
        panel = cls(follower, **options)
        panel.follower = follower
        c = panel.controls
        c.finished()
        for w in (c.lr_slider, c.clip_toggle, c.clip_slider, c.weight_decay_box, c.target_dropdown):
            w.disabled = True
        c.widget.layout.display = "none"
        panel.advice.actions_box.layout.display = "none"  # advice is shown; its actions would steer nothing
        panel.follow_html = widgets.HTML(follow_html(follower.path))
        panel.follow_html.add_class("nbtune-follow")
        children = list(panel.widget.children)
        panel.widget.children = tuple(children[:1] + [panel.follow_html] + children[1:])
        follower.start()
        return panel

    # ---- widgets tests and notebooks reach for ----
    @property
    def history(self) -> RunHistory:
        return self._builder.history

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def _ipython_display_(self) -> None:
        from IPython.display import display
        display(self.widget)
        self.display_snapshot()

    def display_snapshot(self) -> None:
        """Display, in the current cell, a plain output that a static snapshot (PNG) of the charts fills when the run
        ends: widget state needs a live kernel, so without it a saved and reopened notebook shows no curves. The
        update is sent in this cell's context (its parent message), which is where the front end keeps the output.
        A view that holds this panel (the Dashboard) calls it after displaying itself."""
        from IPython.display import display
        self._snapshot = display({"text/plain": ""}, raw=True, display_id=True)
        self._display_context = contextvars.copy_context()

    def close(self) -> None:
        """Final flush of pending records, waiting until they are drawn; the run also closes the pump (without
        waiting) when it ends."""
        self.pump.close()
        self.pump.join()

    # ---- records in (the pump thread) ----
    def _on_records(self, records: list[dict[str, Any]]) -> int:
        """The pump's render: file the records, refresh the widgets; returns the bytes sent (the byte budget)."""
        with self._lock:
            try:
                for record in records:
                    self._builder.add(record)
                sent = self.refresh()
                for record in records:
                    if record.get("kind") == "end":
                        self._on_end(record)
                return sent
            except Exception as exc:  # noqa: BLE001 - shown in the panel instead of lost in a thread
                self.show_error(f"the panel failed to render: {type(exc).__name__}: {exc}", traceback.format_exc())
                return 0

    def _on_end(self, record: dict[str, Any]) -> None:
        self.controls.finished()
        if self._snapshot is not None:
            bundle = snapshot_bundle(self.history, self.healthy_band, self.smoothing)
            self._display_context.copy().run(self._snapshot.update, bundle, raw=True)
        if record.get("status") == "error":
            message = str(record.get("message") or getattr(self.run, "error", None) or "training failed")
            self.show_error(f"training stopped with an error: {message}", getattr(self.run, "traceback", None))

    def refresh(self) -> int:
        """Copy the history's series into the existing widgets: trace arrays, edit lines, titles. No figure is
        rebuilt (that costs ~20x more), so a refresh stays cheap next to training. Returns the trace bytes sent."""
        with self._lock:
            h = self.history
            series = figures.chart_series(h, self.smoothing)
            edit_steps, edit_hover = figures.edit_markers(h)
            titles = {"grad_norm": f"Gradient norm · {clip_rate_text(h.clipped)}"}
            sent = sum(_sync(key, fig, series[key], self.max_points, edit_steps, edit_hover, titles.get(key))
                       for key, fig in self.figures.items())
            self._render_text()
            self._run_advisor()
            return sent

    # ---- text ----
    def _render_text(self) -> None:
        if self.run.state.status in ("running", "paused"):
            self.start_button.disabled = True  # started from code: the button must not start it twice
        self.header_html.value = header_html(self.run, self.history)
        self.status_html.value = status_html(self.run, self.history)
        self.log_html.value = log_html(self.history.edits, self.sent, self.history.guard)

    def _run_advisor(self) -> None:
        self.show_advice(advise(self.history))

    def show_advice(self, advice_list: Iterable[Any]) -> None:
        """Show advisor messages (escaped) with a button per suggested action; nothing is applied unasked."""
        self.advice.show(advice_list)

    def _sent(self, text: str) -> None:
        with self._lock:
            self.sent.append(text)
            self.log_html.value = log_html(self.history.edits, self.sent, self.history.guard)

    def _command_error(self, exc: BaseException) -> None:
        self.show_error(f"command refused: {type(exc).__name__}: {exc}", None)

    def show_error(self, message: str, traceback_text: str | None = None) -> None:
        """Show an error above the charts; the traceback, when there is one, sits in a collapsed section."""
        if self.error is None:
            self.error = message
        self.error_html.value = f'<div style="color:#b00020"><b>Error:</b> {html.escape(message)}</div>'
        self.error_html.layout.display = None
        if traceback_text:
            self.traceback_html.value = f"<pre>{html.escape(traceback_text)}</pre>"
            self.error_details.layout.display = None


# ---- pure text builders (escaped) ----
def header_html(run: Any, history: RunHistory) -> str:
    start = history.start or {}
    cfg = getattr(run, "cfg", None)
    name = getattr(getattr(run, "run_dir", None), "name", None) or getattr(cfg, "run_name", None) or "run"
    model = start.get("model") or getattr(getattr(cfg, "model", None), "name", "?")
    dataset = start.get("dataset") or getattr(getattr(cfg, "data", None), "dataset", "?")
    labels = start.get("label_names") or getattr(getattr(run, "data", None), "label_names", None) or []
    shown = ", ".join(html.escape(str(x)) for x in list(labels)[:12]) + (" …" if len(labels) > 12 else "")
    label_part = f" · {len(labels)} labels: {shown}" if labels else ""
    return (f"<b>{html.escape(str(name))}</b> · model {html.escape(str(model))} · "
            f"data {html.escape(str(dataset))}{label_part}")


def status_html(run: Any, history: RunHistory) -> str:
    state = getattr(run, "state", None)
    step = history.steps[-1] if history.steps else getattr(state, "step", 0)
    total = (history.start or {}).get("total_steps") or getattr(run, "total_steps", None) or "?"
    status = (history.end or {}).get("status") or getattr(state, "status", "?")
    epoch = history.epoch[-1] if history.epoch and math.isfinite(history.epoch[-1]) else getattr(state, "epoch", 0)
    s = summary(history)
    best = (f"best {s['best_metric']} {s['best_value']:.4g} @ step {s['best_step']}"
            if s["best_metric"] else "best —")
    precision = getattr(getattr(run, "precision", None), "name", None) or (history.start or {}).get("precision")
    device = getattr(run, "device", None) or (history.start or {}).get("device")
    parts = [str(status), f"step {step}/{total}", f"epoch {float(epoch):.2f}",
             f"ETA {eta_text(history, total)}", best, f"{device} · {precision}"]
    skipped = sum(1 for e in history.guard if e.get("event") == "nan_skipped")
    if skipped:
        parts.append(f"{skipped} step{'s' if skipped != 1 else ''} skipped (non-finite)")
    world = (history.start or {}).get("world_size")
    if isinstance(world, int) and world > 1:
        parts.append(f"{world} processes")
    if not getattr(run, "read_only", False):  # a followed run's memory is another process's, not this one's
        parts.append(memory_text(device))
    model = getattr(run, "raw_model", None)
    if model is not None:  # what trains now (unfreezing, adapters)
        params = list(model.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        parts.append(f"trainable {trainable / 1e6:.2f}M of {sum(p.numel() for p in params) / 1e6:.2f}M")
    return "<code>" + " | ".join(html.escape(p) for p in parts) + "</code>"


def eta_text(history: RunHistory, total: Any) -> str:
    """Remaining time at the average pace since the first logged step."""
    pairs = [(s, t) for s, t in zip(history.steps, history.time) if math.isfinite(t)]
    if len(pairs) < 2 or not isinstance(total, int) or history.end is not None:
        return "—"
    (s0, t0), (s1, t1) = pairs[0], pairs[-1]
    if s1 <= s0 or t1 <= t0:
        return "—"
    seconds = (total - s1) * (t1 - t0) / (s1 - s0)
    return time.strftime("%H:%M:%S", time.gmtime(max(seconds, 0)))


def clip_rate_text(clipped: list[bool], window: int = CLIP_RATE_WINDOW) -> str:
    """Share of recent steps whose gradient was clipped.

        >>> clip_rate_text([True, False, False, False])
        'clipped 25% of last 4 steps'
    """
    recent = clipped[-window:]
    if not recent:
        return "clip rate —"
    return f"clipped {sum(recent) / len(recent):.0%} of last {len(recent)} steps"


def memory_text(device: Any) -> str:
    """GPU memory allocated on CUDA; otherwise the process RSS (psutil if installed, else /proc/self/statm)."""
    torch = sys.modules.get("torch")
    if str(device).startswith("cuda") and torch is not None and torch.cuda.is_available():
        return f"GPU {torch.cuda.memory_allocated(device) / 2**20:.0f} MiB"
    try:
        import psutil
        rss = psutil.Process().memory_info().rss
    except ImportError:
        try:
            with open("/proc/self/statm", encoding="ascii") as f:
                rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return "memory n/a"
    return f"RSS {rss / 2**20:.0f} MiB"


def follow_html(path: Any) -> str:
    """The line a followed (read-only) panel shows under its header.

        >>> follow_html("runs/<x>/metrics.jsonl")
        '<i>following runs/&lt;x&gt;/metrics.jsonl (read-only: a distributed run is steered from its launcher)</i>'
    """
    return (f"<i>following {html.escape(str(path))} (read-only: a distributed run is steered from its "
            f"launcher)</i>")


def log_html(edits: list[dict[str, Any]], sent: list[str], guard: list[dict[str, Any]] = ()) -> str:
    """The interventions log: edits applied, edits sent from this panel, and the guard's events (skipped steps,
    halts, rollbacks, OOM backoffs), newest last.

        >>> log_html([], [], [{"step": 5, "event": "nan_skipped", "reason": "loss", "skipped_steps": 1}])
        '<b>Interventions</b> (0 applied)<ol></ol><b>Guard</b> (1 event)<ol class="guard"><li>step 5: step skipped (non-finite loss; 1 skipped so far)</li></ol>'
    """
    applied = "".join(f"<li>{html.escape(edit_label(e))}</li>" for e in edits[-MAX_LOG_LINES:])
    queued = "".join(f"<li>{html.escape(s)}</li>" for s in sent[-MAX_LOG_LINES:])
    events = "".join(f"<li>{html.escape(guard_label(e))}</li>" for e in guard[-MAX_LOG_LINES:])
    return (f"<b>Interventions</b> ({len(edits)} applied)<ol>{applied}</ol>"
            + (f"<details><summary>sent from this panel ({len(sent)})</summary><ul>{queued}</ul></details>"
               if sent else "")
            + (f"<b>Guard</b> ({len(guard)} event{'s' if len(guard) != 1 else ''})<ol class=\"guard\">{events}</ol>"
               if guard else ""))


# ---- figure sync ----
def _sync(chart: str, widget: go.FigureWidget, series: figures.Series, max_points: int, edit_steps: list[int],
          edit_hover: list[str], title: str | None = None) -> int:
    """Copy trace data (decimated) into the live widget, in one message; redraw edit lines only when the edits
    changed. Returns the bytes of trace data sent (the pump keeps them under its byte budget).

    The data goes as int32 steps and float32 values (binary buffers): half of float64's bytes, and a chart
    cannot show the difference. Smoothed traces (EMA) get a tenth of `max_points`: they have no spikes to keep.
    A 5,000-point loss update is then ~44 kB, whatever the step count."""
    by_name = {t.name: t for t in widget.data}
    new = [name for name in series if name not in by_name]
    if new:  # parameter groups seen for the first time: one more styled trace each, same widget
        known = sum(1 for t in widget.data if t.name in series and t.name not in ("edits", "grad norm", "clipped"))
        widget.add_traces([figures.group_trace(chart, name, known + i) for i, name in enumerate(new)])
        by_name = {t.name: t for t in widget.data}
    sent = 0
    with widget.batch_update():
        for name, (xs, ys) in series.items():
            target = by_name[name]
            if name == "edits":
                if tuple(target.hovertext or ()) != tuple(edit_hover):
                    target.hovertext = edit_hover
            else:
                xs, ys = decimate_minmax(xs, ys, max(2, max_points // 10) if "(EMA)" in name else max_points)
            # numpy arrays skip plotly's per-element validation (a list of 5,000 floats costs ~10x more)
            x, y = _narrow(xs), np.asarray(ys, dtype=np.float32)
            if not (_same(target.x, x) and _same(target.y, y)):  # unchanged traces are not sent again
                target.x, target.y = x, y
                sent += x.nbytes + y.nbytes
        if "edits" in series and len(widget.layout.shapes) != len(edit_steps):
            widget.layout.shapes = figures.edit_shapes(edit_steps)
        if title is not None and widget.layout.title.text != title:
            widget.layout.title.text = title
    return sent


def _narrow(xs: Any) -> np.ndarray:
    """Steps as int32 when they are whole numbers that fit (always, for steps), else float32."""
    x = np.asarray(xs)
    if x.dtype.kind in "iu" and (x.size == 0 or (x.min() >= -2**31 and x.max() < 2**31)):
        return x.astype(np.int32)
    return x.astype(np.float32)


def _same(held: Any, new: np.ndarray) -> bool:
    return held is not None and len(held) == len(new) and np.array_equal(np.asarray(held, dtype=float), new,
                                                                          equal_nan=True)
