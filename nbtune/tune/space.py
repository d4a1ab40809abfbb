"""Search spaces defined by running code (Optuna's define-by-run): a space is any callable
``space(trial) -> {dotted config key: value}``. The key ``"dropout"`` is special: it means "every dropout
probability of this architecture" and `apply_overrides` maps it to the model type's config keys.

Example:
    >>> import optuna
    >>> study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    >>> sorted(GUIDE_SPACE(study.ask()))
    ['dropout', 'train.batch_size', 'train.learning_rate']
    >>> space = from_hyperopt({"lr": ("loguniform", -14, -10), "batch_size": ("choice", [8, 16])})
    >>> sorted(space(optuna.create_study().ask()))
    ['train.batch_size', 'train.learning_rate']
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Callable, Mapping

from nbtune.config import ALIASES, RunConfig, flatten

Space = Callable[[Any], dict[str, Any]]  # optuna.Trial -> overrides

# The fine-tuning guide's table: learning rate, batch size and dropout.
LEARNING_RATE_RANGE = (1e-6, 5e-5)
BATCH_SIZES = (8, 16, 32, 64)
DROPOUT_RANGE = (0.1, 0.3)

# Config keys that hold dropout probabilities, per transformers model_type. Unlisted types fall back to
# every float config attribute whose name contains "dropout" or ends in "pdrop".
DROPOUT_KEYS: dict[str, tuple[str, ...]] = {
    **{t: ("hidden_dropout_prob", "attention_probs_dropout_prob")
       for t in ("bert", "roberta", "xlm-roberta", "electra", "deberta", "deberta-v2", "mpnet", "camembert")},
    "distilbert": ("dropout", "attention_dropout"),
    "gpt2": ("resid_pdrop", "embd_pdrop", "attn_pdrop"),
    # Llama-family decoders have attention dropout only (no hidden dropout).
    **{t: ("attention_dropout",) for t in ("llama", "mistral", "qwen2", "qwen3", "deepseek_v3", "gemma", "phi3")},
}

# Short names a hyperopt dict may use, mapped to RunConfig keys; other keys must be dotted config keys.
SHORT_KEYS = {"lr": "train.learning_rate", "learning_rate": "train.learning_rate",
              "batch_size": "train.batch_size", "weight_decay": "train.weight_decay",
              "warmup_ratio": "train.warmup_ratio", "epochs": "train.num_train_epochs", "dropout": "dropout"}
HYPEROPT_FORMS = {"uniform": 2, "loguniform": 2, "quniform": 3, "qloguniform": 3, "choice": 1, "normal": 2}


class SpaceError(ValueError):
    """A search space that cannot be used; the message names the key and the expected form."""


def GUIDE_SPACE(trial) -> dict[str, Any]:  # noqa: N802 - a constant-like default, called like a function
    """The guide's table: lr log-uniform [1e-6, 5e-5], batch size in {8, 16, 32, 64}, dropout [0.1, 0.3]."""
    return {"train.learning_rate": trial.suggest_float("learning_rate", *LEARNING_RATE_RANGE, log=True),
            "train.batch_size": trial.suggest_categorical("batch_size", list(BATCH_SIZES)),
            "dropout": trial.suggest_float("dropout", *DROPOUT_RANGE)}


def dropout_keys(model_name: str) -> tuple[str, ...]:
    """The config keys that carry dropout for this model ('tiny-bert' -> hidden_dropout_prob, ...)."""
    from nbtune import assets
    resolved = assets.resolve_model(model_name)
    config = resolved.config
    if config is None:
        from transformers import AutoConfig
        config = AutoConfig.from_pretrained(resolved.path)
    if config.model_type in DROPOUT_KEYS:
        return DROPOUT_KEYS[config.model_type]
    found = tuple(k for k, v in config.to_dict().items()
                  if isinstance(v, float) and ("dropout" in k or k.endswith("pdrop")))
    if not found:
        raise SpaceError(f"'dropout' in a search space: model {model_name!r} (model_type "
                         f"{config.model_type!r}) has no dropout setting in its config")
    return found


def apply_overrides(base: RunConfig, overrides: Mapping[str, Any]) -> RunConfig:
    """A copy of `base` with a space's overrides; "dropout" and "model.config_overrides" are merged into the
    model's config overrides rather than replacing them."""
    overrides = dict(overrides)
    model_overrides = dict(base.model.config_overrides)
    model_overrides.update(overrides.pop("model.config_overrides", None) or {})
    if "dropout" in overrides:
        p = float(overrides.pop("dropout"))
        model_overrides.update({k: p for k in dropout_keys(overrides.get("model.name", base.model.name))})
    overrides["model.config_overrides"] = model_overrides
    return base.with_overrides(overrides)


def from_hyperopt(space: Mapping[str, Any]) -> Space:
    """Translate a hyperopt-style dict into a define-by-run space.

    Values are hyperopt ``hp.*`` expressions (when hyperopt is installed) or tuples in the same notation:
    ``("uniform", lo, hi)``, ``("loguniform", log_lo, log_hi)`` (natural-log bounds, as hyperopt),
    ``("quniform", lo, hi, q)``, ``("qloguniform", log_lo, log_hi, q)`` and ``("choice", [options])``;
    ``("normal", mu, sigma)`` is refused (unbounded). Keys are short names (lr, batch_size, dropout, weight_decay,
    warmup_ratio, epochs) or dotted config keys ("train.max_grad_norm").

    >>> space = from_hyperopt({"lr": ("loguniform", math.log(1e-6), math.log(5e-5))})
    """
    specs = {_config_key(k): (str(k), _spec(k, v)) for k, v in space.items()}

    def suggest(trial) -> dict[str, Any]:
        out = {}
        for key, (name, (kind, args)) in specs.items():
            if kind == "choice":
                out[key] = trial.suggest_categorical(name, list(args[0]))
            elif kind == "uniform":
                out[key] = trial.suggest_float(name, args[0], args[1])
            elif kind == "quniform":
                out[key] = trial.suggest_float(name, args[0], args[1], step=args[2])
            else:  # loguniform / qloguniform: hyperopt's bounds are natural logs
                value = trial.suggest_float(name, math.exp(args[0]), math.exp(args[1]), log=True)
                out[key] = round(value / args[2]) * args[2] if kind == "qloguniform" else value
            if key == "train.batch_size" or (kind == "quniform" and float(args[2]).is_integer()):
                out[key] = int(out[key])
        return out
    return suggest


def _config_key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise SpaceError(f"search space key {key!r} must be a non-empty string")
    if key in SHORT_KEYS:
        return SHORT_KEYS[key]
    if "." not in key:
        close = difflib.get_close_matches(key, list(SHORT_KEYS), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise SpaceError(f"search space key {key!r} is not a short name ({', '.join(SHORT_KEYS)}) nor a dotted "
                         f"config key like 'train.max_grad_norm'{hint}")
    known = set(flatten(RunConfig().to_dict()))
    section, _, name = key.rpartition(".")
    if f"{section}.{ALIASES.get(name, name)}" not in known:
        close = difflib.get_close_matches(key, sorted(known), n=1)
        raise SpaceError(f"search space key {key!r} is not a config key" +
                         (f"; did you mean '{close[0]}'?" if close else ""))
    return f"{section}.{ALIASES.get(name, name)}"


def _spec(key: Any, value: Any) -> tuple[str, tuple]:
    """A ("kind", args) pair from a tuple or a hyperopt expression, checked."""
    if not isinstance(value, (tuple, list)):
        value = _from_hp(key, value)
    if not value or not isinstance(value[0], str):
        raise SpaceError(f"search space key {key!r}: expected a tuple like ('uniform', 0.1, 0.3), got {value!r}")
    kind, args = value[0], tuple(value[1:])
    if kind not in HYPEROPT_FORMS:
        close = difflib.get_close_matches(kind, list(HYPEROPT_FORMS), n=1)
        raise SpaceError(f"search space key {key!r}: unknown distribution {kind!r}; expected one of "
                         f"{', '.join(HYPEROPT_FORMS)}" + (f" (did you mean '{close[0]}'?)" if close else ""))
    if kind == "normal":
        raise SpaceError(f"search space key {key!r}: 'normal' is unbounded; TPE needs bounds, use 'uniform'")
    if len(args) != HYPEROPT_FORMS[kind]:
        form = {"choice": "('choice', [a, b, ...])", "uniform": "('uniform', low, high)",
                "loguniform": "('loguniform', log(low), log(high))", "quniform": "('quniform', low, high, q)",
                "qloguniform": "('qloguniform', log(low), log(high), q)"}[kind]
        raise SpaceError(f"search space key {key!r}: expected {form}, got {value!r}")
    if kind == "choice":
        if not isinstance(args[0], (list, tuple)) or not args[0]:
            raise SpaceError(f"search space key {key!r}: 'choice' needs a non-empty list of options, got {args[0]!r}")
        return kind, (tuple(args[0]),)
    if not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
        raise SpaceError(f"search space key {key!r}: bounds must be numbers, got {args!r}")
    if args[0] >= args[1]:
        raise SpaceError(f"search space key {key!r}: low must be below high, got {args[0]!r} >= {args[1]!r}")
    if kind.endswith("loguniform") and 0 < args[0] and args[1] < 1 and args[1] / args[0] >= 10:
        raise SpaceError(f"search space key {key!r}: 'loguniform' takes natural-log bounds as in hyperopt, e.g. "
                         f"(math.log({args[0]}), math.log({args[1]})), got ({args[0]}, {args[1]})")
    return kind, tuple(float(a) for a in args)


def _from_hp(key: Any, expr: Any) -> tuple:
    """hyperopt's hp.* expression -> the tuple notation (only when hyperopt is importable)."""
    try:
        from hyperopt.pyll import as_apply  # noqa: F401 - only to know hyperopt is there
    except ImportError:
        raise SpaceError(f"search space key {key!r}: expected a tuple like ('uniform', 0.1, 0.3) (hyperopt is not "
                         f"installed, so hp.* objects are not accepted), got {expr!r}") from None
    node = expr.pos_args[0] if getattr(expr, "name", None) == "float" else expr  # hp.uniform wraps in float()
    if getattr(node, "name", None) == "switch":  # hp.choice: switch(hyperopt_param(label, randint), *options)
        return ("choice", [o.obj if hasattr(o, "obj") else o for o in node.pos_args[1:]])
    dist = node.pos_args[1] if getattr(node, "name", None) == "hyperopt_param" else None
    if dist is None:
        raise SpaceError(f"search space key {key!r}: unsupported hyperopt expression {expr!r}")
    return (dist.name, *[a.obj for a in dist.pos_args])
