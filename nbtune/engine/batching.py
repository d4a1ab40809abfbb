"""Deterministic batching: each epoch's batch list is a pure function of (seed, epoch, lengths).

That is what makes resume exact: a checkpoint stores only (epoch, batch_index), and the resumed run rebuilds
the same list and skips to the same place without touching the global RNG.

Example:
    >>> plan = epoch_batches([5, 3, 9, 2], batch_size=2, seed=0, epoch=0, group_by_length=True)
    >>> sorted(i for b in plan for i in b)
    [0, 1, 2, 3]
"""
from __future__ import annotations

from typing import Sequence

import torch

# A megabatch holds this many batches; sorting inside it groups similar lengths while keeping randomness.
MEGABATCH_FACTOR = 50


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int,
                  group_by_length: bool = True, rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """Row indices of every micro-batch this rank sees in `epoch`, in order."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    if group_by_length:
        mega = batch_size * MEGABATCH_FACTOR
        order = [i for start in range(0, len(order), mega)
                 for i in sorted(order[start:start + mega], key=lambda j: -lengths[j])]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        # Sorting made long batches come first in each megabatch; shuffle batch order so the loss curve
        # does not saw-tooth with length.
        perm = torch.randperm(len(batches), generator=gen).tolist()
        batches = [batches[p] for p in perm]
    if world_size > 1:
        # Every rank must run the same number of steps or DDP hangs: drop the remainder.
        per_rank = len(batches) // world_size
        batches = batches[rank::world_size][:per_rank]
    return batches


def eval_batches(lengths: Sequence[int], batch_size: int, rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """Evaluation batches sorted by length (least padding); rank r takes rows r, r+W, ..."""
    mine = sorted(range(rank, len(lengths), world_size), key=lambda j: lengths[j])
    return [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]


def pad_batch(rows: Sequence[dict], pad_token_id: int, pad_to_multiple_of: int | None = None,
              pad_to_length: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad a list of tokenized rows to the longest (or a fixed) length.

    Rows hold `input_ids` and `labels`; labels are either one int per row (classification) or one per
    token (-100 where the loss ignores the token).
    """
    longest = max(len(r["input_ids"]) for r in rows)
    width = pad_to_length or longest
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    per_token = isinstance(rows[0]["labels"], (list, tuple))
    labels = torch.full((len(rows), width), -100, dtype=torch.long) if per_token else \
        torch.tensor([r["labels"] for r in rows], dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"], dtype=torch.long)
        mask[i, :n] = 1
        if per_token:
            labels[i, :n] = torch.tensor(r["labels"], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}  # each (B, T), labels (B,) or (B, T)
