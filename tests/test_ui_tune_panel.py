"""TunePanel in-process (no browser): the four charts follow the study's storage, the trial table shows every
state with its reason, Start/Stop, promote to a Run with its TrainPanel (fresh or resumed), escaped user
text; and the pure figure builders."""
from __future__ import annotations

import html
import math
import types

import optuna
import pytest

from nbtune.ui import tune_figures as tf
from nbtune.ui.panels.tune import TunePanel, trials_table_html
from tests.test_tune import _base, scripted_study

optuna.logging.set_verbosity(optuna.logging.WARNING)
PAYLOAD = "<img src=x onerror=alert(1)>"


def test_panel_follows_a_study_and_promotes_the_best_trial(tmp_path):
    panel = TunePanel(scripted_study(tmp_path, n_trials=4))
    assert len(panel.history_fig.data[0].x) == 0 and panel.promote_button.disabled
    panel.start()
    panel.wait(timeout_s=600)
    trials = panel.study.trials
    states = [t.state.name for t in trials]
    assert states[:3] == ["FAIL", "COMPLETE", "PRUNED"]
    complete = [t.number for t in trials if t.state.name == "COMPLETE"]
    history = {t.name: t for t in panel.history_fig.data}
    assert list(history["value"].x) == complete and len(history["best so far"].y) == len(complete)
    assert len(panel.intermediate_fig.data) == sum(1 for t in trials if t.intermediate_values)
    pruned_trace = next(t for t in panel.intermediate_fig.data if t.name == "trial 2")
    assert pruned_trace.line.dash == "dot" and list(pruned_trace.x) == [2]
    dims = panel.parallel_fig.data[0].dimensions
    assert [d.label for d in dims] == ["dropout", "loss"] and len(dims[0].values) == len(complete)
    # the table: one row per trial, the failure's reason and the pruning step shown
    table = panel.table_html.value
    assert table.count("<tr data-state=") == 4 and "no_such_column" in table and "pruned at step 2" in table
    assert "4/4 trials" in panel.status_html.value and panel.start_button.disabled
    # the picker lists complete trials best first (loss: lowest first), then pruned ones
    best = panel.study.best_trial.number
    assert panel.trial_picker.value == best and not panel.promote_button.disabled
    pruned = [t.number for t in trials if t.state.name == "PRUNED"]
    assert [v for _, v in panel.trial_picker.options] == sorted(complete, key=lambda n: trials[n].value) + pruned

    panel.resume_box.value = True
    panel.promote_button.click()
    assert panel.error is None, panel.error
    run = panel.promoted_run
    assert run.state.step == 6 and run.cfg.run_name == f"trial-{best}-promoted"   # resumed from its checkpoint
    assert run.cfg.model.config_overrides["hidden_dropout_prob"] == panel.study.best_trial.params["dropout"]
    assert panel.promoted_box.children == (panel.train_panel.widget,)
    assert f"Promoted trial {best}" in panel.promoted_html.value and "dropout=" in panel.promoted_html.value

    # a failed trial cannot be promoted: the error is shown, not raised in the callback
    panel.trial_picker.options = [("#0", 0)]
    panel.trial_picker.value = 0
    panel.promote_button.click()
    assert "no_such_column" in panel.error_html.value and panel.error_html.layout.display is None


def test_stop_button_ends_the_study_and_keeps_the_trial(tmp_path):
    study = TuneStudy_(tmp_path)
    panel = TunePanel(study)
    panel.start()
    panel.stop_button.click()
    assert not study.is_running and panel.stop_button.disabled
    assert all(t.state.name in ("PRUNED", "COMPLETE", "FAIL") for t in study.trials)
    assert len(study.trials) <= 1 and not panel.start_button.disabled  # trials remain: Start continues


def TuneStudy_(tmp_path):  # noqa: N802 - a study with long trials, so Stop lands mid-trial
    from nbtune.tune import TuneStudy
    return TuneStudy(_base(tmp_path, "train.max_steps=400"), lambda t: {"dropout": t.suggest_float("dropout", 0.1, 0.3)},
                     n_trials=3, metric="loss", direction="minimize", study_dir=tmp_path / "s")


def test_user_text_in_trials_is_escaped():
    trial = types.SimpleNamespace(number=0, state=types.SimpleNamespace(name="FAIL"), value=None,
                                  params={PAYLOAD: PAYLOAD}, user_attrs={"error": f"ValueError: {PAYLOAD}"})
    table = trials_table_html([trial], "accuracy")
    assert PAYLOAD not in table and html.escape(PAYLOAD) in table
    params = {"metric": "<b>m</b>", "trials": [{"number": 0, "params": {PAYLOAD: "a"}, "value": 1.0}],
              "importances": {PAYLOAD: 1.0}}
    assert all(PAYLOAD not in d["label"] for d in tf.parallel_dimensions(params))
    assert PAYLOAD not in tf.importance_series(params)[1][0]


def test_parallel_dimensions_use_log_axes_and_category_labels():
    params = {"metric": "accuracy", "importances": {},
              "trials": [{"number": i, "params": {"learning_rate": lr, "batch_size": bs, "sched": s}, "value": v}
                         for i, (lr, bs, s, v) in enumerate([(1e-6, 16, "cosine", 0.5), (1e-4, 8, "linear", 0.9)])]}
    dims = {d["label"]: d for d in tf.parallel_dimensions(params)}
    assert dims["log10 learning_rate"]["values"] == pytest.approx([-6, -4])
    assert dims["batch_size"]["values"] == [16.0, 8.0]        # two values only: a plain numeric axis
    assert dims["sched"]["ticktext"] == ["cosine", "linear"] and dims["sched"]["values"] == [0, 1]
    assert dims["accuracy"]["values"] == [0.5, 0.9]


def test_history_figure_best_so_far_follows_direction():
    from nbtune.tune.study import HistoryInfo
    info = HistoryInfo("loss", "minimize", [0, 2, 3], [0.9, 0.5, 0.7], [0.9, 0.5, 0.5])
    fig = tf.history_figure(info)
    assert [t.name for t in fig.data] == ["value", "best so far"] and list(fig.data[1].y) == [0.9, 0.5, 0.5]
    assert "lower is better" in fig.layout.title.text


def test_lr_find_figure_marks_the_suggestion_and_usual_range():
    from nbtune.tune.lr_find import LRFindResult
    lrs = [10 ** (-7 + i * 0.1) for i in range(50)]
    result = LRFindResult(lrs, [1.0] * 50, [1.0 - i / 100 for i in range(50)], 3e-5, 3e-5, 1e-3, 1e-4, "min/30",
                          "full", (1e-5, 1e-4), False, 5)
    fig = tf.lr_find_figure(result)
    assert fig.layout.xaxis.type == "log" and len(fig.data) == 2
    assert any(math.isclose(s.x0, 3e-5) for s in fig.layout.shapes if s.type == "line")
