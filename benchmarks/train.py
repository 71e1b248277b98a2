"""Benchmark the training loop: step throughput and MFU, and the ladder at a fixed time budget.

    export WIKIGPT_DATA_DIR=../shared/data/wikitext-2
    export TIKTOKEN_CACHE_DIR=../shared/data/tiktoken-cache
    python benchmarks/train.py --only throughput           # tokens/s and MFU of the CPU presets
    python benchmarks/train.py --only quality --jobs 2 --repeats 2   # the ladder (~2 h on 2 cores)
    python benchmarks/train.py --only quality --rows "+ Muon" --jobs 2   # (re)run some rows
    python benchmarks/train.py --only throughput --device cuda   # GPU presets: train_cuda.json
    python benchmarks/train.py --budget-s 20 --out /tmp/train.json   # a quick smoke test

Measures
1. throughput: `Trainer.train_step` (forward, backward, gradient clipping, optimizer step, as
   the library trains) on WikiText-2 train, for the training presets (`cpu-quick`, `cpu`; the
   GPU presets with --device cuda), as they ship and with torch.compile, in tokens/s, and
   MFU = tokens/s x `estimate_flops_per_token()` / peak. The CPU peak is the best
   square-matmul rate measured in this run (benchmarks/model.py's method); a GPU's peak is
   its datasheet dense bf16/fp16 rate (PEAK_FLOPS) or, for a GPU not in that table, the
   measured rate. (Muon's Newton-Schulz matmuls are not in the model's FLOPs: they lower MFU.)
2. the ladder (`LADDER`): the old `cpu` preset, then one change at a time added on top of the
   rows above (schedule, shape and epochs, Muon, width), each trained for --budget-s seconds
   of this machine, beside a baseline that a user might pick instead: the same library with
   GPT-2's tokenizer and the small model nanoGPT's README suggests for a CPU
   (NANOGPT_README). The step time of every row is measured first (all threads, one row at a
   time), which fixes max_steps = floor(budget / step time x SAFETY); then each row trains
   from a fresh seeded model with `Trainer.fit` and no validation data, and is evaluated on
   the whole wikitext-2-v1 validation split with non-overlapping windows of its block size:
   loss (nats/token), word-level perplexity (normalised by `count_words`) and bits per byte.
   Only the last two compare across tokenizers. --repeats N trains the last row and the
   baseline with N seeds, to show the spread.

Other processes may share the CPU: the load average is recorded before and after each part.
Seeds are fixed (TrainConfig.seed), so two runs see the same batches and initial weights.
--only writes one part and keeps the other part of an existing --out file; a quality run
keeps the rows of an earlier run at the same budget that it does not run again.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_facts, machine_line  # noqa: E402
from benchmarks.model import Bench, load_avg  # noqa: E402
from wikigpt_lib.data import count_words, load_wikitext2, tokenize_split  # noqa: E402
from wikigpt_lib.device import Precision, seed_everything  # noqa: E402
from wikigpt_lib.metrics import evaluate_loss  # noqa: E402
from wikigpt_lib.model import GPT, GPTConfig  # noqa: E402
from wikigpt_lib.tokenizer import get_tokenizer  # noqa: E402
from wikigpt_lib.train import TrainConfig, Trainer, train_preset  # noqa: E402

CPU_PRESETS = ("cpu-quick", "cpu")
GPU_PRESETS = ("t4", "a100", "h100")
# Dense (no sparsity) tensor-core peak in the precision the library picks there: bf16 on
# Ampere and newer, fp16 on the T4. First match of the substring in the device name wins.
PEAK_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # SXM
    ("H200", 989e12),
    ("A100", 312e12),
    ("T4", 65e12),
)
NANOGPT_README = (
    "https://github.com/karpathy/nanoGPT (README, 'I only have a macbook': "
    "config/train_shakespeare_char.py with --device=cpu --block_size=64 --batch_size=12 "
    "--n_layer=4 --n_head=4 --n_embd=128 --dropout=0.0; bias, weight_decay and grad_clip, which "
    "it leaves alone, at nanoGPT train.py's defaults)"
)
# The README's CPU command on top of config/train_shakespeare_char.py (lr 1e-3, min_lr 1e-4,
# beta2 0.99, warmup 100) and train.py's defaults (weight decay 0.1, clip 1.0, bias False).
NANOGPT_MODEL = dict(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False)
NANOGPT_TRAIN = dict(
    batch_size=12,
    grad_accum_steps=1,
    lr=1e-3,
    min_lr=1e-4,
    warmup_steps=100,
    beta1=0.9,
    beta2=0.99,
    weight_decay=0.1,
    grad_clip=1.0,
)
NANOGPT = "nanoGPT-style CPU defaults"


@dataclass(frozen=True)
class LadderRow:
    """One configuration: a model and training settings, in full."""

    name: str
    change: str  # what this row adds to the one before, in a few words
    model: dict
    train: dict
    tokenizer: str = "wikitext2"

    def configs(self, seed: int | None = None) -> tuple[GPTConfig, TrainConfig]:
        vocab = get_tokenizer(self.tokenizer).n_vocab
        model = GPTConfig(**{"vocab_size": vocab, **self.model})
        train = TrainConfig(**{**self.train, **({} if seed is None else {"seed": seed})})
        return model, train


def ladder(steps: list[tuple[str, str, dict, dict]]) -> list[LadderRow]:
    """Rows that each add their changes to everything the rows above them changed."""
    rows, model, train = [], {}, {}
    for name, change, model_changes, train_changes in steps:
        model, train = {**model, **model_changes}, {**train, **train_changes}
        rows.append(LadderRow(name, change, dict(model), dict(train)))
    return rows


# The `cpu` preset of 2026-11-26 (benchmarks/results/train_cpu.md of that date), in full, so
# the ladder starts from it whatever the preset is now.
OLD_CPU_MODEL = dict(block_size=128, n_layer=4, n_head=4, n_embd=256, dropout=0.0, bias=False)
OLD_CPU_TRAIN = dict(
    batch_size=16, grad_accum_steps=1, lr=2e-3, min_lr=2e-4, warmup_steps=50, weight_decay=0.1,
    beta1=0.9, beta2=0.95, grad_clip=1.0, schedule="cosine", optimizer="adamw",
    sampling="random", seed=1337,
)  # fmt: skip
LADDER = ladder(
    [
        ("old cpu preset", "the preset of 2026-11-26", OLD_CPU_MODEL, OLD_CPU_TRAIN),
        (
            "+ schedule",
            "peak lr 3e-3, linear decay to 0 (was cosine to a tenth)",
            {},
            {"lr": 3e-3, "min_lr": 0.0, "schedule": "linear"},
        ),
        (
            "+ shape, epochs",
            "width 192, 3 heads: 1.45x the tokens/s; each window once per epoch",
            {"n_embd": 192, "n_head": 3},
            {"sampling": "epoch"},
        ),
        (
            "+ Muon",
            "Muon (lr 0.02) for the blocks' matrices, AdamW for the rest",
            {},
            {"optimizer": "muon", "muon_lr": 0.02},
        ),
        (
            "+ width 128",
            "width 128, 2 heads: 1.4x the tokens/s again, 1.7 epochs (the cpu preset)",
            {"n_embd": 128, "n_head": 2},
            {},
        ),
    ]
)
BASELINE = LadderRow(
    NANOGPT,
    "what a user might pick instead: GPT-2's tokenizer and nanoGPT's small CPU settings",
    NANOGPT_MODEL,
    {**OLD_CPU_TRAIN, **NANOGPT_TRAIN},
    tokenizer="gpt2",
)
WARMUP_STEPS = 2
SAFETY = 0.97  # max_steps = floor(budget / step time x SAFETY)


@dataclass
class Corpus:
    """One tokenizer's view of WikiText-2: train and validation token ids."""

    tokenizer: str
    vocab_size: int
    train: np.ndarray
    val: np.ndarray


def load_corpus(tokenizer: str) -> Corpus:
    enc = get_tokenizer(tokenizer)
    ds = load_wikitext2("tokens")
    return Corpus(
        tokenizer,
        enc.n_vocab,
        tokenize_split(ds["train"], enc),
        tokenize_split(ds["validation"], enc),
    )


def validation_stats() -> dict:
    """Words (as word-level perplexity counts them) and UTF-8 bytes of the validation split."""
    rows = load_wikitext2("tokens")["validation"][:]["text"]
    return {"rows": len(rows), "words": count_words(rows), "bytes": len("".join(rows).encode())}


# ----------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_trainer(
    model_cfg: GPTConfig, train_cfg: TrainConfig, data: np.ndarray, device: torch.device
) -> tuple[GPT, Trainer]:
    """A freshly seeded model and its Trainer (no run folder, no validation data)."""
    seed_everything(train_cfg.seed)
    model = GPT(model_cfg)
    trainer = Trainer(model, data, None, train_cfg.replace(device=str(device), progress=False))
    return model, trainer


def time_steps(trainer: Trainer, device: torch.device, steps: int) -> list[float]:
    """Seconds of each of `steps` training steps, after WARMUP_STEPS untimed ones."""
    for _ in range(WARMUP_STEPS):
        trainer.train_step()
    times = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        trainer.train_step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


# ----------------------------------------------------------------------------- throughput


def gpu_peak(device: torch.device, bench: Bench) -> tuple[float, str]:
    """Datasheet peak of this GPU, or the measured matmul rate if it is not in PEAK_FLOPS."""
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_FLOPS:
        if key in name:
            return peak, f"datasheet dense peak for {key} (PEAK_FLOPS)"
    rates = bench.matmul_rate((4096, 8192))
    return max(rates.values()), "measured: best bf16 square matmul (not in PEAK_FLOPS)"


def throughput_row(
    name: str, corpus: Corpus, device: torch.device, steps: int, seed: int | None, **changes
) -> dict:
    model_cfg, train_cfg = train_preset(name, **changes)
    train_cfg = train_cfg.replace(seed=seed) if seed is not None else train_cfg
    model, trainer = build_trainer(model_cfg, train_cfg, corpus.train, device)
    times = time_steps(trainer, device, steps)
    tokens = trainer.tokens_per_step
    step_s = statistics.median(times)
    row = {
        "model": model_cfg.to_dict(),
        "train": {k: v for k, v in train_cfg.to_dict().items() if k not in ("device",)},
        "precision": trainer.precision.name,
        "params": model.num_params(),
        "tokens_per_step": tokens,
        "timed_steps": steps,
        "step_s_median": round(step_s, 5),
        "step_s_min": round(min(times), 5),
        "step_s_mean": round(statistics.fmean(times), 5),
        "tokens_per_s": round(tokens / step_s, 1),
        "flops_per_token": model.estimate_flops_per_token(),
    }
    del trainer, model
    return row


def run_throughput(args: argparse.Namespace, device: torch.device) -> dict:
    cuda = device.type == "cuda"
    bench = Bench(device, quick=True)
    log = {"load_avg_start": load_avg()}
    corpus = load_corpus("wikitext2")
    if not cuda:
        bench.matmul_rate((1024, 2048, 4096))
    presets = args.presets or (GPU_PRESETS if cuda else CPU_PRESETS)
    rows = {}
    # Each preset as it ships, and with torch.compile (fuses the elementwise work).
    variants = {"": {}, " + compile": {"compile": True}}
    for name in presets:
        for suffix, changes in variants.items():
            key = name + suffix
            rows[key] = throughput_row(name, corpus, device, args.steps, args.seed, **changes)
            print(f"  {key}: {describe_speed(rows[key])}", flush=True)
            if not cuda:
                bench.recheck_peak()  # the load may change: the best of all is the peak
    if cuda:
        peak, source = gpu_peak(device, bench)
    else:
        peak, source = max(bench.peaks), "measured: best fp32 square matmul of this run"
    for row in rows.values():
        add_mfu(row, peak)
    log["load_avg_end"] = load_avg()
    return {
        "date": today(),
        "device": device.type,
        "machine": machine_facts(device),
        "peak_gflops": round(peak / 1e9, 1),
        "peak_source": source,
        "method": (
            f"Trainer.train_step on WikiText-2 train (course tokenizer), {WARMUP_STEPS} "
            f"untimed warm-up steps then {args.steps} timed steps; tokens/s from the median "
            "step; MFU = tokens/s x estimate_flops_per_token() / peak. The library's own "
            "allocator settings (benchmarks/model.py tunes glibc's; this does not)."
        ),
        "run_log": log,
        "presets": rows,
    }


def add_mfu(row: dict, peak: float) -> None:
    achieved = row["tokens_per_s"] * row["flops_per_token"]
    row["achieved_gflops"] = round(achieved / 1e9, 2)
    row["mfu"] = round(achieved / peak, 4)


def describe_speed(row: dict) -> str:
    return (
        f"{row['params'] / 1e6:.2f}M params, {row['tokens_per_step']} tokens/step, "
        f"{row['step_s_median'] * 1e3:.0f} ms/step, {row['tokens_per_s']:.0f} tok/s"
    )


# ----------------------------------------------------------------------------- quality


def plan_steps(
    model_cfg: GPTConfig,
    train_cfg: TrainConfig,
    data: np.ndarray,
    device: torch.device,
    budget_s: float,
) -> tuple[int, float]:
    """max_steps that fill `budget_s` at the step time of 10 timed steps, and that time."""
    _, trainer = build_trainer(model_cfg, train_cfg, data, device)
    step_s = statistics.fmean(time_steps(trainer, device, 10))
    return max(1, math.floor(budget_s / step_s * SAFETY)), step_s


def train_for(trainer: Trainer, device: torch.device) -> tuple[float, list[list]]:
    """`Trainer.fit` to max_steps (no val_data: nothing is evaluated); its wall seconds and
    a curve of about 50 [step, train loss] points."""
    sync(device)
    t0 = time.perf_counter()
    result = trainer.fit()
    sync(device)
    wall_s = time.perf_counter() - t0
    if result.stopped != "max_steps":
        raise RuntimeError(f"training stopped early ({result.stopped}) at step {result.steps}")
    points = [[r["step"], round(r["loss"], 4)] for r in result.history if r["split"] == "train"]
    every = max(1, len(points) // 50)
    return wall_s, points[every - 1 :: every] + ([points[-1]] if len(points) % every else [])


def eval_metrics(
    model: GPT, val: np.ndarray, batch_size: int, precision: Precision, stats: dict
) -> dict:
    """Loss over the whole validation split, in per-token, per-word and per-byte units.

    Non-overlapping windows of block_size cover windows x T predicted tokens; the others
    (the first token and the < T + 1 after the last whole window) are counted at the mean
    loss, so total_nats is for every token of the split.
    """
    T = model.config.block_size
    t0 = time.perf_counter()
    loss = evaluate_loss(model, val, T, batch_size, max_batches=None, precision=precision)
    eval_s = time.perf_counter() - t0
    predicted = (len(val) - 1) // T * T
    total_nats = loss * len(val)
    return {
        "val_loss_nats_per_token": round(loss, 5),
        "token_ppl": round(math.exp(loss), 3),
        "word_ppl": round(math.exp(total_nats / stats["words"]), 3),
        "bits_per_byte": round(total_nats / math.log(2) / stats["bytes"], 5),
        "val_tokens": len(val),
        "predicted_tokens": predicted,
        "uncovered_tokens": len(val) - predicted,
        "total_nats": round(total_nats, 1),
        "eval_s": round(eval_s, 1),
    }


def quality_run(
    name: str,
    row: LadderRow,
    device: torch.device,
    budget_s: float,
    stats: dict,
    seed: int | None = None,
    step_s: float | None = None,
) -> dict:
    """Train one ladder row for the budget and evaluate it on the whole validation split.

    step_s: a step time measured beforehand (see `measure_rows`); without it the step is
    timed here. max_steps = floor(budget / step time x SAFETY).
    """
    model_cfg, train_cfg = row.configs(seed)
    corpus = load_corpus(row.tokenizer)
    if step_s is None:
        steps, step_s = plan_steps(model_cfg, train_cfg, corpus.train, device, budget_s)
    else:
        steps = max(1, math.floor(budget_s / step_s * SAFETY))
    train_cfg = train_cfg.replace(max_steps=steps)
    print(f"  {name}: {step_s * 1e3:.0f} ms/step -> max_steps {steps}", flush=True)
    model, trainer = build_trainer(model_cfg, train_cfg, corpus.train, device)
    wall_s, curve = train_for(trainer, device)
    tokens = trainer.tokens_seen
    result = {
        "row": row.name,
        "change": row.change,
        "seed": train_cfg.seed,
        "tokenizer": row.tokenizer,
        "model": model_cfg.to_dict(),
        "train": {k: v for k, v in train_cfg.to_dict().items() if k not in ("device",)},
        "params": model.num_params(),
        "flops_per_token": model.estimate_flops_per_token(),
        "probe_step_s": round(step_s, 4),
        "budget_tokens_per_s": round(trainer.tokens_per_step / step_s, 1),
        "train_threads": torch.get_num_threads(),
        "precision": trainer.precision.name,
        "steps": trainer.step,
        "tokens_seen": tokens,
        "epochs": round(tokens / len(corpus.train), 3),
        "wall_s": round(wall_s, 1),
        "train_step_s_total": round(trainer.elapsed_s, 1),
        "tokens_per_s": round(tokens / wall_s, 1),
        "final_train_loss": curve[-1][1],
        "train_curve": curve,
    }
    result |= eval_metrics(model, corpus.val, 64, trainer.precision, stats)
    print(f"  {name}: {describe_quality(result)}", flush=True)
    return result


def describe_quality(row: dict) -> str:
    return (
        f"{row['steps']} steps in {row['wall_s']:.0f} s, {row['tokens_seen']:,} tokens; val "
        f"loss {row['val_loss_nats_per_token']:.3f}, word ppl {row['word_ppl']:.1f}, "
        f"{row['bits_per_byte']:.3f} bits/byte"
    )


def settings(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items())


def ladder_rows() -> dict[str, LadderRow]:
    return {row.name: row for row in [*LADDER, BASELINE]}


def measure_rows(names: list[str], device: torch.device) -> dict[str, float]:
    """Median time of 10 training steps (after WARMUP_STEPS) for each row, one row at a time
    with every thread: what a budget buys on this machine, measured before any training."""
    rows, times = ladder_rows(), {}
    for name in names:
        model_cfg, train_cfg = rows[name].configs()
        corpus = load_corpus(rows[name].tokenizer)
        _, trainer = build_trainer(model_cfg, train_cfg, corpus.train, device)
        times[name] = statistics.median(time_steps(trainer, device, 10))
        print(f"  {name}: {times[name] * 1e3:.0f} ms/step", flush=True)
    return times


def run_key(name: str, seed: int) -> str:
    return f"{name} (seed {seed})"


def run_jobs(jobs: list[tuple[str, int]], step_s: dict, args, stats: dict) -> dict[str, dict]:
    """Train and evaluate every (row, seed); with --jobs N, N at a time in subprocesses of one
    thread each (quality depends on the steps, which the measured step time fixes)."""
    rows, device = ladder_rows(), torch.device(args.device)
    if args.jobs == 1:
        return {
            run_key(n, s): quality_run(n, rows[n], device, args.budget_s, stats, s, step_s[n])
            for n, s in jobs
        }
    tmp = Path(tempfile.mkdtemp(prefix="ladder-"))
    pending, running, done = list(jobs), [], {}
    while pending or running:
        while pending and len(running) < args.jobs:
            name, seed = pending.pop(0)
            out = tmp / f"{len(pending)}.json"
            cmd = [sys.executable, __file__, "--train-row", name, "--seed", str(seed),
                   "--step-s", str(step_s[name]), "--budget-s", str(args.budget_s),
                   "--threads", "1", "--row-out", str(out)]  # fmt: skip
            running.append((name, seed, out, subprocess.Popen(cmd)))
        time.sleep(2)
        for job in [j for j in running if j[3].poll() is not None]:
            running.remove(job)
            name, seed, out, proc = job
            if proc.returncode != 0:
                raise RuntimeError(f"{name} (seed {seed}) failed with exit code {proc.returncode}")
            done[run_key(name, seed)] = json.loads(out.read_text())
    return {run_key(n, s): done[run_key(n, s)] for n, s in jobs}


def run_quality(args: argparse.Namespace, device: torch.device, previous: dict) -> dict:
    """The ladder and the baseline at the budget; --repeats more seeds for the last row and
    the baseline. Runs already in `previous` (same budget) are kept unless --rows names them."""
    log = {"load_avg_start": load_avg()}
    stats = validation_stats()
    names = args.rows or [row.name for row in LADDER] + [NANOGPT]
    seeds = args.seeds or [OLD_CPU_TRAIN["seed"] + i for i in range(args.repeats)]
    repeated = {LADDER[-1].name, NANOGPT}
    jobs = [(n, s) for n in names for s in (seeds if n in repeated or args.seeds else seeds[:1])]
    print("step times (all threads, one row at a time)", flush=True)
    step_s = measure_rows(names, device)
    runs = dict(previous.get("runs", {})) if previous.get("budget_s") == args.budget_s else {}
    runs |= run_jobs(jobs, step_s, args, stats)
    log["load_avg_end"] = load_avg()
    order = [*ladder_rows()]
    runs = dict(sorted(runs.items(), key=lambda kv: (order.index(kv[1]["row"]), kv[1]["seed"])))
    return {
        "date": today(),
        "device": device.type,
        "machine": machine_facts(device),
        "budget_s": args.budget_s,
        "data": "wikitext-2-v1; trained on train, evaluated on the whole validation split",
        "validation": stats,
        "nanogpt_source": NANOGPT_README,
        "method": (
            f"each row's step time is the median of 10 timed Trainer.train_step calls (after "
            f"{WARMUP_STEPS} warm-up steps), measured one row at a time with all threads "
            f"before any training; max_steps = floor(budget / step time x {SAFETY}), so the "
            "schedule ends where the budget does on this machine. A fresh model (same seed) then "
            "trains with Trainer.fit(max_steps) and no validation data (nothing is evaluated "
            "inside the budget); with --jobs 2 two rows train at once on one thread each, "
            "which changes their wall time but not their steps. Evaluation: evaluate_loss over "
            "non-overlapping block_size windows of the whole validation split; total_nats = "
            "loss x all validation tokens (the few the windows miss counted at the mean); "
            "word_ppl = exp(total_nats / words); bits_per_byte = total_nats / ln 2 / UTF-8 bytes"
        ),
        "run_log": log,
        "rows": {row.name: {"change": row.change, "model": row.model, "train": row.train,
                            "tokenizer": row.tokenizer} for row in ladder_rows().values()},
        "runs": runs,
    }  # fmt: skip


# ----------------------------------------------------------------------------- output


def today() -> str:
    return datetime.date.today().isoformat()


def markdown(result: dict) -> str:
    lines = [f"# Training benchmark ({result['date']})", ""]
    lines.append("`python benchmarks/train.py`; every number is in the JSON file beside this one.")
    if "throughput" in result:
        lines += throughput_md(result["throughput"])
    if "quality" in result:
        lines += quality_md(result["quality"])
    return "\n".join(lines) + "\n"


def run_line(part: dict) -> str:
    """When and where a part ran, and the machine's load around it."""
    log = part["run_log"]
    load = [", ".join(f"{x:.2f}" for x in log[k] or []) for k in ("load_avg_start", "load_avg_end")]
    return (
        f"Run {part['date']} on {machine_line(part['machine'])}; "
        f"load average (1, 5, 15 min) {load[0]} at the start, {load[1]} at the end."
    )


def throughput_md(part: dict) -> list[str]:
    lines = [
        "",
        f"## Training-step throughput ({part['device']})",
        "",
        run_line(part),
        f"Peak: {part['peak_gflops']:,} GFLOP/s ({part['peak_source']}). {part['method']}",
        "",
        "| preset | params | precision | tokens/step | ms/step | tokens/s | GFLOP/s | MFU |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in part["presets"].items():
        lines.append(
            f"| {name} | {r['params'] / 1e6:.2f}M | {r['precision']} | {r['tokens_per_step']:,} "
            f"| {r['step_s_median'] * 1e3:.0f} | {r['tokens_per_s']:,.0f} "
            f"| {r['achieved_gflops']:.1f} | {r['mfu']:.1%} |"
        )
    return lines


def spread(values: list[float], digits: int = 1) -> str:
    """Mean (min-max) of repeated measurements."""
    f = f".{digits}f"
    if len(values) == 1:
        return format(values[0], f)
    return f"{statistics.fmean(values):{f}} ({min(values):{f}}-{max(values):{f}})"


def quality_md(part: dict) -> list[str]:
    v, runs = part["validation"], part["runs"]
    lines = [
        "",
        f"## The ladder: quality after {part['budget_s']:.0f} s of training ({part['device']})",
        "",
        run_line(part),
        f"Validation: {v['words']:,} words, {v['bytes']:,} bytes. Method: {part['method']}.",
        "",
        "Each row adds its change to every row above it (settings in full in the JSON file). "
        f"The baseline, {NANOGPT}: {part['nanogpt_source']}.",
        "",
        "| row | change | params | tokens/s | steps | tokens seen | epochs | val loss "
        "(nats/token) | word ppl | bits/byte |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    first = {}
    for r in runs.values():
        first.setdefault(r["row"], r)
    for name, r in first.items():
        lines.append(
            f"| {name} | {r['change']} | {r['params'] / 1e6:.2f}M "
            f"| {r['budget_tokens_per_s']:,.0f} | {r['steps']:,} | {r['tokens_seen']:,} "
            f"| {r['epochs']:.2f} | {r['val_loss_nats_per_token']:.3f} | {r['word_ppl']:.1f} "
            f"| {r['bits_per_byte']:.3f} |"
        )
    by_row: dict[str, list[dict]] = {}
    for r in runs.values():
        by_row.setdefault(r["row"], []).append(r)
    repeated = {n: rs for n, rs in by_row.items() if len(rs) > 1}
    if repeated:
        lines += [
            "",
            "Repeats: mean (min-max). Seeds change the initial weights and the batches, and each "
            "invocation measures its own step times, so the steps a budget buys vary too (see "
            "`steps` per run in the JSON file).",
            "",
            "| row | seeds | word ppl | bits/byte |",
            "| --- | --- | ---: | ---: |",
        ]
        for name, rs in repeated.items():
            lines.append(
                f"| {name} | {', '.join(str(r['seed']) for r in rs)} "
                f"| {spread([r['word_ppl'] for r in rs])} "
                f"| {spread([r['bits_per_byte'] for r in rs], 3)} |"
            )
    if NANOGPT in by_row and by_row.keys() - {NANOGPT}:
        last = [n for n in by_row if n != NANOGPT][-1]
        ours = statistics.fmean(r["word_ppl"] for r in by_row[last])
        base = statistics.fmean(r["word_ppl"] for r in by_row[NANOGPT])
        lines += [
            "",
            f"{last}: word perplexity {ours:.1f}, {ours / base:.2f}x the baseline's {base:.1f} "
            "(means over the seeds run). Token perplexity does not compare across tokenizers; "
            "word perplexity and bits per byte do.",
        ]
    return lines


def write(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    path.with_suffix(".md").write_text(markdown(result))
    print(f"wrote {path} and {path.with_suffix('.md').name}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--only", choices=["throughput", "quality"], default=None)
    parser.add_argument("--budget-s", type=float, default=600.0, help="training seconds each")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per preset")
    parser.add_argument("--presets", nargs="+", default=None, help="throughput presets")
    parser.add_argument("--seed", type=int, default=None, help="override the presets' seed")
    parser.add_argument("--rows", nargs="+", default=None, help="ladder rows to (re)run")
    parser.add_argument("--repeats", type=int, default=1, help="seeds for the last row, baseline")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="run --rows with these")
    parser.add_argument("--jobs", type=int, default=1, help="rows trained at once (1 thread each)")
    parser.add_argument("--out", type=Path, default=None, help="JSON path (.md written beside)")
    # One row in a subprocess of --jobs N:
    parser.add_argument("--train-row", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--step-s", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--row-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: PyTorch sees no CUDA GPU here.")
    unknown = set(args.rows or []) - set(ladder_rows())
    if unknown:
        parser.error(f"unknown --rows {sorted(unknown)}; the rows are {list(ladder_rows())}.")
    args.out = args.out or ROOT / "benchmarks" / "results" / f"train_{args.device}.json"
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.train_row:  # a subprocess of run_jobs
        row = ladder_rows()[args.train_row]
        r = quality_run(
            args.train_row, row, device, args.budget_s, validation_stats(), args.seed, args.step_s
        )
        args.row_out.write_text(json.dumps(r))
        return
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    if args.only in (None, "throughput"):
        print("throughput", flush=True)
        result["throughput"] = run_throughput(args, device)
    if args.only in (None, "quality"):
        print(f"quality at a {args.budget_s:.0f} s budget", flush=True)
        result["quality"] = run_quality(args, device, result.get("quality", {}))
    result["date"] = today()
    write(result, args.out)


if __name__ == "__main__":
    main()
