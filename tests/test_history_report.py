"""Run history parsing, summary, figure builders and the offline HTML report."""

from __future__ import annotations

import base64
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from nbtune.history import (
    RunHistory,
    ema,
    final_evals,
    loss_info,
    read_history,
    summary,
    value_at_steps,
)
from nbtune.labels import edit_label

HOSTILE = "<img src=x onerror=alert(1)>"


def _records(model: str = "minilm") -> list[dict]:
    """A 6-step run with two groups, two validation evals, a test eval and an LR edit at step 4."""
    records: list[dict] = [{
        "kind": "start", "time": 100.0, "device": "cpu", "precision": "bf16", "world_size": 1,
        "total_steps": 6, "model": model, "dataset": "intents-en",
        "config": {"model": model, "optimizer": {"lr": 1e-4, "weight_decay": 0.01},
                   "labels": ["<b>bold</b>", "ok"]},
    }]
    losses = [2.0, 1.6, 1.3, 1.1, 0.9, 0.8]
    for step, loss in enumerate(losses, start=1):
        lr = 1e-4 if step < 4 else 5e-5
        records.append({
            "kind": "step", "step": step, "epoch": step / 6, "time": 100.0 + step, "loss": loss,
            "grad_norm": 3.0 if step == 1 else 1.0, "clipped": step == 1,
            "grad_norm_groups": {"encoder": 0.8, "head": 0.5},
            "lr": {"encoder": lr, "head": lr * 10},
            "samples_per_second": 10.0 * step, "tokens_per_second": 100.0 * step,
            "some_future_key": [1, 2],
        })
        if step == 3:
            records.append({"kind": "eval", "step": 3, "epoch": 0.5, "split": "validation",
                            "loss": 1.5, "accuracy": 0.70, "macro_f1": 0.6})
            records.append({"kind": "checkpoint", "step": 3, "path": "ckpt/step-3"})
            records.append({"kind": "edit", "step": 4, "name": "lr", "old": 1e-4, "new": 5e-5})
            records.append({"kind": "telemetry", "step": 3, "gpu_temp": 50})  # unknown kind
    records.append({"kind": "eval", "step": 6, "epoch": 1.0, "split": "validation",
                    "loss": 1.0, "accuracy": 0.85, "macro_f1": 0.8})
    records.append({"kind": "eval", "step": 6, "epoch": 1.0, "split": "test",
                    "loss": 1.1, "accuracy": 0.83, "macro_f1": 0.79})
    records.append({"kind": "end", "step": 6, "status": "finished", "time": 112.0,
                    "message": "done <ok>"})
    return records


def _write_run(tmp_path: Path, model: str = "minilm", truncated: bool = True) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    text = "".join(json.dumps(r) + "\n" for r in _records(model))
    if truncated:
        text += '{"kind": "step", "step": 7, "loss": 0.'  # crash mid-write: no newline, half a record
    (run_dir / "metrics.jsonl").write_text(text, encoding="utf-8")
    return run_dir


@pytest.fixture()
def history(tmp_path: Path) -> RunHistory:
    return read_history(_write_run(tmp_path))


def test_read_history_values(history: RunHistory) -> None:
    assert history.truncated
    assert history.steps == [1, 2, 3, 4, 5, 6]
    assert history.loss == [2.0, 1.6, 1.3, 1.1, 0.9, 0.8]
    assert history.grad_norm[0] == 3.0 and history.clipped == [True] + [False] * 5
    assert set(history.lr) == {"encoder", "head"}
    assert history.lr["encoder"][2] == 1e-4 and history.lr["encoder"][3] == 5e-5
    assert history.grad_norm_groups["head"] == [0.5] * 6
    assert history.samples_per_second[-1] == 60.0 and history.tokens_per_second[0] == 100.0
    assert [(e["split"], e["step"]) for e in history.evals] == [
        ("validation", 3), ("validation", 6), ("test", 6)]
    assert history.edits == [{"step": 4, "name": "lr", "old": 1e-4, "new": 5e-5}]
    assert history.checkpoints == [{"step": 3, "path": "ckpt/step-3"}]
    assert history.start is not None and history.start["model"] == "minilm"
    assert history.end is not None and history.end["status"] == "finished"


def test_read_history_accepts_file_path(tmp_path: Path) -> None:
    run_dir = _write_run(tmp_path)
    assert read_history(run_dir / "metrics.jsonl").steps == read_history(run_dir).steps


def test_malformed_middle_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "step", "step": 1, "loss": 1.0}\n{oops\n{"kind": "end"}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl: line 2"):
        read_history(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        read_history(tmp_path)


def test_late_groups_are_padded_and_resume_rewinds(tmp_path: Path) -> None:
    rows = [
        {"kind": "step", "step": 1, "loss": 1.0, "lr": {"head": 1.0}},
        {"kind": "step", "step": 2, "loss": 0.9, "lr": {"head": 1.0, "encoder": 0.1}},
        {"kind": "step", "step": 3, "loss": 0.8, "lr": {"head": 1.0, "encoder": 0.1}},
        # Resumed from a step-2 checkpoint: step 3 is logged again and replaces the first one.
        {"kind": "start", "time": 5.0, "model": "m"},
        {"kind": "step", "step": 3, "loss": 0.7, "lr": 0.5},
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    h = read_history(path)
    assert h.steps == [1, 2, 3] and h.loss == [1.0, 0.9, 0.7]
    assert math.isnan(h.lr["encoder"][0]) and h.lr["encoder"][1] == 0.1
    assert all(len(series) == 3 for series in h.lr.values())
    assert h.lr["all"][-1] == 0.5 and not h.truncated and h.end is None


def test_summary(history: RunHistory) -> None:
    s = summary(history)
    assert s["final_train_loss"] == 0.8
    assert (s["best_metric"], s["best_value"], s["best_step"]) == ("accuracy", 0.85, 6)
    assert s["num_steps"] == 6 and s["status"] == "finished"
    assert s["mean_samples_per_second"] == pytest.approx(35.0)
    assert s["wall_seconds"] == pytest.approx(12.0)
    lowest_loss = summary(history, metric="loss")
    assert (lowest_loss["best_value"], lowest_loss["best_step"]) == (1.0, 6)
    assert summary(RunHistory())["status"] == "not started"


def test_final_evals_and_helpers(history: RunHistory) -> None:
    assert final_evals(history) == {
        "validation": {"loss": 1.0, "accuracy": 0.85, "macro_f1": 0.8},
        "test": {"loss": 1.1, "accuracy": 0.83, "macro_f1": 0.79},
    }
    assert edit_label(history.edits[0]) == "step 4: lr 1e-4 -> 5e-5"
    assert ema([2.0, 2.0, float("nan"), 2.0]) == pytest.approx([2.0, 2.0, 2.0, 2.0])
    assert value_at_steps([1, 2, 3], [1.0, 2.0, 3.0], [2, 5]) == [2.0, 3.0]
    info = loss_info(history)
    assert info.val_steps == [3, 6] and info.val_loss == [1.5, 1.0]
    assert info.ema_at_val == [info.loss_ema[2], info.loss_ema[5]]


def test_history_module_is_headless() -> None:
    code = "import sys, nbtune.history; print('plotly' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_loss_figure(history: RunHistory) -> None:
    from nbtune.ui.figures import loss_figure

    fig = loss_figure(history)
    names = [t.name for t in fig.data]
    assert names == ["train loss", "train loss (EMA)", "train EMA at eval", "train/val gap",
                     "validation loss", "edits"]
    gap = fig.data[names.index("train/val gap")]
    assert gap.fill == "tonexty" and list(gap.y) == [1.5, 1.0]
    edits = fig.data[names.index("edits")]
    assert list(edits.x) == [4] and edits.hovertext == ("step 4: lr 1e-4 -&gt; 5e-5",)
    vlines = [s for s in fig.layout.shapes if s.type == "line"]
    assert [(s.x0, s.x1) for s in vlines] == [(4, 4)]


def test_grad_norm_figure_band_and_groups(history: RunHistory) -> None:
    from nbtune.ui.figures import grad_norm_figure

    fig = grad_norm_figure(history)
    assert [t.name for t in fig.data] == ["grad norm", "clipped", "grad norm: encoder",
                                          "grad norm: head"]
    assert list(fig.data[1].x) == [1]
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    assert [(r.y0, r.y1) for r in rects] == [(0.5, 2.0)]
    custom = grad_norm_figure(history, healthy_band=(0.2, 1.0))
    assert [(s.y0, s.y1) for s in custom.layout.shapes if s.type == "rect"] == [(0.2, 1.0)]
    assert not grad_norm_figure(history, healthy_band=None).layout.shapes


def test_lr_and_throughput_figures(history: RunHistory) -> None:
    from nbtune.ui.figures import lr_figure, run_figures, throughput_figure

    lr = lr_figure(history)
    assert [t.name for t in lr.data] == ["encoder", "head", "edits"]
    assert list(lr.data[1].y)[:4] == [1e-3, 1e-3, 1e-3, 5e-4]
    tp = throughput_figure(history)
    assert [t.name for t in tp.data] == ["samples/s", "tokens/s"]
    assert list(tp.data[0].y) == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    assert set(run_figures(history)) == {"loss", "grad_norm", "lr", "throughput"}


def test_figures_build_from_an_empty_history() -> None:
    from nbtune.ui.figures import run_figures

    figs = run_figures(RunHistory())
    assert len(figs["loss"].data) == 6 and len(figs["throughput"].data) == 2


def test_group_names_are_escaped_in_figures(tmp_path: Path) -> None:
    from nbtune.ui.figures import lr_figure

    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"kind": "step", "step": 1, "lr": {HOSTILE: 1.0}}) + "\n")
    assert lr_figure(read_history(path)).data[0].name == "&lt;img src=x onerror=alert(1)&gt;"


def test_report_is_offline_and_escaped(tmp_path: Path) -> None:
    from plotly.offline import get_plotlyjs

    from nbtune.ui.report import write_report

    run_dir = _write_run(tmp_path, model=HOSTILE)
    out = write_report(run_dir)
    assert out == run_dir / "report.html" and out.is_file()
    page = out.read_text(encoding="utf-8")
    bundle = get_plotlyjs()
    assert '<script src="http' not in page and 'src="http' not in page
    # plotly.js itself names cdn.plot.ly as the default topojson URL (geo maps only); nothing else may.
    assert page.count("cdn.plot.ly") == bundle.count("cdn.plot.ly")
    assert page.count(bundle[:300]) == 1 and page.count(bundle[-300:]) == 1
    assert page.count('class="plotly-graph-div"') == 4
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "done &lt;ok&gt;" in page
    for heading in ("Summary", "Final evaluation", "Live edits", "Charts", "Configuration"):
        assert f"<h2>{heading}</h2>" in page
    assert "step 4: lr 1e-4 -&gt; 5e-5" in page
    assert not [p for p in run_dir.iterdir() if p.suffix == ".tmp"]


def test_report_custom_out_path(tmp_path: Path) -> None:
    from nbtune.ui.report import write_report

    run_dir = _write_run(tmp_path, truncated=False)
    out = write_report(run_dir / "metrics.jsonl", tmp_path / "elsewhere" / "r.html")
    assert out == tmp_path / "elsewhere" / "r.html" and out.is_file()
    assert not (run_dir / "report.html").exists()


def test_decimate_minmax_caps_points_and_keeps_spikes():
    import random

    from nbtune.history import decimate_minmax

    rng = random.Random(0)
    xs = list(range(100_000))
    ys = [rng.random() for _ in xs]
    ys[54_321], ys[77_777] = 50.0, -50.0  # one spike up, one down
    ys[10] = float("nan")
    dx, dy = decimate_minmax(xs, ys, max_points=5000)
    assert len(dx) <= 5000
    assert 50.0 in dy and -50.0 in dy
    assert dx == sorted(dx) and 54_321 in dx and 77_777 in dx
    short = decimate_minmax([1, 2, 3], [3, 2, 1])
    assert short == ([1, 2, 3], [3, 2, 1])


def test_snapshot_png_draws_the_run_and_leaves_pyplot_alone():
    """The static snapshot is a PNG of the four charts, with the run's headline."""
    from nbtune.history import history_from_records
    from nbtune.ui.snapshot import headline, snapshot_bundle

    records = [{"kind": "start", "model": "m", "dataset": "d", "total_steps": 40}]
    records += [{"kind": "step", "step": s, "loss": 1.0 / s, "grad_norm": 1.0, "lr": {"decay": 1e-4},
                 "samples_per_second": 10.0, "clipped": s == 7} for s in range(1, 41)]
    records += [{"kind": "eval", "step": 20, "split": "validation", "loss": 0.3, "accuracy": 0.75},
                {"kind": "edit", "step": 10, "name": "lr", "old": 1e-4, "new": 5e-5},
                {"kind": "end", "step": 40, "status": "finished"}]
    history = history_from_records(records)
    assert headline(history) == "nbtune run finished: step 40 of 40 (m on d); best accuracy 0.75 @ step 20"
    bundle = snapshot_bundle(history)
    png = base64.b64decode(bundle["image/png"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and bundle["text/plain"] == headline(history) + f"; loss {history.loss[-1]:.4g}"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1080, 594)
    empty = base64.b64decode(snapshot_bundle(history_from_records([]))["image/png"])
    assert len(empty) < len(png)  # drawn curves add pixels: the data really is plotted
    # user text with matplotlib's math markers or HTML is drawn literally, never parsed
    odd = history_from_records([{"kind": "start", "model": "$\\frac{", "dataset": "<b>x</b>"},
                                {"kind": "step", "step": 1, "loss": 1.0, "lr": {"$x^{": 1e-4}}])
    assert "$\\frac{" in snapshot_bundle(odd)["text/plain"]


def test_decimate_minmax_nan_buckets_and_order():
    """NaN gaps never count as extremes; an all-NaN bucket keeps one point; x stays increasing."""
    from nbtune.history import decimate_minmax
    nan = float("nan")
    xs = list(range(12))
    ys = [5, nan, 1, 9, nan, nan, nan, nan, 2, 2, 2, 7]
    dx, dy = decimate_minmax(xs, ys, max_points=8)      # 3 buckets of 4: min and max of each, in x order
    assert dx == [0, 2, 3, 4, 8, 11]                    # ... plus the first and last points
    assert dy[:3] == [5, 1, 9] and dy[3] != dy[3] and dy[4:] == [2, 7]
