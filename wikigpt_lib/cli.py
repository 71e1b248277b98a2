"""The `wikigpt` command line (also `python -m wikigpt_lib`).

wikigpt info                         versions, device and precision, where the data comes from
wikigpt tokenize "some text"         show how the course tokenizer (or --tokenizer gpt2) splits text
wikigpt bpe --vocab-size 4096 --out my.tiktoken
                                     train a byte-level BPE on WikiText-2 train and save it
wikigpt train --preset cpu --out runs/cpu
                                     train the course model; --resume continues a run
wikigpt generate --checkpoint runs/cpu --prompt "The river" --max-new-tokens 100
                                     continue a prompt, streamed as it is generated
wikigpt eval --checkpoint runs/cpu --split test
                                     loss, token and word perplexity, bits per byte
wikigpt chat --checkpoint runs/chat  talk to a chat-tuned model (notebook 09); /exit or Ctrl-D
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path


def _cmd_info(args: argparse.Namespace) -> int:
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


def _cmd_tokenize(args: argparse.Namespace) -> int:
    from wikigpt_lib.tokenizer import get_tokenizer

    enc = get_tokenizer(args.tokenizer)
    ids = enc.encode_ordinary(args.text)
    pieces = [enc.decode_single_token_bytes(i).decode("utf-8", errors="replace") for i in ids]
    print(f"{len(ids)} tokens, {len(args.text.encode('utf-8')) / max(len(ids), 1):.2f} bytes/token")
    for i, piece in zip(ids, pieces, strict=True):
        print(f"{i:>6}  {piece!r}")
    return 0


def _cmd_bpe(args: argparse.Namespace) -> int:
    from wikigpt_lib.data import load_wikitext2
    from wikigpt_lib.tokenizer import save_bpe, train_bpe

    rows = load_wikitext2(args.variant, data_dir=args.data_dir)["train"]["text"]
    start = time.perf_counter()
    enc = train_bpe(rows, args.vocab_size)
    save_bpe(enc, args.out)
    print(f"trained {enc.n_vocab} tokens in {time.perf_counter() - start:.1f} s -> {args.out}")
    return 0


# TrainConfig fields the command line can change: flag -> field
_TRAIN_FLAGS = {
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
        for flag, field in _TRAIN_FLAGS.items()
        if getattr(args, flag) is not None
    }
    if "lr" in overrides and "min_lr" not in overrides:
        from wikigpt_lib.train import train_preset

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


def _cmd_train(args: argparse.Namespace) -> int:
    import signal

    import torch

    from wikigpt_lib.checkpoint import load_checkpoint, write_json_atomic
    from wikigpt_lib.model import GPT
    from wikigpt_lib.train import Trainer, train_preset

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


def _cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from wikigpt_lib.generate import TextStreamer, stream

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


def _cmd_eval(args: argparse.Namespace) -> int:
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


def _cmd_chat(args: argparse.Namespace) -> int:
    from wikigpt_lib.chat import chat_repl, load_chat_model
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wikigpt", description="Wiki-GPT: a GPT built from scratch."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="versions, device, tokenizers and where WikiText-2 comes from")
    p.add_argument("--variant", choices=["tokens", "raw"], default="tokens")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("tokenize", help="show how a tokenizer splits some text")
    p.add_argument("text")
    p.add_argument("--tokenizer", default="wikitext2", help="wikitext2 (default) or gpt2")
    p.set_defaults(func=_cmd_tokenize)

    p = sub.add_parser("bpe", help="train a byte-level BPE tokenizer on WikiText-2 train")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--out", required=True, help="where to write the .tiktoken ranks file")
    p.add_argument("--variant", choices=["tokens", "raw"], default="tokens")
    p.add_argument("--data-dir", default=None, help="folder with the wiki.*.tokens files")
    p.set_defaults(func=_cmd_bpe)

    from wikigpt_lib.optim import OPTIMIZERS, SCHEDULES
    from wikigpt_lib.train import PRECISIONS, SAMPLINGS, TRAIN_PRESETS

    p = sub.add_parser(
        "train",
        help="train the course model (checkpoints and metrics in --out)",
        description="Train a GPT on WikiText-2. Presets: "
        + "; ".join(f"{name}: {desc}" for name, (desc, _, _) in TRAIN_PRESETS.items())
        + ". Several GPUs: torchrun --nproc_per_node N -m wikigpt_lib train ...",
    )
    p.add_argument("--preset", choices=list(TRAIN_PRESETS), default="cpu")
    p.add_argument("--out", required=True, help="run folder for checkpoints and metrics")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--force", action="store_true", help="delete the run in --out and start over")
    p.add_argument(
        "--data",
        default=None,
        help="wikitext-2 (default), wikitext-2-raw, sample, or a folder with wiki.*.tokens files",
    )
    for flag, kind in (
        ("max-steps", int), ("batch-size", int), ("grad-accum", int), ("lr", float),
        ("min-lr", float), ("warmup-steps", int), ("weight-decay", float),
        ("grad-clip", float), ("eval-interval", int), ("eval-batches", int),
        ("patience", int), ("seed", int),
    ):  # fmt: skip
        p.add_argument(f"--{flag}", type=kind, default=None)
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best there is)")
    p.add_argument("--precision", choices=PRECISIONS, default=None)
    p.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default=None,
        help="muon (the presets): Muon for the blocks' matrices, AdamW for the rest",
    )
    p.add_argument("--muon-lr", type=float, default=None, help="peak learning rate of Muon")
    p.add_argument("--schedule", choices=SCHEDULES, default=None, help="decay after warmup")
    p.add_argument(
        "--sampling",
        choices=SAMPLINGS,
        default=None,
        help="epoch (the presets): each window once per epoch; random: any start",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "generate",
        help="continue a prompt with a trained model, streamed as it is generated",
        description="Continue --prompt with the best checkpoint of a run. The model was trained "
        "on WikiText's spacing (`word , word`, `1 @,@ 000`); the output shows it undone.",
    )
    p.add_argument("--checkpoint", required=True, help="run folder or checkpoint folder")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=1.0, help="0 for greedy decoding")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="for reproducible sampling")
    p.add_argument("--no-cache", action="store_true", help="recompute the context every step")
    p.add_argument("--raw", action="store_true", help="show WikiText's spacing as it is")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best there is)")
    p.set_defaults(func=_cmd_generate)

    p = sub.add_parser(
        "eval",
        help="loss, token and word perplexity, bits per byte of a checkpoint on a split",
    )
    p.add_argument("--checkpoint", required=True, help="run folder or checkpoint folder")
    p.add_argument("--split", choices=["test", "validation", "valid", "train"], default="test")
    p.add_argument(
        "--data", default=None, help="as for train; default: the data the run trained on"
    )
    p.add_argument("--stride", type=int, default=None, help="sliding windows (default: none)")
    p.add_argument("--block-size", type=int, default=None, help="default: the model's context")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best there is)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser(
        "chat",
        help="chat with a chat-tuned model in the terminal (/exit or Ctrl-D to quit)",
        description="An interactive chat with the best checkpoint of a chat fine-tuning run "
        "(notebook 09). Replies stream as they are generated; the conversation is trimmed from "
        "its oldest turns to fit the context. /reset starts over; /exit or Ctrl-D quits.",
    )
    p.add_argument("--checkpoint", required=True, help="run folder or checkpoint folder")
    p.add_argument("--system", default=None, help="a system message to start with")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="for reproducible sampling")
    p.add_argument(
        "--raw", action="store_true", help="send and show text as typed (no WikiText spacing)"
    )
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best there is)")
    p.set_defaults(func=_cmd_chat)
    return parser


class _SafeStream:
    """stdout or stderr that survives its reader going away.

    `wikigpt train ... | tee log` with Ctrl-C stops `tee` too; every later write (the progress
    bar, the message that a checkpoint was saved) then fails with a broken pipe, and a
    closed terminal (SIGHUP) fails with EIO. Such a failure would abort the run before its
    checkpoint is saved. From the first failure on, output goes nowhere instead.
    """

    def __init__(self, stream) -> None:
        self._stream = stream
        self._broken = False

    def write(self, text: str) -> int:
        if not self._broken:
            try:
                return self._stream.write(text)
            except OSError:  # EPIPE, EIO: nobody is reading any more
                self._break()
        return len(text)

    def flush(self) -> None:
        if not self._broken:
            try:
                self._stream.flush()
            except OSError:
                self._break()

    def _break(self) -> None:
        self._broken = True
        # Point the file descriptor at /dev/null too, so the interpreter's own flush at exit
        # does not fail again ("Exception ignored ... BrokenPipeError", exit status 120).
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def isatty(self) -> bool:
        return not self._broken and self._stream.isatty()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # The library's warnings say what to do; the source line Python adds would only confuse.
    print(f"wikigpt: warning: {message}", file=sys.stderr)


def _protect_streams() -> None:
    if not isinstance(sys.stdout, _SafeStream):
        sys.stdout = _SafeStream(sys.stdout)
    if not isinstance(sys.stderr, _SafeStream):
        sys.stderr = _SafeStream(sys.stderr)


def _cli_terms(err: BaseException) -> str:
    """A library error in the command line's terms: flags instead of Python names."""
    from wikigpt_lib.data import WikiTextNotFoundError

    if isinstance(err, WikiTextNotFoundError):
        return (
            "WikiText-2 could not be found (no local copy, and the Hugging Face hub could not "
            "be reached). Download wikitext-2-v1.zip elsewhere, unpack it and set "
            "WIKIGPT_DATA_DIR=/path/to/wikitext-2 (the folder with wiki.train.tokens), or pass "
            "--data /path/to/wikitext-2; or use the built-in sample corpus with --data sample."
        )
    text = str(err)
    for flag, field in _TRAIN_FLAGS.items():
        text = text.replace(f"TrainConfig.{field}", f"--{flag.replace('_', '-')}")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `wikigpt` console script; returns the exit status."""
    streams = sys.stdout, sys.stderr
    _protect_streams()
    try:
        return _run(build_parser().parse_args(argv))
    finally:
        sys.stdout, sys.stderr = streams


def _run(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return args.func(args)
        except (ValueError, FileNotFoundError, RuntimeError) as err:
            # Library errors say what is wrong and how to fix it: no traceback.
            print(f"wikigpt {args.command}: error: {_cli_terms(err)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # Ctrl-C outside training: nothing to save
            print(f"wikigpt {args.command}: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
