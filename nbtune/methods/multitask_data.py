"""Several classification datasets as one, for the `multitask` method: label names become "task:label";
and the accuracy of each task of a run trained on such data.

The engine trains one label space; the multitask method splits it back into one head per task by the prefix
before the first colon. Splits are concatenated split by split (train with train, test with test), so no row
moves between splits, and each combined split is shuffled with a fixed seed.

    >>> import datasets
    >>> feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["a", "b"])})
    >>> one = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["x", "y"], "label": [0, 1]},
    ...                                                              features=feats)})
    >>> two = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["z"], "label": ["pos"]})})
    >>> both = combine_tasks({"topic": one, "mood": two})
    >>> both["train"].features["label"].names
    ['topic:a', 'topic:b', 'mood:pos']
    >>> sorted(both["train"]["task"])
    ['mood', 'topic', 'topic']
"""
from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from nbtune.engine.tasks import DataError, label_names_of

TASK_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")  # becomes a module name (no dots) and a label prefix (no colon)


def combine_tasks(tasks: dict[str, Any], text_column: str = "text", label_column: str = "label", seed: int = 0,
                  max_train_rows_per_task: int | None = None):
    """One DatasetDict (columns text, label, task) from {task name: DatasetDict}.

    Args:
        tasks: two or more datasets (e.g. ``nbtune.assets.load_dataset("intents-en")``), each with the same splits.
        text_column / label_column: the columns to read in every dataset (written as "text" and "label").
        seed: the fixed shuffle of each combined split.
        max_train_rows_per_task: keep at most this many train rows of each task (the first ones), so a large
            dataset does not drown a small one; evaluation splits are kept whole.
    """
    import datasets
    if not isinstance(tasks, dict) or len(tasks) < 2:
        raise DataError(f"combine_tasks needs two or more tasks as {{name: DatasetDict}}, got {len(tasks or {})}")
    bad = [t for t in tasks if not isinstance(t, str) or not TASK_NAME.match(t)]
    if bad:
        raise DataError(f"combine_tasks: task names must be letters, digits, '_' or '-' (no '.' or ':'), got {bad}")
    splits = {name: list(ds) for name, ds in tasks.items()}
    first = next(iter(splits.values()))
    if any(set(s) != set(first) for s in splits.values()) or "train" not in first:
        raise DataError(f"combine_tasks: every task needs the same splits, including 'train'; found {splits}")
    names, columns = [], {split: {"text": [], "label": [], "task": []} for split in first}
    for task, ds in tasks.items():
        _check_columns(ds["train"], (text_column, label_column), f"task '{task}', split 'train'")
        local = label_names_of(ds["train"], label_column)
        names += [f"{task}:{n}" for n in local]
        class_ids = bool(getattr(ds["train"].features[label_column], "names", None))
        for split in first:
            part = ds[split]
            if split == "train" and max_train_rows_per_task is not None:
                part = part.select(range(min(max_train_rows_per_task, len(part))))
            _check_columns(part, (text_column, label_column), f"task '{task}', split '{split}'")
            labels = [local[int(v)] if class_ids else str(v) for v in part[label_column]]
            unknown = sorted(set(labels) - set(local))
            if unknown:
                raise DataError(f"task '{task}', split '{split}': labels {unknown[:5]} do not occur in its train split")
            columns[split]["text"] += list(part[text_column])
            columns[split]["label"] += [f"{task}:{lab}" for lab in labels]
            columns[split]["task"] += [task] * len(labels)
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names),
                                  "task": datasets.Value("string")})
    out = {}
    for i, (split, cols) in enumerate(columns.items()):
        order = np.random.default_rng([seed, i]).permutation(len(cols["text"]))
        out[split] = datasets.Dataset.from_dict({k: [v[j] for j in order] for k, v in cols.items()},
                                                features=features)
    return datasets.DatasetDict(out)


def _check_columns(part, needed: tuple[str, str], where: str) -> None:
    for column, option in zip(needed, ("text_column", "label_column")):
        if column not in part.column_names:
            close = difflib.get_close_matches(column, part.column_names, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise DataError(f"combine_tasks, {where}: no column {column!r} (columns: {part.column_names}).{hint} "
                            f"Pass {option}= with the right name")


def write_jsonl(dataset, path: str | Path, splits: tuple[str, ...] = ("train",)) -> Path:
    """The named splits of a combined dataset as one JSONL file ({"text", "label"} per line, label names as
    text), so a config can point ``data.dataset`` at it (the engine then cuts its own validation split)."""
    path = Path(path)
    names = dataset[splits[0]].features["label"].names
    with path.open("w", encoding="utf-8") as f:
        for split in splits:
            for row in dataset[split]:
                f.write(json.dumps({"text": row["text"], "label": names[row["label"]]}) + "\n")
    return path


def task_accuracy(run: Any, split: str = "test") -> dict[str, float]:
    """Accuracy on each task's own rows of a split, for a run whose labels are "task:label" (the engine's
    accuracy mixes the tasks by their row counts).

    >>> task_accuracy(run, "test")          # doctest: +SKIP
    {'intent': 0.93, 'sentiment': 0.71}
    """
    import torch
    from nbtune.engine.loop import autocast
    rows, names = run.data.rows[split], run.data.label_names
    hits: dict[str, list[bool]] = {}
    was_training = run.model.training
    run.model.eval()
    size = run.cfg.train.batch_size * 2
    with torch.no_grad():
        for start in range(0, len(rows), size):
            batch = run.collate(list(range(start, min(start + size, len(rows)))), rows)
            with autocast(run):
                out = run.model(**{k: v.to(run.device) for k, v in batch.items()})
            for gold, pred in zip(batch["labels"].tolist(), out.logits.argmax(-1).tolist()):
                hits.setdefault(names[gold].split(":", 1)[0], []).append(gold == pred)
    run.model.train(was_training)
    return {task: sum(h) / len(h) for task, h in hits.items()}
