"""What the fake LLM answers and embeds: deterministic text from the prompt's numbered sources,
word-sized tokens, and hashed bag-of-words vectors (texts sharing words get similar vectors)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

_SOURCE_MARK = re.compile(r"^[ \t>*-]*(?:source\s*)?\[(\d+)\][ \t:.)-]*", re.I | re.M)
_SENTENCE = re.compile(r"(.+?[.!?])(?=\s|$)", re.S)


def fake_answer(messages: Sequence[Mapping[str, Any]]) -> str:
    """Cites the first numbered source of the latest message that has one, else echoes the ask."""
    for message in reversed(messages):
        text = _text_of(message)
        if mark := _SOURCE_MARK.search(text):
            block = re.split(r"\n[ \t]*\n", text[mark.end() :], maxsplit=1)[0]
            if nxt := _SOURCE_MARK.search(block):
                block = block[: nxt.start()]
            # "[1] label\nchunk text": the first line names the source, the rest is its text.
            lines = block.strip().splitlines()
            body = " ".join(lines[1:] if len(lines) > 1 else lines).strip()
            first = _SENTENCE.match(body)
            sentence = first.group(1) if first else " ".join(body.split()[:40])
            return f"According to [{mark.group(1)}], {' '.join(sentence.split())}"
    question = next((_text_of(m) for m in reversed(messages) if m.get("role") == "user"), "")
    return f"No sources were given for: {' '.join(question.split()[:40])}"


def _text_of(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # OpenAI content parts
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def word_tokens(text: str, max_tokens: int | None) -> tuple[list[str], bool]:
    """Word-sized tokens that concatenate back to `text`, cut at `max_tokens`."""
    tokens = re.findall(r"\s*\S+", text)
    if max_tokens is not None and 0 <= max_tokens < len(tokens):
        return tokens[:max_tokens], True
    return tokens, False


def count_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    return sum(len(_text_of(m).split()) for m in messages)


@lru_cache(maxsize=65536)
def _word_hash(word: str) -> int:
    # blake2b, not hash(): vectors must be equal across processes.
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")


def hashed_embeddings(texts: Sequence[str], dim: int) -> np.ndarray:
    """Signed hashed bag-of-words, L2-normalised float32 rows."""
    out = np.zeros((len(texts), dim), np.float32)
    for row, text in enumerate(texts):
        for word in re.findall(r"\w+", text.lower()) or [""]:
            h = _word_hash(word)
            out[row, h % dim] += 1.0 if (h >> 32) & 1 else -1.0
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.where(norms > 0, norms, 1.0)
