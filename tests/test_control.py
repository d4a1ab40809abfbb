"""Control: commands from any thread, applied by the loop at step boundaries and logged as edits.

Unit behaviour of the queue first, then live edits, pause/resume/stop and "checkpoint now" on real tiny runs.
"""
import json
import time
from pathlib import Path

import pytest

from nbtune.config import RunConfig
from nbtune.engine import build, checkpoint as ckpt
from nbtune.engine.control import SETTABLE, Control
from nbtune.engine.run import Run
from nbtune.engine.sinks import MemorySink

BASE = ["model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=32", "data.max_eval_samples=8",
        "data.max_length=32", "train.batch_size=8", "train.max_steps=6", "train.progress_bar=false",
        "train.tensorboard=false", "train.precision=fp32", "train.seed=11"]
DEADLINE_S = 60  # a hang guard only; nothing asserts on how long anything takes


def _config(tmp_path: Path, *extra: str) -> RunConfig:
    return RunConfig().with_overrides(BASE + [f"output_dir={tmp_path}", *extra])


def _wait_until(condition, what: str) -> None:
    end = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for: {what}")
        time.sleep(0.01)


def _steps(sink: MemorySink) -> dict[int, dict]:
    return {r["step"]: r for r in sink.of_kind("step")}


def _stop_and_wait(run: Run) -> None:
    run.control.stop()
    run.wait(timeout_s=DEADLINE_S)
    assert not run.is_running


# ------------------------------------------------------------------------------------------------ unit
def test_set_rejects_unknown_names_and_bad_values():
    c = Control()
    with pytest.raises(ValueError) as err:
        c.set("foo", 1)
    assert "'foo'" in str(err.value)
    assert all(name in str(err.value) for name in SETTABLE)
    for name, value in (("lr", -1), ("lr", 0), ("lr", None), ("max_grad_norm", -0.5), ("weight_decay", float("nan")),
                        ("lr", "1e-3")):
        with pytest.raises(ValueError):
            c.set(name, value)
    assert c.due(0, 0) == []  # nothing invalid was queued

    c.set("max_grad_norm", None)  # None disables clipping
    c.set("weight_decay", 0)
    assert [(cmd.name, cmd.value) for cmd in c.due(0, 0)] == [("max_grad_norm", None), ("weight_decay", 0.0)]


def test_scheduled_commands_are_due_only_at_their_position():
    c = Control()
    c.set("lr", 1e-4, at_step=3)
    c.stop(at_step=3, at_micro_step=1)
    c.checkpoint(at_step=5)
    c.pause()  # unscheduled: due at the next poll
    first = c.due(0, 0)
    assert [cmd.name for cmd in first] == ["pause"] and c.paused
    assert c.due(2, 0) == [] and c.due(2, 1) == []
    assert [(cmd.name, cmd.value) for cmd in c.due(3, 0)] == [("lr", 1e-4)]
    assert c.due(3, 0) == []  # returned once, then gone
    assert [cmd.name for cmd in c.due(3, 1)] == ["stop"]
    assert c.due(4, 1) == []
    assert [cmd.name for cmd in c.due(5, 0)] == ["checkpoint"]
    c.resume()
    assert [cmd.name for cmd in c.due(5, 0)] == ["resume"] and not c.paused


def test_schedule_edits_and_log():
    c = Control()
    c.schedule_edits([{"step": 2, "name": "lr", "value": 1e-4}, {"step": 1, "name": "pause"},
                      {"step": 4, "name": "weight_decay", "value": 0.1}])
    assert c.due(1, 0) == []  # only settable values are scheduled from a config
    assert [cmd.name for cmd in c.due(4, 0)] == ["lr", "weight_decay"]
    record = c.log(2, "lr", 1e-3, 1e-4)
    assert {k: record[k] for k in ("kind", "step", "name", "old", "new")} == \
        {"kind": "edit", "step": 2, "name": "lr", "old": 1e-3, "new": 1e-4}
    assert c.edits == [record]


def test_set_max_grad_norm_zero_is_rejected():
    with pytest.raises(ValueError):
        Control().set("max_grad_norm", 0)


def test_set_infinite_lr_is_rejected():
    with pytest.raises(ValueError):
        Control().set("lr", float("inf"))


def test_scheduled_edit_with_unknown_name_is_rejected():
    with pytest.raises(ValueError, match="lrr"):
        cfg = RunConfig().with_overrides({"train.edits": [{"step": 1, "name": "lrr", "value": 1e-4}]})
        Control().schedule_edits(cfg.train.edits)


# ------------------------------------------------------------------------------------------ live edits
def test_lr_edit_keeps_group_ratio_and_continues_schedule(tmp_path):
    total, lr, new_lr, at = 6, 1e-3, 4e-4, 2
    cfg = _config(tmp_path, f"train.max_steps={total}", f"train.learning_rate={lr}", "train.warmup_ratio=0",
                  "train.scheduler=linear")
    sink = MemorySink()
    run = Run(cfg, sinks=[sink], run_dir=tmp_path / "lr")
    # Give the no-decay group half the LR (as a per-layer LR method would), so "keeps the ratio" means something.
    names = [g["name"] for g in run.optimizer.param_groups]
    assert names == ["decay", "no_decay"]
    nd = run.optimizer.param_groups[1]
    nd["lr"] *= 0.5
    nd["initial_lr"] *= 0.5
    run.scheduler.base_lrs[1] *= 0.5
    run.control.set("lr", new_lr, at_step=at)
    run.start()

    lam = build.lr_lambda("linear", 0, total)
    steps = _steps(sink)
    assert sorted(steps) == list(range(1, total + 1))
    for s in range(1, total + 1):  # the record of step s carries the LR that step used: scheduler index s-1
        expected = lr * lam(s - 1) if s <= at else new_lr * lam(s - 1) / lam(at)
        assert steps[s]["lr"]["decay"] == pytest.approx(expected, rel=1e-9), s
        assert steps[s]["lr"]["no_decay"] == pytest.approx(0.5 * steps[s]["lr"]["decay"], rel=1e-9), s
    assert steps[at + 1]["lr"]["decay"] == pytest.approx(new_lr, rel=1e-9)
    assert run.scheduler.base_lrs == pytest.approx([new_lr / lam(at), 0.5 * new_lr / lam(at)], rel=1e-9)

    records = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    edits = [r for r in records if r["kind"] == "edit"]
    assert len(edits) == 1
    edit = edits[0]
    assert (edit["step"], edit["name"]) == (at, "lr")
    assert edit["old"] == pytest.approx(lr * lam(at), rel=1e-9)
    assert edit["new"] == pytest.approx(new_lr, rel=1e-9)
    assert run.control.edits[0]["name"] == "lr"


def test_clip_and_weight_decay_edits(tmp_path):
    cfg = _config(tmp_path, "train.max_steps=5", "train.max_grad_norm=null", "train.weight_decay=0.01",
                  "train.save_total_limit=null")
    sink = MemorySink()
    run = Run(cfg, sinks=[sink], run_dir=tmp_path / "clip")
    run.control.set("max_grad_norm", 1e-6, at_step=2)
    run.control.set("weight_decay", 0.5, at_step=2)
    run.control.set("max_grad_norm", None, at_step=4)
    run.start()

    steps = _steps(sink)
    assert [steps[s]["clipped"] for s in range(1, 6)] == [False, False, True, True, False]
    assert all(steps[s]["grad_norm"] > 1e-6 for s in (3, 4))

    groups = {g["name"]: g["weight_decay"] for g in run.optimizer.param_groups}
    assert groups == {"decay": 0.5, "no_decay": 0.0}
    edits = [(e["step"], e["name"], e["old"], e["new"]) for e in sink.of_kind("edit")]
    assert edits == [(2, "max_grad_norm", None, 1e-6), (2, "weight_decay", 0.01, 0.5),
                     (4, "max_grad_norm", 1e-6, None)]
    saved = ckpt.verify(ckpt.latest(run.run_dir))
    assert saved["max_grad_norm"] is None
    assert [(e["step"], e["name"]) for e in saved["edits"]] == [(2, "max_grad_norm"), (2, "weight_decay"),
                                                                (4, "max_grad_norm")]


# ------------------------------------------------------------------------------- background run control
def test_pause_resume_stop_from_another_thread(tmp_path):
    sink = MemorySink()
    run = Run(_config(tmp_path, "train.max_steps=1000"), sinks=[sink], run_dir=tmp_path / "bg")
    run.start(background=True)
    try:
        _wait_until(lambda: run.state.step >= 1, "the first step")
        run.control.pause()
        _wait_until(lambda: run.state.status == "paused", "the loop to pause")
        assert run.is_running
        paused_at = run.state.step
        for _ in range(25):  # ~0.5 s: the step must not move while paused
            time.sleep(0.02)
            assert run.state.step == paused_at
        run.control.resume()
        _wait_until(lambda: run.state.step > paused_at, "a step after resume")
    finally:
        _stop_and_wait(run)

    assert run.state.status == "stopped"
    assert run.state.step < run.total_steps
    assert [e["name"] for e in run.control.edits] == ["pause", "resume", "stop"]
    end = sink.of_kind("end")
    assert len(end) == 1 and end[0]["status"] == "stopped"
    latest = ckpt.latest(run.run_dir)
    assert latest is not None
    saved = ckpt.verify(latest)
    assert saved["state"]["step"] == run.state.step


def test_checkpoint_now_during_background_run(tmp_path):
    sink = MemorySink()
    run = Run(_config(tmp_path, "train.max_steps=1000", "train.save_total_limit=null"), sinks=[sink],
              run_dir=tmp_path / "now")
    run.start(background=True)
    try:
        _wait_until(lambda: run.state.step >= 1, "the first step")
        run.control.checkpoint()
        _wait_until(lambda: sink.of_kind("checkpoint"), "the checkpoint record")
        path = Path(sink.of_kind("checkpoint")[0]["path"])
    finally:
        _stop_and_wait(run)
    assert path.parent == run.run_dir / "checkpoints" and path.name.startswith("step-")
    saved = ckpt.verify(path)
    assert saved["state"]["step"] == int(path.name.split("-")[1])
    assert saved["config_fingerprint"] == run.cfg.fingerprint()
    assert (path / ckpt.MANIFEST).is_file()
