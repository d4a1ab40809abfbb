"""The GPU check (bench/gpu_check.py): bf16 throughput and MFU of real CUDA runs (MiniLM full fine-tuning, fp16
with a GradScaler, SmolLM2 LoRA), fp32 ONNX parity of CUDA-trained weights, and the TensorRT execution provider.

The `gpu` tests are skipped without CUDA (tests/conftest.py); run them on a GPU machine with
`pytest tests/test_gpu_export.py -m gpu`. The unmarked tests check, on the CPU, the arithmetic every figure rests
on (throughput windows, FLOPs per token, the peak table); the integration test runs the script's --dry-run.
"""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through the module's entry
    spec.loader.exec_module(module)
    return module


check = _load_script()

# Small enough for a test (seconds on a GPU), long enough for two measured sync windows after the warm-up one.
SMALL = dict(steps=12, warmup_steps=4, batch_size=16, max_length=64, max_eval_samples=64)


def _peak() -> float:
    """The spec-sheet peak of this GPU, or a measured bf16 matmul for a GPU not in the table."""
    peak, _ = check.peak_flops(torch.cuda.get_device_name(0))
    return peak or check.matmul_flops(torch.device("cuda"), torch.bfloat16)


def _assert_sane(figures: dict, precision: str) -> None:
    assert figures["device"].startswith("cuda") and figures["precision"] == precision
    assert figures["status"] == "finished" and figures["measured_steps"] == SMALL["steps"] - SMALL["warmup_steps"]
    assert figures["tokens_per_second"] > 0
    assert figures["padded_tokens_per_second"] >= figures["tokens_per_second"]   # padded to max_length
    assert 0 < figures["mfu"] < 1 and figures["mfu"] < figures["mfu_with_attention"] < 1
    assert figures["peak_cuda_memory_gib"] > 0
    assert math.isfinite(figures["loss_last"])


@pytest.fixture(scope="module")
def minilm_bf16(tmp_path_factory):
    w = check.Workload("minilm-full-bf16", "minilm", "intents-en", precision="bf16", **SMALL)
    figures, run = check.train_workload(w, tmp_path_factory.mktemp("bf16"), _peak())
    return figures, run


@pytest.fixture(scope="module")
def exported(minilm_bf16, tmp_path_factory):
    return check.export_figures(minilm_bf16[1], tmp_path_factory.mktemp("export"), calls=5, max_parity_rows=64)


# ------------------------------------------------------------------------------------------------------- gpu
@pytest.mark.gpu
def test_bf16_minilm_throughput_and_mfu(minilm_bf16):
    figures, run = minilm_bf16
    _assert_sane(figures, "bf16")
    assert not figures["grad_scaler"]
    assert figures["params_trainable"] == figures["params_total"]                 # full fine-tuning
    assert figures["flops_per_token_dense"] == 6 * figures["matmul_params"]
    assert next(run.raw_model.parameters()).dtype == torch.float32                # autocast: fp32 master weights


@pytest.mark.gpu
def test_fp16_minilm_trains_with_a_grad_scaler(tmp_path):
    w = check.Workload("minilm-full-fp16", "minilm", "intents-en", precision="fp16", **SMALL)
    figures, _ = check.train_workload(w, tmp_path, _peak())
    _assert_sane(figures, "fp16")
    assert figures["grad_scaler"] and figures["grad_scale_final"] > 0


@pytest.mark.gpu
def test_smollm2_lora_bf16_counts_frozen_weights_without_their_gradients(tmp_path):
    w = check.Workload("smollm2-lora-bf16", "smollm2", "chatterbot-sft", "causal-lm", "bf16",
                    learning_rate=1e-3, methods=[{"name": "lora", "r": 16}], **{**SMALL, "batch_size": 4})
    figures, _ = check.train_workload(w, tmp_path, _peak())
    _assert_sane(figures, "bf16")
    assert 0 < figures["params_trainable"] < figures["params_total"] / 50
    n, n_t = figures["matmul_params"], figures["matmul_params_trainable"]
    assert 0 < n_t < n and figures["flops_per_token_dense"] == 4 * n + 2 * n_t


@pytest.mark.gpu
def test_export_parity_holds_for_cuda_trained_weights(exported):
    assert exported["trained_on"].startswith("cuda")
    assert exported["parity_passed"], exported["parity_failures"]
    assert exported["parity"]["max_abs_logit_diff"] < 1e-4 and exported["parity"]["label_agreement"] == 1.0
    assert Path(exported["graph"]).is_file()
    eager, cpu = exported["latency_p50_ms"]["pytorch-eager-cuda"], exported["latency_p50_ms"]["CPUExecutionProvider"]
    assert eager["1"] > 0 and eager["32"] > 0 and cpu["1"] > 0 and cpu["32"] > 0
    assert exported["max_abs_logit_diff_vs_eager"]["CPUExecutionProvider"] < 1e-3   # CPU EP vs CUDA eager (fp32)


@pytest.mark.gpu
def test_tensorrt_ep_runs_the_exported_graph(exported):
    if not exported["tensorrt_present"]:
        pytest.skip(f"TensorrtExecutionProvider absent: this onnxruntime ({', '.join(exported['distributions'])}) "
                    f"offers {exported['providers_available']}")
    if not exported["tensorrt_used"]:
        pytest.skip(f"TensorrtExecutionProvider offered but not used: {exported['skipped']}")
    assert exported["session_providers"][check.TRT][0] == check.TRT
    assert exported["latency_p50_ms"][check.TRT]["1"] > 0 and exported["latency_p50_ms"][check.TRT]["32"] > 0
    # TensorRT runs fp32 layers in TF32 on Ampere and later: close to eager, not bit-equal
    assert exported["max_abs_logit_diff_vs_eager"][check.TRT] < 5e-2


# ------------------------------------------------------------------------------------------------------- cpu
def test_throughput_drops_the_warmup_window_and_weights_windows_by_time():
    # Three flush windows of 2 steps x 8 rows: warm-up at 1 row/s, then 4 rows/s (4 s) and 2 rows/s (8 s).
    recs = [{"step": s, "samples_per_second": r, "tokens_per_second": 10 * r}
            for s, r in [(1, 1.0), (2, 1.0), (3, 4.0), (4, 4.0), (5, 2.0), (6, 2.0)]]
    got = check.measured_throughput(recs, warmup_steps=2, batch_size=8)
    assert got["windows"] == 2 and got["measured_steps"] == 4
    assert got["measured_seconds"] == pytest.approx(12.0)
    assert got["samples_per_second"] == pytest.approx(32 / 12) and got["tokens_per_second"] == pytest.approx(320 / 12)
    with pytest.raises(ValueError, match="no step records after the 6 warm-up steps"):
        check.measured_throughput(recs, warmup_steps=6, batch_size=8)


def test_flops_count_linear_weights_a_tied_head_once_and_no_frozen_weight_gradients():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    # per layer q 16x16, k and v 16x8, o 16x16, gate/up/down 16x32: 768 + 1536; the tied head 100x16
    per_layer = 16 * 16 * 2 + 16 * 8 * 2 + 16 * 32 * 3
    n = 2 * per_layer + 100 * 16
    flops = check.flops_per_token(model, seq_len=10)
    assert flops["matmul_params"] == n and flops["dense"] == 6 * n                     # full fine-tuning: 6N
    assert flops["attention"] == 12 * 2 * 4 * 4 * 10                                   # 12 L heads head_dim T
    for p in model.model.layers.parameters():
        p.requires_grad_(False)
    frozen = check.flops_per_token(model, seq_len=10)
    assert frozen["matmul_params_trainable"] == 100 * 16 and frozen["dense"] == 4 * n + 2 * 100 * 16


def test_peak_table_knows_hopper_and_ampere_and_asks_for_the_rest():
    assert check.peak_flops("NVIDIA H200")[0] == 989e12
    assert check.peak_flops("NVIDIA H100 80GB HBM3")[0] == 989e12
    assert check.peak_flops("NVIDIA H100 PCIe")[0] == 756e12
    assert check.peak_flops("NVIDIA A100-SXM4-80GB")[0] == 312e12
    peak, why = check.peak_flops("NVIDIA L4")
    assert peak is None and "--peak-tflops" in why and "NVIDIA L4" in why
    assert check.peak_flops("NVIDIA L4", peak_tflops=121) == (121e12, "--peak-tflops")


def test_a_workload_needs_more_steps_than_warmup(tmp_path):
    w = check.Workload("short", "tiny-bert", "trec", steps=4, warmup_steps=4)
    with pytest.raises(ValueError, match="need 1 <= warmup_steps < steps"):
        check.config_for(w, tmp_path)
    cfg = check.config_for(check.Workload("ok", "tiny-bert", "trec", steps=6, warmup_steps=2), tmp_path)
    assert cfg.train.sync_every_n_steps == 2 and cfg.train.log_every_n_steps == 1 and cfg.data.pad_to_max_length


# --------------------------------------------------------------------------------------------- integration
@pytest.mark.integration
def test_dry_run_proves_every_code_path_on_the_cpu(tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    report = check.main(["--dry-run", "--out", str(out), "--work-dir", str(tmp_path / "work"), "--peak-tflops", "1",
                      "--latency-calls", "3"])
    assert json.loads(out.read_text()) == json.loads(capsys.readouterr().out)
    assert report["errors"] == [] and report["device"]["dry_run"]
    trained = {t["name"]: t for t in report["training"]}
    assert set(trained) == {"tiny-bert-full-fp32", "tiny-llama-lora-fp32"}
    for figures in trained.values():
        assert figures["tokens_per_second"] > 0 and 0 < figures["mfu"] < 1 and figures["status"] == "finished"
    lora = trained["tiny-llama-lora-fp32"]
    assert 0 < lora["matmul_params_trainable"] < lora["matmul_params"]
    assert any("fp16" in line for line in report["skipped"])
    export = report["export"]
    assert export["parity_passed"] and export["latency_p50_ms"]["CPUExecutionProvider"]["32"] > 0
    if not export["tensorrt_present"]:
        assert any(line.startswith(check.TRT) for line in export["skipped"])
    assert report["oom_backoff"]["exists"] == bool(report["oom_backoff"].get("references"))
