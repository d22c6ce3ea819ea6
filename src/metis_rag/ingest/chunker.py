"""Cut parsed sections into token-budgeted chunks for embedding.

Chunks break between paragraphs when they can, else between sentences (`sentences`), and cut inside a
sentence only when that sentence alone is over budget. A chunk never crosses a section (so
never a page) and consecutive chunks of a section share whole trailing sentences. Token counts
come from the embedder's own tokenizer, in a few batched calls per document.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import ChunkingStopped, ParseLimitExceeded
from .parsers import ParsedDocument
from .sentences import split_sentences

TokenCounter = Callable[[Sequence[str]], list[int]]

# Sentences counted per tokenizer call: one call for a normal file, and a point to stop at
# every few hundred kilobytes of a huge one.
COUNT_BATCH = 4096
# A "sentence" longer than this (a line of markup, a text without stops) is sized from its
# distinct words rather than tokenized whole: one 2.4-million-character encoding held 600 MB
# for 4 s. It is over budget anyway and gets cut by words.
HUGE_UNIT_CHARS = 20_000


@dataclass(frozen=True, slots=True)
class ChunkDraft:
    """A chunk before embedding; `token_count` is exact for `text` under the chunker's counter."""

    text: str
    position: int
    page: int | None
    section: str | None
    token_count: int


@dataclass(slots=True, eq=False)
class _Unit:
    """A sentence (or, when `whole` is False, a piece of an over-long one) inside a paragraph."""

    text: str
    para: int
    sep: str  # whitespace that preceded it inside its paragraph
    tokens: int = 0
    whole: bool = True
    estimated: bool = False  # `tokens` is a guess (a slice of one huge word)


_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_WORD = re.compile(r"\S+")


# --- chunking -------------------------------------------------------------------------------


class Chunker:
    """Splits a `ParsedDocument` into `ChunkDraft`s of at most `max_tokens` tokens.

    Set `counts_add_up` when the counter's count of texts joined by whitespace is the sum of
    their counts, as for WordPiece (the packaged model): it saves a second tokenizer pass.
    """

    def __init__(
        self,
        count_tokens: TokenCounter,
        max_tokens: int,
        overlap_tokens: int,
        *,
        counts_add_up: bool = False,
        max_chunks: int | None = None,
    ) -> None:
        if max_tokens < 1 or not 0 <= overlap_tokens < max_tokens:
            raise ValueError("need max_tokens >= 1 and 0 <= overlap_tokens < max_tokens")
        self.count_tokens = count_tokens
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self.counts_add_up = counts_add_up
        self.max_chunks = max_chunks

    def chunk(
        self, doc: ParsedDocument, stop: threading.Event | None = None, name: str = "The file"
    ) -> list[ChunkDraft]:
        """Chunks `doc`; raises `ChunkingStopped` soon after `stop` is set (the caller gave
        up: a worker thread cannot be killed, so it must stop itself) and `ParseLimitExceeded`
        (too_many_chunks) before packing a document that would need more than `max_chunks`."""
        per_section = []
        for section in doc.sections:
            _check(stop)
            per_section.append(_units(section.text))
        units = [u for section_units in per_section for u in section_units]
        normal = [u for u in units if len(u.text) <= HUGE_UNIT_CHARS]
        for start in range(0, len(normal), COUNT_BATCH):
            _check(stop)
            batch = normal[start : start + COUNT_BATCH]
            for unit, n in zip(batch, self._count([u.text for u in batch]), strict=True):
                unit.tokens = n
        for unit in units:
            if len(unit.text) > HUGE_UNIT_CHARS:
                _check(stop)
                unit.tokens = self._sum_of_words(unit.text)
        # Chunks hold at most max_tokens each, so this many is the fewest the text can make.
        self._check_count(-(-sum(u.tokens for u in units) // self.max_tokens), name)
        _check(stop)
        if any(u.tokens > self.max_tokens for u in units):
            per_section = self._cut_long_sentences(per_section)
            _check(stop)
        drafts: list[ChunkDraft] = []
        for section, chunks in zip(doc.sections, self._fit(per_section, stop), strict=True):
            for text, tokens in chunks:
                drafts.append(ChunkDraft(text, len(drafts), section.page, section.heading, tokens))
        self._check_count(len(drafts), name)
        return drafts

    def _sum_of_words(self, text: str) -> int:
        """Tokens of a huge text as the sum of its words' (exact for WordPiece, whose pieces
        never cross a space); only distinct words are held and counted."""
        words = Counter(text.split())  # C loops: 3x faster than a regex, and it holds the GIL
        distinct = list(words)
        return sum(words[w] * n for w, n in zip(distinct, self._count(distinct), strict=True))

    def _check_count(self, n: int, name: str) -> None:
        if self.max_chunks is not None and n > self.max_chunks:
            raise ParseLimitExceeded(
                f"{name} would make more than {self.max_chunks:,} chunks "
                "(METIS_CHUNK__MAX_CHUNKS_PER_DOCUMENT); split it and upload the parts.",
                code="too_many_chunks", limit=self.max_chunks,
            )

    def _count(self, texts: Sequence[str]) -> list[int]:
        return list(self.count_tokens(texts)) if texts else []

    def _cut_long_sentences(self, per_section: list[list[_Unit]]) -> list[list[_Unit]]:
        """Replace each over-budget sentence by word pieces; one batched count for all words."""
        long = [u for units in per_section for u in units if u.tokens > self.max_tokens]
        words = [_words(u.text) for u in long]
        # Each distinct word is counted once: a word's count does not depend on its neighbours,
        # and text without sentence ends repeats its words (400,000 words took a minute).
        distinct = list(dict.fromkeys(w for unit_words in words for _, w in unit_words))
        per_word = dict(zip(distinct, self._count(distinct), strict=True))
        counts = iter([per_word[w] for unit_words in words for _, w in unit_words])
        pieces = {
            id(unit): _pack_words(
                unit, [(sep, w, next(counts)) for sep, w in unit_words], self.max_tokens
            )
            for unit, unit_words in zip(long, words, strict=True)
        }
        self._count_pieces(pieces)
        return [[p for u in units for p in pieces.get(id(u), [u])] for units in per_section]

    def _count_pieces(self, pieces: dict[int, list[_Unit]]) -> None:
        """Make piece counts exact, halving any piece a non-additive counter puts over budget."""
        todo = [p for ps in pieces.values() for p in ps if p.estimated or not self.counts_add_up]
        while todo:
            for piece, n in zip(todo, self._count([p.text for p in todo]), strict=True):
                piece.tokens, piece.estimated = n, False
            todo = []
            for key, unit_pieces in pieces.items():
                if all(p.tokens <= self.max_tokens or len(p.text) <= 1 for p in unit_pieces):
                    continue
                pieces[key] = []
                for p in unit_pieces:
                    fits = p.tokens <= self.max_tokens or len(p.text) <= 1
                    halves = [p] if fits else list(_halve(p))
                    pieces[key] += halves
                    todo += halves if len(halves) > 1 else []

    def _fit(
        self, per_section: list[list[_Unit]], stop: threading.Event | None = None
    ) -> list[list[tuple[str, int]]]:
        """Pack each section and count every chunk exactly, in one batch for the document.

        A section with a chunk over budget is packed again with a smaller budget. Only a
        counter whose count of joined sentences exceeds their summed counts (BPE with
        leading-space tokens, say) ever does that; one sentence alone always fits.
        """
        budgets = [self.max_tokens] * len(per_section)
        fitted: list[list[tuple[str, int]]] = [[] for _ in per_section]
        todo = list(range(len(per_section)))
        while todo:
            _check(stop)
            packed = {i: self._pack(per_section[i], budgets[i]) for i in todo}
            texts = {i: [_join(chunk) for chunk in packed[i]] for i in todo}
            # Sums are exact only for whitespace joins; slices of one word are glued with "".
            recount = [
                (i, j)
                for i in todo
                for j, chunk in enumerate(packed[i])
                if not self.counts_add_up or _glued(chunk)
            ]
            exact = dict(zip(recount, self._count([texts[i][j] for i, j in recount]), strict=True))
            retry = []
            for i in todo:
                fitted[i] = [
                    (text, exact[i, j] if (i, j) in exact else sum(u.tokens for u in packed[i][j]))
                    for j, text in enumerate(texts[i])
                ]
                worst = max((n for _, n in fitted[i]), default=0)
                # Below a budget of 1 every sentence is alone; stop even if one cannot fit.
                if worst > self.max_tokens and budgets[i] >= 1:
                    budgets[i] -= worst - self.max_tokens
                    retry.append(i)
            todo = retry
        return fitted

    def _pack(self, units: list[_Unit], budget: int) -> list[list[_Unit]]:
        """Greedy packing that prefers paragraph ends, with a trailing-sentence overlap."""
        chunks: list[list[_Unit]] = []
        current: list[_Unit] = []
        used = 0
        para_left = _tokens_left_in_paragraph(units)
        for i, unit in enumerate(units):
            if current:
                # Close at a paragraph end rather than cut the next paragraph, if half full.
                early = (
                    unit.para != current[-1].para
                    and used + para_left[i] > budget
                    and 2 * used >= budget
                )
                if early or used + unit.tokens > budget:
                    chunks.append(current)
                    current = self._overlap(current, budget - unit.tokens)
                    used = sum(u.tokens for u in current)
            current.append(unit)
            used += unit.tokens
        if current:
            chunks.append(current)
        return chunks

    def _overlap(self, previous: list[_Unit], room: int) -> list[_Unit]:
        budget = min(self.overlap_tokens, room)
        taken: list[_Unit] = []
        # Only whole sentences, and never the whole previous chunk again.
        for unit in reversed(previous[1:]):
            if not unit.whole or unit.tokens > budget:
                break
            taken.append(unit)
            budget -= unit.tokens
        return taken[::-1]


def _check(stop: threading.Event | None) -> None:
    if stop is not None and stop.is_set():
        raise ChunkingStopped("Chunking was stopped: the ingestion was cancelled or timed out.")


def _units(text: str) -> list[_Unit]:
    return [
        _Unit(sentence, para, sep)
        for para, paragraph in enumerate(_PARAGRAPH_BREAK.split(text))
        for sep, sentence in split_sentences(paragraph)
    ]


def _words(text: str) -> list[tuple[str, str]]:
    """(separator, word) pairs of a sentence."""
    out: list[tuple[str, str]] = []
    end = 0
    for m in _WORD.finditer(text):
        out.append(("\n" if "\n" in text[end : m.start()] else " ", m.group()))
        end = m.end()
    return out


def _pack_words(unit: _Unit, words: list[tuple[str, str, int]], budget: int) -> list[_Unit]:
    """Pieces of an over-long sentence of at most `budget` summed word tokens.

    A piece ends at a line break when one falls in its second half, so lists and tables
    without punctuation keep their rows whole.
    """
    items = _split_huge_words(words, budget)
    pieces: list[_Unit] = []
    i = start = used = line_start = used_before_line = 0
    while i < len(items):
        sep, _, n, _ = items[i]
        if i > start and used + n > budget:
            cut = line_start if 2 * used_before_line >= budget else i
            pieces.append(_piece(unit, items[start:cut], first=not pieces))
            used -= sum(item[2] for item in items[start:cut])
            start = line_start = cut
            used_before_line = 0
            continue  # item i may still not fit after the words that moved with the line
        if sep == "\n" and i > start:
            line_start, used_before_line = i, used
        used += n
        i += 1
    pieces.append(_piece(unit, items[start:], first=not pieces))
    return pieces


def _piece(unit: _Unit, items: list[tuple[str, str, int, bool]], *, first: bool) -> _Unit:
    text = items[0][1] + "".join(sep + word for sep, word, _, _ in items[1:])
    return _Unit(
        text,
        unit.para,
        unit.sep if first else items[0][0],  # "" between slices of one word
        sum(item[2] for item in items),
        whole=False,
        estimated=any(item[3] for item in items),
    )


def _split_huge_words(
    words: list[tuple[str, str, int]], budget: int
) -> list[tuple[str, str, int, bool]]:
    """Cut any single word over budget (a long URL or hash) into slices of guessed tokens."""
    out: list[tuple[str, str, int, bool]] = []
    for sep, word, n in words:
        if n <= budget:
            out.append((sep, word, n, False))
            continue
        size = max(1, len(word) * budget // n)
        for start in range(0, len(word), size):
            piece = word[start : start + size]
            out.append((sep if start == 0 else "", piece, -(-n * len(piece) // len(word)), True))
    return out


def _halve(unit: _Unit) -> tuple[_Unit, _Unit]:
    """Split a piece at the space nearest its middle (or at the middle of a single word)."""
    text = unit.text
    middle = len(text) // 2
    space = text.rfind(" ", 1, middle + 1)
    cut = space if space > 0 else middle
    left, right = text[:cut].rstrip(), text[cut:].lstrip()
    return (
        _Unit(left, unit.para, unit.sep, whole=False),
        _Unit(right, unit.para, " " if space > 0 else "", whole=False),
    )


def _glued(units: list[_Unit]) -> bool:
    """Whether `_join` glues two of the units without whitespace. A paragraph's first sentence
    has no separator of its own but is joined by a paragraph break: until 2026-12-07 it counted
    as glued, and nearly every chunk was tokenized a second time."""
    return any(u.sep == "" and u.para == p.para for p, u in zip(units, units[1:], strict=False))


def _join(units: list[_Unit]) -> str:
    parts = [units[0].text]
    for previous, unit in zip(units, units[1:], strict=False):
        parts.append(unit.sep if unit.para == previous.para else "\n\n")
        parts.append(unit.text)
    return "".join(parts)


def _tokens_left_in_paragraph(units: list[_Unit]) -> list[int]:
    """For each unit, tokens from it to the end of its paragraph."""
    left = [0] * len(units)
    running, para = 0, None
    for i in range(len(units) - 1, -1, -1):
        if units[i].para != para:
            running, para = 0, units[i].para
        running += units[i].tokens
        left[i] = running
    return left
