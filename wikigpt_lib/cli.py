"""The `wikigpt` command line (also `python -m wikigpt_lib`).

wikigpt info                         versions, device and precision, where the data comes from
wikigpt tokenize "some text"         show how the course tokenizer (or --tokenizer gpt2) splits text
wikigpt bpe --vocab-size 4096 --out my.tiktoken
                                     train a byte-level BPE on WikiText-2 train and save it
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `wikigpt` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        # Library errors already say what is wrong and how to fix it: show them without a traceback.
        print(f"wikigpt {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
