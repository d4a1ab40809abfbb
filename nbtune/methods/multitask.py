"""Several task heads on one encoder, with PCGrad (gradient projection) or GradNorm (adaptive loss weights).

A multi-task dataset is a classification dataset whose label names are "task:label" ("intent:HassTurnOn",
"sentiment:positive"; build one with nbtune.methods.multitask_data.combine_tasks). ``prepare`` swaps the
model's single head for one head per task on the shared encoder. Each row is scored by its own task's head:
during training and evaluation the row's task comes from its label, and ``out.logits`` spans the full label
space with the other tasks' columns set to -1e4, so the engine's argmax accuracy stays inside the row's task.
At inference (no labels) ``out.logits`` holds each task's log-probabilities side by side, and
``out.task_logits[task]`` gives one task's scores: take the argmax within the task you want.

The objective is the sum of the per-task mean losses (``balance="sum"``); ``"pcgrad"`` (Yu et al. 2020)
removes from each task's encoder gradient its component along any other task's gradient it conflicts with;
``"gradnorm"`` (Chen et al. 2018) learns task weights that equalise the gradient norms at the last shared
layer, scaled by each task's relative training rate. Logged per step: "multitask/conflict" (share of
micro-batches where two task gradients have negative cosine), "multitask/cosine" (the smallest pairwise
cosine), "multitask/weight/<task>" and "multitask/loss/<task>"; the step loss is the weighted objective and
"loss/task" the engine's per-row mean. Costs: measuring conflicts or PCGrad takes one extra backward pass per
task (torch.autograd.grad over the encoder); GradNorm alone only goes back to the last shared layer.

    >>> parse_tasks(["intent:HassTurnOn", "sentiment:neg", "intent:HassTurnOff"])
    {'intent': [0, 2], 'sentiment': [1]}
    >>> pcgrad(torch.tensor([[1.0, 0.0], [-1.0, 1.0]]), [[1], [0]]).tolist()
    [0.5, 1.5]
"""
from __future__ import annotations

import difflib
import inspect
import math
import random
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from nbtune.methods import register
from nbtune.methods.base import LossContext, Method, MethodError
from nbtune.methods.layer_lr import LAYER_INDEX

BALANCES = ("sum", "pcgrad", "gradnorm")
POOLINGS = ("auto", "pooler", "mean", "first", "last")
LOW = -1e4            # other tasks' columns: far below any real logit, still finite in fp16 and bf16
IGNORE = -100
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


def parse_tasks(label_names: list[str]) -> dict[str, list[int]]:
    """task -> its label ids (in label-id order), tasks in order of first appearance; "task:label" names only."""
    bare = [n for n in label_names if ":" not in str(n) or not str(n).split(":", 1)[0]]
    if bare:
        raise MethodError(f"multitask: labels must be named 'task:label' (e.g. 'intent:HassTurnOn'); found "
                          f"{len(bare)} without a task prefix, e.g. {bare[:3]}. Build the dataset with "
                          f"nbtune.methods.multitask_data.combine_tasks")
    tasks: dict[str, list[int]] = {}
    for i, n in enumerate(label_names):
        tasks.setdefault(str(n).split(":", 1)[0], []).append(i)
    bad = [t for t in tasks if "." in t]
    if bad:
        raise MethodError(f"multitask: task names may not contain '.', got {bad}")
    if len(tasks) < 2:
        raise MethodError(f"multitask: the labels name one task ({next(iter(tasks))!r}); it needs two or more")
    return tasks


def pcgrad(grads: torch.Tensor, orders: list[list[int]]) -> torch.Tensor:
    """Each task's gradient (a row of `grads`, (T, P)) minus its projection on every other task's gradient it
    conflicts with (negative dot product), taken in `orders[i]`; returns the sum of the projected rows, (P,)."""
    norms2 = grads.pow(2).sum(-1).clamp_min(1e-20)                  # (T,)
    total = torch.zeros_like(grads[0])
    for i, order in enumerate(orders):
        g = grads[i]
        for j in order:
            # min(dot, 0): no projection when they agree, and no host sync to decide it
            g = g - (g @ grads[j]).clamp(max=0) / norms2[j] * grads[j]
        total = total + g
    return total


@dataclass
class MultiTaskOutput:
    loss: torch.Tensor | None           # mean cross-entropy per row, within the row's task
    logits: torch.Tensor                # (B, L): see the module docstring
    task_logits: dict[str, torch.Tensor]
    task_losses: dict[str, torch.Tensor] = field(default_factory=dict)   # mean loss of each task's rows (0 if none)
    task_counts: torch.Tensor | None = None                              # (T,) rows of each task in the batch


class MultiTaskModel(nn.Module):
    """The encoder of a sequence-classification model with one linear head per task (``classifier.<task>``)."""

    def __init__(self, model: nn.Module, tasks: dict[str, list[int]], pooling: str) -> None:
        super().__init__()
        self.config = model.config
        prefix = model.base_model_prefix
        # Keep the original parameter names ("bert.encoder.layer.0..."), unless they clash with ours.
        self.encoder_name = prefix if prefix not in ("encoder", "classifier", "dropout", "config") else "base"
        self.add_module(self.encoder_name, model.base_model)
        drop = getattr(model, "dropout", None)
        self.dropout = drop if isinstance(drop, nn.Dropout) else nn.Identity()
        self.classifier = nn.ModuleDict({t: _task_head(model, ids) for t, ids in tasks.items()})
        self.tasks = list(tasks)
        self.pooling = pooling
        self._no_cache = "use_cache" in inspect.signature(self.encoder.forward).parameters
        names = [model.config.id2label[i] for i in range(len(model.config.id2label))]
        self.task_labels = {t: [names[i].split(":", 1)[1] for i in ids] for t, ids in tasks.items()}
        n = len(names)
        label_task, label_local, column = torch.empty(n, dtype=torch.long), torch.empty(n, dtype=torch.long), \
            torch.empty(n, dtype=torch.long)
        position = 0
        for k, ids in enumerate(tasks.values()):
            for j, i in enumerate(ids):
                label_task[i], label_local[i], column[i] = k, j, position
                position += 1
        # Lookups, not weights: kept out of the checkpoint.
        self.register_buffer("label_task", label_task, persistent=False)
        self.register_buffer("label_local", label_local, persistent=False)
        self.register_buffer("column", column, persistent=False)   # label id -> column of the heads' concat

    @property
    def encoder(self) -> nn.Module:
        return getattr(self, self.encoder_name)

    def _pool(self, out: Any, mask: torch.Tensor) -> torch.Tensor:
        hidden = out.last_hidden_state                              # (B, T, H)
        if self.pooling == "pooler":
            return out.pooler_output
        if self.pooling == "first":
            return hidden[:, 0]
        if self.pooling == "mean":
            m = mask.unsqueeze(-1).to(hidden.dtype)
            return (hidden * m).sum(1) / m.sum(1).clamp_min(1)
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (positions * mask).argmax(-1)                        # rightmost real token, either padding side
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs: Any) -> MultiTaskOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if self._no_cache:
            kwargs.setdefault("use_cache", False)
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        pooled = self.dropout(self._pool(out, attention_mask))     # (B, H)
        blocks = [self.classifier[t](pooled).float() for t in self.tasks]   # (B, n_t) each
        task_logits = dict(zip(self.tasks, blocks))
        if labels is None:
            logits = torch.cat([b.log_softmax(-1) for b in blocks], -1)[:, self.column]
            return MultiTaskOutput(None, logits, task_logits)
        row_task, local = self.label_task[labels], self.label_local[labels]     # (B,)
        losses, counts, row_loss = {}, [], torch.zeros_like(blocks[0][:, 0])
        for k, t in enumerate(self.tasks):
            mine = row_task == k
            ce = nn.functional.cross_entropy(blocks[k], torch.where(mine, local, IGNORE), reduction="none",
                                             ignore_index=IGNORE)  # (B,), 0 on other tasks' rows
            count = mine.sum()
            losses[t] = ce.sum() / count.clamp_min(1)
            counts.append(count)
            row_loss = row_loss + ce
        full = torch.cat(blocks, -1)[:, self.column]                   # (B, L)
        logits = full.masked_fill(self.label_task[None, :] != row_task[:, None], LOW)
        return MultiTaskOutput(row_loss.mean(), logits, task_logits, losses, torch.stack(counts))


def _task_head(model: nn.Module, ids: list[int]) -> nn.Linear:
    """A head for one task: the rows of the model's own (freshly initialised) head for that task's labels,
    so the starting point follows the model's init; a new normal-initialised layer for other head types."""
    old = next((m for m in (getattr(model, "classifier", None), getattr(model, "score", None))
                if isinstance(m, nn.Linear)), None)
    if old is not None:
        head = nn.Linear(old.in_features, len(ids), bias=old.bias is not None, device=old.weight.device,
                         dtype=old.weight.dtype)
        with torch.no_grad():
            head.weight.copy_(old.weight[ids])
            if old.bias is not None:
                head.bias.copy_(old.bias[ids])
        return head
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    head = nn.Linear(cfg.hidden_size, len(ids))
    nn.init.normal_(head.weight, std=getattr(cfg, "initializer_range", 0.02))
    nn.init.zeros_(head.bias)
    return head


@register
@dataclass
class MultiTask(Method):
    """Args:
        balance: "sum" (plain sum of task losses), "pcgrad" (project conflicting task gradients) or
            "gradnorm" (learned task weights).
        measure_conflicts: log the conflict figures every micro-batch (costs one backward per task).
        gradnorm_alpha: GradNorm's asymmetry (default 1.5; 0 equalises gradient norms only).
        gradnorm_lr: learning rate of the task weights' own Adam (default 0.025).
        pooling: "auto" (the model's pooler when it has one, else the last real token), "pooler", "mean",
            "first" or "last".
    """

    name: ClassVar[str] = "multitask"
    wraps_model: ClassVar[bool] = True
    balance: str = "sum"
    measure_conflicts: bool = True
    gradnorm_alpha: float | None = None
    gradnorm_lr: float | None = None
    pooling: str = "auto"
    _model: MultiTaskModel | None = field(default=None, repr=False)
    _seed: int = field(default=0, repr=False)
    _gn: dict[str, Any] = field(default_factory=dict, repr=False)  # GradNorm: weights, initial losses, Adam moments

    def __post_init__(self) -> None:
        for option, value, valid in (("balance", self.balance, BALANCES), ("pooling", self.pooling, POOLINGS)):
            if value not in valid:
                close = difflib.get_close_matches(str(value), valid, n=1)
                hint = f" Did you mean '{close[0]}'?" if close else ""
                raise MethodError(f"multitask: {option} must be one of {valid}, got {value!r}.{hint}")
        if not isinstance(self.measure_conflicts, bool):
            raise MethodError(f"multitask: measure_conflicts must be true or false, got {self.measure_conflicts!r}")
        given = [o for o in ("gradnorm_alpha", "gradnorm_lr") if getattr(self, o) is not None]
        if given and self.balance != "gradnorm":
            raise MethodError(f"multitask: {', '.join(given)} only apply with balance='gradnorm' "
                              f"(balance is {self.balance!r})")
        alpha, lr = self.alpha, self.lr
        if not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
            raise MethodError(f"multitask: gradnorm_alpha must be a number >= 0, got {alpha!r}")
        if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise MethodError(f"multitask: gradnorm_lr must be a number > 0, got {lr!r}")

    @property
    def alpha(self) -> float:
        return 1.5 if self.gradnorm_alpha is None else self.gradnorm_alpha

    @property
    def lr(self) -> float:
        return 0.025 if self.gradnorm_lr is None else self.gradnorm_lr

    def prepare(self, model: Any, cfg: Any) -> MultiTaskModel:
        if cfg.task != "classification":
            raise MethodError(f"multitask: needs task=classification with 'task:label' labels, got task={cfg.task!r}")
        if cfg.train.class_weights is not None:
            raise MethodError("multitask: train.class_weights is not supported (the heads compute their own "
                              "losses); use null, or balance the tasks with balance='gradnorm'")
        base = getattr(model, "base_model", None)
        if base is None or base is model or not getattr(model.config, "id2label", None):
            raise MethodError(f"multitask: {type(model).__name__} has no separate encoder (base_model) and "
                              f"label names to split into task heads")
        tasks = parse_tasks([model.config.id2label[i] for i in range(len(model.config.id2label))])
        pooling = self.pooling
        has_pooler = isinstance(getattr(base, "pooler", None), nn.Module)
        if pooling == "auto":
            pooling = "pooler" if has_pooler else "last"
        if pooling == "pooler" and not has_pooler:
            raise MethodError(f"multitask: pooling='pooler' but {type(base).__name__} has no pooler; "
                              f"use 'mean', 'first' or 'last'")
        if has_pooler and pooling != "pooler":
            base.pooler.requires_grad_(False)  # computed but unused: it would never receive a gradient
        self._model, self._seed, n = MultiTaskModel(model, tasks, pooling), int(cfg.train.seed), len(tasks)
        if self.balance == "gradnorm":
            self._gn = {"weights": torch.ones(n), "initial": torch.full((n,), math.nan), "m": torch.zeros(n),
                        "v": torch.zeros(n), "updates": 0}
        return self._model

    def task_weights(self) -> dict[str, float]:
        """The current loss weight of each task: all 1.0 unless balance='gradnorm'."""
        weights = self._gn["weights"].tolist() if self._gn else [1.0] * len(self._model.tasks)
        return dict(zip(self._model.tasks, weights))

    def loss_terms(self, batch: dict, outputs: Any, ctx: LossContext) -> dict[str, Any]:
        model, tasks = self._model, self._model.tasks
        losses = torch.stack([outputs.task_losses[t] for t in tasks])  # (T,)
        present = [k for k, c in enumerate(outputs.task_counts.tolist()) if c > 0]
        self._gn = {k: v.to(losses.device) if torch.is_tensor(v) else v for k, v in self._gn.items()}
        w = self._gn["weights"] if self._gn else torch.ones_like(losses)
        for k, t in enumerate(tasks):
            ctx.log(f"multitask/weight/{t}", w[k])
            if k in present:
                ctx.log(f"multitask/loss/{t}", losses[k].detach())
        shared = [p for p in model.encoder.parameters() if p.requires_grad]
        several = len(present) >= 2 and bool(shared)
        grads = None
        if several and (self.measure_conflicts or self.balance == "pcgrad"):
            grads = _flat_grads([losses[k] for k in present], shared)     # (P, N)
        if self.measure_conflicts:  # one task in the micro-batch: nothing can conflict
            conflict, cosine = _conflict(grads) if grads is not None else (0.0, None)
            ctx.log("multitask/conflict", conflict)
            if cosine is not None:
                ctx.log("multitask/cosine", cosine)
        # Replaces the engine's per-row mean (a task absent from the micro-batch has loss 0), keeping any
        # weight an earlier method gave the task loss (distillation's 1 - alpha).
        objective, scale = (w * losses).sum() * ctx.task_weight, ctx.task_weight
        ctx.task_weight = 0.0
        if self.balance == "gradnorm" and several:
            self._gradnorm_step(losses, present, shared)
        if self.balance == "pcgrad" and several:
            order = random.Random(f"{self._seed}:{ctx.step}:{ctx.rows}")  # a pure function of the position
            orders = [order.sample([j for j in range(len(present)) if j != i], len(present) - 1)
                      for i in range(len(present))]
            return {"multitask": _with_gradient(objective, pcgrad(grads, orders) * scale, shared,
                                                [p for p in model.classifier.parameters() if p.requires_grad])}
        return {"multitask": objective}

    def _gradnorm_step(self, losses: torch.Tensor, present: list[int], shared: list[nn.Parameter]) -> None:
        """One Adam step on the task weights toward equal gradient norms at the last shared layer, scaled by
        (relative inverse training rate)^alpha; then the weights are renormalised to sum to the task count."""
        gn, idx = self._gn, torch.tensor(present, device=losses.device)
        last = _last_layer(self._model, shared)
        norms = torch.stack([torch.linalg.vector_norm(g) for g in _flat_grads([losses[k] for k in present], last)])
        loss = losses.detach()[idx].float()
        gn["initial"] = gn["initial"].index_copy(0, idx, torch.where(gn["initial"][idx].isnan(), loss,
                                                                      gn["initial"][idx]))
        ratio = loss / gn["initial"][idx].clamp_min(1e-12)
        rate = ratio / ratio.mean().clamp_min(1e-12)                  # r_i: > 1 for a task that learns slower
        norm_w = gn["weights"][idx] * norms                           # G_i = ||grad of w_i L_i||
        target = norm_w.mean() * rate ** self.alpha                   # a constant, as in the paper
        grad = torch.sign(norm_w - target) * norms                    # d/dw_i of sum |G_i - target_i|
        gn["updates"] += 1
        (b1, b2), step = ADAM_BETAS, gn["updates"]
        m = gn["m"].index_copy(0, idx, b1 * gn["m"][idx] + (1 - b1) * grad)
        v = gn["v"].index_copy(0, idx, b2 * gn["v"][idx] + (1 - b2) * grad * grad)
        update = self.lr * (m[idx] / (1 - b1 ** step)) / ((v[idx] / (1 - b2 ** step)).sqrt() + ADAM_EPS)
        weights = gn["weights"].index_copy(0, idx, (gn["weights"][idx] - update).clamp_min(1e-3))
        gn.update(m=m, v=v, weights=weights * len(weights) / weights.sum())

    def state_dict(self) -> dict[str, Any]:
        if not self._gn:
            return {}
        gn = self._gn
        return {"weights": gn["weights"].tolist(), "m": gn["m"].tolist(), "v": gn["v"].tolist(),
                "initial": [None if math.isnan(x) else x for x in gn["initial"].tolist()], "updates": gn["updates"]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        device = self._gn["weights"].device if self._gn else "cpu"
        self._gn = {k: torch.tensor(state[k], dtype=torch.float32, device=device) for k in ("weights", "m", "v")}
        self._gn["initial"] = torch.tensor([math.nan if x is None else x for x in state["initial"]],
                                           dtype=torch.float32, device=device)
        self._gn["updates"] = int(state["updates"])


def _flat_grads(losses: list[torch.Tensor], params: list[nn.Parameter]) -> torch.Tensor:
    """(len(losses), total size of params): each loss's gradient, flattened; the graph is kept for the engine."""
    rows = []
    for loss in losses:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                               for g, p in zip(grads, params)]))
    return torch.stack(rows)


def _conflict(grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1.0 when any two rows have negative cosine, else 0.0; and the smallest pairwise cosine."""
    unit = grads / torch.linalg.vector_norm(grads, dim=-1, keepdim=True).clamp_min(1e-20)
    cos = unit @ unit.T
    upper = torch.triu(torch.ones_like(cos, dtype=torch.bool), diagonal=1)
    smallest = cos[upper].min()
    return (smallest < 0).float(), smallest


def _last_layer(model: MultiTaskModel, shared: list[nn.Parameter]) -> list[nn.Parameter]:
    """The trainable parameters of the encoder's last numbered layer (all shared ones if it has none)."""
    trainable = {id(p) for p in shared}
    layers = [(int(m.group(1)), p) for n, p in model.encoder.named_parameters()
              if id(p) in trainable and (m := LAYER_INDEX.search(f".{n}"))]
    if not layers:
        return shared
    top = max(i for i, _ in layers)
    return [p for i, p in layers if i == top]


def _with_gradient(objective: torch.Tensor, shared_grad: torch.Tensor, shared: list[nn.Parameter],
                   heads: list[nn.Parameter]) -> torch.Tensor:
    """A term whose value is `objective` and whose gradient is `shared_grad` on the encoder and the objective's
    own gradient on the heads: sum(g.detach() * p) has gradient g with respect to p."""
    head_grads = torch.autograd.grad(objective, heads, retain_graph=True, allow_unused=True) if heads else []
    surrogate = objective.new_zeros(())
    for piece, p in zip(shared_grad.split([p.numel() for p in shared]), shared):
        surrogate = surrogate + (piece.view_as(p).to(p.dtype) * p).sum()
    for g, p in zip(head_grads, heads):
        if g is not None:
            surrogate = surrogate + (g.detach() * p).sum()
    return objective.detach() + (surrogate - surrogate.detach())
