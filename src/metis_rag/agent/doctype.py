"""The offline document type: file name, layout of the lines, then whole-word cue phrases.

Cue words alone mislabel files that are not prose: counted as substrings, "vat" is found in
"private" and "to:" in every "Related to:", so /etc/protocols came out an invoice. Layout is
read first (a shebang or code lines, `key = value` settings under `#` comments, table rows,
man page or reStructuredText headings, question headings), and cue phrases only count as
whole words, per thousand words. Tuned on the calibration split of
benchmarks/analysis_data.py (files Debian installs); bench_analysis.py scores the test split.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

CODE_EXT = (".py", ".js", ".ts", ".java", ".go", ".rs", ".c", ".cpp", ".h", ".rb", ".sh",
            ".sql", ".pl", ".php")
DATA_EXT = (".csv", ".tsv", ".json", ".xlsx", ".xls", ".ndjson", ".jsonl")
CONFIG_EXT = (".conf", ".cfg", ".ini", ".toml", ".yaml", ".yml", ".properties")

_CUES: dict[str, tuple[str, ...]] = {
    "invoice": ("invoice", "amount due", "bill to", "vat", "subtotal", "payment terms",
                "facture", "rechnung", "due date", "total due"),
    "contract": ("agreement", "hereby", "parties", "clause", "shall", "terminate",
                 "governing law", "contrat", "vertrag", "license", "licence", "licensee",
                 "licensor", "warranty", "warranties", "liability", "redistribute",
                 "redistribution", "copyright holder", "terms and conditions"),
    "policy": ("policy", "employees", "must", "compliance", "prohibited", "procedure",
               "responsibilities"),
    "manual": ("install", "configure", "click", "settings", "troubleshooting", "press the",
               "user guide", "option", "options", "usage", "default", "returns", "argument",
               "arguments", "parameter", "command", "function", "example", "examples"),
    "report": ("quarter", "revenue", "results", "findings", "growth", "fiscal",
               "annual report", "performance"),
    "paper": ("abstract", "et al", "references", "we propose", "experiment", "experiments",
              "related work", "conclusion"),
    "email": ("from:", "subject:", "to:", "dear", "regards", "sent:"),
    "faq": ("faq", "frequently asked", "q:", "a:"),
}
_CUE_RE = {kind: re.compile(r"(?<![\w-])(?:" + "|".join(re.escape(c) for c in cues)
                            + r")(?![\w-])", re.I) for kind, cues in _CUES.items()}
_WORD = re.compile(r"[^\W\d_]+")

_CODE_LINE = re.compile(
    r"^\s*(?:def |class |import |from \S+ import |return\b|if\b.*[:{)]\s*$|elif |else\s*[:{]|"
    r"for\b.*(?:[:{]|\bdo)\s*$|while\b|try\s*:|except\b|sub \w+|my [$@%]|use [\w:]+;|"
    r"local \w|function\b|fi$|done$|esac$|then$|case\b.*\bin$|\w+\(\)\s*\{|[}{]\s*$|"
    r"(?:var|let|const) \w+ =|#include|@\w+)|[;{]\s*$|\$\{?\w+\}?\s*[=!]=|==|!=|&&|\|\|")
_SETTING = re.compile(r"^\s*[\w.\-/\[\]*\"]+\s*(?:=|:\s|\s+\S)")
_TABLE_ROW = re.compile(r"^\S+(?:\t+|\s{2,}|\s+(?=\d))\S")
_MAN_HEADING = re.compile(r"^(?:NAME|SYNOPSIS|DESCRIPTION|OPTIONS|SEE ALSO|EXAMPLES?|"
                          r"RETURN VALUE|FILES|ENVIRONMENT|BUGS|AUTHORS?|EXIT STATUS)\s*$", re.M)
_RST = re.compile(r"^\.\. [\w:-]+::|:(?:func|class|mod|meth|data|attr|exc|ref|term|const):`"
                  r"|^[=\-~^*#]{4,}\s*$", re.M)
_QUESTION_HEADING = re.compile(r"^[^\n]{8,200}\?\s*\n[=\-~^*]{4,}\s*$|^(?:Q:|Q\.)\s", re.M)


@dataclass(frozen=True, slots=True)
class Layout:
    """Shares of the first lines that look like code, settings, comments, table rows, prose."""

    lines: int
    code: float
    comment: float
    setting: float
    table: float
    prose: float
    digits: float  # of the non-comment lines, those holding a number


def layout(lines: Sequence[str]) -> Layout:
    body = [line for line in lines if line.strip()]
    if not body:
        return Layout(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    comments = [line for line in body if line.lstrip().startswith(("#", ";", "//"))]
    rest = [line for line in body if not line.lstrip().startswith(("#", ";", "//"))] or [""]
    n = len(body)
    prose = sum(1 for line in rest if len(line.split()) >= 8
                and line.rstrip().endswith((".", ",", ":")) and not _CODE_LINE.search(line))
    return Layout(
        lines=n,
        code=sum(1 for line in rest if _CODE_LINE.search(line)) / len(rest),
        comment=len(comments) / n,
        setting=sum(1 for line in rest if _SETTING.match(line) and len(line.split()) <= 6)
        / len(rest),
        table=sum(1 for line in rest if _TABLE_ROW.match(line)) / len(rest),
        prose=prose / len(rest),
        digits=sum(1 for line in rest if any(c.isdigit() for c in line)) / len(rest),
    )


def _delimited(lines: Sequence[str]) -> bool:
    """Most lines split into the same number (>= 2) of fields by one delimiter: CSV/TSV."""
    rows = [line for line in lines[:200] if line.strip()]
    if len(rows) < 3:
        return False
    for sep in (",", ";", "\t", "|"):
        counts = [line.count(sep) for line in rows]
        common = max(set(counts), key=counts.count)
        if common >= 1 and counts.count(common) >= 0.8 * len(rows):
            return True
    return False


def _json_like(head: str) -> bool:
    s = head.lstrip()
    return s.startswith(("{", "[")) and s.count('":') + s.count("': ") >= 3


def _cue_scores(head: str, name: str) -> dict[str, float]:
    words = max(1, len(_WORD.findall(head)))
    scores = {kind: 1000 * len(cue.findall(head)) / words for kind, cue in _CUE_RE.items()}
    for kind in scores:  # the file name is strong evidence
        if re.search(r"(?<![a-z])" + kind, name):
            scores[kind] += 20
    return scores


def classify_type(filename: str, mime: str, text: str) -> str:
    """One of analysis.DOC_TYPES for a document, without an LLM."""
    name = filename.lower()
    if name.endswith(CODE_EXT) or text.startswith("#!"):
        return "code"
    if name.endswith(DATA_EXT) or mime in ("text/csv", "application/json"):
        return "data"
    head = text[:20_000]
    lines = head.splitlines()[:400]
    if _json_like(head) or _delimited(lines):
        return "data"
    shape = layout(lines)
    if shape.lines >= 5 and shape.code >= 0.35 and shape.prose < 0.3:
        return "code"
    if len(_MAN_HEADING.findall(head)) >= 2:
        return "manual"
    rst = len(_RST.findall(head))
    questions = len(_QUESTION_HEADING.findall(head))
    if questions >= 3 or "faq" in name:
        return "faq"
    if shape.lines >= 5 and shape.prose < 0.25:
        if shape.table >= 0.5 and shape.digits >= 0.5:
            return "data"
        if name.endswith(CONFIG_EXT) or (shape.comment + shape.setting >= 0.6):
            return "config"
    scores = _cue_scores(head, name)
    if rst >= 3:
        scores["manual"] += 10
    best = max(scores, key=lambda kind: scores[kind])
    return best if scores[best] >= 8 else "article"
