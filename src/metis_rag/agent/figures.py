"""Figures in passages: the number a passage gives for an entity, without an LLM.

"ssh\t\t22/tcp", "tcp 6 TCP", "the port of ssh is 22", "22 (ssh)": the number right after the
entity on its line wins, then a number a few words after it, then one just before it. The
entity must stand alone ("http" is not "https" nor "http-alt"), and a line that *starts* with
the entity (a table row) beats a line that only mentions it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .tools import ToolCitation

_NUMBER = r"(-?\d[\d,]*(?:\.\d+)?)"
_WORDS_BETWEEN = 4


@dataclass(frozen=True, slots=True)
class Figure:
    value: float
    text: str  # as written in the passage
    line: str
    citation: ToolCitation


def _entity(entity: str) -> str:
    return r"(?<![\w\-.])" + re.escape(entity) + r"(?![\w\-])"


def _patterns(entity: str) -> list[tuple[int, re.Pattern[str]]]:
    e = _entity(entity)
    return [
        (0, re.compile(r"^\s*" + e + r"\s+" + _NUMBER, re.I | re.M)),  # a table row
        (1, re.compile(e + r"[ \t:=]+(?:is\s+|was\s+|of\s+)?" + _NUMBER, re.I)),
        (2, re.compile(e + r"(?:[ \t]+[^\s\d#]+){1," + str(_WORDS_BETWEEN) + r"}[ \t]+"
                       + _NUMBER, re.I)),
        (3, re.compile(_NUMBER + r"[ \t]*\(?" + e, re.I)),
    ]


def find_figure(entity: str, citations: Sequence[ToolCitation]) -> Figure | None:
    """The best-placed figure for `entity` across the passages (rank, then passage order)."""
    best: tuple[int, int, Figure] | None = None
    patterns = _patterns(entity.strip())
    for order, citation in enumerate(citations):
        for rank, pattern in patterns:
            if best is not None and (rank, order) >= best[:2]:
                break
            for line in citation.text.splitlines() or [citation.text]:
                m = pattern.search(line)
                if m is None:
                    continue
                raw = m.group(1)
                try:
                    value = float(raw.replace(",", ""))
                except ValueError:
                    continue
                best = (rank, order, Figure(value, raw, line.strip()[:200], citation))
                break
    return best[2] if best else None


def shown(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:.6g}"
