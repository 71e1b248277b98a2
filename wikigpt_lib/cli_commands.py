"""What each `wikigpt` command does (the parser and the entry point are in cli.py). Each handler
takes the parsed arguments and returns the exit status; library modules are imported inside
the handlers, so `wikigpt --help` starts fast."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from wikigpt_lib import __version__
    from wikigpt_lib.data import WikiTextNotFoundError, load_wikitext2, wikitext2_source
    from wikigpt_lib.device import pick_precision
    from wikigpt_lib.tokenizer import TokenizerUnavailableError, get_tokenizer

    precision = pick_precision()
    print(
        f"wikigpt_lib {__version__} | torch {torch.__version__} | python {sys.version.split()[0]}"
    )
    print(f"device: {precision.device} | precision: {precision.name}")
    course = get_tokenizer()
    print(f"course tokenizer: {course.name}, {course.n_vocab} tokens")
    try:
        print(f"gpt2 tokenizer: {get_tokenizer('gpt2').n_vocab} tokens")
    except TokenizerUnavailableError as err:
        print(f"gpt2 tokenizer: unavailable ({err})")
    try:
        ds = load_wikitext2(args.variant)
        sizes = ", ".join(f"{name} {len(split):,} rows" for name, split in ds.items())
        print(f"WikiText-2 ({args.variant}): {wikitext2_source(ds)}: {sizes}")
    except WikiTextNotFoundError as err:
        print(f"WikiText-2 ({args.variant}): not found.\n{err}")
    return 0


def cmd_tokenize(args: argparse.Namespace) -> int:
    from wikigpt_lib.tokenizer import get_tokenizer

    enc = get_tokenizer(args.tokenizer)
    ids = enc.encode_ordinary(args.text)
    pieces = [enc.decode_single_token_bytes(i).decode("utf-8", errors="replace") for i in ids]
    print(f"{len(ids)} tokens, {len(args.text.encode('utf-8')) / max(len(ids), 1):.2f} bytes/token")
    for i, piece in zip(ids, pieces, strict=True):
        print(f"{i:>6}  {piece!r}")
    return 0


def cmd_bpe(args: argparse.Namespace) -> int:
    from wikigpt_lib.data import load_wikitext2
    from wikigpt_lib.tokenizer import save_bpe, train_bpe

    rows = load_wikitext2(args.variant, data_dir=args.data_dir)["train"]["text"]
    start = time.perf_counter()
    enc = train_bpe(rows, args.vocab_size)
    save_bpe(enc, args.out)
    print(f"trained {enc.n_vocab} tokens in {time.perf_counter() - start:.1f} s -> {args.out}")
    return 0


# TrainConfig fields the command line can change: flag -> field
TRAIN_FLAGS = {
    "max_steps": "max_steps",
    "batch_size": "batch_size",
    "grad_accum": "grad_accum_steps",
    "lr": "lr",
    "min_lr": "min_lr",
    "warmup_steps": "warmup_steps",
    "weight_decay": "weight_decay",
    "grad_clip": "grad_clip",
    "eval_interval": "eval_interval",
    "eval_batches": "eval_batches",
    "patience": "patience",
    "seed": "seed",
    "device": "device",
    "precision": "precision",
    "optimizer": "optimizer",
    "muon_lr": "muon_lr",
    "schedule": "schedule",
    "sampling": "sampling",
}


def _train_overrides(args: argparse.Namespace) -> dict:
    overrides = {
        field: getattr(args, flag)
        for flag, field in TRAIN_FLAGS.items()
        if getattr(args, flag) is not None
    }
    if "lr" in overrides and "min_lr" not in overrides:
        from wikigpt_lib.config import train_preset

        preset = train_preset(args.preset)[1]  # keep the preset's floor, as a share of its peak
        overrides["min_lr"] = overrides["lr"] * preset.min_lr / preset.lr
    if args.compile:
        overrides["compile"] = True
    if args.no_progress:
        overrides["progress"] = False
    if args.tensorboard:
        overrides["tensorboard"] = True
    return overrides


def _prepare_out(out: Path, args: argparse.Namespace, is_main: bool) -> bool:
    """Refuse to overwrite a run unless asked; with --force delete only a real run folder.
    Returns whether to resume: --resume on a run that never reached its first checkpoint
    starts it over (after saying so)."""
    from wikigpt_lib.checkpoint import is_run_dir

    looks_like_run = is_run_dir(out) or (out / "metrics.jsonl").is_file()
    if args.resume:
        if is_run_dir(out):
            return True
        if not looks_like_run:
            raise ValueError(
                f"--resume: {out} holds no run to continue. Start one with "
                f"`wikigpt train --preset {args.preset} --out {out}`."
            )
        if is_main:
            print(f"{out} stopped before its first checkpoint: starting the run over.")
            shutil.rmtree(out)
        return False
    if not out.exists() or not any(out.iterdir()):
        return False
    if not args.force:
        raise ValueError(
            f"{out} already holds {'a run' if looks_like_run else 'files'}: pass --resume to "
            "continue it, --force to start over (deletes it), or choose another --out."
        )
    if not looks_like_run:
        raise ValueError(
            f"{out} is not a wikigpt run folder, so --force will not delete it: choose another "
            "--out."
        )
    if is_main:
        shutil.rmtree(out)
    return False


RUN_FILE = "run.json"  # the command's choices, so a run without a checkpoint can start over


def _token_splits(data: str, say=print):
    from wikigpt_lib.data import load_corpus, tokenize_split, wikitext2_source
    from wikigpt_lib.tokenizer import get_tokenizer

    ds = load_corpus(data)
    enc = get_tokenizer()
    train_ids = tokenize_split(ds["train"], enc)
    val_ids = tokenize_split(ds["validation"], enc)
    say(
        f"data: {data} ({wikitext2_source(ds)}): {len(train_ids):,} train and "
        f"{len(val_ids):,} validation tokens ({enc.name})"
    )
    return enc, train_ids, val_ids


def cmd_train(args: argparse.Namespace) -> int:
    import signal

    import torch

    from wikigpt_lib.base import write_json_atomic
    from wikigpt_lib.checkpoint import load_checkpoint
    from wikigpt_lib.config import train_preset
    from wikigpt_lib.model import GPT
    from wikigpt_lib.train import Trainer

    out = Path(args.out)
    is_main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 talks

    def say(*parts: object) -> None:
        if is_main:
            print(*parts, flush=True)

    overrides = _train_overrides(args)
    saved_run = out / RUN_FILE
    if args.resume and not (out / "latest.json").is_file() and saved_run.is_file():
        # A run that never reached a checkpoint starts over with the choices it was started with.
        first = json.loads(saved_run.read_text(encoding="utf-8"))
        args.preset, args.data = first["preset"], args.data or first.get("data")
        overrides = {**first.get("overrides", {}), **overrides}
    model_cfg, train_cfg = train_preset(args.preset, **overrides)  # bad flags: before any data
    resume = _prepare_out(out, args, is_main)
    if resume:
        saved = load_checkpoint(out, "latest")
        data = args.data or saved.data or "wikitext-2"
        enc, train_ids, val_ids = _token_splits(data, say)
        trainer = Trainer.resume(out, train_ids, val_ids, **overrides)
        say(f"resuming {out} at step {trainer.step} of {trainer.config.max_steps}")
    else:
        data = args.data or "wikitext-2"
        enc, train_ids, val_ids = _token_splits(data, say)
        if model_cfg.vocab_size != enc.n_vocab:
            model_cfg = model_cfg.replace(vocab_size=enc.n_vocab)
        torch.manual_seed(train_cfg.seed)
        model = GPT(model_cfg)
        trainer = Trainer(model, train_ids, val_ids, train_cfg, run_dir=out, data_name=data)
        if is_main:
            first = {"preset": args.preset, "overrides": overrides, "data": data}
            write_json_atomic(saved_run, first)
    c, m = trainer.config, trainer.model
    say(
        f"model: {m.num_params():,} parameters ({m.config.n_layer} layers, width "
        f"{m.config.n_embd}, context {m.config.block_size}) | device {trainer.device}, "
        f"{trainer.precision.name} | {trainer.tokens_per_step:,} tokens/step, "
        f"{c.max_steps} steps"
    )
    with trainer:  # leaves the process group of a torchrun run, also after an error
        result = trainer.fit()
    # The shell's convention: 128 + the signal's number (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP).
    code = 0
    if result.stopped == "interrupted":
        code = 128 + (result.signal or signal.SIGINT)
    if not trainer.is_main:
        return code
    print(f"stopped: {result.stopped} at step {result.steps} ({result.tokens_seen:,} tokens)")
    if result.best_val_loss is not None:
        ppl = 2.718281828459045**result.best_val_loss
        print(f"best validation loss {result.best_val_loss:.4f} (token perplexity {ppl:.1f})")
    pointers = [name for name in ("best.json", "latest.json") if (out / name).is_file()]
    if pointers:
        print(f"checkpoints: {out} ({', '.join(pointers)}); metrics: {out / 'metrics.jsonl'}")
    else:
        print(f"no checkpoint was written; metrics: {out / 'metrics.jsonl'}")
    if result.stopped == "interrupted":
        print(f"continue with: wikigpt train --resume --out {out}")
    return code


def _load_for_inference(path: str, device: str | None):
    """The best model of a run (or a checkpoint folder) on `device`, its tokenizer, and the
    checkpoint it came from."""
    from wikigpt_lib.checkpoint import load_model_and_tokenizer
    from wikigpt_lib.device import pick_device

    return load_model_and_tokenizer(path, "best", pick_device(device))


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from wikigpt_lib.generation import TextStreamer, stream

    if not args.prompt.strip():
        raise ValueError('--prompt is empty: give the text to continue, e.g. --prompt "The river".')
    model, enc, _ = _load_for_inference(args.checkpoint, args.device)
    # WikiText rows start with a space (" The river ..."): give the prompt one too, so its
    # first word is the token the model saw at the start of lines.
    add_space = bool(args.prompt) and not args.prompt[:1].isspace()
    ids = enc.encode_ordinary(" " * add_space + args.prompt)
    idx = torch.tensor([ids], dtype=torch.long, device=next(model.parameters()).device)
    streamer = TextStreamer(enc, detokenize=not args.raw)
    hide_space = add_space  # the space we added is not the user's: don't show it

    def show(piece: str, end: str = "") -> None:
        nonlocal hide_space
        if hide_space and piece:
            piece, hide_space = piece.removeprefix(" "), False
        print(piece, end=end, flush=True)

    show(streamer.add(ids))
    start, n = time.perf_counter(), 0
    for token in stream(
        model,
        idx,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        use_cache=not args.no_cache,
        seed=args.seed,
    ):
        show(streamer.add([int(token)]))
        n += 1
    show(streamer.flush(), end="\n")
    seconds = time.perf_counter() - start
    rate = n / max(seconds, 1e-9)
    print(f"[{n} tokens in {seconds:.2f} s, {rate:.1f} tokens/s]", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from wikigpt_lib.data import load_corpus, wikitext2_source
    from wikigpt_lib.evaluate import evaluate_split

    model, enc, ckpt = _load_for_inference(args.checkpoint, args.device)
    data = args.data or ckpt.data or "wikitext-2"
    ds = load_corpus(data)
    split = {"valid": "validation", "val": "validation"}.get(args.split, args.split)
    r = evaluate_split(
        model,
        ds[split],
        enc,
        block_size=args.block_size,
        stride=args.stride,
        batch_size=args.batch_size,
        progress=True,
    )
    print(
        f"{data} ({wikitext2_source(ds)}) {split}: {r['n_tokens'] + 1:,} tokens, "
        f"{r['n_words']:,} words, {r['n_bytes']:,} bytes | windows of {r['block_size']}, "
        f"stride {r['stride']}"
    )
    print(f"loss          {r['loss']:.4f} nats/token")
    print(f"token ppl     {r['token_ppl']:.2f}")
    print(f"word ppl      {r['word_ppl']:.2f}")
    print(f"bits per byte {r['bits_per_byte']:.4f}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from wikigpt_lib.chat import load_chat_model
    from wikigpt_lib.cli_chat import chat_repl
    from wikigpt_lib.device import pick_device

    model, tok = load_chat_model(args.checkpoint, pick_device(args.device))
    print(
        f"{args.checkpoint}: {model.num_params():,} parameters, context "
        f"{model.config.block_size} tokens (older turns are forgotten beyond it)"
    )
    return chat_repl(
        model,
        tok,
        system=args.system,
        wikitext_input=not args.raw,
        detokenize=not args.raw,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from wikigpt_lib.demo import build_app, launch, require_gradio

    # Everything that can fail is checked before the server starts: the checkpoint, Gradio.
    model, enc, _ = _load_for_inference(args.checkpoint, args.device)
    require_gradio()
    app = build_app(model, enc, name=args.checkpoint)
    url, share_url = launch(app, host=args.host, port=args.port, share=args.share, quiet=True)
    print(
        f"{args.checkpoint}: {model.num_params():,} parameters, context "
        f"{model.config.block_size} tokens, tokenizer {enc.name}\n"
        f"the demo is at {url}{f' and {share_url}' if share_url else ''} (Ctrl-C stops it)",
        flush=True,
    )
    app.block_thread()  # until Ctrl-C, which closes the server
    return 0


def _check_export_folder(out: Path, force: bool) -> None:
    """Write into an empty or new folder; with --force also over an earlier export (never
    into a folder that holds something else, such as a run or a checkpoint)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: give a folder to export to.")
    if not out.is_dir() or not any(out.iterdir()):
        return
    try:
        config = json.loads((out / "config.json").read_text(encoding="utf-8"))
        is_export = isinstance(config, dict) and "model_type" in config
    except (OSError, ValueError):
        is_export = False
    if not is_export:
        raise ValueError(
            f"{out} is not empty and holds no exported model, so nothing will be written into "
            "it: choose another --out."
        )
    if not force:
        raise ValueError(
            f"{out} already holds an exported model: pass --force to replace it, or choose "
            "another --out."
        )


def cmd_export(args: argparse.Namespace) -> int:
    from wikigpt_lib.export import export_checkpoint

    out = Path(args.out).expanduser()
    _check_export_folder(out, args.force)
    start = time.perf_counter()
    folder = export_checkpoint(args.checkpoint, out)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    print(
        f"exported {args.checkpoint} ({config['n_layer']} layers, width {config['n_embd']}, "
        f"context {config['n_positions']}, tokenizer {config['wikigpt_tokenizer']}) to "
        f"{folder} in {time.perf_counter() - start:.1f} s:"
    )
    for path in sorted(folder.iterdir()):
        if path.is_file():
            print(f"  {path.name:<28} {path.stat().st_size:>13,} bytes")
    loaders = "AutoModelForCausalLM" + (
        " and AutoTokenizer" if (folder / "tokenizer.json").is_file() else ""
    )
    print(f"load it with transformers' {loaders}.from_pretrained({str(folder)!r})")
    print(f"model card: {folder / 'README.md'}")
    return 0
