"""Bad input gets a specific exception whose message names the problem and what to do about it, in Python
and through the CLI (exit code 2, `nbtune: error: ...` on stderr)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nbtune.assets import UnknownAssetError
from nbtune.config import RunConfig
from nbtune.engine import checkpoint as ckpt
from nbtune.engine.run import Run
from nbtune.engine.tasks import DataError

BASE = ["model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=16", "data.max_eval_samples=8",
        "data.max_length=32", "train.batch_size=8", "train.max_steps=2", "train.progress_bar=false",
        "train.tensorboard=false", "train.precision=fp32", "train.save_every_n_steps=1",
        "train.save_total_limit=null"]


def _config(tmp_path: Path, *extra: str) -> RunConfig:
    return RunConfig().with_overrides(BASE + [f"output_dir={tmp_path}", *extra])


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "nbtune.cli", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 2-step run with checkpoints at steps 1 and 2."""
    tmp = tmp_path_factory.mktemp("trained")
    run = Run(_config(tmp), run_dir=tmp / "run")
    run.start()
    assert run.state.status == "finished"
    return run.run_dir


# ------------------------------------------------------------------------------------- unknown assets
def test_unknown_model_suggests_closest(tmp_path):
    with pytest.raises(UnknownAssetError) as err:
        Run(RunConfig(model="minilmm", output_dir=str(tmp_path)))
    message = str(err.value)
    assert "'minilmm'" in message and "Did you mean 'minilm'?" in message


def test_unknown_dataset_is_named(tmp_path):
    with pytest.raises(UnknownAssetError) as err:
        Run(_config(tmp_path, "data.dataset=intents-em"))
    message = str(err.value)
    assert "intents-em" in message and "intents-en" in message


def test_unknown_dataset_suggests_closest(tmp_path):
    with pytest.raises(UnknownAssetError) as err:
        Run(_config(tmp_path, "data.dataset=intents-em"))
    assert "Did you mean 'intents-en'?" in str(err.value)


def test_cli_unknown_model_exits_2_with_suggestion(tmp_path):
    path = tmp_path / "run.yaml"
    _config(tmp_path, "model.name=minilmm").to_yaml(path)
    out = _cli("train", str(path), "--no-report", cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "nbtune: error:" in out.stderr
    assert "Did you mean 'minilm'?" in out.stderr
    assert "Traceback" not in out.stderr


# ---------------------------------------------------------------------------------------- data files
def _write_csv(path: Path, header: str, n: int = 20) -> Path:
    lines = [header] + [f"row number {i} text,{'a' if i % 2 else 'b'}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_missing_label_column_names_file_column_and_alternatives(tmp_path):
    csv = _write_csv(tmp_path / "tickets.csv", "text,intent")
    with pytest.raises(DataError) as err:
        Run(_config(tmp_path, f"data.dataset={csv}", "data.label_column=label"))
    message = str(err.value)
    assert str(csv) in message
    assert "'label'" in message
    assert "intent" in message
    assert "data.label_column" in message


def test_missing_text_column_suggests_close_name(tmp_path):
    csv = _write_csv(tmp_path / "typo.csv", "txt,label")
    with pytest.raises(DataError) as err:
        Run(_config(tmp_path, f"data.dataset={csv}"))
    assert "'text'" in str(err.value) and "did you mean 'txt'?" in str(err.value).lower()


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"not a spreadsheet either")
    with pytest.raises(DataError) as err:
        Run(_config(tmp_path, f"data.dataset={path}"))
    assert str(path) in str(err.value) and ".xlsx" in str(err.value) and ".csv" in str(err.value)


def test_corrupt_parquet_is_named(tmp_path):
    path = tmp_path / "data.parquet"
    path.write_bytes(b"not really parquet")
    with pytest.raises(DataError, match=r"data\.parquet: found a file Parquet can't read"):
        Run(_config(tmp_path, f"data.dataset={path}"))


def test_missing_file_is_unknown_asset(tmp_path):
    missing = tmp_path / "nowhere.csv"
    with pytest.raises(UnknownAssetError) as err:
        Run(_config(tmp_path, f"data.dataset={missing}"))
    assert str(missing) in str(err.value) and "existing file" in str(err.value)


# ----------------------------------------------------------------------------------------- config keys
def test_cli_unknown_override_key_suggests_closest(tmp_path):
    path = tmp_path / "run.yaml"
    _config(tmp_path).to_yaml(path)
    out = _cli("train", str(path), "train.learnig_rate=1e-3", "--no-report", cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "nbtune: error:" in out.stderr
    assert "train.learnig_rate" in out.stderr and "Did you mean 'train.learning_rate'?" in out.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["run.yaml"]  # refused before any run directory was made


def test_cli_resume_with_other_config_lists_differing_key(tmp_path, trained):
    path = tmp_path / "run.yaml"
    _config(tmp_path, "train.learning_rate=1e-3").to_yaml(path)
    checkpoint = ckpt.latest(trained)
    out = _cli("train", str(path), "--resume", str(checkpoint), "--no-report", cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "nbtune: error:" in out.stderr and "different config" in out.stderr
    assert "train.learning_rate" in out.stderr
    assert "train.batch_size" not in out.stderr  # only the keys that differ


# ------------------------------------------------------------------------------------------ checkpoints
def test_corrupt_checkpoint_is_refused_naming_the_file(tmp_path, trained):
    copy = tmp_path / "step-000002"
    shutil.copytree(ckpt.latest(trained), copy)
    assert ckpt.verify(copy)["state"]["step"] == 2
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError) as err:
        ckpt.verify(copy)
    assert "model.safetensors" in str(err.value) and "SHA-256" in str(err.value)


def test_latest_skips_incomplete_and_corrupt_checkpoints(tmp_path, trained):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    root = run_dir / "checkpoints"
    assert [p.name for p in sorted(root.glob("step-*"))] == ["step-000001", "step-000002"]
    assert ckpt.latest(run_dir) == root / "step-000002"

    # A newer directory without a manifest (an interrupted save) is skipped ...
    shutil.copytree(root / "step-000002", root / "step-000009")
    (root / "step-000009" / ckpt.MANIFEST).unlink()
    with pytest.raises(ckpt.CheckpointError, match="manifest"):
        ckpt.verify(root / "step-000009")
    assert ckpt.latest(run_dir) == root / "step-000002"

    # ... and so is a corrupt one: the newest complete checkpoint wins.
    (root / "step-000002" / "state.pt").write_bytes(b"truncated")
    assert ckpt.latest(run_dir) == root / "step-000001"
    with pytest.raises(ckpt.CheckpointError, match="state.pt"):
        Run.resume(root / "step-000002", _config(tmp_path))
