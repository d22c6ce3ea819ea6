from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from metis_rag.ingest.chunker import ChunkDraft, Chunker
from metis_rag.ingest.parsers import ParsedDocument, Section, parse
from metis_rag.ingest.sentences import split_sentences

WORDS = (
    "the of and to in is was for on that with as by at from which were are this be it had "
    "retrieval citation embedding tokenizer paragraph chapter river mountain Dr. e.g. 3.14 "
    "approximately municipality electroencephalography naïve café 東京"
).split()


def sentence(rng: random.Random, low: int = 4, high: int = 28) -> str:
    # A random number in each sentence keeps texts unique, so a chunk is found at one place.
    words = [rng.choice(WORDS) for _ in range(rng.randint(low, high) - 1)]
    text = " ".join([*words, str(rng.randrange(10**6))])
    return text[0].upper() + text[1:] + rng.choice(".?!.")


def paragraph(rng: random.Random, sentences: int) -> str:
    return " ".join(sentence(rng) for _ in range(sentences))


def synthetic_document(pages: int, seed: int = 7) -> ParsedDocument:
    """Pages of several paragraphs; a new heading every fifth page."""
    rng = random.Random(seed)
    sections = []
    for page in range(1, pages + 1):
        text = "\n\n".join(paragraph(rng, rng.randint(1, 7)) for _ in range(rng.randint(2, 6)))
        sections.append(Section(text, page, f"Chapter {(page - 1) // 5 + 1}"))
    return ParsedDocument(title="Synthetic", mime="text/plain", sections=sections)


def char_counter(texts: Sequence[str]) -> list[int]:
    """A counter whose count of joined texts is not the sum of the parts' counts."""
    return [len(t) // 4 + 1 for t in texts]


def locate(chunks: list[ChunkDraft], doc: ParsedDocument) -> list[tuple[int, int, int]]:
    """(section index, start, end) of every chunk inside its section's text, in order.

    A chunk starts inside the previous one (overlap) or right after it, so the last match
    that starts by then is the one; a section's first chunk starts at its beginning.
    """
    spans: list[tuple[int, int, int]] = []
    section, low, high = 0, 0, 0
    for chunk in chunks:
        text = doc.sections[section].text
        found = text.rfind(chunk.text, low, high + len(chunk.text))
        if found < 0:
            section, low, high = section + 1, 0, 0
            assert section < len(doc.sections), f"chunk {chunk.position} is not in order"
            text = doc.sections[section].text
            found = text.rfind(chunk.text, 0, len(chunk.text))
            assert found == 0, f"chunk {chunk.position} does not start its section"
        end = found + len(chunk.text)
        spans.append((section, found, end))
        low, high = found + 1, len(text) - len(text[end:].lstrip())
    return spans


def check_invariants(chunks: list[ChunkDraft], doc: ParsedDocument, chunker: Chunker) -> None:
    assert [c.position for c in chunks] == list(range(len(chunks)))
    assert all(c.text.strip() == c.text and c.text for c in chunks)
    assert max(c.token_count for c in chunks) <= chunker.max_tokens
    assert [c.token_count for c in chunks] == chunker.count_tokens([c.text for c in chunks])
    spans = locate(chunks, doc)
    for chunk, (section, _, _) in zip(chunks, spans, strict=True):
        assert (chunk.page, chunk.section) == (
            doc.sections[section].page,
            doc.sections[section].heading,
        )
    # Together the chunks cover every word of every section.
    for index, section in enumerate(doc.sections):
        covered = bytearray(len(section.text))
        for s, start, end in spans:
            if s == index:
                covered[start:end] = b"\x01" * (end - start)
        assert all(covered[i] or section.text[i].isspace() for i in range(len(section.text)))


# --- sentences ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "sentences"),
    [
        ("One. Two! Three? Four", ["One.", "Two!", "Three?", "Four"]),
        ("Pi is 3.14 today. Next one.", ["Pi is 3.14 today.", "Next one."]),
        (
            "Dr. Watson met Mr. Holmes. Then they left.",
            ["Dr. Watson met Mr. Holmes.", "Then they left."],
        ),
        (
            "Use tools, e.g. hammers. I.e. Nails too.",
            ["Use tools, e.g. hammers.", "I.e. Nails too."],
        ),
        (
            "J. R. R. Tolkien wrote it. He was born in 1892.",
            ["J. R. R. Tolkien wrote it.", "He was born in 1892."],
        ),
        (
            "The U.S. Army came. It left at 5 p.m. on time.",
            ["The U.S. Army came.", "It left at 5 p.m. on time."],
        ),
        ('He said "Stop." She stopped.', ['He said "Stop."', "She stopped."]),
        ("It ended (finally.) New start.", ["It ended (finally.)", "New start."]),
        ("See Fig. 3 and No. 5 for details.", ["See Fig. 3 and No. 5 for details."]),
        ("这是第一句。这是第二句！", ["这是第一句。", "这是第二句！"]),
        ("Items:\n- apples\n- pears\n1. first", ["Items:", "- apples", "- pears", "1. first"]),
        ("wait... what", ["wait... what"]),
    ],
)
def test_split_sentences(text: str, sentences: list[str]) -> None:
    assert [s for _, s in split_sentences(text)] == sentences


def test_split_sentences_keeps_the_separators() -> None:
    assert split_sentences("A b.\nC d. E f.") == [("", "A b."), ("\n", "C d."), (" ", "E f.")]


# --- chunking -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_tokens", "overlap_tokens"), [(128, 24), (64, 0), (32, 16), (256, 48)]
)
def test_invariants_with_the_real_tokenizer(count_tokens, max_tokens, overlap_tokens) -> None:
    doc = synthetic_document(12)
    chunker = Chunker(count_tokens, max_tokens, overlap_tokens)
    chunks = chunker.chunk(doc)
    check_invariants(chunks, doc, chunker)
    assert len(chunks) > len(doc.sections)


def test_overlap_is_whole_trailing_sentences_within_budget(count_tokens) -> None:
    rng = random.Random(3)
    texts = [" ".join(sentence(rng, 3, 9) for _ in range(40)) for _ in range(3)]
    doc = ParsedDocument(None, "text/plain", [Section(t, n, None) for n, t in enumerate(texts)])
    chunker = Chunker(count_tokens, 96, 24)
    chunks = chunker.chunk(doc)
    spans = locate(chunks, doc)
    overlaps = []
    for (prev, (ps, _, pend)), (chunk, (cs, cstart, _)) in zip(
        zip(chunks, spans, strict=True), zip(chunks[1:], spans[1:], strict=True), strict=False
    ):
        if ps != cs:
            assert cstart == 0 or doc.sections[cs].text[:cstart].isspace()
            continue
        shared = doc.sections[cs].text[cstart:pend] if cstart < pend else ""
        if shared:
            assert prev.text.endswith(shared) and chunk.text.startswith(shared)
            assert shared != prev.text  # never the whole previous chunk
            assert shared[-1] in ".?!"  # whole sentences only
            assert count_tokens([shared])[0] <= 24
        overlaps.append(len(shared))
    assert sum(1 for n in overlaps if n) > len(overlaps) // 2


def test_no_overlap_when_disabled(count_tokens) -> None:
    doc = synthetic_document(6)
    chunks = Chunker(count_tokens, 64, 0).chunk(doc)
    spans = locate(chunks, doc)
    for (s1, _, end), (s2, start, _) in zip(spans, spans[1:], strict=False):
        assert s1 != s2 or start >= end


def test_chunks_never_span_pages_or_sections(count_tokens) -> None:
    doc = ParsedDocument(
        None,
        "application/pdf",
        [
            Section("Alpha page one. Short.", 1, "A"),
            Section("Alpha page two.", 2, "A"),
            Section("Beta on page two.", 2, "B"),
        ],
    )
    chunks = Chunker(count_tokens, 128, 24).chunk(doc)
    assert [(c.text, c.page, c.section) for c in chunks] == [
        ("Alpha page one. Short.", 1, "A"),
        ("Alpha page two.", 2, "A"),
        ("Beta on page two.", 2, "B"),
    ]


def test_breaks_between_paragraphs_rather_than_inside(count_tokens) -> None:
    rng = random.Random(11)
    paragraphs = []
    while len(paragraphs) < 6:
        text = paragraph(rng, 4)
        if 65 <= count_tokens([text])[0] <= 80:  # two never fit in 128
            paragraphs.append(text)
    doc = ParsedDocument(None, "text/plain", [Section("\n\n".join(paragraphs), None, None)])
    chunks = Chunker(count_tokens, 128, 0).chunk(doc)
    assert [c.text for c in chunks] == paragraphs


def test_a_sentence_longer_than_the_budget_is_split_by_words(count_tokens) -> None:
    rng = random.Random(5)
    endless = " ".join(rng.choice(WORDS[:20]) for _ in range(700))  # no sentence end at all
    text = f"Short opener. {endless} and done. Closing sentence here."
    doc = ParsedDocument(None, "text/plain", [Section(text, None, None)])
    chunker = Chunker(count_tokens, 64, 16)
    chunks = chunker.chunk(doc)
    check_invariants(chunks, doc, chunker)
    assert len(chunks) >= count_tokens([endless])[0] // 64
    # Pieces of the long sentence do not overlap: read in order they give the sentence back.
    pieces = [c.text for c in chunks if c.text not in ("Short opener.", "Closing sentence here.")]
    assert " ".join(pieces).replace("Short opener. ", "").startswith(endless[:200])


def test_an_unpunctuated_table_is_split_between_rows(count_tokens) -> None:
    rows = [f"row {i} | alpha beta gamma | {i * 7} units" for i in range(60)]
    doc = ParsedDocument(None, "text/plain", [Section("\n".join(rows), None, None)])
    chunker = Chunker(count_tokens, 64, 8)
    chunks = chunker.chunk(doc)
    check_invariants(chunks, doc, chunker)
    assert len(chunks) > 1
    assert [line for c in chunks for line in c.text.split("\n")] == rows


def messy_text(rng: random.Random) -> str:
    """Paragraphs, line breaks, list items, long run-ons and very long words, mixed."""
    blocks = []
    for _ in range(rng.randint(1, 12)):
        kind = rng.random()
        if kind < 0.5:
            blocks.append(paragraph(rng, rng.randint(1, 8)))
        elif kind < 0.7:
            blocks.append("\n".join(f"- {sentence(rng, 1, 6)}" for _ in range(rng.randint(2, 9))))
        elif kind < 0.85:
            run_on = (rng.choice([*WORDS, str(rng.random())]) for _ in range(rng.randint(50, 400)))
            blocks.append(" ".join(run_on))
        else:
            blob = "".join(rng.choice("0123456789abcdef") for _ in range(rng.randint(50, 900)))
            blocks.append(f"{blob} {sentence(rng)}")
    return "\n\n".join(blocks)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("counter", ["wordpiece", "wordpiece-summed", "chars"])
def test_invariants_on_messy_documents(count_tokens, seed: int, counter: str) -> None:
    rng = random.Random(seed)
    doc = ParsedDocument(
        None,
        "text/plain",
        [
            Section(messy_text(rng), rng.choice([None, 1, 2]), rng.choice([None, "H"]))
            for _ in range(4)
        ],
    )
    max_tokens = rng.choice([16, 48, 128])
    chunker = Chunker(
        char_counter if counter == "chars" else count_tokens,
        max_tokens,
        rng.randrange(0, max_tokens // 2),
        counts_add_up=counter == "wordpiece-summed",
    )
    check_invariants(chunker.chunk(doc), doc, chunker)


def test_any_token_counter_gets_exact_counts() -> None:
    doc = synthetic_document(8)
    chunker = Chunker(char_counter, 40, 8)
    chunks = chunker.chunk(doc)
    check_invariants(chunks, doc, chunker)


def test_a_huge_word_is_cut_into_slices() -> None:
    blob = "".join(random.Random(1).choice("abcdef0123456789") for _ in range(3000))
    doc = ParsedDocument(None, "text/plain", [Section(f"Hash follows. {blob} End.", None, None)])
    chunker = Chunker(char_counter, 50, 10)
    chunks = chunker.chunk(doc)
    assert all(c.token_count <= 50 for c in chunks)
    assert [c.token_count for c in chunks] == char_counter([c.text for c in chunks])
    assert "".join(c.text.replace(" ", "") for c in chunks[1:-1]) in blob


def test_counts_add_up_gives_the_same_chunks(count_tokens) -> None:
    doc = synthetic_document(10)
    exact = Chunker(count_tokens, 128, 24).chunk(doc)
    summed = Chunker(count_tokens, 128, 24, counts_add_up=True).chunk(doc)
    assert summed == exact


def test_deterministic(count_tokens) -> None:
    doc = synthetic_document(5)
    chunker = Chunker(count_tokens, 100, 20)
    assert chunker.chunk(doc) == chunker.chunk(doc) == Chunker(count_tokens, 100, 20).chunk(doc)


def test_empty_document_has_no_chunks(count_tokens) -> None:
    assert Chunker(count_tokens, 128, 24).chunk(ParsedDocument(None, "text/plain", [])) == []


@pytest.mark.parametrize(("max_tokens", "overlap_tokens"), [(0, 0), (64, 64), (64, -1)])
def test_rejects_bad_budgets(count_tokens, max_tokens: int, overlap_tokens: int) -> None:
    with pytest.raises(ValueError):
        Chunker(count_tokens, max_tokens, overlap_tokens)


def test_parsed_pdf_chunks_cite_pages_and_headings(count_tokens, make_pdf) -> None:
    rng = random.Random(9)
    pages = [
        (
            "Setup" if n == 0 else "Operation" if n == 2 else None,
            [sentence(rng, 6, 12) for _ in range(30)],
        )
        for n in range(4)
    ]
    chunks = Chunker(count_tokens, 64, 12).chunk(parse(make_pdf(pages), "guide.pdf"))
    assert {(c.page, c.section) for c in chunks} == {
        (1, "Setup"),
        (2, "Setup"),
        (3, "Operation"),
        (4, "Operation"),
    }
    assert [c.page for c in chunks] == sorted(c.page for c in chunks)


def test_with_counts_that_add_up_each_text_is_tokenized_once(count_tokens) -> None:
    """A paragraph's first sentence is joined by a paragraph break, not glued: chunks made of
    whole paragraphs need no second count (until 2026-12-07 nearly every chunk had one)."""
    doc = synthetic_document(10)
    counted: list[int] = []

    def counting(texts: Sequence[str]) -> list[int]:
        counted.append(sum(len(t) for t in texts))
        return count_tokens(texts)

    chunks = Chunker(counting, 128, 24, counts_add_up=True).chunk(doc)
    assert chunks == Chunker(count_tokens, 128, 24).chunk(doc)
    assert len({c.text.count("\n\n") > 0 for c in chunks}) == 2  # chunks across paragraphs too
    assert sum(counted) <= sum(len(s.text) for s in doc.sections)


def test_the_packaged_tokenizer_counts_add_up_and_a_bpe_one_does_not(tmp_path) -> None:
    import json

    from metis_rag.embed.packaged import counts_add_up, tokenizer_file

    assert counts_add_up(tokenizer_file())
    bpe = tmp_path / "tokenizer.json"
    bpe.write_text(json.dumps({"model": {"type": "BPE"}, "pre_tokenizer": {"type": "ByteLevel"}}))
    assert not counts_add_up(str(bpe))
