"""The GPT model: GPT-2's architecture (pre-LayerNorm blocks, learned positions, tied head).

Parameter names and shapes follow Hugging Face's `GPT2LMHeadModel` (with OpenAI's Conv1D
weights transposed into `nn.Linear` layout), so GPT-2 checkpoints load straight in
(`wikigpt_lib.pretrained`) and `GPTConfig.preset("gpt2")` has GPT-2's 124,439,808 parameters.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from wikigpt_lib.attention import CausalSelfAttention, KVCache
from wikigpt_lib.config import GPTConfig

IGNORE_INDEX = -100  # targets with this value add nothing to the loss (e.g. masked prompts)


class MLP(nn.Module):
    """Position-wise feed-forward: (B, T, C) -> (B, T, 4C) -> GELU -> (B, T, C)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x)).

    Normalising the *input* of each branch leaves the residual stream itself untouched, so
    gradients reach early layers directly; this is why deep pre-LN models train stably.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(
            config.n_embd, config.n_head, dropout=config.dropout, bias=config.bias
        )
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache=cache, layer=layer)  # (B, T, C)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)


class GPT(nn.Module):
    """A GPT-2-style language model.

    `model(idx)` takes token ids (B, T) and returns `(logits, None)` with logits
    (B, T, vocab_size); `model(idx, targets)` also returns the mean cross-entropy loss
    over every position whose target is not -100.

    Chapter 08 (`wikigpt_lib.pretrained`, `wikigpt_lib.export`) adds `GPT.from_pretrained`
    and `GPT.save_pretrained` from above: this module knows nothing of GPT-2's files.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(config.vocab_size, config.n_embd),
                "wpe": nn.Embedding(config.block_size, config.n_embd),
                "drop": nn.Dropout(config.dropout),
                "h": nn.ModuleList(Block(config) for _ in range(config.n_layer)),
                "ln_f": nn.LayerNorm(config.n_embd, bias=config.bias),
            }
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: reading a token in and writing it out share one (vocab, C) matrix.
        self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2: each block adds two projections to the residual stream, so scale their
        # init by 1/sqrt(2 * n_layer) to keep the stream's variance from growing with depth.
        residual_std = 0.02 / math.sqrt(2 * config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=residual_std)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def _check_inputs(
        self, idx: torch.Tensor, targets: torch.Tensor | None, start: int = 0
    ) -> torch.Tensor:
        if not isinstance(idx, torch.Tensor):
            raise TypeError(f"idx must be a torch.Tensor of token ids, got {type(idx).__name__}.")
        if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
            raise TypeError(
                f"idx has dtype {idx.dtype}, but token ids must be integers: pass idx.long()."
            )
        if idx.dtype not in (torch.int64, torch.int32):
            idx = idx.long()  # e.g. uint16 token arrays: embeddings want int32/int64
        if idx.dim() != 2:
            raise ValueError(
                f"idx must be 2-D (batch, time), got shape {tuple(idx.shape)}; "
                "for a single sequence use idx.unsqueeze(0)."
            )
        if idx.numel() == 0:
            raise ValueError(f"idx is empty (shape {tuple(idx.shape)}); give at least one token.")
        seq_len = idx.size(1)
        if start and start + seq_len > self.config.block_size:
            raise ValueError(
                f"the cache holds {start} positions and {seq_len} more do not fit in the "
                f"context (block_size={self.config.block_size}): reset the cache and start again."
            )
        if seq_len > self.config.block_size:
            raise ValueError(
                f"sequence length {seq_len} is longer than block_size {self.config.block_size}; "
                f"crop it, e.g. idx[:, -{self.config.block_size}:]."
            )
        if not torch.compiler.is_compiling():  # reading values back would break the graph
            self._check_token_range(idx)
        if targets is not None and targets.shape != idx.shape:
            raise ValueError(
                f"targets must have the same shape as idx {tuple(idx.shape)}, got "
                f"{tuple(targets.shape)}."
            )
        return idx

    def _check_token_range(self, idx: torch.Tensor) -> None:
        # One min/max pass; without it a bad id is an opaque IndexError on CPU and a
        # device-side assert on CUDA.
        lo, hi = (int(v) for v in torch.aminmax(idx))
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(
                f"token ids must be in [0, {self.config.vocab_size}) (vocab_size), got min {lo} "
                f"and max {hi}; was idx made by a tokenizer with a different vocabulary?"
            )

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx: (B, T) int token ids; targets: (B, T) next-token ids or -100 to ignore.

        Returns logits (B, T, vocab_size) and the mean cross-entropy (or None without
        targets). If every target is -100 the loss is NaN (nothing to average).

        cache: a `KVCache` holding the keys and values of the tokens before idx. The tokens
        of idx then sit at positions cache.length ... cache.length + T - 1, attend to the
        cached ones, and are added to the cache. With an empty cache this is `model(idx)`;
        feeding a sequence in pieces gives the logits of the whole sequence, piece by piece.
        """
        start = 0 if cache is None else cache.length
        idx = self._check_inputs(idx, targets, start)
        T = idx.size(1)
        pos = torch.arange(start, start + T, device=idx.device)  # (T,) absolute positions
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C) + (T, C)
        x = self.transformer.drop(x)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer)  # (B, T, C)
        if cache is not None:
            cache.length = start + T  # every layer has stored its T new positions
        x = self.transformer.ln_f(x)
        logits = self.lm_head(x)  # (B, T, C) -> (B, T, vocab)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(
            logits.view(-1, logits.size(-1)), targets.reshape(-1).long(), ignore_index=IGNORE_INDEX
        )
        return logits, loss

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters (the tied head counted once).

        non_embedding=True leaves out the token and position embeddings, the "N" of
        Kaplan et al. (2020) scaling laws. (The tied matrix still does the head's matmul;
        `estimate_flops_per_token` counts that.)
        """
        n = sum(p.numel() for p in self.parameters())  # parameters() yields shared ones once
        if non_embedding:
            n -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return n

    def param_breakdown(self) -> dict[str, int]:
        """Where the parameters are: embeddings, blocks, final norm, total (head is tied)."""
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        parts = {
            "token_embeddings": self.transformer.wte.weight.numel(),
            "position_embeddings": self.transformer.wpe.weight.numel(),
            "blocks": count(self.transformer.h),
            "final_norm": count(self.transformer.ln_f),
            "lm_head": 0,  # tied to token_embeddings
        }
        parts["total"] = sum(parts.values())
        return parts

    def estimate_flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward + backward) per token at sequence length `seq_len`.

        6 · N_matmul + 6 · n_layer · T · n_embd, where
        - N_matmul = n_layer · 12 · n_embd² + n_embd · vocab_size counts the weights used in
          matrix multiplies (q/k/v 3d², attention output d², MLP 8d², and the lm_head); each
          weight costs 2 FLOPs (multiply + add) per token forward and 4 backward (grads of
          input and of weight): 6 · N (Kaplan et al. 2020, sec. 2.1; PaLM, appendix B).
          Biases, LayerNorm, GELU, softmax and embedding lookups are left out (small).
        - attention scores q·kᵀ and the weighted sum of values each take 2 · d FLOPs per
          (query, key) pair per layer, forward. PaLM's 12 · n_layer · T · d term (fwd+bwd)
          counts all T keys per query; with the causal mask a query only sees (T+1)/2 keys
          on average, so we count half of it: 6 · n_layer · T · d. This is the useful work,
          which keeps model-FLOPs utilisation honest.
        """
        c = self.config
        T = c.block_size if seq_len is None else seq_len
        n_matmul = c.n_layer * 12 * c.n_embd**2 + c.n_embd * c.vocab_size
        return 6 * n_matmul + 6 * c.n_layer * T * c.n_embd
