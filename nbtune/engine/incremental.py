"""Continue a finished or stopped run on newly labelled rows: the fine-tuning guide's online incremental loop.

Labels fixed in the annotation panel (or any new labelled rows) are tokenised with the run's tokenizer and
mapped to its label set; the run then trains on them, mixed with a replay sample of its original training
rows (so the model does not forget them), under a fresh LR schedule for the extra steps. The change is logged
as a live edit (name ``data``), so it is drawn as a marker on the loss chart and listed in the edit log.

    >>> run.continue_with([("win a free phone now", "spam"), ("see you at 6", "ham")], steps=20)  # doctest: +SKIP
    >>> run.start(background=True)                                                               # doctest: +SKIP
"""
from __future__ import annotations

import math
import random
from typing import Any, Iterable

import torch

from nbtune.engine import build, tasks


def _pairs(items: Any, text_col: str, label_col: str) -> tuple[list[str], list[str]]:
    """(texts, label names) from pairs, a {text: label} dict, a datasets.Dataset or a DatasetDict's train split."""
    if isinstance(items, dict) and "train" in items and hasattr(items["train"], "column_names"):
        items = items["train"]
    if hasattr(items, "column_names"):  # a datasets.Dataset
        tasks.check_columns(items, [text_col, label_col], "the new rows")
        names = getattr(items.features[label_col], "names", None)
        labels = [names[int(v)] if names else str(v) for v in items[label_col]]
        return list(items[text_col]), labels
    pairs: Iterable = items.items() if isinstance(items, dict) else items
    texts, labels = [], []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], str)):
            raise ValueError(f"new row {i}: expected a (text, label) pair, got {pair!r}")
        texts.append(pair[0])
        labels.append(str(pair[1]))
    return texts, labels


def continue_with(run: Any, items: Any, *, steps: int | None = None, epochs: float = 1.0, lr: float | None = None,
                  replay: float = 1.0, seed: int = 0) -> dict:
    """Prepare `run` to train on `items` (plus ``replay`` x as many of its old training rows) for `steps`
    optimizer steps (default: `epochs` passes over that mix), with a fresh warmup + decay from `lr` (default:
    the config's learning rate; parameter-group ratios are kept). Call ``run.start()`` afterwards.

    Returns the logged edit record. Checkpoints written later belong to the new data: resuming them needs the
    same new rows (the dataset fingerprint check will say so).
    """
    if run.is_running:
        raise RuntimeError("the run is training: stop it (or wait for it) before continuing on new rows")
    cfg = run.cfg
    if cfg.task != "classification":
        raise ValueError(f"continue_with supports task 'classification'; this run is {cfg.task!r}")
    texts, labels = _pairs(items, cfg.data.text_column, cfg.data.label_column)
    if not texts:
        raise ValueError("no new rows to continue on")
    if cfg.data.cleaning:
        from nbtune.data.clean import apply_steps
        texts = apply_steps(texts, cfg.data.cleaning)
    ids = tasks.label_ids(labels, run.data.label_names, False, "the new rows")
    enc = run.tokenizer(texts, truncation=True, max_length=cfg.data.max_length)["input_ids"]
    new_rows = [{"input_ids": e, "labels": y} for e, y in zip(enc, ids)]
    old_rows = run.data.rows["train"]
    n_replay = min(len(old_rows), int(round(replay * len(new_rows))))
    mixed = new_rows + random.Random(seed).sample(old_rows, n_replay)

    run.data.rows["train"] = mixed
    run._lengths = [len(r["input_ids"]) for r in mixed]
    st = run.state
    st.epoch, st.batch_index, st.micro_step = st.epoch + 1, 0, 0
    per_epoch = math.ceil(len(run.epoch_plan(st.epoch)) / cfg.train.gradient_accumulation_steps)
    extra = steps if steps is not None else max(1, math.ceil(epochs * per_epoch))
    if extra < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    run.steps_per_epoch, run.total_steps = per_epoch, st.step + extra

    peak = float(lr if lr is not None else cfg.train.learning_rate)
    base = run.scheduler.base_lrs
    for g, b in zip(run.optimizer.param_groups, base):
        g["lr"] = g["initial_lr"] = peak * (b / base[0] if base[0] > 0 else 1.0)
    warmup = int(round(cfg.train.warmup_ratio * extra))
    run.scheduler = torch.optim.lr_scheduler.LambdaLR(run.optimizer, build.lr_lambda(cfg.train.scheduler, warmup,
                                                                                     extra))
    st.status = "ready"
    run.results = {}
    record = run.control.log(st.step, "data", len(old_rows), f"+{len(new_rows)} new, {n_replay} replayed")
    run.queue_record(record)
    return record
