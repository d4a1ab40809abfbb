"""Checkpoints for the nbtune workshop: small assertions that tell a learner where they stand.

Each check passes quietly with a one-line confirmation, or raises `CheckpointError` (an AssertionError) whose
message says what was expected, what was found, and what to try next. An exercise left as `...` gets its own
message pointing at the exercise (or at `SOLUTIONS = True` in the first cell).

Example:
    >>> below("smoothed training loss", 0.9, 1.2, hint="train for more steps")
    checkpoint passed: smoothed training loss is 0.9, below 1.2
    >>> answered("best_step", ...)
    Traceback (most recent call last):
    ...
    checks.CheckpointError: `best_step` is still `...`: fill in the exercise cell above, or set SOLUTIONS = True in the first cell and run the notebook again
"""
from __future__ import annotations

import math
import time
from typing import Any


class CheckpointError(AssertionError):
    """A workshop checkpoint did not hold; the message says what to try."""


def answered(name: str, value: Any) -> Any:
    """Fail with a pointer to the exercise when `value` is still the `...` placeholder (or None)."""
    if value is Ellipsis or value is None:
        raise CheckpointError(f"`{name}` is still `{'...' if value is Ellipsis else None}`: fill in the exercise "
                              f"cell above, or set SOLUTIONS = True in the first cell and run the notebook again")
    return value


def _number(name: str, value: Any) -> float:
    answered(name, value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise CheckpointError(f"`{name}` should be a number, got {type(value).__name__} {value!r}") from None
    if not math.isfinite(number):
        raise CheckpointError(f"`{name}` is {number}: a NaN or inf means the run diverged; rerun the cells "
                              f"above from the top")
    return number


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def below(what: str, value: Any, limit: float, *, hint: str = "") -> None:
    """Pass when `value` < `limit` (printing a confirmation); else say "your loss should be below 1.2 by now, but it
    is 1.5; if not, <hint>". The pass/fail helpers return None, so a checkpoint cell leaves no Out[] value."""
    number = _number(what, value)
    if not number < limit:
        raise CheckpointError(f"your {what} should be below {_fmt(limit)} by now, but it is {_fmt(number)}"
                              + (f"; if not, {hint}" if hint else ""))
    print(f"checkpoint passed: {what} is {_fmt(number)}, below {_fmt(limit)}")


def above(what: str, value: Any, limit: float, *, hint: str = "") -> None:
    """Pass when `value` > `limit`."""
    number = _number(what, value)
    if not number > limit:
        raise CheckpointError(f"your {what} should be above {_fmt(limit)} by now, but it is {_fmt(number)}"
                              + (f"; if not, {hint}" if hint else ""))
    print(f"checkpoint passed: {what} is {_fmt(number)}, above {_fmt(limit)}")


def close_to(what: str, value: Any, expected: float, tolerance: float, *, hint: str = "") -> None:
    """Pass when |value - expected| <= tolerance."""
    number = _number(what, value)
    if not abs(number - expected) <= tolerance:
        raise CheckpointError(f"your {what} should be within {_fmt(tolerance)} of {_fmt(expected)}, but it is "
                              f"{_fmt(number)}" + (f"; {hint}" if hint else ""))
    print(f"checkpoint passed: {what} is {_fmt(number)}, within {_fmt(tolerance)} of {_fmt(expected)}")


def equal(what: str, value: Any, expected: Any, *, hint: str = "") -> None:
    """Pass when `value == expected` (an answer that has one right value, like a step number)."""
    answered(what, value)
    if value != expected:
        raise CheckpointError(f"your {what} is {value!r}, but the run says {expected!r}" + (f"; {hint}" if hint else ""))
    print(f"checkpoint passed: {what} is {value!r}")


def contains(what: str, collection: Any, item: Any, *, hint: str = "") -> None:
    """Pass when `item` is in `collection`."""
    answered(what, collection)
    if item not in collection:
        raise CheckpointError(f"{what} should include {item!r}, but it is {collection!r}" + (f"; {hint}" if hint else ""))
    print(f"checkpoint passed: {what} includes {item!r}")


def wait_for_step(run: Any, step: int, timeout_s: float = 600.0) -> int:
    """Block until a background run reaches optimizer step `step` (or ends); return the step it is at.

    The workshop uses it so "wait until the curve has gone wrong" is the same on a fast GPU and a slow laptop.
    """
    deadline = time.monotonic() + timeout_s
    while run.state.step < step and run.is_running:
        if time.monotonic() > deadline:
            raise CheckpointError(f"the run is still at step {run.state.step} after {timeout_s:.0f} s, expected step "
                                  f"{step}; is it paused? (the panel's Resume button, or run.control.resume())")
        time.sleep(0.05)
    if run.error is not None:
        raise CheckpointError(f"the run stopped with an error at step {run.state.step}: {run.error}")
    return run.state.step


def wait_until_paused(run: Any, timeout_s: float = 120.0) -> str:
    """Block until a pause command has taken effect (the loop applies it at the next step boundary)."""
    deadline = time.monotonic() + timeout_s
    while run.state.status != "paused" and run.is_running:
        if time.monotonic() > deadline:
            raise CheckpointError(f"the run did not pause within {timeout_s:.0f} s (status {run.state.status!r})")
        time.sleep(0.05)
    if run.state.status != "paused":
        raise CheckpointError(f"the run ended ({run.state.status!r} at step {run.state.step}) before it paused: "
                              f"raise STEPS or lower EXPLODE_STEPS")
    return run.state.status
