"""Training throughput: nbtune's engine against transformers' Trainer, side by side in one process.

Run (from the repository root):
    .venv/bin/python bench/engine_vs_trainer.py                      # 512 samples, 3 repeats, about 3 minutes
    .venv/bin/python bench/engine_vs_trainer.py --quick              # smoke check, about 1.5 minutes
    .venv/bin/python bench/engine_vs_trainer.py --repeats 5 --samples 1024 --json out.json

Model: the bundled MiniLM-L6 (AutoModelForSequenceClassification). Both tools train on the same rows (the
first N of the bundled train split), batch size, epoch count, learning rate, warmup steps and weight decay
(Trainer's 0.0 default is set to nbtune's 0.01 in every case). nbtune's progress bar and TensorBoard are off,
like Trainer's tqdm and report_to. Each tool keeps its own optimizer implementation (printed).

Cases:
  a   identical settings: fp32, dynamic padding to the longest row in the batch, no length grouping; Trainer
      reads the rows in nbtune's batch order (a sequential sampler), so both run the very same batches.
  b   each tool's defaults: Trainer's TrainingArguments defaults (on CPU: fp32, random sampler) against
      nbtune's defaults (precision=auto, data.group_by_length=true). Run on intents-en (short, even lengths)
      and movie-sentiment (review snippets, varied lengths).

Timing, the same for both tools: wall time of the training loop only. nbtune: `nbtune.engine.loop.train(run)`
(sinks opened before, closed after; its default JSONL sink stays active as in a real run). Trainer: from
`on_train_begin` to `on_train_end` of a callback. Model load, tokenization, optimizer construction, evaluation
and checkpointing are outside the timed region for both. Trials alternate nbtune, Trainer, then Trainer, nbtune...
after one untimed warm-up of each; the reported ratio is the median of the per-pair ratios.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from nbtune.config import RunConfig  # noqa: E402

SEED = 42
EPOCHS = 1
DEFAULTS = RunConfig()  # nbtune's defaults: batch size, lr, warmup, weight decay, max_length
CASES = [("a", "intents-en"), ("b", "intents-en"), ("b", "movie-sentiment")]
MFU_FORMULA = "achieved FLOP/s = 6 * non-embedding params * real (non-pad) tokens/s; MFU = achieved / matmul peak"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="interleaved nbtune/Trainer pairs per case")
    p.add_argument("--samples", type=int, default=512, help="training rows per trial")
    p.add_argument("--quick", action="store_true", help="smoke check: 192 samples, 2 repeats")
    p.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    args = p.parse_args(argv)
    if args.quick:
        args.samples, args.repeats = 192, 2
    return args


# ---------------------------------------------------------------------------------------------- hardware
def matmul_peak_flops(dtype: torch.dtype, n: int = 2048, repeats: int = 10, warmup_s: float = 1.0) -> float:
    """Best-of `repeats` FLOP/s of one (n, n) @ (n, n) matmul in `dtype` (2 n^3 FLOPs each).

    A second of matmuls first: on this VM the first ones after idle run at a fraction of the later speed."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    until = time.perf_counter() + warmup_s
    while time.perf_counter() < until:
        a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def non_embedding_params(model: torch.nn.Module) -> int:
    """Parameters that take part in per-token matmuls: everything but the embedding tables."""
    return sum(p.numel() for name, p in model.named_parameters() if "embeddings" not in name)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_info() -> dict:
    from nbtune.envcheck import cpu_bf16_flags
    flags = cpu_bf16_flags()
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "native_bf16_flags": flags, "native_bf16": bool(flags)}


def measure_peaks(hw: dict) -> None:
    """Update hw with the best matmul FLOP/s seen so far (called after the warm-up and again at the end)."""
    dtypes = {"fp32": torch.float32, **({"bf16": torch.bfloat16} if hw["native_bf16"] else {})}
    for name, dtype in dtypes.items():  # without native bf16 the bf16 matmul is emulated: no peak to speak of
        key = f"peak_{name}_flops"
        hw[key] = max(hw.get(key, 0.0), matmul_peak_flops(dtype))


# ---------------------------------------------------------------------------------------------- nbtune
def nbtune_config(case: str, dataset: str, samples: int, out_dir: str) -> RunConfig:
    overrides = ["task=classification", "model.name=minilm", f"data.dataset={dataset}",
                 f"data.max_train_samples={samples}", "data.max_eval_samples=64",  # eval is not timed
                 f"train.num_train_epochs={EPOCHS}", f"train.seed={SEED}",
                 # Observation only; Trainer's equivalents (tqdm, report_to) are off too.
                 "train.progress_bar=false", "train.tensorboard=false", f"output_dir={out_dir}", "run_name=bench"]
    if case == "a":
        overrides += ["train.precision=fp32", "data.group_by_length=false"]
    return DEFAULTS.with_overrides(overrides)  # case b: precision=auto, group_by_length=true (the defaults)


def optimizer_kind(opt: torch.optim.Optimizer) -> str:
    flags = [k for k in ("fused", "foreach") if opt.defaults.get(k)]
    return f"{type(opt).__name__.lower()}({flags[0] if flags else 'for-loop'})"


def run_nbtune(case: str, dataset: str, samples: int) -> dict:
    """One nbtune trial; only `loop.train` is timed."""
    from nbtune.engine import loop
    from nbtune.engine.run import Run
    with tempfile.TemporaryDirectory() as out_dir:
        run = Run(nbtune_config(case, dataset, samples, out_dir))
        rows = run.data.rows["train"]
        run._open_sinks()
        t0, c0 = time.perf_counter(), time.process_time()
        status = loop.train(run)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        run._close_sinks()
        if status != "finished":
            raise RuntimeError(f"nbtune run ended with status {status!r}")
        result = {"seconds": seconds, "cpu_seconds": cpu_seconds, "samples": run.state.samples_seen,
                  "tokens": run.state.tokens_seen, "steps": run.state.step, "precision": run.precision.name,
                  "group_by_length": run.cfg.data.group_by_length, "threads": torch.get_num_threads(),
                  "non_embedding_params": non_embedding_params(run.raw_model), "optim": optimizer_kind(run.optimizer),
                  "input_ids": [r["input_ids"] for r in rows]}
        del run
    gc.collect()
    return result


# ---------------------------------------------------------------------------------------------- Trainer
def trainer_dataset(dataset: str, samples: int, tokenizer):
    """The same rows nbtune trains on: the first `samples` of the bundled train split, truncated alike."""
    import datasets
    from nbtune.assets import load_dataset
    train = load_dataset(dataset)["train"].select(range(samples))
    enc = tokenizer(list(train["text"]), truncation=True, max_length=DEFAULTS.data.max_length)
    return datasets.Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                                       "labels": list(train["label"])}), train.features["label"].names


def trainer_args(out_dir: str, total_steps: int):
    """The same TrainingArguments for every case: defaults except what the comparison must fix."""
    from transformers import TrainingArguments
    t = DEFAULTS.train
    return TrainingArguments(
        output_dir=out_dir, report_to="none", save_strategy="no", eval_strategy="no", logging_strategy="no",
        disable_tqdm=True, dataloader_num_workers=0, per_device_train_batch_size=t.batch_size,
        num_train_epochs=EPOCHS, learning_rate=t.learning_rate, weight_decay=t.weight_decay,
        warmup_steps=int(round(t.warmup_ratio * total_steps)), seed=SEED)


def nbtune_batch_order(samples: int) -> list[int]:
    """The row order nbtune's ungrouped sampler uses in epoch 0 (it does not depend on lengths)."""
    from nbtune.engine.batching import epoch_batches
    plan = epoch_batches([0] * samples, DEFAULTS.train.batch_size, SEED, 0, group_by_length=False)
    return [i for batch in plan for i in batch]


def run_trainer(dataset: str, samples: int, same_order: bool = False) -> dict:
    """One Trainer trial; timed from on_train_begin to on_train_end. With `same_order`, Trainer reads the rows
    sequentially in nbtune's order, so both tools run exactly the same batches (same shapes)."""
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, PrinterCallback, Trainer,
                              TrainerCallback, set_seed)
    from nbtune.assets import resolve_model

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_train_end(self, args, state, control, **kw):
            self.seconds, self.cpu_seconds = time.perf_counter() - self.t0, time.process_time() - self.c0

    path = resolve_model("minilm").path
    tokenizer = AutoTokenizer.from_pretrained(path)
    data, names = trainer_dataset(dataset, samples, tokenizer)
    trainer_class = Trainer
    if same_order:
        data = data.select(nbtune_batch_order(samples))

        class InOrderTrainer(Trainer):
            def _get_train_sampler(self, train_dataset=None):
                return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)
        trainer_class = InOrderTrainer
    set_seed(SEED)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    clock = Clock()
    total_steps = -(-samples // DEFAULTS.train.batch_size) * EPOCHS
    with tempfile.TemporaryDirectory() as out_dir:
        args = trainer_args(out_dir, total_steps)
        # processing_class=tokenizer makes Trainer pad with DataCollatorWithPadding (longest in the batch).
        trainer = trainer_class(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                                callbacks=[clock])
        trainer.remove_callback(PrinterCallback)  # it would print the final metrics dict
        trainer.train()
        result = {"seconds": clock.seconds, "cpu_seconds": clock.cpu_seconds, "samples": samples * EPOCHS,
                  "tokens": sum(len(ids) for ids in data["input_ids"]) * EPOCHS, "steps": trainer.state.global_step,
                  "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
                  "group_by_length": args.train_sampling_strategy == "group_by_length",
                  "optim": str(getattr(args.optim, "value", args.optim)), "threads": torch.get_num_threads(),
                  "non_embedding_params": non_embedding_params(model),
                  "input_ids": data["input_ids"]}
        del trainer, model, data
    gc.collect()
    return result


# ---------------------------------------------------------------------------------------------- measuring
def mfu(trial: dict, hw: dict) -> float:
    peak = hw.get("peak_bf16_flops") if trial["precision"] == "bf16" else hw["peak_fp32_flops"]
    if not peak:
        return float("nan")
    return 6 * trial["non_embedding_params"] * trial["tokens"] / trial["seconds"] / peak


def check_same_rows(nb: dict, tr: dict, dataset: str) -> None:
    """Both tools must see the same token ids (as a set of rows; the order differs by design)."""
    if sorted(map(tuple, nb.pop("input_ids"))) != sorted(map(tuple, tr.pop("input_ids"))):
        raise RuntimeError(f"{dataset}: nbtune and Trainer tokenized different training rows")
    if nb["tokens"] != tr["tokens"] or nb["samples"] != tr["samples"] or nb["steps"] != tr["steps"]:
        raise RuntimeError(f"{dataset}: work differs: nbtune {nb} vs Trainer {tr}")


def run_case(case: str, dataset: str, args) -> dict:
    """`repeats` interleaved pairs, order alternating; ratio = nbtune samples/s over Trainer samples/s."""
    pairs = []
    for i in range(args.repeats):
        # Alternate who goes first (AB, BA, ...): the CPU clocks up under load, which favours the second runner.
        if i % 2 == 0:
            nb = run_nbtune(case, dataset, args.samples)
            tr = run_trainer(dataset, args.samples, same_order=case == "a")
        else:
            tr = run_trainer(dataset, args.samples, same_order=case == "a")
            nb = run_nbtune(case, dataset, args.samples)
        check_same_rows(nb, tr, dataset)
        for t in (nb, tr):
            t.update(samples_per_second=t["samples"] / t["seconds"], tokens_per_second=t["tokens"] / t["seconds"])
        ratio = nb["samples_per_second"] / tr["samples_per_second"]
        # Process CPU time is less disturbed by other jobs than wall time: a second opinion on noisy pairs.
        cpu_ratio = tr["cpu_seconds"] / nb["cpu_seconds"]
        load = os.getloadavg()[0]  # includes this bench's own 2 threads; well above the core count = noisy
        pairs.append({"nbtune": nb, "trainer": tr, "ratio": ratio, "cpu_time_ratio": cpu_ratio,
                      "loadavg_1min": load})
        print(f"  case {case} {dataset:16s} pair {i + 1}/{args.repeats}: nbtune {nb['samples_per_second']:6.1f} "
              f"samples/s ({nb['precision']}, grouped={nb['group_by_length']}), Trainer "
              f"{tr['samples_per_second']:6.1f} ({tr['precision']}, grouped={tr['group_by_length']}); "
              f"ratio {ratio:.2f} (CPU-time ratio {cpu_ratio:.2f}), load {load:.1f}", flush=True)
    ratios = [p["ratio"] for p in pairs]
    med = statistics.median
    return {"case": case, "dataset": dataset, "pairs": pairs, "ratio_median": med(ratios),
            "ratio_min": min(ratios), "ratio_max": max(ratios),
            "cpu_time_ratio_median": med(p["cpu_time_ratio"] for p in pairs),
            "nbtune_sps": med(p["nbtune"]["samples_per_second"] for p in pairs),
            "trainer_sps": med(p["trainer"]["samples_per_second"] for p in pairs),
            "nbtune_precision": pairs[0]["nbtune"]["precision"], "trainer_precision": pairs[0]["trainer"]["precision"],
            "nbtune_optim": pairs[0]["nbtune"]["optim"], "trainer_optim": pairs[0]["trainer"]["optim"]}


def add_mfu(results: list[dict], hw: dict) -> None:
    for r in results:
        for side in ("nbtune", "trainer"):
            for p in r["pairs"]:
                p[side]["mfu"] = mfu(p[side], hw)
            r[f"{side}_mfu"] = statistics.median(p[side]["mfu"] for p in r["pairs"])


def print_report(results: list[dict], hw: dict, args) -> None:
    peak = f"fp32 {hw['peak_fp32_flops'] / 1e9:.0f} GFLOP/s"
    if "peak_bf16_flops" in hw:
        peak += f", bf16 {hw['peak_bf16_flops'] / 1e9:.0f} GFLOP/s"
    print(f"\nCPU {hw['cpu']}, {hw['cpu_count']} cores, torch threads {hw['torch_threads']}, native bf16: "
          f"{'yes ' + ','.join(hw['native_bf16_flags']) if hw['native_bf16'] else 'no (no AVX512-BF16/AMX)'}")
    print(f"matmul peak (2048^3, best of 10 after 1 s of warm-up, best of before and after the trials): {peak}")
    print(f"{args.samples} samples, batch {DEFAULTS.train.batch_size}, {EPOCHS} epoch, {args.repeats} interleaved "
          f"pairs per case; timed: nbtune loop.train() vs Trainer on_train_begin..on_train_end")
    print(MFU_FORMULA)
    print(f"optimizers: nbtune {results[0]['nbtune_optim']}, Trainer {results[0]['trainer_optim']}")
    head = (f"{'case':4s} {'dataset':16s} {'prec nb/tr':10s} {'nbtune s/s':>10s} {'Trainer s/s':>11s} "
            f"{'ratio':>6s} {'min..max':>11s} {'nb MFU':>7s} {'tr MFU':>7s}")
    print(head + "\n" + "-" * len(head))
    for r in results:
        print(f"{r['case']:4s} {r['dataset']:16s} {r['nbtune_precision'] + '/' + r['trainer_precision']:10s} "
              f"{r['nbtune_sps']:10.1f} {r['trainer_sps']:11.1f} {r['ratio_median']:6.2f} "
              f"{r['ratio_min']:5.2f}..{r['ratio_max']:<5.2f} {r['nbtune_mfu']:7.1%} {r['trainer_mfu']:7.1%}")
    print("ratio = nbtune samples/s / Trainer samples/s, median of pairs. Targets: a >= 1.0, b >= 1.5 (the b "
          "target counts on bf16 autocast, which needs native bf16)")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(os.cpu_count())
    import datasets
    import transformers
    transformers.logging.set_verbosity_error()  # "newly initialized classifier weights" on every load
    transformers.logging.disable_progress_bar()  # "Loading weights" bars
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", message=".*pin_memory.*")  # Trainer's default; a no-op without a GPU
    hw = hardware_info()
    print(f"warm-up (untimed): one short trial of each tool; then {len(CASES)} cases x {args.repeats} pairs",
          flush=True)
    run_nbtune("a", CASES[0][1], 2 * DEFAULTS.train.batch_size)
    run_trainer(CASES[0][1], 2 * DEFAULTS.train.batch_size)
    measure_peaks(hw)
    started = time.perf_counter()
    results = [run_case(case, dataset, args) for case, dataset in CASES]
    measure_peaks(hw)
    add_mfu(results, hw)
    print_report(results, hw, args)
    print(f"(trials took {time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"hardware": hw, "samples": args.samples, "repeats": args.repeats,
                                         "batch_size": DEFAULTS.train.batch_size, "epochs": EPOCHS,
                                         "mfu_formula": MFU_FORMULA, "results": results}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
