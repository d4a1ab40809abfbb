"""Models by bundled name, local directory or hub id: the same from_pretrained path, with clear errors."""
import os
import subprocess
import sys

from nbtune import assets
from nbtune.config import RunConfig
from nbtune.engine.run import Run


def test_local_model_directory_trains(tmp_path):
    local = assets.resolve_model("minilm").path  # a plain Hugging Face directory, as a user's own would be
    cfg = RunConfig().with_overrides([
        f"model.name={local}", "data.dataset=trec", "data.max_train_samples=16", "data.max_eval_samples=8",
        "train.batch_size=8", "train.max_steps=2", "train.progress_bar=false", "train.tensorboard=false",
        f"output_dir={tmp_path}"])
    run = Run(cfg).start()
    assert run.state.status == "finished" and run.state.step == 2
    assert type(run.raw_model).__name__ == "BertForSequenceClassification"
    assert run.raw_model.config.id2label[0] == "abbreviation"


def test_unreachable_hub_id_gets_an_actionable_error(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}  # empty cache, no network
    out = subprocess.run([sys.executable, "-m", "nbtune.cli", "demo", "--output-dir", str(tmp_path),
                          "model.name=some-org/some-model"], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2
    assert "nbtune: error: could not load the tokenizer of 'some-org/some-model'" in out.stderr
    assert "use a bundled model (minilm, smollm2" in out.stderr
    assert "Traceback" not in out.stderr
