"""Gradient attributions per word: integrated gradients (captum's LayerIntegratedGradients) and gradient x input,
both taken on the model's input embedding layer (`model.get_input_embeddings()`), summed over the hidden
dimension and then over each word's pieces.

What is differentiated is the target's score as `ExplainModel.score_texts` defines it, so the numbers line up
with SHAP and LIME: classification and token-classification use the target class's softmax *probability*
(token-classification at the target word's first piece), causal-lm the summed log-probability of the
continuation's tokens appended to the prompt. For integrated gradients the scores therefore add up to
`model_score - base_score` (completeness), up to captum's convergence delta, reported in `extras["delta"]`.

Texts longer than the model's context are cut into windows of pieces that overlap by a quarter; every window
keeps the tokenizer's special tokens, and a piece seen by several windows gets the mean of its attributions
(token-classification explains the one window centred on the target word). Completeness then holds per window,
not for the text.

Explaining never switches a model mid-training out of training for longer than the call: the model runs in
eval mode (no dropout) with gradients enabled, the training flag is restored afterwards, and gradients are
taken with `torch.autograd.grad`, so no parameter's `.grad` is created or changed.

Example (the trigger classifier of tests/support/trigger.py, where "zebra" decides class "alarm"):
    >>> em = ExplainModel.from_run(run)                                           # doctest: +SKIP
    >>> a = explain_ig(em, "the lamp zebra is on today", "alarm",
    ...                n_steps=1000, method="riemann_trapezoid")                  # doctest: +SKIP
    >>> a.top(2), round(a.extras["delta"], 4)                                     # doctest: +SKIP
    ([('zebra', 0.9976), ('lamp', 0.0078)], -0.003)
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from nbtune.explain.model import ExplainModel
from nbtune.explain.types import Attribution, ExplainError, Target, Words, split_words

WINDOW_OVERLAP = 0.25        # fraction of a window shared with the next one
BASELINES = ("pad", "mask", "unk")
METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left", "riemann_right")
SATURATED = 0.02             # probabilities this close to 0 or 1 leave gradients near zero
_NO_LIMIT = 1_000_000        # tokenize the whole text; windowing decides what the model sees


def _captum_attr() -> Any:
    try:
        import captum.attr
    except ImportError as err:  # optional: the explain extra
        raise ImportError("gradient attributions need captum: pip install 'nbtune[explain]'") from err
    return captum.attr


@dataclass(frozen=True)
class _Layout:
    """A text cut for attribution: the special pieces the tokenizer puts before and after the words, the content
    pieces between them (what windows slide over), and the continuation's ids (causal-lm, appended after)."""
    words: Words
    prefix: list[int]
    content: list[int]
    suffix: list[int]
    tail: list[int]
    word_of_content: list[int | None]
    window: int                 # content pieces per window
    target_piece: int | None    # content index of the target word's first piece (token-classification)


def _context_length(em: ExplainModel) -> int:
    # em.max_length defaults to the tokenizer's limit; a model built from a small config may allow fewer positions.
    positions = getattr(getattr(em.model, "config", None), "max_position_embeddings", None)
    return min(em.max_length, positions) if isinstance(positions, int) and positions > 0 else em.max_length


def _layout(em: ExplainModel, text: str, target: Target) -> _Layout:
    words = split_words(text)
    pieces = em.pieces(text, words, max_length=_NO_LIMIT)
    ids = pieces.input_ids[0].tolist()
    special = set(em.tokenizer.all_special_ids)
    lead, trail = 0, len(ids)
    while lead < trail and pieces.word_of_piece[lead] is None and ids[lead] in special:
        lead += 1
    while trail > lead and pieces.word_of_piece[trail - 1] is None and ids[trail - 1] in special:
        trail -= 1
    if lead == trail:
        raise ExplainError(f"the text {text!r} has no word pieces to attribute to")
    tail = []
    if target.task == "causal-lm":
        tail = em.tokenizer(target.continuation, add_special_tokens=False)["input_ids"]
        if not tail:
            raise ExplainError(f"the continuation {target.continuation!r} has no tokens: pass a non-blank one")
    limit = _context_length(em)
    window = limit - lead - (len(ids) - trail) - len(tail)
    if window < 1:
        raise ExplainError(f"max_length={limit} leaves no room for the text: {lead + len(ids) - trail} special "
                           f"tokens and {len(tail)} continuation tokens need fewer positions than that")
    word_of_content = pieces.word_of_piece[lead:trail]
    target_piece = None
    if target.task == "token-classification":
        target_piece = next((c for c, w in enumerate(word_of_content) if w == target.word), None)
        if target_piece is None:
            raise ExplainError(f"word {target.word} ({words.words[target.word]!r}) has no piece in the tokenized text")
    return _Layout(words, ids[:lead], ids[lead:trail], ids[trail:], tail, word_of_content, window, target_piece)


def _window_starts(n: int, size: int, centre: int | None = None) -> list[int]:
    """Start offsets of windows of `size` over n pieces: one window when it fits, one centred on `centre` when
    given, else a stride of size * (1 - WINDOW_OVERLAP) with the last window flush with the end."""
    if n <= size:
        return [0]
    if centre is not None:
        return [min(max(centre - size // 2, 0), n - size)]
    stride = max(1, int(size * (1 - WINDOW_OVERLAP)))
    starts = list(range(0, n - size + 1, stride))
    if starts[-1] + size < n:
        starts.append(n - size)
    return starts


def _score_function(em: ExplainModel, target: Target, position: int) -> Callable[..., torch.Tensor]:
    """forward(input_ids (B, T), attention_mask (B, T)) -> (B,) the target's score, as em.score_texts scores it.
    position: token-classification: the target piece; causal-lm: the first continuation token."""
    model = em.model

    def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half -> float32, float64 kept
        if target.task == "classification":                                  # (B, C)
            return torch.softmax(logits, dim=-1)[:, target.index]
        if target.task == "token-classification":                            # (B, T, C) at the word's first piece
            return torch.softmax(logits[:, position], dim=-1)[:, target.index]
        cont = input_ids[:, position:]                                       # (B, C) continuation ids
        logp = torch.log_softmax(logits[:, position - 1:-1], dim=-1)         # (B, C, V) predicting each of them
        return logp.gather(-1, cont.unsqueeze(-1)).squeeze(-1).sum(-1)

    return forward


def _baseline_id(em: ExplainModel, baseline: str | int) -> int:
    if isinstance(baseline, (int, np.integer)) and not isinstance(baseline, bool):
        return int(baseline)
    if baseline not in BASELINES:
        raise ExplainError(f"baseline={baseline!r}: expected one of {', '.join(BASELINES)} or a token id")
    tok = em.tokenizer
    order = {"pad": ("pad_token_id", "mask_token_id", "unk_token_id"), "mask": ("mask_token_id", "pad_token_id"),
             "unk": ("unk_token_id", "pad_token_id")}[baseline]
    found = next((getattr(tok, name) for name in order if getattr(tok, name, None) is not None), None)
    if found is None:
        raise ExplainError(f"the tokenizer has no {baseline} token for the baseline: pass baseline=<token id>")
    return int(found)


@contextlib.contextmanager
def _gradient_mode(model: torch.nn.Module):
    """Eval mode (deterministic: no dropout) with gradients on, whatever the caller's no_grad; the training flag
    is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        model.train(was_training)


def _attribute(em: ExplainModel, text: str, target: Target, baseline: str | int | None,
               one_window: Callable[..., tuple[np.ndarray, float | None]]) -> dict[str, Any]:
    """Run `one_window(forward, ids (1, T), base (1, T), mask (1, T)) -> (attributions (T,), delta)` over the
    text's windows and average the content pieces' attributions where windows overlap. baseline None: the
    method has none (base is the text itself and f(baseline) is not computed)."""
    lay = _layout(em, text, target)
    n, size = len(lay.content), lay.window
    starts = _window_starts(n, size, lay.target_piece)
    total, seen = np.zeros(n), np.zeros(n)
    deltas, fx, fb = [], [], []
    base_id = None if baseline is None else _baseline_id(em, baseline)
    with _gradient_mode(em.model):
        for start in starts:
            end = min(start + size, n)
            words_ids = lay.content[start:end]
            ids = lay.prefix + words_ids + lay.suffix + lay.tail
            # the baseline keeps special tokens and the continuation: only the words are removed
            base = ids if base_id is None else lay.prefix + [base_id] * len(words_ids) + lay.suffix + lay.tail
            if target.task == "token-classification":
                position = len(lay.prefix) + lay.target_piece - start
            else:
                position = len(ids) - len(lay.tail)
            forward = _score_function(em, target, position)
            ids_t = torch.tensor([ids], device=em.device)
            base_t = torch.tensor([base], device=em.device)
            mask = torch.ones_like(ids_t)
            attributions, delta = one_window(forward, ids_t, base_t, mask)
            total[start:end] += attributions[len(lay.prefix):len(lay.prefix) + len(words_ids)]
            seen[start:end] += 1
            with torch.no_grad():
                fx.append(float(forward(ids_t, mask)[0]))
                if base_id is not None:
                    fb.append(float(forward(base_t, mask)[0]))
            if delta is not None:
                deltas.append(delta)
    pieces = np.divide(total, seen, out=np.zeros(n), where=seen > 0)
    scores = np.zeros(len(lay.words))
    for c, w in enumerate(lay.word_of_content):
        if w is not None:
            scores[w] += pieces[c]
    notes = []
    if len(starts) > 1 or n > size:
        plural = "s" * (len(starts) > 1)
        notes.append(f"windowed: {n} pieces in {len(starts)} window{plural} of {size} "
                     f"(max_length {_context_length(em)} less special/continuation tokens"
                     + (f"; overlap {WINDOW_OVERLAP:.0%}, averaged)" if len(starts) > 1 else
                        f"); only the window around word {target.word} is explained, words outside it score 0"))
    return {"scores": scores, "deltas": deltas, "fx": fx, "fb": fb, "windows": len(starts), "notes": notes,
            "words": lay.words}


def _summed(attributions: torch.Tensor) -> np.ndarray:
    return attributions.detach().float().sum(-1)[0].cpu().numpy()  # (1, T, H) -> (T,)


def _model_score(em: ExplainModel, text: str, target: Target, out: dict[str, Any]) -> float:
    """The score em.score_texts gives (what SHAP and LIME report); where it has none because the target word is
    past em.max_length (token-classification), the score in the window around the word."""
    score = float(em.score_texts([text], target)[0])
    if not np.isfinite(score) and len(out["fx"]) == 1:
        out["notes"].append(f"model_score is the window's: word {target.word} is past max_length {em.max_length}")
        return out["fx"][0]
    return score


def _unit(target: Target) -> str:
    if target.task == "causal-lm":
        return f"log-probability of {target.continuation!r}"
    return f"probability of {target.label!r}"


def explain_ig(em: ExplainModel, text: str, target: int | str | None = None, *, n_steps: int = 50,
               internal_batch_size: int = 16, baseline: str | int = "pad", word: int | None = None,
               continuation: str | None = None, method: str = "gausslegendre") -> Attribution:
    """Integrated gradients from a baseline text (every word piece replaced by [PAD], or [MASK]/[UNK]/a token
    id; special tokens kept) to the text, on the input embeddings, in n_steps interpolation steps.

    target: class index or label (None: the predicted class); word: the word explained (token-classification);
    continuation: the text whose log-probability is explained (causal-lm; default the greedy next token).
    method: captum's integration rule; for hundreds of steps use "riemann_trapezoid" (captum has numpy
    recompute the Gauss-Legendre nodes on every call: about 6 s at 1000 steps). Scores add up to model_score - base_score up to extras["delta"] (unwindowed
    texts). A model whose score jumps along the path (a confident fine-tuned classifier) needs many steps: a
    note says so when the delta is large.

        >>> a = explain_ig(em, "the lamp zebra is on today", "alarm", n_steps=1000,
        ...                method="riemann_trapezoid")                                # doctest: +SKIP
        >>> a.top(1), abs(a.extras["delta"]) < 0.02                                 # doctest: +SKIP
        ([('zebra', 0.9976)], True)
    """
    if n_steps < 1 or internal_batch_size < 1:
        raise ExplainError(f"n_steps={n_steps} and internal_batch_size={internal_batch_size} must be at least 1")
    if method not in METHODS:
        raise ExplainError(f"method={method!r}: expected one of {', '.join(METHODS)}")
    started = time.perf_counter()
    resolved = em.target(text, target, word=word, continuation=continuation)
    attr = _captum_attr()

    def one_window(forward, ids, base, mask):
        lig = attr.LayerIntegratedGradients(forward, em.model.get_input_embeddings())
        values, delta = lig.attribute(ids, baselines=base, additional_forward_args=(mask,), n_steps=n_steps,
                                      method=method, internal_batch_size=internal_batch_size,
                                      return_convergence_delta=True)
        return _summed(values), float(delta.detach().reshape(-1)[0])

    out = _attribute(em, text, resolved, baseline, one_window)
    model_score = _model_score(em, text, resolved, out)
    k = int(np.argmax(np.abs(out["deltas"])))           # the window with the largest delta
    worst, single = out["deltas"][k], out["windows"] == 1
    notes = [f"integrated gradients on the input embeddings, {n_steps} steps from a "
             f"{baseline if isinstance(baseline, str) else f'token {baseline}'} baseline (special tokens kept); "
             f"scores in {_unit(resolved)}",
             f"convergence delta {worst:+.2g} (sum of scores minus f(text) - f(baseline)"
             + ("" if single else ", the largest over the windows") + ")"] + out["notes"]
    if abs(worst) > 0.05 * max(abs(out["fx"][k] - out["fb"][k]), 1e-3):
        notes.append(f"the delta is large next to f(text) - f(baseline): the score changes sharply along the path; "
                     f"raise n_steps (now {n_steps}), e.g. n_steps=1000, method='riemann_trapezoid'")
    return Attribution("ig", out["words"], out["scores"], resolved, model_score=model_score,
                       base_score=out["fb"][0] if single else None, evaluations=n_steps * out["windows"],
                       seconds=time.perf_counter() - started, notes=notes,
                       extras={"delta": worst, "deltas": out["deltas"], "windows": out["windows"],
                               "f_text": out["fx"], "f_baseline": out["fb"], "n_steps": n_steps, "method": method})


def explain_grad_x_input(em: ExplainModel, text: str, target: int | str | None = None, *, word: int | None = None,
                         continuation: str | None = None) -> Attribution:
    """Gradient x input on the input embeddings: each word's first-order (Taylor) share of the target's score,
    from one forward and one backward pass per window. Cheap, and blind where the model saturates: around a
    confident prediction the score barely moves with any one word, so the scores are near zero and their order
    is noise (a note says so). Integrated gradients integrates over the path instead and does not have that
    problem. The scores do not add up to anything.

        >>> a = explain_grad_x_input(em, "turn on the kitchen lights")               # doctest: +SKIP
        >>> a.top(1), a.notes                                                       # doctest: +SKIP
    """
    started = time.perf_counter()
    resolved = em.target(text, target, word=word, continuation=continuation)
    attr = _captum_attr()

    def one_window(forward, ids, base, mask):
        gxa = attr.LayerGradientXActivation(forward, em.model.get_input_embeddings())
        return _summed(gxa.attribute(ids, additional_forward_args=(mask,))), None

    out = _attribute(em, text, resolved, None, one_window)
    model_score = _model_score(em, text, resolved, out)
    notes = [f"gradient x input on the input embeddings, in {_unit(resolved)}: a first-order view at the text "
             "itself; the scores need not sum to the score"] + out["notes"]
    if resolved.task != "causal-lm" and not SATURATED < model_score < 1 - SATURATED:
        notes.append(f"the model is saturated here (p={model_score:.3f}): gradients near a confident prediction "
                     "are tiny and their ranking unreliable; prefer explain_ig")
    return Attribution("grad_x_input", out["words"], out["scores"], resolved, model_score=model_score,
                       evaluations=out["windows"], seconds=time.perf_counter() - started, notes=notes,
                       extras={"windows": out["windows"]})
