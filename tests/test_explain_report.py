"""The review report and `nbtune explain` on the trigger classifier of tests/support/trigger.py (tiny-bert trained
so that "zebra" decides class "alarm"), trained once for the module with a checkpoint at steps 80 and 160 so the
report also has explanation drift. Budgets are small (SHAP 60 evaluations, LIME 200 samples, IG 32 steps).
About a minute on 2 CPU cores, most of it training."""
from __future__ import annotations

import argparse
import re
from html.parser import HTMLParser

import pytest

from nbtune.explain.attention import NOT_AN_EXPLANATION
from nbtune.explain.cli import add_parser, main
from nbtune.explain.examples import pick_examples, run_split_texts
from nbtune.explain.html import fmt
from nbtune.explain.model import ExplainModel
from nbtune.explain.report import Budget, build_report
from nbtune.explain.types import ExplainError
from tests.support.trigger import TRIGGER, trigger_run

PROBES = ["the lamp zebra is on today", "zebra near the window while music plays"]
SMALL = Budget(shap_max_evals=60, lime_samples=200, ig_steps=32, random_seeds=3)
SMALL_FLAGS = ["--max-evals", "60", "--lime-samples", "200", "--ig-steps", "32"]
PAYLOADS = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "</script><script>alert(2)</script>",
            '" onmouseover="alert(3)']
REMOTE = re.compile(r"""(?:\bsrc|\bhref)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?\s*(?:https?:)?//|@import""", re.I)


class Page(HTMLParser):
    """Every start tag with its attributes, the text as a browser would show it, and the (method, top word) of
    each attribution row."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.chunks: list[str] = []
        self.tops: list[tuple[str, str]] = []
        self._method = None
        self.feed(source)
        self.close()
        self.text = "".join(self.chunks)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if tag == "tr" and "data-method" in attrs:
            self._method = attrs["data-method"]
        if tag == "td" and "data-top" in attrs:
            self.tops.append((self._method, attrs["data-top"]))

    def handle_data(self, data):
        self.chunks.append(data)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """trigger.py's run, keeping the checkpoints at steps 80 and 160 (so the report has explanation drift)."""
    run = trigger_run(tmp_path_factory.mktemp("report"), save_every_n_steps=80)
    assert run.results["test"]["accuracy"] == 1.0
    return run


@pytest.fixture(scope="module")
def report(run):
    return build_report(run, PROBES, budget=SMALL)


@pytest.fixture(scope="module")
def page(report):
    return report.html()


def test_report_shows_every_method_and_the_trigger_on_top(report, page):
    assert report.methods == ["shap", "lime", "ig", "attention"]
    for probe in report.probes:
        assert probe.errors == {} and probe.target.label == "alarm"
        assert [a.method for a in probe.attributions] == report.methods
        for method in ("shap", "lime", "ig"):
            assert probe.attribution(method).top(1)[0][0] == TRIGGER, (method, probe.attribution(method).top(3))
    parsed = Page(page)
    rows = {}
    for method, top in parsed.tops:
        rows.setdefault(method, []).append(top)
    assert set(rows) == {"shap", "lime", "ig", "attention"} and all(len(v) == 2 for v in rows.values())
    assert rows["shap"] == rows["lime"] == rows["ig"] == [TRIGGER, TRIGGER]
    shap = report.probes[0].attribution("shap")
    assert f"alarm ({fmt(shap.model_score)})" in parsed.text and shap.model_score > 0.9   # target and its score


def test_report_has_agreement_faithfulness_and_attention(report, page):
    first = report.probes[0].comparison
    pair = first.agreement.pair("shap", "lime")
    assert -1.0 <= pair.spearman <= 1.0 and pair.top_word_agree
    assert "shap / lime" in page and fmt(pair.spearman) in page
    shap = first.faithfulness["shap"]
    assert shap.flipped_at == 1 and shap.prediction_after_top1_deleted == "calm" and shap.beats_random
    assert shap.aopc > shap.random_aopc + 0.2
    assert fmt(shap.aopc) in page and fmt(shap.random_aopc) in page
    assert page.count("<polyline") == 4 * 4 * len(PROBES)             # 4 curves x 4 methods x 2 probes
    assert report.probes[0].attention is not None
    assert "where the model looks" in page and NOT_AN_EXPLANATION in page
    assert page.count("<svg") > 4 * len(PROBES)                       # curves plus the head x layer grid


def test_report_has_model_data_drift_and_provenance(run, report, page):
    text = Page(page).text
    assert report.model["name"] == "tiny-bert" and report.model["labels"] == ["alarm", "calm"]
    assert report.data["dataset"] == "trigger" and report.data["validation rows"] == 64
    assert "validation results" in text and "samples seen" in text
    assert report.drift is not None and report.drift.steps == [80, 160] and report.drift.method == "shap"
    zebra = report.drift.probes[0]
    assert zebra.gainers[0].word == TRIGGER and zebra.word_series(TRIGGER)[-1] > 0.9   # decisive at step 160
    assert f"gained: {TRIGGER} {zebra.gainers[0].change:+.3f}" in text
    assert "step 80" in text and "step 160" in text
    assert report.produced["method shap"].endswith("max_evals=60") and "nbtune version" in text
    assert all(p in text for p in PROBES)


def test_no_script_and_no_remote_resource(page):
    assert not REMOTE.findall(page)
    assert "<script" not in page.lower()
    assert [t for t, _ in Page(page).tags if t in ("script", "link", "iframe", "object", "embed")] == []
    for remote in ('<img src="https://x/y.png">', "<a href=//cdn/x>", "background:url( 'http://x')"):
        assert REMOTE.search(remote), remote                          # the regex does catch remote links


def test_untrusted_text_is_escaped_everywhere(run):
    model = run.accelerator.unwrap_model(run.model)
    em = ExplainModel(model, run.tokenizer, "classification", label_names=[PAYLOADS[0], PAYLOADS[3]])
    probes = [f"the lamp zebra {PAYLOADS[1]} is on", f"{PAYLOADS[2]} we read {PAYLOADS[3]}  a\nbook"]
    page = build_report(em, probes, budget=SMALL, model_name=PAYLOADS[2]).html()
    parsed = Page(page)
    assert [t for t, _ in parsed.tags if t in ("script", "img")] == []
    assert [(t, name) for t, attrs in parsed.tags for name in attrs if name.lower().startswith("on")] == []
    for payload in PAYLOADS:
        assert payload in parsed.text, payload
    for probe in probes:                                               # the heatmap keeps the original spacing
        assert probe in parsed.text


def test_long_text_attention_is_one_word_matrix_per_layer(run):
    from nbtune.explain.attention import attention_maps
    from nbtune.explain.html import attention_html
    em = ExplainModel.from_run(run)
    text = " ".join(["the lamp <b>zebra</b> is on today"] * 10)          # 130 words, 128 pieces (truncated)
    info = attention_maps(em, text)
    page = attention_html(info)
    parsed = Page(page)
    assert "Attention by layer</b>" in page and "mean over 2 heads" in parsed.text and "head 0" not in parsed.text
    assert [t for t, _ in parsed.tags].count("svg") == len(info.layers) == 2
    squares = sum(a["d"].count("z") for t, a in parsed.tags if t == "path")
    assert 0 < squares <= 2 * len(info.words) ** 2                     # near-white cells are left out
    assert len(page) < 25 * squares + 50_000                           # one <rect> per cell would be ~80 bytes
    assert [t for t, _ in parsed.tags].count("b") == 3                # the three titles; the text's <b> is text
    assert parsed.text.count("zebra") >= 2 * 10 * 2                      # row and column labels, escaped words
    assert "where the model looks" in parsed.text


def _random_tiny(task: str) -> ExplainModel:
    """A randomly initialised tiny model of another task (tiny-llama for causal-lm, tiny-bert for tagging)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

    from nbtune.assets import resolve_model
    resolved = resolve_model("tiny-llama" if task == "causal-lm" else "tiny-bert")
    torch.manual_seed(0)
    if task == "causal-lm":
        model, labels = AutoModelForCausalLM.from_config(resolved.config), None
    else:
        resolved.config.num_labels = 3
        model, labels = AutoModelForTokenClassification.from_config(resolved.config), ["O", "B-LOC", "I-LOC"]
    return ExplainModel(model.eval(), AutoTokenizer.from_pretrained(resolved.tokenizer_path), task, labels)


@pytest.mark.parametrize("task, options, target", [
    ("causal-lm", {"continuation": " today"}, "next: ' today'"),
    ("token-classification", {"word": 2, "targets": "B-LOC"}, "B-LOC at word 2"),
])
def test_reports_for_the_other_tasks(task, options, target):
    report = build_report(_random_tiny(task), ["the lamp in the kitchen is on"], budget=SMALL, **options)
    probe = report.probes[0]
    assert probe.errors == {} and probe.target.describe() == target
    assert [a.method for a in probe.attributions] == ["shap", "lime", "ig", "attention"]
    page = report.html()
    parsed = Page(page)
    assert {m for m, _ in parsed.tops} == {"shap", "lime", "ig", "attention"} and f"explaining {target}" in parsed.text
    assert page.count("<polyline") == 4 * 4 and "where the model looks" in parsed.text


def test_atomic_write_leaves_the_previous_report(report, tmp_path, monkeypatch):
    from nbtune.explain import report as report_module
    path = report.write_report(tmp_path / "review.html")
    before = path.read_bytes()
    assert before.startswith(b"<!DOCTYPE html>") and before.rstrip().endswith(b"</html>")
    seen = []

    def broken(info):
        seen.extend(tmp_path.glob(".review.html.*.tmp"))                # the temp file is being written now
        raise RuntimeError("renderer failed midway")

    monkeypatch.setattr(report_module, "attention_html", broken)
    with pytest.raises(RuntimeError, match="midway"):
        report.write_report(path)
    with pytest.raises(RuntimeError, match="midway"):
        report.write_report(tmp_path / "new.html")
    assert seen and path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["review.html"]


def test_auto_picked_probes_say_why(run):
    texts, labels = run_split_texts(run)
    picks = pick_examples(ExplainModel.from_run(run), texts, labels, n=1)
    report = build_report(run, picks, methods=("ig",), budget=SMALL, drift=False)
    assert report.probes[0].text == picks[0].text and report.probes[0].reason.startswith("uncertain: predicted")
    assert report.probes[0].reason in Page(report.html()).text
    with pytest.raises(ExplainError, match="did you mean 'lime'"):
        build_report(run, PROBES, methods=("lyme",))


def cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="nbtune")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return main(parser.parse_args(["explain", *argv]))


def test_cli_on_a_saved_model_writes_the_report(run, tmp_path, capsys):
    model_dir = run.save_pretrained(tmp_path / "model")
    out = tmp_path / "out" / "review.html"
    assert cli(str(model_dir), "--text", PROBES[0], "--text", PROBES[1], *SMALL_FLAGS, "-o", str(out)) == 0
    assert f"report: {out}" in capsys.readouterr().out
    parsed = Page(out.read_text(encoding="utf-8"))
    assert all(p in parsed.text for p in PROBES) and "where the model looks" in parsed.text
    assert dict(parsed.tops)["shap"] == TRIGGER and {m for m, _ in parsed.tops} == {"shap", "lime", "ig", "attention"}


def test_cli_on_a_run_directory_includes_drift(run, tmp_path):
    out = tmp_path / "run.html"
    assert cli(str(run.run_dir), "--text", PROBES[0], "--methods", "ig,attention", *SMALL_FLAGS, "-o", str(out)) == 0
    text = Page(out.read_text(encoding="utf-8")).text
    assert "Explanation drift" in text and "step 80" in text and "samples seen" in text


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("method", "unknown method 'shapp'; did you mean 'shap'?"),
    ("empty", "has no probe texts"),
    ("none", "no probe texts: pass --text"),
    ("target", "did you mean 'alarm'?"),
    ("auto-model", "is a saved model directory"),
    ("auto-run", "could not be loaded"),
])
def test_cli_bad_input_exits_2_with_a_clear_message(run, tmp_path, capsys, case, message):
    model_dir = tmp_path / "model"
    if case in ("target", "auto-model"):
        run.save_pretrained(model_dir)
    empty = tmp_path / "probes.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    argv = {"missing": [str(tmp_path / "nowhere"), "--text", "x"],
            "method": [str(model_dir), "--text", "x", "--methods", "shapp,ig"],
            "empty": [str(model_dir), "--probes-file", str(empty)],
            "none": [str(model_dir)],
            "target": [str(model_dir), "--text", "x y", "--target", "alarmm"],
            "auto-model": [str(model_dir), "--auto", "2"],
            "auto-run": [str(run.run_dir), "--auto", "2"]}[case]
    assert cli(*argv, "-o", str(tmp_path / "r.html")) == 2
    err = capsys.readouterr().err
    assert err.startswith("nbtune explain: error:") and message in err, err
    if case == "empty":
        assert str(empty) in err
    assert not (tmp_path / "r.html").exists()


@pytest.mark.integration
def test_cli_auto_picks_validation_rows_of_a_bundled_dataset(tmp_path):
    """--auto on a run of the bundled intents: the validation texts are loaded as the run loaded them."""
    from nbtune.config import RunConfig
    from nbtune.engine.run import Run
    cfg = RunConfig(output_dir=str(tmp_path)).with_overrides([
        "task=classification", "model.name=tiny-bert", "data.dataset=intents-en", "data.max_train_samples=200",
        "data.max_eval_samples=100", "data.max_length=32", "train.max_steps=5", "train.batch_size=16",
        "train.eval_every_n_steps=0", "train.progress_bar=false", "train.tensorboard=false"])
    run = Run(cfg)
    run.start()
    out = tmp_path / "auto.html"
    assert cli(str(run.run_dir), "--auto", "3", "--methods", "ig,attention", "--no-drift", "-o", str(out)) == 0
    parsed = Page(out.read_text(encoding="utf-8"))
    reasons = re.findall(r'class="reason">([^<]*)<', out.read_text(encoding="utf-8"))
    assert len(reasons) == 3 and all(r.startswith(("wrong prediction: predicted", "uncertain: predicted"))
                                     for r in reasons)
    assert {m for m, _ in parsed.tops} == {"ig", "attention"} and len(parsed.tops) == 6
    assert "intents-en" in parsed.text and "Explanation drift" not in parsed.text
