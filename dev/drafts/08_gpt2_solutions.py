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
# # 08 · GPT-2: solutions to the exercises
#
# Worked answers to the exercises of [08_gpt2](../notebooks/08_gpt2.ipynb). Try them yourself
# first; each answer is code you can run plus a short explanation. None of them needs GPT-2's
# downloaded weights: exercises 1-3 work on shapes and small models, 4 and 5 train small course
# models. The stored outputs are from a run on the real WikiText-2, on a 2-core CPU.
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/wiki-gpt/wiki-gpt/blob/main/solutions/08_gpt2_solutions.ipynb)

# %%
import sys

if "google.colab" in sys.modules:  # on Colab, install the course library first
    get_ipython().run_line_magic(
        "pip", 'install -q "wikigpt-lib @ git+https://github.com/wiki-gpt/wiki-gpt"'
    )

# %%
import copy
import tempfile
import warnings

import matplotlib.pyplot as plt
import torch

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm: no Jupyter widgets

from wikigpt_lib.data import load_corpus, load_wikitext2, tokenize_split, wikitext2_source
from wikigpt_lib.device import quick
from wikigpt_lib.generate import generate
from wikigpt_lib.lora import add_lora, count_parameters, merge_lora
from wikigpt_lib.model import GPT, GPTConfig
from wikigpt_lib.tokenizer import get_tokenizer
from wikigpt_lib.train import TrainConfig, Trainer, evaluate_loss

plt.rcParams["figure.dpi"] = 80
SIZES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")

# %% [markdown]
# ## Exercise 1: LoRA arithmetic
#
# An adapter on a matrix (out × in) trains $r \cdot (\text{in} + \text{out})$ numbers. In a
# block of width $C$: `c_attn` is $C \to 3C$ ($4C$ per rank), `attn.c_proj` $C \to C$ ($2C$),
# `mlp.c_fc` $C \to 4C$ ($5C$), `mlp.c_proj` $4C \to C$ ($5C$). So all four projections train
# $16 C r$ per block, `c_attn` alone $4 C r$; times the number of blocks.

# %%
config = GPTConfig.preset("gpt2")
C, L = config.n_embd, config.n_layer
with torch.device("meta"):
    n_model = GPT(config).num_params()  # 124,439,808
print(
    f"{'rank':>4} {'all four':>12} {'formula':>12} {'c_attn only':>12} {'formula':>12} {'% of model':>10}"
)
for r in (1, 4, 16, 64):
    counts = []
    for targets in (("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"), ("attn.c_attn",)):
        with torch.device("meta"):  # shapes only
            model = add_lora(GPT(config), r=r, targets=targets)
        counts.append(count_parameters(model)[0])
    formulas = (L * 16 * C * r, L * 4 * C * r)
    assert tuple(counts) == formulas
    print(f"{r:>4} {counts[0]:>12,} {formulas[0]:>12,} {counts[1]:>12,} {formulas[1]:>12,} "
          f"{counts[0] / n_model:>10.2%}")  # fmt: skip
r_equal = config.vocab_size * C / (L * 16 * C)
print(f"\nall four projections match the token embeddings ({config.vocab_size * C:,} numbers) at "
      f"r = vocab / (16 x n_layer) = {r_equal:.0f}")  # fmt: skip


# %% [markdown]
# The count grows linearly in the rank; at rank 8 (the notebook's choice) LoRA trains 0.95% of
# GPT-2 small. Only at a rank around 262 would it train as many numbers as the token embedding
# table alone, far beyond the ranks used in practice: Hu et al. (2021) found very small ranks, down to 1,
# competitive for GPT-3 on their tasks.
#
# ## Exercise 2: how exact is the merge?


# %% tags=["nbval-ignore-output"]
def merge_error(dtype: torch.dtype) -> float:
    torch.manual_seed(0)
    model = add_lora(GPT(GPTConfig.preset("tiny")).to(dtype).eval(), r=4, alpha=8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(std=0.1)  # as if trained
        idx = torch.randint(0, 8192, (2, 32), generator=torch.Generator().manual_seed(1))
        unmerged, _ = model(idx)
        merged, _ = merge_lora(model)(idx)
    return (merged - unmerged).abs().max().item(), unmerged.abs().max().item()


for dtype in (torch.float32, torch.float64):
    err, scale = merge_error(dtype)
    print(f"{str(dtype):<14} max |merged - unmerged| = {err:.1e}  (logits up to {scale:.2f})")
assert merge_error(torch.float64)[0] < 1e-12

# %% [markdown]
# The merged and unmerged models compute the same function, $W x + s B (A x) = (W + s B A) x$,
# but in a different order of operations, and floating-point addition is not associative:
# each result is rounded differently, by about one unit in the last place (float32: relative
# $6 \cdot 10^{-8}$), and the errors of a few layers add up to a few times $10^{-7}$ here.
# In float64 the same reasoning gives less than $10^{-15}$. Either is far below anything that changes a
# prediction, and far below the noise of training itself (a different batch order moves the
# weights far more).
#
# ## Exercise 3: where the compute goes

# %%
print(f"{'model':<12} {'params':>8} {'output layer share of training FLOPs':>38}")
for name in SIZES:
    with torch.device("meta"):
        model = GPT(GPTConfig.preset(name))
    c = model.config
    total = model.estimate_flops_per_token(1024)
    head = 6 * c.n_embd * c.vocab_size  # forward + backward of the (C x V) output matmul
    print(f"{name:<12} {model.num_params() / 1e6:>7.0f}M {head / total:>38.1%}")

# %% [markdown]
# The output layer costs $6 C V$ FLOPs per token, the blocks about $72 L C^2$ (plus attention):
# the layer grows with the width only, the blocks with depth times width squared. For GPT-2
# small (12 layers of 768) the output layer is over a quarter of the compute; for GPT-2 XL (48
# layers of 1,600) about a twentieth. That is why the course model, smaller still, uses its own
# 8,192-token vocabulary (notebook 01): with 50,257 tokens the output layer would dominate it.
#
# ## Exercise 4: share a course model
#
# Train the `tiny` preset briefly, export it, and decode greedily with both libraries.

# %% tags=["nbval-ignore-output"]
try:
    import transformers
except ImportError:
    transformers = None

ds = load_wikitext2(fallback="sample")
tok = get_tokenizer()
train_ids = tokenize_split(ds["train"], tok)
val_ids = tokenize_split(ds["validation"], tok)
print("data:", wikitext2_source(ds))

torch.manual_seed(0)
tiny = GPT(GPTConfig.preset("tiny"))
cfg = TrainConfig(max_steps=quick(50, 10), batch_size=16, lr=3e-3, warmup_steps=5,
                  eval_interval=1000, progress=False)  # fmt: skip
Trainer(tiny, train_ids, None, cfg).fit()
tiny.eval()

folder = tiny.save_pretrained(tempfile.mkdtemp())
prompt = torch.tensor([tok.encode_ordinary(" The river")])  # (1, T)
ours = generate(tiny, prompt, max_new_tokens=20, temperature=0)
print("wikigpt_lib: ", repr(tok.decode(ours[0].tolist())))
if transformers is None:
    print("transformers is not installed (pip install transformers): comparison skipped")
else:
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20,
                         do_sample=False, pad_token_id=tok.eot_token)  # fmt: skip
    print("transformers:", repr(tok.decode(theirs[0].tolist())))
    print("the same tokens:", torch.equal(ours, theirs))
    assert torch.equal(ours, theirs)

# %% [markdown]
# Same tokens: the exported folder is a genuine `GPT2LMHeadModel`. Greedy decoding is the
# strictest test, since one flipped argmax would change everything after it; it holds
# because the two models' logits differ only by float rounding (around $10^{-6}$), far less
# than the gap between the best and second-best token. The folder also carries the course
# tokenizer's ranks file and names it in `config.json`, so `pretrained_tokenizer(folder)`
# finds it; a `transformers` user would load it with `tiktoken` (the model card says how).
#
# ## Exercise 5: full fine-tuning or LoRA, and which rank?
#
# The "pretrained" model: `tiny` trained on WikiText-2. The new domain: the built-in sample
# corpus, an invented encyclopedia. Every run starts from the same weights and sees the same
# batches.

# %% tags=["nbval-ignore-output"]
sample = load_corpus("sample")
new_train = tokenize_split(sample["train"], tok)
new_val = tokenize_split(sample["validation"], tok)

torch.manual_seed(0)
pretrained = GPT(GPTConfig.preset("tiny"))
pre_cfg = TrainConfig(max_steps=quick(400, 20), batch_size=32, lr=3e-3, warmup_steps=20,
                      eval_interval=10_000, progress=False)  # fmt: skip
Trainer(pretrained, train_ids, None, pre_cfg).fit()


def new_val_loss(model: GPT) -> float:
    return evaluate_loss(model, new_val, 32, 16, max_batches=quick(10, 2))


def finetune(model: GPT, lr: float) -> GPT:
    cfg = TrainConfig(max_steps=quick(150, 10), batch_size=16, lr=lr, min_lr=lr / 10,
                      warmup_steps=10, weight_decay=0.0, eval_interval=10_000, progress=False)  # fmt: skip
    Trainer(model, new_train, None, cfg).fit()
    return model.eval()


start = new_val_loss(pretrained)
runs = {"full": finetune(copy.deepcopy(pretrained), lr=1e-3)}
for r in (1, 4, 16):
    runs[f"LoRA r={r}"] = finetune(add_lora(copy.deepcopy(pretrained), r=r, alpha=2 * r), lr=1e-2)
print(f"validation loss on the sample corpus before fine-tuning: {start:.3f}\n")
print(f"{'run':<10} {'trainable':>10} {'share':>7} {'val loss':>9}")
results = {}
for name, model in runs.items():
    trainable, total = count_parameters(model)
    results[name] = new_val_loss(model)
    print(f"{name:<10} {trainable:>10,} {trainable / total:>7.1%} {results[name]:>9.3f}")
assert results["full"] < start

# %% [markdown]
# Every run lowers the loss on the new corpus from the same start, but by very different
# amounts. Full fine-tuning trains every weight, including the token embeddings, which hold most
# of this tiny model's parameters (262,144 of 287,904: 8,192 tokens × 32), and it reaches by far
# the lowest loss. The LoRA runs train 0.4% to 5.4% of the weights and close only a small part of
# the gap; a higher rank helps a little at a time (in the stored run, each fourfold increase of
# the rank lowered the loss by about 0.1 nats). The comparison is kind to full fine-tuning: the
# model is tiny (width 32, so rank 16 is half the width), its "pretraining" was a few hundred
# steps, so it knows little that transfers, and the new corpus has names it has never seen,
# which the frozen embeddings cannot learn. For large pretrained models LoRA at small ranks has
# been reported to come close to full fine-tuning (Hu et al., 2021), because the pretrained
# weights already contain most of what is needed. With the real GPT-2 on a GPU, the notebook's
# section 5 with `STEPS` in the hundreds and these ranks answers the question for GPT-2 itself.
