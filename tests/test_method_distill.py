"""distill: the method matrix (student only in the optimizer, the teacher outside the model), the loss against a
hand computation, the logits cache, clear errors for teachers that cannot teach this student, a golden loss,
exact resume, and the demo (integration tier)."""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import nbtune.methods.distill  # noqa: F401  (registers "distill")
from nbtune.config import ConfigError, RunConfig
from nbtune.engine import checkpoint as ckpt
from nbtune.engine import loop
from nbtune.engine.run import Run
from nbtune.methods import MethodError
from nbtune.methods.base import LossContext
from tests.test_methods import MODELS, _cfg, _steps
from tests.test_resume import LR_EDIT, OVERRIDES, WORKER, _final, _max_diff

ROOT = Path(__file__).resolve().parents[1]
PRESET = {"bert-like": "tiny-bert", "llama-like": "tiny-llama", "deepseek-v3-like": "tiny-deepseek-v3"}


def _distill(teacher: str, **options) -> dict:
    return {"name": "distill", "teacher": str(teacher), **options}


def _save_teacher(tmp_path: Path, *overrides: str, name: str = "teacher") -> Path:
    """A teacher directory as Run.save_pretrained writes it (tiny-bert, untrained, its own seed)."""
    run = Run(_cfg(tmp_path / f"{name}-run", "bert-like", "train.seed=3", *overrides))
    return run.save_pretrained(tmp_path / name)


def _tagging_file(tmp_path: Path) -> Path:
    path = tmp_path / "tags.jsonl"
    words = [["turn", "on", "the", "kitchen", "light"], ["call", "anna", "in", "paris"], ["play", "jazz"]]
    tags = [["O", "O", "O", "B-LOC", "O"], ["O", "B-PER", "O", "B-LOC"], ["O", "O"]]
    lines = [json.dumps({"tokens": w, "tags": t}) + "\n" for _ in range(10) for w, t in zip(words, tags)]
    path.write_text("".join(lines))
    return path


# ---------------------------------------------------------------------------------------------- the matrix
@pytest.mark.parametrize("model", list(MODELS))
def test_distill_trains_three_steps_and_only_the_student_learns(tmp_path, model):
    run = Run(_cfg(tmp_path, model, methods=[_distill(PRESET[model])]))
    (method,) = run.methods
    teacher = method.teacher_model
    teacher_ids = {id(p) for p in teacher.parameters()}
    student_ids = {id(p) for p in run.raw_model.parameters()}
    in_optimizer = [id(p) for g in run.optimizer.param_groups for p in g["params"]]
    assert sorted(in_optimizer) == sorted(student_ids)                 # every student parameter, exactly once
    assert not teacher_ids & set(in_optimizer) and not teacher_ids & student_ids
    assert all(m is not teacher for m in run.raw_model.modules())      # the teacher is not inside the model
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    before = {n: p.detach().clone() for n, p in teacher.named_parameters()}
    run.start()
    steps = _steps(run)
    assert [s["step"] for s in steps] == [1, 2, 3] and all(math.isfinite(s["loss"]) for s in steps)
    for s in steps:
        m = s["methods"]
        assert math.isfinite(m["loss/distill"]) and m["loss/distill"] >= 0 and 0 <= m["distill/agreement"] <= 1
        # total = (1 - alpha) x task + alpha x KD, as logged
        assert s["loss"] == pytest.approx(0.3 * m["loss/task"] + m["loss/distill"], rel=1e-5)
    assert all(torch.equal(before[n], p) for n, p in teacher.named_parameters())   # the teacher never moved
    saved = load_file(str(ckpt.latest(run.run_dir) / "model.safetensors"))
    assert set(saved) == set(run.raw_model.state_dict())               # no teacher weights in the checkpoint


# ------------------------------------------------------------------------------------------- the loss maths
def _hand_kd(student: torch.Tensor, teacher: torch.Tensor, keep: list[tuple], T: float) -> float:
    """KL(p_t || p_s) of softened distributions, summed element by element, averaged over `keep` positions."""
    total = 0.0
    for pos in keep:
        s, t = student[pos].double() / T, teacher[pos].double() / T
        p_s, p_t = torch.exp(s) / torch.exp(s).sum(), torch.exp(t) / torch.exp(t).sum()
        total += float((p_t * torch.log(p_t / p_s)).sum())
    return T * T * total / len(keep)


@pytest.mark.parametrize("task", ["classification", "token-classification", "causal-lm"])
def test_loss_equals_a_hand_computation(tmp_path, task):
    model, extra = {"classification": ("bert-like", []), "causal-lm": ("llama-like", []),
                    "token-classification": ("bert-like", ["task=token-classification",
                                                           f"data.dataset={_tagging_file(tmp_path)}"])}[task]
    T, alpha = 3.0, 0.6
    run = Run(_cfg(tmp_path, model, *extra, methods=[_distill(PRESET[model], temperature=T, alpha=alpha)]))
    (method,) = run.methods
    run.model.eval()                                                   # no dropout: one forward is the forward
    with torch.no_grad():  # random tiny models are near uniform; a sharper teacher makes the KL well above rounding
        method.teacher_model.get_output_embeddings().weight.mul_(30.0) if task == "causal-lm" else \
            method.teacher_model.classifier.weight.mul_(30.0)
    rows = run.epoch_plan(0)[0]
    batch = run.collate(rows, run.data.rows["train"])
    out = run.model(**batch)
    ctx = LossContext(model=run.model, raw_model=run.raw_model, task=task, step=0, loss=out.loss, rows=rows)
    terms = method.loss_terms(batch, out, ctx)
    assert set(terms) == {"distill"} and ctx.task_weight == pytest.approx(1 - alpha)
    assert "distill/agreement" in ctx.metrics

    with torch.no_grad():
        teacher = method.teacher_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"]
    if task == "classification":
        keep = [(b,) for b in range(labels.shape[0])]
    elif task == "token-classification":
        keep = [(b, t) for b in range(labels.shape[0]) for t in range(labels.shape[1]) if labels[b, t] != -100]
    else:                                                              # position t predicts token t + 1
        keep = [(b, t) for b in range(labels.shape[0]) for t in range(labels.shape[1] - 1) if labels[b, t + 1] != -100]
    assert 0 < len(keep) < labels.numel() or task == "classification"   # padding really is left out
    expected = alpha * _hand_kd(out.logits.detach(), teacher, keep, T)
    assert float(terms["distill"].detach()) == pytest.approx(expected, rel=1e-5)
    assert expected > 1e-3

    total, figures = loop.training_loss(run, batch, rows)             # the engine weighs the task loss by 1 - alpha
    assert float(total.detach()) == pytest.approx((1 - alpha) * float(out.loss.detach()) + expected, rel=1e-5)
    assert float(figures["loss/task"].detach()) == pytest.approx(float(out.loss.detach()), rel=1e-6)


def test_identical_logits_give_zero_and_temperature_scales_by_t_squared():
    from nbtune.methods.distill import kd_loss
    torch.manual_seed(0)
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    labels = torch.zeros(4, dtype=torch.long)
    assert float(kd_loss(s, s.clone(), labels, "classification", 2.0)[0]) == pytest.approx(0.0, abs=1e-7)
    kl_1 = float(kd_loss(s * 2, t * 2, labels, "classification", 1.0)[0])
    assert float(kd_loss(s * 4, t * 4, labels, "classification", 2.0)[0]) == pytest.approx(4 * kl_1, rel=1e-5)


# ----------------------------------------------------------------------------------------------- the cache
@pytest.mark.parametrize("model", ["bert-like", "llama-like"])
def test_cache_scores_each_row_once_and_gives_the_same_losses(tmp_path, model):
    losses, forwards = {}, {}
    for cache in (False, True):
        (tmp_path / str(cache)).mkdir()
        run = Run(_cfg(tmp_path / str(cache), model, "train.max_steps=6",     # 24 rows, batch 8: two epochs
                       methods=[_distill(PRESET[model], cache_logits=cache)]))
        (method,) = run.methods
        calls = []
        method.teacher_model.register_forward_hook(lambda mod, args, kw, out: calls.append(kw["input_ids"].shape[0]),
                                                   with_kwargs=True)
        run.start()
        losses[cache], forwards[cache] = [s["loss"] for s in _steps(run)], calls
    n_rows = 24
    assert forwards[False] == [8] * 6                                  # one forward per micro-batch
    assert forwards[True] == [1] * n_rows                              # one per row, none in the second epoch
    assert sorted(method.cache) == list(range(n_rows))
    # Cached rows are scored alone and unpadded, so they match the batched forward to float rounding.
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)


# ------------------------------------------------------------------------------------- errors before training
def _nothing_written(tmp_path: Path) -> bool:
    return not any(tmp_path.rglob("metrics.jsonl")) and not any(tmp_path.rglob("checkpoints"))


def test_teacher_with_another_vocabulary_is_refused_before_training(tmp_path):
    teacher = _save_teacher(tmp_path)
    spec = json.loads((teacher / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    for old, new in (("[unused0]", "zzqx0"), ("[unused1]", "zzqx1"), ("[unused2]", "zzqx2")):
        vocab[new] = vocab.pop(old)
    (teacher / "tokenizer.json").write_text(json.dumps(spec))
    cfg = _cfg(tmp_path / "student", "bert-like", methods=[_distill(teacher)])
    with pytest.raises(MethodError, match=r"another tokenizer vocabulary than the student \(30522 vs 30522 tokens; "
                                          r"6 differ: 3 only in the teacher \(e.g. \['zzqx0'"):
        Run(cfg)
    assert _nothing_written(tmp_path / "student")


def test_teacher_with_other_labels_is_refused_before_training(tmp_path):
    spam = _save_teacher(tmp_path, "data.dataset=sms-spam", name="spam-teacher")
    cfg = _cfg(tmp_path / "student", "bert-like", methods=[_distill(spam)])          # the student learns trec
    with pytest.raises(MethodError, match=r"other labels than the student \(2 vs 6; missing in the teacher: "
                                          r"\['abbreviation', 'description', .*only in the teacher: \['ham', 'spam'\]"):
        Run(cfg)
    shuffled = _save_teacher(tmp_path, name="trec-teacher")
    config = json.loads((shuffled / "config.json").read_text())
    names = [config["id2label"][str(i)] for i in range(6)]
    config["id2label"] = {str(i): n for i, n in enumerate(reversed(names))}
    config["label2id"] = {n: i for i, n in enumerate(reversed(names))}
    (shuffled / "config.json").write_text(json.dumps(config))
    with pytest.raises(MethodError, match="the same names in another order"):
        Run(_cfg(tmp_path / "student", "bert-like", methods=[_distill(shuffled)]))
    assert _nothing_written(tmp_path / "student")


def test_teacher_without_a_trained_head_and_bad_options_are_refused(tmp_path):
    with pytest.raises(MethodError, match=r"'minilm' is a BertModel without a trained classification head"):
        Run(_cfg(tmp_path, "bert-like", methods=[_distill("minilm")]))
    with pytest.raises(MethodError, match=r"'minilm' is a BertModel without a trained causal-lm head"):
        Run(_cfg(tmp_path, "llama-like", methods=[_distill("minilm")]))        # same tokenizer, no LM head
    with pytest.raises(ConfigError, match="teacher 'tiny-bret' is not a bundled model.*Did you mean 'tiny-bert'"):
        RunConfig(methods=[_distill("tiny-bret")]).validate()
    with pytest.raises(ConfigError, match="'teacher' is required"):
        RunConfig(methods=[{"name": "distill"}]).validate()
    with pytest.raises(ConfigError, match=r"temperature must be a number > 0 \(the guide uses 2.0\), got 0"):
        RunConfig(methods=[_distill("tiny-bert", temperature=0)]).validate()
    with pytest.raises(ConfigError, match=r"alpha must be in \[0, 1\].*got 1.5"):
        RunConfig(methods=[_distill("tiny-bert", alpha=1.5)]).validate()
    with pytest.raises(ConfigError, match="unexpected keyword argument 'temp'"):
        RunConfig(methods=[_distill("tiny-bert", temp=2.0)]).validate()
    assert _nothing_written(tmp_path)


# --------------------------------------------------------------------------------- teacher from an nbtune run
def test_teacher_from_a_run_directory_loads_its_checkpoint(tmp_path):
    teacher_run = Run(_cfg(tmp_path / "t", "bert-like", "train.seed=5", "train.max_steps=2"))
    teacher_run.start()
    run = Run(_cfg(tmp_path / "s", "bert-like", methods=[_distill(teacher_run.run_dir)]))
    saved = load_file(str(ckpt.latest(teacher_run.run_dir) / "model.safetensors"))
    got = run.methods[0].teacher_model.state_dict()
    assert set(saved) == set(got) and all(torch.equal(saved[k], got[k].cpu()) for k in saved)
    (tmp_path / "lm").mkdir()
    lm = Run(_cfg(tmp_path / "lm", "llama-like", "train.max_steps=1"))
    lm.start()
    with pytest.raises(MethodError, match="was trained for task 'causal-lm', the student for 'classification'"):
        Run(_cfg(tmp_path / "s2", "bert-like", methods=[_distill(lm.run_dir)]))


# -------------------------------------------------------------------------------------- golden loss, resume
GOLDEN = {"distill": [0.5353914, 0.5365876, 0.5368139]}


def test_distill_golden_loss(tmp_path):
    """Fixed seed, fixed data, a preset teacher: the first three losses are pinned."""
    run = Run(_cfg(tmp_path, "bert-like", "train.seed=7", methods=[_distill("tiny-bert")]))
    run.start()
    losses = [s["loss"] for s in _steps(run)]
    assert losses == pytest.approx(GOLDEN["distill"], abs=1e-5), losses


def _phase(tmp: Path, name: str, overrides: list[str], **spec) -> dict:
    """tests/test_resume._phase, with distill registered in the fresh process (until nbtune.methods imports it)."""
    spec = {"overrides": overrides, "run_dir": str(tmp / name), "edits": [LR_EDIT], **spec}
    code = ("import json, sys, runpy; import nbtune.methods.distill; "
            f"runpy.run_path({str(WORKER)!r}, run_name='worker')['main'](json.loads(sys.argv[1]))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, timeout=600,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_resume_is_bit_identical_with_distill_and_its_cache(tmp_path):
    """The cache is the stateful path (not checkpointed, rebuilt after the resume), so it is the one tested; the
    uncached teacher is a pure function of each batch."""
    teacher = _save_teacher(tmp_path)
    overrides = [*OVERRIDES, f"methods=[{{name: distill, teacher: '{teacher}', cache_logits: true}}]"]
    ref = _phase(tmp_path, "ref", overrides)
    stopped = _phase(tmp_path, "resumed", overrides, stop_at=[6, 1])   # epoch 2 of 3: the cache starts empty again
    assert stopped["status"] == "stopped"
    done = _phase(tmp_path, "resumed", overrides, resume=stopped["run_dir"])
    assert ref["step"] == done["step"] == 12
    (ref_w, ref_s), (got_w, got_s) = _final(tmp_path / "ref"), _final(tmp_path / "resumed")
    assert _max_diff(ref_w, got_w) == 0.0
    assert _max_diff(ref_s["optimizer"]["state"], got_s["optimizer"]["state"]) == 0.0
    ref_steps = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    got_steps = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    distill = {r["step"]: r["methods"]["loss/distill"] for r in ref_steps if r["kind"] == "step"}
    resumed = {r["step"]: r["methods"]["loss/distill"] for r in got_steps if r["kind"] == "step"}
    # Step 7 straddles the stop (one micro-batch before it, one after): its figure sums both halves.
    assert [distill[s] for s in range(7, 13)] == [resumed[s] for s in range(7, 13)]


# ---------------------------------------------------------------------------------------- integration: demo
def _demo_module():
    spec = importlib.util.spec_from_file_location("demo_distill", ROOT / "bench" / "demo_distill.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.integration
def test_demo_distils_minilm_into_a_smaller_student(tmp_path, capsys):
    demo = _demo_module()
    figures = demo.main(["--train-samples", "480", "--eval-samples", "192", "--teacher-epochs", "2",
                         "--student-epochs", "2", "--student-layers", "2", "--speed-repeats", "3",
                         "--output-dir", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "size ratio" in printed and "speed ratio" in printed and "accuracy retained" in printed
    for key in ("param_ratio", "file_ratio", "speedup", "acc_teacher", "acc_kd", "acc_baseline", "retained_kd",
                "retained_baseline"):
        assert math.isfinite(figures[key]), (key, figures)
    assert figures["params_student"] < figures["params_teacher"] and figures["file_ratio"] < 1.0
    assert figures["speedup"] > 0
    assert 0 < figures["retained_kd"] <= 1.2 and 0 <= figures["retained_baseline"] <= 1.2


@pytest.mark.integration
def test_a_teacher_with_the_smollm2_vocabulary_is_refused(tmp_path):
    """A real tokenizer mismatch: SmolLM2's 49k BPE vocabulary against tiny-llama's MiniLM WordPiece."""
    with pytest.raises(MethodError, match=r"another tokenizer vocabulary than the student \(49152 vs 30522 tokens"):
        Run(_cfg(tmp_path, "llama-like", methods=[_distill("smollm2")]))
    assert _nothing_written(tmp_path)
