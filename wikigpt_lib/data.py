"""WikiText-2: loading it from wherever it is, reading it, tokenizing it, and batching it.

load_wikitext2()      a DatasetDict (train / validation / test, one `text` column) whose rows
                      equal the Hugging Face `Salesforce/wikitext` rows
wikitext2_source()    where it came from: a folder, the hub, or the built-in sample corpus
split_articles()      rows -> articles (title, text)
detokenize()          undo WikiText's spacing (` @-@ `, ` , `) for display
count_words()         the word count that word-level perplexity is normalised by
tokenize_split()      a split -> one cached uint16 array of token ids
get_batch()           random (x, y) windows for training, y shifted by one
iter_eval_batches()   non-overlapping sequential windows for evaluation
TokenWindowDataset    the same windows as a torch Dataset
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import socket
import tempfile
import threading
import warnings
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import numpy as np
import torch

from wikigpt_lib.sample_corpus import sample_wikitext

if TYPE_CHECKING:  # `datasets` takes ~1.5 s to import: only load it when data is loaded
    from datasets import Dataset, DatasetDict

VARIANTS = {"tokens": "wikitext-2-v1", "raw": "wikitext-2-raw-v1"}
SPLITS = {"train": "train", "validation": "valid", "test": "test"}  # HF split -> file name part
HUB_DATASET = "Salesforce/wikitext"
DATA_ENV, CACHE_ENV = "WIKIGPT_DATA_DIR", "WIKIGPT_CACHE_DIR"
SAMPLE_SOURCE = "built-in sample corpus"

# Where each DatasetDict that load_wikitext2 returned came from, for `wikitext2_source`. Keyed
# by id() with a weak reference beside it, so a recycled id can't report a stale source.
_SOURCES: dict[int, tuple[weakref.ref, str]] = {}


class WikiTextNotFoundError(FileNotFoundError):
    """WikiText-2 was found in none of the places `load_wikitext2` looks."""


# ----------------------------------------------------------------------------- loading


def rows_from_text(text: str) -> list[str]:
    """The rows of a WikiText file as Hugging Face gives them: one per line, "\\n" kept,
    whitespace-only lines as "". Splits on "\\n" only (str.splitlines would also split on
    characters such as U+2028 that may appear inside a line)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the file's final newline ends the last row, it doesn't start a new one
    return [line + "\n" if line.strip() else "" for line in lines]


def _read_rows(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise OSError(f"Cannot read {path}: {err.strerror}. Check the file's permissions.") from err
    try:
        return rows_from_text(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not UTF-8 text (bad byte at offset {err.start}). Is it the original "
            "WikiText-2 file? Download it again, unchanged."
        ) from err


def _to_datasetdict(rows: dict[str, list[str]]) -> DatasetDict:
    from datasets import Dataset, DatasetDict

    return DatasetDict({split: Dataset.from_dict({"text": r}) for split, r in rows.items()})


def _from_folder(folder: Path, variant: str) -> DatasetDict:
    suffix = "tokens" if variant == "tokens" else "raw"
    paths = {split: folder / f"wiki.{part}.{suffix}" for split, part in SPLITS.items()}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        present = sorted(p.name for p in folder.iterdir())
        raise WikiTextNotFoundError(
            f"{folder} does not hold {', '.join(missing)} (it holds: {present or 'nothing'}). "
            f"It should contain the original files wiki.train.{suffix}, wiki.valid.{suffix} and "
            f"wiki.test.{suffix} of {VARIANTS[variant]}."
        )
    return _to_datasetdict({split: _read_rows(path) for split, path in paths.items()})


def _hub_address() -> tuple[str, int]:
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Can we open a connection to the hub? Asked once per process and given `timeout` seconds
    in all (name lookup included), so an offline machine finds out at once instead of waiting
    out the hub client's retries (~25 s)."""
    result = []

    def probe() -> None:
        try:
            with socket.create_connection(_hub_address(), timeout=timeout):
                result.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)  # a hung DNS lookup can't block us
    thread.start()
    thread.join(timeout)
    return bool(result)


def _hub_offline() -> tuple[bool, bool]:
    """(offline mode asked for by the environment, offline mode seen by `datasets`)."""
    import datasets

    asked = any(
        os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )
    return asked, bool(datasets.config.HF_HUB_OFFLINE)


def _from_hub(variant: str) -> DatasetDict:
    from datasets import DatasetDict, load_dataset

    ds = load_dataset(HUB_DATASET, VARIANTS[variant])
    return DatasetDict({split: ds[split] for split in SPLITS})


def _try_hub(variant: str, tried: list[str]) -> DatasetDict | None:
    """The hub, or in offline mode the copy `datasets` cached when it downloaded it before."""
    asked, seen = _hub_offline()
    if asked and not seen:
        tried.append(
            "Hugging Face hub: skipped (HF_HUB_OFFLINE is set, but only after `datasets` was "
            "imported, so it can't read its cache offline: set it before importing)"
        )
        return None
    if not seen and not hub_reachable():
        host, port = _hub_address()
        tried.append(
            f"Hugging Face hub: {host}:{port} cannot be reached (offline?). If you downloaded "
            "it before, set HF_HUB_OFFLINE=1 to load the copy in the datasets cache"
        )
        return None
    try:
        return _from_hub(variant)
    except Exception as err:  # any failure of the download or the cache is reported the same way
        where = "datasets cache (offline mode)" if seen else "hub"
        tried.append(f"Hugging Face {where}: {type(err).__name__}: {err}")
        return None


def load_wikitext2(
    variant: str = "tokens", data_dir: str | os.PathLike | None = None, fallback: str | None = None
) -> DatasetDict:
    """Load WikiText-2 as a DatasetDict with splits train / validation / test (column `text`).

    variant: "tokens" (`wikitext-2-v1`, rare words as `<unk>`, the classic benchmark) or "raw"
        (`wikitext-2-raw-v1`). Rows equal the Hugging Face `Salesforce/wikitext` rows.
    Looks in `data_dir`, then `$WIKIGPT_DATA_DIR` (a folder with the original
    `wiki.{train,valid,test}.tokens` or `.raw` files), then the Hugging Face hub (downloaded
    once and cached by `datasets`; with HF_HUB_OFFLINE=1 only that cache). A folder that does
    not exist is skipped with a warning; one that exists but lacks a file is an error. If
    nothing works, raises `WikiTextNotFoundError` saying what was tried, unless
    `fallback="sample"`: then it warns and returns the built-in sample corpus (NOT WikiText-2).
    `wikitext2_source(ds)` tells where the result came from.
    """
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r}: use one of {sorted(VARIANTS)}.")
    if fallback not in (None, "sample"):
        raise ValueError(f"fallback must be None or 'sample', not {fallback!r}.")
    tried = []
    for label, folder in (("data_dir", data_dir), (f"${DATA_ENV}", os.environ.get(DATA_ENV))):
        if not folder:
            tried.append(f"{label}: not set")
            continue
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            tried.append(f"{label}: {folder} is not a folder")
            warnings.warn(f"{label} {folder} is not a folder: ignoring it.", stacklevel=2)
            continue
        return _remember(_from_folder(folder, variant), str(folder))
    ds = _try_hub(variant, tried)
    if ds is not None:
        return _remember(ds, f"Hugging Face hub ({HUB_DATASET}, {VARIANTS[variant]})")
    if fallback == "sample":
        warnings.warn(
            "\n" + "!" * 78 + "\nWikiText-2 could not be loaded, so the built-in SAMPLE corpus is "
            "used instead: a small invented encyclopedia. Everything runs, but the results are "
            f"NOT WikiText-2 results. Set {DATA_ENV} to a folder with the wiki.*.tokens files to "
            "use the real data. Tried:\n  - " + "\n  - ".join(tried) + "\n" + "!" * 78,
            stacklevel=2,
        )
        return _remember(_to_datasetdict(_sample_rows(variant)), SAMPLE_SOURCE)
    suffix = "tokens" if variant == "tokens" else "raw"
    raise WikiTextNotFoundError(
        "WikiText-2 could not be found. Tried:\n  - " + "\n  - ".join(tried) + "\nFix: set "
        f"{DATA_ENV} (or pass data_dir=) to a folder holding the original wiki.train.{suffix}, "
        f"wiki.valid.{suffix} and wiki.test.{suffix} files of {VARIANTS[variant]}, connect to "
        "the internet, or pass fallback='sample' to use the small built-in sample corpus."
    )


CORPORA = ("wikitext-2", "wikitext-2-raw", "sample", "sample-raw")


def load_corpus(name: str) -> DatasetDict:
    """A corpus by name, as the command line takes it: "wikitext-2" (wikitext-2-v1, from
    $WIKIGPT_DATA_DIR or the hub), "wikitext-2-raw", "sample" / "sample-raw" (the built-in
    sample corpus), or a folder holding wiki.{train,valid,test}.tokens (or .raw) files."""
    if name in ("wikitext-2", "wikitext-2-raw"):
        return load_wikitext2("raw" if name.endswith("raw") else "tokens")
    if name in ("sample", "sample-raw"):
        variant = "raw" if name.endswith("raw") else "tokens"
        return _remember(_to_datasetdict(_sample_rows(variant)), SAMPLE_SOURCE)
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise ValueError(
            f"unknown data {name!r}: use one of {', '.join(CORPORA)}, or a folder holding "
            "the wiki.train.tokens, wiki.valid.tokens and wiki.test.tokens files."
        )
    variant = "raw" if (folder / "wiki.train.raw").is_file() else "tokens"
    return load_wikitext2(variant, data_dir=folder)


def _sample_rows(variant: str) -> dict[str, list[str]]:
    rows = sample_wikitext(variant)
    return {split: rows[part] for split, part in SPLITS.items()}


def _remember(ds: DatasetDict, source: str) -> DatasetDict:
    key = id(ds)
    _SOURCES[key] = (weakref.ref(ds, lambda _: _SOURCES.pop(key, None)), source)
    return ds


def wikitext2_source(ds: DatasetDict) -> str:
    """Where `load_wikitext2` found `ds`: its folder, the Hugging Face hub, or
    "built-in sample corpus". Objects it did not return give "unknown"."""
    ref, source = _SOURCES.get(id(ds), (None, ""))
    return source if ref is not None and ref() is ds else "unknown (not made by load_wikitext2)"


# ----------------------------------------------------------------------------- reading

_HEADING = re.compile(r"^ = ([^=].*?) = \n$")  # exactly one "=" each side: an article title


def _as_rows(rows: Iterable[str] | Dataset) -> list[str]:
    """A list of row strings from a list, a Dataset (its `text` column) or a datasets Column
    (converted in one go: iterating a Column row by row is ~100x slower)."""
    if isinstance(rows, str):
        raise TypeError("Expected rows of text (a list of str or a Dataset), got one str.")
    if hasattr(rows, "column_names"):  # a datasets.Dataset
        rows = rows["text"]
    rows = rows[:] if hasattr(rows, "column_name") else list(rows)  # datasets Column -> list
    if not all(isinstance(row, str) for row in rows):
        raise TypeError("Expected rows of text (str), e.g. ds['train']['text'].")
    return rows


@dataclass(frozen=True)
class Article:
    title: str
    text: str  # the article's rows after its title row, joined (the title row is left out)


def split_articles(rows: Iterable[str] | Dataset) -> list[Article]:
    """Split rows into articles. An article starts at a title row ` = Title = ` (one "=" each
    side) that has a blank row before and after it, as every WikiText-2 title does; without
    that check a few table rows such as ` = Played , W = ` would count (629 train "articles"
    instead of 600). ` = = Section = = ` rows are sections inside an article. Rows before the
    first title are dropped."""
    rows = _as_rows(rows)
    articles: list[Article] = []
    title, body = None, []
    for i, row in enumerate(rows):
        match = _HEADING.match(row)
        blank_before = i == 0 or not rows[i - 1].strip()
        blank_after = i + 1 == len(rows) or not rows[i + 1].strip()
        if match and blank_before and blank_after:
            if title is not None:
                articles.append(Article(title, "".join(body)))
            title, body = match.group(1), []
        elif title is not None:
            body.append(row)
    if title is not None:
        articles.append(Article(title, "".join(body)))
    return articles


_DETOKENIZE_RULES = [
    (re.compile(r" @(.)@ "), r"\1"),  # 1 @,@ 000 -> 1,000; well @-@ known -> well-known
    (re.compile(r" ([.,;:!?)\]}]|'s|'t|n't|'re|'ve|'ll|'d|'m)(?=\s|$)"), r"\1"),  # no space before
    (re.compile(r"([(\[{]) "), r"\1"),  # no space after an opening bracket
    (re.compile(r'" ([^"\n]*?) "'), r'"\1"'),  # " quoted words " -> "quoted words"
]


def detokenize(text: str) -> str:
    """Undo WikiText's tokenized spacing for display: `a well @-@ known town , 1 @,@ 000 ( est . )`
    becomes `a well-known town, 1,000 (est.)`. A lone ` ' ` stays as it is: a plural possessive
    and a single quote look alike. For reading only: models train on the original text."""
    for pattern, repl in _DETOKENIZE_RULES:
        text = pattern.sub(repl, text)
    return text


def count_words(rows: Iterable[str] | Dataset) -> int:
    """Words as the word-level perplexity literature counts them: whitespace-separated tokens
    plus one end-of-line per row, blank rows included (wikitext-2-v1: validation 217,646,
    test 245,569)."""
    return sum(len(row.split()) + 1 for row in _as_rows(rows))


# ----------------------------------------------------------------------------- tokenizing


def _tokenizer_key(tokenizer) -> str:
    """A fingerprint of the tokenizer's vocabulary, so two encodings with one name differ."""
    h = hashlib.sha256(tokenizer.name.encode())
    ranks = getattr(tokenizer, "_mergeable_ranks", None)
    if ranks is not None:
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            h.update(rank.to_bytes(4, "little") + len(token).to_bytes(2, "little") + token)
    h.update(repr(sorted(getattr(tokenizer, "_special_tokens", {}).items())).encode())
    h.update(str(getattr(tokenizer, "_pat_str", "")).encode())
    h.update(str(tokenizer.n_vocab).encode())
    return h.hexdigest()[:16]


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "wikigpt"
    return Path(cache_dir).expanduser()


def _safe_cut(prev: str, row: str) -> bool:
    """Can the text be cut between `prev` and `row` without changing how it encodes? Yes when
    `prev` ends a line and `row` starts with one space and then a visible character, as every
    WikiText row does. In the whole text, the GPT-2 and cl100k pre-tokenizer regexes then end
    a pre-token exactly at the cut: the whitespace run before the row's first word, minus the
    space that joins that word. Other cuts can change the encoding (" a \\n" + "b" and
    " a \\n" + "  b" both do). Tested against whole-text encoding, also on WikiText-2 itself."""
    second = row[1:2]
    return (
        prev.endswith("\n")
        and row[:1] == " "
        and second.isprintable()
        and not second.isspace()
        and second != ""
    )


def _blocks(rows: list[str], size: int = 1 << 16) -> list[str]:
    """Join rows into blocks of about `size` characters, cut only where `_safe_cut` allows."""
    blocks, block, n = [], [], 0
    for row in rows:
        if n >= size and row and _safe_cut(block[-1], row):
            blocks.append("".join(block))
            block, n = [], 0
        if row:
            block.append(row)
            n += len(row)
    return blocks + ["".join(block)] if block else blocks


def tokenize_split(
    rows: Iterable[str] | Dataset,
    tokenizer,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> np.ndarray:
    """Encode a split as one stream of token ids (rows concatenated as they are, "\\n" included).

    rows: strings, or a Dataset with a `text` column. tokenizer: a tiktoken.Encoding, or any
    object with `encode_ordinary(str) -> list[int]`, `n_vocab` and `name`.
    Returns a 1-D uint16 array (uint32 if the vocabulary has more than 65,536 tokens), cached
    as `.npy` under `cache_dir`, `$WIKIGPT_CACHE_DIR` or `~/.cache/wikigpt`, keyed by a hash of
    the text and of the tokenizer, so a second call returns at once.
    """
    rows = _as_rows(rows)
    dtype = np.uint16 if tokenizer.n_vocab <= 2**16 else np.uint32
    digest = hashlib.sha256()
    for row in rows:
        digest.update(row.encode("utf-8"))
    path = _cache_dir(cache_dir) / f"{digest.hexdigest()[:16]}-{_tokenizer_key(tokenizer)}.npy"
    if use_cache and path.is_file():
        try:
            ids = np.load(path, allow_pickle=False)
            if ids.ndim == 1 and ids.dtype == dtype:
                return ids
        except (ValueError, OSError, EOFError):
            pass  # a broken cache file (e.g. from a crash): rebuild it below
    blocks = _blocks(rows)
    if hasattr(tokenizer, "encode_ordinary_batch"):  # tiktoken: several threads at once
        encoded = tokenizer.encode_ordinary_batch(blocks)
    else:
        encoded = [tokenizer.encode_ordinary(block) for block in blocks]
    parts = [np.array(block, dtype=dtype) for block in encoded]
    ids = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    if use_cache:
        _save_atomic(path, ids)
    return ids


def _save_atomic(path: Path, array: np.ndarray) -> None:
    """Write to a temporary file, then rename: readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
        try:
            np.save(f, array)
        except BaseException:
            f.close()
            os.unlink(f.name)
            raise
    os.replace(f.name, path)


# ----------------------------------------------------------------------------- batching


def _check_sizes(data: np.ndarray, batch_size: int, block_size: int) -> None:
    if not isinstance(data, np.ndarray) or data.ndim != 1:
        raise TypeError("data must be a 1-D numpy array of token ids, as tokenize_split returns.")
    if batch_size < 1 or block_size < 1:
        raise ValueError(
            f"batch_size and block_size must be >= 1 (got {batch_size}, {block_size})."
        )
    if len(data) < block_size + 1:
        raise ValueError(
            f"The data has {len(data)} tokens, too few for one window of block_size={block_size} "
            "plus its shifted target: use a smaller block_size or more data."
        )


def get_batch(
    data: np.ndarray,
    batch_size: int,
    block_size: int,
    *,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random training windows from a token array: x (B, T) and y (B, T), int64 on `device`,
    where y[:, t] is the token that follows x[:, t] in the text. Every start is equally
    likely; reproducible with a seeded (CPU) `generator`."""
    _check_sizes(data, batch_size, block_size)
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # (B,)
    return windows_at(data, starts, block_size, device=device)


def windows_at(
    data: np.ndarray,
    starts: torch.Tensor,
    block_size: int,
    *,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows that begin at `starts` (B,): x = data[s : s+T] and y = data[s+1 : s+T+1]
    for each start s, as int64 tensors (B, T) on `device`."""
    offsets = starts[:, None] + torch.arange(block_size + 1)  # (B, T+1)
    chunk = torch.from_numpy(data[offsets.numpy()].astype(np.int64))  # (B, T+1)
    x, y = chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()  # (B, T), (B, T)
    if torch.device(device).type == "cuda":  # pinned memory lets the copy overlap compute
        x, y = x.pin_memory(), y.pin_memory()
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def epoch_window_starts(
    n_tokens: int, block_size: int, seed: int, first: int, count: int
) -> torch.Tensor:
    """Starts of training windows number `first` ... `first + count - 1` (int64, (count,)) in
    an endless stream of epochs over a split of `n_tokens` tokens.

    Epoch e cuts the split into W = (n_tokens - T) // T non-overlapping windows shifted by a
    random offset in [0, T), and visits them in a random order; offset and order come from
    (seed, e) alone. So every window is seen once per epoch (random starts with replacement
    miss about a third of them), each epoch sees different cuts, and the k-th window of the
    stream depends only on k: a resumed run continues exactly.
    """
    windows = (n_tokens - block_size) // block_size
    if windows < 1:
        raise ValueError(
            f"{n_tokens} tokens hold no window of block_size={block_size} plus its target."
        )
    flat = torch.arange(first, first + count)
    starts = torch.empty(count, dtype=torch.int64)
    for epoch in flat.div(windows, rounding_mode="floor").unique().tolist():
        offset, order = _epoch_order(n_tokens, block_size, seed, epoch)
        here = flat // windows == epoch
        starts[here] = offset + order[flat[here] % windows] * block_size
    return starts


@functools.lru_cache(maxsize=4)
def _epoch_order(n_tokens: int, block_size: int, seed: int, epoch: int) -> tuple[int, torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    offset = int(torch.randint(block_size, (1,), generator=g))
    return offset, torch.randperm((n_tokens - block_size) // block_size, generator=g)


class TokenWindowDataset(torch.utils.data.Dataset):
    """Windows of `block_size` tokens and their targets shifted by one, every `stride` tokens
    (default: block_size, i.e. non-overlapping). The last partial window is dropped."""

    def __init__(self, data: np.ndarray, block_size: int, stride: int | None = None) -> None:
        _check_sizes(data, 1, block_size)
        self.data, self.block_size = data, block_size
        self.stride = block_size if stride is None else stride
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}.")

    def __len__(self) -> int:
        return (len(self.data) - 1 - self.block_size) // self.stride + 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        s = i * self.stride
        chunk = torch.from_numpy(self.data[s : s + self.block_size + 1].astype(np.int64))
        return chunk[:-1], chunk[1:]  # (T,), (T,)


def iter_eval_batches(
    data: np.ndarray, batch_size: int, block_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) int64 batches of shape (B, T) that cover the split in order with
    non-overlapping windows: window i is data[i*T : (i+1)*T] and its targets shifted by one.
    The last batch may hold fewer than `batch_size` windows; the < T + 1 tokens after the last
    whole window are left out (at most T tokens of a split: negligible for perplexity)."""
    _check_sizes(data, batch_size, block_size)
    n_windows = (len(data) - 1) // block_size
    for first in range(0, n_windows, batch_size):
        starts = torch.arange(first, min(first + batch_size, n_windows)) * block_size  # (B,)
        offsets = starts[:, None] + torch.arange(block_size + 1)  # (B, T+1)
        chunk = torch.from_numpy(data[offsets.numpy()].astype(np.int64))  # (B, T+1)
        yield chunk[:, :-1].contiguous(), chunk[:, 1:].contiguous()
