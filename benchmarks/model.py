"""Benchmark the GPT model's training step: throughput and model-FLOPs utilisation (MFU).

    python benchmarks/model.py                  # CPU, writes benchmarks/results/model_cpu.json
    python benchmarks/model.py --device cuda    # GPU, bf16 autocast, writes model_cuda.json

Measures
- the machine's matmul rate (square torch.matmul, fp32 on CPU / bf16 on CUDA; best of
  several runs, re-measured between sections, the best of all is the "peak");
- forward + backward + AdamW step time of the `tiny`, `cpu` and `gpu` presets, in tokens/s,
  and MFU = tokens/s x `estimate_flops_per_token()` / peak;
- a sweep of shapes for the `cpu` preset (what a ~15 minute run sees of WikiText-2);
- variations on the `cpu` preset: batch size, biases, allocator, attention path, oneDNN;
- a vocabulary sweep at d=128: what GPT-2's 50,257-token vocabulary costs a small model.

Other processes may share the CPU, so every number is the best of several short windows and
the load average is recorded; `--merge` keeps, row by row, the best of this run and the
results already in the output file (run it a few times when the machine is quiet). On CPU the script tunes glibc's allocator (see
`tune_cpu_allocator`) unless --default-allocator is given; the variations measure both.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_facts  # noqa: E402
from wikigpt_lib.model import GPT, GPTConfig  # noqa: E402

# Course-tokenizer tokens in wiki.train.tokens (whole file, encode_ordinary), measured on
# 2026-11-25; recomputed when WIKIGPT_DATA_DIR is set.
RECORDED_TRAIN_TOKENS = 2_579_463
RUN_MINUTES = 15


def load_avg() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def tune_cpu_allocator(tuned: bool) -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the OS.

    A training step allocates and frees the same large buffers (the (B, T, vocab) logits are
    134 MB at B*T=4096) every time. By default glibc serves each with a fresh mmap, and the
    kernel zero-fills every page on first touch: an elementwise op on such a tensor then
    takes ~5x longer than its arithmetic. M_MMAP_MAX=0 serves them from the heap and a large
    M_TRIM_THRESHOLD keeps the heap, so the pages stay mapped. Returns False where this is
    not glibc. `tuned=False` restores glibc's defaults (for the comparison).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    if tuned:
        return bool(libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, 2**31 - 1))
    return bool(libc.mallopt(m_mmap_max, 65536) and libc.mallopt(m_trim_threshold, 128 * 1024))


class Bench:
    def __init__(self, device: torch.device, quick: bool) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.dtype = torch.bfloat16 if self.cuda else torch.float32
        self.quick = quick
        self.peaks: list[float] = []  # FLOP/s of each matmul-rate measurement

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def matmul_rate(self, sizes: tuple[int, ...], repeats: int = 5) -> dict[int, float]:
        """Best FLOP/s of an n x n x n matmul, for each n."""
        rates = {}
        for n in sizes:
            a = torch.randn(n, n, device=self.device, dtype=self.dtype)
            b = torch.randn(n, n, device=self.device, dtype=self.dtype)
            out = torch.empty(n, n, device=self.device, dtype=self.dtype)
            torch.matmul(a, b, out=out)  # warm-up
            best = float("inf")
            for _ in range(repeats):
                self.sync()
                t0 = time.perf_counter()
                torch.matmul(a, b, out=out)
                self.sync()
                best = min(best, time.perf_counter() - t0)
            rates[n] = 2 * n**3 / best
        self.peaks.extend(rates.values())
        return rates

    def recheck_peak(self) -> None:
        self.matmul_rate((2048,) if not self.cuda else (8192,), repeats=3)

    def train_step(
        self,
        config: GPTConfig,
        batch: int,
        *,
        store_weights: bool = False,
        compile_model: bool = False,
        windows: int = 3,
        min_window_s: float = 0.5,
    ) -> dict:
        """Best-of-`windows` time of one forward+backward+AdamW step on random tokens."""
        torch.manual_seed(0)
        model = GPT(config).to(self.device).train()
        for block in model.transformer.h:
            block.attn.store_weights = store_weights
        fwd = torch.compile(model) if compile_model else model
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=self.cuda or None)
        T = config.block_size
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, config.vocab_size, (batch, T), generator=g).to(self.device)
        y = torch.randint(0, config.vocab_size, (batch, T), generator=g).to(self.device)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cuda)

        def step() -> tuple[float, float]:
            self.sync()
            t0 = time.perf_counter()
            with autocast:
                _, loss = fwd(x, y)
            loss.backward()
            self.sync()
            t1 = time.perf_counter()
            opt.step()
            opt.zero_grad(set_to_none=True)
            self.sync()
            return t1 - t0, time.perf_counter() - t1

        t_compile = time.perf_counter()
        for _ in range(2 if not self.quick else 1):
            step()  # warm-up (and compilation)
        t_compile = time.perf_counter() - t_compile
        best = None
        for _ in range(windows if not self.quick else 2):
            times = []
            while len(times) < 2 or sum(map(sum, times)) < min_window_s:
                times.append(step())
            mean = [sum(t[i] for t in times) / len(times) for i in (0, 1)]
            if best is None or sum(mean) < sum(best):
                best = mean
        step_s = sum(best)
        flops_per_token = model.estimate_flops_per_token()
        row = {
            "config": config.to_dict(),
            "batch": batch,
            "tokens_per_step": batch * T,
            "params": model.num_params(),
            "step_s": round(step_s, 5),
            "fwd_bwd_s": round(best[0], 5),
            "optimizer_s": round(best[1], 5),
            "tokens_per_s": round(batch * T / step_s, 1),
            "flops_per_token": flops_per_token,
        }
        if compile_model:
            row["warmup_incl_compile_s"] = round(t_compile, 1)
        return row


def add_mfu(row: dict, peak: float, train_tokens: int) -> dict:
    """Add the MFU against `peak` (FLOP/s) and what a 15-minute run would see."""
    achieved = row["tokens_per_s"] * row["flops_per_token"]
    row["achieved_gflops"] = round(achieved / 1e9, 2)
    row["mfu"] = round(achieved / peak, 4)
    row["tokens_in_15_min"] = int(row["tokens_per_s"] * RUN_MINUTES * 60)
    row["epochs_in_15_min"] = round(row["tokens_in_15_min"] / train_tokens, 3)
    return row


def rows(result: dict) -> list[dict]:
    return [
        *result["presets"].values(),
        *result.get("cpu_sweep", []),
        *result.get("cpu_variations", {}).values(),
        *result["vocab_sweep"],
    ]


def finish(result: dict) -> dict:
    """MFU of every row against the run's peak, and the vocabulary sweep's relative cost."""
    for row in rows(result):
        add_mfu(row, result["peak_gflops"] * 1e9, result["train_tokens"]["tokens"])
    v8192 = next(r for r in result["vocab_sweep"] if r["config"]["vocab_size"] == 8192)
    for row in result["vocab_sweep"]:
        row["step_time_vs_8192"] = round(row["step_s"] / v8192["step_s"], 2)
    return result


def merge(old: dict, new: dict) -> dict:
    """Best of two runs of the same benchmark: the faster time of each row, the higher peak."""

    def best(row: dict, earlier: dict | None) -> dict:
        same = earlier is not None and (earlier["config"], earlier["batch"]) == (
            row["config"],
            row["batch"],
        )
        return earlier if same and earlier["step_s"] < row["step_s"] else row

    def key(row: dict) -> str:
        return json.dumps([row["config"], row["batch"]], sort_keys=True)

    merged = dict(new)
    merged["runs"] = old["runs"] + new["runs"]
    merged["run_log"] = old["run_log"] + new["run_log"]
    merged["peak_gflops"] = max(old["peak_gflops"], new["peak_gflops"])
    merged["matmul_gflops"] = {
        n: max(r, old["matmul_gflops"].get(n, 0.0)) for n, r in new["matmul_gflops"].items()
    }
    for section in ("presets", "cpu_variations"):
        if section in new:
            earlier = old.get(section, {})
            newer = {k: best(v, earlier.get(k)) for k, v in new[section].items()}
            merged[section] = {**earlier, **newer}  # e.g. keep torch.compile from a --compile run
    for section in ("cpu_sweep", "vocab_sweep"):
        if section in new:
            earlier = {key(r): r for r in old.get(section, [])}
            merged[section] = [best(r, earlier.get(key(r))) for r in new[section]]
    return finish(merged)


def count_train_tokens() -> tuple[int, str]:
    data_dir = os.environ.get("WIKIGPT_DATA_DIR")
    if data_dir and (Path(data_dir) / "wiki.train.tokens").exists():
        from wikigpt_lib.tokenizer import get_tokenizer

        text = (Path(data_dir) / "wiki.train.tokens").read_text(encoding="utf-8")
        return len(get_tokenizer().encode_ordinary(text)), "counted now in WIKIGPT_DATA_DIR"
    return RECORDED_TRAIN_TOKENS, "recorded value (set WIKIGPT_DATA_DIR to recount)"


def course(**shape) -> GPTConfig:
    """A course-style config (vocab 8192, no biases, no dropout) with 64-channel heads."""
    shape.setdefault("n_head", max(1, shape["n_embd"] // 64))
    return GPTConfig.preset("cpu", dropout=0.0, **shape)


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    bench = Bench(device, args.quick)
    cpu = device.type == "cpu"
    if cpu:
        allocator_tuned = tune_cpu_allocator(not args.default_allocator)
    out: dict = {
        "date": "2026-11-25",
        "device": device.type,
        "machine": machine_facts(device),
        "precision": "bf16 autocast" if not cpu else "fp32",
        "method": (
            "forward+backward+AdamW step on random tokens; every time is the best of several "
            "windows of >=2 steps (other processes share the CPU); MFU = tokens/s x "
            "estimate_flops_per_token() / peak, peak = best matmul rate measured in this run "
            "(all sizes, re-measured between sections)"
        ),
    }
    log = {"load_avg_start": load_avg()}
    if cpu:
        out["cpu_allocator_tuned"] = allocator_tuned
    train_tokens, how = count_train_tokens()
    out["train_tokens"] = {"tokens": train_tokens, "source": how}

    sizes = (1024, 2048, 4096) if cpu else (4096, 8192)
    out["matmul_gflops"] = {str(n): round(r / 1e9, 1) for n, r in bench.matmul_rate(sizes).items()}
    say = lambda r: print(  # noqa: E731
        f"  L={r['config']['n_layer']} d={r['config']['n_embd']} T={r['config']['block_size']} "
        f"V={r['config']['vocab_size']} B={r['batch']}: {r['step_s'] * 1e3:.0f} ms/step, "
        f"{r['tokens_per_s']:.0f} tok/s",
        flush=True,
    )

    batches = {"tiny": 64, "cpu": 32, "gpu": 16} if cpu else {"tiny": 256, "cpu": 256, "gpu": 64}
    print("presets", flush=True)
    out["presets"] = {}
    for name, batch in batches.items():
        out["presets"][name] = bench.train_step(GPTConfig.preset(name), batch)
        say(out["presets"][name])
    bench.recheck_peak()

    if cpu:
        print("cpu-preset sweep", flush=True)
        shapes = [
            dict(n_layer=4, n_embd=192, n_head=3, block_size=128),
            dict(n_layer=3, n_embd=256, block_size=128),
            dict(n_layer=4, n_embd=256, block_size=128),
            dict(n_layer=4, n_embd=256, block_size=256),
            dict(n_layer=6, n_embd=256, block_size=128),
            dict(n_layer=4, n_embd=384, block_size=128),
        ]
        out["cpu_sweep"] = []
        for shape in shapes:
            batch = 4096 // shape["block_size"]  # 4,096 tokens per step
            out["cpu_sweep"].append(bench.train_step(course(**shape), batch))
            say(out["cpu_sweep"][-1])
        bench.recheck_peak()

        print("variations of the cpu preset", flush=True)
        base = GPTConfig.preset("cpu")
        B = batches["cpu"]
        variations: list[tuple[str, Callable[[], dict]]] = [
            ("baseline", lambda: bench.train_step(base, B)),
            ("batch 16", lambda: bench.train_step(base, B // 2)),
            ("batch 64", lambda: bench.train_step(base, 2 * B)),
            ("bias=True", lambda: bench.train_step(base.replace(bias=True), B)),
            ("dropout=0.1", lambda: bench.train_step(base.replace(dropout=0.1), B)),
            ("written-out attention", lambda: bench.train_step(base, B, store_weights=True)),
        ]
        if torch.backends.mkldnn.is_available():

            def no_onednn() -> dict:
                with torch.backends.mkldnn.flags(enabled=False):
                    return bench.train_step(base, B)

            variations.append(("oneDNN disabled", no_onednn))
        if allocator_tuned:

            def default_allocator() -> dict:
                tune_cpu_allocator(False)
                try:
                    return bench.train_step(base, B)
                finally:
                    tune_cpu_allocator(True)

            variations.append(("default glibc allocator", default_allocator))
        if args.compile:
            variations.append(
                ("torch.compile", lambda: bench.train_step(base, B, compile_model=True))
            )
        out["cpu_variations"] = {}
        for label, fn in variations:
            out["cpu_variations"][label] = fn()
            print(f" {label}:", end="")
            say(out["cpu_variations"][label])
        bench.recheck_peak()

    print("vocabulary sweep", flush=True)
    depth = GPTConfig.preset("cpu").n_layer
    out["vocab_sweep"] = []
    for vocab in (1024, 2048, 4096, 8192, 16384, 50257):
        cfg = GPTConfig(vocab, block_size=128, n_layer=depth, n_head=2, n_embd=128)
        out["vocab_sweep"].append(bench.train_step(cfg, batches["cpu"]))
        say(out["vocab_sweep"][-1])
    bench.recheck_peak()

    out["peak_gflops"] = round(max(bench.peaks) / 1e9, 1)
    log.update(load_avg_end=load_avg(), peak_gflops=out["peak_gflops"])
    out["runs"], out["run_log"] = 1, [log]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="fewer windows (a smoke test)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--default-allocator", action="store_true", help="don't tune glibc")
    parser.add_argument("--out", type=Path, default=None, help="where to write the JSON")
    parser.add_argument(
        "--merge", action="store_true", help="keep the best of this run and the --out file"
    )
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: PyTorch sees no CUDA GPU here.")
    t0 = time.perf_counter()
    result = run(args)
    result["run_log"][0]["seconds"] = round(time.perf_counter() - t0, 1)
    finish(result)
    path = args.out or ROOT / "benchmarks" / "results" / f"model_{args.device}.json"
    if args.merge and path.exists():
        result = merge(json.loads(path.read_text()), result)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    peak = result["peak_gflops"]
    cpu = result["presets"]["cpu"]
    print(
        f"peak matmul {peak} GFLOP/s; cpu preset {cpu['tokens_per_s']:.0f} tok/s, MFU {cpu['mfu']:.1%}"
    )
    print(f"wrote {path} (best of {result['runs']} run(s))")


if __name__ == "__main__":
    main()
