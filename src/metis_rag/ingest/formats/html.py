"""HTML: headings start sections, scripts and page furniture are dropped, table cells are joined
with " | "; nesting depth is checked before the parser sees the page."""

from __future__ import annotations

import codecs
import re
from typing import TYPE_CHECKING

from ..limits import ParseLimits
from .text import Section, SectionBuilder, decode_text, one_line

if TYPE_CHECKING:
    from selectolax.lexbor import LexborNode

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


def parse_html(data: bytes, name: str, limits: ParseLimits) -> tuple[str | None, list[Section]]:
    from selectolax.lexbor import LexborHTMLParser

    html = _decode_html(data)
    limits.check_html_depth(name, _html_depth(html, limits.max_html_depth))
    tree = LexborHTMLParser(html)
    title_node = tree.css_first("title")
    title = one_line(title_node.text()) if title_node is not None else ""
    out = SectionBuilder()
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


def _walk_html(root: LexborNode, out: SectionBuilder) -> None:
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
