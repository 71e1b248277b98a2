# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · Chat: fine-tuning the course model into a small assistant
#
# The course model continues text: give it the start of a WikiText article and it writes more
# of one. A chat model answers. It is the same network, fine-tuned on conversations, and
# what it gains is a *format*: who is speaking, where a question ends, where an answer starts
# and where it stops. This is supervised fine-tuning (SFT), the first step of making
# assistants such as InstructGPT (Ouyang et al., 2022), and at its heart it is the training
# loop of notebook 05 with a different loss mask.
#
# **What you will build**
#
# - a chat template with special tokens for the roles, and a tokenizer and model grown to hold
#   them;
# - a fine-tuning dataset of about 2,800 question/answer conversations derived from
#   WikiText-2's own articles (no outside data), and a loader for your own data in the Alpaca
#   JSONL format;
# - a loss on the assistant's tokens only, shown on one example, with padding and packing;
# - the course model fine-tuned into a chat model, its answers before and after, and numbers
#   for what it learned and what it did not;
# - `chat()` and the `wikigpt chat` terminal command;
# - a check that the notebook's template, mask and loss match `wikigpt_lib.chat`.
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/wiki-gpt/wiki-gpt/blob/main/notebooks/09_chat.ipynb)

# %%
import sys

if "google.colab" in sys.modules:  # on Colab, install the course library first
    get_ipython().run_line_magic(
        "pip", 'install -q "wikigpt-lib @ git+https://github.com/wiki-gpt/wiki-gpt"'
    )

# %%
import io
import json
import shutil
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import matplotlib.pyplot as plt
import tiktoken
import torch

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm: no Jupyter widgets

from wikigpt_lib.chat import (
    SFT_TASKS,
    ChatDataError,
    ChatExample,
    chat,
    chat_loss,
    chat_stream,
    chat_token_ids,
    encode_chat,
    encode_examples,
    finetune_chat,
    get_chat_tokenizer,
    load_jsonl_examples,
    pack_pairs,
    parse_chat,
    render_chat,
    reply_tokens,
    resize_token_embeddings,
    save_chat_model,
    sft_batches,
    sft_pair,
    to_wikitext,
    wikitext_sft_examples,
)
from wikigpt_lib.course import course_model
from wikigpt_lib.data import load_wikitext2, wikitext2_source
from wikigpt_lib.device import is_quick, pick_device, quick
from wikigpt_lib.model import GPT, IGNORE_INDEX, GPTConfig
from wikigpt_lib.tokenizer import EOT, get_tokenizer
from wikigpt_lib.train import TrainConfig

torch.set_printoptions(precision=4, sci_mode=False)
plt.rcParams["figure.dpi"] = 80  # small images keep the notebook file small

# %% [markdown]
# ## 1. The course model
#
# We start from the course model of notebook 05 (`wikigpt train --preset cpu --out runs/cpu`):
# 4 layers, width 256, a context of 128 tokens, about 5 million parameters, trained on one
# pass over WikiText-2's training split (about 2.5 million tokens). If `runs/cpu` is not there, the next cell trains a smaller model
# here so the notebook always runs; in quick mode (the tests) it trains a tiny one for 30
# steps. The outputs shown on GitHub come from the course model.

# %% tags=["nbval-ignore-output"]
RUN_DIR = Path("..") / "runs" / "cpu"  # relative to this notebook

ds = load_wikitext2(fallback="sample")
base_tok = get_tokenizer()
device = pick_device()
# Loads runs/cpu, or trains a stand-in here with a context of 128 (64 in quick mode: the
# sample data is small).
course = course_model(
    RUN_DIR, data=ds, tokenizer=base_tok, device=device, block_size=quick(128, 64)
)
base_model, model_name = course.model, course.description
block_size = base_model.config.block_size
print("data:", wikitext2_source(ds))
print("model:", model_name)
print(f"  {base_model.num_params():,} parameters, context {block_size} tokens, on {device}")

# %% [markdown]
# ## 2. A chat template
#
# A conversation is a list of messages, each with a role (`system`, `user` or `assistant`) and
# a text, the format most chat libraries use:

# %%
conversation = [
    {"role": "system", "content": "Answer in one sentence ."},
    {"role": "user", "content": "What is the article Blue River about ?"},
    {"role": "assistant", "content": "The Blue River is a river in the north ."},
    {"role": "user", "content": "Who built the mill ?"},
    {"role": "assistant", "content": "The council , in 1763 ."},
]

# %% [markdown]
# The model sees only one sequence of tokens, so the template decides how to write a
# conversation as one. Ours puts a role token before each message and an end token after it:
#
#     <|system|> Answer in one sentence .<|end|><|user|> What is ... ?<|end|><|assistant|> The ...
#
# Why special tokens rather than plain text such as `User:`? A special token is one id that
# ordinary text never produces, so a user who types `<|end|>` or `Assistant:` in a message
# cannot end the message or speak for the assistant; and `<|end|>` is a single token the model
# can learn to emit when it has finished, which is how generation knows when to stop. Each
# message's text gets a leading space because every WikiText row starts with one: the first
# word then gets the token the model saw at the start of lines during pretraining. The text
# itself keeps WikiText's spacing (`river , 1 @,@ 000`), the form the model knows.
#
# The course tokenizer has 8,192 ids and no free ones: id 8191 is `<|endoftext|>`. We add four
# special tokens after it. A tiktoken `Encoding` takes a table of special tokens, so the chat
# tokenizer is the course tokenizer with a larger table; every old id is unchanged.

# %%
ROLE_TOKEN = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
END_TOKEN = "<|end|>"
NEW_TOKENS = [*ROLE_TOKEN.values(), END_TOKEN]

specials = dict(base_tok._special_tokens)  # {"<|endoftext|>": 8191}
specials.update({t: base_tok.n_vocab + i for i, t in enumerate(NEW_TOKENS)})
tok = tiktoken.Encoding(
    "wikitext2-chat",
    pat_str=base_tok._pat_str,
    mergeable_ranks=base_tok._mergeable_ranks,
    special_tokens=specials,
)
SPECIAL_ID = {t: specials[t] for t in NEW_TOKENS}
print(f"course tokenizer: {base_tok.n_vocab} ids; chat tokenizer: {tok.n_vocab} ids")
print("new ids:", SPECIAL_ID)
sample = " The Blue River , 1 @,@ 000 km long ."
assert tok.encode_ordinary(sample) == base_tok.encode_ordinary(sample)  # old text, same ids

# %% [markdown]
# Encoding a conversation: the role token, the text encoded as plain text (never parsed for
# special tokens), then `<|end|>`. Alongside the ids we keep a mask that says which ids the
# assistant wrote: its text and its `<|end|>`. To ask for a reply, the prompt ends with
# `<|assistant|>` and the model writes the rest.


# %%
def encode(messages, add_generation_prompt=False):
    """messages -> (token ids, assistant mask): a bool per id, True where the assistant wrote it."""
    ids, mask = [], []
    for m in messages:
        body = tok.encode_ordinary(" " + m["content"]) + [SPECIAL_ID[END_TOKEN]]
        ids += [SPECIAL_ID[ROLE_TOKEN[m["role"]]], *body]
        mask += [False] + [m["role"] == "assistant"] * len(body)
    if add_generation_prompt:
        ids.append(SPECIAL_ID["<|assistant|>"])
        mask.append(False)
    return ids, mask


def decode_messages(ids):
    """Template ids -> messages: split at the role and end tokens."""
    role_of = {SPECIAL_ID[t]: role for role, t in ROLE_TOKEN.items()}
    messages, i = [], 0
    while i < len(ids):
        end = ids.index(SPECIAL_ID[END_TOKEN], i)
        text = tok.decode(ids[i + 1 : end]).removeprefix(" ")
        messages.append({"role": role_of[ids[i]], "content": text})
        i = end + 1
    return messages


ids, mask = encode(conversation)
print(f"{len(ids)} tokens, {sum(mask)} of them written by the assistant")
print(tok.decode(ids))
assert decode_messages(ids) == conversation  # the round trip
assert tok.encode(tok.decode(ids), allowed_special="all") == ids  # the text form is exact too

# %% [markdown]
# The model must grow too: its embedding matrix has a row per id, 8,192 of them, and the
# output layer shares that matrix (weight tying, notebook 04), so four new rows give the new
# tokens both an input vector and an output score. What should the new rows be? A random row
# of the usual scale could score higher than the tokens that fit, and the untrained model
# would then emit `<|end|>` or `<|user|>` in their place (exercise 6 measures how close our
# model comes to that). Hewitt (2021) suggests the mean of the existing
# embeddings: its output score is an average token's, and as input it is a bland vector the
# fine-tuning moves where it needs to. Every old row is copied, so on ordinary text the grown
# model computes exactly what the old one did.


# %%
def grow_embeddings(model, vocab_size):
    """A copy of `model` with `vocab_size` token rows; new rows = mean of the old ones."""
    old = model.transformer.wte.weight.detach()  # (V_old, C)
    new_model = GPT(model.config.replace(vocab_size=vocab_size)).to(old.device)
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}  # tied
    extra = old.mean(dim=0, keepdim=True).expand(vocab_size - old.size(0), -1)  # (4, C)
    state["transformer.wte.weight"] = torch.cat([old, extra])  # (V_new, C)
    new_model.load_state_dict(state, strict=False)  # strict=False: lm_head is the tied copy
    return new_model.eval()


model = grow_embeddings(base_model, tok.n_vocab)
x = torch.tensor([base_tok.encode_ordinary(" The river flows into the sea .")], device=device)
with torch.no_grad():
    old_logits, new_logits = base_model(x)[0], model(x)[0]  # (1, T, 8192), (1, T, 8196)
print(f"vocab {base_model.config.vocab_size} -> {model.config.vocab_size}; old ids' logits "
      f"unchanged: {torch.allclose(new_logits[..., :8192], old_logits, atol=1e-5)}")  # fmt: skip
assert torch.allclose(new_logits[..., :8192], old_logits, atol=1e-5)
assert model.lm_head.weight is model.transformer.wte.weight  # still tied

# %% [markdown]
# ## 3. A fine-tuning dataset from WikiText-2
#
# Chat models are fine-tuned on tens of thousands of written conversations (InstructGPT used
# about 13,000 prompts with answers written by people; Alpaca 52,000 generated by another
# model, Taori et al., 2023). We have no such data and no network, but we have WikiText-2,
# whose articles have titles, section headings and paragraphs. From those, five kinds of
# question with an answer taken from the text, derived by rules, so the same data comes out
# every time:
#
# | task | user | assistant |
# | --- | --- | --- |
# | about | What is the article *T* about ? | the first sentence of the article |
# | title | Give a title for this text : *first sentence* | *T* |
# | next | Continue the text : *first sentence* | the second sentence |
# | sections | What are the sections of the article *T* ? | *A , B and C* |
# | section | Summarise the section *H* of the article *T* . | the section's first sentence |
#
# Two kinds of task hide in the table. In *title* (and partly *next*) the answer is in the
# prompt or follows from it: the model has to read and copy. In *about*, *sections* and
# *section* the answer is nowhere in the prompt: the model has to know it, that is, to have
# memorised the article during pretraining. We keep sentences up to 32 words so a whole
# conversation fits the 128-token context, and derive the training set from the train split
# and a held-out set from the validation split, whose articles the model has never seen.
#
# `wikigpt_lib.chat.wikitext_sft_examples` does this; here is what it makes. The rules are
# rough: a sentence ends at a full stop followed by a capital, so some abbreviations cut a
# sentence short, as in the first *about* answer below (`... , lit .`, from *lit.*, "literally").

# %% tags=["nbval-ignore-output"]
train_examples = wikitext_sft_examples(ds["train"])
val_examples = wikitext_sft_examples(ds["validation"])
lengths = [len(encode(e.messages)[0]) for e in train_examples]
print(f"train: {len(train_examples):,} conversations, val: {len(val_examples):,}")
print("per task (train):", dict(Counter(e.task for e in train_examples)))
print(f"tokens per conversation: mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)}")
assert max(lengths) <= 128 + 1  # every conversation fits the course model's context
for task in SFT_TASKS:
    e = next(e for e in train_examples if e.task == task)
    print(f"\n[{task}]\n  user:      {e.messages[0]['content']}")
    print(f"  assistant: {e.messages[1]['content']}")

# %% tags=["nbval-ignore-output"]
fig, ax = plt.subplots(figsize=(6, 2.8))
ax.hist(lengths, bins=30)
ax.axvline(block_size, color="k", ls="--", label=f"context ({block_size})")
ax.set(xlabel="tokens per conversation", ylabel="conversations", title="SFT data lengths")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# **Your own data.** The library also reads the JSON Lines format of the Alpaca data: one
# object per line with an `instruction`, an optional `input` and an `output` (or a
# `messages` list, for conversations of several turns). A malformed row is an error that
# names the file and the line, rather than a crash somewhere in training:

# %%
folder = Path(tempfile.mkdtemp())
good = {"instruction": "Name the river .", "input": "", "output": "The Blue River ."}
(folder / "mine.jsonl").write_text(json.dumps(good) + "\n")
print(load_jsonl_examples(folder / "mine.jsonl")[0].messages)

(folder / "broken.jsonl").write_text(json.dumps(good) + '\n{"instruction": "Hi", "ouput": "x"}\n')
try:
    load_jsonl_examples(folder / "broken.jsonl")
except ChatDataError as err:
    print("ChatDataError:", str(err).replace(str(folder), "..."))

# %% [markdown]
# ## 4. Loss on the assistant's tokens only
#
# Training is next-token prediction as before: inputs are the ids, targets are the same ids
# shifted by one. The difference is which targets count. We want the model to learn to
# *answer*, not to predict the questions users ask, so every target that is not an
# assistant token gets the value -100, which `F.cross_entropy(..., ignore_index=-100)` (and
# `GPT.forward`) leave out of the mean. Here is one example, position by position: the input
# token, and the target the loss sees.


# %%
def masked_pair(ids, mask):
    """(inputs, targets): targets are ids shifted by one, -100 where not the assistant's."""
    x = ids[:-1]
    y = [t if keep else IGNORE_INDEX for t, keep in zip(ids[1:], mask[1:], strict=True)]
    return x, y


example = [{"role": "user", "content": "Give a title for this text : Blue River is a river ."},
           {"role": "assistant", "content": "Blue River"}]  # fmt: skip
x_ex, y_ex = masked_pair(*encode(example))


def show(i):
    return repr(tok.decode([i])) if i != IGNORE_INDEX else "·  (-100, ignored)"


print(f"{'pos':>3}  {'input':<16} target")
for t, (xi, yi) in enumerate(zip(x_ex, y_ex, strict=True)):
    print(f"{t:>3}  {show(xi):<16} {show(yi)}")

# %% [markdown]
# Only three targets count: ` Blue`, ` River` and `<|end|>`. The model is never asked to
# predict the question or the role tokens (we always give those), and it *is* asked to
# predict `<|end|>`: that is how it learns to stop.
#
# The loss over a batch is the mean over the counted targets only. Computed by hand, on the
# grown model:

# %% tags=["nbval-ignore-output"]
xb = torch.tensor([x_ex], device=device)  # (1, T)
yb = torch.tensor([y_ex], device=device)  # (1, T)
with torch.no_grad():
    logits, lib_loss = model(xb, yb)  # (1, T, V)
keep = yb != IGNORE_INDEX  # (1, T)
log_probs = logits.log_softmax(-1)[keep]  # (3, V): the counted positions
by_hand = -log_probs.gather(1, yb[keep][:, None]).mean()
print(f"by hand {by_hand.item():.4f} == GPT.forward {lib_loss.item():.4f}")
assert torch.allclose(by_hand, lib_loss, atol=1e-5)

# %% [markdown]
# **Padding and packing.** Conversations have different lengths, and a batch is a
# rectangle. *Padding* fills each short one up to the longest of its batch, with any token
# as input (we use `<|endoftext|>`) and -100 as target; with causal attention the real tokens
# never look at the padding after them, so padding changes nothing but wastes compute.
# *Packing* lays conversations end to end in rows of the full context and wastes less. Its
# price here: `GPT.forward` takes no attention mask and numbers positions from 0 in each row,
# so a packed conversation can attend to the ones before it in its row and starts at a later
# position than it will at chat time. We accept that: each conversation starts with a role
# token, the loss is still only on answers, and later turns of a real chat also sit at later
# positions. (Masking attention between packed examples would need an attention mask the
# model does not have.) How much each wastes on our data:

# %% tags=["nbval-ignore-output"]
pad_id = tok._special_tokens[EOT]
train_pairs = encode_examples(train_examples, tok, block_size)
val_pairs = encode_examples(val_examples, tok, block_size)
batches = [next(sft_batches(train_pairs, 16, pad_id, seed=s)) for s in range(20)]
pad_fill = sum(int((x != pad_id).sum()) for x, _ in batches) / sum(x.numel() for x, _ in batches)
xs, ys = pack_pairs(train_pairs, block_size, pad_id)
pack_fill = float((xs != pad_id).float().mean())
counted = float((ys != IGNORE_INDEX).float().mean())
print(f"padding (batches of 16): {pad_fill:.0%} of positions are real tokens")
print(f"packing into rows of {block_size}: {pack_fill:.0%} real tokens "
      f"({len(train_pairs):,} conversations in {len(xs):,} rows)")  # fmt: skip
print(f"of all packed positions, {counted:.0%} are answer targets the loss counts")

# %% [markdown]
# Packing gets more conversations through each step, so we fine-tune with it.
#
# ## 5. Before fine-tuning
#
# What does the grown model say to a question in our template? `chat()` renders the
# conversation, adds `<|assistant|>`, generates greedily until `<|end|>` (or a token
# limit) and returns the text. Before fine-tuning the model has never seen a role token:

# %% tags=["nbval-ignore-output"]
questions = [
    "What is the article Homarus gammarus about ?",
    "Give a title for this text : The Blue River is a river in the north of Scotland .",
    "What are the sections of the article Blue River ?",
]
before = {}
for q in questions:
    before[q] = chat(model, [{"role": "user", "content": q}], tok, max_new_tokens=30)
    print(f"user:      {q}\nassistant: {before[q]}\n")

# %% [markdown]
# It continues the text: it answers nothing and never stops on its own (each reply runs to the
# 30-token limit). Next, numbers we can compare with after fine-tuning, on held-out
# conversations from the validation split's articles:
#
# - *answer loss*: the mean loss on the assistant's tokens (the quantity we train on);
# - *stops*: how often the reply ends by itself (with `<|end|>`, or another chat token)
#   within 40 tokens;
# - *exact*: how often the reply is exactly the reference answer;
# - *F1*: word overlap between reply and reference, the harmonic mean of precision and recall
#   of the words, a simplified SQuAD-style word F1 (Rajpurkar et al., 2016; punctuation and
#   articles are not removed, so `,` and `the` count); a reply that gets the subject right but
#   the facts wrong still scores some.


# %%
def word_f1(reply, reference):
    """Harmonic mean of word precision and recall (multisets of lower-cased words)."""
    got, ref = Counter(reply.lower().split()), Counter(reference.lower().split())
    common = sum((got & ref).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(got.values()), common / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def replies_and_stops(model, examples, max_new_tokens=40):
    """Greedy replies to each example's question, and whether each stopped by itself."""
    out = []
    for e in examples:
        tokens = list(reply_tokens(model, e.messages[:1], tok, max_new_tokens=max_new_tokens))
        stopped = len(tokens) < max_new_tokens  # it ended with a chat token before the limit
        out.append((tok.decode(tokens).removeprefix(" "), stopped))
    return out


def score(model, examples, pairs):
    """Per task: number of examples, stop rate, exact match, F1; and the answer loss."""
    table = {}
    for e, (reply, stopped) in zip(examples, replies_and_stops(model, examples), strict=True):
        ref = e.messages[1]["content"]
        row = table.setdefault(e.task, {"n": 0, "stops": 0, "exact": 0, "f1": 0.0})
        row["n"] += 1
        row["stops"] += stopped
        row["exact"] += reply == ref
        row["f1"] += word_f1(reply, ref)
    loss = chat_loss(model, pairs, pad_id)
    return {
        t: {k: v / r["n"] if k != "n" else v for k, v in r.items()} for t, r in table.items()
    }, loss


def print_scores(table, loss, label):
    print(f"{label}: answer loss {loss:.3f} nats/token")
    print(f"  {'task':<9} {'n':>3} {'stops':>6} {'exact':>6} {'F1':>6}")
    for task in SFT_TASKS:
        r = table[task]
        print(f"  {task:<9} {r['n']:>3} {r['stops']:>6.0%} {r['exact']:>6.0%} {r['f1']:>6.2f}")


# The first few held-out conversations of each task (generation is the slow part).
per_task = quick(20, 2)
eval_examples = [
    e for task in SFT_TASKS for e in [e for e in val_examples if e.task == task][:per_task]
]

# %% tags=["nbval-ignore-output"]
t0 = time.perf_counter()
scores_before, loss_before = score(model, eval_examples, val_pairs)
print_scores(scores_before, loss_before, "before fine-tuning")
print(f"({len(eval_examples)} replies in {time.perf_counter() - t0:.0f} s)")

# %% [markdown]
# ## 6. Fine-tuning
#
# The loop is notebook 05's: AdamW, a short warmup then a cosine decay, gradient clipping;
# only the batches differ (packed rows with masked targets). `finetune_chat` is that loop;
# the check at the end of the notebook runs it against a hand-written one. All weights train,
# the new embedding rows included. As usual for fine-tuning, the peak learning rate is lower
# than pretraining's (1e-3 against 2e-3): the model should adapt to the new format without
# losing what it learned from the whole of WikiText. 200 steps of 16 rows are about 2.6 passes
# over the training conversations: a few minutes on a laptop CPU (the stored run used one
# core).

# %% tags=["nbval-ignore-output"]
sft_config = TrainConfig(
    max_steps=quick(200, 30), batch_size=quick(16, 8), lr=1e-3, min_lr=1e-4,
    warmup_steps=quick(20, 3), eval_interval=quick(50, 15), log_interval=10,
    seed=1337, progress=False,
)  # fmt: skip
t0 = time.perf_counter()
history = finetune_chat(
    model, train_pairs, sft_config, pad_id=pad_id, val_pairs=val_pairs, pack=True
)
seconds = time.perf_counter() - t0
val_curve = [(r["step"], r["loss"]) for r in history if r["split"] == "val"]
print(f"{sft_config.max_steps} steps of {sft_config.batch_size} packed rows in {seconds:.0f} s")
print("held-out answer loss:", ", ".join(f"step {s}: {v:.3f}" for s, v in val_curve))

fig, ax = plt.subplots(figsize=(6, 3))
train_curve = [(r["step"], r["loss"]) for r in history if r["split"] == "train"]
ax.plot(*zip(*train_curve, strict=True), label="train (answer tokens)")
ax.plot(*zip(*([(0, loss_before)] + val_curve), strict=True), "o-", label="held-out")
ax.set(xlabel="step", ylabel="loss (nats/token)", title="Chat fine-tuning")
ax.grid(alpha=0.3)
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 7. After fine-tuning
#
# The same questions:

# %% tags=["nbval-ignore-output"]
for q in questions:
    after = chat(model, [{"role": "user", "content": q}], tok, max_new_tokens=30)
    print(f"user:      {q}\nbefore:    {before[q]}\nafter:     {after}\n")

# %% [markdown]
# And the held-out numbers:

# %% tags=["nbval-ignore-output"]
scores_after, loss_after = score(model, eval_examples, val_pairs)
print_scores(scores_before, loss_before, "before fine-tuning")
print_scores(scores_after, loss_after, "after fine-tuning")

fig, axes = plt.subplots(1, 2, figsize=(8, 2.8), sharey=True)
for ax, metric in zip(axes, ("stops", "f1"), strict=True):
    pos = torch.arange(len(SFT_TASKS)).float()
    ax.bar(pos - 0.2, [scores_before[t][metric] for t in SFT_TASKS], 0.4, label="before")
    ax.bar(pos + 0.2, [scores_after[t][metric] for t in SFT_TASKS], 0.4, label="after")
    ax.set_xticks(pos, SFT_TASKS, rotation=30)
    ax.set_title({"stops": "stops by itself", "f1": "word F1 with the reference"}[metric])
axes[0].legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# **What a model this small can and cannot do.** Read the numbers and the replies together.
#
# - *Part of the format is learned.* The answer loss on held-out conversations falls from
#   5.45 to 4.39 nats per token. Before, no reply ended by itself; after, the model writes
#   `<|end|>` on its own for most *title* (80%) and *section* (65%) questions, where answers
#   are short and alike, and its replies have the shape of the task's answers: a sentence
#   starting like a Wikipedia lead, a list of headings, a short title-like phrase. Lists of
#   sections, whose length varies, it mostly does not end (15%): greedy decoding falls into
#   the loop of notebook 06 (`History , History , History , ...`).
# - *Copying from the prompt it did not learn.* In *title* the answer is right there in the
#   question, yet the model writes a generic title-like phrase (`The Synopsis ( <unk> )`),
#   not the subject of the sentence: word F1 0.02. Finding which words of a sentence are its
#   title and copying them is more than 200 steps teach this model.
# - *Facts it does not know.* For *about*, *sections* and *section* the answer must come
#   from memory. The model has read about 2.5 million tokens once; it has not memorised the
#   articles, and it cannot know the held-out ones at all. What it writes takes its register
#   from the question (a Latin species name gets `The genus is a species of ...`) but holds
#   no facts. That is the style of an answer without its content, a small-scale version of
#   what is called hallucination. The word F1 of 0.14 to 0.19 there comes from common words
#   (*the*, *of*, *,*), and it was about as high before fine-tuning; no reply is exactly right.
# - *What it still learns late is the training set.* In the loss curves of section 6 the
#   training loss keeps falling while the held-out loss flattens after about 150 steps (4.46
#   at step 100, 4.40 at 150, 4.39 at 200; the learning rate has decayed by then too): the
#   later steps fit the training articles (which the model also read in pretraining) rather
#   than a skill that carries over to new ones.
# - *It has only ever seen single-turn conversations,* so follow-up questions are beyond it;
#   and it knows only WikiText's spacing (so `wikigpt chat` converts what you type).
#
# More steps, a larger learning rate or a larger model are the levers to try. Scale is what
# changes the picture: GPT-3-sized models already hold many facts before any fine-tuning, and
# SFT, the first of InstructGPT's three steps (Ouyang et al., 2022; a reward model and
# reinforcement learning from human feedback follow), then mostly teaches the format. The
# same functions fine-tune OpenAI's GPT-2 (notebook 08) where its weights can be had:
# `get_chat_tokenizer("gpt2")` and
# `resize_token_embeddings(GPT.from_pretrained("gpt2"), 50261)`.
#
# A conversation with the fine-tuned model, streamed piece by piece as `wikigpt chat` does
# (`chat_stream` also undoes WikiText's spacing for display):

# %% tags=["nbval-ignore-output"]
messages = [{"role": "user", "content": to_wikitext("Give a title for this text: "
            "The Old Mill is a water-powered mill in the village of Ashby, built in 1763.")}]  # fmt: skip
print("user:     ", messages[0]["content"])
print("assistant: ", end="")
for piece in chat_stream(model, messages, tok, max_new_tokens=30):
    print(piece, end="", flush=True)
print()

# %% [markdown]
# ## 8. Saving it, and `wikigpt chat`
#
# `save_chat_model` writes an ordinary checkpoint (notebook 05's format) whose tokenizer
# name, `wikitext2-chat`, tells the loader to add the chat tokens. The command line then
# gives an interactive chat:
#
#     wikigpt chat --checkpoint runs/chat
#
# Each line you type is a user message (converted to WikiText spacing); the reply streams as
# it is generated; the conversation is kept, and its oldest turns are dropped when it no
# longer fits the 128-token context. `/reset` starts over, `/exit` or Ctrl-D quits. Here we
# pipe two lines into it instead of typing:

# %% tags=["nbval-ignore-output"]
chat_dir = Path("..") / "runs" / "chat" if not is_quick() else folder / "chat"
if chat_dir.exists():  # replace the chat model of an earlier run, rather than adding to it
    shutil.rmtree(chat_dir)
    print(f"removed the chat model of an earlier run of this notebook: {chat_dir}")
saved = save_chat_model(chat_dir, model, tok, config=sft_config, history=history,
                            data=f"SFT from {wikitext2_source(ds)}")  # fmt: skip
print("saved:", saved)

from wikigpt_lib.cli import main

stdin, sys.stdin = sys.stdin, io.StringIO("What is the article Blue River about?\n/exit\n")
try:
    code = main(["chat", "--checkpoint", str(chat_dir), "--max-new-tokens", "40"])
finally:
    sys.stdin = stdin
print("\nexit code:", code)
assert code == 0

# %% [markdown]
# The reply is a greedy loop again (`The SMS SMS SMS ...`), like the lists of sections in
# section 7 (`History , History , ...`): once a word repeats, greedy decoding keeps choosing it
# (notebook 06).

# %% [markdown]
# ## Check against the library
#
# `wikigpt_lib.chat` is this notebook's code, organised. On the same inputs the two must agree:
# the template and the mask, the masked targets, the grown model, the replies, and the
# fine-tuning loop. For the last, the notebook's own loop (section 6 written out) and
# `finetune_chat` train two copies of a small model for a few steps on the same batches.

# %%
lib_tok = get_chat_tokenizer()
assert lib_tok.n_vocab == tok.n_vocab and chat_token_ids(lib_tok) == SPECIAL_ID
for e in [*train_examples[:50], ChatExample("chat", conversation)]:
    ids, mask = encode(e.messages)
    enc = encode_chat(e.messages, lib_tok)
    assert (enc.ids, enc.assistant) == (ids, mask)
    assert sft_pair(enc) == masked_pair(ids, mask)
    assert parse_chat(ids, lib_tok) == decode_messages(ids) == e.messages
assert render_chat(conversation) == tok.decode(encode(conversation)[0])

torch.manual_seed(0)
small = GPT(GPTConfig.preset("tiny", block_size=64))
ours, theirs = grow_embeddings(small, tok.n_vocab), resize_token_embeddings(small, tok.n_vocab)
for (name, p), q in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
    assert torch.equal(p, q), name


def our_reply(model, messages, max_new_tokens=20):
    """Greedy decoding written out: no cache, stop at any special token."""
    ids = encode(messages, add_generation_prompt=True)[0]
    new = []
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits, _ = model(torch.tensor([ids + new]))  # (1, T, V)
        token = int(logits[0, -1].argmax())
        if token in SPECIAL_ID.values() or token == pad_id:
            break
        new.append(token)
    return tok.decode(new).removeprefix(" ")


# questions short enough for 20 new tokens in a context of 64 without trimming (which
# trim_messages does, and tests/test_chat.py tests)
short = [e for e in train_examples if len(encode(e.messages[:1], True)[0]) + 20 <= 64]
for e in short[:3]:
    assert our_reply(theirs, e.messages[:1]) == chat(theirs, e.messages[:1], lib_tok,
                                                     max_new_tokens=20)  # fmt: skip

# The fine-tuning loop, by hand, against finetune_chat on the same packed batches.
cfg = TrainConfig(max_steps=4, batch_size=4, lr=1e-3, min_lr=1e-4, warmup_steps=2,
                  log_interval=1, grad_clip=1.0, progress=False)  # fmt: skip
fits = [e for e in train_examples if len(encode(e.messages)[0]) <= 64 + 1][:40]
pairs = [masked_pair(*encode(e.messages)) for e in fits]  # (x, y) of at most 64 positions
batch_iter = sft_batches(pairs, cfg.batch_size, pad_id, pack_to=64, seed=cfg.seed)
ours, theirs = grow_embeddings(small, tok.n_vocab), resize_token_embeddings(small, tok.n_vocab)
from wikigpt_lib.train import configure_optimizer, lr_at

opt = configure_optimizer(ours.train(), cfg)
our_losses = []
for step in range(cfg.max_steps):
    for group in opt.param_groups:
        group["lr"] = lr_at(step, cfg)
    xb, yb = next(batch_iter)
    _, loss = ours(xb, yb)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(ours.parameters(), cfg.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    our_losses.append(loss.item())
lib_history = finetune_chat(theirs, pairs, cfg, pad_id=pad_id, pack=True)
lib_losses = [r["loss"] for r in lib_history]
assert torch.allclose(torch.tensor(our_losses), torch.tensor(lib_losses), atol=1e-4)
for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
    assert torch.allclose(p, q, atol=1e-5)
print("notebook == wikigpt_lib.chat: template, mask, targets, parsing, grown model, replies, "
      "and 4 fine-tuning steps agree")  # fmt: skip

# %% [markdown]
# ## Summary
#
# - A chat model is a language model fine-tuned on conversations written in a *template*:
#   role tokens before each message, an end token after it. Special tokens cannot be typed
#   into a message, and the end token tells generation when to stop.
# - New tokens need new rows in the (tied) embedding matrix; starting them at the mean of the
#   existing rows gives them an average token's score, so the untrained model does not emit
#   them, and leaves every old token's behaviour exactly as it was.
# - Supervised fine-tuning is next-token training with the prompt's targets set to -100: the
#   model learns to write answers, including the end token, not to predict questions.
#   Padding wastes compute; packing wastes less but lets packed conversations see each other.
# - Fine-tuning data can be derived from a corpus by rules (titles, headings, first
#   sentences), deterministically; user data comes as Alpaca-style JSONL, checked line by line.
# - 200 steps teach a 5-million-parameter model part of the format: its replies take the
#   shape of each task's answers, and it learns to stop where answers are short and alike.
#   In that time it does not learn to copy an answer out of the prompt, and where the answer
#   must come from memory it writes plausible-looking text without facts: a model this small
#   knows very little. The format is what SFT adds; the knowledge must come from pretraining.
#
# ## Exercises
#
# 1. *(easy)* The cost of the template. Over the training conversations, what fraction of the
#    tokens are template tokens (role and end tokens), and what fraction of the targets count
#    in the loss? How would the second number change with a system message of ten tokens in
#    every conversation?
# 2. *(medium)* Loss on everything. Fine-tune a fresh copy of the grown model with targets on
#    *every* token (no -100), for the same steps, and compare the held-out answer loss and
#    the scores of section 7. What does the model spend its capacity on instead?
# 3. *(medium)* Padding or packing? Fine-tune once with `pack=False` and once with
#    `pack=True` for the same number of steps and batch size, and compare time per step, the
#    number of conversations seen, and the held-out answer loss.
# 4. *(easy)* Teach it your facts. Write five question/answer rows of your own to a JSONL file
#    in the Alpaca format, fine-tune the grown model on them (a hundred steps or so) and check
#    that `chat()` answers each question with its answer. Then ask a question you did not
#    teach. What does it say?
# 5. *(medium)* A new task. Add a sixth task, "How many sections does the article *T* have
#    ?" (answered with the number, written as WikiText writes numbers), fine-tune with it, and
#    measure its exact-match rate on the held-out articles. Is it higher or lower than the
#    other closed-book tasks, and why?
# 6. *(medium)* Random new rows. Instead of the mean, initialise the four new rows randomly
#    with the scale of the old ones (zero mean, the same standard deviation per dimension),
#    and once with GPT's own initialisation, N(0, 0.02). Before any fine-tuning, how probable
#    is `<|end|>` where the assistant writes, and where does it rank among the 8,196 ids? How
#    often does a greedy reply to the section 5 questions stop by itself? How does the answer
#    loss at step 0 compare with the mean initialisation's?
