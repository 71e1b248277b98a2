"""A chat model: fine-tuning a pretrained GPT on conversations, saving and loading it, replies.

resize_token_embeddings() grow the (tied) embedding matrix so the model has rows for the role tokens
finetune_chat()           supervised fine-tuning, on the `Trainer` (checkpoints, resume, DDP)
chat_loss()               mean loss per assistant token of held-out conversations
save_chat_model(), load_chat_model()
chat(), chat_stream()     a reply to a conversation, whole or streamed piece by piece

The template is `wikigpt_lib.chat_template`, the data `wikigpt_lib.chat_data`; the terminal chat
behind `wikigpt chat` is `wikigpt_lib.cli_chat`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import tiktoken
import torch
from torch import nn

from wikigpt_lib.base import unwrap_model
from wikigpt_lib.chat_data import ConversationBatches, Pair
from wikigpt_lib.chat_template import (
    CHAT_SUFFIX,
    ChatDataError,
    Message,
    chat_token_ids,
    check_messages,
    encode_chat,
)
from wikigpt_lib.checkpoint import load_model_and_tokenizer, load_weights_into, save_checkpoint
from wikigpt_lib.config import TrainConfig
from wikigpt_lib.generation import TextStreamer, stream
from wikigpt_lib.metrics import loss_sums
from wikigpt_lib.model import GPT
from wikigpt_lib.text import detokenize as detokenize_text
from wikigpt_lib.tokenizer import EOT
from wikigpt_lib.train import Trainer


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


# ----------------------------------------------------------------------------- training


def chat_loss(
    model: nn.Module,
    pairs: Sequence[Pair],
    pad_id: int,
    batch_size: int = 32,
) -> float:
    """Mean loss (nats) per assistant token over all `pairs`, each token counted once."""
    total, count = loss_sums(model, ConversationBatches(pairs, pad_id).eval_batches(batch_size))
    return total / count


def finetune_chat(
    model: GPT,
    train_pairs: Sequence[Pair],
    config: TrainConfig,
    *,
    pad_id: int,
    val_pairs: Sequence[Pair] | None = None,
    pack: bool = False,
    callback: Callable[[dict[str, Any]], None] | None = None,
    run_dir: str | os.PathLike | None = None,
    tokenizer_name: str = "wikitext2-chat",
    resume: bool = False,
) -> list[dict[str, Any]]:
    """Supervised fine-tuning: train `model` in place on (inputs, targets) pairs, with the
    `Trainer` that pretrains (same optimizer, schedule, clipping, precision, early stopping).

    The pairs become a `ConversationBatches` source: batches of padded pairs, or with
    pack=True rows of block_size tokens into which the pairs are packed. With `val_pairs`,
    the held-out loss per assistant token is measured every eval_interval steps and at the
    end (over config.eval_batches batches; None: all of them). With `run_dir`, checkpoints
    are written there as in pretraining, under the tokenizer name `tokenizer_name`, so
    `load_chat_model(run_dir)` loads the best one; resume=True continues the run in `run_dir`
    from its latest checkpoint exactly (same pairs and config; max_steps may grow), and
    copies the result into `model`. callback: called with each optimizer step's train record.
    Returns the history: {"step", "split": "train" | "val", "loss", ...} records. The model is
    left in eval mode.
    """
    pack_to = unwrap_model(model).config.block_size if pack else None
    train = ConversationBatches(train_pairs, pad_id, pack_to=pack_to, seed=config.seed)
    val = ConversationBatches(val_pairs, pad_id) if val_pairs else None
    callbacks = [lambda trainer, record: callback(record)] if callback is not None else []
    if resume:
        if run_dir is None:
            raise ValueError("resume=True needs the run_dir of the run to continue.")
        trainer = Trainer.resume(run_dir, train, val, callbacks=callbacks, **config.to_dict())
    else:
        trainer = Trainer(
            model, train, val, config, run_dir=run_dir, tokenizer_name=tokenizer_name,
            callbacks=callbacks,
        )  # fmt: skip
    with trainer:
        result = trainer.fit()
    if trainer.model is not unwrap_model(model):  # resumed: a model rebuilt from the run
        model.load_state_dict(trainer.model.state_dict())
    model.eval()
    return result.history


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


def prompt_budget(model: nn.Module, max_new_tokens: int) -> int:
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
    kept = trim_messages(messages, tok, prompt_budget(gpt, max_new_tokens))
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
    yield from reply_pieces(model, messages, tok, detokenize, [], **sampling)


def reply_pieces(
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
