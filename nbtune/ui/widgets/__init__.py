"""Small custom anywidgets; their ES modules live in static/ (never JavaScript spliced into strings)."""
from nbtune.ui.widgets.attention import AttentionView
from nbtune.ui.widgets.heatmap import TokenHeatmap

__all__ = ["AttentionView", "TokenHeatmap"]
