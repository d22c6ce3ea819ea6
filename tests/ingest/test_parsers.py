from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from metis_rag.errors import ContentMismatch, InvalidDocument, UnsupportedMediaType
from metis_rag.ingest.parsers import (
    DOCX,
    PDF,
    ParsedDocument,
    detect_type,
    parse,
    sanitize_filename,
)
from metis_rag.ingest.sniff import check_content_type


def parse_file(path: Path) -> ParsedDocument:
    return parse(path.read_bytes(), path.name)


def invalid(path: Path) -> InvalidDocument:
    with pytest.raises(InvalidDocument) as caught:
        parse_file(path)
    assert path.name in caught.value.message
    assert "Traceback" not in caught.value.message
    return caught.value


# --- types and names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "head", "mime"),
    [
        ("notes.txt", b"hello", "text/plain"),
        ("README.MD", b"# hi", "text/markdown"),
        ("page.htm", b"<html>", "text/html"),
        ("page.html", b"<p>x</p>", "text/html"),
        ("paper.PDF", b"%PDF-1.7\n", PDF),
        ("memo.docx", b"PK\x03\x04rest", DOCX),
    ],
)
def test_detect_type_by_extension(name: str, head: bytes, mime: str) -> None:
    assert detect_type(name, head) == mime


def test_unknown_extension_is_unsupported_and_lists_supported_types(write) -> None:
    path = write("setup.exe", b"MZ\x90\x00" + bytes(200))
    with pytest.raises(UnsupportedMediaType) as caught:
        parse_file(path)
    assert caught.value.status == 415
    assert caught.value.code == "unsupported_media_type"
    assert ".exe" in caught.value.message
    assert ".pdf" in caught.value.message and ".docx" in caught.value.message


def test_no_extension_is_unsupported() -> None:
    with pytest.raises(UnsupportedMediaType, match="no file extension"):
        detect_type("Makefile", b"all:")


@pytest.mark.parametrize(
    ("name", "content", "why"),
    [
        ("random.pdf", bytes(range(256)) * 4, "not a PDF"),
        ("random.docx", bytes(range(256)) * 4, "not a zip"),
        ("blob.txt", bytes(range(256)) * 4, "binary"),
    ],
)
def test_unrecognisable_binary_content_is_corrupt(write, name, content, why) -> None:
    error = invalid(write(name, content))
    assert error.code == "corrupt_document"
    assert why in error.message


@pytest.mark.parametrize(
    ("name", "content", "what"),
    [
        ("fake.pdf", b"<html>not a pdf</html>", "plain text"),
        ("fake.docx", b"just some text", "plain text"),
        ("blob.md", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "PNG image"),
        ("report.txt", b"%PDF-1.7\n1 0 obj\n<< >>\nendobj\n", "a PDF"),
        ("report.html", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "a PDF"),
        ("memo.md", b"PK\x03\x04\x14\x00\x00\x00\x08\x00", "zip archive"),
        ("paper.docx", b"%PDF-1.7\n", "a PDF"),
    ],
)
def test_content_that_contradicts_the_extension_is_a_mismatch(write, name, content, what) -> None:
    path = write(name, content)
    with pytest.raises(ContentMismatch) as caught:
        parse_file(path)
    assert (caught.value.status, caught.value.code) == (415, "content_mismatch")
    assert name in caught.value.message and what in caught.value.message


def test_text_that_mentions_pdf_syntax_later_is_still_text() -> None:
    text = b"Notes on file formats.\nA PDF file starts with %PDF-1.7 and holds objects.\n"
    assert detect_type("notes.txt", text) == "text/plain"
    assert detect_type("mz.txt", b"MZ is how the DOS header starts.") == "text/plain"


@pytest.mark.parametrize(
    ("name", "content_type", "refused"),
    [
        ("a.pdf", "application/pdf", False),
        ("a.pdf", "application/octet-stream", False),
        ("a.pdf", "", False),
        ("a.md", "text/plain", False),
        ("a.docx", "application/zip", False),
        ("a.txt", "application/pdf", True),
        ("a.pdf", "text/plain", True),
        ("a.html", "image/png", True),
    ],
)
def test_declared_content_type_must_agree_with_the_extension(name, content_type, refused) -> None:
    mime = detect_type(name, b"%PDF-1.7\n" if name.endswith(".pdf") else b"PK\x03\x04"
                       if name.endswith(".docx") else b"text")
    if not refused:
        check_content_type(name, mime, content_type)
        return
    with pytest.raises(ContentMismatch, match=content_type):
        check_content_type(name, mime, content_type)


@pytest.mark.parametrize("name", ["empty.txt", "empty.pdf", "empty.docx", "empty.html"])
def test_empty_file_is_empty_document(write, name: str) -> None:
    assert invalid(write(name, b"")).code == "empty_document"


@pytest.mark.parametrize(
    "content", [b"   \n\n\t  \r\n", b"\xef\xbb\xbf\n \n", "\u200b\u00a0\n".encode()]
)
def test_whitespace_only_text_is_empty_document(write, content: bytes) -> None:
    error = invalid(write("blank.txt", content))
    assert error.code == "empty_document"
    assert "no text" in error.message


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\Windows\\System32\\evil.pdf", "evil.pdf"),
        ("C:\\Users\\me\\report.docx", "report.docx"),
        ("..", "document"),
        ("", "document"),
        ("/", "document"),
        ("...", "document"),
        ("\x00\x07\x1b", "document"),
        (".bashrc", "bashrc"),
        ("name\x00with\nnul.txt", "namewithnul.txt"),
        ('a<b>c:d"e|f?g*.md', "abcdefg.md"),
        ("CON.txt", "_CON.txt"),
        ("  trailing dots... ", "trailing dots"),
        ("\u202eevil\u202dtxt.exe", "eviltxt.exe"),
    ],
)
def test_sanitize_filename(raw: str, clean: str) -> None:
    assert sanitize_filename(raw) == clean


def test_sanitize_filename_limits_length_and_keeps_extension() -> None:
    name = sanitize_filename("ä" * 500 + ".pdf")
    assert len(name) <= 120
    assert name.endswith(".pdf") and name.startswith("ä")


def test_html_with_only_scripts_is_empty(write) -> None:
    page = "<html><head><title>App</title></head><body><script>boot()</script></body></html>"
    assert invalid(write("app.html", page)).code == "empty_document"


def test_a_document_of_headings_only_is_not_empty(write) -> None:
    doc = parse_file(write("outline.md", "# One\n\n## Two\n"))
    assert [(s.heading, s.text) for s in doc.sections] == [("One", "One"), ("Two", "Two")]


# --- plain text -----------------------------------------------------------------------------


def test_txt_normalises_text_and_keeps_paragraphs(write) -> None:
    text = (
        "\ufeffThe \ufb01rst  line\u00a0has   spaces.\r\nSame paragraph\x07 here.\r\n"
        "\r\n\r\n\r\n\tSecond\u200b paragraph, ＦＵＬＬＷＩＤＴＨ.\rThird line.\n"
    )
    doc = parse_file(write("notes.txt", text.encode("utf-8")))
    assert doc.mime == "text/plain" and doc.title is None
    [section] = doc.sections
    assert section.page is None and section.heading is None
    assert section.text == (
        "The first line has spaces.\nSame paragraph here.\n\n"
        "Second paragraph, FULLWIDTH.\nThird line."
    )


def test_txt_falls_back_to_cp1252(write) -> None:
    doc = parse_file(write("legacy.txt", "Café “quoted” – 5€".encode("cp1252")))
    assert doc.sections[0].text == "Café “quoted” – 5€"


def test_txt_utf16_with_bom(write) -> None:
    doc = parse_file(write("wide.txt", "Grüße aus Köln".encode("utf-16")))
    assert doc.sections[0].text == "Grüße aus Köln"


# --- Markdown -------------------------------------------------------------------------------

MARKDOWN = """\
---
title: Field Guide
author: someone
---
Intro with **bold**, __strong__, *emphasis* and a [link text](https://example.com/x).

# Birds

Birds have *feathers*. See ![a heron](heron.png) and <https://birds.example>.

> Quoted wisdom.

Small Birds
-----------

- sparrow
- robin_redbreast

```python
# this is code, not a heading
print("**kept**")
```

## Reptiles ##

[ref]: https://example.com/ref
Reptiles are `cold-blooded`.
"""


def test_markdown_sections_by_heading(write) -> None:
    doc = parse_file(write("guide.md", MARKDOWN))
    assert doc.title == "Field Guide"
    assert [s.heading for s in doc.sections] == [None, "Birds", "Small Birds", "Reptiles"]
    intro, birds, small, reptiles = (s.text for s in doc.sections)
    assert intro == "Intro with bold, strong, emphasis and a link text."
    assert "Birds have feathers. See a heron and https://birds.example." in birds
    assert "Quoted wisdom." in birds and ">" not in birds
    assert "- robin_redbreast" in small
    assert '# this is code, not a heading\nprint("**kept**")' in small
    assert reptiles == "Reptiles are cold-blooded."


def test_markdown_title_falls_back_to_first_h1(write) -> None:
    doc = parse_file(write("notes.md", "Preface.\n\n# Main Title\n\nBody.\n\n## Part\n\nMore."))
    assert doc.title == "Main Title"
    assert [(s.heading, s.text) for s in doc.sections] == [
        (None, "Preface."),
        ("Main Title", "Body."),
        ("Part", "More."),
    ]


# --- HTML -----------------------------------------------------------------------------------

HTML = """<!doctype html>
<html><head><title>  Tide &amp; Moon </title><style>p { color: red }</style>
<script>var secret = "script text";</script></head>
<body>
<header>Site header</header><nav><a href="/">Home</a> menu</nav>
<p>Lead paragraph with <b>bold</b>
   and a line<br>break.</p>
<h1>Tides</h1>
<p>Tides are caused by the <a href="/moon">Moon</a>.</p>
<table><tr><th>Place</th><th>Range</th></tr><tr><td>Bay of Fundy</td><td>16 m</td></tr></table>
<h2>Spring <em>tides</em></h2>
<ul><li>New moon</li><li>Full moon</li></ul>
<noscript>Enable JS</noscript>
<!-- a comment -->
<footer>Copyright footer</footer>
</body></html>"""


def test_html_sections_title_and_dropped_chrome(write) -> None:
    doc = parse_file(write("tides.html", HTML))
    assert doc.title == "Tide & Moon"
    assert [s.heading for s in doc.sections] == [None, "Tides", "Spring tides"]
    lead, tides, spring = (s.text for s in doc.sections)
    assert lead == "Lead paragraph with bold and a line\nbreak."
    assert tides == "Tides are caused by the Moon.\n\nPlace | Range\nBay of Fundy | 16 m"
    assert spring == "New moon\nFull moon"
    everything = " ".join(s.text for s in doc.sections)
    for noise in ("script text", "color", "Site header", "menu", "Enable JS", "footer", "comment"):
        assert noise not in everything


def test_html_honours_meta_charset(write) -> None:
    page = '<html><head><meta charset="windows-1251"></head><body><p>Привет, мир</p></body></html>'
    doc = parse_file(write("ru.html", page.encode("cp1251")))
    assert doc.sections[0].text == "Привет, мир"


def test_html_deep_nesting_does_not_overflow(write) -> None:
    page = "<div>" * 900 + "deep text" + "</div>" * 900
    assert parse_file(write("deep.html", page)).sections[0].text == "deep text"


def test_html_nested_past_the_limit_is_refused_before_parsing(write) -> None:
    page = "<div>" * 5000 + "deep text" + "</div>" * 5000
    error = invalid(write("deeper.html", page))
    assert error.code == "too_deeply_nested"


def test_html_depth_ignores_elements_that_close_themselves(write) -> None:
    # 3,000 unclosed paragraphs and list items, and void tags: flat, not 3,000 deep.
    page = "<ul>" + "<li>item<br><p>para<img src=x>" * 3000 + "</ul>"
    assert "item" in parse_file(write("flat.html", page)).sections[0].text


# --- PDF ------------------------------------------------------------------------------------


def test_pdf_pages_and_outline_headings(write, make_pdf) -> None:
    pages = [
        (
            "Introduction",
            ["Welcome to the manual. This page is the intro-", "duction to everything."],
        ),
        (None, ["Still introduction material on page two."]),
        ("Installation", ["Run the installer and follow the prompts."]),
        ("Usage", ["Usage is simple."]),
    ]
    path = write("manual.pdf", make_pdf(pages, title="The Manual"))
    doc = parse_file(path)
    assert doc.mime == PDF and doc.title == "The Manual"
    assert [(s.page, s.heading) for s in doc.sections] == [
        (1, "Introduction"),
        (2, "Introduction"),
        (3, "Installation"),
        (4, "Usage"),
    ]
    # Hyphenated across a line break, joined again.
    assert "the introduction to everything." in doc.sections[0].text
    assert doc.sections[2].text == "Run the installer and follow the prompts."


def test_pdf_two_bookmarks_on_one_page_split_it(write) -> None:
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    pdf = canvas.Canvas(buf)
    pdf.drawString(72, 800, "Opening words before any chapter.")
    for y, title, body in [(760, "Alpha", "Alpha body text."), (700, "Beta", "Beta body text.")]:
        pdf.bookmarkHorizontal(title, 0, y + 12)
        pdf.addOutlineEntry(title, title, level=0)
        pdf.drawString(72, y, title)
        pdf.drawString(72, y - 14, body)
    pdf.showPage()
    pdf.save()
    doc = parse_file(write("two.pdf", buf.getvalue()))
    assert [(s.page, s.heading, s.text) for s in doc.sections] == [
        (1, None, "Opening words before any chapter."),
        (1, "Alpha", "Alpha body text."),
        (1, "Beta", "Beta body text."),
    ]


def test_pdf_without_outline_has_pages_but_no_headings(write, make_pdf) -> None:
    pages = [(None, [f"Body of page {n}."]) for n in range(1, 4)]
    doc = parse_file(write("plain.pdf", make_pdf(pages)))
    assert [(s.page, s.heading, s.text) for s in doc.sections] == [
        (n, None, f"Body of page {n}.") for n in range(1, 4)
    ]


def test_pdf_encrypted_with_password(write, make_pdf, make_encrypted_pdf) -> None:
    data = make_encrypted_pdf(make_pdf([("One", ["Secret text."])]), "s3cret")
    error = invalid(write("locked.pdf", data))
    assert error.code == "encrypted_document"
    assert "password" in error.message and "encrypted" in error.message


def test_pdf_with_only_an_owner_password_opens(write, make_pdf, make_encrypted_pdf) -> None:
    data = make_encrypted_pdf(make_pdf([("One", ["Readable text."])]), "", "owner")
    assert parse_file(write("restricted.pdf", data)).sections[0].text == "Readable text."


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 3],
        lambda data: b"%PDF-1.4\n" + bytes(range(256)) * 20,
        lambda data: data[:400] + b"\x00" * 300 + data[700:],
    ],
    ids=["truncated", "garbage", "overwritten"],
)
def test_corrupt_pdf(write, make_pdf, damage) -> None:
    data = make_pdf([("A", ["Some text."] * 20), ("B", ["More text."] * 20)])
    path = write("broken.pdf", damage(data))
    try:
        doc = parse_file(path)
    except InvalidDocument as error:
        assert error.code in ("corrupt_document", "empty_document")
        assert "Traceback" not in error.message and path.name in error.message
    else:  # pypdf may repair some damage; what it yields must still be text
        assert all(s.text.strip() for s in doc.sections)


def test_corrupt_pdf_is_reported_as_corrupt(write) -> None:
    error = invalid(write("garbage.pdf", b"%PDF-1.4\n" + bytes(range(256)) * 20))
    assert error.code == "corrupt_document"
    assert "damaged" in error.message


def test_pdf_without_text_layer(write, scanned_pdf: bytes) -> None:
    error = invalid(write("scan.pdf", scanned_pdf))
    assert error.code == "empty_document"
    assert "no text layer" in error.message


# --- DOCX -----------------------------------------------------------------------------------


def test_docx_headings_and_table(write, report_docx: bytes) -> None:
    doc = parse_file(write("report.docx", report_docx))
    assert doc.mime == DOCX and doc.title == "Quarterly Report"
    assert [(s.heading, s.page) for s in doc.sections] == [
        (None, None),
        ("Revenue", None),
        ("Outlook", None),
    ]
    assert doc.sections[0].text == "Preamble before any heading."
    assert doc.sections[1].text == (
        "Revenue grew by 12% in the third quarter.\n\nRegion | Amount\nNorth | 1.2M\nSouth | 0.8M"
    )
    assert doc.sections[2].text == "We expect steady growth next year."


def test_docx_encrypted_ole_container(write) -> None:
    data = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(504) + "EncryptedPackage".encode("utf-16-le")
    error = invalid(write("secret.docx", data))
    assert error.code == "encrypted_document"


def test_docx_that_is_another_zip_is_a_mismatch(write) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("hello.txt", "not a word document")
    with pytest.raises(ContentMismatch) as caught:
        parse_file(write("renamed.docx", buf.getvalue()))
    assert caught.value.code == "content_mismatch"
    assert "Word document" in caught.value.message


def test_docx_truncated_is_corrupt(write, report_docx: bytes) -> None:
    error = invalid(write("cut.docx", report_docx[: len(report_docx) // 2]))
    assert error.code == "corrupt_document"
