"""Multi-task heads on one encoder: combined datasets, per-task heads on three architectures, PCGrad's projected
gradient, GradNorm's weights, a golden loss, exact resume with the weights as method state, clear errors."""
from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nbtune.methods.multitask  # noqa: F401  (registers the method)
from nbtune import assets
from nbtune.config import ConfigError, RunConfig
from nbtune.engine import checkpoint as ckpt
from nbtune.engine.loop import training_loss
from nbtune.engine.run import Run
from nbtune.engine.tasks import DataError
from nbtune.methods import MethodError
from nbtune.methods.multitask import LOW, MultiTask, MultiTaskModel, parse_tasks, pcgrad
from nbtune.methods.multitask_data import combine_tasks, task_accuracy, write_jsonl
from tests.test_methods import MODELS, _cfg, _steps
from tests.test_resume import LR_EDIT, OVERRIDES, WORKER, _final, _max_diff

TASKS = ("trec", "spam")


@pytest.fixture(scope="module")
def combined():
    return combine_tasks({"trec": assets.load_dataset("trec"), "spam": assets.load_dataset("sms-spam")},
                         max_train_rows_per_task=40)


@pytest.fixture(scope="module")
def data_file(combined, tmp_path_factory) -> Path:
    """80 rows, 40 per task, labels 'trec:human', 'spam:ham', ...: a file a config (and a resumed run) can name."""
    return write_jsonl(combined, tmp_path_factory.mktemp("mt") / "two-tasks.jsonl")


def _mt_cfg(tmp_path, data_file, *extra, model="bert-like", **method):
    return _cfg(tmp_path, model, "task=classification", f"data.dataset={data_file}", *extra,
                methods=[{"name": "multitask", **method}])


def test_combine_tasks_prefixes_labels_and_keeps_splits(combined):
    trec, spam = assets.load_dataset("trec"), assets.load_dataset("sms-spam")
    names = combined["train"].features["label"].names
    assert names == [f"trec:{n}" for n in trec["train"].features["label"].names] + ["spam:ham", "spam:spam"]
    assert len(combined["train"]) == 80                                     # capped at 40 per task
    assert len(combined["test"]) == len(trec["test"]) + len(spam["test"])   # evaluation splits kept whole
    test_texts = set(trec["test"]["text"]) | set(spam["test"]["text"])
    assert set(combined["test"]["text"]) == test_texts                      # no row changes split
    row = combined["test"][0]
    assert names[row["label"]].split(":")[0] == row["task"]
    again = combine_tasks({"trec": trec, "spam": spam}, max_train_rows_per_task=40)
    assert again["train"]["text"] == combined["train"]["text"]              # a fixed shuffle
    assert {"trec", "spam"} == set(combined["train"]["task"][:20])          # mixed, not task after task
    with pytest.raises(DataError, match="two or more tasks"):
        combine_tasks({"trec": trec})
    with pytest.raises(DataError, match=r"no '\.' or ':'"):
        combine_tasks({"a.b": trec, "spam": spam})
    with pytest.raises(DataError, match="no column 'txt' .* Did you mean 'text'\\? Pass text_column="):
        combine_tasks({"trec": trec, "spam": spam}, text_column="txt")


def test_parse_tasks_and_pcgrad_maths():
    assert parse_tasks(["a:x", "b:y", "a:z"]) == {"a": [0, 2], "b": [1]}
    with pytest.raises(MethodError, match=r"found 2 without a task prefix, e\.g\. \['human', 'number'\]"):
        parse_tasks(["a:x", "human", "number"])
    with pytest.raises(MethodError, match="one task \\('a'\\); it needs two or more"):
        parse_tasks(["a:x", "a:y"])
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])
    assert pcgrad(g, [[1], [0]]).tolist() == [0.5, 1.5]                     # 0.5*(1,1) + (0,1)
    agree = torch.tensor([[1.0, 2.0], [3.0, 1.0]])
    assert torch.equal(pcgrad(agree, [[1], [0]]), agree.sum(0))             # no conflict: the plain sum
    three = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    total = pcgrad(three, [[1, 2], [2, 0], [0, 1]])
    assert not torch.allclose(total, three.sum(0))


def test_heads_score_each_row_within_its_task(tmp_path, data_file):
    run = Run(_mt_cfg(tmp_path, data_file))
    model = run.raw_model
    assert isinstance(model, MultiTaskModel) and model.tasks == ["spam", "trec"]  # sorted label names: spam first
    batch = run.collate(list(range(8)), run.data.rows["train"])
    model.eval()
    out = model(**batch)
    labels, names = batch["labels"], run.data.label_names
    for i, y in enumerate(labels.tolist()):
        task = names[y].split(":")[0]
        mine = [j for j, n in enumerate(names) if n.startswith(task + ":")]
        assert all(out.logits[i, j] == LOW for j in range(len(names)) if j not in mine)
        assert int(out.logits[i].argmax()) in mine
    # the per-row loss equals cross-entropy within each row's task
    per_row = torch.nn.functional.cross_entropy(out.logits, labels, reduction="none")
    assert out.loss.item() == pytest.approx(per_row.mean().item(), rel=1e-6)
    spam = torch.tensor([names[y].startswith("spam:") for y in labels.tolist()])
    assert out.task_losses["spam"].item() == pytest.approx(per_row[spam].mean().item(), rel=1e-6)
    assert out.task_counts.tolist() == [int(spam.sum()), int((~spam).sum())]
    # inference (no labels): each task's columns are its log-probabilities
    free = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for task in model.tasks:
        cols = [j for j, n in enumerate(names) if n.startswith(task + ":")]
        assert torch.allclose(free.logits[:, cols].exp().sum(-1), torch.ones(8), atol=1e-5)
        assert free.task_logits[task].shape == (8, len(cols))


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("balance", ["pcgrad", "gradnorm"])
def test_multitask_trains_three_steps_with_its_heads(tmp_path, data_file, model, balance):
    run = Run(_mt_cfg(tmp_path, data_file, model=model, balance=balance))
    names = {n for n, _ in run.raw_model.named_parameters()}
    trainable = {n for n, p in run.raw_model.named_parameters() if p.requires_grad}
    prefix = "bert." if model == "bert-like" else "model."
    heads = {n for n in names if n.startswith("classifier.")}
    assert trainable == names and names == heads | {n for n in names if n.startswith(prefix)}
    bias = {"classifier.spam.bias", "classifier.trec.bias"} if model == "bert-like" else set()
    assert heads == {"classifier.spam.weight", "classifier.trec.weight"} | bias   # the single head is gone
    assert run.raw_model.classifier["spam"].weight.shape[0] == 2
    in_groups = [id(p) for g in run.optimizer.param_groups for p in g["params"]]
    assert sorted(in_groups) == sorted(id(p) for p in run.raw_model.parameters() if p.requires_grad)
    before = {n: p.detach().clone() for n, p in run.raw_model.named_parameters()}
    run.start()
    steps = _steps(run)
    assert [s["step"] for s in steps] == [1, 2, 3] and all(math.isfinite(s["loss"]) for s in steps)
    figures = steps[-1]["methods"]
    assert {"multitask/weight/spam", "multitask/weight/trec", "multitask/conflict"} <= set(figures)
    assert 0.0 <= figures["multitask/conflict"] <= 1.0
    after = dict(run.raw_model.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert heads <= moved and any(n.startswith(prefix) for n in moved)
    acc = task_accuracy(run, "test")
    assert set(acc) == set(TASKS) and all(0.0 <= a <= 1.0 for a in acc.values())


def test_pcgrad_term_carries_the_projected_gradient(tmp_path, data_file):
    run = Run(_mt_cfg(tmp_path, data_file, balance="pcgrad"))
    model, (method,) = run.raw_model, run.methods
    model.eval()                                                       # no dropout: two forwards agree
    rows = list(range(16))
    batch = run.collate(rows, run.data.rows["train"])
    shared = [p for p in model.encoder.parameters() if p.requires_grad]
    heads = list(model.classifier.parameters())
    out = model(**batch)
    per_task = torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(out.task_losses[t], shared,
                                                                                    retain_graph=True)])
                            for t in model.tasks])
    conflict = bool(per_task[0] @ per_task[1] < 0)
    expected = pcgrad(per_task, [[1], [0]])
    expected_heads = torch.autograd.grad(sum(out.task_losses.values()), heads)
    total, figures = training_loss(run, batch, rows)
    assert total.item() == pytest.approx(sum(v.item() for v in out.task_losses.values()), rel=1e-6)
    assert figures["multitask/conflict"] == float(conflict)
    total.backward()
    got = torch.cat([p.grad.reshape(-1) for p in shared])
    assert torch.allclose(got, expected, atol=1e-6, rtol=1e-5)
    assert conflict == (not torch.allclose(got, per_task.sum(0), atol=1e-6))  # projected only when they conflict
    for g, p in zip(expected_heads, heads):
        assert torch.allclose(p.grad, g, atol=1e-7)


def test_measuring_conflicts_does_not_change_training(tmp_path, data_file):
    runs = {}
    for measure in (True, False):
        run = Run(_mt_cfg(tmp_path / str(measure), data_file, balance="sum", measure_conflicts=measure))
        runs[measure] = _steps(run.start())
    assert [s["loss"] for s in runs[True]] == [s["loss"] for s in runs[False]]
    assert all(0.0 <= s["methods"]["multitask/conflict"] <= 1.0 for s in runs[True])
    assert not any("multitask/conflict" in s["methods"] for s in runs[False])
    # sum: the objective is the sum of the per-task mean losses
    last = runs[True][-1]["methods"]
    assert last["loss/multitask"] == pytest.approx(last["multitask/loss/spam"] + last["multitask/loss/trec"])


def test_gradnorm_weights_move_and_sum_to_the_task_count(tmp_path, data_file):
    run = Run(_mt_cfg(tmp_path, data_file, "train.max_steps=4", balance="gradnorm", gradnorm_lr=0.05))
    run.start()
    steps = _steps(run)
    weights = [(s["methods"]["multitask/weight/spam"], s["methods"]["multitask/weight/trec"]) for s in steps]
    assert weights[0] == (1.0, 1.0)                                    # the first step uses the initial weights
    # Adam's first step is lr in size; the renormalisation keeps the sum at 2 (two tasks)
    assert sorted(weights[1]) == pytest.approx([0.95, 1.05], abs=1e-6)
    assert all(sum(w) == pytest.approx(2.0, abs=1e-5) for w in weights)
    state = run.methods[0].state_dict()
    assert sum(state["weights"]) == pytest.approx(2.0, abs=1e-5) and state["updates"] == 4
    assert json.loads(json.dumps(state)) == state                     # JSON-able, exactly
    fresh = MultiTask(balance="gradnorm")
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state


@pytest.mark.parametrize("balance", ["sum", "pcgrad", "gradnorm"])
def test_multitask_golden_loss(tmp_path, data_file, balance):
    """Fixed seed, fixed data: the first three losses are pinned so a change in the maths is caught."""
    run = Run(_mt_cfg(tmp_path, data_file, "train.seed=7", balance=balance))
    run.start()
    losses = [s["loss"] for s in _steps(run)]
    assert losses == pytest.approx(GOLDEN[balance], abs=1e-5), losses


GOLDEN = {"sum": [2.2948549, 2.2741868, 2.2522271], "pcgrad": [2.2948549, 2.2742019, 2.2524111],
          "gradnorm": [2.2948549, 2.2973604, 2.2989962]}


def _phase(tmp: Path, name: str, **spec) -> dict:
    """tests/test_resume._phase, with the method imported in the worker (until nbtune.methods imports it)."""
    spec = {"run_dir": str(tmp / name), "edits": [LR_EDIT], **spec}
    code = ("import runpy, sys, nbtune.methods.multitask; sys.argv = [sys.argv[0], *sys.argv[1:]]; "
            f"runpy.run_path({str(WORKER)!r}, run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_resume_is_bit_identical_with_gradnorm(tmp_path, data_file):
    """GradNorm's weights change every micro-batch and live outside the model: they are method state."""
    methods = "methods=[{name: multitask, balance: gradnorm}]"
    extra = {"overrides": [*OVERRIDES, f"data.dataset={data_file}", methods]}
    ref = _phase(tmp_path, "ref", **extra)
    stopped = _phase(tmp_path, "resumed", stop_at=[5, 1], **extra)        # inside an accumulation window
    assert stopped["status"] == "stopped"
    mid = ckpt.verify(ckpt.latest(Path(stopped["run_dir"])))["methods"][0]
    done = _phase(tmp_path, "resumed", resume=stopped["run_dir"], **extra)
    assert ref["step"] == done["step"] == 12
    (ref_w, ref_s), (got_w, got_s) = _final(tmp_path / "ref"), _final(tmp_path / "resumed")
    assert _max_diff(ref_w, got_w) == 0.0
    assert _max_diff(ref_s["optimizer"]["state"], got_s["optimizer"]["state"]) == 0.0
    ref_m = ckpt.verify(ckpt.latest(tmp_path / "ref"))["methods"][0]
    got_m = ckpt.verify(ckpt.latest(tmp_path / "resumed"))["methods"][0]
    assert ref_m == got_m
    assert 0 < mid["updates"] < ref_m["updates"] and mid["weights"] != [1.0, 1.0]   # saved mid-run, then restored


def test_bad_multitask_configs_fail_before_training(tmp_path, data_file):
    def bad(**options):
        return RunConfig(methods=[{"name": "multitask", **options}]).validate()
    with pytest.raises(ConfigError, match="balance must be one of .* got 'pcgard'. Did you mean 'pcgrad'"):
        bad(balance="pcgard")
    with pytest.raises(ConfigError, match="gradnorm_alpha only apply with balance='gradnorm' .balance is 'pcgrad'"):
        bad(balance="pcgrad", gradnorm_alpha=2.0)
    with pytest.raises(ConfigError, match="gradnorm_lr must be a number > 0, got 0"):
        bad(balance="gradnorm", gradnorm_lr=0)
    with pytest.raises(ConfigError, match="pooling must be one of .* Did you mean 'mean'"):
        bad(pooling="means")
    with pytest.raises(MethodError, match="labels must be named 'task:label'.*combine_tasks"):
        Run(_cfg(tmp_path, "bert-like", methods=["multitask"]))        # trec's plain labels
    with pytest.raises(MethodError, match="train.class_weights is not supported"):
        Run(_mt_cfg(tmp_path, data_file, "train.class_weights=balanced"))
    with pytest.raises(MethodError, match="pooling='pooler' but LlamaModel has no pooler"):
        Run(_mt_cfg(tmp_path, data_file, model="llama-like", pooling="pooler"))
    with pytest.raises(MethodError, match="needs task=classification .* got task='causal-lm'"):
        MultiTask().prepare(None, RunConfig().with_overrides(["task=causal-lm", "model.name=tiny-llama"]))
    assert not any(tmp_path.rglob("metrics.jsonl"))                    # nothing trained, nothing written


def test_task_accuracy_agrees_with_the_engine(tmp_path, data_file):
    run = Run(_mt_cfg(tmp_path, data_file, "train.max_steps=2", balance="sum", measure_conflicts=False))
    run.start()
    acc = task_accuracy(run, "test")
    names = run.data.label_names
    counts = {t: sum(names[r["labels"]].startswith(t + ":") for r in run.data.rows["test"]) for t in TASKS}
    overall = sum(acc[t] * counts[t] for t in TASKS) / sum(counts.values())
    assert overall == pytest.approx(run.results["test"]["accuracy"], abs=1e-9)


def _demo():
    path = Path(__file__).parents[1] / "bench" / "demo_multitask.py"
    spec = importlib.util.spec_from_file_location("demo_multitask", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.integration
def test_demo_reports_conflict_rates_and_weights(tmp_path, capsys):
    """MiniLM on intents-en + movie-sentiment, small: every figure finite, rates in [0, 1], printed."""
    results = _demo().main(["--steps", "4", "--batch-size", "8", "--train-rows-per-task", "64",
                            "--eval-rows", "32", "--output-dir", str(tmp_path)])
    assert set(results) == {"sum", "pcgrad", "gradnorm"}
    for name, r in results.items():
        assert 0.0 <= r["conflict_rate"] <= 1.0, name
        assert all(0.0 <= a <= 1.0 for a in r["test_accuracy"].values()) and set(r["test_accuracy"]) == \
            {"intent", "sentiment"}
        assert math.isfinite(r["final_loss"])
    assert sum(results["gradnorm"]["weights"].values()) == pytest.approx(2.0, abs=1e-4)
    printed = capsys.readouterr().out
    assert "conflict rate" in printed and "pcgrad" in printed and "gradnorm weights" in printed
