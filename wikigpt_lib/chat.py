"""A small chat model: a chat template, supervised fine-tuning data, masked training, chatting.

The pieces, in the order notebook 09 builds them:

get_chat_tokenizer()      a tokenizer plus the role tokens <|system|> <|user|> <|assistant|> <|end|>
resize_token_embeddings() grow the (tied) embedding matrix so the model has rows for them
encode_chat()             messages -> token ids and a mask of the assistant's tokens
parse_chat()              token ids -> messages (the inverse of encode_chat)
wikitext_sft_examples()   question/answer conversations derived from WikiText-2's articles
load_jsonl_examples()     your own data: Alpaca-style {"instruction", "input", "output"} JSONL
sft_pair()                one conversation -> (inputs, targets), prompt targets set to -100
pad_batch(), pack_pairs() many pairs -> (B, T) batches: padded, or packed into full windows
finetune_chat()           the fine-tuning loop (AdamW, warmup + cosine, clipping)
chat(), chat_stream()     a reply to a conversation, whole or streamed piece by piece
chat_repl()               the interactive loop behind `wikigpt chat`

The template. Every message is its role token, its text with one leading space (WikiText rows
start with a space, so the first word gets the token the model saw at the start of lines),
then <|end|>:

    <|system|> Answer briefly .<|end|><|user|> Who wrote it ?<|end|><|assistant|> Ann .<|end|>

To ask for a reply, the prompt ends with <|assistant|> and the model writes the text and
<|end|>. Message text is always encoded as plain text, so a user who types "<|end|>" gets the
characters, never the special token: a conversation cannot be forged from inside a message.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import tiktoken
import torch
from torch import nn

from wikigpt_lib.checkpoint import (
    load_model_and_tokenizer,
    load_weights_into,
    save_checkpoint,
    unwrap_model,
)
from wikigpt_lib.data import detokenize as detokenize_text
from wikigpt_lib.data import split_articles
from wikigpt_lib.generate import TextStreamer, stream
from wikigpt_lib.model import GPT, IGNORE_INDEX
from wikigpt_lib.optim import set_lr
from wikigpt_lib.tokenizer import CHAT_SUFFIX, EOT, get_tokenizer
from wikigpt_lib.train import (
    TrainConfig,
    TrainingDivergedError,
    _precision_for,
    configure_optimizer,
    loss_sums,
    lr_at,
)

SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
CHAT_TOKENS = (SYSTEM, USER, ASSISTANT, END)  # their ids follow the base vocabulary, in order
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}


class ChatDataError(ValueError):
    """Conversations or a data file that do not have the expected form; the message says where."""


# ----------------------------------------------------------------------------- tokenizer


def add_chat_tokens(base: tiktoken.Encoding, name: str | None = None) -> tiktoken.Encoding:
    """`base` plus the four role tokens as special tokens, with ids base.n_vocab ... +3.

    The base's ids, merges and special tokens are unchanged, so text encodes exactly as before
    and a model trained with `base` keeps its meaning for every old id.
    """
    specials = dict(base._special_tokens)
    clash = [t for t in CHAT_TOKENS if t in specials]
    if clash:
        raise ValueError(f"{base.name!r} already has the chat tokens {clash}.")
    specials.update({t: base.n_vocab + i for i, t in enumerate(CHAT_TOKENS)})
    return tiktoken.Encoding(
        name or base.name + CHAT_SUFFIX,
        pat_str=base._pat_str,
        mergeable_ranks=base._mergeable_ranks,
        special_tokens=specials,
    )


def get_chat_tokenizer(name: str = "wikitext2") -> tiktoken.Encoding:
    """The chat tokenizer built on a named base tokenizer: "wikitext2" (the course tokenizer,
    8192 + 4 = 8196 ids) or "gpt2" (50257 + 4). The "-chat" names that checkpoints store
    ("wikitext2-chat") are accepted too."""
    base = name.removesuffix(CHAT_SUFFIX)
    return add_chat_tokens(get_tokenizer(base), name=base + CHAT_SUFFIX)


def chat_token_ids(tok: tiktoken.Encoding) -> dict[str, int]:
    """The ids of the role tokens and <|end|> in `tok`, e.g. {"<|user|>": 8193, ...}."""
    missing = [t for t in CHAT_TOKENS if t not in tok._special_tokens]
    if missing:
        raise ValueError(
            f"tokenizer {tok.name!r} has no chat tokens {missing}: use get_chat_tokenizer()."
        )
    return {t: tok._special_tokens[t] for t in CHAT_TOKENS}


def resize_token_embeddings(model: GPT, vocab_size: int) -> GPT:
    """A copy of `model` with `vocab_size` token ids (at least its current number).

    Old rows are copied, so every old token means what it did. New rows start at the mean of
    the old embeddings (Hewitt 2021, "Initializing new word embeddings for pretrained language
    models"): a random row of norm comparable to the trained ones could get a large logit in
    every context, and the model would emit the new token everywhere before it learned what it
    means. The head is tied to the embedding, so the new rows are output rows as well.
    """
    model = unwrap_model(model)
    old = model.config.vocab_size
    if vocab_size < old:
        raise ValueError(f"vocab_size {vocab_size} is smaller than the model's {old}.")
    wte = model.transformer.wte.weight  # (V_old, C)
    new = GPT(model.config.replace(vocab_size=vocab_size)).to(device=wte.device, dtype=wte.dtype)
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    rows = wte.detach().mean(dim=0, keepdim=True).expand(vocab_size - old, -1)  # (V_new-V_old, C)
    state["transformer.wte.weight"] = torch.cat([wte.detach(), rows], dim=0)  # (V_new, C)
    load_weights_into(new, state, "resize_token_embeddings")
    return new.train(model.training)


# ----------------------------------------------------------------------------- template


def check_messages(messages: Sequence[Message]) -> list[Message]:
    """`messages` as a list of {"role", "content"} dicts, after checking its form.

    Roles are "system" (only as the first message), "user" and "assistant"; contents are
    strings. Raises ChatDataError naming the bad message.
    """
    if isinstance(messages, (str, dict)) or not isinstance(messages, Sequence):
        raise ChatDataError(
            "messages must be a list of {'role': ..., 'content': ...} dicts, got "
            f"{type(messages).__name__}."
        )
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            raise ChatDataError(f"messages[{i}] must be a dict with exactly 'role' and 'content'.")
        role, content = m["role"], m["content"]
        if role not in ROLE_TOKENS:
            raise ChatDataError(
                f"messages[{i}] has role {role!r}; use one of {', '.join(ROLE_TOKENS)}."
            )
        if role == "system" and i != 0:
            raise ChatDataError(f"messages[{i}]: a system message may only come first.")
        if not isinstance(content, str):
            raise ChatDataError(f"messages[{i}]: content must be a str, got {type(content)}.")
        out.append({"role": role, "content": content})
    return out


def render_chat(messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
    """The conversation as template text, for reading. `tok.encode(text, allowed_special="all")`
    gives the ids of `encode_chat` whenever no message contains a special token's text."""
    parts = [f"{ROLE_TOKENS[m['role']]} {m['content']}{END}" for m in check_messages(messages)]
    return "".join(parts) + (ASSISTANT if add_generation_prompt else "")


@dataclass
class ChatEncoding:
    """A conversation as token ids, and which ids the assistant wrote (its text and <|end|>)."""

    ids: list[int]
    assistant: list[bool]  # same length as ids


def encode_chat(
    messages: Sequence[Message], tok: tiktoken.Encoding, add_generation_prompt: bool = False
) -> ChatEncoding:
    """Token ids of the template (see the module docstring) and the assistant mask.

    add_generation_prompt: end with <|assistant|>, the prompt for the next reply.
    The mask is True on the ids of each assistant message's text and its <|end|>: exactly the
    tokens the model should learn to write. Role tokens are always given, never predicted.
    """
    special = chat_token_ids(tok)
    ids: list[int] = []
    mask: list[bool] = []
    for m in check_messages(messages):
        body = tok.encode_ordinary(" " + m["content"]) + [special[END]]
        ids += [special[ROLE_TOKENS[m["role"]]], *body]
        mask += [False] + [m["role"] == "assistant"] * len(body)
    if add_generation_prompt:
        ids.append(special[ASSISTANT])
        mask.append(False)
    return ChatEncoding(ids, mask)


def parse_chat(ids: Sequence[int], tok: tiktoken.Encoding) -> list[Message]:
    """Messages from template ids: the inverse of `encode_chat` (without a generation prompt).

    Raises ChatDataError if the ids do not follow the template (a role token, text, <|end|>).
    """
    special = chat_token_ids(tok)
    role_of = {special[t]: role for role, t in ROLE_TOKENS.items()}
    messages: list[Message] = []
    i, ids = 0, [int(t) for t in ids]
    while i < len(ids):
        if ids[i] not in role_of:
            raise ChatDataError(f"position {i}: expected a role token, got id {ids[i]}.")
        try:
            end = ids.index(special[END], i + 1)
        except ValueError:
            raise ChatDataError(f"position {i}: the message has no {END} token.") from None
        body = ids[i + 1 : end]
        if any(t in role_of for t in body):
            raise ChatDataError(f"position {i}: a role token inside a message.")
        text = tok.decode(body)
        messages.append({"role": role_of[ids[i]], "content": text.removeprefix(" ")})
        i = end + 1
    return check_messages(messages)


# ----------------------------------------------------------------------------- user text


_SPLIT_PUNCT = re.compile(r"""(?<!@)([.,;:!?()\[\]{}"]|--)(?!@)""")  # not inside " @,@ "
_JOINERS = [
    (re.compile(r"(?<=\d),(?=\d)"), " @,@ "),  # 1,000 -> 1 @,@ 000
    (re.compile(r"(?<=\d)\.(?=\d)"), " @.@ "),  # 3.5 -> 3 @.@ 5
    (re.compile(r"(?<=\w)-(?=\w)"), " @-@ "),  # well-known -> well @-@ known
]
_CLITICS = re.compile(r"(?i)(?<=\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")


def to_wikitext(text: str) -> str:
    """Plain text -> WikiText-2's spacing, the form the course model was trained on:
    "It's well-known (1,000 km)." -> "It 's well @-@ known ( 1 @,@ 000 km ) .".

    Roughly the inverse of `wikigpt_lib.data.detokenize`; meant for what a user types.
    """
    text = " ".join(text.split())
    for pattern, repl in _JOINERS:
        text = pattern.sub(repl, text)
    text = _CLITICS.sub(r" \1", text)
    text = _SPLIT_PUNCT.sub(r" \1 ", text)
    return " ".join(text.split())


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


def _epochs(n: int, generator: torch.Generator) -> Iterator[int]:
    while True:  # each epoch a new random order of all n items
        yield from torch.randperm(n, generator=generator).tolist()


def sft_batches(
    pairs: Sequence[tuple[list[int], list[int]]],
    batch_size: int,
    pad_id: int,
    *,
    pack_to: int | None = None,
    seed: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless random batches x, y (B, T) for fine-tuning, epoch after epoch.

    Without `pack_to`, a batch is `batch_size` pairs padded to the longest (`pad_batch`); with
    it, each epoch's shuffled pairs are packed into rows of `pack_to` tokens (`pack_pairs`)
    and a batch is `batch_size` rows.
    """
    if not pairs:
        raise ValueError("no training pairs: is the data empty, or every example too long?")
    generator = torch.Generator().manual_seed(seed)
    if pack_to is None:
        order = _epochs(len(pairs), generator)
        while True:
            yield pad_batch([pairs[next(order)] for _ in range(batch_size)], pad_id)
    while True:
        perm = torch.randperm(len(pairs), generator=generator).tolist()
        xs, ys = pack_pairs([pairs[i] for i in perm], pack_to, pad_id)
        # Whole batches only, but at least one: a few pairs may pack into fewer rows than that.
        for start in range(0, max(1, len(xs) - batch_size + 1), batch_size):
            yield xs[start : start + batch_size], ys[start : start + batch_size]


# ----------------------------------------------------------------------------- training


@torch.no_grad()
def chat_loss(
    model: nn.Module,
    pairs: Sequence[tuple[list[int], list[int]]],
    pad_id: int,
    batch_size: int = 32,
) -> float:
    """Mean loss (nats) per assistant token over all `pairs`, each token counted once."""
    batches = (
        pad_batch(pairs[i : i + batch_size], pad_id) for i in range(0, len(pairs), batch_size)
    )
    total, count = loss_sums(model, batches)
    return total / count


def finetune_chat(
    model: GPT,
    train_pairs: Sequence[tuple[list[int], list[int]]],
    config: TrainConfig,
    *,
    pad_id: int,
    val_pairs: Sequence[tuple[list[int], list[int]]] | None = None,
    pack: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Supervised fine-tuning: train `model` in place on (inputs, targets) pairs.

    Uses from `config`: max_steps, batch_size, lr / min_lr / warmup_steps (warmup + cosine),
    weight_decay, betas, grad_clip, seed, device, precision, log_interval and eval_interval
    (when `val_pairs` is given, `chat_loss` on them then and at the end). pack=True packs
    pairs into full rows of block_size (`pack_pairs`) instead of padding each batch.
    Returns the history: {"step", "split": "train" | "val", "loss", ...} records, also passed
    to `callback` as they come.
    """
    device = torch.device(config.device) if config.device else next(model.parameters()).device
    precision = _precision_for(config.precision, device)
    model.to(device).train()
    optimizer = configure_optimizer(model, config, device.type)
    scaler = torch.amp.GradScaler(device.type, enabled=precision.use_grad_scaler)
    torch.manual_seed(config.seed)  # dropout masks
    pack_to = model.config.block_size if pack else None
    batches = sft_batches(train_pairs, config.batch_size, pad_id, pack_to=pack_to, seed=config.seed)
    history: list[dict[str, Any]] = []

    def record(r: dict[str, Any]) -> None:
        history.append(r)
        if callback is not None:
            callback(r)

    start = time.perf_counter()
    for step in range(config.max_steps):
        set_lr(optimizer, lr_at(step, config))  # each group at its own scale (Muon's is larger)
        x, y = next(batches)
        with precision.autocast():
            _, loss = model(x.to(device), y.to(device))
        if not torch.isfinite(loss):
            raise TrainingDivergedError(
                f"the loss is {loss.item()} at step {step + 1}: lower config.lr, or check the "
                "pairs (a batch whose targets are all masked has no loss)."
            )
        scaler.scale(loss).backward()
        if config.grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        done = step + 1
        if done % config.log_interval == 0 or done == config.max_steps:
            elapsed = round(time.perf_counter() - start, 2)
            record({"step": done, "split": "train", "loss": round(loss.item(), 5),
                    "lr": lr_at(step, config), "elapsed_s": elapsed})  # fmt: skip
        if val_pairs and (done % config.eval_interval == 0 or done == config.max_steps):
            val = chat_loss(model, val_pairs, pad_id, config.batch_size)
            record({"step": done, "split": "val", "loss": round(val, 5)})
    model.eval()
    return history


def save_chat_model(
    run_dir: str | os.PathLike,
    model: GPT,
    tok: tiktoken.Encoding,
    *,
    config: TrainConfig | None = None,
    history: Sequence[dict[str, Any]] = (),
    data: str = "",
) -> Path:
    """Save a fine-tuned chat model as a checkpoint `wikigpt chat --checkpoint` can load; its
    tokenizer name (e.g. "wikitext2-chat") tells `load_chat_model` to add the chat tokens."""
    if not tok.name.endswith(CHAT_SUFFIX):
        raise ValueError(f"{tok.name!r} is not a chat tokenizer: use get_chat_tokenizer().")
    vals = [r["loss"] for r in history if r.get("split") == "val"]
    steps = [r["step"] for r in history]
    state = {"step": max(steps, default=0), "best_val_loss": min(vals, default=None)}
    return save_checkpoint(
        run_dir, model=model, train_config=config, state=state, tokenizer=tok.name, data=data,
        is_best=True,
    )  # fmt: skip


def load_chat_model(
    path: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[GPT, tiktoken.Encoding]:
    """A fine-tuned chat model (best checkpoint of a run, or a checkpoint folder) in eval mode,
    and its chat tokenizer. Raises ValueError for a model that was never chat-tuned."""
    model, tok, ckpt = load_model_and_tokenizer(path, "best", map_location=device)
    if not ckpt.tokenizer.endswith(CHAT_SUFFIX):
        raise ValueError(
            f"{ckpt.path} holds a model without chat tokens (tokenizer {ckpt.tokenizer!r}): "
            "fine-tune it first (notebook 09, or wikigpt_lib.chat.finetune_chat and "
            "save_chat_model), then chat with that checkpoint."
        )
    return model, tok


# ----------------------------------------------------------------------------- chatting


def _fit(messages: list[Message], tok: tiktoken.Encoding, budget: int) -> list[Message] | None:
    """The longest tail of `messages` that starts with a user message and, with the system
    message (if any) and the generation prompt, fits in `budget` tokens; None if none fits."""
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system) :]
    for head in (system, []):
        for start, m in enumerate(turns):
            if m["role"] != "user":
                continue
            kept = head + turns[start:]
            if len(encode_chat(kept, tok, add_generation_prompt=True).ids) <= budget:
                return kept
    return None


def trim_messages(
    messages: Sequence[Message], tok: tiktoken.Encoding, budget: int
) -> list[Message]:
    """The conversation cut to fit `budget` tokens (its prompt for the next reply included).

    The oldest turns go first, a user message and the replies after it together; the system
    message stays while anything else fits. If even the last user message alone is too long,
    only its end is kept. `messages` must end with a user message.
    """
    messages = check_messages(messages)
    if not messages or messages[-1]["role"] != "user":
        raise ChatDataError("the conversation must end with a user message to be answered.")
    kept = _fit(messages, tok, budget)
    if kept is not None:
        return kept
    room = budget - 4  # <|user|>, the leading space's token at worst, <|end|>, <|assistant|>
    if room < 1:
        raise ValueError(f"a budget of {budget} tokens leaves no room for a message.")
    tail = tok.encode_ordinary(" " + messages[-1]["content"])[-room:]
    content = tok.decode(tail).lstrip(" ")
    return [{"role": "user", "content": content}]


def _prompt_budget(model: nn.Module, max_new_tokens: int) -> int:
    """Tokens the conversation may take so that min(max_new_tokens, block_size // 2) new
    tokens still fit in the context."""
    block_size = unwrap_model(model).config.block_size
    return block_size - max(1, min(max_new_tokens, block_size // 2))


def reply_tokens(
    model: nn.Module,
    messages: Sequence[Message],
    tok: tiktoken.Encoding,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> Iterator[int]:
    """The ids of the assistant's reply to `messages`, one at a time, without the closing
    <|end|>. The conversation is trimmed (`trim_messages`) so that the prompt leaves room for
    min(max_new_tokens, block_size // 2) new tokens; generation stops at <|end|> or any other
    special token, or after `max_new_tokens`. temperature 0 (default) is greedy."""
    gpt = unwrap_model(model)
    kept = trim_messages(messages, tok, _prompt_budget(gpt, max_new_tokens))
    ids = encode_chat(kept, tok, add_generation_prompt=True).ids
    device = next(gpt.parameters()).device
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    stops = set(chat_token_ids(tok).values())  # any role token also ends the reply
    if EOT in tok._special_tokens:
        stops.add(tok._special_tokens[EOT])
    for token in stream(
        model, idx, max_new_tokens, temperature, top_k, top_p, seed=seed, stop_tokens=stops
    ):
        if int(token) in stops:
            return
        yield int(token)


def chat_stream(
    model: nn.Module,
    messages: Sequence[Message],
    tok: tiktoken.Encoding,
    *,
    detokenize: bool = True,
    **sampling: Any,
) -> Iterator[str]:
    """The reply to `messages` as text pieces, as they are generated (for printing).

    detokenize: undo WikiText's spacing (` , ` -> `,`) as `wikigpt_lib.data.detokenize` does.
    sampling: max_new_tokens, temperature, top_k, top_p, seed (see `reply_tokens`).
    """
    yield from _reply_pieces(model, messages, tok, detokenize, [], **sampling)


def _reply_pieces(
    model: nn.Module,
    messages: Sequence[Message],
    tok: tiktoken.Encoding,
    detokenize: bool,
    ids: list[int],
    **sampling: Any,
) -> Iterator[str]:
    """`chat_stream`'s text pieces; the reply's token ids are appended to `ids` as they come
    (for a caller that keeps the conversation, even when it stops the reply early)."""
    streamer = TextStreamer(tok, detokenize=detokenize)
    started = False  # the reply starts with the template's space: not shown
    for token in reply_tokens(model, messages, tok, **sampling):
        ids.append(token)
        piece = streamer.add([token])
        if not started and piece:
            piece, started = piece.lstrip(" "), True
        yield piece
    tail = streamer.flush()
    yield tail.lstrip(" ") if not started else tail


def chat(
    model: nn.Module,
    messages: Sequence[Message],
    tok: tiktoken.Encoding,
    *,
    detokenize: bool = False,
    **sampling: Any,
) -> str:
    """The assistant's reply to `messages` (a list of {"role", "content"} ending with a user
    message), as a string without the template's leading space.

    detokenize=False (default) returns it in WikiText spacing, the form the training answers
    have, so it can go straight back into the conversation; True gives display text.
    sampling: max_new_tokens (64), temperature (0: greedy), top_k, top_p, seed.
    """
    text = tok.decode(list(reply_tokens(model, messages, tok, **sampling))).removeprefix(" ")
    return detokenize_text(text) if detokenize else text


def _read_line(stdin: TextIO, stdout: TextIO, prompt: str) -> str:
    """One line of input with its newline, "" at the end of input. A terminal gets `input()`,
    which offers line editing (arrow keys, history) where the readline module exists."""
    if stdin is sys.stdin and stdout is sys.stdout and stdin.isatty():
        try:
            return input(prompt) + "\n"
        except EOFError:
            return ""
    stdout.write(prompt)
    stdout.flush()
    return stdin.readline()


def chat_repl(
    model: nn.Module,
    tok: tiktoken.Encoding,
    *,
    system: str | None = None,
    wikitext_input: bool = True,
    detokenize: bool = True,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    **sampling: Any,
) -> int:
    """An interactive chat in the terminal; returns 0 when the user leaves.

    Each line typed is a user message (turned into WikiText spacing with `to_wikitext` unless
    `wikitext_input=False`); the reply streams as it is generated. The conversation is kept
    and trimmed from its oldest turns to fit the context. Commands: /exit (or /quit, or
    Ctrl-D) leaves, /reset forgets the conversation. Ctrl-C stops a reply; at the prompt it
    leaves. sampling: max_new_tokens, temperature, top_k, top_p, seed (seed + turn number is
    used for each reply, so a session replays the same).
    """
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    seed = sampling.pop("seed", None)
    history: list[Message] = [{"role": "system", "content": system}] if system else []
    budget = _prompt_budget(model, sampling.get("max_new_tokens", 64))
    stdout.write("Type a message and press Enter; /reset starts over, /exit or Ctrl-D quits.\n")
    turn = 0
    while True:
        try:
            line = _read_line(stdin, stdout, "you> ")
        except KeyboardInterrupt:
            line = ""
        if not line:  # end of input: Ctrl-D, or the end of a piped file
            stdout.write("\n")
            return 0
        text = line.strip()
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            history = history[:1] if system else []
            stdout.write("(conversation cleared)\n")
            continue
        if not text:
            continue
        history.append({"role": "user", "content": to_wikitext(text) if wikitext_input else text})
        history = trim_messages(history, tok, budget)  # what the reply sees, kept for next turn
        stdout.write("bot> ")
        ids: list[int] = []
        reply_seed = None if seed is None else seed + turn
        try:
            for piece in _reply_pieces(
                model, history, tok, detokenize, ids, seed=reply_seed, **sampling
            ):
                stdout.write(piece)
                stdout.flush()
        except KeyboardInterrupt:
            stdout.write(" [stopped]")
        stdout.write("\n")
        history.append({"role": "assistant", "content": tok.decode(ids).removeprefix(" ")})
        turn += 1
