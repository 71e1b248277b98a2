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
# # 09 · Chat: solutions to the exercises
#
# Worked answers to the exercises of [09_chat](../notebooks/09_chat.ipynb). Try them yourself
# first; each answer is code you can run plus a short explanation. The numbers quoted in the
# text are from a run on the real WikiText-2 on a 2-core CPU, starting from the course model
# (`runs/cpu`). To keep that run short, the fine-tuning runs here are shorter than the
# notebook's (100 steps instead of 200), so compare them with each other, not with the
# notebook's numbers.
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/wiki-gpt/wiki-gpt/blob/main/solutions/09_chat_solutions.ipynb)

# %%
import sys

if "google.colab" in sys.modules:  # on Colab, install the course library first
    get_ipython().run_line_magic(
        "pip", 'install -q "wikigpt-lib @ git+https://github.com/wiki-gpt/wiki-gpt"'
    )

# %%
import json
import re
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import torch

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm: no Jupyter widgets

from wikigpt_lib.chat import (
    SFT_TASKS,
    ChatExample,
    chat,
    chat_loss,
    chat_token_ids,
    encode_chat,
    encode_examples,
    finetune_chat,
    get_chat_tokenizer,
    load_jsonl_examples,
    pack_pairs,
    reply_tokens,
    resize_token_embeddings,
    wikitext_sft_examples,
)
from wikigpt_lib.course import course_model
from wikigpt_lib.data import (
    load_wikitext2,
    split_articles,
    wikitext2_source,
)
from wikigpt_lib.device import pick_device, quick
from wikigpt_lib.generate import generate
from wikigpt_lib.model import IGNORE_INDEX
from wikigpt_lib.tokenizer import EOT
from wikigpt_lib.train import TrainConfig

# %% [markdown]
# The set-up of the notebook: the course model (or, without `runs/cpu`, one trained here), the
# chat tokenizer, the data, and the scoring functions of section 5.

# %% tags=["nbval-ignore-output"]
RUN_DIR = Path("..") / "runs" / "cpu"
ds = load_wikitext2(fallback="sample")
device = pick_device()
base_model = course_model(RUN_DIR, data=ds, device=device, block_size=quick(128, 64)).model
block_size = base_model.config.block_size
tok = get_chat_tokenizer()
pad_id = tok._special_tokens[EOT]
CHAT_IDS = set(chat_token_ids(tok).values())
train_examples = wikitext_sft_examples(ds["train"])
val_examples = wikitext_sft_examples(ds["validation"])
train_pairs = encode_examples(train_examples, tok, block_size)
val_pairs = encode_examples(val_examples, tok, block_size)
per_task = quick(10, 2)
eval_examples = [
    e for task in SFT_TASKS for e in [e for e in val_examples if e.task == task][:per_task]
]
STEPS = quick(100, 10)
print("data:", wikitext2_source(ds), f"| {len(train_pairs):,} train, {len(val_pairs)} val pairs")


def word_f1(reply, reference):
    got, ref = Counter(reply.lower().split()), Counter(reference.lower().split())
    common = sum((got & ref).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(got.values()), common / sum(ref.values())
    return 2 * precision * recall / (precision + recall)


def score(model, examples, max_new_tokens=40):
    """Per task: stop rate, exact match and word F1 of greedy replies."""
    table = {}
    for e in examples:
        reply = list(reply_tokens(model, e.messages[:1], tok, max_new_tokens=max_new_tokens))
        text, ref = tok.decode(reply).removeprefix(" "), e.messages[1]["content"]
        row = table.setdefault(e.task, Counter())
        row["n"] += 1
        row["stops"] += len(reply) < max_new_tokens
        row["exact"] += text == ref
        row["f1"] += word_f1(text, ref)
    return {task: {k: v / r["n"] for k, v in r.items() if k != "n"} for task, r in table.items()}


def finetune(pairs, steps=STEPS, pack=True, seed=1337):
    """A fresh grown copy of the course model, fine-tuned on `pairs`; returns it and seconds."""
    model = resize_token_embeddings(base_model, tok.n_vocab)
    cfg = TrainConfig(max_steps=steps, batch_size=quick(16, 8), lr=1e-3, min_lr=1e-4,
                      warmup_steps=max(1, steps // 10), log_interval=10, seed=seed,
                      progress=False)  # fmt: skip
    t0 = time.perf_counter()
    finetune_chat(model, pairs, cfg, pad_id=pad_id, pack=pack)
    return model, time.perf_counter() - t0


def report(name, model):
    """Held-out answer loss and the mean scores over tasks, on one line."""
    loss = chat_loss(model, val_pairs, pad_id)
    s = score(model, eval_examples)
    mean = {k: sum(s[t][k] for t in s) / len(s) for k in ("stops", "exact", "f1")}
    print(f"{name:<28} answer loss {loss:.3f} | stops {mean['stops']:.0%} | exact "
          f"{mean['exact']:.0%} | F1 {mean['f1']:.2f}")  # fmt: skip
    return loss, s


# %% [markdown]
# ## Exercise 1: the cost of the template
#
# Each message adds two template tokens (its role token and `<|end|>`); a single-turn
# conversation has four. The targets that count are the answer's tokens plus its `<|end|>`.

# %% tags=["nbval-ignore-output"]
n_tokens = sum(len(x) + 1 for x, _ in train_pairs)
n_template = 4 * len(train_pairs)
n_counted = sum(sum(t != IGNORE_INDEX for t in y) for _, y in train_pairs)
n_targets = sum(len(y) for _, y in train_pairs)
print(f"{n_template / n_tokens:.1%} of the tokens are template tokens")
print(f"{n_counted / n_targets:.1%} of the targets count in the loss")
with_system = (n_counted, n_targets + 10 * len(train_pairs))
print(f"with a 10-token system message in every conversation: "
      f"{with_system[0] / with_system[1]:.1%}")  # fmt: skip

# %% [markdown]
# On WikiText-2 about 9% of the tokens are template tokens, and half of the targets count
# in the loss. A system message in every conversation adds only prompt tokens: it makes each
# step more expensive without adding a single counted target, so the fraction falls (to about
# two fifths here). This is one reason to keep system messages short, or leave them out of
# most training conversations.
#
# ## Exercise 2: loss on everything
#
# Targets on every token: the pairs' targets are simply the ids shifted by one. We train two
# fresh copies for the same number of steps, one with the mask and one without, and score both
# on the *answer* loss (the masked loss), which is what a user sees.

# %% tags=["nbval-ignore-output"]
unmasked_pairs = []
for e in train_examples:
    ids = encode_chat(e.messages, tok).ids
    if len(ids) - 1 <= block_size:
        unmasked_pairs.append((ids[:-1], ids[1:]))
masked_model, masked_s = finetune(train_pairs)
unmasked_model, unmasked_s = finetune(unmasked_pairs)
loss_masked, scores_masked = report("masked (answers only)", masked_model)
loss_unmasked, scores_unmasked = report("unmasked (every token)", unmasked_model)

# %% [markdown]
# Without the mask, half of the targets are prompt tokens: the questions are highly
# repetitive ("What is the article ... about ?") and the quoted sentences are ordinary
# WikiText, so part of every update goes to text the model will never have to write. With the
# same number of steps the masked model reaches the lower answer loss (4.45 against 4.52 in
# our run); stop rates and F1 barely differ at this budget. The mask spends the same compute
# on what matters.
#
# ## Exercise 3: padding or packing?

# %% tags=["nbval-ignore-output"]
padded_model, padded_s = finetune(train_pairs, pack=False)
xs, _ = pack_pairs(train_pairs, block_size, pad_id)
per_row = len(train_pairs) / len(xs)
batch = quick(16, 8)
print(f"packed: {masked_s / STEPS:.2f} s/step, about {batch * per_row:.0f} conversations/step")
print(f"padded: {padded_s / STEPS:.2f} s/step, {batch} conversations/step")
report("packed", masked_model)
report("padded", padded_model)

# %% [markdown]
# A packed row of 128 tokens holds about two and a quarter conversations, a padded row one,
# padded to the longest of its batch. Per step, packing sees more than twice the
# conversations and reaches the lower answer loss (4.45 against 4.59). The padded model
# stopped by itself more often in our run (70% against 56%); one possible reason is that
# padding trains every conversation at positions from 0, as at chat time, while packing
# shifts most of them to later positions. The times per step are from a CPU shared with
# other jobs, so they are not a fair comparison: in principle a padded step is the cheaper
# one, since its batch is only as long as its longest conversation.
#
# ## Exercise 4: teach it your facts

# %% tags=["nbval-ignore-output"]
facts = [
    ("Who keeps the lighthouse at Ashby ?", "Mary Holt , since 1998 ."),
    ("What colour is the Ashby ferry ?", "Green with a white stripe ."),
    ("When does the Ashby market open ?", "Every Tuesday at seven ."),
    ("How long is the Ashby bridge ?", "About 300 metres ."),
    ("Who founded the Ashby choir ?", "The brothers Tom and Ed Reed ."),
]
path = Path(tempfile.mkdtemp()) / "facts.jsonl"
path.write_text("".join(json.dumps({"instruction": q, "output": a}) + "\n" for q, a in facts))
fact_pairs = encode_examples(load_jsonl_examples(path), tok, block_size)
fact_model = resize_token_embeddings(base_model, tok.n_vocab)
cfg = TrainConfig(max_steps=quick(100, 30), batch_size=5, lr=1e-3, min_lr=1e-4, warmup_steps=5,
                  weight_decay=0.0, log_interval=10, progress=False)  # fmt: skip
finetune_chat(fact_model, fact_pairs, cfg, pad_id=pad_id)
right = 0
for q, a in facts:
    reply = chat(fact_model, [{"role": "user", "content": q}], tok, max_new_tokens=20)
    right += reply == a
    print(f"{q:<40} -> {reply}")
print(f"{right} of {len(facts)} reproduced exactly")
for q in ("Who keeps the lighthouse at Brill ?", "What is the capital of France ?"):
    print(f"untaught: {q:<30} -> {chat(fact_model, [{'role': 'user', 'content': q}], tok)}")

# %% [markdown]
# A hundred steps over five examples is memorisation: all five answers come back word for
# word. An untaught question gets one of the taught answers, the nearest in wording or not:
# the model has learned five replies, not a notion of what it does not know.
#
# ## Exercise 5: a new task
#
# WikiText writes numbers as words of digits, so "4" is just "4". We add the task to the
# train and held-out sets and fine-tune on everything.

# %% tags=["nbval-ignore-output"]
SECTION = re.compile(r"^ = = [^=].* = = $")  # a level-2 heading row (not " = = = Sub = = = ")


def count_examples(rows):
    out = []
    for article in split_articles(rows):
        n = sum(1 for row in article.text.split("\n") if SECTION.match(row))
        question = f"How many sections does the article {article.title} have ?"
        out.append(ChatExample("count", [{"role": "user", "content": question},
                                             {"role": "assistant", "content": str(n)}]))  # fmt: skip
    return out


count_train, count_val = count_examples(ds["train"]), count_examples(ds["validation"])
print("answers (train):", Counter(e.messages[1]["content"] for e in count_train).most_common(6))
count_model, _ = finetune(train_pairs + encode_examples(count_train, tok, block_size))
replies = [chat(count_model, e.messages[:1], tok, max_new_tokens=5) for e in count_val]
exact = sum(r == e.messages[1]["content"] for r, e in zip(replies, count_val, strict=True))
guess = Counter(e.messages[1]["content"] for e in count_train).most_common(1)[0][0]
always = sum(e.messages[1]["content"] == guess for e in count_val)
print(f"count task: {exact} of {len(count_val)} exact; always answering {guess!r}: {always}")
print("its answers:", Counter(replies).most_common(5))

# %% [markdown]
# The answer is a single number from a small range, so exact match is much easier to reach
# here than on the sentence-long answers of the other closed-book tasks, and even a guess is
# sometimes right. The fair comparison is therefore not the other tasks but the baseline that
# always answers the most common count, printed above. A model that roughly matches that
# baseline, mostly answering with the common values, has learned the distribution of the
# answers, not the articles: it cannot count the sections of an article it has never seen,
# and has not memorised those it has.
#
# ## Exercise 6: random new rows


# %% tags=["nbval-ignore-output"]
def random_rows(model, seed=0):
    """The grown model with its four new rows drawn at random, with the old rows' spread."""
    grown = resize_token_embeddings(model, tok.n_vocab)
    wte = grown.transformer.wte.weight  # (V, C)
    old = wte[: model.config.vocab_size].detach()
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(tok.n_vocab - len(old), old.size(1), generator=gen).to(old.device)
    with torch.no_grad():
        wte[len(old) :] = old.mean(0) + noise * old.std(0)
    return grown


def chat_token_share(model, examples, n_new=30):
    """Fraction of greedy continuations (no stopping) that contain a chat token."""
    hits = 0
    for e in examples:
        ids = encode_chat(e.messages[:1], tok, add_generation_prompt=True).ids
        out = generate(model, torch.tensor([ids], device=device), n_new, temperature=0)
        hits += bool(CHAT_IDS & set(out[0, len(ids) :].tolist()))
    return hits / len(examples)


mean_init = resize_token_embeddings(base_model, tok.n_vocab)
for name, m in (("mean rows", mean_init), ("random rows", random_rows(base_model))):
    share = chat_token_share(m, eval_examples)
    loss = chat_loss(m, val_pairs, pad_id)
    print(f"{name:<12} replies with a chat token: {share:.0%} | answer loss at step 0 {loss:.2f}")

# %% [markdown]
# With the mean rows, greedy replies contain no chat token: the mean row scores like an
# average token, far below the few tokens the model expects next. Random rows with the old
# rows' spread are ordinary-sized embeddings pointing in arbitrary directions, so each new
# token is scored like some random ordinary token: high in a few contexts, low in most.
# Greedy decoding therefore rarely picks one either, but sampling would now and then, before
# the model has learned anything about them; and the answer loss at step 0, where `<|end|>`
# is one of the counted targets, comes out the same or a little higher. Fine-tuning moves
# either start where it needs to be. The mean is the start that cannot do harm before
# training has had its say (Hewitt, 2021), which is why the library uses it.
