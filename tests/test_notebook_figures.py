"""Images in the notebooks' markdown: every local link points to a small file that exists.

The diagrams live in notebooks/figures/ and are drawn by tools/draw_diagrams.py; markdown cells
link them relatively (`![...](figures/attention.png)`), so a renamed or deleted file would
show up only as a broken picture. These tests catch that without running any notebook.
"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted([*ROOT.glob("notebooks/*.ipynb"), *ROOT.glob("solutions/*.ipynb")])
FIGURES = ROOT / "notebooks" / "figures"
MAX_BYTES = 200 * 1024

# ![alt](target) or ![alt](target "title"), and <img src="target">
MARKDOWN_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
HTML_IMAGE = re.compile(r"<img\s[^>]*\bsrc\s*=\s*[\"']([^\"']+)[\"']", re.IGNORECASE)


def image_links(notebook: Path) -> list[str]:
    """Targets of the images in a notebook's markdown cells."""
    cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    links = []
    for cell in cells:
        if cell["cell_type"] == "markdown":
            text = "".join(cell["source"])
            links += MARKDOWN_IMAGE.findall(text) + HTML_IMAGE.findall(text)
    return links


def is_local(link: str) -> bool:
    return not re.match(r"^(https?:|data:|attachment:)", link)


def test_the_patterns_find_images():
    text = (
        '![a (B, T)](figures/a.png) ![b](b.png "a title") <img src="x.png"> ![c](https://x/y.svg)'
    )
    assert MARKDOWN_IMAGE.findall(text) == ["figures/a.png", "b.png", "https://x/y.svg"]
    assert HTML_IMAGE.findall(text) == ["x.png"]
    assert [link for link in ["figures/a.png", "https://x/y.svg"] if is_local(link)] == [
        "figures/a.png"
    ]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_local_images_exist_and_are_small(notebook):
    for link in filter(is_local, image_links(notebook)):
        target = (notebook.parent / link).resolve()
        assert target.is_file(), f"{notebook.name}: image {link!r} not found"
        size = target.stat().st_size
        assert size < MAX_BYTES, f"{notebook.name}: {link!r} is {size:,} bytes (max {MAX_BYTES:,})"


def test_every_figure_is_used():
    """A figure that no notebook shows is a leftover (or a link that was lost)."""
    used = {
        (notebook.parent / link).resolve()
        for notebook in NOTEBOOKS
        for link in filter(is_local, image_links(notebook))
    }
    unused = [p.name for p in sorted(FIGURES.glob("*.png")) if p.resolve() not in used]
    assert not unused, f"figures no notebook links to: {unused}"
