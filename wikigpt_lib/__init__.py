"""wikigpt_lib: the finished code of the Wiki-GPT course, as a small reusable library.

One module per idea, mirroring the notebooks:

    tokenizer   byte-level BPE: the course's trainer, its WikiText-2 tokenizer, GPT-2's  (01)
    data        loading, cleaning, tokenizing and batching WikiText-2                     (02)
    attention   scaled dot-product and causal multi-head self-attention                  (03)
    model       GPTConfig and the GPT model                                               (04)
    train       the training loop: optimizer, schedule, evaluation, early stopping, DDP   (05)
    checkpoint  safetensors checkpoints: atomic writes, best and latest, exact resume     (05)
    device      device, precision, seeding and quick mode                                 (05)
    generate    greedy, temperature, top-k, top-p sampling, streaming, KV cache           (06)
    evaluate    perplexity: token, word-level, bits per byte, sliding windows             (07)
    ngram       unigram and Kneser-Ney n-gram baselines in word-level perplexity          (07)
    pretrained  GPT-2 weights in (GPT.from_pretrained) and out (GPT.save_pretrained)      (08)
    hub         finding GPT-2 files: local folder, hub cache, or a download failing fast  (08)
    lora        low-rank adapters for fine-tuning, merged back for export                 (08)
    chat        chat template, supervised fine-tuning data and loop, chatting             (09)
    course      the trained course model for notebooks 06-09: runs/cpu, or trained here
"""

from wikigpt_lib.attention import (
    CausalSelfAttention,
    attention,
)

# `wikigpt_lib.chat` below is the function chat(); import the module's other names with
# `from wikigpt_lib.chat import ...`.
from wikigpt_lib.chat import (
    ChatDataError,
    ChatExample,
    chat,
    chat_stream,
    encode_chat,
    finetune_chat,
    get_chat_tokenizer,
    load_chat_model,
    load_jsonl_examples,
    parse_chat,
    render_chat,
    resize_token_embeddings,
    save_chat_model,
    wikitext_sft_examples,
)
from wikigpt_lib.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model,
    load_model_and_tokenizer,
)
from wikigpt_lib.course import (
    CourseModel,
    course_model,
)
from wikigpt_lib.data import (
    Article,
    TokenWindowDataset,
    WikiTextNotFoundError,
    count_words,
    detokenize,
    get_batch,
    iter_eval_batches,
    load_corpus,
    load_wikitext2,
    split_articles,
    tokenize_split,
    wikitext2_source,
)
from wikigpt_lib.device import (
    is_quick,
    pick_device,
    pick_precision,
    quick,
    seed_everything,
)
from wikigpt_lib.evaluate import (
    evaluate_perplexity,
    evaluate_split,
)
from wikigpt_lib.generate import (
    KVCache,
    TextStreamer,
    forward_cached,
    generate,
    sample_probs,
    stream,
    top_k_filter,
    top_p_filter,
)
from wikigpt_lib.lora import (
    LoRALinear,
    add_lora,
    count_parameters,
    lora_settings,
    lora_state_dict,
    merge_lora,
    restore_lora,
)
from wikigpt_lib.model import (
    GPT,
    GPTConfig,
)
from wikigpt_lib.ngram import (
    KneserNeyLM,
    UnigramLM,
    ngram_baselines,
    words_of,
)
from wikigpt_lib.pretrained import (
    PretrainedUnavailableError,
    fetch_pretrained,
    load_pretrained,
    pretrained_tokenizer,
    save_pretrained,
)
from wikigpt_lib.tokenizer import (
    EOT,
    TokenizerUnavailableError,
    get_tokenizer,
    load_bpe,
    save_bpe,
    train_bpe,
)
from wikigpt_lib.train import (
    TrainConfig,
    Trainer,
    TrainingDivergedError,
    TrainResult,
    evaluate_loss,
    plot_losses,
    read_metrics,
    train_model,
    train_preset,
)

__version__ = "0.1.0"

__all__ = [
    "add_lora",
    "Article",
    "attention",
    "CausalSelfAttention",
    "chat",
    "chat_stream",
    "ChatDataError",
    "ChatExample",
    "CheckpointError",
    "count_parameters",
    "count_words",
    "course_model",
    "CourseModel",
    "detokenize",
    "encode_chat",
    "EOT",
    "evaluate_loss",
    "evaluate_perplexity",
    "evaluate_split",
    "fetch_pretrained",
    "finetune_chat",
    "forward_cached",
    "generate",
    "get_batch",
    "get_chat_tokenizer",
    "get_tokenizer",
    "GPT",
    "GPTConfig",
    "is_quick",
    "iter_eval_batches",
    "KneserNeyLM",
    "KVCache",
    "load_bpe",
    "load_chat_model",
    "load_checkpoint",
    "load_corpus",
    "load_jsonl_examples",
    "load_model",
    "load_model_and_tokenizer",
    "load_pretrained",
    "load_wikitext2",
    "lora_settings",
    "lora_state_dict",
    "LoRALinear",
    "merge_lora",
    "restore_lora",
    "ngram_baselines",
    "parse_chat",
    "pick_device",
    "pick_precision",
    "plot_losses",
    "pretrained_tokenizer",
    "PretrainedUnavailableError",
    "quick",
    "read_metrics",
    "render_chat",
    "resize_token_embeddings",
    "sample_probs",
    "save_bpe",
    "save_chat_model",
    "save_pretrained",
    "seed_everything",
    "split_articles",
    "stream",
    "TextStreamer",
    "tokenize_split",
    "TokenizerUnavailableError",
    "TokenWindowDataset",
    "top_k_filter",
    "top_p_filter",
    "train_bpe",
    "train_model",
    "train_preset",
    "TrainConfig",
    "Trainer",
    "TrainingDivergedError",
    "TrainResult",
    "UnigramLM",
    "wikitext2_source",
    "wikitext_sft_examples",
    "WikiTextNotFoundError",
    "words_of",
]
