"""TuneStudy: an Optuna TPE study over nbtune runs, with pruning, stored in SQLite so it survives a kernel
restart, runnable in a background thread and stoppable from the notebook.

Trial states: a trial that completes is COMPLETE; one the pruner stops is PRUNED; one that raises is FAIL
with its error message in the user attr "error", and the study goes on. `stop()` ends the study: the trial
being trained stops at its next micro-batch and is recorded as PRUNED (user attr "stopped"), because it has
honest intermediate values that the plots and the sampler can use, like any trial cut short; it counts
towards `n_trials`. A trial left RUNNING by a killed kernel is marked FAIL ("interrupted") on the next run.

Example:
    >>> from nbtune import RunConfig
    >>> study = TuneStudy(RunConfig(model="tiny-bert", data="trec"), n_trials=4)   # doctest: +SKIP
    >>> study.run(background=True); study.wait()                                    # doctest: +SKIP
    >>> study.best_trial.params, study.promote(study.best_trial.number).config      # doctest: +SKIP
"""
from __future__ import annotations

import contextvars
import difflib
import logging
import re
import shutil
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nbtune.config import RunConfig
from nbtune.tune.objective import Objective, TuneError, check_metric_direction
from nbtune.tune.space import GUIDE_SPACE, Space

log = logging.getLogger("nbtune.tune")
PRUNERS = ("median", "hyperband")
KEEP_CHECKPOINTS = ("best", "all", "none")  # which trials keep their checkpoints on disk


def _optuna():
    try:
        import optuna
    except ImportError:
        raise ImportError("hyperparameter search needs optuna: pip install 'nbtune[tune]' (or pip install "
                          "'optuna>=4')") from None
    return optuna


def make_pruner(pruner: Any, base: RunConfig):
    """"median" (Optuna's defaults: 5 startup trials), "hyperband" (one resource unit = one optimizer step,
    the first rung at the first evaluation), None (no pruning) or any optuna pruner object."""
    optuna = _optuna()
    if pruner is None:
        return optuna.pruners.NopPruner()
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    if pruner == "median":
        return optuna.pruners.MedianPruner()
    if pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=base.train.eval_every_n_steps or 1)
    close = difflib.get_close_matches(str(pruner), PRUNERS, n=1)
    raise TuneError(f"pruner={pruner!r} is not one of {', '.join(PRUNERS)}, None or an optuna pruner"
                    + (f"; did you mean '{close[0]}'?" if close else ""))


@dataclass
class HistoryInfo:
    """Optimisation history: finished trials' values in order, and the best value so far."""
    metric: str
    direction: str
    numbers: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    best_values: list[float] = field(default_factory=list)


@dataclass
class IntermediateInfo:
    """Each trial's reported validation values by step, with its state (to colour pruned ones)."""
    metric: str
    trials: list[dict] = field(default_factory=list)  # {number, state, steps, values}


@dataclass
class Promoted:
    """What `promote` hands back: the trial's exact config and its newest checkpoint (None if it has none)."""
    trial_number: int
    config: RunConfig
    checkpoint: Path | None
    params: dict
    value: float | None


class TuneStudy:
    """An Optuna study whose trials are nbtune runs. Storage: `<study_dir>/study.db` (SQLite); the trials'
    run directories are `<study_dir>/trial-<n>`. The default study_dir is `<output_dir>/tune-<study_name>`.
    keep_checkpoints: "best" (default: only the best trial's checkpoint stays on disk), "all" or "none"."""

    def __init__(self, base_config: RunConfig, space: Space = GUIDE_SPACE, n_trials: int = 20,
                 pruner: Any = "median", metric: str = "accuracy", direction: str = "maximize",
                 study_dir: str | Path | None = None, seed: int = 0, study_name: str | None = None,
                 dataset=None, keep_checkpoints: str = "best") -> None:
        optuna = _optuna()
        check_metric_direction(metric, direction)
        if keep_checkpoints not in KEEP_CHECKPOINTS:
            raise TuneError(f"keep_checkpoints={keep_checkpoints!r} is not one of {', '.join(KEEP_CHECKPOINTS)}")
        self.keep_checkpoints = keep_checkpoints
        if int(n_trials) < 1:
            raise TuneError(f"n_trials must be >= 1, got {n_trials!r}")
        self.base, self.n_trials, self.metric, self.direction = base_config, int(n_trials), metric, direction
        self.study_name = study_name or re.sub(r"[^\w.-]+", "-", f"{Path(base_config.model.name).name}-"
                                               f"{Path(base_config.data.dataset).stem}-{metric}")
        self.study_dir = Path(study_dir) if study_dir else Path(base_config.output_dir) / f"tune-{self.study_name}"
        self.study_dir.mkdir(parents=True, exist_ok=True)
        self.storage_url = f"sqlite:///{(self.study_dir / 'study.db').resolve()}"
        self.study = optuna.create_study(
            storage=self.storage_url, sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=make_pruner(pruner, base_config), study_name=self.study_name, direction=direction,
            load_if_exists=True)
        stored = self.study.direction.name.lower()
        if stored != direction:
            raise TuneError(f"the study stored in {self.study_dir / 'study.db'} maximises/minimises with "
                            f"direction={stored!r}, not {direction!r}; use another study_dir or study_name")
        self.objective = Objective(base_config, space, metric, direction, dataset, self.study_dir)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # ---- running ----
    @property
    def finished_trials(self) -> list:
        states = _finished_states()
        return [t for t in self.study.get_trials(deepcopy=False) if t.state in states]

    @property
    def remaining(self) -> int:
        return max(self.n_trials - len(self.finished_trials), 0)

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run(self, background: bool = False) -> "TuneStudy":
        """Run the remaining trials (n_trials minus those already finished, whatever their state). In the
        background the notebook stays usable; `stop()` ends the study, `wait()` joins it."""
        if self.is_running:
            raise RuntimeError("this study is already running; call stop() first")
        self._stop.clear()
        self.objective.reset_stop()
        self.error = None
        self._fail_interrupted()
        if not background:
            self._optimize()
            return self
        ctx = contextvars.copy_context()  # widget updates from the thread need the kernel's context
        self._thread = threading.Thread(target=ctx.run, args=(self._optimize_safely,), daemon=True,
                                        name=f"nbtune-tune-{self.study_name}")
        self._thread.start()
        return self

    def stop(self, wait: bool = True, timeout_s: float | None = None) -> "TuneStudy":
        """End the study: no new trial starts, and the current one stops at its next micro-batch."""
        self._stop.set()
        self.objective.stop()
        if wait and self._thread is not None:
            self._thread.join(timeout_s)
        return self

    def wait(self, timeout_s: float | None = None) -> "TuneStudy":
        if self._thread is not None:
            self._thread.join(timeout_s)
        if self.error is not None:
            raise self.error
        return self

    def _optimize_safely(self) -> None:
        try:
            self._optimize()
        except BaseException as exc:  # noqa: BLE001 - re-raised by wait()
            self.error = exc

    def _optimize(self) -> None:
        while not self._stop.is_set() and self.remaining > 0:
            self._run_trial(self.study.ask())

    def _run_trial(self, trial) -> None:
        optuna = _optuna()
        try:
            value = self.objective(trial)
        except optuna.TrialPruned:
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        except Exception as exc:  # noqa: BLE001 - a failed trial is recorded and the study goes on
            message = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            trial.set_user_attr("error", message)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            log.warning("trial %d failed: %s", trial.number, message)
        except BaseException:  # KeyboardInterrupt: record the trial, then let the interrupt through
            trial.set_user_attr("error", "interrupted")
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        else:
            self.study.tell(trial, value)
        self._drop_checkpoints()

    def _drop_checkpoints(self) -> None:
        """A checkpoint per trial is weights + AdamW state (~270 MB for minilm): keep the best trial's only
        (keep_checkpoints="best"), all of them, or none. Only directories inside the study are touched."""
        if self.keep_checkpoints == "all":
            return
        best = None
        if self.keep_checkpoints == "best":
            try:
                best = self.study.best_trial.number
            except ValueError:  # no complete trial yet
                best = None
        root = self.study_dir.resolve()
        for t in self.finished_trials:
            ckpts = Path(t.user_attrs.get("run_dir", "")) / "checkpoints"
            if t.number != best and ckpts.is_dir() and root in ckpts.resolve().parents:
                shutil.rmtree(ckpts, ignore_errors=True)

    def _fail_interrupted(self) -> None:
        """Trials left RUNNING by a kernel that died cannot finish: record them as failed."""
        optuna = _optuna()
        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            self.study._storage.set_trial_user_attr(t._trial_id, "error", "interrupted (the process ended)")
            self.study.tell(t.number, state=optuna.trial.TrialState.FAIL)

    # ---- results ----
    @property
    def best_trial(self):
        return self.study.best_trial

    @property
    def trials(self) -> list:
        return self.study.trials

    @property
    def steps_trained(self) -> dict[int, int]:
        """Optimizer steps each trial trained (a pruned trial's stop point); sum it for the compute spent."""
        return {t.number: int(t.user_attrs.get("steps_trained", 0)) for t in self.study.trials}

    def trials_frame(self):
        """One row per trial (pandas): number, state, value, params, steps trained, error."""
        return self.study.trials_dataframe(attrs=("number", "value", "state", "params", "duration", "user_attrs"))

    def history_info(self) -> HistoryInfo:
        info = HistoryInfo(self.metric, self.direction)
        better = max if self.direction == "maximize" else min
        optuna = _optuna()
        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            info.numbers.append(t.number)
            info.values.append(t.value)
            info.best_values.append(better(info.best_values[-1], t.value) if info.best_values else t.value)
        return info

    def intermediate_info(self) -> IntermediateInfo:
        info = IntermediateInfo(self.metric)
        for t in self.study.get_trials(deepcopy=False):
            if t.intermediate_values:
                steps = sorted(t.intermediate_values)
                info.trials.append({"number": t.number, "state": t.state.name, "steps": steps,
                                    "values": [t.intermediate_values[s] for s in steps]})
        return info

    def params_info(self) -> dict:
        """Parameters and value of each complete trial (parallel coordinates), plus importances when at least
        two complete trials differ (Optuna's fANOVA evaluator)."""
        optuna = _optuna()
        done = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        importances: dict[str, float] = {}
        if len(done) >= 2:
            try:
                importances = dict(optuna.importance.get_param_importances(self.study))
            except (RuntimeError, ValueError):  # e.g. every trial has the same params
                importances = {}
        return {"metric": self.metric, "trials": [{"number": t.number, "params": t.params, "value": t.value}
                                                  for t in done], "importances": importances}

    def promote(self, trial_number: int) -> Promoted:
        """Trial N's exact config (run_name `trial-<n>-promoted`) and its newest checkpoint, ready for
        `Run(p.config)` or `Run.resume(p.checkpoint, p.config)`."""
        from nbtune.engine import checkpoint as ckpt
        trials = {t.number: t for t in self.study.trials}
        if trial_number not in trials:
            raise TuneError(f"no trial {trial_number} in this study (trials: {sorted(trials) or 'none yet'})")
        t = trials[trial_number]
        if t.state.name not in ("COMPLETE", "PRUNED") or "config" not in t.user_attrs:
            raise TuneError(f"trial {trial_number} is {t.state.name} ({t.user_attrs.get('error', 'no run yet')}); "
                            f"promote a complete or pruned trial")
        config = RunConfig.from_dict(t.user_attrs["config"])
        config.run_name = f"trial-{trial_number}-promoted"
        run_dir = Path(t.user_attrs.get("run_dir", ""))
        checkpoint = ckpt.latest(run_dir) if run_dir.is_dir() else None
        return Promoted(trial_number, config, checkpoint, dict(t.params), t.value)

    def __repr__(self) -> str:
        states = [t.state.name for t in self.study.get_trials(deepcopy=False)]
        counts = ", ".join(f"{s.lower()} {states.count(s)}" for s in sorted(set(states))) or "no trials"
        return f"TuneStudy({self.study_name!r}, {len(self.finished_trials)}/{self.n_trials} trials: {counts})"


def _finished_states() -> tuple:
    state = _optuna().trial.TrialState
    return (state.COMPLETE, state.PRUNED, state.FAIL)
