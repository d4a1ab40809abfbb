"""The throttled pump: at most max_hz renders a second, nothing dropped, a final flush, errors kept."""
import threading
import time

import pytest

from nbtune.ui.runner import Pump


def _flood(pump: Pump, seconds: float) -> int:
    """A fake engine: as many step records as it can write for `seconds` (tens of thousands a second)."""
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        n += 1
        pump.write({"kind": "step", "step": n})
    pump.write({"kind": "end", "step": n})
    return n + 1


def test_flood_is_throttled_and_nothing_is_dropped():
    seen, stamps = [], []

    def render(batch):
        stamps.append(time.monotonic())
        seen.extend(batch)

    pump = Pump(render, max_hz=10)
    start = time.monotonic()
    sent = _flood(pump, 2.0)
    pump.close()
    pump.join()
    elapsed = time.monotonic() - start
    assert sent > 1000
    assert [r.get("step") for r in seen] == [r for r in range(1, sent)] + [sent - 1]  # every record, in order
    assert seen[-1]["kind"] == "end"
    # Never two renders closer than one period (small scheduling slack), so never more than 10 a second.
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert min(gaps) >= 0.1 - 0.005
    assert pump.renders <= elapsed * 10 + 1
    assert pump.delivered == sent


def test_close_flushes_what_is_buffered():
    batches = []
    pump = Pump(batches.append, max_hz=5)
    for i in range(3):
        pump.write({"kind": "step", "step": i})
    pump.close()
    pump.join()
    assert sum(len(b) for b in batches) == 3
    pump.close()  # idempotent
    pump.join()


def test_render_error_is_kept_and_training_side_never_raises():
    calls = []

    def broken(batch):
        calls.append(len(batch))
        raise ValueError("bad figure")

    pump = Pump(broken, max_hz=10)
    pump.write({"kind": "step", "step": 1})
    time.sleep(0.25)
    pump.write({"kind": "step", "step": 2})  # still accepted after the failure
    pump.close()
    pump.join()
    assert isinstance(pump.error, ValueError) and "bad figure" in pump.error_traceback
    assert pump.delivered == 2 and len(calls) >= 1


def test_renders_happen_on_the_pump_thread():
    threads = set()
    pump = Pump(lambda batch: threads.add(threading.current_thread().name), max_hz=10)
    pump.write({"kind": "step", "step": 1})
    pump.close()
    pump.join()
    assert threads == {"nbtune-pump"}


@pytest.mark.parametrize("hz", [0, 11, 1000])
def test_rates_above_ten_hz_are_refused(hz):
    with pytest.raises(ValueError, match="max_hz must be in"):
        Pump(lambda batch: None, max_hz=hz)


def test_pump_on_a_real_background_run_sees_every_record(tmp_path):
    from nbtune.config import RunConfig
    from nbtune.engine.run import Run

    cfg = RunConfig().with_overrides([
        "model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=64", "data.max_eval_samples=8",
        "train.batch_size=4", "train.max_steps=12", "train.progress_bar=false", "train.tensorboard=false",
        f"output_dir={tmp_path}"])
    run = Run(cfg)
    seen = []
    pump = run.add_sink(Pump(seen.extend, max_hz=10))
    run.start(background=True).wait()
    pump.join()  # the run closes the pump without waiting for the final render
    assert pump.error is None
    assert [r["step"] for r in seen if r["kind"] == "step"] == list(range(1, 13))
    assert seen[0]["kind"] == "start" and seen[-1]["kind"] == "end" and seen[-1]["status"] == "finished"


def test_pump_restarts_after_close_when_records_come_again():
    seen = []
    pump = Pump(seen.extend, max_hz=10)
    pump.write({"kind": "end", "step": 3})
    pump.close()  # what the run does when it stops
    pump.join()
    pump.write({"kind": "start", "step": 3})  # Start pressed again on the same run
    pump.write({"kind": "step", "step": 4})
    pump.close()
    pump.join()
    assert [r["kind"] for r in seen] == ["end", "start", "step"]


def test_panel_outside_a_notebook_falls_back_to_console_and_report(tmp_path, capsys):
    from nbtune.config import RunConfig
    from nbtune.engine.run import Run
    from nbtune.ui.panels import ConsoleFallback

    run = Run(RunConfig().with_overrides([
        "model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=32", "data.max_eval_samples=8",
        "train.batch_size=4", "train.max_steps=4", "train.progress_bar=false", "train.tensorboard=false",
        f"output_dir={tmp_path}"]))
    fallback = run.panel()
    assert isinstance(fallback, ConsoleFallback)
    run.start()
    assert fallback.report_path == run.run_dir / "report.html" and fallback.report_path.is_file()
    assert "nbtune: report written to" in capsys.readouterr().out


def test_slow_renders_are_spaced_so_rendering_takes_at_most_its_share():
    stamps = []

    def slow(batch):
        stamps.append(time.monotonic())
        time.sleep(0.05)  # a render that costs 50 ms

    pump = Pump(slow, max_hz=10, max_busy_fraction=0.1)  # so at least 0.45 s between renders
    end = time.monotonic() + 2.0
    n = 0
    while time.monotonic() < end:
        n += 1
        pump.write({"kind": "step", "step": n})
        time.sleep(0.001)
    pump.close()
    pump.join()
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert gaps and min(gaps) >= 0.05 + 0.45 - 0.01
    assert pump.delivered == n
