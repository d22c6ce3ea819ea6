"""Files that survive a crash: written and fsynced before they are renamed into place, and
checked (size and CRC-32) before they are trusted."""

from __future__ import annotations

import os
import zlib
from pathlib import Path


def check_file(path: Path, size: int, crc: int) -> None:
    if path.stat().st_size != size or crc32_of(path) != crc:
        raise ValueError(f"{path.name} is torn or corrupt")


def crc32_of(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            crc = zlib.crc32(chunk, crc)
    return crc


def write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
