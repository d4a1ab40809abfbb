"""Curriculum learning: easy rows first, harder ones admitted as training goes on (competence pacing).

The difficulty order comes from the data workbench (nbtune.data.curriculum): by token length, or by
`scores` (one per train row, e.g. ``difficulty(ds["train"], by="loss", ...).scores``), where the guide's
order applies: short first, then long, then the hardest by loss. Each micro-batch is drawn from the easiest
``c(p)`` share of the rows, where p is the training progress in epochs divided by `full_at` and c a pacing
function starting at `start`:

- ``linear``: c = start + (1 - start) p
- ``root``:   c = sqrt(start^2 + (1 - start^2) p)   (more time on easy rows at first, Platanios et al. 2019)
- ``step``:   c rises in `stages` equal steps

Once c reaches 1 for a whole epoch the engine's own shuffled plan returns. The plan is a pure function of
(seed, epoch), so a resumed run draws exactly the same batches.

    >>> Curriculum(pacing="root", start=0.25).competence(0.0), Curriculum(pacing="linear").competence(2.0)
    (0.25, 1.0)
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from nbtune.methods import register
from nbtune.methods.base import Method, MethodError, PlanState

PACINGS = ("linear", "root", "step")


@register
@dataclass
class Curriculum(Method):
    """Args: pacing ("linear", "root", "step"), start (share of rows available at first, 0-1], full_at (epochs
    until every row is available), stages (for "step"), scores (a list, or a .json/.npy file, one difficulty
    score per train row; default: token length)."""

    name: ClassVar[str] = "curriculum"
    pacing: str = "root"
    start: float = 0.3
    full_at: float = 1.0
    stages: int = 3
    scores: Any = None
    _order: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.pacing not in PACINGS:
            raise MethodError(f"curriculum: pacing must be one of {PACINGS}, got {self.pacing!r}")
        if not 0 < self.start <= 1:
            raise MethodError(f"curriculum: start is the share of rows available at first, in (0, 1]; got "
                              f"{self.start!r}")
        if not self.full_at > 0:
            raise MethodError(f"curriculum: full_at (epochs until all rows are in) must be > 0, got {self.full_at!r}")
        if not isinstance(self.stages, int) or self.stages < 1:
            raise MethodError(f"curriculum: stages must be a whole number >= 1, got {self.stages!r}")

    def competence(self, progress: float) -> float:
        """The share of rows (easiest first) that batches are drawn from at this progress (1 = full_at)."""
        p = min(max(progress, 0.0), 1.0)
        if self.pacing == "linear":
            c = self.start + (1 - self.start) * p
        elif self.pacing == "root":
            c = math.sqrt(self.start ** 2 + (1 - self.start ** 2) * p)
        else:
            c = self.start + (1 - self.start) * math.floor(p * self.stages) / self.stages
        return min(1.0, c)

    def order(self, data: Any) -> np.ndarray:
        """Train-row indices from easiest to hardest (computed once)."""
        if self._order is None:
            from nbtune.data.curriculum import curriculum_order
            lengths = np.array([len(r["input_ids"]) for r in data.rows["train"]], dtype=np.float64)
            scores = self._load_scores(len(lengths))
            if scores is None:
                self._order = np.argsort(lengths, kind="stable")
            else:
                self._order = curriculum_order(lengths, scores, stages=max(self.stages, 2)).indices
        return self._order

    def _load_scores(self, n_rows: int) -> np.ndarray | None:
        raw = self.scores
        if raw is None:
            return None
        if isinstance(raw, (str, Path)):
            path = Path(raw)
            if not path.is_file():
                raise MethodError(f"curriculum: scores file {path} does not exist")
            raw = np.load(path) if path.suffix == ".npy" else json.loads(path.read_text(encoding="utf-8"))
        scores = np.asarray(getattr(raw, "scores", raw), dtype=np.float64)
        if scores.shape != (n_rows,):
            raise MethodError(f"curriculum: scores has {scores.size} values but the train split has {n_rows} rows "
                              f"(after max_train_samples); score the same rows, e.g. difficulty(ds['train'])")
        if not np.isfinite(scores).all():
            raise MethodError(f"curriculum: scores[{int(np.argmin(np.isfinite(scores)))}] is not a finite number")
        return scores

    def sampler(self, data: Any, plan: PlanState) -> list[list[int]] | None:
        order = self.order(data)
        default = plan.default()
        n_batches = len(default)
        if self.competence(plan.epoch / self.full_at) >= 1.0:
            return None  # every row is in: the engine's shuffled plan
        rng = np.random.default_rng([plan.seed, plan.epoch, 7919])
        size = plan.batch_size * plan.world
        batches = []
        for b in range(n_batches):
            c = self.competence((plan.epoch + b / n_batches) / self.full_at)
            pool = order[:max(size, math.ceil(c * len(order)))]
            pick = rng.choice(pool, size=min(size, len(pool)), replace=False)
            batches.append(sorted(int(i) for i in pick[plan.rank::plan.world]))
        return batches
