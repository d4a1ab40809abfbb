"""ExportPanel in-process (no browser): the bar charts from a hand-made ExportReport (bars, values, axis titles),
the parity and latency tables rounded as documented, pass/fail per threshold, failures in red, report text
escaped in every HTML widget, reports opened from report.json; a tiny-bert run exported by clicking Export."""
from __future__ import annotations

import html
import json
import re

import ipywidgets as widgets
import pytest

from nbtune.export.types import ExportError, ExportReport, Latency, Parity
from nbtune.ui import export_figures as ef
from nbtune.ui.panels.export import ExportPanel, load_report, parity_table_html, stages_html

PAYLOAD = "<script>window.__xss=1</script>"
THRESHOLDS = {"max_logit_diff": 1e-4, "min_fp32_agreement": 1.0, "min_int8_agreement": 0.99,
              "max_int8_metric_drop": 0.01}


def _report(**changes) -> ExportReport:
    base = dict(
        task="classification", model_name="tiny-bert", output_dir="/runs/tiny/export",
        files={"onnx-fp32": "/runs/tiny/export/model.onnx", "onnx-int8": "/runs/tiny/export/model.int8.onnx",
               "report": "/runs/tiny/export/report.json"},
        parity=[Parity("onnx-fp32", 48, 1.23456e-6, 2.5e-7, 1.0, "accuracy", 0.875, 0.875),
                Parity("onnx-int8", 48, 0.0345678, 0.0061, 0.99375, "accuracy", 0.86875, 0.875)],
        latency=[Latency("pytorch", 12.3456, 15.01, 410.04, 64, 2),
                 Latency("onnx-fp32", 5.0, 6.25, 1025.1, 64, 2),
                 Latency("onnx-int8", 3.125, 4.0, 1640.16, 64, 2)],
        thresholds=dict(THRESHOLDS), notes=["triton skipped: triton=False"])
    base.update(changes)
    return ExportReport(**base)


def _cells(table: str, key: str, name: str) -> dict[str, str]:
    """The cells of row `name` (data-variant / data-backend) as {data-col: text}."""
    row = re.search(rf'<tr data-{key}="{re.escape(name)}">(.*?)</tr>', table).group(1)
    return {k: re.sub(r"<[^>]+>", "", v) for k, v in re.findall(r'<td data-col="([^"]+)">(.*?)</td>', row)}


def _html_values(widget) -> list[str]:
    """The value of every HTML widget in the panel's widget tree."""
    out = [widget.value] if isinstance(widget, widgets.HTML) else []
    for child in getattr(widget, "children", ()):
        out += _html_values(child)
    return out


def test_figures_have_one_bar_per_backend_with_values_and_axis_titles():
    report = _report()
    lat, thr = ef.latency_figure(report), ef.throughput_figure(report)
    assert len(lat.data) == 1 and len(thr.data) == 1
    assert list(lat.data[0].x) == ["pytorch", "onnx-fp32", "onnx-int8"]
    assert list(lat.data[0].y) == pytest.approx([12.3456, 5.0, 3.125])
    assert list(thr.data[0].y) == pytest.approx([410.04, 1025.1, 1640.16])
    assert lat.layout.yaxis.title.text == "p50 latency at batch 1 (ms)"
    assert thr.layout.yaxis.title.text == "throughput at batch 32 (samples/s)"
    assert lat.layout.xaxis.title.text == "backend" and "64 tokens, 2 threads" in lat.layout.title.text
    # each bar says its speed-up over eager: 12.3456 / 3.125 = 3.95; 1640.16 / 410.04 = 4.00
    assert list(lat.data[0].text) == ["12.35 ms (x1.00)", "5.00 ms (x2.47)", "3.12 ms (x3.95)"]
    assert list(thr.data[0].text)[2] == "1640.2 /s (x4.00)"
    assert list(lat.data[0].marker.color) == ["#7f7f7f", "#1f77b4", "#2ca02c"]
    # without a pytorch row there is no speed-up to show
    alone = ef.latency_figure(_report(latency=[Latency("onnx-int8", 3.0, 4.0, 100.0, 64, 1)]))
    assert list(alone.data[0].text) == ["3.00 ms"] and "1 thread)" in alone.layout.title.text


def test_tables_show_the_figures_rounded_as_documented():
    panel = ExportPanel(_report())
    fp32 = _cells(panel.parity_html.value, "variant", "onnx-fp32")
    int8 = _cells(panel.parity_html.value, "variant", "onnx-int8")
    assert fp32 == {"variant": "onnx-fp32", "rows": "48", "max_diff": "1.23e-06", "mean_diff": "2.50e-07",
                    "agreement": "100.00%", "metric_name": "accuracy", "reference_metric": "0.8750",
                    "metric": "0.8750", "drop_pt": "+0.00",
                    "checks": "pass: max |Δlogit| ≤ 1e-04pass: agreement ≥ 100%"}
    assert (int8["max_diff"], int8["agreement"], int8["metric"], int8["drop_pt"]) == \
        ("3.46e-02", "99.38%", "0.8688", "+0.62")
    latency = {b: _cells(panel.latency_html.value, "backend", b) for b in ("pytorch", "onnx-fp32", "onnx-int8")}
    assert latency["onnx-int8"] == {"backend": "onnx-int8", "p50_ms": "3.12", "p95_ms": "4.00",
                                    "samples_per_second": "1640.2", "speedup_batch1": "x3.95",
                                    "speedup_batch32": "x4.00", "tokens": "64", "threads": "2"}
    assert latency["pytorch"]["p50_ms"] == "12.35" and latency["pytorch"]["speedup_batch1"] == "x1.00"
    assert latency["onnx-fp32"]["samples_per_second"] == "1025.1"
    assert 'data-passed="true"' in panel.header_html.value and "parity OK" in panel.header_html.value
    assert panel.files_html.value.count("<li") == 3 and "model.int8.onnx" in panel.files_html.value
    assert "triton skipped" in panel.messages_html.value
    assert panel.charts.layout.display is None and list(panel.latency_fig.data[0].y) == pytest.approx(
        [12.3456, 5.0, 3.125])


def test_each_threshold_gets_its_own_pass_or_fail():
    report = _report(thresholds={"max_logit_diff": 1e-6, "min_fp32_agreement": 1.0, "min_int8_agreement": 0.99,
                                 "max_int8_metric_drop": 0.005})
    table = parity_table_html(report)
    checks = re.findall(r'<tr data-variant="([^"]+)">|data-check="([^"]+)" data-pass="(true|false)"', table)
    assert [c[0] or f"{c[1]}={c[2]}" for c in checks] == [
        "onnx-fp32", "max_logit_diff=false", "min_fp32_agreement=true",
        "onnx-int8", "min_int8_agreement=true", "max_int8_metric_drop=false"]
    assert "FAIL: drop ≤ 0.50 pt" in table and "pass: agreement ≥ 99%" in table
    # a causal LM's report adds the greedy agreement column
    lm = _report(parity=[Parity("onnx-fp32", 8, 1e-5, 1e-6, 1.0, "next_token_accuracy", 0.5, 0.5, 0.875)])
    assert _cells(parity_table_html(lm), "variant", "onnx-fp32")["greedy"] == "88%"


def test_a_failing_report_shows_its_failures_in_red():
    failure = "onnx-int8 label agreement 95.00% is below min_int8_agreement 99.00%"
    report = _report(failures=[failure])
    report.parity[1].label_agreement = 0.95
    panel = ExportPanel(report)
    assert not panel.report.passed and "PARITY FAILED" in panel.header_html.value
    assert 'data-passed="false"' in panel.header_html.value
    assert re.search(r'<li class="nbtune-export-failure" style="color:#b00020">' + re.escape(failure),
                     panel.messages_html.value)
    assert 'data-check="min_int8_agreement" data-pass="false"' in panel.parity_html.value


def test_report_text_is_escaped_in_every_html_widget():
    report = _report(model_name=PAYLOAD, task=PAYLOAD, output_dir=f"/runs/{PAYLOAD}",
                     files={PAYLOAD: f"/runs/{PAYLOAD}/model.onnx"}, failures=[PAYLOAD], notes=[PAYLOAD],
                     thresholds={PAYLOAD: 1.0, **THRESHOLDS})
    report.parity[0].metric_name = PAYLOAD
    report.latency.append(Latency(PAYLOAD, 1.0, 1.0, 1.0, 64, 2))
    panel = ExportPanel(report)
    values = _html_values(panel.widget)
    assert len(values) >= 7 and all(PAYLOAD not in v and "<script" not in v for v in values)
    assert html.escape(PAYLOAD) in panel.header_html.value and html.escape(PAYLOAD) in panel.files_html.value
    assert html.escape(PAYLOAD) in panel.parity_html.value and html.escape(PAYLOAD) in panel.latency_html.value
    assert all("<script" not in str(x) for fig in panel.figures.values() for x in fig.data[0].x)


def test_a_report_json_opens_and_bad_paths_say_what_was_expected(tmp_path):
    report = _report()
    report.write(tmp_path / "report.json")
    for source in (tmp_path / "report.json", str(tmp_path)):
        panel = ExportPanel(source)
        assert panel.report.to_dict() == report.to_dict()
        assert panel.parity_html.value == parity_table_html(report)
    assert panel.options_row.layout.display == "none"   # a saved report: nothing to export
    with pytest.raises(ExportError, match="build ExportPanel\\(run\\)"):
        panel.export()
    with pytest.raises(FileNotFoundError, match="no export report at .*missing.*report.json"):
        load_report(tmp_path / "missing")
    (tmp_path / "bad.json").write_text(json.dumps({"task": "classification", "parity": [{"variant": 1}]}))
    with pytest.raises(ExportError, match="bad.json is not an export report"):
        load_report(tmp_path / "bad.json")
    with pytest.raises(TypeError, match="got int"):
        ExportPanel(3)


def test_stage_text_lists_each_stage_with_its_seconds():
    stages = [("merging", 10.0), ("exporting ONNX", 10.5), ("parity", 12.0)]
    text = stages_html(stages, "running")
    assert text == "<code>running: merging 0.5 s → exporting ONNX 1.5 s → parity …</code>"
    assert stages_html([], "running") == "<code>running: starting</code>"


def _tiny_run(tmp_path):
    from nbtune.config import RunConfig
    from nbtune.engine.run import Run
    return Run(RunConfig().with_overrides([
        "model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=64", "data.max_eval_samples=16",
        "train.batch_size=8", "train.max_steps=4", "train.progress_bar=false", "train.tensorboard=false",
        f"output_dir={tmp_path}", "train.precision=fp32"]))


def test_options_row_maps_to_export_arguments_and_rejects_a_bad_threshold(tmp_path):
    run = _tiny_run(tmp_path)
    panel = ExportPanel(run, latency=False, triton=False, min_int8_agreement=0.98)
    assert panel.options_row.layout.display is None and not panel.triton_box.value and panel.quantize_box.value
    assert "tiny-bert" in panel.header_html.value and "not exported yet" in panel.header_html.value
    panel.quantize_box.value, panel.output_text.value = False, str(tmp_path / "out")
    assert panel.options() == {"latency": False, "triton": False, "min_int8_agreement": 0.98, "format": "onnx",
                               "quantize": None, "max_logit_diff": 1e-4, "output_dir": str(tmp_path / "out")}
    panel.max_diff_text.value = "1e-4x"
    panel.export_button.click()
    assert panel._thread is None and not panel.export_button.disabled   # nothing started
    assert "max |Δlogit| must be a number such as 1e-4, got &#x27;1e-4x&#x27;" in panel.error_html.value
    assert panel.error_html.layout.display is None


@pytest.mark.integration
def test_clicking_export_on_a_tiny_run_shows_a_parity_failure_then_a_passing_report(tmp_path):
    run = _tiny_run(tmp_path)
    run.start()
    # first an int8 bar no model can meet (agreement is at most 100%): the ParityError's report shows, in red
    panel = ExportPanel(run, latency=False, min_int8_agreement=1.01)
    panel.triton_box.value = False
    panel.output_text.value = str(tmp_path / "export")
    panel.export_button.click()
    assert panel.export_button.disabled
    panel.wait(timeout_s=300)
    assert not panel.export_button.disabled and panel.error.startswith("ParityError: export parity failed")
    assert panel.report is not None and not panel.report.passed and not panel.report.latency
    assert "onnx-int8 label agreement" in panel.report.failures[0]
    assert "onnx-int8 label agreement" in panel.messages_html.value and "PARITY FAILED" in panel.header_html.value
    assert 'data-check="min_int8_agreement" data-pass="false"' in panel.parity_html.value
    assert panel.error_html.layout.display is None and "parity failed:" in panel.status_html.value

    # then the default fp32 bar (1e-4) with int8 held to nothing (random tiny weights), latency on, Triton off
    panel.export_options.update(latency=True, min_int8_agreement=0.0, max_int8_metric_drop=1.0)
    panel.export_button.click()
    panel.wait(timeout_s=300)
    assert panel.error is None, panel.error
    report = panel.report
    assert report.passed and panel.error_html.layout.display == "none"
    fp32 = report.parity_of("onnx-fp32")
    assert fp32.max_abs_logit_diff < 1e-4 and fp32.label_agreement == 1.0 and fp32.rows > 0
    assert report.parity_of("onnx-int8") is not None and report.thresholds["max_logit_diff"] == 1e-4
    assert [t.backend for t in report.latency] == ["pytorch", "onnx-fp32", "onnx-int8"]
    stages = [s for s, _ in panel.stages]
    assert stages == ["merging", "exporting ONNX", "quantising", "parity", "latency", "done"]
    assert panel.status_html.value.startswith("<code>done: merging ") and "triton" not in report.files
    assert _cells(panel.parity_html.value, "variant", "onnx-fp32")["max_diff"] == f"{fp32.max_abs_logit_diff:.2e}"
    assert list(panel.latency_fig.data[0].y) == pytest.approx([t.batch1_p50_ms for t in report.latency])
    assert panel.charts.layout.display is None
    assert load_report(tmp_path / "export").to_dict() == report.to_dict()
