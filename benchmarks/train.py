"""Benchmark the training loop: step throughput and MFU, and quality at a fixed time budget.

    export WIKIGPT_DATA_DIR=../shared/data/wikitext-2
    export TIKTOKEN_CACHE_DIR=../shared/data/tiktoken-cache
    python benchmarks/train.py              # both parts, ~25 min on 2 cores: train_cpu.json + .md
    python benchmarks/train.py --only throughput --device cuda   # GPU presets: train_cuda.json
    python benchmarks/train.py --budget-s 20 --out /tmp/train.json   # a quick smoke test

Measures
1. throughput: `Trainer.train_step` (forward, backward, gradient clipping, AdamW step, as the
   library trains) on WikiText-2 train, for the training presets (`cpu-quick`, `cpu`; the GPU
   presets with --device cuda), in tokens/s, and MFU = tokens/s x `estimate_flops_per_token()`
   / peak. The CPU peak is the best square-matmul rate measured in this run (benchmarks/model.py's
   method); a GPU's peak is its datasheet dense bf16/fp16 rate (PEAK_FLOPS) or, for a GPU not
   in that table, the measured rate.
2. quality at a fixed budget: the course's `cpu` preset against what a user might pick
   instead, the same library with GPT-2's tokenizer and nanoGPT-style CPU defaults (the small
   model that nanoGPT's README suggests for a CPU run, NANOGPT_README). Each trains for
   --budget-s seconds of wall clock: ~10 timed steps (after 2 warm-up steps) give the step
   time, max_steps = floor(budget / step time x 0.97) so the cosine schedule ends at the
   budget, then a fresh, identically seeded model trains with `Trainer.fit` to max_steps
   (no validation data, so nothing is evaluated inside the budget).
   Both are then evaluated on the whole wikitext-2-v1 validation split with non-overlapping
   windows of their block size: loss (nats/token), token perplexity, word-level perplexity
   (normalised by `count_words`) and bits per byte. Only the last two compare across
   tokenizers; the `winner` field is computed from them.

Other processes may share the CPU: the load average is recorded before and after each part.
Seeds are fixed (TrainConfig.seed), so two runs see the same batches and initial weights.
--only writes one part and keeps the other part of an existing --out file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.model import Bench, load_avg, machine  # noqa: E402
from wikigpt_lib.data import count_words, load_wikitext2, tokenize_split  # noqa: E402
from wikigpt_lib.device import Precision, seed_everything  # noqa: E402
from wikigpt_lib.model import GPT, GPTConfig  # noqa: E402
from wikigpt_lib.tokenizer import get_tokenizer  # noqa: E402
from wikigpt_lib.train import (  # noqa: E402
    TrainConfig,
    Trainer,
    evaluate_loss,
    train_preset,
)

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
COURSE, NANOGPT = "course cpu preset", "nanoGPT-style CPU defaults"
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
    name: str, corpus: Corpus, device: torch.device, steps: int, seed: int | None
) -> dict:
    model_cfg, train_cfg = train_preset(name)
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
    for name in presets:
        rows[name] = throughput_row(name, corpus, device, args.steps, args.seed)
        print(f"  {name}: {describe_speed(rows[name])}", flush=True)
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
        "machine": machine(device),
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


def quality_configs(seed: int | None) -> dict[str, tuple[GPTConfig, TrainConfig, str]]:
    """name -> (model config, train config, tokenizer) for the two contenders."""
    course_model, course_train = train_preset("cpu")
    nano_model = GPTConfig(vocab_size=get_tokenizer("gpt2").n_vocab, **NANOGPT_MODEL)
    nano_train = course_train.replace(**NANOGPT_TRAIN)
    configs = {
        COURSE: (course_model, course_train, "wikitext2"),
        NANOGPT: (nano_model, nano_train, "gpt2"),
    }
    if seed is not None:
        configs = {k: (m, t.replace(seed=seed), tok) for k, (m, t, tok) in configs.items()}
    return configs


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
    configs: tuple[GPTConfig, TrainConfig, str],
    device: torch.device,
    budget_s: float,
    stats: dict,
) -> dict:
    model_cfg, train_cfg, tokenizer = configs
    corpus = load_corpus(tokenizer)
    steps, probe_s = plan_steps(model_cfg, train_cfg, corpus.train, device, budget_s)
    train_cfg = train_cfg.replace(max_steps=steps)
    print(f"  {name}: {probe_s * 1e3:.0f} ms/step -> max_steps {steps}", flush=True)
    model, trainer = build_trainer(model_cfg, train_cfg, corpus.train, device)
    wall_s, curve = train_for(trainer, device)
    tokens = trainer.tokens_seen
    row = {
        "tokenizer": tokenizer,
        "model": model_cfg.to_dict(),
        "train": {k: v for k, v in train_cfg.to_dict().items() if k not in ("device",)},
        "params": model.num_params(),
        "flops_per_token": model.estimate_flops_per_token(),
        "probe_step_s": round(probe_s, 4),
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
    row |= eval_metrics(model, corpus.val, train_cfg.batch_size, trainer.precision, stats)
    print(f"  {name}: {describe_quality(row)}", flush=True)
    return row


def describe_quality(row: dict) -> str:
    return (
        f"{row['steps']} steps in {row['wall_s']:.0f} s, {row['tokens_seen']:,} tokens; val "
        f"loss {row['val_loss_nats_per_token']:.3f}, word ppl {row['word_ppl']:.1f}, "
        f"{row['bits_per_byte']:.3f} bits/byte"
    )


def course_settings() -> dict:
    model, train = train_preset("cpu")
    keys = [*NANOGPT_MODEL, *NANOGPT_TRAIN]
    return {k: v for k, v in {**model.to_dict(), **train.to_dict()}.items() if k in keys}


def settings(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items())


def pick_winner(runs: dict[str, dict]) -> dict:
    """Lower word-level perplexity and bits per byte win (both tokenizer-independent)."""
    by = {m: min(runs, key=lambda n, m=m: runs[n][m]) for m in ("word_ppl", "bits_per_byte")}
    overall = by["word_ppl"] if by["word_ppl"] == by["bits_per_byte"] else "split"
    return {
        "overall": overall,
        "by_word_ppl": by["word_ppl"],
        "by_bits_per_byte": by["bits_per_byte"],
    }


def run_quality(args: argparse.Namespace, device: torch.device) -> dict:
    log = {"load_avg_start": load_avg()}
    stats = validation_stats()
    runs = {
        name: quality_run(name, cfg, device, args.budget_s, stats)
        for name, cfg in quality_configs(args.seed).items()
    }
    log["load_avg_end"] = load_avg()
    winner = pick_winner(runs)
    print(f"  winner: {winner}", flush=True)
    return {
        "date": today(),
        "device": device.type,
        "machine": machine(device),
        "budget_s": args.budget_s,
        "data": "wikitext-2-v1; trained on train, evaluated on the whole validation split",
        "validation": stats,
        "nanogpt_source": NANOGPT_README,
        "nanogpt_settings": {**NANOGPT_MODEL, **NANOGPT_TRAIN},
        "course_settings": course_settings(),
        "method": (
            f"{WARMUP_STEPS} warm-up + 10 timed Trainer.train_step calls give the "
            f"step time; max_steps = floor(budget / step time x {SAFETY}) so the cosine "
            "schedule ends at the budget; a fresh model (same seed) then trains with "
            "Trainer.fit(max_steps) and no validation data, so no evaluation inside the budget "
            "(wall_s is the fit call). Evaluation: "
            "evaluate_loss(max_batches=None) over non-overlapping block_size windows; "
            "total_nats = loss x all validation tokens (the few the windows miss counted at "
            "the mean); word_ppl = exp(total_nats / words); bits_per_byte = total_nats / ln 2 "
            "/ UTF-8 bytes of the split"
        ),
        "run_log": log,
        "runs": runs,
        "winner": winner,
    }


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


def machine_line(part: dict) -> str:
    m, log = part["machine"], part["run_log"]
    where = m.get("gpu") or f"{m['cpu_model']}, {m['cpu_cores']} cores"
    load = [", ".join(f"{x:.2f}" for x in log[k] or []) for k in ("load_avg_start", "load_avg_end")]
    return (
        f"Run {part['date']} on {where}; torch {m['torch']}, {m['torch_threads']} threads; "
        f"load average (1, 5, 15 min) {load[0]} at the start, {load[1]} at the end."
    )


def throughput_md(part: dict) -> list[str]:
    lines = [
        "",
        f"## Training-step throughput ({part['device']})",
        "",
        machine_line(part),
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


def quality_md(part: dict) -> list[str]:
    v, w = part["validation"], part["winner"]
    lines = [
        "",
        f"## Quality after {part['budget_s']:.0f} s of training ({part['device']})",
        "",
        machine_line(part),
        f"Validation: {v['words']:,} words, {v['bytes']:,} bytes. Method, per config: "
        f"{part['method']}.",
        "",
        f"nanoGPT-style CPU defaults: the settings of {part['nanogpt_source']}: "
        f"{settings(part.get('nanogpt_settings', {}))}. The README's max_iters/lr_decay_iters are "
        "replaced by the budget's max_steps. Course cpu preset: "
        f"{settings(part.get('course_settings', {}))}.",
        "",
        "| config | tokenizer | params | block | steps | tokens seen | wall s | val loss "
        "(nats/token) | token ppl | word ppl | bits/byte |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in part["runs"].items():
        lines.append(
            f"| {name} | {r['tokenizer']} | {r['params'] / 1e6:.2f}M | {r['model']['block_size']} "
            f"| {r['steps']:,} | {r['tokens_seen']:,} | {r['wall_s']:.0f} "
            f"| {r['val_loss_nats_per_token']:.3f} | {r['token_ppl']:.1f} | {r['word_ppl']:.1f} "
            f"| {r['bits_per_byte']:.3f} |"
        )
    lines += [
        "",
        f"Winner: **{w['overall']}** (word-level perplexity: {w['by_word_ppl']}; bits per byte: "
        f"{w['by_bits_per_byte']}). Token perplexity does not compare across tokenizers. Each "
        "model is evaluated with windows of its own block size, so a shorter block also means "
        "less context per prediction. Tokens the windows miss, counted at the mean loss: "
        + ", ".join(
            f"{n}: {r['uncovered_tokens']} of {r['val_tokens']:,}" for n, r in part["runs"].items()
        )
        + ".",
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
    parser.add_argument("--out", type=Path, default=None, help="JSON path (.md written beside)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: PyTorch sees no CUDA GPU here.")
    args.out = args.out or ROOT / "benchmarks" / "results" / f"train_{args.device}.json"
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    result = json.loads(args.out.read_text()) if args.only and args.out.exists() else {}
    if args.only in (None, "throughput"):
        print("throughput", flush=True)
        result["throughput"] = run_throughput(args, device)
    if args.only in (None, "quality"):
        print(f"quality at a {args.budget_s:.0f} s budget", flush=True)
        result["quality"] = run_quality(args, device)
    result["date"] = today()
    write(result, args.out)


if __name__ == "__main__":
    main()
