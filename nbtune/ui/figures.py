"""Pure plotly figure builders: ``RunHistory -> go.Figure``. They never show or write anything.

The numbers come from :mod:`nbtune.history`; this module only decides how they look. Each
builder always emits the same traces in the same order (empty when there is no data yet), so a
live panel can update a FigureWidget trace by name without rebuilding it.

User-derived text (group names, edit values) is passed through ``plotly_text`` (``html.escape``, and ``$`` as an
entity) before it reaches plotly, because plotly renders trace names and hover text as a small subset of HTML
and typesets ``$...$`` with MathJax.

    >>> from nbtune.history import read_history          # doctest: +SKIP
    >>> loss_figure(read_history("runs/demo")).show()     # doctest: +SKIP
"""

from __future__ import annotations

import html
from typing import Any

import plotly.graph_objects as go

from nbtune.history import RunHistory, loss_info
from nbtune.labels import edit_label

TRAIN_COLOR = "#1f77b4"
VAL_COLOR = "#d62728"
GAP_FILL = "rgba(214, 39, 40, 0.15)"
EDIT_COLOR = "#7f7f7f"
BAND_FILL = "rgba(44, 160, 44, 0.12)"
# Qualitative colours for per-group traces; cycled when there are more groups.
GROUP_COLORS = ("#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
DEFAULT_HEALTHY_BAND = (0.5, 2.0)


def plotly_text(value: Any) -> str:
    """User text for a plotly label, title, trace name or hover text: HTML-escaped, and each `$` written as the
    entity `&#36;`, because plotly.js hands a string that starts and ends with `$` to MathJax when the page has it
    (and MathJax's `\\href{javascript:...}` is a link). plotly.js decodes the entity, so a `$` still shows as `$`.

        >>> plotly_text("$<b>5</b>$")
        '&#36;&lt;b&gt;5&lt;/b&gt;&#36;'
    """
    return html.escape(str(value)).replace("$", "&#36;")


def _base_layout(fig: go.Figure, title: str, y_title: str) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.01},
        template="plotly_white",
        height=340,
        margin={"l": 60, "r": 30, "t": 60, "b": 45},
        hovermode="x unified",
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0},
        xaxis={"title": {"text": "step"}},
        yaxis={"title": {"text": y_title}},
    )
    return fig


def _edits_by_step(history: RunHistory) -> dict[int, list[str]]:
    """Escaped edit labels grouped by step, so edits made at one boundary share one marker."""
    grouped: dict[int, list[str]] = {}
    for edit in history.edits:
        step = edit.get("step")
        if isinstance(step, (int, float)) and not isinstance(step, bool):
            grouped.setdefault(int(step), []).append(plotly_text(edit_label(edit)))
    return grouped


Series = dict[str, tuple[list[Any], list[Any]]]


def edit_markers(history: RunHistory) -> tuple[list[int], list[str]]:
    """Steps that carry live edits and the (escaped) hover text of each marker."""
    grouped = _edits_by_step(history)
    return list(grouped), ["<br>".join(labels) for labels in grouped.values()]


def edit_shapes(steps: list[int]) -> list[dict[str, Any]]:
    """One dotted vertical line per edit step, spanning the plot height."""
    return [{"type": "line", "xref": "x", "yref": "paper", "x0": s, "x1": s, "y0": 0, "y1": 1, "layer": "below",
             "line": {"color": EDIT_COLOR, "width": 1, "dash": "dot"}} for s in steps]


def _edit_series(history: RunHistory) -> Series:
    steps, _ = edit_markers(history)
    return {"edits": (steps, [0.97] * len(steps))}


def loss_series(history: RunHistory, smoothing: float = 0.9) -> Series:
    """The loss chart's data, trace name -> (x, y); see `loss_figure` for the traces."""
    info = loss_info(history, smoothing)
    return {"train loss": (info.steps, info.loss), "train loss (EMA)": (info.steps, info.loss_ema),
            "train EMA at eval": (info.val_steps, info.ema_at_val), "train/val gap": (info.val_steps, info.val_loss),
            "validation loss": (info.val_steps, info.val_loss), **_edit_series(history)}


def grad_norm_series(history: RunHistory) -> Series:
    """Total and per-group pre-clip gradient norm, and the clipped steps."""
    clipped = [i for i, was_clipped in enumerate(history.clipped) if was_clipped]
    out: Series = {"grad norm": (history.steps, history.grad_norm),
                   "clipped": ([history.steps[i] for i in clipped], [history.grad_norm[i] for i in clipped])}
    for group, values in history.grad_norm_groups.items():
        out[f"grad norm: {plotly_text(group)}"] = (history.steps, values)
    return out


def lr_series(history: RunHistory) -> Series:
    """Learning rate per parameter group (trace named by the escaped group name), then the edits."""
    out: Series = {plotly_text(group): (history.steps, values) for group, values in history.lr.items()}
    return {**out, **_edit_series(history)}


def throughput_series(history: RunHistory) -> Series:
    return {"samples/s": (history.steps, history.samples_per_second),
            "tokens/s": (history.steps, history.tokens_per_second)}


def chart_series(history: RunHistory, smoothing: float = 0.9) -> dict[str, Series]:
    """Every chart's data without building figures: what a live view copies into its widgets.

        >>> sorted(chart_series(RunHistory()))
        ['grad_norm', 'loss', 'lr', 'throughput']
    """
    return {"loss": loss_series(history, smoothing), "grad_norm": grad_norm_series(history),
            "lr": lr_series(history), "throughput": throughput_series(history)}


def _add_edit_markers(fig: go.Figure, history: RunHistory) -> None:
    """Vertical dotted lines at each edit, plus a hoverable marker at the top of each line.

    Shapes cannot carry hover text, so the markers live on a hidden 0..1 axis overlaying the
    data axis: they sit at the top of the plot whatever the loss range is.
    """
    steps, hover = edit_markers(history)
    fig.update_layout(shapes=edit_shapes(steps))
    fig.add_trace(go.Scatter(
        x=steps, y=[0.97] * len(steps), yaxis="y2", name="edits", mode="markers",
        marker={"symbol": "triangle-down", "size": 10, "color": EDIT_COLOR},
        hovertext=hover, hoverinfo="text",
    ))
    fig.update_layout(yaxis2={"overlaying": "y", "range": [0, 1], "visible": False, "fixedrange": True})


def loss_figure(history: RunHistory, smoothing: float = 0.9) -> go.Figure:
    """Train loss (raw and EMA), validation loss, the shaded train/val gap, and live edits.

    Traces, in order: ``train loss``, ``train loss (EMA)``, ``train EMA at eval`` (hidden lower
    edge of the gap), ``train/val gap``, ``validation loss``, ``edits``.

        >>> fig = loss_figure(read_history("runs/demo"))      # doctest: +SKIP
        >>> [t.name for t in fig.data][:2]                    # doctest: +SKIP
        ['train loss', 'train loss (EMA)']
    """
    s = loss_series(history, smoothing)
    style: dict[str, dict[str, Any]] = {
        "train loss": {"mode": "lines", "line": {"color": TRAIN_COLOR, "width": 1}, "opacity": 0.35},
        "train loss (EMA)": {"mode": "lines", "line": {"color": TRAIN_COLOR, "width": 2}},
        # The gap is filled between two traces ("tonexty"), so the EMA read at the eval steps is
        # drawn as an invisible line right before the filled one.
        "train EMA at eval": {"mode": "lines", "line": {"width": 0}, "showlegend": False, "hoverinfo": "skip"},
        "train/val gap": {"mode": "lines", "line": {"width": 0}, "fill": "tonexty", "fillcolor": GAP_FILL,
                          "hoverinfo": "skip"},
        "validation loss": {"mode": "lines+markers", "line": {"color": VAL_COLOR, "width": 2}, "marker": {"size": 7}},
    }
    fig = go.Figure()
    for name, kwargs in style.items():
        x, y = s[name]
        fig.add_trace(go.Scatter(x=x, y=y, name=name, **kwargs))
    _add_edit_markers(fig, history)
    return _base_layout(fig, "Loss", "loss")


GROUP_LINE = {"grad_norm": {"width": 1, "dash": "dot"}, "lr": {"width": 2}}


def group_trace(chart: str, name: str, index: int, x: Any = (), y: Any = ()) -> go.Scatter:
    """The line of one parameter group on the ``grad_norm`` or ``lr`` chart (the index picks its colour).
    A live view adds it when a group first appears, without building a whole figure."""
    return go.Scatter(x=x, y=y, name=name, mode="lines",
                      line={"color": GROUP_COLORS[index % len(GROUP_COLORS)], **GROUP_LINE[chart]})


def _group_traces(fig: go.Figure, series: Series, names: list[str], chart: str) -> None:
    for i, name in enumerate(names):
        fig.add_trace(group_trace(chart, name, i, *series[name]))


def grad_norm_figure(
    history: RunHistory,
    healthy_band: tuple[float, float] | None = DEFAULT_HEALTHY_BAND,
    log_y: bool = False,
) -> go.Figure:
    """Total gradient norm, one line per parameter group, clipped steps, and the healthy band.

    The band is a shaded rectangle (a layout shape, not a trace); pass ``healthy_band=None`` to
    leave it out. Traces: ``grad norm``, ``clipped``, then ``grad norm: <group>`` per group.

        >>> fig = grad_norm_figure(history, healthy_band=(0.3, 1.5))   # doctest: +SKIP
    """
    s = grad_norm_series(history)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=s["grad norm"][0], y=s["grad norm"][1], name="grad norm", mode="lines",
                             line={"color": TRAIN_COLOR, "width": 2}))
    fig.add_trace(go.Scatter(x=s["clipped"][0], y=s["clipped"][1], name="clipped", mode="markers",
                             marker={"color": VAL_COLOR, "size": 6, "symbol": "x"}))
    _group_traces(fig, s, [n for n in s if n.startswith("grad norm: ")], "grad_norm")
    if healthy_band is not None:
        low, high = healthy_band
        fig.add_hrect(
            y0=low, y1=high, fillcolor=BAND_FILL, line_width=0, layer="below",
            annotation_text=f"healthy {low:g}–{high:g}", annotation_position="top left",
        )
    _base_layout(fig, "Gradient norm", "grad norm (L2, before clipping)")
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def lr_figure(history: RunHistory) -> go.Figure:
    """Learning rate per parameter group, with live edits marked.

    Traces: one per group, named by the group, then ``edits``.

        >>> [t.name for t in lr_figure(history).data]          # doctest: +SKIP
        ['embeddings', 'encoder', 'head', 'edits']
    """
    s = lr_series(history)
    fig = go.Figure()
    _group_traces(fig, s, [n for n in s if n != "edits"], "lr")
    _add_edit_markers(fig, history)
    _base_layout(fig, "Learning rate per parameter group", "learning rate")
    fig.update_yaxes(exponentformat="e", showexponent="all")
    return fig


def throughput_figure(history: RunHistory) -> go.Figure:
    """Training throughput: samples/s on the left axis, tokens/s on the right.

    Traces: ``samples/s``, ``tokens/s``.

        >>> [t.name for t in throughput_figure(history).data]  # doctest: +SKIP
        ['samples/s', 'tokens/s']
    """
    s = throughput_series(history)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=s["samples/s"][0], y=s["samples/s"][1], name="samples/s", mode="lines",
                             line={"color": TRAIN_COLOR, "width": 2}))
    fig.add_trace(go.Scatter(x=s["tokens/s"][0], y=s["tokens/s"][1], name="tokens/s", mode="lines",
                             yaxis="y2", line={"color": GROUP_COLORS[0], "width": 1, "dash": "dot"}))
    _base_layout(fig, "Throughput", "samples / s")
    fig.update_layout(
        yaxis={"rangemode": "tozero"},
        yaxis2={"overlaying": "y", "side": "right", "title": {"text": "tokens / s"},
                "showgrid": False, "rangemode": "tozero"},
    )
    return fig


def run_figures(history: RunHistory, **grad_norm_options: Any) -> dict[str, go.Figure]:
    """All four charts, keyed ``loss``, ``grad_norm``, ``lr``, ``throughput``.

        >>> figs = run_figures(read_history("runs/demo"), healthy_band=(0.3, 1.5))  # doctest: +SKIP
    """
    return {
        "loss": loss_figure(history),
        "grad_norm": grad_norm_figure(history, **grad_norm_options),
        "lr": lr_figure(history),
        "throughput": throughput_figure(history),
    }
