"""Reliability catalogue tests (docs/reliability.md) and the fault-injection harness they share (harness.py)."""
