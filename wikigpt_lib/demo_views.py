"""The web demo's two views as plain functions, without Gradio (wikigpt_lib.demo builds the page
on them): each takes the text and the settings and yields (text so far, a Markdown note).

generate_text()     a prompt -> (the prompt and its continuation so far, note)
chat_reply()        a message and the conversation so far -> (the reply so far, note)
history_messages()  Gradio's chat history -> the library's messages

They never raise for bad input (an empty text, settings out of range): they yield ("", a note
that says what is wrong). WikiText's spacing: the course model was trained on `well @-@ known ,
1 @,@ 000`; with `wikitext=True` (the default for every tokenizer but GPT-2's) what the user
types is put in that spacing (`to_wikitext`) and the model's text is shown with it undone
(`TextStreamer`). The context: a prompt longer than the model's context keeps its end, as
`wikigpt generate` does, and the note says how long it was and what the limit is; a
conversation that outgrows the context forgets its oldest turns (`trim_messages`), and the
note says so.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from wikigpt_lib.base import unwrap_model
from wikigpt_lib.chat import chat_stream, prompt_budget, trim_messages
from wikigpt_lib.chat_template import CHAT_SUFFIX, Message
from wikigpt_lib.generation import TextStreamer, stream
from wikigpt_lib.text import to_wikitext

MAX_NEW_TOKENS, MAX_REPLY_TOKENS = 1000, 256  # the sliders' ranges (and what the API accepts)
EMPTY_MESSAGE = "The message is empty: type something to say to the model."


def is_chat_tokenizer(tok: Any) -> bool:
    """Whether `tok` has the chat role tokens (its name ends with "-chat")."""
    return str(getattr(tok, "name", "")).endswith(CHAT_SUFFIX)


def uses_wikitext_spacing(tok: Any) -> bool:
    """The default for `wikitext`: every tokenizer but GPT-2's was trained on WikiText."""
    return not str(getattr(tok, "name", "")).startswith("gpt2")


def _error(text: str) -> str:
    return f"**Error:** {text}"


def _whole(value: Any, what: str, lo: int, hi: int) -> int:
    """`value` as an int in [lo, hi]; ValueError naming `what` otherwise (the API accepts any
    JSON, and sliders send whole numbers as floats)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value != int(value) or not lo <= value <= hi:
        raise ValueError(f"{what} must be a whole number from {lo} to {hi}, got {value!r}.")
    return int(value)


def _seed(seed: Any) -> int | None:
    """None, or the seed as an int: the page sends the text of its seed box ("" for random)."""
    if isinstance(seed, str):
        seed = seed.strip()
        if not seed:
            return None
        seed = int(seed) if seed.isdigit() else seed  # anything else is refused below
    return None if seed is None else _whole(seed, "The seed", 0, 2**63 - 1)


def _sampling(max_new_tokens, temperature, top_k, top_p, seed, limit: int) -> dict[str, Any]:
    """The settings as `stream` takes them: top-k 0 and an empty seed mean none."""
    settings = {
        "max_new_tokens": _whole(max_new_tokens, "The number of tokens", 1, limit),
        "temperature": temperature,
        "top_k": None if top_k in (None, 0) else _whole(top_k, "Top-k", 1, 10**9),
        "top_p": top_p,
        "seed": _seed(seed),
    }
    ok = isinstance(temperature, numbers.Real) and not isinstance(temperature, bool)
    if not ok or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"Temperature must be a number >= 0 (0: greedy), got {temperature!r}.")
    ok = isinstance(top_p, numbers.Real) and not isinstance(top_p, bool)
    if top_p is not None and (not ok or not 0 < top_p <= 1):
        raise ValueError(f"Top-p must be in (0, 1] (1: no filter), got {top_p!r}.")
    return settings


def generate_text(
    model: nn.Module,
    tok: Any,
    prompt: str,
    max_new_tokens: int = 100,
    temperature: float = 1.0,
    top_k: int | None = 0,
    top_p: float | None = 1.0,
    seed: int | None = None,
    wikitext: bool = True,
) -> Iterator[tuple[str, str]]:
    """The generation view: yields (the prompt and its continuation so far, a Markdown note).

    The text is shown with WikiText's spacing undone when `wikitext` (and the prompt is put in
    that spacing first). top_k 0 or None: no top-k filter; top_p 1: none; seed None: random.
    Bad input yields ("", a note saying what is wrong) and nothing else. A prompt longer than
    the context keeps its last block_size tokens; the note says so and the text starts with
    "…" there.
    """
    try:
        sampling = _sampling(max_new_tokens, temperature, top_k, top_p, seed, MAX_NEW_TOKENS)
    except ValueError as err:
        yield "", _error(str(err))
        return
    if not isinstance(prompt, str) or not prompt.strip():
        yield "", _error("The prompt is empty: type the start of a text for the model to continue.")
        return
    text = to_wikitext(prompt) if wikitext else prompt
    add_space = not text[:1].isspace()  # WikiText rows start with a space (as in cmd_generate)
    ids = tok.encode_ordinary(" " * add_space + text)
    block_size = unwrap_model(model).config.block_size
    notes, head = [], ""
    if len(ids) > block_size:
        notes.append(
            f"Your prompt is {len(ids)} tokens long, more than this model's context of "
            f"{block_size} tokens: only its last {block_size} tokens were used, so the text "
            "below starts with “…” there."
        )
        ids, add_space, head = ids[-block_size:], False, "…"
    device = next(model.parameters()).device
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    try:
        tokens = stream(model, idx, **sampling)
    except ValueError as err:
        yield "", _error(str(err))
        return
    streamer = TextStreamer(tok, detokenize=wikitext)

    def shown(out: str) -> str:  # the space we added is not the user's: not shown
        return head + (out.removeprefix(" ") if add_space else out)

    out = streamer.add(ids)
    yield shown(out), " ".join(notes)
    start, n = time.perf_counter(), 0
    for token in tokens:
        out += streamer.add([int(token)])
        n += 1
        yield shown(out), " ".join(notes)
    out += streamer.flush()
    seconds = time.perf_counter() - start
    notes.append(f"{n} new tokens in {seconds:.1f} s ({n / max(seconds, 1e-9):.1f} tokens/s).")
    yield shown(out), " ".join(notes)


def _text_of(content: Any) -> str:
    """The text of a chat message's content as Gradio hands it over: a string, a list of
    {"type": "text", "text": ...} parts, or a multimodal {"text": ...} dict."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        text = content.get("text")
        return text if isinstance(text, str) else ""
    if isinstance(content, (list, tuple)):
        return "".join(_text_of(part) for part in content)
    return ""


def history_messages(history: Sequence[Any], convert=lambda s: s) -> list[Message]:
    """Gradio's chat history (messages as dicts with "role" and "content") as the library's
    messages, each content passed through `convert`. Empty messages (a turn that only got an
    error note) and roles other than user and assistant are left out."""
    out: list[Message] = []
    for m in history or ():
        role = m.get("role") if isinstance(m, dict) else None
        text = _text_of(m.get("content")) if isinstance(m, dict) else ""
        if role in ("user", "assistant") and text.strip():
            out.append({"role": role, "content": convert(text)})
    return out


NOT_A_CHAT_MODEL = (
    "This checkpoint is not a chat model: its tokenizer ({name}) has no chat tokens such as "
    "`<|user|>`, so it was never fine-tuned on conversations. Fine-tune it first (notebook 09, "
    "or `wikigpt_lib.chat.finetune_chat` and `save_chat_model`) and start the demo on that "
    "checkpoint; the Generate tab works with this one."
)


def chat_reply(
    model: nn.Module,
    tok: Any,
    message: Any,
    history: Sequence[Any] = (),
    system: str = "",
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = 0,
    top_p: float | None = 1.0,
    seed: int | None = None,
    wikitext: bool = True,
) -> Iterator[tuple[str, str]]:
    """The chat view: yields (the reply so far, a Markdown note) to `message` after `history`
    (Gradio's list of {"role", "content"} dicts, oldest first).

    With `wikitext`, what the user typed (the history's replies too) is put in WikiText's
    spacing and the reply is shown with it undone. The conversation is trimmed from its oldest
    turns to fit the context with room for the reply; a message too long on its own keeps its
    end. The note says when either happens. With a seed, reply n uses seed + n, as
    `wikigpt chat` does. Bad input yields ("", a note saying what is wrong).
    """
    if not is_chat_tokenizer(tok):
        yield "", _error(NOT_A_CHAT_MODEL.format(name=f"`{getattr(tok, 'name', tok)}`"))
        return
    try:
        sampling = _sampling(max_new_tokens, temperature, top_k, top_p, seed, MAX_REPLY_TOKENS)
    except ValueError as err:
        yield "", _error(str(err))
        return
    text = _text_of(message)
    if not text.strip():
        yield "", _error(EMPTY_MESSAGE)
        return
    convert = to_wikitext if wikitext else (lambda s: s)
    past = history_messages(history, convert)
    system = _text_of(system)
    messages = [{"role": "system", "content": convert(system)}] if system.strip() else []
    messages += [*past, {"role": "user", "content": convert(text)}]
    budget = prompt_budget(model, sampling["max_new_tokens"])
    kept = trim_messages(messages, tok, budget)
    block_size = unwrap_model(model).config.block_size
    room = f"this model's context is {block_size} tokens, {block_size - budget} of them kept for"
    room += " the reply"
    notes = []
    if kept[-1]["content"] != messages[-1]["content"]:
        n = len(tok.encode_ordinary(" " + messages[-1]["content"]))
        notes.append(
            f"Your message is {n} tokens long and {room}: only the end of your message was "
            "used, and nothing said before it."
        )
    elif len(kept) < len(messages):
        notes.append(
            f"The conversation no longer fits ({room}): its oldest "
            f"{len(messages) - len(kept)} messages were left out of what the model sees."
        )
    if sampling["seed"] is not None:
        sampling["seed"] += sum(m["role"] == "assistant" for m in past)
    reply = ""
    yield reply, " ".join(notes)
    for piece in chat_stream(model, kept, tok, detokenize=wikitext, **sampling):
        reply += piece
        yield reply, " ".join(notes)
    if not reply.strip():
        notes.append("The model ended its reply at once, with nothing in it.")
        yield reply, " ".join(notes)
