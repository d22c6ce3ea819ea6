"""PDF: one section per page, split further where the outline says a heading starts."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ...errors import InvalidDocument
from ..limits import ParseLimits
from .text import Section, normalize_text, one_line

if TYPE_CHECKING:
    from pypdf import PdfReader

logger = logging.getLogger("metis_rag.ingest.parsers")  # the name it had before the split


def parse_pdf(data: bytes, name: str, limits: ParseLimits) -> tuple[str | None, list[Section]]:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError

    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted:
        try:
            opened = bool(reader.decrypt(""))
        except DependencyError as exc:  # AES needs `cryptography`, which may not be installed
            logger.warning("%s: cannot decrypt: %s", name, exc)
            opened = False
        if not opened:
            raise InvalidDocument(
                f"{name} is encrypted; remove the password or protection and upload it again.",
                code="encrypted_document",
            )
    limits.check_pages(name, _declared_pages(reader))  # a cheap refusal before the page tree
    limits.check_pages(name, len(reader.pages))
    starts = _outline_starts(reader)
    heading: str | None = None
    sections: list[Section] = []
    chars = 0
    for page_no, page in enumerate(reader.pages, start=1):
        try:
            text = normalize_text(page.extract_text() or "", join_hyphens=True)
        except Exception as exc:  # one bad page should not lose the whole document
            logger.warning("%s: skipped page %d: %s", name, page_no, exc)
            text = ""
        chars += len(text)
        limits.check_text(name, chars)
        heading = _split_pdf_page(text, page_no, heading, starts.get(page_no - 1, []), sections)
    title = None
    try:
        meta = reader.metadata
        title = one_line(str(meta.get("/Title") or "") if meta is not None else "") or None
    except Exception:
        logger.debug("%s: unreadable PDF metadata", name)
    return title, sections


def _declared_pages(reader: PdfReader) -> int:
    """The page count the document claims (its root /Count); 0 when it claims none."""
    try:
        trailer: Any = reader.trailer  # a PDF's own dictionaries: any shape, checked below
        count = trailer["/Root"]["/Pages"].get("/Count", 0)
        return int(count) if isinstance(count, int) else 0
    except Exception:
        return 0


def _outline_starts(reader: PdfReader) -> dict[int, list[str]]:
    """Outline (bookmark) titles by the 0-based page they point to, in outline order."""
    starts: dict[int, list[str]] = {}
    try:
        stack: list[Iterator[Any]] = [iter(reader.outline)]
        while stack:
            for item in stack[-1]:
                if isinstance(item, list):
                    stack.append(iter(item))
                    break
                page = reader.get_destination_page_number(item)
                title = one_line(str(item.title or ""))
                if page is not None and page >= 0 and title:
                    starts.setdefault(page, []).append(title)
            else:
                stack.pop()
    except Exception as exc:  # a broken outline costs us headings, not the document
        logger.warning("unreadable PDF outline: %s", exc)
    return starts


def _split_pdf_page(
    text: str, page_no: int, heading: str | None, titles: list[str], out: list[Section]
) -> str | None:
    """Append the page's sections to `out`; return the heading in force at the page's end."""
    cursor = 0
    for title in titles:
        words = r"\s+".join(re.escape(w) for w in title.split())
        found = re.compile(r"(?m)^[ \t]*" + words, re.IGNORECASE).search(
            text, cursor
        ) or re.compile(words, re.IGNORECASE).search(text, cursor)
        # A bookmark whose title is not in the text is taken to start where we are.
        start, end = (found.start(), found.end()) if found else (cursor, cursor)
        if body := text[cursor:start].strip():
            out.append(Section(body, page_no, heading))
        heading, cursor = title, end
    if body := text[cursor:].strip():
        out.append(Section(body, page_no, heading))
    return heading


# --- DOCX -----------------------------------------------------------------------------------
