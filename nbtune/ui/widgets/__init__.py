"""Small custom anywidgets; their ES modules live in static/ (never JavaScript spliced into strings)."""
