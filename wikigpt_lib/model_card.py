"""The README.md (model card) of an exported model: what the model is, its tokenizer, and, for
a model exported from a training checkpoint, what it was trained on, how, and what was
measured. Every number comes from the model or the checkpoint; what a checkpoint does not
record is said to be unknown, never guessed.

    model_card(config, n_params, tokenizer, ...)       the card `save_pretrained` writes
    model_card(..., checkpoint=ckpt)                   the card of `wikigpt export`
"""

from __future__ import annotations

import math
from typing import Any

from wikigpt_lib.checkpoint import Checkpoint
from wikigpt_lib.model import GPTConfig

CARD_MARK = "tags: [gpt2, wikigpt]"  # in every card this module writes (its YAML header)

_DATA = {
    "wikitext-2": "WikiText-2 (Merity et al., 2016, wikitext-2-v1: the tokenized text, with "
    "`<unk>` for rare words), its train split",
    "wikitext-2-raw": "WikiText-2 raw (Merity et al., 2016, wikitext-2-raw-v1), its train split",
    "sample": "the built-in sample corpus of wikigpt_lib: a small invented WikiText-like text "
    "made for tests and offline runs, not real data",
    "sample-raw": "the built-in sample corpus of wikigpt_lib (raw variant): a small invented "
    "text made for tests and offline runs, not real data",
}


def _tokenizer_text(tokenizer: str | None, hf_files: bool, chat: bool) -> str:
    if tokenizer is None:
        return "not recorded: use the tokenizer the model was trained with."
    base = tokenizer.split("-")[0]
    what = {
        "gpt2": "OpenAI's GPT-2 byte-level BPE (50,257 tokens)",
        "wikitext2": "the Wiki-GPT course tokenizer, a byte-level BPE of 8,192 tokens learned "
        "on WikiText-2 (`<unk>` is an ordinary token, as in the text)",
    }.get(base, tokenizer)
    text = f"`{tokenizer}`: {what}"
    if chat:
        text += ", plus the role tokens `<|system|>` `<|user|>` `<|assistant|>` `<|end|>`"
    text += ". `<|endoftext|>` is its bos and eos token."
    if hf_files:
        text += (
            " `tokenizer.json` (with `tokenizer_config.json`) holds it for "
            "`transformers.AutoTokenizer`, which gives exactly the ids of `wikigpt_lib`'s "
            "tiktoken tokenizer."
        )
    else:
        text += " This folder has no `tokenizer.json`: tokenize with `wikigpt_lib.get_tokenizer`."
    return text


def _architecture(config: GPTConfig, n_params: int) -> list[str]:
    return [
        "| | |",
        "| --- | --- |",
        f"| parameters | {n_params:,} (the tied embedding and output matrix counted once) |",
        f"| layers | {config.n_layer} |",
        f"| attention heads | {config.n_head} |",
        f"| width (n_embd) | {config.n_embd} |",
        f"| context (block_size) | {config.block_size} tokens |",
        f"| vocabulary | {config.vocab_size:,} |",
        f"| biases | {'yes' if config.bias else 'no (stored as zeros: the same function)'} |",
        f"| dropout | {config.dropout} |",
    ]


def _recipe(train: dict[str, Any], state: dict[str, Any], block_size: int) -> list[str]:
    if not train:
        return ["The checkpoint does not record how the model was trained."]
    rows = ["| | |", "| --- | --- |"]
    opt = train.get("optimizer")
    if opt == "muon":
        rows.append(
            f"| optimizer | Muon (peak lr {train.get('muon_lr')}) for the blocks' weight "
            f"matrices, AdamW (peak lr {train.get('lr')}) for the rest |"
        )
    elif opt is not None:
        rows.append(
            f"| optimizer | {'AdamW' if opt == 'adamw' else opt}, peak lr {train.get('lr')} |"
        )
    if "schedule" in train:
        rows.append(
            f"| schedule | {train.get('warmup_steps')} warmup steps, then {train['schedule']} "
            f"decay to {train.get('min_lr')} at step {train.get('max_steps')} |"
        )
    if "step" in state:
        rows.append(
            f"| steps | {state['step']:,} (this checkpoint), of {train.get('max_steps')} planned |"
        )
    if "batch_size" in train:
        world, accum = state.get("world_size", 1), train.get("grad_accum_steps", 1)
        seqs = train["batch_size"] * accum * world
        rows.append(
            f"| batch | {seqs} sequences of up to {block_size} tokens per step "
            f"({train['batch_size']} x {accum} accumulation x {world} process(es)) |"
        )
    if state.get("tokens_seen"):
        rows.append(f"| tokens seen | {state['tokens_seen']:,} |")
    for key, label in (("weight_decay", "weight decay"), ("grad_clip", "gradient clipping"),
                       ("precision", "precision"), ("seed", "seed")):  # fmt: skip
        if key in train:
            rows.append(f"| {label} | {train[key]} |")
    return rows


def _evaluation(ckpt: Checkpoint, chat: bool) -> list[str]:
    loss = ckpt.state.get("best_val_loss")
    train = ckpt.train_config
    lines = []
    if loss is None:
        lines.append(
            "No validation loss was measured: the run had no validation data, or the "
            "checkpoint was saved before its first evaluation."
        )
    else:
        unit = "nats per assistant token of held-out conversations" if chat else "nats/token"
        if train.get("eval_batches") is None:
            over = "the whole validation split" if train else "validation data"
        else:
            over = (
                f"the first {train['eval_batches']} batches ({train.get('batch_size')} "
                "sequences each) of the validation split"
            )
        lines.append(
            f"- validation loss {loss:.4f} {unit}, token perplexity {math.exp(loss):.2f}: "
            f"measured during training at step {ckpt.state.get('step', '?')}, on {over} "
            f"(the best evaluation of the run)."
        )
    lines.append(
        "- Not measured: the test split, word-level perplexity and bits per byte "
        "(`wikigpt eval --checkpoint RUN --split test` measures them), and any benchmark."
    )
    return lines


def model_card(
    config: GPTConfig,
    n_params: int,
    tokenizer: str | None,
    *,
    hf_tokenizer: bool,
    chat: bool = False,
    checkpoint: Checkpoint | None = None,
) -> str:
    """The README.md of an exported model. hf_tokenizer: whether tokenizer.json was written;
    chat: the tokenizer has role tokens and a chat template; checkpoint: the training
    checkpoint the model comes from (its data, recipe and validation loss go in the card)."""
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        CARD_MARK,
        "---",
        "",
        f"A GPT-2-architecture language model ({n_params:,} parameters) exported by "
        "`wikigpt_lib`"
        + (
            f" from step {checkpoint.state.get('step', '?')} of a training run (checkpoint "
            f"`{checkpoint.path.name}`)."
            if checkpoint is not None
            else "."
        ),
        "",
        "## Architecture",
        "",
        *_architecture(config, n_params),
        "",
        "## Tokenizer",
        "",
        _tokenizer_text(tokenizer, hf_tokenizer, chat),
    ]
    if checkpoint is not None:
        data = checkpoint.data
        described = _DATA.get(data, f"`{data}`" if data else "not recorded in the checkpoint")
        lines += ["", "## Training data", "", described.rstrip(".") + "."]
        lines += ["", "## Training recipe", ""]
        lines += _recipe(checkpoint.train_config, checkpoint.state, config.block_size)
        lines += ["", "## Evaluation", "", *_evaluation(checkpoint, chat)]
    lines += ["", "## Use", "", "```python"]
    if hf_tokenizer:
        lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer", ""]
        lines += ["tokenizer = AutoTokenizer.from_pretrained(folder)"]
    lines += ["model = AutoModelForCausalLM.from_pretrained(folder)  # a GPT2LMHeadModel"]
    if hf_tokenizer and chat:
        lines += [
            'messages = [{"role": "user", "content": "Who wrote it ?"}]',
            "prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, "
            "tokenize=False)",
            "# replies end with <|end|> (generation_config.json stops there)",
        ]
    lines += ["# or, in wikigpt_lib: GPT.from_pretrained(folder)", "```", ""]
    if tokenizer is not None and tokenizer.startswith("wikitext2"):
        lines += [
            "The model learned WikiText's spacing (`word , word`, `1 @,@ 000`, a space at the "
            "start of each line): give it text in that form, starting with a space.",
            "",
        ]
    return "\n".join(lines)
