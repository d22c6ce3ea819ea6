"""Turn an uploaded file (txt, md, html, pdf, docx) into normalised text sections.

`parse` is the entry point. A section is a run of text under one heading on one page, so a
chunk cut from it can be cited exactly. Problems with the file itself raise `InvalidDocument`
(empty, corrupt, encrypted, or past a `ParseLimits` limit) or `UnsupportedMediaType`, never a
library's own exception. Time and memory are bounded by the process that runs it (`sandbox`).
"""

from __future__ import annotations

import codecs
import io
import logging
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import InvalidDocument, MetisError
from .limits import ParseLimits, check_docx_archive
from .sniff import DOCX, HEAD_BYTES, KIND, PDF, SUPPORTED, detect_type, sanitize_filename

__all__ = ["DOCX", "PDF", "SUPPORTED", "ParseLimits", "ParsedDocument", "Section", "detect_type",
           "parse", "sanitize_filename"]

if TYPE_CHECKING:
    from docx.table import Table
    from pypdf import PdfReader
    from selectolax.lexbor import LexborNode

# pypdf, python-docx and selectolax are imported where used: together they take about half a
# second to import, which every CLI start would otherwise pay.

logger = logging.getLogger(__name__)

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


# --- text normalisation ---------------------------------------------------------------------

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


def _one_line(text: str) -> str:
    return " ".join(normalize_text(text).split())


# --- plain text and Markdown ----------------------------------------------------------------


def _decode_within(data: bytes, name: str, limits: ParseLimits) -> str:
    text = decode_text(data)
    limits.check_text(name, len(text))  # before the regexes below spend time on it
    return text


def _parse_txt(data: bytes, name: str, limits: ParseLimits) -> tuple[str | None, list[Section]]:
    return None, [Section(normalize_text(_decode_within(data, name, limits)), None, None)]


_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)\n(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
_FRONT_TITLE = re.compile(r"^title:[ \t]*[\"']?(.*?)[\"']?[ \t]*$", re.MULTILINE)
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_RULE = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_LINK_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*\S+")
_QUOTE = re.compile(r"^ {0,3}(?:>[ \t]?)+")
# Every pattern stops at the next delimiter instead of scanning to a distant closer: paired
# forms (`.+?` up to a matching `**`) took quadratic time on a long line of unclosed markers.
_MD_INLINE: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(`+)([^`]+)\1"), r"\2"),
    (re.compile(r"!\[([^\[\]]*)\]\([^()]*\)"), r"\1"),
    (re.compile(r"\[([^\[\]]+)\](?:\([^()]*\)|\[[^\[\]]*\])"), r"\1"),
    (re.compile(r"<((?:https?|mailto):[^>\s]+)>"), r"\1"),
    (re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>"), ""),
    # Emphasis markers are dropped where they open or close a word, paired or not.
    (re.compile(r"(?<![\w*_~])(?:\*{1,3}|_{1,3}|~~)(?=[^\s*_~])"
                r"|(?<=[^\s*_~])(?:\*{1,3}|_{1,3}|~~)(?![\w*_~])"), ""),
]


def _md_inline(line: str) -> str:
    for pattern, repl in _MD_INLINE:
        line = pattern.sub(repl, line)
    return line


class _SectionBuilder:
    """Collects paragraphs and starts a new `Section` at each heading."""

    def __init__(self) -> None:
        self.sections: list[Section] = []
        self.heading: str | None = None
        self.parts: list[str] = []

    def start(self, heading: str) -> None:
        self.flush()
        self.heading = _one_line(heading) or self.heading

    def flush(self) -> None:
        text = normalize_text("\n".join(self.parts))
        if text or self.heading:  # `parse` drops bodiless headings unless there is nothing else
            self.sections.append(Section(text, None, self.heading))
        self.parts = []


def _parse_markdown(
    data: bytes, name: str, limits: ParseLimits
) -> tuple[str | None, list[Section]]:
    text = normalize_text(_decode_within(data, name, limits)) + "\n"
    title = None
    if front := _FRONT_MATTER.match(text):
        text = text[front.end() :]
        if found := _FRONT_TITLE.search(front.group(1)):
            title = _one_line(found.group(1)) or None
    out = _SectionBuilder()
    fence = ""
    for line in text.split("\n"):
        if fence:
            if line.strip().startswith(fence):
                fence = ""
            else:
                out.parts.append(line)
            continue
        if m := _FENCE.match(line):
            fence = m.group(1)
        elif m := _ATX.match(line):
            out.start(_md_inline(m.group(2) or ""))
            title = title or (out.heading if len(m.group(1)) == 1 else None)
        elif _SETEXT.match(line) and out.parts and out.parts[-1].strip():
            heading = out.parts.pop()
            out.start(heading)
            title = title or (out.heading if line.strip()[0] == "=" else None)
        elif _RULE.match(line) or _LINK_DEF.match(line):
            out.parts.append("")
        else:
            out.parts.append(_md_inline(_QUOTE.sub("", line)))
    out.flush()
    return title, out.sections


# --- HTML -----------------------------------------------------------------------------------

_HTML_DROP = frozenset(
    "script style nav header footer noscript template svg iframe canvas object head".split()
)
_HTML_HEADINGS = frozenset("h1 h2 h3 h4 h5 h6".split())
_HTML_BLOCKS = frozenset(
    """p div section article main aside ul ol dl table blockquote pre figure figcaption form
    fieldset address hr details summary caption thead tbody tfoot body""".split()
)
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.IGNORECASE)
_CELL = "\x1f"  # marks a table cell while walking; becomes " | " between cells
_LEADING_CELL = re.compile(r"(^|\n)[ \t]*\x1f")
_HTML_WHITESPACE = re.compile(r"\s+")
_HTML_LINE_BLOCKS = frozenset("tr li dt dd".split())


def _decode_html(data: bytes) -> str:
    if not data.startswith((codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        if m := _META_CHARSET.search(data[:2048]):
            try:
                return data.decode(m.group(1).decode("ascii"), errors="replace")
            except LookupError:
                pass  # an unknown charset label: fall back to sniffing
    return decode_text(data)


def _parse_html(data: bytes, name: str, limits: ParseLimits) -> tuple[str | None, list[Section]]:
    from selectolax.lexbor import LexborHTMLParser

    html = _decode_html(data)
    limits.check_html_depth(name, _html_depth(html, limits.max_html_depth))
    tree = LexborHTMLParser(html)
    title_node = tree.css_first("title")
    title = _one_line(title_node.text()) if title_node is not None else ""
    out = _SectionBuilder()
    if tree.body is not None:
        _walk_html(tree.body, out)
    out.flush()
    return title or None, out.sections


_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9:-]*)[^<>]*?(/?)>")
# Elements that never nest: void ones, and ones whose end tag is optional (closed implicitly).
_FLAT_TAGS = frozenset(
    """area base br col embed hr img input link meta param source track wbr p li dt dd tr td th
    option optgroup thead tbody tfoot colgroup caption rb rt rp html head body""".split()
)


def _html_depth(html: str, limit: int) -> int:
    """How deeply elements nest, from the tags alone; stops counting once past `limit`.
    The HTML parser's time grows with the square of the depth, so this runs before it."""
    depth = deepest = 0
    for m in _TAG.finditer(html):
        tag = m.group(2).lower()
        if tag in _FLAT_TAGS or m.group(3):
            continue
        if m.group(1):
            depth = max(0, depth - 1)
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                break
    return deepest


def _walk_html(root: LexborNode, out: _SectionBuilder) -> None:
    # An explicit stack, because recursion would overflow on deeply nested pages.
    # Entries are (node, closing, inside <pre>); a closing entry ends a block element.
    stack: list[tuple[LexborNode, bool, bool]] = [(root, False, False)]
    parts = out.parts
    while stack:
        node, closing, in_pre = stack.pop()
        tag = node.tag
        if closing:
            parts.append("\n\n")
        elif tag == "-text":
            text = node.text_content or ""
            parts.append(text if in_pre else _HTML_WHITESPACE.sub(" ", text))
        elif tag in _HTML_HEADINGS:
            out.parts = _cells_joined(parts)
            out.start(node.text(deep=True, separator=" "))
            parts = out.parts
        elif tag == "br":
            parts.append("\n")
        elif tag is not None and tag not in _HTML_DROP and not tag.startswith("-"):
            if tag in ("td", "th"):
                parts.append(_CELL)
            elif tag in _HTML_LINE_BLOCKS:
                parts.append("\n")  # rows and list items: one line each, not a paragraph
            elif tag in _HTML_BLOCKS:
                parts.append("\n\n")
                stack.append((node, True, in_pre))
            in_pre = in_pre or tag == "pre"
            stack.extend((c, False, in_pre) for c in reversed(list(node.iter(include_text=True))))
    out.parts = _cells_joined(parts)


def _cells_joined(parts: list[str]) -> list[str]:
    text = _LEADING_CELL.sub(r"\1", "".join(parts)).replace(_CELL, " | ")
    return [text]


# --- PDF ------------------------------------------------------------------------------------


def _parse_pdf(data: bytes, name: str, limits: ParseLimits) -> tuple[str | None, list[Section]]:
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
        title = _one_line(str(meta.get("/Title") or "") if meta is not None else "") or None
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
                title = _one_line(str(item.title or ""))
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


def _parse_docx(data: bytes, name: str, limits: ParseLimits) -> tuple[str | None, list[Section]]:
    import docx
    from docx.table import Table

    check_docx_archive(data, name, limits)
    document = docx.Document(io.BytesIO(data))
    title = _one_line(document.core_properties.title or "") or None
    # `Paragraph.style` searches all styles on every call (1 ms each); map ids to names once.
    style_names = {s.style_id: (s.name or "").lower() for s in document.styles}
    out = _SectionBuilder()
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            out.parts.append(_docx_table_text(block) + "\n")
            continue
        style = style_names.get(block._p.style or "", "")
        if (style.startswith("heading") or style == "title") and block.text.strip():
            out.start(block.text)
            title = title or (out.heading if style == "title" else None)
        else:
            out.parts.append(block.text + "\n")
    out.flush()
    return title, out.sections


def _docx_table_text(table: Table) -> str:
    rows = []
    for row in table.rows:
        cells, previous = [], None
        for cell in row.cells:
            if cell._tc is not previous:  # merged cells repeat the same element
                cells.append(" ".join(cell.text.split()))
            previous = cell._tc
        if any(cells):
            rows.append(" | ".join(cells))
    return "\n".join(rows)


# --- entry point ----------------------------------------------------------------------------

_PARSERS: dict[str, Callable[[bytes, str, ParseLimits], tuple[str | None, list[Section]]]] = {
    "text/plain": _parse_txt,
    "text/markdown": _parse_markdown,
    "text/html": _parse_html,
    PDF: _parse_pdf,
    DOCX: _parse_docx,
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
