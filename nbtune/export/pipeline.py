"""`run.export(...)`: merge -> ONNX (-> graph optimisation) -> int8 -> parity -> latency -> Triton repository,
with one report that says what was written and measured. A missed parity threshold raises ParityError after
everything is written, so the files and report.json are there to inspect.

Layout of the output directory (default `<run_dir>/export`):
    merged/            save_pretrained (safetensors) + tokenizer + nbtune.json + README.md model card
    onnx/model.onnx    fp32 graph            onnx-int8/model.onnx   dynamic int8 graph
    triton/            a Triton model repository (onnxruntime backend, and a tensorrt variant)
    report.json        the ExportReport

Example:
    >>> report = run.export("onnx", quantize="int8")          # doctest: +SKIP
    >>> print(report.summary())                               # doctest: +SKIP
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from nbtune.export.types import ExportError, ExportReport, ParityError

FORMATS = ("onnx",)


def export_run(run: Any, format: str = "onnx", quantize: str | None = "int8", output_dir: str | Path | None = None,
               *, triton: bool = True, optimize: bool = True, max_logit_diff: float = 1e-4,
               min_fp32_agreement: float = 1.0, min_int8_agreement: float = 0.99, max_int8_metric_drop: float = 0.01,
               latency: bool = True, parity_split: str = "test", max_parity_rows: int | None = None,
               latency_calls: int = 60, prompts: list[list[int]] | None = None, kv_cache: bool = True,
               on_stage: Callable[[str], None] | None = None) -> ExportReport:
    """Export a trained run and prove the export: see the module docstring. Returns the ExportReport; raises
    ParityError (with `.report`) when a threshold is missed.

        >>> report = export_run(run, quantize="int8", triton=False)        # doctest: +SKIP
        >>> report.parity_of("onnx-fp32").max_abs_logit_diff < 1e-4        # doctest: +SKIP
        True
    """
    if format not in FORMATS:
        raise ExportError(f"export format {format!r} is not supported; choose one of {', '.join(FORMATS)} "
                          "(TensorRT runs through ONNX Runtime's TensorRT execution provider: see the Triton "
                          "repository's tensorrt variant)")
    if quantize not in (None, "int8"):
        raise ExportError(f"quantize={quantize!r}: expected None or 'int8' (dynamic int8 with onnxruntime)")
    from nbtune.export import latency as lat, parity
    from nbtune.export.merge import merged_model, save_merged
    from nbtune.export.onnx import OnnxRunner, export_onnx, optimize_graph, quantize_int8
    stage = on_stage or (lambda text: None)
    task = run.cfg.task
    out = Path(output_dir) if output_dir else Path(run.run_dir) / "export"
    out.mkdir(parents=True, exist_ok=True)
    report = ExportReport(task=task, model_name=run.cfg.model.name, output_dir=str(out),
                          thresholds={"max_logit_diff": max_logit_diff, "min_fp32_agreement": min_fp32_agreement,
                                      "min_int8_agreement": min_int8_agreement,
                                      "max_int8_metric_drop": max_int8_metric_drop})
    stage("merging")
    model = merged_model(run)
    report.files["merged"] = str(save_merged(run, out / "merged", model=model))

    stage("exporting ONNX")
    fp32, int8 = out / "onnx" / "model.onnx", out / "onnx-int8" / "model.onnx"
    unfused = out / "onnx" / "model-unfused.onnx"
    with tempfile.TemporaryDirectory(dir=out) as scratch:
        exported = export_onnx(model, run.tokenizer, task, Path(scratch) / "model.onnx", kv_cache=kv_cache)
        final = exported.path
        if optimize:
            final = optimize_graph(exported.path, Path(scratch) / "optimized.onnx", model.config)
            if triton:  # TensorRT cannot run ORT's fused contrib ops: its variant serves the unfused graph
                _move_graph(exported.path, unfused)
        if quantize:  # from the fused graph: int8 keeps the fused attention
            stage("quantising")
            _move_graph(quantize_int8(final, Path(scratch) / "int8.onnx"), int8)
            report.files["onnx-int8"] = str(int8)
        _move_graph(final, fp32)
    report.files["onnx-fp32"] = str(fp32)
    runners = {"onnx-fp32": OnnxRunner(fp32)}
    if quantize:
        runners["onnx-int8"] = OnnxRunner(int8)

    stage("parity")
    batches = parity.held_out_batches(run, parity_split, max_rows=max_parity_rows)
    reference = parity.reference_logits(model, batches)
    for variant, runner in runners.items():
        report.parity.append(parity.compare(variant, runner, batches, reference, task, run.data.label_names))
    if task == "causal-lm":
        eos = run.tokenizer.eos_token_id
        chosen = prompts or parity.prompts_from(run, parity_split)
        for p in report.parity:
            p.generation_agreement, _ = parity.greedy_agreement(model, runners[p.variant], chosen, eos_token_id=eos)
    report.failures = check(report)

    if latency:
        stage("latency")
        rows = run.data.rows[parity_split]
        backends = {"pytorch": lat.eager(model), **{k: r.logits for k, r in runners.items()}}
        report.latency = lat.measure(backends, rows, run.collate, batch1_calls=latency_calls,
                                     batch32_batches=max(3, latency_calls // 10))
    if triton:
        stage("triton")
        from nbtune.export.triton import validate_repository, write_triton_repository
        served = Path(report.files.get("onnx-int8", fp32)) if report.passed else fp32
        repo = out / "triton"
        if repo.exists():
            shutil.rmtree(repo)
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(run.cfg.model.name).name) or "model"
        labels = run.data.label_names if task != "causal-lm" else None
        write_triton_repository(served, repo, name, labels=labels,
                                tensorrt_onnx_path=unfused if unfused.is_file() else fp32)
        validate_repository(repo)
        unfused.unlink(missing_ok=True)  # copied into the repository; the export keeps one fp32 graph
        report.files["triton"] = str(repo)
        report.notes.append(f"Triton serves {'int8' if served != fp32 else 'fp32'} on CPU; the tensorrt variant "
                            "(the unfused fp32 graph, FP16 in TensorRT) needs a GPU server with TensorRT")
    report.files["report"] = str(out / "report.json")
    report.write(out / "report.json")
    stage("done")
    if not report.passed:
        raise ParityError("export parity failed: " + "; ".join(report.failures) + f" (report: {out / 'report.json'})",
                          report)
    return report


def check(report: ExportReport) -> list[str]:
    """One sentence per missed threshold."""
    t, failures = report.thresholds, []
    fp32 = report.parity_of("onnx-fp32")
    if fp32 is not None:
        if fp32.max_abs_logit_diff > t["max_logit_diff"]:
            failures.append(f"onnx-fp32 max |logit diff| {fp32.max_abs_logit_diff:.2e} > {t['max_logit_diff']:.0e}")
        if fp32.label_agreement < t["min_fp32_agreement"]:
            failures.append(f"onnx-fp32 label agreement {fp32.label_agreement:.2%} < {t['min_fp32_agreement']:.0%}")
        if fp32.generation_agreement is not None and fp32.generation_agreement < 1.0:
            failures.append(f"onnx-fp32 greedy continuations differ on {1 - fp32.generation_agreement:.0%} of prompts")
    int8 = report.parity_of("onnx-int8")
    if int8 is not None:
        if int8.label_agreement < t["min_int8_agreement"]:
            failures.append(f"onnx-int8 label agreement {int8.label_agreement:.2%} < {t['min_int8_agreement']:.0%}")
        if int8.metric_drop > t["max_int8_metric_drop"]:
            failures.append(f"onnx-int8 {int8.metric_name} drops {int8.metric_drop * 100:.2f} points "
                            f"(> {t['max_int8_metric_drop'] * 100:.2f})")
    return failures


def _move_graph(src: Path, dst: Path) -> None:
    """Move a graph (and any external-data files beside it) into place; the old graph is replaced whole."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    for extra in src.parent.glob(src.name + ".data"):
        shutil.move(str(extra), str(dst.parent / (dst.name + ".data")))
    src.replace(dst)
