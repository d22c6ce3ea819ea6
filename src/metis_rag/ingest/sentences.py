"""Sentence boundaries for the chunker: terminal punctuation followed by a space (not after an
abbreviation, an initial or a dotted acronym), CJK stops, and the start of a list item or table
row."""

from __future__ import annotations

import re

_ABBREVIATIONS = frozenset(
    """e.g i.e cf vs al approx ca dr mr mrs ms mx prof sr jr st mt fig figs eq eqs no nos vol
    vols pp ed eds inc ltd co corp dept univ gen col lt sgt rev est jan feb mar apr jun jul aug
    sep sept oct nov dec mon tue wed thu fri sat sun ph.d u.s u.k a.m p.m""".split()
)
_SENTENCE_END = re.compile(
    r"""[.!?\u2026]+["'\u201d\u2019)\]]*(?=\s)        # terminal punctuation, then a space
    | [\u3002\uff01\uff1f]+["'\u201d\u2019\u300d\u300f)]*  # CJK stops need no space
    | (?=\n[ \t]*(?:[-*+\u2022][ \t]|\d{1,3}[.)][ \t]|\|))  # a new list item or table row""",
    re.VERBOSE,
)
_WORD_BEFORE = re.compile(r"(\S+?)[.!?\u2026\"'\u201d\u2019)\]]*$")
_DOTTED_ACRONYM = re.compile(r"(?:[a-z]\.)+[a-z]")
_WHITESPACE_AT = re.compile(r"\s*")


def split_sentences(paragraph: str) -> list[tuple[str, str]]:
    """(separator, sentence) pairs; the separator is the whitespace before the sentence."""
    out: list[tuple[str, str]] = []
    start, sep = 0, ""
    for m in _SENTENCE_END.finditer(paragraph):
        end = m.end()
        if m.group() and not _is_boundary(paragraph, m.start(), end):
            continue
        sentence = paragraph[start:end].strip()
        gap_end = _skip_space(paragraph, end)
        if sentence:
            out.append((sep, sentence))
            sep = "\n" if "\n" in paragraph[end:gap_end] else " "
        start = gap_end
    if tail := paragraph[start:].strip():
        out.append((sep, tail))
    return out


def _is_boundary(text: str, punct_start: int, end: int) -> bool:
    if text[punct_start] != ".":
        return True  # ! ? and CJK stops always end a sentence
    next_start = _skip_space(text, end)
    following = text[next_start : next_start + 1]
    if following.islower():
        return False  # "e.g. the", "approx. three": a sentence starts with a capital
    word = _WORD_BEFORE.search(text, max(0, punct_start - 40), end)
    token = word.group(1).lstrip("(\"'[") if word else ""
    # Initials ("J. R. Smith"), listed abbreviations and dotted acronyms ("U.S.A.") go on.
    token, initial = token.lower(), len(token) == 1 and token.isupper()
    return not (initial or token in _ABBREVIATIONS or _DOTTED_ACRONYM.fullmatch(token) is not None)


def _skip_space(text: str, pos: int) -> int:
    found = _WHITESPACE_AT.match(text, pos)
    return found.end() if found else pos
