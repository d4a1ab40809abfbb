"""lora and prompt_tuning (peft): the method matrix (method x tiny model) with EXACTLY the expected parameters
trainable, golden losses, bit-identical resume, merge and save parity, the trainable share, and clear errors
for targets and combinations that cannot work. The demo (LoRA SFT of smollm2) runs in the integration tier."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nbtune.methods.lora  # noqa: F401  (registers "lora")
import nbtune.methods.prompt_tuning  # noqa: F401  (registers "prompt_tuning")
from nbtune import assets
from nbtune.config import ConfigError, RunConfig
from nbtune.engine import build, tasks
from nbtune.engine.run import Run
from nbtune.methods import MethodError
from nbtune.methods.lora import infer_targets, merge_adapters, save_adapters, trainable_share
from tests.test_methods import MODELS, _cfg, _steps
from tests.test_resume import OVERRIDES, _final, resume_is_exact

ROOT = Path(__file__).resolve().parents[1]
SHORT = "data.max_length=64"   # tiny-bert has 128 positions; virtual tokens need room
TARGETS = {"bert-like": ("query", "key", "value"), "llama-like": ("q_proj", "k_proj", "v_proj", "o_proj"),
           "deepseek-v3-like": ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")}
N_TARGETS = {"bert-like": 2 * 3, "llama-like": 2 * 4, "deepseek-v3-like": 3 * 5}   # layers x projections
LORA = {"name": "lora"}
DORA = {"name": "lora", "r": 4, "use_dora": True, "use_rslora": True}
PROMPT = {"name": "prompt_tuning", "num_virtual_tokens": 4}
PREFIX = {"name": "prompt_tuning", "kind": "prefix", "num_virtual_tokens": 4}
MATRIX = [pytest.param(m, s, id=f"{i}-{m}") for i, s in (("lora", LORA), ("dora-rslora", DORA), ("prompt", PROMPT))
          for m in MODELS] + [pytest.param("llama-like", PREFIX, id="prefix-llama-like")]


def _plain_model(run: Run) -> torch.nn.Module:
    """The model without peft, built independently of it: only its module names are used."""
    resolved = assets.resolve_model(run.cfg.model.name)
    return tasks.load_model(run.cfg.task, resolved.path, resolved.config, run.data.label_names, "pretrained", False)


def _expected_trainable(run: Run, model: str, spec: dict) -> set[str]:
    head = ("classifier",) if run.cfg.task != "causal-lm" else ()
    if spec["name"] == "lora":
        modules = [n for n, _ in _plain_model(run).named_modules() if n.rsplit(".", 1)[-1] in TARGETS[model]]
        assert len(modules) == N_TARGETS[model]
        kinds = ["lora_A", "lora_B"] + (["lora_magnitude_vector"] if spec.get("use_dora") else [])
        names = {f"base_model.model.{m}.{k}.default.weight" for m in modules for k in kinds}
        return names | {f"base_model.model.{h}.modules_to_save.default.{w}" for h in head for w in ("weight", "bias")}
    return {"prompt_encoder.default.embedding.weight"} | {
        f"base_model.{h}.modules_to_save.default.{w}" for h in head for w in ("weight", "bias")}


@pytest.mark.parametrize("model, spec", MATRIX)
def test_peft_method_trains_three_steps_with_exactly_its_parameters(tmp_path, model, spec):
    run = Run(_cfg(tmp_path, model, SHORT, methods=[spec]))
    named = dict(run.raw_model.named_parameters())
    trainable = {n for n, p in named.items() if p.requires_grad}
    assert trainable == _expected_trainable(run, model, spec)
    in_groups = [id(p) for g in run.optimizer.param_groups for p in g["params"]]
    assert sorted(in_groups) == sorted(id(named[n]) for n in trainable)          # each exactly once
    if spec["name"] == "prompt_tuning":
        width = run.raw_model.config.hidden_size
        if spec.get("kind") == "prefix":   # keys and values of every layer: layers x 2 x kv heads x head size
            c = run.raw_model.config
            width = c.num_hidden_layers * 2 * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads)
            assert 0.05 < float(named["prompt_encoder.default.embedding.weight"].detach().std()) < 0.2   # N(0, 1) x 0.1
        assert named["prompt_encoder.default.embedding.weight"].shape == (4, width)
    before = {n: p.detach().clone() for n, p in named.items()}
    run.start()
    steps = _steps(run)
    assert [s["step"] for s in steps] == [1, 2, 3] and all(math.isfinite(s["loss"]) for s in steps)
    assert all(torch.equal(before[n], p) for n, p in named.items() if n not in trainable)   # the base is frozen
    moved = [n for n in trainable if not torch.equal(before[n], named[n])]
    assert any("lora_B" in n or "prompt_encoder" in n for n in moved), moved
    assert math.isfinite(run.results["validation"]["loss"])                     # evaluate() runs on the wrapper


def test_lora_tags_tokens_with_its_head(tmp_path):
    cfg = _cfg(tmp_path, "bert-like", "task=token-classification", "data.dataset=peoples-daily-ner", methods=[LORA])
    run = Run(cfg)
    trainable = {n for n, p in run.raw_model.named_parameters() if p.requires_grad}
    assert trainable == _expected_trainable(run, "bert-like", LORA)          # adapters + the tagging head
    run.start()
    assert all(math.isfinite(s["loss"]) for s in _steps(run)) and "token_f1" in run.results["validation"]


def test_all_linear_adapts_every_linear_layer_but_the_output(tmp_path):
    run = Run(_cfg(tmp_path, "llama-like", methods=[{"name": "lora", "target_modules": "all-linear"}]))
    names = [n for n, _ in run.raw_model.named_parameters() if ".lora_A." in n]
    adapted = {n.split(".lora_A.")[0].rsplit(".", 1)[-1] for n in names}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_golden_losses(tmp_path):
    """Fixed seed, fixed data: the first three losses are pinned so a change in the maths is caught."""
    got = {}
    for key, model, spec in (("lora", "bert-like", LORA), ("prompt", "llama-like", PROMPT)):
        (tmp_path / key).mkdir()
        run = Run(_cfg(tmp_path / key, model, SHORT, "train.seed=7", methods=[spec]))
        run.start()
        got[key] = [s["loss"] for s in _steps(run)]
    for key, losses in GOLDEN.items():
        assert got[key] == pytest.approx(losses, abs=1e-5), got


GOLDEN = {"lora": [1.7873394, 1.7880861, 1.7910647], "prompt": [10.3484392, 10.3480072, 10.3324366]}


@pytest.mark.parametrize("methods", [
    "methods=[{name: lora, r: 4, dropout: 0.1, use_dora: true}]",
    "methods=[{name: prompt_tuning, num_virtual_tokens: 4}]",
], ids=["lora-dora", "prompt_tuning"])
def test_resume_is_bit_identical_with_peft(tmp_path, methods):
    extra = {"overrides": [*OVERRIDES, SHORT, methods]}
    resume_is_exact(tmp_path, [5, 1], **extra)                          # stopped inside an accumulation window
    ref_w, _ = _final(tmp_path / "ref")
    assert any("lora_" in k or "prompt_encoder" in k for k in ref_w)          # the adapters are in the checkpoint


def _logits(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    model.train()
    return out


def _trained(tmp_path, model: str, spec: dict) -> tuple[Run, dict]:
    run = Run(_cfg(tmp_path, model, SHORT, "train.precision=fp32", methods=[spec]))
    run.start()
    rows = run.data.rows["validation"]
    return run, run.collate(list(range(min(4, len(rows)))), rows)


@pytest.mark.parametrize("model, spec", [("bert-like", LORA), ("llama-like", DORA)], ids=["lora-head", "dora"])
def test_merged_model_gives_the_adapter_models_logits(tmp_path, model, spec):
    run, batch = _trained(tmp_path, model, spec)
    assert any(p.abs().max() > 0 for n, p in run.raw_model.named_parameters() if "lora_B" in n)
    adapted = _logits(run.raw_model, batch)
    with run.raw_model.disable_adapter():
        base = _logits(run.raw_model, batch)
    assert (adapted - base).abs().max() > 1e-6                                # the adapters do change the output
    share = trainable_share(run)
    merged = merge_adapters(run)
    assert "Peft" not in type(merged).__name__ and not any("lora_" in n for n, _ in merged.named_parameters())
    assert (_logits(merged, batch) - adapted).abs().max() < 1e-5
    assert torch.equal(_logits(run.raw_model, batch), adapted)               # the run keeps its adapters
    assert trainable_share(run) == share


@pytest.mark.parametrize("model, spec", [("bert-like", LORA), ("llama-like", PROMPT)], ids=["lora-head", "prompt"])
def test_saved_adapters_load_onto_a_fresh_base(tmp_path, model, spec):
    from peft import PeftModel
    from transformers import set_seed
    run, batch = _trained(tmp_path, model, spec)
    directory = save_adapters(run, tmp_path / "adapters")
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer_config.json"} <= {
        p.name for p in directory.iterdir()}
    set_seed(run.cfg.train.seed)   # the tiny models are random-init: the same seed rebuilds the same base
    base = build.build_model(run.cfg, assets.resolve_model(run.cfg.model.name), run.data.label_names, run.tokenizer)
    assert torch.equal(base.get_input_embeddings().weight, run.raw_model.get_input_embeddings().weight)
    loaded = PeftModel.from_pretrained(base, str(directory))
    assert (_logits(loaded, batch) - _logits(run.raw_model, batch)).abs().max() < 1e-6


def test_trainable_share_counts_adapters_and_head(tmp_path):
    run = Run(_cfg(tmp_path, "bert-like", methods=[{"name": "lora", "r": 8}]))
    hidden, labels = 32, len(run.data.label_names)
    lora = 6 * (8 * hidden + hidden * 8)                    # q, k, v in 2 layers: A (r x in) + B (out x r)
    head = hidden * labels + labels                         # the classifier copy peft trains (modules_to_save)
    trainable, total = trainable_share(run)
    assert trainable == lora + head
    assert (trainable, total) == run.raw_model.get_nb_trainable_parameters()
    assert total == sum(p.numel() for p in _plain_model(run).parameters()) + trainable
    assert trainable / total < 0.01


def test_prompt_init_text_starts_from_the_texts_embeddings(tmp_path):
    text = "what kind of question is this"
    run = Run(_cfg(tmp_path, "bert-like", SHORT, methods=[{**PROMPT, "num_virtual_tokens": 10, "init_text": text}]))
    ids = run.tokenizer(text)["input_ids"]                                  # [CLS] six words [SEP]
    assert len(ids) < 10
    ids = (ids * 2)[:10]                                                    # peft repeats the text to fill
    words = run.raw_model.get_input_embeddings().weight[ids]
    assert torch.equal(run.raw_model.prompt_encoder["default"].embedding.weight, words)


def test_auto_targets_for_other_architectures():
    qwen2 = [f"model.layers.0.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
    assert infer_targets("qwen2", [*qwen2, "model.layers.0.mlp.up_proj"]) == ["q_proj", "k_proj", "v_proj", "o_proj"]
    no_q_rank = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.kv_a_proj_with_mqa",
                 "model.layers.0.self_attn.kv_b_proj", "model.layers.0.self_attn.o_proj"]
    assert infer_targets("deepseek_v3", no_q_rank) == ["q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]
    assert infer_targets("some-encoder", ["enc.0.attn.query", "enc.0.attn.value"]) == ["query", "value"]
    assert infer_targets("mystery", ["net.fc1", "net.fc2"]) == []


def test_lora_composes_with_layer_lr(tmp_path):
    spec = {"name": "layer_lr", "lr": {"attention": 5e-4}}
    run = Run(_cfg(tmp_path, "bert-like", methods=[LORA, spec]))
    groups = {g["name"]: g for g in run.optimizer.param_groups}
    assert groups["attention"]["lr"] == pytest.approx(5e-4) and groups["head"]["lr"] == pytest.approx(1e-3)
    assert len(groups["attention"]["params"]) == 12                          # lora_A and lora_B of 6 projections
    assert sum(len(g["params"]) for g in groups.values()) == sum(p.requires_grad for p in run.raw_model.parameters())


@pytest.mark.parametrize("spec, message", [
    ({"name": "lora", "r": 0}, r"lora: r \(the adapter rank\) must be a whole number >= 1, got 0"),
    ({"name": "lora", "dropout": 1.0}, r"lora: dropout must be in \[0, 1\), got 1.0"),
    ({"name": "lora", "target_modules": "q_proj"}, r"'auto', 'all-linear' or a list .* \(for one module write "
                                                   r"\['q_proj'\]\)"),
    ({"name": "lora", "rank": 8}, "unexpected keyword argument 'rank'"),
    ({"name": "prompt_tuning", "kind": "prefx"}, "kind must be one of .* got 'prefx'. Did you mean 'prefix'"),
    ({"name": "prompt_tuning", "kind": "prefix", "init_text": "hi"}, "init_text works with kind 'prompt' only"),
    ({"name": "prompt_tuning", "num_virtual_tokens": 0}, "num_virtual_tokens must be a whole number >= 1, got 0"),
])
def test_bad_options_fail_in_the_config(spec, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(methods=[spec]).validate()


@pytest.mark.parametrize("model, extra, specs, message", [
    ("llama-like", (), [{"name": "lora", "target_modules": ["q_proj", "q_projj"]}],
     r"target module 'q_projj' is not a Linear layer of this model \(llama\)\. Did you mean 'q_proj'\? Its Linear "
     r"modules are: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head"),
    ("bert-like", (), [{"name": "lora", "target_modules": ["query", "attention"]}],
     r"'attention' is a BertAttention, not a Linear layer"),
    ("deepseek-v3-like", (), [{"name": "lora", "target_modules": ["kv_proj"]}],
     r"target module 'kv_proj' .*\(deepseek_v3\)\. Did you mean 'kv_b_proj'\?.* q_a_proj, q_b_proj, "
     r"kv_a_proj_with_mqa, kv_b_proj, o_proj"),
    ("bert-like", (SHORT,), [PREFIX], r"prompt_tuning \(kind 'prefix'\) works for causal-lm only: .*"
                                      r"BertForSequenceClassification"),
    ("deepseek-v3-like", (), [PREFIX], r"prompt_tuning \(kind 'prefix'\): peft cannot run it on this deepseek_v3 "
                                       r"model for causal-lm \(RuntimeError: .*\)\. Use kind 'prompt' or lora"),
    ("llama-like", ("task=classification", "data.dataset=trec"), [PROMPT],
     r"does not work with the decoder classification head LlamaForSequenceClassification"),
    ("bert-like", (), [{"name": "prompt_tuning"}],
     r"data.max_length=128 plus 20 virtual tokens exceeds the model's 128 positions; set data.max_length to at "
     r"most 108"),
    ("bert-like", (SHORT,), [LORA, PROMPT], r"prompt_tuning: the model already carries peft adapters"),
])
def test_unworkable_setups_fail_before_training(tmp_path, model, extra, specs, message):
    with pytest.raises(MethodError, match=message):
        Run(_cfg(tmp_path, model, *extra, methods=specs))
    assert not any(tmp_path.rglob("metrics.jsonl"))                         # nothing trained, nothing written


def test_prompt_tuning_refuses_token_classification(tmp_path):
    cfg = _cfg(tmp_path, "bert-like", "task=token-classification", "data.dataset=peoples-daily-ner", SHORT,
               methods=[PROMPT])
    with pytest.raises(MethodError, match="cannot tag tokens: peft prepends 4 virtual tokens"):
        Run(cfg)


def test_merge_refuses_prompt_tuning_and_plain_runs(tmp_path):
    run = Run(_cfg(tmp_path, "bert-like", SHORT, methods=[PROMPT]))
    with pytest.raises(MethodError, match="nothing to merge; keep them with save_adapters"):
        merge_adapters(run)
    plain = Run(_cfg(tmp_path, "bert-like"))
    with pytest.raises(MethodError, match="has no peft adapters; train with methods="):
        merge_adapters(plain)


@pytest.mark.integration
def test_lora_sft_demo_lowers_smollm2_perplexity(tmp_path):
    args = ["--steps", "30", "--batch-size", "2", "--max-length", "64", "--eval-samples", "24", "--max-new-tokens",
            "12", "--threads", "1", "--output-dir", str(tmp_path)]
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "demo_lora_sft.py"), *args],
                         capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["share"] < 0.05 and summary["trainable"] > 0
    assert summary["perplexity_after"] < summary["perplexity_before"], summary
    assert len(summary["before"]) == len(summary["after"]) == 3 and all(summary["after"])
    assert "trainable parameters:" in out.stdout and "perplexity" in out.stdout
    assert (Path(summary["adapters"]) / "adapter_model.safetensors").is_file()
