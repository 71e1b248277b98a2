"""Exports that transformers uses as they are (wikigpt_lib.export, hf_tokenizer, model_card):
the tokenizer (`AutoTokenizer` gives the course tokenizer's ids for every text), a chat
model's template (`apply_chat_template` gives `encode_chat`'s ids), greedy generation through
`transformers.pipeline` (the tokens of `generate(..., temperature=0)`), `wikigpt export` and
its model card, and every architecture the course trains (the same logits).

Offline: every model is built or trained here, and the `no_network` fixture turns any
connection attempt into a failure. GPT-2's tokenizer is tested only where its tiktoken files
are at hand (TIKTOKEN_CACHE_DIR); the tests never download them.
"""

import json
import os

import pytest
import tiktoken
import tiktoken.load
import tiktoken.registry
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from wikigpt_lib import tokenizer as tok_module
from wikigpt_lib.chat import save_chat_model
from wikigpt_lib.chat_template import (
    ChatDataError,
    encode_chat,
    get_chat_tokenizer,
    render_chat,
)
from wikigpt_lib.checkpoint import load_model, save_checkpoint
from wikigpt_lib.cli import main
from wikigpt_lib.config import GPTConfig, TrainConfig
from wikigpt_lib.export import export_checkpoint
from wikigpt_lib.generation import generate
from wikigpt_lib.hf_tokenizer import (
    bpe_vocab_and_merges,
    build_hf_tokenizer,
    bytes_to_unicode,
    check_hf_tokenizer,
)
from wikigpt_lib.lora import add_lora, lora_settings
from wikigpt_lib.model import GPT
from wikigpt_lib.pretrained import pretrained_tokenizer
from wikigpt_lib.tokenizer import EOT, TokenizerUnavailableError, get_tokenizer

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

# hypothesis runs one test body many times; the no_network fixture holds for all of them
PROPERTY = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


pytestmark = pytest.mark.usefixtures("no_network")  # conftest.py: every test runs offline


def _model(config: GPTConfig, seed: int = 0, scale: float = 0.0) -> GPT:
    """A random GPT in eval mode; scale > 0 adds noise to every weight (biases, gains)."""
    torch.manual_seed(seed)
    model = GPT(config).eval()
    if scale:
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(scale * torch.randn(p.shape, generator=gen))
    return model


def _ids(result) -> list[int]:
    """Token ids from apply_chat_template: a list (transformers 4) or a BatchEncoding (5)."""
    if isinstance(result, list):
        return result
    return list(result["input_ids"])


TINY = GPTConfig.preset("tiny")  # vocab 8192: the course tokenizer


@pytest.fixture(scope="module")
def course_folder(tmp_path_factory):
    return _model(TINY).save_pretrained(tmp_path_factory.mktemp("course"))


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory):
    return _model(TINY.replace(vocab_size=8196)).save_pretrained(tmp_path_factory.mktemp("chat"))


# ----------------------------------------------------------------------------- the tokenizer

# WikiText's markup and the texts where two regex engines or two BPEs could part ways.
MARKUP = [
    " @-@ ", " @,@ ", " @.@ ", "<unk>", " <unk>", "<unk>,", " = = Heading = = ", " = ", "\n",
    " \n", "\n\n", " \n \n", "\t", "\t\t ", "  ", "   ", "\r\n", "\x0b", "\x85", "\u00a0",
    "\u2003", "\u3000", "\u200b", "😀", "👍🏽", "👩\u200d💻", "e\u0301", "\u0300\u0316", "'s",
    "'S", "'ll", "'ve", " 1", "000", "٣", "²", "Ⅻ", " naïve", " 中文", "ß", "ﬁ", EOT,
    "<|end|>", "<|user|>", "<|endoftext", "|>",
]  # fmt: skip
TEXTS = st.one_of(
    st.text(alphabet=st.characters(exclude_categories=("Cs",))),  # every character of UTF-8
    st.lists(st.one_of(st.sampled_from(MARKUP), st.text(max_size=6)), max_size=24).map("".join),
)


def _same_ids(hf_tok, enc: tiktoken.Encoding, text: str) -> None:
    ids = hf_tok(text, add_special_tokens=False).input_ids
    plain = hf_tok(text, add_special_tokens=False, split_special_tokens=True).input_ids
    assert plain == enc.encode_ordinary(text)  # special tokens' strings read as text
    # By default (like every Hugging Face tokenizer) a special token's string is that token.
    assert ids == enc.encode(text, allowed_special="all")
    if not any(s in text for s in enc.special_tokens_set):
        assert ids == plain
    assert hf_tok.decode(ids) == enc.decode(ids) == text
    assert hf_tok.decode(plain) == text


@pytest.fixture(scope="module")
def course_tok(course_folder):
    return transformers.AutoTokenizer.from_pretrained(course_folder)


@pytest.fixture(scope="module")
def chat_tok(chat_folder):
    return transformers.AutoTokenizer.from_pretrained(chat_folder)


@PROPERTY
@given(text=TEXTS)
@example(text="")
@example(text=" = Robert Boulter = \n Robert Boulter is an English film , television and theatre"
         " actor . He had a guest @-@ starring role on the television series The Bill in 2000 ."
         " This was followed by a starring role in the play Herons written by Simon Stephens , "
         "which was performed in 2001 at the Royal Court Theatre . He had a guest role in the "
         "television series Judge John <unk> in 2002 . In 2004 Boulter landed a role as \" "
         "Craig \" in the episode \" Teddy 's Story \" of 1 @,@ 000 episodes \n")  # fmt: skip
@example(text="\u3000\u3000a \n\t\n  \x0c<unk><unk>😀 ")
def test_auto_tokenizer_gives_the_course_ids(course_tok, text):
    _same_ids(course_tok, get_tokenizer(), text)


@PROPERTY
@given(text=TEXTS)
def test_chat_tokenizer_gives_the_chat_ids(chat_tok, text):
    _same_ids(chat_tok, get_chat_tokenizer(), text)


def test_tokenizer_files_and_special_tokens(course_folder, course_tok):
    names = {p.name for p in course_folder.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= names
    assert "generation_config.json" in names and "wikitext2_bpe_8192.tiktoken" in names
    assert course_tok.eos_token == course_tok.bos_token == EOT
    assert course_tok.eos_token_id == course_tok.bos_token_id == 8191 == len(course_tok) - 1
    assert course_tok.all_special_tokens == [EOT]
    # <unk> is WikiText's rare-word marker, an ordinary BPE token: not special, not unknown
    unk = get_tokenizer().encode_ordinary(" <unk>")
    assert len(unk) == 1 and course_tok(" <unk>", add_special_tokens=False).input_ids == unk
    assert course_tok.unk_token is None and "<unk>" not in course_tok.all_special_tokens
    assert course_tok.decode(unk, skip_special_tokens=True) == " <unk>"
    # no clean-up of WikiText's spaces, no BOS added by default
    assert course_tok.decode(course_tok("a , b .").input_ids) == "a , b ."
    assert course_tok("The").input_ids == get_tokenizer().encode_ordinary("The")


def test_tokenizer_json_is_a_tokenizers_bpe(course_folder):
    spec = json.loads((course_folder / "tokenizer.json").read_text())
    assert spec["model"]["type"] == "BPE" and spec["model"]["ignore_merges"] is True
    assert spec["model"]["byte_fallback"] is False
    pre = spec["pre_tokenizer"]["pretokenizers"]
    assert pre[0]["type"] == "Split" and pre[0]["behavior"] == "Isolated"
    assert pre[0]["pattern"]["Regex"] == tok_module.SPLIT_PATTERN
    assert pre[1] == {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                      "use_regex": False}  # fmt: skip
    assert spec["decoder"]["type"] == "ByteLevel"
    assert [(t["id"], t["content"], t["special"]) for t in spec["added_tokens"]] == [
        (8191, EOT, True)
    ]


def test_vocab_and_merges_from_ranks():
    alphabet = bytes_to_unicode()
    assert len(set(alphabet.values())) == 256
    assert set(alphabet.values()) == set(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    ranks = {bytes([b]): b for b in range(256)}
    ranks.update({b"ab": 256, b"bc": 257, b"abc": 258, b" a": 259})
    vocab, merges = bpe_vocab_and_merges(ranks)
    assert vocab["abc"] == 258 and vocab["Ġa"] == 259  # the space is Ġ in GPT-2's alphabet
    # every split of a token into two tokens, at the token's rank: abc = ab+c = a+bc
    assert merges == [("a", "b"), ("b", "c"), ("a", "bc"), ("ab", "c"), ("Ġ", "a")]


def test_a_tokenizer_that_differs_from_tiktoken_is_refused():
    enc = get_tokenizer()
    other = tiktoken.Encoding(
        "other", pat_str=r"\w+|\s+|[^\w\s]+", mergeable_ranks=enc._mergeable_ranks,
        special_tokens={EOT: 8191},
    )  # fmt: skip
    hf = build_hf_tokenizer(other)  # another split rule converts and checks fine
    # ... but with the course's split rule in the Hugging Face tokenizer the two differ
    hf.pre_tokenizer = build_hf_tokenizer(enc, check=False).pre_tokenizer
    with pytest.raises(ValueError, match="encodes .* as .*, tiktoken as"):
        check_hf_tokenizer(hf, other)


def test_re_export_removes_tokenizer_files_that_no_longer_fit(tmp_path):
    folder = _model(TINY).save_pretrained(tmp_path)
    assert (folder / "tokenizer.json").is_file()
    _model(TINY).save_pretrained(tmp_path, tokenizer=None)
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"config.json", "model.safetensors", "README.md"}
    assert "Tokenizer\n\nnot recorded" in (tmp_path / "README.md").read_text()  # card rewritten
    (tmp_path / "README.md").write_text("my own card")
    _model(TINY).save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "my own card"  # kept


@pytest.fixture(scope="module")
def gpt2_enc():
    if not os.environ.get("TIKTOKEN_CACHE_DIR"):
        pytest.skip("TIKTOKEN_CACHE_DIR is not set: the tests never download GPT-2's files")
    try:
        return get_tokenizer("gpt2")
    except TokenizerUnavailableError as err:
        pytest.skip(f"GPT-2's tiktoken files are not at hand: {err}")


@pytest.fixture(scope="module")
def gpt2_tok(gpt2_enc, tmp_path_factory):
    config = GPTConfig(vocab_size=50257, block_size=32, n_layer=1, n_head=2, n_embd=16)
    folder = _model(config).save_pretrained(tmp_path_factory.mktemp("gpt2"))
    assert json.loads((folder / "config.json").read_text())["wikigpt_tokenizer"] == "gpt2"
    return transformers.AutoTokenizer.from_pretrained(folder)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(text=TEXTS)
@example(text="Hello world")
def test_gpt2_vocab_exports_gpt2s_tokenizer(gpt2_tok, gpt2_enc, text):
    assert gpt2_tok("Hello world").input_ids == [15496, 995]
    _same_ids(gpt2_tok, gpt2_enc, text)


@pytest.fixture
def no_gpt2_files(monkeypatch, tmp_path):
    """No GPT-2 tiktoken files anywhere: an empty cache, a forgotten registry, no download."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})

    def no_network(blobpath):
        raise ConnectionError(f"(test) no network for {blobpath}")

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)


def test_gpt2_vocab_without_gpt2_files_exports_the_model_and_warns(no_gpt2_files, tmp_path):
    config = GPTConfig(vocab_size=50257, block_size=32, n_layer=1, n_head=2, n_embd=16)
    model = _model(config, scale=0.05)
    with pytest.warns(UserWarning, match="no tokenizer.json: the gpt2 tokenizer could not"):
        folder = model.save_pretrained(tmp_path / "export")
    names = {p.name for p in folder.iterdir()}
    assert names == {"config.json", "model.safetensors", "generation_config.json", "README.md"}
    assert "no `tokenizer.json`" in (folder / "README.md").read_text()
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    idx = torch.randint(0, 50257, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx)[0], rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- chat

CONVERSATIONS = [
    [{"role": "user", "content": "Who wrote it ?"}],
    [
        {"role": "system", "content": "Answer briefly ."},
        {"role": "user", "content": "Who wrote Herons ?"},
        {"role": "assistant", "content": "Simon Stephens ."},
        {"role": "user", "content": "When was it performed ?"},
    ],
    [
        {"role": "user", "content": " leading and trailing spaces  "},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "1 @,@ 000 <unk> \n new line\ttab 😀 e\u0301"},
    ],
    [{"role": "system", "content": ""}, {"role": "user", "content": "Ünïcödé 中文 ?"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_apply_chat_template_gives_encode_chat_ids(chat_tok, messages, add_generation_prompt):
    enc = get_chat_tokenizer()
    want = encode_chat(messages, enc, add_generation_prompt=add_generation_prompt).ids
    got = chat_tok.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=True
    )
    assert _ids(got) == want
    text = chat_tok.apply_chat_template(
        messages, add_generation_prompt=add_generation_prompt, tokenize=False
    )
    assert text == render_chat(messages, add_generation_prompt)


def test_chat_export_has_role_tokens_stops_and_template(chat_folder, chat_tok):
    config = json.loads((chat_folder / "config.json").read_text())
    assert config["wikigpt_tokenizer"] == "wikitext2-chat"  # "auto" for vocab 8196
    assert chat_tok.all_special_tokens == [EOT, "<|system|>", "<|user|>", "<|assistant|>",
                                           "<|end|>"]  # fmt: skip
    assert chat_tok.convert_tokens_to_ids(["<|system|>", "<|end|>"]) == [8192, 8195]
    assert chat_tok.eos_token == EOT
    generation = json.loads((chat_folder / "generation_config.json").read_text())
    assert set(generation["eos_token_id"]) == {8191, 8192, 8193, 8194, 8195}  # as chat() stops
    assert "chat_template" in json.loads((chat_folder / "tokenizer_config.json").read_text())
    assert pretrained_tokenizer(chat_folder).n_vocab == 8196
    with pytest.raises(ChatDataError):
        encode_chat([CONVERSATIONS[0][0], {"role": "system", "content": "x"}], get_chat_tokenizer())
    with pytest.raises(Exception, match="a system message may only come first"):
        chat_tok.apply_chat_template([CONVERSATIONS[0][0], {"role": "system", "content": "x"}])
    with pytest.raises(Exception, match="role tool: use system, user or assistant"):
        chat_tok.apply_chat_template([{"role": "tool", "content": "x"}])


def test_save_pretrained_tokenizer_names(tmp_path):
    chat = _model(TINY.replace(vocab_size=8200))
    folder = chat.save_pretrained(tmp_path / "a", tokenizer="wikitext2-chat")
    assert json.loads((folder / "config.json").read_text())["wikigpt_tokenizer"] == "wikitext2-chat"
    folder = _model(TINY.replace(vocab_size=8200)).save_pretrained(tmp_path / "b")
    assert json.loads((folder / "config.json").read_text())["wikigpt_tokenizer"] is None  # auto
    assert not (folder / "tokenizer.json").exists()
    with pytest.raises(ValueError, match="the wikitext2-chat tokenizer has 8196 tokens, more"):
        _model(TINY).save_pretrained(tmp_path / "c", tokenizer="wikitext2-chat")
    with pytest.raises(ValueError, match="each also with '-chat'"):
        _model(TINY).save_pretrained(tmp_path / "d", tokenizer="wikitext2-instruct")


# ----------------------------------------------------------------------------- wikigpt export

QUICK_RUN = ["--preset", "cpu-quick", "--data", "sample", "--no-progress", "--eval-batches", "2"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A course model briefly trained on the sample corpus, with a validation loss."""
    run = tmp_path_factory.mktemp("runs") / "run"
    assert main(["train", "--out", str(run), *QUICK_RUN, "--max-steps", "12",
                 "--eval-interval", "6"]) == 0  # fmt: skip
    return run


@pytest.fixture(scope="module")
def exported_run(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "cpu-quick"
    assert main(["export", "--checkpoint", str(trained_run), "--out", str(out)]) == 0
    return out


def test_export_command_writes_a_model_transformers_loads(trained_run, exported_run):
    model = load_model(trained_run)
    hf = transformers.GPT2LMHeadModel.from_pretrained(exported_run).eval()
    idx = torch.randint(0, 8192, (2, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx)[0], rtol=0, atol=1e-5)
    config = json.loads((exported_run / "config.json").read_text())
    assert config["wikigpt_tokenizer"] == "wikitext2" and config["n_positions"] == 64


def test_model_card_states_what_the_checkpoint_records(trained_run, exported_run):
    card = (exported_run / "README.md").read_text()
    best = json.loads((trained_run / "best.json").read_text())
    ckpt_dir = trained_run / best["checkpoint"]
    state = json.loads((ckpt_dir / "state.json").read_text())
    train = json.loads((ckpt_dir / "config.json").read_text())["train"]
    loss = state["best_val_loss"]
    model = load_model(trained_run)
    assert f"validation loss {loss:.4f} nats/token" in card
    assert f"token perplexity {2.718281828459045**loss:.2f}" in card
    assert f"at step {state['step']}" in card and f"first {train['eval_batches']} batches" in card
    assert "built-in sample corpus" in card and "not real data" in card
    assert f"Muon (peak lr {train['muon_lr']})" in card and f"AdamW (peak lr {train['lr']})" in card
    assert f"then {train['schedule']} decay" in card and f"of {train['max_steps']} planned" in card
    assert f"{train['batch_size']} sequences of up to 64 tokens per step" in card
    assert f"| parameters | {model.num_params():,} " in card
    for row in ("| layers | 2 |", "| attention heads | 2 |", "| width (n_embd) | 128 |",
                "| context (block_size) | 64 tokens |", "| vocabulary | 8,192 |"):  # fmt: skip
        assert row in card
    assert "Not measured: the test split" in card


def test_export_command_errors(trained_run, exported_run, tmp_path, capsys):
    capsys.readouterr()
    # an earlier export is replaced only with --force
    assert main(["export", "--checkpoint", str(trained_run), "--out", str(exported_run)]) == 2
    assert "already holds an exported model: pass --force" in capsys.readouterr().err
    # never into a folder that holds something else (here: the run itself)
    assert main(["export", "--checkpoint", str(trained_run), "--out", str(trained_run)]) == 2
    assert "holds no exported model" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["export", "--checkpoint", str(trained_run), "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert (
        main(["export", "--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("wikigpt export: error: no checkpoint at") and "Traceback" not in err
    # a broken checkpoint: truncated weights
    broken = tmp_path / "broken"
    save_checkpoint(broken, model=_model(TINY), state={"step": 1})
    weights = next(broken.glob("checkpoints/*/model.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    assert main(["export", "--checkpoint", str(broken), "--out", str(tmp_path / "o2")]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_export_force_replaces_an_export(trained_run, tmp_path, capsys):
    out = tmp_path / "export"
    _model(TINY).save_pretrained(out)  # an earlier export, of another model
    (out / "notes.txt").write_text("mine")
    assert main(["export", "--checkpoint", str(trained_run), "--out", str(out), "--force"]) == 0
    assert "load it with transformers' AutoModelForCausalLM and AutoTokenizer" in (
        capsys.readouterr().out
    )
    assert json.loads((out / "config.json").read_text())["n_embd"] == 128
    assert (out / "notes.txt").read_text() == "mine"  # files that are not the export's stay


def test_export_without_validation_or_recipe_says_so(tmp_path):
    save_checkpoint(tmp_path / "run", model=_model(TINY), state={"step": 3})
    card = (export_checkpoint(tmp_path / "run", tmp_path / "out") / "README.md").read_text()
    assert "No validation loss was measured" in card
    assert "does not record how the model was trained" in card
    assert "## Training data\n\nnot recorded in the checkpoint." in card


def test_lora_checkpoint_exports_merged(tmp_path):
    model = add_lora(_model(TINY, scale=0.05), r=4, alpha=8)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    save_checkpoint(tmp_path / "run", model=model, state={"step": 5, "best_val_loss": 4.5},
                    train_config=TrainConfig(max_steps=5), data="wikitext-2")  # fmt: skip
    assert (
        main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "o")]) == 0
    )
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "o").eval()
    idx = torch.randint(0, 8192, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, model(idx)[0], rtol=0, atol=1e-5)
    card = (tmp_path / "o" / "README.md").read_text()
    assert "WikiText-2 (Merity et al., 2016" in card and "validation loss 4.5000" in card
    assert f"| parameters | {_model(TINY).num_params():,} " in card  # adapters merged away


def test_chat_checkpoint_exports_with_its_template(tmp_path):
    enc = get_chat_tokenizer()
    model = _model(TINY.replace(vocab_size=enc.n_vocab), scale=0.05)
    history = [{"step": 4, "split": "val", "loss": 3.25}]
    save_chat_model(tmp_path / "chat", model, enc, history=history, data="SFT from sample")
    assert (
        main(["export", "--checkpoint", str(tmp_path / "chat"), "--out", str(tmp_path / "o")]) == 0
    )
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "o")
    for messages in CONVERSATIONS:
        got = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        assert _ids(got) == encode_chat(messages, enc, add_generation_prompt=True).ids
    card = (tmp_path / "o" / "README.md").read_text()
    assert "per assistant token of held-out conversations" in card and "`SFT from sample`" in card
    assert "<|assistant|>" in card


# ----------------------------------------------------------------------------- generation

PROMPTS = [" The river", " = Valkyria Chronicles = \n", " In 1990 , the <unk> of"]


@pytest.fixture(scope="module")
def pipe(exported_run):
    return transformers.pipeline("text-generation", model=str(exported_run), device="cpu")


@pytest.mark.parametrize("prompt", PROMPTS)
def test_pipeline_greedy_gives_the_tokens_of_generate(trained_run, pipe, prompt):
    enc = get_tokenizer()
    model = load_model(trained_run)
    ids = enc.encode_ordinary(prompt)
    n = 64 - len(ids)  # up to the context: both models see the same positions
    ours = generate(model, torch.tensor([ids]), n, temperature=0)[0, len(ids) :].tolist()
    out = pipe(prompt, do_sample=False, max_new_tokens=n, return_tensors=True)
    hf = out[0]["generated_token_ids"]
    assert hf[: len(ids)] == ids  # the prompt, with nothing added
    if enc.eot_token in ours:  # transformers stops at the eos token, wikigpt generate does not
        ours = ours[: ours.index(enc.eot_token) + 1]
    assert hf[len(ids) :] == ours
    text = pipe(prompt, do_sample=False, max_new_tokens=n)[0]["generated_text"]
    assert text == enc.decode(ids + ours)


def test_pipeline_greedy_on_a_model_that_does_not_repeat_itself(tmp_path):
    """A briefly trained model soon repeats " the ." and a random one loops over a few
    tokens; large random weights make greedy decoding wander, a sharper test of parity."""
    enc = get_tokenizer()
    model = _model(GPTConfig.preset("tiny", block_size=128), seed=7, scale=1.0)
    pipe = transformers.pipeline(
        "text-generation", model=str(model.save_pretrained(tmp_path)), device="cpu"
    )
    seen = set()
    for prompt in PROMPTS:
        ids = enc.encode_ordinary(prompt)
        n = 128 - len(ids)
        ours = generate(model, torch.tensor([ids]), n, temperature=0)[0, len(ids) :].tolist()
        hf = pipe(prompt, do_sample=False, max_new_tokens=n, return_tensors=True)
        if enc.eot_token in ours:
            ours = ours[: ours.index(enc.eot_token) + 1]
        assert hf[0]["generated_token_ids"] == ids + ours
        seen.update(ours)
    assert len(seen) > 50  # many different tokens: not one loop compared three times


def test_pipeline_text_is_what_wikigpt_generate_prints(trained_run, pipe, capsys):
    n = 40
    capsys.readouterr()
    assert main(["generate", "--checkpoint", str(trained_run), "--prompt", "The river",
                 "--temperature", "0", "--raw", "--max-new-tokens", str(n)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    # wikigpt generate starts the prompt with a space (as WikiText's lines do) and hides it
    text = pipe(" The river", do_sample=False, max_new_tokens=n)[0]["generated_text"]
    assert EOT not in printed  # else transformers would have stopped early
    assert printed == text.removeprefix(" ") + "\n"


# ----------------------------------------------------------------------------- architectures

ARCHITECTURES = {
    "tiny": GPTConfig.preset("tiny"),
    "cpu": GPTConfig.preset("cpu"),
    "gpu (dropout 0.2, eval mode)": GPTConfig.preset("gpu"),
    "gpt2 shape, 1 layer": GPTConfig.preset("gpt2", n_layer=1, block_size=64),
    "bias, 1 head": GPTConfig(8192, 16, n_layer=1, n_head=1, n_embd=24, bias=True),
    "3 heads, width 48": GPTConfig(8192, 40, n_layer=3, n_head=3, n_embd=48, bias=False),
    "8 heads, bias, dropout": GPTConfig(
        8192, 24, n_layer=2, n_head=8, n_embd=64, bias=True, dropout=0.1
    ),  # fmt: skip
    "chat vocab 8196": GPTConfig.preset("tiny", vocab_size=8196),
    "chat vocab, bias": GPTConfig(8196, 48, n_layer=2, n_head=4, n_embd=32, bias=True),
    "lora": GPTConfig.preset("tiny"),
}


@pytest.mark.parametrize("name", list(ARCHITECTURES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_course_architecture_exports_with_the_same_logits(name, dtype, tmp_path):
    config = ARCHITECTURES[name]
    model = _model(config, scale=0.05).to(dtype)
    if name == "lora":  # adapters with non-zero B, as after training
        add_lora(model, r=4, alpha=8)
        gen = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for p_name, p in model.named_parameters():
                if p_name.endswith("lora_B"):
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    # (GPT-2's tokenizer is tested above, where its files are at hand: never downloaded here)
    tokenizer = None if config.vocab_size == 50257 else "auto"
    folder = model.save_pretrained(tmp_path / "export", tokenizer=tokenizer)
    assert name != "lora" or lora_settings(model)  # the model keeps its adapters
    sd = load_file(str(folder / "model.safetensors"))
    assert all(v.dtype == dtype for v in sd.values())
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder, **{_dtype_kw(): dtype}).eval()
    assert not model.training and config.dropout == hf.config.resid_pdrop
    idx = torch.randint(0, config.vocab_size, (2, config.block_size),
                        generator=torch.Generator().manual_seed(1))  # fmt: skip
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf(idx).logits
    assert theirs.dtype == dtype
    atol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(theirs, ours, rtol=0, atol=atol)


def _dtype_kw() -> str:
    """transformers 5 calls it `dtype`, 4 `torch_dtype`."""
    major = int(transformers.__version__.split(".")[0])
    return "dtype" if major >= 5 else "torch_dtype"
