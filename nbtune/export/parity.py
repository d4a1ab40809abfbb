"""Parity of an exported graph with the PyTorch model on held-out rows: logit differences, label agreement and
the task metric on both sides, plus (for causal LMs) whether greedy continuations match token for token.

The PyTorch logits are computed once (`reference_logits`) and compared with each variant (fp32, int8).

Example:
    >>> batches = held_out_batches(run, "test")                              # doctest: +SKIP
    >>> ref = reference_logits(model, batches)                              # doctest: +SKIP
    >>> compare("onnx-fp32", OnnxRunner(path), batches, ref, "classification", run.data.label_names)  # doctest: +SKIP
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from nbtune.engine import tasks
from nbtune.engine.batching import eval_batches
from nbtune.export.types import ExportError, Parity

METRICS = {"classification": "accuracy", "token-classification": "entity_f1", "causal-lm": "next_token_accuracy"}


def held_out_batches(run: Any, split: str = "test", batch_size: int = 32, max_rows: int | None = None) -> list[dict]:
    """The split's rows, collated as the run collates them (sorted by length: least padding), on the CPU."""
    rows = run.data.rows.get(split)
    if not rows:
        raise ExportError(f"parity needs held-out rows, and the run's '{split}' split is empty")
    rows = rows[:max_rows] if max_rows else rows
    lengths = [len(r["input_ids"]) for r in rows]
    return [run.collate(idx, rows) for idx in eval_batches(lengths, batch_size)]


@torch.no_grad()
def reference_logits(model: torch.nn.Module, batches: list[dict]) -> list[np.ndarray]:
    """The PyTorch model's logits per batch, fp32 on the CPU."""
    model = model.eval()
    return [model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float().numpy()
            for b in batches]


def _positions(task: str, batch: dict) -> np.ndarray:
    """Which logits count: every row (classification), labelled tokens (tagging), real tokens (LM)."""
    if task == "classification":
        return np.ones(batch["input_ids"].shape[0], bool)                     # (B,)
    if task == "token-classification":
        return batch["labels"].numpy() != tasks.IGNORE                        # (B, T)
    return batch["attention_mask"].numpy().astype(bool)                       # (B, T)


def _metric(task: str, logits: list[np.ndarray], batches: list[dict], label_names: list[str]) -> float:
    if task == "causal-lm":  # next-token accuracy on the labelled positions (the model shifts labels by one)
        right = total = 0
        for lg, b in zip(logits, batches):
            pred, gold = lg[:, :-1].argmax(-1), b["labels"].numpy()[:, 1:]
            keep = gold != tasks.IGNORE
            right += int((pred[keep] == gold[keep]).sum())
            total += int(keep.sum())
        return right / max(total, 1)
    parts = [tasks.score(task, torch.from_numpy(lg), b["labels"], label_names) for lg, b in zip(logits, batches)]
    return float(tasks.summarize(task, parts, 0.0, 1)[METRICS[task]])


def compare(variant: str, runner: Any, batches: list[dict], reference: list[np.ndarray], task: str,
            label_names: list[str]) -> Parity:
    """One variant's logits against the reference on the same batches."""
    got = [runner.logits({"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}) for b in batches]
    diffs, same, counted = [], 0, 0
    for ref, out, b in zip(reference, got, batches):
        if ref.shape != out.shape:
            raise ExportError(f"{variant}: logits of shape {out.shape} where PyTorch gives {ref.shape}")
        keep = _positions(task, b)
        diffs.append(np.abs(ref[keep] - out[keep]).reshape(-1))
        same += int((ref[keep].argmax(-1) == out[keep].argmax(-1)).sum())
        counted += int(keep.sum())
    diff = np.concatenate(diffs) if diffs else np.zeros(1)
    rows = sum(int(b["input_ids"].shape[0]) for b in batches)
    return Parity(variant, rows, float(diff.max()), float(diff.mean()), same / max(counted, 1), METRICS[task],
                  _metric(task, got, batches, label_names), _metric(task, reference, batches, label_names))


def prompts_from(run: Any, split: str = "test", count: int = 5, max_prompt_tokens: int = 32) -> list[list[int]]:
    """Token ids of `count` prompts from a causal-LM split: each row's unlabelled prefix (the chat prompt), or
    its first tokens when every token is labelled."""
    prompts = []
    for row in run.data.rows[split][:count]:
        labels = row["labels"]
        first = next((i for i, x in enumerate(labels) if x != tasks.IGNORE), len(labels))
        cut = first if 0 < first < len(labels) else min(max_prompt_tokens, max(1, len(labels) // 2))
        prompts.append(list(row["input_ids"][:min(cut, max_prompt_tokens)]))
    return prompts


@torch.no_grad()
def greedy_agreement(model: torch.nn.Module, runner: Any, prompts: list[list[int]], max_new_tokens: int = 16,
                     eos_token_id: int | None = None) -> tuple[float, list[tuple[list[int], list[int]]]]:
    """Share of prompts whose greedy continuation (PyTorch generate vs the ONNX runner) is identical, and the
    (pytorch, onnx) continuations."""
    pairs = []
    model = model.eval()
    for prompt in prompts:
        ids = torch.tensor([prompt])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=eos_token_id, pad_token_id=eos_token_id)
        pairs.append((out[0, len(prompt):].tolist(), runner.greedy(prompt, max_new_tokens, eos_token_id)))
    return sum(a == b for a, b in pairs) / max(len(pairs), 1), pairs
