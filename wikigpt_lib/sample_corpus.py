"""The built-in sample corpus: a small invented encyclopedia in WikiText-2's format.

Used when WikiText-2 itself can't be had (offline, no local copy), so every notebook still
runs. All of its text is generated here from templates and word lists with a seeded random
number generator: nothing is copied from anywhere, and the same call always gives the same
rows. It has WikiText's layout (` = Title = ` headings, ` = = Section = = ` subsections, blank
rows, tokens separated by spaces, ` @-@ ` and ` @,@ ` inside words and numbers) and enough
regular structure that a tiny model's loss visibly falls on it. Its numbers are NOT
WikiText-2's: never report results on it as such.
"""

from __future__ import annotations

import functools
import random
from collections import Counter
from pathlib import Path

SPLIT_SIZES = {"train": 240, "valid": 24, "test": 24}  # articles per split
UNK_MIN_COUNT = 3  # in the tokens variant, train words seen fewer times become <unk>

_ONSETS = ["b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
           "br", "dr", "gl", "kr", "st", "th", "tr"]  # fmt: skip
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "m", "nd", "rk"]

_KINDS = {
    "town": ("town", ["History", "Geography", "Economy", "Culture"]),
    "river": ("river", ["Course", "History", "Wildlife"]),
    "ship": ("ship", ["Design", "Service history", "Fate"]),
    "bird": ("species of bird", ["Description", "Distribution", "Behaviour"]),
    "band": ("band", ["History", "Musical style", "Reception"]),
}
_REGIONS = ["the northern hills", "the eastern coast", "the southern plains", "the western valleys",
            "the central lowlands", "the island chain"]  # fmt: skip
_ADJ = ["small", "large", "old", "quiet", "busy", "remote", "famous", "wide", "narrow", "long",
        "early", "late", "popular", "modest", "strong", "gentle", "dark", "bright"]  # fmt: skip
_NOUNS = ["market", "bridge", "harbour", "church", "mill", "school", "road", "forest", "lake",
          "castle", "railway", "festival", "museum", "garden", "tower", "farm"]  # fmt: skip
_VERBS = ["built", "rebuilt", "expanded", "described", "visited", "praised", "named", "moved",
          "restored", "recorded", "released", "launched", "repaired", "studied"]  # fmt: skip
_PEOPLE = ["the council", "local farmers", "a group of monks", "the navy", "travellers",
           "critics", "the founders", "historians", "the residents", "a trading company"]  # fmt: skip
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]  # fmt: skip

# Each template is a WikiText-spaced sentence; {slots} are filled per article.
_TEMPLATES = {
    "intro": [
        "{name} is a {adj} {kind} in {region} .",
        "{name} is a {kind} known for its {noun} , which was {verb} in {year} .",
    ],
    "any": [
        "In {year} , {people} {verb} a {adj} {noun} near {name} .",
        "The {noun} was {verb} by {people} in {month} {year} .",
        "By {year} the {noun} had {number} visitors a year , a {adj} number for the time .",
        '{people_cap} described {name} as " {adj} and {adj2} " .',
        "A {adj} {noun} , about {distance} kilometres ( {miles} mi ) long , was {verb} in {year} .",
        "Its {noun} is {adj} , and the {noun2} is one of the {adj2} in {region} .",
        "The {adj} @-@ {noun} period ended in {year} , when {people} {verb} the {noun2} .",
        "Between {year} and {year2} , {people} {verb} the {noun} and the {noun2} .",
        "It has a population of {number} , according to the census of {year} .",
        'The name {name} comes from an old word for " {adj} {noun} " .',
    ],
}


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS)
                   for _ in range(syllables))  # fmt: skip


def _number(rng: random.Random) -> str:
    """A number in WikiText spacing: 12 @,@ 400 for 12,400."""
    value = rng.choice([rng.randint(2, 99), rng.randint(100, 999), rng.randint(1_000, 99_999)])
    return f"{value:,}".replace(",", " @,@ ")


def _sentence(rng: random.Random, name: str, kind: str, key: str) -> str:
    year = rng.randint(1500, 2010)
    distance = rng.randint(2, 90)
    slots = {
        "name": name, "kind": kind, "region": rng.choice(_REGIONS), "adj": rng.choice(_ADJ),
        "adj2": rng.choice(_ADJ), "noun": rng.choice(_NOUNS), "noun2": rng.choice(_NOUNS),
        "verb": rng.choice(_VERBS), "people": rng.choice(_PEOPLE), "month": rng.choice(_MONTHS),
        "year": year, "year2": year + rng.randint(1, 40), "number": _number(rng),
        "distance": distance, "miles": f"{distance * 0.621:.1f}".replace(".", " @.@ "),
    }  # fmt: skip
    slots["people_cap"] = slots["people"][0].upper() + slots["people"][1:]
    return rng.choice(_TEMPLATES[key]).format(**slots)


def _paragraph(rng: random.Random, name: str, kind: str, first: bool) -> str:
    sentences = [_sentence(rng, name, kind, "intro")] if first else []
    sentences += [_sentence(rng, name, kind, "any") for _ in range(rng.randint(3, 6))]
    return " " + " ".join(sentences) + " \n"


def _article(rng: random.Random) -> list[str]:
    kind_key = rng.choice(sorted(_KINDS))
    kind, sections = _KINDS[kind_key]
    name = _word(rng, rng.randint(2, 3)).capitalize()
    if rng.random() < 0.3:
        name += " " + _word(rng, 2).capitalize()
    rows = [" \n", f" = {name} = \n", " \n", _paragraph(rng, name, kind, first=True), " \n"]
    for section in sections:
        rows += [f" = = {section} = = \n", " \n"]
        rows += [
            row
            for _ in range(rng.randint(1, 2))
            for row in (_paragraph(rng, name, kind, False), " \n")
        ]
    return rows


def _mark_unk(row: str, keep: set[str]) -> str:
    """Replace every word not in `keep` by `<unk>`, leaving the spacing as it is."""
    return " ".join(w if not w.strip() or w in keep else "<unk>" for w in row.split(" "))


def _to_rows(lines: list[str]) -> list[str]:
    """Whitespace-only rows become "" as in the Hugging Face rows."""
    return [line if line.strip() else "" for line in lines]


@functools.lru_cache(maxsize=2)
def _generate(variant: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if variant not in ("tokens", "raw"):
        raise ValueError(f"Unknown variant {variant!r}: use 'tokens' or 'raw'.")
    rng = random.Random(2016)  # one stream for every split: deterministic, splits differ
    splits = {
        name: [row for _ in range(n) for row in _article(rng)] for name, n in SPLIT_SIZES.items()
    }
    if variant == "tokens":
        counts = Counter(word for row in splits["train"] for word in row.split())
        keep = {word for word, c in counts.items() if c >= UNK_MIN_COUNT}
        splits = {name: [_mark_unk(row, keep) for row in rows] for name, rows in splits.items()}
    return tuple((name, tuple(_to_rows(rows))) for name, rows in splits.items())


def sample_wikitext(variant: str = "tokens") -> dict[str, list[str]]:
    """The sample corpus as rows per split: {"train": [...], "valid": [...], "test": [...]}.

    Rows follow the Hugging Face convention of the real data: each line keeps its "\\n", and
    blank lines are "". `variant="tokens"` marks rare words as `<unk>`; `"raw"` does not.
    """
    return {name: list(rows) for name, rows in _generate(variant)}


def write_sample_files(folder: str | Path, variant: str = "tokens") -> Path:
    """Write the sample as `wiki.{train,valid,test}.{tokens|raw}` files into `folder`."""
    splits = sample_wikitext(variant)  # checks `variant` before anything is written
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        text = "".join(row if row else " \n" for row in rows)
        (folder / f"wiki.{name}.{variant}").write_text(text, encoding="utf-8")
    return folder
