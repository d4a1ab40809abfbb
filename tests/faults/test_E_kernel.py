"""Catalogue group E through a real ipykernel (jupyter_client): E1 (Stop while the kernel stays responsive), E3 (an
interrupt when no cell waits on training), E6 (a kernel restart mid-run, then resume) and E7 (thread output lands in
the cell that started it). Integration tier. Only ipykernel 7.x is installed and tested (not 6.x).

Scaled like group A: tiny-bert on trec, batch 8. E6 restarts the kernel after step 13 with a checkpoint every 5 steps
(the catalogue: step 137, every 25); E7 trains 100 steps (the catalogue: 300) while another cell prints 100 lines.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from tests.faults.harness import final_state, max_abs_diff

pytestmark = pytest.mark.integration

BASE = ["task=classification", "model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=64",
        "data.max_eval_samples=16", "train.batch_size=8", "train.learning_rate=1e-3", "train.warmup_ratio=0.1",
        "train.progress_bar=false", "train.tensorboard=false", "train.precision=fp32", "train.sync_every_n_steps=1"]
LONG = BASE + ["train.max_steps=100000"]
R = BASE + ["train.max_steps=24", "train.save_every_n_steps=5", "train.save_total_limit=3"]
IMPORTS = ("import os, sys, threading, time, psutil, torch\ntorch.set_num_threads(1)\n"
           "from nbtune.config import RunConfig\nfrom nbtune.engine.run import Run\n"
           "from nbtune.engine import checkpoint as ckpt\n")


class Kernel:
    """A kernel and a client that keeps every IOPub message, so outputs can be sorted by the cell they belong to."""

    def __init__(self) -> None:
        from jupyter_client import KernelManager
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)
        self.iopub: list[dict] = []

    def execute(self, code: str, timeout: float = 180) -> dict:
        """Run a cell; returns its reply content plus `seconds` (request to reply) and `msg_id`."""
        started = time.perf_counter()
        msg_id = self.kc.execute(code)
        while True:
            reply = self.kc.get_shell_msg(timeout=timeout)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        seconds = time.perf_counter() - started
        self.drain()
        return {**reply["content"], "seconds": seconds, "msg_id": msg_id}

    def ok(self, code: str, timeout: float = 180) -> dict:
        reply = self.execute(code, timeout)
        assert reply["status"] == "ok", (code, reply.get("ename"), reply.get("evalue"), reply.get("traceback"))
        return reply

    def value(self, expression: str):
        """The value of a Python-literal expression evaluated in the kernel."""
        import ast
        reply = self.ok(f"print(repr(({expression})))")
        return ast.literal_eval(self.text(reply["msg_id"]).strip().splitlines()[-1])

    def drain(self, quiet_s: float = 0.2) -> None:
        while True:
            try:
                self.iopub.append(self.kc.get_iopub_msg(timeout=quiet_s))
            except Exception:  # noqa: BLE001 - queue.Empty: nothing more for now
                return

    def text(self, msg_id: str, name: str | None = None) -> str:
        """Everything streamed (stdout/stderr) with `msg_id` as parent: what the front end shows under that cell."""
        return "".join(m["content"]["text"] for m in self.iopub if m["msg_type"] == "stream"
                       and m["parent_header"].get("msg_id") == msg_id and name in (None, m["content"]["name"]))

    def errors_after(self, index: int) -> list[dict]:
        return [m for m in self.iopub[index:] if m["msg_type"] == "error"]

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def kernel():
    k = Kernel()
    k.ok(IMPORTS)
    yield k
    k.close()


def _setup(name: str, overrides: list[str], run_dir: Path) -> str:
    return f"{name} = Run(RunConfig().with_overrides({overrides!r}), run_dir={str(run_dir)!r})\n"


# ------------------------------------------------------------------------------------------------------ E1
def test_E1_stop_from_another_thread_keeps_the_kernel_responsive(kernel, tmp_path):
    kernel.ok(_setup("run1", LONG, tmp_path / "run1")
              + "threads_before = threading.active_count()\nrun1.start(background=True)\n"
              + "while run1.state.step < 3: time.sleep(0.02)")
    during = kernel.ok("1+1")
    assert during["seconds"] < 10 and kernel.value("run1.is_running") is True
    # The Stop button's handler, on another thread than the training thread; the cell then waits for the end.
    kernel.ok("def click():\n    global clicked\n    clicked = run1.state.step\n    run1.control.stop()\n"
              "threading.Thread(target=click).start()\nrun1.wait(120)")
    after = kernel.ok("1+1")
    assert after["seconds"] < 10
    clicked, step, status = kernel.value("clicked, run1.state.step, run1.state.status")
    assert status == "stopped" and clicked <= step <= clicked + 1, (clicked, step)
    assert kernel.value("ckpt.verify(ckpt.latest(run1.run_dir))['state']['step']") == step
    assert kernel.value("threading.active_count() - threads_before") == 0
    assert kernel.value("len(psutil.Process().children(recursive=True))") == 0
    for reply in (during, after):
        result = next(m for m in kernel.iopub if m["msg_type"] == "execute_result"
                      and m["parent_header"].get("msg_id") == reply["msg_id"])
        assert result["content"]["data"]["text/plain"] == "2"
    print(f"E1: 1+1 answered in {during['seconds']:.3f} s during training and {after['seconds']:.3f} s after the "
          f"stop; stop clicked at step {clicked}, stopped at {step}")


# ------------------------------------------------------------------------------------------------------ E3
def test_E3_interrupt_with_no_cell_waiting_leaves_training_running(kernel, tmp_path):
    """Decided behaviour (docs/interrupts.md): training goes on. Between cells ipykernel ignores SIGINT; during an
    unrelated cell the interrupt ends that cell only. Stop (or run.wait() + interrupt) is how training stops."""
    kernel.ok(_setup("run3", LONG, tmp_path / "run3") + "run3.start(background=True)\n"
              + "while run3.state.step < 3: time.sleep(0.02)")
    mark = len(kernel.iopub)
    before = kernel.value("run3.state.step")
    kernel.km.interrupt_kernel()  # the kernel is idle: no cell runs
    time.sleep(1.5)
    running, status, step = kernel.value("run3.is_running, run3.state.status, run3.state.step")
    assert (running, status) == (True, "running") and step > before
    assert kernel.errors_after(mark) == []  # nothing raised anywhere, no traceback shown

    other = kernel.kc.execute("time.sleep(60)")  # an unrelated cell is running when the interrupt comes
    time.sleep(1.0)
    kernel.km.interrupt_kernel()
    reply = kernel.kc.get_shell_msg(timeout=30)
    while reply["parent_header"].get("msg_id") != other:  # e.g. a kernel_info reply left by wait_for_ready
        reply = kernel.kc.get_shell_msg(timeout=30)
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    kernel.drain()
    running, status, after = kernel.value("run3.is_running, run3.state.status, run3.state.step")
    assert (running, status) == (True, "running") and after > step

    kernel.ok("run3.control.stop()\nrun3.wait(120)")
    status, final, saved = kernel.value("run3.state.status, run3.state.step, "
                                        "ckpt.verify(ckpt.latest(run3.run_dir))['state']['step']")
    assert status == "stopped" and saved == final  # ends with a status and a checkpoint, never silently
    print(f"E3: 2 interrupts ignored by the training thread (steps {before} -> {step} -> {after}); stopped at "
          f"{final} with a verified checkpoint")


# ------------------------------------------------------------------------------------------------------ E7
def test_E7_thread_output_lands_in_the_cell_that_started_it(kernel, tmp_path):
    import ipykernel
    setup = kernel.ok(
        _setup("run7", BASE + ["train.max_steps=100"], tmp_path / "run7")
        + "from nbtune.ui.runner import Pump\n"
        # The panel's path: records go through the throttled pump thread; here each step record prints one line.
        + "pump = Pump(lambda batch: [print(f'nbtune-step {r[\"step\"]}', flush=True) for r in batch "
          "if r.get('kind') == 'step'], max_hz=10)\n"
        + "run7.add_sink(pump)\nrun7.start(background=True)\nwhile run7.state.step < 1: time.sleep(0.01)")
    other = kernel.ok("o_start = run7.state.step\nfor i in range(100):\n    print(f'other-line {i}', flush=True)\n"
                      "    time.sleep(0.02)\no_end = run7.state.step")
    kernel.ok("run7.wait(120)\npump.join()")
    time.sleep(0.5)
    kernel.drain()
    o_start, o_end, status = kernel.value("o_start, o_end, run7.state.status")
    assert status == "finished" and o_end > o_start  # training (and its output) overlapped the other cell

    mine, theirs = kernel.text(setup["msg_id"]).splitlines(), kernel.text(other["msg_id"]).splitlines()
    everywhere = [line for m in kernel.iopub if m["msg_type"] == "stream"
                  for line in m["content"]["text"].splitlines() if line.startswith("nbtune-step")]
    assert sorted(int(line.split()[1]) for line in mine if line.startswith("nbtune-step")) == list(range(1, 101))
    assert len(everywhere) == 100  # every step record arrived, once, and all under the setup cell
    assert [line for line in theirs if line.startswith("nbtune")] == []
    assert [line for line in mine if line.startswith("other-line")] == []
    assert theirs == [f"other-line {i}" for i in range(100)]
    print(f"E7 (ipykernel {ipykernel.__version__}): 100/100 step records under the setup cell, 0 in the other cell "
          f"(which ran during steps {o_start}-{o_end}), 0 of its 100 lines in the setup cell")


# ------------------------------------------------------------------------------------------------------ E6
def test_E6_kernel_restart_mid_run_resumes_from_the_last_complete_checkpoint(tmp_path):
    k = Kernel()
    try:
        k.ok(IMPORTS)
        # A sink that holds the training thread once step 13 is reported: a step the restart lands in, after the
        # step-10 checkpoint and before the step-15 one (what a slow real step gives, without racing it).
        k.ok("class Hold:\n    def __init__(self): self.at = threading.Event()\n"
             "    def write(self, r):\n        if r.get('kind') == 'step' and r['step'] == 13:\n"
             "            self.at.set(); threading.Event().wait()\n    def close(self): pass\n"
             + _setup("run", R, tmp_path / "run") + "hold = run.add_sink(Hold())\nrun.start(background=True)\n"
             "hold.at.wait(120)")
        old_pid = k.value("os.getpid()")
        others = {p.pid for p in psutil.Process().children(recursive=True)} - {old_pid}  # e.g. the E1/E3 kernel
        k.km.restart_kernel(now=True)
        k.kc.wait_for_ready(timeout=120)
        new_pid = k.value("__import__('os').getpid()")
        time.sleep(1.0)
        old = psutil.Process(old_pid) if psutil.pid_exists(old_pid) else None
        assert new_pid != old_pid and (old is None or old.status() == psutil.STATUS_ZOMBIE)
        kids = {p.pid for p in psutil.Process().children(recursive=True)}
        assert kids - others == {new_pid}  # 0 orphans: of the old kernel's processes only its successor is left
        assert k.value(f"sorted(p.name for p in __import__('pathlib').Path({str(tmp_path / 'run')!r}, "
                       "'checkpoints').glob('step-*'))") == ["step-000005", "step-000010"]

        setup = k.ok(IMPORTS + f"run = Run.resume({str(tmp_path / 'run')!r}, "
                     f"RunConfig().with_overrides({R!r}))\nrun.start()")
        assert "nbtune: last complete checkpoint: step 10" in k.text(setup["msg_id"], "stderr")
        assert k.value("run.state.status, run.state.step") == ("finished", 24)
        k.ok(_setup("ref", R, tmp_path / "ref") + "ref.start()")  # the uninterrupted run, in the same kind of process
    finally:
        k.close()
    (w0, s0, t0), (w1, s1, t1) = final_state(tmp_path / "ref"), final_state(tmp_path / "run")
    diff = max(max_abs_diff(w0, w1), max_abs_diff(s0["optimizer"], s1["optimizer"]))
    assert diff == 0.0 and t0["state"] == t1["state"]
    print(f"E6: restart after step 13 (old kernel {old_pid} gone, 0 orphans), resumed from step 10 to 24; "
          f"max |diff| weights+AdamW vs the uninterrupted run = {diff}")
