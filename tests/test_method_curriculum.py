"""Curriculum pacing: competence values, easy-first batches from the workbench's order, the step count kept,
clear errors for bad scores, and exact resume."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nbtune.config import ConfigError, RunConfig
from nbtune.engine.run import Run
from nbtune.methods import MethodError
from nbtune.methods.curriculum import Curriculum
from tests.test_methods import _cfg, _steps
from tests.test_resume import OVERRIDES, resume_is_exact


def test_pacing_functions():
    lin, root, step = (Curriculum(pacing=p, start=0.2, stages=4) for p in ("linear", "root", "step"))
    assert lin.competence(0) == pytest.approx(0.2) and lin.competence(0.5) == pytest.approx(0.6)
    assert root.competence(0.5) == pytest.approx(math.sqrt(0.04 + 0.96 * 0.5))
    assert root.competence(0.1) > lin.competence(0.1)                   # root admits rows faster at first
    assert [step.competence(p) for p in (0, 0.24, 0.25, 0.99, 1.0)] == pytest.approx([0.2, 0.2, 0.4, 0.8, 1.0])
    assert all(c.competence(3.0) == 1.0 for c in (lin, root, step))


def test_batches_start_easy_and_keep_the_step_count(tmp_path):
    spec = {"name": "curriculum", "pacing": "linear", "start": 0.25, "full_at": 2}
    run = Run(_cfg(tmp_path, "bert-like", "data.max_train_samples=64", "train.num_train_epochs=3",
                   "train.max_steps=null", methods=[spec]))
    lengths = np.array([len(r["input_ids"]) for r in run.data.rows["train"]])
    plan0, plan1, plan2 = (run.epoch_plan(e) for e in range(3))
    assert len(plan0) == len(plan1) == 8 and run.total_steps == 24    # 64 rows / 8: the count is unchanged
    easiest = set(np.argsort(lengths, kind="stable")[:16].tolist())   # 25% of 64 rows
    assert set(plan0[0]) <= easiest                                     # the first batch: the easy quarter
    assert np.mean([lengths[i].mean() for i in map(list, plan0[:2])]) < lengths.mean()
    assert max(lengths[b].max() for b in plan0[:2]) <= lengths[plan1[-1]].max()
    assert len({i for b in plan2 for i in b}) == 64                     # full competence: a plain epoch
    assert run.epoch_plan(0) == plan0                                   # a pure function of the epoch


def test_workbench_scores_order_the_rows_and_bad_scores_fail_early(tmp_path):
    run = Run(_cfg(tmp_path, "bert-like", methods=["curriculum"]))
    n = len(run.data.rows["train"])
    scores = list(range(n, 0, -1))                                      # the last row is the easiest
    path = tmp_path / "scores.json"
    path.write_text(json.dumps(scores))
    (m,) = Run(_cfg(tmp_path, "bert-like", methods=[{"name": "curriculum", "scores": str(path)}])).methods
    assert m._order[-1] != n - 1 and (n - 1) in m._order[: n // 2]      # loss-easy rows lead within length stages
    path.write_text(json.dumps(scores[:-1]))
    with pytest.raises(MethodError, match=f"scores has {n - 1} values but the train split has {n} rows"):
        Run(_cfg(tmp_path, "bert-like", methods=[{"name": "curriculum", "scores": str(path)}]))
    with pytest.raises(ConfigError, match="pacing must be one of"):
        RunConfig(methods=[{"name": "curriculum", "pacing": "sqrt"}]).validate()
    with pytest.raises(ConfigError, match=r"start is the share of rows available at first, in \(0, 1\]"):
        RunConfig(methods=[{"name": "curriculum", "start": 0}]).validate()


@pytest.mark.parametrize("model", ["bert-like", "llama-like", "deepseek-v3-like"])
def test_curriculum_trains_three_steps(tmp_path, model):
    run = Run(_cfg(tmp_path, model, methods=[{"name": "curriculum", "start": 0.5}]))
    run.start()
    assert [s["step"] for s in _steps(run)] == [1, 2, 3] and all(math.isfinite(s["loss"]) for s in _steps(run))


def test_curriculum_golden_loss(tmp_path):
    run = Run(_cfg(tmp_path, "bert-like", "train.seed=7", methods=[{"name": "curriculum", "start": 0.3}]))
    run.start()
    assert [s["loss"] for s in _steps(run)] == pytest.approx(GOLDEN, abs=1e-5)


GOLDEN = [1.7841191, 1.7735329, 1.7644879]


def test_resume_is_bit_identical_with_curriculum(tmp_path):
    extra = {"overrides": [*OVERRIDES, "methods=[{name: curriculum, pacing: step, start: 0.25, full_at: 2}]"]}
    resume_is_exact(tmp_path, [5, 1], **extra)
