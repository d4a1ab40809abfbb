"""Following a run another process writes: JsonlFollower tails metrics.jsonl (waiting for it, holding half-written
lines, stopping at the end record) and TrainPanel.follow draws it read-only."""
from __future__ import annotations

import json
import threading
import time

import pytest

from nbtune.config import RunConfig
from nbtune.engine.follow import JsonlFollower
from nbtune.engine.sinks import MemorySink
from nbtune.history import read_history

HOSTILE = "<img src=x onerror=alert(1)>"


class ClosingSink(MemorySink):
    def __init__(self) -> None:
        super().__init__()
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def _records(n_steps: int, status: str = "finished") -> list[dict]:
    out = [{"kind": "start", "step": 0, "total_steps": n_steps, "world_size": 2, "config": RunConfig().to_dict()}]
    out += [{"kind": "step", "step": i, "epoch": i / n_steps, "loss": 2.0 / i, "loss_by_rank": [2.0 / i] * 2}
            for i in range(1, n_steps + 1)]
    return out + [{"kind": "end", "step": n_steps, "status": status, "message": ""}]


def _write_slowly(path, records: list[dict], pause_s: float = 0.005) -> threading.Thread:
    """A writer thread: the file appears late, and every third record is written in two halves with a pause
    between them (what a reader sees while a line is being written)."""
    def write() -> None:
        time.sleep(0.05)
        with open(path, "a", encoding="utf-8") as fh:
            for i, record in enumerate(records):
                line = json.dumps(record) + "\n"
                if i % 3 == 0:
                    fh.write(line[: len(line) // 2])
                    fh.flush()
                    time.sleep(pause_s * 4)
                    line = line[len(line) // 2:]
                fh.write(line)
                fh.flush()
                time.sleep(pause_s)
    thread = threading.Thread(target=write)
    thread.start()
    return thread


def test_every_record_once_in_order_and_stop_at_end(tmp_path):
    records = _records(30)
    follower = JsonlFollower(tmp_path, poll_s=0.002)
    assert follower.state.status == "waiting" and follower.total_steps is None
    sink = follower.add_sink(ClosingSink())
    follower.start()
    writer = _write_slowly(tmp_path / "metrics.jsonl", records)
    writer.join()
    follower.wait(timeout_s=10)
    assert not follower.is_running  # it stopped by itself at the end record
    assert sink.records == records and follower.records == records
    assert sink.closed == 1
    assert follower.state.status == "finished" and follower.state.step == 30 and follower.total_steps == 30
    assert follower.bad_lines == []


def test_a_half_written_line_is_held_until_complete(tmp_path):
    path = tmp_path / "metrics.jsonl"
    first, second = json.dumps({"kind": "step", "step": 1, "loss": 1.5}), json.dumps({"kind": "step", "step": 2})
    path.write_text(first + "\n" + second[:7])
    follower = JsonlFollower(path)
    assert [r["step"] for r in follower.poll()] == [1]
    assert follower.poll() == []                        # still half a line: nothing new
    with open(path, "a") as fh:
        fh.write(second[7:])                            # complete, but no newline yet
    assert follower.poll() == []
    with open(path, "a") as fh:
        fh.write("\n")
    assert follower.poll() == [{"kind": "step", "step": 2}]
    assert follower.state.step == 2


def test_an_earlier_sessions_end_does_not_stop_the_follow(tmp_path):
    """Stopped, then resumed in the same directory: the file holds an end, then a new start."""
    path = tmp_path / "metrics.jsonl"
    first = _records(3, status="stopped")
    path.write_text("".join(json.dumps(r) + "\n" for r in first))
    follower = JsonlFollower(tmp_path, poll_s=0.002)
    sink = follower.add_sink(MemorySink())
    follower.poll()
    assert follower.ended  # at this moment the file ends with an end record
    with open(path, "a") as fh:
        fh.write(json.dumps({"kind": "start", "step": 3, "total_steps": 5}) + "\n")
    follower.start()
    time.sleep(0.05)
    assert follower.is_running and follower.state.status == "running"
    second = [{"kind": "step", "step": 4, "loss": 0.4}, {"kind": "end", "step": 4, "status": "finished"}]
    _write_slowly(path, second).join()
    follower.wait(timeout_s=10)
    assert not follower.is_running and [r["kind"] for r in sink.records].count("end") == 2
    assert follower.state.status == "finished" and follower.total_steps == 5


def test_a_bad_line_is_skipped_with_a_warning_and_stop_works(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"kind": "step", "step": 1}) + "\n{not json\n" + json.dumps({"kind": "step",
                                                                                              "step": 2}) + "\n")
    follower = JsonlFollower(path, poll_s=0.002)
    sink = follower.add_sink(ClosingSink())
    follower.start()
    deadline = time.monotonic() + 10
    while len(sink.records) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert follower.is_running  # no end record: it keeps waiting for more
    follower.stop()
    follower.wait(timeout_s=10)
    assert not follower.is_running and sink.closed == 1
    assert [r["kind"] for r in sink.records] == ["step", "warning", "step"]
    assert follower.bad_lines == [2] and "line 2 is not valid JSON" in sink.records[1]["message"]


def test_a_late_sink_gets_the_records_so_far(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records(4)))
    follower = JsonlFollower(tmp_path, poll_s=0.002).start()
    follower.wait(timeout_s=10)
    late = follower.add_sink(ClosingSink())
    assert late.records == _records(4) and late.closed == 1
    with pytest.raises(RuntimeError, match="already started"):
        follower.start()
    with pytest.raises(ValueError, match="poll_s must be a positive number"):
        JsonlFollower(tmp_path, poll_s=0)


def test_train_panel_follows_a_finished_run_read_only(tmp_path):
    ipywidgets = pytest.importorskip("ipywidgets")
    from nbtune.engine.run import Run
    from nbtune.ui.panels.train import TrainPanel
    cfg = RunConfig().with_overrides([
        "model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=32", "data.max_eval_samples=8",
        "train.batch_size=4", "train.max_steps=12", "train.progress_bar=false", "train.tensorboard=false",
        f"output_dir={tmp_path}", f"run_name={HOSTILE}", "train.precision=fp32"])
    run = Run(cfg).start()
    expected = read_history(run.run_dir)
    assert len(expected.loss) == 12

    panel = TrainPanel.follow(run.run_dir, poll_s=0.01)
    panel.follower.wait(timeout_s=30)
    panel.close()
    assert panel.error is None, panel.error
    train_loss = next(t for t in panel.loss_fig.data if t.name == "train loss")
    assert list(train_loss.x) == expected.steps
    assert list(train_loss.y) == pytest.approx(expected.loss)
    assert "finished" in panel.status_html.value and "12/12" in panel.status_html.value
    assert "RSS" not in panel.status_html.value  # the kernel's memory says nothing about the followed run
    assert panel.controls.widget.layout.display == "none"
    assert all(b.disabled for b in (panel.start_button, panel.pause_button, panel.stop_button, panel.lr_slider))
    follow_line = panel.follow_html.value
    assert "read-only: a distributed run is steered from its launcher" in follow_line
    assert HOSTILE not in follow_line and "&lt;img src=x onerror=alert(1)&gt;" in follow_line
    assert HOSTILE not in panel.header_html.value
    assert panel.widget.children[1] is panel.follow_html
    assert isinstance(panel.follow_html, ipywidgets.HTML)
