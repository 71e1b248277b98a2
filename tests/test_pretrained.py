"""GPT-2 checkpoints both ways (wikigpt_lib.pretrained), offline: every model is built here.

The references are `transformers.GPT2LMHeadModel` itself (its own save_pretrained and
from_pretrained) and the safetensors files as written; no test reaches the network (the
`no_network` fixture turns any connection attempt into a failure).
"""

import inspect
import json
import time

import pytest
import torch
from helpers import make_tiny_model
from safetensors.torch import load_file, save_file

from wikigpt_lib import export, hub, pretrained
from wikigpt_lib.model import GPT, GPTConfig
from wikigpt_lib.pretrained import PretrainedUnavailableError, pretrained_tokenizer
from wikigpt_lib.tokenizer import get_tokenizer

transformers = pytest.importorskip("transformers")

VOCAB, CTX, N_EMBD = 300, 64, 64


@pytest.fixture(autouse=True)
def offline(no_network, monkeypatch):
    """Every test runs offline (conftest.py's no_network), and the hub says it is unreachable."""
    monkeypatch.setattr(hub, "_hub_reachable", lambda: False)


def _perturb(model: torch.nn.Module, seed: int = 1) -> None:
    """Non-zero biases and LayerNorm gains away from 1, so every tensor matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


def _hf_save(model, folder) -> None:
    kwargs = {}
    if "safe_serialization" in inspect.signature(model.save_pretrained).parameters:
        kwargs["safe_serialization"] = True  # transformers 4 (5 writes only safetensors)
    model.save_pretrained(folder, **kwargs)


@pytest.fixture(scope="module")
def hf_model():
    cfg = transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=N_EMBD, n_positions=CTX, vocab_size=VOCAB,
        activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    _perturb(model)
    return model


@pytest.fixture(scope="module")
def hf_folder(hf_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf-gpt2")
    _hf_save(hf_model, folder)
    return folder


def _ids(seed: int = 2) -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, 40), generator=torch.Generator().manual_seed(seed))


def _ours(bias: bool) -> GPT:
    """The tiny test GPT in the shape of hf_model (with or without biases), perturbed."""
    shape = {"vocab_size": VOCAB, "block_size": CTX, "n_head": 4, "n_embd": N_EMBD}
    model = make_tiny_model(3, **shape, bias=bias).eval()
    _perturb(model, seed=4)
    return model


# --- Hugging Face -> ours --------------------------------------------------------------------


def test_transformers_folder_loads_with_identical_logits(hf_model, hf_folder):
    model = GPT.from_pretrained(hf_folder)
    assert not model.training
    assert model.config == GPTConfig(VOCAB, CTX, 2, 4, N_EMBD, dropout=0.0, bias=True)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied, counted once
    assert model.num_params() == sum(p.numel() for p in hf_model.parameters())
    idx = _ids()
    with torch.no_grad():
        ref = hf_model(idx).logits
        logits, _ = model(idx)
    torch.testing.assert_close(logits, ref, rtol=0, atol=1e-5)
    # and the same weights exactly, Conv1D transposed
    hf_w = hf_model.transformer.h[1].mlp.c_fc.weight  # Conv1D (in, out)
    assert torch.equal(model.transformer.h[1].mlp.c_fc.weight, hf_w.t())


def test_dropout_and_device_options(hf_folder):
    assert GPT.from_pretrained(hf_folder, dropout=0.1).config.dropout == 0.1
    model = pretrained.load_pretrained(str(hf_folder), device="cpu")
    assert next(model.parameters()).device.type == "cpu"


def test_sharded_safetensors_folder(hf_model, hf_folder, tmp_path):
    """Big models split their weights over several files listed in an index."""
    sd = load_file(str(hf_folder / "model.safetensors"))
    keys = sorted(sd)
    halves = {"part-1.safetensors": keys[: len(keys) // 2], "part-2.safetensors": keys[len(keys) // 2 :]}  # fmt: skip
    for name, part in halves.items():
        save_file({k: sd[k] for k in part}, str(tmp_path / name), {"format": "pt"})
    weight_map = {k: name for name, part in halves.items() for k in part}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (tmp_path / "config.json").write_text((hf_folder / "config.json").read_text())
    idx = _ids()
    with torch.no_grad():
        torch.testing.assert_close(
            GPT.from_pretrained(tmp_path)(idx)[0], hf_model(idx).logits, rtol=0, atol=1e-5
        )


def test_hub_name_served_from_the_cache_offline(hf_model, hf_folder, tmp_path):
    """A hub id that was downloaded before loads from the huggingface_hub cache, offline."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--someone--tiny-gpt2"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((hf_folder / name).read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    start = time.perf_counter()
    model = GPT.from_pretrained("someone/tiny-gpt2", cache_dir=tmp_path)
    assert time.perf_counter() - start < 5
    idx = _ids()
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf_model(idx).logits, rtol=0, atol=1e-5)


# --- ours -> Hugging Face --------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_export_loads_in_transformers_with_identical_logits(bias, tmp_path):
    model = _ours(bias)
    folder = model.save_pretrained(tmp_path / "export")
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "README.md"}
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    idx = _ids(5)
    with torch.no_grad():
        ref = hf(idx, labels=idx)
        logits, loss = model(idx[:, :-1], idx[:, 1:])
        full, _ = model(idx)
    torch.testing.assert_close(full, ref.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(loss, ref.loss, rtol=0, atol=1e-5)


def test_export_files_in_gpt2_layout(tmp_path):
    model = _ours(bias=False)
    folder = model.save_pretrained(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["architectures"] == ["GPT2LMHeadModel"]
    assert (config["n_positions"], config["n_embd"], config["n_layer"], config["n_head"]) == (
        CTX, N_EMBD, 2, 4,
    )  # fmt: skip
    assert config["activation_function"] == "gelu_new"  # nn.GELU(approximate="tanh")
    assert config["layer_norm_epsilon"] == model.transformer.ln_f.eps
    assert config["wikigpt_config"]["bias"] is False
    sd = load_file(str(folder / "model.safetensors"))
    assert "lm_head.weight" not in sd  # tied: stored once, as the token embeddings
    w = model.transformer.h[0].attn.c_attn.weight  # Linear (3C, C)
    assert torch.equal(sd["transformer.h.0.attn.c_attn.weight"], w.t())  # Conv1D (C, 3C)
    assert not sd["transformer.h.0.attn.c_attn.bias"].any()  # bias=False: zero biases
    assert not sd["transformer.ln_f.bias"].any()


@pytest.mark.parametrize("bias", [True, False])
def test_round_trip_is_exact(bias, tmp_path):
    model = _ours(bias)
    back = GPT.from_pretrained(model.save_pretrained(tmp_path))
    assert back.config == model.config  # bias=False survives: the zero biases are dropped
    for (k, v), (k2, v2) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)


def test_biases_trained_elsewhere_are_kept(tmp_path):
    """If a bias-free export was fine-tuned elsewhere, its biases are no longer zero: load them."""
    folder = _ours(bias=False).save_pretrained(tmp_path)
    sd = load_file(str(folder / "model.safetensors"))
    sd["transformer.h.1.mlp.c_fc.bias"] = torch.full_like(sd["transformer.h.1.mlp.c_fc.bias"], 0.5)
    save_file(sd, str(folder / "model.safetensors"), {"format": "pt"})
    back = GPT.from_pretrained(folder)
    assert back.config.bias is True
    assert torch.equal(back.transformer.h[1].mlp.c_fc.bias, torch.full((4 * N_EMBD,), 0.5))


def test_course_tokenizer_travels_with_the_export(tmp_path, tiny_preset_model):
    folder = tiny_preset_model.save_pretrained(tmp_path)  # vocab 8192: the course tokenizer
    config = json.loads((folder / "config.json").read_text())
    assert config["wikigpt_tokenizer"] == "wikitext2" and config["eos_token_id"] == 8191
    tok = pretrained_tokenizer(folder)
    text = "The tower is 300 metres tall , and <unk> ."
    assert tok.encode_ordinary(text) == get_tokenizer().encode_ordinary(text)


def test_save_pretrained_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="tokenizer must be"):
        _ours(True).save_pretrained(tmp_path, tokenizer="bert")
    with pytest.raises(ValueError, match="more than this model's vocab_size 300"):
        _ours(True).save_pretrained(tmp_path, tokenizer="gpt2")
    with pytest.raises(TypeError, match="exports a wikigpt GPT"):
        export.save_pretrained(torch.nn.Linear(2, 2), tmp_path)
    with pytest.raises(ValueError, match="does not say which tokenizer"):
        pretrained_tokenizer(_ours(True).save_pretrained(tmp_path / "x", tokenizer=None))


# --- errors ----------------------------------------------------------------------------------


def test_missing_folder(tmp_path):
    with pytest.raises(PretrainedUnavailableError, match="neither a folder nor a model name"):
        GPT.from_pretrained(tmp_path / "no-such-folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PretrainedUnavailableError, match="has no config.json"):
        GPT.from_pretrained(tmp_path / "empty")


def test_pickle_only_folder_is_refused(hf_folder, tmp_path):
    (tmp_path / "config.json").write_text((hf_folder / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(PretrainedUnavailableError, match=r"pickle files \(pytorch_model.bin\)"):
        GPT.from_pretrained(tmp_path)
    with pytest.raises(PretrainedUnavailableError, match="convert it to safetensors"):
        GPT.from_pretrained(tmp_path)


def test_shape_mismatch_names_the_tensor(hf_folder, tmp_path):
    config = json.loads((hf_folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "vocab_size": VOCAB + 1}))
    (tmp_path / "model.safetensors").write_bytes((hf_folder / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"transformer.wte.weight: shape \(300, 64\).*\(301, 64\)"):
        GPT.from_pretrained(tmp_path)


def test_other_architectures_and_broken_files(hf_folder, tmp_path):
    config = json.loads((hf_folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    (tmp_path / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="'llama' model; only GPT-2"):
        GPT.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="truncated or not a safetensors file"):
        GPT.from_pretrained(tmp_path)


def test_unknown_name_offline_fails_fast_with_advice(tmp_path):
    start = time.perf_counter()
    with pytest.raises(PretrainedUnavailableError) as err:
        GPT.from_pretrained("gpt2", cache_dir=tmp_path)
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert isinstance(err.value, OSError)
    for part in ("gpt2 (openai-community/gpt2)", str(tmp_path), "HF_HOME"):
        assert part in message
    assert "GPT.from_pretrained('path/to/folder')" in message
    # What was tried depends on the mode: with HF_HUB_OFFLINE set the hub is skipped without
    # a probe; without it the probe (which this file's no_network fixture fails) finds no hub.
    if hub._offline_mode():
        assert "skipped, HF_HUB_OFFLINE is set" in message and "cannot be reached" not in message
    else:
        assert "cannot be reached" in message and "HF_HUB_OFFLINE" not in message
    assert "no config.json of openai-community/gpt2" in message  # the cache had nothing


def test_offline_mode_searches_only_the_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(hub, "_hub_reachable", lambda: pytest.fail("probed the hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedUnavailableError, match="HF_HUB_OFFLINE is set"):
        GPT.from_pretrained("someone/missing", cache_dir=tmp_path)


def test_connection_lost_during_download(monkeypatch, tmp_path):
    """Online: the hub answered the probe, then the download failed and the cache had nothing.
    With HF_HUB_OFFLINE set no download is tried at all: only the cache is searched."""
    from huggingface_hub.utils import LocalEntryNotFoundError

    calls = []

    def fail(repo_id, filename, **kwargs):
        calls.append(kwargs["local_files_only"])
        raise LocalEntryNotFoundError("connection error, and the file is not in the cache")

    monkeypatch.setattr(hub, "_hub_reachable", lambda: True)
    monkeypatch.setattr(hub, "_download", fail)
    with pytest.raises(PretrainedUnavailableError) as err:
        GPT.from_pretrained("gpt2-xl", cache_dir=tmp_path)
    message = str(err.value)
    if hub._offline_mode():
        assert calls == [True]  # the cache only, and it lacks config.json
        assert "HF_HUB_OFFLINE is set" in message
        assert f"the hub cache {tmp_path}: no config.json of openai-community/gpt2-xl" in message
    else:
        assert calls == [False]  # a download, which failed
        assert "LocalEntryNotFoundError" in message and "connection error" in message


def test_a_hub_repo_without_safetensors(monkeypatch, tmp_path, hf_folder):
    from huggingface_hub.utils import EntryNotFoundError

    def download(repo_id, filename, **kwargs):
        if filename == "config.json":
            return hf_folder / "config.json"
        raise EntryNotFoundError(f"404: {filename}")

    monkeypatch.setattr(hub, "_hub_reachable", lambda: True)
    monkeypatch.setattr(hub, "_download", download)
    with pytest.raises(PretrainedUnavailableError, match="no model.safetensors"):
        GPT.from_pretrained("someone/old-model", cache_dir=tmp_path)
