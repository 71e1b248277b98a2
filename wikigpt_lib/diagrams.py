"""The course's diagrams, shown in the notebooks: `show_diagram("block")`.

The pictures (attention's data flow, the pre-LayerNorm block, the GPT stack, the training step,
the KV cache, the chat template's loss mask) are PNG files in `wikigpt_lib/assets/diagrams/`,
drawn by `tools/draw_diagrams.py`. They ship with the package, so `pip install` carries them
to Colab. A notebook shows one from a code cell rather than a markdown link because a stored
cell output renders the same in JupyterLab, on GitHub and in Colab, while Colab cannot resolve
a markdown image's relative path.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

DIAGRAMS = files("wikigpt_lib") / "assets" / "diagrams"


def diagram_names() -> list[str]:
    """The names `show_diagram` accepts, e.g. ["attention", "block", ...]."""
    return sorted(p.name[: -len(".png")] for p in DIAGRAMS.iterdir() if p.name.endswith(".png"))


def diagram_bytes(name: str) -> bytes:
    """The PNG file of the diagram `name`; a ValueError lists the names there are."""
    path = DIAGRAMS / f"{name}.png"
    if not path.is_file():
        raise ValueError(f"no diagram {name!r}; there are: {', '.join(diagram_names())}")
    return path.read_bytes()


def show_diagram(name: str) -> Any:
    """An `IPython.display.Image` of the diagram `name`: the last line of a notebook cell shows
    it. Needs IPython (installed with Jupyter)."""
    from IPython.display import Image

    return Image(data=diagram_bytes(name), format="png")
