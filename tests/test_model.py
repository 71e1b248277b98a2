"""Tests of wikigpt_lib.model (GPTConfig, GPT) and wikigpt_lib.pretrained (GPT-2 conversion)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import make_preset_model
from torch.utils.flop_counter import FlopCounterMode

from wikigpt_lib.model import GPT, GPTConfig
from wikigpt_lib.pretrained import config_from_hf, gpt_from_hf_model, state_dict_from_hf

GPT2_SIZES = {  # published (n_layer, n_head, n_embd)
    "gpt2": (12, 12, 768),
    "gpt2-medium": (24, 16, 1024),
    "gpt2-large": (36, 20, 1280),
    "gpt2-xl": (48, 25, 1600),
}


def expected_params(c: GPTConfig) -> int:
    """Parameter count by formula: embeddings + blocks + final LayerNorm (head tied)."""
    d, b = c.n_embd, int(c.bias)
    norm = d + d * b  # gain (+ bias)
    attn = (3 * d * d + 3 * d * b) + (d * d + d * b)  # c_attn, c_proj
    mlp = (4 * d * d + 4 * d * b) + (4 * d * d + d * b)  # c_fc, c_proj
    per_block = norm + attn + norm + mlp
    final_norm = norm
    return c.vocab_size * d + c.block_size * d + c.n_layer * per_block + final_norm


def meta_model(config: GPTConfig) -> GPT:
    with torch.device("meta"):  # shapes only, no memory, instant
        return GPT(config)


# --- GPTConfig ----------------------------------------------------------------------------


def test_presets_and_round_trip():
    assert set(GPTConfig.presets()) >= {"tiny", "cpu", "gpu", *GPT2_SIZES}
    for name in GPTConfig.presets():
        c = GPTConfig.preset(name)
        assert GPTConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    for name, (n_layer, n_head, n_embd) in GPT2_SIZES.items():
        c = GPTConfig.preset(name)
        assert (c.n_layer, c.n_head, c.n_embd) == (n_layer, n_head, n_embd)
        assert (c.vocab_size, c.block_size, c.bias) == (50257, 1024, True)
    for name in ("tiny", "cpu", "gpu"):
        assert GPTConfig.preset(name).vocab_size == 8192
    assert GPTConfig() == GPTConfig.preset("cpu")  # the defaults are the course model
    assert GPTConfig.preset("gpt2", dropout=0.1).dropout == 0.1


def test_unknown_preset_and_fields():
    with pytest.raises(ValueError, match="unknown preset 'gpt3'.*tiny.*gpt2-xl"):
        GPTConfig.preset("gpt3")
    with pytest.raises(ValueError, match="unknown GPTConfig field.*n_heads"):
        GPTConfig.preset("tiny", n_heads=4)
    with pytest.raises(ValueError, match="unknown GPTConfig field"):
        GPTConfig.from_dict({"vocab_size": 10, "layers": 2})


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"n_embd": 100, "n_head": 3}, r"n_embd=100 is not divisible by n_head=3.*n_head="),
        ({"n_layer": 0}, "n_layer must be a positive integer"),
        ({"vocab_size": -5}, "vocab_size must be a positive integer"),
        ({"block_size": 2.5}, "block_size must be a positive integer"),
        ({"n_head": True}, "n_head must be a positive integer"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"dropout": -0.1}, r"dropout must be in \[0, 1\)"),
        ({"bias": 1}, "bias must be True or False"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig.preset("tiny", **kwargs)


# --- parameters, tying, init ---------------------------------------------------------------


def test_gpt2_parameter_count():
    assert meta_model(GPTConfig.preset("gpt2")).num_params() == 124_439_808


@pytest.mark.parametrize("name", ["tiny", "cpu", "gpu", *GPT2_SIZES])
def test_parameter_counts_match_formula(name):
    c = GPTConfig.preset(name)
    model = meta_model(c)
    assert model.num_params() == expected_params(c)
    emb = (c.vocab_size + c.block_size) * c.n_embd
    assert model.num_params(non_embedding=True) == expected_params(c) - emb
    parts = model.param_breakdown()
    assert parts["total"] == model.num_params()
    assert parts["token_embeddings"] == c.vocab_size * c.n_embd
    assert parts["position_embeddings"] == c.block_size * c.n_embd
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")


def test_bias_false_means_no_biases():
    model = meta_model(GPTConfig.preset("tiny", bias=False))
    assert not [n for n, _ in model.named_parameters() if n.endswith(".bias")]
    model = meta_model(GPTConfig.preset("tiny", bias=True))
    assert len([n for n, _ in model.named_parameters() if n.endswith(".bias")]) == 2 * 6 + 1


def test_weight_tying_shares_storage():
    model = make_preset_model()
    assert model.lm_head.weight is model.transformer.wte.weight
    sd = model.state_dict()
    assert sd["lm_head.weight"].data_ptr() == sd["transformer.wte.weight"].data_ptr()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.randint(0, 8192, (2, 16))
    model(idx, idx)[1].backward()
    opt.step()
    assert torch.equal(model.lm_head.weight, model.transformer.wte.weight)


def test_init_is_deterministic_under_a_seed():
    a, b, c = (make_preset_model(seed=s).state_dict() for s in (1, 1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(
        a["transformer.h.0.attn.c_attn.weight"], c["transformer.h.0.attn.c_attn.weight"]
    )


def test_init_statistics():
    torch.manual_seed(0)
    c = GPTConfig(vocab_size=1024, block_size=64, n_layer=8, n_head=4, n_embd=256, bias=True)
    model = GPT(c)
    proj_std = 0.02 / math.sqrt(2 * c.n_layer)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert abs(p.std().item() - proj_std) < 0.05 * proj_std, name
            assert abs(p.mean().item()) < 0.05 * proj_std, name
        elif name.endswith(("c_attn.weight", "c_fc.weight", "wte.weight", "wpe.weight")):
            assert abs(p.std().item() - 0.02) < 0.05 * 0.02, name
            assert abs(p.mean().item()) < 0.05 * 0.02, name
        elif name.endswith(".bias"):
            assert torch.count_nonzero(p) == 0, name
        elif name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            assert torch.all(p == 1), name
        else:
            raise AssertionError(f"unexpected parameter {name}")


# --- forward ---------------------------------------------------------------------------------


def test_forward_shapes_and_initial_loss():
    model = make_preset_model()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 8192, (4, 32), generator=g)
    targets = torch.randint(0, 8192, (4, 32), generator=g)
    logits, loss = model(idx)
    assert logits.shape == (4, 32, 8192) and loss is None
    logits, loss = model(idx, targets)
    assert abs(loss.item() - math.log(8192)) < 0.05  # near-uniform predictions at init
    manual = -F.log_softmax(logits, -1).gather(-1, targets[..., None]).mean()
    torch.testing.assert_close(loss, manual)


def test_ignore_index_masks_positions():
    model = make_preset_model()
    idx = torch.randint(0, 8192, (2, 12))
    targets = torch.randint(0, 8192, (2, 12))
    masked = targets.clone()
    masked[:, :5] = -100  # e.g. prompt tokens in instruction tuning
    logits, loss = model(idx, masked)
    logp = F.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    torch.testing.assert_close(loss, -logp[:, 5:].mean())


def test_causality():
    model = make_preset_model().double().eval()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 8192, (3, 32), generator=g)
    base, _ = model(idx)
    for t in (0, 7, 30):
        changed = idx.clone()
        changed[:, t + 1 :] = torch.randint(0, 8192, (3, 31 - t), generator=g)
        logits, _ = model(changed)
        torch.testing.assert_close(logits[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-12)
        assert not torch.allclose(logits[:, t + 1 :], base[:, t + 1 :])


def test_other_integer_dtypes_are_accepted():
    model = make_preset_model()
    idx = torch.randint(0, 8192, (2, 8))
    ref, _ = model(idx)
    torch.testing.assert_close(model(idx.int())[0], ref)
    torch.testing.assert_close(model(idx.to(torch.int16))[0], ref)


def test_bad_inputs_are_explained():
    model = make_preset_model()  # vocab 8192, block 32
    with pytest.raises(TypeError, match=r"dtype torch.float32.*idx.long\(\)"):
        model(torch.zeros(2, 4))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"2-D.*\(5,\).*unsqueeze"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="length 33 is longer than block_size 32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 8192\).*min -1 and max 3"):
        model(torch.tensor([[0, -1, 3]]))
    with pytest.raises(ValueError, match=r"\[0, 8192\).*min 0 and max 8192"):
        model(torch.tensor([[0, 8192]]))
    with pytest.raises(ValueError, match="empty"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=r"targets must have the same shape.*\(2, 4\).*\(2, 3\)"):
        model(torch.zeros(2, 4, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))


def test_dropout_only_in_training():
    model = make_preset_model(dropout=0.2)
    idx = torch.randint(0, 8192, (2, 16))
    a, b = model(idx)[0], model(idx)[0]
    assert not torch.allclose(a, b)
    model.eval()
    torch.testing.assert_close(model(idx)[0], model(idx)[0], rtol=0, atol=0)


def test_flops_estimate_against_flop_counter():
    """The matmul FLOPs of a real forward+backward, counted by PyTorch, equal the estimate.

    With the written-out attention (plain matmuls, so the counter sees them) the counter
    counts all T x T scores; the estimate counts the causal half, 6 * n_layer * T * d per token.
    """
    model = make_preset_model()
    c = model.config
    for block in model.transformer.h:
        block.attn.store_weights = True
    B, T = 2, 24
    idx = torch.randint(0, c.vocab_size, (B, T))
    with FlopCounterMode(display=False) as counter:
        model(idx, idx)[1].backward()
    full_attention = 12 * c.n_layer * T * c.n_embd
    per_token = model.estimate_flops_per_token(T)
    assert counter.get_total_flops() == B * T * (per_token - full_attention // 2 + full_attention)
    gpt2 = meta_model(GPTConfig.preset("gpt2"))
    # 6 * (84,934,656 block + 38,597,376 head matmul weights) + 6 * 12 * 1024 * 768
    assert gpt2.estimate_flops_per_token() == 797_815_296


def test_overfits_one_batch():
    model = make_preset_model(seed=0)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 8192, (4, 33), generator=g)
    x, y = idx[:, :-1], idx[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(150):
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, loss.item()


# --- conversion from Hugging Face GPT-2 (offline: configs built in code) ---------------------


@pytest.fixture(scope="module")
def hf_model():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=300,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # non-zero biases and LayerNorm gains so that they are exercised
        for name, p in model.named_parameters():
            if name.endswith(".bias") or ".ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def test_hf_logits_and_loss_match(hf_model):
    ours = gpt_from_hf_model(hf_model)
    assert not ours.training
    assert ours.config == GPTConfig(300, 64, 2, 4, 64, dropout=0.0, bias=True)
    idx = torch.randint(0, 300, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf_model(idx, labels=idx)  # HF shifts labels inside
        logits, loss = ours(idx[:, :-1], idx[:, 1:])
        full_logits, _ = ours(idx)
    torch.testing.assert_close(full_logits, ref.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(loss, ref.loss, rtol=0, atol=1e-5)
    assert ours.lm_head.weight is ours.transformer.wte.weight


def test_hf_state_dict_conversion(hf_model):
    hf_sd = hf_model.state_dict()
    sd = state_dict_from_hf(hf_sd)
    w = hf_sd["transformer.h.1.mlp.c_fc.weight"]  # Conv1D: (in, out)
    assert torch.equal(sd["transformer.h.1.mlp.c_fc.weight"], w.t())
    assert sd["lm_head.weight"] is sd["transformer.wte.weight"]
    # a GPT2Model state dict (no "transformer." prefix, no head) and old mask buffers work too
    bare = {k.removeprefix("transformer."): v for k, v in hf_sd.items() if k != "lm_head.weight"}
    bare["h.0.attn.bias"] = torch.ones(1, 1, 64, 64)
    assert sd.keys() == state_dict_from_hf(bare).keys()


def test_hf_conversion_errors(hf_model):
    hf_sd = dict(hf_model.state_dict())
    broken = {k: v for k, v in hf_sd.items() if "h.1.ln_2" not in k}
    with pytest.raises(ValueError, match=r"lacks 2 parameter.*h\.1\.ln_2"):
        state_dict_from_hf(broken)
    wrong = {**hf_sd, "transformer.h.0.attn.c_proj.weight": torch.zeros(64, 32)}
    with pytest.raises(ValueError, match=r"c_proj.weight: shape \(32, 64\)"):
        state_dict_from_hf(wrong)
    untied = {**hf_sd, "lm_head.weight": hf_sd["lm_head.weight"] + 1}
    with pytest.raises(ValueError, match="ties them"):
        state_dict_from_hf(untied)
    with pytest.raises(ValueError, match="no 'transformer.wte.weight'"):
        state_dict_from_hf({"foo": torch.zeros(1)})
    bad = {**hf_model.config.to_dict(), "activation_function": "relu", "n_inner": 100}
    with pytest.raises(ValueError, match="activation_function='relu'.*n_inner=100"):
        config_from_hf(bad)


def test_forward_with_a_cache_equals_the_whole_sequence(tiny_preset_model):
    from wikigpt_lib.attention import KVCache

    model = tiny_preset_model
    idx = torch.randint(0, 8192, (2, 32))
    full, _ = model(idx)
    cache = KVCache(model.config.n_layer, model.config.block_size)
    pieces = [model(idx[:, a:b], cache=cache)[0] for a, b in ((0, 7), (7, 8), (8, 20), (20, 32))]
    assert cache.length == 32
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="do not fit in the context"):
        model(idx[:, :1], cache=cache)
