"""Turn an uploaded file (txt, md, html, pdf, docx) into normalised text sections.

`parse` is the entry point; each format's parser lives in `ingest/formats/`. A section is a run
of text under one heading on one page, so a chunk cut from it can be cited exactly. Problems with
the file itself raise `InvalidDocument` (empty, corrupt, encrypted, or past a `ParseLimits` limit)
or `UnsupportedMediaType`, never a library's own exception. Time and memory are bounded by the
process that runs it (`sandbox`).
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import InvalidDocument, MetisError
from .formats.docx import parse_docx
from .formats.html import parse_html
from .formats.markdown import parse_markdown
from .formats.pdf import parse_pdf
from .formats.text import ParsedDocument, Section, decode_text, normalize_text, parse_txt
from .limits import ParseLimits
from .sniff import DOCX, HEAD_BYTES, KIND, PDF, SUPPORTED, detect_type, sanitize_filename

__all__ = ["DOCX", "PDF", "SUPPORTED", "ParseLimits", "ParsedDocument", "Section", "decode_text",
           "detect_type", "normalize_text", "parse", "sanitize_filename"]

# pypdf, python-docx and selectolax are imported inside the format modules' functions: together
# they take about half a second to import, which every CLI start would otherwise pay.

_PARSERS: dict[str, Callable[[bytes, str, ParseLimits], tuple[str | None, list[Section]]]] = {
    "text/plain": parse_txt,
    "text/markdown": parse_markdown,
    "text/html": parse_html,
    PDF: parse_pdf,
    DOCX: parse_docx,
}


def parse(data: bytes, filename: str, limits: ParseLimits | None = None) -> ParsedDocument:
    """Detect the type of `data`, extract its text and split it into sections."""
    limits = limits or ParseLimits()
    name = sanitize_filename(filename)
    mime = detect_type(name, data[:HEAD_BYTES])
    try:
        title, sections = _PARSERS[mime](data, name, limits)
    except MetisError:
        raise
    except (MemoryError, RecursionError):
        raise  # the sandbox turns these into parse_memory / a refusal of its own
    except Exception as exc:
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise InvalidDocument(
            f"{name} cannot be read: the {KIND[mime]} is damaged or not a valid file.",
            code="corrupt_document",
            reason=reason,
        ) from exc
    sections = _with_text(sections)
    limits.check_text(name, sum(len(s.text) for s in sections))
    if not sections:
        if mime == PDF:
            raise InvalidDocument(
                f"{name} has no text layer (it may be a scanned document); "
                "run OCR on it and upload it again.",
                code="empty_document",
            )
        raise InvalidDocument(f"{name} contains no text.", code="empty_document")
    return ParsedDocument(title=title, mime=mime, sections=sections)


def _with_text(sections: list[Section]) -> list[Section]:
    kept = [s for s in sections if s.text.strip()]
    if kept:
        return kept
    # Only headings: their words are the document's text.
    return [Section(s.heading, s.page, s.heading) for s in sections if s.heading]
