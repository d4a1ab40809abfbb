"""ExplainPanel in-process (no browser): the four methods side by side on the trigger classifier, agreement and
faithfulness shown, a cost estimate before running, examples picked from a run's validation data, errors shown
in the panel, and the model's training flag left as it was."""
from __future__ import annotations

import pytest

from nbtune.explain import ExplainModel
from nbtune.ui.panels.explain import ExplainPanel
from tests.support.trigger import load_trigger

TEXT = "the lamp zebra is on today"


@pytest.fixture(scope="module")
def em(trigger):
    model, tokenizer = load_trigger(trigger.model_dir)
    return ExplainModel(model, tokenizer)


def test_four_methods_side_by_side_with_numbers(em):
    panel = ExplainPanel(em, texts=[TEXT, "we read a book near window"], max_evals=80, lime_samples=200, ig_steps=32)
    assert "SHAP" in panel.cost_html.value and "~" in panel.cost_html.value   # estimate shown before running
    em.model.train()
    panel.explain()
    panel.wait(timeout_s=300)
    assert panel.error is None, panel.error
    assert em.model.training is True                     # explaining mid-training leaves dropout on
    assert list(panel.results) == ["shap", "lime", "ig", "attention"]
    for method in ("shap", "lime", "ig"):
        assert panel.results[method].top(1)[0][0] == "zebra", method
    heatmaps = panel.heatmaps_box.children
    assert [h.method for h in heatmaps] == ["shap", "lime", "ig", "attention"]
    assert heatmaps[0].words == ["the", "lamp", "zebra", "is", "on", "today"]
    numbers = panel.numbers_html.value
    assert "shap" in numbers.lower() and "aopc" in numbers.lower()
    assert panel.faithfulness["shap"].flipped_at == 1
    assert panel.attention_box.children and panel.attention_view.tokens
    assert panel.progress.value == panel.progress.max and "done" in panel.progress_label.value
    assert not panel.explain_button.disabled
    em.model.eval()


def test_target_choice_and_errors_are_shown(em):
    panel = ExplainPanel(em, texts=[TEXT], methods=("shap",), max_evals=40)
    panel.target_picker.value = em.label_names.index("calm")
    panel.explain(background=False)
    assert panel.results["shap"].target.label == "calm" and panel.results["shap"].top(1)[0][0] != "zebra"
    panel.text_box.value = "   "
    panel.explain_button.click()
    panel.wait(timeout_s=60)
    assert "no words" in panel.error_html.value and panel.error_html.layout.display is None
    with pytest.raises(ValueError, match="unknown method"):
        ExplainPanel(em, methods=("shap", "gradcam"))


def test_examples_from_a_run_put_mistakes_first(tmp_path):
    from nbtune.config import RunConfig
    from nbtune.engine.run import Run
    cfg = RunConfig(output_dir=str(tmp_path)).with_overrides([
        "task=classification", "model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=32",
        "data.max_eval_samples=24", "train.max_steps=2", "train.progress_bar=false", "train.tensorboard=false"])
    run = Run(cfg)
    run.start()
    panel = ExplainPanel(run, methods=("attention",))
    options = [label for label, value in panel.picker.options if value is not None]
    assert len(options) == 10 and options[0].startswith("[wrong]")   # a 2-step tiny model is mostly wrong
    panel.picker.value = panel.picker.options[1][1]
    assert panel.text_box.value == panel.picker.options[1][1]
