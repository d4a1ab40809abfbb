"""Notebook panels. `open_panel(run)` gives the live TrainPanel inside a Jupyter kernel, and a console
fallback elsewhere (a tqdm bar, then report.html when the run ends)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def in_jupyter_kernel() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class ConsoleFallback:
    """Outside a notebook: a progress bar while training, and report.html written when the run ends."""

    def __init__(self, run: Any) -> None:
        from nbtune.engine.sinks import ConsoleSink
        self.run = run
        self.report_path: Path | None = None
        if not run.cfg.train.progress_bar:  # the run shows no bar of its own
            run.add_sink(ConsoleSink(run.total_steps, run.state.step))
        run.add_sink(self)

    def write(self, record: dict[str, Any]) -> None:
        if record.get("kind") == "end" and self.run.accelerator.is_main_process:
            from nbtune.ui.report import write_report
            self.report_path = write_report(self.run.run_dir)  # metrics.jsonl already holds the end line
            print(f"nbtune: report written to {self.report_path}")

    def close(self) -> None:
        pass


def open_panel(run: Any, **options: Any) -> Any:
    if in_jupyter_kernel():
        from nbtune.ui.panels.train import TrainPanel
        return TrainPanel(run, **options)
    return ConsoleFallback(run)
