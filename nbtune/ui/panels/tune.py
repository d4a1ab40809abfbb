"""The TunePanel: a hyperparameter search in the notebook. Live optimisation history, intermediate values,
parallel coordinates and parameter importances; a table of trials; Start/Stop; and "Promote" which turns
trial N into a normal Run (same config, optionally resumed from its checkpoint) with its live TrainPanel.

Compute -> info -> render: the study's info objects (nbtune.tune.study) go through the pure builders in
nbtune.ui.tune_figures; the panel copies their data into FigureWidgets built once. A watcher thread polls the
study's SQLite storage at most `max_hz` times a second and redraws only what changed. Every piece of user text
(parameter names and values, errors) is escaped.

Example:
    >>> import nbtune as nt
    >>> panel = nt.TunePanel(nt.RunConfig(model="minilm", data="intents-en"), trials=20); panel   # doctest: +SKIP
    >>> panel.start_button.click()                                                                  # doctest: +SKIP
"""
from __future__ import annotations

import contextvars
import html
import threading
import traceback
from typing import Any

import ipywidgets as widgets
import plotly.graph_objects as go

from nbtune.ui import tune_figures as tf
from nbtune.ui.chart_grid import chart_grid

STATE_ORDER = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


class TunePanel:
    """Live view and controls for a `TuneStudy`.

    Args:
        study: a TuneStudy, or a RunConfig to build one from (with `dataset`, `trials` and `study_options`,
            e.g. space=..., pruner="hyperband", metric="macro_f1", study_dir=...).
        max_hz: storage polls per second while the study runs (at most 10).
    """

    def __init__(self, study: Any, dataset: Any = None, *, trials: int | None = None, max_hz: float = 2.0,
                 **study_options: Any) -> None:
        from nbtune.tune.study import TuneStudy
        if not isinstance(study, TuneStudy):
            if trials is not None:
                study_options["n_trials"] = trials
            study = TuneStudy(study, dataset=dataset, **study_options)
        elif trials is not None:
            study.n_trials = int(trials)
        if not 0 < max_hz <= 10:
            raise ValueError(f"max_hz must be in (0, 10], got {max_hz}")
        # Import now what the trial thread (datasets -> pandas) and the watcher (optuna's importance evaluator)
        # would otherwise import at the same moment: two threads importing pandas can see it half-initialised.
        import optuna.importance  # noqa: F401
        import pandas  # noqa: F401
        self.study, self.period_s = study, 1.0 / max_hz
        self.error: str | None = None
        self.promoted_run: Any = None
        self.train_panel: Any = None
        self._signature: Any = None
        self._lock = threading.RLock()
        self._watcher: threading.Thread | None = None
        self._wake = threading.Event()

        self.history_fig = go.FigureWidget(tf.history_figure(study.history_info()))
        self.intermediate_fig = go.FigureWidget(tf.intermediate_figure(study.intermediate_info()))
        params = study.params_info()
        self.parallel_fig = go.FigureWidget(tf.parallel_figure(params))
        self.importance_fig = go.FigureWidget(tf.importance_figure(params))
        self.figures = {"history": self.history_fig, "intermediate": self.intermediate_fig,
                        "parallel": self.parallel_fig, "importance": self.importance_fig}
        self._build_widgets()
        self.refresh()

    # ---- layout ----
    def _build_widgets(self) -> None:
        self.header_html, self.status_html, self.table_html = widgets.HTML(), widgets.HTML(), widgets.HTML()
        self.error_html = widgets.HTML(layout={"display": "none"})
        self.start_button = widgets.Button(description="Start", icon="play", button_style="success",
                                           tooltip="run the remaining trials in the background")
        self.stop_button = widgets.Button(description="Stop", icon="stop", button_style="danger", disabled=True,
                                          tooltip="end the study: the current trial stops and is kept as pruned")
        self.trial_picker = widgets.Dropdown(description="Trial", options=[], layout={"width": "260px"})
        self.resume_box = widgets.Checkbox(value=False, description="continue from its checkpoint", indent=False)
        self.promote_button = widgets.Button(description="Promote", icon="arrow-up", disabled=True,
                                             tooltip="turn this trial into a normal Run with a training panel")
        self.promoted_html = widgets.HTML()
        self.promoted_box = widgets.VBox([])
        self.start_button.on_click(lambda _: self._guard(self.start))
        self.stop_button.on_click(lambda _: self._guard(self.stop))
        self.promote_button.on_click(lambda _: self._guard(self.promote))
        self.trial_picker.observe(lambda change: self._update_promote_state(), names="value")
        buttons = widgets.HBox([self.start_button, self.stop_button])
        promote = widgets.HBox([self.trial_picker, self.resume_box, self.promote_button])
        charts = chart_grid(self.figures.values())
        self.widget = widgets.VBox([self.header_html, self.status_html, buttons, self.error_html, charts,
                                    self.table_html, promote, self.promoted_html, self.promoted_box])
        for w, name in ((self.widget, "tune-panel"), (self.header_html, "tune-header"),
                        (self.status_html, "tune-status"), (self.table_html, "tune-trials"),
                        (self.error_html, "tune-error"), (self.start_button, "tune-start"),
                        (self.stop_button, "tune-stop"), (self.trial_picker, "tune-trial-picker"),
                        (self.promote_button, "tune-promote"), (self.promoted_html, "tune-promoted"),
                        (charts, "tune-charts")):
            w.add_class(f"nbtune-{name}")
        for key, fig in self.figures.items():
            fig.add_class(f"nbtune-tune-{key}")

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    # ---- actions ----
    def start(self) -> None:
        """Run the remaining trials in the background; the charts follow the study's storage. (Returns None, so
        a cell ending in `panel.start()` does not display the panel a second time.)"""
        self.study.run(background=True)
        self.start_button.disabled, self.stop_button.disabled = True, False
        self._start_watcher()

    def stop(self) -> None:
        """End the study (the trial in flight stops at its next micro-batch); returns once it has ended."""
        self.stop_button.disabled = True
        self.study.stop(wait=True)
        self.refresh()

    def wait(self, timeout_s: float | None = None) -> "TunePanel":
        """Block until the study ends (for scripts and tests), then draw its final state."""
        self.study.wait(timeout_s)
        if self._watcher is not None:
            self._wake.set()
            self._watcher.join(timeout_s)
        self.refresh()
        return self

    def promote(self, trial_number: int | None = None, resume: bool | None = None) -> Any:
        """Turn a trial into a Run (its exact config; `resume` continues from its newest checkpoint) and show
        that run's TrainPanel below. Returns the Run."""
        from nbtune.engine.run import Run
        from nbtune.ui.panels.train import TrainPanel
        number = self.trial_picker.value if trial_number is None else int(trial_number)
        if number is None:
            raise ValueError("no trial to promote yet: wait for a complete or pruned trial")
        resume = self.resume_box.value if resume is None else bool(resume)
        promoted = self.study.promote(number)
        if resume and promoted.checkpoint is None:
            raise ValueError(f"trial {number} has no checkpoint on disk (keep_checkpoints="
                             f"{self.study.keep_checkpoints!r}); promote it without resuming to train it anew")
        dataset = self.study.objective.dataset
        run = (Run.resume(promoted.checkpoint, promoted.config, dataset) if resume
               else Run(promoted.config, dataset))
        self.promoted_run, self.train_panel = run, TrainPanel(run)
        self.promoted_html.value = promoted_html(promoted, resume)
        self.promoted_box.children = [self.train_panel.widget]
        return run

    def _guard(self, action) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - a button's failure is shown, never lost in a callback
            self.show_error(f"{type(exc).__name__}: {exc}", traceback.format_exc())

    def show_error(self, message: str, traceback_text: str | None = None) -> None:
        self.error = self.error or message
        details = f"<details><summary>traceback</summary><pre>{html.escape(traceback_text)}</pre></details>" \
            if traceback_text else ""
        self.error_html.value = f'<div style="color:#b00020"><b>Error:</b> {html.escape(message)}{details}</div>'
        self.error_html.layout.display = None

    # ---- live updates ----
    def _start_watcher(self) -> None:
        if self._watcher is not None and self._watcher.is_alive():
            return
        self._wake.clear()
        ctx = contextvars.copy_context()  # widget updates from a thread need the kernel's context
        self._watcher = threading.Thread(target=ctx.run, args=(self._watch,), daemon=True, name="nbtune-tune-watch")
        self._watcher.start()

    def _watch(self) -> None:
        while True:
            running = self.study.is_running
            try:
                self.refresh()
            except Exception as exc:  # noqa: BLE001 - shown in the panel instead of lost in a thread
                self.show_error(f"the panel failed to render: {type(exc).__name__}: {exc}", traceback.format_exc())
            if not running:
                return
            self._wake.wait(self.period_s)

    def refresh(self) -> None:
        """Redraw from storage, only if a trial changed state or reported a value since the last redraw."""
        with self._lock:
            trials = self.study.study.get_trials(deepcopy=False)
            signature = tuple((t.number, t.state.name, len(t.intermediate_values)) for t in trials)
            running = self.study.is_running
            self.header_html.value = header_html(self.study)
            self.status_html.value = status_html(self.study, trials, running)
            if not running:
                self.start_button.disabled = self.study.remaining == 0
                self.stop_button.disabled = True
                if self.study.error is not None:
                    self.show_error(f"the study stopped: {type(self.study.error).__name__}: {self.study.error}")
            if signature == self._signature:
                return
            self._signature = signature
            self._sync_figures()
            self.table_html.value = trials_table_html(trials, self.study.metric)
            self._update_picker(trials)

    def _sync_figures(self) -> None:
        history = tf.history_series(self.study.history_info())
        numbers, values = history["value"]
        with self.history_fig.batch_update():
            for trace in self.history_fig.data:
                trace.x, trace.y = history[trace.name]
            if numbers:
                self.history_fig.layout.xaxis.range = [-0.5, max(numbers) + 0.5]
                self.history_fig.layout.yaxis.range = tf.padded_range(values)
        traces = tf.intermediate_traces(self.study.intermediate_info())
        with self.intermediate_fig.batch_update():
            have = len(self.intermediate_fig.data)
            if len(traces) > have:
                self.intermediate_fig.add_traces([tf.intermediate_trace(t) for t in traces[have:]])
            for widget_trace, t in zip(self.intermediate_fig.data, traces):
                widget_trace.x, widget_trace.y, widget_trace.name = t["x"], t["y"], t["name"]
                widget_trace.line.color, widget_trace.line.dash = t["color"], t["dash"]
            steps = [x for t in traces for x in t["x"]]
            if steps:
                self.intermediate_fig.layout.xaxis.range = tf.padded_range(steps, pad=0.04, minimum=1)
                self.intermediate_fig.layout.yaxis.range = tf.padded_range([y for t in traces for y in t["y"]])
        params = self.study.params_info()
        dims = tf.parallel_dimensions(params)
        with self.parallel_fig.batch_update():
            self.parallel_fig.data[0].dimensions = dims
            self.parallel_fig.data[0].line.color = dims[-1]["values"]
            self.parallel_fig.data[0].line.showscale = bool(dims[-1]["values"])
        x, y = tf.importance_series(params)
        with self.importance_fig.batch_update():
            self.importance_fig.data[0].x, self.importance_fig.data[0].y = x, y
            if x:
                self.importance_fig.layout.title.text = "Parameter importances"

    def _update_picker(self, trials: list) -> None:
        """Complete trials best first, then pruned ones (their checkpoint is a partial run)."""
        sign = -1 if self.study.direction == "maximize" else 1
        done = sorted((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: (sign * t.value, t.number))
        pruned = [t for t in trials if t.state.name == "PRUNED" and "config" in t.user_attrs]
        options = [(f"#{t.number} · {self.study.metric} {t.value:.4g}", t.number) for t in done]
        options += [(f"#{t.number} · pruned", t.number) for t in pruned]
        current = self.trial_picker.value
        self.trial_picker.options = options
        values = [v for _, v in options]
        self.trial_picker.value = current if current in values else (values[0] if values else None)
        self._update_promote_state()

    def _update_promote_state(self) -> None:
        self.promote_button.disabled = self.trial_picker.value is None


# ---- pure text builders (escaped) ----
def header_html(study: Any) -> str:
    e = html.escape
    better = "higher" if study.direction == "maximize" else "lower"
    pruner = type(study.study.pruner).__name__.replace("Pruner", "").lower()
    return (f"<b>Study {e(study.study_name)}</b> · {e(study.metric)} ({better} is better) · pruner {e(pruner)} · "
            f"storage <code>{e(str(study.study_dir / 'study.db'))}</code>")


def status_html(study: Any, trials: list, running: bool) -> str:
    states = [t.state.name for t in trials]
    counts = ", ".join(f"{s.lower()} {states.count(s)}" for s in STATE_ORDER if s in states) or "no trials yet"
    finished = sum(states.count(s) for s in ("COMPLETE", "PRUNED", "FAIL"))
    parts = [("running" if running else "idle"), f"{finished}/{study.n_trials} trials: {counts}"]
    done = [t for t in trials if t.state.name == "COMPLETE"]
    if done:
        best = study.best_trial
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in best.params.items())
        parts.append(f"best #{best.number}: {study.metric} {best.value:.4g} ({params})")
    steps = sum(int(t.user_attrs.get("steps_trained", 0)) for t in trials)
    parts.append(f"{steps} steps trained")
    return "<code>" + " | ".join(html.escape(p) for p in parts) + "</code>"


def trials_table_html(trials: list, metric: str) -> str:
    """One row per trial: number, state, value, parameters, steps trained, and why it ended early."""
    e = html.escape
    names = sorted({k for t in trials for k in t.params})
    head = "".join(f"<th>{e(n)}</th>" for n in ["#", "state", metric, *names, "steps", "note"])
    rows = []
    for t in trials:
        attrs = t.user_attrs
        note = attrs.get("error") or attrs.get("stopped") or (
            f"pruned at step {attrs['pruned_at_step']}" if "pruned_at_step" in attrs else "")
        cells = [str(t.number), t.state.name.lower(), "" if t.value is None else f"{t.value:.4g}",
                 *(_fmt(t.params.get(n, "")) for n in names),
                 f"{attrs.get('steps_trained', '')}/{attrs.get('total_steps', '')}", str(note)]
        rows.append(f'<tr data-state="{e(t.state.name.lower())}">' + "".join(f"<td>{e(c)}</td>" for c in cells)
                    + "</tr>")
    return (f'<table class="nbtune-trials-table" style="font-size:12px"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table>")


def promoted_html(promoted: Any, resumed: bool) -> str:
    e = html.escape
    params = ", ".join(f"{e(str(k))}={e(_fmt(v))}" for k, v in promoted.params.items())
    how = f"continuing from {e(str(promoted.checkpoint))}" if resumed else "training anew with its config"
    return (f"<b>Promoted trial {promoted.trial_number}</b> ({how}): "
            f'<span class="nbtune-promoted-params">{params}</span>')


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
