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
import statistics
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
    pad_batch,
    reply_tokens,
    resize_token_embeddings,
    sft_batches,
    wikitext_sft_examples,
)
from wikigpt_lib.course import course_model
from wikigpt_lib.data import (
    load_wikitext2,
    split_articles,
    wikitext2_source,
)
from wikigpt_lib.device import pick_device, quick
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
# For the system message we read "ten tokens" as ten tokens of text: with its role token and
# its `<|end|>` it adds 12 positions to every conversation, none of them counted.

# %% tags=["nbval-ignore-output"]
n_tokens = sum(len(x) + 1 for x, _ in train_pairs)
n_template = 4 * len(train_pairs)
n_counted = sum(sum(t != IGNORE_INDEX for t in y) for _, y in train_pairs)
n_targets = sum(len(y) for _, y in train_pairs)
print(f"{n_template / n_tokens:.1%} of the tokens are template tokens")
print(f"{n_counted / n_targets:.1%} of the targets count in the loss")
with_system = (n_counted, n_targets + 12 * len(train_pairs))  # 10 text + role + <|end|>
print(f"with a 10-token system message (12 positions) in every conversation: "
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
#
# Run exercise 2 first: its `masked_model` is the packed run compared here. Times per step
# from two separate runs are not comparable on a CPU that other jobs share (a busy minute
# slows one run and not the other), so the timing below trains fresh copies both ways in
# alternating blocks of a few steps and takes the median time per step of each.

# %% tags=["nbval-ignore-output"]
# Needs exercise 2's masked_model (packed, same steps and batch size).
padded_model, _ = finetune(train_pairs, pack=False)
_ = report("packed", masked_model)  # the same line as in exercise 2
_ = report("padded", padded_model)
batch = quick(16, 8)


def time_steps(rounds, block):
    """Median seconds per training step, padded and packed, timed in alternating blocks of
    `block` steps; also each batch's mean width, real-token share and answer targets."""
    runs = {}
    for name, pack_to in (("padded", None), ("packed", block_size)):
        model = resize_token_embeddings(base_model, tok.n_vocab).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        runs[name] = (model, opt, sft_batches(train_pairs, batch, pad_id, pack_to=pack_to), [], [])
    for _ in range(rounds):
        for model, opt, batches, times, shapes in runs.values():
            for _ in range(block):
                x, y = next(batches)  # (B, T): T = longest in the batch, or block_size packed
                t0 = time.perf_counter()
                _, loss = model(x.to(device), y.to(device))
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                times.append(time.perf_counter() - t0)
                shapes.append((x.size(1), float((x != pad_id).float().mean()),
                               int((y != IGNORE_INDEX).sum())))  # fmt: skip
    return {
        name: (statistics.median(times), *map(statistics.mean, zip(*shapes, strict=True)))
        for name, (*_, times, shapes) in runs.items()
    }


xs, _ = pack_pairs(train_pairs, block_size, pad_id)
per_row = len(train_pairs) / len(xs)  # conversations per packed row
timing = time_steps(rounds=quick(5, 2), block=quick(4, 2))
for name, conversations in (("padded", batch), ("packed", batch * per_row)):
    seconds, width, real, answer = timing[name]
    print(f"{name}: {conversations:.0f} conversations, {width:.0f} tokens wide ({real:.0%} real), "
          f"{answer:.0f} answer targets per step | median {seconds:.2f} s/step")  # fmt: skip
ratio = timing["padded"][0] / timing["packed"][0]
print(f"a padded step took {ratio:.2f} times as long as a packed one on this machine")

# %% [markdown]
# A packed row of 128 tokens holds about two and a quarter conversations, a padded row one,
# padded to the longest of its batch. Per step, packing sees more than twice the
# conversations and reaches the lower answer loss (4.45 against 4.59). The padded model
# stopped by itself more often in our run (70% against 56%); one possible reason is that
# padding trains every conversation at positions from 0, as at chat time, while packing
# shifts most of them to later positions.
#
# What to expect of the times: a padded batch is only as wide as its longest conversation,
# about 71 tokens here against 128 for a packed row, and only about two thirds of it is real
# tokens, so a padded step should be the cheaper one; but it also covers fewer answer
# targets (the counts are printed above). Compare the medians printed above with that
# expectation: per step padding should be faster, per answer token packing should win.
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
# WikiText writes numbers in digits, splitting only at separators (`1 @,@ 000`); section
# counts are small, so "4" is just "4". We add the task to the train and held-out sets and
# fine-tune on everything.

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
#
# Three starts for the four new rows: the mean of the old rows (the library's), a zero-mean
# random row with the old rows' spread per dimension, and GPT's own initialisation N(0, 0.02).
# For each, before any fine-tuning: how much probability `<|end|>` gets at the positions where
# the assistant writes (where the answer ends, and elsewhere), its median rank among all ids
# there, how many greedy replies stop by themselves, and the answer loss.


# %% tags=["nbval-ignore-output"]
def new_rows(model, init, seed=0):
    """The grown model with its new rows set by `init`: "mean" (the mean of the old rows),
    "random" (zero mean, the old rows' std per dimension) or "gpt" (N(0, 0.02))."""
    grown = resize_token_embeddings(model, tok.n_vocab)  # new rows = the mean
    wte = grown.transformer.wte.weight  # (V, C), tied to the output layer
    old = wte[: model.config.vocab_size].detach()  # (V_old, C)
    gen = torch.Generator().manual_seed(seed)  # its own generator: global RNG untouched
    noise = torch.randn(tok.n_vocab - len(old), old.size(1), generator=gen).to(old.device)
    with torch.no_grad():
        if init == "random":
            wte[len(old) :] = noise * old.std(0)  # (4, C)
        elif init == "gpt":
            wte[len(old) :] = noise * 0.02
    return grown.eval()


END = chat_token_ids(tok)["<|end|>"]


@torch.no_grad()
def end_token_odds(model, pairs, batch_size=32):
    """Over the answer positions of `pairs`: mean p(<|end|>) where the answer ends and where
    it does not, and the median rank of <|end|> among all ids (1 = the model's top choice)."""
    at_end, elsewhere, ranks = [], [], []
    for start in range(0, len(pairs), batch_size):
        x, y = pad_batch(pairs[start : start + batch_size], pad_id)  # (B, T)
        y = y.to(device)
        logits, _ = model(x.to(device))  # (B, T, V)
        logits, targets = logits[y != IGNORE_INDEX], y[y != IGNORE_INDEX]  # (N, V), (N,)
        p_end = logits.softmax(-1)[:, END]  # (N,)
        at_end.append(p_end[targets == END])
        elsewhere.append(p_end[targets != END])
        ranks.append((logits > logits[:, END : END + 1]).sum(1) + 1)  # (N,)
    at_end, elsewhere, ranks = (torch.cat(t) for t in (at_end, elsewhere, ranks))
    return at_end.mean().item(), elsewhere.mean().item(), ranks.float().median().item()


p_end = {}
for init in ("mean", "random", "gpt"):
    m = new_rows(base_model, init)
    end_p, other_p, rank = end_token_odds(m, val_pairs)
    s = score(m, eval_examples)
    stops = sum(s[t]["stops"] for t in s) / len(s)
    p_end[init] = (end_p + other_p) / 2
    print(f"{init:<6} p(<|end|>) at answer ends {end_p:.1e}, elsewhere {other_p:.1e}, median "
          f"rank {rank:,.0f} of {tok.n_vocab:,} | replies that stop {stops:.0%} | answer loss "
          f"at step 0 {chat_loss(m, val_pairs, pad_id):.2f}")  # fmt: skip
print("<|end|> is most probable at step 0 with the", max(p_end, key=p_end.get), "start")

# %% [markdown]
# The mean row scores like an average token: `<|end|>` ranks in the middle of the vocabulary
# and gets a tiny probability. A zero-mean row, random or N(0, 0.02), gets a logit near zero
# in every context, while most of a trained model's logits lie below zero (Hewitt, 2021; in
# ours the large majority do), so such a row outranks most of the vocabulary. In our run both
# random starts give `<|end|>` many times the mean row's probability and rank it far higher
# (printed above). Here that is still not enough to beat the few tokens that fit, whose
# logits are well above zero, so greedy replies do not stop any more often; sampling would
# now and then pick a chat token before the model has learned anything about it. The
# probability at the ends of answers is no higher than elsewhere: a random start does not
# know where answers end, it guesses `<|end|>` more everywhere. That is also why the answer
# loss at step 0 can come out lower than with the mean: `<|end|>` is a counted target at the
# end of every answer. A model whose fitting tokens score closer to zero would let a random
# row win outright and emit it in their place. Fine-tuning moves any of these starts where it
# needs to be; the mean is the one that cannot do harm before training has had its say,
# which is why the library uses it.
