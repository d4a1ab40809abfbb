"""A fake engine for throttling tests: a run-like object the TrainPanel accepts, and a thread that writes step
records to its sinks at a fixed rate (5,000 steps/s by default), far faster than any real model trains.

Used by the headless recording-comm test and by the browser flood test (imported from a notebook cell).
"""
from __future__ import annotations

import contextvars
import math
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from nbtune.config import RunConfig
from nbtune.engine.control import Control


def fake_run(out_dir: str | Path, run_name: str = "flood", total_steps: int = 50_000) -> SimpleNamespace:
    """Just what the panel reads: config, control, state, sinks. No model, no training thread."""
    cfg = RunConfig().with_overrides([f"output_dir={out_dir}", f"run_name={run_name}"])
    sinks: list[Any] = []

    def add_sink(sink: Any) -> Any:
        sinks.append(sink)
        return sink

    return SimpleNamespace(
        cfg=cfg, control=Control(), state=SimpleNamespace(step=0, epoch=0.0, status="created"),
        total_steps=total_steps, precision=SimpleNamespace(name="fp32"), device="cpu",
        run_dir=Path(out_dir) / run_name, error=None, traceback=None, sinks=sinks, add_sink=add_sink,
        start=lambda background=False: None)


def step_record(step: int, t: float) -> dict[str, Any]:
    """A plausible step record: decaying noisy loss, a grad-norm spike every 7,919 steps, two groups."""
    noise = math.sin(step * 12.9898) * 0.05
    spike = 25.0 if step % 7919 == 0 else 0.0
    return {"kind": "step", "step": step, "epoch": step / 10_000, "time": t, "loss": 2.0 / math.sqrt(step) + noise,
            "grad_norm": 1.0 + noise + spike, "grad_norm_groups": {"decay": 0.9 + noise, "no_decay": 0.1},
            "lr": {"decay": 1e-4, "no_decay": 1e-4}, "clipped": spike > 0,
            "samples_per_second": 5000.0, "tokens_per_second": 160_000.0}


class Flood:
    """Writes `rate` step records a second for `seconds` to the run's sinks from a background thread, with an
    eval every 1,000 steps and one LR edit halfway; then an end record and the sinks closed, like the engine."""

    def __init__(self, run: SimpleNamespace, rate: int = 5000, seconds: float = 10.0) -> None:
        self.run, self.rate, self.seconds = run, rate, seconds
        self.written = 0
        self.elapsed_s = 0.0
        self.thread = threading.Thread(target=contextvars.copy_context().run, args=(self._loop,), daemon=True,
                                       name="nbtune-flood")

    def start(self) -> "Flood":
        self.thread.start()
        return self

    def join(self, timeout_s: float | None = None) -> None:
        self.thread.join(timeout_s)

    def _emit(self, record: dict[str, Any]) -> None:
        for sink in self.run.sinks:
            sink.write(record)

    def _loop(self) -> None:
        run, total = self.run, int(self.rate * self.seconds)
        run.state.status = "running"
        self._emit({"kind": "start", "total_steps": total, "model": "fake", "dataset": "flood",
                    "label_names": ["a", "b"], "device": "cpu", "precision": "fp32"})
        t0 = time.monotonic()
        for step in range(1, total + 1):
            due = t0 + step / self.rate
            if due - time.monotonic() > 0.001:
                time.sleep(due - time.monotonic())
            self._emit(step_record(step, time.time()))
            if step == total // 2:
                self._emit({"kind": "edit", "step": step, "name": "lr", "old": 1e-4, "new": 5e-5, "time": time.time()})
            if step % 1000 == 0:
                self._emit({"kind": "eval", "split": "validation", "step": step, "loss": 1.0 + 1e-5 * step,
                            "accuracy": 0.5})
            run.state.step = step
            self.written = step
        self.elapsed_s = time.monotonic() - t0
        run.state.status = "finished"
        self._emit({"kind": "end", "status": "finished", "step": total, "time": time.time()})
        for sink in run.sinks:
            sink.close()
