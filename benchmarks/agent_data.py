"""Builds benchmarks/data/agent/grounding.jsonl: answer sentences labelled supported (1) or not (0)
against the passage they cite, from public text installed by Debian (netbase's /etc/services and
/etc/protocols) and Python's own docstrings (the corpus the other benchmarks use).

    python benchmarks/agent_data.py   # rewrites the file; labels come from how each is built

Every passage is a window of rows, so the near-misses are hard: the wrong number of an
unsupported sentence is usually *in* the passage, on a neighbour's row; or the entity is a
neighbour's ("pop3" for "pop3s"). Items alternate between the dev and the test split.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data" / "agent" / "grounding.jsonl"
_ROW = re.compile(r"^([a-z][\w\-]*)\s+(\d+)", re.M)
_TEMPLATES = ("The {m} of {e} is {n} [1].", "{e} uses {m} {n} [1].", "{n} is the {m} of {e} [1].",
              "According to the table, {e} has {m} {n} [1].")


def _rows(path: str) -> list[tuple[str, int, str]]:
    seen: set[str] = set()
    out = []
    for line in Path(path).read_text().splitlines():
        m = _ROW.match(line)
        if m and m.group(1) not in seen:
            seen.add(m.group(1))
            out.append((m.group(1), int(m.group(2)), line))
    return out


def _figure_items(path: str, metric: str, rng: random.Random, n: int) -> list[dict[str, object]]:
    rows = _rows(path)
    items: list[dict[str, object]] = []
    for i in sorted(rng.sample(range(3, len(rows) - 3), n)):
        entity, number, _ = rows[i]
        window = "\n".join(r[2] for r in rows[i - 3:i + 4])
        neighbour = rows[i + rng.choice((-2, -1, 1, 2))]
        t = rng.choice(_TEMPLATES)
        question = f"What is the {metric} of {entity}?"
        items.append({"question": question, "sentence": t.format(m=metric, e=entity, n=number),
                      "source": window, "label": 1, "why": "the row says so"})
        t = rng.choice(_TEMPLATES)
        items.append({"question": question,
                      "sentence": t.format(m=metric, e=entity, n=neighbour[1]), "source": window,
                      "label": 0, "why": "a neighbour's number, in the same passage"})
        t = rng.choice(_TEMPLATES)
        items.append({"question": f"What is the {metric} of {neighbour[0]}?",
                      "sentence": t.format(m=metric, e=neighbour[0], n=number), "source": window,
                      "label": 0, "why": "a neighbour's name with this row's number"})
    return items


# Sentences about the docstrings of the standard library (the corpus of benchmarks/corpus.py).
_PROSE = [
    ("What is a heap?", 
     "Heap queue algorithm (a.k.a. priority queue). Heaps are arrays for which a[k] <= a[2*k+1] "
     "and a[k] <= a[2*k+2] for all k, counting elements from 0. The interesting property of a "
     "heap is that a[0] is always its smallest element.",
     [("In a heap, a[0] is always the smallest element [1].", 1),
      ("A heap is also called a priority queue [1].", 1),
      ("In a heap, a[0] is always the largest element [1].", 0),
      ("Heaps count their elements from 1 [1].", 0)]),
    ("What does the bisect module do?", 
     "Bisection algorithms. This module provides support for maintaining a list in sorted order "
     "without having to sort the list after each insertion.",
     [("The bisect module keeps a list in sorted order without sorting it after each "
       "insertion [1].", 1),
      ("The bisect module sorts the list after each insertion [1].", 0),
      ("The bisect module maintains a hash table of the items [1].", 0)]),
    ("What is JSON?", 
     "JSON (JavaScript Object Notation) is a subset of JavaScript syntax (ECMA-262 3rd edition) "
     "used as a lightweight data interchange format.",
     [("JSON is a lightweight data interchange format [1].", 1),
      ("JSON is a subset of JavaScript syntax [1].", 1),
      ("JSON is a binary serialization format of Python objects [1].", 0),
      ("JSON follows the 5th edition of ECMA-262 [1].", 0)]),
    ("What does the pickle module do?", 
     "The pickle module implements binary protocols for serializing and de-serializing a Python "
     "object structure. The pickle module is not secure. Only unpickle data you trust.",
     [("Only unpickle data you trust [1].", 1),
      ("The pickle module serializes Python object structures with binary protocols [1].", 1),
      ("The pickle module encrypts the data it writes [1].", 0),
      ("The pickle module uses a text protocol based on XML [1].", 0)]),
    ("What is the secrets module for?", 
     "The secrets module is used for generating cryptographically strong random numbers "
     "suitable for managing data such as passwords, account authentication, security tokens, "
     "and related secrets.",
     [("The secrets module generates cryptographically strong random numbers [1].", 1),
      ("The secrets module is suitable for managing passwords and security tokens [1].", 1),
      ("The secrets module is meant for modelling and simulation [1].", 0),
      ("The secrets module stores passwords in a keyring [1].", 0)]),
]


def build() -> list[dict[str, object]]:
    rng = random.Random(11)
    items = _figure_items("/etc/services", "port", rng, 14)
    items += _figure_items("/etc/protocols", "protocol number", rng, 8)
    for question, source, sentences in _PROSE:
        items += [{"question": question, "sentence": s, "source": source, "label": label,
                   "why": "paraphrase" if label else "contradicts or is absent"}
                  for s, label in sentences]
    for i, item in enumerate(items):
        item["split"] = "dev" if i % 2 == 0 else "test"
    return items


if __name__ == "__main__":
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("".join(json.dumps(item) + "\n" for item in build()))
    print(f"{OUT}: {len(build())} sentences")
