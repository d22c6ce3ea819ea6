"""Real test documents of every supported format, generated on the fly, each with known facts."""

from __future__ import annotations

import io
from pathlib import Path

FILLER = (
    "This part of the handbook is general background. Teams meet every morning to plan work. "
    "The cafeteria serves lunch between noon and two. Visitors sign in at the front desk. "
)

# (filename, question, the fact's distinctive words, page or None, section or None)
FACTS = [
    ("security.txt", "How do I rotate the API keys?", "Regenerate", None, None),
    ("ops.md", "When do database backups run?", "02:00 UTC", None, "Backups"),
    ("policy.html", "How many vacation days do employees get?", "25 days", None, "Vacation policy"),
    ("facilities.pdf", "How often is the coffee machine descaled?", "descaled", 2, None),
    ("finance.docx", "What is the deadline for expense reports?", "14 days", None,
     "Expense reports"),
]


def txt_bytes() -> bytes:
    return (
        FILLER + "\n\nAPI key rotation. To rotate the API keys, open the admin console and click "
        "Regenerate under Security settings. Old keys stop working after 24 hours.\n\n" + FILLER
    ).encode()


def md_bytes() -> bytes:
    return (
        "# Operations\n\n" + FILLER + "\n\n## Backups\n\nDatabase backups run nightly at 02:00 UTC "
        "and are kept for 30 days in the **cold storage** bucket.\n\n## Monitoring\n\n"
        "Alerts page the on-call engineer through the [pager](https://example.org) service.\n"
    ).encode()


def html_bytes() -> bytes:
    return (
        "<html><head><title>HR policies</title><style>p{color:red}</style></head><body>"
        "<nav>Home | About</nav><h1>Vacation policy</h1><p>Employees receive 25 days of paid "
        "vacation per year, plus public holidays.</p><script>var x = 'vacation 99 days';</script>"
        f"<h2>Remote work</h2><p>{FILLER}</p></body></html>"
    ).encode()


def pdf_bytes(pages: list[str] | None = None, *, encrypt: str | None = None) -> bytes:
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    pages = pages or [
        "Facilities overview. " + FILLER,
        "Kitchen care. The office coffee machine is descaled every Friday by the facilities team.",
        "Parking. Bicycles go in the basement rack. " + FILLER,
    ]
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=A4)
    for i, text in enumerate(pages, start=1):
        c.bookmarkPage(f"p{i}")
        c.addOutlineEntry(text.split(".")[0], f"p{i}", level=0)
        y = 800
        words = text.split()
        for start in range(0, len(words), 12):
            c.drawString(50, y, " ".join(words[start : start + 12]))
            y -= 16
        c.showPage()
    c.save()
    data = buf.getvalue()
    if encrypt is None:
        return data
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=encrypt, owner_password=encrypt)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def docx_bytes() -> bytes:
    from docx import Document

    doc = Document()
    doc.add_heading("Finance handbook", level=0)
    doc.add_paragraph(FILLER)
    doc.add_heading("Expense reports", level=1)
    doc.add_paragraph(
        "Expense reports must be submitted within 14 days of purchase with receipts attached."
    )
    doc.add_heading("Travel", level=1)
    doc.add_paragraph("Book trains for trips under four hours. " + FILLER)
    buf = io.BytesIO()
    doc.save(buf)
    return buf.getvalue()


MAKERS = {
    "security.txt": txt_bytes,
    "ops.md": md_bytes,
    "policy.html": html_bytes,
    "facilities.pdf": pdf_bytes,
    "finance.docx": docx_bytes,
}


def write_all(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, make in MAKERS.items():
        path = directory / name
        path.write_bytes(make())
        paths.append(path)
    return paths
