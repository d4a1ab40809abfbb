"""Control: commands from any thread (a widget, a notebook cell), applied by the loop at step boundaries.

The loop polls between micro-batches, so pause, stop and checkpoint take effect within one micro-batch;
a command may also be scheduled for an exact position (`at_step`, `at_micro_step`), which is how scheduled
edits from a config, and exact-resume tests, place them. Every applied command becomes an edit record
(step, name, old, new), kept in `edits`, saved in checkpoints and replayed on resume.

Example:
    >>> c = Control()
    >>> c.set("lr", 1e-4)            # applied before the next optimizer step
    >>> c.stop(at_step=100)           # ends the run when step 100 is reached
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from nbtune.config import EDIT_ACTIONS as ACTIONS, SETTABLE_EDITS as SETTABLE, TRAINABLE_EDITS, check_edit_value


@dataclass
class Command:
    name: str                       # one of SETTABLE or ACTIONS
    value: Any = None
    at_step: int | None = None      # None: as soon as the loop next polls
    at_micro_step: int = 0          # micro-batch inside the accumulation window
    issued: float = field(default_factory=time.time)

    def due(self, step: int, micro_step: int) -> bool:
        return self.at_step is None or (step, micro_step) >= (self.at_step, self.at_micro_step)


class Control:
    """Thread-safe command queue plus the run's edit log."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._pending: list[Command] = []
        self._paused = False
        self.edits: list[dict] = []

    # ---- called from the user's side (any thread) ----
    def pause(self) -> None:
        self._put(Command("pause"))

    def resume(self) -> None:
        self._put(Command("resume"))

    def stop(self, at_step: int | None = None, at_micro_step: int = 0) -> None:
        """Stop (with a checkpoint) at the next boundary, or when (at_step, at_micro_step) is reached."""
        self._put(Command("stop", at_step=at_step, at_micro_step=at_micro_step))

    def checkpoint(self, at_step: int | None = None) -> None:
        self._put(Command("checkpoint", at_step=at_step))

    def set(self, name: str, value: float | None, at_step: int | None = None) -> None:
        """Change a hyperparameter mid-run: 'lr', 'max_grad_norm' (None disables clipping), 'weight_decay', or
        a method's live option such as 'domain_mix.ratio'."""
        check_edit_value(name, value)
        self._put(Command(name, None if value is None else float(value), at_step=at_step))

    def freeze(self, target: str, at_step: int | None = None) -> None:
        """Stop training a group ("embeddings", "attention", "ffn", "norm", "head", "layer 3", "all")."""
        check_edit_value("freeze", target)
        self._put(Command("freeze", target, at_step=at_step))

    def unfreeze(self, target: str, at_step: int | None = None) -> None:
        """Train a group again (only parameters the optimizer holds: adapters' frozen bases stay frozen)."""
        check_edit_value("unfreeze", target)
        self._put(Command("unfreeze", target, at_step=at_step))

    @property
    def paused(self) -> bool:
        return self._paused

    def _put(self, command: Command) -> None:
        with self._lock:
            self._pending.append(command)
            self._lock.notify_all()

    # ---- called by the loop ----
    def due(self, step: int, micro_step: int) -> list[Command]:
        """Remove and return the commands due at this position, in the order they were issued."""
        with self._lock:
            ready = [c for c in self._pending if c.due(step, micro_step)]
            self._pending = [c for c in self._pending if c not in ready]
            for c in ready:
                if c.name in ("pause", "resume"):
                    self._paused = c.name == "pause"
            return ready

    def wait_while_paused(self, timeout_s: float = 0.1) -> None:
        with self._lock:
            if self._paused and not self._pending:
                self._lock.wait(timeout_s)

    def log(self, step: int, name: str, old: Any, new: Any) -> dict:
        record = {"kind": "edit", "step": step, "name": name, "old": old, "new": new, "time": time.time()}
        self.edits.append(record)
        return record

    def schedule_edits(self, edits: list[dict]) -> None:
        """Queue config-scheduled edits [{step, name, value}] (a live run's log exported as a schedule)."""
        for e in edits:
            name, value = e.get("name"), e.get("value", e.get("new"))
            if name in TRAINABLE_EDITS:
                self._put(Command(name, value, at_step=int(e["step"])))
            elif name in SETTABLE or "." in str(name):
                self.set(name, value, at_step=int(e["step"]))

    def drop_applied(self, edits: list[dict], step: int) -> None:
        """After a resume: forget scheduled commands that the restored edit log shows were already applied."""
        done = {(e["step"], e["name"]) for e in edits}
        with self._lock:
            self._pending = [c for c in self._pending
                             if c.at_step is None or (c.at_step, c.name) not in done and c.at_step >= step]


FORCE_AFTER = 3  # the interrupt that aborts at once, without the Stop's checkpoint


@contextlib.contextmanager
def interrupts_stop(control: Control, enabled: bool = True) -> Iterator[list[float]]:
    """While training runs in the foreground (the main thread), make Ctrl+C / Jupyter's "interrupt kernel" ask
    `control` for a Stop instead of raising KeyboardInterrupt inside a step or a checkpoint save. The second
    interrupt is ignored (the Stop's checkpoint is being written); the third (FORCE_AFTER) raises at once, for a
    loop that hangs. Yields the times of the interrupts received; the caller raises KeyboardInterrupt after the
    run has ended, so the cell still ends as interrupted. Does nothing off the main thread, when not `enabled`
    (several processes must stop at the same step), or when someone else installed a SIGINT handler.

    Example:
        >>> with interrupts_stop(run.control) as interrupts:   # doctest: +SKIP
        ...     train()                                         # Ctrl+C here: a Stop at the next micro-batch
        >>> if interrupts: raise KeyboardInterrupt              # doctest: +SKIP
    """
    received: list[float] = []
    if (not enabled or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield received
        return

    def on_interrupt(signum, frame) -> None:
        # Runs in the main thread between bytecodes: only record and queue, never print (a reentrant write).
        received.append(time.time())
        if len(received) == 1:
            control.stop()
        elif len(received) >= FORCE_AFTER:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt(f"interrupted {len(received)} times: aborted without the Stop's checkpoint")

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield received
    finally:
        if signal.getsignal(signal.SIGINT) is on_interrupt:
            signal.signal(signal.SIGINT, previous)
