"""A deterministic corpus of real English prose for benchmarks: the docstrings of the standard library.

It needs no network and no data files: the same Python version always yields the same text.
`chunks_of_words` gives fixed-size chunks (embedding benchmarks); `write_corpus` writes
``.md``/``.txt`` documents (ingestion and retrieval benchmarks). When more text is asked for
than the docstrings hold, later passes over the text start at a shifted offset, so chunks
never repeat and documents are grouped differently.
"""

from __future__ import annotations

import importlib
import inspect
import re
import warnings
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

# Modules with no import-time side effects that exist on every Python >= 3.11 (no tkinter, no
# modules deprecated for removal, whose import would warn), in a fixed order.
MODULES = (
    "abc argparse ast asyncio.events asyncio.locks asyncio.queues asyncio.streams asyncio.tasks "
    "base64 bisect calendar cmd code codecs collections concurrent.futures configparser "
    "contextlib contextvars copy csv dataclasses datetime decimal difflib dis doctest "
    "email.message email.policy enum fractions ftplib functools gettext glob graphlib gzip "
    "hashlib heapq hmac html.parser http.client http.cookiejar http.server imaplib "
    "importlib.abc importlib.metadata inspect io ipaddress itertools json logging "
    "logging.handlers mailbox mimetypes multiprocessing.pool netrc numbers operator optparse "
    "os pathlib pdb pickle pkgutil platform plistlib poplib pprint pydoc queue random re "
    "runpy sched secrets selectors shelve shlex shutil smtplib socket socketserver sqlite3 "
    "ssl statistics string subprocess symtable sysconfig tarfile tempfile textwrap threading "
    "timeit tokenize trace traceback typing unittest.case unittest.mock urllib.parse "
    "urllib.request uuid warnings weakref wsgiref.handlers xml.dom.minidom "
    "xml.etree.ElementTree xmlrpc.client xmlrpc.server zipfile zoneinfo"
).split()

# Doctest prompts and their continuation lines are code, not prose.
_CODE_LINE = re.compile(r"^\s*(>>>|\.\.\.)")
_MIN_WORDS = 12


@lru_cache(maxsize=1)
def sections() -> tuple[tuple[str, str], ...]:
    """Every distinct docstring of `MODULES` with at least a sentence of prose, as (title, text)."""
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    for title, doc in _docstrings():
        text = _prose(doc)
        if len(text.split()) >= _MIN_WORDS and text not in seen:
            seen.add(text)
            out.append((title, text))
    return tuple(out)


def chunks_of_words(n: int, words: int = 200) -> list[str]:
    """`n` distinct chunks of exactly `words` words of running prose."""
    stream = [w for _, text in sections() for w in text.split()]
    chunks: list[str] = []
    for start in _window_starts(len(stream), words):
        if len(chunks) == n:
            break
        chunks.append(" ".join(stream[start : start + words]))
    return chunks


def documents(n_docs: int, words_per_doc: int = 400) -> list[tuple[str, list[tuple[str, str]]]]:
    """`n_docs` documents as (title, [(section title, section text), ...]) of ~`words_per_doc` words."""
    docs: list[tuple[str, list[tuple[str, str]]]] = []
    for group in _section_groups(words_per_doc):
        if len(docs) == n_docs:
            break
        docs.append((group[0][0], group))
    return docs


def write_corpus(
    directory: Path | str, n_docs: int, words_per_doc: int = 400, formats: tuple[str, ...] = ("md", "txt")
) -> list[Path]:
    """Write `n_docs` documents into `directory`, cycling through `formats`; return their paths."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for i, (title, secs) in enumerate(documents(n_docs, words_per_doc)):
        ext = formats[i % len(formats)]
        path = root / f"{i:05d}-{_slug(title)}.{ext}"
        if ext == "md":
            body = f"# {title}\n\n" + "".join(f"## {t}\n\n{s}\n\n" for t, s in secs)
        else:
            body = f"{title}\n\n" + "".join(f"{s}\n\n" for _, s in secs)
        path.write_text(body, encoding="utf-8")
        paths.append(path)
    return paths


def _docstrings() -> Iterator[tuple[str, str]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in MODULES:
            module = importlib.import_module(name)
            yield from _object_docs(name, module)


def _object_docs(name: str, module: object) -> Iterator[tuple[str, str]]:
    if isinstance(module.__doc__, str):
        yield name, module.__doc__
    for attr, obj in sorted(vars(module).items()):
        if getattr(obj, "__module__", None) != name:
            continue  # re-exported from elsewhere: documented under its own module
        if inspect.isfunction(obj) and isinstance(obj.__doc__, str):
            yield f"{name}.{attr}", obj.__doc__
        elif inspect.isclass(obj):
            if isinstance(obj.__doc__, str):
                yield f"{name}.{attr}", obj.__doc__
            for meth, fn in sorted(vars(obj).items()):
                if inspect.isfunction(fn) and isinstance(fn.__doc__, str):
                    yield f"{name}.{attr}.{meth}", fn.__doc__


def _prose(doc: str) -> str:
    lines = [ln for ln in inspect.cleandoc(doc).splitlines() if not _CODE_LINE.match(ln)]
    paragraphs = "\n".join(lines).split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())


def _window_starts(total: int, size: int) -> Iterator[int]:
    # Each pass over the text starts a little later so that its windows differ from the last.
    shift = 0
    while True:
        yield from range(shift, total - size + 1, size)
        shift = (shift + 37) % size or 1


def _section_groups(words_per_doc: int) -> Iterator[list[tuple[str, str]]]:
    secs = sections()
    offset = 0
    while True:
        group: list[tuple[str, str]] = []
        count = 0
        for title, text in secs[offset:] + secs[:offset]:
            group.append((title, text))
            count += len(text.split())
            if count >= words_per_doc:
                yield group
                group, count = [], 0
        offset = (offset + 1) % len(secs)  # the next pass groups the sections differently


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:60]
