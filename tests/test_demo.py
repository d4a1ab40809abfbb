"""Integration tier: the real bundled models and data, end to end."""
import json
import math
import subprocess
import sys

import pytest

from nbtune.config import RunConfig
from nbtune.engine import checkpoint as ckpt
from nbtune.engine.run import Run


@pytest.mark.integration
def test_demo_reaches_095_on_held_out_intents(tmp_path):
    out = subprocess.run([sys.executable, "-m", "nbtune.cli", "demo", "--output-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test"]["accuracy"] >= 0.95, results
    assert "held-out test (2087 rows): " in out.stdout and "accuracy" in out.stdout

    kinds = [json.loads(line)["kind"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("step") > 100 and "eval" in kinds
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert ckpt.latest(run_dir) is not None
    assert (run_dir / "model" / "model.safetensors").is_file()
    report = (run_dir / "report.html").read_text()
    assert "validation loss" in report and "Gradient norm" in report and "Learning rate" in report


@pytest.mark.integration
def test_smollm2_chat_sft_trains_on_chatterbot(tmp_path):
    cfg = RunConfig().with_overrides([
        "task=causal-lm", "model.name=smollm2", "data.dataset=chatterbot-sft", "data.max_train_samples=12",
        "data.max_eval_samples=8", "data.max_length=96", "train.batch_size=4", "train.max_steps=3",
        "train.learning_rate=1e-4", "train.progress_bar=false", "train.tensorboard=false", f"output_dir={tmp_path}"])
    run = Run(cfg).start()
    assert run.state.status == "finished"
    assert type(run.raw_model).__name__ == "LlamaForCausalLM"
    # the prompt is masked: fewer label tokens than input tokens in every row
    rows = run.data.rows["train"]
    assert all(sum(t != -100 for t in r["labels"]) < len(r["input_ids"]) for r in rows)
    ppl = run.results["validation"]["perplexity"]
    assert math.isfinite(ppl) and ppl > 1.0
