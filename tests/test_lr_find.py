"""The LR range test: it leaves the run exactly as it was (weights, RNG, optimizer, scheduler, and the training
that follows), sweeps a geometric LR grid, stops on divergence, picks the mode's range, refuses bad options,
and on MiniLM / intents-en suggests a value within [1e-5, 2e-4] (integration)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import nbtune.methods.lora  # noqa: F401  (registers "lora")
from nbtune.config import RunConfig
from nbtune.engine.run import Run
from nbtune.tune.lr_find import LRFindResult, lr_find, suggest


def _cfg(tmp_path, *extra: str, methods=()) -> RunConfig:
    cfg = RunConfig().with_overrides([
        "task=classification", "model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=24",
        "data.max_eval_samples=8", "train.batch_size=8", "train.max_steps=3", "train.learning_rate=1e-3",
        "train.warmup_ratio=0", "train.scheduler=constant", "train.progress_bar=false", "train.tensorboard=false",
        "train.sync_every_n_steps=1", f"output_dir={tmp_path}", *extra])
    cfg.methods = list(methods)
    return cfg


def _losses(run) -> list[float]:
    lines = (run.run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["kind"] == "step"]


def _weights(run) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in run.raw_model.state_dict().items()}


def test_run_is_untouched_and_trains_exactly_as_without_lr_find(tmp_path):
    fresh = Run(_cfg(tmp_path / "a", "run_name=fresh"))
    fresh.start()

    run = Run(_cfg(tmp_path / "b", "run_name=swept"))
    weights, rng = _weights(run), torch.get_rng_state()
    lrs, base_lrs = [g["lr"] for g in run.optimizer.param_groups], list(run.scheduler.base_lrs)
    result = lr_find(run, num_steps=12)
    assert len(result.lrs) >= 10 and result.losses[-1] != result.losses[0]      # the sweep did train
    after = _weights(run)
    assert all(torch.equal(weights[k], after[k]) for k in weights)                # bit-identical weights
    assert torch.equal(rng, torch.get_rng_state())                               # and RNG
    assert all(p.grad is None for p in run.raw_model.parameters())
    assert run.optimizer.state == {} and [g["lr"] for g in run.optimizer.param_groups] == lrs
    assert run.scheduler.base_lrs == base_lrs and run.scheduler.last_epoch == 0
    assert run.state.step == 0 and run.state.status == "ready"
    run.start()
    assert _losses(run) == _losses(fresh) and len(_losses(run)) == 3             # the same three losses, exactly


def test_grid_is_geometric_and_divergence_stops_the_sweep(tmp_path):
    run = Run(_cfg(tmp_path))
    result = lr_find(run, start_lr=1e-4, end_lr=1e3, num_steps=40, diverge=1.5)
    assert result.stopped_early and 6 <= len(result.lrs) < 40
    ratios = np.diff(np.log(result.lrs))
    assert np.all(ratios > 0) and np.allclose(ratios, math.log(1e7) / 39)          # monotone, exponential
    assert result.lrs[0] == pytest.approx(1e-4)
    last = result.smoothed[-1]
    assert last > 1.5 * min(result.smoothed) or not math.isfinite(result.losses[-1])
    assert all(s <= 1.5 * min(result.smoothed[:i + 1]) for i, s in enumerate(result.smoothed[:-1]))


def test_result_fields_rule_and_rendering(tmp_path):
    run = Run(_cfg(tmp_path))
    r = lr_find(run, num_steps=10)
    assert isinstance(r, LRFindResult) and r.mode == "full" and r.usual_range == (1e-5, 1e-4)
    assert r.lrs[0] == pytest.approx(1e-7) and r.lrs[-1] == pytest.approx(1e-2) and not r.stopped_early
    assert len(r.lrs) == len(r.losses) == len(r.smoothed) == 10 and r.warmup_steps == 2
    assert r.lr_at_min == r.lrs[int(np.argmin(r.smoothed))]
    assert r.suggestion_unclipped == pytest.approx(r.lr_at_min / 30)
    assert 5e-6 <= r.suggestion <= 2e-4 and r.lrs[0] <= r.naive_suggestion <= r.lrs[-1]
    assert "starting point" in r.note and "starting point" in r.summary()
    d = json.loads(json.dumps(r.to_dict()))
    assert d["suggestion"] == r.suggestion and d["usual_range"] == [1e-5, 1e-4] and d["mode"] == "full"
    page = r._repr_html_()
    assert "<svg" in page and "Suggested starting point" in page and "<polyline" in page
    r.mode = "<b>x</b>"
    assert "&lt;b&gt;x&lt;/b&gt;" in r._repr_html_()                                 # text is escaped


def test_suggestion_rule_on_a_transformer_shaped_curve():
    # A plateau, a late steep drop near 1e-3 and divergence after 3e-3: the shape measured on MiniLM.
    lrs = list(np.logspace(-7, -2, 51))
    loss = [3.5 - 1.2 / (1 + math.exp(-(math.log10(lr) + 3.0) * 4)) for lr in lrs]
    loss = [v if lr <= 3.2e-3 else v + 50 * (math.log10(lr) + 2.5) for v, lr in zip(loss, lrs)]
    picks = suggest(lrs, loss, (1e-5, 1e-4))
    assert picks["lr_at_min"] == pytest.approx(lrs[45])                              # ~3.2e-3, the stability edge
    assert picks["suggestion"] == pytest.approx(lrs[45] / 30) and 1e-5 <= picks["suggestion"] <= 2e-4
    assert picks["naive_suggestion"] == pytest.approx(1e-3)                          # the naive finder's 1e-3
    low = suggest(lrs[:20], [3.0 - 0.01 * i for i in range(20)], (1e-5, 1e-4))
    assert low["suggestion"] == pytest.approx(5e-6) and low["suggestion_unclipped"] < 5e-6   # clipped up


def test_lora_mode_uses_the_lora_range_and_restores_adapters(tmp_path):
    run = Run(_cfg(tmp_path, methods=[{"name": "lora", "r": 4}]))
    weights = _weights(run)
    r = lr_find(run, num_steps=10)
    assert r.mode == "lora" and r.usual_range == (1e-4, 1e-3)
    assert r.lrs[0] == pytest.approx(1e-6) and r.lrs[-1] == pytest.approx(1e-1)
    assert 5e-5 <= r.suggestion <= 2e-3
    after = _weights(run)
    assert any("lora_B" in k for k in after) and all(torch.equal(weights[k], after[k]) for k in weights)
    assert lr_find(run, num_steps=10, mode="full").usual_range == (1e-5, 1e-4)        # an explicit mode wins


@pytest.mark.parametrize("options, message", [
    ({"start_lr": 1e-3, "end_lr": 1e-5}, "start_lr must be below end_lr, got start_lr=0.001 >= end_lr=1e-05"),
    ({"start_lr": 1e-4, "end_lr": 1e-4}, "start_lr must be below end_lr"),
    ({"num_steps": 5}, "num_steps must be a whole number >= 10"),
    ({"mode": "lroa"}, "mode must be one of auto, full, lora, got 'lroa'. Did you mean 'lora'"),
    ({"smooth": 1.0}, "smooth .* must be in \\[0, 1\\)"),
    ({"diverge": 1.0}, "diverge .* must be > 1"),
])
def test_bad_options_are_refused_before_any_step(tmp_path, options, message):
    run = Run(_cfg(tmp_path))
    weights = _weights(run)
    with pytest.raises(ValueError, match=message):
        lr_find(run, **options)
    assert all(torch.equal(weights[k], v) for k, v in _weights(run).items())


@pytest.mark.integration
def test_minilm_intents_suggestion_is_in_the_fine_tuning_range(tmp_path):
    cfg = RunConfig().with_overrides([
        "task=classification", "model.name=minilm", "data.dataset=intents-en", "data.max_train_samples=2000",
        "data.max_eval_samples=16", "data.max_length=32", "train.batch_size=16", "train.progress_bar=false",
        "train.tensorboard=false", f"output_dir={tmp_path}"])
    run = Run(cfg)
    weights = _weights(run)
    r = lr_find(run, num_steps=80)
    print(r.summary())
    print(f"ours {r.suggestion:.2e} (unclipped {r.suggestion_unclipped:.2e}), naive {r.naive_suggestion:.2e}, "
          f"minimum at {r.lr_at_min:.2e}")
    assert r.mode == "full"
    assert 1e-5 <= r.suggestion <= 2e-4
    assert 1e-5 <= r.suggestion_unclipped <= 2e-4                  # the rule lands there itself, not by clipping
    assert r.naive_suggestion > 2e-4                                 # the naive rule on the same curve does not
    assert all(torch.equal(weights[k], v) for k, v in _weights(run).items())
