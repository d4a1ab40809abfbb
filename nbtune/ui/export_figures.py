"""Pure plotly builders for the export report (nbtune.export.types.ExportReport): batch-1 p50 latency and
batch-32 throughput per backend, as two bar charts.

Compute -> info -> render: `latency_series` pulls the numbers out of the report, the builders draw them, and
the ExportPanel copies the same series into FigureWidgets built once. Every builder emits exactly one Bar trace,
so a panel can update it in place. Backend names come from the report file, which is user data: escaped.

    >>> fig = latency_figure(report)      # doctest: +SKIP
    >>> list(fig.data[0].x)               # doctest: +SKIP
    ['pytorch', 'onnx-fp32', 'onnx-int8']
"""
from __future__ import annotations

import html
from typing import Any

import plotly.graph_objects as go

BACKEND_COLORS = {"pytorch": "#7f7f7f", "onnx-fp32": "#1f77b4", "onnx-int8": "#2ca02c"}
OTHER_COLOR = "#9467bd"
LATENCY_TITLE = "p50 latency at batch 1 (ms)"
THROUGHPUT_TITLE = "throughput at batch 32 (samples/s)"


def latency_series(report: Any) -> dict[str, list]:
    """The bars of both charts, in the report's backend order.

    Returns {"backend": names (escaped), "p50_ms": batch-1 p50 in ms, "samples_per_second": batch-32 rate,
    "speedup_batch1": p50 ratio vs eager (None without a pytorch row), "speedup_batch32": throughput ratio}.

        >>> latency_series(report)["p50_ms"]     # doctest: +SKIP
        [12.5, 4.1, 2.9]
    """
    rows = list(report.latency)
    return {"backend": [html.escape(t.backend) for t in rows],
            "p50_ms": [float(t.batch1_p50_ms) for t in rows],
            "samples_per_second": [float(t.batch32_samples_per_second) for t in rows],
            "speedup_batch1": [report.speedup(t.backend, 1) for t in rows],
            "speedup_batch32": [report.speedup(t.backend, 32) for t in rows]}


def _setting(report: Any) -> str:
    """'128 tokens, 4 threads' when every backend ran with the same setting (they should: one process)."""
    rows = list(report.latency)
    if not rows:
        return "not measured"
    lengths = sorted({int(t.sequence_length) for t in rows})
    threads = sorted({int(t.threads) for t in rows})
    return (f"{'/'.join(map(str, lengths))} tokens, {'/'.join(map(str, threads))} "
            f"thread{'s' if threads != [1] else ''}")


def bar_texts(values: list[float], speedups: list[float | None], unit: str, digits: int) -> list[str]:
    """The label on each bar: the value, and the speed-up vs eager in brackets when there is one."""
    return [f"{v:.{digits}f} {unit}" + ("" if s is None else f" (x{s:.2f})") for v, s in zip(values, speedups)]


def _bar_figure(x: list[str], y: list[float], text: list[str], title: str, y_title: str) -> go.Figure:
    colors = [BACKEND_COLORS.get(b, OTHER_COLOR) for b in x]
    fig = go.Figure([go.Bar(name=y_title, x=x, y=y, text=text, textposition="auto", marker={"color": colors},
                            hovertemplate="%{x}: %{text}<extra></extra>")])
    fig.update_layout(title={"text": html.escape(title), "x": 0.01}, template="plotly_white", height=320,
                      margin={"l": 60, "r": 30, "t": 55, "b": 45}, showlegend=False,
                      xaxis={"title": {"text": "backend"}}, yaxis={"title": {"text": y_title}, "rangemode": "tozero"})
    return fig


def latency_figure(report: Any) -> go.Figure:
    """Batch-1 p50 latency per backend (lower is better); each bar says its speed-up vs PyTorch eager.

        >>> latency_figure(report).layout.yaxis.title.text     # doctest: +SKIP
        'p50 latency at batch 1 (ms)'
    """
    s = latency_series(report)
    return _bar_figure(s["backend"], s["p50_ms"], bar_texts(s["p50_ms"], s["speedup_batch1"], "ms", 2),
                       f"Batch-1 latency, p50 ({_setting(report)})", LATENCY_TITLE)


def throughput_figure(report: Any) -> go.Figure:
    """Batch-32 throughput per backend (higher is better); each bar says its speed-up vs PyTorch eager.

        >>> throughput_figure(report).layout.yaxis.title.text     # doctest: +SKIP
        'throughput at batch 32 (samples/s)'
    """
    s = latency_series(report)
    return _bar_figure(s["backend"], s["samples_per_second"],
                       bar_texts(s["samples_per_second"], s["speedup_batch32"], "/s", 1),
                       f"Batch-32 throughput ({_setting(report)})", THROUGHPUT_TITLE)
