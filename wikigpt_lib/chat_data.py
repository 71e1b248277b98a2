"""Supervised fine-tuning data for chat: conversations, and batches of them for the Trainer.

wikitext_sft_examples()   question/answer conversations derived from WikiText-2's articles
load_jsonl_examples()     your own data: Alpaca-style {"instruction", "input", "output"} JSONL
sft_pair()                one conversation -> (inputs, targets), prompt targets set to -100
encode_examples()         many conversations -> pairs that fit the context
pad_batch(), pack_pairs() many pairs -> (B, T) batches: padded, or packed into full windows
ConversationBatches       pairs as a batch source for the Trainer (what finetune_chat trains on)
sft_batches()             the same batches as an endless iterator
"""

from __future__ import annotations

import bisect
import json
import os
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import tiktoken
import torch

from wikigpt_lib.chat_template import (
    ChatDataError,
    ChatEncoding,
    Message,
    check_messages,
    encode_chat,
)
from wikigpt_lib.model import IGNORE_INDEX
from wikigpt_lib.text import split_articles

Pair = tuple[list[int], list[int]]  # (inputs, targets) of one conversation


# ----------------------------------------------------------------------------- SFT data


@dataclass
class ChatExample:
    """One training conversation and the kind of task it is ("about", "alpaca", ...)."""

    task: str
    messages: list[Message] = field(default_factory=list)


_SENTENCE_END = re.compile(r"(?<= [.!?]) (?=[A-Z0-9\"'(<])")  # " . " before a capital etc.
_SECTION = re.compile(r"^ = = ([^=].*?) = = $")  # level 2; " = = = Sub = = = " stays inside


def split_sentences(paragraph: str) -> list[str]:
    """A WikiText paragraph -> its sentences, cut after " . " / " ? " / " ! " where the next
    word starts with a capital, a digit, a quote, a bracket or <unk>. Rough (" St . Louis"
    is cut too) but deterministic."""
    return [s.strip() for s in _SENTENCE_END.split(paragraph.strip()) if s.strip()]


def _sections(text: str) -> list[tuple[str, list[str]]]:
    """An article's text -> [(heading, paragraphs)], the lead first with heading ""."""
    sections: list[tuple[str, list[str]]] = [("", [])]
    for row in text.split("\n"):
        match = _SECTION.match(row)
        if match:
            sections.append((match.group(1), []))
        elif row.strip() and not row.lstrip().startswith("="):  # skip sub-headings
            sections[-1][1].append(row.strip())
    return sections


def _short(text: str, max_words: int) -> bool:
    return 0 < len(text.split()) <= max_words


def _join_list(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else " , ".join(items[:-1]) + " and " + items[-1]


def _article_examples(
    title: str, text: str, max_words: int, max_sections: int
) -> Iterator[ChatExample]:
    """The conversations one article gives (see `wikitext_sft_examples`)."""

    def ask(task: str, question: str, answer: str) -> ChatExample:
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return ChatExample(task, messages)

    sections = _sections(text)
    lead = split_sentences(" ".join(sections[0][1]))
    if lead and _short(lead[0], max_words):
        yield ask("about", f"What is the article {title} about ?", lead[0])
        yield ask("title", f"Give a title for this text : {lead[0]}", title)
        if len(lead) > 1 and _short(lead[1], max_words):
            yield ask("next", f"Continue the text : {lead[0]}", lead[1])
    headings = [h for h, paragraphs in sections[1:] if paragraphs]
    if headings and _short(_join_list(headings), max_words):
        yield ask(
            "sections", f"What are the sections of the article {title} ?", _join_list(headings)
        )
    n = 0
    for heading, paragraphs in sections[1:]:
        first = split_sentences(paragraphs[0])[:1] if paragraphs else []
        if n < max_sections and first and _short(first[0], max_words):
            question = f"Summarise the section {heading} of the article {title} ."
            yield ask("section", question, first[0])
            n += 1


SFT_TASKS = ("about", "title", "next", "sections", "section")


def wikitext_sft_examples(
    rows: Iterable[str], max_words: int = 32, max_sections: int = 2
) -> list[ChatExample]:
    """Single-turn conversations derived from WikiText articles, deterministically.

    rows: the rows of a split (a list of str or a Dataset). Per article (title row " = T = "):
    - about:    "What is the article T about ?" -> the first sentence of its lead
    - title:    "Give a title for this text : <that sentence>" -> T
    - next:     "Continue the text : <that sentence>" -> the lead's second sentence
    - sections: "What are the sections of the article T ?" -> "A , B and C"
    - section:  "Summarise the section H of the article T ." -> the section's first sentence
      (for the first `max_sections` sections)
    Every answer and quoted sentence has at most `max_words` words; longer ones are skipped, so
    examples fit a short context. Text keeps WikiText's spacing, like the pretraining data.
    """
    examples = []
    for article in split_articles(rows):
        examples.extend(_article_examples(article.title, article.text, max_words, max_sections))
    return examples


def _jsonl_row(row: Any, where: str) -> ChatExample:
    if not isinstance(row, dict):
        raise ChatDataError(f"{where}: expected a JSON object, got {type(row).__name__}.")
    if "messages" in row:
        try:
            return ChatExample("chat", check_messages(row["messages"]))
        except ChatDataError as err:
            raise ChatDataError(f"{where}: {err}") from None
    for key in ("instruction", "output"):
        if key not in row:
            keys = ", ".join(sorted(row)) or "none"
            raise ChatDataError(
                f"{where}: missing {key!r} (keys: {keys}); a row needs 'instruction' and "
                "'output', and optionally 'input' (or a 'messages' list)."
            )
    for key in ("instruction", "input", "output"):
        if key in row and not isinstance(row[key], str):
            raise ChatDataError(
                f"{where}: {key!r} must be a string, got {type(row[key]).__name__}."
            )
    if not row["instruction"].strip() or not row["output"].strip():
        raise ChatDataError(f"{where}: 'instruction' and 'output' must not be empty.")
    prompt = row["instruction"]
    if row.get("input", "").strip():
        prompt += "\n" + row["input"]
    messages = [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": row["output"]},
    ]
    return ChatExample("alpaca", messages)


def load_jsonl_examples(path: str | os.PathLike) -> list[ChatExample]:
    """Conversations from a JSON Lines file, one object per line (blank lines are skipped):

    {"instruction": "...", "input": "... (optional)", "output": "..."}   (Alpaca style)
    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}

    An Alpaca row becomes user: instruction (+ newline + input), assistant: output. Raises
    ChatDataError naming the file and the line of the first malformed row.
    """
    path = Path(path)
    examples = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ChatDataError(
                    f"{where}: not valid JSON ({err.msg}, column {err.colno})."
                ) from None
            examples.append(_jsonl_row(row, where))
    if not examples:
        raise ChatDataError(f"{path} holds no examples (it is empty).")
    return examples


# ----------------------------------------------------------------------------- batches


def sft_pair(enc: ChatEncoding) -> tuple[list[int], list[int]]:
    """Inputs ids[:-1] and targets ids[1:], with every target that is not the assistant's set
    to -100 (IGNORE_INDEX), so the loss is only on the tokens the model should write."""
    x = enc.ids[:-1]
    y = [
        t if keep else IGNORE_INDEX for t, keep in zip(enc.ids[1:], enc.assistant[1:], strict=True)
    ]
    return x, y


def encode_examples(
    examples: Iterable[ChatExample], tok: tiktoken.Encoding, block_size: int
) -> list[tuple[list[int], list[int]]]:
    """`sft_pair` of every example that fits in `block_size` positions; the others are left
    out with a warning (cutting them would drop the end of an answer, or all of it)."""
    pairs, skipped = [], 0
    for ex in examples:
        x, y = sft_pair(encode_chat(ex.messages, tok))
        if len(x) > block_size or all(t == IGNORE_INDEX for t in y):
            skipped += 1
            continue
        pairs.append((x, y))
    if skipped:
        warnings.warn(
            f"{skipped} of {skipped + len(pairs)} examples left out: longer than block_size "
            f"{block_size} or without an assistant reply.",
            stacklevel=2,
        )
    return pairs


def pad_batch(
    pairs: Sequence[tuple[list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs -> x, y (B, T) with T the longest pair; shorter ones are padded on the right with
    `pad_id` in x and -100 in y. Right padding is safe with causal attention: real tokens
    never attend to the padding after them, and padding positions add no loss."""
    T = max(len(x) for x, _ in pairs)
    x = torch.full((len(pairs), T), pad_id, dtype=torch.long)  # (B, T)
    y = torch.full((len(pairs), T), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    for row, (xi, yi) in enumerate(pairs):
        x[row, : len(xi)] = torch.tensor(xi)
        y[row, : len(yi)] = torch.tensor(yi)
    return x, y


def pack_pairs(
    pairs: Sequence[tuple[list[int], list[int]]], block_size: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairs laid end to end in rows of `block_size`, in order, a new row started when the next
    pair does not fit; the rest of each row is padding. Returns x, y (N, block_size).

    Packing wastes fewer positions than padding, at a price: GPT.forward has no attention mask
    and counts positions from 0 in each row, so a packed conversation also sees the ones before
    it in its row, at later positions. Each starts with its role token, and the targets are
    still only the assistant's tokens, so the model can learn to disregard what came before.
    """
    rows: list[tuple[list[int], list[int]]] = []
    for x, y in pairs:
        if len(x) > block_size:
            raise ValueError(f"a pair of {len(x)} tokens does not fit block_size {block_size}.")
        if not rows or len(rows[-1][0]) + len(x) > block_size:
            rows.append(([], []))
        rows[-1][0].extend(x)
        rows[-1][1].extend(y)
    xs, ys = pad_batch(rows, pad_id)
    pad = block_size - xs.size(1)  # every row to the full block
    xs = torch.nn.functional.pad(xs, (0, pad), value=pad_id)
    ys = torch.nn.functional.pad(ys, (0, pad), value=IGNORE_INDEX)
    return xs, ys


class ConversationBatches:
    """(inputs, targets) pairs as a batch source for the `Trainer`: training batches of
    `batch_size` pairs padded to their longest (`pad_batch`), or, with `pack_to`, of
    `batch_size` rows of `pack_to` tokens into which the pairs are packed (`pack_pairs`); and
    all pairs in order, padded, for evaluation (each assistant token counted once).

    Training visits the pairs epoch after epoch, each epoch in a new order drawn from
    (seed, epoch) alone, so the batches of a step depend on the step only: a resumed run
    continues exactly, and N processes with batch B see what one with batch N*B would.
    """

    def __init__(
        self, pairs: Sequence[Pair], pad_id: int, *, pack_to: int | None = None, seed: int = 0
    ) -> None:
        if not pairs:
            raise ValueError("no training pairs: is the data empty, or every example too long?")
        self.pairs, self.pad_id, self.pack_to, self.seed = list(pairs), pad_id, pack_to, seed
        self._rows_before = [0]  # packed: rows in the epochs before epoch e, for e = 0, 1, ...
        self._cache: dict[tuple[str, int], Any] = {}  # the last few epochs' orders and rows

    def __len__(self) -> int:
        return len(self.pairs)

    def _cached(self, kind: str, epoch: int, make: Callable[[], Any]) -> Any:
        key = (kind, epoch)
        if key not in self._cache:
            if len(self._cache) >= 8:  # a step touches at most two epochs: keep a few
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = make()
        return self._cache[key]

    def _order(self, epoch: int) -> list[int]:
        """Epoch `epoch`'s order of the pairs, from (seed, epoch) alone."""

        def make() -> list[int]:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            return torch.randperm(len(self.pairs), generator=g).tolist()

        return self._cached("order", epoch, make)

    def _packed(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Epoch `epoch`'s pairs, in its order, packed into rows of pack_to tokens."""

        def make() -> tuple[torch.Tensor, torch.Tensor]:
            pairs = [self.pairs[i] for i in self._order(epoch)]
            return pack_pairs(pairs, self.pack_to, self.pad_id)

        return self._cached("rows", epoch, make)  # built once per epoch, not once per row

    def _row(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed row number k of the endless stream of epochs."""
        while self._rows_before[-1] <= k:  # count the rows of one more epoch
            epoch = len(self._rows_before) - 1
            self._rows_before.append(self._rows_before[-1] + len(self._packed(epoch)[0]))
        epoch = bisect.bisect_right(self._rows_before, k) - 1
        xs, ys = self._packed(epoch)
        return xs[k - self._rows_before[epoch]], ys[k - self._rows_before[epoch]]

    def _batch(self, ks: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pack_to is not None:
            rows = [self._row(k) for k in ks]
            return torch.stack([x for x, _ in rows]), torch.stack([y for _, y in rows])
        n = len(self.pairs)
        return pad_batch([self.pairs[self._order(k // n)[k % n]] for k in ks], self.pad_id)

    def step_batches(
        self, step: int, config: Any, rank: int, world_size: int, generator: torch.Generator
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This process's grad_accum_steps micro-batches for optimizer step `step`."""
        accum, batch = config.grad_accum_steps, config.batch_size
        first = step * accum * world_size * batch  # items (pairs or rows) before this step
        out = []
        for a in range(accum):
            start = first + (a * world_size + rank) * batch
            out.append(self._batch(list(range(start, start + batch))))
        return out

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every pair once, in order, padded in batches of `batch_size`."""
        for i in range(0, len(self.pairs), batch_size):
            yield pad_batch(self.pairs[i : i + batch_size], self.pad_id)


def sft_batches(
    pairs: Sequence[Pair],
    batch_size: int,
    pad_id: int,
    *,
    pack_to: int | None = None,
    seed: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches `ConversationBatches` gives the Trainer, step after step (one process, no
    accumulation), as an endless iterator: x, y (B, T)."""
    source = ConversationBatches(pairs, pad_id, pack_to=pack_to, seed=seed)
    config = SimpleNamespace(grad_accum_steps=1, batch_size=batch_size)
    step = 0
    while True:
        yield source.step_batches(step, config, 0, 1, None)[0]
        step += 1
