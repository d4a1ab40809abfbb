"""`launch(config, num_processes)`: N training processes from one Python process through accelerate's
notebook_launcher. The refusals are checked in-process (nothing is launched); the launch itself runs in a
separate interpreter, as a notebook kernel would call it, because it forks the calling process."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from nbtune.config import RunConfig
from nbtune.engine import launch as launch_mod
from nbtune.engine.launch import LaunchError, check_can_launch, launch


def _cfg(tmp_path, *extra: str) -> RunConfig:
    return RunConfig().with_overrides([
        "model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=64", "data.max_eval_samples=16",
        "train.batch_size=8", "train.max_steps=4", "train.progress_bar=false", "train.tensorboard=false",
        f"output_dir={tmp_path}", "train.precision=fp32", *extra])


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_num_processes_must_be_a_whole_number_from_one(tmp_path, bad):
    with pytest.raises(ValueError, match="num_processes must be a whole number >= 1") as err:
        launch(_cfg(tmp_path), num_processes=bad)
    assert str(err.value).endswith(f"got {bad!r}")


def test_unknown_mixed_precision_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mixed_precision must be one of no, fp16, bf16, got 'fp8'"):
        launch(_cfg(tmp_path), 2, mixed_precision="fp8")


def test_cuda_initialised_in_this_process_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    with pytest.raises(LaunchError, match="CUDA is already initialised in this process.*restart the kernel and "
                                          "call launch before anything touches the GPU"):
        launch(_cfg(tmp_path), 2)


def test_more_processes_than_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(launch_mod, "_visible_gpus", lambda: 1)
    with pytest.raises(LaunchError, match=r"num_processes=2 but this machine has 1 visible GPU\(s\).*"
                                          r"num_processes<=1"):
        check_can_launch(2)
    check_can_launch(1)  # one process per GPU is fine


def test_a_distributed_accelerate_state_is_refused(monkeypatch):
    from accelerate.state import PartialState
    monkeypatch.setattr(PartialState, "_shared_state", {"num_processes": 2, "distributed_type": "MULTI_CPU"})
    with pytest.raises(LaunchError, match=r"accelerate state for 2 processes \(MULTI_CPU\).*cannot be set aside"):
        check_can_launch(2)


def test_a_one_process_accelerate_state_is_set_aside_and_restored():
    from accelerate import PartialState
    from accelerate.state import AcceleratorState
    state = PartialState(cpu=True)  # what a Run built in the kernel leaves behind
    held = PartialState._shared_state
    assert held and held["num_processes"] == 1
    check_can_launch(2)
    with launch_mod._accelerate_state_set_aside():
        assert PartialState._shared_state == {} and AcceleratorState._shared_state == {}
    assert PartialState._shared_state is held and state.num_processes == 1


def test_run_launch_passes_on_the_dataset_it_was_built_with(tmp_path, monkeypatch):
    from datasets import Dataset, DatasetDict
    from nbtune.engine import launch as launch_module
    from nbtune.engine.run import Run
    rows = {"text": [f"question number {i}" for i in range(24)], "label": [i % 2 for i in range(24)]}
    data = DatasetDict({s: Dataset.from_dict(rows) for s in ("train", "validation", "test")})
    run = Run(_cfg(tmp_path), data)
    seen = {}
    monkeypatch.setattr(launch_module, "launch", lambda cfg, n, **options: seen.update(options, n=n) or {})
    run.launch(2)
    assert seen["dataset"] is data and seen["n"] == 2 and seen["run_dir"] == run.run_dir
    monkeypatch.undo()
    with pytest.raises(ValueError, match="num_processes must be a whole number"):
        run.launch(0)  # the real launcher's own check comes next, before anything is forked


SCRIPT = """
import json, sys
from nbtune.config import RunConfig
from nbtune.engine.launch import LaunchError, launch
from nbtune.engine.run import Run

cfg = RunConfig().with_overrides([
    "model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=64", "data.max_eval_samples=16",
    "train.batch_size=8", "train.max_steps=4", "train.progress_bar=false", "train.tensorboard=false",
    "output_dir=" + sys.argv[1], "train.precision=fp32", "run_name=launched"])
try:  # every rank fails while loading its data: the error names the rank and the cause
    launch(cfg.with_overrides(["data.dataset=" + sys.argv[1] + "/missing.csv", "run_name=broken"]), 2)
except LaunchError as exc:
    print("FAILED " + json.dumps({"message": str(exc), "ranks": sorted(exc.summaries)}), flush=True)
kernel_run = Run(cfg)  # a Run built in the kernel first: its one-process accelerate state is set aside
summary = kernel_run.launch(2)
print("SUMMARY " + json.dumps({"summary": summary, "kernel_status": kernel_run.state.status,
                               "kernel_world": kernel_run.accelerator.num_processes}), flush=True)
"""


@pytest.mark.integration
def test_launch_from_a_plain_python_process(tmp_path):
    script = tmp_path / "kernel.py"
    script.write_text(textwrap.dedent(SCRIPT))
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = {line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1]) for line in out.stdout.splitlines()
             if line.startswith(("FAILED ", "SUMMARY "))}

    failed = lines["FAILED"]
    assert failed["ranks"] == [0, 1]
    assert "failed on rank 0" in failed["message"] and "missing.csv" in failed["message"]

    result = lines["SUMMARY"]
    summary = result["summary"]
    assert summary["status"] == "finished" and summary["world_size"] == 2 and summary["step"] == 4
    assert summary["run_dir"] == str(tmp_path / "launched")
    assert 0.0 <= summary["results"]["test"]["accuracy"] <= 1.0
    assert result["kernel_status"] == "ready" and result["kernel_world"] == 1  # the kernel's Run is not trained
    records = [json.loads(line) for line in (tmp_path / "launched" / "metrics.jsonl").read_text().splitlines()]
    start = next(r for r in records if r["kind"] == "start")
    assert start["world_size"] == 2 and sum(r["kind"] == "start" for r in records) == 1
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(r["world_size"] == 2 and len(r["loss_by_rank"]) == 2 for r in steps)
    assert records[-1]["kind"] == "end" and records[-1]["status"] == "finished"
