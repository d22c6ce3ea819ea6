"""Builders for the documents the ingest tests parse; every file is generated here."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

PageSpec = Sequence[tuple[str | None, Sequence[str]]]  # per page: (bookmark title, body lines)


def pdf_bytes(pages: PageSpec, *, title: str | None = None, draw_headings: bool = True) -> bytes:
    """A PDF with one outline entry per page that has a bookmark title."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    pdf = canvas.Canvas(buf, pagesize=A4)
    if title:
        pdf.setTitle(title)
    for number, (heading, lines) in enumerate(pages):
        y = 800.0
        if heading:
            pdf.bookmarkPage(f"page{number}")
            pdf.addOutlineEntry(heading, f"page{number}", level=0)
            if draw_headings:
                pdf.setFont("Helvetica-Bold", 14)
                pdf.drawString(72, y, heading)
                y -= 24
        pdf.setFont("Helvetica", 10)
        for line in lines:
            pdf.drawString(72, y, line)
            y -= 14
        pdf.showPage()
    pdf.save()
    return buf.getvalue()


def encrypt_pdf(data: bytes, user_password: str, owner_password: str | None = None) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    # RC4 needs no optional crypto library, so the test runs on a bare install.
    writer.encrypt(user_password, owner_password, algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def image_only_pdf() -> bytes:
    """Like a scanned page: drawing operations but no text layer."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    pdf = canvas.Canvas(buf, pagesize=A4)
    for _ in range(2):
        pdf.setFillGray(0.3)
        pdf.rect(72, 300, 400, 400, fill=1)
        pdf.showPage()
    pdf.save()
    return buf.getvalue()


def docx_bytes() -> bytes:
    """Title, two headed sections, a table, and a heading-less preamble."""
    import docx

    document = docx.Document()
    document.core_properties.title = ""
    document.add_paragraph("Preamble before any heading.")
    document.add_heading("Quarterly Report", level=0)  # level 0 is the "Title" style
    document.add_heading("Revenue", level=1)
    document.add_paragraph("Revenue grew by 12% in the third quarter.")
    table = document.add_table(rows=3, cols=2)
    for row, (region, amount) in zip(
        table.rows, [("Region", "Amount"), ("North", "1.2M"), ("South", "0.8M")], strict=True
    ):
        row.cells[0].text = region
        row.cells[1].text = amount
    document.add_heading("Outlook", level=2)
    document.add_paragraph("We expect steady growth next year.")
    buf = io.BytesIO()
    document.save(buf)
    return buf.getvalue()


@pytest.fixture
def write(tmp_path: Path) -> Callable[[str, bytes | str], Path]:
    """Write a generated file into tmp_path and return its path."""

    def _write(name: str, content: bytes | str) -> Path:
        path = tmp_path / name
        path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
        return path

    return _write


@pytest.fixture(scope="session")
def count_tokens() -> Callable[[Sequence[str]], list[int]]:
    """The packaged model's real tokenizer counter."""
    from metis_rag.embed.packaged import count_tokens as packaged_count_tokens

    return packaged_count_tokens


@pytest.fixture(scope="session")
def make_pdf() -> Callable[..., bytes]:
    return pdf_bytes


@pytest.fixture(scope="session")
def make_encrypted_pdf() -> Callable[..., bytes]:
    return encrypt_pdf


@pytest.fixture(scope="session")
def scanned_pdf() -> bytes:
    return image_only_pdf()


@pytest.fixture(scope="session")
def report_docx() -> bytes:
    return docx_bytes()
