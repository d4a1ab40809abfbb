"""Resume is exact: stop at step k (also inside an accumulation window), resume in a fresh process, and the
final weights, optimizer state and per-step loss/LR logs equal an uninterrupted run's, bit for bit."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nbtune.config import RunConfig
from nbtune.engine import checkpoint as ckpt
from nbtune.engine.run import Run

WORKER = Path(__file__).parent / "workers" / "train_worker.py"
# trec with a tiny random BERT: 64 rows, batch 8, accumulation 2 -> 4 optimizer steps per epoch, 12 in all.
OVERRIDES = ["task=classification", "model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=64",
             "data.max_eval_samples=16", "train.batch_size=8", "train.gradient_accumulation_steps=2",
             "train.num_train_epochs=3", "train.learning_rate=1e-3", "train.warmup_ratio=0.2",
             "train.progress_bar=false", "train.tensorboard=false", "train.sync_every_n_steps=3",
             "train.save_total_limit=null", "train.precision=fp32"]
LR_EDIT = [3, "lr", 2e-4]  # a live edit at step 3, before every stop point


def _phase(tmp: Path, name: str, **spec) -> dict:
    spec = {"overrides": OVERRIDES, "run_dir": str(tmp / name), "edits": [LR_EDIT], **spec}
    out = subprocess.run([sys.executable, str(WORKER), json.dumps(spec)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def resume_is_exact(tmp: Path, stop_at: list[int], steps: int = 12, **spec) -> tuple[dict, dict]:
    """Train straight through ("ref"), and with a stop at `stop_at` plus a resume in a fresh process ("resumed");
    assert both reach `steps` with bit-identical weights and AdamW state. Returns both final states."""
    ref = _phase(tmp, "ref", **spec)
    stopped = _phase(tmp, "resumed", stop_at=stop_at, **spec)
    assert stopped["status"] == "stopped"
    done = _phase(tmp, "resumed", resume=stopped["run_dir"], **spec)
    assert ref["step"] == done["step"] == steps
    (ref_w, ref_s), (got_w, got_s) = _final(tmp / "ref"), _final(tmp / "resumed")
    assert _max_diff(ref_w, got_w) == 0.0
    assert _max_diff(ref_s["optimizer"]["state"], got_s["optimizer"]["state"]) == 0.0
    return ref_s, got_s


def _steps(run_dir: Path) -> dict[int, dict]:
    """Step records by step; a resumed run appends, so later lines win."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if r["kind"] == "step"}


def _final(run_dir: Path) -> tuple[dict, dict]:
    path = ckpt.latest(run_dir)
    return load_file(str(path / "model.safetensors")), ckpt.load_torch(path / "state.pt")


def _max_diff(a, b) -> float:
    if isinstance(a, torch.Tensor):
        return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        return max([_max_diff(a[k], b[k]) for k in a] or [0.0])
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        return max([_max_diff(x, y) for x, y in zip(a, b)] or [0.0])
    assert a == b, (a, b)
    return 0.0


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    result = _phase(tmp, "ref")
    assert result["status"] == "finished" and result["step"] == 12
    return Path(result["run_dir"])


@pytest.mark.parametrize("stop_at", [(6, 0), (5, 1)], ids=["mid-epoch-step", "inside-accumulation-window"])
def test_resume_is_bit_identical(tmp_path, reference, stop_at):
    stopped = _phase(tmp_path, "resumed", stop_at=list(stop_at))
    assert stopped["status"] == "stopped" and stopped["step"] == stop_at[0]
    saved = ckpt.verify(ckpt.latest(Path(stopped["run_dir"])))
    assert saved["state"]["micro_step"] == stop_at[1]
    assert [e["name"] for e in saved["edits"]] == ["lr", "stop"]

    done = _phase(tmp_path, "resumed", resume=stopped["run_dir"])
    assert done["status"] == "finished" and done["step"] == 12

    ref_w, ref_s = _final(reference)
    got_w, got_s = _final(Path(done["run_dir"]))
    assert _max_diff(ref_w, got_w) == 0.0
    assert _max_diff(ref_s["optimizer"]["state"], got_s["optimizer"]["state"]) == 0.0
    assert ref_s["scheduler"]["base_lrs"] == got_s["scheduler"]["base_lrs"]

    ref_state = ckpt.verify(ckpt.latest(reference))["state"]
    got_state = ckpt.verify(ckpt.latest(Path(done["run_dir"])))["state"]
    assert got_state == ref_state  # position, and samples/tokens seen, including the split window

    ref_steps, got_steps = _steps(reference), _steps(Path(done["run_dir"]))
    assert sorted(got_steps) == list(range(1, 13))
    assert [ref_steps[s]["loss"] for s in range(1, 13)] == [got_steps[s]["loss"] for s in range(1, 13)]
    assert [ref_steps[s]["lr"] for s in range(1, 13)] == [got_steps[s]["lr"] for s in range(1, 13)]


def test_lr_edit_is_replayed_after_resume(tmp_path, reference):
    """The edit at step 3 scales the schedule; after a stop at 6 the resumed steps use the edited LR."""
    stopped = _phase(tmp_path, "edited", stop_at=[6, 0])
    done = _phase(tmp_path, "edited", resume=stopped["run_dir"])
    steps = _steps(Path(done["run_dir"]))
    unedited = _phase(tmp_path, "plain", edits=[], stop_at=[8, 0])
    plain = _steps(Path(unedited["run_dir"]))
    # Step 4 is the first step after the edit; from then on every LR is the plain schedule times one factor.
    factor = steps[4]["lr"]["decay"] / plain[4]["lr"]["decay"]
    assert steps[3]["lr"] == plain[3]["lr"]
    assert factor < 1.0
    for s in (7, 8):  # steps run by the resumed process
        assert steps[s]["lr"]["decay"] == pytest.approx(plain[s]["lr"]["decay"] * factor, rel=1e-9)
        assert steps[s]["lr"]["decay"] == pytest.approx(steps[s]["lr"]["no_decay"], rel=1e-12)


def test_resume_refuses_other_config_and_lists_keys(tmp_path, reference):
    cfg = RunConfig().with_overrides(OVERRIDES + ["train.learning_rate=5e-4", "train.batch_size=4"])
    with pytest.raises(ckpt.CheckpointError) as err:
        Run.resume(reference, cfg)
    assert "train.batch_size" in str(err.value) and "train.learning_rate" in str(err.value)
    assert "different config" in str(err.value)


def test_resume_refuses_other_data(tmp_path, reference):
    cfg = RunConfig().with_overrides(OVERRIDES)
    run = Run(cfg, run_dir=tmp_path / "other")
    run.dataset_fingerprint = "0" * 64  # what a run over other rows would compute
    with pytest.raises(ckpt.CheckpointError, match="different training data"):
        run.load_checkpoint(ckpt.latest(reference))
