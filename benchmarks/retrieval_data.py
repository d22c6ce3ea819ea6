"""The evaluation collections of bench_retrieval.py, built from public text installed by apt.

    apt-get install python3-doc man-db   # the sources (man pages of whatever is installed)
    python benchmarks/retrieval_data.py  # builds benchmarks/.cache/retrieval/<name>.units.jsonl

Three collections of different shapes, each a list of units {id, title, text}:
- manpages: short entity-like pages: the first ~180 words (NAME, SYNOPSIS, start of
  DESCRIPTION) of every section 1 and 8 man page but Google Cloud's thousands of near-copies;
- pyguides: long technical prose: the sections of the Python HOWTOs and tutorial;
- pyfaq: question/answer paragraphs: every entry of the Python FAQ.
The queries and their graded labels live in benchmarks/retrieval_queries/<name>.json; they
name units by id, so a unit id must not change when the sources do.
"""

from __future__ import annotations

import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache" / "retrieval"
PYDOC = Path("/usr/share/doc/python3-doc/html/_sources")
MAN = Path("/usr/share/man")
NAMES = ("manpages", "pyguides", "pyfaq")
_MAN_WORDS = 180


def _man_unit(path: Path) -> dict[str, str] | None:
    run = subprocess.run(["man", "-l", str(path)], capture_output=True, timeout=60,
                         env={"MANWIDTH": "100", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    if run.returncode != 0:
        return None
    text = run.stdout.decode("utf-8", "replace")
    text = re.sub(r".\x08", "", text)  # overstrike (bold/underline) left by the pager-less run
    lines = text.splitlines()[1:]  # the header line repeats the name
    body = " ".join(ln.strip() for ln in lines if ln.strip())
    words = body.split()[:_MAN_WORDS]
    if len(words) < 8:
        return None
    name = path.name.removesuffix(".gz")
    page, _, section = name.rpartition(".")
    return {"id": name, "title": f"{page}({section})", "text": " ".join(words)}


def manpages() -> list[dict[str, str]]:
    # A link within the man tree repeats a page under another name (egrep -> grep); one to
    # /etc/alternatives is the only copy of that page here (PostgreSQL's createdb, pg_dump).
    paths = sorted(p for d in ("man1", "man8") for p in (MAN / d).iterdir()
                   if not p.name.startswith("gcloud")
                   and not (p.is_symlink() and p.resolve().is_relative_to(MAN)))
    with ThreadPoolExecutor(2) as pool:
        units = [u for u in pool.map(_man_unit, paths) if u is not None]
    seen: set[str] = set()
    out = []
    for u in units:  # the same page installed under two names (alternatives) counts once
        if u["text"] not in seen:
            seen.add(u["text"])
            out.append(u)
    return out


_UNDERLINE = re.compile(r"^([=\-~^*#\"'+`])\1{2,}\s*$")
_ROLE = re.compile(r":[a-z:]+:`(?:[^`<]*<)?~?([^`>]*)>?`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>]+>`_+")


def _clean_rst(lines: list[str]) -> str:
    out = []
    for ln in lines:
        s = ln.strip()
        if s.startswith(".. ") and "::" not in s:
            continue  # comments, labels, index entries
        s = re.sub(r"^\.\. [\w:-]+::\s*", "", s)  # directive name; keep its argument
        s = _ROLE.sub(r"\1", s)
        s = _LINK.sub(r"\1", s)
        s = s.replace("``", "").replace("**", "")
        if s and not s.startswith(":"):
            out.append(s)
    return " ".join(out)


def rst_sections(path: Path, prefix: str) -> list[dict[str, str]]:
    """One unit per titled section of an rst file (over- and underlined titles alike)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    titles = [i for i in range(1, len(lines))
              if _UNDERLINE.match(lines[i]) and lines[i - 1].strip()
              and not _UNDERLINE.match(lines[i - 1])
              and len(lines[i].strip()) >= len(lines[i - 1].strip()) - 1]
    units: list[dict[str, str]] = []
    for n, i in enumerate(titles):
        end = titles[n + 1] - 1 if n + 1 < len(titles) else len(lines)
        title = lines[i - 1].strip()
        body = lines[i + 1 : end]
        if body and _UNDERLINE.match(body[0]):
            body = body[1:]
        text = _clean_rst(body)
        if len(text.split()) < 15:
            continue
        slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
        uid = f"{prefix}/{path.name.removesuffix('.rst.txt')}#{slug}"
        if any(u["id"] == uid for u in units):
            uid += f"-{n}"
        shown = _clean_rst([title]).replace("!", "")
        units.append({"id": uid, "title": shown, "text": f"{shown}. {text}"})
    return units


def pyguides() -> list[dict[str, str]]:
    return [u for d in ("howto", "tutorial") for p in sorted((PYDOC / d).glob("*.rst.txt"))
            if p.name != "index.rst.txt" for u in rst_sections(p, d)]


def pyfaq() -> list[dict[str, str]]:
    units = [u for p in sorted((PYDOC / "faq").glob("*.rst.txt"))
             if p.name != "index.rst.txt" for u in rst_sections(p, "faq")]
    # Headings that only group questions ("General Questions") hold no answer of their own.
    return [u for u in units if not u["title"].lower().endswith("questions")]


def load(name: str) -> list[dict[str, str]]:
    path = CACHE / f"{name}.units.jsonl"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        units = {"manpages": manpages, "pyguides": pyguides, "pyfaq": pyfaq}[name]()
        with path.open("w") as f:
            for u in units:
                f.write(json.dumps(u) + "\n")
    return [json.loads(ln) for ln in path.open()]


if __name__ == "__main__":
    for name in NAMES:
        units = load(name)
        words = sum(len(u["text"].split()) for u in units)
        print(f"{name}: {len(units)} units, {words} words")
