"""The objective: one Optuna trial = one nbtune Run built from the base config plus the space's overrides.

Every validation evaluation of the run is reported to the trial (`trial.report(value, step)`); when the
pruner says so, the run is stopped through its Control, so a pruned trial ends within one evaluation, and
`optuna.TrialPruned` is raised. Between trials the Run, its model and optimizer are dropped and memory is
collected (and the CUDA cache emptied on a GPU).

Example:
    >>> import optuna
    >>> from nbtune import RunConfig
    >>> objective = Objective(RunConfig(model="tiny-bert", data="trec"), metric="accuracy")   # doctest: +SKIP
    >>> optuna.create_study(direction="maximize").optimize(objective, n_trials=2)            # doctest: +SKIP
"""
from __future__ import annotations

import ctypes
import gc
import json
import sys
import threading
from pathlib import Path
from typing import Any

from nbtune.config import RunConfig
from nbtune.tune.space import GUIDE_SPACE, Space, apply_overrides

DIRECTIONS = ("maximize", "minimize")
LOWER_IS_BETTER = ("loss", "perplexity")


class TuneError(ValueError):
    """A tuning setup that cannot work (metric, direction, pruner, storage); the message says what to change."""


def check_metric_direction(metric: str, direction: str) -> None:
    if direction not in DIRECTIONS:
        raise TuneError(f"direction={direction!r} is not one of {', '.join(DIRECTIONS)}")
    if metric in LOWER_IS_BETTER and direction == "maximize":
        raise TuneError(f"metric {metric!r} is better when lower: pass direction='minimize'")


class _PruningSink:
    """A metric sink: reports each validation evaluation to the trial and stops the run when it is pruned."""

    def __init__(self, trial, run, metric: str) -> None:
        self.trial, self.run, self.metric = trial, run, metric
        self.pruned_at: int | None = None
        self.values: list[tuple[int, float]] = []

    def write(self, record: dict[str, Any]) -> None:
        if record.get("kind") != "eval" or record.get("split") != "validation":
            return
        if self.metric not in record:
            found = sorted(k for k, v in record.items() if isinstance(v, float) and k != "time")
            raise TuneError(f"metric {self.metric!r} is not in the validation results; available: {', '.join(found)}")
        step, value = int(record["step"]), float(record[self.metric])
        self.values.append((step, value))
        self.trial.report(value, step)
        # The last evaluation comes after training ended: the trial completed, nothing is left to prune.
        if step < self.run.total_steps and self.pruned_at is None and self.trial.should_prune():
            self.pruned_at = step
            self.run.control.stop()

    def close(self) -> None:
        pass


class Objective:
    """Callable for `study.optimize` / ask-and-tell: builds, trains and scores one Run per trial.

    The trial's run lives in `<study_dir>/trial-<n>`; user attrs record `run_dir`, `config`, `overrides`,
    `steps_trained`, `total_steps`, and `pruned_at_step` or `stopped` when it ended early. The value returned
    is the validation metric after the last step (the model a promoted trial continues from).
    """

    def __init__(self, base_config: RunConfig, space: Space = GUIDE_SPACE, metric: str = "accuracy",
                 direction: str = "maximize", dataset=None, study_dir: str | Path | None = None) -> None:
        check_metric_direction(metric, direction)
        if not callable(space):
            raise TuneError(f"space must be a callable trial -> overrides (or use from_hyperopt(dict)), got "
                            f"{type(space).__name__}")
        self.base, self.space, self.metric, self.direction = base_config, space, metric, direction
        self.dataset = dataset
        self.study_dir = Path(study_dir) if study_dir is not None else Path(base_config.output_dir)
        self._lock = threading.Lock()
        self._run = None
        self._stop_requested = False

    def trial_config(self, trial) -> tuple[RunConfig, dict]:
        overrides = self.space(trial)
        if not isinstance(overrides, dict):
            raise TuneError(f"the search space returned {type(overrides).__name__}; expected a dict of dotted "
                            f"config keys, e.g. {{'train.learning_rate': 3e-5}}")
        trial.set_user_attr("overrides", json.loads(json.dumps(overrides, default=str)))
        cfg = apply_overrides(self.base, overrides)
        cfg.output_dir, cfg.run_name = str(self.study_dir), f"trial-{trial.number}"
        return cfg, overrides

    def __call__(self, trial) -> float:
        import optuna
        from nbtune.engine.run import Run

        cfg, _ = self.trial_config(trial)
        trial.set_user_attr("config", cfg.to_dict())
        run = Run(cfg, self.dataset)
        sink = _PruningSink(trial, run, self.metric)
        run.add_sink(sink)
        trial.set_user_attr("run_dir", str(run.run_dir))
        trial.set_user_attr("total_steps", run.total_steps)
        with self._lock:
            self._run = run
            if self._stop_requested:
                run.control.stop()
        try:
            run.start()
            status, steps = run.state.status, run.state.step
            value = run.results.get("validation", {}).get(self.metric)
        finally:
            trial.set_user_attr("steps_trained", run.state.step)
            with self._lock:
                self._run = None
            release(run)
            del run
            free_memory()
        if sink.pruned_at is not None:
            trial.set_user_attr("pruned_at_step", sink.pruned_at)
            raise optuna.TrialPruned(f"pruned at step {sink.pruned_at} of {trial.user_attrs['total_steps']}")
        if status == "stopped":
            trial.set_user_attr("stopped", f"the study was stopped at step {steps}")
            raise optuna.TrialPruned(f"stopped by the user at step {steps}")
        if value is None:
            raise TuneError(f"trial {trial.number} ended {status} without a validation {self.metric!r}")
        return float(value)

    def stop(self) -> None:
        """Stop the trial being trained (at its next micro-batch) and any run built after this call."""
        with self._lock:
            self._stop_requested = True
            if self._run is not None:
                self._run.control.stop()

    def reset_stop(self) -> None:
        with self._lock:
            self._stop_requested = False


def release(run) -> None:
    """Drop what a finished Run holds on the device and in host memory (the accelerator keeps references to
    the prepared model too), so the next trial starts from the same footprint."""
    run.accelerator.free_memory()
    for name in ("model", "raw_model", "optimizer", "scheduler", "scaler", "methods", "data", "class_weights",
                 "window_loss", "window_figures"):
        if hasattr(run, name):
            setattr(run, name, None)
    run.error, run.traceback = None, None  # a traceback keeps the loop's frames (and the model) alive


def free_memory() -> None:
    """Collect garbage, hand freed heap pages back to the OS (glibc keeps them in its arenas otherwise: ~100 MB
    of RSS per trial of a 9M-parameter model, measured), and empty the CUDA cache when CUDA is in use."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # musl or another libc: nothing to trim
            pass
    import torch
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
