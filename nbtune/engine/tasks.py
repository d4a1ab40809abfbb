"""Per-task pieces: turn dataset rows into token ids + labels, build the model head, score predictions.

Three tasks share one loop: classification (one label per text), token-classification (one BIO tag per
word, scored on the first sub-token), causal-lm (chat-template SFT with the prompt masked out of the loss,
or plain text language modelling).
"""
from __future__ import annotations

import copy
import difflib
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from nbtune.engine import metrics

IGNORE = -100  # label id the loss skips (padding, prompt tokens, non-first sub-tokens)


class DataError(ValueError):
    """The dataset does not fit the task: a missing column, an empty split, an unusable row."""


class DataWarning(UserWarning):
    """The data trains, but maybe not as meant: a single class, float labels read as whole numbers."""


@dataclass
class TaskData:
    """Tokenized rows per split plus what the model head needs to know."""
    rows: dict[str, list[dict]]                      # split -> [{"input_ids": [...], "labels": ...}]
    label_names: list[str] = field(default_factory=list)
    fingerprint_source: str = ""                     # describes the raw rows, hashed for resume checks


def check_columns(split, needed: Sequence[str], where: str) -> None:
    """Raise DataError naming the missing column, the columns that exist and the closest match."""
    have = list(split.column_names)
    for col in needed:
        if col not in have:
            close = difflib.get_close_matches(col, have, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise DataError(f"{where}: column '{col}' not found; the columns are {have}.{hint} "
                            f"Set data.text_column / data.label_column to the right names.")


def label_names_of(split, column: str) -> list[str]:
    """Label names: a ClassLabel's names, else the distinct values (numbers sorted as numbers)."""
    feature = split.features[column]
    names = getattr(feature, "names", None) or getattr(getattr(feature, "feature", None), "names", None)
    if names:
        return list(names)
    values = list(split[column])
    return _names_from_values([v for row in values for v in row] if values and isinstance(values[0], list) else values)


def _names_from_values(values: list) -> list[str]:
    """Sorted, stable class names from plain label values (numbers in numeric order)."""
    flat = set(values)
    numeric = all(isinstance(v, int) and not isinstance(v, bool) for v in flat)
    return [str(v) for v in sorted(flat)] if numeric else sorted(str(v) for v in flat)


def has_class_names(split, column: str) -> bool:
    feature = split.features[column]
    return bool(getattr(feature, "names", None) or getattr(getattr(feature, "feature", None), "names", None))


def label_ids(values: Sequence, names: list[str], class_names: bool, where: str) -> list[int]:
    """Values -> ids in `names`; ClassLabel values already are ids. Unknown labels are named in the error."""
    if class_names:
        return [int(v) for v in values]
    index = {n: i for i, n in enumerate(names)}
    ids = [index.get(str(v), -1) for v in values]
    if -1 in ids:
        bad = values[ids.index(-1)]
        raise DataError(f"{where}: label {bad!r} does not occur in the train split (train labels: {names[:20]})")
    return ids


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _rows_text(rows: list[int]) -> str:
    return f"{len(rows)} row{'s' * (len(rows) > 1)} (first row indices: {rows[:5]})"


def checked_labels(values: list, where: str, column: str, num_labels: int | None) -> list:
    """A split's labels checked on the CPU before any model exists: no None/NaN, whole numbers only where
    numbers, and with `num_labels` (a ClassLabel's size or model.config_overrides.num_labels) ids in
    [0, num_labels). Whole-number floats come back as ints (with a DataWarning).

    >>> checked_labels([0.0, 1.0, 2.0], "demo", "label", None)                 # doctest: +SKIP
    [0, 1, 2]
    """
    missing = [i for i, v in enumerate(values) if _is_missing(v)]
    if missing:
        raise DataError(f"{where}: column {column!r} has no label (None/NaN) in {_rows_text(missing)}; label "
                        f"or drop those rows (nbtune.data.load(..., strict=False) skips them)")
    floats = [i for i, v in enumerate(values) if isinstance(v, float)]
    fractional = [i for i in floats if not values[i].is_integer()]
    if fractional:
        raise DataError(f"{where}: column {column!r} holds fractional numbers (e.g. {values[fractional[0]]!r}) "
                        f"in {_rows_text(fractional)}; classification needs class labels: whole numbers or "
                        f"strings (float targets would switch the loss to multi-label BCE)")
    if floats:
        warnings.warn(f"{where}: column {column!r} holds whole-number floats (e.g. {values[floats[0]]!r}); read "
                      f"as the integers they equal. Store class labels as integers or strings.", DataWarning,
                      stacklevel=3)
        values = [int(v) if isinstance(v, float) else v for v in values]
    if num_labels is not None:
        bad = [i for i, v in enumerate(values) if not isinstance(v, int) or isinstance(v, bool)
               or not 0 <= v < num_labels]
        if bad:
            shown = sorted({values[i] for i in bad}, key=str)[:5]
            raise DataError(f"{where}: column {column!r} holds {len(bad)} label{'s' * (len(bad) > 1)} outside the "
                            f"class ids 0..{num_labels - 1} (num_labels={num_labels}): values {shown} in "
                            f"{_rows_text(bad)}; -1 is datasets' 'no label'. Fix or drop those rows, or raise "
                            f"num_labels; nothing reached the model")
    return values


def _declared_num_labels(split, column: str, num_labels: int | None, where: str) -> int | None:
    """The label count the data or config declares: a ClassLabel's size, model.config_overrides.num_labels."""
    feature = split.features[column]
    size = len(feature.names) if getattr(feature, "names", None) else None
    if size is not None and num_labels is not None and size != num_labels:
        raise DataError(f"{where}: model.config_overrides.num_labels={num_labels} but column {column!r} is a "
                        f"ClassLabel with {size} names {feature.names[:10]}; drop num_labels or make them agree")
    return size if size is not None else num_labels


def tokenize_classification(ds, tokenizer, text_col: str, label_col: str, max_length: int, where: str,
                            num_labels: int | None = None) -> TaskData:
    """Token ids and label ids per split. Labels are checked first (see `checked_labels`), so bad labels fail
    here, before the model is built. `num_labels` (model.config_overrides) makes integer labels class ids."""
    check_columns(ds["train"], [text_col, label_col], where)
    declared = _declared_num_labels(ds["train"], label_col, num_labels, where)
    labels_of = {s: checked_labels(list(split[label_col]), f"{where}, split '{s}'", label_col, declared)
                 for s, split in ds.items()}
    if has_class_names(ds["train"], label_col):
        names, class_names = label_names_of(ds["train"], label_col), True
    elif declared is not None:
        names, class_names = [str(i) for i in range(declared)], True
    else:
        names, class_names = _names_from_values(labels_of["train"]), False
    if len(set(labels_of["train"])) == 1:
        warnings.warn(f"{where}: the train split has a single class ({names[0]!r} in all {len(labels_of['train'])} "
                      f"rows): the model can only learn to predict it. Add examples of the other classes.",
                      DataWarning, stacklevel=3)
    rows: dict[str, list[dict]] = {}
    for split_name, split in ds.items():
        texts, labels = list(split[text_col]), labels_of[split_name]
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise DataError(f"{where}: split '{split_name}' row {i} column '{text_col}' is "
                                f"{type(t).__name__}, expected text")
        enc = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
        ids = label_ids(labels, names, class_names, f"{where}, split '{split_name}'")
        rows[split_name] = [{"input_ids": e, "labels": y} for e, y in zip(enc, ids)]
    return TaskData(rows, names)


def tokenize_tagging(ds, tokenizer, max_length: int, where: str) -> TaskData:
    check_columns(ds["train"], ["tokens", "tags"], where)
    names = label_names_of(ds["train"], "tags")
    class_names = has_class_names(ds["train"], "tags")
    rows: dict[str, list[dict]] = {}
    for split_name, split in ds.items():
        enc = tokenizer(list(split["tokens"]), is_split_into_words=True, truncation=True, max_length=max_length)
        out = []
        for i, raw_tags in enumerate(list(split["tags"])):
            tags = label_ids(raw_tags, names, class_names, f"{where}, split '{split_name}' row {i}")
            word_ids, labels, previous = enc.word_ids(i), [], None
            for w in word_ids:
                # Only the first sub-token of each word carries the word's tag.
                labels.append(IGNORE if w is None or w == previous else tags[w])
                previous = w
            out.append({"input_ids": enc["input_ids"][i], "labels": labels})
        rows[split_name] = out
    return TaskData(rows, names)


def tokenize_causal(ds, tokenizer, max_length: int, where: str, model_name: str) -> TaskData:
    cols = ds["train"].column_names
    if "messages" not in cols and "text" not in cols:
        raise DataError(f"{where}: causal-lm needs a 'messages' column (chat turns) or a 'text' column; "
                        f"the columns are {cols}")
    rows: dict[str, list[dict]] = {}
    for split_name, split in ds.items():
        if "messages" in cols:
            if not getattr(tokenizer, "chat_template", None):
                raise DataError(f"the tokenizer of '{model_name}' has no chat template, so chat rows cannot be "
                                f"formatted; set model.tokenizer to one that has one (e.g. smollm2)")
            rows[split_name] = [_sft_row(tokenizer, m, max_length) for m in list(split["messages"])]
        else:
            enc = tokenizer(list(split["text"]), truncation=True, max_length=max_length)["input_ids"]
            rows[split_name] = [{"input_ids": e, "labels": list(e)} for e in enc]
    return TaskData(rows, [])


def _sft_row(tokenizer, messages: list[dict], max_length: int) -> dict:
    """Tokens of the whole chat; labels are IGNORE over the prompt so only the answer is learned."""
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=True)["input_ids"]
    full = tokenizer.apply_chat_template(messages, tokenize=True)["input_ids"]
    if full[:len(prompt)] != prompt:  # a template that rewrites earlier turns: fall back to masking nothing
        prompt = []
    full = full[:max_length]
    labels = [IGNORE] * min(len(prompt), len(full)) + full[len(prompt):]
    return {"input_ids": full, "labels": labels}


def load_model(task: str, path: str, config: Any, label_names: list[str], init: str, trust_remote_code: bool,
               revision: str | None = None, overrides: dict | None = None,
               allow_pickle_weights: bool = False) -> torch.nn.Module:
    """The model with the head the task needs. `config` is set for random-init presets; `overrides` change
    config values (e.g. fewer layers) before the weights load. Weights come from safetensors unless
    `allow_pickle_weights` (model.allow_pickle_weights) admits a pickle-only pytorch_model.bin."""
    from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification)
    auto = {"classification": AutoModelForSequenceClassification, "token-classification":
            AutoModelForTokenClassification, "causal-lm": AutoModelForCausalLM}[task]
    head = {}
    if task != "causal-lm":
        head = {"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
                "label2id": {n: i for i, n in enumerate(label_names)}}
        if task == "classification":
            # Cross-entropy on class ids whatever the label count or dtype: transformers would infer regression
            # for a single label and multi-label BCE for float labels.
            head["problem_type"] = "single_label_classification"
        # num_labels in config_overrides was checked against the labels (checked_labels); the head wins.
        overrides = {k: v for k, v in (overrides or {}).items() if k not in head}
    if config is not None or init == "random":
        if config is None:
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
        config = copy.deepcopy(config)
        for k, v in {**head, **(overrides or {})}.items():
            setattr(config, k, v)
        return auto.from_config(config, trust_remote_code=trust_remote_code)
    try:
        return auto.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision,
                                    use_safetensors=None if allow_pickle_weights else True,
                                    **head, **(overrides or {}))
    except OSError as exc:
        if allow_pickle_weights or not (Path(path) / "pytorch_model.bin").is_file():
            raise
        raise OSError(f"{path} holds its weights only as a pickle (pytorch_model.bin), which can run code when "
                      "loaded; nbtune loads safetensors. Convert it (save_pretrained writes safetensors), or set "
                      "model.allow_pickle_weights=true if you trust the file.") from exc


def score(task: str, logits: torch.Tensor, labels: torch.Tensor, label_names: list[str]) -> dict:
    """Per-batch predictions kept for the epoch-level metrics (lists, so ranks can gather them)."""
    if task == "classification":
        return {"gold": labels.tolist(), "pred": logits.argmax(-1).tolist()}
    if task == "token-classification":
        pred, gold_seqs, pred_seqs = logits.argmax(-1), [], []
        for g_row, p_row in zip(labels.tolist(), pred.tolist()):
            keep = [(g, p) for g, p in zip(g_row, p_row) if g != IGNORE]
            gold_seqs.append([label_names[g] for g, _ in keep])
            pred_seqs.append([label_names[p] for _, p in keep])
        return {"gold_seqs": gold_seqs, "pred_seqs": pred_seqs}
    return {}


def summarize(task: str, parts: list[dict], loss_sum: float, loss_count: float) -> dict[str, float]:
    """Combine per-batch parts into the metrics of one evaluation."""
    loss = loss_sum / max(loss_count, 1)
    out = {"loss": loss}
    if task == "classification":
        gold = [g for p in parts for g in p["gold"]]
        pred = [x for p in parts for x in p["pred"]]
        out.update(accuracy=metrics.accuracy(gold, pred), macro_f1=metrics.macro_f1(gold, pred))
    elif task == "token-classification":
        gold = [s for p in parts for s in p["gold_seqs"]]
        pred = [s for p in parts for s in p["pred_seqs"]]
        out.update(metrics.tagging_scores(gold, pred))
    else:
        out["perplexity"] = math.exp(min(loss, 50.0))
    return out
