"""Fine-tuning methods: a table-driven matrix (method x tiny model), golden losses, exact resume, and clear
errors for configurations that cannot work. One row per method; a new method adds its row."""
from __future__ import annotations

import json
import math

import pytest
import torch

from nbtune.config import ConfigError, RunConfig
from nbtune.engine.run import Run
from nbtune.methods import MethodError
from tests.test_resume import OVERRIDES, resume_is_exact

MODELS = {
    "bert-like": ["task=classification", "model.name=tiny-bert", "data.dataset=trec"],
    "llama-like": ["task=causal-lm", "model.name=tiny-llama"],                 # + a plain-text JSONL, below
    "deepseek-v3-like": ["task=causal-lm", "model.name=tiny-deepseek-v3"],
}
LAYER_LR = {"name": "layer_lr", "lr": {"embeddings": 1e-5, "attention": 2e-4}, "layer_decay": 0.5}

# method spec, expected group-name prefixes present, a check on each group's peak LR (name -> lr)
UNFREEZE = {"name": "unfreeze", "every_n_steps": 1}
MATRIX = [
    pytest.param(LAYER_LR, {"embeddings", "attention.0", "ffn.0", "norm"}, id="layer_lr"),
    pytest.param(UNFREEZE, {"decay", "no_decay"}, id="unfreeze"),
]


def _cfg(tmp_path, model: str, *extra: str, methods=()) -> RunConfig:
    data = []
    if model in ("llama-like", "deepseek-v3-like"):
        lm = tmp_path / "lm.jsonl"
        lm.write_text("".join(json.dumps({"text": f"the kitchen light {i} is on and the door {i % 7} is shut"}) + "\n"
                              for i in range(40)))
        data = [f"data.dataset={lm}"]
    cfg = RunConfig().with_overrides([
        *MODELS[model], *data, "data.max_train_samples=24", "data.max_eval_samples=8", "train.batch_size=8",
        "train.max_steps=3", "train.learning_rate=1e-3", "train.warmup_ratio=0", "train.scheduler=constant",
        "train.progress_bar=false", "train.tensorboard=false", "train.sync_every_n_steps=1",
        f"output_dir={tmp_path}", *extra])
    cfg.methods = list(methods)
    return cfg


def _steps(run) -> list[dict]:
    return [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == "step"]


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("spec, groups", MATRIX)
def test_method_trains_three_steps_with_its_groups(tmp_path, model, spec, groups):
    run = Run(_cfg(tmp_path, model, methods=[spec]))
    names = [g["name"] for g in run.optimizer.param_groups]
    assert groups <= {n.split(" (")[0] for n in names} | {n.split(" (")[0].split(".")[0] for n in names}
    trainable = {id(p) for p in run.raw_model.parameters() if p.requires_grad}
    in_groups = [id(p) for g in run.optimizer.param_groups for p in g["params"]]
    assert sorted(in_groups) == sorted(trainable)                    # every trainable parameter, exactly once
    run.start()
    steps = _steps(run)
    assert [s["step"] for s in steps] == [1, 2, 3] and all(math.isfinite(s["loss"]) for s in steps)
    assert set(steps[-1]["lr"]) == set(names)                         # groups appear by name in the metrics


def test_layer_lr_values_and_decay(tmp_path):
    run = Run(_cfg(tmp_path, "bert-like", methods=[LAYER_LR]))
    lr = {g["name"]: g["lr"] for g in run.optimizer.param_groups}
    # tiny-bert has 2 layers: layer 1 (top) keeps the group LR, layer 0 gets x0.5; embeddings x0.5^2
    assert lr["attention.1"] == pytest.approx(2e-4) and lr["attention.0"] == pytest.approx(1e-4)
    assert lr["ffn.1"] == pytest.approx(1e-3) and lr["ffn.0"] == pytest.approx(5e-4)
    assert lr["embeddings"] == pytest.approx(1e-5 * 0.25)
    assert lr["head"] == pytest.approx(1e-3)                          # unnumbered: no decay
    run.control.set("lr", 5e-4)                                       # a live edit keeps the ratios
    run.service_control()
    after = {g["name"]: g["lr"] for g in run.optimizer.param_groups}
    assert after["attention.1"] / after["head"] == pytest.approx(lr["attention.1"] / lr["head"])


def test_layer_lr_golden_loss(tmp_path):
    """Fixed seed, fixed data: the first three losses are pinned so a change in the maths is caught."""
    run = Run(_cfg(tmp_path, "bert-like", "train.seed=7", methods=[LAYER_LR]))
    run.start()
    losses = [s["loss"] for s in _steps(run)]
    assert losses == pytest.approx(GOLDEN["layer_lr"], abs=1e-5), losses


GOLDEN = {"layer_lr": [1.7842252, 1.7881374, 1.7879360]}


def test_resume_is_bit_identical_with_layer_lr(tmp_path):
    methods = "methods=[{name: layer_lr, lr: {embeddings: 1e-4, attention: 5e-4}, layer_decay: 0.8}]"
    extra = {"overrides": [*OVERRIDES, methods]}
    ref_s, _ = resume_is_exact(tmp_path, [6, 1], **extra)
    assert len(ref_s["scheduler"]["base_lrs"]) > 2                   # really the per-group setup


def test_progressive_unfreezing_opens_one_block_per_interval(tmp_path):
    run = Run(_cfg(tmp_path, "bert-like", "train.max_steps=4", methods=[{"name": "unfreeze", "every_n_steps": 1}]))
    (method,) = run.methods
    assert method.block_names == ["head", "layer 1", "layer 0", "embeddings"]
    snapshots = {}
    for step in range(5):
        run.state.step = step
        method.on_step(run.state, run.optimizer)
        snapshots[step] = [all(p.requires_grad for p in b) for b in method.blocks]
    assert snapshots[0] == [True, False, False, False]                 # the head only
    assert snapshots[2] == [True, True, True, False]
    assert snapshots[4] == [True, True, True, True]
    run.state.step = 0
    method._open = None
    before = {n: p.detach().clone() for n, p in run.raw_model.named_parameters()}
    run.start()
    edits = [e for e in run.control.edits if e["name"] == "unfreeze"]
    assert [e["step"] for e in edits] == [0, 1, 2, 3]
    after = dict(run.raw_model.named_parameters())
    emb = [n for n in before if "embeddings" in n]
    # embeddings opened only after step 3, so exactly one update (step 4) touched them; the head moved from step 1
    assert all(not torch.equal(before[n], after[n]) for n in before if n.startswith("classifier"))
    assert any(not torch.equal(before[n], after[n]) for n in emb)


def test_freeze_then_unfreeze_and_resume_is_exact(tmp_path):
    methods = "methods=[{name: unfreeze, schedule: freeze_then_unfreeze, every_n_epochs: 1}]"
    extra = {"overrides": [*OVERRIDES, methods]}
    resume_is_exact(tmp_path, [3, 1], **extra)
    edits = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    unfreeze = [(e["step"], e["new"]) for e in edits if e.get("kind") == "edit" and e["name"] == "unfreeze"]
    assert unfreeze == [(0, "1/4 blocks: down to head"), (4, "4/4 blocks: down to embeddings")]


def test_bad_method_configs_fail_before_training(tmp_path):
    with pytest.raises(ConfigError, match="unknown method 'layer_rl'. Did you mean 'layer_lr'"):
        RunConfig(methods=[{"name": "layer_rl"}]).validate()
    with pytest.raises(ConfigError, match=r"lr given for unknown group\(s\) \['attn'\]"):
        RunConfig(methods=[{"name": "layer_lr", "lr": {"attn": 1e-5}}]).validate()
    with pytest.raises(ConfigError, match="unexpected keyword argument 'decay'"):
        RunConfig(methods=[{"name": "layer_lr", "decay": 0.9}]).validate()
    with pytest.raises(ConfigError, match="exactly one of every_n_steps or every_n_epochs"):
        RunConfig(methods=[{"name": "unfreeze"}]).validate()
    cfg = _cfg(tmp_path, "bert-like", methods=[{"name": "layer_lr", "patterns": {"adapters": r"lora_"}}])
    with pytest.raises(MethodError, match=r"group\(s\) \['adapters'\] match no trainable parameter"):
        Run(cfg)
    assert not any((tmp_path).rglob("metrics.jsonl"))                 # nothing trained, nothing written


def test_param_groups_cover_trainable_parameters_only(tmp_path):
    run = Run(_cfg(tmp_path, "bert-like"))
    assert [g["name"] for g in run.optimizer.param_groups] == ["decay", "no_decay"]
    total = sum(p.numel() for g in run.optimizer.param_groups for p in g["params"])
    assert total == sum(p.numel() for p in run.raw_model.parameters() if p.requires_grad)
    assert isinstance(run.optimizer, torch.optim.AdamW)


# Pairs that make sense together; each trains three steps with finite loss and both methods visibly at work.
PAIRS = [
    pytest.param([LAYER_LR, UNFREEZE], "bert-like", (), id="layer_lr+unfreeze"),
    pytest.param([{"name": "curriculum", "start": 0.5}, LAYER_LR], "llama-like", (), id="curriculum+layer_lr"),
    pytest.param([{"name": "heads", "head": "bilstm_crf"}, {"name": "adversarial", "kind": "fgm", "epsilon": 0.5}],
                 "bert-like", ("task=token-classification", "data.dataset=peoples-daily-ner"), id="crf+adversarial"),
    # listed after layer_lr, the head still wraps the model first: its new parameters are in the optimizer
    pytest.param([LAYER_LR, {"name": "heads", "head": "mlp"}], "bert-like", (), id="layer_lr+mlp_head"),
    pytest.param([{"name": "layer_lr", "lr": {"attention": 5e-4}}, {"name": "lora", "r": 4}], "llama-like", (),
                 id="layer_lr+lora"),
    pytest.param([{"name": "lora", "r": 4}, {"name": "distill", "teacher": "tiny-bert"}], "bert-like", (),
                 id="lora+distill"),
]


@pytest.mark.parametrize("methods, model, extra", PAIRS)
def test_methods_compose_pairwise(tmp_path, methods, model, extra):
    run = Run(_cfg(tmp_path, model, *extra, methods=methods))
    assert [m.name for m in run.methods] == [m["name"] for m in methods]
    trainable = {id(p) for p in run.raw_model.parameters() if p.requires_grad}
    assert sorted(id(p) for g in run.optimizer.param_groups for p in g["params"]) == sorted(trainable)
    run.start()
    steps = _steps(run)
    assert [s["step"] for s in steps] == [1, 2, 3] and all(math.isfinite(s["loss"]) for s in steps)
    names = {n for s in steps for n in s["lr"]}
    if LAYER_LR in methods:
        assert {"embeddings", "attention.0"} <= {n.split(" (")[0] for n in names}
    if UNFREEZE in methods:
        assert [e["step"] for e in run.control.edits if e["name"] == "unfreeze"] == [0, 1, 2, 3]
    if any(m["name"] == "lora" for m in methods):                      # only adapters (and the head) train
        assert all("lora_" in n or "classifier" in n for n, p in run.raw_model.named_parameters() if p.requires_grad)
    if any(m["name"] == "distill" for m in methods):
        assert all(s["methods"]["loss/distill"] > 0 for s in steps)
    if "adversarial" in run.cfg.methods[-1]["name"]:
        assert all(s["methods"]["loss/adversarial"] > 0 for s in steps)
        assert type(run.raw_model).__name__ == "HeadModel"               # the perturbation reached the CRF model
