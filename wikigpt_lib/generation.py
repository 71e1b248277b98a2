"""Text generation: greedy decoding, temperature, top-k, top-p (nucleus), and a KV cache.

generate()        (B, T) prompt ids -> (B, T + new) ids
stream()          the same tokens, yielded one step at a time (B,), as they are chosen
sample_probs()    logits -> the next-token distribution after temperature, top-k and top-p
top_k_filter()    keep the k most likely tokens, set the rest to -inf
top_p_filter()    keep the smallest set of tokens whose probability reaches p
KVCache           the keys and values of every layer for the tokens seen so far
forward_cached()  run only the new tokens through the model, attending to the cache
TextStreamer      token ids -> display text, piece by piece (UTF-8 and WikiText spacing)

Why a KV cache: without one, every new token re-runs the whole context through the model,
although the keys and values of the earlier tokens never change (attention is causal, so a
token's keys and values depend only on the tokens before it). Keeping them per layer turns
each step from a forward pass over T tokens into one over a single token.

The cache lives in the model: `GPT.forward(idx, cache=cache)` and `CausalSelfAttention` fill
and read it, so a cached step runs the same code as an uncached one, whatever the model's
position scheme.
"""

from __future__ import annotations

import bisect
import codecs
import math
import numbers
import re
import warnings
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from wikigpt_lib.attention import KVCache
from wikigpt_lib.base import unwrap_model
from wikigpt_lib.text import DETOKENIZE_RULES, detokenize

# ----------------------------------------------------------------------------- checks


def _check_temperature(temperature: float) -> None:
    ok = isinstance(temperature, numbers.Real) and not isinstance(temperature, bool)
    if not ok or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(
            f"temperature must be a finite number >= 0 (0 means greedy: always the most likely "
            f"token), got {temperature!r}."
        )


def _check_top_k(top_k: int | None) -> None:
    if top_k is None:
        return
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1:
        raise ValueError(
            f"top_k must be an integer >= 1 (or None for no top-k filter), got {top_k!r}."
        )


def _check_top_p(top_p: float | None) -> None:
    if top_p is None:
        return
    ok = isinstance(top_p, numbers.Real) and not isinstance(top_p, bool)
    if not ok or not 0.0 < top_p <= 1.0:  # NaN fails the comparison too
        raise ValueError(
            f"top_p must be in (0, 1] (1 keeps every token; None for no nucleus filter), "
            f"got {top_p!r}."
        )


def _check_prompt(idx: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """The prompt as int64 (B, T), cropped to the context with a warning when too long."""
    if not isinstance(idx, torch.Tensor):
        raise TypeError(f"idx must be a torch.Tensor of token ids, got {type(idx).__name__}.")
    if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
        raise TypeError(f"idx has dtype {idx.dtype}, but token ids must be integers.")
    if idx.dim() != 2:
        raise ValueError(
            f"idx must be 2-D (batch, time), got shape {tuple(idx.shape)}; "
            "for a single prompt use idx.unsqueeze(0)."
        )
    if idx.numel() == 0:
        raise ValueError(
            f"the prompt is empty (shape {tuple(idx.shape)}): generation needs at least one "
            "token to condition on, e.g. the id of a newline."
        )
    config = unwrap_model(model).config
    lo, hi = (int(v) for v in torch.aminmax(idx))
    if lo < 0 or hi >= config.vocab_size:
        raise ValueError(
            f"token ids must be in [0, {config.vocab_size}) (vocab_size), got min {lo} and max "
            f"{hi}; was the prompt made by a tokenizer with a different vocabulary?"
        )
    if idx.size(1) > config.block_size:
        warnings.warn(
            f"the prompt has {idx.size(1)} tokens, more than the model's context "
            f"(block_size={config.block_size}): only its last {config.block_size} tokens are used.",
            stacklevel=3,
        )
        idx = idx[:, -config.block_size :]
    return idx.long()


# ----------------------------------------------------------------------------- sampling


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the `k` largest logits of each row (..., V) and set the others to -inf.

    Exactly k tokens stay (among equal logits at the boundary, `torch.topk` picks); k >= V
    keeps every token.
    """
    _check_top_k(k)
    if k >= logits.size(-1):
        return logits
    top = torch.topk(logits, k, dim=-1).indices  # (..., k)
    keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, top, True)  # (..., V)
    return logits.masked_fill(~keep, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability mass
    reaches `p` (at least one token, the most likely), set the others to -inf. (..., V)."""
    _check_top_p(p)
    if p >= 1.0:
        return logits  # the whole vocabulary reaches any p <= 1
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (..., V)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    # A token is needed while the tokens more likely than it have not reached p yet; the
    # first token has mass 0 before it, so it always stays.
    mass_before = torch.cumsum(probs, dim=-1) - probs  # (..., V)
    drop_sorted = mass_before >= p
    drop = torch.empty_like(drop_sorted).scatter_(-1, order, drop_sorted)  # vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_probs(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> torch.Tensor:
    """The next-token distribution (..., V) from logits (..., V), renormalised (rows sum to 1).

    Applied in this order: divide by `temperature` (< 1 sharpens, > 1 flattens; 0 gives a
    one-hot on the most likely token, i.e. greedy), then `top_k_filter`, then `top_p_filter`
    on the tempered distribution.
    """
    _check_temperature(temperature)
    _check_top_k(top_k)
    _check_top_p(top_p)
    logits = logits.float()  # softmax in fp32 even if the model ran in fp16/bf16
    if temperature == 0:
        return F.one_hot(logits.argmax(-1), logits.size(-1)).to(logits.dtype)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return torch.softmax(logits, dim=-1)


def _pick(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """logits (B, V) -> the chosen token ids (B,)."""
    if temperature == 0:  # greedy: no randomness, and no random numbers drawn
        return logits.argmax(dim=-1)
    probs = sample_probs(logits, temperature, top_k, top_p)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)


# ----------------------------------------------------------------------------- KV cache


def forward_cached(model: nn.Module, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Run the new tokens idx (B, T) through `model` at positions cache.length ... +T-1,
    attending to the cached keys and values; store theirs. Returns logits (B, T, vocab).

    With an empty cache this computes `model(idx)[0]`; then feeding tokens one at a time
    gives, at each step, the logits `model` gives for the whole sequence so far.
    """
    logits, _ = unwrap_model(model)(idx, cache=cache)
    return logits


def _next_logits(model: nn.Module, seq: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
    """Logits (B, V) for the token after seq (B, L), which holds everything so far.

    Without a cache: the sliding window, the last block_size tokens at positions 0 ... T-1.
    With a cache: only the newest token runs, unless the cache is empty (the prompt is run)
    or full (it restarts from the newest block_size // 2 tokens, see `stream`).
    """
    block_size = unwrap_model(model).config.block_size
    if cache is None:
        logits, _ = model(seq[:, -block_size:])  # (B, T, V)
    elif cache.length == 0:
        logits = forward_cached(model, seq[:, -block_size:], cache)
    elif cache.length == block_size:
        cache.reset()
        logits = forward_cached(model, seq[:, -max(1, block_size // 2) :], cache)
    else:
        logits = forward_cached(model, seq[:, -1:], cache)  # (B, 1, V)
    return logits[:, -1, :]


# ----------------------------------------------------------------------------- generation


def stream(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    seed: int | None = None,
    stop_tokens: Iterable[int] | None = None,
) -> Iterator[torch.Tensor]:
    """Generate like `generate`, yielding the new token ids (B,) one step at a time.

    See `generate` for the arguments; they are checked at once, the tokens are made as you
    iterate. The model is put in eval mode (no dropout) while the iterator runs and set back
    when it finishes, is closed, or is garbage collected.
    """
    _check_temperature(temperature)
    _check_top_k(top_k)
    _check_top_p(top_p)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral):
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}.")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens}.")
    seq = _check_prompt(idx, model)  # (B, T), T <= block_size
    stops = sorted(set(stop_tokens or ()))
    return _steps(model, seq, max_new_tokens, (temperature, top_k, top_p), use_cache, seed, stops)


@torch.no_grad()  # on a generator function, no_grad applies only while it runs
def _steps(
    model: nn.Module,
    seq: torch.Tensor,
    max_new_tokens: int,
    sampling: tuple[float, int | None, float | None],
    use_cache: bool,
    seed: int | None,
    stop_tokens: list[int],
) -> Iterator[torch.Tensor]:
    generator = None
    if seed is not None:  # a private stream of random numbers: the global RNG is left alone
        generator = torch.Generator(device=seq.device).manual_seed(seed)
    stops = torch.tensor(stop_tokens, dtype=torch.long, device=seq.device)
    B = seq.size(0)
    done = torch.zeros(B, dtype=torch.bool, device=seq.device)  # (B,) sequences that stopped
    fill = torch.zeros(B, dtype=torch.long, device=seq.device)  # (B,) the stop token each emitted
    gpt = unwrap_model(model)
    cache = KVCache(gpt.config.n_layer, gpt.config.block_size) if use_cache else None
    was_training = model.training
    model.eval()
    try:
        for step in range(max_new_tokens):
            logits = _next_logits(model, seq, cache)  # (B, V)
            token = _pick(logits, *sampling, generator)  # (B,)
            token = torch.where(done, fill, token)  # a stopped sequence repeats its stop token
            if stops.numel():
                hit = torch.isin(token, stops) & ~done
                fill = torch.where(hit, token, fill)
                done = done | hit
            yield token
            if bool(done.all()) or step == max_new_tokens - 1:
                return
            seq = torch.cat([seq, token[:, None]], dim=1)  # (B, L + 1)
    finally:
        model.train(was_training)


def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    seed: int | None = None,
    stop_tokens: Iterable[int] | None = None,
) -> torch.Tensor:
    """Continue the prompts idx (B, T) by up to `max_new_tokens` tokens; returns (B, T + new).

    temperature: 0 is greedy (argmax); otherwise sample from softmax(logits / temperature),
        restricted to the `top_k` most likely tokens and/or the nucleus of mass `top_p`
        (see `sample_probs`).
    seed: sample with a private `torch.Generator` seeded so, for reproducible output without
        touching the global RNG; None uses the global RNG.
    stop_tokens: ids that end a sequence; it keeps the stop token, and generation ends when
        every sequence has emitted one (so with B=1 it simply stops). Until then a finished
        sequence is padded with its own stop token.
    use_cache: keep keys and values per layer (`KVCache`) so each step runs one token.

    Context: the model sees at most block_size tokens. A longer prompt is cut to its last
    block_size tokens with a warning (the returned tensor still starts with the whole
    prompt). Past the context the two paths differ, because the model has learned absolute
    positions:
    - use_cache=False: a sliding window. Every step runs the last block_size tokens at
      positions 0 ... block_size-1, so each token sees exactly block_size tokens of context.
    - use_cache=True: cached keys carry the positions they were computed at, so they cannot
      slide. While the sequence fits, the tokens are those of use_cache=False (and the
      logits agree to float rounding). When the cache is full, it restarts from the newest
      block_size // 2 tokens (run again at positions 0 ... block_size//2 - 1) and grows back
      to block_size. Each step is then exactly `model(window)` for a window of between
      block_size // 2 and block_size tokens, and a token costs one single-token step
      plus a share of one block_size // 2 prefill every block_size // 2 tokens, instead
      of a whole block. For the exact sliding window past the context, use_cache=False.
    The model runs in eval mode (dropout off) and is set back afterwards.
    """
    new = list(
        stream(model, idx, max_new_tokens, temperature, top_k, top_p, use_cache, seed, stop_tokens)
    )
    if not new:
        return idx
    return torch.cat([idx, torch.stack(new, dim=1).to(idx.dtype)], dim=1)  # (B, T + new)


# ----------------------------------------------------------------------------- text


def _safe_cut(line: str) -> int:
    """The largest index c of `line` (no "\\n" in it) where it can be split without changing
    what `detokenize` does: detokenize(line[:c]) + detokenize(line[c:]) equals detokenize of
    the whole line however it goes on. 0 when there is no such place yet.

    A cut is made only at a space between two visible characters where no rule of
    `detokenize` can span it: not after `( [ {` or `@` (those rules eat the space after them),
    not before `@` (` @-@ ` starts there), not inside a ` " quoted words " ` pair, and not
    after a double quote that may still open one (pairs are known only once they close).
    """
    staged = line
    for pattern, repl in _RULES_BEFORE_QUOTES:  # the quote rule runs on this text
        staged = pattern.sub(repl, staged)
    pairs = list(_QUOTE_PAIR.finditer(staged))
    # The other rules never add or remove a quote, so the n-th quote of `staged` is the n-th
    # of `line`: quotes are matched up by their number.
    opening = {staged[: m.start()].count('"') for m in pairs}  # numbers of opening quotes
    settled = staged[: pairs[-1].end()].count('"') if pairs else 0  # quotes up to the last pair
    quotes = [i for i, ch in enumerate(line) if ch == '"']
    for c in range(len(line) - 2, 0, -1):
        before, after = line[c - 1], line[c + 1]
        if line[c] != " " or before.isspace() or after.isspace():
            continue
        if before in "([{@" or after == "@":
            continue
        last_quote = bisect.bisect_left(quotes, c) - 1  # number of the last quote before c
        if last_quote >= settled or last_quote in opening:
            continue
        return c
    return 0


_QUOTE_PAIR = re.compile(r'" [^"\n]*? "')
_RULES_BEFORE_QUOTES = [(p, r) for p, r in DETOKENIZE_RULES if '"' not in p.pattern]


class TextStreamer:
    """Token ids -> display text, a piece at a time, for printing as tokens are generated.

    Handles the two things that make naive per-token decoding wrong:
    - a character split over two tokens (byte-level BPE: a token may end mid UTF-8
      sequence): bytes are decoded incrementally, so a partial character waits for the rest;
    - WikiText's spacing (` , ` and ` @-@ `), undone by `wikigpt_lib.data.detokenize` when
      `detokenize=True`: text is held back until no rule can still change it, and the pieces
      joined equal `detokenize` of the whole text.

        streamer = TextStreamer(enc)
        for token in stream(model, idx, 100):
            print(streamer.add([int(token)]), end="", flush=True)
        print(streamer.flush())
    """

    def __init__(self, tokenizer, detokenize: bool = True) -> None:
        self.tokenizer = tokenizer
        self.detokenize = detokenize
        self._bytes = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._line = ""  # text of the current line not yet shown (detokenize mode)

    def add(self, ids: Iterable[int]) -> str:
        """Feed token ids; return the text that is now final (may be "")."""
        data = b"".join(self.tokenizer.decode_single_token_bytes(int(i)) for i in ids)
        return self._push(self._bytes.decode(data))

    def flush(self) -> str:
        """Everything still held back (call at the end)."""
        text, self._line = self._line + self._bytes.decode(b"", final=True), ""
        return detokenize(text) if self.detokenize else text

    def _push(self, text: str) -> str:
        if not self.detokenize:
            return text
        shown = []
        *lines, self._line = (self._line + text).split("\n")
        for line in lines:  # a line end is always a safe cut
            shown.append(detokenize(line) + "\n")
        cut = _safe_cut(self._line)
        if cut:
            shown.append(detokenize(self._line[:cut]))
            self._line = self._line[cut:]
        return "".join(shown)
