"""Prompt tuning and prefix tuning through peft: the model stays frozen and a few virtual tokens train.

``kind="prompt"`` prepends `num_virtual_tokens` trained embeddings to every input (peft's PromptTuning);
``kind="prefix"`` gives every attention layer trained key/value vectors for them (peft's PrefixTuning). For
classification the new head trains too (peft's ``modules_to_save``). ``init_text`` starts the prompt from the
embeddings of a text, tokenized with the run's tokenizer; without it the prompt starts from embeddings of
randomly sampled vocabulary tokens, which sit where real tokens do (peft's default, N(0, 1) vectors, does not).
Prefix keys/values start as peft's N(0, 1) draw scaled by 0.1, close to a no-op on a pretrained model.

What peft supports on the bundled models (others are probed with one forward pass in ``prepare``):

    kind    classification                token-classification  causal-lm
    prompt  encoders (tiny-bert, minilm)  refused               tiny-llama, smollm2, tiny-deepseek-v3
    prefix  refused                       refused               tiny-llama, smollm2 (not DeepSeek-V3's MLA)

Refused, with a MethodError before training: prompt tuning for token classification (the logits would be
longer than the labels by the virtual tokens) and for decoder classification heads (they pool the last
non-padding token, which they cannot find in peft's input embeddings, so right-padded rows would be read at
a pad position); prefix tuning outside causal-lm (transformers' classification heads take no
``past_key_values``).

    >>> PromptTuning(kind="prompt", num_virtual_tokens=8, init_text="Classify the question:").kind
    'prompt'
"""
from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

from nbtune.methods import register
from nbtune.methods.base import Method, MethodError
from nbtune.methods.lora import check_peft_free, task_type

KINDS = ("prompt", "prefix")
PREFIX_INIT_SCALE = 0.1


def tokenizer_source(cfg: Any) -> str:
    """Where the run's tokenizer loads from (the same rule as the engine: model.tokenizer, else the model's)."""
    from nbtune import assets
    name = cfg.model.tokenizer
    if name is None or name in assets.MODELS:
        return assets.resolve_model(name or cfg.model.name).tokenizer_path
    return name


def _position_limit(model: Any) -> int | None:
    """Rows of the absolute position table (BERT), which the virtual tokens also use; None for rotary models."""
    import torch
    sizes = [m.num_embeddings for n, m in model.named_modules()
             if isinstance(m, torch.nn.Embedding) and n.rsplit(".", 1)[-1] in ("position_embeddings", "wpe")]
    return min(sizes) if sizes else None


def _pools_last_token(model: Any) -> bool:
    """Decoder classification heads (transformers names them `score`) read the last non-padding token."""
    from transformers.modeling_layers import GenericForSequenceClassification
    return isinstance(model, GenericForSequenceClassification) or hasattr(model, "score")


@register
@dataclass
class PromptTuning(Method):
    """Args:
        kind: "prompt" (trained input embeddings) or "prefix" (trained keys/values in every layer).
        num_virtual_tokens: how many virtual tokens; they lengthen every sequence the model sees.
        init_text: kind "prompt" only: start the virtual tokens from this text's token embeddings.
    """

    name: ClassVar[str] = "prompt_tuning"
    wraps_model: ClassVar[bool] = True
    kind: str = "prompt"
    num_virtual_tokens: int = 20
    init_text: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            close = difflib.get_close_matches(str(self.kind), KINDS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise MethodError(f"prompt_tuning: kind must be one of {KINDS}, got {self.kind!r}.{hint}")
        n = self.num_virtual_tokens
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise MethodError(f"prompt_tuning: num_virtual_tokens must be a whole number >= 1, got {n!r}")
        if self.init_text is not None:
            if self.kind != "prompt":
                raise MethodError("prompt_tuning: init_text works with kind 'prompt' only (prefix tuning trains "
                                  "keys and values, which no text embedding gives)")
            if not isinstance(self.init_text, str) or not self.init_text.strip():
                raise MethodError(f"prompt_tuning: init_text must be a non-empty text, got {self.init_text!r}")

    def check_supported(self, model: Any, cfg: Any) -> None:
        """Refuse the (kind x task x model) combinations peft gets wrong or cannot run."""
        what = f"prompt_tuning (kind {self.kind!r})"
        if self.kind == "prompt" and cfg.task == "token-classification":
            raise MethodError(f"{what} cannot tag tokens: peft prepends {self.num_virtual_tokens} virtual tokens, so "
                              "the per-token logits no longer line up with the labels. Use lora instead")
        if self.kind == "prompt" and cfg.task == "classification" and _pools_last_token(model):
            raise MethodError(f"{what} does not work with the decoder classification head "
                              f"{type(model).__name__}: it classifies from the last non-padding token, which it "
                              "cannot find in the embeddings peft passes, so padded rows would be read at a pad "
                              "position. Use lora, or an encoder model (tiny-bert, minilm)")
        if self.kind == "prefix" and cfg.task != "causal-lm":
            raise MethodError(f"{what} works for causal-lm only: peft hands the prefix to the model as "
                              f"past_key_values, which {type(model).__name__} does not take. Use kind 'prompt' "
                              "or lora")
        limit = _position_limit(model)
        if limit is not None and cfg.data.max_length + self.num_virtual_tokens > limit:
            raise MethodError(f"{what}: data.max_length={cfg.data.max_length} plus {self.num_virtual_tokens} virtual "
                              f"tokens exceeds the model's {limit} positions; set data.max_length to at most "
                              f"{limit - self.num_virtual_tokens} or use fewer virtual tokens")

    def peft_config(self, model: Any, cfg: Any) -> Any:
        from peft import PrefixTuningConfig, PromptTuningConfig, PromptTuningInit
        common = {"task_type": task_type(cfg.task), "num_virtual_tokens": self.num_virtual_tokens}
        if self.kind == "prefix":
            return PrefixTuningConfig(**common)
        if self.init_text is None:
            return PromptTuningConfig(**common, prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB)
        extra = {"revision": cfg.model.revision} if cfg.model.revision and not cfg.model.tokenizer else {}
        return PromptTuningConfig(**common, prompt_tuning_init=PromptTuningInit.TEXT,
                                  prompt_tuning_init_text=self.init_text, tokenizer_name_or_path=tokenizer_source(cfg),
                                  tokenizer_kwargs=extra or None)

    def prepare(self, model: Any, cfg: Any) -> Any:
        import torch
        from peft import get_peft_model
        check_peft_free(model, self.name)
        self.check_supported(model, cfg)
        with warnings.catch_warnings():  # peft asks for transformers' renamed `is_gradient_checkpointing`
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            wrapped = get_peft_model(model, self.peft_config(model, cfg))
        if self.kind == "prefix":
            # peft draws the prefix keys/values from N(0, 1), which throws a pretrained model far off before any
            # training (smollm2, one chat: loss 4.97 -> 8.01); x0.1 starts near a no-op (5.14) and, unlike
            # peft's init "zero", keeps the virtual tokens distinct (all-equal ones get equal gradients forever).
            with torch.no_grad():
                wrapped.prompt_encoder["default"].embedding.weight.mul_(PREFIX_INIT_SCALE)
        other = "kind 'prompt' or lora" if self.kind == "prefix" else "lora"
        _probe(wrapped, cfg, f"prompt_tuning (kind {self.kind!r})", other)
        return wrapped


def _probe(model: Any, cfg: Any, what: str, other: str) -> None:
    """One tiny forward pass in eval mode (no dropout, so no RNG is drawn): a combination peft cannot run
    fails here, with the model type in the message, rather than at the first training step."""
    import torch
    device = next(model.parameters()).device
    ids = torch.full((1, 4), 5, dtype=torch.long, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    except Exception as exc:  # noqa: BLE001 - any failure means this combination does not work
        model_type = getattr(model.config, "model_type", "?")
        raise MethodError(f"{what}: peft cannot run it on this {model_type} model for {cfg.task} "
                          f"({type(exc).__name__}: {str(exc)[:200]}). Use {other}") from None
    finally:
        model.train(was_training)
