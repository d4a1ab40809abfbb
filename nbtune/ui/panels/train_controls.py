"""The training panel's controls: buttons, sliders and advisor actions that talk to `run.control` only.

Nothing here touches the optimizer: every change is a Control command, applied by the loop at the next
step boundary and logged there as an edit record (which the panel then draws on the loss chart).

Slider and box edits are coalesced per setting (ipywidgets' own rule for front-end messages: at most one in
flight and one pending, the latest value wins). An edit goes to Control at once when none of the same setting is
in flight and the last one went at least `edit_interval_s` ago; otherwise it waits as the one pending value, sent
when the loop has applied the one in flight (seen as its edit record) and the interval has passed. Twenty moves
within a second become two applied edits, the first and the last value, each at the next step boundary.

Example:
    >>> bar = ControlBar(run, on_sent=print, on_error=print)      # doctest: +SKIP
    >>> bar.lr_slider.value = 1e-4      # queues run.control.set("lr", 1e-4)  # doctest: +SKIP
"""
from __future__ import annotations

import html
import math
import threading
import time
from typing import Any, Callable, Iterable

import ipywidgets as widgets

from nbtune.labels import format_value

# FloatLogSlider bounds, as powers of ten.
LR_EXPONENT_RANGE = (-7.0, -1.0)
CLIP_RANGE = (0.05, 10.0)
# Edits of one setting reach Control at most once per this many seconds (the rest coalesce, latest wins).
EDIT_INTERVAL_S = 1.0
_NOTHING = object()


class ControlBar:
    """Start, Pause/Resume (one toggle), Stop, Checkpoint now, LR slider, max-grad-norm slider, weight decay.

    `on_sent(text)` is told about every command sent (for the intervention log); `on_error(exc)` about
    every command that was refused (a bad value, a run that cannot start again). `edit_interval_s`: edits of
    one setting reach Control at most this often; the ones between coalesce into the latest (see the module).
    """

    def __init__(self, run: Any, on_sent: Callable[[str], None], on_error: Callable[[BaseException], None],
                 edit_interval_s: float = EDIT_INTERVAL_S) -> None:
        self.run = run
        self._on_sent = on_sent
        self._on_error = on_error
        self._pause_requested = False
        self.coalescer = EditCoalescer(self._send_set, on_error, edit_interval_s)
        run.add_sink(self.coalescer)  # sees the edit records that say an edit in flight was applied
        t = run.cfg.train
        self.start_button = widgets.Button(description="Start", icon="play", button_style="success")
        self.pause_button = widgets.Button(description="Pause", icon="pause")
        self.stop_button = widgets.Button(description="Stop", icon="stop", button_style="danger")
        self.checkpoint_button = widgets.Button(description="Checkpoint now", icon="save")
        lo, hi = LR_EXPONENT_RANGE
        lr = float(t.learning_rate)
        self.lr_slider = widgets.FloatLogSlider(
            value=min(max(lr, 10 ** lo), 10 ** hi), base=10, min=lo, max=hi, step=0.05,
            description="LR", continuous_update=False, readout_format=".1e")
        clip = t.max_grad_norm if t.max_grad_norm is not None else 1.0
        # Clipping on/off is its own switch: with clipping off the slider shows a value that is not in force, so
        # moving it cannot be the only way to turn clipping on (setting it to the value it shows sends nothing).
        self.clip_toggle = widgets.Checkbox(value=t.max_grad_norm is not None, description="clip", indent=False,
                                            layout={"width": "60px"})
        self.clip_slider = widgets.FloatSlider(
            value=min(max(float(clip), CLIP_RANGE[0]), CLIP_RANGE[1]), min=CLIP_RANGE[0], max=CLIP_RANGE[1],
            step=0.05, description="max grad norm", continuous_update=False, disabled=t.max_grad_norm is None,
            style={"description_width": "initial"})
        self.weight_decay_box = widgets.BoundedFloatText(
            value=float(t.weight_decay), min=0.0, max=1.0, step=0.001, description="weight decay",
            style={"description_width": "initial"}, layout={"width": "200px"})

        from nbtune.methods.unfreeze import targets
        self.target_dropdown = widgets.Dropdown(options=targets(run.raw_model) if hasattr(run, "raw_model") else ["all"], value="all", description="group",
                                                layout={"width": "200px"}, style={"description_width": "initial"})
        self.freeze_button = widgets.Button(description="Freeze", icon="snowflake-o",
                                            tooltip="stop training this group from the next step")
        self.unfreeze_button = widgets.Button(description="Unfreeze", icon="fire",
                                              tooltip="train this group again from the next step")
        self.precision_dropdown = widgets.Dropdown(
            options=["auto", "fp32", "bf16", "fp16"], value=t.precision, description="precision",
            layout={"width": "180px"}, style={"description_width": "initial"},
            tooltip="mixed precision; chosen before Start (bf16 is slow on CPUs without native bf16)")
        self.freeze_button.on_click(lambda _: self._guard(self.trainable, "freeze", self.target_dropdown.value))
        self.unfreeze_button.on_click(lambda _: self._guard(self.trainable, "unfreeze", self.target_dropdown.value))
        self.precision_dropdown.observe(lambda c: self._guard(self.precision, c["new"]), names="value")
        self.start_button.on_click(lambda _: self._guard(self.start))
        self.pause_button.on_click(lambda _: self._guard(self.toggle_pause))
        self.stop_button.on_click(lambda _: self._guard(self.stop))
        self.checkpoint_button.on_click(lambda _: self._guard(self.checkpoint))
        self.lr_slider.observe(lambda c: self._guard(self.set, "lr", c["new"]), names="value")
        self.clip_slider.observe(lambda c: self._guard(self.set, "max_grad_norm", c["new"]), names="value")
        self.clip_toggle.observe(lambda c: self._guard(self.toggle_clipping, c["new"]), names="value")
        self.weight_decay_box.observe(lambda c: self._guard(self.set, "weight_decay", c["new"]), names="value")

        self.widget = widgets.VBox([
            widgets.HBox([self.start_button, self.pause_button, self.stop_button, self.checkpoint_button]),
            widgets.HBox([self.lr_slider, self.clip_toggle, self.clip_slider, self.weight_decay_box]),
            widgets.HBox([self.target_dropdown, self.freeze_button, self.unfreeze_button, self.precision_dropdown]),
        ])
        # Stable CSS hooks for themes and browser tests; labels may change, these do not.
        for w, name in ((self.widget, "controls"), (self.start_button, "start"), (self.pause_button, "pause"),
                        (self.stop_button, "stop"), (self.checkpoint_button, "checkpoint"),
                        (self.lr_slider, "lr"), (self.clip_slider, "max-grad-norm"), (self.clip_toggle, "clip"),
                        (self.weight_decay_box, "weight-decay"), (self.target_dropdown, "trainable-target"),
                        (self.freeze_button, "freeze"), (self.unfreeze_button, "unfreeze"),
                        (self.precision_dropdown, "precision")):
            w.add_class(f"nbtune-{name}")

    # ---- commands ----
    def start(self) -> None:
        self.run.start(background=True)
        self.start_button.disabled = True
        self.precision_dropdown.disabled = True
        self._on_sent("start")

    def trainable(self, name: str, target: str) -> None:
        """Freeze or unfreeze a group through Control (checked against the model first)."""
        getattr(self.run, name)(target)
        self._on_sent(f"{name} {target}")

    def precision(self, name: str) -> None:
        self.run.set_precision(name)
        self._on_sent(f"precision = {name}")

    def toggle_pause(self) -> None:
        """Pause, or resume when a pause was requested; the label always says what the next click does."""
        if self._pause_requested or self.run.control.paused:
            self.run.control.resume()
            self._pause_requested = False
            self.pause_button.description, self.pause_button.icon = "Pause", "pause"
            self._on_sent("resume")
        else:
            self.run.control.pause()
            self._pause_requested = True
            self.pause_button.description, self.pause_button.icon = "Resume", "play"
            self._on_sent("pause")

    def stop(self) -> None:
        self.run.control.stop()
        self._on_sent("stop")

    def checkpoint(self) -> None:
        self.run.control.checkpoint()
        self._on_sent("checkpoint")

    def set(self, name: str, value: Any) -> None:
        """Send `control.set(name, value)`, coalesced with other edits of `name` (see the module)."""
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        from nbtune.config import check_edit_value
        check_edit_value(name, value)  # refused here, at once, even when the value would wait as pending
        self.coalescer.submit(name, value)

    def toggle_clipping(self, on: bool) -> None:
        """Clipping on at the slider's value, or off (max_grad_norm=None); the slider is live only while on."""
        self.clip_slider.disabled = not on
        self.set("max_grad_norm", float(self.clip_slider.value) if on else None)

    def _send_set(self, name: str, value: Any) -> None:
        self.run.control.set(name, value)
        self._on_sent(f"set {name} = {format_value(value)}")

    def apply_action(self, action: Any) -> None:
        """Carry out one advisor action (only ever on a click): set, stop or checkpoint."""
        command = getattr(action, "command", None)
        if command == "set":
            self.set(action.name, action.value)
        elif command == "stop":
            self.stop()
        elif command == "checkpoint":
            self.checkpoint()
        else:
            raise ValueError(f"unknown advisor action command {command!r}; expected set, stop or checkpoint")

    def finished(self) -> None:
        """The run ended: nothing left to steer."""
        for button in (self.start_button, self.pause_button, self.stop_button, self.checkpoint_button,
                       self.freeze_button, self.unfreeze_button, self.precision_dropdown):
            button.disabled = True

    def _guard(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - a refused command is shown in the panel, not lost
            self._on_error(exc)


class EditCoalescer:
    """Per setting, at most one edit in flight (sent to Control, not yet applied) and one pending (the latest
    value asked for since); a MetricSink, so the run's edit records tell it when the one in flight was applied.

        >>> sent = []
        >>> c = EditCoalescer(lambda name, value: sent.append(value), on_error=print, interval_s=60)
        >>> for v in (1e-4, 2e-4, 3e-4): c.submit("lr", v)
        >>> sent, c.pending
        ([0.0001], {'lr': 0.0003})
    """

    def __init__(self, send: Callable[[str, Any], None], on_error: Callable[[BaseException], None],
                 interval_s: float = EDIT_INTERVAL_S) -> None:
        if not interval_s >= 0:
            raise ValueError(f"interval_s must be >= 0 seconds, got {interval_s}")
        self.send, self.on_error, self.interval_s = send, on_error, float(interval_s)
        self.in_flight: dict[str, Any] = {}     # name -> value sent and not yet seen applied
        self.pending: dict[str, Any] = {}       # name -> latest value waiting
        self.sent_at: dict[str, float] = {}     # name -> monotonic time of the last send
        self.submitted = 0                      # edits asked for
        self.sent = 0                           # edits sent to Control
        self._lock = threading.Lock()
        self._timers: dict[str, threading.Timer] = {}

    def submit(self, name: str, value: Any) -> None:
        """Ask for `name = value`: sent now when nothing of `name` is in flight or recent, else kept as pending."""
        with self._lock:
            self.submitted += 1
            self.pending[name] = value
        self._release(name)

    def _release(self, name: str) -> None:
        """Send the pending value of `name` if it may go now; otherwise make sure a timer will try again."""
        with self._lock:
            if name not in self.pending or name in self.in_flight:
                return  # nothing waits, or the edit record of the one in flight will call back
            wait_s = self.sent_at.get(name, -math.inf) + self.interval_s - time.monotonic()
            if wait_s > 0:
                if name not in self._timers:
                    timer = threading.Timer(wait_s, self._on_timer, (name,))
                    timer.daemon = True
                    self._timers[name] = timer
                    timer.start()
                return
            value = self.pending.pop(name)
            self.in_flight[name] = value
            self.sent_at[name] = time.monotonic()
            self.sent += 1
        try:
            self.send(name, value)  # outside the lock: Control takes its own
        except Exception as exc:  # noqa: BLE001 - may run on the training or a timer thread: shown, not raised
            with self._lock:
                self.in_flight.pop(name, None)  # never sent, so no edit record will clear it
            self.on_error(exc)

    def _on_timer(self, name: str) -> None:
        with self._lock:
            self._timers.pop(name, None)
        self._release(name)

    # ---- MetricSink: records from the training thread ----
    def write(self, record: dict[str, Any]) -> None:
        name = record.get("name") if record.get("kind") == "edit" else None
        if name is None or name not in self.in_flight:
            return
        with self._lock:
            self.in_flight.pop(name, None)
        self._release(name)

    def close(self) -> None:
        """The run stopped: what is in flight stays queued in Control for the next start."""


class AdviceView:
    """The health-advisor area: escaped messages, each with buttons for its suggested actions."""

    def __init__(self, on_action: Callable[[Any], None]) -> None:
        self._on_action = on_action
        self._shown: tuple = ()
        self.advisor_box = widgets.HTML(value="")
        self.actions_box = widgets.VBox([])
        self.widget = widgets.VBox([self.advisor_box, self.actions_box])

    def show(self, advice_list: Iterable[Any]) -> None:
        advice_list = list(advice_list)
        key = tuple((str(getattr(a, "message", a)), tuple(_action_key(x) for x in getattr(a, "actions", ())))
                    for a in advice_list)
        if key == self._shown:
            return  # same advice as before: keep the buttons (and any click in flight)
        self._shown = key
        if not advice_list:
            self.advisor_box.value = ""
            self.actions_box.children = ()
            return
        items = "".join(f"<li>{html.escape(str(getattr(a, 'message', a)))}</li>" for a in advice_list)
        self.advisor_box.value = f"<b>Advisor</b><ul>{items}</ul>"
        rows = []
        for a in advice_list:
            buttons = []
            for action in getattr(a, "actions", ()):
                button = widgets.Button(description=str(getattr(action, "label", "apply")),
                                        tooltip=str(getattr(a, "message", "")))
                button.on_click(lambda _, action=action: self._on_action(action))
                buttons.append(button)
            if buttons:
                rows.append(widgets.HBox(buttons))
        self.actions_box.children = tuple(rows)


def _action_key(action: Any) -> tuple:
    return (getattr(action, "label", None), getattr(action, "command", None), getattr(action, "name", None),
            repr(getattr(action, "value", None)))
