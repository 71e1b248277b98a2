"""Pictures in the notebooks: every diagram shown exists, is small, is used, and was shown.

The diagrams are PNG files in wikigpt_lib/assets/diagrams/, drawn by tools/draw_diagrams.py
and shown from code cells with `show_diagram("name")`: a stored cell output renders in
JupyterLab, on GitHub and in Colab, where a markdown link to a local file does not render in
Colab. These tests catch a renamed or deleted diagram, a markdown image link that would break
in Colab, and a diagram cell stored without its picture, without running any notebook.
"""

import json
import re
from pathlib import Path

import pytest

from wikigpt_lib.diagrams import DIAGRAMS, diagram_bytes, diagram_names, show_diagram

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted([*ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("solutions/*.ipynb")])
MAX_BYTES = 64 * 1024

SHOW = re.compile(r"""show_diagram\(\s*["'](\w+)["']\s*\)""")
# ![alt](target) or ![alt](target "title"), and <img src="target">
MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
HTML_IMAGE = re.compile(r"<img\s[^>]*\bsrc\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)


def cells(notebook: Path) -> list[dict]:
    return json.loads(notebook.read_text(encoding="utf-8"))["cells"]


def shown(notebook: Path) -> list[tuple[str, dict]]:
    """(diagram name, code cell) for every show_diagram call in the notebook."""
    return [
        (name, cell)
        for cell in cells(notebook)
        if cell["cell_type"] == "code"
        for name in SHOW.findall("".join(cell["source"]))
    ]


def test_the_patterns_find_images():
    text = (
        '![a (B, T)](figures/a.png) ![b](b.png "a title") <img src="x.png"> ![c](https://x/y.svg)'
    )
    assert MARKDOWN_IMAGE.findall(text) == ["figures/a.png", "b.png", "https://x/y.svg"]
    assert HTML_IMAGE.findall(text) == ["x.png"]
    assert SHOW.findall("show_diagram('block')\nshow_diagram( \"gpt\" )") == ["block", "gpt"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_diagrams_exist_and_cells_store_them(notebook):
    for name, cell in shown(notebook):
        size = len(diagram_bytes(name))  # a ValueError names the diagrams there are
        assert size < MAX_BYTES, f"{notebook.name}: diagram {name!r} is {size:,} bytes"
        images = [o for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        assert images, f"{notebook.name}: the cell showing {name!r} has no stored picture"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_markdown_image_links_a_local_file(notebook):
    """Colab renders neither relative links nor attachments in markdown: use show_diagram."""
    for cell in cells(notebook):
        if cell["cell_type"] == "markdown":
            text = "".join(cell["source"])
            for link in MARKDOWN_IMAGE.findall(text) + HTML_IMAGE.findall(text):
                assert re.match(r"^https://colab\.research\.google\.com/assets/", link), (
                    f"{notebook.name}: markdown image {link!r}; show it with show_diagram"
                )


def test_every_diagram_is_used_in_five_notebooks():
    used = {
        name: {nb.name for nb in NOTEBOOKS if name in dict(shown(nb))} for name in diagram_names()
    }
    unused = [name for name, where in used.items() if not where]
    assert not unused, f"diagrams no notebook shows: {unused}"
    assert len(set().union(*used.values())) >= 5


def test_show_diagram_gives_the_png_and_names_the_choices():
    image = show_diagram("block")
    assert image.data == (DIAGRAMS / "block.png").read_bytes()
    assert image.data[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no diagram 'blocks'; there are: attention, block"):
        diagram_bytes("blocks")
