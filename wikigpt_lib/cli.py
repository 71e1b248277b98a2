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
wikigpt demo --checkpoint runs/chat  the same in a web page (Gradio, the [demo] extra)
wikigpt export --checkpoint runs/cpu --out my-gpt
                                     the model in the Hugging Face format, with its tokenizer
                                     and a model card (transformers loads it)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from collections.abc import Sequence

from wikigpt_lib import cli_commands as commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wikigpt", description="Wiki-GPT: a GPT built from scratch."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="versions, device, tokenizers and where WikiText-2 comes from")
    p.add_argument("--variant", choices=["tokens", "raw"], default="tokens")
    p.set_defaults(func=commands.cmd_info)

    p = sub.add_parser("tokenize", help="show how a tokenizer splits some text")
    p.add_argument("text")
    p.add_argument("--tokenizer", default="wikitext2", help="wikitext2 (default) or gpt2")
    p.set_defaults(func=commands.cmd_tokenize)

    p = sub.add_parser("bpe", help="train a byte-level BPE tokenizer on WikiText-2 train")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--out", required=True, help="where to write the .tiktoken ranks file")
    p.add_argument("--variant", choices=["tokens", "raw"], default="tokens")
    p.add_argument("--data-dir", default=None, help="folder with the wiki.*.tokens files")
    p.set_defaults(func=commands.cmd_bpe)

    from wikigpt_lib.config import OPTIMIZERS, PRECISIONS, SAMPLINGS, SCHEDULES, TRAIN_PRESETS

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
    p.set_defaults(func=commands.cmd_train)

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
    p.set_defaults(func=commands.cmd_generate)

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
    p.set_defaults(func=commands.cmd_eval)

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
    p.set_defaults(func=commands.cmd_chat)

    p = sub.add_parser(
        "demo",
        help="a web page to generate text and chat with a model (needs the [demo] extra)",
        description="Serve a web demo of a checkpoint (Gradio; pip install 'wikigpt-lib[demo]'): "
        "a Generate tab that streams the continuation of a prompt, and for a chat model a Chat "
        "tab. It listens on 127.0.0.1, this machine only, unless --host says otherwise; Ctrl-C "
        "stops it.",
    )
    p.add_argument("--checkpoint", required=True, help="run folder or checkpoint folder")
    p.add_argument("--port", type=int, default=None, help="default: 7860, or the next free port")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0: every network interface)",
    )
    p.add_argument("--share", action="store_true", help="also a temporary public gradio.live link")
    p.add_argument("--device", default=None, help="cuda, mps or cpu (default: the best there is)")
    p.set_defaults(func=commands.cmd_demo)

    p = sub.add_parser(
        "export",
        help="a trained model in the Hugging Face format, with its tokenizer and a model card",
        description="Export the best checkpoint of a run (LoRA adapters merged) for "
        "transformers: GPT2LMHeadModel weights and config, the tokenizer (AutoTokenizer gives "
        "the course tokenizer's ids; a chat model's has its chat template), and a README.md "
        "that states the data, the training recipe and the measured validation loss.",
    )
    p.add_argument("--checkpoint", required=True, help="run folder or checkpoint folder")
    p.add_argument("--out", required=True, help="folder to write the export to")
    p.add_argument("--force", action="store_true", help="replace an earlier export in --out")
    p.set_defaults(func=commands.cmd_export)
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
    for flag, field in commands.TRAIN_FLAGS.items():
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
