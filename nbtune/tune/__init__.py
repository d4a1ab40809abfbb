"""Hyperparameter search: define-by-run spaces, an objective that trains one Run per trial, and a TuneStudy
(Optuna TPE + pruning, SQLite storage, background trials), and the LR range test (`run.lr_find()`). Optuna is
imported only when a study is built.

Example:
    >>> from nbtune import RunConfig
    >>> from nbtune.tune import TuneStudy, from_hyperopt
    >>> study = TuneStudy(RunConfig(model="tiny-bert", data="trec"), n_trials=4)   # doctest: +SKIP
    >>> study.run(background=True)                                                  # doctest: +SKIP
"""
from nbtune.tune.lr_find import LRFindResult, lr_find
from nbtune.tune.objective import Objective, TuneError
from nbtune.tune.space import GUIDE_SPACE, SpaceError, apply_overrides, dropout_keys, from_hyperopt
from nbtune.tune.study import HistoryInfo, IntermediateInfo, Promoted, TuneStudy

__all__ = ["GUIDE_SPACE", "HistoryInfo", "IntermediateInfo", "LRFindResult", "Objective", "Promoted", "SpaceError",
           "TuneError", "TuneStudy", "apply_overrides", "dropout_keys", "from_hyperopt", "lr_find"]
