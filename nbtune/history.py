"""Read a run's ``metrics.jsonl`` back into plain lists: the info objects behind charts and reports.

Headless on purpose: no plotly here. ``nbtune.ui.figures`` renders what this module computes.

    >>> h = read_history("runs/demo")                       # doctest: +SKIP
    >>> summary(h)["final_train_loss"]                      # doctest: +SKIP
    0.312
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

METRICS_FILENAME = "metrics.jsonl"

# Eval metrics where a lower value is better; everything else is taken as higher-is-better.
LOWER_IS_BETTER = frozenset({"loss", "perplexity"})
# The order in which summary() picks "the" validation metric when none is named.
PREFERRED_METRICS = ("accuracy", "macro_f1", "entity_f1", "token_f1", "perplexity", "loss")
# Keys of an eval record that describe it rather than measure something.
_EVAL_META_KEYS = frozenset({"kind", "step", "epoch", "split", "time"})

NAN = float("nan")


@dataclass
class RunHistory:
    """Everything one run logged, as parallel lists indexed like ``steps``.

    Per-step lists (``loss``, ``grad_norm``, the per-group dicts, throughput) always have
    ``len(steps)`` entries; a value missing from a record is ``nan`` so the lists stay aligned
    and plots show a gap instead of shifting later points.
    """

    steps: list[int] = field(default_factory=list)
    epoch: list[float] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    grad_norm_groups: dict[str, list[float]] = field(default_factory=dict)
    lr: dict[str, list[float]] = field(default_factory=dict)
    samples_per_second: list[float] = field(default_factory=list)
    tokens_per_second: list[float] = field(default_factory=list)
    clipped: list[bool] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    edits: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    # The divergence guard's and OOM backoff's events (skipped steps, halts, rollbacks, backoffs), in order.
    guard: list[dict[str, Any]] = field(default_factory=list)
    start: dict[str, Any] | None = None
    end: dict[str, Any] | None = None
    # True when the last line was cut off mid-write (a crash) and was skipped.
    truncated: bool = False


def _float(value: Any) -> float:
    """A finite-or-nan float; None, strings and other junk become nan rather than raising."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return NAN


def _metrics_path(path_or_run_dir: str | Path) -> Path:
    path = Path(path_or_run_dir)
    return path / METRICS_FILENAME if path.is_dir() else path


def _parse_lines(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """Decode every line; skip blank lines and a cut-off final line, raise on any other bad line."""
    lines = path.read_text(encoding="utf-8").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    records: list[dict[str, Any]] = []
    truncated = False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):
                # A writer killed mid-line leaves half a record at the end; the rest is intact.
                truncated = True
                break
            raise ValueError(f"{path}: line {number} is not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {number} is not a JSON object")
        records.append(record)
    return records, truncated


def _append_group_values(
    table: dict[str, list[float]], values: Any, n_before: int
) -> None:
    """Append one step's per-group values, padding groups that appear late or go missing with nan."""
    values = values if isinstance(values, dict) else {}
    for group in values:
        name = str(group)
        if name not in table:
            table[name] = [NAN] * n_before
    for name, series in table.items():
        series.append(_float(values.get(name)))


def _rewind(history: RunHistory, step: int) -> None:
    """Drop step rows at or after ``step``: a resume or a guard rollback logs those steps again."""
    keep = 0
    while keep < len(history.steps) and history.steps[keep] < step:
        keep += 1
    per_step: list[list[Any]] = [
        history.steps, history.epoch, history.time, history.loss, history.grad_norm,
        history.samples_per_second, history.tokens_per_second, history.clipped,
        *history.lr.values(), *history.grad_norm_groups.values(),
    ]
    for series in per_step:
        del series[keep:]


def _add_step(history: RunHistory, record: dict[str, Any]) -> None:
    step = int(record.get("step", history.steps[-1] + 1 if history.steps else 0))
    if history.steps and step <= history.steps[-1]:
        _rewind(history, step)
    n_before = len(history.steps)
    history.steps.append(step)
    history.epoch.append(_float(record.get("epoch")))
    history.time.append(_float(record.get("time")))
    history.loss.append(_float(record.get("loss")))
    history.grad_norm.append(_float(record.get("grad_norm")))
    history.samples_per_second.append(_float(record.get("samples_per_second")))
    history.tokens_per_second.append(_float(record.get("tokens_per_second")))
    history.clipped.append(bool(record.get("clipped", False)))
    lr = record.get("lr")
    # A single float LR (no groups) is filed under "all" so the chart code has one shape to handle.
    _append_group_values(history.lr, {"all": lr} if isinstance(lr, (int, float)) else lr, n_before)
    _append_group_values(history.grad_norm_groups, record.get("grad_norm_groups"), n_before)


class HistoryBuilder:
    """Build a :class:`RunHistory` one record at a time, as a live panel receives them.

    ``read_history`` uses the same code, so a live view and a report of the file agree.

        >>> b = HistoryBuilder()
        >>> b.add({"kind": "step", "step": 1, "loss": 0.5})
        >>> b.history.loss
        [0.5]
    """

    def __init__(self, history: RunHistory | None = None) -> None:
        self.history = history if history is not None else RunHistory()

    def add(self, record: dict[str, Any]) -> None:
        """File one record by its kind; unknown kinds and non-dict records are ignored."""
        if not isinstance(record, dict):
            return
        history, kind = self.history, record.get("kind")
        if kind == "step":
            _add_step(history, record)
        elif kind == "eval":
            history.evals.append({k: v for k, v in record.items() if k != "kind"})
        elif kind == "edit":
            history.edits.append({k: v for k, v in record.items() if k != "kind"})
        elif kind == "checkpoint":
            history.checkpoints.append({k: v for k, v in record.items() if k != "kind"})
        elif kind == "guard":
            history.guard.append({k: v for k, v in record.items() if k != "kind"})
        elif kind == "start":
            # Keep the first start (the run's identity); a start after an end means it resumed.
            if history.start is None:
                history.start = {k: v for k, v in record.items() if k != "kind"}
            history.end = None
        elif kind == "end":
            history.end = {k: v for k, v in record.items() if k != "kind"}

    def extend(self, records: Any) -> RunHistory:
        for record in records:
            self.add(record)
        return self.history


def history_from_records(records: Any) -> RunHistory:
    """A :class:`RunHistory` from records already in memory (a sink's buffer, a test's list).

        >>> history_from_records([{"kind": "step", "step": 3, "loss": 1.0}]).steps
        [3]
    """
    return HistoryBuilder().extend(records)


def read_history(path_or_run_dir: str | Path) -> RunHistory:
    """Read ``metrics.jsonl`` (or a run directory holding one) into a :class:`RunHistory`.

    Unknown kinds and keys are ignored, a truncated last line is skipped (``truncated`` is set),
    and any other malformed line raises ``ValueError`` naming the file and line number.

        >>> h = read_history("runs/demo")                   # doctest: +SKIP
        >>> h.steps[-1], h.lr.keys()                        # doctest: +SKIP
        (300, dict_keys(['embeddings', 'encoder', 'head']))
    """
    path = _metrics_path(path_or_run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"no {METRICS_FILENAME} at {path}; is this a run directory?")
    records, truncated = _parse_lines(path)
    return HistoryBuilder(RunHistory(truncated=truncated)).extend(records)


def ema(values: list[float], smoothing: float = 0.9) -> list[float]:
    """Debiased exponential moving average (TensorBoard's smoothing); nan inputs are skipped.

        >>> [round(v, 3) for v in ema([1.0, 0.0], smoothing=0.5)]
        [1.0, 0.333]
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    out: list[float] = []
    last, weight = 0.0, 0.0
    for value in values:
        if math.isfinite(value):
            last = smoothing * last + (1.0 - smoothing) * value
            weight = smoothing * weight + (1.0 - smoothing)
        # Dividing by the accumulated weight removes the pull towards the zero start.
        out.append(last / weight if weight > 0 else NAN)
    return out


def eval_metrics(record: dict[str, Any]) -> dict[str, float]:
    """The numeric metrics of one eval record, without step/epoch/split.

        >>> eval_metrics({"step": 5, "split": "validation", "loss": 0.4, "accuracy": 0.9})
        {'loss': 0.4, 'accuracy': 0.9}
    """
    return {
        k: float(v) for k, v in record.items()
        if k not in _EVAL_META_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def evals_for(history: RunHistory, split: str = "validation") -> list[dict[str, Any]]:
    """The eval records of one split, in logged order.

        >>> evals_for(RunHistory(evals=[{"split": "test", "step": 3}]), "test")
        [{'split': 'test', 'step': 3}]
    """
    return [e for e in history.evals if e.get("split", "validation") == split]


def final_evals(history: RunHistory) -> dict[str, dict[str, float]]:
    """The last eval of each split: ``{split: {metric: value}}``.

        >>> final_evals(RunHistory(evals=[{"split": "validation", "step": 9, "loss": 0.3}]))
        {'validation': {'loss': 0.3}}
    """
    out: dict[str, dict[str, float]] = {}
    for record in history.evals:
        out[str(record.get("split", "validation"))] = eval_metrics(record)
    return out


@dataclass
class LossInfo:
    """What the loss chart draws: raw and smoothed train loss, validation loss, and the gap."""

    steps: list[int]
    loss: list[float]
    loss_ema: list[float]
    val_steps: list[int]
    val_loss: list[float]
    # Train EMA read at each validation step: the lower edge of the shaded train/val gap.
    ema_at_val: list[float]


def value_at_steps(steps: list[int], values: list[float], at: list[int]) -> list[float]:
    """The last value logged at or before each step in ``at`` (nan before the first one).

        >>> value_at_steps([1, 2, 3], [10.0, 20.0, 30.0], [0, 2, 9])
        [nan, 20.0, 30.0]
    """
    out: list[float] = []
    i = -1
    for target in at:  # `at` is usually sorted; restart the scan when it is not
        if i >= 0 and steps[i] > target:
            i = -1
        while i + 1 < len(steps) and steps[i + 1] <= target:
            i += 1
        out.append(values[i] if i >= 0 else NAN)
    return out


def loss_info(history: RunHistory, smoothing: float = 0.9) -> LossInfo:
    """Compute the loss chart's series from a history.

        >>> info = loss_info(RunHistory(steps=[1, 2], loss=[1.0, 0.5]), smoothing=0.0)
        >>> info.loss_ema
        [1.0, 0.5]
    """
    smoothed = ema(history.loss, smoothing)
    vals = [e for e in evals_for(history, "validation") if isinstance(e.get("loss"), (int, float))]
    val_steps = [int(e.get("step", 0)) for e in vals]
    return LossInfo(
        steps=list(history.steps),
        loss=list(history.loss),
        loss_ema=smoothed,
        val_steps=val_steps,
        val_loss=[float(e["loss"]) for e in vals],
        ema_at_val=value_at_steps(history.steps, smoothed, val_steps),
    )


def _pick_metric(records: list[dict[str, Any]], metric: str | None) -> str | None:
    if metric is not None:
        return metric
    present = {k for r in records for k in eval_metrics(r)}
    return next((m for m in PREFERRED_METRICS if m in present), None)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else NAN


def summary(history: RunHistory, metric: str | None = None) -> dict[str, Any]:
    """Headline numbers of a run: final train loss, best validation metric and its step, etc.

    ``metric`` defaults to the first of accuracy, macro_f1, entity_f1, token_f1, perplexity, loss
    that the validation evals contain; loss and perplexity count lower as better.

        >>> s = summary(read_history("runs/demo"))           # doctest: +SKIP
        >>> s["best_metric"], s["best_value"], s["best_step"]  # doctest: +SKIP
        ('accuracy', 0.93, 200)
    """
    start, end = history.start or {}, history.end or {}
    vals = evals_for(history, "validation")
    name = _pick_metric(vals, metric)
    scored = [(float(e[name]), int(e.get("step", 0))) for e in vals
              if name is not None and isinstance(e.get(name), (int, float))]
    best: tuple[float, int] | None = None
    if scored:
        sign = 1.0 if name in LOWER_IS_BETTER else -1.0
        # Ties go to the earliest step: that is the checkpoint you would keep.
        best = min(scored, key=lambda vs: (sign * vs[0], vs[1]))
    finite_loss = [v for v in history.loss if math.isfinite(v)]
    wall = _float(end.get("time")) - _float(start.get("time"))
    if end:
        status = str(end.get("status", "unknown"))
    else:
        status = "incomplete" if history.start or history.steps else "not started"
    return {
        "model": start.get("model"),
        "dataset": start.get("dataset"),
        "device": start.get("device"),
        "precision": start.get("precision"),
        "status": status,
        "num_steps": len(history.steps),
        "last_step": history.steps[-1] if history.steps else None,
        "total_steps": start.get("total_steps"),
        "final_train_loss": finite_loss[-1] if finite_loss else None,
        "best_metric": name if best else None,
        "best_value": best[0] if best else None,
        "best_step": best[1] if best else None,
        "mean_samples_per_second": _mean(history.samples_per_second) if history.steps else None,
        "wall_seconds": wall if math.isfinite(wall) else None,
        "num_edits": len(history.edits),
        "num_checkpoints": len(history.checkpoints),
        "message": end.get("message"),
    }


def decimate_minmax(xs: list[float], ys: list[float], max_points: int = 5000) -> tuple[list[float], list[float]]:
    """At most `max_points` points that keep every bucket's minimum and maximum, so spikes stay visible, and the
    first and last points, so the chart ends at the current value.

    >>> decimate_minmax([0, 1, 2, 3, 4, 5], [0, 9, 1, 1, -5, 1], max_points=4)
    ([0, 1, 4, 5], [0, 9, -5, 1])
    """
    if len(xs) <= max_points:
        return list(xs), list(ys)
    # vectorised: a live panel decimates ~10 series of 50,000 points several times a second
    n = len(xs)
    size = -(-n // max(1, (max_points - 2) // 2))  # ceil: every point falls in a bucket; 2 left for the ends
    y = np.asarray(ys, dtype=float)
    rows = np.concatenate([y, np.full((-n) % size, np.nan)]).reshape(-1, size)
    finite = ~np.isnan(rows)  # NaN gaps are not extremes (an all-NaN bucket keeps its first point)
    lo = np.where(finite, rows, np.inf).argmin(axis=1)
    hi = np.where(finite, rows, -np.inf).argmax(axis=1)
    base = np.arange(len(rows)) * size
    idx = np.stack([base + np.minimum(lo, hi), base + np.maximum(lo, hi)], axis=1).ravel()
    keep = np.ones(len(idx), dtype=bool)
    keep[1::2] = lo != hi
    idx = np.union1d(idx[keep], [0, n - 1])
    return np.asarray(xs)[idx].tolist(), np.asarray(ys)[idx].tolist()
