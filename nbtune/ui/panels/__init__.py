"""Notebook panels built from ipywidgets and plotly FigureWidgets (the only place, with nbtune.ui, that imports them)."""
