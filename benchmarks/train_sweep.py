"""Batch-size sweep of the `cpu` preset at a fixed compute budget: how the preset was tuned.

    export WIKIGPT_DATA_DIR=../shared/data/wikitext-2
    python benchmarks/train_sweep.py plan --batch-sizes 32 16 8     # step times -> max_steps
    python benchmarks/train_sweep.py run --batch-size 16 --steps 1175 --threads 1
    python benchmarks/train_sweep.py report                          # JSON -> markdown

A fixed budget means a fixed number of training FLOPs, not a fixed number of steps: `plan`
times each batch size (2 warm-up + 10 timed steps, all threads) and converts the budget into
max_steps as benchmarks/train.py does. `run` trains the course preset with that batch size
for that many steps and evaluates it on the whole validation split with benchmarks/train.py's
`eval_metrics`; the row is added to results/train_cpu_batch_sweep.json. Because the step
count is fixed, a run's losses do not depend on the machine's load, so several runs can share
the CPU (`--threads 1` each); only `plan` needs a quiet machine.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.train import (  # noqa: E402
    build_trainer,
    eval_metrics,
    load_corpus,
    plan_steps,
    today,
    train_for,
    validation_stats,
)
from wikigpt_lib.train import train_preset  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "train_cpu_batch_sweep.json"
CPU = torch.device("cpu")


def plan(batch_sizes: list[int], budget_s: float) -> None:
    corpus = load_corpus("wikitext2")
    for batch in batch_sizes:
        model_cfg, train_cfg = train_preset("cpu", batch_size=batch)
        steps, step_s = plan_steps(model_cfg, train_cfg, corpus.train, CPU, budget_s)
        print(f"batch {batch}: {step_s * 1e3:.0f} ms/step -> --steps {steps}", flush=True)


def run(batch: int, steps: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    corpus = load_corpus("wikitext2")
    model_cfg, train_cfg = train_preset("cpu", batch_size=batch, max_steps=steps)
    model, trainer = build_trainer(model_cfg, train_cfg, corpus.train, CPU)
    wall_s, curve = train_for(trainer, CPU)
    row = {
        "date": today(),
        "batch_size": batch,
        "steps": steps,
        "tokens_seen": trainer.tokens_seen,
        "threads": threads,
        "lr": train_cfg.lr,
        "wall_s": round(wall_s, 1),
        "final_train_loss": curve[-1][1],
    }
    row |= eval_metrics(model, corpus.val, batch, trainer.precision, validation_stats())
    # Runs may share the machine and finish together: add the rows one process at a time (an
    # exclusive lock on this script's own file, which nothing writes).
    with open(__file__) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = json.loads(RESULTS.read_text())["runs"] if RESULTS.exists() else []
        rows = [r for r in rows if (r["batch_size"], r["steps"]) != (batch, steps)] + [row]
        save(rows)
    print(json.dumps(row), flush=True)
    return row


def save(rows: list[dict]) -> None:
    rows = sorted(rows, key=lambda r: -r["batch_size"])
    RESULTS.write_text(json.dumps({"runs": rows}, indent=1) + "\n")
    lines = [
        "# Batch-size sweep of the `cpu` preset at 10 minutes of compute",
        "",
        "`python benchmarks/train_sweep.py`; every number is in the JSON file beside this one.",
        "Each batch size trains for the number of steps that fills 600 s at its step time",
        "(measured on the quiet 2-core machine: 1,017 / 495 / 257 ms per step at batch 32 / 16 /",
        "8, 2 threads), so every row costs the same compute; the model, lr (2e-3 -> 2e-4 cosine),",
        "warmup (50 steps) and seed are the preset's. Evaluation: the whole wikitext-2-v1",
        "validation split, as in `benchmarks/train.py`.",
        "",
        "| batch | steps | tokens | threads | val loss | word ppl | bits/byte | date |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch_size']} | {r['steps']:,} | {r['tokens_seen']:,} | {r['threads']} | "
            f"{r['val_loss_nats_per_token']:.3f} | {r['word_ppl']:.1f} | "
            f"{r['bits_per_byte']:.3f} | {r['date']} |"
        )
    lines += [
        "",
        "Batch 16 won and became the preset's batch size. The batch-32 row is the course run of",
        "`benchmarks/train.py`'s quality part before the change (2 threads; its step count came",
        "from the 987 ms/step probe of that run). The learning rate was not retuned per batch",
        "size, so batch 8 might do better with a lower one.",
    ]
    RESULTS.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="time each batch size and print its max_steps")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 16, 8])
    p.add_argument("--budget-s", type=float, default=600.0)
    r = sub.add_parser("run", help="train one batch size for a fixed number of steps")
    r.add_argument("--batch-size", type=int, required=True)
    r.add_argument("--steps", type=int, required=True)
    r.add_argument("--threads", type=int, default=torch.get_num_threads())
    sub.add_parser("report", help="rewrite the markdown from the JSON")
    args = parser.parse_args()
    if args.command == "plan":
        plan(args.batch_sizes, args.budget_s)
    elif args.command == "run":
        run(args.batch_size, args.steps, args.threads)
    else:
        save(json.loads(RESULTS.read_text())["runs"])


if __name__ == "__main__":
    main()
