"""The ExportPanel: export a run to ONNX (fp32 and int8) from the notebook and read what came out: parity
against PyTorch per variant with a pass/fail per threshold, latency and throughput per backend with the
speed-up over eager, the files written, notes and failures.

Compute -> info -> render: `run.export(...)` (nbtune.export) fills an `ExportReport`; the pure builders below
turn it into escaped HTML tables and nbtune.ui.export_figures into bar charts. The export runs in a background
thread (the notebook stays usable) and reports its stage ("exporting ONNX", "parity", ...) as it goes. A saved
report.json can be opened without a run.

Example:
    >>> panel = nt.ExportPanel(run, latency=True); panel          # doctest: +SKIP
    >>> panel.export(); panel.wait(); panel.report.passed         # doctest: +SKIP
    True
    >>> nt.ExportPanel("runs/tiny/export/report.json")            # doctest: +SKIP
"""
from __future__ import annotations

import contextvars
import html
import json
import operator
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import ipywidgets as widgets
import plotly.graph_objects as go

from nbtune.export.types import ExportError, ExportReport, ParityError
from nbtune.ui import export_figures as ef
from nbtune.ui.chart_grid import chart_grid

RED, GREEN = "#b00020", "#1b7f3b"
# (threshold key in report.thresholds, variant it applies to, label, the figure compared, comparison)
CHECKS: tuple[tuple[str, str, Callable[[float], str], Callable[[Any], float], Callable], ...] = (
    ("max_logit_diff", "onnx-fp32", lambda t: f"max |Δlogit| ≤ {t:.0e}", lambda p: p.max_abs_logit_diff,
     operator.le),
    ("min_fp32_agreement", "onnx-fp32", lambda t: f"agreement ≥ {t:.0%}", lambda p: p.label_agreement, operator.ge),
    ("min_int8_agreement", "onnx-int8", lambda t: f"agreement ≥ {t:.0%}", lambda p: p.label_agreement, operator.ge),
    ("max_int8_metric_drop", "onnx-int8", lambda t: f"drop ≤ {t * 100:.2f} pt", lambda p: p.metric_drop,
     operator.le),
)


def load_report(path: str | Path) -> ExportReport:
    """An ExportReport from a report.json (or a folder holding one).

        >>> load_report("runs/tiny/export").passed     # doctest: +SKIP
        True
    """
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise FileNotFoundError(f"no export report at {path}: pass the report.json that run.export() wrote "
                                "(or its folder)")
    try:
        return ExportReport.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError, KeyError) as exc:
        raise ExportError(f"{path} is not an export report ({type(exc).__name__}: {exc}); expected the "
                          "report.json written by run.export()") from exc


class ExportPanel:
    """Export a Run and show the report, or show a report that exists already.

    Args:
        source: a Run (the panel gets an options row and an Export button), an ExportReport, or the path of a
            report.json (or of its folder).
        export_options: passed on to `run.export` (e.g. latency=False, min_int8_agreement=0.98); `quantize`,
            `triton`, `max_logit_diff` and `output_dir` set the options row's initial values.
    """

    def __init__(self, source: Any, **export_options: Any) -> None:
        self.run: Any = None
        self.report: ExportReport | None = None
        if isinstance(source, ExportReport):
            self.report = source
        elif isinstance(source, (str, Path)):
            self.report = load_report(source)
        elif hasattr(source, "cfg") and hasattr(source, "raw_model"):
            self.run = source
        else:
            raise TypeError(f"ExportPanel needs a Run, an ExportReport or a report.json path, got "
                            f"{type(source).__name__}")
        self.export_options = dict(export_options)
        self.error: str | None = None
        self.stages: list[tuple[str, float]] = []   # (stage name, time.monotonic() when it began)
        self._thread: threading.Thread | None = None
        self._build_widgets()
        if self.report is not None:
            self.show_report(self.report)

    # ---- layout ----
    def _build_widgets(self) -> None:
        opts = self.export_options
        self.header_html, self.status_html = widgets.HTML(self._header()), widgets.HTML()
        self.quantize_box = widgets.Checkbox(value=opts.get("quantize", "int8") == "int8", indent=False,
                                             description="quantize int8", layout={"width": "140px"})
        self.triton_box = widgets.Checkbox(value=bool(opts.get("triton", True)), indent=False,
                                           description="Triton repository", layout={"width": "160px"})
        self.max_diff_text = widgets.Text(value=f"{opts.get('max_logit_diff', 1e-4):g}", description="max |Δlogit|",
                                          layout={"width": "200px"})
        out = opts.get("output_dir")
        self.output_text = widgets.Text(value="" if out is None else str(out), description="output dir",
                                        placeholder="default: next to the run", layout={"width": "360px"})
        self.export_button = widgets.Button(description="Export", icon="download", button_style="primary",
                                            tooltip="export to ONNX, check parity, measure latency")
        self.export_button.on_click(lambda _: self._guard(self.export))
        self.options_row = widgets.HBox([self.quantize_box, self.triton_box, self.max_diff_text, self.output_text,
                                         self.export_button])
        if self.run is None:
            self.options_row.layout.display = "none"
        self.error_html = widgets.HTML(layout={"display": "none"})
        self.parity_html, self.latency_html, self.files_html = widgets.HTML(), widgets.HTML(), widgets.HTML()
        self.messages_html = widgets.HTML()
        self.latency_fig = go.FigureWidget(ef.latency_figure(ExportReport("", "", "")))
        self.throughput_fig = go.FigureWidget(ef.throughput_figure(ExportReport("", "", "")))
        self.figures = {"latency": self.latency_fig, "throughput": self.throughput_fig}
        self.charts = chart_grid(self.figures.values())
        self.charts.layout.display = "none"
        self.widget = widgets.VBox([self.header_html, self.options_row, self.status_html, self.error_html,
                                    self.messages_html, self.parity_html, self.latency_html, self.charts,
                                    self.files_html])
        for w, name in ((self.widget, "export-panel"), (self.header_html, "export-header"),
                        (self.options_row, "export-options"), (self.export_button, "export-run"),
                        (self.status_html, "export-status"), (self.error_html, "export-error"),
                        (self.messages_html, "export-messages"), (self.parity_html, "export-parity"),
                        (self.latency_html, "export-latency"), (self.charts, "export-charts"),
                        (self.files_html, "export-files")):
            w.add_class(f"nbtune-{name}")
        for key, fig in self.figures.items():
            fig.add_class(f"nbtune-export-{key}")

    def _header(self) -> str:
        if self.report is not None:
            return header_html(self.report)
        cfg = self.run.cfg
        return (f"<b>Export</b> · model <span class=\"nbtune-export-model\">{html.escape(str(cfg.model.name))}"
                f"</span> · {html.escape(str(cfg.task))} · not exported yet")

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    # ---- running ----
    def options(self) -> dict[str, Any]:
        """The keyword arguments Export passes to `run.export`: the constructor's, then the options row's."""
        text = self.max_diff_text.value.strip()
        try:
            max_diff = float(text)
        except ValueError:
            raise ValueError(f"max |Δlogit| must be a number such as 1e-4, got {text!r}") from None
        if not max_diff > 0:
            raise ValueError(f"max |Δlogit| must be above 0 (e.g. 1e-4 for fp32 ONNX), got {text!r}")
        out = self.output_text.value.strip()
        return {**self.export_options, "format": self.export_options.get("format", "onnx"),
                "quantize": "int8" if self.quantize_box.value else None, "triton": bool(self.triton_box.value),
                "max_logit_diff": max_diff, "output_dir": out or None}

    def export(self) -> None:
        """Run `run.export(...)` with the options row's settings in a background thread; the report shows when
        it ends. Returns None (a cell ending in `panel.export()` does not draw the panel twice)."""
        if self.run is None:
            raise ExportError("this panel shows a saved report; build ExportPanel(run) to export a run")
        if self._thread is not None and self._thread.is_alive():
            raise ExportError("an export is already running: wait for it (panel.wait()) before starting another")
        options = self.options()
        self.error, self.error_html.layout.display = None, "none"
        self.stages = []
        self.export_button.disabled = True
        self.status_html.value = "<code>starting export</code>"
        ctx = contextvars.copy_context()  # widget updates from a thread need the kernel's context
        self._thread = threading.Thread(target=ctx.run, args=(self._export_safely, options), daemon=True,
                                        name="nbtune-export")
        self._thread.start()

    def wait(self, timeout_s: float | None = None) -> "ExportPanel":
        """Block until the export thread ends (for scripts and tests)."""
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _export_safely(self, options: dict[str, Any]) -> None:
        try:
            self.show_report(self.run.export(**options, on_stage=self._on_stage))
            self._set_status("done")
        except ParityError as exc:
            self.show_report(exc.report)
            self._set_status("parity failed")
            self.show_error(f"ParityError: {exc}")
        except Exception as exc:  # noqa: BLE001 - shown in the panel instead of lost in a thread
            self._set_status("failed")
            self.show_error(f"{type(exc).__name__}: {exc}", traceback.format_exc())
        finally:
            self.export_button.disabled = False

    def _on_stage(self, name: str) -> None:
        self.stages.append((str(name), time.monotonic()))
        self._set_status("running" if name != "done" else "done")

    def _set_status(self, state: str) -> None:
        self.status_html.value = stages_html(self.stages, state)

    def _guard(self, action) -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - a button's failure is shown, never lost in a callback
            self.export_button.disabled = self.is_running
            self.show_error(f"{type(exc).__name__}: {exc}", traceback.format_exc())

    def show_error(self, message: str, traceback_text: str | None = None) -> None:
        self.error = self.error or message
        details = (f"<details><summary>traceback</summary><pre>{html.escape(traceback_text)}</pre></details>"
                   if traceback_text else "")
        self.error_html.value = f'<div style="color:{RED}"><b>Error:</b> {html.escape(message)}{details}</div>'
        self.error_html.layout.display = None

    # ---- rendering ----
    def show_report(self, report: ExportReport) -> None:
        """Draw `report` (and keep it as `panel.report`): tables, charts, files, notes and failures."""
        self.report = report
        self.header_html.value = header_html(report)
        self.messages_html.value = messages_html(report)
        self.parity_html.value = parity_table_html(report)
        self.latency_html.value = latency_table_html(report)
        self.files_html.value = files_html(report)
        for fig, new in ((self.latency_fig, ef.latency_figure(report)),
                         (self.throughput_fig, ef.throughput_figure(report))):
            with fig.batch_update():
                bar, src = fig.data[0], new.data[0]
                bar.x, bar.y, bar.text, bar.marker.color = src.x, src.y, src.text, src.marker.color
                fig.layout.title.text = new.layout.title.text
        self.charts.layout.display = None if report.latency else "none"


# ---- pure HTML builders (every piece of report text escaped) ----
def header_html(report: ExportReport) -> str:
    e = html.escape
    verdict = (f'<b style="color:{GREEN}" class="nbtune-export-verdict" data-passed="true">parity OK</b>'
               if report.passed else
               f'<b style="color:{RED}" class="nbtune-export-verdict" data-passed="false">PARITY FAILED</b>')
    return (f"<b>Export</b> · model <span class=\"nbtune-export-model\">{e(report.model_name)}</span> · "
            f"{e(report.task)} · <code>{e(report.output_dir)}</code> · {verdict}")


def stages_html(stages: list[tuple[str, float]], state: str) -> str:
    """The stages so far with the seconds each took; the last one is still running unless state says done."""
    now = time.monotonic()
    parts = []
    for i, (name, began) in enumerate(stages):
        if name == "done":
            continue
        ended = stages[i + 1][1] if i + 1 < len(stages) else (None if state == "running" else now)
        parts.append(f"{name} …" if ended is None else f"{name} {ended - began:.1f} s")
    return f"<code>{html.escape(state)}: {html.escape(' → '.join(parts) or 'starting')}</code>"


def _checks_html(report: ExportReport, p: Any) -> str:
    """One pass/fail mark per threshold that applies to this variant (those in report.thresholds)."""
    marks = []
    for key, variant, label, value, ok in CHECKS:
        if variant != p.variant or key not in report.thresholds:
            continue
        passed = bool(ok(value(p), float(report.thresholds[key])))
        text = f"{'pass' if passed else 'FAIL'}: {label(float(report.thresholds[key]))}"
        marks.append(f'<span class="nbtune-export-check" data-check="{html.escape(key)}" '
                     f'data-pass="{str(passed).lower()}" style="color:{GREEN if passed else RED}">'
                     f"{html.escape(text)}</span>")
    return "<br>".join(marks) or "—"


def parity_table_html(report: ExportReport) -> str:
    """variant, rows, max and mean |Δlogit| (.2e), label agreement (.2%), metric with PyTorch and exported
    (.4f), drop in points (+.2f), greedy agreement for causal LMs (.0%), pass/fail per threshold."""
    if not report.parity:
        return ""
    e = html.escape
    greedy = any(p.generation_agreement is not None for p in report.parity)
    head = ["variant", "rows", "max |Δlogit|", "mean |Δlogit|", "agreement", "metric", "PyTorch", "exported",
            "drop (pt)", *(["greedy same"] if greedy else []), "checks"]
    rows = []
    for p in report.parity:
        cells = {"variant": e(p.variant), "rows": str(int(p.rows)), "max_diff": f"{p.max_abs_logit_diff:.2e}",
                 "mean_diff": f"{p.mean_abs_logit_diff:.2e}", "agreement": f"{p.label_agreement:.2%}",
                 "metric_name": e(p.metric_name), "reference_metric": f"{p.reference_metric:.4f}",
                 "metric": f"{p.metric:.4f}", "drop_pt": f"{p.metric_drop * 100:+.2f}"}
        if greedy:
            cells["greedy"] = "—" if p.generation_agreement is None else f"{p.generation_agreement:.0%}"
        cells["checks"] = _checks_html(report, p)
        rows.append(f'<tr data-variant="{e(p.variant)}">'
                    + "".join(f'<td data-col="{k}">{v}</td>' for k, v in cells.items()) + "</tr>")
    return _table_html("Parity with PyTorch", "nbtune-export-parity-table", head, rows)


def latency_table_html(report: ExportReport) -> str:
    """backend, batch-1 p50 and p95 ms (.2f), batch-32 samples/s (.1f), speed-up vs eager at both (x.2f),
    tokens per row and threads."""
    if not report.latency:
        return ""
    e = html.escape
    head = ["backend", "p50 ms (batch 1)", "p95 ms (batch 1)", "samples/s (batch 32)", "speed-up batch 1",
            "speed-up batch 32", "tokens", "threads"]
    rows = []
    for t in report.latency:
        s1, s32 = report.speedup(t.backend, 1), report.speedup(t.backend, 32)
        cells = {"backend": e(t.backend), "p50_ms": f"{t.batch1_p50_ms:.2f}", "p95_ms": f"{t.batch1_p95_ms:.2f}",
                 "samples_per_second": f"{t.batch32_samples_per_second:.1f}",
                 "speedup_batch1": "—" if s1 is None else f"x{s1:.2f}",
                 "speedup_batch32": "—" if s32 is None else f"x{s32:.2f}",
                 "tokens": str(int(t.sequence_length)), "threads": str(int(t.threads))}
        rows.append(f'<tr data-backend="{e(t.backend)}">'
                    + "".join(f'<td data-col="{k}">{v}</td>' for k, v in cells.items()) + "</tr>")
    return _table_html("Latency", "nbtune-export-latency-table", head, rows)


def _table_html(title: str, css_class: str, head: list[str], rows: list[str]) -> str:
    """A titled table; `head` is escaped here, `rows` are <tr> strings whose cells the caller escaped."""
    return (f"<b>{html.escape(title)}</b>"
            f'<table class="{css_class}" style="font-size:12px"><thead><tr>'
            + "".join(f"<th>{html.escape(h)}</th>" for h in head)
            + f"</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def files_html(report: ExportReport) -> str:
    """The files written, one per line: what it is and its path."""
    if not report.files:
        return ""
    e = html.escape
    items = "".join(f'<li data-file="{e(kind)}">{e(kind)}: <code>{e(str(path))}</code></li>'
                    for kind, path in report.files.items())
    return f'<b>Files written</b><ul class="nbtune-export-files-list">{items}</ul>'


def messages_html(report: ExportReport) -> str:
    """Failures (red, one per missed threshold) and notes (what was skipped and why)."""
    e = html.escape
    failures = "".join(f'<li class="nbtune-export-failure" style="color:{RED}">{e(f)}</li>' for f in report.failures)
    notes = "".join(f'<li class="nbtune-export-note">{e(n)}</li>' for n in report.notes)
    return ((f"<b style=\"color:{RED}\">Failures</b><ul>{failures}</ul>" if failures else "")
            + (f"<b>Notes</b><ul>{notes}</ul>" if notes else ""))
