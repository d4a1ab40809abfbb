"""Write a self-contained ``report.html`` for a run: summary, evals, edit log, charts, config.

The page works offline: plotly.js is embedded once, inline, and each chart is a div that calls
it. Every piece of text that came from the user or the run (model and dataset names, group and
label names, config values, edit values, messages) goes through ``html.escape``.

    >>> write_report("runs/demo")                          # doctest: +SKIP
    PosixPath('runs/demo/report.html')
"""

from __future__ import annotations

import datetime as _dt
import html
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

import plotly.io as pio
from plotly.offline import get_plotlyjs

from nbtune.history import (
    METRICS_FILENAME,
    RunHistory,
    final_evals,
    read_history,
    summary,
)
from nbtune.labels import edit_label, format_value, guard_label
from nbtune.ui.figures import DEFAULT_HEALTHY_BAND, run_figures
from nbtune.fileio import atomic_write_text

REPORT_FILENAME = "report.html"

_SUMMARY_LABELS = (
    ("status", "Status"),
    ("model", "Model"),
    ("dataset", "Dataset"),
    ("device", "Device"),
    ("precision", "Precision"),
    ("num_steps", "Steps logged"),
    ("last_step", "Last step"),
    ("total_steps", "Planned steps"),
    ("final_train_loss", "Final train loss"),
    ("best_metric", "Best validation metric"),
    ("best_value", "Best validation value"),
    ("best_step", "Best validation step"),
    ("mean_samples_per_second", "Mean samples/s"),
    ("wall_seconds", "Wall time (s)"),
    ("num_edits", "Live edits"),
    ("num_checkpoints", "Checkpoints"),
)

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1100px; padding: 0 1rem; color: #222; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f5f5f5; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: #777; }
.status-error, .status-stopped { color: #b00; }
.chart { margin: 1rem 0; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: Any) -> str:
    """One escaped table cell, numbers right-aligned and shortened."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return '<td class="muted">-</td>'
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        text = format_value(value) if isinstance(value, float) else str(value)
        return f'<td class="num">{_esc(text)}</td>'
    return f"<td>{_esc(value)}</td>"


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _flatten(config: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested config dict -> [("optimizer.lr", 3e-5), ...] for a two-column table."""
    if not isinstance(config, dict):
        return [(prefix or "value", config)]
    rows: list[tuple[str, Any]] = []
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            rows.extend(_flatten(value, name))
        else:
            plain = value is None or isinstance(value, (int, float, str))
            rows.append((name, value if plain else repr(value)))
    return rows


def _summary_section(info: dict[str, Any]) -> str:
    rows = [(label, info.get(key)) for key, label in _SUMMARY_LABELS]
    html_out = "<h2>Summary</h2>" + _table(("", "value"), rows)
    if info.get("message"):
        css = f"status-{_esc(info.get('status'))}"
        html_out += f'<p class="{css}">{_esc(info["message"])}</p>'
    return html_out


def _evals_section(history: RunHistory) -> str:
    finals = final_evals(history)
    if not finals:
        return '<h2>Final evaluation</h2><p class="muted">No evaluations were logged.</p>'
    metrics: list[str] = []
    for values in finals.values():
        metrics.extend(m for m in values if m not in metrics)
    rows = [[split, *(values.get(m) for m in metrics)] for split, values in finals.items()]
    return "<h2>Final evaluation</h2>" + _table(("split", *metrics), rows)


def _edits_section(history: RunHistory) -> str:
    if not history.edits:
        return '<h2>Live edits</h2><p class="muted">No live edits.</p>'
    rows = [
        (e.get("step"), e.get("name"), format_value(e.get("old")), format_value(e.get("new")), edit_label(e))
        for e in history.edits
    ]
    return "<h2>Live edits</h2>" + _table(("step", "name", "old", "new", "as drawn"), rows)


def _guard_section(history: RunHistory) -> str:
    if not history.guard:
        return ""
    rows = [(e.get("step"), e.get("event"), guard_label(e)) for e in history.guard]
    return "<h2>Guard events</h2>" + _table(("step", "event", "what happened"), rows)


def _checkpoints_section(history: RunHistory) -> str:
    if not history.checkpoints:
        return ""
    rows = [(c.get("step"), c.get("path")) for c in history.checkpoints]
    return "<h2>Checkpoints</h2>" + _table(("step", "path"), rows)


def _config_section(start: dict[str, Any] | None) -> str:
    config = (start or {}).get("config")
    if not config:
        return ""
    return "<h2>Configuration</h2>" + _table(("field", "value"), _flatten(config))


def _charts_section(history: RunHistory, healthy_band: tuple[float, float] | None) -> str:
    divs = []
    for name, fig in run_figures(history, healthy_band=healthy_band).items():
        # plotly.js is already inline in <head>, so each chart is only a div and a newPlot call.
        div = pio.to_html(
            fig, include_plotlyjs=False, full_html=False, default_height="360px",
            config={"displaylogo": False, "responsive": True},
        )
        divs.append(f'<div class="chart" id="chart-{name}">{div}</div>')
    return "<h2>Charts</h2>" + "".join(divs)


def render_report(
    history: RunHistory,
    title: str | None = None,
    healthy_band: tuple[float, float] | None = DEFAULT_HEALTHY_BAND,
) -> str:
    """The report page for a history, as one HTML string (plotly.js inline, works offline).

        >>> page = render_report(read_history("runs/demo"))   # doctest: +SKIP
        >>> page.startswith("<!DOCTYPE html>")                # doctest: +SKIP
        True
    """
    info = summary(history)
    if title is None:
        title = f"nbtune run: {info.get('model') or 'model'} on {info.get('dataset') or 'data'}"
    generated = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    body = "".join((
        f"<h1>{_esc(title)}</h1>",
        f'<p class="muted">Generated {_esc(generated)} from {_esc(METRICS_FILENAME)}'
        + (" (last line was cut off and skipped)" if history.truncated else "") + "</p>",
        _summary_section(info),
        _evals_section(history),
        _edits_section(history),
        _guard_section(history),
        _charts_section(history, healthy_band),
        _checkpoints_section(history),
        _config_section(history.start),
    ))
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n"
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n'
        f"</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def write_report(
    run_dir: str | Path,
    out_path: str | Path | None = None,
    healthy_band: tuple[float, float] | None = DEFAULT_HEALTHY_BAND,
) -> Path:
    """Read ``run_dir/metrics.jsonl`` and write ``report.html`` (by default into ``run_dir``).

    Returns the path written. The write is atomic (temp file in the same directory, then
    ``os.replace``), so a report open in a browser is never replaced by a partial one.

        >>> write_report("runs/demo")                          # doctest: +SKIP
        PosixPath('runs/demo/report.html')
        >>> write_report("runs/demo", "/tmp/demo.html")        # doctest: +SKIP
        PosixPath('/tmp/demo.html')
    """
    source = Path(run_dir)
    history = read_history(source)
    # A metrics.jsonl path works too; the report then goes next to it.
    run_dir = source.parent if source.is_file() else source
    target = Path(out_path) if out_path is not None else run_dir / REPORT_FILENAME
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, render_report(history, healthy_band=healthy_band))
    return target
