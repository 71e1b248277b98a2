"""LoRA adapters (wikigpt_lib.lora): a no-op at the start, only adapters train, exact merge."""

import pytest
import torch
from helpers import (
    TINY_BLOCK,
    counting_tokens,
    interrupt_at,
    make_tiny_config,
    make_tiny_model,
    make_train_config,
)
from torch import nn

from wikigpt_lib.checkpoint import load_checkpoint, load_model, save_checkpoint
from wikigpt_lib.lora import (
    LoRALinear,
    add_lora,
    count_parameters,
    lora_settings,
    lora_state_dict,
    merge_lora,
    merged_state_dict,
    restore_lora,
)
from wikigpt_lib.model import GPT
from wikigpt_lib.train import Trainer

TINY = make_tiny_config()
V, C, L = TINY.vocab_size, TINY.n_embd, TINY.n_layer  # 64 ids, width 32, 2 layers


def model(seed: int = 0, **changes) -> GPT:
    """A fresh tiny test GPT in eval mode (so that adapter dropout is off)."""
    return make_tiny_model(seed, **changes).eval()


def ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (2, TINY_BLOCK), generator=torch.Generator().manual_seed(seed))


def randomize_adapters(m: nn.Module, seed: int = 2) -> None:
    """Non-zero B, as after training, so the adapters change the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def test_lora_linear_computes_its_formula():
    torch.manual_seed(0)
    base = nn.Linear(6, 5).double()
    layer = LoRALinear(base, r=3, alpha=12.0)
    assert layer.weight is base.weight and layer.bias is base.bias  # the same tensors
    assert layer.lora_A.shape == (3, 6) and layer.lora_B.shape == (5, 3)
    assert not layer.weight.requires_grad and layer.lora_A.requires_grad
    randomize_adapters(layer)
    x = torch.randn(4, 7, 6, dtype=torch.float64)
    W, b, A, B = base.weight, base.bias, layer.lora_A, layer.lora_B
    expected = x @ W.T + b + (12.0 / 3) * (x @ A.T @ B.T)  # (4, 7, 5)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.delta_weight(), 4.0 * B @ A, rtol=0, atol=1e-14)


@pytest.mark.parametrize("bias", [True, False])
def test_fresh_adapters_change_nothing(bias):
    plain = model(bias=bias)
    with torch.no_grad():
        before, _ = plain(ids())
    lora = add_lora(plain, r=4, alpha=8)
    assert lora is plain  # changed in place
    with torch.no_grad():
        after, _ = lora(ids())
    assert torch.equal(before, after)  # B = 0: exactly the same numbers


def test_only_adapters_are_trainable_and_counted():
    m = add_lora(model(), r=4)
    trainable, total = count_parameters(m)
    # per block: c_attn C->3C, attn.c_proj C->C, c_fc C->4C, mlp.c_proj 4C->C; r (in + out) each
    per_block = 4 * ((C + 3 * C) + (C + C) + (C + 4 * C) + (4 * C + C))
    assert trainable == L * per_block == 2 * 4 * 16 * C
    assert total == model().num_params() + trainable
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    assert names and all(n.endswith(("lora_A", "lora_B")) for n in names)
    assert len(names) == 2 * 4 * L
    assert sum(v.numel() for v in lora_state_dict(m).values()) == trainable


def test_targets_choose_the_layers():
    m = add_lora(model(), r=2, targets=("attn.c_attn",))
    adapted = [n for n, mod in m.named_modules() if isinstance(mod, LoRALinear)]
    assert adapted == [f"transformer.h.{i}.attn.c_attn" for i in range(L)]
    assert count_parameters(m)[0] == L * 2 * (C + 3 * C)
    single = add_lora(model(), r=2, targets="c_fc")  # one name, not its characters
    assert sum(isinstance(mod, LoRALinear) for mod in single.modules()) == L


def test_trainer_updates_only_the_adapters(tiny_model):
    """The library's Trainer optimizes the trainable parameters only."""
    m = add_lora(tiny_model, r=4, alpha=8)
    frozen = {k: v.clone() for k, v in m.state_dict().items() if "lora_" not in k}
    A0 = m.transformer.h[0].attn.c_attn.lora_A.detach().clone()
    data = counting_tokens(4000)  # a pattern to learn
    cfg = make_train_config(max_steps=5, min_lr=1e-4, seed=1337)  # the run it was written for
    trainer = Trainer(m, data, None, cfg)
    optimized = sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"])
    assert optimized == count_parameters(m)[0]
    losses = [trainer.train_step() for _ in range(cfg.max_steps)]
    assert losses[-1] < losses[0]
    for k, v in m.state_dict().items():
        if "lora_" not in k:
            assert torch.equal(v, frozen[k]), f"{k} changed"
    assert m.transformer.h[0].attn.c_attn.lora_B.abs().sum() > 0
    assert not torch.equal(m.transformer.h[0].attn.c_attn.lora_A, A0)


def test_merge_is_exact_in_float64(tiny_model):
    m = add_lora(tiny_model.double(), r=4, alpha=8)
    randomize_adapters(m)
    with torch.no_grad():
        before, _ = m(ids())
        merge_lora(m)
        after, _ = m(ids())
    torch.testing.assert_close(after, before, rtol=0, atol=1e-12)


def test_merge_gives_a_plain_model():
    m = add_lora(model(), r=4, alpha=8, dropout=0.1)
    randomize_adapters(m)
    with torch.no_grad():
        before, _ = m(ids())  # eval mode: adapter dropout off
    assert merge_lora(m) is m
    with torch.no_grad():
        after, _ = m(ids())
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    assert not any(isinstance(mod, LoRALinear) for mod in m.modules())
    assert type(m.transformer.h[0].mlp.c_fc) is nn.Linear
    assert m.state_dict().keys() == model().state_dict().keys()
    assert all(p.requires_grad for p in m.parameters())
    assert m.lm_head.weight is m.transformer.wte.weight  # the tie survives
    assert count_parameters(m) == (m.num_params(), m.num_params())


def test_merged_model_saves_as_checkpoint_and_export(tmp_path, tiny_model):
    m = add_lora(tiny_model, r=4)
    randomize_adapters(m)
    # exporting a LoRA model writes the merged weights and leaves the adapters in place
    early = GPT.from_pretrained(m.save_pretrained(tmp_path / "early"))
    assert lora_settings(m) is not None
    with torch.no_grad():
        torch.testing.assert_close(early(ids())[0], m(ids())[0], rtol=0, atol=1e-6)
    assert merged_state_dict(m).keys() == model().state_dict().keys()
    merge_lora(m)
    with torch.no_grad():
        ref, _ = m(ids())
    save_checkpoint(tmp_path / "run", model=m, state={"step": 1})
    exported = GPT.from_pretrained(m.save_pretrained(tmp_path / "export"))
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "run")(ids())[0], ref)
        torch.testing.assert_close(exported(ids())[0], ref, rtol=0, atol=0)


def test_an_unmerged_lora_run_loads_and_resumes_exactly(tmp_path):
    """Checkpoints of a model with adapters record them: load_model rebuilds the adapters, and
    a run stopped by Ctrl-C resumes to the same weights as one never stopped."""
    data = counting_tokens(4000)
    cfg = make_train_config(max_steps=6, eval_interval=3, eval_batches=1)
    straight = add_lora(model(dropout=0.1), r=4, alpha=8, dropout=0.1)
    Trainer(straight, data, data, cfg, run_dir=tmp_path / "a").fit()

    stopped = add_lora(model(dropout=0.1), r=4, alpha=8, dropout=0.1)
    run = tmp_path / "b"
    assert (
        Trainer(stopped, data, data, cfg, run_dir=run, callbacks=[interrupt_at(4)]).fit().steps == 4
    )
    ckpt = load_checkpoint(run, "latest")
    assert ckpt.lora["transformer.h.1.mlp.c_fc"] == {"r": 4, "alpha": 8, "dropout": 0.1}
    resumed = Trainer.resume(run, data, data)
    assert resumed.fit().steps == 6
    a, b = straight.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert count_parameters(resumed.model) == count_parameters(straight)  # base still frozen

    loaded = load_model(tmp_path / "a", "latest")
    assert isinstance(loaded.transformer.h[0].attn.c_attn, LoRALinear) and not loaded.training
    with torch.no_grad():
        ref, _ = straight.eval()(ids())
        torch.testing.assert_close(loaded(ids())[0], ref, rtol=0, atol=0)
        torch.testing.assert_close(merge_lora(loaded)(ids())[0], ref, rtol=0, atol=1e-5)


def test_lora_settings_round_trip_and_mismatch():
    m = add_lora(model(), r=2, alpha=4, targets=("attn.c_attn",))
    settings = lora_settings(m)
    assert settings == {f"transformer.h.{i}.attn.c_attn": {"r": 2, "alpha": 4, "dropout": 0.0}
                        for i in range(L)}  # fmt: skip
    assert lora_settings(model()) is None
    restored = restore_lora(model(), settings)
    assert lora_settings(restored) == settings and count_parameters(restored) == count_parameters(m)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        restore_lora(m, settings)
    with pytest.raises(ValueError, match="another architecture"):
        restore_lora(model(n_layer=1), settings)


def test_bad_arguments_are_explained():
    with pytest.raises(ValueError, match=r"'attn.c_q' matches no layer.*attn.c_attn"):
        add_lora(model(), targets=("attn.c_q",))
    with pytest.raises(ValueError, match="not nn.Linear: transformer.h.0.attn"):
        add_lora(model(), targets=("attn",))
    with pytest.raises(ValueError, match="targets is empty"):
        add_lora(model(), targets=())
    for kwargs, message in [({"r": 0}, "rank r"), ({"alpha": 0}, "alpha"), ({"dropout": 1.0}, "dropout")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            add_lora(model(), **kwargs)
    m = add_lora(model())
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        add_lora(m)
    with pytest.raises(ValueError, match="no LoRA adapters to merge"):
        merge_lora(model())
