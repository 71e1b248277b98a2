"""WikiText-2: loading it from wherever it is, and tokenizing it.

load_wikitext2()      a DatasetDict (train / validation / test, one `text` column) whose rows
                      equal the Hugging Face `Salesforce/wikitext` rows
wikitext2_source()    where it came from: a folder, the hub, or the built-in sample corpus
tokenize_split()      a split -> one cached uint16 array of token ids

Reading the text (articles, detokenizing, word counts) is `wikigpt_lib.text`; cutting token
windows into batches is `wikigpt_lib.windows`. Their functions are importable from here too,
as notebook 02 builds them in one place.
"""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import tempfile
import threading
import warnings
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import numpy as np

from wikigpt_lib.sample_corpus import sample_wikitext
from wikigpt_lib.text import Article, as_rows, count_words, detokenize, split_articles
from wikigpt_lib.windows import (
    TokenWindowDataset,
    epoch_window_starts,
    get_batch,
    iter_eval_batches,
    windows_at,
)

__all__ = [  # the names notebook 02 and its solutions import from here
    "Article", "TokenWindowDataset", "WikiTextNotFoundError", "count_words", "detokenize",
    "epoch_window_starts", "get_batch", "iter_eval_batches", "load_corpus", "load_wikitext2",
    "rows_from_text", "split_articles", "tokenize_split", "wikitext2_source", "windows_at",
]  # fmt: skip

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


def hub_address() -> tuple[str, int]:
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
            with socket.create_connection(hub_address(), timeout=timeout):
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
        host, port = hub_address()
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
    rows = as_rows(rows)
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
