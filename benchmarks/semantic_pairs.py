"""Labelled question pairs and a sibling-question workload for the semantic cache.

    python benchmarks/semantic_pairs.py          # rewrite benchmarks/data/semantic_pairs.jsonl

The source is `benchmarks/data/semantic/*.txt`: short passages from four freely licensed
corpora installed on Debian (manual pages, the Python documentation of python3-doc, the Debian
Reference of debian-reference-en, the licence texts of /usr/share/common-licenses), each with
2-5 different questions about it, each question in one or more wordings (paraphrases: reordered,
synonyms, terse keyword form, polite/long form, typos). Each non-first question names the
pattern by which it differs from the first: `wh_word`, `negation`, `order` (direction/order),
`comparison`, `attribute` (same subject, another attribute), `entity` (same template, another
entity), `number`.

Pairs: two wordings of one question are the same question (label 1, pattern `paraphrase`); a
wording of the first question with one of another is not (label 0, that question's pattern),
and two non-first questions of a passage are not either (pattern `sibling`). The split is by
passage (a passage's pairs are all in `calibration` or all in `test`), by a hash of its id, so
adding passages never moves old ones. Tune on calibration only.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
SOURCES = DATA / "semantic"
PAIRS = DATA / "semantic_pairs.jsonl"
_LINE = re.compile(r"^(?P<letter>[A-Z])(?P<plus>\+)?(?:\[(?P<pattern>\w+)\])?\s+(?P<text>.+)$")


@dataclass(slots=True)
class Question:
    letter: str
    pattern: str | None  # how it differs from the passage's first question (None for "A")
    wordings: list[str]


@dataclass(slots=True)
class Passage:
    id: str
    corpus: str
    source: str
    text: str
    questions: list[Question]

    @property
    def split(self) -> str:
        return "test" if hashlib.blake2b(self.id.encode()).digest()[0] % 2 else "calibration"


@dataclass(frozen=True, slots=True)
class Pair:
    a: str
    b: str
    same: bool
    pattern: str
    passage: str
    corpus: str
    split: str


def load_passages(directory: Path = SOURCES) -> list[Passage]:
    passages: dict[str, Passage] = {}
    # "extra.txt" adds to passages of the other files, so it is read last.
    for path in sorted(directory.glob("*.txt"), key=lambda p: (p.stem == "extra", p.name)):
        current: Passage | None = None
        for n, raw in enumerate(path.read_text().splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("@ "):
                pid, _, source = (part.strip() for part in line[2:].partition("|"))
                current = passages.get(pid)
                if current is None:
                    current = passages[pid] = Passage(pid, path.stem, source, "", [])
                continue
            if current is None:
                raise ValueError(f"{path.name}:{n}: a line before any '@ id'")
            if line.startswith("P "):
                current.text = line[2:].strip()
                continue
            m = _LINE.match(line)
            if m is None:
                raise ValueError(f"{path.name}:{n}: cannot parse {line!r}")
            wordings = [w.strip() for w in m["text"].split(" | ") if w.strip()]
            if m["plus"]:
                current.questions[0].wordings.extend(wordings)
            else:
                letter = m["letter"]
                pattern = m["pattern"] or (None if letter == "A" else "attribute")
                current.questions.append(Question(letter, pattern, wordings))
    for p in passages.values():
        if not p.text or not p.questions or p.questions[0].letter != "A":
            raise ValueError(f"passage {p.id}: needs a text and a first question 'A'")
    return sorted(passages.values(), key=lambda p: p.id)


def build_pairs(passages: list[Passage]) -> list[Pair]:
    pairs: list[Pair] = []
    for p in passages:
        def pair(a: str, b: str, same: bool, pattern: str, p: Passage = p) -> None:
            pairs.append(Pair(a, b, same, pattern, p.id, p.corpus, p.split))

        for q in p.questions:
            for a, b in itertools.combinations(q.wordings, 2):
                pair(a, b, True, "paraphrase")
        first, *others = p.questions
        for q in others:
            for a, b in itertools.product(first.wordings, q.wordings):
                pair(a, b, False, q.pattern or "attribute")
        for q1, q2 in itertools.combinations(others, 2):
            for a, b in itertools.product(q1.wordings[:1], q2.wordings[:1]):
                pair(a, b, False, "sibling")
    return pairs


def load_pairs(split: str | None = None, path: Path = PAIRS) -> list[Pair]:
    rows = [Pair(**json.loads(line)) for line in path.read_text().splitlines() if line]
    return [r for r in rows if split is None or r.split == split]


def sibling_workload(passages: list[Passage]) -> list[tuple[Passage, list[tuple[str, str]]]]:
    """Per passage, the questions in the order they are asked: (intent, wording). Every
    different question is asked once (first wording); every other passage's first question is
    asked again in another wording at the end (a paraphrase that should hit)."""
    out = []
    for i, p in enumerate(passages):
        asked = [(q.letter, q.wordings[0]) for q in p.questions]
        if i % 2 == 0 and len(p.questions[0].wordings) > 1:
            asked.append(("A", p.questions[0].wordings[-1]))
        out.append((p, asked))
    return out


def main() -> None:
    passages = load_passages()
    pairs = build_pairs(passages)
    with PAIRS.open("w") as f:
        for r in pairs:
            f.write(json.dumps({"a": r.a, "b": r.b, "same": r.same, "pattern": r.pattern,
                                "passage": r.passage, "corpus": r.corpus, "split": r.split})
                    + "\n")
    counts = Counter((r.split, r.pattern) for r in pairs)
    print(f"{len(passages)} passages, {len(pairs)} pairs -> {PAIRS}", file=sys.stderr)
    for split in ("calibration", "test"):
        print(split, dict(sorted((k[1], v) for k, v in counts.items() if k[0] == split)),
              file=sys.stderr)


if __name__ == "__main__":
    main()
