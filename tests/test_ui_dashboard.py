"""The Dashboard in-process (no browser): five tabs over one tiny-bert Run, panels built lazily on the first
selection and kept (their state survives switching), build failures shown escaped inside their tab, and the
run's splits for the Data tab without the engine's validation->test copy."""
from __future__ import annotations

import types

import datasets
import ipywidgets as widgets
import optuna
import pytest

import nbtune as nt
from nbtune.config import RunConfig
from nbtune.engine.run import Run
from nbtune.ui.panels.dashboard import TABS, Dashboard, PanelUnavailable, run_dataset

optuna.logging.set_verbosity(optuna.logging.WARNING)
HOSTILE = "<img src=x onerror=alert(1)>"


def _cfg(tmp_path, *extra: str) -> RunConfig:
    return RunConfig().with_overrides([
        "model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=64", "data.max_eval_samples=8",
        "train.batch_size=4", "train.max_steps=4", "train.progress_bar=false", "train.tensorboard=false",
        f"output_dir={tmp_path}", *extra])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return Run(_cfg(tmp_path_factory.mktemp("dash")))


def _html_values(widget) -> list[str]:
    found = [widget.value] if isinstance(widget, widgets.HTML) else []
    for child in getattr(widget, "children", ()):
        found += _html_values(child)
    return found


def _page_html(dash: Dashboard, name: str) -> str:
    return "\n".join(_html_values(dash.pages[name]))


def test_tabs_train_built_at_once_and_the_rest_lazily(run):
    dash = nt.Dashboard(run, texts=["what is the capital of peru ?"])
    assert isinstance(dash.widget, widgets.Tab)
    assert dash.tabs == TABS == ("Data", "Train", "Tune", "Explain", "Export")
    assert dash.widget.titles == TABS and dash.selected == "Train"
    assert list(dash.panels) == ["Train"]
    assert dash.pages["Train"].children[-1] is dash.panels["Train"].widget
    assert "Building the Data panel" in _page_html(dash, "Data")
    bundle = dash._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == dash.widget.model_id
    assert bundle["text/plain"].startswith(f"nbtune Dashboard · run {run.run_dir.name}")
    assert "Data (not built) | Train (built)" in bundle["text/plain"] and "showing Train" in bundle["text/plain"]

    # a click on a tab (the front end sets selected_index) builds that tab's panel, and only that one
    dash.widget.selected_index = TABS.index("Explain")
    assert sorted(dash.panels) == ["Explain", "Train"] and dash.selected == "Explain"
    explain = dash.panels["Explain"]
    assert type(explain).__name__ == "ExplainPanel" and explain.run is run
    assert explain.text_box.value == "what is the capital of peru ?"
    assert dash.pages["Explain"].children == (explain.widget,)
    # panel() builds without switching; select() switches
    export = dash.panel("Export")
    assert type(export).__name__ == "ExportPanel" and export.run is run and dash.selected == "Explain"
    dash.select("Export")
    assert dash.selected == "Export" and dash.panel("Export") is export


def test_state_survives_switching_tabs(run, tmp_path):
    dash = Dashboard(run, data_options={"page_size": 5}, tune_options={"trials": 3, "study_dir": tmp_path / "s"})
    train = dash.panels["Train"]
    dash.select("Data")
    data = dash.panel("Data")
    assert data.report.splits == ["train", "validation", "test"]
    assert len(data.report.texts) == 64 + 8 + 8  # the run's sample limits
    data.set_query(split="train")
    data.show_page(2)
    table = data.table_html.value
    assert data.page == 2 and table.count("<tr data-row=") == 5
    dash.select("Tune")
    tune = dash.panel("Tune")
    assert tune.study.n_trials == 3 and tune.study.study_dir == tmp_path / "s"
    assert not tune.study.is_running and tune.study.study.get_trials() == []  # no search until Start
    tune.trial_picker.options = [("#3", 3), ("#7", 7)]
    tune.trial_picker.value = 7  # a picker choice to keep
    dash.select("Train")
    dash.select("Data")
    dash.select("Tune")
    assert dash.panel("Train") is train and dash.pages["Train"].children[-1] is train.widget
    assert dash.panel("Data") is data and data.page == 2 and data.table_html.value == table
    assert data.split_filter.value == "train"
    assert dash.panel("Tune") is tune and tune.trial_picker.value == 7


def test_a_given_study_and_data_are_used(run, tmp_path):
    from nbtune.tune.study import TuneStudy
    study = TuneStudy(run.cfg, n_trials=2, study_dir=tmp_path / "given")
    hostile = datasets.Dataset.from_dict({"text": ["a b c", "d e f", "g h i"], "label": [HOSTILE, "ok", "ok"]})
    dash = Dashboard(run, study=study, data=hostile)
    assert dash.panel("Tune").study is study
    data = dash.panel("Data")
    assert sorted(data.report.label_names) == sorted([HOSTILE, "ok"])
    page = _page_html(dash, "Data")
    assert HOSTILE not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    # a DataPanel already built is placed as it is
    again = Dashboard(run, data=data)
    assert again.panel("Data") is data


def test_build_errors_are_shown_escaped_in_the_tab(run):
    dash = Dashboard(run, explain_options={"methods": [HOSTILE]}, data_options={"text": HOSTILE})
    dash.widget.selected_index = TABS.index("Explain")  # a tab switch never raises
    assert dash.selected == "Explain" and "Explain" not in dash.panels
    page = _page_html(dash, "Explain")
    assert "The Explain panel is not available for this run." in page
    assert "ExplainError: unknown method(s) [&#x27;&lt;img src=x onerror=alert(1)&gt;&#x27;]" in page
    assert HOSTILE not in page and "<summary>traceback</summary>" in page
    assert dash.pages["Explain"].children[0]._dom_classes == ("nbtune-dashboard-error",)
    with pytest.raises(PanelUnavailable, match=r"the Explain panel could not be built for this run: "
                                                r"ExplainError: unknown method") as info:
        dash.panel("Explain")
    assert type(info.value.__cause__).__name__ == "ExplainError"
    dash.select("Data")  # a text column that does not exist, named in the message, escaped
    page = _page_html(dash, "Data")
    assert "The Data panel is not available" in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert HOSTILE not in page
    assert "Data (error)" in dash.describe() and "Explain (error)" in dash.describe()
    dash.select("Export")  # the other tabs still work
    assert "Export" in dash.panels and "Export (built)" in dash.describe()


def test_unknown_tab_and_options_are_named(run):
    dash = Dashboard(run)
    with pytest.raises(ValueError, match=r"no tab named 'explian'; the tabs are Data, Train, Tune, Explain, "
                                         r"Export \(did you mean 'Explain'\?\)"):
        dash.select("explian")
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['max_evals'\]; panel options go in "
                                        r"data_options, train_options"):
        Dashboard(run, max_evals=10)
    with pytest.raises(TypeError, match="explain_options must be a dict of ExplainPanel keyword arguments, got int"):
        Dashboard(run, explain_options=3)


def test_run_dataset_drops_the_validation_copy_named_test(tmp_path):
    rows = {"text": [f"text number {i}" for i in range(40)], "label": ["a", "b"] * 20}
    cfg = _cfg(tmp_path, "data.max_eval_samples=null")
    fake = types.SimpleNamespace(cfg=cfg, source_dataset=datasets.Dataset.from_dict(rows))
    dataset, note = run_dataset(fake)
    assert list(dataset) == ["train", "validation"] and len(dataset["validation"]) == 4
    assert "no test split of its own" in note
    own = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows),
                                "test": datasets.Dataset.from_dict({"text": ["x y"], "label": ["a"]})})
    dataset, note = run_dataset(types.SimpleNamespace(cfg=cfg, source_dataset=own))
    assert sorted(dataset) == ["test", "train", "validation"] and len(dataset["test"]) == 1 and note is None


def test_displayed_dashboard_leaves_the_train_snapshot_when_the_run_ends(tmp_path, monkeypatch):
    """Displayed, the Dashboard shows its Tab, then the Train panel's placeholder, which the run's end fills with
    the static PNG of the curves (what a saved, reopened notebook shows without a kernel)."""
    import base64

    import IPython.display
    shown, updates = [], []

    class Handle:
        def update(self, obj, raw=False):
            updates.append(obj)

    def fake_display(obj, display_id=None, raw=False):
        shown.append(obj)
        return Handle() if display_id else None

    monkeypatch.setattr(IPython.display, "display", fake_display)
    run = Run(_cfg(tmp_path, "train.max_steps=3"))
    dash = Dashboard(run)
    dash._ipython_display_()
    assert len(shown) == 2 and "application/vnd.jupyter.widget-view+json" in shown[0]
    assert shown[0]["text/plain"].startswith("nbtune Dashboard") and shown[1] == {"text/plain": ""}
    run.start(background=True).wait()
    dash.panel("Train").close()
    [bundle] = updates
    assert base64.b64decode(bundle["image/png"]).startswith(b"\x89PNG") and "step 3 of 3" in bundle["text/plain"]
