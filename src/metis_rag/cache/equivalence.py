"""Do two questions ask the same thing? The semantic cache's decision, small and pure.

A high cosine similarity is not enough: "Who approved the budget?" and "When was the budget
approved?" embed at 0.97. So the decision combines cheap signals measured on the two texts
(question type, negation, order/direction/comparison words, identifiers and figures, the rare
content words one question has and the other lacks) with the cosine, in one logistic model
whose coefficients were fitted on the calibration split of our labelled pairs
(`benchmarks/fit_equivalence.py` writes `equivalence.json`; nothing is trained at run time).
The threshold on its score is read off the calibration curve stored beside the coefficients,
built from out-of-fold scores (k folds by passage: no pair is scored by a model fitted on it):
the lowest threshold whose one-sided 95 % upper confidence bound on the share of wrong hits
(1 - precision) among the calibration pairs it accepts stays under the user's `max_error`.
That is the error a user sees: of the answers the semantic level serves, the share that
answered another question. It is measured at the labelled pairs' mix (a quarter paraphrases,
every near miss about the same passage), harder than most traffic.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

# -- text signals --------------------------------------------------------------------------

# Identifiers and figures: a word with a digit, an inner dot or underscore, an inner capital
# (camelCase), anything in backticks or quotes, a command-line option (-n, --hard) or a shell
# parameter ($?, $$). "Queue.get" and "Queue.get_nowait" embed at 0.96 cosine, "$?" and "$$"
# at 0.88, yet ask different things.
_ENTITY = re.compile(
    r"`[^`]+`|\"[^\"]+\"|\b\w+(?:[._]\w+)+\b|\b\w*\d\w*\b|\b[a-z]+[A-Z]\w*\b"
    r"|(?<![\w-])--?[A-Za-z][\w-]*|\$[\w?$!#@*-]"
)


_PLAIN_WORD = re.compile(r"\w*\d\w*")
_NUMBERS = re.compile(r"\d+(?:\.\d+)*")
_NUMBER = re.compile(r"\d+")


def entities(text: str) -> frozenset[str]:
    """The identifiers and figures a question names; two questions whose sets differ never
    share a semantic-cache answer. A word with digits counts by its numbers only, without
    leading zeros: "GPLv3", "GPL-3" and "gpl3" name the same figure, as "umask 0022" and "022"."""
    found: set[str] = set()
    for m in _ENTITY.finditer(text):
        token = m.group(0).strip("`\"").lower()
        if _PLAIN_WORD.fullmatch(token):
            found.update(_NUMBER.sub(lambda n: n.group(0).lstrip("0") or "0", num)
                         for num in _NUMBERS.findall(token))
        else:
            found.add(token)
    return frozenset(found)


_WORD = re.compile(r"[a-z0-9][a-z0-9_.+/-]*[a-z0-9]|[a-z0-9]")
_NT = re.compile(r"(?:n't|n’t)\b")

# "how long" and "how many days" ask the same thing; "how" alone asks for a manner or method,
# and "what"/"which" are so often interchangeable with it that they share its type.
_QUANTITY = re.compile(r"\bhow (?:many|much|long|often|big|fast|large|old)\b")
_WH = {"who": "who", "whom": "who", "whose": "who", "when": "when", "where": "where",
       "why": "why", "what": "what", "which": "what", "how": "what"}
_YES_NO = frozenset(("is", "are", "was", "were", "does", "do", "did", "can", "could", "will",
                     "would", "should", "must", "may", "has", "have", "am"))
_POLITE = re.compile(r"^(?:(?:hi|hello|hey|please|so|ok|okay)\W+)*"
                     r"(?:(?:can|could|would|will) you (?:please )?(?:tell|explain|show)"
                     r"(?: to)?(?: me)?|please (?:tell|explain|show)(?: me)?|"
                     r"i(?:'d| would) like to know|do you know)\W*")

_COMPARE = re.compile(r"\b(?:differences?|differ|vs|versus|compared?|comparison)\b")
_EXPLAIN = re.compile(r"\b(?:explain|describe|define)\b")
_NEGATION = frozenset(("not", "no", "never", "without", "except", "nor", "neither", "cannot",
                       "non", "exclude", "excluding", "refuse", "discard"))

# Words whose presence flips what is asked: an order, a direction, a comparison, an action and
# its inverse. Synonyms share a class ("biggest" and "largest" ask the same), so a question
# with one class the other lacks, or with another class, is a strong sign of two asks.
_POLAR_CLASSES = {
    "first": "first", "second": "second", "third": "third", "fourth": "fourth", "last": "last",
    # On a timeline "newer than" is "after" and "until" is "before".
    "next": "after", "after": "after", "later": "after", "since": "after", "succeeded": "after",
    "following": "after", "newer": "after", "newest": "after", "latest": "after",
    "recent": "after", "previous": "before", "before": "before", "earlier": "before",
    "prior": "before", "preceded": "before", "until": "before", "older": "before",
    "oldest": "before", "replaced": "after", "replace": "after", "successor": "after",
    "predecessor": "before", "current": "current", "new": "new", "old": "old",
    "more": "more", "most": "more", "larger": "more", "largest": "more", "bigger": "more",
    "biggest": "more", "higher": "more", "highest": "more", "greater": "more", "above": "more",
    "max": "more", "maximum": "more", "increase": "more", "best": "more",
    "less": "less", "least": "less", "fewer": "less", "smaller": "less", "smallest": "less",
    "lower": "less", "lowest": "less", "below": "less", "min": "less",
    "minimum": "less", "decrease": "less", "worst": "less",
    "ascending": "ascending", "descending": "descending", "reverse": "reverse",
    "reversed": "reverse", "opposite": "reverse", "forward": "forward", "forwards": "forward",
    "ahead": "forward", "backward": "backward", "backwards": "backward",
    "up": "up", "down": "down", "uppercase": "upper", "upper": "upper", "capital": "upper",
    "lowercase": "lower_case", "leading": "leading", "trailing": "trailing", "top": "top",
    "bottom": "bottom", "left": "left", "right": "right", "local": "local", "remote": "remote",
    "start": "start", "begin": "start", "stop": "stop", "end": "stop", "enable": "enable",
    "disable": "disable", "add": "add", "insert": "add", "append": "add", "remove": "remove",
    "delete": "remove", "uninstall": "remove", "unload": "remove", "create": "create",
    "open": "open", "close": "close", "fastest": "fast", "quickest": "fast", "slowest": "slow",
    "read": "read", "write": "write", "encrypt": "encrypt", "decrypt": "decrypt",
    "compress": "compress", "decompress": "decompress", "extract": "decompress",
    "unpack": "decompress", "load": "load", "mount": "mount",
    "unmount": "unmount", "install": "install", "upgrade": "upgrade", "downgrade": "downgrade",
    "allow": "allow", "permit": "allow", "deny": "deny", "prevent": "deny", "include": "include",
    "push": "push", "pull": "pull",
    "source": "source", "destination": "destination", "parent": "parent", "child": "child",
    "import": "import", "export": "export", "soft": "soft", "hard": "hard",
    "file": "file", "directory": "directory", "folder": "directory", "dir": "directory",
}

_STOP = frozenset("""
a an the of to in on at for from by with about into onto as and or but if then than so that
this these those it its is are was were be been being do does did doing have has had i me my
we our you your he she they them their there here what which who whom whose when where why
how can could will would should shall must may might please tell explain show know like want
need hi hello hey just get got use using used way some any all each every one ones also
possible able happen happens
""".split())


def _stem(word: str) -> str:
    # Light, fast suffix folding: enough for "files"/"file", "sorting"/"sort".
    for suffix, keep in (("sses", "ss"), ("ies", "y"), ("ing", ""), ("ed", ""), ("s", "")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            return word[: len(word) - len(suffix)] + keep
    return word


@dataclass(frozen=True, slots=True)
class QuestionText:
    """The signals of one question, computed once (at cache time for stored questions)."""

    kind: str  # who/when/where/why/quantity/compare/what/yes_no/none
    negated: bool
    polar: frozenset[str]
    content: frozenset[str]  # stemmed content words
    entities: frozenset[str]


def analyse(question: str) -> QuestionText:
    text = question.strip().lower()
    polite = _POLITE.match(text)
    text = _NT.sub(" not", text[polite.end():] if polite else text)
    words = _WORD.findall(text)
    stems = [_stem(w) for w in words]
    return QuestionText(_kind(text, words, polite.group(0) if polite else ""),
                        *_signals(text, words, stems), entities(question))


def _kind(text: str, words: list[str], polite: str) -> str:
    # "What is the difference between X and Y?" asks another thing than "What is X?".
    if _COMPARE.search(text):
        return "compare"
    if _QUANTITY.search(text):
        return "quantity"
    # "Explain X" and "could you explain X" ask what X is.
    if _EXPLAIN.search(polite) or (words and words[0] in ("explain", "describe", "define")):
        return "what"
    for w in words:
        if w in _WH:
            return _WH[w]
    return "yes_no" if words and words[0] in _YES_NO else "none"


def _signals(text: str, words: list[str], stems: list[str]) -> tuple[
        bool, frozenset[str], frozenset[str]]:
    """Negated?, the order/direction classes named, the content words (stemmed)."""
    negations = sum(w in _NEGATION or s in _NEGATION or w.startswith("non-")
                    for w, s in zip(words, stems, strict=True))
    content, polar = set(), set()
    for w, s in zip(words, stems, strict=True):
        for part in (w, s, *w.split("-")):  # "read-only", "downgraded"
            if part in _POLAR_CLASSES:
                polar.add(_POLAR_CLASSES[part])
                break
        else:
            if w not in _STOP and s not in _NEGATION:
                content.add(s)
    return negations % 2 == 1, frozenset(polar), frozenset(content)


# -- word rarity -----------------------------------------------------------------------------

Rarity = Callable[[str], float]


@lru_cache(maxsize=200_000)
def general_rarity(word: str) -> float:
    """How rare a word is in general English, 0 (very common) to 1 (unknown): from wordfreq's
    Zipf frequency (8 = "the", 0 = unseen), a word-frequency table built from many sources."""
    from wordfreq import zipf_frequency

    return min(1.0, max(0.0, (7.0 - zipf_frequency(word, "en")) / 6.0))


# -- the decision -------------------------------------------------------------------------------

FEATURES = ("cosine", "cosine_squared", "kind_mismatch", "yes_no_mismatch", "negation_mismatch",
            "polar_conflict", "polar_one_sided", "substituted", "added")
_HARD_KINDS = frozenset(("who", "when", "where", "why", "quantity", "compare"))


def features(a: QuestionText, b: QuestionText, cosine: float,
             rarity: Rarity = general_rarity) -> list[float]:
    # A terse keyword form ("none") has no question type to disagree with.
    kinds = {a.kind, b.kind} - {"none"}
    hard = kinds & _HARD_KINDS
    # A word swapped for another ("files" for "directories") changes the ask more often than
    # words dropped (a terse form of the same question): weigh the two apart. The fit may
    # not reward added words (`fit_equivalence.py` keeps every weight but the cosine's <= 0):
    # "What is NetFlow?" and "What did NetFlow support?" differ by one added word.
    only_a = sum(rarity(w) for w in a.content - b.content)
    only_b = sum(rarity(w) for w in b.content - a.content)
    conflict = bool(a.polar - b.polar) and bool(b.polar - a.polar)
    return [
        cosine,
        cosine * cosine,
        float(len(kinds) == 2 and bool(hard)),
        float(len(kinds) == 2 and "yes_no" in kinds and not hard),
        float(a.negated != b.negated),
        float(conflict),
        0.0 if conflict else float(len(a.polar ^ b.polar)),
        min(only_a, only_b),
        max(only_a, only_b) - min(only_a, only_b),
    ]


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why a candidate was accepted or not: `reason` is "accepted" or the first failed check."""

    same: bool
    score: float
    reason: str
    checks: tuple[str, ...]  # the checks passed
    probability: float = 0.0  # calibrated: Model.precision_at(score)


@dataclass(frozen=True, slots=True)
class Model:
    """Logistic regression over `FEATURES`, and its calibration curve: out-of-fold score
    thresholds with the calibration pairs accepted and wrongly accepted at or above each."""

    weights: tuple[float, ...]
    bias: float
    curve: tuple[tuple[float, int, int], ...]
    min_cosine: float

    @classmethod
    def load(cls, data: dict[str, Any] | None = None) -> Model:
        if data is None:
            text = resources.files(__package__).joinpath("equivalence.json").read_text()
            data = json.loads(text)
        if tuple(data["features"]) != FEATURES:
            raise ValueError("equivalence.json was fitted on other features; re-run "
                             "benchmarks/fit_equivalence.py")
        return cls(tuple(data["weights"]), float(data["bias"]),
                   tuple(sorted((float(t), int(n), int(f)) for t, n, f in data["curve"])),
                   float(data["min_cosine"]))

    def score(self, x: Sequence[float]) -> float:
        z = self.bias + sum(w * v for w, v in zip(self.weights, x, strict=True))
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))

    def threshold(self, max_error: float, confidence_z: float = 1.645) -> float:
        """The lowest score threshold whose one-sided upper confidence bound (Wilson, 95 %)
        on 1 - precision of the calibration hits is at most `max_error`; above 1 (never a hit)
        if none is."""
        return next((t for t, n, f in self.curve
                     if n and wilson_upper(f, n, confidence_z) <= max_error), 1.01)

    def lowest_bound(self, confidence_z: float = 1.645) -> float:
        """The smallest `max_error` any threshold meets: below it the semantic level is off."""
        return min((wilson_upper(f, n, confidence_z) for _, n, f in self.curve if n),
                   default=1.0)

    def precision_at(self, score: float) -> float:
        """Calibrated probability that a pair scored `score` asks the same thing: the share
        of calibration pairs scored at least this high (out of fold) that did."""
        n, f = next(((n, f) for t, n, f in reversed(self.curve) if t <= score), (0, 0))
        return 1.0 - f / n if n else 0.0


def wilson_upper(failures: int, n: int, z: float = 1.645) -> float:
    p = failures / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre + spread) / (1 + z * z / n)


class Equivalence:
    """The decision with a threshold fixed for one error bound."""

    def __init__(self, model: Model, max_error: float, rarity: Rarity = general_rarity) -> None:
        self.model = model
        self.max_error = max_error
        self.threshold = model.threshold(max_error)
        self._rarity = rarity
        # Why no question can be judged the same (every lookup would miss), or None.
        self.off_reason: str | None = None
        if max_error <= 0:
            self.off_reason = "METIS_CACHE__SEMANTIC_MAX_ERROR=0 switches the semantic level off"
        elif self.threshold > 1:
            self.off_reason = (f"no calibrated threshold meets METIS_CACHE__SEMANTIC_MAX_ERROR="
                               f"{max_error:g}: the lowest bound the calibration supports is "
                               f"{model.lowest_bound():.3f}")

    def judge(self, new: QuestionText, cached: QuestionText, cosine: float) -> Verdict:
        checks: list[str] = []
        if cosine < self.model.min_cosine:
            return Verdict(False, 0.0, "similarity", ())
        checks.append("similarity")
        x = features(new, cached, cosine, self._rarity)
        # Hard checks first: each pattern here asks another thing whatever the similarity
        # (a flipped comparison embeds at 0.98), so the model never gets to outvote them.
        for name, failed in (("identifiers", new.entities != cached.entities),
                             ("question_type", x[2] > 0), ("negation", x[4] > 0),
                             ("order_direction", x[5] > 0)):
            if failed:
                return Verdict(False, 0.0, name, tuple(checks))
            checks.append(name)
        score = self.model.score(x)
        if score < self.threshold:
            return Verdict(False, score, "content_words" if x[7] + x[8] > 0 else "score",
                           tuple(checks))
        return Verdict(True, score, "accepted", (*checks, "score"),
                       self.model.precision_at(score))


def passes_hard_checks(a: QuestionText, b: QuestionText, x: Sequence[float]) -> bool:
    """What `judge` checks before the model; the model is fitted on the pairs that pass."""
    return a.entities == b.entities and not (x[2] or x[4] or x[5])
