"""Notebook UI: the only package that imports ipywidgets, anywidget, plotly or IPython."""
