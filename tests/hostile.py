"""A corpus of crafted files an attacker would upload, generated here (no binaries committed).

`corpus()` yields `Crafted(name, data, outcomes)`: `outcomes` are the error codes the file may
be refused with, plus "parsed" when parsing it within the limits is acceptable too. Used by
tests/ingest/test_hostile.py and benchmarks/bench_hostile.py.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

MB = 1024 * 1024


@dataclass(frozen=True)
class Crafted:
    name: str
    data: bytes
    outcomes: frozenset[str]


# --- DOCX and zip ---------------------------------------------------------------------------

_CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    '<Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-'
    'officedocument.wordprocessingml.document.main+xml"/></Types>'
)
_RELS = (
    '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/'
    'relationships/officeDocument" Target="word/document.xml"/></Relationships>'
)
_W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
_DOC_HEAD = f'<?xml version="1.0" encoding="UTF-8" standalone="yes"?><w:document xmlns:w="{_W}"><w:body>'
_DOC_TAIL = "</w:body></w:document>"
_PARAGRAPH = "<w:p><w:r><w:t>All work and no play makes Jack a dull boy.</w:t></w:r></w:p>"


def _docx(document_xml: bytes | None = None, extra: dict[str, bytes] | None = None,
          document_stream: Callable[[], Iterator[bytes]] | None = None) -> bytes:
    """A minimal valid DOCX whose document part is given whole or as a stream of chunks."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("[Content_Types].xml", _CONTENT_TYPES)
        z.writestr("_rels/.rels", _RELS)
        if document_stream is not None:
            with z.open("word/document.xml", "w", force_zip64=True) as part:
                for chunk in document_stream():
                    part.write(chunk)
        else:
            z.writestr("word/document.xml", document_xml or (_DOC_HEAD + _PARAGRAPH + _DOC_TAIL).encode())
        for name, data in (extra or {}).items():
            z.writestr(name, data)
    return buf.getvalue()


def docx_huge_xml(total_mb: int = 1536) -> bytes:
    """The issue's bomb: a few MB of DOCX holding well over a GB of ordinary paragraphs."""
    block = (_PARAGRAPH * (MB // len(_PARAGRAPH))).encode()

    def stream() -> Iterator[bytes]:
        yield _DOC_HEAD.encode()
        for _ in range(total_mb):
            yield block
        yield _DOC_TAIL.encode()

    return _docx(document_stream=stream)


def docx_high_ratio() -> bytes:
    """One 60 MB part of a single repeated byte: under the size limit, over the ratio limit."""
    return _docx(extra={"word/media/blank.xml": b" " * (60 * MB)})


def docx_billion_laughs() -> bytes:
    entities = ['<!ENTITY lol "lol">'] + [
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
        for i in range(1, 10)
    ]
    xml = (f'<?xml version="1.0"?><!DOCTYPE w:document [{"".join(entities)}]>'
           f'<w:document xmlns:w="{_W}"><w:body><w:p><w:r><w:t>&lol9;</w:t></w:r></w:p>'
           f"</w:body></w:document>")
    return _docx(xml.encode())


def zip_bomb_nested(levels: int = 3, fanout: int = 10) -> bytes:
    """42.zip in miniature: zips of zips, the innermost of 10 MB of zeros each."""
    inner = _zip({"zeros.bin": bytes(10 * MB)})
    for level in range(levels):
        inner = _zip({f"{level}-{i}.zip": inner for i in range(fanout)})
    return inner


def docx_nested_zip() -> bytes:
    """A valid DOCX carrying a nested zip bomb as an embedded object (never opened)."""
    return _docx(extra={"word/embeddings/oleObject1.zip": zip_bomb_nested(levels=2)})


def docx_many_parts(count: int = 20_000) -> bytes:
    return _docx(extra={f"word/media/p{i}.xml": b"<a/>" for i in range(count)})


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def docx_lying_sizes() -> bytes:
    """A DOCX whose zip directory claims its 300 MB part is 1 KB."""
    data = bytearray(docx_huge_xml(total_mb=300))
    # Patch every declared uncompressed size of word/document.xml (local header and directory).
    for sig, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.find(sig)
        while at != -1:
            name_len = struct.unpack_from("<H", data, at + (26 if sig == b"PK\x03\x04" else 28))[0]
            name_at = at + (30 if sig == b"PK\x03\x04" else 46)
            if data[name_at:name_at + name_len] == b"word/document.xml":
                struct.pack_into("<I", data, at + size_at, 1024)
            at = data.find(sig, at + 4)
    return bytes(data)


# --- PDF ------------------------------------------------------------------------------------


def _pdf(objects: list[bytes], root: int = 1) -> bytes:
    """A PDF of numbered objects (1-based) with a correct xref table."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root %d 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, root, xref)
    return bytes(out)


def _page(contents: int | None = None) -> bytes:
    font = b"/Resources << /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >>"
    body = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] " + font
    if contents:
        body += b" /Contents %d 0 R" % contents
    return body + b" >>"


def _stream(data: bytes, compress: bool = False) -> bytes:
    if compress:
        data = zlib.compress(data, 9)
        return b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(data) + data + b"\nendstream"
    return b"<< /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"


_TEXT = b"BT /F1 12 Tf 72 720 Td (Hello from a crafted page.) Tj ET"


def pdf_page_tree_loop() -> bytes:
    """The page tree's /Kids contains the tree itself."""
    return _pdf([b"<< /Type /Catalog /Pages 2 0 R >>",
                 b"<< /Type /Pages /Kids [3 0 R 2 0 R] /Count 2 >>",
                 _page(4), _stream(_TEXT)])


def pdf_huge_count() -> bytes:
    """A one-page PDF that claims a billion pages."""
    return _pdf([b"<< /Type /Catalog /Pages 2 0 R >>",
                 b"<< /Type /Pages /Kids [3 0 R] /Count 1000000000 >>",
                 _page(4), _stream(_TEXT)])


def pdf_many_page_refs(count: int = 200_000) -> bytes:
    """200,000 references to one page, with an honest /Count: a huge document in 2 MB."""
    kids = b" ".join([b"3 0 R"] * count)
    return _pdf([b"<< /Type /Catalog /Pages 2 0 R >>",
                 b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % count,
                 _page(4), _stream(_TEXT)])


def pdf_lying_count(pages: int = 3000) -> bytes:
    """3,000 distinct pages under a page tree that claims one."""
    kids = b" ".join(b"%d 0 R" % (3 + i) for i in range(pages))
    return _pdf([b"<< /Type /Catalog /Pages 2 0 R >>",
                 b"<< /Type /Pages /Kids [" + kids + b"] /Count 1 >>",
                 *[_page() for _ in range(pages)]])


def pdf_reference_loop() -> bytes:
    """Objects that refer to each other in a ring: a content stream's /Length and the outline."""
    return _pdf([b"<< /Type /Catalog /Pages 2 0 R /Outlines 5 0 R >>",
                 b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                 _page(4), b"<< /Length 4 0 R >>\nstream\n" + _TEXT + b"\nendstream",
                 b"<< /Type /Outlines /First 6 0 R /Last 6 0 R >>",
                 b"<< /Title (Loop) /Parent 5 0 R /Next 6 0 R /Prev 6 0 R /First 6 0 R "
                 b"/Dest [3 0 R /Fit] >>"])


def pdf_flate_bomb(mb: int = 400) -> bytes:
    """A page whose content stream inflates to hundreds of MB of text-drawing operators."""
    block = b"BT /F1 12 Tf 72 720 Td (bomb) Tj ET\n" * (MB // 36)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(block) for _ in range(mb)) + comp.flush()
    stream = b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(data) + data + b"\nendstream"
    return _pdf([b"<< /Type /Catalog /Pages 2 0 R >>",
                 b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", _page(4), stream])


def pdf_plain() -> bytes:
    return _pdf([b"<< /Type /Catalog /Pages 2 0 R >>",
                 b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>", _page(4), _stream(_TEXT)])


def pdf_zip_polyglot() -> bytes:
    """A PDF that is also a zip archive (a DOCX appended after %%EOF)."""
    return pdf_plain() + _docx()


# --- HTML and text --------------------------------------------------------------------------


def html_deep(depth: int = 200_000) -> bytes:
    return (b"<html><body>" + b"<div>" * depth + b"deep text" + b"</div>" * depth
            + b"</body></html>")


def html_deep_heading(depth: int = 100_000) -> bytes:
    return b"<html><body><h1>" + b"<span>" * depth + b"title" + b"</span>" * depth + b"</h1></body></html>"


def markdown_emphasis_storm(mb: int = 4) -> bytes:
    """One long line of unclosed emphasis markers: food for backtracking regexes."""
    return b"# Storm\n\n" + b"**a _b " * (mb * MB // 7) + b"\n"


def text_too_long() -> bytes:
    return b"word " * (6_000_000 // 5)  # past the default 5,000,000 characters


def corpus(bomb_mb: int = 1536) -> Iterator[Crafted]:
    """Every crafted file, with the outcomes each may acceptably get (`bomb_mb`: the size the
    zip bomb expands to; tests use a smaller one, just past the default limit, to save time)."""
    pdf = pdf_plain()
    refused = frozenset
    yield Crafted(f"bomb-{bomb_mb}mb.docx", docx_huge_xml(bomb_mb),
                  refused({"archive_too_large", "compression_ratio"}))
    yield Crafted("lying-sizes.docx", docx_lying_sizes(),
                  refused({"archive_too_large", "compression_ratio", "corrupt_document"}))
    yield Crafted("high-ratio.docx", docx_high_ratio(), refused({"compression_ratio"}))
    yield Crafted("billion-laughs.docx", docx_billion_laughs(), refused({"unsafe_xml"}))
    yield Crafted("nested-zip.docx", docx_nested_zip(), refused({"parsed"}))
    yield Crafted("42-mini.docx", zip_bomb_nested(), refused({"content_mismatch"}))
    yield Crafted("many-parts.docx", docx_many_parts(), refused({"too_many_parts"}))
    yield Crafted("page-loop.pdf", pdf_page_tree_loop(), refused({"parsed", "corrupt_document"}))
    yield Crafted("billion-pages.pdf", pdf_huge_count(), refused({"too_many_pages"}))
    # pypdf refuses a page listed twice as a loop; either refusal is right.
    yield Crafted("200k-pages.pdf", pdf_many_page_refs(), refused({"too_many_pages", "corrupt_document"}))
    yield Crafted("3000-pages-claims-1.pdf", pdf_lying_count(), refused({"too_many_pages"}))
    yield Crafted("reference-loop.pdf", pdf_reference_loop(),
                  refused({"parsed", "corrupt_document", "empty_document"}))
    yield Crafted("flate-bomb.pdf", pdf_flate_bomb(),
                  refused({"parsed", "too_much_text", "corrupt_document", "parse_timeout",
                           "empty_document"}))
    yield Crafted("polyglot.pdf", pdf_zip_polyglot(), refused({"parsed"}))
    yield Crafted("polyglot.docx", pdf_zip_polyglot(), refused({"content_mismatch"}))
    for ext in ("txt", "md", "html"):
        yield Crafted(f"renamed-pdf.{ext}", pdf, refused({"content_mismatch"}))
    yield Crafted("renamed-docx.txt", _docx(), refused({"content_mismatch"}))
    yield Crafted("truncated.pdf", pdf[: len(pdf) // 2], refused({"corrupt_document", "empty_document"}))
    yield Crafted("truncated.docx", _docx()[:400], refused({"corrupt_document"}))
    yield Crafted("deep.html", html_deep(), refused({"too_deeply_nested"}))
    yield Crafted("deep-heading.html", html_deep_heading(),
                  refused({"parsed", "too_deeply_nested", "parser_crashed"}))
    yield Crafted("emphasis-storm.md", markdown_emphasis_storm(), refused({"parsed"}))
    yield Crafted("too-long.txt", text_too_long(), refused({"too_much_text"}))
