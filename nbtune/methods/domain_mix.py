"""Domain mixing: train on the run's (domain) data mixed with a general dataset at a given ratio.

Every micro-batch holds round(ratio x batch_size) domain rows and the rest general rows, each side drawn
from its own seeded shuffle, so an epoch still has as many batches as the domain data alone would give. The
guide's domain layer uses 0.7. The ratio is a live option: ``run.control.set("domain_mix.ratio", 0.5)``
applies from the next micro-batch, is logged as an edit, and is kept in checkpoints, so a resumed run draws
exactly the same batches.

    >>> DomainMix(general="trec", ratio=0.7).split(8)
    (6, 2)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from nbtune.methods import register
from nbtune.methods.base import Method, MethodError, PlanState


@register
@dataclass
class DomainMix(Method):
    """Args: general (a bundled dataset name or a file, same task and labels as the run's data), ratio (the
    domain share of each batch, 0-1)."""

    name: ClassVar[str] = "domain_mix"
    general: str = ""
    ratio: float = 0.7
    general_rows: list[dict] = field(default_factory=list, repr=False)
    history: list[list] = field(default_factory=list, repr=False)   # [[epoch, batch_index, ratio], ...]
    _n_domain: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.general:
            raise MethodError("domain_mix: give general=<bundled dataset or file> to mix with the run's data")
        self._check_ratio(self.ratio)
        self._initial = float(self.ratio)   # the config's ratio; live edits are kept in `history`

    @staticmethod
    def _check_ratio(ratio: Any) -> None:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
            raise MethodError(f"domain_mix: ratio is the domain share of each batch, in [0, 1]; got {ratio!r}")

    def split(self, batch_size: int, ratio: float | None = None) -> tuple[int, int]:
        """(domain rows, general rows) in a batch of `batch_size`."""
        n_dom = int(round((self.ratio if ratio is None else ratio) * batch_size))
        return n_dom, batch_size - n_dom

    def prepare(self, model: Any, cfg: Any) -> None:
        from nbtune import assets
        from nbtune.config import RunConfig
        from nbtune.engine import build
        gcfg = RunConfig.from_dict(cfg.to_dict())
        gcfg.data.dataset, gcfg.data.max_train_samples, gcfg.data.max_eval_samples = self.general, None, None
        gcfg.methods = []
        tokenizer = build.load_tokenizer(gcfg, assets.resolve_model(cfg.model.name))
        dataset, where = build.load_data(gcfg, None)
        data = build.tokenize(gcfg, dataset, tokenizer, where)
        rows = data.rows["train"]
        if cfg.task != "causal-lm":
            label2id = {str(v): int(k) for k, v in model.config.id2label.items()}
            unknown = sorted(set(data.label_names) - set(label2id))
            if unknown:
                raise MethodError(f"domain_mix: the general data ({self.general}) has labels the run's data lacks: "
                                  f"{unknown[:10]}; both datasets need the same label set")
            remap = [label2id[name] for name in data.label_names]
            rows = [{**r, "labels": _remap(r["labels"], remap)} for r in rows]
        self.general_rows = rows
        return None

    def set_option(self, option: str, value: Any, state: Any) -> Any:
        if option != "ratio":
            raise ValueError(f"domain_mix has one live option, 'ratio' (not {option!r})")
        self._check_ratio(value)
        old, self.ratio = self.ratio, float(value)
        self.history.append([state.epoch, state.batch_index, self.ratio])
        return old

    def ratio_at(self, epoch: int, batch_index: int, initial: float) -> float:
        """The ratio in force for one micro-batch: the last edit made at or before it."""
        ratio = initial
        for e, b, r in self.history:
            if (e, b) <= (epoch, batch_index):
                ratio = r
        return ratio

    def sampler(self, data: Any, plan: PlanState) -> list[list[int]] | None:
        train = data.rows["train"]
        if self._n_domain is None:  # the general rows join the train list once, after the domain rows
            self._n_domain = len(train)
            train.extend(self.general_rows)
        n_dom_rows, n_gen_rows = self._n_domain, len(train) - self._n_domain
        n_batches = len(plan.default())
        rng = np.random.default_rng([plan.seed, plan.epoch, 104729])
        dom, gen = rng.permutation(n_dom_rows), n_dom_rows + rng.permutation(n_gen_rows)
        size = plan.batch_size * plan.world
        batches, i_dom, i_gen = [], 0, 0
        for b in range(n_batches):
            k_dom, k_gen = self.split(size, self.ratio_at(plan.epoch, b, self._initial))
            if n_gen_rows == 0:
                k_dom, k_gen = size, 0
            pick = [int(dom[(i_dom + j) % n_dom_rows]) for j in range(k_dom)]
            pick += [int(gen[(i_gen + j) % n_gen_rows]) for j in range(k_gen)]
            i_dom, i_gen = i_dom + k_dom, i_gen + k_gen
            batches.append(sorted(pick[plan.rank::plan.world]))
        return batches

    def state_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ratio, self.history = state["ratio"], [list(h) for h in state["history"]]


def _remap(labels: Any, remap: list[int]) -> Any:
    if isinstance(labels, list):
        return [lab if lab < 0 else remap[lab] for lab in labels]
    return remap[labels]
