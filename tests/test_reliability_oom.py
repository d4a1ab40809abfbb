"""Catalogue group D: the out-of-memory backoff. A micro-batch that runs out of memory is halved (the planned batch
then runs as chunks, so micro-batch x accumulation stays the batch size) and the window is retried on the same
data; at the floor a clear error lists every size tried; any other error propagates at once. The CPU tests raise
the OOM from a forward pre-hook (a CUDA OutOfMemoryError or the CPU allocator's RuntimeError); the GPU test runs
out of real memory inside a Jupyter kernel.
"""
import dataclasses
import json
from pathlib import Path

import pytest
import torch

from nbtune.config import RunConfig
from nbtune.engine import checkpoint as ckpt
from nbtune.engine.guard import NoBatchSizeFitsError
from nbtune.engine.run import Run
from nbtune.engine.sinks import MemorySink

# 256 trec rows in batches of 64: 4 batches per epoch; 3 steps.
BASE = ["task=classification", "model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=256",
        "data.max_eval_samples=16", "data.max_length=32", "train.batch_size=64", "train.max_steps=3",
        "train.eval_every_n_steps=0", "train.progress_bar=false", "train.tensorboard=false", "train.precision=fp32",
        "train.seed=5", "train.learning_rate=1e-3"]
NO_DROPOUT = "model.config_overrides={hidden_dropout_prob: 0.0, attention_probs_dropout_prob: 0.0}"
OOMS = {"cuda-oom": lambda: torch.cuda.OutOfMemoryError("CUDA out of memory."),
        "cpu-oom": lambda: RuntimeError("CPU out of memory.")}


def _run(tmp_path: Path, *extra: str, name: str = "r") -> tuple[Run, MemorySink]:
    sink = MemorySink()
    cfg = RunConfig().with_overrides(BASE + [f"output_dir={tmp_path}", f"run_name={name}", *extra])
    return Run(cfg, sinks=[sink]), sink


def _fail_forward(run: Run, fails, make_error) -> list[int]:
    """Every training forward records its batch size; those where fails(size) raise make_error() (evaluation is
    left alone: the training step is what runs out of memory). Returns the sizes."""
    sizes: list[int] = []

    def pre_hook(module, args, kwargs):
        if not module.training:
            return
        size = kwargs["input_ids"].shape[0]
        sizes.append(size)
        if fails(size):
            raise make_error()
    run.model.register_forward_pre_hook(pre_hook, with_kwargs=True)
    return sizes


def _distinct(sizes: list[int]) -> list[int]:
    return [s for i, s in enumerate(sizes) if i == 0 or s != sizes[i - 1]]


def _backoffs(sink: MemorySink) -> list[dict]:
    return [r for r in sink.of_kind("guard") if r["event"] == "oom_backoff"]


def _weights(run: Run) -> dict:
    return {n: p.detach().clone() for n, p in run.raw_model.named_parameters()}


def _tensor_locals(exc: BaseException) -> list[str]:
    """Frame locals (and one level into containers and dataclasses) holding a tensor, over the traceback of
    `exc` and of the exceptions it chains to; module frames and the Run itself (the user holds it) are skipped."""
    def holds(value, depth=0) -> bool:
        if isinstance(value, torch.Tensor):
            return True
        if depth == 2 or isinstance(value, Run):
            return False
        if isinstance(value, dict):
            return any(holds(v, depth + 1) for v in value.values())
        if isinstance(value, (list, tuple)):
            return any(holds(v, depth + 1) for v in value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return any(holds(v, depth + 1) for v in vars(value).values())
        return False
    found, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb = exc.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            if frame.f_locals is not frame.f_globals:
                found += [f"{frame.f_code.co_name}:{k}" for k, v in frame.f_locals.items() if holds(v)]
            tb = tb.tb_next
        exc = exc.__cause__ or exc.__context__
    return found


@pytest.mark.parametrize("oom", OOMS, ids=list(OOMS))
def test_D1_backoff_sequence_keeps_the_effective_batch(tmp_path, oom):
    run, sink = _run(tmp_path)
    sizes = _fail_forward(run, lambda size: size > 8, OOMS[oom])
    plan = run.epoch_plan(0)
    run.start()
    assert run.state.status == "finished" and run.state.step == 3
    assert _distinct(sizes) == [64, 32, 16, 8]  # 4 attempts on the first window
    assert sizes.count(64) == sizes.count(32) == sizes.count(16) == 1
    attempts = [(64, 1)] + [(r["micro_batch_size"], r["gradient_accumulation_steps"]) for r in _backoffs(sink)]
    assert attempts == [(64, 1), (32, 2), (16, 4), (8, 8)]
    assert all(micro * accum == 64 for micro, accum in attempts)
    assert [r["failed_micro_batch_size"] for r in _backoffs(sink)] == [64, 32, 16]
    assert all(r["message"].endswith("out of memory.") for r in _backoffs(sink))
    # The failed attempts are not counted: samples and tokens are those of the 3 planned batches.
    train = run.data.rows["train"]
    assert run.state.samples_seen == 3 * 64
    assert run.state.tokens_seen == sum(len(train[i]["input_ids"]) for rows in plan[:3] for i in rows)
    # The micro-batch size is saved with the position and replayed on resume.
    assert run.state.guard.micro_batch_size == 8
    saved = ckpt.verify(ckpt.latest(run.run_dir))
    assert saved["state"]["guard"]["micro_batch_size"] == 8
    resumed = Run.resume(run.run_dir, run.cfg)
    assert resumed.state.guard.micro_batch_size == 8
    assert [len(rows) for rows, _ in resumed.guard.chunks(resumed, plan[0])] == [8] * 8


def test_D1_backoff_gives_the_whole_batch_gradient(tmp_path):
    """Without dropout the chunked run equals a run that used micro-batch 8 from the start, bit for bit (the failed
    attempts, here in backward on a window's second micro-batch, leave nothing behind), and matches the unchunked
    batch-64 run to float rounding."""
    accum = "train.gradient_accumulation_steps=2"
    whole, whole_sink = _run(tmp_path, NO_DROPOUT, accum, name="whole")
    whole.start()
    preset, _ = _run(tmp_path, NO_DROPOUT, accum, name="preset")
    preset.state.guard.micro_batch_size = 8
    preset.start()
    failing, sink = _run(tmp_path, NO_DROPOUT, accum, name="failing")

    def oom_in_backward(grad):  # once the window's first micro-batch has left its gradients behind
        if failing.state.micro_step == 1 and failing.guard.attempting > 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory.")
        return grad
    failing.raw_model.bert.embeddings.word_embeddings.weight.register_hook(oom_in_backward)
    failing.start()
    assert [r["micro_batch_size"] for r in _backoffs(sink)] == [32, 16, 8]
    assert failing.state.samples_seen == preset.state.samples_seen == 3 * 2 * 64
    got, same, reference = _weights(failing), _weights(preset), _weights(whole)
    assert max((got[k] - same[k]).abs().max().item() for k in got) == 0.0
    assert max((got[k] - reference[k]).abs().max().item() for k in got) < 1e-5
    # AdamW hides a gradient's scale from the weights; the logged loss and gradient norm show it.
    for chunked, plain in zip(sink.of_kind("step"), whole_sink.of_kind("step")):
        assert chunked["loss"] == pytest.approx(plain["loss"], rel=1e-5)
        assert chunked["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-4)
    assert len(sink.of_kind("step")) == 3


def test_D1_other_errors_propagate_without_retry(tmp_path):
    run, sink = _run(tmp_path)
    sizes = _fail_forward(run, lambda size: True, lambda: ValueError("labels out of range"))
    with pytest.raises(ValueError, match="labels out of range"):
        run.start()
    assert sizes == [64]  # attempt 1, 0 retries
    assert _backoffs(sink) == [] and run.state.guard.micro_batch_size is None
    assert run.state.status == "error"


def test_D2_floor_reached(tmp_path):
    run, sink = _run(tmp_path)
    sizes = _fail_forward(run, lambda size: True, OOMS["cuda-oom"])
    with pytest.raises(NoBatchSizeFitsError) as err:
        run.start()
    assert "no batch size fits: tried 64,32,16,8,4,2,1" in str(err.value)
    assert "CUDA out of memory." in str(err.value)
    assert sizes == [64, 32, 16, 8, 4, 2, 1]  # exactly 7 attempts, none at size 0
    assert len(_backoffs(sink)) == 6 and run.state.status == "error"
    assert _tensor_locals(err.value) == []


def test_D1_oom_with_backoff_off_surfaces_without_pinning_tensors(tmp_path):
    run, sink = _run(tmp_path, "train.oom_backoff=false")
    sizes = _fail_forward(run, lambda size: True, OOMS["cuda-oom"])
    with pytest.raises(torch.OutOfMemoryError, match="CUDA out of memory"):
        run.start()
    assert sizes == [64] and _backoffs(sink) == []
    assert run.error is not None and _tensor_locals(run.error) == []  # the frames of the failed step are cleared


# ------------------------------------------------------------------------------------------------ GPU
D3_CELLS = [
    # 0: cap this process at 2 GiB of the device, so the OOM below is deterministic on any GPU
    """import json, sys, torch
torch.cuda.set_per_process_memory_fraction(2 * 2**30 / torch.cuda.get_device_properties(0).total_memory)
from nbtune.config import RunConfig
from nbtune.engine.run import Run
from nbtune.engine.sinks import MemorySink
OUT = {}
def overrides(batch, backoff):
    return ["model.name=tiny-bert", "data.dataset=trec", "data.max_length=128", "data.pad_to_max_length=true",
            "data.max_train_samples=4096", "data.max_eval_samples=64", f"train.batch_size={batch}",
            "train.max_steps=1", "train.precision=fp32",
            "train.eval_every_n_steps=0", "train.progress_bar=false", "train.tensorboard=false",
            f"train.oom_backoff={str(backoff).lower()}", "output_dir=runs"]""",
    # 1: one batch of 4096 x 128 tokens (tiny-bert has 128 positions) cannot fit under the cap: the backoff halves
    # the micro-batch until it does
    """sink = MemorySink()
run = Run(RunConfig().with_overrides(overrides(4096, True)), sinks=[sink])
run.start()
OUT["status"] = run.state.status
OUT["backoffs"] = [r["micro_batch_size"] for r in sink.of_kind("guard") if r["event"] == "oom_backoff"]""",
    # 2: what is left allocated beyond the model and AdamW state
    """import gc
gc.collect()
def held(r):
    params = sum(p.numel() * p.element_size() for p in r.raw_model.parameters())
    state = sum(t.numel() * t.element_size() for s in r.optimizer.state.values() for t in s.values()
                if torch.is_tensor(t) and t.is_cuda)
    return params + state
OUT["extra_mib"] = (torch.cuda.memory_allocated() - held(run)) / 2**20""",
    # 3: backoff off: the OOM surfaces in the notebook as an error
    """run_off = Run(RunConfig().with_overrides(overrides(4096, False)))
run_off.start()""",
    # 4: the error the kernel keeps pins no CUDA tensor; the same kernel trains again at batch 8
    """def pinned(exc):
    frames, seen = 0, set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb = exc.__traceback__
        while tb is not None:
            f = tb.tb_frame
            cuda = [v for v in f.f_locals.values() if torch.is_tensor(v) and v.is_cuda]
            frames += bool(cuda) and f.f_locals is not f.f_globals
            tb = tb.tb_next
        exc = exc.__cause__ or exc.__context__
    return frames
OUT["error"] = type(sys.last_value).__name__
OUT["pinned_frames"] = pinned(sys.last_value)
gc.collect()
OUT["extra_mib_after_error"] = (torch.cuda.memory_allocated() - held(run) - held(run_off)) / 2**20
again = Run(RunConfig().with_overrides(overrides(8, False)))
again.start()
OUT["rerun_status"] = again.state.status
json.dump(OUT, open("d3.json", "w"))""",
]


@pytest.mark.gpu
def test_D3_real_oom_frees_memory_in_the_notebook(tmp_path):
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in D3_CELLS]
    nb.cells[3].metadata["tags"] = ["raises-exception"]  # the surfaced OOM is the point of that cell
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [(i, o.ename) for i, c in enumerate(nb.cells) for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors == [(3, "OutOfMemoryError")], errors
    out = json.loads((tmp_path / "d3.json").read_text())
    assert out["status"] == "finished"
    assert out["backoffs"] and out["backoffs"][0] == 2048  # the first attempt (4096) ran out of memory
    assert out["extra_mib"] <= 64, out
    assert out["error"] == "OutOfMemoryError" and out["pinned_frames"] == 0
    assert out["extra_mib_after_error"] <= 64, out
    assert out["rerun_status"] == "finished"  # 1/1, no kernel restart
