"""The Dashboard: one tabbed view (Data | Train | Tune | Explain | Export) over one Run.

Each tab holds one of the existing panels, built the first time its tab is selected (the Train tab is built at
once and selected) and kept from then on, so switching tabs never loses a chart, a table page or a picker
choice. A panel that cannot be built for this run (a missing optional library, a task a panel does not serve, a
bad option) shows its error message, escaped, inside its tab: a tab switch never raises.

Example:
    >>> import nbtune as nt
    >>> run = nt.Run(nt.RunConfig(model="tiny-bert", data="trec"))                 # doctest: +SKIP
    >>> dash = nt.Dashboard(run, texts=["what is the capital of peru ?"]); dash    # doctest: +SKIP
    >>> dash.select("Explain"); dash.panel("Explain").explain()                     # doctest: +SKIP
"""
from __future__ import annotations

import difflib
import html
import threading
import traceback
from typing import Any, Callable, Sequence

import ipywidgets as widgets

TABS = ("Data", "Train", "Tune", "Explain", "Export")
DEFAULT_TAB = "Train"
# Keyword arguments of Dashboard that carry one panel's own constructor options.
OPTION_KEYS = {f"{name.lower()}_options": name for name in TABS}


class PanelUnavailable(RuntimeError):
    """`Dashboard.panel(name)` for a panel that could not be built for this run; the cause is chained."""


class Dashboard:
    """Data | Train | Tune | Explain | Export, sharing one Run. Display it as the last expression of a cell.

    Args:
        run: the Run every tab works on.
        texts: texts offered in the Explain tab's picker.
        study: the Tune tab's TuneStudy (or a TunePanel); None builds a TuneStudy from `run.cfg` and the run's
            dataset when the tab is first opened. No search starts until its Start button is pressed.
        data: what the Data tab inspects: a dataset, or a DataPanel already built. None: the run's own splits,
            loaded as the run loads them (cleaning and sample limits applied).
        data_options / train_options / tune_options / explain_options / export_options: keyword arguments for
            that panel's constructor, e.g. `explain_options={"max_evals": 100}`, `tune_options={"trials": 4}`,
            `export_options={"latency": False}`, `data_options={"page_size": 10}`.

    Example:
        >>> dash = Dashboard(run, tune_options={"trials": 4})    # doctest: +SKIP
        >>> dash.tabs                                             # doctest: +SKIP
        ('Data', 'Train', 'Tune', 'Explain', 'Export')
    """

    tabs = TABS

    def __init__(self, run: Any, *, texts: Sequence[str] = (), study: Any = None, data: Any = None,
                 **panel_options: Any) -> None:
        unknown = sorted(set(panel_options) - set(OPTION_KEYS))
        if unknown:
            raise TypeError(f"Dashboard got unexpected keyword argument(s) {unknown}; panel options go in "
                            f"{', '.join(OPTION_KEYS)} (each a dict of that panel's keyword arguments)")
        self.options: dict[str, dict[str, Any]] = {}
        for key, name in OPTION_KEYS.items():
            value = panel_options.get(key) or {}
            if not isinstance(value, dict):
                raise TypeError(f"{key} must be a dict of {name}Panel keyword arguments, got {type(value).__name__}")
            self.options[name] = dict(value)
        self.run, self.texts, self.study, self.data = run, list(texts), study, data
        self.panels: dict[str, Any] = {}              # tab name -> panel object, once built
        self.errors: dict[str, BaseException] = {}    # tab name -> why its panel could not be built
        self._data_note: str | None = None
        self._lock = threading.RLock()
        self._builders: dict[str, Callable[[], Any]] = {
            "Data": self._build_data, "Train": self._build_train, "Tune": self._build_tune,
            "Explain": self._build_explain, "Export": self._build_export}

        self.pages = {name: widgets.VBox([widgets.HTML(f"<i>Building the {name} panel…</i>")]) for name in TABS}
        for name, page in self.pages.items():
            page.add_class(f"nbtune-dashboard-{name.lower()}")
        self.widget = widgets.Tab(children=[self.pages[n] for n in TABS], titles=TABS)
        self.widget.add_class("nbtune-dashboard")
        self.widget.selected_index = TABS.index(DEFAULT_TAB)
        self._ensure(DEFAULT_TAB)
        self.widget.observe(self._on_select, names="selected_index")

    # ---- the public surface ----
    @property
    def selected(self) -> str | None:
        """The name of the tab shown now."""
        index = self.widget.selected_index
        return None if index is None else TABS[index]

    def select(self, name: str) -> None:
        """Switch to tab `name` (building its panel if needed), as a click on the tab would.

            >>> dash.select("Export")     # doctest: +SKIP
        """
        self.widget.selected_index = TABS.index(self._check_name(name))
        self._ensure(name)  # also when the tab was selected already (the observer only sees changes)

    def panel(self, name: str) -> Any:
        """The panel object of tab `name`, built now if it was not yet (without switching tabs).

            >>> dash.panel("Data").set_query(label="HUM")    # doctest: +SKIP
        """
        name = self._check_name(name)
        self._ensure(name)
        if name in self.errors:
            exc = self.errors[name]
            raise PanelUnavailable(f"the {name} panel could not be built for this run: "
                                   f"{type(exc).__name__}: {exc}") from exc
        return self.panels[name]

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = self.describe()
        return bundle

    def _ipython_display_(self) -> None:
        from IPython.display import display
        display(self._repr_mimebundle_(), raw=True)
        train = self.panels.get("Train")
        if train is not None:  # the curves survive a saved, reopened notebook (TrainPanel.display_snapshot)
            train.display_snapshot()

    def describe(self) -> str:
        """One line of plain text: the run, each tab's state, the tab shown.

            >>> dash.describe()    # doctest: +SKIP
            'nbtune Dashboard · run tiny · Data (not built) | Train (built) | ... · showing Train'
        """
        name = getattr(getattr(self.run, "run_dir", None), "name", None) or getattr(self.run.cfg, "run_name", "")
        states = " | ".join(f"{t} ({self._state(t)})" for t in TABS)
        return f"nbtune Dashboard · run {name} · {states} · showing {self.selected}"

    def __repr__(self) -> str:
        return f"<{self.describe()}>"

    # ---- building ----
    def _state(self, name: str) -> str:
        return "error" if name in self.errors else "built" if name in self.panels else "not built"

    def _check_name(self, name: str) -> str:
        if name in TABS:
            return name
        close = difflib.get_close_matches(str(name).capitalize(), TABS, n=1)
        raise ValueError(f"no tab named {name!r}; the tabs are {', '.join(TABS)}"
                         + (f" (did you mean {close[0]!r}?)" if close else ""))

    def _on_select(self, change: dict) -> None:
        if change["new"] is None:
            return
        try:
            self._ensure(TABS[change["new"]])
        except Exception as exc:  # noqa: BLE001 - _ensure shows build errors itself; this is a last resort
            self._show_error(TABS[change["new"]], exc, traceback.format_exc())

    def _ensure(self, name: str) -> None:
        """Build tab `name`'s panel once; a failure is kept and shown in the tab, never raised."""
        with self._lock:
            if name in self.panels or name in self.errors:
                return
            try:
                panel = self._builders[name]()
            except Exception as exc:  # noqa: BLE001 - shown inside the tab, not thrown out of the tab switch
                self._show_error(name, exc, traceback.format_exc())
                return
            self.panels[name] = panel
            self.pages[name].children = [*self._notes(name), panel_widget(panel)]

    def _show_error(self, name: str, exc: BaseException, traceback_text: str) -> None:
        self.errors[name] = exc
        box = widgets.HTML(error_html(name, exc, traceback_text))
        box.add_class("nbtune-dashboard-error")
        self.pages[name].children = [box]

    def _notes(self, name: str) -> list[widgets.Widget]:
        note = self._data_note if name == "Data" else None
        if not note:
            return []
        box = widgets.HTML(f"<small>{html.escape(note)}</small>")
        box.add_class("nbtune-dashboard-note")
        return [box]

    def _build_data(self) -> Any:
        from nbtune.ui.panels.data import DataPanel
        if isinstance(self.data, DataPanel):
            return self.data
        cfg, options = self.run.cfg, dict(self.options["Data"])
        dataset = self.data
        if dataset is None:
            dataset, self._data_note = run_dataset(self.run)
        options.setdefault("model", self.run.tokenizer)
        options.setdefault("max_length", cfg.data.max_length)
        options.setdefault("text", cfg.data.text_column)
        options.setdefault("label", cfg.data.label_column)
        return DataPanel(dataset, **options)

    def _build_train(self) -> Any:
        from nbtune.ui.panels.train import TrainPanel
        return TrainPanel(self.run, **self.options["Train"])

    def _build_tune(self) -> Any:
        from nbtune.ui.panels.tune import TunePanel
        if isinstance(self.study, TunePanel):
            return self.study
        if self.study is not None:
            return TunePanel(self.study, **self.options["Tune"])
        # The run's own config and rows: trials train what this run trains, with sampled hyperparameters.
        return TunePanel(self.run.cfg, dataset=getattr(self.run, "source_dataset", None), **self.options["Tune"])

    def _build_explain(self) -> Any:
        from nbtune.ui.panels.explain import ExplainPanel
        return ExplainPanel(self.run, self.texts, **self.options["Explain"])

    def _build_export(self) -> Any:
        from nbtune.ui.panels.export import ExportPanel
        return ExportPanel(self.run, **self.options["Export"])


def panel_widget(panel: Any) -> widgets.Widget:
    """The widget a panel draws itself with: every nbtune panel keeps it in `.widget`; a widget is itself."""
    if isinstance(panel, widgets.Widget):
        return panel
    widget = getattr(panel, "widget", None)
    if not isinstance(widget, widgets.Widget):
        raise TypeError(f"{type(panel).__name__} has no .widget to place in a tab (expected an nbtune panel)")
    return widget


def run_dataset(run: Any) -> tuple[Any, str | None]:
    """The run's splits as the run loaded them (cleaning, max_train_samples and max_eval_samples applied), and a
    note for the Data tab. A 'test' split the engine copied from 'validation' (the data had none) is dropped,
    so the panel does not report the copy as leakage between splits.

        >>> ds, note = run_dataset(run); list(ds)      # doctest: +SKIP
        ['train', 'validation']
    """
    dataset = getattr(run, "loaded_dataset", None)  # kept by a Run: no second read of the files
    if dataset is None:  # a run-like object without it (a config and rows): load the splits as a Run does
        from nbtune.engine.build import load_data
        dataset, _ = load_data(run.cfg, getattr(run, "source_dataset", None))
    note = None
    if "test" in dataset and "validation" in dataset and _same_rows(dataset["test"], dataset["validation"]):
        dataset = type(dataset)({k: v for k, v in dataset.items() if k != "test"})
        note = ("The data has no test split of its own: the run evaluates its 'test' on the validation rows, "
                "so they are shown once, as 'validation'.")
    return dataset, note


def _same_rows(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if len(a) != len(b) or a.column_names != b.column_names:
        return False
    return a.to_dict() == b.to_dict()


def error_html(name: str, exc: BaseException, traceback_text: str | None = None) -> str:
    """The message a tab shows when its panel could not be built (every piece escaped).

        >>> error_html("Tune", ImportError("<optuna> missing"))[:60]
        '<div style="color:#b00020"><b>The Tune panel is not availabl'
    """
    details = (f"<details><summary>traceback</summary><pre>{html.escape(traceback_text)}</pre></details>"
               if traceback_text else "")
    return (f'<div style="color:#b00020"><b>The {html.escape(name)} panel is not available for this run.</b> '
            f"{html.escape(f'{type(exc).__name__}: {exc}')}{details}</div>")
