"""The course's tokenizers in the Hugging Face format, so `transformers.AutoTokenizer` gives
exactly the ids that tiktoken gives.

    save_hf_tokenizer(enc, folder)     tokenizer.json, tokenizer_config.json,
                                       special_tokens_map.json for a tiktoken Encoding
    build_hf_tokenizer(enc)            the same tokenizer as a `tokenizers.Tokenizer`

tiktoken and Hugging Face's `tokenizers` run the same algorithm, byte-level BPE, written down
in two ways. tiktoken keeps one table, bytes -> rank, and inside each pre-split chunk merges,
again and again, the adjacent pair of tokens whose joined bytes have the lowest rank (leftmost
on ties); a chunk that is a token as a whole is that token. `tokenizers` keeps a vocabulary
(token string -> id) and a list of merges, pairs of token strings, applied lowest index first.
So the conversion is:

- the vocabulary: every token's bytes as a string of GPT-2's byte alphabet
  (`bytes_to_unicode`: each byte one printable character), with the token's rank as its id;
- the merges: for each multi-byte token in rank order, every split of its bytes into two
  tokens of the vocabulary. tiktoken may join any such pair, whichever way the chunk was cut
  so far, so each split is listed, at the rank of the token it makes;
- `ignore_merges=True`: a chunk that is a token as a whole is that token, as in tiktoken;
- the pre-tokenizer: the Encoding's own split regex (behavior "isolated": every match is a
  chunk), then the byte-level mapping (`ByteLevel(use_regex=False)`: no second split);
- the special tokens (`<|endoftext|>`, a chat model's role tokens) as special added tokens at
  their ids; `<|endoftext|>` is also the bos and eos token.

`build_hf_tokenizer` checks the result against tiktoken before anything is written: every
token's id, and the ids of every token's text and of a sample of WikiText-like text.
Text that contains a special token's string is the one difference between the two ways of
calling: like every Hugging Face tokenizer, the exported one maps `<|endoftext|>` in text to
the special id (tiktoken's `enc.encode(text, allowed_special="all")`); call it with
`split_special_tokens=True` for tiktoken's `encode_ordinary`, which reads it as plain text.

A chat tokenizer (role tokens) also gets a chat template (Jinja) in tokenizer_config.json, so
`apply_chat_template` gives the ids of `wikigpt_lib.chat_template.encode_chat`. Chapter 09
registers that template here (`register_chat_template`), so this module knows nothing of chat.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import tiktoken

from wikigpt_lib.base import write_atomic, write_json_atomic
from wikigpt_lib.tokenizer import EOT

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"

# Text the conversion is checked on (besides every token of the vocabulary): WikiText's
# markup, whitespace runs, scripts, emoji, combining marks.
CHECK_TEXTS = (
    " = Valkyria Chronicles III = \n",
    " = = Gameplay = = \n \n",
    ' The game \'s <unk> , 1 @,@ 000 km @-@ long ( 2 @.@ 5 % ) ; " quoted " .\n',
    "Tabs\tand  double  spaces   end \n\n\n  ",
    "It's they're we've I'm you'll he'd 'S '",
    "Ünïcödé naïve café · Ελληνικά · русский · 中文 · العربية · हिन्दी",
    "emoji 😀👍🏽 and ZWJ 👩\u200d💻 e\u0301 a\u0300\u0316",
    "\u00a0\u2003\u3000\u200b\r\n\x0b\x0c\x85 mixed whitespace",
    "<unk><unk> <unk>  <unk>\n",
)

# Jinja chat templates of tokenizer variants, by name suffix ("-chat"), and how many special
# tokens each variant adds after its base tokenizer's (chapter 09 registers its own).
_CHAT_TEMPLATES: dict[str, tuple[int, str]] = {}


def register_chat_template(suffix: str, n_tokens: int, template: str) -> None:
    """Give tokenizers named base + `suffix` (which add `n_tokens` special tokens to the
    base) the Jinja chat template `template` when they are exported."""
    if not suffix.startswith("-"):
        raise ValueError(f"a tokenizer variant's suffix starts with '-', got {suffix!r}.")
    _CHAT_TEMPLATES[suffix] = (n_tokens, template)


def chat_template_for(name: str) -> str | None:
    """The registered chat template of the tokenizer named `name` ("wikitext2-chat"), or None."""
    for suffix, (_, template) in _CHAT_TEMPLATES.items():
        if name.endswith(suffix):
            return template
    return None


def variant_sizes() -> dict[str, int]:
    """Suffix -> how many special tokens the variant adds, for every registered variant."""
    return {suffix: n for suffix, (n, _) in _CHAT_TEMPLATES.items()}


# ----------------------------------------------------------------------------- conversion


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte alphabet: byte -> one printable character. Printable Latin-1 bytes stand
    for themselves; the rest (control characters, space, ...) map to U+0100 and up, in order,
    so that no token string holds whitespace or control characters (Radford et al., 2019;
    the same table as `tokenizers.pre_tokenizers.ByteLevel.alphabet()`)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    table = {b: chr(b) for b in keep}
    moved = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + i) for i, b in enumerate(moved)})
    return dict(sorted(table.items()))


_BYTE_CHARS = bytes_to_unicode()


def token_string(token: bytes) -> str:
    """A token's bytes in GPT-2's byte alphabet, as tokenizer.json spells it."""
    return "".join(_BYTE_CHARS[b] for b in token)


def bpe_vocab_and_merges(
    ranks: Mapping[bytes, int],
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """tiktoken's ranks (token bytes -> rank) as a BPE vocabulary (token string -> id = rank)
    and merges (pairs of token strings), in the order `tokenizers` applies them: each
    multi-byte token in rank order, with every split of it into two tokens of the vocabulary,
    left part shortest first."""
    vocab = {token_string(token): rank for token, rank in ranks.items()}
    if len(vocab) != len(ranks):
        raise ValueError("two tokens of the ranks map to one string: not a byte-level BPE.")
    merges = []
    for token, _ in sorted(ranks.items(), key=lambda item: item[1]):
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((token_string(left), token_string(right)))
    return vocab, merges


def build_hf_tokenizer(enc: tiktoken.Encoding, *, check: bool = True):
    """`enc` as a `tokenizers.Tokenizer` that encodes every text to the same ids (see the
    module docstring). check=True (default) verifies it against `enc` first and raises a
    ValueError naming the first text whose ids differ (e.g. a split regex the Oniguruma
    engine of `tokenizers` reads differently from tiktoken's)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    ranks = enc._mergeable_ranks
    specials = dict(sorted(enc._special_tokens.items(), key=lambda item: item[1]))
    vocab, merges = bpe_vocab_and_merges(ranks)
    ids = set(ranks.values())
    clash = [s for s, i in specials.items() if s in vocab or i in ids]
    if clash:
        raise ValueError(f"special token(s) {clash} collide with the BPE vocabulary.")
    vocab.update(specials)  # in the vocabulary too, so each added token keeps its id
    bpe = models.BPE(vocab=vocab, merges=merges, byte_fallback=False, ignore_merges=True)
    hf = Tokenizer(bpe)
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(enc._pat_str), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens(
        [
            AddedToken(s, special=True, normalized=False, lstrip=False, rstrip=False)
            for s in specials
        ]
    )
    wrong = [s for s, i in specials.items() if hf.token_to_id(s) != i]
    if wrong:
        raise ValueError(f"special token(s) {wrong} did not keep their ids.")
    if check:
        check_hf_tokenizer(hf, enc)
    return hf


def _token_texts(enc: tiktoken.Encoding) -> list[str]:
    texts = []
    for token in enc._mergeable_ranks:
        try:
            texts.append(token.decode("utf-8"))
        except UnicodeDecodeError:  # part of a character: no text of its own
            continue
    return texts


def check_hf_tokenizer(hf, enc: tiktoken.Encoding, texts: Iterable[str] = ()) -> None:
    """Raise a ValueError unless the `tokenizers.Tokenizer` `hf` gives `enc`'s ids (and text
    back) for every token of `enc` read as text, `CHECK_TEXTS` and `texts`."""
    for token, rank in enc._mergeable_ranks.items():
        if hf.token_to_id(token_string(token)) != rank:
            raise ValueError(f"token {token!r} has id {hf.token_to_id(token_string(token))}, "
                             f"not its rank {rank}.")  # fmt: skip
    samples = [*_token_texts(enc), *CHECK_TEXTS, "".join(CHECK_TEXTS), *texts]
    encoded = hf.encode_batch(samples, add_special_tokens=False)
    for text, got in zip(samples, encoded, strict=True):
        want = enc.encode_ordinary(text)
        if got.ids != want:
            raise ValueError(
                f"the Hugging Face tokenizer encodes {text!r} as {got.ids}, tiktoken as {want}: "
                f"its split pattern {enc._pat_str!r} may not mean the same in both regex engines."
            )
        if hf.decode(got.ids, skip_special_tokens=False) != enc.decode(want):
            raise ValueError(f"the Hugging Face tokenizer decodes {want} differently.")


# ----------------------------------------------------------------------------- files


def tokenizer_config(
    enc: tiktoken.Encoding, *, model_max_length: int | None, chat_template: str | None
) -> dict[str, Any]:
    """tokenizer_config.json: which class loads tokenizer.json (`PreTrainedTokenizerFast`,
    in transformers 4 and 5), the special tokens, no clean-up of spaces in decoding (it would
    turn WikiText's " ," into ","), and the chat template if there is one."""
    extra = sorted((s for s in enc._special_tokens if s != EOT), key=enc._special_tokens.get)
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "added_tokens_decoder": {
            str(i): {
                "content": s,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }  # fmt: skip
            for s, i in sorted(enc._special_tokens.items(), key=lambda item: item[1])
        },
    }
    if EOT in enc._special_tokens:
        config.update(bos_token=EOT, eos_token=EOT, unk_token=None, pad_token=None)
    if extra:
        config["additional_special_tokens"] = extra  # v5 reads it as extra_special_tokens
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    if chat_template is not None:
        config["chat_template"] = chat_template
    return config


def save_hf_tokenizer(
    enc: tiktoken.Encoding,
    folder: str | os.PathLike,
    *,
    model_max_length: int | None = None,
    chat_template: str | None = None,
    check_texts: Sequence[str] = (),
) -> list[Path]:
    """Write `enc` as tokenizer.json (built with `tokenizers`, checked against `enc`),
    tokenizer_config.json and special_tokens_map.json into `folder`, which
    `transformers.AutoTokenizer.from_pretrained(folder)` loads. Returns the paths written.

    model_max_length: the model's context, so transformers can warn about longer inputs.
    chat_template: a Jinja template for `apply_chat_template` (default: the one registered for
    `enc`'s name, e.g. "wikitext2-chat", if any). check_texts: more texts to check on.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    hf = build_hf_tokenizer(enc, check=False)
    check_hf_tokenizer(hf, enc, check_texts)
    if chat_template is None:
        chat_template = chat_template_for(enc.name)
    paths = [folder / TOKENIZER_FILE, folder / TOKENIZER_CONFIG_FILE, folder / SPECIAL_TOKENS_FILE]
    text = hf.to_str(pretty=True) + "\n"
    write_atomic(paths[0], lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    config = tokenizer_config(enc, model_max_length=model_max_length, chat_template=chat_template)
    write_json_atomic(paths[1], config)
    specials = {k: config[k] for k in ("bos_token", "eos_token") if k in config}
    if "additional_special_tokens" in config:
        specials["additional_special_tokens"] = config["additional_special_tokens"]
    write_json_atomic(paths[2], specials)
    return paths
