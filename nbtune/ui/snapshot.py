"""The static snapshot a live panel leaves in the notebook when its run ends: the four charts as one PNG.

Widget state needs a live kernel, so without a snapshot a saved and reopened notebook (or GitHub's viewer, or
nbconvert) would show no curves. A PNG renders everywhere, also in untrusted notebooks where HTML scripts are
stripped, and weighs ~100 KB instead of the ~4.6 MB of an inline plotly.js. The charts are drawn from the same
series as the live figures (`nbtune.ui.figures.chart_series`), with matplotlib's Agg canvas directly: no
pyplot, so the user's backend and open figures are untouched.

    >>> from nbtune.history import RunHistory
    >>> snapshot_png(RunHistory())[:8] == b"\\x89PNG\\r\\n\\x1a\\n"
    True
"""
from __future__ import annotations

import base64
import html
import io
from typing import Any

from nbtune.history import RunHistory, summary
from nbtune.ui import figures

_TITLES = {"loss": "Loss", "grad_norm": "Gradient norm (pre-clip)", "lr": "Learning rate per group",
           "throughput": "Throughput (samples/s)"}


def headline(history: RunHistory) -> str:
    """One line: status, steps, model and data, best validation metric.

        >>> headline(RunHistory())
        'nbtune run not started: step 0 (? on ?)'
    """
    s = summary(history)
    status = f" {s['status']}" if s.get("status") else ""
    total = f" of {s['total_steps']}" if s.get("total_steps") else ""
    best = (f"; best {s['best_metric']} {s['best_value']:.4g} @ step {s['best_step']}"
            if s.get("best_metric") else "")
    return (f"nbtune run{status}: step {s.get('last_step') or 0}{total} "
            f"({s.get('model') or '?'} on {s.get('dataset') or '?'}){best}")


def _text(value: str) -> str:
    """Matplotlib reads `$...$` as math (and raises on bad math): user text is shown literally."""
    return html.unescape(value).replace("$", r"\$")


def _plot(ax: Any, key: str, series: figures.Series, healthy_band: tuple[float, float] | None) -> None:
    for name, (xs, ys) in series.items():
        if name in ("edits", "train EMA at eval", "train/val gap", "tokens/s") or not len(xs):
            continue
        style: dict[str, Any] = {"linewidth": 1.0}
        if name == "train loss":
            style = {"linewidth": 0.8, "alpha": 0.35, "color": figures.TRAIN_COLOR}
        elif name == "train loss (EMA)":
            style = {"linewidth": 1.8, "color": figures.TRAIN_COLOR}
        elif name == "validation loss":
            style = {"linewidth": 1.8, "color": figures.VAL_COLOR, "marker": "o", "markersize": 3}
        elif name == "clipped":
            style = {"linestyle": "none", "marker": "x", "color": figures.VAL_COLOR}
        ax.plot(xs, ys, label=_text(name), **style)
    if key == "loss":
        xs, low = series["train EMA at eval"]
        _, high = series["train/val gap"]
        if len(xs):
            ax.fill_between(xs, low, high, color=figures.VAL_COLOR, alpha=0.15, linewidth=0, label="train/val gap")
    if key == "grad_norm" and healthy_band is not None:
        ax.axhspan(*healthy_band, color="#2ca02c", alpha=0.12, linewidth=0, label="healthy band")
    for step in series.get("edits", ((), ()))[0]:
        ax.axvline(step, color=figures.EDIT_COLOR, linestyle=":", linewidth=1)
    if key == "lr":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    if key == "throughput" and len(series["tokens/s"][0]):
        twin = ax.twinx()
        twin.plot(*series["tokens/s"], color=figures.GROUP_COLORS[0], linestyle=":", linewidth=1, label="tokens/s")
        twin.set_ylabel("tokens/s", fontsize=8)
        twin.tick_params(labelsize=8)
        twin.set_ylim(bottom=0)
        ax.set_ylim(bottom=0)
    ax.set_title(_TITLES[key], fontsize=10, loc="left")
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")


def snapshot_png(history: RunHistory, healthy_band: tuple[float, float] | None = figures.DEFAULT_HEALTHY_BAND,
                 smoothing: float = 0.9, dpi: int = 90) -> bytes:
    """The four charts (loss with gap and edits, grad norm with the healthy band, LR, throughput) as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 6.6), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(_text(headline(history)), fontsize=11, x=0.01, ha="left")
    axes = fig.subplots(2, 2)
    series = figures.chart_series(history, smoothing)
    for ax, key in zip(axes.ravel(), ("loss", "grad_norm", "lr", "throughput")):
        _plot(ax, key, series[key], healthy_band)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def snapshot_bundle(history: RunHistory, healthy_band: tuple[float, float] | None = figures.DEFAULT_HEALTHY_BAND,
                    smoothing: float = 0.9) -> dict[str, str]:
    """A display bundle (`display(bundle, raw=True)`): the PNG, base64 as Jupyter expects, and a text line."""
    png = snapshot_png(history, healthy_band, smoothing)
    # The text fallback (an untrusted notebook, nbconvert to text) also gives the last loss and checkpoint.
    h = history
    text = headline(h) + (f"; loss {h.loss[-1]:.4g}" if h.loss else "") + (
        f"; checkpoint {h.checkpoints[-1].get('path')}" if h.checkpoints else "")
    return {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": text}
