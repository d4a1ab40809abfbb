"""The model card (README.md) of a merged export: what the model is, how it was trained (the full run config),
on what data, how well it scored, which live edits steered it, and what it is not for.

    >>> print(model_card(run))                # doctest: +SKIP
    ---
    library_name: transformers
    ...
    # tiny-bert fine-tuned for classification on trec

Text that comes from users (labels, dataset names, edit values) is escaped, so a label such as `a|b` stays one
table cell and backticks cannot open a code span.
"""
from __future__ import annotations

import collections
import json
import re
from typing import Any

import yaml

TOP_LABELS = 20
PIPELINE_TAGS = {"classification": "text-classification", "token-classification": "token-classification",
                 "causal-lm": "text-generation"}
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|])")
IGNORE = -100  # label id of positions the loss skips (padding, later sub-tokens)


def escape(text: Any) -> str:
    """User text made safe for one Markdown table cell or list item: one line, specials backslash-escaped,
    HTML start characters as entities (a label like `<num>` would otherwise vanish as a tag).

        >>> escape("yes|no `x` <num>")
        'yes\\\\|no \\\\`x\\\\` &lt;num&gt;'
    """
    text = " ".join(str(text).split())  # newlines would end the table row
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def _fence(text: str) -> str:
    """A code fence longer than any backtick run inside `text`, so the block cannot be closed early."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows]


def _value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value).lower()
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _step(spec: Any) -> str:
    """A cleaning step as the config writes it: "strip_html", or {"normalize": "nfkc"} as JSON."""
    if hasattr(spec, "to_spec"):
        spec = spec.to_spec()
    return spec if isinstance(spec, str) else json.dumps(spec, ensure_ascii=False)


def _front_matter(run: Any) -> list[str]:
    """Hugging Face hub metadata (library, pipeline tag); safe_dump quotes whatever needs quoting."""
    meta = {"library_name": "transformers", "pipeline_tag": PIPELINE_TAGS.get(run.cfg.task, run.cfg.task),
            "tags": ["nbtune", run.cfg.task]}
    return ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).strip(), "---", ""]


def _dataset(run: Any) -> str:
    """The config's dataset name, unless the run was handed a dataset object (then the config's is a default)."""
    where, name = getattr(run, "data_where", None), run.cfg.data.dataset
    return name if where is None or name in where else "a dataset passed to Run"


def _summary(run: Any) -> list[str]:
    cfg, labels = run.cfg, list(run.data.label_names)
    lines = [f"# {escape(cfg.model.name)} fine-tuned for {escape(cfg.task)} on {escape(_dataset(run))}", "",
             f"- **Base model:** {escape(cfg.model.name)}", f"- **Task:** {escape(cfg.task)}"]
    if labels:
        shown = ", ".join(escape(name) for name in labels[:TOP_LABELS])
        more = f", …and {len(labels) - TOP_LABELS} more" if len(labels) > TOP_LABELS else ""
        lines.append(f"- **Labels ({len(labels)}):** {shown}{more}")
    lines.append(f"- **Trained for:** {run.state.step} optimizer steps (status: {escape(run.state.status)})")
    return lines + [""]


def _config(run: Any) -> list[str]:
    text = run.cfg.to_yaml().rstrip("\n")
    fence = _fence(text)
    return ["## Training configuration", "", "Rebuild the run with `nbtune train config.yaml` on this YAML:", "",
            f"{fence}yaml", text, fence, ""]


def _label_counts(run: Any) -> collections.Counter:
    """Train-split rows per label (tokens per label for tagging), zeros included (a label the model never saw
    is worth a line); empty for a causal LM."""
    names = list(run.data.label_names)
    counts: collections.Counter = collections.Counter({name: 0 for name in names})
    for row in run.data.rows.get("train", []):
        ids = row.get("labels")
        for i in (ids if isinstance(ids, list) else [ids]):
            if isinstance(i, int) and 0 <= i < len(names):
                counts[names[i]] += 1
    return counts


def _data(run: Any) -> list[str]:
    rows = [[split, len(items)] for split, items in run.data.rows.items()]
    lines = ["## Data", "", f"Dataset: {escape(_dataset(run))} (text column "
             f"{escape(run.cfg.data.text_column)}, up to {run.cfg.data.max_length} tokens). Cleaning steps: "
             + (", ".join(escape(_step(s)) for s in run.cfg.data.cleaning)
                or "none") + ".", "", *_table(["split", "rows"], rows), ""]
    counts = _label_counts(run)
    if counts:
        unit = "tokens" if run.cfg.task == "token-classification" else "rows"
        top = counts.most_common(TOP_LABELS)
        table = [[name, n] for name, n in top]
        rest = len(counts) - len(top)
        if rest > 0:
            table.append([f"…and {rest} more", sum(counts.values()) - sum(n for _, n in top)])
        lines += [f"Labels in the train split ({unit}):", "", *_table(["label", unit], table), ""]
    return lines


def _metrics(run: Any) -> list[str]:
    splits = [s for s in ("validation", "test") if isinstance(run.results.get(s), dict)]
    names = list(dict.fromkeys(k for s in splits for k, v in run.results[s].items()
                               if isinstance(v, (int, float)) and not isinstance(v, bool)))
    if not names:
        return ["## Metrics", "", "No evaluation results: the run has not finished training.", ""]

    def cell(split: str, name: str) -> str:
        v = run.results[split].get(name)
        return f"{v:.4f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "—"
    rows = [[name, *(cell(s, name) for s in splits)] for name in names]
    return ["## Metrics", "", *_table(["metric", *splits], rows), ""]


def _edits(run: Any) -> list[str]:
    edits = list(getattr(run.control, "edits", []))
    if not edits:
        return ["## Interventions", "", "No live edits were made during training.", ""]
    rows = []
    for e in edits:
        name = e.get("name", "?") + (f" {e['target']}" if e.get("target") else "")
        rows.append([e.get("step", "?"), name, _value(e.get("old")), _value(e.get("new"))])
    return ["## Interventions", "", "Changes made while the run trained (live edits and scheduled ones):", "",
            *_table(["step", "name", "old", "new"], rows), ""]


def _methods(run: Any) -> list[str]:
    lines = ["## Methods", ""]
    for spec in run.cfg.methods or []:
        spec = dict(spec) if isinstance(spec, dict) else {"name": getattr(spec, "name", str(spec))}
        name = spec.pop("name", "?")
        options = ", ".join(f"{escape(k)}={escape(_value(v))}" for k, v in spec.items())
        lines.append(f"- {escape(name)}" + (f" ({options})" if options else ""))
    if len(lines) == 2:
        lines.append("- full fine-tuning (no methods)")
    merged = any(isinstance(s, dict) and s.get("name") == "lora" for s in run.cfg.methods or [])
    if merged:
        lines += ["", "The LoRA adapters are merged into the weights: this is a plain transformers model."]
    return lines + [""]


def _use(run: Any) -> list[str]:
    cleaning = "the cleaning steps in `nbtune.json` (`nbtune.export.merge.preprocess`), then " \
        if run.cfg.data.cleaning else ""
    return ["## Intended use and limitations", "",
            f"Apply {cleaning}the saved tokenizer with truncation at {run.cfg.data.max_length} tokens. "
            "The model reflects its training data only: check it on data from your own setting before relying "
            "on it, expect errors on inputs unlike that data, and keep a person in the loop for decisions that "
            "matter. The metrics above come from small held-out splits and are estimates.", ""]


def model_card(run: Any) -> str:
    """The Markdown model card of a run (README.md of a merged export).

        >>> card = model_card(run)                                 # doctest: +SKIP
        >>> "## Training configuration" in card and "```yaml" in card   # doctest: +SKIP
        True
    """
    parts = [_front_matter(run), _summary(run), _config(run), _data(run), _metrics(run), _edits(run),
             _methods(run), _use(run)]
    return "\n".join(line for part in parts for line in part).rstrip("\n") + "\n"
