"""The live training panel, headless: widgets updated in place, controls go through run.control, text escaped,
errors shown. No kernel and no browser: ipywidgets run comm-less, so values and traits are checked directly."""
from __future__ import annotations

import base64

import json
import time
from types import SimpleNamespace

import ipywidgets as widgets
import pytest

from nbtune.config import RunConfig
from nbtune.engine.control import Control
from nbtune.engine.run import Run
from nbtune.ui.panels.train import TrainPanel

HOSTILE = "<img src=x onerror=alert(1)>"


def _run(tmp_path, *extra: str) -> Run:
    cfg = RunConfig().with_overrides([
        "model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=64", "data.max_eval_samples=8",
        "train.batch_size=4", "train.max_steps=40", "train.progress_bar=false", "train.tensorboard=false",
        f"output_dir={tmp_path}", *extra])
    return Run(cfg)


def _fake_run(tmp_path) -> SimpleNamespace:
    """Just what the panel reads, for tests that feed records by hand (no model, no thread)."""
    cfg = RunConfig().with_overrides([f"output_dir={tmp_path}", f"run_name={HOSTILE}"])
    return SimpleNamespace(
        cfg=cfg, control=Control(), state=SimpleNamespace(step=0, epoch=0, status="created"), total_steps=3,
        precision=SimpleNamespace(name="fp32"), device="cpu", run_dir=tmp_path / HOSTILE, error=None,
        traceback=None, add_sink=lambda sink: sink, start=lambda background=False: None)


def _html_values(widget) -> list[str]:
    """Every HTML widget's value in the tree under `widget`."""
    found = []
    if isinstance(widget, (widgets.HTML, widgets.HTMLMath)):
        found.append(widget.value)
    for child in getattr(widget, "children", ()):
        found += _html_values(child)
    return found


def _trace(fig, name):
    return next(t for t in fig.data if t.name == name)


def _steps(run):
    records = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "step"]


def test_live_run_updates_the_same_widgets_and_draws_edits(tmp_path):
    run = _run(tmp_path)
    panel = TrainPanel(run)
    figs_before = dict(panel.figures)
    raw_before = _trace(panel.loss_fig, "train loss")
    html_before = panel.status_html
    panel.lr_slider.value = 1e-4                     # queued before start: applied at step 0
    panel.start_button.click()
    run.wait()
    panel.close()

    assert panel.error is None, panel.error
    steps = _steps(run)
    assert len(steps) == 40
    assert panel.figures == figs_before and all(panel.figures[k] is figs_before[k] for k in figs_before)
    assert _trace(panel.loss_fig, "train loss") is raw_before and panel.status_html is html_before
    assert len(raw_before.x) == len(raw_before.y) == 40
    assert list(raw_before.y) == pytest.approx([r["loss"] for r in steps])
    for group in steps[0]["lr"]:
        assert list(_trace(panel.lr_fig, group).y) == pytest.approx([r["lr"][group] for r in steps])
    assert len(_trace(panel.loss_fig, "validation loss").x) >= 1
    assert "40/40" in panel.status_html.value and "finished" in panel.status_html.value

    lr_edits = [e for e in run.control.edits if e["name"] == "lr"]
    assert len(lr_edits) == 1 and lr_edits[0]["new"] == pytest.approx(1e-4)
    assert list(_trace(panel.loss_fig, "edits").x) == [lr_edits[0]["step"]]
    assert len(panel.loss_fig.layout.shapes) == 1          # the edit's vertical line
    assert "lr" in panel.log_html.value and "1e-4" in panel.log_html.value
    assert panel.start_button.disabled and panel.stop_button.disabled
    assert panel.pump.error is None and panel.pump.renders <= 10 * 60


def test_pause_toggle_label_and_control_state(tmp_path):
    run = _run(tmp_path)
    panel = TrainPanel(run)
    assert panel.pause_button.description == "Pause"
    panel.pause_button.click()                       # paused at the first step boundary
    assert panel.pause_button.description == "Resume"
    panel.start_button.click()
    deadline = time.monotonic() + 60
    while not (run.control.paused and run.state.status == "paused") and time.monotonic() < deadline:
        time.sleep(0.01)
    assert run.control.paused and run.state.step == 0
    panel.pause_button.click()
    assert panel.pause_button.description == "Pause"
    run.wait(60)
    panel.close()
    assert not run.control.paused and run.state.step == 40
    assert [e["name"] for e in run.control.edits][:2] == ["pause", "resume"]
    assert "40/40" in panel.status_html.value


def test_buttons_and_sliders_queue_control_commands(tmp_path):
    run = _fake_run(tmp_path)
    panel = TrainPanel(run)
    panel.clip_slider.value = 2.5
    panel.weight_decay_box.value = 0.05
    panel.lr_slider.value = 3e-5
    panel.checkpoint_button.click()
    panel.stop_button.click()
    panel.pause_button.click()
    panel.pause_button.click()
    queued = [(c.name, c.value) for c in run.control._pending]
    assert queued == [("max_grad_norm", 2.5), ("weight_decay", 0.05), ("lr", pytest.approx(3e-5)),
                      ("checkpoint", None), ("stop", None), ("pause", None), ("resume", None)]
    assert len(panel.sent) == 7 and panel.error is None
    panel.close()


def test_trainable_and_precision_controls(tmp_path):
    run = _run(tmp_path, "train.max_steps=2", "train.precision=fp32")
    panel = TrainPanel(run)
    bar = panel.controls
    assert bar.target_dropdown.options == ("all", "embeddings", "attention", "ffn", "norm", "head", "layer 0",
                                           "layer 1")
    bar.target_dropdown.value = "layer 1"
    bar.freeze_button.click()
    bar.target_dropdown.value = "embeddings"
    bar.unfreeze_button.click()
    assert [(c.name, c.value) for c in run.control._pending] == [("freeze", "layer 1"), ("unfreeze", "embeddings")]
    with pytest.warns(UserWarning, match="without native bf16"):
        bar.precision_dropdown.value = "bf16"
    assert run.precision.name == "bf16" and run.cfg.train.precision == "bf16"
    bar.precision_dropdown.value = "fp32"
    bar.start_button.click()
    run.wait()
    assert bar.precision_dropdown.disabled and run.precision.name == "fp32"
    freeze = [e for e in run.control.edits if e["name"] == "freeze"]
    assert freeze and freeze[0]["target"] == "layer 1" and freeze[0]["new"] < freeze[0]["old"]
    bar._guard(bar.precision, "bf16")                                   # too late: refused, shown as an error
    assert "only before training starts" in str(panel.error)
    panel.close()


def test_advice_actions_only_on_click(tmp_path):
    run = _fake_run(tmp_path)
    panel = TrainPanel(run)
    action = SimpleNamespace(label="halve LR", command="set", name="lr", value=1e-5)
    stop = SimpleNamespace(label="stop", command="stop", name=None, value=None)
    panel.show_advice([SimpleNamespace(message=f"loss rising {HOSTILE}", actions=(action, stop))])
    assert HOSTILE not in panel.advisor_box.value and "&lt;img" in panel.advisor_box.value
    assert run.control._pending == []               # never applied automatically
    buttons = panel.advice.actions_box.children[0].children
    buttons[0].click()
    buttons[1].click()
    assert [(c.name, c.value) for c in run.control._pending] == [("lr", 1e-5), ("stop", None)]
    panel.close()


def test_user_text_is_escaped_in_every_html_widget(tmp_path):
    run = _fake_run(tmp_path)
    panel = TrainPanel(run)
    panel._on_records([
        {"kind": "start", "time": 1.0, "model": HOSTILE, "dataset": HOSTILE, "label_names": [HOSTILE, "ok"],
         "total_steps": 3, "device": "cpu", "precision": "fp32"},
        {"kind": "step", "step": 1, "time": 2.0, "loss": 1.0, "grad_norm": 1.0, "clipped": True,
         "lr": {HOSTILE: 1e-4}, "grad_norm_groups": {HOSTILE: 1.0}},
        {"kind": "eval", "step": 1, "split": "validation", "loss": 0.9, HOSTILE: 0.5},
        {"kind": "edit", "step": 1, "name": HOSTILE, "old": HOSTILE, "new": HOSTILE},
    ])
    panel.show_error(f"boom {HOSTILE}", f"Traceback {HOSTILE}")
    panel.show_advice([SimpleNamespace(message=HOSTILE, actions=())])
    values = _html_values(panel.widget)
    assert len(values) >= 6                          # header, status, error, traceback, advisor, log
    joined = "\n".join(values)
    assert HOSTILE not in joined and "<img" not in joined
    assert joined.count("&lt;img src=x onerror=alert(1)&gt;") >= 6   # header, labels, log, error, tb, advice
    names = [t.name for f in panel.figures.values() for t in f.data]
    assert all("<img" not in n for n in names) and any("&lt;img" in n for n in names)
    hover = [h for f in panel.figures.values() for t in f.data if t.name == "edits" for h in (t.hovertext or ())]
    assert hover and all("<img" not in h for h in hover)
    panel.close()


def test_render_error_surfaces_in_the_panel(tmp_path, monkeypatch):
    run = _fake_run(tmp_path)
    panel = TrainPanel(run)

    def broken(*args, **kwargs):
        raise RuntimeError(f"figure exploded {HOSTILE}")

    monkeypatch.setattr("nbtune.ui.figures.lr_series", broken)
    panel.pump.write({"kind": "step", "step": 1, "loss": 1.0, "lr": {"decay": 1e-4}})
    panel.close()
    assert "figure exploded" in panel.error_html.value and panel.error_html.layout.display != "none"
    assert "&lt;img" in panel.error_html.value and "<img" not in panel.error_html.value
    assert "Traceback" in panel.traceback_html.value and "broken" in panel.traceback_html.value
    assert panel.error_details.layout.display != "none"


def test_training_error_surfaces_in_the_panel(tmp_path):
    run = _run(tmp_path)
    panel = TrainPanel(run)

    def bad_collate(*args, **kwargs):
        raise ValueError("batch went missing")

    run.collate = bad_collate
    panel.start_button.click()
    with pytest.raises(ValueError, match="batch went missing"):
        run.wait(60)
    panel.close()
    assert "batch went missing" in panel.error_html.value
    assert "bad_collate" in panel.traceback_html.value
    assert "error" in panel.status_html.value


def test_long_runs_are_decimated_but_keep_spikes(tmp_path):
    run = _fake_run(tmp_path)
    panel = TrainPanel(run)
    records = [{"kind": "step", "step": s, "loss": 1.0, "grad_norm": 1.0, "lr": {"decay": 1e-4}}
               for s in range(1, 12001)]
    records[7000]["loss"] = 50.0                     # one spike in the middle
    panel._on_records(records)
    raw = _trace(panel.loss_fig, "train loss")
    assert len(raw.x) <= 5000 and 50.0 in raw.y and len(panel.history.steps) == 12000
    assert all(len(t.x if t.x is not None else ()) <= 5000 for f in panel.figures.values() for t in f.data)
    assert "12000/3" in panel.status_html.value and panel.error is None
    panel.close()


def test_lazy_public_name():
    import nbtune as nt
    assert nt.TrainPanel is TrainPanel


def test_static_snapshot_replaces_the_placeholder_when_the_run_ends(tmp_path, monkeypatch):
    import IPython.display

    shown, updates = [], []

    class Handle:
        def update(self, obj, raw=False):
            updates.append((obj, raw))

    def fake_display(obj, display_id=None, raw=False):
        shown.append(obj)
        return Handle() if display_id else None

    monkeypatch.setattr(IPython.display, "display", fake_display)
    run = Run(RunConfig().with_overrides([
        "model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=32", "data.max_eval_samples=8",
        "train.batch_size=4", "train.max_steps=5", "train.progress_bar=false", "train.tensorboard=false",
        f"output_dir={tmp_path}"]))
    panel = TrainPanel(run)
    panel._ipython_display_()
    assert shown[0] is panel.widget and len(shown) == 2  # the widget, then an empty placeholder
    run.start(background=True).wait()
    panel.close()
    assert len(updates) == 1 and updates[0][1] is True
    bundle = updates[0][0]
    png = base64.b64decode(bundle["image/png"])
    assert png.startswith(b"\x89PNG") and 10_000 < len(png) < 400_000, len(png)
    assert "step 5 of 5" in bundle["text/plain"] and "tiny-bert" in bundle["text/plain"]


def test_guard_events_are_listed_in_the_panel_and_the_report(tmp_path):
    """A NaN loss at step 7 is skipped by the guard: the panel's status counts it, its log lists it (escaped
    text), and the HTML report of the same run has a guard table."""
    from nbtune.history import read_history
    from nbtune.ui.report import render_report
    run = _run(tmp_path, "train.max_steps=12", "train.sync_every_n_steps=4")

    def hook(module, args, kwargs, out):
        if run.state.step + 1 == 7:
            out.loss = out.loss * float("nan")
        return out
    run.model.register_forward_hook(hook, with_kwargs=True)
    panel = TrainPanel(run)
    panel.start_button.click()
    run.wait()
    panel.close()

    assert panel.error is None and run.state.step == 12 and run.state.guard.skipped_steps == 1
    [event] = panel.history.guard
    assert (event["step"], event["event"], event["reason"]) == (7, "nan_skipped", "loss")
    assert "1 step skipped (non-finite)" in panel.status_html.value
    assert "<b>Guard</b> (1 event)" in panel.log_html.value
    assert "step 7: step skipped (non-finite loss; 1 skipped so far)" in panel.log_html.value
    page = render_report(read_history(run.run_dir))
    assert "<h2>Guard events</h2>" in page and "step 7: step skipped (non-finite loss" in page


def test_clipping_switch_turns_clipping_on_at_the_slider_value_and_off(tmp_path):
    """A run started without clipping: the slider is inactive and the 'clip' switch turns clipping on at the
    value the slider shows (moving the slider to that value would send nothing), then off again."""
    run = _run(tmp_path, "train.max_steps=6", "train.max_grad_norm=null")
    panel = TrainPanel(run)
    c = panel.controls
    assert c.clip_toggle.value is False and c.clip_slider.disabled and c.clip_slider.value == 1.0
    c.clip_toggle.value = True
    assert not c.clip_slider.disabled
    run.start()
    assert run.max_grad_norm == 1.0
    assert [(e["name"], e["old"], e["new"]) for e in run.control.edits if e["name"] == "max_grad_norm"] == \
        [("max_grad_norm", None, 1.0)]
    c.toggle_clipping(False)  # within the coalescer's 1 s of the last send: it waits as the pending value
    queued = [(cmd.name, cmd.value) for cmd in run.control._pending] + list(c.coalescer.pending.items())
    assert queued == [("max_grad_norm", None)]
    assert c.clip_slider.disabled and panel.error is None
    panel.close()
