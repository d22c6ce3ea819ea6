"""Document analysis: type, language, topics (keywords) and a short summary.

With an LLM configured (and METIS_ANALYSIS__USE_LLM) the model answers in JSON; when it fails
or answers something unusable the offline methods answer instead, so ingestion never fails
because of analysis. The offline methods:

- language: the share of each language's most common function words among the text's words;
- keywords: tf-idf, the term frequency in the document times the term's rarity in general
  text of that language (wordfreq's Zipf frequencies: a measured background corpus), over
  single words and two-word phrases;
- summary: the sentences with the most keyword weight, in their original order;
- type: the filename, the layout of the lines, then whole-word cue phrases (`doctype`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from ..config import AnalysisSettings
from ..errors import ProviderError
from ..llm.base import LLM, ChatMessage
from .doctype import classify_type

log = logging.getLogger("metis.analysis")

MAX_ANALYSED_CHARS = 200_000
LLM_INPUT_CHARS = 6000

DOC_TYPES = ("invoice", "contract", "policy", "manual", "report", "paper", "email", "faq",
             "code", "data", "config", "article")

_FUNCTION_WORDS = {
    "en": "the of and to in is that for it with as was on be by this are from at or have an "
          "which not but they their has were been",
    "fr": "le la les de des du et un une est en que qui dans pour pas sur au avec ce il sont "
          "par plus ne se aux cette",
    "de": "der die das und ist nicht ein eine zu den von mit sich des auf für im dem auch es "
          "an werden aus er sie wird",
    "es": "el la los las de del y en que un una es por con para se no al lo como más pero sus "
          "su fue este",
    "it": "il lo la gli le di del della e che un una è per non con si da sono al alla come "
          "anche nel questo",
    "pt": "o a os as de do da e que um uma é em para com não se por mais como ao dos das foi "
          "na no",
    "nl": "de het een en van is dat op te in voor niet met zijn er aan ook als bij maar om "
          "door wordt",
}
_FUNCTION_SETS = {lang: frozenset(words.split()) for lang, words in _FUNCTION_WORDS.items()}
_ALL_FUNCTION = frozenset().union(*_FUNCTION_SETS.values())

_WORD = re.compile(r"[^\W\d_][\w'-]*[^\W_]|[^\W\d_]", re.UNICODE)
_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|\n|$)")
_LINE_BREAK = re.compile(r"(?<!\n)\n(?!\n)")


@dataclass
class Analysis:
    doc_type: str
    language: str
    topics: list[str]
    summary: str
    method: str  # "llm" or "offline"
    details: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


def detect_language(text: str) -> str:
    """ISO 639-1 code of the most likely language among seven, or "und" (undetermined)."""
    words = [w.lower() for w in _WORD.findall(text[:20_000])]
    if len(words) < 5:
        return "und"
    counts = Counter(w for w in words if w in _ALL_FUNCTION)
    scores = {lang: sum(counts[w] for w in ws) / len(words) for lang, ws in _FUNCTION_SETS.items()}
    best = max(scores, key=lambda lang: scores[lang])
    return best if scores[best] >= 0.05 else "und"


def _rarity(word: str, language: str) -> float:
    """An idf: -log10 of the word's frequency in general text (Zipf 8 = most common)."""
    from wordfreq import zipf_frequency

    lang = language if language in _FUNCTION_SETS else "en"
    return max(0.5, 8.0 - zipf_frequency(word, lang))


# Markup and addresses are not topics: a word broken at a line-end hyphen ("docu-\nmentation"
# in a rendered man page) is joined, URLs and e-mail addresses and reStructuredText roles and
# directives (":func:`x`", ".. versionadded::") are dropped before counting.
_HYPHEN_BREAK = re.compile(r"(?<=[^\W\d_])[-\u2010\u00ad]\n[ \t]*(?=[^\W\d_])")
_NOISE = re.compile(r"(?:https?://|www\.)\S+|\S+@\S+\.\w+|:[\w:-]+:(?=`)|^\s*\.\. [\w:-]+::",
                    re.M)
# Pairs are only read inside a run of words: not across punctuation, columns or lines.
_PHRASE_BREAK = re.compile(r"[^\w' \-]+|\s{2,}|\t")
_ID_LIKE = re.compile(r"[a-z]{1,2}\d|.*\d{4,}.*")  # "in8", "p1990", "rfc1701"; not "c99"
_MARKUP = frozenset("versionadded versionchanged deprecated sectionauthor toctree func meth "
                    "attr exc mod const envvar rst html https http www org com".split())


def _topic_word(word: str) -> bool:
    return len(word) > 2 and word not in _ALL_FUNCTION and word not in _MARKUP \
        and _ID_LIKE.fullmatch(word) is None


def keywords(text: str, language: str, n: int) -> list[tuple[str, float]]:
    clean = _NOISE.sub(" ", _HYPHEN_BREAK.sub("", text[:MAX_ANALYSED_CHARS]))
    words = [w.lower() for w in _WORD.findall(clean)]
    content = [w for w in words if _topic_word(w)]
    if not content:
        return []
    tf = Counter(content)
    # Two-word phrases of content words that recur: "refund window", "annual report".
    pairs: Counter[str] = Counter()
    for run in _PHRASE_BREAK.split(clean):
        run_words = [w.lower() for w in _WORD.findall(run)]
        pairs.update(f"{a} {b}" for a, b in zip(run_words, run_words[1:], strict=False)
                     if a in tf and b in tf and a != b)
    scored: dict[str, float] = {}
    for word, count in tf.items():
        scored[word] = (1 + math.log(count)) * _rarity(word, language)
    for phrase, count in pairs.items():
        if count >= 2:
            a, b = phrase.split()
            scored[phrase] = (1 + math.log(count)) * (_rarity(a, language)
                                                      + _rarity(b, language)) * 0.75
    ranked = sorted(scored.items(), key=lambda kv: (-kv[1], kv[0]))
    out: list[tuple[str, float]] = []
    for term, score in ranked:
        # A word already inside a chosen phrase (or the reverse) adds nothing.
        if any(term in chosen.split() or chosen in term.split() for chosen, _ in out):
            continue
        out.append((term, round(score, 3)))
        if len(out) == n:
            break
    return out


def extractive_summary(text: str, weights: dict[str, float], n: int) -> str:
    # A single line break is layout (PDF lines, wrapped text), a blank line ends a paragraph.
    flowing = _LINE_BREAK.sub(" ", text[:MAX_ANALYSED_CHARS])
    sentences = [" ".join(s.split()) for s in _SENTENCE.findall(flowing)]
    sentences = [s for s in sentences if len(s.split()) >= 4]
    if not sentences:
        return " ".join(text.split()[:60])
    scored = []
    for i, sentence in enumerate(sentences[:2000]):
        words = [w.lower() for w in _WORD.findall(sentence)]
        weight = sum(weights.get(w, 0.0) for w in words) / math.sqrt(len(words) or 1)
        scored.append((weight * (1.2 if i < 3 else 1.0), i))
    chosen = sorted(i for _, i in sorted(scored, reverse=True)[:n])
    summary = " ".join(sentences[i] for i in chosen)
    return summary[:1500]


def analyse_offline(filename: str, mime: str, text: str, settings: AnalysisSettings) -> Analysis:
    language = detect_language(text)
    ranked = keywords(text, language, settings.max_keywords)
    weights: dict[str, float] = {}
    for term, score in ranked:
        for word in term.split():
            weights[word] = max(weights.get(word, 0.0), score)
    return Analysis(
        doc_type=classify_type(filename, mime, text), language=language,
        topics=[t for t, _ in ranked],
        summary=extractive_summary(text, weights, settings.summary_sentences),
        method="offline", details={"keyword_scores": dict(ranked)},
    )


_PROMPT = (
    "Analyse the document below. Answer with one JSON object and nothing else, with the keys: "
    '"type" (one of: {types}), "language" (ISO 639-1 code), "topics" (up to {n} short '
    'keywords or phrases, most important first), "summary" (at most {s} sentences).'
)


class DocumentAnalyzer:
    def __init__(self, settings: AnalysisSettings, llm: LLM | None = None) -> None:
        self.settings = settings
        self._llm = llm if settings.use_llm else None

    @property
    def uses_llm(self) -> bool:
        return self._llm is not None

    async def analyse(self, filename: str, mime: str, text: str) -> Analysis:
        started = time.perf_counter()
        result: Analysis | None = None
        if self._llm is not None:
            result = await self._by_llm(filename, text)
        if result is None:
            # In a thread: a large document's analysis would hold up the event loop.
            result = await asyncio.to_thread(analyse_offline, filename, mime, text,
                                             self.settings)
        result.details["ms"] = round((time.perf_counter() - started) * 1000, 3)
        return result

    async def _by_llm(self, filename: str, text: str) -> Analysis | None:
        assert self._llm is not None
        s = self.settings
        prompt = _PROMPT.format(types=", ".join(DOC_TYPES), n=s.max_keywords,
                                s=s.summary_sentences)
        messages = [ChatMessage("system", prompt),
                    ChatMessage("user", f"File: {filename}\n\n{text[:LLM_INPUT_CHARS]}")]
        try:
            done = await self._llm.complete(messages, temperature=0.0, max_tokens=400)
        except ProviderError as exc:
            log.warning("document analysis by %s failed (%s): offline instead",
                        self._llm.name, exc.code)
            return None
        parsed = parse_llm_answer(done.text, s.max_keywords)
        if parsed is None:
            log.warning("document analysis by %s was not usable JSON: offline instead",
                        self._llm.name)
            return None
        parsed.details.update(model=done.model, prompt_tokens=done.prompt_tokens,
                              completion_tokens=done.completion_tokens)
        return parsed


def parse_llm_answer(answer: str, max_topics: int) -> Analysis | None:
    """The model's JSON object (also inside a ```json fence or after some prose), checked."""
    start, end = answer.find("{"), answer.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        data = json.loads(answer[start:end + 1])
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    kind = str(data.get("type", "")).strip().lower()
    language = str(data.get("language", "")).strip().lower()[:8]
    topics = data.get("topics")
    summary = data.get("summary")
    if (kind not in DOC_TYPES or not re.fullmatch(r"[a-z]{2,3}(-[a-z]{2})?", language)
            or not isinstance(topics, list) or not isinstance(summary, str)):
        return None
    clean = [str(t).replace("\x00", "").strip().lower()[:100] for t in topics
             if isinstance(t, (str, int, float))]
    return Analysis(doc_type=kind, language=language,
                    topics=[t for t in dict.fromkeys(clean) if t][:max_topics],
                    summary=summary.replace("\x00", "").strip()[:1500], method="llm")
