"""Domain mixing: batch composition at the ratio, a live ratio edit from the next micro-batch, label checks,
and exact resume across a live edit."""
from __future__ import annotations

import json
import math

import pytest

from nbtune.config import ConfigError, RunConfig
from nbtune.engine.run import Run
from nbtune.methods import MethodError
from tests.test_methods import _cfg, _steps
from tests.test_resume import OVERRIDES, resume_is_exact


def _general(tmp_path):
    path = tmp_path / "general.jsonl"
    path.write_text("".join(json.dumps({"text": f"general prose number {i} about weather and trains"}) + "\n"
                            for i in range(30)))
    return str(path)


def _composition(run, batches):
    n_dom = run.methods[0]._n_domain
    return [(sum(i < n_dom for i in b), sum(i >= n_dom for i in b)) for b in batches]


def test_batches_mix_domain_and_general_rows_at_the_ratio(tmp_path):
    spec = {"name": "domain_mix", "general": _general(tmp_path), "ratio": 0.7}
    run = Run(_cfg(tmp_path, "llama-like", methods=[spec]))
    plan = run.epoch_plan(0)
    assert len(plan) == 3                                               # 24 domain rows / 8: the count holds
    assert _composition(run, plan) == [(6, 2)] * 3                      # round(0.7 x 8) domain rows per batch
    general = run.data.rows["train"][run.methods[0]._n_domain:]
    assert len(general) == 27 and all(r["input_ids"] for r in general)  # the general file's train split
    run.start()
    assert [s["step"] for s in _steps(run)] == [1, 2, 3] and all(math.isfinite(s["loss"]) for s in _steps(run))


def test_live_ratio_edit_applies_from_the_next_batch_and_is_logged(tmp_path):
    spec = {"name": "domain_mix", "general": _general(tmp_path), "ratio": 0.75}
    run = Run(_cfg(tmp_path, "llama-like", "train.max_steps=3", methods=[spec]))
    run.control.set("domain_mix.ratio", 0.25, at_step=1)
    seen = []
    original = run.collate
    run.collate = lambda rows, all_rows: (seen.append(list(rows)), original(rows, all_rows))[1]
    run.start()
    assert _composition(run, seen[:3]) == [(6, 2), (2, 6), (2, 6)]      # then evaluation batches
    (edit,) = [e for e in run.control.edits if e["name"] == "domain_mix.ratio"]
    assert (edit["step"], edit["old"], edit["new"]) == (1, 0.75, 0.25)
    run2 = Run(_cfg(tmp_path, "llama-like", methods=[spec]))
    run2.control.set("domain_mix.ratio", 1.5)
    run2.service_control()                                              # refused with a warning, not a crash
    assert run2.methods[0].ratio == 0.75 and not run2.control.edits


def test_label_sets_must_match_and_bad_options_fail_early(tmp_path):
    with pytest.raises(MethodError, match=r"general data \(sms-spam\) has labels the run's data lacks: \['ham'"):
        Run(_cfg(tmp_path, "bert-like", methods=[{"name": "domain_mix", "general": "sms-spam"}]))
    with pytest.raises(ConfigError, match=r"ratio is the domain share of each batch, in \[0, 1\]; got 1.2"):
        RunConfig(methods=[{"name": "domain_mix", "general": "trec", "ratio": 1.2}]).validate()
    with pytest.raises(ConfigError, match="give general="):
        RunConfig(methods=[{"name": "domain_mix"}]).validate()


@pytest.mark.parametrize("model", ["bert-like", "deepseek-v3-like"])
def test_domain_mix_trains_three_steps(tmp_path, model):
    general = "trec" if model == "bert-like" else _general(tmp_path)
    run = Run(_cfg(tmp_path, model, methods=[{"name": "domain_mix", "general": general}]))
    run.start()
    assert [s["step"] for s in _steps(run)] == [1, 2, 3] and all(math.isfinite(s["loss"]) for s in _steps(run))


def test_domain_mix_golden_loss(tmp_path):
    run = Run(_cfg(tmp_path, "llama-like", "train.seed=7",
                   methods=[{"name": "domain_mix", "general": _general(tmp_path), "ratio": 0.5}]))
    run.start()
    assert [s["loss"] for s in _steps(run)] == pytest.approx(GOLDEN, abs=1e-5)


GOLDEN = [10.3124142, 10.2498770, 10.1645584]


def test_resume_is_bit_identical_across_a_live_ratio_edit(tmp_path):
    general = tmp_path / "general.csv"
    general.write_text("text,label\n" + "".join(f"what is thing {i} called,{lab}\n"
                                                 for i, lab in enumerate(["description", "entity", "human", "number"] * 10)))
    extra = {"overrides": [*OVERRIDES, f"methods=[{{name: domain_mix, general: '{general}', ratio: 0.75}}]"],
             "edits": [[4, "domain_mix.ratio", 0.5]]}
    resume_is_exact(tmp_path, [6, 1], **extra)
