"""LoRA SFT of the bundled SmolLM2-135M-Instruct on ChatterBot chats: the trainable-parameter share, validation
perplexity before and after, and greedy replies to fixed prompts before and after.

Run (from the repository root):
    .venv/bin/python bench/demo_lora_sft.py                                      # 100 steps of 8 chats
    .venv/bin/python bench/demo_lora_sft.py --steps 30 --batch-size 2 --max-length 64 --eval-samples 24 \
        --max-new-tokens 12 --threads 1                                          # the integration test's setting
    .venv/bin/python bench/demo_lora_sft.py --prompts "Who are you?" "Do you like music?"

Perplexity is exp of the engine's validation loss (answer tokens only: the prompt is masked out of the
labels), measured with ``run.evaluate("validation")`` before training and taken from ``run.results`` after.
Replies use the tokenizer's chat template and greedy decoding. The adapters are saved with ``save_adapters``
under the run directory (the full final checkpoint is deleted unless --keep-checkpoint). The last line is a
JSON summary (the integration test reads it).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import nbtune.methods.lora  # noqa: E402,F401  (registers "lora")
from nbtune.config import RunConfig  # noqa: E402
from nbtune.engine.run import Run  # noqa: E402
from nbtune.methods.lora import save_adapters, trainable_share  # noqa: E402

PROMPTS = ["What is your favorite food?", "Do you feel emotions?", "Where do you live?"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=100, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=8, help="chats per step")
    p.add_argument("--max-length", type=int, default=128, help="tokens per chat (longer ones are cut)")
    p.add_argument("--eval-samples", type=int, default=None,
                   help="validation/test chats to score (default: all 95 / 93)")
    p.add_argument("--prompts", nargs="+", default=PROMPTS, help="user messages to answer before and after")
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--rank", type=int, default=16, help="LoRA rank r (alpha = 2r)")
    p.add_argument("--max-new-tokens", type=int, default=30)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (1 on a busy machine: spinning threads there cost ~10x)")
    p.add_argument("--output-dir", type=Path, default=None, help="run directory root (default: a temp dir)")
    p.add_argument("--keep-checkpoint", action="store_true",
                   help="keep the final full checkpoint (about 0.5 GB for SmolLM2); the adapters are kept anyway")
    return p.parse_args(argv)


def config(args: argparse.Namespace, output_dir: Path) -> RunConfig:
    cfg = RunConfig().with_overrides([
        "task=causal-lm", "model.name=smollm2", "data.dataset=chatterbot-sft", f"data.max_length={args.max_length}",
        f"data.max_eval_samples={args.eval_samples or 'null'}", f"train.batch_size={args.batch_size}",
        f"train.max_steps={args.steps}",
        f"train.learning_rate={args.learning_rate}", "train.warmup_ratio=0.1", "train.scheduler=cosine",
        f"train.precision={args.precision}", "train.progress_bar=false", "train.tensorboard=false",
        "train.log_every_n_steps=10", "train.sync_every_n_steps=10", "run_name=lora-sft", f"output_dir={output_dir}"])
    cfg.methods = [{"name": "lora", "r": args.rank, "alpha": 2 * args.rank, "dropout": 0.05}]
    return cfg


@torch.no_grad()
def replies(run: Run, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy answers of the run's model (adapters on) to single-turn chats."""
    model, tok = run.raw_model, run.tokenizer
    model.eval()
    out = []
    for prompt in prompts:
        enc = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True).to(run.device)
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        out.append(tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    model.train()
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)   # progress lines show up at once when piped
    if args.threads:
        torch.set_num_threads(args.threads)
    output_dir = args.output_dir or Path(tempfile.mkdtemp(prefix="nbtune-lora-"))
    run = Run(config(args, output_dir))
    trainable, total = trainable_share(run)
    print(f"model smollm2 + LoRA r={args.rank} on {run.precision.name} / {run.device}; "
          f"{len(run.data.rows['train'])} train chats, {len(run.data.rows['validation'])} validation")
    print(f"trainable parameters: {trainable:,} / {total:,} = {100 * trainable / total:.3f}%")

    tick = time.perf_counter()
    before = run.evaluate("validation")
    print(f"validation before: loss {before['loss']:.4f} ({time.perf_counter() - tick:.0f} s)")
    tick = time.perf_counter()
    replies_before = replies(run, args.prompts, args.max_new_tokens)
    print(f"replies before: {len(replies_before)} prompts ({time.perf_counter() - tick:.0f} s)")
    start = time.perf_counter()
    run.start()
    seconds = time.perf_counter() - start
    after = run.results["validation"]
    replies_after = replies(run, args.prompts, args.max_new_tokens)
    adapters = save_adapters(run, run.run_dir / "adapters")
    if not args.keep_checkpoint:
        shutil.rmtree(run.run_dir / "checkpoints", ignore_errors=True)

    ppl_before, ppl_after = math.exp(before["loss"]), math.exp(after["loss"])
    print(f"\n{args.steps} steps x {args.batch_size} chats in {seconds:.0f} s (incl. final eval + checkpoint)")
    print(f"validation loss {before['loss']:.4f} -> {after['loss']:.4f}; "
          f"perplexity {ppl_before:.2f} -> {ppl_after:.2f} ({100 * (ppl_after / ppl_before - 1):+.1f}%)")
    for prompt, a, b in zip(args.prompts, replies_before, replies_after):
        print(f"\nuser:   {prompt}\nbefore: {a!r}\nafter:  {b!r}")
    size_kib = (adapters / "adapter_model.safetensors").stat().st_size / 1024
    print(f"\nadapters saved to {adapters} (adapter_model.safetensors {size_kib:.0f} KiB)")
    summary = {"trainable": trainable, "total": total, "share": trainable / total, "steps": args.steps,
               "perplexity_before": ppl_before, "perplexity_after": ppl_after, "seconds": seconds,
               "prompts": args.prompts, "before": replies_before, "after": replies_after,
               "adapters": str(adapters), "precision": run.precision.name}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
