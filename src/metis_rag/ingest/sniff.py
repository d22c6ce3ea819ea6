"""What a file is: its safe name, the type its name and content type declare, and whether the
bytes agree. A PDF renamed `.txt` is refused (415 content_mismatch), never indexed as PDF syntax.
"""

from __future__ import annotations

import codecs
import re
import unicodedata

from ..errors import ContentMismatch, InvalidDocument, UnsupportedMediaType

PDF = "application/pdf"
DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
SUPPORTED: dict[str, str] = {
    "txt": "text/plain",
    "md": "text/markdown",
    "markdown": "text/markdown",
    "html": "text/html",
    "htm": "text/html",
    "pdf": PDF,
    "docx": DOCX,
}
HEAD_BYTES = 4096
MAX_FILENAME_CHARS = 120

KIND = {
    "text/plain": "text file",
    "text/markdown": "Markdown file",
    "text/html": "HTML page",
    PDF: "PDF",
    DOCX: "Word document",
}
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
# Formats people upload by mistake (or on purpose), by their first bytes.
_MAGIC: list[tuple[bytes, str]] = [
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"BZh", "a bzip2 archive"),  # weak magic: only with binary bytes after it
    (b"\xfd7zXZ\x00", "an xz archive"),
    (b"\x28\xb5\x2f\xfd", "a zstd archive"),
    (b"\x7fELF", "a Linux executable"),
    (b"MZ", "a Windows executable"),  # weak magic too
    (b"{\\rtf", "an RTF document"),
    (b"%!PS", "a PostScript file"),
]
_WEAK_MAGICS = (b"BZh", b"MZ")
_PDF_OBJECT = re.compile(rb"\d+\s+\d+\s+obj\b")


# --- file names -----------------------------------------------------------------------------

_UNSAFE_NAME_CHARS = re.compile(
    r'[\x00-\x1f\x7f-\x9f<>:"|?*\u200b-\u200f\u202a-\u202e\u2060\ufeff]'
)
_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com\d|lpt\d)(\.|$)", re.IGNORECASE)


def sanitize_filename(name: str) -> str:
    """A safe base name for display and storage: no directories, controls or leading dots."""
    name = unicodedata.normalize("NFKC", name).replace("\\", "/").rsplit("/", 1)[-1]
    name = _UNSAFE_NAME_CHARS.sub("", name)
    # Windows drops trailing dots and spaces; leading dots would hide the file or mean "..".
    name = " ".join(name.split()).lstrip(". ").rstrip(". ")
    if _WINDOWS_RESERVED.match(name):
        name = "_" + name
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, ext = name.rpartition(".")
        if dot and stem and 0 < len(ext) <= 16:
            name = stem[: MAX_FILENAME_CHARS - len(ext) - 1].rstrip(". ") + "." + ext
        else:
            name = name[:MAX_FILENAME_CHARS].rstrip(". ")
    return name or "document"


# --- what the bytes are ---------------------------------------------------------------------


def sniff(head: bytes) -> str | None:
    """The format the first bytes reveal (PDF, DOCX's zip, OLE or a known binary), else None."""
    start = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if start.startswith(b"%PDF-") or (b"%PDF-" in head[:1024] and _PDF_OBJECT.search(head)):
        return PDF  # readers accept up to 1 KB of junk before the header: so do polyglots
    if head.startswith(_ZIP_MAGICS):
        return "zip"
    if head.startswith(_OLE_MAGIC):
        return "ole"
    for magic, what in _MAGIC:
        if head.startswith(magic) and (magic not in _WEAK_MAGICS or _looks_binary(head)):
            return what
    return None


def _looks_binary(head: bytes) -> bool:
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return False
    if b"\x00" in head:
        return True
    text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(head, final=False)
    controls = sum(1 for c in text if c < " " and c not in "\t\n\r\f\v")
    return controls > len(text) // 10


def _described(found: str | None, head: bytes) -> str:
    if found == PDF:
        return "a PDF"
    if found == "zip":
        return "a zip archive (such as a Word document)"
    if found == "ole":
        return "an old-style Microsoft Office file"
    if found is not None:
        return found
    return "binary data" if _looks_binary(head) else "plain text"


def _mismatch(name: str, mime: str, what: str) -> ContentMismatch:
    return ContentMismatch(
        f"{name} is named as a {KIND[mime]} but its content is {what}; upload it with the "
        "extension that matches its content.",
        declared=mime,
    )


def corrupt(name: str, reason: str) -> InvalidDocument:
    return InvalidDocument(f"{name} cannot be read: {reason}.", code="corrupt_document")


def detect_type(filename: str, head: bytes) -> str:
    """The mime type of a file from its extension, checked against its first bytes."""
    name = sanitize_filename(filename)
    stem, dot, ext = name.rpartition(".")
    ext = ext.lower() if dot and stem else ""
    mime = SUPPORTED.get(ext)
    if mime is None:
        supported = ", ".join("." + e for e in SUPPORTED)
        what = f"files of type .{ext}" if ext else f"{name} (it has no file extension)"
        raise UnsupportedMediaType(f"Cannot ingest {what}. Supported types: {supported}.")
    if not head:
        raise InvalidDocument(f"{name} is empty.", code="empty_document")
    found = sniff(head)
    if mime == PDF:
        if found != PDF:
            if found is None and _looks_binary(head):
                raise corrupt(name, "it is not a PDF file (no %PDF header)")
            raise _mismatch(name, mime, _described(found, head))
    elif mime == DOCX:
        if found == "ole":
            # Office wraps password-protected .docx files in an OLE container.
            raise InvalidDocument(
                f"{name} is encrypted (password-protected); remove the password and upload it "
                "again.",
                code="encrypted_document",
            )
        if found != "zip":
            if found is None and _looks_binary(head):
                raise corrupt(name, "it is not a .docx file (not a zip archive)")
            raise _mismatch(name, mime, _described(found, head))
    elif found is not None:
        raise _mismatch(name, mime, _described(found, head))
    elif _looks_binary(head):
        raise corrupt(name, "it contains binary data, not text")
    return mime


# --- declared content types -----------------------------------------------------------------

_FAMILY_OF_MIME = {
    "text/plain": "text", "text/markdown": "text", "text/x-markdown": "text",
    "text/html": "text", "application/xhtml+xml": "text",
    PDF: "pdf", "application/x-pdf": "pdf",
    DOCX: "docx", "application/zip": "docx", "application/x-zip-compressed": "docx",
}


def check_content_type(name: str, mime: str, content_type: str | None) -> None:
    """Refuse a part whose declared content type names another kind of file than its extension.
    Generic types (application/octet-stream, none) and ones we do not know say nothing."""
    declared = (content_type or "").split(";", 1)[0].strip().lower()
    family = _FAMILY_OF_MIME.get(declared)
    if family is None and declared.startswith("text/"):
        family = "text"
    if family is None and declared.split("/", 1)[0] in ("image", "audio", "video", "font"):
        family = declared
    if family is None or family == _FAMILY_OF_MIME[mime]:
        return
    raise ContentMismatch(
        f"{name} is sent as {declared} but named as a {KIND[mime]}; send it with a content "
        "type that matches its extension, or none.",
        declared=mime, content_type=declared,
    )
