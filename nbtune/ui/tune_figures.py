"""Pure plotly builders for hyperparameter search, from the study's info objects (nbtune.tune.study:
`HistoryInfo`, `IntermediateInfo`, `params_info()`) and the LR range test's `LRFindResult`. The same split as
Optuna's visualisation (`_get_*_info` then `_get_*_plot`), without importing optuna.visualization.

Each builder emits the same traces for the same info, so the TunePanel can copy data into FigureWidgets built
once. Trial parameters are user data: names and values are escaped before plotly renders them.

    >>> fig = history_figure(study.history_info())     # doctest: +SKIP
"""
from __future__ import annotations

import html
import math
from typing import Any

import plotly.graph_objects as go

VALUE_COLOR = "#1f77b4"
BEST_COLOR = "#d62728"
PRUNED_COLOR = "rgba(127, 127, 127, 0.55)"
STATE_COLORS = {"PRUNED": PRUNED_COLOR, "FAIL": "#d62728"}
# Complete and running trials get a colour each, cycled (trial number mod len).
TRIAL_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def padded_range(values: list[float], pad: float = 0.08, minimum: float = 1e-9) -> list[float] | None:
    """An explicit axis range around the values (None when empty). Live widgets get explicit ranges because a
    FigureWidget keeps the range plotly.js computed for its first data and may not re-autorange later."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return None
    low, high = min(finite), max(finite)
    span = max(high - low, abs(high) * 0.05, minimum)
    return [low - pad * span, high + pad * span]


def _layout(fig: go.Figure, title: str, x_title: str, y_title: str) -> go.Figure:
    fig.update_layout(title={"text": html.escape(title), "x": 0.01}, template="plotly_white", height=320,
                      margin={"l": 60, "r": 30, "t": 55, "b": 45},
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "xanchor": "right", "x": 1.0},
                      xaxis={"title": {"text": x_title}}, yaxis={"title": {"text": html.escape(y_title)}})
    return fig


def history_series(info: Any) -> dict[str, tuple[list, list]]:
    """trace name -> (trial numbers, values): each complete trial's value and the best so far."""
    return {"value": (list(info.numbers), list(info.values)), "best so far": (list(info.numbers), list(info.best_values))}


def history_figure(info: Any) -> go.Figure:
    """Optimisation history: one marker per complete trial, and the best value so far as a step line."""
    series = history_series(info)
    fig = go.Figure([
        go.Scatter(name="value", x=series["value"][0], y=series["value"][1], mode="markers",
                   marker={"color": VALUE_COLOR, "size": 8}, hovertemplate="trial %{x}: %{y:.4g}<extra></extra>"),
        go.Scatter(name="best so far", x=series["best so far"][0], y=series["best so far"][1], mode="lines",
                   line={"color": BEST_COLOR, "shape": "hv"}, hoverinfo="skip"),
    ])
    better = "higher" if info.direction == "maximize" else "lower"
    return _layout(fig, f"Optimisation history ({info.metric}, {better} is better)", "trial", info.metric)


def intermediate_traces(info: Any) -> list[dict[str, Any]]:
    """One trace per trial that reported: validation value by step; pruned/failed trials grey and dashed."""
    out = []
    for t in info.trials:
        state = str(t["state"])
        out.append({"name": f"trial {t['number']}", "x": list(t["steps"]), "y": list(t["values"]),
                    "state": state,
                    "color": STATE_COLORS.get(state, TRIAL_COLORS[int(t["number"]) % len(TRIAL_COLORS)]),
                    "dash": "dot" if state in ("PRUNED", "FAIL") else "solid"})
    return out


def intermediate_trace(t: dict[str, Any]) -> go.Scatter:
    return go.Scatter(name=t["name"], x=t["x"], y=t["y"], mode="lines+markers",
                      line={"color": t["color"], "dash": t["dash"], "width": 1.5}, marker={"size": 5},
                      hovertemplate=f"{t['name']} ({t['state'].lower()})<br>step %{{x}}: %{{y:.4g}}<extra></extra>")


def intermediate_figure(info: Any) -> go.Figure:
    """Intermediate values: every trial's validation metric at each evaluation (what the pruner compares)."""
    fig = go.Figure([intermediate_trace(t) for t in intermediate_traces(info)])
    fig.update_layout(showlegend=False)
    return _layout(fig, f"Intermediate values ({info.metric} at each evaluation)", "step", info.metric)


def _is_log(values: list[float]) -> bool:
    positive = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0]
    return len(positive) == len(values) and len(values) > 1 and max(positive) / min(positive) >= 100


def parallel_dimensions(params: dict) -> list[dict[str, Any]]:
    """Parcoords dimensions: one per parameter (numbers on a log10 axis when they span >= 2 decades,
    categories as indices with their labels), then the objective value."""
    trials = params["trials"]
    names = sorted({k for t in trials for k in t["params"]})
    dims = []
    for name in names:
        raw = [t["params"].get(name) for t in trials]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
        if numeric and _is_log(raw):
            dims.append({"label": f"log10 {html.escape(name)}", "values": [math.log10(v) for v in raw]})
        elif numeric:
            dims.append({"label": html.escape(name), "values": [float(v) for v in raw]})
        else:
            cats = sorted({str(v) for v in raw})
            dims.append({"label": html.escape(name), "values": [cats.index(str(v)) for v in raw],
                         "tickvals": list(range(len(cats))), "ticktext": [html.escape(c) for c in cats]})
    dims.append({"label": html.escape(params["metric"]), "values": [t["value"] for t in trials]})
    return dims


def parallel_figure(params: dict) -> go.Figure:
    """Parallel coordinates of the complete trials, coloured by the objective value."""
    dims = parallel_dimensions(params)
    values = dims[-1]["values"]
    fig = go.Figure([go.Parcoords(name="trials", dimensions=dims,
                                  line={"color": values, "colorscale": "Viridis", "showscale": bool(values)})])
    _layout(fig, "Parallel coordinates (complete trials)", "", "")
    fig.update_layout(margin={"l": 60, "r": 60, "t": 95, "b": 30})  # room for the axis labels under the title
    return fig


def importance_series(params: dict) -> tuple[list[float], list[str]]:
    """(importances, parameter names), least important first (a horizontal bar chart reads top-down)."""
    items = sorted(params.get("importances", {}).items(), key=lambda kv: kv[1])
    return [float(v) for _, v in items], [html.escape(k) for k, _ in items]


def importance_figure(params: dict) -> go.Figure:
    """Parameter importances (fANOVA); empty until two complete trials differ."""
    x, y = importance_series(params)
    fig = go.Figure([go.Bar(name="importance", x=x, y=y, orientation="h", marker={"color": VALUE_COLOR},
                            hovertemplate="%{y}: %{x:.3f}<extra></extra>")])
    title = "Parameter importances" + ("" if x else " (after two complete trials that differ)")
    return _layout(fig, title, "importance", "")


def lr_find_figure(result: Any) -> go.Figure:
    """The LR range test: loss (raw and smoothed) against learning rate on a log axis, the suggestion and
    the usual range for the mode shaded beside it."""
    fig = go.Figure([
        go.Scatter(name="loss", x=list(result.lrs), y=list(result.losses), mode="lines",
                   line={"color": "rgba(31, 119, 180, 0.35)"}),
        go.Scatter(name="smoothed", x=list(result.lrs), y=list(result.smoothed), mode="lines",
                   line={"color": VALUE_COLOR}),
    ])
    low, high = result.usual_range
    fig.add_vrect(x0=low, x1=high, fillcolor="rgba(44, 160, 44, 0.12)", line_width=0,
                  annotation_text="usual range", annotation_position="top left")
    fig.add_vline(x=result.suggestion, line={"color": BEST_COLOR, "dash": "dash"},
                  annotation_text=f"starting point {result.suggestion:.2g}")
    _layout(fig, f"LR range test ({result.mode})", "learning rate", "loss")
    fig.update_xaxes(type="log")
    return fig
