"""Catalogue group A: checkpoint/resume exactness (docs/reliability.md). Cases already covered by
tests/test_resume.py (A1 in a fresh process, A5 with a cooperative stop, A7's edit replay, A10a) are not repeated.

The catalogue's run R (300 steps, 64 steps an epoch, save every 25, stop/kill at 137) is scaled to tiny-bert on 64
trec rows, batch 8: 8 steps an epoch, 24 steps, a checkpoint every 5 steps, kill at 13 (so the last checkpoint
is 10), a live LR edit at step 7, boundary positions {1, 8, 16, 23}. test_A2_A3_A7_at_catalogue_scale
(integration) runs the catalogue's own numbers in fresh interpreters.
"""
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nbtune import assets
from nbtune.config import RunConfig
from nbtune.engine import checkpoint as ckpt
from nbtune.engine.run import Run
from tests.faults.harness import (KILLED, final_state, max_abs_diff, phase, read_trace, rehash, run_phase,
                                  step_losses)

BASE = ["task=classification", "model.name=tiny-bert", "data.dataset=trec", "data.max_eval_samples=16",
        "train.batch_size=8", "train.learning_rate=1e-3", "train.warmup_ratio=0.1", "train.progress_bar=false",
        "train.tensorboard=false", "train.sync_every_n_steps=1", "train.save_total_limit=2", "train.precision=fp32"]
R = BASE + ["data.max_train_samples=64", "train.max_steps=24", "train.save_every_n_steps=5"]
EDIT = [7, "lr", 5e-4]   # the catalogue's LR-widget move at step 100, scaled
STEPS, EPOCH = 24, 8     # optimizer steps in all / per epoch


def _reference(tmp: Path, overrides: list[str], edits: list) -> dict:
    """An uninterrupted run, in this process, traced."""
    spec = {"overrides": overrides, "run_dir": str(tmp / "ref"), "edits": edits, "trace": str(tmp / "ref.trace")}
    result = phase(spec)
    assert result["status"] == "finished"
    return {"run_dir": tmp / "ref", "trace": read_trace(tmp / "ref.trace"), "final": final_state(tmp / "ref")}


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    return _reference(tmp_path_factory.mktemp("A-ref"), R, [EDIT])


def _assert_same_final(ref: dict, run_dir: Path) -> None:
    """Bit-identical: weights, AdamW exp_avg/exp_avg_sq/step, scheduler, position and the per-step loss log."""
    (w0, s0, t0), (w1, s1, t1) = ref["final"], final_state(run_dir)
    assert max_abs_diff(w0, w1) == 0.0
    assert max_abs_diff(s0["optimizer"], s1["optimizer"]) == 0.0
    assert s0["scheduler"] == s1["scheduler"]
    assert t0["state"] == t1["state"]
    assert step_losses(ref["run_dir"]) == step_losses(run_dir)


def _perturb_global_rng() -> None:
    """What a notebook does between cells: a resume that forgot to restore an RNG would now diverge."""
    torch.manual_seed(987_654)
    random.seed(987_654)
    np.random.seed(987_654)


def _stop_and_resume(tmp: Path, stop_step: int) -> tuple[dict, dict]:
    """A1 in one process: stop at `stop_step`, throw the engine away, resume in a new Run object."""
    run_dir = tmp / f"stop{stop_step}"
    first = phase({"overrides": R, "run_dir": str(run_dir), "edits": [EDIT], "stop_at": [stop_step, 0],
                   "trace": str(tmp / "first.trace")})
    assert first["status"] == "stopped" and first["step"] == stop_step
    _perturb_global_rng()
    second = phase({"overrides": R, "run_dir": str(run_dir), "resume": str(run_dir), "edits": [EDIT],
                    "trace": str(tmp / "second.trace")})
    assert second["status"] == "finished" and (second["start_step"], second["step"]) == (stop_step, STEPS)
    return ({**first, "trace": read_trace(tmp / "first.trace")}, {**second, "trace": read_trace(tmp / "second.trace")})


@pytest.mark.parametrize("stop_step", [1, 8, 16, 23], ids=["step1", "epoch-end-8", "epoch-end-16", "step23"])
def test_A4_resume_at_boundary_positions_is_bit_identical(tmp_path, ref, stop_step):
    first, second = _stop_and_resume(tmp_path, stop_step)
    _assert_same_final(ref, Path(second["run_dir"]))
    # A6: the LR of every param group at each of the 24 steps, exactly; A3: the same micro-batches in order.
    assert first["trace"].steps + second["trace"].steps == list(range(1, STEPS + 1))
    assert first["trace"].lrs[:stop_step] + second["trace"].lrs == ref["trace"].lrs
    assert first["trace"].batches_before(stop_step) + second["trace"].batches == ref["trace"].batches


def test_A3_data_order_across_a_mid_epoch_resume(tmp_path, ref):
    stop_step = 19  # mid-epoch 3 (steps 17-24), as 137 is in R
    first, second = _stop_and_resume(tmp_path, stop_step)
    stream = [i for batch in first["trace"].batches_before(stop_step) + second["trace"].batches for i in batch]
    reference = [i for batch in ref["trace"].batches for i in batch]
    assert len(stream) == len(reference) == STEPS * 8  # 192 indices (2,400 in R)
    assert stream == reference
    for epoch in range(STEPS // EPOCH):  # every epoch is a permutation of the 64 rows: 0 duplicates, 0 omissions
        seen = reference[epoch * 64:(epoch + 1) * 64]
        assert sorted(seen) == list(range(64))
    # The resumed process starts at batch 3 of epoch 3, not at an epoch start and not at epoch 0's order.
    assert second["trace"].batches[0] == ref["trace"].batches[stop_step]


def test_A2_A7_hard_kill_resumes_from_the_periodic_checkpoint(tmp_path, ref):
    """SIGKILL after step 13 (last checkpoint: 10); a fresh process resumes. The LR edit at step 7 (A7) is in the
    checkpoint's edit log and is not re-issued."""
    spec = {"overrides": R, "run_dir": str(tmp_path / "run"), "edits": [EDIT]}
    killed = run_phase({**spec, "kill_at": [13, 0]})
    assert killed.returncode == KILLED, killed.error
    assert killed.trace.steps == list(range(1, 14))
    assert ckpt.latest(tmp_path / "run").name == "step-000010"
    assert killed.trace.lrs[7] == pytest.approx([5e-4] * 2, rel=1e-12)  # step 8, the first after the edit (2 groups)

    resumed = run_phase({**spec, "resume": str(tmp_path / "run")})
    assert resumed.returncode == 0, resumed.error
    assert resumed.result["start_step"] == 10 and resumed.result["step"] == STEPS
    assert resumed.trace.steps == list(range(11, STEPS + 1))  # exactly 14 optimizer steps (175 in R)
    assert resumed.trace.lrs == ref["trace"].lrs[10:]         # the edited schedule continues exactly
    assert killed.trace.batches_before(10) + resumed.trace.batches == ref["trace"].batches
    _assert_same_final(ref, tmp_path / "run")
    edits = final_state(tmp_path / "run")[2]["edits"]
    assert [(e["step"], e["name"], e["new"]) for e in edits] == [(7, "lr", pytest.approx(5e-4, rel=1e-12))]


def test_A5_kill_inside_an_accumulation_window(tmp_path):
    """Accumulation 4, 12 optimizer steps = 48 micro-batches (75 / 300 in R); killed after micro-batch 2 of the
    window for step 7, so the resume starts from step 5 and redoes the partial window."""
    overrides = BASE + ["data.max_train_samples=64", "train.max_steps=12", "train.save_every_n_steps=5",
                        "train.gradient_accumulation_steps=4"]
    reference = _reference(tmp_path / "ref", overrides, [])
    assert len(reference["trace"].batches) == 48 and reference["trace"].steps == list(range(1, 13))

    spec = {"overrides": overrides, "run_dir": str(tmp_path / "run")}
    killed = run_phase({**spec, "kill_at": [6, 2]})
    assert killed.returncode == KILLED, killed.error
    assert len(killed.trace.batches) == 6 * 4 + 2
    saved = ckpt.verify(ckpt.latest(tmp_path / "run"))
    assert (saved["state"]["step"], saved["state"]["micro_step"]) == (5, 0)

    resumed = run_phase({**spec, "resume": str(tmp_path / "run")})
    assert resumed.returncode == 0, resumed.error
    assert resumed.trace.steps == list(range(6, 13))  # exactly 7 optimizer steps: 12 in all, not 11 or 13
    assert len(resumed.trace.batches) == 7 * 4
    assert killed.trace.batches_before(5) + resumed.trace.batches == reference["trace"].batches  # 48 micro-batches
    _assert_same_final(reference, tmp_path / "run")


def test_A8_grad_scaler_state_round_trips_exactly_cpu_variant(tmp_path):
    """fp16 needs CUDA, so here a CPU GradScaler rides in a run's checkpoint: accelerate #4289's state
    {scale 1024, growth tracker 1} must come back as saved, not as 2048 / 0."""
    cfg = RunConfig().with_overrides(R)
    run = Run(cfg, run_dir=tmp_path / "run")
    run.scaler = torch.amp.GradScaler("cpu")
    run.scaler.load_state_dict({"scale": 1024.0, "growth_factor": 2.0, "backoff_factor": 0.5,
                                "growth_interval": 2000, "_growth_tracker": 1})
    path = run.save_checkpoint()
    other = Run(cfg, run_dir=tmp_path / "other")
    other.scaler = torch.amp.GradScaler("cpu")  # defaults: scale 65536, tracker 0
    other.load_checkpoint(path)
    assert other.scaler.state_dict() == run.scaler.state_dict() == ckpt.load_torch(path / "state.pt")["scaler"]
    assert (other.scaler.get_scale(), other.scaler.state_dict()["_growth_tracker"]) == (1024.0, 1)


@pytest.mark.gpu
def test_A8_fp16_grad_scaler_resume_on_cuda(tmp_path):
    """R in fp16 on CUDA, stopped at 13 and resumed: the scaler state loads exactly, the final fp32 weights are
    within 1e-5 of the uninterrupted run's and both runs end with the same scaler state (same skipped steps)."""
    overrides = R + ["train.precision=fp16"]
    reference = _reference(tmp_path / "ref", overrides, [])
    run_dir = tmp_path / "run"
    first = phase({"overrides": overrides, "run_dir": str(run_dir), "stop_at": [13, 0],
                   "trace": str(tmp_path / "first.trace")})
    assert first["status"] == "stopped"
    saved = ckpt.load_torch(ckpt.latest(run_dir) / "state.pt")["scaler"]
    resumed = Run.resume(run_dir, RunConfig().with_overrides(overrides))
    assert resumed.scaler.state_dict() == saved
    resumed.start()
    (w0, s0, _), (w1, s1, _) = reference["final"], final_state(run_dir)
    assert max_abs_diff(w0, w1) <= 1e-5
    assert s0["scaler"] == s1["scaler"]


def _copy_checkpoint(ref: dict, tmp: Path, step: int) -> Path:
    src = ref["run_dir"] / "checkpoints" / f"step-{step:06d}"
    dst = tmp / "run" / "checkpoints" / src.name
    shutil.copytree(src, dst)
    return dst


def test_A6_scheduler_state_missing_refuses(tmp_path, ref):
    cfg = RunConfig().with_overrides(R)
    path = _copy_checkpoint(ref, tmp_path, 20)
    states = ckpt.load_torch(path / "state.pt")
    torch.save({k: v for k, v in states.items() if k != "scheduler"}, path / "state.pt")
    rehash(path)  # a well-formed checkpoint that simply lacks the scheduler state
    with pytest.raises(ckpt.CheckpointError) as err:
        Run.resume(path, cfg)
    message = str(err.value)
    assert str(path / "state.pt") in message and "no scheduler state" in message and "warmup" in message

    (path / "state.pt").unlink()  # the file itself gone
    with pytest.raises(ckpt.CheckpointError, match="state.pt: listed in the manifest but missing"):
        Run.resume(path, cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # 0 steps ran
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-000020"]


def test_A9_checkpoint_files_are_weights_only_and_rng_failure_is_fatal(tmp_path, ref):
    path = ckpt.latest(ref["run_dir"])
    package = Path(ckpt.__file__).parents[1]
    assert not [f for f in package.rglob("*.py") if "safe_globals" in f.read_text(encoding="utf-8")]  # no allowlist
    torch_files = sorted(path.glob("*.pt"))
    assert [p.name for p in torch_files] == ["rng-rank0.pt", "state.pt"]
    for file in torch_files:
        assert torch.serialization.get_unsafe_globals_in_checkpoint(file) == []
        _assert_plain(torch.load(file, weights_only=True), file.name)

    cfg = RunConfig().with_overrides(R)
    copy = _copy_checkpoint(ref, tmp_path, 24)
    rng = ckpt.load_torch(copy / "rng-rank0.pt")
    torch.save({**rng, "torch": rng["torch"][:100]}, copy / "rng-rank0.pt")  # a state torch refuses
    rehash(copy)
    run = Run(cfg, run_dir=tmp_path / "fresh")
    before = ckpt.weights_digest(run.raw_model)
    with pytest.raises(ckpt.CheckpointError) as err:
        run.load_checkpoint(copy)
    assert str(copy / "rng-rank0.pt") in str(err.value) and "RNG state cannot be restored" in str(err.value)
    # Nothing was restored, so nothing can train on a half-restored state: step 0, the fresh weights.
    assert run.state.step == 0 and ckpt.weights_digest(run.raw_model) == before


def _assert_plain(obj, where: str) -> None:
    """Only tensors and primitives in containers: no pickled objects of other classes."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _assert_plain(k, where)
            _assert_plain(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _assert_plain(v, f"{where}[{i}]")
    else:
        assert obj is None or isinstance(obj, (torch.Tensor, bool, int, float, str)), (where, type(obj))


def test_A10_resume_refuses_changed_data_and_labels_listing_every_difference(tmp_path, ref):
    import datasets
    path = ckpt.latest(ref["run_dir"])
    cfg = RunConfig().with_overrides(R)
    source = assets.load_dataset("trec", seed=13)
    assert Run.resume(path, cfg, dataset=source).state.step == STEPS  # the same rows, passed in: accepted

    train = source["train"].to_list()
    train[0]["text"] += " (edited)"  # (b) one row edited, inside the 64 rows trained on
    features = source["train"].features
    edited = datasets.DatasetDict({**source, "train": datasets.Dataset.from_list(train, features=features)})
    with pytest.raises(ckpt.CheckpointError) as err:
        Run.resume(path, cfg, dataset=edited)
    assert "different training data" in str(err.value) and "training data: dataset fingerprint" in str(err.value)
    assert "no batch was skipped" in str(err.value)

    # (a) + (b): batch 16 and the edited row are both listed.
    with pytest.raises(ckpt.CheckpointError) as err:
        Run.resume(path, RunConfig().with_overrides(R + ["train.batch_size=16"]), dataset=edited)
    assert "train.batch_size: checkpoint has 8, this run has 16" in str(err.value)
    assert "training data: dataset fingerprint" in str(err.value)

    # (c) 4 labels instead of 6: the classes after 'entity' merged into 'other'.
    names = features["label"].names[:3] + ["other"]
    merged = datasets.DatasetDict({split: part.map(lambda row: {"label": min(row["label"], 3)})
                                   .cast_column("label", datasets.ClassLabel(names=names))
                                   for split, part in source.items()})
    with pytest.raises(ckpt.CheckpointError) as err:
        Run.resume(path, cfg, dataset=merged)
    assert f"labels: checkpoint has 6 {features['label'].names}, this run has 4 {names}" in str(err.value)
    assert sorted(p.name for p in path.parent.iterdir()) == ["step-000020", "step-000024"]  # nothing written


@pytest.mark.integration
def test_A2_A3_A7_at_catalogue_scale(tmp_path):
    """The catalogue's numbers: 512 rows, batch 8 (64 steps an epoch), 300 steps, save every 25, an LR edit to
    5e-4 at step 100, SIGKILL at 137 (last checkpoint 125), resume in a fresh interpreter: 175 steps, 2,400
    indices, bit-identical."""
    overrides = BASE + ["data.max_train_samples=512", "train.max_steps=300", "train.save_every_n_steps=25"]
    spec = {"overrides": overrides, "edits": [[100, "lr", 5e-4]]}
    straight = run_phase({**spec, "run_dir": str(tmp_path / "ref")}, fresh_interpreter=True)
    assert straight.returncode == 0, straight.error
    killed = run_phase({**spec, "run_dir": str(tmp_path / "run"), "kill_at": [137, 0]}, fresh_interpreter=True)
    assert killed.returncode == KILLED and ckpt.latest(tmp_path / "run").name == "step-000125"
    resumed = run_phase({**spec, "run_dir": str(tmp_path / "run"), "resume": str(tmp_path / "run")},
                        fresh_interpreter=True)
    assert resumed.returncode == 0, resumed.error
    assert resumed.trace.steps == list(range(126, 301))
    assert resumed.trace.lrs == straight.trace.lrs[125:]
    assert straight.trace.lrs[100] == pytest.approx([5e-4] * 2, rel=1e-12)
    stream = [i for b in killed.trace.batches_before(125) + resumed.trace.batches for i in b]
    assert stream == [i for b in straight.trace.batches for i in b] and len(stream) == 2400
    _assert_same_final({"run_dir": tmp_path / "ref", "final": final_state(tmp_path / "ref")}, tmp_path / "run")
