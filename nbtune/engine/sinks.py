"""Where metrics go. The engine emits plain dict records (see nbtune.history for the schema); a sink is
anything with `write(record)` and `close()`. The UI panel is just another sink.

Example:
    >>> sink = JsonlSink("/tmp/nbtune-example/metrics.jsonl")
    >>> sink.write({"kind": "step", "step": 1, "loss": 2.3}); sink.close()
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Protocol


class MetricSink(Protocol):
    def write(self, record: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


def _clean(value: Any) -> Any:
    # JSON has no NaN/inf; keep the line valid and the value visible.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class JsonlSink:
    """One JSON object per line, flushed per line so a crash loses at most the line being written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(_clean(record), ensure_ascii=False, default=str) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class TensorBoardSink:
    """Scalars under train/, eval/<split>/ and edit/, keyed by optimizer step."""

    def __init__(self, log_dir: str | Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imported here: tensorboard is slow to import
        self._writer = SummaryWriter(str(log_dir))

    def write(self, record: dict[str, Any]) -> None:
        kind, step = record.get("kind"), record.get("step", 0)
        if kind == "step":
            for key in ("loss", "grad_norm", "samples_per_second", "tokens_per_second"):
                if isinstance(record.get(key), (int, float)):
                    self._writer.add_scalar(f"train/{key}", record[key], step)
            for group, lr in (record.get("lr") or {}).items():
                self._writer.add_scalar(f"lr/{group}", lr, step)
            for group, norm in (record.get("grad_norm_groups") or {}).items():
                self._writer.add_scalar(f"grad_norm/{group}", norm, step)
        elif kind == "eval":
            for key, value in record.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch", "time"):
                    self._writer.add_scalar(f"eval/{record.get('split', 'validation')}/{key}", value, step)
        elif kind == "edit" and isinstance(record.get("new"), (int, float)):
            self._writer.add_scalar(f"edit/{record['name']}", record["new"], step)

    def close(self) -> None:
        self._writer.close()


class ConsoleSink:
    """A tqdm bar with the latest loss and LR; evaluations and edits printed above it."""

    def __init__(self, total_steps: int, initial_step: int = 0) -> None:
        from tqdm import tqdm  # the console bar; tqdm.auto would pull ipywidgets into the engine in a notebook
        self._bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True)

    def write(self, record: dict[str, Any]) -> None:
        kind = record.get("kind")
        if kind == "step":
            lr = next(iter((record.get("lr") or {}).values()), float("nan"))
            self._bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
            self._bar.update(record["step"] - self._bar.n)  # update() honours tqdm's redraw interval
        elif kind == "eval":
            shown = ", ".join(f"{k}={v:.4f}" for k, v in record.items()
                              if isinstance(v, float) and k not in ("epoch", "time"))
            self._bar.write(f"[step {record['step']}] {record.get('split', 'validation')}: {shown}")
        elif kind == "edit":
            self._bar.write(f"[step {record['step']}] {record['name']}: {record['old']} -> {record['new']}")
        elif kind == "checkpoint":
            self._bar.write(f"[step {record['step']}] checkpoint saved: {record['path']}")

    def close(self) -> None:
        self._bar.close()


class MemorySink:
    """Keeps every record in a list: for tests and for panels that read history in-process."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def close(self) -> None:
        pass

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r.get("kind") == kind]
