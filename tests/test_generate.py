"""Tests of wikigpt_lib.generation (sampling, KV cache, streaming) and `wikigpt generate`."""

from __future__ import annotations

import importlib
import json
import math

import pytest
import torch
from helpers import make_preset_model
from hypothesis import given, settings
from hypothesis import strategies as st

from wikigpt_lib.checkpoint import save_checkpoint
from wikigpt_lib.cli import main
from wikigpt_lib.data import detokenize
from wikigpt_lib.generation import (
    KVCache,
    TextStreamer,
    forward_cached,
    generate,
    sample_probs,
    stream,
    top_k_filter,
    top_p_filter,
)
from wikigpt_lib.model import GPT
from wikigpt_lib.tokenizer import get_tokenizer

# The package exports the function `generate`, which hides the module of the same name from
# `import wikigpt_lib.generation as ...`; import_module returns the module itself.
gen = importlib.import_module("wikigpt_lib.generation")


def tiny(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> GPT:
    """The `tiny` preset model (see helpers.make_preset_model) in `dtype`, in eval mode."""
    return make_preset_model(seed, **overrides).to(dtype).eval()


def prompt(B: int = 2, T: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 8192, (B, T), generator=torch.Generator().manual_seed(seed))


# --- filters and probabilities -----------------------------------------------------------


def test_top_k_keeps_exactly_the_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0], [0.0, -1.0, 2.0, 7.0, 6.0]])
    out = top_k_filter(logits, 2)
    assert torch.isfinite(out).tolist() == [
        [False, True, False, True, False],
        [False, False, False, True, True],
    ]
    assert torch.equal(out[torch.isfinite(out)], torch.tensor([5.0, 4.0, 7.0, 6.0]))
    assert torch.equal(top_k_filter(logits, 5), logits)  # k >= V keeps everything
    assert torch.equal(top_k_filter(logits, 99), logits)
    ties = top_k_filter(torch.zeros(6), 3)  # equal logits: still exactly k
    assert int(torch.isfinite(ties).sum()) == 3


def test_top_k_probabilities_renormalise():
    logits = torch.tensor([1.0, 5.0, 3.0, 4.0, 2.0])
    probs = sample_probs(logits, temperature=1.0, top_k=2)
    expected = torch.softmax(torch.tensor([5.0, 4.0]), dim=0)
    assert torch.allclose(probs[[1, 3]], expected) and probs[[0, 2, 4]].eq(0).all()
    assert math.isclose(float(probs.sum()), 1.0, abs_tol=1e-6)


@pytest.mark.parametrize(
    "p,kept",
    [
        (1e-6, {0}),  # at least one token, the most likely
        (0.5, {0}),  # 0.5 alone reaches 0.5
        (0.6, {0, 1}),
        (0.75, {0, 1}),  # 0.5 + 0.25 reaches 0.75 exactly
        (0.76, {0, 1, 2}),
        (0.9375, {0, 1, 2, 3}),  # one of the two 1/16 tokens
        (0.99, {0, 1, 2, 3, 4}),
        (1.0, {0, 1, 2, 3, 4}),
    ],
)
def test_top_p_keeps_the_smallest_set_reaching_p(p, kept):
    mass = torch.tensor([0.5, 0.25, 0.125, 0.0625, 0.0625], dtype=torch.float64)  # exact sums
    order = torch.tensor([3, 0, 4, 1, 2])  # shuffle: token order[i] has mass[i]
    logits = torch.empty(5, dtype=torch.float64)
    logits[order] = mass.log()
    out = top_p_filter(logits, p)
    kept_tokens = set(torch.nonzero(torch.isfinite(out)).flatten().tolist())
    if p == 0.9375:  # either 1/16 token completes the mass
        assert len(kept_tokens) == 4 and {int(order[i]) for i in (0, 1, 2)} <= kept_tokens
    else:
        assert kept_tokens == {int(order[i]) for i in kept}
    probs = sample_probs(logits, top_p=p)
    kept_mass = mass[list(kept)].sum() if p != 0.9375 else torch.tensor(0.9375)
    for i in kept_tokens:  # renormalised: each kept token's share of the kept mass
        share = float(mass[(order == i).nonzero().item()] / kept_mass)
        assert math.isclose(float(probs[i]), share, rel_tol=1e-6)
    assert math.isclose(float(probs.sum()), 1.0, abs_tol=1e-6)


def test_top_p_works_row_by_row():
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # peaked row, flat row
    kept = torch.isfinite(top_p_filter(logits, 0.5))
    assert kept.tolist()[0] == [True, False, False] and int(kept[1].sum()) == 2


def test_temperature():
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0])
    for t in (0.5, 1.0, 2.0):
        assert torch.allclose(sample_probs(logits, t), torch.softmax(logits / t, dim=0))
    assert sample_probs(logits, 0).tolist() == [1.0, 0.0, 0.0, 0.0]  # greedy: one-hot
    # temperature first, then top-p: at t=0.25 the top token alone holds > 0.9 of the mass
    assert torch.isfinite(top_p_filter(logits / 0.25, 0.9)).sum() == 1
    assert sample_probs(logits, 0.25, top_p=0.9).tolist()[0] == 1.0


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"temperature": -0.1}, r"temperature must be a finite number >= 0"),
        ({"temperature": float("nan")}, r"temperature must be a finite number >= 0"),
        ({"top_k": 0}, r"top_k must be an integer >= 1"),
        ({"top_k": 2.5}, r"top_k must be an integer >= 1"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
        ({"top_p": -0.2}, r"top_p must be in \(0, 1\]"),
    ],
)
def test_bad_sampling_arguments(kwargs, message):
    model = tiny()
    with pytest.raises(ValueError, match=message):
        generate(model, prompt(), 3, **kwargs)
    with pytest.raises(ValueError, match=message):
        sample_probs(torch.zeros(4), **{"temperature": 1.0, **kwargs})


def test_bad_prompts():
    model = tiny()
    with pytest.raises(ValueError, match="the prompt is empty"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="must be 2-D"):
        generate(model, torch.zeros(4, dtype=torch.long), 3)
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 8192\)"):
        generate(model, torch.tensor([[8192]]), 3)
    with pytest.raises(TypeError, match="must be integers"):
        generate(model, torch.zeros(1, 3), 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, prompt(), -1)
    assert torch.equal(generate(model, prompt(), 0), prompt())


def test_long_prompt_keeps_its_end_with_a_warning():
    model = tiny(dtype=torch.float64)
    long = prompt(1, 50)  # block_size is 32
    with pytest.warns(UserWarning, match="only its last 32 tokens are used"):
        out = generate(model, long, 4, temperature=0)
    assert out.shape == (1, 54) and torch.equal(out[:, :50], long)  # the whole prompt kept
    assert torch.equal(out[:, 50:], generate(model, long[:, -32:], 4, temperature=0)[:, 32:])


# --- KV cache ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_cached_forward_equals_full_forward(dtype, tol):
    model = tiny(dtype=dtype)
    idx = prompt(2, 32)
    with torch.no_grad():
        full, _ = model(idx)  # (B, 32, V)
        cache = KVCache(model.config.n_layer, model.config.block_size)
        # a prompt, a chunk of several tokens, then one token at a time
        parts = [
            forward_cached(model, idx[:, :10], cache),
            forward_cached(model, idx[:, 10:20], cache),
        ]
        parts += [forward_cached(model, idx[:, t : t + 1], cache) for t in range(20, 32)]
    assert cache.length == 32
    assert (torch.cat(parts, dim=1) - full).abs().max() < tol
    with pytest.raises(ValueError, match="do not fit in the context"):
        forward_cached(model, idx[:, :1], cache)


def _record_logits(monkeypatch) -> list[torch.Tensor]:
    """Make generation greedy and keep the logits of every step."""
    seen: list[torch.Tensor] = []

    def pick(logits, temperature, top_k, top_p, generator):
        seen.append(logits.clone())
        return logits.argmax(-1)

    monkeypatch.setattr(gen, "_pick", pick)
    return seen


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_greedy_cached_equals_uncached_within_the_context(monkeypatch, dtype, tol):
    model = tiny(dtype=dtype)
    idx = prompt(2, 5)
    a = generate(model, idx, 27, temperature=0, use_cache=True)  # 5 + 27 = block_size
    b = generate(model, idx, 27, temperature=0, use_cache=False)
    assert a.shape == (2, 32) and torch.equal(a, b)
    seen = _record_logits(monkeypatch)
    generate(model, idx, 27, temperature=0, use_cache=True)
    cached, seen[:] = list(seen), []
    generate(model, idx, 27, temperature=0, use_cache=False)
    assert max(float((c - u).abs().max()) for c, u in zip(cached, seen, strict=True)) < tol


def _windows(prompt_len: int, new: int, block_size: int, cached: bool) -> list[int]:
    """The number of tokens each step's logits condition on, by the documented rule."""
    n, sizes = min(prompt_len, block_size), []
    for _ in range(new):
        sizes.append(n)
        if not cached:
            n = min(n + 1, block_size)  # sliding window
        else:
            n = n + 1 if n < block_size else max(1, block_size // 2)  # cache full: restart
    return sizes


@pytest.mark.parametrize("use_cache", [True, False])
def test_past_the_context_each_step_is_the_model_on_the_documented_window(monkeypatch, use_cache):
    model = tiny(dtype=torch.float64)
    idx = prompt(2, 20)
    seen = _record_logits(monkeypatch)
    out = generate(model, idx, 60, temperature=0, use_cache=use_cache)  # well past 32
    sizes = _windows(20, 60, 32, cached=use_cache)
    if use_cache:  # 20 -> 32, restart at 16, -> 32, restart at 16, ...
        assert sizes[12:14] == [32, 16] and sizes[29:31] == [32, 16]
    with torch.no_grad():
        for step, (logits, n) in enumerate(zip(seen, sizes, strict=True)):
            end = 20 + step  # the tokens before this step's token
            window = out[:, end - n : end]
            expected = model(window)[0][:, -1]  # positions 0 ... n-1
            assert (logits - expected).abs().max() < 1e-12, (step, n)


def test_past_the_context_the_cache_restart_equals_the_crop():
    # The step at which the cache restarts is the uncached model on the newest block_size//2
    # tokens; the next cached step then sees one token more.
    model = tiny(dtype=torch.float64)
    idx = prompt(1, 32)  # fills the cache at once: the first new step restarts it
    cache = KVCache(2, 32)
    with torch.no_grad():
        gen._next_logits(model, idx, cache)
        restart = gen._next_logits(model, idx, cache)
        assert cache.length == 16
        assert torch.allclose(restart, model(idx[:, -16:])[0][:, -1], atol=1e-12, rtol=0)


def test_dropout_and_training_mode():
    model = tiny(dropout=0.5)
    model.train()
    a = generate(model, prompt(), 10, temperature=0)
    b = generate(model, prompt(), 10, temperature=0, use_cache=False)
    assert torch.equal(a, b) and model.training  # eval mode while generating, then restored


# --- sampling, seeds, streaming, stop tokens ----------------------------------------------


def test_seed_reproducible_and_leaves_global_rng_alone():
    model = tiny()
    state = torch.get_rng_state()
    a = generate(model, prompt(), 20, temperature=1.0, top_k=50, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG was not used
    b = generate(model, prompt(), 20, temperature=1.0, top_k=50, seed=7)
    c = generate(model, prompt(), 20, temperature=1.0, top_k=50, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    cached = generate(model, prompt(), 20, temperature=0.9, top_p=0.9, seed=3)
    uncached = generate(model, prompt(), 20, temperature=0.9, top_p=0.9, seed=3, use_cache=False)
    assert torch.equal(cached, uncached)
    torch.manual_seed(0)  # seed=None: the global RNG
    d = generate(model, prompt(), 20)
    torch.manual_seed(0)
    assert torch.equal(d, generate(model, prompt(), 20))


def test_stream_yields_the_tokens_of_generate():
    model = tiny()
    full = generate(model, prompt(), 15, temperature=0.8, top_k=20, seed=1)
    steps = list(stream(model, prompt(), 15, temperature=0.8, top_k=20, seed=1))
    assert len(steps) == 15 and all(s.shape == (2,) for s in steps)
    assert torch.equal(torch.stack(steps, dim=1), full[:, 5:])
    with pytest.raises(ValueError, match="top_k"):  # arguments are checked at the call
        stream(model, prompt(), 15, top_k=0)
    model.train()
    steps = stream(model, prompt(), 15)
    assert next(steps).shape == (2,) and not model.training  # eval mode while it runs
    steps.close()
    assert model.training


def test_stop_tokens():
    model = tiny()
    idx = prompt(1, 4)
    free = generate(model, idx, 20, temperature=0)[0, 4:].tolist()
    stop = free[5]
    out = generate(model, idx, 20, temperature=0, stop_tokens=[stop])
    assert out[0, 4:].tolist() == free[: free.index(stop) + 1]  # stops after emitting it
    # Batch: a row that stops is padded with its stop token until every row has stopped.
    idx2 = prompt(2, 4, seed=5)
    free2 = generate(model, idx2, 20, temperature=0)[:, 4:].tolist()
    stops = {free2[0][2], free2[1][9]}
    hits = [min(i for i, t in enumerate(row) if t in stops) for row in free2]  # first stop
    out2 = generate(model, idx2, 20, temperature=0, stop_tokens=stops)[:, 4:].tolist()
    assert len(out2[0]) == max(hits) + 1
    for row, free_row, hit in zip(out2, free2, hits, strict=True):
        assert row[: hit + 1] == free_row[: hit + 1]
        assert set(row[hit:]) == {free_row[hit]}  # padded with its own stop token


# --- text ----------------------------------------------------------------------------------

ATOMS = [" a", " b", "c", " ", "\n", " ,", ",", " @-@ ", " @,@ ", "@", " (", "(", " )", ")",
         ' "', '"', " 's", " .", " n't", " é", "日本", " [", "{ ", "-", " 1"]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(ATOMS), max_size=40), st.lists(st.integers(1, 3), min_size=1))
def test_streamer_pieces_join_to_detokenized_text(atoms, chunk_sizes):
    enc = get_tokenizer()
    text = "".join(atoms)
    ids = enc.encode_ordinary(text)
    streamer, out, i, k = TextStreamer(enc), "", 0, 0
    while i < len(ids):
        n = chunk_sizes[k % len(chunk_sizes)]
        out += streamer.add(ids[i : i + n])
        i, k = i + n, k + 1
    assert out + streamer.flush() == detokenize(text)


def test_streamer_shows_text_as_it_comes_and_splits_no_character():
    enc = get_tokenizer()
    text = ' The river , well @-@ known in " old times " , is 1 @,@ 000 km long ( est . ) \n'
    streamer = TextStreamer(enc)
    pieces = [streamer.add([i]) for i in enc.encode_ordinary(text)] + [streamer.flush()]
    assert "".join(pieces) == detokenize(text)
    assert sum(bool(p) for p in pieces) > 8  # streamed, not held to the end
    ids = enc.encode_ordinary("日本")  # byte-level BPE: characters may span tokens
    raw = TextStreamer(enc, detokenize=False)
    parts = [raw.add([i]) for i in ids] + [raw.flush()]
    assert "".join(parts) == "日本" and "\ufffd" not in "".join(parts)


# --- command line --------------------------------------------------------------------------


@pytest.fixture
def run_dir(tmp_path):
    model = tiny()
    state = {"step": 1, "best_val_loss": None}
    save_checkpoint(tmp_path / "run", model=model, train_config={}, state=state, is_best=True)
    return tmp_path / "run"


def test_cli_generate_streams_the_greedy_continuation(run_dir, capsys):
    args = ["generate", "--checkpoint", str(run_dir), "--prompt", "The river", "--temperature", "0"]
    assert main([*args, "--max-new-tokens", "20"]) == 0
    out = capsys.readouterr().out
    enc = get_tokenizer()
    ids = enc.encode_ordinary(" The river")
    expected = generate(tiny(), torch.tensor([ids]), 20, temperature=0)[0].tolist()
    assert out == detokenize(enc.decode(expected))[1:] + "\n"
    assert main([*args, "--max-new-tokens", "20", "--no-cache"]) == 0
    assert capsys.readouterr().out == out


def test_cli_generate_sampling_is_reproducible(run_dir, capsys):
    args = ["generate", "--checkpoint", str(run_dir), "--prompt", " = Valkyria", "--seed", "3"]
    assert main([*args, "--top-k", "40", "--top-p", "0.9", "--max-new-tokens", "12"]) == 0
    first = capsys.readouterr()
    assert main([*args, "--top-k", "40", "--top-p", "0.9", "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out == first.out and "12 tokens in" in first.err


def test_cli_generate_errors(tmp_path, run_dir, capsys):
    code = main(["generate", "--checkpoint", str(tmp_path / "nope"), "--prompt", "x"])
    assert code == 2 and "no checkpoint at" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    code = main(["generate", "--checkpoint", str(foreign), "--prompt", "x"])
    assert code == 2 and "not a wikigpt checkpoint" in capsys.readouterr().err
    code = main(["generate", "--checkpoint", str(run_dir), "--prompt", "x", "--top-p", "2"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("wikigpt generate: error: top_p must be in (0, 1]")
    code = main(["generate", "--checkpoint", str(run_dir), "--prompt", ""])
    assert code == 2 and "--prompt is empty" in capsys.readouterr().err
