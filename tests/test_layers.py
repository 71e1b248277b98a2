"""The library's shape: layers in chapter order without cycles, small modules, one training
loop, attention in one place, a short public API (docs/architecture.md)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import wikigpt_lib

PACKAGE = Path(wikigpt_lib.__file__).parent
# Each module may import only from its own layer or the layers before it (docs/architecture.md).
LAYERS = [
    ("shared", {"base", "device", "diagrams"}),
    ("01 tokenization", {"tokenizer"}),
    ("02 data", {"sample_corpus", "text", "windows", "data"}),
    ("03 attention", {"attention"}),
    ("04 the model", {"config", "model"}),
    (
        "05 training",
        {"checkpoint", "optim", "metrics", "runtime", "train_state", "train", "course"},
    ),
    ("06 generation", {"generation"}),
    ("07 evaluation", {"evaluate", "ngram"}),
    (
        "08 GPT-2, Hugging Face, LoRA",
        {"hub", "lora", "pretrained", "hf_tokenizer", "model_card", "export"},
    ),
    ("09 chat", {"chat_template", "chat_data", "chat"}),
    ("the command line", {"cli_chat", "demo_views", "demo", "cli_commands", "cli", "__main__"}),
]
LAYER_OF = {m: i for i, (_, mods) in enumerate(LAYERS) for m in mods}
MAX_LINES = 420


def _modules() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PACKAGE.glob("*.py")) if p.stem != "__init__"}


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Library modules that `path` imports, imports inside functions included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            parts = node.module.split(".")
            if parts[0] == "wikigpt_lib":
                found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("wikigpt_lib.")}
    return (found & modules) - {path.stem}


def test_every_module_has_a_layer():
    assert set(_modules()) == set(LAYER_OF)


def test_modules_import_only_their_own_or_earlier_layers():
    modules = _modules()
    wrong = [
        f"{name} ({LAYERS[LAYER_OF[name]][0]}) imports {dep} ({LAYERS[LAYER_OF[dep]][0]})"
        for name, path in modules.items()
        for dep in sorted(_imports(path, set(modules)))
        if LAYER_OF[dep] > LAYER_OF[name]
    ]
    assert not wrong, wrong


def test_no_import_cycle():
    modules = _modules()
    graph = {name: _imports(path, set(modules)) for name, path in modules.items()}

    def reaches(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
        return seen

    assert not [m for m in graph if m in reaches(m)]


@pytest.mark.parametrize("name", sorted(_modules()))
def test_modules_are_small(name):
    lines = len(_modules()[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name}.py has {lines} lines: split it by job"


def _code_lines(needle: str) -> dict[str, int]:
    """Modules whose code (comments and docstrings aside) contains `needle`, with counts."""
    hits = {}
    for name, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
            and n.body
            and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)
        }
        count = sum(
            needle in ast.unparse(n)
            for n in ast.walk(tree)
            if isinstance(n, ast.Call) and id(n) not in docstrings
        )
        if count:
            hits[name] = count
    return hits


def test_one_backward_pass_in_the_library():
    """One training loop: the Trainer's step is the only place gradients are computed."""
    assert _code_lines(".backward(") == {"train": 1}


def test_attention_is_computed_only_in_attention_py():
    for needle in ("scaled_dot_product_attention", ".transpose(-2, -1)", "causal_mask("):
        assert set(_code_lines(needle)) <= {"attention"}, needle


def test_public_api_is_short_and_hides_no_module():
    assert 20 <= len(wikigpt_lib.__all__) <= 30
    for name in wikigpt_lib.__all__:
        assert hasattr(wikigpt_lib, name), name
    for info in pkgutil.iter_modules(wikigpt_lib.__path__):
        if info.name == "__main__":
            continue
        module = importlib.import_module(f"wikigpt_lib.{info.name}")
        assert getattr(wikigpt_lib, info.name) is module, f"wikigpt_lib.{info.name} is hidden"


def test_no_private_name_is_imported_across_modules():
    private = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("wikigpt_lib"):
                private += [f"{name}: {node.module}.{a.name}" for a in node.names
                            if a.name.startswith("_") and a.name != "__version__"]  # fmt: skip
    assert not private, private
