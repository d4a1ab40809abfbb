"""Catalogue group E, unit tier: Stop from another thread (E1), a double interrupt during a checkpoint save (E4) and
no worker processes (E5). E2 is tests/test_reliability_interrupt.py; E1, E3, E6 and E7 through a real kernel are
tests/faults/test_E_kernel.py. Behaviour documented in docs/interrupts.md.

Scaled like groups A and B: tiny-bert on 64 trec rows, batch 8. The catalogue's stop at step 137 is a stop after
step 5 here; its step-150 save is the periodic save that each E4 trial reaches (every 2 steps); its 0.5 s pad
of the save is 0.25 s here (both interrupts are sent 0 and 50 ms into the pad, so they always land in it).
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from nbtune.config import RunConfig
from nbtune.engine import checkpoint as ckpt
from nbtune.engine.control import FORCE_AFTER
from nbtune.engine.run import Run
from tests.faults.harness import writer_hooks

BASE = ["task=classification", "model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=64",
        "data.max_eval_samples=16", "train.batch_size=8", "train.progress_bar=false", "train.tensorboard=false",
        "train.precision=fp32", "train.sync_every_n_steps=1"]
LONG = BASE + ["train.max_steps=100000"]                  # runs until stopped
E4 = LONG + ["train.save_every_n_steps=2", "train.save_total_limit=2"]
PAD_S, APART_S, TRIALS = 0.25, 0.05, 20
# Where in the save the interrupts land, one per trial in turn: every file write and the rename into place.
POINTS = [f"{event} write {name}" for name in ("rng-rank0.pt", "model.safetensors", "state.pt",
                                                "trainer_state.json", "manifest.json")
          for event in ("before", "after")] + ["before rename step-N", "after rename step-N"]


def child_processes(before: list[psutil.Process] = ()) -> list[psutil.Process]:
    """This process's children that were not in `before` (in the full suite the browser tier's JupyterLab
    server and its kernels are children of the pytest process too)."""
    known = {p.pid for p in before}
    return [p for p in psutil.Process().children(recursive=True) if p.pid not in known]


def _until(predicate, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the training thread"
        time.sleep(0.01)


def _all_checkpoints_complete(run_dir: Path) -> list[int]:
    """Every step-* directory verifies (0 torn files) and no staging or moved-aside directory is left; returns the
    steps on disk. metrics.jsonl has no torn line either."""
    root = run_dir / "checkpoints"
    leftovers = sorted(p.name for p in root.iterdir() if not p.name.startswith("step-"))
    assert leftovers == [], f"partial save directories left: {leftovers}"
    steps = [ckpt.verify(p)["state"]["step"] for p in sorted(root.glob("step-*"))]
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        json.loads(line)
    return steps


@pytest.fixture
def started():
    """Runs a test starts in the background; any still training at teardown is stopped. A failed assertion must not
    leave a 100,000-step run in the test process: it would draw from torch's global RNG beside later tests."""
    runs: list[Run] = []
    yield runs
    for run in runs:
        if run.is_running:
            run.control.stop()
            run._done.wait(120)


# ------------------------------------------------------------------------------------------------------ E1
def test_E1_stop_from_another_thread_within_one_step_leaves_checkpoint_no_threads_no_children(tmp_path, started):
    run = Run(RunConfig().with_overrides(LONG), run_dir=tmp_path / "run")
    started.append(run)
    threads_before, children_before = set(threading.enumerate()), child_processes()
    run.start(background=True)
    _until(lambda: run.state.step >= 5)
    assert child_processes(children_before) == []  # in-process collation: no workers even while training
    clicked: dict = {}

    def click() -> None:  # what the panel's Stop handler does, from a thread that is not the training thread
        clicked["step"], clicked["t"] = run.state.step, time.perf_counter()
        run.control.stop()
    button = threading.Thread(target=click)
    button.start()
    button.join()
    run.wait(timeout_s=120)
    latency = time.perf_counter() - clicked["t"]
    assert run.state.status == "stopped" and run.error is None and not run.is_running
    assert clicked["step"] <= run.state.step <= clicked["step"] + 1  # within 1 optimizer step of the click
    saved = ckpt.latest(run.run_dir)
    assert saved is not None and saved.name == f"step-{run.state.step:06d}"
    assert ckpt.verify(saved)["state"]["step"] == run.state.step
    assert set(threading.enumerate()) - threads_before == set()  # the run left no thread (count back too)
    assert child_processes(children_before) == []
    print(f"E1: stop clicked at step {clicked['step']}, stopped at {run.state.step}; thread gone and checkpoint "
          f"verified {latency:.3f} s after the click")


# ------------------------------------------------------------------------------------------------------ E5
def test_E5_no_worker_processes_after_stop_and_a_second_run_starts(tmp_path, capfd, monkeypatch, started):
    """The catalogue's `num_workers=2` does not exist: nbtune collates in-process (engine/loop.py builds no
    DataLoader). This asserts that, and what E5 asks of a stop: no child left, no worker noise, a second run."""
    loaders: list = []
    real_init = torch.utils.data.DataLoader.__init__
    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__",
                        lambda self, *a, **k: (loaders.append(k), real_init(self, *a, **k))[1])
    children_before = child_processes()
    first = Run(RunConfig().with_overrides(LONG), run_dir=tmp_path / "first")
    started.append(first)
    first.start(background=True)
    _until(lambda: first.state.step >= 3)
    first.control.stop()
    first.wait(timeout_s=120)
    assert first.state.status == "stopped" and first.error is None
    assert child_processes(children_before) == []

    second = Run(RunConfig().with_overrides(BASE + ["train.max_steps=6"]), run_dir=tmp_path / "second")
    second.start()
    assert second.state.status == "finished" and second.state.step == 6
    assert loaders == []  # neither run built a torch DataLoader, so there were no workers to leave behind
    assert child_processes(children_before) == []
    err = capfd.readouterr().err
    assert "Exception ignored" not in err and "DataLoader" not in err


# ------------------------------------------------------------------------------------------------------ E4
def _interrupting_hook(point: str, trial: dict):
    """A writer hook: at the first `point` of the trial's save, send SIGINT to this process twice, APART_S apart,
    inside a PAD_S pause of the save (from whichever thread saves: the training thread or the main thread)."""
    def hook(event: str, kind: str, path: Path) -> None:
        name = "step-N" if path.name.startswith("step-") else path.name
        if trial.get("fired") or f"{event} {kind} {name}" != point:
            return
        trial["fired"], trial["step"] = True, trial["run"].state.step
        started = time.perf_counter()
        for _ in range(trial.get("count", 2)):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(APART_S)
        time.sleep(max(0.0, PAD_S - (time.perf_counter() - started)))
    return hook


def _double_interrupt_trials(tmp_path: Path, background: bool, capsys, started: list) -> dict:
    run = Run(RunConfig().with_overrides(E4), run_dir=tmp_path / "run")
    started.append(run)
    outcome = {"complete": 0, "absent": 0, "points": set()}
    for i in range(TRIALS):
        point = POINTS[i % len(POINTS)]
        trial = {"run": run}
        with writer_hooks(_interrupting_hook(point, trial)), pytest.raises(KeyboardInterrupt):
            if background:  # the notebook's way: the thread trains, a cell waits in run.wait()
                run.start(background=True).wait(timeout_s=120)
            else:           # training in the main thread, where the interrupts land inside the save itself
                run.start()
        assert trial.get("fired"), f"trial {i}: the save never reached {point}"
        assert run.state.status == "stopped" and run.error is None and not run.is_running, (i, point)
        steps = _all_checkpoints_complete(run.run_dir)
        where = run.run_dir / "checkpoints" / f"step-{trial['step']:06d}"
        outcome["complete" if where.exists() else "absent"] += 1
        assert not where.exists() or trial["step"] in steps
        assert "(1 more interrupt(s) ignored while it saved)" in capsys.readouterr().err, (i, point)
        outcome["points"].add(point)
    assert outcome["points"] == set(POINTS)
    return outcome


@pytest.mark.parametrize("background", [True, False], ids=["thread-and-wait", "foreground"])
def test_E4_double_interrupt_during_save_leaves_a_complete_or_no_checkpoint(tmp_path, capsys, background, started):
    outcome = _double_interrupt_trials(tmp_path, background, capsys, started)
    assert outcome["complete"] + outcome["absent"] == TRIALS
    print(f"E4 ({'thread' if background else 'foreground'}): {TRIALS} trials, {outcome['complete']} complete and "
          f"verified, {outcome['absent']} absent, 0 torn, over {len(POINTS)} positions in the save")


def test_E4_a_third_interrupt_aborts_the_save_without_tearing_it(tmp_path, capsys):
    """The escape hatch for a hung foreground loop: interrupt FORCE_AFTER times and the run ends at once, without the
    Stop's checkpoint; what is on disk is still only complete checkpoints."""
    run = Run(RunConfig().with_overrides(E4), run_dir=tmp_path / "run")
    trial = {"run": run, "count": FORCE_AFTER}
    with writer_hooks(_interrupting_hook("after write state.pt", trial)), \
            pytest.raises(KeyboardInterrupt, match="aborted without the Stop's checkpoint"):
        run.start()
    assert run.state.status == "error" and isinstance(run.error, KeyboardInterrupt)
    assert _all_checkpoints_complete(run.run_dir) == []  # the first save (step 2) was the one aborted
    end = json.loads((run.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert end["kind"] == "end" and end["status"] == "error" and "KeyboardInterrupt" in end["message"]
