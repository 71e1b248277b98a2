"""The web demo: its handlers (bad input gives messages), `wikigpt demo` (errors before the server
starts, the address it listens on), the app answering through gradio_client, `show()` for
notebooks, and a headless Chromium that loads the page and generates.

Gradio, gradio_client and selenium come with the [test] extra; Chromium and its driver from
Debian's packages (.ci/run installs them). Each test that needs one of them skips without it.
"""

import shutil
import socket
import sys
import time

import pytest
import torch

from wikigpt_lib.chat import chat, save_chat_model
from wikigpt_lib.chat_template import get_chat_tokenizer
from wikigpt_lib.checkpoint import save_checkpoint
from wikigpt_lib.cli import main
from wikigpt_lib.demo_views import (
    EMPTY_MESSAGE,
    chat_reply,
    generate_text,
    history_messages,
)
from wikigpt_lib.generation import generate
from wikigpt_lib.model import GPT, GPTConfig
from wikigpt_lib.text import detokenize, to_wikitext
from wikigpt_lib.tokenizer import get_tokenizer

TOK = get_chat_tokenizer()
PLAIN_TOK = get_tokenizer()
BLOCK = 64
# The chat view's settings in the tests: tokens, temperature, top-k, top-p, seed, WikiText spacing.
CHAT_SETTINGS = (12, 1.0, 50, 1.0, "0", True)  # the page sends its seed as text
TIMEOUT = 30  # seconds for anything that waits on a server


def tiny_model(tok=TOK, seed=2):  # seed 2: its greedy replies are words, not an <|end|> at once
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=tok.n_vocab, block_size=BLOCK, n_layer=2, n_head=2, n_embd=64)
    return GPT(cfg).eval()


def last(items):
    *_, item = items
    return item


@pytest.fixture(scope="module")
def chat_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("demo") / "chat"
    save_chat_model(run, tiny_model(), TOK, history=[{"step": 1, "split": "val", "loss": 1.0}])
    return run


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("demo") / "plain"
    save_checkpoint(run, model=tiny_model(PLAIN_TOK), state={"step": 1}, is_best=True)
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- the handlers


def test_generation_streams_the_text_with_wikitext_spacing_undone():
    model = tiny_model(PLAIN_TOK)
    prompt = "It's well-known, 1,000 km."
    outputs = list(generate_text(model, PLAIN_TOK, prompt, 8, 0.0, 0, 1.0, None, True))
    texts = [text for text, _ in outputs]
    assert len(texts) == 8 + 2  # the prompt, each new token, the end
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False))
    ids = PLAIN_TOK.encode_ordinary(" " + to_wikitext(prompt))
    out = generate(model, torch.tensor([ids]), 8, temperature=0.0)
    assert texts[-1] == detokenize(PLAIN_TOK.decode(out[0].tolist())).removeprefix(" ")
    assert texts[-1].startswith(prompt)
    assert "8 new tokens in" in outputs[-1][1]
    raw = last(generate_text(model, PLAIN_TOK, prompt, 3, 0.0, wikitext=False))[0]
    assert raw.startswith(prompt)  # sent and shown as typed


def test_empty_prompt_and_bad_settings_are_messages():
    model = tiny_model(PLAIN_TOK)
    for prompt in ("", "   \n", None):
        assert list(generate_text(model, PLAIN_TOK, prompt)) == [
            ("", "**Error:** The prompt is empty: type the start of a text for the model to "
             "continue.")
        ]  # fmt: skip
    bad = [
        ({"max_new_tokens": 0}, "The number of tokens must be a whole number from 1 to 1000"),
        ({"max_new_tokens": 2.5}, "The number of tokens must be a whole number"),
        ({"max_new_tokens": 10**6}, "from 1 to 1000, got 1000000"),
        ({"temperature": -1}, "Temperature must be a number >= 0"),
        ({"temperature": float("nan")}, "Temperature must be a number >= 0"),
        ({"top_k": -3}, "Top-k must be a whole number"),
        ({"top_p": 0}, "Top-p must be in (0, 1]"),
        ({"seed": -1}, "The seed must be a whole number"),
        ({"seed": "1.5"}, "The seed must be a whole number from 0 to"),
        ({"seed": "lucky"}, "got 'lucky'"),
        ({"max_new_tokens": "lots"}, "The number of tokens must be"),
    ]
    for settings, message in bad:
        outputs = list(generate_text(model, PLAIN_TOK, "The river", **settings))
        assert len(outputs) == 1 and outputs[0][0] == "", settings
        assert outputs[0][1].startswith("**Error:** ") and message in outputs[0][1], settings


def test_a_prompt_longer_than_the_context_keeps_its_end_with_a_note():
    model = tiny_model(PLAIN_TOK)
    prompt = " ".join(f"word{i}" for i in range(100)) + " THE END"
    n = len(PLAIN_TOK.encode_ordinary(" " + prompt))
    text, note = last(generate_text(model, PLAIN_TOK, prompt, 2, 0.0))
    assert f"Your prompt is {n} tokens long" in note and f"context of {BLOCK} tokens" in note
    assert f"only its last {BLOCK} tokens were used" in note
    assert text.startswith("…") and "word0 " not in text and "THE END" in text


def test_chat_reply_streams_what_chat_answers():
    model = tiny_model()
    n, temperature, top_k, top_p, seed, wikitext = CHAT_SETTINGS
    outputs = list(chat_reply(model, TOK, "Hi, there", [], "", *CHAT_SETTINGS))
    reply, note = outputs[-1]
    expected = chat(
        model, [{"role": "user", "content": "Hi , there"}], TOK, detokenize=True,
        max_new_tokens=n, temperature=temperature, top_k=top_k, top_p=top_p, seed=int(seed),
    )  # fmt: skip
    assert reply == expected and reply.strip() and note == ""
    assert len(outputs) > 2  # streamed


def test_chat_bad_input_and_a_model_that_cannot_chat_are_messages():
    model = tiny_model()
    for message in ("", "  ", None, {"text": "", "files": []}):
        reply, note = last(chat_reply(model, TOK, message))
        assert reply == "" and note == f"**Error:** {EMPTY_MESSAGE}"
    reply, note = last(chat_reply(model, TOK, "Hi", max_new_tokens=999))
    assert "from 1 to 256" in note
    reply, note = last(chat_reply(tiny_model(PLAIN_TOK), PLAIN_TOK, "Hi"))
    assert reply == "" and "This checkpoint is not a chat model" in note
    assert "wikitext2_bpe_8192" in note and "notebook 09" in note


def test_chat_keeps_the_conversation_within_the_context_and_says_so():
    model = tiny_model()
    history = []
    for i in range(12):
        history += [
            {"role": "user", "content": f"Question number {i} ?"},
            {"role": "assistant", "content": [{"type": "text", "text": f"Answer {i} ."}]},
        ]
    reply, note = last(chat_reply(model, TOK, "And now?", history, "Be brief.", *CHAT_SETTINGS))
    assert note.startswith("The conversation no longer fits (this model's context is 64 tokens, "
                           "12 of them kept for the reply): its oldest ")  # fmt: skip
    long = " ".join(["word"] * 200)
    reply, note = last(chat_reply(model, TOK, long, [], "", *CHAT_SETTINGS))
    assert note.startswith("Your message is 200 tokens long and this model's context is 64 tokens")
    assert "only the end of your message was used" in note


def test_history_messages_reads_gradio_histories():
    history = [
        {"role": "user", "content": "It's well-known"},
        {"role": "assistant", "content": [{"type": "text", "text": "Yes, 1,000"}]},
        {"role": "user", "content": ""},  # a turn that only got an error note
        {"role": "assistant", "content": ""},
        {"role": "user", "content": [{"type": "file", "file": {"path": "x.png"}}]},
        {"role": "system", "content": "not from the chat"},
    ]
    assert history_messages(history, to_wikitext) == [
        {"role": "user", "content": "It 's well @-@ known"},
        {"role": "assistant", "content": "Yes , 1 @,@ 000"},
    ]
    assert history_messages(None) == []


# ----------------------------------------------------------------------------- wikigpt demo


def test_cli_demo_refuses_a_missing_or_broken_checkpoint_before_serving(tmp_path, capsys):
    assert main(["demo", "--checkpoint", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wikigpt demo: error: no checkpoint at") and "Traceback" not in err
    run = tmp_path / "broken"
    folder = save_checkpoint(run, model=tiny_model(PLAIN_TOK), state={"step": 1}, is_best=True)
    (folder / "model.safetensors").write_bytes(b"not weights")
    assert main(["demo", "--checkpoint", str(run)]) == 2
    assert "is truncated or corrupt" in capsys.readouterr().err


def test_cli_demo_without_gradio_says_how_to_install_it(plain_run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # `import gradio` raises ImportError
    assert main(["demo", "--checkpoint", str(plain_run), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wikigpt demo: error: the web demo needs Gradio")
    assert "pip install 'wikigpt-lib[demo]'" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def gradio():
    return pytest.importorskip(
        "gradio", reason="gradio is not installed (pip install -e '.[demo]')"
    )


def test_cli_demo_listens_on_loopback_unless_told(gradio, chat_run, monkeypatch, capsys):
    calls = []

    def fake_launch(app, **kwargs):
        calls.append(kwargs)
        return None, "http://127.0.0.1:7860/", None

    def fake_block_thread(app):
        calls.append("served")

    monkeypatch.setattr(gradio.Blocks, "launch", fake_launch)
    monkeypatch.setattr(gradio.Blocks, "block_thread", fake_block_thread)
    assert main(["demo", "--checkpoint", str(chat_run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "the demo is at http://127.0.0.1:7860/ (Ctrl-C stops it)" in out
    args = ["--host", "0.0.0.0", "--port", "8123", "--share"]
    assert main(["demo", "--checkpoint", str(chat_run), "--device", "cpu", *args]) == 0
    first, served, second, _ = calls
    assert {k: first[k] for k in ("server_name", "server_port", "share")} == {
        "server_name": "127.0.0.1", "server_port": None, "share": False,
    }  # fmt: skip
    assert {k: second[k] for k in ("server_name", "server_port", "share")} == {
        "server_name": "0.0.0.0", "server_port": 8123, "share": True,
    }  # fmt: skip
    assert served == "served" and calls[-1] == "served"  # the command serves until Ctrl-C


@pytest.mark.slow
def test_cli_demo_serves_on_loopback_until_ctrl_c(gradio, chat_run, tmp_path):
    import queue
    import signal
    import subprocess
    import threading
    import urllib.request

    port = free_port()
    command = [sys.executable, "-m", "wikigpt_lib", "demo", "--checkpoint", str(chat_run),
               "--port", str(port), "--device", "cpu"]  # fmt: skip
    log = (tmp_path / "stderr").open("w+")  # a file, not a pipe: a full pipe would block it
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    try:
        line = ""
        while "the demo is at" not in line:
            line = lines.get(timeout=60)  # queue.Empty: the server did not start in time
        assert f"the demo is at http://127.0.0.1:{port}/ (Ctrl-C stops it)" in line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=TIMEOUT) as page:
            assert page.status == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=TIMEOUT) == 0
        log.seek(0)
        assert "Traceback" not in log.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=TIMEOUT)
        log.close()


def test_cli_demo_port_in_use_is_a_message(gradio, plain_run, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["demo", "--checkpoint", str(plain_run), "--port", str(port), "--device", "cpu"]
        assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"wikigpt demo: error: could not start the web server on 127.0.0.1, "
                          f"port {port}: the port is in use")  # fmt: skip


def test_a_model_that_cannot_chat_gets_a_note_instead_of_the_chat(gradio):
    from wikigpt_lib.demo import build_app

    app = build_app(tiny_model(PLAIN_TOK), PLAIN_TOK)
    notes = [b for b in app.blocks.values() if getattr(b, "elem_id", None) == "chat-unavailable"]
    assert len(notes) == 1 and "not a chat model" in notes[0].value
    names = {fn.api_name for fn in app.fns.values()}
    assert "generate" in names and "chat" not in names


# ----------------------------------------------------------------------------- the app


@pytest.fixture(scope="module")
def server(gradio, chat_run):
    """The demo of the chat checkpoint, served on a free loopback port."""
    from wikigpt_lib.checkpoint import load_model_and_tokenizer
    from wikigpt_lib.demo import build_app, launch

    model, tok, _ = load_model_and_tokenizer(chat_run)
    app = build_app(model, tok, name=str(chat_run))
    url, _ = launch(app, port=free_port(), quiet=True)
    try:
        yield url
    finally:
        app.close()


@pytest.fixture
def client(server):
    gradio_client = pytest.importorskip("gradio_client")
    return gradio_client.Client(server, verbose=False, httpx_kwargs={"timeout": TIMEOUT})


def ask(client, *args, api_name):
    """client.predict with a time limit."""
    return client.submit(*args, api_name=api_name).result(timeout=TIMEOUT)


def test_the_app_generates_through_the_client(client):
    job = client.submit("The river", 6, 0.0, 0, 1.0, "", True, api_name="/generate")
    text, note = job.result(timeout=TIMEOUT)
    assert text.startswith("The river") and "6 new tokens in" in note
    assert len(job.outputs()) >= 3  # streamed: the prompt, tokens, the end
    text, note = ask(client, "   ", 6, 0.0, 0, 1.0, "", True, api_name="/generate")
    assert text == "" and note.startswith("**Error:** The prompt is empty")


def test_the_app_chats_through_the_client(client, chat_run):
    model = tiny_model()
    first, note = ask(client, "Hi, there", "", *CHAT_SETTINGS, api_name="/chat")
    assert first == last(chat_reply(model, TOK, "Hi, there", [], "", *CHAT_SETTINGS))[0]
    assert first.strip() and note == ""
    # The client's session keeps the conversation: the second reply sees the first.
    second, _ = ask(client, "And then?", "", *CHAT_SETTINGS, api_name="/chat")
    history = [{"role": "user", "content": "Hi, there"}, {"role": "assistant", "content": first}]
    assert second == last(chat_reply(model, TOK, "And then?", history, "", *CHAT_SETTINGS))[0]
    reply, note = ask(client, "", "", *CHAT_SETTINGS, api_name="/chat")
    assert note == f"**Error:** {EMPTY_MESSAGE}"


def test_show_returns_a_running_demo_at_once(gradio, chat_run, capsys):
    import urllib.request

    from wikigpt_lib import demo

    start = time.perf_counter()
    handle = demo.show(chat_run, port=free_port())
    try:
        assert time.perf_counter() - start < TIMEOUT
        assert repr(handle).startswith(f"Wiki-GPT demo at {handle.url}")
        with urllib.request.urlopen(handle.url, timeout=TIMEOUT) as page:
            assert page.status == 200
        second = demo.show((tiny_model(PLAIN_TOK), PLAIN_TOK), port=free_port())
        assert not handle.app.is_running  # the next show() stops the one before
        second.close()
    finally:
        handle.close()
    with pytest.raises(TypeError, match="show\\(\\) takes a checkpoint"):
        demo.show(42)
    with pytest.raises(ValueError, match="do not belong together"):
        demo.show(tiny_model(PLAIN_TOK), TOK)  # 8196 ids for a model of 8192


# ----------------------------------------------------------------------------- the browser


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    driver_path = shutil.which("chromedriver")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not driver_path or not chromium:
        pytest.skip("Chromium and chromedriver are not installed (apt-get install chromium "
                    "chromium-driver)")  # fmt: skip
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1000"):  # fmt: skip
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=driver_path)
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


def test_a_browser_loads_the_page_and_a_prompt_produces_text(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, TIMEOUT)
    browser.get(server)
    # A chat model's page opens on the chat: a message gets a streamed reply.
    message = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#message textarea")))
    message.send_keys("Hello, who built the bridge?", Keys.ENTER)
    wait.until(lambda _: browser.find_element(By.CSS_SELECTOR, '[data-testid="bot"]').text)
    assert browser.find_element(By.CSS_SELECTOR, '[data-testid="user"]').text.startswith("Hello")
    # The box is disabled while the reply streams; then an empty message is refused in the page.
    message = wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#message textarea")))
    message.send_keys(Keys.ENTER)
    wait.until(lambda _: EMPTY_MESSAGE in browser.find_element(By.TAG_NAME, "body").text)
    assert len(browser.find_elements(By.CSS_SELECTOR, '[data-testid="user"]')) == 1
    wait.until(ec.element_to_be_clickable((By.XPATH, "//button[@role='tab'][.='Generate']")))
    browser.find_element(By.XPATH, "//button[@role='tab'][.='Generate']").click()
    prompt = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#prompt textarea")))
    prompt.send_keys("The river")
    browser.find_element(By.ID, "generate-button").click()
    output = browser.find_element(By.CSS_SELECTOR, "#generate-output textarea")
    wait.until(lambda _: "new tokens in" in browser.find_element(By.ID, "generate-note").text)
    text = output.get_attribute("value")
    assert text.startswith("The river") and len(text) > len("The river")
