"""Knowledge distillation: a frozen teacher's softened predictions teach the student being trained.

The loss is ``(1 - alpha) x task loss + alpha x T^2 x KL(softmax(teacher / T) || softmax(student / T))``, the KL
averaged per example (classification) or per labelled token (token-classification; causal-lm shifted by one
like the model's own loss). The guide's defaults: T = 2.0, alpha = 0.7.

The teacher lives on the method object, never inside the student: it is not saved in checkpoints, not in the
optimizer, and it stays in eval mode with gradients off. ``teacher`` may be
  - a bundled model name (a random-init preset such as ``tiny-bert`` is built for the student's labels and
    seeded with train.seed + 1: only useful in tests),
  - a directory written by ``Run.save_pretrained`` (or transformers' save_pretrained, tokenizer included),
  - an nbtune run directory (its newest complete checkpoint) or one checkpoint directory,
  - a hub id (needs a network or the HF cache).
Before training the teacher's tokenizer vocabulary and (for classification and tagging) its label names must
equal the student's; a mismatch is a MethodError that says what differs.

``cache_logits=True`` keeps each training row's teacher logits on the CPU, so from the second epoch on the
teacher is not run at all. Each row is scored alone and unpadded, which makes its logits a pure function of
the row: a resumed run (which starts with an empty cache) computes exactly the numbers the first one cached.
Memory is rows x tokens x classes (x vocabulary for causal-lm) x 4 bytes, so it suits classification best.

    >>> m = Distill(teacher="tiny-bert")          # the guide's T = 2.0, alpha = 0.7
    >>> (m.temperature, m.alpha, round(m.task_weight_factor, 2))
    (2.0, 0.7, 0.3)
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from nbtune.methods import register
from nbtune.methods.base import LossContext, Method, MethodError

IGNORE = -100
HEAD_SUFFIX = {"classification": "ForSequenceClassification", "token-classification": "ForTokenClassification",
               "causal-lm": "ForCausalLM"}


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, task: str,
            temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """T^2 x KL(teacher || student) of softened distributions, averaged over examples or labelled tokens.
    Returns (loss, agreement): the share of those positions where both argmaxes agree.

    >>> s, t = torch.zeros(2, 3), torch.zeros(2, 3)
    >>> kd_loss(s, t, torch.tensor([0, 1]), "classification", 2.0)[0].item()
    0.0
    """
    if task == "token-classification":
        keep = labels != IGNORE                                   # (B, T)
        student, teacher = student[keep], teacher[keep]           # (N, C)
    elif task == "causal-lm":
        keep = labels[:, 1:] != IGNORE                            # logits at t predict token t + 1
        student, teacher = student[:, :-1][keep], teacher[:, :-1][keep]   # (N, V)
    if student.shape[0] == 0:                                     # nothing labelled in this micro-batch
        return student.sum() * 0.0, torch.ones((), device=student.device)
    log_s = F.log_softmax(student.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher.float() / temperature, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)                  # (N,)
    agreement = (student.argmax(-1) == teacher.argmax(-1)).float().mean()
    return temperature ** 2 * kl.mean(), agreement


@register
@dataclass
class Distill(Method):
    """Args: teacher (see the module docstring), temperature T > 0 (softens both distributions), alpha in
    [0, 1] (weight of the distillation term; the task loss gets 1 - alpha), cache_logits (keep the teacher's
    logits per training row on the CPU: one teacher forward per row in all)."""

    name: ClassVar[str] = "distill"
    teacher: str = ""
    temperature: float = 2.0
    alpha: float = 0.7
    cache_logits: bool = False
    teacher_model: Any = field(default=None, init=False, repr=False)   # the teacher module, once prepared
    cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, str) or not self.teacher:
            raise MethodError("distill: 'teacher' is required: a bundled model name, a directory written by "
                              f"Run.save_pretrained, or an nbtune run directory; got {self.teacher!r}")
        if not isinstance(self.temperature, (int, float)) or not math.isfinite(self.temperature) \
                or self.temperature <= 0:
            raise MethodError(f"distill: temperature must be a number > 0 (the guide uses 2.0), got "
                              f"{self.temperature!r}")
        if not isinstance(self.alpha, (int, float)) or not 0.0 <= self.alpha <= 1.0:
            raise MethodError(f"distill: alpha must be in [0, 1] (the guide uses 0.7), got {self.alpha!r}")
        if not isinstance(self.cache_logits, bool):
            raise MethodError(f"distill: cache_logits must be true or false, got {self.cache_logits!r}")
        from nbtune import assets
        name = os.path.expanduser(self.teacher)
        if self.teacher not in assets.MODELS and not os.path.isdir(name) and not assets._HUB_ID.match(self.teacher):
            close = difflib.get_close_matches(self.teacher, list(assets.MODELS), n=1, cutoff=0.5)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise MethodError(f"distill: teacher {self.teacher!r} is not a bundled model, an existing directory "
                              f"or a hub id.{hint} Bundled: {', '.join(assets.MODELS)}")

    @property
    def task_weight_factor(self) -> float:
        return 1.0 - self.alpha

    # ---- prepare: load and check the teacher ----
    def prepare(self, model: Any, cfg: Any) -> None:
        from nbtune import assets
        from nbtune.engine import build
        tcfg, resolved, labels, checkpoint = _teacher_source(self.teacher, cfg)
        student_tok = build.load_tokenizer(cfg, assets.resolve_model(cfg.model.name))
        teacher_tok = build.load_tokenizer(tcfg, resolved)
        _check_vocab(teacher_tok.get_vocab(), student_tok.get_vocab(), self.teacher)
        if checkpoint is None and resolved.config is None:         # a saved model: its own head and labels
            labels = _saved_labels(resolved.path, cfg.task, self.teacher, tcfg.model.trust_remote_code)
        if cfg.task != "causal-lm":
            student_labels = _label_names(model.config)
            labels = student_labels if labels is None else labels    # a random preset gets the student's
            _check_labels(labels, student_labels, self.teacher)
        with torch.random.fork_rng(devices=[]):                      # the run's RNG stream stays untouched
            torch.manual_seed(cfg.train.seed + 1)                    # a preset teacher differs from its student
            teacher = build.build_model(tcfg, resolved, labels or [], teacher_tok)
        device = next(model.parameters()).device
        if checkpoint is not None:
            teacher = _load_checkpoint(teacher, tcfg, checkpoint, device)
        if cfg.task == "causal-lm" and teacher.config.vocab_size != model.config.vocab_size:
            raise MethodError(f"distill: teacher {self.teacher!r} predicts {teacher.config.vocab_size} tokens, "
                              f"the student {model.config.vocab_size}; their logits cannot be compared")
        teacher.to(device).eval()
        teacher.requires_grad_(False)
        self.teacher_model, self.cache = teacher, {}

    # ---- loss ----
    def loss_terms(self, batch: dict, outputs: Any, ctx: LossContext) -> dict[str, Any]:
        student = outputs.logits
        teacher = self._teacher_logits(batch, ctx.rows, ctx.task)
        if teacher.shape != student.shape:
            raise MethodError(f"distill: teacher logits {tuple(teacher.shape)} do not line up with the student's "
                              f"{tuple(student.shape)}")
        kd, agreement = kd_loss(student, teacher, batch["labels"], ctx.task, self.temperature)
        ctx.task_weight *= self.task_weight_factor
        ctx.log("distill/agreement", agreement)
        return {"distill": self.alpha * kd}

    @torch.no_grad()
    def _teacher_logits(self, batch: dict, rows: list[int], task: str) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        extra = {"use_cache": False} if task == "causal-lm" else {}   # a single forward needs no KV cache
        if not self.cache_logits:
            return self.teacher_model(**inputs, **extra).logits
        ids = batch["input_ids"].cpu()
        lengths = batch["attention_mask"].sum(-1).tolist()        # rows are right-padded
        for i, row in enumerate(rows):
            hit = self.cache.get(row)
            # The ids guard a re-indexed train split (continue_with mixes new rows in).
            if hit is None or not torch.equal(hit[0], ids[i, :lengths[i]]):
                one = {k: v[i:i + 1, :lengths[i]] for k, v in inputs.items()}
                self.cache[row] = (ids[i, :lengths[i]].clone(), self.teacher_model(**one, **extra).logits[0].cpu())
        cached = [self.cache[row][1] for row in rows]             # each (C,) or (T_row, V)
        device = batch["input_ids"].device
        if cached[0].ndim == 1:
            return torch.stack(cached).to(device)
        out = cached[0].new_zeros(len(rows), ids.shape[1], cached[0].shape[-1])   # (B, T, V)
        for i, logits in enumerate(cached):
            out[i, :logits.shape[0]] = logits                     # padded positions stay 0: never scored
        return out.to(device)


# ---- where the teacher comes from, and the checks that it can teach this student ----
def _teacher_source(teacher: str, cfg: Any) -> tuple[Any, Any, list[str] | None, Path | None]:
    """(teacher RunConfig, ResolvedModel, label names if known, checkpoint directory or None)."""
    from nbtune import assets
    from nbtune.config import RunConfig
    from nbtune.engine import checkpoint as ckpt
    path = Path(os.path.expanduser(teacher))
    found = ckpt.latest(path) if (path / "checkpoints").is_dir() else \
        path if (path / ckpt.TRAINER_STATE).is_file() else None
    if found is None and (path / "checkpoints").is_dir():
        raise MethodError(f"distill: run directory {teacher!r} has no complete checkpoint under checkpoints/")
    if found is None:
        tcfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=teacher, tokenizer=None,
                                                                   config_overrides={}, init="pretrained"))
        return tcfg, assets.resolve_model(teacher), None, None
    saved = ckpt.verify(found)
    tcfg = RunConfig.from_dict(saved["config"])
    if tcfg.task != cfg.task:
        raise MethodError(f"distill: teacher run {teacher!r} was trained for task {tcfg.task!r}, the student "
                          f"for {cfg.task!r}")
    labels = list(saved["label_names"]) if cfg.task != "causal-lm" else None
    return tcfg, assets.resolve_model(tcfg.model.name), labels, found


def _load_checkpoint(teacher: torch.nn.Module, tcfg: Any, path: Path, device: Any) -> torch.nn.Module:
    """The teacher run's model as it trained (its other methods may wrap it), then its saved weights."""
    from safetensors.torch import load_model
    from nbtune.engine import build
    from nbtune.methods import build_methods
    methods = build_methods([m for m in tcfg.methods if (m if isinstance(m, str) else m.get("name")) != "distill"])
    teacher, _ = build.prepare_methods(methods, teacher.to(device), tcfg, device)
    try:
        load_model(teacher, str(path / "model.safetensors"), strict=True, device=str(device))
    except RuntimeError as exc:
        raise MethodError(f"distill: the weights in {path} do not fit the model its config describes ({exc}). "
                          "Export the teacher with Run.save_pretrained and pass that directory.") from None
    return teacher


def _label_names(config: Any) -> list[str]:
    id2label = getattr(config, "id2label", None) or {}
    return [str(id2label[i]) for i in sorted(id2label, key=int)]


def _saved_labels(path: str, task: str, teacher: str, trust_remote_code: bool) -> list[str]:
    """A saved teacher's label names; refuses a model without a trained head for this task (transformers would
    add a random one and the student would learn noise)."""
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    archs = list(getattr(config, "architectures", None) or [])
    if archs and not any(a.endswith(HEAD_SUFFIX[task]) for a in archs):
        raise MethodError(f"distill: teacher {teacher!r} is a {archs[0]} without a trained {task} head "
                          f"(*{HEAD_SUFFIX[task]}), so it has nothing to teach. Fine-tune it for this task first "
                          "and pass the directory written by Run.save_pretrained, or the run directory.")
    return _label_names(config)


def _check_vocab(teacher: dict[str, int], student: dict[str, int], name: str) -> None:
    if teacher == student:
        return
    only_t = sorted(set(teacher) - set(student))
    only_s = sorted(set(student) - set(teacher))
    moved = sorted(t for t in set(teacher) & set(student) if teacher[t] != student[t])
    differ = len(only_t) + len(only_s) + len(moved)
    parts = [f"{len(only_t)} only in the teacher (e.g. {only_t[:3]})" if only_t else "",
             f"{len(only_s)} only in the student (e.g. {only_s[:3]})" if only_s else "",
             f"{len(moved)} with other ids (e.g. {[(t, teacher[t], student[t]) for t in moved[:3]]})" if moved else ""]
    raise MethodError(f"distill: the teacher {name!r} has another tokenizer vocabulary than the student "
                      f"({len(teacher)} vs {len(student)} tokens; {differ} differ: "
                      f"{'; '.join(p for p in parts if p)}). Logits over different vocabularies cannot be "
                      "compared: use a teacher with the student's tokenizer.")


def _check_labels(teacher: list[str], student: list[str], name: str) -> None:
    if teacher == student:
        return
    missing, extra = [n for n in student if n not in teacher], [n for n in teacher if n not in student]
    if missing or extra:
        what = f"missing in the teacher: {missing[:5]}; only in the teacher: {extra[:5]}"
    else:
        what = f"the same names in another order (teacher {teacher[:5]}..., student {student[:5]}...)"
    raise MethodError(f"distill: the teacher {name!r} predicts other labels than the student "
                      f"({len(teacher)} vs {len(student)}; {what}). Train the teacher on the same label set.")
