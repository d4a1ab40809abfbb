"""Follow a run that another process writes: tail its metrics.jsonl and feed the records to sinks.

A distributed run (torchrun, accelerate launch, `nbtune.engine.launch`) trains in other processes; its rank 0
writes one merged metrics.jsonl. `JsonlFollower` reads that file as it grows and hands every record, once and
in order, to the sinks added with `add_sink` (the same MetricSink protocol a Run feeds), from its own thread.
It also exposes the few things a live panel reads from a Run (`cfg`, `state`, `total_steps`, `run_dir`), so
`TrainPanel.follow(run_dir)` can draw it read-only.

Example:
    >>> from nbtune.engine.sinks import MemorySink
    >>> follower = JsonlFollower("runs/ddp", poll_s=0.2)                  # doctest: +SKIP
    >>> sink = follower.add_sink(MemorySink()); follower.start()          # doctest: +SKIP
    >>> follower.wait(); sink.of_kind("end")[0]["status"]                 # doctest: +SKIP
    'finished'
"""
from __future__ import annotations

import contextvars
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nbtune.engine.sinks import MetricSink

METRICS_FILENAME = "metrics.jsonl"


@dataclass
class FollowedState:
    """What the followed run last reported: the fields a panel reads from `run.state`."""
    step: int = 0
    epoch: float = 0.0
    status: str = "waiting"       # waiting (no file yet) | running | the end record's status


class JsonlFollower:
    """Tail `<run_dir>/metrics.jsonl` (or a .jsonl path) and deliver its records to sinks.

    - A file that does not exist yet is waited for; a partly written last line is held until it is complete.
    - It stops by itself when it has read an `end` record and the file holds nothing after it (an earlier
      session's end, followed by a resumed start, does not stop it), or when `stop()` is called. On stopping it
      closes its sinks, as a Run does when training ends.
    - A complete line that is not JSON is skipped; its line number goes to `bad_lines` and a `warning` record
      naming it goes to the sinks.
    - A sink added after records arrived first gets those records, so nothing is missed whatever the order of
      `add_sink` and `start`.
    """

    read_only = True  # a panel shows no controls: a distributed run is steered from its launcher

    def __init__(self, path_or_run_dir: str | Path, poll_s: float = 0.5) -> None:
        if not poll_s > 0:
            raise ValueError(f"poll_s must be a positive number of seconds, got {poll_s!r}")
        path = Path(path_or_run_dir)
        self.path = path if path.suffix == ".jsonl" else path / METRICS_FILENAME
        self.run_dir = self.path.parent
        self.poll_s = poll_s
        self.state = FollowedState()
        self.total_steps: int | None = None
        self.cfg = self._config_from_dir()
        self.records: list[dict[str, Any]] = []   # everything delivered so far, in file order
        self.bad_lines: list[int] = []
        self.error: BaseException | None = None   # an error of the follower itself (e.g. the file vanished)
        self.traceback: str | None = None
        self._sinks: list[MetricSink] = []
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._offset = 0          # bytes consumed (complete lines only)
        self._partial = b""       # the incomplete tail of the file, held until its newline arrives
        self._lines = 0
        self._closed = False      # the sinks were closed (the follow ended)

    # ---- sinks ----
    def add_sink(self, sink: MetricSink) -> MetricSink:
        """Attach a sink; it first receives every record already delivered, then the new ones."""
        with self._lock:
            for record in self.records:
                sink.write(record)
            self._sinks.append(sink)
            if self._closed:
                sink.close()  # the follow is over: give the sink its final flush as well
        return sink

    # ---- running ----
    def start(self) -> "JsonlFollower":
        """Start tailing in a background thread (started in a copy of the caller's context, so widget updates
        made by sinks reach the caller's notebook cell)."""
        if self._thread is not None:
            raise RuntimeError(f"this follower of {self.path} was already started; make a new one to follow again")
        ctx = contextvars.copy_context()
        self._thread = threading.Thread(target=ctx.run, args=(self._loop,), daemon=True,
                                        name=f"nbtune-follow-{self.run_dir.name}")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the current poll; the sinks are closed by the follower thread."""
        self._stop.set()

    def wait(self, timeout_s: float | None = None) -> "JsonlFollower":
        """Join the follower thread (it ends at the run's end record or after stop())."""
        if self._thread is not None:
            self._thread.join(timeout_s)
        return self

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def poll(self) -> list[dict[str, Any]]:
        """Read whatever complete lines were appended since the last poll and deliver them; returns them.
        The thread calls this every `poll_s`; a test or a script may call it directly instead of start()."""
        with self._lock:
            chunk = self._read_new()
            records = self._decode(chunk)
            for record in records:
                self._observe(record)
                self.records.append(record)
                for sink in self._sinks:
                    sink.write(record)
            return records

    @property
    def ended(self) -> bool:
        """The last record read is an end record and nothing (not even half a line) follows it."""
        return bool(self.records) and self.records[-1].get("kind") == "end" and not self._partial

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self.poll()
                if self.ended and self.path.stat().st_size == self._offset:
                    break
                self._stop.wait(self.poll_s)
        except BaseException as exc:  # noqa: BLE001 - kept for the panel; the thread must end cleanly
            import traceback
            self.error, self.traceback = exc, traceback.format_exc()
        finally:
            with self._lock:
                self._closed = True
                for sink in self._sinks:
                    sink.close()

    # ---- reading ----
    def _read_new(self) -> bytes:
        """New complete lines as bytes (the tail after the last newline is held back)."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset + len(self._partial))
                data = self._partial + fh.read()
        except FileNotFoundError:
            return b""  # not written yet: the run has not started
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        self._offset += cut
        return data[:cut]

    def _decode(self, chunk: bytes) -> list[dict[str, Any]]:
        records = []
        for line in chunk.split(b"\n")[:-1]:
            self._lines += 1
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                self.bad_lines.append(self._lines)
                records.append({"kind": "warning", "step": self.state.step, "time": time.time(),
                                "message": f"{self.path}: line {self._lines} is not valid JSON ({exc}); skipped"})
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def _observe(self, record: dict[str, Any]) -> None:
        """Keep state/total_steps/cfg current, as a Run's own fields would be."""
        kind = record.get("kind")
        if kind == "start":
            self.state.status = "running"
            self.state.step = int(record.get("step") or 0)
            self.total_steps = record.get("total_steps", self.total_steps)
            if isinstance(record.get("config"), dict):
                self.cfg = _config_or(record["config"], self.cfg)
        elif kind == "step":
            self.state.step = int(record.get("step", self.state.step))
            epoch = record.get("epoch")
            self.state.epoch = float(epoch) if isinstance(epoch, (int, float)) else self.state.epoch
        elif kind == "end":
            self.state.status = str(record.get("status") or "ended")
            self.state.step = int(record.get("step", self.state.step))

    def _config_from_dir(self):
        from nbtune.config import RunConfig
        saved = self.run_dir / "config.yaml"
        if saved.is_file():
            try:
                return RunConfig.from_yaml(saved)
            except Exception:  # noqa: BLE001 - a config from another version: the start record may still do
                pass
        return RunConfig()

    def __repr__(self) -> str:
        return f"JsonlFollower({str(self.path)!r}, {self.state.status}, step {self.state.step}/{self.total_steps})"


def _config_or(data: dict, fallback):
    from nbtune.config import RunConfig
    try:
        return RunConfig.from_dict(data)
    except Exception:  # noqa: BLE001 - keep showing the run with what we have
        return fallback
