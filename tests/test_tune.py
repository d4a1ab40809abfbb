"""nbtune.tune: trial states in SQLite (complete / pruned / failed) and resume in a new process, pruning that
stops a run within one evaluation, memory released between trials, stop() from another thread, and the
search spaces (the guide's table, hyperopt dicts and their errors)."""
from __future__ import annotations

import gc
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import torch

from nbtune.config import RunConfig
from nbtune.engine.run import Run
from nbtune.tune import (GUIDE_SPACE, SpaceError, TuneError, TuneStudy, apply_overrides, dropout_keys,
                         from_hyperopt)

optuna.logging.set_verbosity(optuna.logging.WARNING)
ROOT = Path(__file__).resolve().parents[1]


def _base(tmp_path: Path, *extra: str) -> RunConfig:
    """tiny-bert on a small trec slice: 6 steps, a validation evaluation every 2 steps."""
    return RunConfig().with_overrides([
        "task=classification", "model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=48",
        "data.max_eval_samples=16", "train.batch_size=8", "train.max_steps=6", "train.eval_every_n_steps=2",
        "train.learning_rate=1e-4", "train.warmup_ratio=0", "train.scheduler=constant", "train.precision=fp32",
        "train.progress_bar=false", "train.tensorboard=false", "train.sync_every_n_steps=1",
        f"output_dir={tmp_path}", *extra])


# Trial 0 names a column trec does not have (Run raises while loading data); trial 1 trains normally and
# completes; trial 2 uses lr=1.0, which wrecks the model, so its validation loss at the first evaluation is far
# above trial 1's and the MedianPruner (one startup trial) prunes it. Later trials train like trial 1.
SCRIPT = {0: {"data.text_column": "no_such_column"}, 1: {"train.learning_rate": 1e-4},
          2: {"train.learning_rate": 1.0}}


def scripted_space(trial) -> dict:
    dropout = trial.suggest_float("dropout", 0.1, 0.3)
    return {**SCRIPT.get(trial.number, SCRIPT[1]), "dropout": dropout}


def scripted_study(tmp_path: Path, n_trials: int) -> TuneStudy:
    return TuneStudy(_base(tmp_path), scripted_space, n_trials=n_trials, metric="loss", direction="minimize",
                     pruner=optuna.pruners.MedianPruner(n_startup_trials=1), study_dir=tmp_path / "study", seed=0)


RESUME_SCRIPT = """
import json, sys
from pathlib import Path
import optuna, torch
torch.set_num_threads(1)
optuna.logging.set_verbosity(optuna.logging.WARNING)
from tests.test_tune import scripted_study
study = scripted_study(Path(sys.argv[1]), n_trials=4)
before = [t.state.name for t in study.trials]
study.run()
print(json.dumps({"before": before, "after": [t.state.name for t in study.trials]}))
"""


def test_failed_pruned_complete_states_and_resume_in_new_process(tmp_path):
    study = scripted_study(tmp_path, n_trials=3)
    study.run()
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "COMPLETE", "PRUNED"]
    failed, done, pruned = study.trials
    assert "no_such_column" in failed.user_attrs["error"]
    assert math.isfinite(done.value) and done.user_attrs["steps_trained"] == 6
    # stopped within one evaluation: the pruner fired at the first evaluation (step 2), training ended there
    assert pruned.user_attrs["pruned_at_step"] == 2 and pruned.user_attrs["steps_trained"] == 2
    assert pruned.intermediate_values[2] > done.intermediate_values[2]
    assert study.steps_trained == {0: 0, 1: 6, 2: 2}

    # the same storage, opened by a new process: three trials are there, one more runs to reach n_trials=4
    out = subprocess.run([sys.executable, "-c", RESUME_SCRIPT, str(tmp_path)], capture_output=True, text=True,
                         timeout=600, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["before"] == ["FAIL", "COMPLETE", "PRUNED"]
    assert got["after"][:3] == got["before"] and len(got["after"]) == 4 and got["after"][3] in ("COMPLETE", "PRUNED")
    reopened = scripted_study(tmp_path, n_trials=4)
    assert len(reopened.trials) == 4 and reopened.remaining == 0
    reopened.run()  # nothing left to do
    assert len(reopened.trials) == 4

    # promote the best trial: its exact config, and a checkpoint a Run resumes from
    promoted = reopened.promote(reopened.best_trial.number)
    assert promoted.config.train.learning_rate == 1e-4 and promoted.config.run_name.endswith("-promoted")
    assert promoted.config.model.config_overrides["hidden_dropout_prob"] == promoted.params["dropout"]
    # keep_checkpoints="best": only the best trial's checkpoint is left on disk
    kept = sorted(p.parent.name for p in (tmp_path / "study").glob("trial-*/checkpoints"))
    assert kept == [f"trial-{promoted.trial_number}"] and promoted.checkpoint is not None
    run = Run.resume(promoted.checkpoint, promoted.config)
    assert run.state.step == 6
    with pytest.raises(TuneError, match="no_such_column"):
        reopened.promote(0)


def test_history_and_intermediate_info(tmp_path):
    study = scripted_study(tmp_path, n_trials=3)
    study.run()
    history = study.history_info()
    assert history.numbers == [1] and history.best_values == history.values == [study.trials[1].value]
    inter = {t["number"]: t for t in study.intermediate_info().trials}
    assert inter[1]["steps"] == [2, 4, 6] and inter[2]["steps"] == [2] and inter[2]["state"] == "PRUNED"
    params = study.params_info()
    assert [t["number"] for t in params["trials"]] == [1] and params["importances"] == {}  # needs 2 complete
    frame = study.trials_frame()
    assert list(frame["state"]) == ["FAIL", "COMPLETE", "PRUNED"] and "user_attrs_error" in frame.columns
    assert "TuneStudy" in repr(study) and "pruned 1" in repr(study)


def _rss_mb() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2**20


def _live_models() -> int:
    from transformers import PreTrainedModel
    gc.collect()  # count what is still referenced, not garbage awaiting the cycle collector
    return sum(issubclass(type(o), PreTrainedModel) for o in gc.get_objects())


def test_memory_after_five_trials_stays_near_one(tmp_path):
    # A wider tiny-bert (~9M parameters): one trial's weights + grads + AdamW state are ~150 MB, so a single
    # leaked trial exceeds the bound. Measured: +1-2 MB per trial once freed pages go back to the OS (without
    # malloc_trim glibc kept ~100 MB of slack). +100 MB leaves room for noise and one-time caches.
    base = _base(tmp_path, "train.max_steps=3", "train.eval_every_n_steps=null")
    base.model.config_overrides = {"hidden_size": 256, "intermediate_size": 1024, "num_attention_heads": 4}
    models_before = _live_models()  # models other test modules still hold are not this study's
    study = TuneStudy(base, GUIDE_SPACE, n_trials=1, pruner=None, study_dir=tmp_path / "mem", seed=1)
    study.run()
    after_one = _rss_mb()
    study.n_trials = 5
    study.run()
    after_five = _rss_mb()
    print(f"RSS after 1 trial {after_one:.0f} MB, after 5 trials {after_five:.0f} MB")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5
    assert _live_models() == models_before  # every trial's model was released
    assert after_five - after_one < 100


@pytest.mark.gpu
def test_cuda_memory_after_five_trials_stays_near_one(tmp_path):
    base = _base(tmp_path, "train.max_steps=3", "train.eval_every_n_steps=null", "train.precision=auto")
    base.model.config_overrides = {"hidden_size": 256, "intermediate_size": 1024, "num_attention_heads": 4}
    study = TuneStudy(base, GUIDE_SPACE, n_trials=1, pruner=None, study_dir=tmp_path / "mem", seed=1)
    study.run()
    after_one = torch.cuda.memory_allocated()
    study.n_trials = 5
    study.run()
    after_five = torch.cuda.memory_allocated()
    print(f"CUDA allocated after 1 trial {after_one / 2**20:.1f} MB, after 5 {after_five / 2**20:.1f} MB")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5
    assert after_five - after_one < 8 * 2**20  # nothing of a trial (~40 MB of weights alone) stays allocated


def test_stop_from_another_thread_ends_background_study_within_one_evaluation(tmp_path):
    study = TuneStudy(_base(tmp_path, "train.max_steps=400"), lambda t: {}, n_trials=3, pruner=None,
                      study_dir=tmp_path / "bg")
    study.run(background=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (study.trials and study.trials[0].intermediate_values):
        time.sleep(0.05)
    reported = len(study.trials[0].intermediate_values)
    assert reported >= 1 and study.is_running
    stopper = threading.Thread(target=study.stop)
    stopper.start()
    stopper.join(60)
    assert not study.is_running
    (trial,) = study.trials  # no new trial started
    assert trial.state.name == "PRUNED" and "stopped" in trial.user_attrs
    assert len(trial.intermediate_values) <= reported + 1  # at most one more evaluation before the stop
    assert trial.user_attrs["steps_trained"] < 400


# ---- spaces ----
def _trials(n: int, seed: int = 0) -> list:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [study.ask() for _ in range(n)]


def test_guide_space_stays_inside_the_table():
    for trial in _trials(40):
        o = GUIDE_SPACE(trial)
        assert 1e-6 <= o["train.learning_rate"] <= 5e-5
        assert o["train.batch_size"] in (8, 16, 32, 64)
        assert 0.1 <= o["dropout"] <= 0.3


def test_dropout_maps_to_the_architectures_keys(tmp_path):
    assert dropout_keys("tiny-bert") == ("hidden_dropout_prob", "attention_probs_dropout_prob")
    assert dropout_keys("tiny-llama") == ("attention_dropout",)
    base = _base(tmp_path)
    base.model.config_overrides = {"num_hidden_layers": 1}
    cfg = apply_overrides(base, {"dropout": 0.2, "train.batch_size": 16})
    assert cfg.model.config_overrides == {"num_hidden_layers": 1, "hidden_dropout_prob": 0.2,
                                          "attention_probs_dropout_prob": 0.2}
    assert cfg.train.batch_size == 16 and base.train.batch_size == 8


def test_from_hyperopt_translates_each_form():
    space = from_hyperopt({"lr": ("loguniform", math.log(1e-6), math.log(5e-5)), "batch_size": ("choice", [8, 16]),
                           "dropout": ("uniform", 0.1, 0.3), "train.max_grad_norm": ("quniform", 1, 5, 1),
                           "train.weight_decay": ("qloguniform", math.log(1e-4), math.log(1e-1), 1e-4)})
    for trial in _trials(30):
        o = space(trial)
        assert 1e-6 <= o["train.learning_rate"] <= 5e-5
        assert o["train.batch_size"] in (8, 16) and isinstance(o["train.batch_size"], int)
        assert 0.1 <= o["dropout"] <= 0.3
        assert o["train.max_grad_norm"] in (1, 2, 3, 4, 5) and isinstance(o["train.max_grad_norm"], int)
        assert 1e-4 <= o["train.weight_decay"] <= 0.1 + 1e-4
    assert set(trial.params) == {"lr", "batch_size", "dropout", "train.max_grad_norm", "train.weight_decay"}


@pytest.mark.parametrize("space, message", [
    ({"lr": ("loguniform", 1e-6, 5e-5)}, "natural-log bounds"),
    ({"lr": ("logunifrom", -14, -10)}, "did you mean 'loguniform'"),
    ({"batch_size": ("choice", 8, 16)}, r"expected \('choice', \[a, b, ...\]\)"),
    ({"batch_size": ("choice", [])}, "non-empty list"),
    ({"dropout": ("uniform", 0.3, 0.1)}, "low must be below high"),
    ({"dropout": ("normal", 0.2, 0.05)}, "unbounded"),
    ({"dropout": 0.2}, "expected a tuple like"),
    ({"lerning_rate": ("uniform", 0.1, 0.2)}, "did you mean 'learning_rate'"),
    ({"train.lrn": ("uniform", 0.1, 0.2)}, "not a config key"),
])
def test_from_hyperopt_errors_name_the_key_and_form(space, message):
    with pytest.raises(SpaceError, match=message) as err:
        from_hyperopt(space)
    assert repr(next(iter(space)))[1:-1] in str(err.value)


def test_bad_study_settings_are_refused_before_training(tmp_path):
    base = _base(tmp_path)
    with pytest.raises(TuneError, match="direction='minimize'"):
        TuneStudy(base, metric="loss", study_dir=tmp_path / "a")
    with pytest.raises(TuneError, match="did you mean 'median'"):
        TuneStudy(base, pruner="medain", study_dir=tmp_path / "b")
    with pytest.raises(TuneError, match="keep_checkpoints='some'"):
        TuneStudy(base, keep_checkpoints="some", study_dir=tmp_path / "b")
    hyperband = TuneStudy(base, pruner="hyperband", study_dir=tmp_path / "h").study.pruner
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner) and hyperband._min_resource == 2  # first eval
    TuneStudy(base, metric="accuracy", study_dir=tmp_path / "c")
    with pytest.raises(TuneError, match="direction='maximize'"):  # the stored study maximises
        TuneStudy(base, metric="macro_f1", direction="minimize", study_dir=tmp_path / "c",
                  study_name="tiny-bert-trec-accuracy")
