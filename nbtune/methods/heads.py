"""Custom task heads over any encoder: a BiLSTM+CRF tagger (pytorch-crf, Viterbi decoding) and an MLP head.

``prepare`` keeps the encoder of the task model the engine built (``model.base_model``), drops its linear
head and returns a :class:`HeadModel`: encoder + ``classifier`` (the new head). The head is named like the
Hugging Face heads, so layer_lr's "head" group and unfreeze's top block find it.

- ``head="bilstm_crf"`` (token-classification): the encoder states of the labelled positions (each word's
  first sub-token, where labels != -100) are packed per row, in order, and read by a BiLSTM at word level;
  a linear layer gives emissions and a CRF scores whole tag paths. The loss is the CRF's negative
  log-likelihood per labelled token; in eval mode ``.predictions`` holds the Viterbi path (-100 elsewhere).
  Without labels, the positions are ``label_mask`` when given (see :func:`word_start_mask`), else every
  attended position, special tokens included.
- ``head="mlp"`` (classification, token-classification): dropout, Linear, GELU, repeated `mlp_layers`
  times, then a linear layer to the labels. Classification pools the encoder states (`pooling`: mean over
  attended tokens, the first attended token, or the last one, which suits decoders); the encoder's own
  pooler, if it has one, is unused and frozen.

``loss_weight`` multiplies the head's loss in training (through the loss context's task weight); evaluation
reports the plain loss. ``Run.save_pretrained`` works: the encoder in Hugging Face format plus head.json and
head.safetensors; :func:`load_pretrained` rebuilds the whole model.

    >>> Heads(head="mlp", mlp_hidden=64).options()
    {'head': 'mlp', 'mlp_hidden': 64, 'mlp_layers': 1, 'pooling': 'mean', 'dropout': 0.1}
    >>> Heads(head="bilstm-crf")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    nbtune.methods.base.MethodError: heads: head must be one of ('bilstm_crf', 'mlp'), ... Did you mean 'bilstm_crf'?
"""
from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torchcrf import CRF
from transformers.utils import ModelOutput

from nbtune.methods import register
from nbtune.methods.base import LossContext, Method, MethodError

IGNORE = -100
TASKS = {"bilstm_crf": ("token-classification",), "mlp": ("classification", "token-classification")}
OWN_OPTIONS = {"bilstm_crf": {"lstm_hidden": 128, "lstm_layers": 1},
               "mlp": {"mlp_hidden": 256, "mlp_layers": 1, "pooling": "mean"}}
POOLINGS = ("mean", "first", "last")


@dataclass
class HeadOutput(ModelOutput):
    loss: torch.Tensor | None = None          # ()
    logits: torch.Tensor | None = None        # (B, C) or (B, T, C); the CRF's emissions at labelled positions
    predictions: torch.Tensor | None = None   # (B, T) Viterbi tags, -100 off the decoded positions (CRF, eval)


def _compact(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) bool -> positions (B, L) of the True entries first, in order, and keep (B, L): slot < count."""
    counts = mask.sum(1)
    width = int(counts.max()) if mask.numel() else 0
    positions = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :width]
    keep = torch.arange(width, device=mask.device) < counts[:, None]
    return positions, keep


class BiLSTMCRFHead(nn.Module):
    """Word-level BiLSTM over the labelled positions, linear emissions, CRF over the tag paths."""

    def __init__(self, hidden_size: int, num_labels: int, lstm_hidden: int, lstm_layers: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(hidden_size, lstm_hidden, num_layers=lstm_layers, batch_first=True,
                            bidirectional=True, dropout=dropout if lstm_layers > 1 else 0.0)
        self.proj = nn.Linear(2 * lstm_hidden, num_labels)
        self.crf = CRF(num_labels, batch_first=True)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None,
                label_mask: torch.Tensor | None) -> HeadOutput:
        b, t, _ = hidden.shape
        c = self.proj.out_features
        if labels is not None:
            mask = labels != IGNORE
        else:
            mask = (label_mask if label_mask is not None else attention_mask).bool()
        rows = mask.any(1)  # a row with no position to tag takes no part (the CRF needs one per row)
        logits = hidden.new_zeros(b, t, c, dtype=torch.float32)
        predictions = None if self.training else torch.full((b, t), IGNORE, dtype=torch.long, device=hidden.device)
        if not bool(rows.any()):
            return HeadOutput(loss=None if labels is None else hidden.sum() * 0, logits=logits, predictions=predictions)
        positions, keep = _compact(mask[rows])                                    # (b', L)
        words = hidden[rows].gather(1, positions[..., None].expand(-1, -1, hidden.shape[-1]))  # (b', L, H)
        lengths = keep.sum(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.dropout(words), lengths, batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=keep.shape[1])
        emissions = self.proj(self.dropout(out)).float()                          # (b', L, C)
        logits[rows] = logits[rows].scatter(1, positions[..., None].expand(-1, -1, c), emissions * keep[..., None])
        loss = None
        if labels is not None:
            tags = labels[rows].gather(1, positions).where(keep, 0)                # masked slots need a valid id
            loss = -self.crf(emissions, tags, keep, reduction="token_mean")
        if predictions is not None:
            paths = torch.zeros_like(positions)
            for i, path in enumerate(self.crf.decode(emissions, keep)):
                paths[i, :len(path)] = torch.tensor(path, device=paths.device)
            predictions[rows] = predictions[rows].scatter(1, positions, paths.where(keep, IGNORE))
        return HeadOutput(loss=loss, logits=logits, predictions=predictions)


class MLPHead(nn.Module):
    """(Dropout, Linear, GELU) x layers, then Linear to the labels; pools first for sequence classification."""

    def __init__(self, hidden_size: int, num_labels: int, mlp_hidden: int, mlp_layers: int, dropout: float,
                 pooling: str, per_token: bool):
        super().__init__()
        parts: list[nn.Module] = []
        width = hidden_size
        for _ in range(mlp_layers):
            parts += [nn.Dropout(dropout), nn.Linear(width, mlp_hidden), nn.GELU()]
            width = mlp_hidden
        self.mlp = nn.Sequential(*parts, nn.Dropout(dropout), nn.Linear(width, num_labels))
        self.pooling, self.per_token = pooling, per_token

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, H) -> (B, H); first/last find the attended span, so either padding side works."""
        mask = attention_mask.bool()
        if self.pooling == "mean":
            m = mask[..., None].to(hidden.dtype)
            return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        index = mask.int().argmax(1) if self.pooling == "first" else mask.shape[1] - 1 - mask.flip(1).int().argmax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None,
                label_mask: torch.Tensor | None = None) -> HeadOutput:
        logits = self.mlp(hidden if self.per_token else self.pool(hidden, attention_mask))  # (B, T, C) or (B, C)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.float().flatten(0, -2), labels.flatten(), ignore_index=IGNORE)
        return HeadOutput(loss=loss, logits=logits)


def build_head(spec: dict) -> nn.Module:
    """The head module described by a HeadModel's ``spec`` (what head.json stores)."""
    if spec["head"] == "bilstm_crf":
        return BiLSTMCRFHead(spec["hidden_size"], spec["num_labels"], spec["lstm_hidden"], spec["lstm_layers"],
                             spec["dropout"])
    return MLPHead(spec["hidden_size"], spec["num_labels"], spec["mlp_hidden"], spec["mlp_layers"], spec["dropout"],
                   spec["pooling"], per_token=spec["task"] == "token-classification")


class HeadModel(nn.Module):
    """An encoder with a custom head: forward(input_ids, attention_mask, labels=None, label_mask=None, **kw)
    returns a HeadOutput (.loss, .logits and, for the CRF in eval mode, .predictions)."""

    def __init__(self, encoder: nn.Module, spec: dict, config: Any = None):
        super().__init__()
        self.encoder = encoder
        self.classifier = build_head(spec)
        self.spec = dict(spec)
        self.config = config if config is not None else getattr(encoder, "config", None)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, label_mask: torch.Tensor | None = None, **kw: Any) -> HeadOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state  # (B, T, H)
        return self.classifier(hidden, attention_mask, labels, label_mask)

    def get_input_embeddings(self) -> nn.Module:
        return self.encoder.get_input_embeddings()

    def save_pretrained(self, directory: str | Path, **kw: Any) -> None:
        """The encoder in Hugging Face format (AutoModel.from_pretrained loads it), the head's weights in
        head.safetensors and its description in head.json; load_pretrained(directory) rebuilds this model."""
        from safetensors.torch import save_model
        directory = Path(directory)
        self.encoder.save_pretrained(directory, **kw)
        save_model(self.classifier, str(directory / "head.safetensors"))
        (directory / "head.json").write_text(json.dumps(self.spec, indent=1), encoding="utf-8")


def load_pretrained(directory: str | Path, **kw: Any) -> HeadModel:
    """A HeadModel saved by ``save_pretrained`` (``Run.save_pretrained`` of a run with the heads method)."""
    from safetensors.torch import load_model
    from transformers import AutoModel
    directory = Path(directory)
    if not (directory / "head.json").is_file():
        raise FileNotFoundError(f"{directory}: no head.json; this is not a model saved with the heads method")
    model = HeadModel(AutoModel.from_pretrained(directory, **kw), json.loads((directory / "head.json").read_text()))
    load_model(model.classifier, str(directory / "head.safetensors"), strict=True)
    return model


def word_start_mask(encoding: Any) -> torch.Tensor:
    """(B, T) bool, True at each word's first sub-token, from a fast tokenizer's output: the ``label_mask``
    that makes the CRF decode the positions it was trained on when there are no labels."""
    rows = []
    for i in range(len(encoding["input_ids"])):
        word_ids, previous, row = encoding.word_ids(i), None, []
        for w in word_ids:
            row.append(w is not None and w != previous)
            previous = w
        rows.append(row)
    return torch.tensor(rows, dtype=torch.bool)


def _whole(option: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise MethodError(f"heads: {option} must be a whole number >= 1, got {value!r}")


@register
@dataclass
class Heads(Method):
    """Args: head ("bilstm_crf" | "mlp"); for bilstm_crf: lstm_hidden (per direction, default 128),
    lstm_layers (1); for mlp: mlp_hidden (256), mlp_layers (hidden layers, 1), pooling ("mean" | "first" |
    "last", classification only); dropout (0.1); loss_weight (multiplies the head's training loss, 1.0)."""

    name: ClassVar[str] = "heads"
    wraps_model: ClassVar[bool] = True
    head: str = "bilstm_crf"
    lstm_hidden: int | None = None
    lstm_layers: int | None = None
    mlp_hidden: int | None = None
    mlp_layers: int | None = None
    pooling: str | None = None
    dropout: float = 0.1
    loss_weight: float = 1.0
    spec: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.head not in TASKS:
            close = difflib.get_close_matches(str(self.head), list(TASKS), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise MethodError(f"heads: head must be one of {tuple(TASKS)}, got {self.head!r}.{hint}")
        for other, options in OWN_OPTIONS.items():
            given = [o for o in options if other != self.head and getattr(self, o) is not None]
            if given:
                raise MethodError(f"heads: option(s) {given} apply to head={other!r}, not head={self.head!r}")
        for option, default in OWN_OPTIONS[self.head].items():
            if getattr(self, option) is None:
                setattr(self, option, default)
            elif option != "pooling":
                _whole(option, getattr(self, option))
        if self.head == "mlp" and self.pooling not in POOLINGS:
            raise MethodError(f"heads: pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise MethodError(f"heads: dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.loss_weight, (int, float)) or not (math.isfinite(self.loss_weight)
                                                                  and self.loss_weight > 0):
            raise MethodError(f"heads: loss_weight must be a finite number > 0, got {self.loss_weight!r}")

    def options(self) -> dict[str, Any]:
        """The options that shape this head (defaults filled in)."""
        return {"head": self.head, **{o: getattr(self, o) for o in OWN_OPTIONS[self.head]}, "dropout": self.dropout}

    def prepare(self, model: Any, cfg: Any) -> HeadModel:
        if cfg.task not in TASKS[self.head]:
            raise MethodError(f"heads: head={self.head!r} is for task {' or '.join(TASKS[self.head])}, "
                              f"not task={cfg.task!r}")
        if isinstance(model, HeadModel):
            raise MethodError("heads: the model already has a custom head; list the heads method once")
        from transformers import PreTrainedModel
        encoder = getattr(model, "base_model", None)
        if not isinstance(model, PreTrainedModel) or not isinstance(encoder, nn.Module) or encoder is model:
            raise MethodError(f"heads: expected a transformers task model with an encoder (.base_model), "
                              f"got {type(model).__name__}; list heads before methods that wrap the model")
        config = model.config
        hidden_size = getattr(config, "hidden_size", None) or encoder.get_input_embeddings().embedding_dim
        self.spec = {**self.options(), "task": cfg.task, "hidden_size": int(hidden_size),
                     "num_labels": int(config.num_labels)}
        pooler = getattr(encoder, "pooler", None)
        if isinstance(pooler, nn.Module):  # the head pools itself; an unused trainable pooler would break DDP
            pooler.requires_grad_(False)
        return HeadModel(encoder, self.spec, config)

    def loss_terms(self, batch: dict, outputs: Any, ctx: LossContext) -> dict[str, Any]:
        ctx.task_weight *= self.loss_weight
        return {}
