"""WikiText's text: rows, articles, its tokenized spacing undone for display, and word counts.

as_rows()          a list of row strings from a list, a Dataset or a datasets Column
split_articles()   rows -> articles (title, text)
detokenize()       undo WikiText's spacing (` @-@ `, ` , `) for display
count_words()      the word count that word-level perplexity is normalised by
to_wikitext()      plain text -> WikiText spacing (roughly detokenize's inverse), for user input
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Dataset

_HEADING = re.compile(r"^ = ([^=].*?) = \n$")  # exactly one "=" each side: an article title


def as_rows(rows: Iterable[str] | Dataset) -> list[str]:
    """A list of row strings from a list, a Dataset (its `text` column) or a datasets Column
    (converted in one go: iterating a Column row by row is ~100x slower)."""
    if isinstance(rows, str):
        raise TypeError("Expected rows of text (a list of str or a Dataset), got one str.")
    if hasattr(rows, "column_names"):  # a datasets.Dataset
        rows = rows["text"]
    rows = rows[:] if hasattr(rows, "column_name") else list(rows)  # datasets Column -> list
    if not all(isinstance(row, str) for row in rows):
        raise TypeError("Expected rows of text (str), e.g. ds['train']['text'].")
    return rows


@dataclass(frozen=True)
class Article:
    title: str
    text: str  # the article's rows after its title row, joined (the title row is left out)


def split_articles(rows: Iterable[str] | Dataset) -> list[Article]:
    """Split rows into articles. An article starts at a title row ` = Title = ` (one "=" each
    side) that has a blank row before and after it, as every WikiText-2 title does; without
    that check a few table rows such as ` = Played , W = ` would count (629 train "articles"
    instead of 600). ` = = Section = = ` rows are sections inside an article. Rows before the
    first title are dropped."""
    rows = as_rows(rows)
    articles: list[Article] = []
    title, body = None, []
    for i, row in enumerate(rows):
        match = _HEADING.match(row)
        blank_before = i == 0 or not rows[i - 1].strip()
        blank_after = i + 1 == len(rows) or not rows[i + 1].strip()
        if match and blank_before and blank_after:
            if title is not None:
                articles.append(Article(title, "".join(body)))
            title, body = match.group(1), []
        elif title is not None:
            body.append(row)
    if title is not None:
        articles.append(Article(title, "".join(body)))
    return articles


DETOKENIZE_RULES = [
    (re.compile(r" @(.)@ "), r"\1"),  # 1 @,@ 000 -> 1,000; well @-@ known -> well-known
    (re.compile(r" ([.,;:!?)\]}]|'s|'t|n't|'re|'ve|'ll|'d|'m)(?=\s|$)"), r"\1"),  # no space before
    (re.compile(r"([(\[{]) "), r"\1"),  # no space after an opening bracket
    (re.compile(r'" ([^"\n]*?) "'), r'"\1"'),  # " quoted words " -> "quoted words"
]


def detokenize(text: str) -> str:
    """Undo WikiText's tokenized spacing for display: `a well @-@ known town , 1 @,@ 000 ( est . )`
    becomes `a well-known town, 1,000 (est.)`. A lone ` ' ` stays as it is: a plural possessive
    and a single quote look alike. For reading only: models train on the original text."""
    for pattern, repl in DETOKENIZE_RULES:
        text = pattern.sub(repl, text)
    return text


def count_words(rows: Iterable[str] | Dataset) -> int:
    """Words as the word-level perplexity literature counts them: whitespace-separated tokens
    plus one end-of-line per row, blank rows included (wikitext-2-v1: validation 217,646,
    test 245,569)."""
    return sum(len(row.split()) + 1 for row in as_rows(rows))


_SPLIT_PUNCT = re.compile(r"""(?<!@)([.,;:!?()\[\]{}"]|--)(?!@)""")  # not inside " @,@ "
_JOINERS = [
    (re.compile(r"(?<=\d),(?=\d)"), " @,@ "),  # 1,000 -> 1 @,@ 000
    (re.compile(r"(?<=\d)\.(?=\d)"), " @.@ "),  # 3.5 -> 3 @.@ 5
    (re.compile(r"(?<=\w)-(?=\w)"), " @-@ "),  # well-known -> well @-@ known
]
_CLITICS = re.compile(r"(?i)(?<=\w)(n't|'s|'re|'ve|'ll|'d|'m)\b")


def to_wikitext(text: str) -> str:
    """Plain text -> WikiText-2's spacing, the form the course model was trained on:
    "It's well-known (1,000 km)." -> "It 's well @-@ known ( 1 @,@ 000 km ) .".

    Roughly the inverse of `detokenize`; meant for what a user types.
    """
    text = " ".join(text.split())
    for pattern, repl in _JOINERS:
        text = pattern.sub(repl, text)
    text = _CLITICS.sub(r" \1", text)
    text = _SPLIT_PUNCT.sub(r" \1 ", text)
    return " ".join(text.split())
