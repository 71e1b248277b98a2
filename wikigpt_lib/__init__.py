"""wikigpt_lib: the finished code of the Wiki-GPT course, as a small reusable library.

The package holds what a user needs (`__all__`, by chapter); every other name is imported from
its module (`from wikigpt_lib.generation import top_p_filter`). The modules, in layers: each
imports only from the layers above it in this list, never from below (docs/architecture.md).

    base            atomic writes, unwrapping DDP / compiled models             (shared)
    device          device, precision, seeding, quick mode                      (shared)
    tokenizer       byte-level BPE: training, the course tokenizer, GPT-2's     (01)
    sample_corpus   an invented WikiText-like corpus for offline runs           (02)
    text            rows, articles, WikiText spacing undone, word counts        (02)
    windows         token windows as (x, y) batches, a split as a batch source  (02)
    data            loading WikiText-2 and tokenizing a split (cached)          (02)
    attention       scaled dot-product and causal multi-head self-attention     (03)
    config          GPTConfig, TrainConfig and every preset                     (04, 05)
    model           the GPT (blocks, forward pass with an optional KV cache)    (04)
    checkpoint      safetensors checkpoints: atomic, best and latest            (05)
    optim           AdamW / Muon, learning-rate schedules                       (05)
    metrics         the loss over a stream of batches; run records and plots    (05)
    runtime         DDP process group, stop signals                             (05)
    train_state     what a run saves and restores for an exact resume           (05)
    train           the Trainer: one loop for pretraining and fine-tuning       (05)
    generation      sampling (greedy, temperature, top-k, top-p), streaming     (06)
    evaluate        perplexity: token, word-level, bits per byte, sliding       (07)
    ngram           unigram and Kneser-Ney baselines                            (07)
    course          the trained course model for notebooks 06-09                (05-09)
    hub             finding GPT-2's files: folder, cache, or a fast failure     (08)
    lora            low-rank adapters, merged back for export                   (08)
    pretrained      GPT-2 weights in: GPT.from_pretrained                       (08)
    hf_tokenizer    a tiktoken tokenizer as Hugging Face's tokenizer.json       (08)
    model_card      the README.md of an exported model                          (08)
    export          Hugging Face format out: GPT.save_pretrained, checkpoints   (08)
    chat_template   role tokens and conversations as token ids                  (09)
    chat_data       fine-tuning conversations and their batches                 (09)
    chat            chat fine-tuning (on the Trainer), saving, replies          (09)
    cli, cli_commands, cli_chat    the `wikigpt` command                        (top)
    demo_views, demo               the web demo (`wikigpt demo`, demo.show())   (top)
"""

# Chapter 08 and 09 modules extend earlier ones when imported (GPT.from_pretrained,
# GPT.save_pretrained, LoRA in checkpoints, the "-chat" tokenizers): importing them all here
# makes those extensions present whichever module a user imports first.
from wikigpt_lib.chat import chat_stream as chat_stream
from wikigpt_lib.chat import finetune_chat, load_chat_model
from wikigpt_lib.chat_template import get_chat_tokenizer
from wikigpt_lib.checkpoint import load_checkpoint, load_model, save_checkpoint
from wikigpt_lib.config import GPTConfig, TrainConfig, train_preset
from wikigpt_lib.data import load_wikitext2, tokenize_split
from wikigpt_lib.device import pick_device, seed_everything
from wikigpt_lib.evaluate import evaluate_perplexity, evaluate_split
from wikigpt_lib.export import save_pretrained
from wikigpt_lib.generation import generate
from wikigpt_lib.lora import add_lora, merge_lora
from wikigpt_lib.model import GPT
from wikigpt_lib.pretrained import load_pretrained
from wikigpt_lib.tokenizer import get_tokenizer, train_bpe
from wikigpt_lib.train import Trainer

__version__ = "0.1.0"

__all__ = [
    # 01 tokenization
    "train_bpe",
    "get_tokenizer",
    # 02 data
    "load_wikitext2",
    "tokenize_split",
    # 04 the model
    "GPTConfig",
    "GPT",
    # 05 training
    "TrainConfig",
    "Trainer",
    "train_preset",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "pick_device",
    "seed_everything",
    # 06 generation
    "generate",
    # 07 evaluation
    "evaluate_perplexity",
    "evaluate_split",
    # 08 GPT-2, Hugging Face, LoRA
    "load_pretrained",
    "save_pretrained",
    "add_lora",
    "merge_lora",
    # 09 chat
    "get_chat_tokenizer",
    "finetune_chat",
    "load_chat_model",
    "chat_stream",
]
