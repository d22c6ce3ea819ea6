"""Word (.docx): heading styles start sections; tables become " | "-joined rows."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from ..limits import ParseLimits, check_docx_archive
from .text import Section, SectionBuilder, one_line

if TYPE_CHECKING:
    from docx.table import Table


def parse_docx(data: bytes, name: str, limits: ParseLimits) -> tuple[str | None, list[Section]]:
    import docx
    from docx.table import Table

    check_docx_archive(data, name, limits)
    document = docx.Document(io.BytesIO(data))
    title = one_line(document.core_properties.title or "") or None
    # `Paragraph.style` searches all styles on every call (1 ms each); map ids to names once.
    style_names = {s.style_id: (s.name or "").lower() for s in document.styles}
    out = SectionBuilder()
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
