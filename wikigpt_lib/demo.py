"""The web demo behind `wikigpt demo`, and `show()` for notebooks: a Gradio page that continues
a prompt and, for a chat checkpoint, chats, streaming the text as it is generated.

build_app()  a model and its tokenizer -> the Gradio app (a gr.Blocks, not started)
launch()     start it on an address and port (127.0.0.1 unless told otherwise)
show()       the app started in the background and shown inline (JupyterLab, Colab)

Gradio is an optional extra (`pip install 'wikigpt-lib[demo]'`), imported only when an app is
built: without it `require_gradio` raises DemoUnavailableError saying how to install it. The
views' handlers, and how the page treats bad input and long texts, are in
`wikigpt_lib.demo_views`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from torch import nn

from wikigpt_lib.base import unwrap_model
from wikigpt_lib.checkpoint import load_model_and_tokenizer
from wikigpt_lib.demo_views import (
    EMPTY_MESSAGE,
    MAX_NEW_TOKENS,
    MAX_REPLY_TOKENS,
    NOT_A_CHAT_MODEL,
    chat_reply,
    generate_text,
    is_chat_tokenizer,
    uses_wikitext_spacing,
)
from wikigpt_lib.device import pick_device

GENERATE_API, CHAT_API = "generate", "chat"  # the endpoints: Client(url).predict(api_name=...)
INSTALL_HINT = (
    "pip install 'wikigpt-lib[demo]' (in a clone of the project: pip install -e '.[demo]')"
)


class DemoUnavailableError(RuntimeError):
    """Gradio, the web demo's optional dependency, is not installed."""


def require_gradio():
    """The gradio module, or DemoUnavailableError saying how to install it."""
    try:
        import gradio
    except ImportError as err:
        raise DemoUnavailableError(
            f"the web demo needs Gradio, an optional extra: {INSTALL_HINT}. ({err})"
        ) from err
    return gradio


def _settings(gr, n: int, limit: int, temperature: float, spacing: bool, render: bool) -> list:
    """The sampling controls, in the handlers' order after the text."""
    return [
        gr.Slider(1, limit, value=n, step=1, label="Tokens", info="how many to generate, at most",
                  render=render),
        gr.Slider(0, 2, value=temperature, step=0.05, label="Temperature",
                  info="0: greedy, always the most likely token", render=render),
        gr.Slider(0, 200, value=0, step=1, label="Top-k",
                  info="sample among the k most likely tokens; 0: all", render=render),
        gr.Slider(0.05, 1, value=1, step=0.05, label="Top-p",
                  info="sample among the most likely tokens that hold this much probability; "
                  "1: all", render=render),
        gr.Textbox(label="Seed", placeholder="random",
                   info="a whole number: the same seed gives the same text", render=render),
        gr.Checkbox(value=spacing, label="WikiText spacing",
                    info="write your text as WikiText does (well @-@ known , 1 @,@ 000) for the "
                    "model, and show its text with that spacing undone", render=render),
    ]  # fmt: skip


def _generate_view(gr, model: nn.Module, tok: Any, spacing: bool) -> None:
    def generate(prompt, max_new_tokens, temperature, top_k, top_p, seed, wikitext):
        yield from generate_text(
            model, tok, prompt, max_new_tokens, temperature, top_k, top_p, seed, wikitext
        )

    with gr.Row():
        with gr.Column(scale=3):
            prompt = gr.Textbox(label="Prompt", placeholder="The river", lines=3, elem_id="prompt")
            with gr.Row():
                run = gr.Button("Generate", variant="primary", elem_id="generate-button")
                stop = gr.Button("Stop")
            note = gr.Markdown(label="note", elem_id="generate-note")
            output = gr.Textbox(
                label="Text", lines=10, interactive=False, elem_id="generate-output",
                buttons=["copy"],
            )  # fmt: skip
            gr.Examples([["The river"], ["The album was released in"]], inputs=[prompt])
        with gr.Column(scale=1):
            settings = _settings(gr, 100, MAX_NEW_TOKENS, 1.0, spacing, render=True)
    event = gr.on(
        [run.click, prompt.submit], generate, [prompt, *settings], [output, note],
        api_name=GENERATE_API,
    )  # fmt: skip
    stop.click(None, cancels=[event])


def _chat_view(gr, model: nn.Module, tok: Any, spacing: bool) -> None:
    def respond(
        message, history, system, max_new_tokens, temperature, top_k, top_p, seed, wikitext
    ):
        yield from chat_reply(
            model, tok, message, history, system, max_new_tokens, temperature, top_k, top_p,
            seed, wikitext,
        )  # fmt: skip

    def check(message):  # in the page: an empty message is refused before it joins the chat
        return gr.validate(bool(message.strip()), EMPTY_MESSAGE)

    note = gr.Markdown(label="note", render=False, elem_id="chat-note")
    system = gr.Textbox(label="System message", placeholder="none", render=False)
    gr.ChatInterface(
        respond,
        chatbot=gr.Chatbot(label="Chat", height=380, elem_id="chatbot"),
        textbox=gr.Textbox(
            placeholder="Type a message and press Enter",
            show_label=False,
            label="Message",
            scale=7,
            autofocus=True,
            submit_btn=True,
            stop_btn=True,
            elem_id="message",
        ),  # fmt: skip
        additional_inputs=[system, *_settings(gr, 64, MAX_REPLY_TOKENS, 0.0, spacing, False)],
        additional_inputs_accordion=gr.Accordion("Settings", open=False, render=False),
        validator=check,
        additional_outputs=[note],
        api_name=CHAT_API,
        fill_height=False,
        analytics_enabled=False,
    )
    note.render()


def build_app(model: nn.Module, tok: Any, *, name: str | None = None):
    """The Gradio app (a `gr.Blocks`, not started) for `model` and its tiktoken tokenizer.

    A Generate tab (prompt, settings, the text streamed as it is generated) and a Chat tab:
    for a chat model (tokenizer name ending in "-chat") a chat that streams its replies, for
    any other a note that says why there is none. `name` (the checkpoint) heads the page.
    Endpoints for `gradio_client`: "/generate" (prompt, then `_settings`' values) and, for a
    chat model, "/chat" (message, system message, then the settings; the conversation is
    kept per client session).
    """
    gr = require_gradio()
    gpt = unwrap_model(model)
    chat, spacing = is_chat_tokenizer(tok), uses_wikitext_spacing(tok)
    with gr.Blocks(title="Wiki-GPT demo", analytics_enabled=False) as app:
        gr.Markdown(
            f"## Wiki-GPT{f': `{name}`' if name else ''}\n"
            f"{gpt.num_params():,} parameters, a context of {gpt.config.block_size} tokens, "
            f"tokenizer `{tok.name}`{' (a chat model)' if chat else ''}."
        )
        with gr.Tabs(selected=CHAT_API if chat else GENERATE_API):
            with gr.Tab("Generate", id=GENERATE_API):
                _generate_view(gr, model, tok, spacing)
            with gr.Tab("Chat", id=CHAT_API):
                if chat:
                    _chat_view(gr, model, tok, spacing)
                else:
                    gr.Markdown(
                        NOT_A_CHAT_MODEL.format(name=f"`{tok.name}`"), elem_id="chat-unavailable"
                    )
    return app


def launch(
    app, *, host: str = "127.0.0.1", port: int | None = None, share: bool | None = False,
    **kwargs: Any,
) -> tuple[str, str | None]:  # fmt: skip
    """Start `app` in the background on host:port (port None: 7860, or the next free port);
    `app.block_thread()` then serves until Ctrl-C, `app.close()` stops it. Returns (local URL,
    share URL or None). kwargs go to `gr.Blocks.launch`. RuntimeError when the server cannot
    start (the port is in use, or the host is not an address of this machine)."""
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"the port must be from 1 to 65535, got {port}.")
    try:
        _, url, share_url = app.launch(
            server_name=host, server_port=port, share=share, prevent_thread_lock=True,
            ssr_mode=False, **kwargs,
        )  # fmt: skip
    except OSError as err:
        where = f"port {port}" if port is not None else "any port from 7860 on"
        raise RuntimeError(
            f"could not start the web server on {host}, {where}: the port is in use, or "
            f"{host} is not an address of this machine ({err})"
        ) from err
    return url, share_url


@dataclass
class DemoHandle:
    """A demo running in the background (from `show`); `close()` stops it."""

    app: Any
    url: str
    share_url: str | None = None

    def close(self) -> None:
        self.app.close()

    def __repr__(self) -> str:
        return f"Wiki-GPT demo at {self.share_url or self.url} (stop it with .close())"


_shown: DemoHandle | None = None  # the demo `show` started last, closed by the next call


def _model_and_tokenizer(source: Any, tokenizer: Any, device: str | None):
    if isinstance(source, (str, os.PathLike)):
        model, tok, _ = load_model_and_tokenizer(source, "best", pick_device(device))
        return model, tok, str(source)
    if isinstance(source, (tuple, list)) and len(source) == 2 and tokenizer is None:
        source, tokenizer = source
    if not isinstance(source, nn.Module) or not hasattr(tokenizer, "encode_ordinary"):
        raise TypeError(
            "show() takes a checkpoint (a run folder or checkpoint folder), a (model, "
            "tokenizer) pair, or a model and tokenizer=...; got "
            f"{type(source).__name__} and {type(tokenizer).__name__}."
        )
    vocab = unwrap_model(source).config.vocab_size
    if tokenizer.n_vocab > vocab:
        raise ValueError(
            f"the tokenizer {tokenizer.name!r} has {tokenizer.n_vocab} ids but the model only "
            f"{vocab}: they do not belong together."
        )
    return source, tokenizer, None


def show(
    source: Any,
    tokenizer: Any = None,
    *,
    device: str | None = None,
    share: bool | None = None,
    port: int | None = None,
    height: int = 700,
) -> DemoHandle:
    """The demo, shown inline in a notebook (JupyterLab, Colab) and running in the background:

        from wikigpt_lib.demo import show
        demo = show("runs/chat")           # or show((model, tok)), show(model, tok)

    `source`: a checkpoint (run folder or checkpoint folder, loaded on `device`), a (model,
    tokenizer) pair, or a model with its tokenizer as the second argument. The server listens
    on 127.0.0.1 (port None: 7860 or the next free one); share=None lets Gradio decide (a
    public link in Colab, where the page cannot reach the kernel's machine otherwise). Returns
    at once with a handle; `handle.close()` stops the server, as does the next `show()`.
    """
    global _shown
    model, tok, name = _model_and_tokenizer(source, tokenizer, device)
    app = build_app(model, tok, name=name)
    if _shown is not None:
        _shown.close()
        _shown = None
    url, share_url = launch(app, port=port, share=share, inline=True, height=height)
    _shown = DemoHandle(app, url, share_url)
    return _shown
