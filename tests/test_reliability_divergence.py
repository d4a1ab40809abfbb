"""Catalogue group C: the divergence guard on real tiny runs. A non-finite step is skipped on the device (weights
and AdamW state untouched), counted and reported at the next flush; a run that keeps failing halts with its
checkpoints intact; a loss spike rolls back to the newest checkpoint before it with the LR halved.

"R" is tiny-bert (random init) on 2000 trec rows, batch 16, 300 steps, fp32, clipping at 1.0, flushing every 10 steps.
"""
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nbtune.config import ConfigError, RunConfig, TrainConfig
from nbtune.engine import build, checkpoint as ckpt, loop
from nbtune.engine.guard import Guard
from nbtune.engine.run import Run
from nbtune.engine.sinks import MemorySink

R = ["task=classification", "model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=2000",
     "data.max_eval_samples=16", "data.max_length=32", "train.batch_size=16", "train.max_steps=300",
     "train.learning_rate=1e-3", "train.warmup_ratio=0.1", "train.eval_every_n_steps=0", "train.max_grad_norm=1.0",
     "train.sync_every_n_steps=10", "train.progress_bar=false", "train.tensorboard=false", "train.precision=fp32",
     "train.seed=3"]
SPIKE = ["train.spike_factor=3.0", "train.spike_ema_steps=20", "train.spike_lr_factor=0.5", "train.max_rollbacks=3"]


def _run(tmp_path: Path, *extra: str, name: str = "r") -> tuple[Run, MemorySink]:
    sink = MemorySink()
    cfg = RunConfig().with_overrides(R + [f"output_dir={tmp_path}", f"run_name={name}", *extra])
    return Run(cfg, sinks=[sink]), sink


def _nan_loss_at(run: Run, first_step: int, last_step: float = math.inf) -> None:
    """A forward hook that makes the loss NaN on the steps first_step..last_step (1-based, as logged)."""
    def hook(module, args, kwargs, out):
        if first_step <= run.state.step + 1 <= last_step:
            out.loss = out.loss * float("nan")
        return out
    run.model.register_forward_hook(hook, with_kwargs=True)


def _snapshot(run: Run) -> dict:
    state = {f"opt/{i}/{k}": v.clone() for i, s in enumerate(run.optimizer.state.values()) for k, v in s.items()}
    return {**{n: p.detach().clone() for n, p in run.raw_model.named_parameters()}, **state}


def _max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def _steps(sink: MemorySink) -> dict[int, dict]:
    return {r["step"]: r for r in sink.of_kind("step")}


def _guard_events(sink: MemorySink, event: str) -> list[dict]:
    return [r for r in sink.of_kind("guard") if r["event"] == event]


def _final_train_loss(run: Run) -> float:
    """The final weights' loss over the whole training split (a logged step's loss is one batch of 16: too noisy
    to compare two runs that see different batches after a rollback)."""
    return loop.evaluate(run, "train")["loss"]


def _non_finite_in_checkpoint(path: Path) -> int:
    """Non-finite elements in every file of a checkpoint: weights, optimizer/scheduler state, RNG, gradients."""
    count = 0
    for file in path.iterdir():
        if file.suffix == ".safetensors":
            tensors = list(load_file(str(file)).values())
        elif file.suffix == ".pt":
            tensors = _tensors(ckpt.load_torch(file))
        else:
            continue
        count += sum(int((~torch.isfinite(t)).sum()) for t in tensors if t.is_floating_point())
    return count


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


# ------------------------------------------------------------------------------------------------ unit
def test_guard_refuses_settings_that_cannot_work():
    with pytest.raises(ConfigError, match="train.save_every_n_steps"):
        Guard(TrainConfig(spike_factor=3.0))
    with pytest.raises(ConfigError, match="spike_factor must be > 1"):
        Guard(TrainConfig(spike_factor=0.5, save_every_n_steps=10))
    with pytest.raises(ConfigError, match="single process"):
        Guard(TrainConfig(spike_factor=3.0, save_every_n_steps=10), world_size=2)
    with pytest.raises(ConfigError, match="max_consecutive_skips must be >= 1"):
        Guard(TrainConfig(max_consecutive_skips=0))
    with pytest.raises(ConfigError, match="min_micro_batch_size"):
        Guard(TrainConfig(min_micro_batch_size=0))
    assert Guard(TrainConfig(spike_factor=3.0, save_every_n_steps=10)).alpha == pytest.approx(2 / 21)


def test_guard_on_by_default_leaves_a_clean_run_bit_identical(tmp_path):
    """The default guard (skip non-finite steps through the fused kernel's found_inf, halt after 5) changes
    nothing on a clean run: weights and AdamW state equal a run with every guard option off, bit for bit."""
    short = ["train.max_steps=12", "data.max_train_samples=96", "train.gradient_accumulation_steps=2"]
    on, _ = _run(tmp_path, *short, name="guard-on")
    on.start()  # built and trained one after the other: each Run seeds the global RNG that dropout draws from
    off, _ = _run(tmp_path, *short, "train.skip_nonfinite_steps=false", "train.max_consecutive_skips=null",
                  "train.oom_backoff=false", name="guard-off")
    off.start()
    assert on.state.guard.skipped_steps == 0 and on.state.step == 12
    assert _max_abs_diff(_snapshot(on), _snapshot(off)) == 0.0
    assert ckpt.weights_digest(on.raw_model) == ckpt.weights_digest(off.raw_model)


# ------------------------------------------------------------------------------------------------ C1-C4
@pytest.mark.integration
def test_C1_one_nan_loss_is_skipped(tmp_path):
    run, sink = _run(tmp_path)
    _nan_loss_at(run, 50, 50)
    run.control.stop(at_step=49)
    run.start()
    before = _snapshot(run)
    run.control.stop(at_step=50)
    run.start()
    after = _snapshot(run)
    assert _max_abs_diff(before, after) == 0.0  # weights, exp_avg, exp_avg_sq and AdamW's step count
    run.start()
    assert run.state.status == "finished" and run.state.step == 300

    assert run.state.guard.skipped_steps == 1
    [skip] = _guard_events(sink, "nan_skipped")
    assert (skip["step"], skip["reason"], skip["skipped_steps"]) == (50, "loss", 1)
    # Reported in the flush that carries step 50 itself (every 10 steps), before any later step's record.
    order = sink.records.index
    assert order(skip) < order(_steps(sink)[51])
    # Documented policy: a skipped step still counts, so the scheduler advanced on all 300 steps and the LR of
    # every step is the plain schedule's.
    assert run.scheduler.last_epoch == 300
    factor = build.lr_lambda("linear", 30, 300)
    steps = _steps(sink)
    for s in (50, 51, 300):
        assert steps[s]["lr"]["decay"] == 1e-3 * factor(s - 1)
    assert steps[50]["skipped"] is True and "skipped" not in steps[51]
    assert sorted(steps) == list(range(1, 301))
    assert math.isnan(steps[50]["loss"])
    assert all(math.isfinite(steps[s]["loss"]) for s in steps if s != 50)
    assert math.isfinite(steps[300]["loss"])
    assert all(torch.isfinite(p).all() for p in run.raw_model.parameters())


@pytest.mark.integration
def test_C2_inf_gradient_with_clipping_is_skipped(tmp_path):
    run, sink = _run(tmp_path)
    weight = run.raw_model.classifier.weight

    def poison(grad):  # one element of one gradient becomes inf on step 80
        if run.state.step + 1 == 80:
            grad = grad.clone()
            grad[0, 0] = float("inf")
        return grad
    weight.register_hook(poison)
    run.start()
    assert run.state.status == "finished"
    assert sum(int((~torch.isfinite(p)).sum()) for p in run.raw_model.parameters()) == 0
    [skip] = _guard_events(sink, "nan_skipped")
    assert (skip["step"], skip["reason"]) == (80, "gradient")
    assert run.state.guard.skipped_steps == 1
    steps = _steps(sink)
    assert steps[80]["grad_norm"] == math.inf and steps[80]["skipped"] is True  # shown, not filtered
    assert steps[80]["clipped"] is True
    assert all(math.isfinite(steps[s]["grad_norm"]) for s in steps if s != 80)
    logged = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["grad_norm"] for r in logged if r["kind"] == "step" and r["step"] == 80] == ["inf"]


@pytest.mark.parametrize("limit, halted_at", [(5, 54), (3, 52)])
def test_C3_persistent_nan_halts_with_state_intact(tmp_path, limit, halted_at):
    run, sink = _run(tmp_path, "train.save_every_n_steps=10", "train.save_total_limit=null",
                     f"train.max_consecutive_skips={limit}")
    _nan_loss_at(run, 50)
    run.start()
    assert run.state.status == f"diverged at step {halted_at}"
    [halt] = _guard_events(sink, "halted")
    assert halt["step"] == halted_at and f"diverged at step {halted_at}" in halt["message"]
    assert sink.of_kind("end")[-1]["status"] == f"diverged at step {halted_at}"
    # The loop learns of the skips at the flush (step 60) and stops there; no update was applied after 49.
    assert run.state.step == 60 and run.state.guard.skipped_steps == 11
    assert _guard_events(sink, "save_skipped")  # step 50's checkpoint was not written

    saved = sorted((run.run_dir / "checkpoints").glob("step-*"))
    assert [p.name for p in saved] == [f"step-{s:06d}" for s in (10, 20, 30, 40)]
    assert [_non_finite_in_checkpoint(p) for p in saved] == [0, 0, 0, 0]
    last = ckpt.latest(run.run_dir)
    assert int(last.name.split("-")[1]) <= 49
    resumed = Run.resume(run.run_dir, run.cfg)
    assert resumed.state.step == 40
    assert all(torch.isfinite(p).all() for p in resumed.raw_model.parameters())


def _poison_step(run: Run, step: int, seen: list) -> None:
    """The batch of `step` (1-based) gets shuffled labels and a loss x10, whenever those rows are trained on."""
    poisoned: set[tuple[int, ...]] = set()
    collate, flag = run.collate, {"on": False}

    def collate_poisoned(indices, rows):
        batch = collate(indices, rows)
        if run.state.step + 1 == step and not poisoned:
            poisoned.add(tuple(indices))
        if tuple(indices) in poisoned:
            seen.append(run.state.step + 1)
            order = torch.randperm(len(indices), generator=torch.Generator().manual_seed(0))
            batch["labels"] = batch["labels"][order]
            flag["on"] = True
        return batch

    def times_ten(module, args, kwargs, out):
        if flag["on"]:
            out.loss, flag["on"] = out.loss * 10, False
        return out
    run.collate = collate_poisoned
    run.model.register_forward_hook(times_ten, with_kwargs=True)


@pytest.fixture(scope="module")
def clean_spike_runs(tmp_path_factory):
    """Ten clean seeded runs of R with the spike detector on: the false-positive count, and R's (seed 3) final
    training loss and step records as the reference for the rollback run."""
    tmp = tmp_path_factory.mktemp("clean")
    fired, reference = [], None
    for seed in range(10):
        run, sink = _run(tmp, *SPIKE, "train.save_every_n_steps=1000", f"train.seed={seed}", name=f"s{seed}")
        run.start()
        assert run.state.status == "finished"
        fired.append(len(sink.of_kind("guard")))
        if seed == 3:
            reference = (_final_train_loss(run), _steps(sink))
    return fired, reference


@pytest.mark.integration
def test_C4_spike_detector_never_fires_on_clean_runs(clean_spike_runs):
    fired, _ = clean_spike_runs
    assert fired == [0] * 10  # false-positive rate 0/10


@pytest.mark.integration
def test_C4_loss_spike_rollback(tmp_path, clean_spike_runs):
    _, (clean_loss, clean_steps) = clean_spike_runs
    run, sink = _run(tmp_path, *SPIKE, "train.save_every_n_steps=10", "train.seed=3")
    seen: list[int] = []
    _poison_step(run, 200, seen)
    run.start()
    assert run.state.status == "finished" and run.state.step == 300

    [rollback] = _guard_events(sink, "spike_rollback")
    assert rollback["step"] == 200 and rollback["ratio"] > 3.0
    assert Path(rollback["checkpoint"]).name == "step-000190" and rollback["restored_step"] == 190
    [lr_edit] = [e for e in sink.of_kind("edit") if e["name"] == "lr"]
    assert lr_edit["step"] == 190 and lr_edit["new"] == pytest.approx(0.5 * lr_edit["old"], rel=1e-12)
    assert rollback["lr"] == lr_edit["new"]
    assert seen == [200]  # the offending batch was trained on once, then left out
    assert run.state.guard.rollbacks == 1 and len(run.state.guard.skipped_batches) == 1
    steps = _steps(sink)  # later records win: the replayed steps 191.. replace the abandoned ones
    for s in (191, 250, 300):  # the schedule goes on from the halved LR
        assert steps[s]["lr"]["decay"] == pytest.approx(0.5 * clean_steps[s]["lr"]["decay"], rel=1e-9)
    assert _final_train_loss(run) <= 1.05 * clean_loss


# ------------------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
def test_C5_fp16_overflow_skips_are_counted(tmp_path):
    """R on CUDA in fp16 with GradScaler's defaults (init_scale 65536): every step where the scale dropped is a
    skipped step in the guard's count and in the records the panel gets, and no other step is. The scheduler
    advances on all 300 steps (the documented policy), and the fused optimizer is stepped every time (found_inf
    tells it to leave a skipped step alone), so torch's 'lr_scheduler.step() before optimizer.step()' warning
    never fires."""
    import warnings
    run, sink = _run(tmp_path, "train.precision=fp16")
    assert run.device.type == "cuda" and run.scaler is not None
    assert run.scaler.get_scale() == 65536.0
    dropped: list[int] = []
    update = run.scaler.update

    def watched_update(*args, **kwargs):
        before = run.scaler.get_scale()
        update(*args, **kwargs)
        if run.scaler.get_scale() < before:
            dropped.append(run.state.step + 1)  # update() runs inside optimizer_step, before the count moves
    run.scaler.update = watched_update
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.start()
    assert run.state.status == "finished" and run.state.step == 300
    skipped = [r["step"] for r in _guard_events(sink, "nan_skipped")]
    assert skipped == dropped and run.state.guard.skipped_steps == len(dropped)
    assert all(r["reason"] == "overflow" for r in _guard_events(sink, "nan_skipped"))
    assert run.scheduler.last_epoch == 300
    assert [str(w.message) for w in caught if "lr_scheduler.step()" in str(w.message)] == []
