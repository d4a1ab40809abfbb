"""The review report: every explanation of a few probe texts in ONE standalone HTML file, for reviewers without a
kernel. For each probe: each method's word heatmap and cost, the methods' agreement, each method's faithfulness,
and the attention view ("where the model looks"); explanation drift across the run's checkpoints when it has two
or more; the model, the data and how the report was produced.

The file has no JavaScript and loads nothing (no remote script, stylesheet or font; a Content-Security-Policy
forbids it besides), every user text is escaped, and it is written atomically (a temp file renamed over the
target), so a crash never leaves half a report.

Example:
    >>> from nbtune.explain.report import Budget, build_report
    >>> report = build_report(run, ["my card was declined twice"], budget=Budget(shap_max_evals=200))  # doctest: +SKIP
    >>> report.write_report("review.html")                                                           # doctest: +SKIP
    PosixPath('review.html')
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib
import functools
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from nbtune.explain.attention import AttentionInfo
from nbtune.explain.compare import ComparisonInfo, compare
from nbtune.explain.drift import DriftInfo, explanation_drift
from nbtune.explain.html import (agreement_html, attention_html, drift_html, esc, faithfulness_html,
                                 side_by_side_html)
from nbtune.explain.model import ExplainModel
from nbtune.explain.shap_text import resolve_target
from nbtune.explain.types import Attribution, ExplainError, Target
from nbtune.fileio import atomic_write_text

REPORT_FILENAME = "explain-report.html"
METHOD_NAMES = ("shap", "lime", "ig", "grad_x_input", "attention")
DEFAULT_METHODS = ("shap", "lime", "ig", "attention")
# Defence in depth: even a string that escaped escaping could not run a script or fetch anything.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
_CSS = """body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1200px;
padding:0 1rem;color:#222}h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
h3{font-size:1rem;margin:1rem 0 .3rem}blockquote{margin:.4rem 0;padding:.4rem .8rem;background:#f7f7f7;
border-left:3px solid #bbb;white-space:pre-wrap}table.kv td,table.kv th{border:1px solid #ddd;padding:2px 8px;
text-align:left;vertical-align:top}table.kv{border-collapse:collapse;font-size:13px}.err{color:#b00020}"""


@dataclass
class Budget:
    """How much each method may spend per probe. drift_method: the method explained at every checkpoint
    (default: shap when chosen -- additive, so its magnitudes compare across checkpoints --, else ig, else the
    first chosen method that is not attention)."""
    shap_max_evals: int = 300
    lime_samples: int = 1000
    ig_steps: int = 50
    faithfulness_steps: int | None = None      # curve points (None: every word count)
    random_seeds: int = 5                      # random word orders faithfulness is compared with
    top_k: int = 3                             # top-k overlap in the agreement table
    drift_method: str | None = None

    def options(self, method: str) -> dict[str, Any]:
        return {"shap": {"max_evals": self.shap_max_evals}, "lime": {"num_samples": self.lime_samples},
                "ig": {"n_steps": self.ig_steps}}.get(method, {})

    def describe(self, method: str) -> str:
        return {"shap": f"Partition SHAP, max_evals={self.shap_max_evals}",
                "lime": f"LIME, num_samples={self.lime_samples}",
                "ig": f"integrated gradients, n_steps={self.ig_steps}",
                "grad_x_input": "gradient x input (one backward pass)",
                "attention": "attention rollout (one forward pass)"}[method]


def check_methods(methods: Sequence[str]) -> list[str]:
    """The method names, or ExplainError naming the unknown one with the closest known name.

        >>> check_methods(["shap", " ig", "shap"])
        ['shap', 'ig']
    """
    methods = [str(m).strip() for m in methods if str(m).strip()]
    if not methods:
        raise ExplainError(f"no method chosen; choose from {', '.join(METHOD_NAMES)}")
    for m in methods:
        if m not in METHOD_NAMES:
            close = difflib.get_close_matches(m, METHOD_NAMES, n=1, cutoff=0.4)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ExplainError(f"unknown method {m!r}{hint} (methods: {', '.join(METHOD_NAMES)})")
    return list(dict.fromkeys(methods))


def _explainer(method: str) -> Callable[..., Attribution]:
    from nbtune.explain import attention, gradients, lime_text, shap_text
    return {"shap": shap_text.explain_shap, "lime": lime_text.explain_lime, "ig": gradients.explain_ig,
            "grad_x_input": gradients.explain_grad_x_input, "attention": attention.explain_attention}[method]


@dataclass
class ProbeResult:
    """Everything computed for one probe text: one Attribution per method that ran (same target), their
    comparison (agreement + faithfulness per method), the attention maps, and the errors of methods that
    could not run (method -> message)."""
    text: str
    target: Target
    attributions: list[Attribution]
    comparison: ComparisonInfo | None
    attention: AttentionInfo | None
    reason: str = ""
    errors: dict[str, str] = field(default_factory=dict)

    def attribution(self, method: str) -> Attribution:
        for a in self.attributions:
            if a.method == method:
                return a
        raise ExplainError(f"no {method!r} attribution for this probe (ran: "
                           f"{', '.join(a.method for a in self.attributions) or 'none'}; errors: {self.errors})")


@dataclass
class ReviewReport:
    """The computed review; `html()` renders it, `write_report(path)` writes the standalone file."""
    model: dict[str, Any]
    data: dict[str, Any]
    probes: list[ProbeResult]
    methods: list[str]
    budget: Budget
    produced: dict[str, Any]
    drift: DriftInfo | None = None
    notes: list[str] = field(default_factory=list)

    def html(self) -> str:
        return "".join(self._parts())

    def write_report(self, path: str | Path) -> Path:
        """Write the report to `path` atomically (temp file in the same folder, then os.replace): a crash
        while rendering leaves the previous file as it was and no temp file behind.

            >>> report.write_report("review.html")    # doctest: +SKIP
            PosixPath('review.html')
        """
        path = Path(path)
        if path.is_dir():
            path = path / REPORT_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, self._parts())   # streamed: a big report is never held twice
        return path

    # ---- rendering ----
    def _parts(self) -> Iterator[str]:
        title = f"Explanation review: {self.model.get('name') or 'model'}"
        yield (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
               f'<meta http-equiv="Content-Security-Policy" content="{esc(_CSP)}">'
               f'<meta name="viewport" content="width=device-width, initial-scale=1">'
               f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>\n<h1>{esc(title)}</h1>\n")
        yield "<h2>Model</h2>" + _kv_table(self.model) + "<h2>Data</h2>" + _kv_table(self.data)
        yield "<h2>Probes</h2><ol>" + "".join(
            f'<li><a href="#probe-{i + 1}">{esc(p.text)}</a> <span class="reason">{esc(p.reason)}</span> — '
            f"explaining {esc(p.target.describe())}</li>" for i, p in enumerate(self.probes)) + "</ol>"
        if self.notes:
            yield "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in self.notes) + "</ul>"
        for i, probe in enumerate(self.probes):
            yield self._probe_section(i + 1, probe)
        if self.drift is not None:
            yield '<h2 id="drift">Explanation drift across checkpoints</h2>' + drift_html(self.drift)
        yield "<h2>How this report was produced</h2>" + _kv_table(self.produced) + "\n</body></html>\n"

    def _probe_section(self, number: int, probe: ProbeResult) -> str:
        out = [f'<section id="probe-{number}"><h2>Probe {number}</h2><blockquote>{esc(probe.text)}</blockquote>'
               f"<div>explaining <b>{esc(probe.target.describe())}</b>"
               + (f" — {esc(probe.reason)}" if probe.reason else "") + "</div>"]
        for method, message in probe.errors.items():
            out.append(f'<div class="err">{esc(method)} could not run: {esc(message)}</div>')
        if probe.attributions:
            out.append("<h3>Word attributions</h3>" + side_by_side_html(probe.attributions))
        if probe.comparison is not None and probe.comparison.agreement is not None:
            out.append('<div style="margin-top:1rem">' + agreement_html(probe.comparison.agreement) + "</div>")
        if probe.comparison is not None:
            out.append('<div style="margin-top:1rem">' + faithfulness_html(probe.comparison.faithfulness) + "</div>")
        if probe.attention is not None:
            out.append('<div style="margin-top:1rem">' + attention_html(probe.attention) + "</div>")
        return "".join(out) + "</section>\n"


def _kv_table(rows: Mapping[str, Any]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, (dict, list, tuple)):
            return json.dumps(v, default=str)
        return str(v)
    return '<table class="kv">' + "".join(f"<tr><th>{esc(k)}</th><td>{esc(value(v))}</td></tr>"
                                          for k, v in rows.items() if v is not None and v != "") + "</table>"


def build_report(em: Any, probes: Sequence[Any], *, methods: Sequence[str] = DEFAULT_METHODS,
                 targets: Any = None, run_dir: str | Path | None = None, budget: Budget | Mapping | None = None,
                 model_name: str | None = None, drift: bool = True, word: int | None = None,
                 continuation: str | None = None,
                 progress: Callable[[str], None] | None = None) -> ReviewReport:
    """Explain each probe with each method, compare them, and collect what the report shows.

    em: an ExplainModel, or a Run (explained as it is now; its run directory gives the data and checkpoints).
    probes: texts, or examples from nbtune.explain.examples.pick_examples (their reason is shown).
    targets: None (each probe's predicted class), one label/index for every probe, or a list with one per probe.
    run_dir: the run directory, for the data summary and, with two or more checkpoints, explanation drift.
    budget: a Budget (or a dict of its fields). word / continuation: for token-classification / causal-lm.
    progress: called with a short message before each step (the CLI prints them).

        >>> r = build_report(em, ["the lamp zebra is on"], methods=("shap", "ig"))   # doctest: +SKIP
        >>> r.probes[0].attribution("shap").top(1)                                  # doctest: +SKIP
    """
    started, say = time.perf_counter(), progress or (lambda message: None)
    methods = check_methods(methods)
    budget = budget if isinstance(budget, Budget) else Budget(**dict(budget or {}))
    run = em if hasattr(em, "cfg") and hasattr(em, "data") else None
    if run is not None:
        em, run_dir = ExplainModel.from_run(run), run_dir or getattr(run, "run_dir", None)
    texts, reasons = _probe_texts(probes)
    per_probe = list(targets) if isinstance(targets, (list, tuple)) else [targets] * len(texts)
    if len(per_probe) != len(texts):
        raise ExplainError(f"targets: {len(per_probe)} targets for {len(texts)} probes; pass one per probe or one")
    results = []
    for i, (text, reason, target) in enumerate(zip(texts, reasons, per_probe)):
        resolved = resolve_target(em, text, target, word, continuation)    # unknown labels: lists the model's
        results.append(_explain_probe(em, text, resolved, reason, methods, budget,
                                      lambda m, i=i: say(f"probe {i + 1}/{len(texts)}: {m}")))
    notes, drift_info = [], None
    if run_dir is not None and drift:
        drift_info, note = _drift(run_dir, texts, [r.target for r in results], methods, budget, say)
        notes += [note] if note else []
    info = run_info(run_dir) if run_dir is not None else {}
    model = _model_info(em, model_name or info.pop("model", None))
    data = dict(info)
    if run is not None:
        data.update({f"{split} rows": len(rows) for split, rows in run.data.rows.items()})
    produced = _produced(methods, budget, time.perf_counter() - started, em)
    return ReviewReport(model, data, results, methods, budget, produced, drift_info, notes)


def _probe_texts(probes: Sequence[Any]) -> tuple[list[str], list[str]]:
    if isinstance(probes, str):
        probes = [probes]
    texts, reasons = [], []
    for p in probes:
        text = p if isinstance(p, str) else getattr(p, "text", None)
        if not isinstance(text, str) or not text.strip():
            raise ExplainError(f"probe {len(texts)}: {p!r} is not a non-empty text")
        texts.append(text)
        reasons.append("" if isinstance(p, str) else _reason(p))
    if not texts:
        raise ExplainError("no probes: pass at least one text to explain")
    return texts, reasons


def _reason(example: Any) -> str:
    """Why an auto-picked example is in the report (nbtune.explain.examples.Example)."""
    kind, predicted = getattr(example, "kind", ""), getattr(example, "predicted", "")
    conf, gold = getattr(example, "confidence", None), getattr(example, "label", None)
    if kind == "wrong":
        return f"wrong prediction: predicted {predicted} ({conf:.2f}), labelled {gold}"
    if kind == "uncertain":
        return f"uncertain: predicted {predicted} with {conf:.2f} (margin {getattr(example, 'margin', 0):.2f})"
    return str(kind)


def _explain_probe(em: ExplainModel, text: str, target: Target, reason: str, methods: list[str], budget: Budget,
                   say: Callable[[str], None]) -> ProbeResult:
    attributions, errors, attention = [], {}, None
    for method in methods:
        say(method)
        try:
            a = _explainer(method)(em, text, target, **budget.options(method))
        except (ExplainError, ImportError) as exc:   # one method's failure is reported, the others still shown
            errors[method] = str(exc)
            continue
        attributions.append(a)
        if method == "attention":
            attention = a.extras.get("info")
    comparison = None
    if attributions:
        say("agreement and faithfulness")
        comparison = compare(em, attributions, k=budget.top_k, steps=budget.faithfulness_steps,
                             random_seeds=budget.random_seeds)
    return ProbeResult(text, target, attributions, comparison, attention, reason, errors)


def _drift(run_dir: str | Path, texts: list[str], targets: list[Target], methods: list[str], budget: Budget,
           say: Callable[[str], None]) -> tuple[DriftInfo | None, str | None]:
    """Explanation drift with one method, or (None, why not) when the run has fewer than two checkpoints."""
    method = budget.drift_method or next((m for m in ("shap", "ig") if m in methods), None) or next(
        (m for m in methods if m != "attention"), methods[0])
    check_methods([method])
    say(f"explanation drift ({method}) across checkpoints")
    fn = functools.partial(_explainer(method), **budget.options(method))
    try:
        return explanation_drift(run_dir, texts, fn, target=targets), None
    except ExplainError as exc:
        return None, f"no explanation drift: {exc}"


def run_info(run_dir: str | Path) -> dict[str, Any]:
    """What a run directory says about its model and data: names, data settings, samples and tokens seen by the
    newest checkpoint, and the final evaluation results (empty values are left out).

        >>> run_info("runs/minilm-intents-en-20260101")["validation results"]      # doctest: +SKIP
        {'loss': 0.31, 'accuracy': 0.93, 'macro_f1': 0.91}
    """
    from nbtune.engine import checkpoint as ckpt
    from nbtune.history import final_evals, read_history
    run_dir = Path(run_dir)
    out: dict[str, Any] = {"run directory": str(run_dir)}
    try:
        history = read_history(run_dir)
    except (FileNotFoundError, ValueError):
        history = None
    start = (history.start or {}) if history is not None else {}
    config = start.get("config") or {}
    out["model"] = start.get("model")
    out["dataset"] = start.get("dataset")
    for key in ("text_column", "label_column", "max_length", "max_train_samples", "max_eval_samples"):
        out[f"data.{key}"] = (config.get("data") or {}).get(key)
    latest = ckpt.latest(run_dir)
    if latest is not None:
        state = json.loads((latest / ckpt.TRAINER_STATE).read_text(encoding="utf-8")).get("state", {})
        out.update({"checkpoint": latest.name, "samples seen": state.get("samples_seen"),
                    "tokens seen": state.get("tokens_seen")})
    if history is not None:
        for split, metrics in final_evals(history).items():
            out[f"{split} results"] = {k: round(v, 4) for k, v in metrics.items()}
    return {k: v for k, v in out.items() if v is not None}


def _model_info(em: ExplainModel, name: str | None) -> dict[str, Any]:
    config = getattr(em.model, "config", None)
    name = name or getattr(config, "_name_or_path", None) or type(em.model).__name__
    return {"name": name, "task": em.task, "labels": list(em.label_names) or None,
            "architecture": type(em.model).__name__,
            "parameters": sum(p.numel() for p in em.model.parameters()), "max_length (tokens)": em.max_length,
            "mask word": em.mask_word}


def _produced(methods: list[str], budget: Budget, seconds: float, em: ExplainModel) -> dict[str, Any]:
    from importlib import metadata
    from nbtune import __version__
    versions = {}
    for package in ("torch", "transformers", "shap", "lime", "captum"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    out = {"date (UTC)": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
           "nbtune version": __version__, "libraries": versions, "python": platform.python_version(),
           "device": str(em.device), "seconds to compute": round(seconds, 2)}
    out.update({f"method {m}": budget.describe(m) for m in methods})
    out["faithfulness"] = (f"deletion/insertion with the mask word, {budget.random_seeds} random orders, "
                           f"curve points: {budget.faithfulness_steps or 'every word count'}")
    return out


def budget_from_options(**options: Any) -> Budget:
    """A Budget from keyword options, ignoring None (the CLI passes every flag).

        >>> budget_from_options(shap_max_evals=100, ig_steps=None).ig_steps
        50
    """
    return dataclasses.replace(Budget(), **{k: v for k, v in options.items() if v is not None})
