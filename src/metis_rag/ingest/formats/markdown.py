"""Markdown: ATX and setext headings start sections; front matter may name the title; inline
markup is dropped."""

from __future__ import annotations

import re

from ..limits import ParseLimits
from .text import Section, SectionBuilder, decode_within, normalize_text, one_line

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)\n(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL)
_FRONT_TITLE = re.compile(r"^title:[ \t]*[\"']?(.*?)[\"']?[ \t]*$", re.MULTILINE)
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_RULE = re.compile(r"^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_LINK_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*\S+")
_QUOTE = re.compile(r"^ {0,3}(?:>[ \t]?)+")
# Every pattern stops at the next delimiter instead of scanning to a distant closer: paired
# forms (`.+?` up to a matching `**`) took quadratic time on a long line of unclosed markers.
_MD_INLINE: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"(`+)([^`]+)\1"), r"\2"),
    (re.compile(r"!\[([^\[\]]*)\]\([^()]*\)"), r"\1"),
    (re.compile(r"\[([^\[\]]+)\](?:\([^()]*\)|\[[^\[\]]*\])"), r"\1"),
    (re.compile(r"<((?:https?|mailto):[^>\s]+)>"), r"\1"),
    (re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s[^<>]*)?/?>"), ""),
    # Emphasis markers are dropped where they open or close a word, paired or not.
    (re.compile(r"(?<![\w*_~])(?:\*{1,3}|_{1,3}|~~)(?=[^\s*_~])"
                r"|(?<=[^\s*_~])(?:\*{1,3}|_{1,3}|~~)(?![\w*_~])"), ""),
]


def _md_inline(line: str) -> str:
    for pattern, repl in _MD_INLINE:
        line = pattern.sub(repl, line)
    return line


def parse_markdown(
    data: bytes, name: str, limits: ParseLimits
) -> tuple[str | None, list[Section]]:
    text = normalize_text(decode_within(data, name, limits)) + "\n"
    title = None
    if front := _FRONT_MATTER.match(text):
        text = text[front.end() :]
        if found := _FRONT_TITLE.search(front.group(1)):
            title = one_line(found.group(1)) or None
    out = SectionBuilder()
    fence = ""
    for line in text.split("\n"):
        if fence:
            if line.strip().startswith(fence):
                fence = ""
            else:
                out.parts.append(line)
            continue
        if m := _FENCE.match(line):
            fence = m.group(1)
        elif m := _ATX.match(line):
            out.start(_md_inline(m.group(2) or ""))
            title = title or (out.heading if len(m.group(1)) == 1 else None)
        elif _SETEXT.match(line) and out.parts and out.parts[-1].strip():
            heading = out.parts.pop()
            out.start(heading)
            title = title or (out.heading if line.strip()[0] == "=" else None)
        elif _RULE.match(line) or _LINK_DEF.match(line):
            out.parts.append("")
        else:
            out.parts.append(_md_inline(_QUOTE.sub("", line)))
    out.flush()
    return title, out.sections
