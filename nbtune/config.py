"""Run configuration: typed dataclasses with help text, a YAML round trip and dotted overrides.

Example:
    >>> cfg = RunConfig(model=ModelConfig(name="minilm"), data=DataConfig(dataset="intents-en"))
    >>> cfg = cfg.with_overrides(["train.lr=3e-4", "train.epochs=2"])
    >>> cfg.train.learning_rate, cfg.train.num_train_epochs
    (0.0003, 2.0)
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

TASKS = ("classification", "token-classification", "causal-lm")
CLASS_WEIGHTS = ("balanced", "inverse_sqrt")
SCHEDULERS = ("linear", "cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# Short names users type, mapped to the field they mean (`train.lr=3e-4`).
ALIASES = {"lr": "learning_rate", "epochs": "num_train_epochs", "grad_accum": "gradient_accumulation_steps",
           "accumulation": "gradient_accumulation_steps", "clip": "max_grad_norm"}

# Keys that change how a run is observed or saved, not what it computes: ignored when a resume compares configs.
OPERATIONAL_KEYS = frozenset({
    "output_dir", "run_name", "train.log_every_n_steps", "train.sync_every_n_steps", "train.save_every_n_steps",
    "train.save_total_limit", "train.progress_bar", "train.tensorboard",
})


# What Control can change mid-run, and the actions it logs; a config's `train.edits` may schedule the former.
SETTABLE_EDITS = ("lr", "max_grad_norm", "weight_decay")
EDIT_ACTIONS = ("pause", "resume", "stop", "checkpoint")
# Trainable-set edits take a target (a group such as "embeddings", "layer 3", "head"); a method's live option
# is named "<method>.<option>" (e.g. "domain_mix.ratio"), its value checked by the method.
TRAINABLE_EDITS = ("freeze", "unfreeze")


class ConfigError(ValueError):
    """A config key or value that cannot be used; the message says which and what was expected."""


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class ModelConfig:
    name: str = _help("Bundled model ('minilm', 'smollm2', 'tiny-bert', 'tiny-llama', 'tiny-deepseek-v3'), "
                      "a local path or a Hugging Face hub id.", default="minilm")
    tokenizer: str | None = _help("Tokenizer to use instead of the model's own (name, path or hub id).", default=None)
    revision: str | None = _help("Hub revision (branch, tag or commit) when `name` is a hub id.", default=None)
    trust_remote_code: bool = _help("Run Python code shipped with a hub model. Off by default: it executes "
                                    "code from the model's repository.", default=False)
    allow_pickle_weights: bool = _help("Load a model whose weights exist only as a pickle (pytorch_model.bin). Off "
                                       "by default: weights load from safetensors, which cannot run code.",
                                       default=False)
    init: str = _help("'pretrained' loads weights; 'random' builds the architecture with fresh weights.",
                      default="pretrained")
    config_overrides: dict = _help("Model config values to change before loading, e.g. {num_hidden_layers: 2} "
                                   "for a smaller distillation student (pretrained weights of the kept layers "
                                   "load; the rest are dropped).", default_factory=dict)


@dataclass
class DataConfig:
    dataset: str = _help("Bundled dataset name ('intents-en', 'trec', ...) or a .csv/.jsonl/.json file.",
                         default="intents-en")
    text_column: str = _help("Column holding the input text (classification).", default="text")
    label_column: str = _help("Column holding the label (classification).", default="label")
    max_length: int = _help("Truncate inputs to this many tokens.", default=128)
    max_train_samples: int | None = _help("Use only the first N training rows (after the fixed shuffle).",
                                          default=None)
    max_eval_samples: int | None = _help("Use only the first N validation/test rows.", default=None)
    group_by_length: bool = _help("Batch examples of similar length together so padding is small.",
                                  default=True)
    pad_to_multiple_of: int | None = _help("Pad batch length up to a multiple of this (8 helps tensor cores).",
                                           default=None)
    pad_to_max_length: bool = _help("Pad every batch to max_length (static shapes) instead of the longest row.",
                                    default=False)
    cleaning: list = _help("Cleaning steps applied to every split before tokenising (and again at inference "
                           "and export), e.g. ['strip_html', {'normalize': 'nfkc'}, 'whitespace']; "
                           "see nbtune.data.clean.", default_factory=list)


@dataclass
class TrainConfig:
    learning_rate: float = _help("Peak learning rate after warmup (alias: lr).", default=5e-5)
    batch_size: int = _help("Examples per micro-batch per process.", default=32)
    num_train_epochs: float = _help("Passes over the training data (alias: epochs).", default=3.0)
    max_steps: int | None = _help("Stop after this many optimizer steps; overrides num_train_epochs.",
                                  default=None)
    warmup_ratio: float = _help("Fraction of total optimizer steps spent warming the LR up from 0.", default=0.1)
    weight_decay: float = _help("AdamW decoupled weight decay (not applied to biases and norms).", default=0.01)
    max_grad_norm: float | None = _help("Clip the total gradient norm to this value; null disables clipping.",
                                        default=1.0)
    gradient_accumulation_steps: int = _help("Micro-batches summed before each optimizer step.", default=1)
    scheduler: str = _help("LR schedule after warmup: linear, cosine or constant.", default="linear")
    seed: int = _help("Seed for weights, dropout and data order.", default=42)
    precision: str = _help("auto (bf16 where supported, fp16 on older GPUs, else fp32), fp32, bf16 or fp16.",
                           default="auto")
    eval_every_n_steps: int | None = _help("Evaluate every N optimizer steps; null means once per epoch.",
                                           default=None)
    save_every_n_steps: int | None = _help("Checkpoint every N optimizer steps; null means at the end only.",
                                           default=None)
    save_total_limit: int | None = _help("Keep only the newest N step checkpoints.", default=2)
    log_every_n_steps: int = _help("Send every Nth step record (and the last) to the sinks; 1 sends all.",
                                   default=1)
    sync_every_n_steps: int = _help("Read device-side metrics to the host every N steps (avoids per-step "
                                    "CUDA syncs).", default=10)
    progress_bar: bool = _help("Show a tqdm progress bar on the console.", default=True)
    tensorboard: bool = _help("Write TensorBoard event files.", default=True)
    class_weights: str | None = _help("Weight the classification loss per class, computed from the train split: "
                                      "'balanced' (n / (k * count)), 'inverse_sqrt', or null for none.",
                                      default=None)
    edits: list[dict] = _help("Scheduled edits [{step, name, value}], e.g. an LR change exported from a live run.",
                              default_factory=list)
    skip_nonfinite_steps: bool = _help("Skip an optimizer step whose loss or gradient norm is NaN/inf: weights and "
                                       "optimizer state stay as they were (decided on the device, no extra sync). "
                                       "The step still counts and the LR schedule advances.", default=True)
    max_consecutive_skips: int | None = _help("Stop with status 'diverged at step N' after this many skipped steps "
                                              "in a row (fp16 overflow skips do not count); null never stops.",
                                              default=5)
    spike_factor: float | None = _help("Roll back when a step's loss exceeds this multiple of the loss EMA (e.g. "
                                       "3.0): restore the newest checkpoint before the spike, scale the LR by "
                                       "spike_lr_factor, leave the spike's batches out. Needs save_every_n_steps; "
                                       "null turns spike detection off.", default=None)
    spike_ema_steps: int = _help("Span N of the loss EMA that spikes are measured against (alpha = 2/(N+1)); no "
                                 "spike is flagged before N losses were seen.", default=20)
    spike_lr_factor: float = _help("Multiply the learning rate by this after each spike rollback.", default=0.5)
    max_rollbacks: int = _help("Spike rollbacks allowed; one more spike stops the run as diverged.", default=3)
    oom_backoff: bool = _help("On out-of-memory, halve the micro-batch and run each batch as that many chunks "
                              "(same effective batch, same data), then retry; single process only.", default=True)
    min_micro_batch_size: int = _help("Smallest micro-batch the OOM backoff tries before giving up.", default=1)


@dataclass
class RunConfig:
    task: str = _help("classification, token-classification or causal-lm.", default="classification")
    model: ModelConfig = _help("What to fine-tune.", default_factory=ModelConfig)
    data: DataConfig = _help("What to train on.", default_factory=DataConfig)
    train: TrainConfig = _help("How to train.", default_factory=TrainConfig)
    methods: list = _help("Fine-tuning methods, composable: [{name: layer_lr, lr: {embeddings: 1e-6, attention: "
                          "5e-5}}, ...]; see nbtune/methods/.", default_factory=list)
    output_dir: str = _help("Where runs are written; each run gets a subdirectory.", default="runs")
    run_name: str | None = _help("Subdirectory name; default is <model>-<dataset>-<timestamp>.", default=None)

    def __post_init__(self) -> None:
        # Accept the short forms a notebook user types: RunConfig(model="minilm", data="trec").
        if isinstance(self.model, str):
            self.model = ModelConfig(name=self.model)
        if isinstance(self.data, str):
            self.data = DataConfig(dataset=self.data)
        for name, cls in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig)):
            value = getattr(self, name)
            if isinstance(value, Mapping):
                setattr(self, name, _build(cls, value, name))
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for values that cannot work, naming the key and the allowed values."""
        t = self.train
        _choice("task", self.task, TASKS)
        _choice("train.scheduler", t.scheduler, SCHEDULERS)
        _choice("train.precision", t.precision, PRECISIONS)
        _choice("model.init", self.model.init, ("pretrained", "random"))
        for key, value in (("train.batch_size", t.batch_size), ("train.gradient_accumulation_steps",
                           t.gradient_accumulation_steps), ("data.max_length", self.data.max_length),
                           ("train.log_every_n_steps", t.log_every_n_steps),
                           ("train.sync_every_n_steps", t.sync_every_n_steps)):
            if int(value) < 1:
                raise ConfigError(f"{key} must be >= 1, got {value!r}")
        if t.learning_rate <= 0:
            raise ConfigError(f"train.learning_rate must be > 0, got {t.learning_rate!r}")
        if not 0 <= t.warmup_ratio < 1:
            raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {t.warmup_ratio!r}")
        if t.max_grad_norm is not None and t.max_grad_norm <= 0:
            raise ConfigError(f"train.max_grad_norm must be > 0 or null, got {t.max_grad_norm!r}")
        for i, edit in enumerate(t.edits):
            _check_scheduled_edit(i, edit)
        if t.class_weights is not None:
            _choice("train.class_weights", t.class_weights, CLASS_WEIGHTS)
            if self.task != "classification":
                raise ConfigError(f"train.class_weights applies to task 'classification', not {self.task!r}")
        if not isinstance(self.model.config_overrides, dict):
            raise ConfigError(f"model.config_overrides expects a mapping like {{num_hidden_layers: 2}}, "
                              f"got {self.model.config_overrides!r}")
        if not isinstance(self.methods, list):
            raise ConfigError(f"methods expects a list like [{{name: layer_lr, ...}}], got {self.methods!r}")
        from nbtune.methods import MethodError, build_methods
        try:
            build_methods(self.methods)
        except MethodError as exc:
            raise ConfigError(str(exc)) from None
        if not isinstance(self.data.cleaning, list):
            raise ConfigError(f"data.cleaning expects a list of steps, got {self.data.cleaning!r}")

    # ---- dict / YAML ----
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunConfig":
        """Build from a nested dict; unknown keys raise ConfigError with the closest valid key."""
        return _build(cls, data, "")

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_yaml(cls, path_or_text: str | Path) -> "RunConfig":
        """Load a YAML file (or YAML text). Errors name the file and, for syntax errors, the line."""
        source = str(path_or_text)
        is_file = isinstance(path_or_text, Path) or (("\n" not in source) and source.endswith((".yaml", ".yml")))
        text = Path(source).read_text(encoding="utf-8") if is_file else source
        where = source if is_file else "<yaml text>"
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"{where}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where}: expected a mapping of config sections, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    # ---- overrides ----
    def with_overrides(self, overrides: Iterable[str] | Mapping[str, Any]) -> "RunConfig":
        """Return a copy with dotted overrides applied: ["train.lr=3e-4", "model.name=smollm2"]."""
        data = self.to_dict()
        items = overrides.items() if isinstance(overrides, Mapping) else (_split_override(o) for o in overrides)
        for dotted, value in items:
            _set_dotted(data, dotted, value)
        return RunConfig.from_dict(data)

    def fingerprint(self) -> str:
        """SHA-256 of the config keys that change what a run computes (operational keys excluded)."""
        flat = {k: v for k, v in flatten(self.to_dict()).items() if k not in OPERATIONAL_KEYS}
        return hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1}} -> {'train.lr': 1}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any], ignore: Iterable[str] = OPERATIONAL_KEYS) -> dict:
    """Differing dotted keys between two config dicts: {key: (a_value, b_value)}."""
    fa, fb, skip = flatten(a), flatten(b), set(ignore)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if k not in skip and fa.get(k) != fb.get(k)}


def check_edit_value(name: str, value: object) -> None:
    """Raise ValueError unless `value` is usable for the live edit `name` (lr, max_grad_norm, weight_decay,
    freeze/unfreeze with a target, or a method option "<method>.<option>")."""
    if name in TRAINABLE_EDITS:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name} needs a target such as 'embeddings', 'layer 3' or 'head', got {value!r}")
        return
    if "." in name and name.split(".", 1)[0] and name.split(".", 1)[1]:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        return
    if name not in SETTABLE_EDITS:
        raise ValueError(f"cannot set {name!r}; settable values are {', '.join(SETTABLE_EDITS)}, freeze/unfreeze "
                         f"(a target) or a method option '<method>.<option>'")
    if name == "max_grad_norm" and value is None:
        return  # turns clipping off
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if name in ("lr", "max_grad_norm") and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}" + (" (use None to disable clipping)"
                                                               if name == "max_grad_norm" else ""))
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def _check_scheduled_edit(i: int, edit: object) -> None:
    where = f"train.edits[{i}]"
    if not isinstance(edit, Mapping) or set(edit) - {"step", "name", "value", "old", "new", "kind", "time"}:
        raise ConfigError(f"{where} must be a mapping with step, name and value, got {edit!r}")
    name = edit.get("name")
    if name in EDIT_ACTIONS:
        return  # logged actions in an exported edit log are kept but not replayed
    if not isinstance(edit.get("step"), int) or edit["step"] < 0:
        raise ConfigError(f"{where}.step must be a step number >= 0, got {edit.get('step')!r}")
    try:
        check_edit_value(str(name), edit.get("value", edit.get("new")))
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of {', '.join(allowed)}")


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _resolve_key(cls: type, key: str, where: str) -> str:
    names = _fields(cls)
    key = ALIASES.get(key, key)
    if key not in names:
        dotted = f"{where}.{key}" if where else key
        close = difflib.get_close_matches(key, list(names) + list(ALIASES), n=1, cutoff=0.5)
        hint = f" Did you mean '{(where + '.') if where else ''}{ALIASES.get(close[0], close[0])}'?" if close else ""
        raise ConfigError(f"unknown config key '{dotted}'.{hint} Valid keys here: {', '.join(names)}")
    return key


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    kwargs: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = _resolve_key(cls, str(raw_key), where)
        sub = _SECTIONS.get((cls, key))
        dotted = f"{where}.{key}" if where else key
        if sub is not None and isinstance(value, Mapping):
            value = _build(sub, value, dotted)
        elif sub is None:
            value = _coerce(cls, key, value, dotted)
        kwargs[key] = value
    return cls(**kwargs)


def _coerce(cls: type, key: str, value: Any, dotted: str) -> Any:
    """Check a scalar against the field's type; ints become floats where a float is expected."""
    hint = str(typing.get_type_hints(cls)[key])
    if value is None:
        if "None" in hint:
            return None
        raise ConfigError(f"{dotted} cannot be null")
    if "float" in hint and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if "int" in hint and "float" not in hint and not (isinstance(value, int) and not isinstance(value, bool)):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{dotted} expects an integer, got {value!r}")
    if "float" in hint and not isinstance(value, (int, float)):
        raise ConfigError(f"{dotted} expects a number, got {value!r}")
    if "bool" in hint and not isinstance(value, bool):
        raise ConfigError(f"{dotted} expects true or false, got {value!r}")
    if hint.startswith("<class 'str'>") and not isinstance(value, str):
        raise ConfigError(f"{dotted} expects text, got {value!r}")
    return value


def _split_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value, e.g. train.lr=3e-4")
    key, raw = text.split("=", 1)
    # YAML parses numbers, booleans, null and lists the way a user expects ("3e-4" -> 0.0003).
    value = yaml.safe_load(raw) if raw.strip() else ""
    if isinstance(value, str) and _looks_like_float(raw):
        value = float(raw)
    return key.strip(), value


def _looks_like_float(raw: str) -> bool:
    try:
        float(raw)
        return True
    except ValueError:
        return False


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node, cls, where = data, RunConfig, ""
    for i, part in enumerate(parts):
        key = _resolve_key(cls, part, where)
        if i == len(parts) - 1:
            node[key] = value
            return
        sub = _SECTIONS.get((cls, key))
        if sub is None:
            raise ConfigError(f"'{where + '.' if where else ''}{key}' is a value, not a section: cannot set '{dotted}'")
        node, cls, where = node[key], sub, (f"{where}.{key}" if where else key)


_SECTIONS = {(RunConfig, "model"): ModelConfig, (RunConfig, "data"): DataConfig, (RunConfig, "train"): TrainConfig}
