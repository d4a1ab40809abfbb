"""Run a model over texts in batches, in eval mode without gradients, restoring its mode afterwards.

Shared by back-translation (generate) and curriculum loss scores (forward).

    >>> for start, batch in eval_batches(model, tokenizer, texts, 16, 128):   # doctest: +SKIP
    ...     logits = model(**batch).logits
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence


def eval_batches(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int,
                 max_length: int) -> Iterator[tuple[int, Any]]:
    """Yield (start index, tokenised batch on the model's device) under torch.inference_mode in eval mode."""
    import torch

    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                yield start, tokenizer(list(texts[start:start + batch_size]), return_tensors="pt", padding=True,
                                       truncation=True, max_length=max_length).to(device)
    finally:
        model.train(was_training)
