"""Pure plotly builders for the data panel: ``DataReport`` parts -> ``go.Figure``. Nothing is shown here.

User text (label names, flag examples) goes through ``nbtune.ui.figures.plotly_text`` before it reaches plotly,
which renders trace names, tick labels and hover text as a subset of HTML (and ``$...$`` with MathJax).

    >>> from nbtune.data.inspect import inspect                       # doctest: +SKIP
    >>> label_figure(inspect(ds).label_distribution).show()           # doctest: +SKIP
"""
from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

from nbtune.ui.figures import GROUP_COLORS, TRAIN_COLOR, VAL_COLOR, plotly_text

SPLIT_COLORS = {"train": TRAIN_COLOR, "validation": VAL_COLOR, "test": GROUP_COLORS[1]}


def _layout(fig: go.Figure, title: str, x_title: str, y_title: str) -> go.Figure:
    fig.update_layout(title={"text": title, "x": 0.01}, template="plotly_white", height=320,
                      margin={"l": 60, "r": 20, "t": 55, "b": 60}, bargap=0.15,
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0},
                      xaxis={"title": {"text": x_title}}, yaxis={"title": {"text": y_title}})
    return fig


def label_figure(dist: Any) -> go.Figure:
    """Rows per label, one bar group per split; the title gives the train imbalance ratio.

    Traces: one per split, named by the split.
    """
    fig = go.Figure()
    names = [plotly_text(n) for n in dist.label_names]
    for i, (split, counts) in enumerate(dist.counts.items()):
        fig.add_trace(go.Bar(x=names, y=[counts.get(n, 0) for n in dist.label_names], name=plotly_text(split),
                             marker_color=SPLIT_COLORS.get(split, GROUP_COLORS[i % len(GROUP_COLORS)])))
    ratio = dist.imbalance_ratio
    title = (f"Labels · imbalance {ratio:.1f}× ({plotly_text(dist.majority)} vs "
             f"{plotly_text(dist.minority)})" if np.isfinite(ratio) else "Labels")
    _layout(fig, title, "label", "rows")
    fig.update_layout(barmode="group")
    return fig


def length_figure(lengths: Any) -> go.Figure:
    """Histogram of lengths (tokens under the run's tokenizer, or characters), with max_length marked and the
    truncation rate in the title. Traces: ``rows``."""
    edges, counts = lengths.histogram
    edges = np.asarray(edges, dtype=float)
    centers = (edges[:-1] + edges[1:]) / 2 if len(edges) > 1 else edges
    fig = go.Figure(go.Bar(x=centers, y=np.asarray(counts), width=np.diff(edges) if len(edges) > 1 else None,
                           name="rows", marker_color=TRAIN_COLOR))
    p = lengths.percentiles
    title = f"Length ({lengths.unit}) · median {p.get(50, 0):.0f}, p95 {p.get(95, 0):.0f}, max {p.get(100, 0):.0f}"
    if lengths.max_length:
        fig.add_vline(x=lengths.max_length, line={"color": VAL_COLOR, "dash": "dash"},
                      annotation_text=f"max_length {lengths.max_length}", annotation_position="top right")
        title += f" · {lengths.truncation_rate:.1%} truncated"
    return _layout(fig, title, lengths.unit, "rows")


def flags_figure(counts: dict[str, int], total: int) -> go.Figure:
    """How many rows carry each flag (duplicate, near-duplicate, leaked, html, url, ...). Traces: ``rows``."""
    names = list(counts)
    values = [counts[n] for n in names]
    text = [f"{v:,} ({v / total:.1%})" if total else str(v) for v in values]
    fig = go.Figure(go.Bar(x=names, y=values, text=text, textposition="outside", name="rows",
                           marker_color=[VAL_COLOR if v else "#bbbbbb" for v in values]))
    _layout(fig, f"Flags · {total:,} rows", "flag", "rows")
    fig.update_yaxes(rangemode="tozero")
    return fig


def script_figure(mix: Any) -> go.Figure:
    """Rows per dominant writing system (Latin, Han, ..., Mixed). Traces: ``rows``."""
    names = [n for n in mix.counts if mix.counts[n]]
    fig = go.Figure(go.Bar(x=[plotly_text(n) for n in names], y=[mix.counts[n] for n in names], name="rows",
                           marker_color=GROUP_COLORS[2]))
    return _layout(fig, "Script mix (dominant script per row)", "script", "rows")
