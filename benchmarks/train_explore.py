"""One training experiment: a preset with changes, for N steps or a time budget, scored on
the whole validation split. How the presets' settings were explored before the ladder
(benchmarks/train.py) measured them; every run appends a line to
benchmarks/results/train_explore.jsonl (or to --out).

    export WIKIGPT_DATA_DIR=../shared/data/wikitext-2
    python benchmarks/train_explore.py --name q-muon --base cpu-quick --steps 200 --threads 1 \
        --train '{"optimizer": "muon", "muon_lr": 0.02, "lr": 3e-3, "min_lr": 0, "schedule": "linear"}'
    python benchmarks/train_explore.py --name d192 --model '{"n_embd": 192, "n_head": 3}' \
        --budget-s 600 --step-s 0.435 --threads 1    # the steps 600 s buy at a known step time

A fixed step count makes the result independent of the machine's load, so several runs can
share the CPU (--threads 1 each); only the step time (--time-only, or measured when
--budget-s is given without --step-s) needs a quiet machine. Warmup is capped at a tenth of
the steps unless --train sets it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_facts  # noqa: E402
from benchmarks.train import (  # noqa: E402
    build_trainer,
    eval_metrics,
    load_corpus,
    time_steps,
    validation_stats,
)
from wikigpt_lib.train import train_preset  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--name", required=True)
ap.add_argument("--base", default="cpu")
ap.add_argument("--model", default="{}")
ap.add_argument("--train", default="{}")
ap.add_argument("--steps", type=int)
ap.add_argument("--budget-s", type=float)
ap.add_argument("--step-s", type=float, help="known step time (2 threads) for the budget")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--time-only", action="store_true")
ap.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/train_explore.jsonl")
a = ap.parse_args()
torch.set_num_threads(a.threads)
mcfg, tcfg = train_preset(a.base)
mcfg = mcfg.replace(**json.loads(a.model))
tcfg = tcfg.replace(progress=False, **json.loads(a.train))
corpus = load_corpus("wikitext2")
dev = torch.device("cpu")
if a.steps is None:
    if a.step_s is None:
        _, tr = build_trainer(mcfg, tcfg.replace(max_steps=10**6), corpus.train, dev)
        ts = time_steps(tr, dev, 8)
        a.step_s = statistics.median(ts)
        print(
            f"{a.name}: step {a.step_s * 1e3:.0f} ms ({min(ts) * 1e3:.0f}-{max(ts) * 1e3:.0f}), tok/s {tr.tokens_per_step / a.step_s:.0f}",
            flush=True,
        )
        if a.time_only:
            sys.exit()
    a.steps = max(1, math.floor(a.budget_s / a.step_s * 0.97))
tcfg = tcfg.replace(
    max_steps=a.steps,
    warmup_steps=min(tcfg.warmup_steps, a.steps // 10 or 1)
    if "warmup_steps" not in json.loads(a.train)
    else tcfg.warmup_steps,
)
model, tr = build_trainer(mcfg, tcfg, corpus.train, dev)
t0 = time.perf_counter()
r = tr.fit()
wall = time.perf_counter() - t0
m = eval_metrics(model, corpus.val, 64, tr.precision, validation_stats())
out = {
    "name": a.name,
    "model": json.loads(a.model),
    "train": json.loads(a.train),
    "base": a.base,
    "steps": a.steps,
    "tokens": r.tokens_seen,
    "epochs": round(r.tokens_seen / len(corpus.train), 2),
    "wall_s": round(wall),
    "threads": a.threads,
    "step_s": a.step_s,
    "final_train": r.history[-1]["loss"],
    **{k: m[k] for k in ("val_loss_nats_per_token", "word_ppl", "bits_per_byte")},
    "machine": machine_facts(dev),
}
print(json.dumps(out), flush=True)
with open(a.out, "a") as f:
    f.write(json.dumps(out) + "\n")
