"""LoRA through peft: low-rank adapters on chosen Linear layers, with the DoRA and rsLoRA variants. Only the
adapters train (plus the new task head for classification: peft's ``modules_to_save``).

``target_modules="auto"`` picks the attention projections of the architecture: ``q_proj, k_proj, v_proj,
o_proj`` for Llama-, Qwen2- and Mistral-like models, ``query, key, value`` for BERT-like ones, and MLA's
``q_a_proj, q_b_proj`` (or ``q_proj`` without a query rank), ``kv_a_proj_with_mqa, kv_b_proj, o_proj`` for
DeepSeek-V3. (peft's own defaults adapt only q and v and know no DeepSeek-V3.) ``"all-linear"`` adapts every
Linear layer but the output layer; a list names them. A name absent from the model is refused before training.

    >>> LoRA(r=16, alpha=32, use_dora=True).target_modules
    'auto'
    >>> infer_targets("llama", ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
    ...                         "model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.o_proj", "lm_head"])
    ['q_proj', 'k_proj', 'v_proj', 'o_proj']

After training, ``merge_adapters(run)`` gives a plain transformers model with the adapters folded in (the run
keeps its adapters and can go on training), ``save_adapters(run, directory)`` writes peft's
``adapter_model.safetensors`` + ``adapter_config.json`` with the tokenizer, and ``trainable_share(run)`` counts
(trainable, total) parameters.
"""
from __future__ import annotations

import copy
import difflib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from nbtune.methods import register
from nbtune.methods.base import Method, MethodError

# Attention projections, per model type; "auto" keeps those the model has.
MLA_TARGETS = ("q_proj", "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")
DECODER_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
ENCODER_TARGETS = ("query", "key", "value")
AUTO_TARGETS: dict[str, tuple[str, ...]] = {
    "deepseek_v3": MLA_TARGETS, "deepseek_v2": MLA_TARGETS,
    "bert": ENCODER_TARGETS, "roberta": ENCODER_TARGETS, "xlm-roberta": ENCODER_TARGETS, "electra": ENCODER_TARGETS,
    **{t: DECODER_TARGETS for t in ("llama", "qwen2", "qwen3", "mistral", "mixtral", "gemma", "gemma2", "phi3")},
}
# Tried in order for a model type not in the table.
FAMILIES = (DECODER_TARGETS, ENCODER_TARGETS, MLA_TARGETS, ("q_lin", "k_lin", "v_lin", "out_lin"),
            ("query_proj", "key_proj", "value_proj"))
TASK_TYPES = {"classification": "SEQ_CLS", "token-classification": "TOKEN_CLS", "causal-lm": "CAUSAL_LM"}


def task_type(task: str) -> Any:
    """nbtune task -> peft TaskType (it decides the wrapper class and which head joins ``modules_to_save``)."""
    from peft import TaskType
    return TaskType[TASK_TYPES[task]]


def linear_module_names(model: Any) -> list[str]:
    """Full names of the model's Linear layers (transformers' Conv1D counts: peft adapts it too)."""
    import torch
    from transformers.pytorch_utils import Conv1D
    return [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, Conv1D))]


def _short(names: list[str]) -> list[str]:
    """Distinct last name parts, in model order: what a user writes in target_modules."""
    return list(dict.fromkeys(n.rsplit(".", 1)[-1] for n in names))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _matches(target: str, name: str) -> bool:
    return name == target or name.endswith("." + target)   # peft's rule for a list of names


def infer_targets(model_type: str, linear_names: list[str]) -> list[str]:
    """The attention projections of this architecture that the model has ([] when none is known)."""
    present = set(_short(linear_names))
    families = [AUTO_TARGETS[model_type]] if model_type in AUTO_TARGETS else list(FAMILIES)
    for family in families:
        found = [t for t in family if t in present]
        if found:
            return found
    return []


def check_peft_free(model: Any, method: str) -> None:
    """One peft method per run: a second one would wrap the wrapper and freeze the first one's adapters."""
    if hasattr(model, "peft_config"):
        raise MethodError(f"{method}: the model already carries peft adapters from an earlier method in `methods`; "
                          "use one of lora / prompt_tuning per run")
    from transformers import PreTrainedModel
    if not isinstance(model, PreTrainedModel):
        raise MethodError(f"{method}: the model is a {type(model).__name__} built by an earlier method, not a "
                          f"transformers model; list {method} before that method in `methods`")


@register
@dataclass
class LoRA(Method):
    """Args:
        r: adapter rank. alpha: scaling numerator (the update is scaled by alpha / r, or alpha / sqrt(r) with
            use_rslora). dropout: dropout on the adapter's input.
        target_modules: "auto" (the attention projections of the architecture), "all-linear" (every Linear
            layer but the output layer), or a list of module names such as ["q_proj", "v_proj"].
        use_dora: weight-decomposed LoRA (a trained magnitude per output feature). use_rslora: rank-stabilised
            scaling alpha / sqrt(r), which keeps large ranks learning.
    """

    name: ClassVar[str] = "lora"
    wraps_model: ClassVar[bool] = True
    r: int = 8
    alpha: float = 16
    dropout: float = 0.05
    target_modules: str | list[str] = "auto"
    use_dora: bool = False
    use_rslora: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 1:
            raise MethodError(f"lora: r (the adapter rank) must be a whole number >= 1, got {self.r!r}")
        if not _number(self.alpha) or self.alpha <= 0:
            raise MethodError(f"lora: alpha must be a number > 0, got {self.alpha!r}")
        if not _number(self.dropout) or not 0 <= self.dropout < 1:
            raise MethodError(f"lora: dropout must be in [0, 1), got {self.dropout!r}")
        for option in ("use_dora", "use_rslora"):
            if not isinstance(getattr(self, option), bool):
                raise MethodError(f"lora: {option} must be true or false, got {getattr(self, option)!r}")
        t = self.target_modules
        if isinstance(t, str) and t not in ("auto", "all-linear"):
            raise MethodError(f"lora: target_modules must be 'auto', 'all-linear' or a list of module names, got "
                              f"{t!r} (for one module write [{t!r}])")
        if not isinstance(t, str) and (not isinstance(t, list) or not t or not all(isinstance(x, str) for x in t)):
            raise MethodError(f"lora: target_modules must be a non-empty list of module names, got {t!r}")

    def resolve_targets(self, model: Any) -> str | list[str]:
        """The target list handed to peft; raises MethodError naming a target the model lacks."""
        linear = linear_module_names(model)
        short = _short(linear)
        model_type = getattr(getattr(model, "config", None), "model_type", "?")
        if self.target_modules == "all-linear":
            return "all-linear"
        if self.target_modules == "auto":
            found = infer_targets(model_type, linear)
            if not found:
                raise MethodError(f"lora: cannot infer target_modules for model type {model_type!r}; its Linear "
                                  f"modules are {short}. Set target_modules to a list of them, or 'all-linear'")
            return found
        for target in self.target_modules:
            if any(_matches(target, n) for n in linear):
                continue
            close = difflib.get_close_matches(target, short, n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            other = next((type(m).__name__ for n, m in model.named_modules() if _matches(target, n)), None)
            kind = f" ({target!r} is a {other}, not a Linear layer)" if other else ""
            raise MethodError(f"lora: target module {target!r} is not a Linear layer of this model ({model_type})"
                              f"{kind}.{hint} Its Linear modules are: {', '.join(short)}")
        return list(self.target_modules)

    def prepare(self, model: Any, cfg: Any) -> Any:
        from peft import LoraConfig, get_peft_model
        check_peft_free(model, self.name)
        config = LoraConfig(task_type=task_type(cfg.task), r=self.r, lora_alpha=self.alpha,
                            lora_dropout=float(self.dropout), target_modules=self.resolve_targets(model),
                            use_dora=self.use_dora, use_rslora=self.use_rslora)
        with warnings.catch_warnings():  # peft asks for transformers' renamed `is_gradient_checkpointing`
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(model, config)


def _peft_model(run_or_model: Any) -> Any:
    model = getattr(run_or_model, "raw_model", run_or_model)
    if not hasattr(model, "peft_config"):
        raise MethodError(f"this {type(model).__name__} has no peft adapters; train with methods=[{{name: lora}}] "
                          "(or prompt_tuning) first")
    return model


def trainable_share(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts of a model or a Run; shared (tied) tensors count once.

        >>> import torch
        >>> net = torch.nn.Linear(4, 2)
        >>> _ = net.bias.requires_grad_(False)
        >>> trainable_share(net)
        (8, 10)
    """
    model = getattr(model, "raw_model", model)
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def merge_adapters(run: Any) -> Any:
    """A plain transformers model with the LoRA adapters merged into its weights (peft merge_and_unload on a
    copy, so the run keeps its adapters). Example: ``merge_adapters(run).save_pretrained("merged")``."""
    model = _peft_model(run)
    if model.active_peft_config.is_prompt_learning:
        raise MethodError("merge_adapters: prompt/prefix tuning adds virtual tokens, not weight deltas, so there "
                          "is nothing to merge; keep them with save_adapters(run, directory)")
    merged = copy.deepcopy(model).merge_and_unload()
    merged.train(model.training)
    return merged


def save_adapters(run: Any, directory: str | Path) -> Path:
    """peft's save_pretrained (adapter_model.safetensors + adapter_config.json) plus the run's tokenizer.
    Load with ``PeftModel.from_pretrained(base_model, directory)``."""
    directory = Path(directory)
    model = _peft_model(run)
    accelerator = getattr(run, "accelerator", None)
    if accelerator is None or accelerator.is_main_process:
        model.save_pretrained(str(directory))
        tokenizer = getattr(run, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.save_pretrained(str(directory))
    return directory
