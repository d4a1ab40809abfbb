"""Explanation drift: how a model's reasons change while it trains. Each complete checkpoint of one run is
loaded (weights from model.safetensors; nothing is unpickled), the same probe texts are explained for a fixed
target, and the words that gained or lost the most attribution are listed.

Example:
    >>> from nbtune.explain.drift import explanation_drift
    >>> info = explanation_drift(run.run_dir, ["my card was declined"], explain_shap)   # doctest: +SKIP
    >>> info.probes[0].gainers[:3], info.probes[0].matrix()                          # doctest: +SKIP
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from nbtune.explain.types import Attribution, ExplainError, Target

# The explainers' common signature: explain_fn(em, text, target, *, word=None, continuation=None) -> Attribution
# (explain_shap, explain_lime, explain_ig, ... or functools.partial of them with options).
ExplainFn = Callable[..., Attribution]


@dataclass(frozen=True)
class WordChange:
    """One word's attribution at two checkpoints."""
    word_index: int
    word: str
    before: float
    after: float

    @property
    def change(self) -> float:
        return self.after - self.before


@dataclass
class StepChange:
    """What changed between two checkpoints (steps `start` -> `end`): biggest gains first, biggest losses
    first."""
    start: int
    end: int
    gainers: list[WordChange]
    losers: list[WordChange]


@dataclass
class ProbeDrift:
    """One probe text explained at every checkpoint for one fixed target."""
    text: str
    words: list[str]
    target: Target
    steps: list[int]
    attributions: list[Attribution]        # one per step
    model_scores: list[float]              # the target's score at each step
    overall: StepChange                    # first -> last checkpoint
    consecutive: list[StepChange]          # each checkpoint -> the next

    @property
    def gainers(self) -> list[WordChange]:
        return self.overall.gainers

    @property
    def losers(self) -> list[WordChange]:
        return self.overall.losers

    def matrix(self) -> np.ndarray:
        """(S, W) attribution of each word at each step, for a heatmap."""
        return np.stack([a.scores for a in self.attributions])

    def word_series(self, word: str | int) -> np.ndarray:
        """(S,) one word's attribution over the steps (by index, or the first word equal to `word`)."""
        index = word if isinstance(word, int) else self._index(word)
        return self.matrix()[:, index]

    def _index(self, word: str) -> int:
        if word not in self.words:
            raise ExplainError(f"{word!r} is not a word of the probe {self.text!r} (words: {self.words})")
        return self.words.index(word)


@dataclass
class DriftInfo:
    """Every probe's drift over the same checkpoint steps (oldest first); notes name skipped checkpoints."""
    run_dir: str
    steps: list[int]
    checkpoints: list[str]
    probes: list[ProbeDrift]
    method: str
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir, "steps": self.steps, "method": self.method, "notes": self.notes,
                "probes": [{"text": p.text, "target": p.target.describe(), "words": p.words,
                            "scores": p.matrix().tolist(), "model_scores": p.model_scores,
                            "gainers": [(c.word, c.change) for c in p.gainers],
                            "losers": [(c.word, c.change) for c in p.losers]} for p in self.probes]}


def explanation_drift(run_dir: str | Path, probes: Sequence[str], explain_fn: ExplainFn, *,
                      target: int | str | Target | Sequence[Any] | None = None,
                      checkpoints: Sequence[int | str | Path] | None = None, top_n: int = 5,
                      device: str | None = None) -> DriftInfo:
    """Explain `probes` at each complete checkpoint of the run in `run_dir` with `explain_fn`, called like the
    explainers: `explain_fn(em, text, class_index)` (token-classification adds `word=`; causal-lm passes None
    and `continuation=`), the same target at every step. Use functools.partial to pass options.
    target: a class index or label (causal-lm: the continuation) for every probe, a `Target`, or a list with one
    of these per probe; None uses the class predicted at the LAST checkpoint (causal-lm: its greedy next token).
    checkpoints: steps or checkpoint directories to use (default: all complete ones, at least two).
    top_n: gainers and losers listed per probe (changes under 0.1% of the largest attribution are ignored).
    device: where the checkpoint models run (default CPU).

    Example:
        >>> info = explanation_drift("runs/tiny", ["the lamp zebra is on"], my_explainer)   # doctest: +SKIP
        >>> [c.word for c in info.probes[0].gainers]                                     # doctest: +SKIP
    """
    start = time.perf_counter()
    probes = list(probes)
    if not probes or not all(isinstance(p, str) and p.strip() for p in probes):
        raise ExplainError("probes: pass a list of non-empty texts to explain at every checkpoint")
    run_dir = Path(run_dir)
    paths, notes = _select_checkpoints(run_dir, checkpoints)
    loader = _CheckpointModels(paths[-1], device)
    em = loader.load(paths[-1])  # targets come from the last checkpoint, so every step explains the same thing
    targets = _fixed_targets(em, probes, target)
    steps, per_probe = [], [[] for _ in probes]
    for path in paths:
        em = loader.load(path)
        steps.append(loader.step_of(path))
        for i, (text, tgt) in enumerate(zip(probes, targets)):
            per_probe[i].append(_explain(explain_fn, em, text, tgt, steps[-1]))
    results = [_probe_drift(text, tgt, steps, attrs, top_n) for text, tgt, attrs in zip(probes, targets, per_probe)]
    method = per_probe[0][0].method if per_probe and per_probe[0] else ""
    return DriftInfo(str(run_dir), steps, [str(p) for p in paths], results, method, time.perf_counter() - start,
                     notes + loader.notes)


def _fixed_targets(em: Any, probes: list[str], target: Any) -> list[Target]:
    """One Target per probe, resolved once (at the last checkpoint) so every step explains the same thing."""
    per_probe = list(target) if isinstance(target, (list, tuple)) else [target] * len(probes)
    if len(per_probe) != len(probes):
        raise ExplainError(f"target: {len(per_probe)} targets for {len(probes)} probes; pass one per probe")
    out = []
    for text, t in zip(probes, per_probe):
        if isinstance(t, Target):
            out.append(t)
        elif em.task == "causal-lm":
            out.append(em.target(text, continuation=t))
        elif em.task == "token-classification":
            raise ExplainError("token-classification explains one word: pass target=Target('token-classification', "
                               "class_index, label, word=i) (one per probe) for explanation drift")
        else:
            out.append(em.target(text, t))
    return out


def _explain(explain_fn: ExplainFn, em: Any, text: str, target: Target, step: int) -> Attribution:
    if target.task == "causal-lm":
        attribution = explain_fn(em, text, None, continuation=target.continuation)
    elif target.task == "token-classification":
        attribution = explain_fn(em, text, target.index, word=target.word)
    else:
        attribution = explain_fn(em, text, target.index)
    if not isinstance(attribution, Attribution):
        raise ExplainError(f"explain_fn returned {type(attribution).__name__}; it must return an Attribution")
    got = attribution.target
    if (got.index, got.word, got.continuation) != (target.index, target.word, target.continuation):
        raise ExplainError(f"at step {step} explain_fn explained {got.describe()!r} instead of the "
                           f"fixed target {target.describe()!r}: it must use the target it is given")
    return attribution


def _select_checkpoints(run_dir: Path, chosen: Sequence[int | str | Path] | None) -> tuple[list[Path], list[str]]:
    """The complete checkpoints to use, oldest first; incomplete ones are skipped with a note."""
    from nbtune.engine import checkpoint as ckpt
    root = run_dir / "checkpoints"
    how = ("train with train.save_every_n_steps=N (and train.save_total_limit=null, or at least the number of "
           "checkpoints you want: it defaults to 2) to keep checkpoints along the way")
    if not root.is_dir():
        raise ExplainError(f"{run_dir} has no checkpoints/ folder: is it a run directory? {how}")
    notes, complete = [], []
    for path in sorted(root.glob("step-*")):
        try:
            ckpt.verify(path)
            complete.append(path)
        except ckpt.CheckpointError as exc:
            notes.append(f"skipped {path.name}: {exc}")
    if chosen is not None:
        complete = _pick(complete, chosen)
    if len(complete) < 2:
        found = ", ".join(p.name for p in complete) or "none"
        raise ExplainError(f"explanation drift needs at least 2 complete checkpoints; {root} has {len(complete)} "
                           f"usable ({found}). {how}")
    return complete, notes


def _pick(complete: list[Path], chosen: Sequence[int | str | Path]) -> list[Path]:
    by_step = {int(p.name.split("-")[1]): p for p in complete}
    out = []
    for item in chosen:
        if isinstance(item, (int, np.integer)):
            if int(item) not in by_step:
                raise ExplainError(f"no complete checkpoint at step {item}; steps available: {sorted(by_step)}")
            out.append(by_step[int(item)])
        else:
            match = [p for p in complete if p.name == Path(item).name]
            if not match:
                raise ExplainError(f"{item} is not a complete checkpoint of this run; available: "
                                   f"{[p.name for p in complete]}")
            out.append(match[0])
    return sorted(set(out))


class _CheckpointModels:
    """Builds the run's model once from the checkpoint's saved config, then swaps in each checkpoint's weights
    (safetensors). Methods that wrap the model (LoRA, heads, prompt tuning) are applied first so the weight
    names match; methods that only steer training are not needed to run the model."""

    def __init__(self, path: Path, device: str | None) -> None:
        import json

        from nbtune.config import RunConfig
        from nbtune.engine import checkpoint as ckpt
        saved = json.loads((path / ckpt.TRAINER_STATE).read_text(encoding="utf-8"))
        self.cfg = RunConfig.from_dict(saved["config"])
        self.label_names = list(saved.get("label_names") or [])
        self.device = device or "cpu"
        self.notes: list[str] = []
        self._em = None

    def _build(self):
        import torch

        from nbtune import assets
        from nbtune.engine import build
        from nbtune.explain.model import ExplainModel
        from nbtune.methods import build_methods
        cfg = self.cfg
        resolved = assets.resolve_model(cfg.model.name)
        tokenizer = build.load_tokenizer(cfg, resolved)
        model = build.build_model(cfg, resolved, self.label_names, tokenizer)
        for method in build_methods(cfg.methods):
            if method.wraps_model:
                out = method.prepare(model, cfg)
                model = out if isinstance(out, torch.nn.Module) else model
        model.to(self.device).eval()
        return ExplainModel(model, tokenizer, cfg.task, self.label_names or None, device=self.device)

    def load(self, path: Path):
        """The ExplainModel holding this checkpoint's weights."""
        from safetensors.torch import load_model
        if self._em is None:
            self._em = self._build()
        try:
            missing, unexpected = load_model(self._em.model, str(path / "model.safetensors"), strict=False,
                                             device=str(self.device))
        except RuntimeError as exc:  # shape mismatch: the config does not describe these weights
            raise ExplainError(f"{path}: the weights do not fit the model built from its config ({exc})") from None
        if missing or unexpected:
            raise ExplainError(f"{path}: the weights do not fit the model built from its config (missing "
                               f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
        self._em.model.eval()
        return self._em

    @staticmethod
    def step_of(path: Path) -> int:
        return int(path.name.split("-")[1])


def _probe_drift(text: str, target: Target, steps: list[int], attrs: list[Attribution], top_n: int) -> ProbeDrift:
    words = list(attrs[0].words.words)
    for step, a in zip(steps, attrs):
        if a.words.words != words:
            raise ExplainError(f"at step {step} the explainer split {text!r} into different words")
    # Changes smaller than 0.1% of the largest attribution seen are numerical noise, not drift.
    tol = 1e-3 * max(float(np.abs(a.scores).max(initial=0.0)) for a in attrs)
    overall = _changes(words, steps[0], steps[-1], attrs[0].scores, attrs[-1].scores, top_n, tol)
    consecutive = [_changes(words, steps[i], steps[i + 1], attrs[i].scores, attrs[i + 1].scores, top_n, tol)
                   for i in range(len(steps) - 1)]
    return ProbeDrift(text, words, target, list(steps), attrs, [float(a.model_score) for a in attrs], overall,
                      consecutive)


def _changes(words: list[str], start: int, end: int, before: np.ndarray, after: np.ndarray, top_n: int,
             tol: float) -> StepChange:
    """The top_n words whose attribution rose the most and fell the most (changes beyond `tol` only)."""
    delta = after - before                                   # (W,)
    rows = [WordChange(i, words[i], float(before[i]), float(after[i])) for i in range(len(words))]
    gainers = sorted((r for r in rows if delta[r.word_index] > tol), key=lambda r: (-r.change, r.word_index))
    losers = sorted((r for r in rows if delta[r.word_index] < -tol), key=lambda r: (r.change, r.word_index))
    return StepChange(start, end, gainers[:top_n], losers[:top_n])
