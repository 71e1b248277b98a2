"""The chat template: role tokens added to a tokenizer, and conversations as token ids.

get_chat_tokenizer()  a tokenizer plus <|system|> <|user|> <|assistant|> <|end|>
encode_chat()         messages -> token ids and a mask of the assistant's tokens
parse_chat()          token ids -> messages (the inverse of encode_chat)
render_chat()         messages -> template text, for reading

The template. Every message is its role token, its text with one leading space (WikiText rows
start with a space, so the first word gets the token the model saw at the start of lines),
then <|end|>:

    <|system|> Answer briefly .<|end|><|user|> Who wrote it ?<|end|><|assistant|> Ann .<|end|>

To ask for a reply, the prompt ends with <|assistant|> and the model writes the text and
<|end|>. Message text is always encoded as plain text, so a user who types "<|end|>" gets the
characters, never the special token: a conversation cannot be forged from inside a message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import tiktoken

from wikigpt_lib.hf_tokenizer import register_chat_template
from wikigpt_lib.tokenizer import get_tokenizer, register_tokenizer_variant

SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
CHAT_TOKENS = (SYSTEM, USER, ASSISTANT, END)  # their ids follow the base vocabulary, in order
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
CHAT_SUFFIX = "-chat"  # "wikitext2-chat": the wikitext2 tokenizer plus the chat role tokens

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


# The same template in Jinja, for Hugging Face's `tokenizer.apply_chat_template`: an exported
# chat model's tokenizer_config.json holds it, and it gives the ids of `encode_chat` for
# messages whose text holds no special token's string (transformers reads such a string as
# the special token, encode_chat as plain text). Like check_messages, it refuses an unknown
# role and a system message after the first.
HF_CHAT_TEMPLATE = """\
{%- for message in messages %}
    {%- if message['role'] == 'system' and not loop.first %}
        {{- raise_exception('a system message may only come first') }}
    {%- endif %}
    {%- if message['role'] == 'system' %}{{- '<|system|>' }}
    {%- elif message['role'] == 'user' %}{{- '<|user|>' }}
    {%- elif message['role'] == 'assistant' %}{{- '<|assistant|>' }}
    {%- else %}{{- raise_exception('role ' ~ message['role'] ~ ': use system, user or assistant') }}
    {%- endif %}
    {{- ' ' ~ message['content'] ~ '<|end|>' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|assistant|>' }}{%- endif %}"""

# Checkpoints of chat models record "wikitext2-chat": get_tokenizer builds it through this,
# and an export writes HF_CHAT_TEMPLATE beside it.
register_tokenizer_variant(CHAT_SUFFIX, get_chat_tokenizer)
register_chat_template(CHAT_SUFFIX, len(CHAT_TOKENS), HF_CHAT_TEMPLATE)
