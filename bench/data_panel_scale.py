"""How `nbtune.data.inspect` scales: a million synthetic rows, wall time per stage, peak memory.

Run (from the repository root):
    .venv/bin/python bench/data_panel_scale.py                      # 1,000,000 rows, real MiniLM tokenizer
    .venv/bin/python bench/data_panel_scale.py --rows 200000 --json out.json
    .venv/bin/python bench/data_panel_scale.py --no-tokenizer       # lengths in characters

The rows are short texts (3 to 25 words from a 3,000-word vocabulary) in train/validation/test (80/10/10),
5 labels with a skew, ~5% exact duplicates (some re-cased or re-spaced), ~1% near duplicates (one word
changed), ~2% HTML remnants, ~2% URLs, ~0.5% copied into another split. Stages are those `inspect` reports
in `stage_seconds`; "build" (making the DatasetDict) is outside inspect. Peak RSS is
`getrusage(RUSAGE_SELF).ru_maxrss`; growth is that peak minus the RSS just before `inspect` started.
Near-duplicate search runs on at most `--max-near-rows` rows (the report says how many), so its cost is
bounded: datasketch's LSH index takes about 1.5 KB per checked row (~300 MiB at the default 200,000), the
signatures 256 bytes. Everything else is linear in rows and held in numpy arrays. The build's freed strings
are reused by inspect, so "growth" slightly understates the row texts. The DataPanel's browser half is
measured separately.

On the 2-core development machine (shared, so +-20%): 200,000 rows with MiniLM 41 s (lengths 21, near 18),
growth 478 MiB; 1,000,000 rows with MiniLM 92 s (lengths 65, near 19), peak RSS 1,041 MiB, growth 503 MiB;
1,000,000 rows in characters 34 s.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import numpy as np


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kib / 1024


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def synthetic_rows(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Short texts with planted duplicates, near duplicates, HTML and URLs; 5 skewed labels."""
    rng = np.random.default_rng(seed)
    syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "qu", "do", "fe", "gi", "ho"]
    vocab = ["".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(3000)]
    lengths = rng.integers(3, 26, size=n)
    words = rng.integers(0, len(vocab), size=int(lengths.sum()))
    cuts = np.cumsum(lengths)[:-1]
    texts = [" ".join(vocab[w] for w in row) for row in np.split(words, cuts)]
    kind = rng.random(n)
    earlier = (rng.random(n) * np.arange(n)).astype(np.int64)
    for i in np.flatnonzero(kind < 0.05)[1:]:                    # exact duplicates, some with case/space changes
        src = texts[earlier[i]]
        texts[i] = src.upper() if i % 3 == 0 else src.replace(" ", "  ", 1) if i % 3 == 1 else src
    for i in np.flatnonzero((kind >= 0.05) & (kind < 0.06))[1:]:  # near duplicates: last word changed
        src = texts[earlier[i]].split(" ")
        texts[i] = " ".join(src[:-1] + [vocab[(i * 7) % len(vocab)]]) if len(src) >= 12 else texts[i]
    for i in np.flatnonzero((kind >= 0.06) & (kind < 0.08)):
        texts[i] = f"<p>{texts[i]}</p>" if i % 2 else texts[i].replace(" ", " &amp; ", 1)
    for i in np.flatnonzero((kind >= 0.08) & (kind < 0.10)):
        texts[i] = f"{texts[i]} https://example.com/{i}"
    labels = rng.choice(5, size=n, p=[0.5, 0.25, 0.15, 0.07, 0.03]).astype(np.int64)
    return texts, labels


def build(n: int):
    import datasets
    texts, labels = synthetic_rows(n)
    n_train, n_val = int(n * 0.8), int(n * 0.1)
    parts = {"train": slice(0, n_train), "validation": slice(n_train, n_train + n_val),
             "test": slice(n_train + n_val, n)}
    rng = np.random.default_rng(1)
    for i in rng.choice(np.arange(n_train, n), size=int(n * 0.005), replace=False):  # leakage into eval splits
        texts[i] = texts[int(rng.integers(0, n_train))]
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["a", "b", "c", "d", "e"])})
    return datasets.DatasetDict({k: datasets.Dataset.from_dict({"text": texts[s], "label": labels[s]},
                                                               features=features) for k, s in parts.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--no-tokenizer", action="store_true", help="lengths in characters")
    parser.add_argument("--max-length", type=int, default=32)
    parser.add_argument("--max-near-rows", type=int, default=200_000)
    parser.add_argument("--json", help="write every number to this file")
    args = parser.parse_args()

    from nbtune.data.inspect import FLAG_NAMES, inspect
    tokenizer = None
    if not args.no_tokenizer:
        from transformers import AutoTokenizer

        from nbtune.assets import resolve_model
        tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm").tokenizer_path)
    t0 = time.perf_counter()
    ds = build(args.rows)
    build_s = time.perf_counter() - t0
    rss_before = rss_mib()
    t0 = time.perf_counter()
    report = inspect(ds, tokenizer=tokenizer, max_length=args.max_length, max_near_rows=args.max_near_rows)
    total_s = time.perf_counter() - t0
    peak = peak_rss_mib()

    n = len(report.texts)
    print(f"rows {n:,}  unit {report.lengths.unit}  machine {platform.machine()} {platform.processor() or ''}")
    print(f"{'stage':<12}{'seconds':>9}")
    print(f"{'build':<12}{build_s:>9.2f}   (synthetic DatasetDict, outside inspect)")
    for stage, s in report.stage_seconds.items():
        print(f"{stage:<12}{s:>9.2f}")
    print(f"{'inspect':<12}{total_s:>9.2f}   ({n / total_s:,.0f} rows/s)")
    print(f"RSS before inspect {rss_before:,.0f} MiB, peak {peak:,.0f} MiB, growth {peak - rss_before:,.0f} MiB "
          f"({(peak - rss_before) * 2**20 / max(n, 1):,.0f} bytes/row)")
    flags = {name: int(np.count_nonzero(report.flags & bit)) for name, bit in FLAG_NAMES.items()}
    print("flags", flags)
    print(f"near-dup rows checked {report.duplicates.near_checked_rows:,} of {n:,}; "
          f"near pairs {len(report.duplicates.near_pairs):,}; exact groups {len(report.duplicates.exact_groups):,}")
    print("leakage", report.leakage.counts)
    if args.json:
        out = {"rows": n, "unit": report.lengths.unit, "build_s": build_s, "stage_seconds": report.stage_seconds,
               "inspect_s": total_s, "rss_before_mib": rss_before, "peak_rss_mib": peak,
               "rss_growth_mib": peak - rss_before, "flags": flags, "leakage": report.leakage.counts,
               "near_checked_rows": report.duplicates.near_checked_rows, "max_near_rows": args.max_near_rows,
               "near_pairs": len(report.duplicates.near_pairs), "exact_groups": len(report.duplicates.exact_groups),
               "machine": platform.platform()}
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
