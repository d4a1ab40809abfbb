"""Intent classification (intents-en) with and without FGM adversarial training: accuracy on clean test text,
on test text with character typos, and with Gaussian noise on the input embeddings.

Run (from the repository root):
    .venv/bin/python bench/demo_adversarial.py                                   # 480 rows, 2 epochs
    .venv/bin/python bench/demo_adversarial.py --train-samples 300 --epochs 1 --eval-samples 200   # smoke

Both runs use the same model (`--model`, default the bundled MiniLM-L6), seed, rows, batches, steps and LR;
the FGM run adds the `adversarial` method (kind fgm, `--epsilon`, weight 1). For scale: MiniLM's token
embeddings have an L2 norm of about 1.07, so a 10-token sentence's embedding matrix has a norm of about 3.4.
Test figures:
  clean        the engine's own evaluation of the test split (accuracy, macro F1)
  typos        the same rows after seeded character typos (`--typo-rate` of the words get one of: swap two
               neighbouring letters, drop a letter, double a letter, replace a letter)
  emb-noise    clean text, Gaussian noise on the word embeddings scaled to `--noise-norm` per example (L2 over
               the sentence, the same unit as FGM's epsilon), averaged over 3 noise draws
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from nbtune import assets  # noqa: E402
from nbtune.config import RunConfig  # noqa: E402
from nbtune.engine.batching import pad_batch  # noqa: E402
from nbtune.engine.run import Run  # noqa: E402
from nbtune.methods.adversarial import input_embeddings  # noqa: E402  (also registers "adversarial")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="minilm", help="bundled model name or local directory")
    p.add_argument("--train-samples", type=int, default=480)
    p.add_argument("--eval-samples", type=int, default=300, help="validation and test rows each")
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--epsilon", type=float, default=0.5, help="FGM perturbation norm per example")
    p.add_argument("--typo-rate", type=float, default=0.3, help="share of words given one typo")
    p.add_argument("--noise-norm", type=float, default=2.0, help="embedding noise norm per example at test")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    return p.parse_args(argv)


def typo(text: str, rate: float, rng: random.Random) -> str:
    """One character edit in about `rate` of the words longer than 2 letters.

    >>> typo("turn on the kitchen light", 1.0, random.Random(0)) != "turn on the kitchen light"
    True
    """
    words = text.split(" ")
    for i, w in enumerate(words):
        if len(w) < 3 or not w.isalpha() or rng.random() >= rate:
            continue
        j = rng.randrange(len(w) - 1)
        kind = rng.choice(("swap", "drop", "double", "replace"))
        if kind == "swap":
            w = w[:j] + w[j + 1] + w[j] + w[j + 2:]
        elif kind == "drop":
            w = w[:j] + w[j + 1:]
        elif kind == "double":
            w = w[:j] + w[j] + w[j:]
        else:
            w = w[:j] + rng.choice("abcdefghijklmnopqrstuvwxyz") + w[j + 1:]
        words[i] = w
    return " ".join(words)


def config_for(fgm: bool, args: argparse.Namespace, output_dir: str) -> RunConfig:
    cfg = RunConfig().with_overrides([
        "task=classification", f"model.name={args.model}", "data.dataset=intents-en",
        f"data.max_train_samples={args.train_samples}", f"data.max_eval_samples={args.eval_samples}",
        f"train.batch_size={args.batch_size}", f"train.num_train_epochs={args.epochs}",
        f"train.learning_rate={args.lr}", f"train.seed={args.seed}", "train.precision=fp32",
        "train.progress_bar=false", "train.tensorboard=false", f"output_dir={output_dir}",
        f"run_name={'fgm' if fgm else 'plain'}"])
    cfg.methods = [{"name": "adversarial", "kind": "fgm", "epsilon": args.epsilon}] if fgm else []
    return cfg


@torch.no_grad()
def accuracy(run: Run, texts: list[str], labels: list[int], noise_norm: float = 0.0, seed: int = 0) -> float:
    """Test accuracy on `texts`; with `noise_norm`, Gaussian noise of that L2 norm per example on the embeddings."""
    run.raw_model.eval()
    embed = input_embeddings(run.raw_model)
    gen = torch.Generator().manual_seed(seed)
    mask_now: list[torch.Tensor] = []

    def add_noise(module, inputs, output):  # (B, T, d), padding left clean
        noise = torch.randn(output.shape, generator=gen) * mask_now[0][..., None]
        return output + noise * (noise_norm / noise.flatten(1).norm(dim=1).clamp_min(1e-12))[:, None, None]
    handle = embed.register_forward_hook(add_noise) if noise_norm > 0 else None
    correct = 0
    try:
        for start in range(0, len(texts), 64):
            enc = run.tokenizer(texts[start:start + 64], truncation=True, max_length=run.cfg.data.max_length)
            rows = [{"input_ids": ids, "labels": 0} for ids in enc["input_ids"]]
            batch = pad_batch(rows, run.tokenizer.pad_token_id)
            mask_now[:] = [batch["attention_mask"].float()]
            logits = run.raw_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            correct += int((logits.argmax(-1) == torch.tensor(labels[start:start + 64])).sum())
    finally:
        if handle is not None:
            handle.remove()
    return correct / len(texts)


def train_and_score(fgm: bool, args: argparse.Namespace, texts: list[str], output_dir: str) -> dict:
    run = Run(config_for(fgm, args, output_dir))
    rows = run.data.rows["test"]
    labels = [int(r["labels"]) for r in rows]
    enc = run.tokenizer(texts, truncation=True, max_length=run.cfg.data.max_length)["input_ids"]
    assert [r["input_ids"] for r in rows] == enc, "test rows and texts are out of step"
    started = time.perf_counter()
    run.start()
    seconds = time.perf_counter() - started
    noisy = [typo(t, args.typo_rate, random.Random(args.seed * 1000 + i)) for i, t in enumerate(texts)]
    emb = [accuracy(run, texts, labels, args.noise_norm, seed=s) for s in range(3)]
    return {"method": "fgm" if fgm else "plain", "steps": run.state.step, "train_seconds": round(seconds, 1),
            "clean_accuracy": run.results["test"]["accuracy"], "clean_macro_f1": run.results["test"].get("macro_f1"),
            "clean_accuracy_recomputed": accuracy(run, texts, labels),
            "typo_accuracy": accuracy(run, noisy, labels), "emb_noise_accuracy": sum(emb) / len(emb)}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    test = assets.load_dataset("intents-en", seed=13)["test"]
    texts = list(test["text"][: args.eval_samples])
    with tempfile.TemporaryDirectory() as tmp:
        results = [train_and_score(fgm, args, texts, tmp) for fgm in (False, True)]
    example = typo(texts[0], args.typo_rate, random.Random(args.seed * 1000))
    print(f"intents-en, {args.model}, {args.train_samples} train rows, {args.epochs} epochs, {len(texts)} test rows; "
          f"FGM epsilon {args.epsilon}; typo rate {args.typo_rate}; embedding noise norm {args.noise_norm}")
    print(f"typo example: {texts[0]!r} -> {example!r}")
    print(f"{'method':8} {'steps':>5} {'train s':>8} {'clean acc':>10} {'typo acc':>9} {'emb-noise acc':>14}")
    for r in results:
        print(f"{r['method']:8} {r['steps']:>5} {r['train_seconds']:>8} {r['clean_accuracy']:>10.4f} "
              f"{r['typo_accuracy']:>9.4f} {r['emb_noise_accuracy']:>14.4f}")
    out = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "results": results}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
