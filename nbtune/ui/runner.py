"""The bridge between the training thread and the notebook: a throttled pump.

The engine emits records as fast as it trains (thousands a second for tiny models); the Jupyter server drops
widget messages above about 1,000/s. `Pump` is a metric sink that buffers records and hands them, in
batches, to a render callback at most `max_hz` times a second, from its own thread (started with
`contextvars.copy_context().run`, so widget updates reach the right cell on ipykernel >= 7.1). The run's end
record triggers a final flush, so the last state always reaches the screen. A render that raises does not
stop training: the error and its traceback are kept on the pump and shown by the panel.

A render may return how many bytes it sent to the front end; the pump then also keeps the average under
`max_bytes_per_s` (the catalogue's IOPub budget, 100 kB/s, a tenth of Jupyter's default
`iopub_data_rate_limit`): a render that sent 300 kB is followed by 3 s without one. A render that returns None
is paced by time alone.

Example:
    >>> batches = []
    >>> pump = Pump(batches.append, max_hz=10)
    >>> pump.write({"kind": "step", "step": 1}); pump.close(); pump.join()
    >>> [r["step"] for b in batches for r in b]
    [1]
"""
from __future__ import annotations

import collections
import contextvars
import threading
import time
import traceback
from typing import Any, Callable


# After close(), the final flush waits for the usual spacing, but never longer than this.
FINAL_FLUSH_WAIT_S = 0.5


class Pump:
    """A MetricSink that delivers buffered records to `render(batch)` at most `max_hz` times a second."""

    def __init__(self, render: Callable[[list[dict[str, Any]]], int | None], max_hz: float = 10.0,
                 max_busy_fraction: float = 0.03, max_bytes_per_s: float = 100_000) -> None:
        if not 0 < max_hz <= 10:
            raise ValueError(f"max_hz must be in (0, 10]: the Jupyter server drops widget floods; got {max_hz}")
        if not 0 < max_busy_fraction <= 1:
            raise ValueError(f"max_busy_fraction must be in (0, 1], got {max_busy_fraction}")
        if not max_bytes_per_s > 0:
            raise ValueError(f"max_bytes_per_s must be > 0 (bytes a second sent to the front end), "
                             f"got {max_bytes_per_s}")
        self.render = render
        self.period_s = 1.0 / max_hz
        # Rendering shares the CPU (and the GIL) with training: after a render that took d seconds, wait at least
        # d * (1/f - 1), so rendering never takes more than a fraction f of the time, however slow it gets.
        self.max_busy_fraction = max_busy_fraction
        self.max_bytes_per_s = float(max_bytes_per_s)
        self.sent_bytes = 0                   # bytes the renders said they sent, in total
        self.renders = 0                      # how many times render() was called
        self.render_times: collections.deque[float] = collections.deque(maxlen=10_000)  # monotonic starts
        self.busy_s = 0.0                     # wall time spent in render(), in total
        self.busy_cpu_s = 0.0                 # CPU time of the pump thread spent in render()
        self.delivered = 0                    # records handed to render()
        self.error: BaseException | None = None
        self.error_traceback: str | None = None
        self._buffer: list[dict[str, Any]] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._restart()

    def _restart(self) -> None:
        """Start the pump thread; after a close, first let the old one finish its final flush."""
        if self._thread is not None:
            self._thread.join()  # called without the lock held: the old thread needs it to exit
        self._closed = False
        self._closed_at = 0.0
        ctx = contextvars.copy_context()
        self._thread = threading.Thread(target=ctx.run, args=(self._loop,), daemon=True, name="nbtune-pump")
        self._thread.start()

    # ---- sink side (the training thread) ----
    def write(self, record: dict[str, Any]) -> None:
        if self._closed:
            self._restart()  # the run was started again (Start after Stop): keep pumping
        with self._wake:
            self._buffer.append(record)
            if len(self._buffer) == 1:
                self._wake.notify()  # the pump may be asleep waiting for work

    def close(self) -> None:
        """Ask for the final flush and return at once: the training thread that closes its sinks must not wait
        for a slow render (Stop has to end training quickly). `join()` waits for the flush. Safe to repeat."""
        with self._wake:
            if not self._closed:
                self._closed_at = time.monotonic()
            self._closed = True
            self._wake.notify()

    def join(self, timeout_s: float | None = None) -> None:
        """Wait until everything written so far has been rendered (after `close()`)."""
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    # ---- pump thread ----
    def _loop(self) -> None:
        next_allowed = last_end = 0.0
        while True:
            with self._wake:
                while not self._buffer and not self._closed:
                    self._wake.wait()
                # Wait for the next allowed render; records keep arriving (the wait releases the lock) and join
                # this batch. close() wakes the wait: the final flush keeps the 10 Hz limit and the spacing, but
                # waits at most FINAL_FLUSH_WAIT_S after the close (spacing can be many seconds on long runs), so
                # the last state shows up within a second of the end.
                while (remaining := self._due(next_allowed, last_end) - time.monotonic()) > 0:
                    self._wake.wait(remaining)
                batch, self._buffer = self._buffer, []
                closed = self._closed
            if batch:
                began = time.monotonic()
                sent = self._deliver(batch)
                last_end = time.monotonic()
                busy_s = last_end - began
                # The byte budget is kept as an average: the next render waits until this one's bytes are paid.
                next_allowed = last_end + max(self.period_s, busy_s * (1 / self.max_busy_fraction - 1),
                                              sent / self.max_bytes_per_s)
            if closed:
                with self._wake:
                    if not self._buffer:
                        return

    def _due(self, next_allowed: float, last_end: float) -> float:
        """When the next render may start (called with the lock held)."""
        if not self._closed:
            return next_allowed
        return max(last_end + self.period_s, min(next_allowed, self._closed_at + FINAL_FLUSH_WAIT_S))

    def _deliver(self, batch: list[dict[str, Any]]) -> int:
        """Render one batch; returns the bytes the render reported sending (0 when it reports none)."""
        began, began_cpu = time.monotonic(), time.thread_time()
        self.render_times.append(began)
        sent = 0
        try:
            reported = self.render(batch)
            if isinstance(reported, int) and not isinstance(reported, bool) and reported > 0:
                sent = reported
                self.sent_bytes += sent
        except Exception as exc:  # noqa: BLE001 - a broken view must not kill training; it is shown instead
            if self.error is None:
                self.error, self.error_traceback = exc, traceback.format_exc()
        finally:
            self.renders += 1
            self.delivered += len(batch)
            self.busy_s += time.monotonic() - began
            self.busy_cpu_s += time.thread_time() - began_cpu
        return sent
