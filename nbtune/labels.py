"""One-line labels for what a run logged (live edits, guard events) and compact numbers, shared by the live panel,
its charts and the HTML report.

    >>> edit_label({"step": 120, "name": "lr", "old": 1e-4, "new": 5e-5})
    'step 120: lr 1e-4 -> 5e-5'
"""
from __future__ import annotations

import math
from typing import Any


def format_value(value: Any) -> str:
    """Short text for an edit value: ``1e-4`` rather than ``0.0001``; other values via ``str``.

        >>> format_value(0.0001), format_value(5e-05), format_value(1.0), format_value(None)
        ('1e-4', '5e-5', '1', 'None')
    """
    if isinstance(value, float) and math.isfinite(value) and value != 0.0:
        if abs(value) < 1e-3 or abs(value) >= 1e5:
            mantissa, exponent = f"{value:.3e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return f"{value:.4g}"
    return str(value)


def edit_label(edit: dict[str, Any]) -> str:
    """One line describing a live edit, as drawn on charts and listed in reports.

        >>> edit_label({"step": 120, "name": "lr", "old": 1e-4, "new": 5e-5})
        'step 120: lr 1e-4 -> 5e-5'
        >>> edit_label({"step": 80, "name": "pause", "old": None, "new": None})
        'step 80: pause'
    """
    head = f"step {edit.get('step', '?')}: {edit.get('name', 'edit')}"
    old, new = edit.get("old"), edit.get("new")
    if old is None and new is None:
        return head
    return f"{head} {format_value(old)} -> {format_value(new)}"


def guard_label(event: dict[str, Any]) -> str:
    """One line describing a guard event (engine/guard.py), as listed in the panel's log and in reports.

        >>> guard_label({"step": 50, "event": "nan_skipped", "reason": "loss", "skipped_steps": 1})
        'step 50: step skipped (non-finite loss; 1 skipped so far)'
        >>> guard_label({"step": 64, "event": "oom_backoff", "failed_micro_batch_size": 64, "micro_batch_size": 32,
        ...              "gradient_accumulation_steps": 2, "effective_batch_size": 64})
        'step 64: out of memory at micro-batch 64 -> 32 x 2 accumulation (effective batch 64)'
    """
    step, name = event.get("step", "?"), event.get("event", "guard")
    if name == "nan_skipped":
        reason = {"loss": "non-finite loss", "gradient": "non-finite gradient",
                  "overflow": "fp16 overflow, loss scale lowered"}.get(event.get("reason"), str(event.get("reason")))
        return f"step {step}: step skipped ({reason}; {event.get('skipped_steps', '?')} skipped so far)"
    if name == "spike_rollback":
        return (f"step {step}: loss spike {format_value(event.get('ratio'))}x its average, rolled back to step "
                f"{event.get('restored_step', '?')}, lr -> {format_value(event.get('lr'))}")
    if name == "oom_backoff":
        return (f"step {step}: out of memory at micro-batch {event.get('failed_micro_batch_size')} -> "
                f"{event.get('micro_batch_size')} x {event.get('gradient_accumulation_steps')} accumulation "
                f"(effective batch {event.get('effective_batch_size')})")
    message = event.get("message")
    return f"step {step}: {name.replace('_', ' ')}" + (f": {message}" if message else "")
