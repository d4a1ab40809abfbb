"""Builders that turn a RunConfig into the parts of a run: accelerator, precision, data, model, optimizer,
scheduler. Flat functions, each taking what it needs, so a test can build any one part alone.
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from nbtune.config import RunConfig
from nbtune.engine import tasks


@dataclass
class Precision:
    """What the loop does about precision: an autocast dtype (or None) and whether to scale gradients."""
    name: str                        # fp32 | bf16 | fp16
    autocast_dtype: torch.dtype | None
    use_grad_scaler: bool


def build_accelerator(find_unused_parameters: bool = False):
    """One Accelerator per run. Precision is handled by the loop, not by accelerate's global state, so a
    kernel can run fp32 and then bf16 without a restart. `find_unused_parameters`: DDP must not wait for
    gradients of parameters that a method froze after wrapping (progressive unfreezing)."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if find_unused_parameters else []
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no", kwargs_handlers=handlers)
    kind = str(accelerator.distributed_type).rsplit(".", 1)[-1]
    if kind in ("FSDP", "DEEPSPEED"):
        # The loop prepares the model only (DDP's contract). FSDP would clip and save per shard and DeepSpeed
        # would build no engine: ranks would drift apart and fail only at the end. Refuse before training.
        from nbtune.config import ConfigError
        raise ConfigError(f"accelerate was launched with {kind}, which nbtune does not support yet: use DDP "
                          "(`accelerate launch --multi_gpu ...` or torchrun). See docs/scale-out.md.")
    return accelerator


def changes_trainable_set(cfg: RunConfig) -> bool:
    """Whether a configured method freezes or opens parameters during training (DDP must be told)."""
    return any((m if isinstance(m, str) else m.get("name")) == "unfreeze" for m in cfg.methods)


def cpu_bf16_native() -> bool:
    """Whether the CPU has bf16 matrix instructions; without them bf16 matmul is emulated and very slow."""
    from nbtune.envcheck import cpu_supports_bf16
    return cpu_supports_bf16()


def resolve_precision(requested: str, device: torch.device) -> Precision:
    """auto: bf16 on GPUs that support it, else fp16 with a GradScaler; bf16 on CPUs with native bf16,
    else fp32."""
    name = requested
    if requested == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            name = "bf16" if cpu_bf16_native() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ValueError("train.precision=fp16 needs a CUDA GPU; on CPU use bf16 (if the CPU supports it) or fp32")
    if name == "bf16" and device.type == "cpu" and not cpu_bf16_native():
        warnings.warn("train.precision=bf16 on a CPU without native bf16 (no AVX512-BF16/AMX): autocast will be "
                      "much slower than fp32. Use precision=auto or fp32.", stacklevel=2)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    return Precision(name, dtype, use_grad_scaler=name == "fp16")


def load_data(cfg: RunConfig, dataset=None):
    """The DatasetDict to train on, with train/validation/test splits, and a name for messages."""
    from nbtune import assets
    if dataset is not None:
        where = "the dataset passed to Run"
    else:
        where = f"dataset '{cfg.data.dataset}'"
        dataset = assets.load_dataset(cfg.data.dataset, seed=13) if cfg.data.dataset in assets.DATASETS \
            else _load_file(cfg)
        where = f"{cfg.data.dataset}" if cfg.data.dataset not in assets.DATASETS else where
    dataset = _ensure_splits(dataset, cfg.train.seed, where)
    if cfg.data.cleaning:
        dataset = _clean(dataset, cfg.data.cleaning, cfg.data.text_column)
    if cfg.data.max_train_samples:
        dataset["train"] = dataset["train"].select(range(min(cfg.data.max_train_samples, len(dataset["train"]))))
    if cfg.data.max_eval_samples:
        for split in ("validation", "test"):
            dataset[split] = dataset[split].select(range(min(cfg.data.max_eval_samples, len(dataset[split]))))
    return dataset, where


def _clean(dataset, spec: list, text_column: str):
    """Apply the config's cleaning steps to the text column of every split (the same steps run at inference)."""
    from nbtune.data.clean import apply_steps
    import datasets
    out = {}
    for split, part in dataset.items():
        if text_column not in part.column_names:
            out[split] = part
            continue
        cleaned = apply_steps(list(part[text_column]), spec)
        out[split] = part.remove_columns(text_column).add_column(text_column, cleaned)
    return datasets.DatasetDict(out)


def class_weight_tensor(cfg: RunConfig, data: tasks.TaskData, device) -> torch.Tensor | None:
    """Per-class loss weights from the train split's label counts (train.class_weights), in label-id order."""
    if cfg.train.class_weights is None:
        return None
    from nbtune.data.balance import class_weight_tensor, class_weights
    names = data.label_names
    weights = class_weights([names[int(r["labels"])] for r in data.rows["train"]], scheme=cfg.train.class_weights)
    return class_weight_tensor(weights, names).to(device)


def _load_file(cfg: RunConfig):
    """A user's file through nbtune.data.load (clear errors with file, line and column), with the configured
    column names kept; chat/LM files go through datasets' json/csv readers."""
    from nbtune import assets
    path_text = cfg.data.dataset
    path = Path(path_text)
    if not path.exists():
        close = difflib.get_close_matches(path_text, list(assets.DATASETS), n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise assets.UnknownAssetError(
            f"data.dataset={path_text!r} is neither a bundled dataset nor an existing file.{hint} "
            f"Bundled datasets: {', '.join(assets.DATASETS)}")
    if cfg.task == "causal-lm":
        return _load_lm_file(path)
    from nbtune.data.load import DataLoadError, load
    text, label = cfg.data.text_column, cfg.data.label_column
    try:
        if cfg.task == "token-classification":
            return load(path, tokens="tokens", tags="tags")
        dataset = load(path, text=text, label=label)
    except DataLoadError as exc:  # same message, in the config's vocabulary
        raise tasks.DataError(f"{exc} [run config: data.text_column={text!r}, data.label_column={label!r}]") \
            from None
    renames = {k: v for k, v in (("text", text), ("label", label)) if k != v}
    return dataset.rename_columns(renames) if renames else dataset


def _load_lm_file(path: Path):
    kind = {".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json"}.get(path.suffix.lower())
    if kind is None:
        raise tasks.DataError(f"{path}: unsupported file type '{path.suffix}'; use .csv, .tsv, .jsonl or .json")
    import datasets
    extra = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    try:
        return datasets.load_dataset(kind, data_files=str(path), **extra)
    except Exception as exc:  # datasets wraps parser errors several layers deep
        raise tasks.DataError(f"{path}: could not be read as {kind}: {exc}") from None


def _ensure_splits(dataset, seed: int, where: str):
    import datasets
    if isinstance(dataset, datasets.Dataset):
        dataset = datasets.DatasetDict({"train": dataset})
    if "train" not in dataset:
        raise tasks.DataError(f"{where}: no 'train' split; found {list(dataset)}")
    if len(dataset["train"]) == 0:
        raise tasks.DataError(f"{where}: the 'train' split is empty")
    dataset = datasets.DatasetDict(dict(dataset))
    if "validation" not in dataset:
        if len(dataset["train"]) < 2:  # datasets' own message talks about n_samples and train_size
            raise tasks.DataError(f"{where}: the 'train' split has 1 row and there is no 'validation' split; "
                                  "10% of train becomes the validation split, which needs at least 2 rows. Add "
                                  "rows, or pass a DatasetDict with a 'validation' split")
        parts = dataset["train"].train_test_split(test_size=0.1, seed=seed)
        dataset["train"], dataset["validation"] = parts["train"], parts["test"]
    if "test" not in dataset:
        dataset["test"] = dataset["validation"]
    for split in ("validation", "test"):  # before tokenizing: a tokenizer given [] fails with an IndexError
        if len(dataset[split]) == 0:
            raise tasks.DataError(f"{where}: the '{split}' split is empty")
    return dataset


def tokenize(cfg: RunConfig, dataset, tokenizer, where: str) -> tasks.TaskData:
    d = cfg.data
    if cfg.task == "classification":
        data = tasks.tokenize_classification(dataset, tokenizer, d.text_column, d.label_column, d.max_length, where,
                                             num_labels=(cfg.model.config_overrides or {}).get("num_labels"))
    elif cfg.task == "token-classification":
        data = tasks.tokenize_tagging(dataset, tokenizer, d.max_length, where)
    else:
        data = tasks.tokenize_causal(dataset, tokenizer, d.max_length, where, cfg.model.name)
    for split in ("train", "validation", "test"):
        if not data.rows.get(split):
            raise tasks.DataError(f"{where}: the '{split}' split is empty")
    data.fingerprint_source = dataset_fingerprint(data)
    return data


def dataset_fingerprint(data: tasks.TaskData) -> str:
    """SHA-256 over the tokenized train and validation rows and label names: what the run actually sees."""
    digest = hashlib.sha256(json.dumps(data.label_names).encode())
    for split in ("train", "validation"):
        for row in data.rows[split]:
            digest.update(json.dumps([row["input_ids"], row["labels"]]).encode())
    return digest.hexdigest()


def load_tokenizer(cfg: RunConfig, resolved):
    from transformers import AutoTokenizer
    source = cfg.model.tokenizer or resolved.tokenizer_path
    if cfg.model.tokenizer:
        from nbtune import assets
        if cfg.model.tokenizer in assets.MODELS:
            source = assets.resolve_model(cfg.model.tokenizer).tokenizer_path
    with _explained_load_errors(cfg.model.tokenizer or cfg.model.name, "tokenizer"):
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.model.trust_remote_code,
                                            revision=cfg.model.revision)
    if tok.pad_token_id is None:
        # Decoder tokenizers often lack a pad token; padded positions are masked, so EOS is safe to reuse.
        tok.pad_token = tok.eos_token
    return tok


@contextlib.contextmanager
def _explained_load_errors(name: str, what: str):
    """Turn transformers' OSError (no network, no cache, bad path) into an AssetError a user can act on."""
    from nbtune import assets
    try:
        yield
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise assets.AssetError(
            f"could not load the {what} of '{name}': {first} Without network access use a bundled model "
            f"({', '.join(assets.MODELS)}) or a local directory; HF_HUB_OFFLINE=1 makes hub lookups fail at once."
        ) from exc


@contextlib.contextmanager
def _quiet_load():
    """Hide transformers' load report and progress bar while loading: a new task head is always reported as
    "MISSING" weights when fine-tuning, which reads like an error in a notebook. Real warnings still show."""
    from transformers.utils import logging as hf_logging
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def build_model(cfg: RunConfig, resolved, label_names: list[str], tokenizer) -> torch.nn.Module:
    with _explained_load_errors(cfg.model.name, "model"), _quiet_load():
        model = tasks.load_model(cfg.task, resolved.path, resolved.config, label_names, cfg.model.init,
                                 cfg.model.trust_remote_code, cfg.model.revision,
                                 cfg.model.config_overrides, cfg.model.allow_pickle_weights)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def prepare_methods(methods: list, model: torch.nn.Module, cfg: RunConfig, device) -> tuple[torch.nn.Module, list | None]:
    """Each method's ``prepare``: first those that wrap the model (heads, adapters), then the rest, each in
    config order. A method may return parameter groups (only one may), or a replacement model, which the next
    method then sees."""
    from nbtune.methods.base import MethodError
    groups = None
    for method in sorted(methods, key=lambda m: not m.wraps_model):
        out = method.prepare(model, cfg)
        if isinstance(out, torch.nn.Module):
            model = out.to(device)
        elif out is not None:
            if groups is not None:
                raise MethodError(f"two methods define parameter groups; '{method.name}' is the second. "
                                  f"Give the learning rates to one of them (layer_lr).")
            groups = out
    if not any(p.requires_grad for p in model.parameters()):
        raise MethodError("the methods left no trainable parameter: " + ", ".join(m.name for m in methods))
    if groups is not None:
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        if {id(p) for g in groups for p in g.params} != trainable:
            raise MethodError("parameter groups were built before a later method changed what trains; the method "
                              "that returns groups (layer_lr) must see the final model")
    return model, groups


def param_groups(model: torch.nn.Module, cfg: RunConfig, method_groups: list | None = None) -> list[dict]:
    """AdamW groups: weight decay on matrices, none on biases and norm weights. Each group has a name.

    With `method_groups` (nbtune.methods ParamGroup list, e.g. from layer_lr) each method group is split the same
    way, keeping its name and its own LR: "attention" and "attention (no decay)"."""
    no_decay_ids = {id(p) for name, p in model.named_parameters() if p.ndim < 2 or "norm" in name.lower()}
    if method_groups is None:
        trainable = [p for p in model.parameters() if p.requires_grad]
        groups = [{"name": "decay", "params": [p for p in trainable if id(p) not in no_decay_ids],
                   "weight_decay": cfg.train.weight_decay},
                  {"name": "no_decay", "params": [p for p in trainable if id(p) in no_decay_ids],
                   "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]
    groups = []
    for mg in method_groups:
        lr = {} if mg.lr is None else {"lr": mg.lr}
        groups.append({"name": mg.name, "params": [p for p in mg.params if id(p) not in no_decay_ids],
                       "weight_decay": cfg.train.weight_decay, **lr})
        groups.append({"name": f"{mg.name} (no decay)", "params": [p for p in mg.params if id(p) in no_decay_ids],
                       "weight_decay": 0.0, **lr})
    return [g for g in groups if g["params"]]


def build_optimizer(groups: list[dict], cfg: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    # The fused kernel is the fastest on CUDA and on CPU alike (measured here: a MiniLM AdamW step took 14 ms
    # fused vs 80 ms foreach, which made the whole training step 20% slower). Other devices keep foreach.
    fast = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    return torch.optim.AdamW(groups, lr=cfg.train.learning_rate, **fast)


def lr_lambda(kind: str, warmup_steps: int, total_steps: int):
    """Multiplier of the peak LR at each step: linear warmup, then linear/cosine decay or constant."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)  # the first step already learns a little
        if kind == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(max(progress, 0.0), 1.0)
        return 1.0 - progress if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def build_scheduler(optimizer, cfg: RunConfig, total_steps: int):
    warmup = int(round(cfg.train.warmup_ratio * total_steps))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.train.scheduler, warmup, total_steps))


def total_steps_for(cfg: RunConfig, batches_per_epoch: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps)."""
    per_epoch = math.ceil(batches_per_epoch / cfg.train.gradient_accumulation_steps)
    total = cfg.train.max_steps or math.ceil(cfg.train.num_train_epochs * per_epoch)
    return per_epoch, max(1, total)
