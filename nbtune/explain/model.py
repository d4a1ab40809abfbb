"""ExplainModel: the one adapter every explainer uses. It wraps a model and tokenizer (from a Run, a saved
model directory or objects in memory), resolves what to explain into a `Target`, and scores batches of texts
for that target without gradients (`score_texts`, the black-box function SHAP and LIME call) or maps word
pieces back to words (`pieces`, for IG and attention).

Scores: classification and token-classification use the target class's probability (softmax); causal-lm uses
the summed log-probability of the continuation's tokens after the text.

Example:
    >>> em = ExplainModel.from_run(run)                                   # doctest: +SKIP
    >>> target = em.target("turn on the kitchen lights")                  # the predicted class  # doctest: +SKIP
    >>> em.score_texts(["turn on the kitchen lights", "turn on the"], target)   # doctest: +SKIP
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from nbtune.explain.types import ExplainError, Target, Words, split_words

TASKS = ("classification", "token-classification", "causal-lm")


@dataclass(frozen=True)
class Pieces:
    """The tokenizer's view of a text: input ids (1, T), and for each piece the word it belongs to (None for
    special tokens and pieces outside any word)."""
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    tokens: list[str]
    word_of_piece: list[int | None]
    truncated: bool


class ExplainModel:
    """A model to explain. batch_size: texts per forward pass when scoring perturbations. max_length: longest
    input in tokens (default: the tokenizer's model_max_length, capped at 512)."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, task: str = "classification",
                 label_names: Sequence[str] | None = None, *, batch_size: int = 64,
                 max_length: int | None = None, device: str | torch.device | None = None) -> None:
        if task not in TASKS:
            raise ExplainError(f"task={task!r} is not one of {', '.join(TASKS)}")
        self.model, self.tokenizer, self.task = model, tokenizer, task
        if label_names is None and task != "causal-lm":
            id2label = getattr(model.config, "id2label", None) or {}
            label_names = [id2label[i] for i in sorted(id2label)]
        self.label_names = list(label_names or [])
        self.batch_size = int(batch_size)
        limit = getattr(tokenizer, "model_max_length", 512) or 512
        positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if isinstance(positions, int) and positions > 0:  # tiny presets have 128 positions, their tokenizer 512
            limit = min(limit, positions)
        self.max_length = int(max_length or min(limit, 512))
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        # A masked word becomes the model's mask token where it has one (what it saw in pretraining).
        self.mask_word = getattr(tokenizer, "mask_token", None) or getattr(tokenizer, "unk_token", None) or "..."

    # ---- construction ----
    @classmethod
    def from_run(cls, run: Any, **options: Any) -> "ExplainModel":
        """The model being trained (unwrapped from DDP); explaining leaves it in the mode it found it in."""
        model = run.accelerator.unwrap_model(run.model) if hasattr(run, "accelerator") else run.model
        return cls(model, run.tokenizer, run.cfg.task, run.data.label_names, **options)

    @classmethod
    def from_pretrained(cls, directory: str | Path, task: str = "classification", **options: Any) -> "ExplainModel":
        """A model saved with `run.save_pretrained` (safetensors; remote code is never run)."""
        from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,
                                  AutoModelForTokenClassification, AutoTokenizer)
        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise ExplainError(f"{directory} has no config.json: pass a directory written by run.save_pretrained")
        auto = {"classification": AutoModelForSequenceClassification,
                "token-classification": AutoModelForTokenClassification, "causal-lm": AutoModelForCausalLM}[task]
        model = auto.from_pretrained(directory, trust_remote_code=False, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return cls(model.eval(), tokenizer, task, **options)

    # ---- targets ----
    def target(self, text: str, target: "int | str | Target | None" = None, *, word: int | None = None,
               continuation: str | None = None) -> Target:
        """Resolve what to explain. target: a class index or label name; None means the predicted class (for
        token-classification, at `word`). causal-lm: `continuation` (default: the greedy next token)."""
        if isinstance(target, Target):
            return target
        words = split_words(text)
        if not words.words:
            raise ExplainError("the text has no words to explain")
        if self.task == "causal-lm":
            if continuation is None:
                continuation = self._greedy_next(text)
            if not continuation:
                raise ExplainError("the continuation is empty")
            return Target(self.task, None, continuation, continuation=continuation)
        if self.task == "token-classification":
            if word is None:
                raise ExplainError(f"token-classification explains one word: pass word=<0..{len(words) - 1}>")
            if not 0 <= word < len(words):
                raise ExplainError(f"word={word} is outside the text's {len(words)} words")
        if target is None:
            probs = self._probabilities([text], word)[0]
            index = int(np.argmax(probs))
        else:
            index = self._label_index(target)
        return Target(self.task, index, self.label_names[index], word=word)

    def _label_index(self, target: int | str) -> int:
        if isinstance(target, (int, np.integer)):
            if not 0 <= int(target) < len(self.label_names):
                raise ExplainError(f"target={target} is outside 0..{len(self.label_names) - 1}")
            return int(target)
        if target in self.label_names:
            return self.label_names.index(target)
        close = difflib.get_close_matches(str(target), self.label_names, n=1)
        raise ExplainError(f"target {target!r} is not a label of this model" + (f"; did you mean {close[0]!r}?"
                                                                              if close else "")
                           + f" (labels: {', '.join(map(repr, self.label_names))})")

    # ---- scoring (no gradients) ----
    def score_texts(self, texts: Sequence[str], target: Target) -> np.ndarray:
        """(N,) the target's score on each text, in batches of `batch_size`."""
        texts = list(texts)
        if target.task == "causal-lm":
            return np.concatenate([self._continuation_logprob(texts[i:i + self.batch_size], target.continuation)
                                   for i in range(0, len(texts), self.batch_size)]) if texts else np.zeros(0)
        return self._probabilities(texts, target.word)[:, target.index]

    def probabilities(self, texts: Sequence[str], word: int | None = None) -> np.ndarray:
        """(N, C) class probabilities of each text (token-classification: at word `word`)."""
        if self.task == "causal-lm":
            raise ExplainError("a causal LM has no classes; use score_texts with a continuation target")
        return self._probabilities(list(texts), word)

    def _probabilities(self, texts: list[str], word: int | None) -> np.ndarray:
        out = []
        for i in range(0, len(texts), self.batch_size):
            chunk = texts[i:i + self.batch_size]
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt", return_offsets_mapping=self.task == "token-classification")
            offsets = enc.pop("offset_mapping", None)
            with self._eval():
                logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits.float()
            probs = torch.softmax(logits, dim=-1)
            if self.task == "token-classification":  # (B, T, C): the first piece of the word
                rows = []
                for b, text in enumerate(chunk):
                    piece = _first_piece_of_word(offsets[b].tolist(), split_words(text), word)
                    rows.append(probs[b, piece] if piece is not None else torch.full_like(probs[b, 0], float("nan")))
                probs = torch.stack(rows)
            out.append(probs.cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.label_names)))

    def _continuation_logprob(self, texts: list[str], continuation: str) -> np.ndarray:
        cont = self.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        scores = []
        with self._eval():
            for text in texts:  # prompts differ in length; one at a time keeps the positions exact
                prompt = self.tokenizer(text)["input_ids"][-(self.max_length - len(cont)):]
                ids = torch.tensor([prompt + cont], device=self.device)
                logp = torch.log_softmax(self.model(input_ids=ids).logits.float()[0], dim=-1)  # (T, V)
                at = torch.arange(len(prompt) - 1, len(prompt) + len(cont) - 1, device=self.device)
                scores.append(float(logp[at, torch.tensor(cont, device=self.device)].sum()))
        return np.asarray(scores)

    def _greedy_next(self, text: str) -> str:
        ids = torch.tensor([self.tokenizer(text)["input_ids"][-self.max_length:]], device=self.device)
        with self._eval():
            nxt = int(self.model(input_ids=ids).logits[0, -1].argmax())
        return self.tokenizer.decode([nxt])

    # ---- pieces (IG, attention) ----
    def pieces(self, text: str, words: Words | None = None, max_length: int | None = None) -> Pieces:
        """Tokenize one text, mapping each piece to its word by character offsets (needs a fast tokenizer)."""
        words = words or split_words(text)
        limit = max_length or self.max_length
        enc = self.tokenizer(text, return_offsets_mapping=True, truncation=True, max_length=limit,
                             return_tensors="pt")
        full = len(self.tokenizer(text)["input_ids"])
        offsets = enc.pop("offset_mapping")[0].tolist()
        word_of = []
        for start, end in offsets:
            word_of.append(None if end <= start else _word_at(words, start, end))
        tokens = self.tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
        return Pieces(enc["input_ids"], enc["attention_mask"], tokens, word_of, full > limit)

    def _eval(self):
        return _EvalMode(self.model)


class _EvalMode:
    """Eval mode and no_grad for the duration; the model's training flag is restored afterwards (explaining a
    run mid-training must not switch its dropout off)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.was_training = model, model.training
        self.no_grad = torch.no_grad()

    def __enter__(self):
        self.model.eval()
        self.no_grad.__enter__()
        return self

    def __exit__(self, *exc):
        self.no_grad.__exit__(*exc)
        self.model.train(self.was_training)
        return False


def _word_at(words: Words, start: int, end: int) -> int | None:
    for i, (ws, we) in enumerate(words.spans):
        if ws <= start < we or (start < we and end > ws):
            return i
    return None


def _first_piece_of_word(offsets: list, words: Words, word: int | None) -> int | None:
    """The index of the first piece of word `word`, from the pieces' character offsets (None when the word was
    truncated away or the text has fewer words)."""
    if word is None or word >= len(words):
        return None
    ws, we = words.spans[word]
    for t, (start, end) in enumerate(offsets):
        if end > start and ws <= start < we:
            return t
    return None
