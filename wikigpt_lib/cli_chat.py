"""The terminal chat behind `wikigpt chat`: read a line, stream the reply, keep the conversation
within the model's context."""

from __future__ import annotations

import sys
from typing import Any, TextIO

import tiktoken
from torch import nn

from wikigpt_lib.chat import prompt_budget, reply_pieces, trim_messages
from wikigpt_lib.chat_template import Message
from wikigpt_lib.text import to_wikitext


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
    budget = prompt_budget(model, sampling.get("max_new_tokens", 64))
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
            for piece in reply_pieces(
                model, history, tok, detokenize, ids, seed=reply_seed, **sampling
            ):
                stdout.write(piece)
                stdout.flush()
        except KeyboardInterrupt:
            stdout.write(" [stopped]")
        stdout.write("\n")
        history.append({"role": "assistant", "content": tok.decode(ids).removeprefix(" ")})
        turn += 1
