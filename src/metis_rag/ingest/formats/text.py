"""What every format shares: sections, text normalisation and decoding, and plain text itself."""

from __future__ import annotations

import codecs
import re
import unicodedata
from dataclasses import dataclass

from ..limits import ParseLimits


@dataclass(frozen=True, slots=True)
class Section:
    """Text under one heading on one page (`page` is 1-based, None for formats without pages)."""

    text: str
    page: int | None
    heading: str | None


@dataclass(frozen=True, slots=True)
class ParsedDocument:
    title: str | None
    mime: str
    sections: list[Section]


_NEWLINES = re.compile(r"\r\n?|[\x0b\x0c\x85\u2028\u2029]")
_HYPHEN_BREAK = re.compile(r"(?<=[^\W\d_])[-\u00ad][ \t]*\n[ \t]*(?=[a-z\u00df-\u00ff])")
_INVISIBLE = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f\u00ad\u200b\u2060\ufeff]")
_SPACES = re.compile(r"[^\S\n]+")
_SPACE_AROUND_NEWLINE = re.compile(r" ?\n ?")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_text(text: str, *, join_hyphens: bool = False) -> str:
    """NFKC, one kind of newline, no control chars, single spaces, at most one blank line."""
    text = _NEWLINES.sub("\n", unicodedata.normalize("NFKC", text))
    if join_hyphens:
        text = _HYPHEN_BREAK.sub("", text)
    text = _SPACES.sub(" ", _INVISIBLE.sub("", text))
    return _BLANK_LINES.sub("\n\n", _SPACE_AROUND_NEWLINE.sub("\n", text)).strip()


def decode_text(data: bytes) -> str:
    for bom, encoding in (
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            return data.decode(encoding, errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:  # cp1252 leaves five bytes undefined; latin-1 maps them all
        return data.decode("latin-1")


def one_line(text: str) -> str:
    return " ".join(normalize_text(text).split())


def decode_within(data: bytes, name: str, limits: ParseLimits) -> str:
    text = decode_text(data)
    limits.check_text(name, len(text))  # before the regexes below spend time on it
    return text


def parse_txt(data: bytes, name: str, limits: ParseLimits) -> tuple[str | None, list[Section]]:
    return None, [Section(normalize_text(decode_within(data, name, limits)), None, None)]


class SectionBuilder:
    """Collects paragraphs and starts a new `Section` at each heading."""

    def __init__(self) -> None:
        self.sections: list[Section] = []
        self.heading: str | None = None
        self.parts: list[str] = []

    def start(self, heading: str) -> None:
        self.flush()
        self.heading = one_line(heading) or self.heading

    def flush(self) -> None:
        text = normalize_text("\n".join(self.parts))
        if text or self.heading:  # `parse` drops bodiless headings unless there is nothing else
            self.sections.append(Section(text, None, self.heading))
        self.parts = []
