"""Distil the fine-tuned MiniLM intent model into a smaller student: size, speed and accuracy retained.

Run (from the repository root):
    .venv/bin/python bench/demo_distill.py                                   # 2,000 rows, 2-layer student
    .venv/bin/python bench/demo_distill.py --student-layers 3 --train-samples 6000 --json out.json
    .venv/bin/python bench/demo_distill.py --train-samples 640 --eval-samples 256   # a quick smoke check

Three runs on intents-en (35 intents), the same rows, batch size, LR and max length:
  teacher    the bundled MiniLM-L6 (6 layers), fine-tuned for --teacher-epochs, saved with Run.save_pretrained;
  student    MiniLM with model.config_overrides {num_hidden_layers: N} (its first N pretrained layers), trained
             with the distill method (T, alpha) from the saved teacher for --student-epochs;
  baseline   the same student trained for the same steps without distillation.
Size: parameter counts and the bytes of each model.safetensors. Speed: the test split in the same batches
(sorted by length, batch 64), each model timed over the whole split under torch.inference_mode, in one
process, alternating the order each repeat after an untimed warm-up; the ratio is teacher time / student time
from the medians. Accuracy: each run's held-out test split; retained = student accuracy / teacher accuracy.
The guide claims "60% smaller, 90% retained"; MiniLM's 11.7M-parameter embedding table (half the model)
is kept whole by a layer cut, which bounds how much smaller such a student can get.

Measured on the shared 2-core CPU (fp32, --threads 1, 2,000 train rows, 1,000 test rows, 2-layer student;
teacher 3 epochs = 189 steps, test accuracy 0.935): 15.63M / 22.73M parameters = 0.688 (31% smaller; files
59.6 / 86.7 MiB), 2.7-3.0x faster. Students after 3 epochs: KD 0.545, alone 0.551 (retained 0.58 / 0.59);
at --student-learning-rate 1e-3: KD 0.521, alone 0.620; after 6 epochs at 2e-4: KD 0.889, alone 0.915
(retained 0.95 / 0.98). Distilling on the teacher's own training rows, where its predictions are nearly
one-hot, did not beat the plain student here.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from nbtune.config import RunConfig  # noqa: E402
from nbtune.engine.batching import eval_batches  # noqa: E402
from nbtune.engine.run import Run  # noqa: E402
import nbtune.methods.distill  # noqa: E402,F401  (registers "distill" where nbtune.methods does not yet import it)

GUIDE = {"smaller": 0.60, "retained": 0.90}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train-samples", type=int, default=2000, help="training rows (first N of the split)")
    p.add_argument("--eval-samples", type=int, default=None, help="validation/test rows (default: all 2,087)")
    p.add_argument("--teacher-epochs", type=float, default=2.0)
    p.add_argument("--student-epochs", type=float, default=2.0, help="for the distilled student and the baseline")
    p.add_argument("--student-layers", type=int, default=2, help="transformer layers kept in the student (of 6)")
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--alpha", type=float, default=0.7)
    p.add_argument("--cache-logits", action="store_true", help="distill with the teacher-logits cache")
    p.add_argument("--learning-rate", type=float, default=2e-4)
    p.add_argument("--student-learning-rate", type=float, default=None, help="default: --learning-rate")
    p.add_argument("--teacher-dir", type=Path, default=None,
                   help="reuse a teacher saved by an earlier run (its output-dir/teacher-model): no teacher training")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--speed-repeats", type=int, default=5, help="timed passes over the test split per model")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--output-dir", type=Path, default=None, help="runs and saved models (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    return p.parse_args(argv)


def train(args, out: Path, name: str, epochs: float, overrides: list[str], methods: list,
          lr: float | None = None, fit: bool = True) -> tuple[Run, float]:
    """One run on the shared settings; with fit=False the model is only evaluated on the test split."""
    cfg = RunConfig().with_overrides([
        "task=classification", "model.name=minilm", "data.dataset=intents-en",
        f"data.max_train_samples={args.train_samples}", f"data.max_length={args.max_length}",
        f"train.batch_size={args.batch_size}", f"train.learning_rate={lr or args.learning_rate}",
        f"train.num_train_epochs={epochs}", f"train.seed={args.seed}", "train.progress_bar=false",
        "train.tensorboard=false", f"output_dir={out}", f"run_name={name}", *overrides])
    if args.eval_samples:
        cfg = cfg.with_overrides([f"data.max_eval_samples={args.eval_samples}"])
    cfg.methods = methods
    start = time.perf_counter()
    run = Run(cfg)
    if fit:
        run.start()
    else:
        run.results["test"] = run.evaluate("test")
    return run, time.perf_counter() - start


def safetensors_bytes(run: Run, directory: Path) -> int:
    run.save_pretrained(directory)
    return sum(f.stat().st_size for f in directory.glob("*.safetensors"))


@torch.inference_mode()
def median_seconds(models: dict[str, torch.nn.Module], batches: list[dict], repeats: int) -> dict[str, float]:
    """Median wall time of one pass over `batches` per model; the order alternates each repeat."""
    for model in models.values():
        model.eval()
        for batch in batches[:2]:                                 # warm-up: allocator, kernels, caches
            model(**batch)
    times: dict[str, list[float]] = {name: [] for name in models}
    names = list(models)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            for batch in batches:
                models[name](**batch)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.output_dir or Path(tempfile.mkdtemp(prefix="nbtune-distill-"))
    if args.teacher_dir:
        teacher, t_teacher = train(args, out, "teacher", 0, [f"model.name={args.teacher_dir}"], [], fit=False)
        teacher_dir = args.teacher_dir
    else:
        teacher, t_teacher = train(args, out, "teacher", args.teacher_epochs, [], [])
        teacher_dir = teacher.save_pretrained(out / "teacher-model")
    shrink = [f"model.config_overrides={{num_hidden_layers: {args.student_layers}}}"]
    kd = {"name": "distill", "teacher": str(teacher_dir), "temperature": args.temperature, "alpha": args.alpha,
          "cache_logits": args.cache_logits}
    lr = args.student_learning_rate
    student, t_student = train(args, out, "student-kd", args.student_epochs, shrink, [kd], lr)
    baseline, t_baseline = train(args, out, "student-alone", args.student_epochs, shrink, [], lr)
    assert student.total_steps == baseline.total_steps              # the same steps, with and without KD

    params = {name: sum(p.numel() for p in r.raw_model.parameters())
              for name, r in (("teacher", teacher), ("student", student))}
    files = {"teacher": safetensors_bytes(teacher, out / "teacher-export"),
             "student": safetensors_bytes(student, out / "student-export")}
    rows = teacher.data.rows["test"]
    batches = [{k: v.to(teacher.device) for k, v in teacher.collate(idx, rows).items() if k != "labels"}
               for idx in eval_batches([len(r["input_ids"]) for r in rows], 64)]
    seconds = median_seconds({"teacher": teacher.raw_model, "student": student.raw_model}, batches,
                             args.speed_repeats)
    acc = {name: r.results["test"]["accuracy"] for name, r in
           (("teacher", teacher), ("kd", student), ("baseline", baseline))}
    figures = {
        "student_layers": args.student_layers, "train_samples": len(teacher.data.rows["train"]),
        "test_rows": len(rows), "steps_student": student.total_steps,
        "steps_teacher": None if args.teacher_dir else teacher.total_steps,
        "params_teacher": params["teacher"], "params_student": params["student"],
        "param_ratio": params["student"] / params["teacher"],
        "bytes_teacher": files["teacher"], "bytes_student": files["student"],
        "file_ratio": files["student"] / files["teacher"],
        "seconds_teacher": seconds["teacher"], "seconds_student": seconds["student"],
        "speedup": seconds["teacher"] / seconds["student"],
        "acc_teacher": acc["teacher"], "acc_kd": acc["kd"], "acc_baseline": acc["baseline"],
        "retained_kd": acc["kd"] / acc["teacher"] if acc["teacher"] else float("nan"),
        "retained_baseline": acc["baseline"] / acc["teacher"] if acc["teacher"] else float("nan"),
        "train_seconds": {"teacher": t_teacher, "student_kd": t_student, "student_alone": t_baseline},
        "device": str(teacher.device), "precision": teacher.precision.name,
        "temperature": args.temperature, "alpha": args.alpha,
        "learning_rate": {"teacher": args.learning_rate, "student": lr or args.learning_rate},
        "teacher_reused": str(args.teacher_dir) if args.teacher_dir else None}
    report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return figures


def report(f: dict) -> None:
    mib = 1024 * 1024
    print(f"MiniLM-L6 teacher -> {f['student_layers']}-layer student on intents-en: {f['train_samples']} train rows, "
          f"{f['test_rows']} test rows, {f['device']} {f['precision']}; T={f['temperature']}, alpha={f['alpha']}")
    print(f"  size ratio (student/teacher): parameters {f['params_student'] / 1e6:.2f}M / "
          f"{f['params_teacher'] / 1e6:.2f}M = {f['param_ratio']:.3f} ({1 - f['param_ratio']:.0%} smaller); "
          f"safetensors {f['bytes_student'] / mib:.1f} / {f['bytes_teacher'] / mib:.1f} MiB = {f['file_ratio']:.3f}")
    print(f"  speed ratio (teacher time / student time, median of repeats over the test split): "
          f"{f['speedup']:.2f}x ({f['seconds_teacher']:.3f} s vs {f['seconds_student']:.3f} s)")
    print(f"  test accuracy: teacher {f['acc_teacher']:.4f}, student+KD {f['acc_kd']:.4f}, "
          f"student alone {f['acc_baseline']:.4f} ({f['steps_student']} steps each; teacher {f['steps_teacher']})")
    print(f"  accuracy retained (student/teacher): with KD {f['retained_kd']:.3f}, "
          f"without KD {f['retained_baseline']:.3f}")
    print(f"  the guide claims {GUIDE['smaller']:.0%} smaller and {GUIDE['retained']:.0%} retained; measured "
          f"{1 - f['param_ratio']:.0%} smaller and {f['retained_kd']:.0%} retained")


if __name__ == "__main__":
    main()
