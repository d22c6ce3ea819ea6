"""The size limits a parse must stay within (METIS_PARSE__*), and the zip check that enforces
them on a DOCX before any XML of it is parsed.

Sizes in a zip directory are the sender's word: the check streams every part through the
decompressor and counts what actually comes out, stopping at the first limit crossed.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import CHARS_PER_TOKEN
from ..errors import ContentMismatch, ParseLimitExceeded

if TYPE_CHECKING:
    from ..config import ParseSettings

_MB = 1024 * 1024
# Below this a part's ratio is not checked: small XML parts of repeated markup compress well.
RATIO_FLOOR_BYTES = _MB
_READ_BYTES = 256 * 1024
_XML_HEAD_BYTES = 4096


@dataclass(frozen=True, slots=True)
class ParseLimits:
    max_pages: int = 2000
    max_text_chars: int = 5_000_000
    max_unzipped_bytes: int = 200 * _MB
    max_compression_ratio: float = 100.0
    max_zip_entries: int = 5000
    max_html_depth: int = 1000

    @classmethod
    def from_settings(cls, s: ParseSettings) -> ParseLimits:
        return cls(
            max_pages=s.max_pages,
            # 0 is resolved by `Settings` from the chunk limit; alone, the default chunk limit's
            max_text_chars=s.max_text_chars or 5000 * 128 * CHARS_PER_TOKEN,
            max_unzipped_bytes=int(s.max_unzipped_mb * _MB),
            max_compression_ratio=s.max_compression_ratio,
            max_zip_entries=s.max_zip_entries,
            max_html_depth=s.max_html_depth,
        )

    def check_pages(self, name: str, pages: int) -> None:
        if pages > self.max_pages:
            raise ParseLimitExceeded(
                f"{name} has more than {self.max_pages} pages (METIS_PARSE__MAX_PAGES); split it "
                "and upload the parts.",
                code="too_many_pages", limit=self.max_pages,
            )

    def check_html_depth(self, name: str, depth: int) -> None:
        if depth > self.max_html_depth:
            raise ParseLimitExceeded(
                f"{name} nests its elements more than {self.max_html_depth} deep "
                "(METIS_PARSE__MAX_HTML_DEPTH); no real page does.",
                code="too_deeply_nested", limit=self.max_html_depth,
            )

    def check_text(self, name: str, chars: int) -> None:
        if chars > self.max_text_chars:
            raise ParseLimitExceeded(
                f"{name} holds more than {self.max_text_chars:,} characters of text "
                "(METIS_PARSE__MAX_TEXT_CHARS); split it and upload the parts.",
                code="too_much_text", limit=self.max_text_chars,
            )


def check_docx_archive(data: bytes, name: str, limits: ParseLimits) -> None:
    """Refuse a DOCX whose zip would expand past the limits, holds a DTD, or is no Word file."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        if len(infos) > limits.max_zip_entries:
            raise ParseLimitExceeded(
                f"{name} holds more than {limits.max_zip_entries} files inside its archive "
                "(METIS_PARSE__MAX_ZIP_ENTRIES).",
                code="too_many_parts", limit=limits.max_zip_entries,
            )
        names = {i.filename for i in infos}
        if "word/document.xml" not in names and "[Content_Types].xml" not in names:
            raise ContentMismatch(
                f"{name} is named as a Word document but its content is a zip archive of "
                "other files; upload it with the extension that matches its content.",
            )
        total = 0
        for info in infos:
            if not info.is_dir():
                total = _stream_part(archive, info, name, limits, total)


def _stream_part(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, limits: ParseLimits, total: int
) -> int:
    """Decompress one part, counting its bytes; returns the running total of the archive."""
    size = 0
    with archive.open(info) as part:
        while chunk := part.read(_READ_BYTES):
            if size == 0:
                _refuse_dtd(chunk[:_XML_HEAD_BYTES], name, info.filename)
            size += len(chunk)
            total += len(chunk)
            if total > limits.max_unzipped_bytes:
                raise ParseLimitExceeded(
                    f"{name} expands to more than {limits.max_unzipped_bytes // _MB} MB when "
                    "unzipped (METIS_PARSE__MAX_UNZIPPED_MB); it is refused as a possible zip "
                    "bomb.",
                    code="archive_too_large", limit_bytes=limits.max_unzipped_bytes,
                )
            ratio = size / max(1, info.compress_size)
            if size > RATIO_FLOOR_BYTES and ratio > limits.max_compression_ratio:
                raise ParseLimitExceeded(
                    f"{name} contains a part ({info.filename[:80]}) compressed more than "
                    f"{limits.max_compression_ratio:g} to 1 (METIS_PARSE__MAX_COMPRESSION_RATIO); "
                    "it is refused as a possible zip bomb.",
                    code="compression_ratio", part=info.filename[:200],
                )
    return total


def _refuse_dtd(head: bytes, name: str, part: str) -> None:
    # Office XML never carries a DTD; one in a part can only define entities to expand
    # (billion laughs) or fetch (XXE). NULs are dropped so UTF-16 XML is caught too.
    plain = head.replace(b"\x00", b"")
    if b"<!DOCTYPE" in plain or b"<!ENTITY" in plain:
        raise ParseLimitExceeded(
            f"{name} cannot be read: its part {part[:80]} declares a DTD or XML entities, which "
            "Word documents never do.",
            code="unsafe_xml", part=part[:200],
        )
