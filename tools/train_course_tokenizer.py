"""Train the course tokenizer on WikiText-2 (wikitext-2-v1) train and write the shipped asset.

    WIKIGPT_DATA_DIR=../shared/data/wikitext-2 python tools/train_course_tokenizer.py

The rows are read straight from `wiki.train.tokens` the way Hugging Face's `Salesforce/wikitext`
presents them, so this tool does not depend on `wikigpt_lib.data`. Running it again on the same
file reproduces the shipped `wikigpt_lib/assets/wikitext2_bpe_8192.tiktoken` byte for byte
(tests/test_tokenizer.py checks that when WIKIGPT_DATA_DIR is set).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import tiktoken

from wikigpt_lib.tokenizer import COURSE_TOKENIZER_FILE, COURSE_VOCAB_SIZE, save_bpe, train_bpe

ASSET = Path(__file__).resolve().parents[1] / "wikigpt_lib" / "assets" / COURSE_TOKENIZER_FILE


def read_rows(path: str | os.PathLike) -> list[str]:
    """The rows of a WikiText `.tokens`/`.raw` file as Hugging Face gives them.

    Each line keeps its trailing newline, and a line of only whitespace becomes "".
    """
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    lines = text.split("\n")
    rows = [line + "\n" for line in lines[:-1]]
    if lines[-1]:  # a last line without a newline
        rows.append(lines[-1])
    return [row if row.strip() else "" for row in rows]


def train_course_tokenizer(
    data_dir: str | os.PathLike, vocab_size: int = COURSE_VOCAB_SIZE
) -> tiktoken.Encoding:
    """Train the course BPE on `data_dir/wiki.train.tokens` (WikiText-2 v1 train rows)."""
    train_file = Path(data_dir) / "wiki.train.tokens"
    if not train_file.is_file():
        raise FileNotFoundError(
            f"{train_file} does not exist: point --data-dir (or WIKIGPT_DATA_DIR) at the folder "
            "holding WikiText-2's wiki.{train,valid,test}.tokens."
        )
    return train_bpe(read_rows(train_file), vocab_size, name=f"wikitext2_bpe_{vocab_size}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("WIKIGPT_DATA_DIR"))
    parser.add_argument("--vocab-size", type=int, default=COURSE_VOCAB_SIZE)
    parser.add_argument("--out", type=Path, default=ASSET)
    args = parser.parse_args(argv)
    if not args.data_dir:
        parser.error("no data: pass --data-dir or set WIKIGPT_DATA_DIR")
    start = time.perf_counter()
    enc = train_course_tokenizer(args.data_dir, args.vocab_size)
    save_bpe(enc, args.out)
    print(f"{enc.n_vocab} tokens in {time.perf_counter() - start:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
