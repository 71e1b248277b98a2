"""Benchmark the course's BPE trainer and tokenizers on WikiText-2 (wikitext-2-v1).

    WIKIGPT_DATA_DIR=../shared/data/wikitext-2 TIKTOKEN_CACHE_DIR=../shared/data/tiktoken-cache \\
        python benchmarks/tokenizer.py

Measures, pinned to one CPU core:
- training time of the 8,192-token vocabulary on train (pre-split/count and merges; best of
  --runs, since other processes may share the machine), and that it reproduces the shipped file;
- single-thread `encode_ordinary` throughput on the validation text, course tokenizer and GPT-2;
- vocabulary size against compression: bytes per token and tokens per word on validation for
  bytes, characters, BPE at 1,024 ... 16,384 tokens and GPT-2's 50,257.
The sweep truncates one 16,384-token run (the first k merges of a run are the run with k merges;
this script checks that by training the smaller sizes too). Writes benchmarks/results/tokenizer.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import tiktoken

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from train_course_tokenizer import read_rows  # noqa: E402

from benchmarks.machine import machine_facts  # noqa: E402
from wikigpt_lib.tokenizer import (  # noqa: E402
    COURSE_TOKENIZER_FILE,
    COURSE_VOCAB_SIZE,
    EOT,
    SPLIT_PATTERN,
    TokenizerUnavailableError,
    _build_encoding,
    _count_chunks,
    _learn_merges,
    get_tokenizer,
    save_bpe,
)

SWEEP_SIZES = (1024, 2048, 4096, 8192, 16384)


def pin_to_one_core() -> str:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
        return "pinned to CPU core 0 with os.sched_setaffinity"
    return "not pinned (os.sched_setaffinity is unavailable on this platform)"


def timed_training(rows: list[str], vocab_size: int) -> tuple[dict, list[bytes]]:
    """Train once, timing the two phases; return the timings and the merged tokens."""
    t0 = time.perf_counter()
    chunk_counts = _count_chunks(rows, SPLIT_PATTERN)
    t1 = time.perf_counter()
    merged = _learn_merges(chunk_counts, vocab_size - 256 - 1)
    t2 = time.perf_counter()
    _build_encoding(merged, SPLIT_PATTERN, (EOT,), "timing")
    t3 = time.perf_counter()
    times = {"split_count_s": t1 - t0, "merges_s": t2 - t1, "build_s": t3 - t2, "total_s": t3 - t0}
    times = {k: round(v, 3) for k, v in times.items()}
    times |= {"unique_chunks": len(chunk_counts), "chunks": sum(chunk_counts.values())}
    return times, merged


def encode_speed(enc: tiktoken.Encoding, text: str, repeats: int = 3) -> dict:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        n_tokens = len(enc.encode_ordinary(text))
        best = min(best, time.perf_counter() - start)
    mb = len(text.encode("utf-8")) / 1e6
    return {"seconds": round(best, 4), "MB_per_s": round(mb / best, 2), "tokens": n_tokens}


def compression(name: str, vocab_size: int, n_tokens: int, n_bytes: int, n_words: int) -> dict:
    return {
        "name": name,
        "vocab_size": vocab_size,
        "tokens": n_tokens,
        "bytes_per_token": round(n_bytes / n_tokens, 4),
        "tokens_per_word": round(n_tokens / n_words, 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("WIKIGPT_DATA_DIR"))
    parser.add_argument("--runs", type=int, default=2, help="training runs; the best is reported")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/tokenizer.json")
    args = parser.parse_args()
    if not args.data_dir:
        parser.error("no data: pass --data-dir or set WIKIGPT_DATA_DIR")
    pinning = pin_to_one_core()
    train_rows = read_rows(Path(args.data_dir) / "wiki.train.tokens")
    valid_rows = read_rows(Path(args.data_dir) / "wiki.valid.tokens")
    valid = "".join(valid_rows)
    n_bytes, n_words = len(valid.encode("utf-8")), len(valid.split())

    # Training time of the course vocabulary, best of `runs`.
    runs = []
    for i in range(args.runs):
        times, merged_8k = timed_training(train_rows, COURSE_VOCAB_SIZE)
        runs.append(times)
        print(f"train {COURSE_VOCAB_SIZE} run {i + 1}: {times}", flush=True)
    best = min(runs, key=lambda r: r["total_s"])
    course = _build_encoding(merged_8k, SPLIT_PATTERN, (EOT,), "course")
    with tempfile.TemporaryDirectory() as tmp:
        fresh = save_bpe(course, Path(tmp) / COURSE_TOKENIZER_FILE).read_bytes()
    shipped = (ROOT / "wikigpt_lib" / "assets" / COURSE_TOKENIZER_FILE).read_bytes()

    # One 16,384 run for the sweep; smaller sizes trained too, to check the prefix property.
    times_16k, merged_16k = timed_training(train_rows, 16384)
    print(f"train 16384: {times_16k}", flush=True)
    prefix_ok = {COURSE_VOCAB_SIZE: merged_16k[: len(merged_8k)] == merged_8k}
    for size in (1024, 2048, 4096):
        merged = _learn_merges(_count_chunks(train_rows, SPLIT_PATTERN), size - 257)
        prefix_ok[size] = merged_16k[: size - 257] == merged

    # Encoding speed on validation, single thread.
    speed = {"course": encode_speed(get_tokenizer(), valid)}
    try:
        gpt2 = get_tokenizer("gpt2")
        speed["gpt2"] = encode_speed(gpt2, valid)
    except TokenizerUnavailableError as err:
        gpt2 = None
        speed["gpt2"] = {"skipped": str(err)}
        print(f"GPT-2 skipped: {err}")

    # Vocabulary size against compression on validation.
    n_chars_train = len(set("".join(train_rows)))
    sweep = [
        compression("bytes", 256, n_bytes, n_bytes, n_words),
        compression(
            f"characters ({n_chars_train} seen in train)",
            n_chars_train,
            len(valid),
            n_bytes,
            n_words,
        ),
    ]
    for size in SWEEP_SIZES:
        enc = _build_encoding(merged_16k[: size - 257], SPLIT_PATTERN, (EOT,), f"bpe-{size}")
        sweep.append(
            compression(f"BPE {size}", size, len(enc.encode_ordinary(valid)), n_bytes, n_words)
        )
    if gpt2 is not None:
        n = len(gpt2.encode_ordinary(valid))
        sweep.append(compression("GPT-2", gpt2.n_vocab, n, n_bytes, n_words))

    result = {
        "date": datetime.date.today().isoformat(),
        "machine": machine_facts(),
        "method": f"{pinning}; training: best of {args.runs} runs (the other core may be busy); "
        "encoding: best of 3, single-thread encode_ordinary over the whole validation text",
        "data": {"train_rows": len(train_rows), "valid_bytes": n_bytes, "valid_words": n_words},
        "training": {
            "vocab_size": COURSE_VOCAB_SIZE,
            "runs": runs,
            "best_total_s": best["total_s"],
            "target_s": 60,
            "matches_shipped_file": fresh == shipped,
        },
        "training_16384": times_16k,
        "prefix_property_holds": {str(k): v for k, v in sorted(prefix_ok.items())},
        "encoding_speed_valid": speed,
        "compression_valid": sweep,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {args.out}")
    return 0


def print_table(result: dict) -> None:
    t = result["training"]
    best = min(t["runs"], key=lambda r: r["total_s"])
    print(
        f"\ntraining {t['vocab_size']} on train: {best['total_s']:.1f} s (pre-split/count "
        f"{best['split_count_s']:.1f} s + merges {best['merges_s']:.1f} s), target {t['target_s']} s,"
        f" reproduces shipped file: {t['matches_shipped_file']}"
    )
    print(f"prefix property: {result['prefix_property_holds']}")
    for name, s in result["encoding_speed_valid"].items():
        print(f"encode {name}: " + (f"{s['MB_per_s']:.2f} MB/s" if "MB_per_s" in s else "skipped"))
    print(f"\n{'tokenizer':<32} {'vocab':>7} {'bytes/token':>12} {'tokens/word':>12}")
    for row in result["compression_valid"]:
        print(
            f"{row['name']:<32} {row['vocab_size']:>7} {row['bytes_per_token']:>12.3f} "
            f"{row['tokens_per_word']:>12.3f}"
        )


if __name__ == "__main__":
    sys.exit(main())
