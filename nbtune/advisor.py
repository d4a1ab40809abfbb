"""Training health advisor: rules that read a run's history, explain what they see with the numbers they
used, and offer one-click actions. Nothing here applies an action; the panel asks the user.

Rules (thresholds are arguments of `advise`):
- gradient explosion: the latest pre-clip gradient norm is NaN/inf or above `spike_factor` x its running
  median -> lower the LR, or turn clipping on;
- overfitting: validation loss rose for `patience_evals` evaluations in a row while training loss fell ->
  stop at the best checkpoint, or raise weight decay;
- plateau: the smoothed training loss improved by less than `plateau_rel` over the last `plateau_window_steps`
  steps -> look at the data (labels, duplicates, leakage) in the data panel;
- dead LR: the LR sits below `dead_lr_fraction` of the configured peak well before the schedule's end, so
  updates are too small to matter -> restore the configured LR.

Example:
    >>> from nbtune.history import RunHistory
    >>> advise(RunHistory())
    []
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from nbtune.history import RunHistory, ema


@dataclass(frozen=True)
class Action:
    """One button: `command` is 'set' (with name and value), 'stop' or 'checkpoint'."""
    label: str
    command: str
    name: str | None = None
    value: float | None = None


@dataclass(frozen=True)
class Advice:
    rule: str                    # gradient-explosion | overfitting | plateau | dead-lr
    severity: str                # warning | info
    message: str                 # plain text; renderers escape it
    actions: tuple[Action, ...] = field(default_factory=tuple)
    evidence: dict[str, Any] = field(default_factory=dict)


def _current(history: RunHistory, name: str, config_key: str) -> Any:
    """A hyperparameter's value now: the last live edit of it, else the configured value."""
    for edit in reversed(history.edits):
        if edit.get("name") == name:
            return edit.get("new")
    train = ((history.start or {}).get("config") or {}).get("train") or {}
    return train.get(config_key)


def _current_lr(history: RunHistory) -> float | None:
    for values in history.lr.values():
        finite = [v for v in values if math.isfinite(v)]
        if finite:
            return finite[-1]
    return None


def gradient_explosion(history: RunHistory, spike_factor: float = 10.0, window: int = 50) -> Advice | None:
    norms = history.grad_norm
    if not norms:
        return None
    latest, step = norms[-1], history.steps[-1]
    earlier = [n for n in norms[-window - 1:-1] if math.isfinite(n)]
    if math.isfinite(latest) and (len(earlier) < 5 or latest <= spike_factor * statistics.median(earlier)):
        return None
    lr = _current_lr(history)
    clip = _current(history, "max_grad_norm", "max_grad_norm")
    actions = []
    if lr:
        actions.append(Action(f"Lower LR to {lr / 2:.2e}", "set", "lr", lr / 2))
    if clip is None:
        actions.append(Action("Clip gradients at 1.0", "set", "max_grad_norm", 1.0))
    if math.isfinite(latest):
        median = statistics.median(earlier)
        what = (f"gradient norm {latest:.3g} at step {step} is {latest / median:.1f}x the running median "
                f"{median:.3g} of the previous {len(earlier)} steps")
    else:
        what = f"gradient norm is {latest} at step {step}"
    return Advice("gradient-explosion", "warning", f"Gradient explosion: {what}.", tuple(actions),
                  {"step": step, "grad_norm": latest})


def overfitting(history: RunHistory, patience_evals: int = 3) -> Advice | None:
    evals = [e for e in history.evals if e.get("split", "validation") == "validation"
             and isinstance(e.get("loss"), (int, float))]
    if len(evals) < patience_evals + 1:
        return None
    recent = evals[-(patience_evals + 1):]
    val = [e["loss"] for e in recent]
    if not all(b > a for a, b in zip(val, val[1:])):
        return None
    train = ema(history.loss)
    at = {s: t for s, t in zip(history.steps, train)}
    train_then, train_now = at.get(recent[0]["step"]), at.get(recent[-1]["step"])
    if train_then is None or train_now is None or not train_now < train_then:
        return None
    best = min(evals, key=lambda e: e["loss"])
    wd = _current(history, "weight_decay", "weight_decay") or 0.0
    message = (f"Overfitting: validation loss rose {patience_evals} evaluations in a row "
               f"({' -> '.join(f'{v:.4f}' for v in val)}, steps {recent[0]['step']}-{recent[-1]['step']}) while "
               f"training loss fell ({train_then:.4f} -> {train_now:.4f}). Best validation loss "
               f"{best['loss']:.4f} was at step {best['step']}.")
    new_wd = max(0.05, 2 * wd)
    return Advice("overfitting", "warning", message,
                  (Action("Stop (keeps a checkpoint)", "stop"),
                   Action(f"Raise weight decay to {new_wd:g}", "set", "weight_decay", new_wd)),
                  {"val_losses": val, "best_step": best["step"]})


def plateau(history: RunHistory, window_steps: int = 100, rel: float = 0.01) -> Advice | None:
    if len(history.loss) < 2 * window_steps:
        return None
    smooth = ema(history.loss)
    then, now = smooth[-window_steps - 1], smooth[-1]
    if not (math.isfinite(then) and math.isfinite(now)) or then <= 0 or (then - now) / then >= rel:
        return None
    message = (f"Plateau: smoothed training loss went {then:.4f} -> {now:.4f} over the last {window_steps} steps "
               f"({(then - now) / then:+.1%}). Check labels, duplicates and leakage in the data panel, or try a "
               f"higher LR.")
    return Advice("plateau", "info", message, (), {"from": then, "to": now})


def dead_lr(history: RunHistory, fraction: float = 1e-3, window: int = 20, before_end: float = 0.9) -> Advice | None:
    start = history.start or {}
    peak = _current(history, "lr", "learning_rate")
    total = start.get("total_steps")
    if not peak or not total or len(history.steps) < window or history.steps[-1] >= before_end * total:
        return None
    recent = [max(vals[i] for vals in history.lr.values()) for i in range(-window, 0)] if history.lr else []
    if not recent or max(recent) >= fraction * peak:
        return None
    message = (f"Dead LR: the LR has been at most {max(recent):.2e} for {window} steps (below {fraction:g} x the "
               f"peak {peak:.2e}) at step {history.steps[-1]} of {total}; updates are too small to learn.")
    return Advice("dead-lr", "warning", message, (Action(f"Restore LR {peak:.2e}", "set", "lr", float(peak)),),
                  {"lr": max(recent), "peak": peak})


def advise(history: RunHistory, *, spike_factor: float = 10.0, patience_evals: int = 3,
           plateau_window_steps: int = 100, plateau_rel: float = 0.01, dead_lr_fraction: float = 1e-3) -> list[Advice]:
    """Every rule that fires on this history, most urgent first."""
    found = [gradient_explosion(history, spike_factor), overfitting(history, patience_evals),
             dead_lr(history, dead_lr_fraction), plateau(history, plateau_window_steps, plateau_rel)]
    return [a for a in found if a is not None]
