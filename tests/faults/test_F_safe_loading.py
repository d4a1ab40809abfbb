"""Catalogue group F: unsafe deserialization (docs/reliability.md). An attacker who controls a checkpoint
directory can also rewrite its manifest, so most cases re-sign it (harness.rehash) to reach the loaders behind
the SHA-256 check."""
import importlib.abc
import json
import pickle
import shutil
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from nbtune.config import RunConfig
from nbtune.engine import checkpoint as ckpt
from nbtune.engine.run import Run
from tests.faults.harness import (SAFETENSORS_FUZZ, crafted_safetensors, in_fork, malicious_pickle, rehash,
                                  reset_peak_rss, rss_bytes)

CONFIG = ["task=classification", "model.name=tiny-bert", "data.dataset=trec", "data.max_train_samples=16",
          "data.max_eval_samples=8", "train.batch_size=8", "train.max_steps=2", "train.progress_bar=false",
          "train.tensorboard=false", "train.precision=fp32"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A finished 2-step run's checkpoint, and a second Run of the same config to load copies into."""
    tmp = tmp_path_factory.mktemp("F")
    run = Run(RunConfig().with_overrides(CONFIG), run_dir=tmp / "run")
    run.start()
    loader = Run(RunConfig().with_overrides(CONFIG), run_dir=tmp / "loader")
    return {"checkpoint": ckpt.latest(run.run_dir), "loader": loader}


def _copy(saved: dict, tmp: Path) -> Path:
    dst = tmp / "run" / "checkpoints" / saved["checkpoint"].name
    shutil.copytree(saved["checkpoint"], dst)
    return dst


@pytest.fixture
def torch_load_calls(monkeypatch):
    """Every torch.load call's weights_only argument, while still loading."""
    calls, real = [], torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)
    monkeypatch.setattr(torch, "load", spy)
    return calls


@pytest.mark.parametrize("fmt", ["torch", "raw"])
def test_F1_malicious_pickle_has_no_side_effect(tmp_path, saved, torch_load_calls, fmt):
    payload = malicious_pickle(tmp_path / f"control-{uuid.uuid4()}", fmt="raw")
    pickle.loads(payload).close()  # the payload works: unpickled without restriction, it creates its file
    assert len(list(tmp_path.glob("control-*"))) == 1

    path = _copy(saved, tmp_path)
    sentinel = tmp_path / f"pwned-{uuid.uuid4()}"
    (path / "state.pt").write_bytes(malicious_pickle(sentinel, fmt=fmt))
    with pytest.raises(ckpt.CheckpointError, match="SHA-256"):  # as found: the manifest check refuses it
        Run.resume(path, RunConfig().with_overrides(CONFIG))
    rehash(path)
    with pytest.raises(ckpt.CheckpointError) as err:  # re-signed: the weights-only unpickler refuses it
        saved["loader"].load_checkpoint(path)
    message = str(err.value)
    assert str(path / "state.pt") in message and "unsafe pickle: weights-only load failed" in message
    assert "Unsupported global" in message  # torch's reason, in one line
    assert not sentinel.exists()  # 0 side effects
    assert torch_load_calls == [True]  # one weights-only attempt, 0 fallbacks to weights_only=False


def test_F2_torch_older_than_2_6_is_refused_before_torch_load(tmp_path, saved, torch_load_calls, monkeypatch):
    path = _copy(saved, tmp_path)
    monkeypatch.setattr(torch, "__version__", "2.5.1")
    with pytest.raises(ckpt.CheckpointError) as err:
        saved["loader"].load_checkpoint(path)
    assert "CVE-2025-32434" in str(err.value) and "2.5.1" in str(err.value) and "state.pt" in str(err.value)
    assert torch_load_calls == []  # 0 torch.load calls
    weights = load_file(str(path / "model.safetensors"))  # safetensors loads are not gated
    assert weights.keys() == saved["loader"].raw_model.state_dict().keys()


def test_F3a_pickle_only_model_directory_needs_an_opt_in(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification
    from nbtune.engine import tasks
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64)
    config.save_pretrained(tmp_path)
    torch.save(BertForSequenceClassification(config).state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match=r"weights only as a pickle \(pytorch_model.bin\).*"
                                      r"model.allow_pickle_weights=true"):
        tasks.load_model("classification", str(tmp_path), None, ["a", "b"], "pretrained", False)
    opted_in = tasks.load_model("classification", str(tmp_path), None, ["a", "b"], "pretrained", False,
                                allow_pickle_weights=True)
    assert opted_in.config.num_labels == 2


class _ImportsFrom(importlib.abc.MetaPathFinder):
    """Records every module a finder is asked for whose name mentions `word` (it finds nothing itself)."""

    def __init__(self, word: str) -> None:
        self.word, self.asked = word, []

    def find_spec(self, name, path=None, target=None):
        if self.word in name:
            self.asked.append(name)
        return None


def test_F3b_auto_map_code_is_not_imported_without_trust_remote_code(tmp_path, monkeypatch):
    from transformers import BertConfig
    from nbtune.engine import tasks
    sentinel = tmp_path / "imported"
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64).to_dict()
    config.update(model_type="evilbert", auto_map={"AutoConfig": "modeling_evil.EvilConfig",
                                                   "AutoModelForSequenceClassification": "modeling_evil.EvilModel"})
    (model_dir / "config.json").write_text(json.dumps(config))
    (model_dir / "modeling_evil.py").write_text(f"open({str(sentinel)!r}, 'w')\n")
    finder = _ImportsFrom("evil")
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    before = set(sys.modules)
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        tasks.load_model("classification", str(model_dir), None, ["a", "b"], "pretrained", False)
    assert not sentinel.exists() and finder.asked == []
    assert not [m for m in set(sys.modules) - before if "evil" in m]


def _load_crafted(loader: Run, path: Path) -> dict:
    """In a forked child: load one crafted checkpoint; report the error, its time and the RSS growth."""
    reset_peak_rss()
    rss_before, _ = rss_bytes()
    started = time.perf_counter()
    try:
        loader.load_checkpoint(path)
        error = None
    except Exception as exc:  # noqa: BLE001 - the test asserts on the type and message
        error = [type(exc).__name__, str(exc)]
    seconds = time.perf_counter() - started
    return {"error": error, "seconds": seconds, "rss_growth": rss_bytes()[1] - rss_before}


@pytest.mark.parametrize("kind", SAFETENSORS_FUZZ)
def test_F4_safetensors_header_fuzz_fails_cleanly(tmp_path, saved, kind):
    path = _copy(saved, tmp_path)
    crafted_safetensors(kind, path / "model.safetensors")
    rehash(path)
    outcome = in_fork(lambda: _load_crafted(saved["loader"], path), timeout_s=60)
    assert outcome.returncode == 0, outcome.error  # 0 crashes
    name, message = outcome.value["error"]
    assert name == "CheckpointError"
    assert message.startswith(f"{path / 'model.safetensors'}: not a valid safetensors file (")
    assert outcome.value["rss_growth"] <= 50 * 2 ** 20
    print(f"F4 {kind}: {message.split('(', 1)[1][:-1]}; {outcome.value['seconds']:.3f} s (manifest hash included), "
          f"RSS +{outcome.value['rss_growth'] / 2 ** 20:.1f} MiB")
