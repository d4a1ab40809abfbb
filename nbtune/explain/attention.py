"""Attention weights per layer and head, attention rollout, and a word-level view of both.

Attention shows where the model looks; it is not an explanation of its decision (Jain & Wallace 2019): the
weights do not depend on the class explained and ignore the value vectors and everything after attention.
`explain_attention` still returns an `Attribution`, so it can sit next to SHAP, LIME and IG and be compared.

Rollout (Abnar & Zuidema 2020): average the heads of each layer, add the identity for the residual connection,
renormalise the rows, and multiply the layers together; the row of the first token ([CLS]) -- of the last token
for a causal model, which sees nothing after it -- says how much each input piece flows into it.

transformers 5 returns attention weights only from the "eager" attention implementation (sdpa and flash
kernels never form them), so `attention_maps` switches the model to eager for the one forward pass and back.

Example (the trigger classifier of tests/support/trigger.py, a 2-layer, 2-head tiny BERT):
    >>> info = attention_maps(em, "the lamp zebra is on today")        # doctest: +SKIP
    >>> info.weights.shape, info.word_rollout.round(2)                 # doctest: +SKIP
    ((2, 2, 8, 8), array([0.03, 0.06, 0.49, 0.02, 0.04, 0.02]))
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from nbtune.explain.gradients import _context_length
from nbtune.explain.model import ExplainModel
from nbtune.explain.types import Attribution, ExplainError, Words, split_words

NOT_AN_EXPLANATION = "attention shows where the model looks; it is not an explanation"


@dataclass
class AttentionInfo:
    """One text's attention. tokens/word_of_piece/special: one entry per piece (T); weights: (L, H, T, T) for
    the model layers in `layers`, row = the attending piece, summing to 1; rollout: (T,) the rolled-out attention
    of piece `source` over all layers; word_rollout: (W,) rollout summed over each word's pieces (special pieces
    excluded, so it sums to 1 - rollout on specials)."""
    words: Words
    tokens: list[str]
    word_of_piece: list[int | None]
    special: np.ndarray
    weights: np.ndarray
    layers: list[int]
    rollout: np.ndarray
    word_rollout: np.ndarray
    source: int
    truncated: bool = False
    notes: list[str] = field(default_factory=list)

    def merged_words(self, layer: int, head: int | None = None) -> np.ndarray:
        """(W, W) word-level attention of model layer `layer`, head `head` (None: mean over heads). A word's
        pieces are merged as Clark et al. (2019) do: attention *to* a word is the sum over its pieces, attention
        *from* a word the mean over its pieces, so rows still sum to 1 less what goes to special tokens.

            >>> info.merged_words(layer=1, head=0).sum(axis=1).round(2)   # doctest: +SKIP
            array([0.93, 0.76, 0.99, 0.93, 0.94, 0.83])
        """
        if layer not in self.layers:
            raise ExplainError(f"layer {layer} is not in this AttentionInfo (layers {self.layers}): "
                               "pass layers=None to attention_maps for all of them")
        maps = self.weights[self.layers.index(layer)]                         # (H, T, T)
        if head is None:
            grid = maps.mean(axis=0)
        elif -maps.shape[0] <= head < maps.shape[0]:
            grid = maps[head]
        else:
            raise ExplainError(f"head={head} is outside 0..{maps.shape[0] - 1}")
        member = _membership(self.word_of_piece, len(self.words))            # (W, T), 1 where piece t is in word w
        counts = member.sum(axis=1, keepdims=True)
        to_words = grid @ member.T                                            # (T, W): summed over target pieces
        return np.divide(member @ to_words, counts, out=np.zeros((len(self.words),) * 2), where=counts > 0)


def _membership(word_of_piece: list[int | None], n_words: int) -> np.ndarray:
    member = np.zeros((n_words, len(word_of_piece)))
    for t, w in enumerate(word_of_piece):
        if w is not None:
            member[w, t] = 1.0
    return member


@contextlib.contextmanager
def _eager_attention(model: torch.nn.Module):
    """The eager attention implementation for the duration (the only one that returns weights), restored after."""
    config = getattr(model, "config", None)
    before = getattr(config, "_attn_implementation", None)
    if config is None or before in (None, "eager"):
        yield
        return
    setter = getattr(model, "set_attn_implementation", None)
    try:
        if callable(setter):
            setter("eager")
        else:
            config._attn_implementation = "eager"
        yield
    finally:
        if callable(setter):
            setter(before)
        else:
            config._attn_implementation = before


def _attentions(em: ExplainModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> np.ndarray:
    """(L, H, T, T) attention weights of one text, in float32."""
    model = em.model
    with _eager_attention(model), em._eval():
        out = model(input_ids=input_ids.to(em.device), attention_mask=attention_mask.to(em.device),
                    output_attentions=True)
    found = getattr(out, "attentions", None)
    if not found or any(a is None for a in found):
        impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
        raise ExplainError(f"{type(model).__name__} returned no attention weights (attention implementation "
                           f"{impl!r}, switched to 'eager' for this call): load it with "
                           "from_pretrained(..., attn_implementation='eager'), or use another method (ig, shap)")
    return torch.stack([a[0].float() for a in found]).cpu().numpy()           # L x (1, H, T, T) -> (L, H, T, T)


def rollout(weights: np.ndarray, keep: np.ndarray | None = None) -> np.ndarray:
    """(T, T) attention rollout of (L, H, T, T) weights: heads averaged, identity added for the residual,
    rows renormalised, layers multiplied (first layer on the right). keep: (T,) bool, pieces that take part
    (padding dropped)."""
    n = weights.shape[-1]
    keep = np.ones(n, dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    flow = np.eye(n)
    for layer in weights:                                                     # (H, T, T)
        mixed = layer.mean(axis=0) * keep[None, :] + np.eye(n)
        mixed /= mixed.sum(axis=1, keepdims=True)
        flow = mixed @ flow
    return flow


def attention_maps(em: ExplainModel, text: str, *, layers: list[int] | None = None,
                   source: int | None = None) -> AttentionInfo:
    """Attention of every layer and head for one text (truncated at em.max_length, or the model's number of
    positions where smaller), with rollout from piece
    `source` (default: the first piece, or the last for causal-lm) through all layers. layers: which model
    layers to keep in `weights` (negative indices count from the end).

        >>> info = attention_maps(em, "turn on the kitchen lights", layers=[-1])   # doctest: +SKIP
        >>> info.tokens[:3], info.special[:3]                                      # doctest: +SKIP
        (['[CLS]', 'turn', 'on'], array([ True, False, False]))
    """
    words = split_words(text)
    if not words.words:
        raise ExplainError("the text has no words to look at")
    limit = _context_length(em)                                               # em.max_length, or fewer positions
    pieces = em.pieces(text, words, max_length=limit)
    weights = _attentions(em, pieces.input_ids, pieces.attention_mask)       # (L, H, T, T)
    keep = pieces.attention_mask[0].numpy().astype(bool)
    n_layers, n = weights.shape[0], weights.shape[-1]
    chosen = list(range(n_layers)) if layers is None else [int(i) % n_layers for i in layers
                                                           if -n_layers <= int(i) < n_layers]
    if layers is not None and len(chosen) != len(layers):
        raise ExplainError(f"layers={layers}: the model has layers 0..{n_layers - 1}")
    if source is None:
        source = n - 1 if em.task == "causal-lm" else 0
    if not -n <= source < n:
        raise ExplainError(f"source={source} is outside the text's {n} pieces")
    flow = rollout(weights, keep)[source]                                     # (T,)
    ids = pieces.input_ids[0].tolist()
    specials = set(em.tokenizer.all_special_ids)
    special = np.array([w is None and i in specials for w, i in zip(pieces.word_of_piece, ids)])
    word_flow = _membership(pieces.word_of_piece, len(words)) @ flow          # (W,)
    notes = [NOT_AN_EXPLANATION, f"rollout from piece {source} ({pieces.tokens[source]!r}); "
             f"{flow[special].sum():.0%} of it rests on special tokens"]
    if pieces.truncated:
        notes.append(f"truncated at max_length {limit}: words past it have no attention")
    return AttentionInfo(words, pieces.tokens, pieces.word_of_piece, special, weights[chosen], chosen, flow,
                         word_flow, source % n, pieces.truncated, notes)


def explain_attention(em: ExplainModel, text: str, target: int | str | None = None, *, word: int | None = None,
                      continuation: str | None = None, layers: list[int] | None = None) -> Attribution:
    """Attention rollout per word as an Attribution (method "attention"): from [CLS] for classification, from
    the target word's first piece for token-classification, from the last prompt piece for causal-lm. The
    scores are the same whatever the target: attention does not know which class is explained.

        >>> explain_attention(em, "the lamp zebra is on today").top(2)        # doctest: +SKIP
        [('zebra', 0.49), ('lamp', 0.06)]
    """
    started = time.perf_counter()
    resolved = em.target(text, target, word=word, continuation=continuation)
    source = None
    if resolved.task == "token-classification":
        pieces = em.pieces(text, max_length=_context_length(em))
        source = next((t for t, w in enumerate(pieces.word_of_piece) if w == resolved.word), None)
        if source is None:
            raise ExplainError(f"word {resolved.word} has no piece within max_length {_context_length(em)}")
    info = attention_maps(em, text, layers=layers, source=source)
    notes = list(info.notes) + ["the scores do not depend on the target"]
    return Attribution("attention", info.words, info.word_rollout, resolved,
                       model_score=float(em.score_texts([text], resolved)[0]), evaluations=1,
                       seconds=time.perf_counter() - started, notes=notes, extras={"info": info})
