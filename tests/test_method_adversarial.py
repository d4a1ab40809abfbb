"""The adversarial method: FGM/PGD loss terms and NEFTune noise on the input embeddings of BERT-, Llama- and
DeepSeek-V3-like tiny models; perturbation norms, ascent, the epsilon ball, NEFTune's scale, golden losses,
exact resume, the class-weighted loss, hooks that go away, and clear errors."""
from __future__ import annotations

import doctest
import gc
import json
import math
import subprocess
import sys

import pytest
import torch

import nbtune.methods.adversarial as adversarial  # registers "adversarial"
from nbtune.config import ConfigError, RunConfig
from nbtune.engine.loop import compute_loss, training_loss
from nbtune.engine.run import Run
from nbtune.methods import MethodError
from nbtune.methods.adversarial import Adversarial, example_norms, input_embeddings
from nbtune.methods.base import LossContext
from tests.test_methods import MODELS, _cfg, _steps
from tests.test_resume import OVERRIDES, WORKER, _final, _max_diff

FGM = {"name": "adversarial", "kind": "fgm", "epsilon": 1.0}
PGD = {"name": "adversarial", "kind": "pgd", "epsilon": 1.0, "steps": 2}
NEFTUNE = {"name": "adversarial", "kind": "neftune", "noise_alpha": 5}
NO_DROPOUT = "model.config_overrides={hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}"
MATRIX = [(m, k) for m in MODELS for k in ("fgm", "pgd", "neftune") if not (m == "bert-like" and k == "neftune")]
_PARAM_NAMES: dict[str, list[str]] = {}


def _plain_parameter_names(tmp_path, model: str) -> list[str]:
    if model not in _PARAM_NAMES:
        (tmp_path / "plain").mkdir()
        _PARAM_NAMES[model] = [n for n, _ in Run(_cfg(tmp_path / "plain", model)).raw_model.named_parameters()]
    return _PARAM_NAMES[model]


@pytest.mark.parametrize("model, kind", MATRIX, ids=[f"{k}-{m}" for m, k in MATRIX])
def test_adversarial_trains_three_steps_on_every_model(tmp_path, model, kind):
    spec = {"fgm": FGM, "pgd": PGD, "neftune": NEFTUNE}[kind]
    run = Run(_cfg(tmp_path, model, methods=[spec]))
    named = list(run.raw_model.named_parameters())
    assert [n for n, _ in named] == _plain_parameter_names(tmp_path, model)   # nothing added to the model
    assert all(p.requires_grad for _, p in named)                             # and nothing frozen
    in_groups = sorted(id(p) for g in run.optimizer.param_groups for p in g["params"])
    assert in_groups == sorted(id(p) for _, p in named)
    assert len(input_embeddings(run.raw_model)._forward_hooks) == 1
    run.start()
    steps = _steps(run)
    assert [s["step"] for s in steps] == [1, 2, 3] and all(math.isfinite(s["loss"]) for s in steps)
    for s in steps:
        figures = s["methods"]
        if kind == "neftune":
            assert set(figures) == {"adversarial/noise_scale"} and figures["adversarial/noise_scale"] > 0
        else:
            assert set(figures) == {"loss/adversarial", "loss/task", "adversarial/perturbation_norm"}
            assert figures["adversarial/perturbation_norm"] == pytest.approx(1.0, rel=1e-5)
            assert s["loss"] == pytest.approx(figures["loss/task"] + figures["loss/adversarial"], rel=1e-5)
    (method,) = run.methods
    assert method._captured is None and method._delta is None                 # no graph kept past a step


def _trained_bert(tmp_path, spec, *extra: str, steps: int = 15) -> Run:
    run = Run(_cfg(tmp_path, "bert-like", NO_DROPOUT, f"train.max_steps={steps}", "train.seed=3", *extra,
                   methods=[spec]))
    run.start()
    return run


def _clean_forward(run: Run, rows: list[int]) -> tuple[dict, object, LossContext]:
    """One training-mode forward (the hook captures the embeddings) and the context the engine would build."""
    batch = {k: v.to(run.device) for k, v in run.collate(rows, run.data.rows["train"]).items()}
    run.raw_model.train()
    out = run.raw_model(**batch)
    ctx = LossContext(model=run.model, raw_model=run.raw_model, task=run.cfg.task, step=run.state.step,
                      loss=out.loss, rows=rows, label_names=run.data.label_names)
    return batch, out, ctx


def test_fgm_perturbation_has_norm_epsilon_and_is_an_ascent_direction(tmp_path):
    run = _trained_bert(tmp_path, {**FGM, "epsilon": 0.5})
    (method,) = run.methods
    rows = list(range(8))
    batch, out, ctx = _clean_forward(run, rows)
    delta = method.perturbation(batch, out, ctx)
    assert delta.shape == (8, batch["input_ids"].shape[1], 32)
    assert example_norms(delta).tolist() == pytest.approx([0.5] * 8, rel=1e-5)      # per example, as documented
    assert float(delta[batch["attention_mask"] == 0].abs().sum()) == 0.0             # padding is not moved
    adv = float(method._forward_loss(batch, out, ctx, delta).detach())
    clean = float(out.loss.detach())
    at_zero = method._forward_loss(batch, out, ctx, torch.zeros_like(delta)).detach()
    assert float(at_zero) == pytest.approx(clean, abs=1e-6)                          # the same loss when unmoved
    torch.manual_seed(0)
    noise = torch.randn_like(delta) * batch["attention_mask"][..., None]
    noise = noise * (0.5 / example_norms(noise))[:, None, None]                      # a random direction, same norm
    random = float(method._forward_loss(batch, out, ctx, noise).detach())
    assert adv > clean + 1e-3 and adv > random, (clean, random, adv)
    # through the engine: the logged figures are the same clean and adversarial losses
    total, figures = training_loss(run, batch, rows)
    assert float(figures["loss/task"].detach()) == pytest.approx(clean, abs=1e-6)
    assert float(figures["loss/adversarial"].detach()) == pytest.approx(adv, abs=1e-5)
    assert float(total.detach()) == pytest.approx(clean + adv, abs=1e-5)
    assert method._captured is None


def test_pgd_stays_in_the_epsilon_ball_and_one_step_is_fgm(tmp_path):
    run = _trained_bert(tmp_path, {**PGD, "epsilon": 0.5, "steps": 4, "step_size": 0.5}, steps=4)
    (method,) = run.methods
    rows = list(range(8, 16))
    batch, out, ctx = _clean_forward(run, rows)
    norms = example_norms(method.perturbation(batch, out, ctx))
    assert bool((norms <= 0.5 * (1 + 1e-5)).all()) and float(norms.max()) == pytest.approx(0.5, rel=1e-5)

    method.steps, method.step_size = 3, 0.05                                       # small steps: well inside
    batch, out, ctx = _clean_forward(run, rows)
    norms = example_norms(method.perturbation(batch, out, ctx))
    assert bool((norms <= 0.15 * (1 + 1e-5)).all()) and float(norms.min()) > 0.05

    method.steps, method.step_size = 1, 0.5
    batch, out, ctx = _clean_forward(run, rows)
    pgd = method.perturbation(batch, out, ctx)
    fgm = Adversarial(kind="fgm", epsilon=0.5)                                   # unhooked: give it the capture
    batch, out, ctx = _clean_forward(run, rows)
    fgm._captured, method._captured = method._captured, None
    assert torch.allclose(pgd, fgm.perturbation(batch, out, ctx), atol=1e-7)
    assert method.kind == "pgd" and Adversarial(kind="pgd", epsilon=2.0, steps=4).step_size == pytest.approx(1.25)


def _lm_cfg(tmp_path, *extra: str):
    texts = ["turn on the light", "please turn off every light in the kitchen and the hall now",
             "open the door", "what is the temperature in the living room this evening"]
    lm = tmp_path / "varied.jsonl"
    lm.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts * 6))
    return _cfg(tmp_path, "llama-like", f"data.dataset={lm}", *extra, methods=[NEFTUNE])


def test_neftune_noise_only_in_train_mode_with_scale_alpha_over_sqrt_length_dim(tmp_path):
    run = Run(_lm_cfg(tmp_path))
    (method,) = run.methods
    embed = input_embeddings(run.raw_model)
    seen = []
    probe = embed.register_forward_hook(lambda module, args, output: seen.append(output.detach()))
    rows = list(range(8))
    batch = {k: v.to(run.device) for k, v in run.collate(rows, run.data.rows["train"]).items()}
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) > 1                                         # really different lengths
    clean = embed.weight[batch["input_ids"]].detach()
    d = clean.shape[-1]

    run.raw_model.train()
    run.raw_model(**batch)
    noise = seen[-1] - clean                                                      # (B, T, d)
    for i in range(len(rows)):
        bound = 5 / math.sqrt(int(lengths[i]) * d)
        real, pad = noise[i, : int(lengths[i])], noise[i, int(lengths[i]):]
        assert float(pad.abs().sum()) == 0.0
        assert float(real.abs().max()) <= bound * (1 + 1e-5) and float(real.abs().max()) > 0.9 * bound
        assert float(real.std()) == pytest.approx(bound / math.sqrt(3), rel=0.15)   # uniform on [-b, b]
    assert float(method._noise_scale) == pytest.approx(float((5 / torch.sqrt(lengths * float(d))).mean()))

    run.raw_model.eval()
    with torch.no_grad():
        first = run.raw_model(**batch).logits
        assert torch.equal(seen[-1], clean)                                       # eval adds nothing
        method.remove()
        assert torch.equal(run.raw_model(**batch).logits, first)                  # same as without the method
    probe.remove()
    assert len(embed._forward_hooks) == 0 and len(run.raw_model._forward_pre_hooks) == 0


def test_discarded_method_leaves_no_hooks(tmp_path):
    run = Run(_lm_cfg(tmp_path))
    embed = input_embeddings(run.raw_model)
    assert len(embed._forward_hooks) == 1 and len(run.raw_model._forward_hooks) == 1
    run.methods = []
    gc.collect()
    assert len(embed._forward_hooks) == 0 and len(run.raw_model._forward_hooks) == 0
    assert len(run.raw_model._forward_pre_hooks) == 0
    method = Adversarial(kind="fgm")
    method.prepare(run.raw_model, run.cfg)
    method.prepare(run.raw_model, run.cfg)                                        # a second prepare replaces
    assert len(embed._forward_hooks) == 1


def test_class_weighted_loss_is_the_adversarial_loss_kind(tmp_path):
    run = _trained_bert(tmp_path, FGM, "train.class_weights=balanced", "data.max_train_samples=200",
                        steps=3)  # 200 rows: every trec class is present, so each has a weight
    assert run.class_weights is not None and all(math.isfinite(s["loss"]) for s in _steps(run))
    (method,) = run.methods
    rows = list(range(8))
    batch = {k: v.to(run.device) for k, v in run.collate(rows, run.data.rows["train"]).items()}
    run.raw_model.train()
    keep = {}
    weighted = compute_loss(run, batch, keep)                                     # the engine's weighted loss
    ctx = LossContext(model=run.model, raw_model=run.raw_model, task=run.cfg.task, step=0, loss=weighted, rows=rows)
    zero = torch.zeros(*batch["input_ids"].shape, 32)
    unweighted = method._forward_loss(batch, keep["out"], ctx, zero)              # a context without weights
    assert float(unweighted.detach()) != pytest.approx(float(weighted.detach()), abs=1e-4)
    ctx.class_weights = run.class_weights                                         # what the engine passes
    again = method._forward_loss(batch, keep["out"], ctx, zero)
    assert float(again.detach()) == pytest.approx(float(weighted.detach()), abs=1e-6)


def test_composes_with_frozen_embeddings(tmp_path):
    """Under progressive unfreezing the embeddings start frozen; the perturbation still has a gradient."""
    run = Run(_cfg(tmp_path, "bert-like", methods=[{"name": "unfreeze", "every_n_steps": 1}, FGM]))
    run.start()
    steps = _steps(run)
    assert [s["methods"]["adversarial/perturbation_norm"] for s in steps] == pytest.approx([1.0] * 3, rel=1e-5)
    assert all(s["methods"]["loss/adversarial"] > 0 for s in steps)


def test_fgm_golden_loss(tmp_path):
    """Fixed seed, fixed data: the first three total losses (task + adversarial) are pinned."""
    run = Run(_cfg(tmp_path, "bert-like", "train.seed=7", methods=[FGM]))
    run.start()
    steps = _steps(run)
    assert [s["loss"] for s in steps] == pytest.approx(GOLDEN["fgm"], abs=1e-5)
    assert [s["methods"]["loss/adversarial"] for s in steps] == pytest.approx(GOLDEN["fgm-term"], abs=1e-5)


GOLDEN = {"fgm": [3.6225893, 3.6262112, 3.6205251], "fgm-term": [1.8383641, 1.8357108, 1.8293699]}


def _phase(tmp, name: str, **spec) -> dict:
    """tests/test_resume's worker in a fresh process, with this method registered there first."""
    spec = {"overrides": OVERRIDES, "run_dir": str(tmp / name), "edits": [[3, "lr", 2e-4]], **spec}
    code = ("import runpy, sys, nbtune.methods.adversarial; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code, str(WORKER), json.dumps(spec)], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def resumed_fgm(tmp_path_factory):
    """A reference run and one stopped inside an accumulation window (step 7's first micro-batch done) after a
    live epsilon edit, then resumed in a fresh process."""
    tmp = tmp_path_factory.mktemp("resume")
    extra = {"overrides": [*OVERRIDES, "methods=[{name: adversarial, kind: fgm, epsilon: 0.5}]"],
             "edits": [[3, "lr", 2e-4], [4, "adversarial.epsilon", 0.25]]}
    ref = _phase(tmp, "ref", **extra)
    stopped = _phase(tmp, "resumed", stop_at=[6, 1], **extra)
    assert stopped["status"] == "stopped"
    done = _phase(tmp, "resumed", resume=stopped["run_dir"], **extra)
    assert ref["step"] == done["step"] == 12
    return tmp


def _norms(run_dir) -> dict[int, float]:
    """Perturbation norm per step; a resumed run appends, so later lines win."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["methods"]["adversarial/perturbation_norm"] for r in records if r["kind"] == "step"}


def test_resume_is_bit_identical_with_fgm(resumed_fgm):
    (ref_w, ref_s), (got_w, got_s) = _final(resumed_fgm / "ref"), _final(resumed_fgm / "resumed")
    assert _max_diff(ref_w, got_w) == 0.0
    assert _max_diff(ref_s["optimizer"]["state"], got_s["optimizer"]["state"]) == 0.0
    ref, got = _norms(resumed_fgm / "ref"), _norms(resumed_fgm / "resumed")
    assert ref[4] == pytest.approx(0.5) and ref[5] == pytest.approx(0.25)        # the edit acts from step 5
    assert {k: v for k, v in got.items() if k != 7} == {k: v for k, v in ref.items() if k != 7}


def test_resumed_window_keeps_its_method_figures(resumed_fgm):
    assert _norms(resumed_fgm / "resumed")[7] == pytest.approx(_norms(resumed_fgm / "ref")[7])


def test_live_edits_of_epsilon_and_weight(tmp_path):
    run = Run(_cfg(tmp_path, "bert-like", methods=[{**PGD, "steps": 2}]))
    run.control.set("adversarial.epsilon", 0.25, at_step=1)
    run.control.set("adversarial.weight", 0.5, at_step=2)
    run.control.set("adversarial.noise_alpha", 3, at_step=2)                     # not an option of pgd: refused
    run.start()
    steps = _steps(run)
    assert [s["methods"]["adversarial/perturbation_norm"] for s in steps] == pytest.approx([1.0, 0.25, 0.25])
    (method,) = run.methods
    assert method.step_size == pytest.approx(2.5 * 0.25 / 2)                      # derived from epsilon again
    total, parts = steps[2]["loss"], steps[2]["methods"]
    assert total == pytest.approx(parts["loss/task"] + parts["loss/adversarial"], rel=1e-5)
    records = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    edits = [(r["step"], r["name"], r["old"], r["new"]) for r in records if r["kind"] == "edit"]
    assert edits == [(1, "adversarial.epsilon", 1.0, 0.25), (2, "adversarial.weight", 1.0, 0.5)]
    assert any("adversarial.noise_alpha=3.0 refused" in r.get("message", "") and "'epsilon', 'weight', "
               "'step_size'" in r["message"] for r in records if r["kind"] == "warning")
    fresh = Adversarial(kind="pgd", steps=2)
    fresh.load_state_dict(json.loads(json.dumps(method.state_dict())))             # JSON-able, as checkpoints are
    assert (fresh.epsilon, fresh.weight, fresh.step_size) == (0.25, 0.5, method.step_size)


@pytest.mark.parametrize("spec, message", [
    ({"kind": "fmg"}, "kind 'fmg' is not one of fgm, pgd, neftune. Did you mean 'fgm'?"),
    ({"kind": "fgm", "epsilon": 0}, "epsilon must be a number > 0, got 0"),
    ({"kind": "pgd", "epsilon": -0.1}, r"epsilon must be a number > 0, got -0.1"),
    ({"kind": "pgd", "steps": 0}, "steps must be a whole number >= 1 for kind 'pgd', got 0"),
    ({"kind": "pgd", "steps": 2.5}, "steps must be a whole number >= 1 for kind 'pgd', got 2.5"),
    ({"kind": "fgm", "steps": 3}, "steps applies to kind 'pgd', not 'fgm'"),
    ({"kind": "neftune", "epsilon": 1.0}, "epsilon applies to kind 'fgm' or 'pgd', not 'neftune'"),
    ({"kind": "fgm", "noise_alpha": 5}, "noise_alpha applies to kind 'neftune', not 'fgm'"),
    ({"kind": "neftune", "noise_alpha": 0}, "noise_alpha must be a number > 0, got 0"),
    ({"kind": "fgm", "weight": "big"}, "weight must be a number > 0, got 'big'"),
    ({"kind": "fgm", "epsilom": 1.0}, "unexpected keyword argument 'epsilom'"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_configs_are_refused_when_the_config_is_validated(spec, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("?", r"\?")):
        RunConfig(methods=[{"name": "adversarial", **spec}]).validate()


def test_neftune_on_classification_is_refused_before_training(tmp_path):
    with pytest.raises(MethodError, match="kind 'neftune' is for causal-lm .*not task 'classification'; "
                                          "use kind 'fgm' or 'pgd'"):
        Run(_cfg(tmp_path, "bert-like", methods=[NEFTUNE]))
    assert not any(tmp_path.rglob("metrics.jsonl"))


def test_module_examples():
    assert doctest.testmod(adversarial).failed == 0
