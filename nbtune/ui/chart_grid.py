"""The chart grid every panel uses: charts of a fixed width in a grid that wraps to one column when the
notebook is narrower than two charts.

Why fixed: plotly sizes a FigureWidget once, when it is first drawn; a widget drawn before its container has
a width gets plotly's default 700 px, and a two-column grid of minmax(0, 1fr) cells then clips its right side
(the newest points of a live chart). The browser tests assert that no chart is drawn wider than its cell.

    >>> grid = chart_grid([go.FigureWidget(), go.FigureWidget()])   # doctest: +SKIP
"""
from __future__ import annotations

from typing import Iterable

import ipywidgets as widgets

CHART_WIDTH_PX = 520


def chart_grid(figures: Iterable, width_px: int = CHART_WIDTH_PX) -> widgets.GridBox:
    figures = list(figures)
    for fig in figures:
        # autosize off too: with it on, a resize message that reaches a chart while its cell has no size yet
        # (a busy page) makes plotly.js fall back to 700 px, which a CI run caught in the tune panel.
        fig.layout.width, fig.layout.autosize = width_px, False
    return widgets.GridBox(figures, layout={
        "grid_template_columns": f"repeat(auto-fill, minmax({width_px + 10}px, 1fr))"})
