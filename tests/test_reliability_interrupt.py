"""Catalogue E2: a kernel interrupt while a cell waits on training (run.wait()) becomes a Stop: the training
thread saves a checkpoint and ends, the interrupt still ends the cell, and the kernel and its variables live on."""
import os
import signal
import threading
import time

import pytest

from nbtune.config import RunConfig
from nbtune.engine import checkpoint as ckpt
from nbtune.engine.run import Run

LONG = ["model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=64", "data.max_eval_samples=16",
        "train.batch_size=8", "train.max_steps=100000", "train.progress_bar=false", "train.tensorboard=false",
        "train.precision=fp32"]


def test_E2_interrupt_while_waiting_stops_the_run_with_a_checkpoint(tmp_path, capsys):
    run = Run(RunConfig().with_overrides(LONG + [f"output_dir={tmp_path}"])).start(background=True)
    while run.state.step < 3:
        time.sleep(0.05)
    threads_before = threading.active_count()
    # What Jupyter's interrupt does: SIGINT to the process, which Python raises as KeyboardInterrupt in the main
    # thread (here blocked in run.wait()). _thread.interrupt_main would not wake a blocked join; a signal does.
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        run.wait()
    assert not run.is_running and run.state.status == "stopped" and run.error is None
    saved = ckpt.latest(run.run_dir)
    assert saved is not None and ckpt.verify(saved)["state"]["step"] == run.state.step
    assert 3 <= run.state.step < 100000
    assert "interrupted: training stopped at step" in capsys.readouterr().err
    assert threading.active_count() <= threads_before  # the training thread is gone (the Timer too)


@pytest.mark.integration
def test_E2_kernel_interrupt_keeps_the_kernel_and_its_variables(tmp_path):
    from jupyter_client.manager import start_new_kernel
    km, kc = start_new_kernel(kernel_name="python3")
    try:
        def reply_to(msg_id: str, timeout: float) -> dict:
            # start_new_kernel can leave its kernel_info reply on the shell channel: skip replies to others
            while True:
                reply = kc.get_shell_msg(timeout=timeout)
                if reply["parent_header"].get("msg_id") == msg_id:
                    return reply

        def run_cell(code: str, timeout: float = 120) -> dict:
            return reply_to(kc.execute(code), timeout)
        assert run_cell("x = 1")["content"]["status"] == "ok"
        setup = ("from nbtune.config import RunConfig\nfrom nbtune.engine.run import Run\n"
                 f"run = Run(RunConfig().with_overrides({LONG + [f'output_dir={tmp_path}']!r}))\n"
                 "run.start(background=True)")
        assert run_cell(setup)["content"]["status"] == "ok"
        msg_id = kc.execute("import time\nwhile run.state.step < 3: time.sleep(0.05)\nrun.wait()")
        time.sleep(3)
        km.interrupt_kernel()
        reply = reply_to(msg_id, timeout=30)
        assert reply["content"]["status"] == "error" and reply["content"]["ename"] == "KeyboardInterrupt"
        started = time.perf_counter()
        reply_to(kc.kernel_info(), timeout=10)
        assert km.is_alive()
        check = run_cell("assert x == 1 and run.state.status == 'stopped' and not run.is_running, "
                         "(x, run.state.status)")
        assert check["content"]["status"] == "ok", check["content"]
        assert time.perf_counter() - started < 60
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
