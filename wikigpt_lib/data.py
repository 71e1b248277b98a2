"""WikiText-2: loading it from wherever it is, reading it, tokenizing it, and batching it.

load_wikitext2()      a DatasetDict (train / validation / test, one `text` column) whose rows
                      equal the Hugging Face `Salesforce/wikitext` rows
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
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, DatasetDict

from wikigpt_lib.sample_corpus import sample_wikitext

VARIANTS = {"tokens": "wikitext-2-v1", "raw": "wikitext-2-raw-v1"}
SPLITS = {"train": "train", "validation": "valid", "test": "test"}  # HF split -> file name part
HUB_DATASET = "Salesforce/wikitext"
DATA_ENV, CACHE_ENV = "WIKIGPT_DATA_DIR", "WIKIGPT_CACHE_DIR"

# Where each loaded DatasetDict came from, for `wikitext2_source` (keyed by object id; the
# DatasetDict itself is a plain dict subclass we don't want to subclass or monkey with).
_SOURCES: dict[int, str] = {}


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


def _from_folder(folder: Path, variant: str) -> DatasetDict:
    suffix = "tokens" if variant == "tokens" else "raw"
    paths = {split: folder / f"wiki.{part}.{suffix}" for split, part in SPLITS.items()}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        raise WikiTextNotFoundError(
            f"{folder} does not hold {', '.join(missing)} (it holds: {present or 'nothing'}). "
            f"It should contain the original files wiki.train.{suffix}, wiki.valid.{suffix} and "
            f"wiki.test.{suffix} of {VARIANTS[variant]}."
        )
    return DatasetDict({s: Dataset.from_dict({"text": _read_rows(p)}) for s, p in paths.items()})


@functools.lru_cache(maxsize=1)
def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Can we open a connection to the hub? Asked once per process, so an offline machine
    finds out in a few seconds instead of waiting out the hub client's retries."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _from_hub(variant: str) -> DatasetDict:
    from datasets import load_dataset

    ds = load_dataset(HUB_DATASET, VARIANTS[variant])
    return DatasetDict({s: ds[s] for s in SPLITS})


def _sample(variant: str) -> DatasetDict:
    rows = sample_wikitext(variant)
    return DatasetDict({s: Dataset.from_dict({"text": rows[part]}) for s, part in SPLITS.items()})


def load_wikitext2(
    variant: str = "tokens", data_dir: str | os.PathLike | None = None, fallback: str | None = None
) -> DatasetDict:
    """Load WikiText-2 as a DatasetDict with splits train / validation / test (column `text`).

    variant: "tokens" (`wikitext-2-v1`, rare words as `<unk>`, the classic benchmark) or "raw"
        (`wikitext-2-raw-v1`).
    Looks in `data_dir`, then `$WIKIGPT_DATA_DIR` (a folder with the original
    `wiki.{train,valid,test}.tokens` or `.raw` files), then the Hugging Face hub (downloaded
    once and cached by `datasets`). If none works, raises `WikiTextNotFoundError` saying what
    was tried, unless `fallback="sample"`: then it warns and returns the built-in sample corpus
    (not WikiText-2!). `wikitext2_source(ds)` tells where the result came from.
    """
    if variant not in VARIANTS:
        raise ValueError(f"Unknown variant {variant!r}: use one of {sorted(VARIANTS)}.")
    if fallback not in (None, "sample"):
        raise ValueError(f"fallback must be None or 'sample', not {fallback!r}.")
    tried = []
    for label, folder in (("data_dir", data_dir), (f"${DATA_ENV}", os.environ.get(DATA_ENV))):
        if not folder:
            tried.append(f"{label}: not given")
            continue
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            tried.append(f"{label}: {folder} is not a folder")
            continue
        ds = _from_folder(folder, variant)  # a folder that exists but is incomplete is an error
        return _remember(ds, str(folder))
    offline = (
        os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
    )
    if offline:
        tried.append("Hugging Face hub: skipped (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)")
    elif not hub_reachable():
        tried.append("Hugging Face hub: huggingface.co cannot be reached (offline?)")
    else:
        try:
            return _remember(_from_hub(variant), f"Hugging Face hub ({HUB_DATASET})")
        except Exception as err:  # any failure of the download is reported the same way
            tried.append(f"Hugging Face hub: {type(err).__name__}: {err}")
    if fallback == "sample":
        warnings.warn(
            "WikiText-2 could not be loaded, so the built-in SAMPLE corpus is used instead: an "
            "invented encyclopedia, much smaller than WikiText-2. Everything runs, but the numbers "
            f"are not WikiText-2's. Set {DATA_ENV} to a folder with the wiki.*.tokens files to use "
            "the real data.",
            stacklevel=2,
        )
        return _remember(_sample(variant), "built-in sample corpus")
    raise WikiTextNotFoundError(
        "WikiText-2 could not be found. Tried:\n  - " + "\n  - ".join(tried) + "\nFix: set "
        f"{DATA_ENV} (or pass data_dir=) to a folder holding the original wiki.train.tokens, "
        "wiki.valid.tokens and wiki.test.tokens files (from wikitext-2-v1.zip), connect to the "
        "internet, or pass fallback='sample' to use the small built-in sample corpus."
    )


def _remember(ds: DatasetDict, source: str) -> DatasetDict:
    _SOURCES[id(ds)] = source
    return ds


def wikitext2_source(ds: DatasetDict) -> str:
    """Where `load_wikitext2` found `ds`: a folder path, the hub, or the built-in sample corpus."""
    return _SOURCES.get(id(ds), "unknown (not made by load_wikitext2)")


# ----------------------------------------------------------------------------- reading

_HEADING = re.compile(r"^ = ([^=].*?) = \n$")  # exactly one "=" each side: an article title


@dataclass(frozen=True)
class Article:
    title: str
    text: str  # the article's rows after its title row, joined


def split_articles(rows: Iterable[str]) -> list[Article]:
    """Split rows into articles. An article starts at a top-level heading row ` = Title = `;
    ` = = Section = = ` rows are sections inside it. Rows before the first title are dropped."""
    articles: list[Article] = []
    title, body = None, []
    for row in rows:
        match = _HEADING.match(row)
        if match:
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
    becomes `a well-known town, 1,000 (est.)`. For reading only: models train on the original."""
    for pattern, repl in _DETOKENIZE_RULES:
        text = pattern.sub(repl, text)
    return text


def count_words(rows: Iterable[str]) -> int:
    """Words as the word-level perplexity literature counts them: whitespace-separated tokens
    plus one end-of-line per row (validation 217,646 and test 245,569 for wikitext-2-v1)."""
    return sum(len(row.split()) + 1 for row in rows)


# ----------------------------------------------------------------------------- tokenizing


def _tokenizer_key(tokenizer) -> str:
    """A fingerprint of the tokenizer's vocabulary, so two encodings with one name differ."""
    h = hashlib.sha256(tokenizer.name.encode())
    ranks = getattr(tokenizer, "_mergeable_ranks", None)
    if ranks is not None:
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            h.update(rank.to_bytes(4, "little") + len(token).to_bytes(2, "little") + token)
    h.update(repr(sorted(getattr(tokenizer, "_special_tokens", {}).items())).encode())
    h.update(getattr(tokenizer, "_pat_str", "").encode())
    return h.hexdigest()[:16]


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "wikigpt"
    return Path(cache_dir).expanduser()


def tokenize_split(
    rows: Iterable[str] | Dataset,
    tokenizer,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> np.ndarray:
    """Encode a split as one stream of token ids (rows concatenated, newlines included).

    rows: a list of strings or a Dataset with a `text` column. tokenizer: a tiktoken.Encoding.
    Returns a 1-D uint16 array (uint32 if the vocabulary has more than 65,536 tokens), cached
    as `.npy` under `cache_dir`, `$WIKIGPT_CACHE_DIR` or `~/.cache/wikigpt`, keyed by a hash of
    the text and of the tokenizer, so a second call returns at once.
    """
    if isinstance(rows, Dataset):
        rows = rows["text"]
    rows = list(rows)
    dtype = np.uint16 if tokenizer.n_vocab <= 2**16 else np.uint32
    text_hash = hashlib.sha256("".join(rows).encode("utf-8")).hexdigest()[:16]
    path = _cache_dir(cache_dir) / f"{text_hash}-{_tokenizer_key(tokenizer)}.npy"
    if use_cache and path.is_file():
        try:
            return np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError):
            pass  # a broken cache file (e.g. from a crash): rebuild it below
    # Pre-splitting never joins text across "\n", so encoding blocks of whole rows gives the
    # same ids as encoding the whole text, and lets tiktoken use several threads.
    blocks = ["".join(rows[i : i + 1000]) for i in range(0, len(rows), 1000)]
    encoded = tokenizer.encode_ordinary_batch(blocks)
    ids = np.fromiter((t for block in encoded for t in block), dtype=dtype)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
            np.save(f, ids)
        os.replace(f.name, path)  # atomic: readers see the old file or the whole new one
    return ids


# ----------------------------------------------------------------------------- batching


def _check_sizes(data, batch_size: int, block_size: int) -> None:
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
    """Random training windows: x (B, T) and y (B, T), int64, where y[:, t] is the token that
    follows x[:, t] in the text. Reproducible with a seeded `generator`."""
    _check_sizes(data, batch_size, block_size)
    starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    x = torch.stack([torch.from_numpy(data[s : s + block_size].astype(np.int64)) for s in starts])
    y = torch.stack(
        [torch.from_numpy(data[s + 1 : s + 1 + block_size].astype(np.int64)) for s in starts]
    )
    return x.to(device), y.to(device)  # (B, T), (B, T)


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
    """Non-overlapping sequential windows covering the split in order, `batch_size` at a time
    (the last batch may be smaller; the tokens after the last whole window are left out)."""
    _check_sizes(data, batch_size, block_size)
    windows = TokenWindowDataset(data, block_size)
    for start in range(0, len(windows), batch_size):
        pairs = [windows[i] for i in range(start, min(start + batch_size, len(windows)))]
        yield torch.stack([x for x, _ in pairs]), torch.stack([y for _, y in pairs])
