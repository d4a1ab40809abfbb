"""run.export end to end: merge -> ONNX (+ int8) -> parity -> latency -> Triton, on tiny models (unit tier) and on
a LoRA SmolLM2 whose merged ONNX graph must continue 5 fixed prompts exactly as PyTorch does (integration)."""
import json

import numpy as np
import onnx
import pytest
import torch

from nbtune.config import RunConfig
from nbtune.engine.run import Run
from nbtune.export import ExportError, ExportReport, OnnxRunner, ParityError
from nbtune.export.triton import validate_repository

SMALL = ["data.max_train_samples=64", "data.max_eval_samples=16", "train.batch_size=8", "train.max_steps=4",
         "train.progress_bar=false", "train.tensorboard=false", "train.precision=fp32", "data.max_length=48"]


def _run(tmp_path, model, dataset, task, methods=(), extra=()):
    cfg = RunConfig().with_overrides(SMALL + [f"model.name={model}", f"data.dataset={dataset}", f"task={task}",
                                              f"output_dir={tmp_path}", *extra])
    cfg.methods = list(methods)
    return Run(cfg).start()


@pytest.fixture(scope="module")
def lora_classifier(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("cls"), "tiny-bert", "trec", "classification", [{"name": "lora", "r": 4}],
                ["train.learning_rate=5e-3"])


def test_classifier_export_writes_every_artifact_and_proves_parity(lora_classifier, tmp_path):
    stages = []
    report = lora_classifier.export("onnx", quantize="int8", output_dir=tmp_path / "out", latency_calls=6,
                                    on_stage=stages.append)
    assert stages == ["merging", "exporting ONNX", "quantising", "parity", "latency", "triton", "done"]
    assert report.passed and report.failures == []
    fp32, int8 = report.parity_of("onnx-fp32"), report.parity_of("onnx-int8")
    assert fp32.max_abs_logit_diff <= 1e-4 and fp32.label_agreement == 1.0
    assert fp32.metric == fp32.reference_metric
    assert fp32.rows == len(lora_classifier.data.rows["test"])
    assert 0.9 <= int8.label_agreement <= 1.0 and int8.max_abs_logit_diff > fp32.max_abs_logit_diff
    # latency: all three backends timed on the same rows and threads; speed-ups are ratios of those figures
    assert [t.backend for t in report.latency] == ["pytorch", "onnx-fp32", "onnx-int8"]
    assert len({(t.sequence_length, t.threads) for t in report.latency}) == 1
    eager, ort_fp32 = report.latency_of("pytorch"), report.latency_of("onnx-fp32")
    assert report.speedup("onnx-fp32", 1) == pytest.approx(eager.batch1_p50_ms / ort_fp32.batch1_p50_ms)
    assert all(t.batch1_p95_ms >= t.batch1_p50_ms > 0 for t in report.latency)
    # files: merged HF directory, two graphs, a Triton repository that validates, report.json that round-trips
    out = tmp_path / "out"
    assert (out / "merged" / "model.safetensors").is_file() and (out / "merged" / "nbtune.json").is_file()
    served, tensorrt = validate_repository(report.files["triton"])
    assert (served.name, tensorrt.name) == ("tiny-bert", "tiny-bert_tensorrt")
    assert served.model_file.read_bytes() == (out / "onnx-int8" / "model.onnx").read_bytes()
    domains = {n.domain for n in onnx.load(str(tensorrt.model_file)).graph.node}
    assert "com.microsoft" not in domains  # TensorRT gets the unfused fp32 graph: no ORT contrib ops
    assert "com.microsoft" in {n.domain for n in onnx.load(report.files["onnx-fp32"]).graph.node}
    assert not (out / "onnx" / "model-unfused.onnx").exists()
    saved = json.loads((out / "report.json").read_text())
    assert saved["passed"] is True and saved["speedups"]["onnx-int8"]["batch1"] == report.speedup("onnx-int8", 1)
    assert ExportReport.from_dict(saved) == report
    # the graph serves the same labels as the run's own model, on text it has never seen
    batch = lora_classifier.collate([0, 1, 2], lora_classifier.data.rows["test"])
    with torch.no_grad():
        lora_classifier.raw_model.eval()
        expected = lora_classifier.raw_model(input_ids=batch["input_ids"],
                                             attention_mask=batch["attention_mask"]).logits.numpy()
    got = OnnxRunner(report.files["onnx-fp32"]).logits(batch)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert "parity OK" in report.summary() and "x" in report.summary()


def test_missed_threshold_raises_after_writing_the_report(lora_classifier, tmp_path):
    with pytest.raises(ParityError, match=r"onnx-fp32 max \|logit diff\| .* > 0e\+00") as caught:
        lora_classifier.export(output_dir=tmp_path, quantize=None, latency=False, triton=False, max_logit_diff=0.0)
    report = caught.value.report
    assert not report.passed and report.parity_of("onnx-int8") is None
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["passed"] is False and saved["failures"] == report.failures
    assert (tmp_path / "onnx" / "model.onnx").is_file()  # the files are there to inspect


@pytest.mark.parametrize("options, message", [
    ({"format": "tflite"}, "export format 'tflite' is not supported; choose one of onnx"),
    ({"quantize": "int4"}, "quantize='int4': expected None or 'int8'"),
])
def test_unsupported_requests_are_refused(lora_classifier, tmp_path, options, message):
    with pytest.raises(ExportError, match=message.replace("(", r"\(").replace(")", r"\)")):
        lora_classifier.export(output_dir=tmp_path, **options)


def test_token_classifier_export_matches_on_labelled_tokens(tmp_path):
    run = _run(tmp_path, "tiny-bert", "peoples-daily-ner", "token-classification")
    report = run.export(output_dir=tmp_path / "out", quantize=None, latency=False, triton=False)
    fp32 = report.parity_of("onnx-fp32")
    assert fp32.metric_name == "entity_f1" and fp32.max_abs_logit_diff <= 1e-4 and fp32.label_agreement == 1.0


def test_lora_causal_lm_graph_continues_prompts_like_pytorch(tmp_path):
    run = _run(tmp_path, "tiny-llama", "trec", "causal-lm", [{"name": "lora", "r": 4}],
               ["train.learning_rate=1e-2"])
    report = run.export(output_dir=tmp_path / "out", quantize=None, latency=False)
    fp32 = report.parity_of("onnx-fp32")
    assert fp32.generation_agreement == 1.0 and fp32.max_abs_logit_diff <= 1e-4
    assert fp32.metric_name == "next_token_accuracy"
    (served, _tensorrt) = validate_repository(report.files["triton"])
    assert served.config.max_batch_size == 0  # past lengths differ between requests: no batching along dim 0
    runner = OnnxRunner(report.files["onnx-fp32"])
    assert "past_key_values.0.key" in runner.input_names and "present.1.value" in runner.output_names


@pytest.mark.integration
def test_lora_smollm2_merged_onnx_keeps_greedy_continuations(tmp_path):
    """The failure users report with peft (peft#670): a LoRA model exported to ONNX answers differently. Five
    fixed prompts must continue token for token as PyTorch continues them."""
    run = _run(tmp_path, "smollm2", "chatterbot-sft", "causal-lm", [{"name": "lora", "r": 8}],
               ["train.max_steps=3", "train.batch_size=4", "data.max_length=64", "data.max_eval_samples=8",
                "train.learning_rate=1e-3"])
    tok = run.tokenizer
    prompts = ["What is the capital of France?", "Tell me a joke about computers.", "How do I boil an egg?",
               "Translate 'good morning' to Spanish.", "Write a haiku about the sea."]
    ids = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True,
                                   return_dict=False) for p in prompts]
    report = run.export(output_dir=tmp_path / "out", quantize=None, latency=False, triton=False, prompts=ids)
    fp32 = report.parity_of("onnx-fp32")
    assert fp32.generation_agreement == 1.0, report.summary()
    assert fp32.label_agreement == 1.0 and fp32.max_abs_logit_diff <= 1e-3
