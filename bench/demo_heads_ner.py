"""Chinese NER (peoples-daily-ner): a plain linear token head against a BiLSTM+CRF head, same everything else.

Run (from the repository root):
    .venv/bin/python bench/demo_heads_ner.py                                  # 2000 rows, 1 epoch
    .venv/bin/python bench/demo_heads_ner.py --train-samples 96 --eval-samples 48 --threads 1   # smoke, ~2 min

Both runs use the same model (`--model`, default the bundled MiniLM-L6), seed, rows, batch size, steps and
learning rates: the encoder trains at `--lr`, the head at `--head-lr` through layer_lr's "head" group (the
linear head is the task model's own `classifier`, the CRF head the `heads` method's). Figures, on the test
split, come from the engine's own evaluation (nbtune.engine.tasks.summarize: exact-span entity precision,
recall and F1 over each word's first sub-token), plus the number of invalid BIO transitions in each model's
predicted tags: an I-X not preceded by B-X or I-X. A CRF learns the transitions, so it should have about none.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from nbtune.config import RunConfig  # noqa: E402
from nbtune.engine import metrics, tasks  # noqa: E402
from nbtune.engine.batching import eval_batches  # noqa: E402
from nbtune.engine.run import Run  # noqa: E402
import nbtune.methods.heads  # noqa: E402,F401  (registers "heads" until nbtune.methods imports it)

HEADS = ("linear", "bilstm_crf")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="minilm", help="bundled model name or local directory")
    p.add_argument("--train-samples", type=int, default=2000, help="training rows (first N of the train split)")
    p.add_argument("--eval-samples", type=int, default=500, help="validation and test rows each")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-5, help="encoder peak learning rate")
    p.add_argument("--head-lr", type=float, default=1e-3, help="head peak learning rate (both heads)")
    p.add_argument("--lstm-hidden", type=int, default=128, help="BiLSTM width per direction")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (1 suits a busy machine)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    return p.parse_args(argv)


def config_for(head: str, args: argparse.Namespace, output_dir: str) -> RunConfig:
    cfg = RunConfig().with_overrides([
        "task=token-classification", f"model.name={args.model}", "data.dataset=peoples-daily-ner",
        f"data.max_train_samples={args.train_samples}", f"data.max_eval_samples={args.eval_samples}",
        f"data.max_length={args.max_length}", f"train.batch_size={args.batch_size}",
        f"train.num_train_epochs={args.epochs}", f"train.learning_rate={args.lr}", f"train.seed={args.seed}",
        f"train.precision={args.precision}", "train.progress_bar=false", "train.tensorboard=false",
        f"output_dir={output_dir}", f"run_name={head}"])
    if args.max_steps:
        cfg.train.max_steps = args.max_steps
    head_method = [] if head == "linear" else [{"name": "heads", "head": head, "lstm_hidden": args.lstm_hidden}]
    cfg.methods = [*head_method, {"name": "layer_lr", "lr": {"head": args.head_lr}}]
    return cfg


def invalid_transitions(tag_seqs: list[list[str]]) -> int:
    """I-X tags whose previous tag (in word order) is neither B-X nor I-X; a sequence starts after an O.

    >>> invalid_transitions([["O", "I-PER", "B-LOC", "I-LOC", "I-ORG"]])
    2
    """
    count = 0
    for seq in tag_seqs:
        previous = "O"
        for tag in seq:
            if tag.startswith("I-") and previous[2:] != tag[2:]:
                count += 1
            previous = tag
    return count


@torch.no_grad()
def predicted_tags(run: Run, split: str) -> tuple[list[list[str]], list[list[str]]]:
    """(gold, predicted) tag sequences at the labelled positions, batched as the engine's evaluation does."""
    rows, names = run.data.rows[split], run.data.label_names
    run.model.eval()
    gold, pred = [], []
    for idx in eval_batches([len(r["input_ids"]) for r in rows], run.cfg.train.batch_size * 2, 0, 1):
        batch = {k: v.to(run.device) for k, v in run.collate(idx, rows).items()}
        out = run.model(**batch)
        best = out.predictions if getattr(out, "predictions", None) is not None else out.logits.argmax(-1)
        part = tasks.score("token-classification", torch.nn.functional.one_hot(best.clamp(min=0).cpu(), len(names)),
                           batch["labels"].cpu(), names)
        gold += part["gold_seqs"]
        pred += part["pred_seqs"]
    run.model.train()
    return gold, pred


def train_and_score(head: str, args: argparse.Namespace, output_dir: str) -> dict:
    run = Run(config_for(head, args, output_dir))
    started = time.perf_counter()
    run.start()
    seconds = time.perf_counter() - started
    test = run.results["test"]
    gold, pred = predicted_tags(run, "test")
    return {"head": head, "steps": run.state.step, "train_and_eval_seconds": round(seconds, 1),
            "entity_precision": test["entity_precision"], "entity_recall": test["entity_recall"],
            "entity_f1": test["entity_f1"], "token_accuracy": test["token_accuracy"],
            "rescored_entity_f1": metrics.tagging_scores(gold, pred)["entity_f1"],
            "invalid_bio": invalid_transitions(pred), "invalid_bio_gold": invalid_transitions(gold),
            "predicted_entities": sum(len(metrics.entities(s)) for s in pred),
            "gold_entities": sum(len(metrics.entities(s)) for s in gold),
            "trainable_params": sum(p.numel() for p in run.raw_model.parameters() if p.requires_grad),
            "device": str(run.device), "precision": run.precision.name}


def run_demo(args: argparse.Namespace) -> dict[str, dict]:
    """Train both heads and return their figures by head name."""
    with tempfile.TemporaryDirectory(prefix="nbtune-heads-demo-") as out:
        return {head: train_and_score(head, args, out) for head in HEADS}


def report(results: dict[str, dict], argv: list[str]) -> None:
    print("command: .venv/bin/python bench/demo_heads_ner.py " + " ".join(shlex.quote(a) for a in argv))
    first = next(iter(results.values()))
    print(f"device {first['device']}, precision {first['precision']}, {first['steps']} steps per head, "
          f"{first['gold_entities']} gold entities in the test rows")
    print(f"{'head':<12}{'entity P':>10}{'entity R':>10}{'entity F1':>11}{'token acc':>11}{'invalid I-X':>13}"
          f"{'entities':>10}{'params':>12}{'seconds':>9}")
    for r in results.values():
        print(f"{r['head']:<12}{r['entity_precision']:>10.4f}{r['entity_recall']:>10.4f}{r['entity_f1']:>11.4f}"
              f"{r['token_accuracy']:>11.4f}{r['invalid_bio']:>13d}{r['predicted_entities']:>10d}"
              f"{r['trainable_params']:>12,d}{r['train_and_eval_seconds']:>9.1f}")


def main(argv: list[str] | None = None) -> dict[str, dict]:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = run_demo(args)
    report(results, argv)
    if args.json:
        args.json.write_text(json.dumps({"argv": argv, "results": results}, indent=1), encoding="utf-8")
    return results


if __name__ == "__main__":
    main()
