"""Latency and throughput of PyTorch eager and the exported graphs, measured side by side in one process on
the same held-out rows and thread count. Rounds interleave the backends, so a noisy neighbour slows all of
them alike instead of one.

Example:
    >>> backends = {"pytorch": eager(model), "onnx-fp32": OnnxRunner(path).logits}    # doctest: +SKIP
    >>> measure(backends, rows, run.collate)                                           # doctest: +SKIP
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch

from nbtune.export.types import Latency

Infer = Callable[[dict], Any]


def eager(model: torch.nn.Module) -> Infer:
    """PyTorch eager inference as the baseline (inference mode, eval, fp32)."""
    model = model.eval()

    def infer(batch: dict) -> Any:
        with torch.inference_mode():
            return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return infer


def _inputs(batch: dict) -> dict:
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def measure(backends: dict[str, Infer], rows: list[dict], collate: Callable[[list[int], list[dict]], dict], *,
            batch1_calls: int = 60, batch32_batches: int = 6, rounds: int = 3, warmup: int = 3) -> list[Latency]:
    """p50/p95 of single-row calls and rows/s over batches of 32, for each backend.

    `rows` are tokenized rows (the run's held-out split); single calls cycle through them at their natural
    length, batches of 32 are padded to their longest row, as a server would see them."""
    singles = [_inputs(collate([i % len(rows)], rows)) for i in range(batch1_calls)]
    chunks = [_inputs(collate([(b * 32 + j) % len(rows) for j in range(32)], rows)) for b in range(batch32_batches)]
    single_ms: dict[str, list[float]] = {name: [] for name in backends}
    batch_s: dict[str, float] = {name: 0.0 for name in backends}
    for infer in backends.values():
        for batch in singles[:warmup] + chunks[:1]:
            infer(batch)
    per_round = max(1, batch1_calls // rounds)
    chunk_round = max(1, batch32_batches // rounds)
    for r in range(rounds):
        for name, infer in backends.items():
            for batch in singles[r * per_round:(r + 1) * per_round]:
                start = time.perf_counter()
                infer(batch)
                single_ms[name].append((time.perf_counter() - start) * 1000)
            start = time.perf_counter()
            for batch in chunks[r * chunk_round:(r + 1) * chunk_round]:
                infer(batch)
            batch_s[name] += time.perf_counter() - start
    rows_timed = 32 * min(batch32_batches, rounds * chunk_round)
    tokens = np.mean([int(b["attention_mask"].sum()) for b in singles])
    return [Latency(name, float(np.percentile(single_ms[name], 50)), float(np.percentile(single_ms[name], 95)),
                    rows_timed / max(batch_s[name], 1e-9), int(round(tokens)), torch.get_num_threads())
            for name in backends]
