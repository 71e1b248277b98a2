"""Byte-level BPE: the course's own trainer, the shipped WikiText-2 tokenizer, and GPT-2's.

A tokenizer here is always a `tiktoken.Encoding`: tiktoken does the encoding (fast, in Rust),
this module learns the merges (`train_bpe`), stores them (`save_bpe` / `load_bpe`, the
`.tiktoken` ranks format) and hands out the two tokenizers the course uses (`get_tokenizer`).

How the two markers of the course's text are handled:

- `<unk>` is WikiText-2's marker for a rare word. It is ordinary text, not a special token:
  `SPLIT_PATTERN` keeps ` <unk>` together as one pre-split chunk, so training turns it into a
  single token of the course tokenizer, and decoding gives back the literal text `<unk>`.
- `<|endoftext|>` (`EOT`) is the only special token. Its id comes after every merged token, so
  it is the last id of the vocabulary (8191 for the course tokenizer). It separates documents
  when you build training streams. Encoding follows tiktoken's rules: `enc.encode(text)` raises
  a ValueError if `text` contains the string `<|endoftext|>`; `enc.encode_ordinary(text)` treats
  it as plain characters; `enc.encode(text, allowed_special={EOT})` maps it to the special id.
  The trainer reads `<|endoftext|>` in its input as plain characters, like `encode_ordinary`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import heapq
import os
import tempfile
import threading
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from itertools import pairwise
from pathlib import Path

import regex
import tiktoken

EOT = "<|endoftext|>"

# GPT-2's pre-split rule (contractions, letters, digits, other symbols, whitespace), with
# ` ?<unk>` tried first so WikiText's marker for a rare word stays one chunk. It is written for
# both the `regex` module (the trainer) and tiktoken's Rust regex (the encoder).
SPLIT_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?<unk>| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)

COURSE_VOCAB_SIZE = 8192
COURSE_TOKENIZER_FILE = "wikitext2_bpe_8192.tiktoken"
TOKENIZER_NAMES = ("wikitext2", "course", "gpt2")
GPT2_LOAD_TIMEOUT_S = 60.0


class TokenizerUnavailableError(RuntimeError):
    """A tokenizer's files could not be found locally nor downloaded."""


# ----------------------------------------------------------------------------- training


def train_bpe(
    texts: Iterable[str],
    vocab_size: int,
    *,
    pattern: str = SPLIT_PATTERN,
    special_tokens: Sequence[str] = (EOT,),
    name: str = "wikigpt-bpe",
) -> tiktoken.Encoding:
    """Learn a byte-level BPE vocabulary of `vocab_size` tokens from `texts`.

    texts: an iterable of strings (e.g. the rows of a dataset); each one is pre-split on its own.
    vocab_size: 256 byte tokens + the merges + `special_tokens`, so 8192 gives 7935 merges.
    Returns a `tiktoken.Encoding`: byte b has id b, merge k has id 256 + k, then the special
    tokens in the order given. Training is deterministic: each step merges the most frequent
    pair of adjacent tokens, ties going to the smallest (left id, right id). If no pair occurs
    twice any more, training stops early with a warning and the vocabulary is smaller.
    """
    special_tokens = tuple(special_tokens)
    _check_train_args(vocab_size, special_tokens, pattern)
    chunk_counts = _count_chunks(texts, pattern)
    merged = _learn_merges(chunk_counts, vocab_size - 256 - len(special_tokens))
    return _build_encoding(merged, pattern, special_tokens, name)


def _check_train_args(vocab_size: int, special_tokens: tuple[str, ...], pattern: str) -> None:
    smallest = 256 + len(special_tokens)
    if not isinstance(vocab_size, int) or vocab_size < smallest:
        raise ValueError(
            f"vocab_size={vocab_size!r} is too small: a byte-level BPE needs the 256 byte tokens "
            f"plus {len(special_tokens)} special token(s), so use vocab_size >= {smallest}."
        )
    if len(set(special_tokens)) != len(special_tokens) or not all(
        isinstance(s, str) and s for s in special_tokens
    ):
        raise ValueError(f"special_tokens must be distinct non-empty strings, got {special_tokens}")
    try:
        regex.compile(pattern)
    except regex.error as err:
        raise ValueError(f"pattern is not a valid regular expression: {err}") from err


def _count_chunks(texts: Iterable[str], pattern: str) -> dict[bytes, int]:
    """Pre-split every text with `pattern` and count each distinct chunk (as UTF-8 bytes)."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(
            "texts must be an iterable of strings (e.g. a list of rows), not a single string: "
            "wrap it as [text]."
        )
    split = regex.compile(pattern).findall
    counts: Counter[str] = Counter()
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is a {type(text).__name__}; every text must be a str.")
        counts.update(split(text))
    chunk_counts: dict[bytes, int] = defaultdict(int)
    for chunk, n in counts.items():
        chunk_counts[_utf8(chunk)] += n
    return dict(chunk_counts)


def _utf8(text: str) -> bytes:
    """UTF-8 bytes of `text`; lone surrogates become U+FFFD, as tiktoken's `encode` does."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace").encode("utf-8")


def _learn_merges(chunk_counts: Mapping[bytes, int], n_merges: int) -> list[bytes]:
    """The bytes of the first `n_merges` merged tokens, in the order they were learned."""
    state = _MergeState(chunk_counts)
    merged: list[bytes] = []
    while len(merged) < n_merges:
        pair = state.pop_best()
        if pair is None:
            warnings.warn(
                f"BPE training stopped after {len(merged)} of {n_merges} merges: no pair of "
                "tokens occurs twice any more. Train on more text or ask for a smaller vocab_size.",
                stacklevel=3,
            )
            break
        merged.append(state.merge(*pair))
    return merged


class _MergeState:
    """The corpus as distinct chunks of token ids, with pair counts kept up to date.

    Invariant: every chunk is exactly what tiktoken would encode it to with the tokens learned
    so far (tiktoken repeatedly merges the adjacent pair whose joined bytes have the lowest
    rank). Textbook BPE instead replaces only the chosen id pair; the two can differ when some
    other pair of tokens happens to join into an existing token. Keeping the invariant makes
    the saved ranks encode the training text exactly as the trainer saw it. (On WikiText-2 the
    two never differ, checked up to 16,384 tokens, and tests compare against textbook BPE.)
    """

    def __init__(self, chunk_counts: Mapping[bytes, int]):
        self.tokens = [bytes([b]) for b in range(256)]  # id -> bytes; an id is also its rank
        self.rank = {t: i for i, t in enumerate(self.tokens)}  # bytes -> id
        self.chunks = [list(chunk) for chunk in chunk_counts]  # each chunk as token ids
        self.freqs = list(chunk_counts.values())  # how often each chunk occurs
        self.pair_count: dict[tuple[int, int], int] = defaultdict(int)  # summed over the corpus
        self.where: dict[tuple[int, int], set[int]] = defaultdict(set)  # pair -> chunk indices
        for i, (ids, f) in enumerate(zip(self.chunks, self.freqs, strict=True)):
            for pair in pairwise(ids):
                self.pair_count[pair] += f
                self.where[pair].add(i)
        # A max-heap by (count, then smallest pair) via negated counts. Entries go stale when a
        # count changes; the fresh count is pushed again and stale ones are skipped on pop.
        self.heap = [(-n, a, b) for (a, b), n in self.pair_count.items()]
        heapq.heapify(self.heap)

    def pop_best(self) -> tuple[int, int] | None:
        """The most frequent pair (ties: smallest ids), or None when no pair occurs twice."""
        while self.heap:
            neg_n, a, b = self.heap[0]
            if self.pair_count.get((a, b)) == -neg_n:
                return (a, b) if -neg_n >= 2 else None
            heapq.heappop(self.heap)  # stale entry
        return None

    def merge(self, a: int, b: int) -> bytes:
        """Add the token a+b, re-encode only the chunks it touches, and update the counts."""
        new = self.tokens[a] + self.tokens[b]
        assert new not in self.rank, "invariant broken: a pair already forms a token"
        self.rank[new] = len(self.tokens)
        self.tokens.append(new)
        delta: dict[tuple[int, int], int] = defaultdict(int)
        for i in self._chunks_holding(new):
            old_ids, f = self.chunks[i], self.freqs[i]
            new_ids = self._encode_further(old_ids)
            self.chunks[i] = new_ids
            old_pairs, new_pairs = list(pairwise(old_ids)), list(pairwise(new_ids))
            for pair in old_pairs:
                delta[pair] -= f
            for pair in new_pairs:
                delta[pair] += f
            for pair in set(old_pairs).difference(new_pairs):
                self.where[pair].discard(i)
            for pair in set(new_pairs).difference(old_pairs):
                self.where[pair].add(i)
        for pair, d in delta.items():
            if d == 0:
                continue
            n = self.pair_count[pair] = self.pair_count[pair] + d
            if n > 0:
                heapq.heappush(self.heap, (-n, *pair))
            else:  # gone from the corpus: forget it
                del self.pair_count[pair]
                del self.where[pair]
        return new

    def _chunks_holding(self, new: bytes) -> set[int]:
        """Indices of chunks with an adjacent pair of tokens whose bytes join into `new`."""
        found: set[int] = set()
        for cut in range(1, len(new)):
            left, right = self.rank.get(new[:cut]), self.rank.get(new[cut:])
            if left is not None and right is not None:
                found.update(self.where.get((left, right), ()))
        return found

    def _encode_further(self, ids: list[int]) -> list[int]:
        """Continue tiktoken's rule from `ids`: merge the lowest-ranked joinable pair, repeat."""
        tokens, rank = self.tokens, self.rank
        while True:
            best_rank, best_at = None, -1
            for at in range(len(ids) - 1):
                r = rank.get(tokens[ids[at]] + tokens[ids[at + 1]])
                if r is not None and (best_rank is None or r < best_rank):  # leftmost on ties
                    best_rank, best_at = r, at
            if best_rank is None:
                return ids
            ids = ids[:best_at] + [best_rank] + ids[best_at + 2 :]


def _build_encoding(
    merged: Sequence[bytes], pattern: str, special_tokens: Sequence[str], name: str
) -> tiktoken.Encoding:
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({token: 256 + k for k, token in enumerate(merged)})
    specials = {s: len(ranks) + i for i, s in enumerate(special_tokens)}
    return tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)


# ----------------------------------------------------------------------------- files


def save_bpe(enc: tiktoken.Encoding, path: str | os.PathLike) -> Path:
    """Write `enc`'s ranks to `path` in the `.tiktoken` format; return the path.

    One line per token, sorted by rank: the token's bytes in base64, a space, the rank. Special
    tokens are not stored (`load_bpe` adds them back after the ranks). The file is written to a
    temporary name and renamed, so a crash never leaves half a file, and the same ranks always
    give the same bytes.
    """
    path = Path(path)
    specials = {enc.encode_single_token(s) for s in enc.special_tokens_set}
    lines = []
    for rank in range(enc.max_token_value + 1):
        if rank not in specials:
            token = enc.decode_single_token_bytes(rank)
            lines.append(base64.b64encode(token) + b" " + str(rank).encode() + b"\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"".join(lines))
        os.chmod(tmp, 0o644)  # mkstemp makes the file private; a ranks file is for reading
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_bpe(
    path: str | os.PathLike,
    name: str | None = None,
    pattern: str = SPLIT_PATTERN,
    *,
    special_tokens: Sequence[str] = (EOT,),
) -> tiktoken.Encoding:
    """Load a `.tiktoken` ranks file written by `save_bpe` as a `tiktoken.Encoding`.

    name defaults to the file name without its extension; `special_tokens` get the ids after
    the last rank, in order. Raises FileNotFoundError for a missing file and ValueError (naming
    the line) for a malformed one.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"No BPE ranks file at {path}: train one with train_bpe() and save_bpe(), "
            "or use get_tokenizer() for the course tokenizer."
        )
    ranks = _parse_ranks(path.read_bytes(), str(path))
    specials = {s: len(ranks) + i for i, s in enumerate(special_tokens)}
    return tiktoken.Encoding(
        name or path.stem, pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials
    )


def _parse_ranks(data: bytes, source: str) -> dict[bytes, int]:
    """Parse `.tiktoken` text: ranks must run 0, 1, 2, ... and cover every single byte."""
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            b64, rank_text = line.split()
            token, rank = base64.b64decode(b64, validate=True), int(rank_text)
        except (ValueError, binascii.Error):
            raise ValueError(
                f"{source}, line {lineno}: expected '<base64 bytes> <rank>', got {line[:80]!r}"
            ) from None
        if rank != len(ranks):
            raise ValueError(
                f"{source}, line {lineno}: rank {rank} is out of order; ranks must run 0, 1, 2, "
                f"... in file order (expected {len(ranks)})."
            )
        if token in ranks:
            raise ValueError(f"{source}, line {lineno}: token {token!r} already has a rank.")
        ranks[token] = rank
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise ValueError(
            f"{source}: {len(missing)} single bytes have no rank (first: {missing[0]}), so some "
            "text could not be encoded; a byte-level BPE file must list all 256 bytes."
        )
    return ranks


# ----------------------------------------------------------------------------- tokenizers


# Later chapters add variants of the base tokenizers, named by a suffix ("wikitext2-chat":
# the course tokenizer plus chat's role tokens, chapter 09). They register here, so this
# module knows nothing of them: suffix -> builder(full name) -> Encoding.
_VARIANTS: dict[str, Callable[[str], tiktoken.Encoding]] = {}


def register_tokenizer_variant(suffix: str, build: Callable[[str], tiktoken.Encoding]) -> None:
    """Make `get_tokenizer(base + suffix)` return `build(base + suffix)` for every base name."""
    if not suffix.startswith("-"):
        raise ValueError(f"a tokenizer variant's suffix starts with '-', got {suffix!r}.")
    _VARIANTS[suffix] = build


def get_tokenizer(name: str = "wikitext2") -> tiktoken.Encoding:
    """The course tokenizer ("wikitext2", alias "course") or OpenAI's GPT-2 tokenizer ("gpt2").
    A registered variant's name ("wikitext2-chat", as chat checkpoints record it) gives that
    tokenizer plus the variant's tokens (see `wikigpt_lib.chat_template`).

    The course tokenizer ships inside the package and loads offline. GPT-2's files are
    downloaded by tiktoken on first use, or read from `$TIKTOKEN_CACHE_DIR`; when neither works
    this raises TokenizerUnavailableError.
    """
    for suffix, build in _VARIANTS.items():
        if name.endswith(suffix) and name.removesuffix(suffix) in TOKENIZER_NAMES:
            return build(name)
    if name in ("wikitext2", "course"):
        return _course_tokenizer()
    if name == "gpt2":
        return _gpt2_tokenizer()
    variants = "".join(f", each also with {s!r}" for s in _VARIANTS)
    raise ValueError(
        f"Unknown tokenizer {name!r}; valid names: {', '.join(TOKENIZER_NAMES)}{variants}."
    )


@functools.lru_cache(maxsize=1)
def _course_tokenizer() -> tiktoken.Encoding:
    asset = resources.files("wikigpt_lib") / "assets" / COURSE_TOKENIZER_FILE
    ranks = _parse_ranks(asset.read_bytes(), f"wikigpt_lib/assets/{COURSE_TOKENIZER_FILE}")
    return tiktoken.Encoding(
        Path(COURSE_TOKENIZER_FILE).stem,
        pat_str=SPLIT_PATTERN,
        mergeable_ranks=ranks,
        special_tokens={EOT: len(ranks)},
    )


def _gpt2_tokenizer() -> tiktoken.Encoding:
    # tiktoken downloads with `requests` and no timeout. Offline, a failed DNS lookup ends that
    # in well under a second, but a network that silently drops packets could stall for minutes,
    # so the load runs in a daemon thread that we stop waiting for after GPT2_LOAD_TIMEOUT_S.
    result: dict[str, object] = {}

    def load() -> None:
        try:
            result["enc"] = tiktoken.get_encoding("gpt2")
        except Exception as err:  # reported to the caller below
            result["err"] = err

    worker = threading.Thread(target=load, name="load-gpt2-tokenizer", daemon=True)
    worker.start()
    worker.join(GPT2_LOAD_TIMEOUT_S)
    if "enc" in result:
        return result["enc"]  # type: ignore[return-value]
    err = result.get("err")
    if err is not None and not isinstance(err, (OSError, ValueError, ImportError)):
        raise err  # a bug, not a missing file: let it through unchanged
    why = f"{type(err).__name__}: {err}" if err else f"no answer in {GPT2_LOAD_TIMEOUT_S:.0f} s"
    raise TokenizerUnavailableError(
        "The GPT-2 tokenizer files could not be downloaded "
        f"({why}). Connect to the internet once, or set TIKTOKEN_CACHE_DIR to a folder that "
        "holds a local copy of tiktoken's cached gpt2 files."
    ) from err


def bytes_per_token(enc: tiktoken.Encoding, text: str) -> float:
    """UTF-8 bytes of `text` per token of `enc` (plain encoding): higher means more compression."""
    n_tokens = len(enc.encode_ordinary(text))
    if n_tokens == 0:
        raise ValueError("bytes_per_token needs a non-empty text.")
    return len(text.encode("utf-8")) / n_tokens
